-- payledger events: delivery of the outbox to HTTP endpoints the operator
-- registers, signed as the Standard Webhooks specification says
-- (webhook-id, webhook-timestamp, webhook-signature: v1, HMAC-SHA256 of
-- "id.timestamp.body" with the endpoint's whsec_ secret). At least once:
-- each event is queued once per endpoint whose topics match, sent by the
-- worker with no transaction open, retried with a backoff, and dead after
-- payledger.webhook_max_attempts failures. See docs/providers.md (Delivery
-- to webhook endpoints).

CREATE TABLE payledger.webhook_endpoints (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    url           text NOT NULL CHECK (url ~ '^https?://[^\s/?#@]+(/[^\s#]*)?$'),
    -- the topics it takes (LIKE patterns: 'payin.%'); NULL: every topic
    topics        text[],
    enabled       boolean NOT NULL DEFAULT true,
    -- every event up to this one has been queued for it (or was before it)
    queued_up_to  bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Readable by the worker and payledger_admin only.
CREATE TABLE payledger.webhook_endpoint_secrets (
    endpoint_id uuid PRIMARY KEY REFERENCES payledger.webhook_endpoints ON DELETE CASCADE,
    secret      text NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$')
);

--   pending    to be sent (again) at next_attempt_at
--   delivered  the endpoint answered 2xx
--   dead       it failed max_attempts times (retry_webhook_delivery sends it again)
CREATE TABLE payledger.webhook_deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES payledger.webhook_endpoints ON DELETE CASCADE,
    event_id        bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz,
    locked_until    timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id),
    CONSTRAINT webhook_delivery_due CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due_idx ON payledger.webhook_deliveries (next_attempt_at) WHERE status = 'pending';

ALTER TABLE payledger.webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.webhook_endpoint_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.webhook_deliveries ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.webhook_endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.webhook_endpoint_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.webhook_deliveries', '');

-- Register an endpoint (admin). It receives the events written from now on
-- (or after from_event), of the topics given (LIKE patterns; NULL: all).
-- Without a secret, one is made: returned once, kept where only the worker
-- and payledger_admin read it.
CREATE FUNCTION payledger.add_webhook_endpoint(name text, url text, topics text[] DEFAULT NULL, secret text DEFAULT NULL,
                                               from_event bigint DEFAULT NULL,
                                               OUT endpoint_id uuid, OUT endpoint_secret text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(url, 'url');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'an endpoint name is letters, digits and _.- (at most 63)' USING ERRCODE = '22023';
    END IF;
    IF url !~ '^https?://[^\s/?#@]+(/[^\s#]*)?$' THEN
        RAISE EXCEPTION 'url must be http(s)://host[/path], with no user info' USING ERRCODE = '22023';
    END IF;
    IF array_position(topics, NULL) IS NOT NULL OR cardinality(topics) = 0 THEN
        RAISE EXCEPTION 'topics is NULL (every topic) or a list of LIKE patterns' USING ERRCODE = '22023';
    END IF;
    endpoint_secret := coalesce(secret, 'whsec_' || encode(sha256(convert_to(gen_random_uuid()::text || clock_timestamp()::text
                                                                             || gen_random_uuid()::text, 'UTF8')), 'base64'));
    IF endpoint_secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' OR length(endpoint_secret) < 30 THEN
        RAISE EXCEPTION 'a secret is whsec_ and the base64 of at least 18 bytes' USING ERRCODE = '22023';
    END IF;
    endpoint_id := payledger.new_id();
    BEGIN
        INSERT INTO payledger.webhook_endpoints (id, name, url, topics, queued_up_to)
        VALUES (endpoint_id, add_webhook_endpoint.name, add_webhook_endpoint.url, add_webhook_endpoint.topics,
                coalesce(from_event, (SELECT coalesce(max(e.id), 0) FROM payledger.events e)));
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'an endpoint named % exists', name USING ERRCODE = 'PL014';
    END;
    INSERT INTO payledger.webhook_endpoint_secrets (endpoint_id, secret) VALUES (endpoint_id, endpoint_secret);
END;
$$;

-- Pause or resume an endpoint (admin). Events written while it is paused
-- are queued when it resumes: nothing is skipped.
CREATE FUNCTION payledger.set_webhook_endpoint_enabled(endpoint uuid, enabled boolean)
RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(endpoint, 'endpoint');
    PERFORM payledger_internal.require(enabled, 'enabled');
    UPDATE payledger.webhook_endpoints x SET enabled = set_webhook_endpoint_enabled.enabled WHERE x.id = endpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown webhook endpoint %', endpoint USING ERRCODE = '22023';
    END IF;
    RETURN enabled;
END;
$$;

-- Send a dead delivery again (admin): pending, its attempts counted afresh.
CREATE FUNCTION payledger.retry_webhook_delivery(delivery uuid)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    st text;
BEGIN
    PERFORM payledger_internal.require(delivery, 'delivery');
    SELECT d.status INTO st FROM payledger.webhook_deliveries d WHERE d.id = delivery FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown webhook delivery %', delivery USING ERRCODE = '22023';
    END IF;
    IF st = 'dead' THEN
        UPDATE payledger.webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now()
         WHERE d.id = delivery;
        RETURN 'pending';
    END IF;
    RETURN st;
END;
$$;

-- The worker's claim, in its own short transaction: queue the events each
-- enabled endpoint has not seen (up to batch per endpoint), then claim the
-- due deliveries (SKIP LOCKED, with a lease) and return what to send: the
-- message id (one per event, the same on every retry, as the specification
-- asks), the URL and the body. No secrets.
CREATE FUNCTION payledger.webhook_claim(batch integer, due_before timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    ep payledger.webhook_endpoints;
    upto bigint;
    claims jsonb;
    lease interval := make_interval(secs => 30 + 2 * payledger.setting_int('worker_http_timeout') / 1000.0);
BEGIN
    PERFORM payledger_internal.require_limit(batch, 'batch');
    FOR ep IN SELECT x.* FROM payledger.webhook_endpoints x WHERE x.enabled ORDER BY x.id FOR UPDATE SKIP LOCKED LOOP
        SELECT max(e.id) INTO upto FROM (SELECT e.id FROM payledger.events e WHERE e.id > ep.queued_up_to
                                          ORDER BY e.id LIMIT batch) e;
        CONTINUE WHEN upto IS NULL;
        INSERT INTO payledger.webhook_deliveries (id, endpoint_id, event_id, next_attempt_at)
        SELECT payledger.new_id(), ep.id, e.id, now() FROM payledger.events e
         WHERE e.id > ep.queued_up_to AND e.id <= upto
           AND (ep.topics IS NULL OR e.topic LIKE ANY (ep.topics))
        ON CONFLICT (endpoint_id, event_id) DO NOTHING;
        UPDATE payledger.webhook_endpoints x SET queued_up_to = upto WHERE x.id = ep.id;
    END LOOP;
    WITH due AS (
        SELECT d.id FROM payledger.webhook_deliveries d JOIN payledger.webhook_endpoints x ON x.id = d.endpoint_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= due_before AND x.enabled
           AND (d.locked_until IS NULL OR d.locked_until < now())
         ORDER BY d.next_attempt_at
         LIMIT batch
         FOR UPDATE OF d SKIP LOCKED),
    claimed AS (
        UPDATE payledger.webhook_deliveries d SET locked_until = now() + lease, attempts = d.attempts + 1
          FROM due WHERE d.id = due.id
        RETURNING d.*)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'delivery_id', c.id, 'endpoint_id', c.endpoint_id, 'url', x.url, 'msg_id', 'evt_' || e.id,
               'body', jsonb_build_object('type', e.topic,
                                          'timestamp', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                          'data', jsonb_build_object('id', e.id, 'subject_id', e.subject_id,
                                                                     'owner_id', e.owner_id, 'payload', e.payload))::text)
               ORDER BY c.event_id), '[]')
      INTO claims
      FROM claimed c JOIN payledger.webhook_endpoints x ON x.id = c.endpoint_id JOIN payledger.events e ON e.id = c.event_id;
    RETURN claims;
