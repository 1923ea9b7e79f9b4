-- NIP-90 paid jobs: a job per request, its payment policy, the unsigned
-- events the service provider publishes, and payments by zap (or by a
-- pay-in's invoice) credited once each as pay-ins to the provider.
-- See docs/nostr.md.

-- A service provider's settings: what its jobs take at creation (a
-- snapshot; a job may override them).
CREATE TABLE payledger.nostr_providers (
    provider_pubkey  text PRIMARY KEY CHECK (provider_pubkey ~ '^[0-9a-f]{64}$'),
    lnurl_pubkey     text NOT NULL CHECK (lnurl_pubkey ~ '^[0-9a-f]{64}$'),
    provider_account uuid NOT NULL,
    policy           text NOT NULL CHECK (policy IN ('upfront', 'after_completion', 'flexible')),
    -- the price: by request kind ({"5100": 21000}), else by function of the
    -- request, else this
    price_msat       bigint CHECK (price_msat >= 0),
    kind_prices      jsonb NOT NULL DEFAULT '{}'::jsonb,
    price_function   text,  -- a signature (payledger_internal.proc_name)
    payment_timeout  interval NOT NULL CHECK (payment_timeout >= '0'),
    -- how it takes money: zap receipts, payledger's invoices, or both
    methods          text[] NOT NULL CHECK (methods <@ ARRAY['zap', 'invoice'] AND cardinality(methods) > 0),
    -- a progressive job's part: the amount a partial feedback asks by default
    chunk_msat       bigint CHECK (chunk_msat > 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.nostr_jobs (
    id               uuid PRIMARY KEY,
    owner_id         text NOT NULL,  -- the service provider's owner key (of its account)
    request_id       text NOT NULL UNIQUE CHECK (request_id ~ '^[0-9a-f]{64}$'),
    request_kind     integer NOT NULL CHECK (request_kind BETWEEN 5000 AND 5999),
    request          jsonb NOT NULL,
    customer_pubkey  text NOT NULL CHECK (customer_pubkey ~ '^[0-9a-f]{64}$'),
    provider_pubkey  text NOT NULL CHECK (provider_pubkey ~ '^[0-9a-f]{64}$'),
    -- the provider's LNURL server key, which signs its zap receipts
    lnurl_pubkey     text NOT NULL CHECK (lnurl_pubkey ~ '^[0-9a-f]{64}$'),
    provider_account uuid NOT NULL,
    policy           text NOT NULL CHECK (policy IN ('upfront', 'after_completion', 'flexible')),
    bid_msat         bigint CHECK (bid_msat >= 0),
    price_msat       bigint NOT NULL CHECK (price_msat >= 0),
    -- what the job owes: its price, or the sum of its partial prices when
    -- that is more (reminders ask for what is left of it, and add nothing);
    -- and what was paid
    requested_msat   bigint NOT NULL DEFAULT 0 CHECK (requested_msat >= 0),
    paid_msat        bigint NOT NULL DEFAULT 0 CHECK (paid_msat >= 0),
    state            text NOT NULL CHECK (state IN ('payment_required', 'processing', 'delivered', 'success', 'error')),
    error            text,
    payment_timeout  interval NOT NULL,
    methods          text[] NOT NULL DEFAULT ARRAY['zap', 'invoice'],
    chunk_msat       bigint,
    -- when the job fails if what was asked for is not paid
    pay_by           timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'error') = (error IS NOT NULL))
);
CREATE INDEX nostr_jobs_due_idx ON payledger.nostr_jobs (pay_by) WHERE state IN ('payment_required', 'delivered');

-- The events the provider published for a job (signed by it, verified here).
CREATE TABLE payledger.nostr_job_events (
    event_id    text PRIMARY KEY CHECK (event_id ~ '^[0-9a-f]{64}$'),
    job_id      uuid NOT NULL,
    kind        integer NOT NULL,
    status      text,          -- a feedback's status; NULL for a result
    amount_msat bigint,        -- the amount it asks for, if any
    event       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nostr_job_events_job_idx ON payledger.nostr_job_events (job_id);

-- Each payment credited to a job: once per payment hash, zap receipt and zap request.
CREATE TABLE payledger.nostr_job_payments (
    job_id         uuid NOT NULL,
    payin_id       uuid NOT NULL UNIQUE,
    via            text NOT NULL CHECK (via IN ('zap', 'invoice')),
    payment_hash   text NOT NULL UNIQUE,
    receipt_id     text UNIQUE,
    zap_request_id text UNIQUE,
    payer_pubkey   text,
    amount_msat    bigint NOT NULL CHECK (amount_msat > 0),
    -- paid after the job had failed or finished: credited to suspense, not
    -- to the job's provider
    late           boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((via = 'zap') = (receipt_id IS NOT NULL AND zap_request_id IS NOT NULL))
);
CREATE INDEX nostr_job_payments_job_idx ON payledger.nostr_job_payments (job_id);

CREATE TRIGGER nostr_job_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.nostr_job_events
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER nostr_job_payments_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.nostr_job_payments
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER nostr_jobs_no_delete BEFORE DELETE OR TRUNCATE ON payledger.nostr_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();

ALTER TABLE payledger.nostr_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.nostr_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.nostr_job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.nostr_job_payments ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_providers', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_job_events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_job_payments', '');

