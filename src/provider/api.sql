-- payledger providers: the SQL API. Admin functions set up profiles,
-- providers, routes and hooks; the application asks for invoices, passes
-- webhooks and manages subscriptions; the worker's three steps (claim, call,
-- record) and its housekeeping are functions too, so `CALL
-- payledger.run_tick()` does exactly what the background worker does.

---------------------------------------------------------------------------
-- Settings the SQL side reads (defined in src/gucs.rs; defaults here too,
-- for sessions that have not loaded the library)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.setting_int(name text, fallback integer)
RETURNS integer LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('payledger.' || name, true), '')::integer, fallback);
$$;

-- Exponential backoff after n failures: 2^n seconds, at most worker_max_backoff.
CREATE FUNCTION payledger.backoff(n integer)
RETURNS interval LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(secs => least(power(2, least(greatest(n, 0), 30)),
                                       payledger.setting_int('worker_max_backoff', 600)));
$$;

---------------------------------------------------------------------------
-- Profiles, providers, routes (admin)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.create_merchant_profile(
    name       text,
    owner_id   text DEFAULT NULL,
    is_default boolean DEFAULT false,
    metadata   jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.merchant_profiles;
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid profile name %', name USING ERRCODE = '22023';
    END IF;
    SELECT * INTO p FROM payledger.merchant_profiles m WHERE m.name = create_merchant_profile.name;
    IF FOUND THEN
        IF p.owner_id IS DISTINCT FROM create_merchant_profile.owner_id
           OR p.is_default <> coalesce(create_merchant_profile.is_default, false) THEN
            RAISE EXCEPTION 'merchant profile % exists with other settings', name USING ERRCODE = 'PL014';
        END IF;
        RETURN p.id;
    END IF;
    IF is_default THEN
        UPDATE payledger.merchant_profiles m SET is_default = false WHERE m.is_default;
    END IF;
    INSERT INTO payledger.merchant_profiles (id, name, owner_id, is_default, metadata)
    VALUES (payledger.new_id(), name, owner_id, coalesce(is_default, false), coalesce(metadata, '{}'))
    RETURNING * INTO p;
    RETURN p.id;
END;
$$;

CREATE FUNCTION payledger.profile_id(profile text)
RETURNS uuid LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    SELECT m.id INTO id FROM payledger.merchant_profiles m WHERE m.name = profile;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'merchant profile % does not exist', profile USING ERRCODE = 'PL028';
    END IF;
    RETURN id;
END;
$$;

-- The credential field each kind needs (checked when a provider is added).
CREATE FUNCTION payledger.provider_credential_field(kind payledger.provider_kind)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE kind WHEN 'lnbits' THEN 'invoice_key' WHEN 'lnd_rest' THEN 'macaroon'
                     WHEN 'cln_rest' THEN 'rune' WHEN 'btcpay' THEN 'api_key' WHEN 'stripe' THEN 'secret_key' END;
$$;

CREATE FUNCTION payledger.add_provider(
    profile        text,
    name           text,
    kind           payledger.provider_kind,
    base_url       text,
    credentials    jsonb,
    config         jsonb DEFAULT '{}'::jsonb,
    rail           text DEFAULT NULL,
    asset          text DEFAULT NULL,
    invoice_expiry interval DEFAULT '1 hour',
    monitoring     interval DEFAULT '1 hour',
    priority       integer DEFAULT 0,
    webhook_secret text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pid uuid;
    prov payledger.providers;
    field text;
BEGIN
    PERFORM payledger.require(profile, 'profile');
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(kind, 'kind');
    PERFORM payledger.require(base_url, 'base_url');
    PERFORM payledger.require(credentials, 'credentials');
    -- (the worker reads both back: nothing it cannot parse gets stored)
    PERFORM payledger.json_readable(credentials), payledger.json_readable(coalesce(config, '{}'));
    pid := payledger.profile_id(profile);
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid provider name %', name USING ERRCODE = '22023';
    END IF;
    IF base_url !~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$' THEN
        RAISE EXCEPTION 'base_url must be an http(s) URL without credentials, query or fragment'
            USING ERRCODE = '22023';
    END IF;
    field := payledger.provider_credential_field(kind);
    IF jsonb_typeof(credentials) <> 'object' OR jsonb_typeof(credentials -> field) IS DISTINCT FROM 'string' THEN
        -- the message names the field, never the value
        RAISE EXCEPTION 'credentials of a % provider need a string "%"', kind, field USING ERRCODE = '22023';
    END IF;
    IF kind = 'btcpay' AND jsonb_typeof(config -> 'store_id') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'a btcpay provider needs config {"store_id": …}' USING ERRCODE = '22023';
    END IF;
    asset := coalesce(asset, CASE WHEN kind = 'stripe' THEN NULL ELSE 'msat' END);
    PERFORM payledger.require(asset, 'asset');
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = add_provider.asset) THEN
        RAISE EXCEPTION 'asset % does not exist', asset USING ERRCODE = 'PL003';
    END IF;
    INSERT INTO payledger.providers AS p (id, profile_id, name, kind, base_url, rail, asset, config,
                                          invoice_expiry, monitoring, priority)
    VALUES (payledger.new_id(), pid, name, kind, base_url,
            coalesce(rail, CASE WHEN kind = 'stripe' THEN 'card' ELSE 'invoice' END), asset,
            coalesce(config, '{}'), coalesce(invoice_expiry, '1 hour'), coalesce(monitoring, '1 hour'),
            coalesce(priority, 0))
    ON CONFLICT ON CONSTRAINT providers_profile_id_name_key DO NOTHING
    RETURNING * INTO prov;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % already exists in profile %', name, profile USING ERRCODE = 'PL014',
            HINT = 'Change its credentials with set_provider_credentials; retire it with set_provider_active.';
    END IF;
    INSERT INTO payledger.provider_secrets (provider_id, credentials, webhook_secret)
    VALUES (prov.id, credentials, webhook_secret);
    RETURN prov.id;
END;
$$;

CREATE FUNCTION payledger.set_provider_credentials(provider uuid, credentials jsonb, webhook_secret text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k payledger.provider_kind;
    field text;
BEGIN
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(credentials, 'credentials');
    PERFORM payledger.json_readable(credentials);
    SELECT p.kind INTO k FROM payledger.providers p WHERE p.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    field := payledger.provider_credential_field(k);
    IF jsonb_typeof(credentials) <> 'object' OR jsonb_typeof(credentials -> field) IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'credentials of a % provider need a string "%"', k, field USING ERRCODE = '22023';
    END IF;
    UPDATE payledger.provider_secrets s
       SET credentials = set_provider_credentials.credentials,
           webhook_secret = coalesce(set_provider_credentials.webhook_secret, s.webhook_secret),
           updated_at = now()
     WHERE s.provider_id = provider;
END;
$$;

CREATE FUNCTION payledger.set_provider_active(provider uuid, active boolean)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(active, 'active');
    UPDATE payledger.providers p SET active = set_provider_active.active WHERE p.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
END;
$$;

-- Route a pay-in type's invoices to a profile. Existing invoices and
-- subscriptions keep the provider they were pinned to.
CREATE FUNCTION payledger.route_payin_type(payin_type text, profile text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pid uuid;
BEGIN
    PERFORM payledger.require(payin_type, 'payin_type');
    PERFORM payledger.require(profile, 'profile');
    pid := payledger.profile_id(profile);
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = payin_type) THEN
        RAISE EXCEPTION 'pay-in type % is not registered', payin_type USING ERRCODE = 'PL022';
    END IF;
    INSERT INTO payledger.payin_routes AS r (payin_type, profile_id) VALUES (payin_type, pid)
    ON CONFLICT ON CONSTRAINT payin_routes_pkey DO UPDATE SET profile_id = excluded.profile_id;
END;
$$;

-- The provider for a new invoice: in the given profile (else the type's
-- route, else the default profile), the first active provider serving the
-- rail in the asset, by priority then name. NULL when none does.
CREATE FUNCTION payledger.pick_provider(payin_type text, asset text, rail text, profile uuid DEFAULT NULL)
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT p.id FROM payledger.providers p
     WHERE p.profile_id = coalesce(profile,
                                   (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = pick_provider.payin_type),
                                   (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default))
       AND p.active AND p.rail = pick_provider.rail AND p.asset = pick_provider.asset
     ORDER BY p.priority, p.name
     LIMIT 1;
$$;

---------------------------------------------------------------------------
-- Invoices
---------------------------------------------------------------------------

-- Open the invoice row of a pay-in that waits for one (status creating; the
-- worker creates it at the provider). Idempotent: the pay-in's existing
-- invoice is returned as it is. Without a provider to issue it: PL028.
CREATE FUNCTION payledger.open_invoice(
    payin        uuid,
    provider     uuid DEFAULT NULL,
    expiry       interval DEFAULT NULL,
    memo         text DEFAULT NULL,
    subscription uuid DEFAULT NULL)
RETURNS payledger.invoices
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    prov payledger.providers;
    inv payledger.invoices;
    max_age interval := make_interval(secs => payledger.setting_int('worker_max_invoice_age', 259200));
BEGIN
    PERFORM payledger.require(payin, 'payin');
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF p.state <> 'PENDING_INVOICE_CREATION' THEN
        RAISE EXCEPTION 'pay-in % is %, not waiting for an invoice', payin, p.state USING ERRCODE = 'PL020';
    END IF;
    IF expiry IS NOT NULL AND expiry <= '0' THEN
        RAISE EXCEPTION 'expiry must be positive' USING ERRCODE = '22023';
    END IF;
    -- (the row lock above makes a concurrent call wait, then find the row)
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    IF provider IS NOT NULL THEN
        SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
        END IF;
        IF prov.asset <> p.asset OR prov.rail <> p.external_method THEN
            RAISE EXCEPTION 'provider % serves % in %, not % in %', prov.name, prov.rail, prov.asset,
                p.external_method, p.asset USING ERRCODE = 'PL004';
        END IF;
    ELSE
        SELECT * INTO prov FROM payledger.providers x
         WHERE x.id = payledger.pick_provider(p.type, p.asset, p.external_method);
    END IF;
    IF prov.id IS NULL THEN
        RAISE EXCEPTION 'no active provider serves % in % for pay-in type %', p.external_method, p.asset, p.type
            USING ERRCODE = 'PL028', HINT = 'Add one with add_provider, or route the type with route_payin_type.';
    END IF;
    INSERT INTO payledger.invoices (id, payin_id, provider_id, provider_kind, provider_name, profile_id, subscription_id,
                                    asset, amount, memo, expiry, status, monitor_until, next_check_at)
    VALUES (payledger.new_id(), p.id, prov.id, prov.kind, prov.name, prov.profile_id, subscription,
            p.asset, p.external_amount, coalesce(memo, p.type || ' ' || p.id), coalesce(expiry, prov.invoice_expiry),
            -- the creation deadline: an invoice not created within its own
            -- expiry (a long outage) fails its pay-in; due at once and first
            -- in line (a payer is waiting for it), in this tick too
            'creating', now() + least(max_age, coalesce(expiry, prov.invoice_expiry)), '-infinity')
    RETURNING * INTO inv;
    RETURN inv;
END;
$$;

-- For the application: pin the provider, expiry or memo of a pay-in's
-- invoice right after creating the pay-in (else the worker opens it with the
-- route's provider and defaults).
CREATE FUNCTION payledger.request_invoice(
    payin    uuid,
    provider uuid DEFAULT NULL,
    expiry   interval DEFAULT NULL,
    memo     text DEFAULT NULL)
RETURNS TABLE (invoice_id uuid, status payledger.invoice_status, provider_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
BEGIN
    inv := payledger.open_invoice(payin, provider, expiry, memo);
    RETURN QUERY SELECT inv.id, inv.status, inv.provider_id;
END;
$$;

-- Money that arrived for a pay-in that had already failed: from the rail's
-- clearing account to the suspense account 'late_payments', with an event,
-- so that nothing received goes unrecorded. What to do with it (credit the
-- payer, refund) is the operator's call.
CREATE FUNCTION payledger.record_late_payment(inv payledger.invoices, received bigint)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    late uuid;
    j uuid;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id;
    late := payledger.open_account('payledger', p.asset, 'suspense', 'late_payments');
    j := payledger.transfer(p.external_account, late, received, 'late-payment:' || inv.id,
                            jsonb_build_object('invoice', inv.id, 'payin', p.id), NULL, 'late_payment');
    PERFORM payledger.emit_event('invoice.paid_late', inv.id, p.owner_id,
        jsonb_build_object('invoice', inv.id, 'payin', p.id, 'payin_state', p.state, 'amount', received,
                           'asset', p.asset, 'journal', j));
    RETURN j;
END;
$$;

-- When to check an unsettled invoice again: after a tenth of its age, at
-- most a minute until it expires and at most ten minutes after (while it is
-- watched for late money). Young invoices (the ones customers are paying)
-- are checked at every tick, old ones rarely, so that the checks a provider
-- must answer do not grow with the invoices left unpaid; webhooks bring news
-- sooner. (The soak found both: every pending invoice checked at every
-- tick, then every expired one, outgrew what LNbits answers.)
CREATE FUNCTION payledger.invoice_recheck_at(i payledger.invoices)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT now() + least((now() - i.created_at) / 10,
                         CASE WHEN i.expires_at IS NULL OR now() < i.expires_at THEN interval '1 minute'
                              ELSE interval '10 minutes' END);
$$;

-- Apply what was learnt about an invoice: by the worker after a call, or by
-- a verified webhook. The invoice row is locked first (then the pay-in, then
-- accounts), and every change is guarded by the state it comes from, so two
-- reports of the same payment settle it once.
--   {"op": "create", "ok": true, "external_id", "payment_hash", "payment_request", "expires_at", "monitor_until"}
--   {"op": "create", "ok": false, "error", "retryable"}
--   {"op": "check", "status": "paid", "received", "preimage"}
--   {"op": "check", "status": "pending" | "expired" | "invalid" | "not_found", "note"}
--   {"op": "check", "ok": false, "error", "retryable"}
-- Returns what it did, in a word.
CREATE FUNCTION payledger.invoice_apply(invoice uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
    p payledger.payins;
    prov payledger.providers;
    t record;
    received bigint;
    said text := result ->> 'status';
    max_attempts integer := payledger.setting_int('worker_create_attempts', 5);
BEGIN
    SELECT * INTO inv FROM payledger.invoices i WHERE i.id = invoice FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invoice % does not exist', invoice USING ERRCODE = 'PL029';
    END IF;
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = inv.provider_id;

    IF result ->> 'op' = 'create' THEN
        IF inv.status <> 'creating' THEN
            RETURN 'ignored';
        END IF;
        IF result ->> 'ok' = 'false' THEN
            -- an unreachable provider does not use up the tries (its backoff
            -- paces them); the creation deadline (monitor_until) still holds
            IF coalesce((result ->> 'retryable')::boolean, false) THEN
                UPDATE payledger.invoices i
                   SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                       create_attempts = greatest(i.create_attempts - 1, 0),
                       next_check_at = now(), locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                RETURN 'creation_unreachable';
            END IF;
            IF inv.create_attempts >= max_attempts THEN
                UPDATE payledger.invoices i
                   SET status = 'failed', last_error = left(result ->> 'error', 500), next_check_at = NULL,
                       locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED', 'INVOICE_CREATION_FAILED');
                RETURN 'creation_failed';
            END IF;
            UPDATE payledger.invoices i
               SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                   next_check_at = now() + payledger.backoff(i.create_attempts), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'creation_retry';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'pending', external_id = result ->> 'external_id', payment_hash = result ->> 'payment_hash',
               payment_request = result ->> 'payment_request',
               expires_at = coalesce(to_timestamp((result ->> 'expires_at')::double precision), now() + i.expiry),
               monitor_until = least(i.created_at + make_interval(secs => payledger.setting_int('worker_max_invoice_age', 259200)),
                                     coalesce(to_timestamp((result ->> 'monitor_until')::double precision),
                                              coalesce(to_timestamp((result ->> 'expires_at')::double precision),
                                                       now() + i.expiry) + prov.monitoring)),
               errors = 0, last_error = NULL, next_check_at = now(), locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        SELECT * INTO t FROM payledger.transition_payin(inv.payin_id, 'PENDING', NULL,
                                                        coalesce(result ->> 'payment_hash', result ->> 'external_id'));
        RETURN CASE WHEN t.changed THEN 'created' ELSE 'created_for_' || lower(t.state::text) END;
    END IF;

    -- a check (or a webhook's news)
    IF result ->> 'ok' = 'false' OR said = 'not_found' THEN
        UPDATE payledger.invoices i
           SET errors = i.errors + 1, checks = i.checks + 1,
               last_error = left(coalesce(result ->> 'error', 'not found at the provider'), 500),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL
                                    ELSE now() + payledger.backoff(i.errors + 1) END,
               locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        RETURN 'error';
    END IF;

    IF said = 'paid' THEN
        IF inv.status = 'paid' THEN
            UPDATE payledger.invoices i SET next_check_at = NULL, locked_until = NULL WHERE i.id = inv.id;
            RETURN 'already_paid';
        END IF;
        received := coalesce((result ->> 'received')::bigint, inv.amount);
        IF received < inv.amount THEN
            -- not all of it: keep watching, and say so
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, last_error = format('underpaid: %s of %s', received, inv.amount),
                   next_check_at = now(), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'underpaid';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'paid', amount_received = received, preimage = result ->> 'preimage', paid_at = now(),
               checks = i.checks + 1, errors = 0, last_error = NULL, next_check_at = NULL, locked_until = NULL,
               updated_at = now()
         WHERE i.id = inv.id
        RETURNING * INTO inv;
        -- locked, so that a cancel or failure committing meanwhile is seen
        -- (then the money is a late payment, not lost)
        SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id FOR NO KEY UPDATE;
        IF p.state IN ('PENDING_INVOICE_CREATION', 'PENDING', 'HELD') THEN
            IF p.state = 'PENDING_INVOICE_CREATION' THEN
                PERFORM payledger.transition_payin(p.id, 'PENDING', NULL, coalesce(inv.payment_hash, inv.external_id));
            END IF;
            SELECT * INTO t FROM payledger.transition_payin(p.id, 'PAID');
            RETURN 'paid';
        END IF;
        IF p.state = 'PAID' THEN
            RETURN 'already_paid';
        END IF;
        -- FAILED or CANCELLED before the money came
        UPDATE payledger.invoices i SET paid_late = true, late_journal = payledger.record_late_payment(inv, received)
         WHERE i.id = inv.id;
        RETURN 'paid_late';
    END IF;

    IF said = 'pending' THEN
        UPDATE payledger.invoices i
           SET checks = i.checks + 1, errors = 0, last_error = NULL, locked_until = NULL, updated_at = now(),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL ELSE payledger.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        RETURN 'pending';
    END IF;

    IF said IN ('expired', 'invalid') THEN
        IF inv.status IN ('paid', 'failed') OR (inv.status = 'expired' AND said = 'expired') THEN
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, locked_until = NULL,
                   next_check_at = CASE WHEN i.next_check_at IS NOT NULL AND i.monitor_until > now()
                                        THEN payledger.invoice_recheck_at(i) END
             WHERE i.id = inv.id;
            RETURN 'unchanged';
        END IF;
        UPDATE payledger.invoices i
           SET status = CASE WHEN said = 'expired' THEN 'expired' ELSE 'failed' END::payledger.invoice_status,
               checks = i.checks + 1, errors = 0, locked_until = NULL, updated_at = now(),
               last_error = left(coalesce(result ->> 'note', result ->> 'error'), 500),
               -- an expired invoice is still watched for late money until monitor_until
               next_check_at = CASE WHEN said = 'expired' AND i.monitor_until > now() THEN payledger.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        IF result ->> 'note' IS NOT NULL THEN
            PERFORM payledger.emit_event('invoice.partial_payment', inv.id, NULL,
                jsonb_build_object('invoice', inv.id, 'payin', inv.payin_id, 'note', result ->> 'note'));
        END IF;
        PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
            CASE WHEN said = 'expired' THEN 'INVOICE_EXPIRED' ELSE 'UNKNOWN_FAILURE' END::payledger.payin_failure_reason);
        RETURN said;
    END IF;
    RAISE EXCEPTION 'unknown invoice result %', result USING ERRCODE = '22023';
END;
$$;

---------------------------------------------------------------------------
-- The worker's steps
---------------------------------------------------------------------------

-- Step 1, in its own short transaction: open invoices for pay-ins waiting
-- for one, then claim due invoices (SKIP LOCKED, with a lease so that a
-- crashed worker's claims come back) and return what to call. No secrets.
CREATE FUNCTION payledger.worker_claim(batch integer, due_before timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    lease interval := make_interval(secs => 30 + 2 * payledger.setting_int('worker_http_timeout', 10000) / 1000.0);
    w record;
    claims jsonb;
BEGIN
    PERFORM payledger.require_limit(batch, 'batch');
    -- (pay-ins no provider serves are the application's to invoice: left alone)
    FOR w IN SELECT p.id FROM payledger.payins p
              WHERE p.state = 'PENDING_INVOICE_CREATION' AND p.external_amount > 0
                AND NOT EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payin_id = p.id)
                AND payledger.pick_provider(p.type, p.asset, p.external_method) IS NOT NULL
              ORDER BY p.state_changed_at LIMIT batch
              FOR NO KEY UPDATE OF p SKIP LOCKED LOOP
        PERFORM payledger.open_invoice(w.id);
    END LOOP;

    WITH due AS (
        SELECT i.id FROM payledger.invoices i JOIN payledger.providers pr ON pr.id = i.provider_id
         WHERE i.next_check_at <= due_before
           AND (i.locked_until IS NULL OR i.locked_until < now())
           AND (pr.retry_after IS NULL OR pr.retry_after <= now())
         ORDER BY i.next_check_at
         LIMIT batch
         FOR UPDATE OF i SKIP LOCKED),
    claimed AS (
        UPDATE payledger.invoices i
           SET locked_until = now() + lease,
               create_attempts = i.create_attempts + (i.status = 'creating')::integer
          FROM due WHERE i.id = due.id
        RETURNING i.*)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'invoice_id', c.id, 'op', CASE WHEN c.status = 'creating' THEN 'create' ELSE 'check' END,
               'provider_id', c.provider_id, 'kind', pr.kind, 'base_url', pr.base_url, 'config', pr.config,
               'amount', c.amount, 'asset', c.asset, 'memo', c.memo,
               'expiry_secs', greatest(1, extract(epoch FROM c.expiry)::bigint),
               'external_id', c.external_id)), '[]')
      INTO claims
      FROM claimed c JOIN payledger.providers pr ON pr.id = c.provider_id;
    RETURN claims;
END;
$$;

-- Step 3: apply one result, in its own short transaction (the worker and
-- run_tick commit after each). One result per transaction is the lock order:
-- settling locks the invoice, then its pay-in, then that pay-in's accounts in
-- one pass, as a client's call does; a transaction settling two pay-ins would
-- lock two passes of accounts, out of order with a client's single pass, and
-- could deadlock with it. A result that cannot be applied is recorded on the
-- invoice (backoff) with a WARNING, never lost. Returns the outcome in a word.
CREATE FUNCTION payledger.worker_apply(result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(result, 'result');
    BEGIN
        RETURN payledger.invoice_apply((result ->> 'invoice_id')::uuid, result);
    EXCEPTION WHEN OTHERS THEN
        UPDATE payledger.invoices i
           SET last_error = left('applying the result: ' || SQLERRM, 500), locked_until = NULL,
               errors = i.errors + 1, next_check_at = now() + payledger.backoff(i.errors + 1)
         WHERE i.id = (result ->> 'invoice_id')::uuid;
        RAISE WARNING 'payledger worker: invoice %: %', result ->> 'invoice_id', SQLERRM;
        RETURN 'apply_error';
    END;
END;
$$;

-- After a batch's results are applied, in one more short transaction: the
-- providers' health (providers in id order). One that answered anything is
-- up; one that answered nothing backs off.
CREATE FUNCTION payledger.worker_provider_health(results jsonb)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    PERFORM payledger.require(results, 'results');
    FOR h IN SELECT (x ->> 'provider_id')::uuid AS id,
                    bool_or(NOT (x ->> 'ok' = 'false' AND coalesce((x ->> 'retryable')::boolean, false))) AS answered,
                    max(x ->> 'error') AS error
               FROM jsonb_array_elements(results) x
              WHERE x ? 'provider_id'
              GROUP BY 1 ORDER BY 1 LOOP
        IF h.answered THEN
            UPDATE payledger.providers x SET consecutive_failures = 0, retry_after = NULL, last_ok_at = now()
             WHERE x.id = h.id;
        ELSE
            UPDATE payledger.providers x
               SET consecutive_failures = x.consecutive_failures + 1,
                   retry_after = now() + payledger.backoff(x.consecutive_failures + 1),
                   last_error = left(h.error, 500)
             WHERE x.id = h.id;
        END IF;
    END LOOP;
END;
$$;

-- Invoices past their deadline: one unpaid past monitoring (or never created
-- in time) expires (or fails) and fails its pay-in, which gives back its
-- custodial legs; an expired one past monitoring is no longer watched.
-- Returns how many it closed. The worker calls it with max_invoices 1, one
-- transaction each (one pay-in's accounts per transaction: see worker_apply).
CREATE FUNCTION payledger.expire_invoices(max_invoices integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger.require_limit(max_invoices, 'max_invoices');
    FOR inv IN SELECT i.id, i.status, i.payin_id FROM payledger.invoices i
                WHERE i.next_check_at IS NOT NULL AND i.monitor_until < now()
                  AND (i.locked_until IS NULL OR i.locked_until < now())
                LIMIT max_invoices FOR UPDATE SKIP LOCKED LOOP
        -- an invoice whose closing fails (its pay-in's move raises) is
        -- backed off and reported, so that it holds up neither the others
        -- nor the worker
        BEGIN
            UPDATE payledger.invoices i
               SET status = CASE WHEN i.status = 'creating' THEN 'failed'
                                 WHEN i.status = 'pending' THEN 'expired' ELSE i.status END,
                   last_error = CASE WHEN i.status IN ('creating', 'pending') THEN coalesce(i.last_error, 'past its deadline')
                                     ELSE i.last_error END,
                   next_check_at = NULL, updated_at = now()
             WHERE i.id = inv.id;
            IF inv.status IN ('creating', 'pending') THEN
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
                    CASE WHEN inv.status = 'creating' THEN 'INVOICE_CREATION_FAILED' ELSE 'INVOICE_EXPIRED' END::payledger.payin_failure_reason);
            END IF;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.invoices i
               SET errors = i.errors + 1, last_error = left('closing failed: ' || msg, 500),
                   locked_until = now() + payledger.backoff(i.errors + 1), updated_at = now()
             WHERE i.id = inv.id;
            RAISE WARNING 'payledger: closing invoice % failed: %', inv.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger.register_housekeeping_step('provider', 'invoices_closed', 10,
                                            'payledger.expire_invoices(integer)', per_call => 1);

CREATE FUNCTION payledger.worker_note_tick(result jsonb, worker_pid integer DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_status
       SET last_tick_at = now(), ticks = ticks + 1, last_result = result,
           pid = coalesce(worker_pid, pid), started_at = CASE WHEN worker_pid IS DISTINCT FROM pid THEN now() ELSE started_at END;
$$;

-- One tick on demand, by the same steps as the background worker: claim and
-- commit, call the providers in a statement that holds no row lock and no
-- transaction id, record and commit, until nothing is due; then the
-- housekeeping. For operators and tests (a procedure: CALL it outside an
-- explicit transaction block).
-- (No SET search_path: a procedure with one cannot COMMIT. Every name in it
-- is qualified, and pg_catalog is searched first anyway.)
CREATE PROCEDURE payledger.run_tick(batch integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    claims jsonb;
    results jsonb;
    r jsonb;
    outcome text;
    counts jsonb := '{}';
    h record;
    calls integer;
    got bigint;
    took bigint;
    step_started timestamptz;
    n integer := coalesce(batch, payledger.setting_int('worker_batch_size', 500));
    m_orgs integer;
    m_charged integer;
    m_blocked integer;
    m_failed integer;
BEGIN
    LOOP
        claims := payledger.worker_claim(n, started);
        COMMIT;
        EXIT WHEN jsonb_array_length(claims) = 0;
        results := payledger.provider_call(claims);
        -- one result per transaction (see worker_apply)
        FOR r IN SELECT x FROM jsonb_array_elements(results) x LOOP
            outcome := payledger.worker_apply(r);
            COMMIT;
            counts := jsonb_set(counts, ARRAY[outcome], to_jsonb(coalesce((counts ->> outcome)::integer, 0) + 1));
        END LOOP;
        PERFORM payledger.worker_provider_health(results);
        COMMIT;
        EXIT WHEN jsonb_array_length(claims) < n;
    END LOOP;
    -- the housekeeping, a transaction per call (see housekeeping_plan)
    FOR h IN SELECT * FROM payledger.housekeeping_plan(n) LOOP
        calls := 0;
        took := 0;
        step_started := clock_timestamp();
        LOOP
            got := payledger.housekeeping_step(h.step, h.per_call);
            COMMIT;
            calls := calls + 1;
            took := took + got;
            EXIT WHEN got < h.per_call OR calls >= h.max_calls
                   OR clock_timestamp() - step_started > coalesce(h.budget, interval '100 years');
        END LOOP;
        counts := counts || jsonb_build_object(h.step, took);
    END LOOP;
    -- metering, every payledger.metering_interval seconds (four times a day)
    IF payledger.metering_due() THEN
        CALL payledger.meter_all(n, m_orgs, m_charged, m_blocked, m_failed);
        counts := counts || jsonb_build_object('orgs_metered', m_orgs, 'metering_failed', m_failed);
    END IF;
    PERFORM payledger.worker_note_tick(counts);
    COMMIT;
    PERFORM payledger.announce_events();
    COMMIT;
    RAISE NOTICE 'payledger tick: %', counts;
END;
$$;

---------------------------------------------------------------------------
-- Webhooks
---------------------------------------------------------------------------

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
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(body, 'body');
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    SELECT s.webhook_secret INTO secret FROM payledger.provider_secrets s WHERE s.provider_id = provider;
    SELECT * INTO v FROM payledger.webhook_verify_core(prov.kind::text, secret, coalesce(headers, '{}'), body);
    IF v.sqlstate IS NOT NULL THEN
        PERFORM payledger.raise_failure(v.sqlstate, v.message, NULL);
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

---------------------------------------------------------------------------
-- Events (outbox) and settle hooks
---------------------------------------------------------------------------

-- Only the row: a NOTIFY in the writing transaction would take PostgreSQL's
-- cluster-wide notify lock at every commit (it serializes committing
-- notifiers, and cut pay-in throughput by about a third in the benchmark).
-- announce_events() sends one NOTIFY for all rows written since the last.
-- (PL/pgSQL: its INSERT's plan is kept for the session; a SQL function with
-- SET is planned again at every call)
CREATE FUNCTION payledger.emit_event(topic text, subject uuid, owner text, payload jsonb)
RETURNS bigint LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    event_id bigint;
BEGIN
    INSERT INTO payledger.events AS e (topic, subject_id, owner_id, payload)
    VALUES (emit_event.topic, subject, owner, payload) RETURNING e.id INTO event_id;
    RETURN event_id;
END;
$$;

-- NOTIFY payledger_events once, with {"last_id": n}, when events were written
-- since the last announcement; returns n (NULL: nothing new). The worker calls
-- it every payledger.worker_notify_interval ms, run_tick at its end. The
-- UPDATE makes concurrent announcers take turns.
CREATE FUNCTION payledger.announce_events()
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    last_id bigint;
BEGIN
    SELECT max(e.id) INTO last_id FROM payledger.events e;
    UPDATE payledger.worker_status w SET announced_id = last_id WHERE w.announced_id < last_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('payledger_events', jsonb_build_object('last_id', last_id)::text);
    RETURN last_id;
END;
$$;

CREATE FUNCTION payledger.events_since(after_id bigint DEFAULT 0, max_events integer DEFAULT 100)
RETURNS SETOF payledger.events LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require_limit(coalesce(max_events, 100), 'max_events');
    RETURN QUERY SELECT * FROM payledger.events e WHERE e.id > coalesce(after_id, 0) ORDER BY e.id
                  LIMIT least(coalesce(max_events, 100), 10000);
END;
$$;

-- The hook runs with the search_path of the session that registers it, as
-- it would there: so this wrapper is SECURITY INVOKER and has no SET clause
-- (inside one, current_setting would see the function's own search_path).
CREATE FUNCTION payledger.register_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[] DEFAULT '{PAID}',
    max_attempts integer DEFAULT 10)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT payledger.define_settle_hook(name, function, on_states, max_attempts,
                                        pg_catalog.current_setting('search_path'));
$$;

CREATE FUNCTION payledger.define_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[],
    max_attempts integer,
    caller_search_path text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(function, 'function');
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                    WHERE p.oid = function AND p.pronargs = 2 AND p.proargtypes[0] = 'uuid'::regtype
                      AND p.proargtypes[1] = 'payledger.payin_state'::regtype) THEN
        RAISE EXCEPTION 'a settle hook takes (payin uuid, state payledger.payin_state), not %', function
            USING ERRCODE = '22023';
    END IF;
    IF NOT coalesce(on_states <@ '{PAID,FAILED,CANCELLED}'::payledger.payin_state[], false) THEN
        RAISE EXCEPTION 'hooks run on PAID, FAILED or CANCELLED' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.settle_hooks AS h (name, function, on_states, max_attempts, search_path)
    VALUES (name, function, on_states, coalesce(max_attempts, 10), coalesce(caller_search_path, ''))
    ON CONFLICT ON CONSTRAINT settle_hooks_pkey DO UPDATE
       SET function = excluded.function, on_states = excluded.on_states, max_attempts = excluded.max_attempts,
           search_path = excluded.search_path, active = true;
END;
$$;

CREATE FUNCTION payledger.unregister_settle_hook(name text)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.settle_hooks h SET active = false WHERE h.name = unregister_settle_hook.name;
$$;

-- Run one hook run in a subtransaction: a failing hook is recorded (and
-- retried by the worker with backoff), never undoing the settlement.
CREATE FUNCTION payledger.run_hook(hook_name text, payin uuid, state payledger.payin_state)
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h payledger.settle_hooks;
    run payledger.hook_runs;
    msg text;
BEGIN
    SELECT * INTO h FROM payledger.settle_hooks x WHERE x.name = hook_name;
    SELECT * INTO run FROM payledger.hook_runs r
     WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state FOR UPDATE;
    IF run.status <> 'pending' THEN
        RETURN run.status = 'done';
    END IF;
    BEGIN
        -- local to this function call (its SET clause restores ours after)
        PERFORM pg_catalog.set_config('search_path', h.search_path, true);
        EXECUTE format('SELECT %s($1, $2)', h.function::oid::regproc) USING payin, state;
        PERFORM pg_catalog.set_config('search_path', 'payledger, pg_catalog, pg_temp', true);
        UPDATE payledger.hook_runs r SET status = 'done', attempts = r.attempts + 1, done_at = now(),
                                         last_error = NULL, next_attempt_at = NULL
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state;
        RETURN true;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        UPDATE payledger.hook_runs r
           SET attempts = r.attempts + 1, last_error = left(msg, 500),
               status = CASE WHEN r.attempts + 1 >= h.max_attempts THEN 'failed' ELSE 'pending' END,
               next_attempt_at = CASE WHEN r.attempts + 1 >= h.max_attempts THEN NULL
                                      ELSE now() + payledger.backoff(r.attempts + 1) END
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state
        RETURNING * INTO run;
        IF run.status = 'failed' THEN
            PERFORM payledger.emit_event('hook.failed', payin, NULL,
                jsonb_build_object('hook', hook_name, 'payin', payin, 'state', state, 'error', left(msg, 500)));
        END IF;
        RETURN false;
    END;
END;
$$;

CREATE FUNCTION payledger.retry_hooks(max_runs integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    PERFORM payledger.require_limit(max_runs, 'max_runs');
    FOR r IN SELECT x.hook, x.payin_id, x.state FROM payledger.hook_runs x
              WHERE x.status = 'pending' AND x.next_attempt_at <= now()
              ORDER BY x.next_attempt_at LIMIT max_runs FOR UPDATE SKIP LOCKED LOOP
        PERFORM payledger.run_hook(r.hook, r.payin_id, r.state);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger.register_housekeeping_step('events', 'hooks_run', 60, 'payledger.retry_hooks(integer)', per_call => 1);

-- A pay-in reached PAID, FAILED or CANCELLED: the outbox event, and the
-- settle hooks, in the same transaction (a handler of the pay-in lifecycle,
-- after the other modules': src/payin/lifecycle.sql).
CREATE FUNCTION payledger.events_payin_reached(p payledger.payins)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    PERFORM payledger.emit_event('payin.' || lower(p.state::text), p.id, p.owner_id,
        jsonb_build_object('payin', p.id, 'type', p.type, 'state', p.state, 'failure_reason', p.failure_reason,
                           'cost', p.cost, 'asset', p.asset, 'at', p.state_changed_at));
    FOR h IN SELECT x.name FROM payledger.settle_hooks x WHERE x.active AND p.state = ANY (x.on_states) LOOP
        INSERT INTO payledger.hook_runs (hook, payin_id, state, status, next_attempt_at)
        VALUES (h.name, p.id, p.state, 'pending', now())
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            PERFORM payledger.run_hook(h.name, p.id, p.state);
        END IF;
    END LOOP;
END;
$$;
SELECT payledger.register_payin_handler('events', 'reached', 900, '{PAID,FAILED,CANCELLED}',
                                        'payledger.events_payin_reached(payledger.payins)');

---------------------------------------------------------------------------
-- Subscriptions
---------------------------------------------------------------------------

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
    PERFORM payledger.require(owner_id, 'owner_id');
    PERFORM payledger.require(payin_type, 'payin_type');
    PERFORM payledger.require(asset, 'asset');
    PERFORM payledger.require(amount, 'amount');
    PERFORM payledger.require(period, 'period');
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
    prof := coalesce(CASE WHEN profile IS NOT NULL THEN payledger.profile_id(profile) END,
                     (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = create_subscription.payin_type),
                     (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default));
    SELECT x ->> 'external' INTO rail FROM jsonb_array_elements(methods) x WHERE x ? 'external' LIMIT 1;
    IF rail IS NOT NULL THEN
        prov := payledger.pick_provider(payin_type, asset, rail, prof);
    END IF;
    INSERT INTO payledger.subscriptions (id, owner_id, payin_type, asset, amount, period, methods, payouts, split,
                                         payees, profile_id, provider_id, next_renewal_at, metadata)
    VALUES (id, owner_id, payin_type, asset, amount, period, methods, payouts, split, payees, prof, prov,
            coalesce(starts_at, now()), coalesce(metadata, '{}'));
    RETURN id;
END;
$$;

CREATE FUNCTION payledger.cancel_subscription(subscription uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(subscription, 'subscription');
    UPDATE payledger.subscriptions s SET status = 'cancelled' WHERE s.id = subscription;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
    END IF;
END;
$$;

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
    PERFORM payledger.require(subscription, 'subscription');
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
                    (SELECT payledger.pick_provider(x.type, x.asset, x.external_method, s.profile_id) AS id) p
                  WHERE x.id = c.payin_id));
        PERFORM payledger.open_invoice(c.payin_id, prov, NULL, NULL, s.id);
    END IF;
    UPDATE payledger.subscriptions x
       SET renewals = x.renewals + 1, next_renewal_at = x.next_renewal_at + x.period, last_payin_id = c.payin_id,
           errors = 0, last_error = NULL, retry_at = NULL
     WHERE x.id = s.id;
    RETURN c.payin_id;
END;
$$;

CREATE FUNCTION payledger.renew_due_subscriptions(max_subscriptions integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger.require_limit(max_subscriptions, 'max_subscriptions');
    FOR s IN SELECT x.id, x.owner_id, x.errors FROM payledger.subscriptions x
              WHERE x.status = 'active' AND x.next_renewal_at <= now() AND (x.retry_at IS NULL OR x.retry_at <= now())
              ORDER BY x.next_renewal_at LIMIT max_subscriptions FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            PERFORM payledger.renew_subscription(s.id);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.subscriptions x
               SET errors = x.errors + 1, last_error = left(msg, 500), retry_at = now() + payledger.backoff(x.errors + 1)
             WHERE x.id = s.id;
            PERFORM payledger.emit_event('subscription.renewal_failed', s.id, s.owner_id,
                jsonb_build_object('subscription', s.id, 'error', left(msg, 500), 'errors', s.errors + 1));
            RAISE WARNING 'payledger: renewing subscription %: %', s.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger.register_housekeeping_step('provider', 'subscriptions_renewed', 70,
                                            'payledger.renew_due_subscriptions(integer)', per_call => 1);

---------------------------------------------------------------------------
-- Views for end users
---------------------------------------------------------------------------

CREATE VIEW payledger.my_invoices WITH (security_barrier) AS
SELECT i.id, i.payin_id, i.status, i.asset, i.amount, i.payment_request, i.payment_hash, i.expires_at,
       i.paid_at, i.amount_received, i.created_at
  FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
 WHERE p.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_events WITH (security_barrier) AS
SELECT e.id, e.topic, e.subject_id, e.payload, e.created_at
  FROM payledger.events e
 WHERE e.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_subscriptions WITH (security_barrier) AS
SELECT s.id, s.payin_type, s.asset, s.amount, s.period, s.status, s.renewals, s.next_renewal_at, s.last_payin_id,
       s.created_at
  FROM payledger.subscriptions s
 WHERE s.owner_id = payledger.current_owner_id();

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

CREATE FUNCTION payledger.provider_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a paid invoice's pay-in is PAID, or its money went to the late account
    SELECT 'invoice_paid_payin_paid', i.id::text, format('pay-in %s is %s', p.id, p.state)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.status = 'paid' AND NOT i.paid_late AND p.state <> 'PAID'
    UNION ALL
    -- a PAID pay-in with an external leg has its invoice paid (when payledger issued one)
    SELECT 'payin_paid_invoice_paid', p.id::text, format('invoice %s is %s', i.id, i.status)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE p.state = 'PAID' AND i.status <> 'paid'
    UNION ALL
    -- late money is in the ledger, once
    SELECT 'late_payment_journal', i.id::text, 'no journal ' || i.late_journal
      FROM payledger.invoices i
     WHERE i.paid_late AND NOT EXISTS (SELECT 1 FROM payledger.journals j WHERE j.id = i.late_journal)
    UNION ALL
    -- an invoice's amount is what its pay-in owes on the rail
    SELECT 'invoice_amount', i.id::text, format('%s, the pay-in owes %s', i.amount, p.external_amount)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.amount <> p.external_amount
    UNION ALL
    -- a hook ran at most once per pay-in and state, and only for a state the pay-in reached
    SELECT 'hook_run_state', r.hook || ' ' || r.payin_id, 'the pay-in never reached ' || r.state
      FROM payledger.hook_runs r
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = r.payin_id AND h.to_state = r.state);
$$;