END;
$$;

-- Record what came of one send: {"delivery_id", "ok", "status", "error"}.
-- Returns delivered, retry or dead.
CREATE FUNCTION payledger.webhook_apply(result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    d payledger.webhook_deliveries;
BEGIN
    PERFORM payledger_internal.require(result, 'result');
    SELECT * INTO d FROM payledger.webhook_deliveries x WHERE x.id = (result ->> 'delivery_id')::uuid FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown webhook delivery %', result ->> 'delivery_id' USING ERRCODE = '22023';
    END IF;
    IF d.status <> 'pending' THEN
        RETURN 'webhook_' || d.status;
    END IF;
    IF (result ->> 'ok')::boolean THEN
        UPDATE payledger.webhook_deliveries x
           SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL, locked_until = NULL,
               last_status = (result ->> 'status')::integer, last_error = NULL
         WHERE x.id = d.id;
        RETURN 'webhook_delivered';
    END IF;
    UPDATE payledger.webhook_deliveries x
       SET status = CASE WHEN x.attempts >= payledger.setting_int('webhook_max_attempts') THEN 'dead' ELSE 'pending' END,
           next_attempt_at = CASE WHEN x.attempts >= payledger.setting_int('webhook_max_attempts') THEN NULL
                                  ELSE now() + payledger_internal.backoff(x.attempts) END,
           locked_until = NULL, last_status = (result ->> 'status')::integer, last_error = left(result ->> 'error', 500)
     WHERE x.id = d.id
    RETURNING * INTO d;
    RETURN CASE WHEN d.status = 'dead' THEN 'webhook_dead' ELSE 'webhook_retry' END;
END;
$$;
