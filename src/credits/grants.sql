-- payledger credits: grants (lots), voids and expiry.

-- Grant credits to an organisation: a lot with its own account, funded by
-- one journal. Idempotent per (org, idempotency_key): a repeat returns the
-- first grant; with other terms it is PL008. Topping up settles the
-- organisation's unpaid overage at once (and lifts its blocks).
CREATE FUNCTION payledger.grant_credits(
    org             text,
    credits         numeric,
    source          text DEFAULT 'manual',
    metric          text DEFAULT NULL,
    priority        integer DEFAULT 10,
    expires_at      timestamptz DEFAULT NULL,
    effective_at    timestamptz DEFAULT NULL,
    never_expires   boolean DEFAULT false,
    cost_basis      numeric DEFAULT NULL,
    cost_asset      text DEFAULT NULL,
    payin           uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    g payledger.credit_grants;
    amount bigint;
    id uuid := payledger.new_id();
    acc uuid;
    eff timestamptz := coalesce(effective_at, now());
    exp timestamptz;
    cat text;
BEGIN
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.require(source, 'source');
    IF source NOT IN ('purchase', 'recurring_purchase', 'gift_code', 'promotion', 'manual', 'rollover') THEN
        RAISE EXCEPTION 'unknown grant source %', source USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'priority must be between 0 and 1000' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    amount := payledger_internal.credits_minor(credits);
    PERFORM payledger_internal.credit_require_metric(metric);
    exp := CASE WHEN never_expires THEN NULL ELSE coalesce(expires_at, eff + interval '1 year') END;
    IF exp IS NOT NULL AND exp <= eff THEN
        RAISE EXCEPTION 'a grant must expire after it takes effect' USING ERRCODE = '22023';
    END IF;
    cat := CASE WHEN source IN ('gift_code', 'promotion') THEN 'promotional' ELSE 'paid' END;
    PERFORM payledger_internal.credit_lock(org);
    IF idempotency_key IS NOT NULL OR payin IS NOT NULL THEN
        SELECT * INTO g FROM payledger.credit_grants x
         WHERE (x.org_id = org AND x.idempotency_key = grant_credits.idempotency_key)
            OR x.payin_id = grant_credits.payin;
        IF FOUND THEN
            IF (g.org_id, g.amount, g.metric, g.source, g.priority) IS DISTINCT FROM (org, amount, metric, source, priority) THEN
                RAISE EXCEPTION 'idempotency key % (or pay-in %) was used for another grant', idempotency_key, payin
                    USING ERRCODE = 'PL008', DETAIL = 'grant ' || g.id;
            END IF;
            RETURN g.id;
        END IF;
    END IF;
    acc := payledger_internal.open_account_as('credits', org, payledger.credit_asset(), 'credit_grant', 'grant:' || id,
                                     false, NULL, '{}');
    INSERT INTO payledger.credit_grants (id, org_id, amount, metric, priority, category, source, effective_at, expires_at,
                                         cost_basis, cost_asset, payin_id, account_id, grant_journal, idempotency_key, metadata)
    VALUES (id, org, amount, metric, priority, cat, source, eff, exp, cost_basis, cost_asset, payin, acc,
            payledger_internal.credit_move(payledger_internal.credit_system_account('credits_issued'), acc, amount,
                                  jsonb_build_object('grant', id), eff, 'credit_grant'),
            idempotency_key, coalesce(metadata, '{}'));
    INSERT INTO payledger.credit_live_grants VALUES
        (id, org, metric, priority, exp, CASE cat WHEN 'promotional' THEN 0 ELSE 1 END, eff, acc);
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    -- the new credit pays what metering could not (and lifts the blocks)
    IF EXISTS (SELECT 1 FROM payledger.credit_meters m WHERE m.org_id = org AND m.blocked) THEN
        PERFORM payledger_internal.meter_batch(ARRAY[org], true);
    END IF;
    PERFORM payledger_internal.credit_check_thresholds(org);
    RETURN id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.grant_credits(text, numeric, text, text, integer, timestamptz, timestamptz, boolean, numeric, text, uuid, text, jsonb) TO payledger_app;

-- Forfeit what is left of a grant (idempotent: a voided grant has nothing left).
CREATE FUNCTION payledger.void_grant(grant_id uuid, reason text DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    g payledger.credit_grants;
    left_ bigint;
    j uuid;
BEGIN
    PERFORM payledger_internal.require(grant_id, 'grant_id');
    SELECT * INTO g FROM payledger.credit_grants x WHERE x.id = grant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'grant % does not exist', grant_id USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger_internal.credit_lock(g.org_id);
    DELETE FROM payledger.credit_live_grants l WHERE l.grant_id = g.id;
    left_ := payledger.balance(g.account_id);
    IF left_ > 0 THEN
        j := payledger_internal.credit_move(g.account_id, payledger_internal.credit_system_account('credits_voided'), left_,
                                   jsonb_build_object('grant', g.id, 'reason', reason), NULL, 'credit_void');
        INSERT INTO payledger.credit_grant_events VALUES (g.id, 'voided', left_, j, now(), reason);
        PERFORM payledger_internal.credit_check_thresholds(g.org_id);
    END IF;
    RETURN payledger.credits_of(coalesce(left_, 0));
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.void_grant(uuid, text) TO payledger_app;

-- Expire what is left of grants past their expiry (and its grace, so that
-- late metering of usage from before the expiry can still burn them): one
-- engine batch, so every account is locked in one pass (a loop of transfers
-- would lock them out of order and could deadlock with a consumer). An
-- organisation busy at that moment is skipped and left to the next sweep.
-- Returns the grants expired.
CREATE FUNCTION payledger.expire_credits(max_grants integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    grace interval := coalesce((SELECT s.expiry_grace FROM payledger.credit_settings s), '1 day');
    sink uuid;
    orgs text[];
    locked text[];
    g_id uuid[];
    g_account uuid[];
    g_left bigint[];
    r record;
BEGIN
    PERFORM payledger_internal.require_limit(max_grants, 'max_grants');
    max_grants := least(max_grants, payledger.setting_int('max_batch_size'));
    SELECT coalesce(array_agg(DISTINCT l.org_id ORDER BY l.org_id), '{}') INTO orgs
      FROM (SELECT l.org_id FROM payledger.credit_live_grants l WHERE l.expires_at < now() - grace
             ORDER BY l.org_id, l.expires_at LIMIT max_grants) l;
    -- (try-locks, in org_id order: a sweep never waits for an organisation)
    SELECT coalesce(array_agg(x.org_id ORDER BY x.o), '{}') INTO locked
      FROM unnest(orgs) WITH ORDINALITY AS x(org_id, o) WHERE payledger_internal.credit_try_lock(x.org_id);
    IF cardinality(locked) = 0 THEN
        RETURN 0;
    END IF;
    -- under the organisations' locks a grant's balance does not change
    WITH gone AS (
        DELETE FROM payledger.credit_live_grants l
         WHERE l.grant_id IN (SELECT x.grant_id FROM payledger.credit_live_grants x
                               WHERE x.org_id = ANY (locked) AND x.expires_at < now() - grace
                               ORDER BY x.org_id, x.expires_at LIMIT max_grants)
        RETURNING l.grant_id, l.account_id)
    SELECT coalesce(array_agg(g.grant_id ORDER BY g.grant_id), '{}'), coalesce(array_agg(g.account_id ORDER BY g.grant_id), '{}'),
           coalesce(array_agg(a.balance ORDER BY g.grant_id), '{}')
      INTO g_id, g_account, g_left
      FROM gone g JOIN payledger.accounts a ON a.id = g.account_id;
    IF EXISTS (SELECT 1 FROM unnest(g_left) b WHERE b > 0) THEN
        sink := payledger_internal.credit_system_account('credits_expired');
        FOR r IN
            WITH x AS (
                SELECT x.grant_id, x.account_id, x.amount, row_number() OVER (ORDER BY x.grant_id) AS i
                  FROM unnest(g_id, g_account, g_left) AS x(grant_id, account_id, amount) WHERE x.amount > 0),
            b AS (  -- (a CTE: the batch runs once)
                SELECT * FROM payledger_internal.engine_batch_as('credits', (
                    SELECT jsonb_agg(jsonb_build_object(
                               'postings', jsonb_build_array(jsonb_build_object('account', x.account_id, 'amount', -x.amount),
                                                             jsonb_build_object('account', sink, 'amount', x.amount)),
                               'idempotency_key', 'credit-expire:' || x.grant_id,
                               'metadata', jsonb_build_object('grant', x.grant_id), 'kind', 'credit_expire') ORDER BY x.i)
                      FROM x)))
            SELECT b.status, b.journal_id, b.sqlstate, b.message, b.detail, x.grant_id, x.amount
              FROM x JOIN b ON b.item = x.i LOOP
            IF r.status = 'error' THEN
                PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
            END IF;
            INSERT INTO payledger.credit_grant_events VALUES (r.grant_id, 'expired', r.amount, r.journal_id, now(), NULL);
        END LOOP;
    END IF;
    PERFORM payledger_internal.credit_thresholds(locked);
    RETURN cardinality(g_id);
END;
$$;