-- A job by id, locked: every change to a job goes through its row lock.
CREATE FUNCTION payledger_internal.nostr_job_lock(job uuid)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs;
BEGIN
    PERFORM payledger_internal.require(job, 'job');
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = job FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', job USING ERRCODE = 'PL025';
    END IF;
    RETURN j;
END;
$$;

-- A job by id, for reading (the templates).
CREATE FUNCTION payledger_internal.nostr_job_find(job uuid)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs;
BEGIN
    PERFORM payledger_internal.require(job, 'job');
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', job USING ERRCODE = 'PL025';
    END IF;
    RETURN j;
END;
$$;

-- ["amount", msat] or ["amount", msat, bolt11], as NIP-90 writes it.
CREATE FUNCTION payledger_internal.nostr_amount_tag(amount_msat bigint, bolt11 text)
RETURNS jsonb LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN bolt11 IS NULL THEN jsonb_build_array('amount', amount_msat::text)
                ELSE jsonb_build_array('amount', amount_msat::text, bolt11) END;
$$;

-- Where a job stands once paid_msat, requested_msat or delivery changed.
CREATE FUNCTION payledger_internal.nostr_job_settle_state(j payledger.nostr_jobs, delivered boolean)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN j.state IN ('success', 'error') THEN j.state
        WHEN delivered AND j.paid_msat >= j.requested_msat THEN 'success'
        WHEN delivered THEN 'delivered'
        WHEN j.state = 'payment_required' AND j.paid_msat >= j.requested_msat THEN 'processing'
        ELSE j.state END;
$$;

-- Set (or replace) a service provider's settings. Returns its pubkey.
CREATE FUNCTION payledger.nostr_provider_configure(
    provider_pubkey  text,
    lnurl_pubkey     text,
    provider_account uuid,
    policy           text DEFAULT 'upfront',
    price_msat       bigint DEFAULT NULL,
    kind_prices      jsonb DEFAULT NULL,
    price_function   regproc DEFAULT NULL,
    payment_timeout  interval DEFAULT '1 hour',
    methods          text[] DEFAULT ARRAY['zap', 'invoice'],
    chunk_msat       bigint DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(provider_pubkey, 'provider_pubkey');
    PERFORM payledger_internal.require(lnurl_pubkey, 'lnurl_pubkey');
    PERFORM payledger_internal.require(provider_account, 'provider_account');
    PERFORM payledger_internal.require(policy, 'policy');
    PERFORM payledger_internal.require(payment_timeout, 'payment_timeout');
    PERFORM payledger_internal.require(methods, 'methods');
    PERFORM payledger_internal.nostr_job_settings_check(provider_pubkey, lnurl_pubkey, provider_account, policy, methods);
    IF price_msat < 0 OR chunk_msat <= 0 THEN
        RAISE EXCEPTION 'price_msat must be >= 0 and chunk_msat > 0' USING ERRCODE = 'PL001';
    END IF;
    IF kind_prices IS NOT NULL AND (jsonb_typeof(kind_prices) <> 'object' OR EXISTS (
            SELECT 1 FROM jsonb_each(kind_prices) k
             WHERE k.key !~ '^5[0-9]{3}$' OR jsonb_typeof(k.value) <> 'number' OR (k.value)::text !~ '^[0-9]{1,18}$')) THEN
        RAISE EXCEPTION 'kind_prices maps request kinds (5000-5999) to whole msat, like {"5100": 21000}' USING ERRCODE = '22023';
    END IF;
    IF payment_timeout < '0' THEN
        RAISE EXCEPTION 'payment_timeout must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.nostr_providers AS x (provider_pubkey, lnurl_pubkey, provider_account, policy, price_msat, kind_prices,
                                                price_function, payment_timeout, methods, chunk_msat)
    VALUES (provider_pubkey, lnurl_pubkey, provider_account, policy, price_msat, coalesce(kind_prices, '{}'),
            payledger_internal.proc_name(price_function::oid::regprocedure),
            payment_timeout, methods, chunk_msat)
    ON CONFLICT ON CONSTRAINT nostr_providers_pkey DO UPDATE
       SET lnurl_pubkey = EXCLUDED.lnurl_pubkey, provider_account = EXCLUDED.provider_account, policy = EXCLUDED.policy,
           price_msat = EXCLUDED.price_msat, kind_prices = EXCLUDED.kind_prices, price_function = EXCLUDED.price_function,
           payment_timeout = EXCLUDED.payment_timeout, methods = EXCLUDED.methods, chunk_msat = EXCLUDED.chunk_msat,
           updated_at = now();
    RETURN provider_pubkey;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_provider_configure(text, text, uuid, text, bigint, jsonb, regproc, interval, text[], bigint)
TO payledger_app;

-- The checks a provider's settings and a job's share.
CREATE FUNCTION payledger_internal.nostr_job_settings_check(provider_pubkey text, lnurl_pubkey text, provider_account uuid,
                                                   policy text, methods text[])
