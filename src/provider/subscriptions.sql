-- payledger providers: subscriptions, invoiced every period at the provider
-- snapshotted when they were created (a housekeeping step renews them).

-- The profile and provider are snapshotted now: renewals are invoiced there
-- even after the type is routed elsewhere.
CREATE FUNCTION payledger.create_subscription(
    owner_id   text,
    payin_type text,
    asset      text,
    amount     bigint,
    period     interval,
    methods    jsonb DEFAULT '[{"external": "invoice"}]',
    payouts    jsonb DEFAULT NULL,
    split      text DEFAULT NULL,
    payees     jsonb DEFAULT NULL,
    profile    text DEFAULT NULL,
    starts_at  timestamptz DEFAULT NULL,
    metadata   jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prof uuid;
    prov uuid;
    rail text;
    id uuid := payledger.new_id();
BEGIN
    PERFORM payledger_internal.require(owner_id, 'owner_id');
    PERFORM payledger_internal.require(payin_type, 'payin_type');
    PERFORM payledger_internal.require(asset, 'asset');
    PERFORM payledger_internal.require(amount, 'amount');
    PERFORM payledger_internal.require(period, 'period');
    IF amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF period <= '0' THEN
        RAISE EXCEPTION 'period must be positive' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = payin_type) THEN
        RAISE EXCEPTION 'pay-in type % is not registered', payin_type USING ERRCODE = 'PL022';
    END IF;
    IF jsonb_typeof(methods) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'methods must be a JSON array' USING ERRCODE = '22023';
    END IF;
    prof := coalesce(CASE WHEN profile IS NOT NULL THEN payledger_internal.profile_id(profile) END,
                     (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = create_subscription.payin_type),
                     (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default));
    SELECT x ->> 'external' INTO rail FROM jsonb_array_elements(methods) x WHERE x ? 'external' LIMIT 1;
    IF rail IS NOT NULL THEN
        prov := payledger_internal.pick_provider(payin_type, asset, rail, prof);
    END IF;
    INSERT INTO payledger.subscriptions (id, owner_id, payin_type, asset, amount, period, methods, payouts, split,
                                         payees, profile_id, provider_id, next_renewal_at, metadata)
    VALUES (id, owner_id, payin_type, asset, amount, period, methods, payouts, split, payees, prof, prov,
            coalesce(starts_at, now()), coalesce(metadata, '{}'));
    RETURN id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.create_subscription(text, text, text, bigint, interval, jsonb, jsonb, text, jsonb, text, timestamptz, jsonb) TO payledger_app;

CREATE FUNCTION payledger.cancel_subscription(subscription uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(subscription, 'subscription');
    UPDATE payledger.subscriptions s SET status = 'cancelled' WHERE s.id = subscription;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
    END IF;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.cancel_subscription(uuid) TO payledger_app;

-- Bill the subscription's next period: one pay-in per period (its
-- idempotency key is the subscription and period number, so a repeat returns
-- the same pay-in), invoiced at the snapshot's provider. Rows without a
-- snapshot fall back to the profile's current provider, then to the type's
-- route and the default profile, like any pay-in.
CREATE FUNCTION payledger.renew_subscription(subscription uuid)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s payledger.subscriptions;
    c record;
    prov uuid;
BEGIN
    PERFORM payledger_internal.require(subscription, 'subscription');
    SELECT * INTO s FROM payledger.subscriptions x WHERE x.id = subscription FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
    END IF;
    IF s.status <> 'active' THEN
        RAISE EXCEPTION 'subscription % is %', subscription, s.status USING ERRCODE = 'PL020';
    END IF;
    SELECT * INTO c FROM payledger.create_payin(s.owner_id, s.payin_type, s.asset, s.amount, s.methods, s.payouts,
        s.split, s.payees, 'subscription:' || s.id || ':' || s.renewals, NULL,
        s.metadata || jsonb_build_object('subscription', s.id, 'period', s.renewals));
    IF c.state = 'PENDING_INVOICE_CREATION' THEN
        prov := coalesce(s.provider_id, (SELECT p.id FROM payledger.payins x, LATERAL
                    (SELECT payledger_internal.pick_provider(x.type, x.asset, x.external_method, s.profile_id) AS id) p
                  WHERE x.id = c.payin_id));
        PERFORM payledger_internal.open_invoice(c.payin_id, prov, NULL, NULL, s.id);
    END IF;
    UPDATE payledger.subscriptions x
       SET renewals = x.renewals + 1, next_renewal_at = x.next_renewal_at + x.period, last_payin_id = c.payin_id,
           errors = 0, last_error = NULL, retry_at = NULL
     WHERE x.id = s.id;
    RETURN c.payin_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.renew_subscription(uuid) TO payledger_app;

CREATE FUNCTION payledger.renew_due_subscriptions(max_subscriptions integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger_internal.require_limit(max_subscriptions, 'max_subscriptions');
    FOR s IN SELECT x.id, x.owner_id, x.errors FROM payledger.subscriptions x
              WHERE x.status = 'active' AND x.next_renewal_at <= now() AND (x.retry_at IS NULL OR x.retry_at <= now())
              ORDER BY x.next_renewal_at LIMIT max_subscriptions FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            PERFORM payledger.renew_subscription(s.id);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.subscriptions x
               SET errors = x.errors + 1, last_error = left(msg, 500), retry_at = now() + payledger_internal.backoff(x.errors + 1)
             WHERE x.id = s.id;
            PERFORM payledger_internal.emit_event('subscription.renewal_failed', s.id, s.owner_id,
                jsonb_build_object('subscription', s.id, 'error', left(msg, 500), 'errors', s.errors + 1));
            RAISE WARNING 'payledger: renewing subscription %: %', s.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger_internal.register_housekeeping_step('provider', 'subscriptions_renewed', 70,
                                            'payledger.renew_due_subscriptions(integer)', per_call => 1);

-- A period's pay-in failed or was cancelled (the invoice went unpaid): the
-- subscription lapses, so the next renewal does not come, and its owner is
-- told once (subscription.lapsed). Only the latest period's pay-in counts:
-- an older one failing late changes nothing.
CREATE FUNCTION payledger_internal.subscription_payin_ended(p payledger.payins)
RETURNS void LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    WITH lapsed AS (
        UPDATE payledger.subscriptions s SET status = 'lapsed'
         WHERE p.metadata ? 'subscription' AND s.id = (p.metadata ->> 'subscription')::uuid
           AND s.status = 'active' AND s.last_payin_id = p.id
        RETURNING s.id, s.owner_id, s.metadata)
    SELECT payledger_internal.emit_event('subscription.lapsed', l.id, l.owner_id,
               l.metadata || jsonb_build_object('subscription', l.id, 'payin', p.id, 'period', p.metadata -> 'period',
                                                'state', p.state, 'reason', p.failure_reason))
      FROM lapsed l;
$$;
SELECT payledger_internal.register_payin_handler('provider', 'reached', 310, '{FAILED,CANCELLED}',
                                                 'payledger_internal.subscription_payin_ended(payledger.payins)');

CREATE VIEW payledger.my_subscriptions WITH (security_barrier) AS
SELECT s.id, s.payin_type, s.asset, s.amount, s.period, s.status, s.renewals, s.next_renewal_at, s.last_payin_id,
       s.created_at
  FROM payledger.subscriptions s
 WHERE s.owner_id = payledger.current_owner_id();
