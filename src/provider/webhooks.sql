-- payledger providers: webhooks, verified in SQL (src/provider/webhook.rs
-- checks the signatures).

-- The application passes a provider's webhook as received: the raw body
-- (exactly the bytes signed) and the headers as a JSON object. A bad
-- signature is PL026 and changes nothing. A signed settlement or failure is
-- applied like the reconciler's; anything else (and every unsigned hint)
-- makes the invoice due for a check at the next tick.
CREATE FUNCTION payledger.provider_webhook(provider uuid, headers jsonb, body text)
RETURNS TABLE (invoice_id uuid, event text, action text, outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prov payledger.providers;
    secret text;
    v record;
    inv payledger.invoices;
BEGIN
    PERFORM payledger_internal.require(provider, 'provider');
    PERFORM payledger_internal.require(body, 'body');
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    SELECT s.webhook_secret INTO secret FROM payledger.provider_secrets s WHERE s.provider_id = provider;
    SELECT * INTO v FROM payledger_internal.webhook_verify_core(prov.kind::text, secret, coalesce(headers, '{}'), body);
    IF v.sqlstate IS NOT NULL THEN
        PERFORM payledger_internal.raise_failure(v.sqlstate, v.message, NULL);
    END IF;
    SELECT * INTO inv FROM payledger.invoices i
     WHERE i.provider_id = provider AND (i.external_id = v.reference OR i.payment_hash = v.reference)
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no invoice of provider % has reference %', prov.name, v.reference USING ERRCODE = 'PL029';
    END IF;
    IF v.action = 'paid' THEN
        RETURN QUERY SELECT inv.id, v.event, v.action,
            payledger.invoice_apply(inv.id, jsonb_build_object('op', 'webhook', 'status', 'paid', 'received', v.received));
    ELSIF v.action = 'invalid' THEN
        RETURN QUERY SELECT inv.id, v.event, v.action,
            payledger.invoice_apply(inv.id, jsonb_build_object('op', 'webhook', 'status', 'invalid', 'error', v.note));
    ELSE
        UPDATE payledger.invoices i SET next_check_at = now(), errors = 0
         WHERE i.id = inv.id AND i.next_check_at IS NOT NULL;
        RETURN QUERY SELECT inv.id, v.event, v.action, CASE WHEN FOUND THEN 'check_scheduled' ELSE 'not_watched' END;
    END IF;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.provider_webhook(uuid, jsonb, text) TO payledger_app;