RETURNS void LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts;
BEGIN
    IF policy NOT IN ('upfront', 'after_completion', 'flexible') THEN
        RAISE EXCEPTION 'policy must be upfront, after_completion or flexible, got %', quote_literal(policy)
            USING ERRCODE = '22023';
    END IF;
    IF provider_pubkey !~ '^[0-9a-f]{64}$' OR lnurl_pubkey !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'pubkeys are 64 lower-case hex characters' USING ERRCODE = '22023';
    END IF;
    IF NOT methods <@ ARRAY['zap', 'invoice'] OR cardinality(methods) = 0 OR array_position(methods, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'methods are zap, invoice or both' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO acc FROM payledger.accounts a WHERE a.id = provider_account AND a.parent_id IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', provider_account USING ERRCODE = 'PL002';
    ELSIF acc.asset <> 'msat' THEN
        RAISE EXCEPTION 'account % holds %, jobs are paid in msat', provider_account, acc.asset USING ERRCODE = 'PL004';
    END IF;
END;
$$;

-- Open a job for a NIP-90 request (a signed kind 5000-5999 event), with
-- the provider's settings (nostr_provider_configure) unless given here.
-- Upfront jobs with a price wait in payment_required; the others start
-- processing. The price: price_msat, or price_function(request) (a function
-- of jsonb returning bigint), else the provider's price for the request's
-- kind, its function, its price. It is what the job owes.
CREATE FUNCTION payledger.nostr_job_open(
    request          jsonb,
    provider_pubkey  text,
    lnurl_pubkey     text DEFAULT NULL,
    provider_account uuid DEFAULT NULL,
    policy           text DEFAULT NULL,
    price_msat       bigint DEFAULT NULL,
    price_function   regproc DEFAULT NULL,
    payment_timeout  interval DEFAULT NULL,
    methods          text[] DEFAULT NULL,
    chunk_msat       bigint DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts;
    cfg payledger.nostr_providers;
    price bigint := price_msat;
    id uuid := payledger.new_id();
    bid text;
BEGIN
    PERFORM payledger_internal.require(request, 'request');
    PERFORM payledger_internal.require(provider_pubkey, 'provider_pubkey');
    SELECT * INTO cfg FROM payledger.nostr_providers x WHERE x.provider_pubkey = nostr_job_open.provider_pubkey;
    lnurl_pubkey := coalesce(lnurl_pubkey, cfg.lnurl_pubkey);
    provider_account := coalesce(provider_account, cfg.provider_account);
    policy := coalesce(policy, cfg.policy);
    payment_timeout := coalesce(payment_timeout, cfg.payment_timeout, interval '1 hour');
    methods := coalesce(methods, cfg.methods, ARRAY['zap', 'invoice']);
    chunk_msat := coalesce(chunk_msat, cfg.chunk_msat);
    IF lnurl_pubkey IS NULL OR provider_account IS NULL OR policy IS NULL THEN
        RAISE EXCEPTION 'give lnurl_pubkey, provider_account and policy, or configure the provider first' USING ERRCODE = '22004',
            HINT = 'payledger.nostr_provider_configure(provider_pubkey, lnurl_pubkey, provider_account, policy, …)';
    END IF;
    PERFORM payledger_internal.nostr_job_settings_check(provider_pubkey, lnurl_pubkey, provider_account, policy, methods);
    IF payment_timeout < '0' OR chunk_msat <= 0 THEN
        RAISE EXCEPTION 'payment_timeout must not be negative, chunk_msat must be positive' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(request -> 'kind') IS DISTINCT FROM 'number' OR (request ->> 'kind')::numeric NOT BETWEEN 5000 AND 5999 THEN
        RAISE EXCEPTION 'a job request has a kind between 5000 and 5999' USING ERRCODE = '22023';
    END IF;
    IF NOT payledger.nostr_verify_event(request) THEN
        RAISE EXCEPTION 'the job request''s id or signature does not verify' USING ERRCODE = 'PL026';
    END IF;
    SELECT * INTO acc FROM payledger.accounts a WHERE a.id = provider_account;
    price_function := coalesce(price_function, CASE WHEN price IS NULL AND NOT cfg.kind_prices ? (request ->> 'kind')
                                                    THEN cfg.price_function::regprocedure::oid::regproc END);
    IF price IS NULL AND price_function IS NULL THEN
        price := coalesce((cfg.kind_prices ->> (request ->> 'kind'))::bigint, cfg.price_msat);
    END IF;
    IF price IS NULL AND price_function IS NOT NULL THEN
        EXECUTE format('SELECT %s($1)', price_function) INTO price USING request;
    END IF;
    IF price IS NULL OR price < 0 THEN
        RAISE EXCEPTION 'give price_msat or a price_function that returns an amount >= 0' USING ERRCODE = '22023';
    END IF;
    SELECT t ->> 1 INTO bid FROM jsonb_array_elements(request -> 'tags') t WHERE t ->> 0 = 'bid' LIMIT 1;
    -- the job module's pay-in and pay-out types (idempotent)
    PERFORM payledger.register_payin_type('NOSTR_JOB', 'payment for a NIP-90 job');
    PERFORM payledger.register_payout_type('NOSTR_JOB', 'a NIP-90 service provider''s revenue');
    INSERT INTO payledger.nostr_jobs (id, owner_id, request_id, request_kind, request, customer_pubkey, provider_pubkey,
                                      lnurl_pubkey, provider_account, policy, bid_msat, price_msat, requested_msat, state,
                                      payment_timeout, methods, chunk_msat)
    VALUES (id, acc.owner_id, request ->> 'id', (request ->> 'kind')::integer, request, request ->> 'pubkey',
            provider_pubkey, lnurl_pubkey, provider_account, policy,
            CASE WHEN bid ~ '^[0-9]{1,18}$' THEN bid::bigint END, price, price,
            CASE WHEN policy = 'upfront' AND price > 0 THEN 'payment_required' ELSE 'processing' END, payment_timeout,
            methods, chunk_msat)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a job exists for this request' USING ERRCODE = 'PL014',
            DETAIL = format('job %s', (SELECT j.id FROM payledger.nostr_jobs j
                                        WHERE j.request_id = nostr_job_open.request ->> 'id'));
    END IF;
    RETURN id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_open(jsonb, text, text, uuid, text, bigint, regproc, interval, text[], bigint)
TO payledger_app;

-- The unsigned kind 7000 feedback the provider signs and publishes:
-- status payment-required, processing, partial, error or success; an amount
-- (default for payment-required: what is still owed) and optional bolt11.
CREATE FUNCTION payledger.nostr_job_feedback(
    job         uuid,
    status      text,
    amount_msat bigint DEFAULT NULL,
    bolt11      text DEFAULT NULL,
    message     text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_find(job);
    tags jsonb;
BEGIN
    PERFORM payledger_internal.require(status, 'status');
    IF status NOT IN ('payment-required', 'processing', 'partial', 'error', 'success') THEN
        RAISE EXCEPTION 'status must be payment-required, processing, partial, error or success' USING ERRCODE = '22023';
    END IF;
    IF amount_msat IS NULL AND status = 'payment-required' THEN
        amount_msat := greatest(j.requested_msat - j.paid_msat, 0);
    ELSIF amount_msat IS NULL AND status = 'partial' THEN
        amount_msat := j.chunk_msat;   -- a progressive job's part, when it has one
    END IF;
    IF amount_msat < 0 THEN
        RAISE EXCEPTION 'amount_msat must be >= 0' USING ERRCODE = 'PL001';
    END IF;
    tags := jsonb_build_array(CASE WHEN message IS NULL THEN jsonb_build_array('status', status)
                                   ELSE jsonb_build_array('status', status, message) END);
    IF amount_msat IS NOT NULL THEN
        tags := tags || jsonb_build_array(payledger_internal.nostr_amount_tag(amount_msat, bolt11));
    END IF;
    tags := tags || jsonb_build_array(jsonb_build_array('e', j.request_id), jsonb_build_array('p', j.customer_pubkey));
    RETURN jsonb_build_object('kind', 7000, 'pubkey', j.provider_pubkey, 'created_at', extract(epoch FROM now())::bigint,
                              'content', coalesce(CASE WHEN status = 'partial' THEN message END, ''), 'tags', tags);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_feedback(uuid, text, bigint, text, text) TO payledger_app;

-- The unsigned job result (kind = request kind + 1000), with the request,
-- e, p and i tags NIP-90 asks for, and the amount owed (default: what is
-- still owed) with an optional bolt11.
CREATE FUNCTION payledger.nostr_job_result(job uuid, content text, amount_msat bigint DEFAULT NULL, bolt11 text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_find(job);
    tags jsonb;
BEGIN
    PERFORM payledger_internal.require(content, 'content');
    amount_msat := coalesce(amount_msat, greatest(j.requested_msat - j.paid_msat, 0));
    tags := jsonb_build_array(jsonb_build_array('request', j.request::text), jsonb_build_array('e', j.request_id),
                              jsonb_build_array('p', j.customer_pubkey))
            || coalesce((SELECT jsonb_agg(t) FROM jsonb_array_elements(j.request -> 'tags') t WHERE t ->> 0 = 'i'), '[]');
    IF amount_msat > 0 THEN
        tags := tags || jsonb_build_array(payledger_internal.nostr_amount_tag(amount_msat, bolt11));
    END IF;
    RETURN jsonb_build_object('kind', j.request_kind + 1000, 'pubkey', j.provider_pubkey,
                              'created_at', extract(epoch FROM now())::bigint, 'content', content, 'tags', tags);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_result(uuid, text, bigint, text) TO payledger_app;

-- Record an event the provider signed and published for a job: feedback
-- (kind 7000) or the result. A partial feedback's amount is the price of
-- that part: the job owes the sum of its parts when that is more than its
-- price. Other amounts (payment-required, the result's) ask for what is
-- owed and add nothing. payment-required holds an upfront or flexible job
-- that still owes (payment_required, until paid); a result delivers the job
-- (success when paid, else delivered); an error feedback fails it. Every
-- event that asks while something is owed restarts the payment timeout.
-- Returns the job's state.
CREATE FUNCTION payledger.nostr_job_published(job uuid, event jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_lock(job);
    kind integer;
    status text;
    amount text;
    delivered boolean;
BEGIN
    PERFORM payledger_internal.require(event, 'event');
    IF NOT payledger.nostr_verify_event(event) THEN
        RAISE EXCEPTION 'the event''s id or signature does not verify' USING ERRCODE = 'PL026';
    END IF;
    kind := (event ->> 'kind')::integer;
    IF event ->> 'pubkey' <> j.provider_pubkey OR kind NOT IN (7000, j.request_kind + 1000)
       OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements(event -> 'tags') t
                       WHERE t ->> 0 = 'e' AND t ->> 1 = j.request_id) THEN
        RAISE EXCEPTION 'the event is not the provider''s feedback or result for this job' USING ERRCODE = '22023',
            HINT = 'Publish what nostr_job_feedback() or nostr_job_result() return, signed by the provider.';
    END IF;
    SELECT t ->> 1 INTO status FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'status' LIMIT 1;
    SELECT t ->> 1 INTO amount FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'amount' LIMIT 1;
    IF j.state = 'error' AND kind = 7000 AND status = 'error' THEN
        -- the error feedback a provider publishes for a job that failed
        -- (its timeout): recorded, nothing changes
        INSERT INTO payledger.nostr_job_events (event_id, job_id, kind, status, amount_msat, event)
        VALUES (event ->> 'id', j.id, kind, status, NULL, event)
        ON CONFLICT (event_id) DO NOTHING;
        RETURN j.state;
    END IF;
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    IF amount IS NOT NULL AND amount !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'the amount tag must be a whole number of msat, got %', quote_literal(amount) USING ERRCODE = 'PL001';
    END IF;
    INSERT INTO payledger.nostr_job_events (event_id, job_id, kind, status, amount_msat, event)
    VALUES (event ->> 'id', j.id, kind, CASE WHEN kind = 7000 THEN status END, amount::bigint, event)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN j.state;  -- published before: nothing changes
    END IF;
    IF kind = 7000 AND status = 'partial' AND amount IS NOT NULL THEN
        j.requested_msat := greatest(j.price_msat,
            (SELECT sum(e.amount_msat) FROM payledger.nostr_job_events e WHERE e.job_id = j.id AND e.status = 'partial'));
    END IF;
    delivered := EXISTS (SELECT 1 FROM payledger.nostr_job_events e WHERE e.job_id = j.id AND e.kind = j.request_kind + 1000);
    IF kind = 7000 AND status = 'error' THEN
        j.state := 'error';
        j.error := coalesce((SELECT t ->> 2 FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'status' LIMIT 1),
                            'error');
    ELSE
        IF kind = 7000 AND status = 'payment-required' AND NOT delivered AND j.state = 'processing'
           AND j.policy IN ('upfront', 'flexible') AND j.paid_msat < j.requested_msat THEN
            -- the provider waits for the money before it works on
            j.state := 'payment_required';
        END IF;
        j.state := payledger_internal.nostr_job_settle_state(j, delivered);
    END IF;
    UPDATE payledger.nostr_jobs x
       SET requested_msat = j.requested_msat, state = j.state, error = j.error, updated_at = now(),
           pay_by = CASE WHEN j.state IN ('payment_required', 'delivered') AND j.paid_msat < j.requested_msat
                         THEN now() + x.payment_timeout END
     WHERE x.id = j.id;
    RETURN j.state;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_published(uuid, jsonb) TO payledger_app;

-- Record a payment to a job whose pay-in is PAID, and move the job on, with
-- the event the provider acts on: nostr_job.paid (nothing more is owed),
-- nostr_job.partially_paid (something still is). A payment of one of
-- payledger's invoices to a failed job (paid after the timeout) is recorded
-- too, with nostr_job.paid_after_failure: the money is in the provider's
-- account, and refunding it is the provider's call.
CREATE FUNCTION payledger_internal.nostr_job_record(j payledger.nostr_jobs, payin uuid, via text, payment_hash text,
                                           amount_msat bigint, payer_pubkey text, receipt_id text, zap_request_id text)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    delivered boolean;
BEGIN
    INSERT INTO payledger.nostr_job_payments (job_id, payin_id, via, payment_hash, receipt_id, zap_request_id, payer_pubkey,
                                              amount_msat)
    VALUES (j.id, payin, via, payment_hash, receipt_id, zap_request_id, payer_pubkey, amount_msat);
    j.paid_msat := j.paid_msat + amount_msat;
    delivered := EXISTS (SELECT 1 FROM payledger.nostr_job_events e WHERE e.job_id = j.id AND e.kind = j.request_kind + 1000);
    j.state := payledger_internal.nostr_job_settle_state(j, delivered);
    UPDATE payledger.nostr_jobs x
       SET paid_msat = j.paid_msat, state = j.state, updated_at = now(),
           pay_by = CASE WHEN j.state IN ('payment_required', 'delivered') AND j.paid_msat < j.requested_msat
                         THEN x.pay_by END
     WHERE x.id = j.id;
    PERFORM payledger_internal.emit_event(
        CASE WHEN j.state = 'error' THEN 'nostr_job.paid_after_failure'
             WHEN j.paid_msat >= j.requested_msat THEN 'nostr_job.paid'
             ELSE 'nostr_job.partially_paid' END, j.id, j.owner_id,
        jsonb_build_object('job', j.id, 'request', j.request_id, 'payin', payin, 'via', via, 'amount_msat', amount_msat,
                           'paid_msat', j.paid_msat, 'requested_msat', j.requested_msat,
                           'owed_msat', greatest(j.requested_msat - j.paid_msat, 0), 'state', j.state, 'error', j.error));
    RETURN j;
END;
$$;

-- A payment the provider received outside payledger's invoices (a zap, or
-- a bolt11 it confirmed itself) as a pay-in from the payer to `account`,
-- settled at once (the money is in the provider's wallet). Returns it.
CREATE FUNCTION payledger_internal.nostr_job_payin(j payledger.nostr_jobs, via text, payment_hash text, amount_msat bigint,
                                          payer_pubkey text, account uuid, late boolean)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    SELECT * INTO p FROM payledger.create_payin('nostr:' || coalesce(payer_pubkey, j.customer_pubkey), 'NOSTR_JOB', 'msat',
        amount_msat, jsonb_build_array(jsonb_build_object('external', via)),
        jsonb_build_array(jsonb_build_object('type', 'NOSTR_JOB', 'account', account, 'amount', amount_msat)),
        metadata => jsonb_build_object('job', j.id, 'request', j.request_id, 'payment_hash', payment_hash)
                    || CASE WHEN late THEN '{"late": true}'::jsonb ELSE '{}'::jsonb END);
    PERFORM payledger.transition_payin(p.payin_id, 'PENDING', external_ref => payment_hash);
    PERFORM payledger.settle_payin(p.payin_id);
    RETURN p.payin_id;
END;
$$;

-- Credit such a payment to the job's provider. Once per payment hash,
-- receipt and zap request.
CREATE FUNCTION payledger_internal.nostr_job_credit(j payledger.nostr_jobs, via text, payment_hash text, amount_msat bigint,
                                           payer_pubkey text, receipt_id text, zap_request_id text)
RETURNS payledger.nostr_jobs LANGUAGE sql SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.nostr_job_record(j,
               payledger_internal.nostr_job_payin(j, via, payment_hash, amount_msat, payer_pubkey, j.provider_account, false),
               via, payment_hash, amount_msat, payer_pubkey, receipt_id, zap_request_id);
$$;

-- A payment that came after its job failed or finished (a zap, or a bolt11
-- the provider confirmed): booked like late money for an invoice, never
-- lost and never refused. A pay-in from the payer to the suspense account
-- late_payments, recorded against the job as late (so that it is credited
-- once) without counting as paid, and nostr_job.paid_after_failure
-- (nostr_job.paid_after_completion; nostr_job.unaccepted_payment for a zap
-- to a job that takes none) for the provider to refund or keep.
CREATE FUNCTION payledger_internal.nostr_job_credit_late(j payledger.nostr_jobs, via text, payment_hash text, amount_msat bigint,
                                                payer_pubkey text, receipt_id text, zap_request_id text)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    payin uuid := payledger_internal.nostr_job_payin(j, via, payment_hash, amount_msat, payer_pubkey,
                      payledger_internal.open_account_as(NULL, 'payledger', 'msat', 'suspense', 'late_payments',
                                                         false, NULL, NULL), true);
BEGIN
    INSERT INTO payledger.nostr_job_payments (job_id, payin_id, via, payment_hash, receipt_id, zap_request_id, payer_pubkey,
                                              amount_msat, late)
    VALUES (j.id, payin, via, payment_hash, receipt_id, zap_request_id, payer_pubkey, amount_msat, true);
    PERFORM payledger_internal.emit_event(
        CASE j.state WHEN 'error' THEN 'nostr_job.paid_after_failure' WHEN 'success' THEN 'nostr_job.paid_after_completion'
                     ELSE 'nostr_job.unaccepted_payment' END,
        j.id, j.owner_id,
        jsonb_build_object('job', j.id, 'request', j.request_id, 'payin', payin, 'via', via, 'amount_msat', amount_msat,
                           'payer_pubkey', payer_pubkey, 'state', j.state, 'error', j.error, 'to', 'suspense'));
    RETURN j;
END;
$$;

-- Ask for a job's payment by one of payledger's own invoices: a pay-in from
-- nostr:<customer> to the provider's account, paid by the 'invoice' rail,
-- and its invoice, which the worker opens at a Lightning provider (the
-- route's, or the one given). Put the invoice's payment_request in the amount
-- tag of the feedback or result once it is there. When the worker (or a
-- webhook) sees the invoice paid, the pay-in is PAID and the job credited in
-- that same transaction; an invoice that expires fails its pay-in and leaves
-- the job alone. Each call is a new invoice (progressive jobs ask several
-- times). The amount defaults to what is still owed.
CREATE FUNCTION payledger.nostr_job_invoice(
    job         uuid,
    amount_msat bigint DEFAULT NULL,
    provider    uuid DEFAULT NULL,
    expiry      interval DEFAULT NULL)
RETURNS TABLE (payin_id uuid, invoice_id uuid, invoice_msat bigint, status payledger.invoice_status)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_lock(job);
    amount bigint := coalesce(amount_msat, j.requested_msat - j.paid_msat);
    p record;
    inv payledger.invoices;
BEGIN
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    IF NOT 'invoice' = ANY (j.methods) THEN
        RAISE EXCEPTION 'job % takes no invoices (methods %)', job, j.methods USING ERRCODE = '22023';
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION 'an invoice asks for a positive amount, got % msat', amount USING ERRCODE = 'PL001',
            HINT = CASE WHEN amount_msat IS NULL THEN 'Nothing is owed; give amount_msat.' ELSE '' END;
    END IF;
    SELECT * INTO p FROM payledger.create_payin('nostr:' || j.customer_pubkey, 'NOSTR_JOB', 'msat', amount,
        '[{"external": "invoice"}]'::jsonb,
        jsonb_build_array(jsonb_build_object('type', 'NOSTR_JOB', 'account', j.provider_account, 'amount', amount)),
        metadata => jsonb_build_object('job', j.id, 'request', j.request_id, 'via', 'invoice'));
    inv := payledger_internal.open_invoice(p.payin_id, provider, expiry, 'NIP-90 job ' || j.request_id);
    RETURN QUERY SELECT p.payin_id, inv.id, amount, inv.status;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_invoice(uuid, bigint, uuid, interval) TO payledger_app;

-- A job's invoice pay-in reached PAID (a handler of the pay-in lifecycle, in
-- the settling transaction; the lock handler below locked the job first).
CREATE FUNCTION payledger_internal.nostr_job_invoice_paid(p payledger.payins)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs;
BEGIN
    IF p.metadata ->> 'via' IS DISTINCT FROM 'invoice' THEN
        RETURN;
    END IF;
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = (p.metadata ->> 'job')::uuid FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM payledger.nostr_job_payments n WHERE n.payin_id = p.id) THEN
        -- (an invoice's payment hash; a pay-in an application settled by hand
        -- may have no reference)
        PERFORM payledger_internal.nostr_job_record(j, p.id, 'invoice', coalesce(p.external_ref, 'payin:' || p.id), p.cost,
                                           NULL, NULL, NULL);
    END IF;
END;
$$;

-- A job's pay-in locks its job before the accounts, as a zap's payment does
-- (docs/reliability.md, Lock order): a lock handler of the pay-in lifecycle.
CREATE FUNCTION payledger_internal.nostr_job_payin_lock(p payledger.payins)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF p.metadata ? 'job' THEN
        PERFORM FROM payledger.nostr_jobs j WHERE j.id = (p.metadata ->> 'job')::uuid FOR UPDATE;
    END IF;
END;
$$;

SELECT payledger_internal.register_payin_handler('nostr', 'lock', 200, '{PAID}',
                                        'payledger_internal.nostr_job_payin_lock(payledger.payins)', 'NOSTR_JOB'),
       payledger_internal.register_payin_handler('nostr', 'reached', 200, '{PAID}',
                                        'payledger_internal.nostr_job_invoice_paid(payledger.payins)', 'NOSTR_JOB');

-- Pay a job with a zap receipt (kind 9735) whose e tag is one of the job's
-- published events: verified (docs/nostr.md) against the provider's LNURL key
-- and pubkey and that event, then credited once. outcome: credited,
-- suspense (the job had failed or finished, or takes no zaps: booked to the
-- suspense account late_payments, with an event),
-- duplicate (this payment was credited before), invalid (failures say why).
CREATE FUNCTION payledger.nostr_job_pay_zap(receipt jsonb)
RETURNS TABLE (outcome text, job_id uuid, failures text[], amount_msat bigint, paid_msat bigint, requested_msat bigint,
               state text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    ev record;
    j payledger.nostr_jobs;
    v record;
BEGIN
    PERFORM payledger_internal.require(receipt, 'receipt');
    SELECT e.* INTO ev FROM jsonb_array_elements(receipt -> 'tags') t
      JOIN payledger.nostr_job_events e ON e.event_id = t ->> 1
     WHERE t ->> 0 = 'e' LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the receipt zaps no event published for a job' USING ERRCODE = 'PL025';
    END IF;
    j := payledger_internal.nostr_job_lock(ev.job_id);
    SELECT * INTO v FROM payledger.verify_zap_receipt(receipt, j.lnurl_pubkey, recipient => j.provider_pubkey,
                                                      expected_event => ev.event_id);
    IF NOT v.valid THEN
        RETURN QUERY SELECT 'invalid', j.id, v.failures, v.amount_msat, j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.nostr_job_payments p
                WHERE p.payment_hash = v.payment_hash OR p.receipt_id = v.receipt_id OR p.zap_request_id = v.request_id) THEN
        RETURN QUERY SELECT 'duplicate', j.id, '{}'::text[], v.amount_msat, j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF j.state IN ('error', 'success') OR NOT 'zap' = ANY (j.methods) THEN
        -- (a zap to a job that takes no zaps is booked the same way: the
        -- money is the provider's to return)
        j := payledger_internal.nostr_job_credit_late(j, 'zap', v.payment_hash, v.amount_msat, v.payer_pubkey, v.receipt_id,
                                                      v.request_id);
        RETURN QUERY SELECT 'suspense', j.id, '{}'::text[], v.amount_msat, j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    j := payledger_internal.nostr_job_credit(j, 'zap', v.payment_hash, v.amount_msat, v.payer_pubkey, v.receipt_id, v.request_id);
    RETURN QUERY SELECT 'credited', j.id, '{}'::text[], v.amount_msat, j.paid_msat, j.requested_msat, j.state;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_pay_zap(jsonb) TO payledger_app;

-- Pay a job with an invoice settled outside payledger (the provider's own
-- bolt11 from an amount tag, confirmed at its node): credited once per
-- payment hash (late, to suspense, when the job had failed or finished).
-- Invoices from nostr_job_invoice are credited by themselves.
CREATE FUNCTION payledger.nostr_job_pay_invoice(job uuid, payment_hash text, amount_msat bigint)
RETURNS TABLE (outcome text, paid_msat bigint, requested_msat bigint, state text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_lock(job);
BEGIN
    PERFORM payledger_internal.require(payment_hash, 'payment_hash');
    PERFORM payledger_internal.require(amount_msat, 'amount_msat');
    IF payment_hash !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'payment_hash is 64 lower-case hex characters' USING ERRCODE = '22023';
    END IF;
    IF amount_msat <= 0 THEN
        RAISE EXCEPTION 'amount_msat must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.nostr_job_payments p WHERE p.payment_hash = nostr_job_pay_invoice.payment_hash) THEN
        RETURN QUERY SELECT 'duplicate', j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payment_hash = nostr_job_pay_invoice.payment_hash) THEN
        RAISE EXCEPTION 'the invoice with this payment hash is payledger''s own' USING ERRCODE = '22023',
            HINT = 'It credits its job when the worker or a webhook sees it paid.';
    END IF;
    IF j.state IN ('error', 'success') THEN
        j := payledger_internal.nostr_job_credit_late(j, 'invoice', payment_hash, amount_msat, NULL, NULL, NULL);
        RETURN QUERY SELECT 'suspense', j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    j := payledger_internal.nostr_job_credit(j, 'invoice', payment_hash, amount_msat, NULL, NULL, NULL);
    RETURN QUERY SELECT 'credited', j.paid_msat, j.requested_msat, j.state;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_pay_invoice(uuid, text, bigint) TO payledger_app;

-- Fail a job (the provider's error, or a payment that did not come).
CREATE FUNCTION payledger.nostr_job_fail(job uuid, message text)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger_internal.nostr_job_lock(job);
BEGIN
    PERFORM payledger_internal.require(message, 'message');
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    UPDATE payledger.nostr_jobs x SET state = 'error', error = message, pay_by = NULL, updated_at = now() WHERE x.id = j.id;
    RETURN 'error';
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_job_fail(uuid, text) TO payledger_app;

-- Fail the jobs whose payment did not come in time ('payment timeout');
-- returns how many. Each writes the event the provider publishes its error
-- feedback on: nostr_job.timed_out (nothing was paid) or
-- nostr_job.insufficient (less than owed). Jobs locked by another session
-- are left for the next run.
CREATE FUNCTION payledger.nostr_expire_jobs(max_jobs integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n integer := 0;
    j payledger.nostr_jobs;
BEGIN
    PERFORM payledger_internal.require_limit(max_jobs, 'max_jobs');
    FOR j IN WITH due AS (
                 SELECT x.id FROM payledger.nostr_jobs x
                  WHERE x.state IN ('payment_required', 'delivered') AND x.pay_by <= clock_timestamp()
                  ORDER BY x.pay_by LIMIT max_jobs FOR UPDATE SKIP LOCKED)
             UPDATE payledger.nostr_jobs x
                SET state = 'error', error = format('payment timeout: paid %s of %s msat', x.paid_msat, x.requested_msat),
                    pay_by = NULL, updated_at = now()
               FROM due WHERE x.id = due.id
             RETURNING x.* LOOP
        PERFORM payledger_internal.emit_event(
            CASE WHEN j.paid_msat > 0 THEN 'nostr_job.insufficient' ELSE 'nostr_job.timed_out' END, j.id, j.owner_id,
            jsonb_build_object('job', j.id, 'request', j.request_id, 'paid_msat', j.paid_msat,
                               'requested_msat', j.requested_msat, 'owed_msat', j.requested_msat - j.paid_msat,
                               'error', j.error));
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.nostr_expire_jobs(integer) TO payledger_app;

-- Invariants of jobs (part of payledger.check_invariants()).
SELECT payledger_internal.register_housekeeping_step('nostr', 'jobs_expired', 50, 'payledger.nostr_expire_jobs(integer)',
                                            max_calls => 1);

CREATE FUNCTION payledger_internal.nostr_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT 'nostr_job_paid', j.id::text, format('paid_msat %s, credited payments %s', j.paid_msat, coalesce(p.total, 0))
      FROM payledger.nostr_jobs j
      LEFT JOIN (SELECT p.job_id, sum(p.amount_msat) AS total FROM payledger.nostr_job_payments p
                  WHERE NOT p.late GROUP BY p.job_id) p
        ON p.job_id = j.id
     WHERE j.paid_msat <> coalesce(p.total, 0)
    UNION ALL
    -- what a job owes: its price, or the sum of its partial prices when more
    SELECT 'nostr_job_requested', j.id::text, format('requested_msat %s, price %s, partial prices %s', j.requested_msat,
                                                     j.price_msat, coalesce(e.total, 0))
      FROM payledger.nostr_jobs j
      LEFT JOIN (SELECT e.job_id, sum(e.amount_msat) AS total FROM payledger.nostr_job_events e
                  WHERE e.status = 'partial' GROUP BY e.job_id) e
        ON e.job_id = j.id
     WHERE j.requested_msat <> greatest(j.price_msat, coalesce(e.total, 0))
    UNION ALL
    SELECT 'nostr_payment_paid_in', p.payment_hash, format('pay-in %s', p.payin_id)
      FROM payledger.nostr_job_payments p LEFT JOIN payledger.payins x ON x.id = p.payin_id
     WHERE x.id IS NULL OR x.state <> 'PAID' OR x.cost <> p.amount_msat OR coalesce(x.external_ref, 'payin:' || x.id) <> p.payment_hash
    UNION ALL
    SELECT 'nostr_invoice_credited', x.id::text, format('job %s', x.metadata ->> 'job')
      FROM payledger.payins x
     WHERE x.type = 'NOSTR_JOB' AND x.state = 'PAID' AND x.metadata ->> 'via' = 'invoice'
       AND NOT EXISTS (SELECT 1 FROM payledger.nostr_job_payments p WHERE p.payin_id = x.id)
    UNION ALL
    SELECT 'nostr_job_state', j.id::text, format('%s with paid %s of requested %s', j.state, j.paid_msat, j.requested_msat)
      FROM payledger.nostr_jobs j
     WHERE (j.state = 'success' AND j.paid_msat < j.requested_msat)
        OR (j.state = 'payment_required' AND j.policy = 'after_completion')
$$;

-- What a service provider (by its owner key) sees of its jobs.
CREATE VIEW payledger.my_nostr_jobs WITH (security_barrier) AS
SELECT j.id, j.request_id, j.request_kind, j.customer_pubkey, j.policy, j.price_msat, j.requested_msat, j.paid_msat,
       j.state, j.error, j.pay_by, j.created_at, j.updated_at
  FROM payledger.nostr_jobs j
 WHERE j.owner_id = payledger.current_owner_id();
