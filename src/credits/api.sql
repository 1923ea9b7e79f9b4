-- payledger credits: the SQL API. Amounts in and out are credits as numeric
-- (exact, up to the credits asset's scale); stored as its minor unit.
-- Everything done to one organisation's credits runs under a transaction
-- advisory lock on the organisation, taken first: concurrent consumers queue
-- and never overspend, and the lock order stays org, then accounts.

---------------------------------------------------------------------------
-- Settings and system accounts
---------------------------------------------------------------------------

CREATE FUNCTION payledger.credit_asset()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.asset FROM payledger.credit_settings s), 'credit');
$$;

-- The credits asset (created on first use), its scale and the expiry grace.
CREATE FUNCTION payledger.credits_configure(
    asset        text DEFAULT 'credit',
    scale        integer DEFAULT 6,
    expiry_grace interval DEFAULT '1 day')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(asset, 'asset');
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = credits_configure.asset) THEN
        PERFORM payledger.create_asset(asset, coalesce(scale, 6), 'prepaid credits');
    END IF;
    IF expiry_grace < '0' THEN
        RAISE EXCEPTION 'expiry_grace must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_settings AS s (id, asset, expiry_grace)
    VALUES (true, asset, coalesce(expiry_grace, '1 day'))
    ON CONFLICT ON CONSTRAINT credit_settings_pkey DO UPDATE
       SET asset = excluded.asset, expiry_grace = excluded.expiry_grace;
    -- consumption credits one account for every organisation: shard it
    PERFORM payledger.set_account_shards(payledger.credit_system_account('credits_consumed'), 16);
    RETURN asset;
END;
$$;

-- A system account of the credits asset: credits_issued (the source of
-- grants, may go negative), credits_consumed, credits_expired, credits_voided.
CREATE FUNCTION payledger.credit_system_account(name text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger.open_account_as('credits', 'payledger', payledger.credit_asset(),
                                     CASE WHEN name = 'credits_issued' THEN 'credit_source' ELSE 'credit_sink' END,
                                     name, name = 'credits_issued', NULL, '{}');
$$;

-- Credits move between the module's own accounts (grants, system accounts),
-- which the generic API refuses (PL034): through the engine, as the module.
CREATE FUNCTION payledger.credit_move(from_account uuid, to_account uuid, amount bigint, metadata jsonb,
                                      effective_at timestamptz, kind text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (payledger.apply_as('credits', jsonb_build_object(
        'from', from_account, 'to', to_account, 'amount', amount, 'metadata', metadata,
        'effective_at', effective_at, 'kind', kind))).journal_id;
$$;

CREATE FUNCTION payledger.credit_post(postings jsonb, metadata jsonb, kind text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (payledger.apply_as('credits', jsonb_build_object(
        'postings', postings, 'metadata', metadata, 'kind', kind))).journal_id;
$$;

-- Credits (numeric) to the asset's minor unit; too many decimals is PL001.
CREATE FUNCTION payledger.credits_minor(credits numeric, what text DEFAULT 'credits')
RETURNS bigint LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    scale integer;
    v numeric;
BEGIN
    PERFORM payledger.require(credits, what);
    SELECT a.scale INTO scale FROM payledger.assets a WHERE a.code = payledger.credit_asset();
    IF scale IS NULL THEN
        RAISE EXCEPTION 'the credits asset % does not exist: call credits_configure()', payledger.credit_asset()
            USING ERRCODE = 'PL003';
    END IF;
    v := credits * (10::numeric ^ scale);
    IF v <> trunc(v) OR v <= 0 OR v > 9223372036854775807 THEN
        RAISE EXCEPTION '% must be positive with at most % decimals, got %', what, scale, credits USING ERRCODE = 'PL001';
    END IF;
    RETURN v::bigint;
END;
$$;

-- (a definer: the end-user views call it, and end users may not read assets)
CREATE FUNCTION payledger.credits_of(minor bigint)
RETURNS numeric LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(minor / (10::numeric ^ (SELECT a.scale FROM payledger.assets a WHERE a.code = payledger.credit_asset())));
$$;

CREATE FUNCTION payledger.credit_lock(org text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

-- For sweeps over many organisations (expiry, metering): they hold the
-- shared sink accounts' rows while moving on to the next organisation, so
-- waiting for an organisation there could deadlock with its own consumer.
-- They skip a busy organisation instead; the next sweep takes it.
CREATE FUNCTION payledger.credit_try_lock(org text)
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

---------------------------------------------------------------------------
-- Registries (admin)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.register_credit_metric(metric text, kind text DEFAULT 'counter', unit text DEFAULT 'unit')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(metric, 'metric');
    IF metric !~ '^[a-z][a-z0-9_]{0,62}$' OR kind IS NULL OR kind NOT IN ('counter', 'gauge') THEN
        RAISE EXCEPTION 'a metric is a lower-case name, of kind counter or gauge' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_metrics AS m (metric, kind, unit) VALUES (metric, kind, coalesce(unit, 'unit'))
    ON CONFLICT ON CONSTRAINT credit_metrics_pkey DO NOTHING;
    IF NOT FOUND AND (SELECT m.kind FROM payledger.credit_metrics m WHERE m.metric = register_credit_metric.metric) <> kind THEN
        RAISE EXCEPTION 'metric % exists with another kind', metric USING ERRCODE = 'PL014';
    END IF;
    RETURN metric;
END;
$$;

CREATE FUNCTION payledger.credit_require_metric(metric text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF metric IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_metrics m WHERE m.metric = credit_require_metric.metric) THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
END;
$$;

-- tiers: [{"from": 0, "to": 1000000, "price": 0.003}, {"from": 1000000, "price": 0.0022}]
-- in credits per unit of overage, contiguous from 0, the last one open.
CREATE FUNCTION payledger.set_credit_price_tiers(metric text, tiers jsonb)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    t record;
    expect numeric := 0;
    n integer := 0;
    last_open boolean := false;
BEGIN
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(tiers, 'tiers');
    PERFORM payledger.credit_require_metric(metric);
    IF jsonb_typeof(tiers) <> 'array' OR jsonb_array_length(tiers) = 0 THEN
        RAISE EXCEPTION 'tiers must be a non-empty JSON array' USING ERRCODE = '22023';
    END IF;
    DELETE FROM payledger.credit_price_tiers p WHERE p.metric = set_credit_price_tiers.metric;
    FOR t IN SELECT (x ->> 'from')::numeric AS f, (x ->> 'to')::numeric AS u, (x ->> 'price')::numeric AS price
               FROM jsonb_array_elements(tiers) x LOOP
        IF last_open OR t.f IS DISTINCT FROM expect OR t.price IS NULL OR t.price < 0 OR (t.u IS NOT NULL AND t.u <= t.f) THEN
            RAISE EXCEPTION 'tiers must run contiguously from 0 (each "from" the previous "to"), with a price >= 0'
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO payledger.credit_price_tiers VALUES (metric, t.f, t.u, t.price);
        expect := t.u;
        last_open := t.u IS NULL;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- What an overage costs, in credits (graduated tiers), rounded up to the
-- asset's minor unit once, on the total.
CREATE FUNCTION payledger.credit_cost(metric text, overage numeric)
RETURNS numeric LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(ceil(coalesce(sum((least(overage, coalesce(p.to_units, overage)) - p.from_units) * p.credits_per_unit), 0)
                           * (10::numeric ^ a.scale)) / (10::numeric ^ a.scale))
      FROM payledger.assets a
      LEFT JOIN payledger.credit_price_tiers p ON p.metric = credit_cost.metric AND p.from_units < greatest(overage, 0)
     WHERE a.code = payledger.credit_asset()
     GROUP BY a.scale;
$$;

CREATE FUNCTION payledger.define_credit_plan(name text, limits jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' OR jsonb_typeof(limits) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a plan has a name and limits as {"metric": monthly limit}' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(limits) LOOP
        PERFORM payledger.credit_require_metric(k);
        IF jsonb_typeof(limits -> k) <> 'number' OR (limits ->> k)::numeric < 0 THEN
            RAISE EXCEPTION 'the limit of % must be a number >= 0', k USING ERRCODE = '22023';
        END IF;
    END LOOP;
    INSERT INTO payledger.credit_plans (name) VALUES (name) ON CONFLICT DO NOTHING;
    DELETE FROM payledger.credit_plan_limits l WHERE l.plan = define_credit_plan.name;
    INSERT INTO payledger.credit_plan_limits (plan, metric, monthly_limit)
    SELECT name, e.key, e.value::text::numeric FROM jsonb_each(limits) e;
    RETURN name;
END;
$$;

-- An organisation's plan and billing-cycle anchor (cycles are months from it).
CREATE FUNCTION payledger.set_credit_org(org text, plan text DEFAULT NULL, cycle_anchor timestamptz DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    IF plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_plans p WHERE p.name = set_credit_org.plan) THEN
        RAISE EXCEPTION 'plan % does not exist', plan USING ERRCODE = 'PL031';
    END IF;
    INSERT INTO payledger.credit_orgs AS o (org_id, plan, cycle_anchor)
    VALUES (org, plan, coalesce(cycle_anchor, date_trunc('month', now())))
    ON CONFLICT ON CONSTRAINT credit_orgs_pkey DO UPDATE
       SET plan = excluded.plan, cycle_anchor = coalesce(set_credit_org.cycle_anchor, o.cycle_anchor);
END;
$$;

-- The start of the monthly cycle containing t: anchor + m months, for the m
-- that lands in t's own month, or the one before it (months clamp to their
-- last day: from Jan 31 the cycles start Feb 28, Mar 31, ...).
CREATE FUNCTION payledger.credit_cycle_start(anchor timestamptz, t timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m integer := (extract(year FROM t) - extract(year FROM anchor)) * 12 + extract(month FROM t) - extract(month FROM anchor);
BEGIN
    RETURN anchor + make_interval(months => m - (anchor + make_interval(months => m) > t)::integer);
END;
$$;

---------------------------------------------------------------------------
-- Grants
---------------------------------------------------------------------------

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
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(source, 'source');
    IF source NOT IN ('purchase', 'recurring_purchase', 'gift_code', 'promotion', 'manual', 'rollover') THEN
        RAISE EXCEPTION 'unknown grant source %', source USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'priority must be between 0 and 1000' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    amount := payledger.credits_minor(credits);
    PERFORM payledger.credit_require_metric(metric);
    exp := CASE WHEN never_expires THEN NULL ELSE coalesce(expires_at, eff + interval '1 year') END;
    IF exp IS NOT NULL AND exp <= eff THEN
        RAISE EXCEPTION 'a grant must expire after it takes effect' USING ERRCODE = '22023';
    END IF;
    cat := CASE WHEN source IN ('gift_code', 'promotion') THEN 'promotional' ELSE 'paid' END;
    PERFORM payledger.credit_lock(org);
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
    acc := payledger.open_account_as('credits', org, payledger.credit_asset(), 'credit_grant', 'grant:' || id,
                                     false, NULL, '{}');
    INSERT INTO payledger.credit_grants (id, org_id, amount, metric, priority, category, source, effective_at, expires_at,
                                         cost_basis, cost_asset, payin_id, account_id, grant_journal, idempotency_key, metadata)
    VALUES (id, org, amount, metric, priority, cat, source, eff, exp, cost_basis, cost_asset, payin, acc,
            payledger.credit_move(payledger.credit_system_account('credits_issued'), acc, amount,
                                  jsonb_build_object('grant', id), eff, 'credit_grant'),
            idempotency_key, coalesce(metadata, '{}'));
    INSERT INTO payledger.credit_live_grants VALUES
        (id, org, metric, priority, exp, CASE cat WHEN 'promotional' THEN 0 ELSE 1 END, eff, acc);
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    -- the new credit pays what metering could not (and lifts the blocks)
    IF EXISTS (SELECT 1 FROM payledger.credit_meters m WHERE m.org_id = org AND m.blocked) THEN
        PERFORM payledger.meter_batch(ARRAY[org], true);
    END IF;
    PERFORM payledger.credit_check_thresholds(org);
    RETURN id;
END;
$$;

-- Forfeit what is left of a grant (idempotent: a voided grant has nothing left).
CREATE FUNCTION payledger.void_grant(grant_id uuid, reason text DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    g payledger.credit_grants;
    left_ bigint;
    j uuid;
BEGIN
    PERFORM payledger.require(grant_id, 'grant_id');
    SELECT * INTO g FROM payledger.credit_grants x WHERE x.id = grant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'grant % does not exist', grant_id USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger.credit_lock(g.org_id);
    DELETE FROM payledger.credit_live_grants l WHERE l.grant_id = g.id;
    left_ := payledger.balance(g.account_id);
    IF left_ > 0 THEN
        j := payledger.credit_move(g.account_id, payledger.credit_system_account('credits_voided'), left_,
                                   jsonb_build_object('grant', g.id, 'reason', reason), NULL, 'credit_void');
        INSERT INTO payledger.credit_grant_events VALUES (g.id, 'voided', left_, j, now(), reason);
        PERFORM payledger.credit_check_thresholds(g.org_id);
    END IF;
    RETURN payledger.credits_of(coalesce(left_, 0));
END;
$$;

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
    PERFORM payledger.require_limit(max_grants, 'max_grants');
    max_grants := least(max_grants, payledger.setting_int('max_batch_size', 10000));
    SELECT coalesce(array_agg(DISTINCT l.org_id ORDER BY l.org_id), '{}') INTO orgs
      FROM (SELECT l.org_id FROM payledger.credit_live_grants l WHERE l.expires_at < now() - grace
             ORDER BY l.org_id, l.expires_at LIMIT max_grants) l;
    -- (try-locks, in org_id order: a sweep never waits for an organisation)
    SELECT coalesce(array_agg(x.org_id ORDER BY x.o), '{}') INTO locked
      FROM unnest(orgs) WITH ORDINALITY AS x(org_id, o) WHERE payledger.credit_try_lock(x.org_id);
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
        sink := payledger.credit_system_account('credits_expired');
        FOR r IN
            WITH x AS (
                SELECT x.grant_id, x.account_id, x.amount, row_number() OVER (ORDER BY x.grant_id) AS i
                  FROM unnest(g_id, g_account, g_left) AS x(grant_id, account_id, amount) WHERE x.amount > 0),
            b AS (  -- (a CTE: the batch runs once)
                SELECT * FROM payledger.engine_batch_as('credits', (
                    SELECT jsonb_agg(jsonb_build_object(
                               'postings', jsonb_build_array(jsonb_build_object('account', x.account_id, 'amount', -x.amount),
                                                             jsonb_build_object('account', sink, 'amount', x.amount)),
                               'idempotency_key', 'credit-expire:' || x.grant_id,
                               'metadata', jsonb_build_object('grant', x.grant_id), 'kind', 'credit_expire') ORDER BY x.i)
                      FROM x)))
            SELECT b.status, b.journal_id, b.sqlstate, b.message, b.detail, x.grant_id, x.amount
              FROM x JOIN b ON b.item = x.i LOOP
            IF r.status = 'error' THEN
                PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
            END IF;
            INSERT INTO payledger.credit_grant_events VALUES (r.grant_id, 'expired', r.amount, r.journal_id, now(), NULL);
        END LOOP;
    END IF;
    PERFORM payledger.credit_thresholds(locked);
    RETURN cardinality(g_id);
END;
$$;

---------------------------------------------------------------------------
-- Consumption
---------------------------------------------------------------------------

-- Burn credits for a metric, judged at the usage's own time, in the one burn
-- order: priority, then soonest expiry (never last), then promotional before
-- paid, then oldest, then id. Only grants scoped to the metric (or to any)
-- that had not expired at usage_at count, and that are in effect by now (a
-- later top-up pays earlier usage: overage carries forward). Idempotent per (org, key): a repeat returns the
-- first consumption; with other terms it is PL008. Not enough credit: PL006,
-- unless partial, which burns what there is and reports the shortfall.
CREATE FUNCTION payledger.consume_credits(
    org             text,
    metric          text,
    credits         numeric,
    idempotency_key text,
    usage_at        timestamptz DEFAULT NULL,
    partial         boolean DEFAULT false)
RETURNS TABLE (consumption_id uuid, consumed numeric, shortfall numeric, parts jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    want bigint;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(idempotency_key, 'idempotency_key');
    PERFORM payledger.credit_require_metric(metric);
    want := payledger.credits_minor(credits);
    c := payledger.credit_burn(org, metric, want, idempotency_key, usage_at, coalesce(partial, false));
    RETURN QUERY SELECT c.id, payledger.credits_of(c.amount), payledger.credits_of(c.requested - c.amount),
        (SELECT coalesce(jsonb_agg(jsonb_build_object('grant', p.grant_id, 'credits', payledger.credits_of(p.amount),
                                                      'category', p.category) ORDER BY p.amount DESC), '[]')
           FROM payledger.credit_consumption_parts p WHERE p.consumption_id = c.id);
END;
$$;

-- The burn itself, in minor units (metering burns set-based: meter_batch).
CREATE FUNCTION payledger.credit_burn(org text, metric text, want bigint, key text, usage_at timestamptz,
                                      partial boolean)
RETURNS payledger.credit_consumptions
LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    g record;
    left_ bigint := want;
    take bigint;
    postings jsonb := '[]';
    id uuid := payledger.new_id();
    j uuid;
    part_grants uuid[] := '{}';
    part_amounts bigint[] := '{}';
    part_categories text[] := '{}';
BEGIN
    PERFORM payledger.credit_lock(org);
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.org_id = org AND x.idempotency_key = key;
    -- (usage_at NULL: now; a repeat without it matches whatever time the first had)
    IF FOUND THEN
        IF (c.metric, c.requested) IS DISTINCT FROM (metric, want) OR c.usage_at <> coalesce(usage_at, c.usage_at) THEN
            RAISE EXCEPTION 'idempotency key % was used for another consumption', key
                USING ERRCODE = 'PL008', DETAIL = 'consumption ' || c.id;
        END IF;
        RETURN c;
    END IF;
    usage_at := coalesce(usage_at, now());
    FOR g IN SELECT l.grant_id, l.account_id, l.promo_first, a.balance
               FROM payledger.credit_live_grants l JOIN payledger.accounts a ON a.id = l.account_id
              WHERE l.org_id = org AND (l.metric IS NULL OR l.metric = credit_burn.metric)
                AND l.effective_at <= greatest(usage_at, now()) AND (l.expires_at IS NULL OR l.expires_at > usage_at)
              ORDER BY l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id LOOP
        EXIT WHEN left_ = 0;
        CONTINUE WHEN g.balance <= 0;
        take := least(g.balance, left_);
        left_ := left_ - take;
        postings := postings || jsonb_build_object('account', g.account_id, 'amount', -take);
        part_grants := part_grants || g.grant_id;
        part_amounts := part_amounts || take;
        part_categories := part_categories || CASE g.promo_first WHEN 0 THEN 'promotional' ELSE 'paid' END;
    END LOOP;
    IF left_ > 0 AND NOT partial THEN
        RAISE EXCEPTION 'organisation % has % credits for %, needs %', org, payledger.credits_of(want - left_), metric,
            payledger.credits_of(want) USING ERRCODE = 'PL006';
    END IF;
    IF want > left_ THEN
        j := payledger.credit_post(postings || jsonb_build_object('account', payledger.credit_system_account('credits_consumed'),
                                                                  'amount', want - left_),
                                   jsonb_build_object('consumption', id, 'org', org, 'metric', metric), 'credit_consume');
    END IF;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id)
    VALUES (id, org, metric, want - left_, want, usage_at, key, j)
    RETURNING * INTO c;
    INSERT INTO payledger.credit_consumption_parts (consumption_id, grant_id, amount, category)
    SELECT id, x.g, x.a, x.c FROM unnest(part_grants, part_amounts, part_categories) AS x(g, a, c);
    PERFORM payledger.credit_check_thresholds(org);
    RETURN c;
END;
$$;

-- Give a consumption back to the grants that paid for it; what returns to a
-- grant that has expired or was voided since expires again at once.
-- Idempotent.
CREATE FUNCTION payledger.undo_consumption(consumption uuid, reason text DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    p record;
    postings jsonb := '[]';
    j uuid;
    j2 uuid;
BEGIN
    PERFORM payledger.require(consumption, 'consumption');
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumption % does not exist', consumption USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger.credit_lock(c.org_id);
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption FOR UPDATE;
    IF c.undone_at IS NOT NULL OR c.amount = 0 THEN
        RETURN 0;
    END IF;
    FOR p IN SELECT cp.grant_id, cp.amount, g.account_id FROM payledger.credit_consumption_parts cp
               JOIN payledger.credit_grants g ON g.id = cp.grant_id WHERE cp.consumption_id = c.id LOOP
        postings := postings || jsonb_build_object('account', p.account_id, 'amount', p.amount);
    END LOOP;
    j := payledger.credit_post(postings || jsonb_build_object('account', payledger.credit_system_account('credits_consumed'),
                                                              'amount', -c.amount),
                               jsonb_build_object('undo', c.id, 'reason', reason), 'credit_undo');
    UPDATE payledger.credit_consumptions x SET undone_at = now(), undo_journal = j WHERE x.id = c.id;
    -- a metering charge undone is forgiven: its meter is settled without it
    -- (and not charged again)
    IF c.source = 'metering' THEN
        UPDATE payledger.credit_meters m
           SET charged = m.charged - c.amount, forgiven = m.forgiven + c.amount, updated_at = now()
         WHERE m.org_id = c.org_id AND m.metric = c.metric
           AND m.cycle_start = to_timestamp(split_part(c.idempotency_key, ':', 3)::bigint);
    END IF;
    FOR p IN SELECT cp.grant_id, cp.amount, g.account_id, g.org_id, g.metric, g.priority, g.expires_at, g.category,
                    g.effective_at,
                    (g.expires_at IS NOT NULL AND g.expires_at <= now())
                    OR EXISTS (SELECT 1 FROM payledger.credit_grant_events e WHERE e.grant_id = g.id AND e.kind = 'voided') AS dead
               FROM payledger.credit_consumption_parts cp JOIN payledger.credit_grants g ON g.id = cp.grant_id
              WHERE cp.consumption_id = c.id LOOP
        IF p.dead THEN
            j2 := payledger.credit_move(p.account_id, payledger.credit_system_account('credits_expired'), p.amount,
                                        jsonb_build_object('grant', p.grant_id, 'undo', c.id), NULL, 'credit_expire');
            INSERT INTO payledger.credit_grant_events VALUES (p.grant_id, 'restored_expired', p.amount, j2, now(), reason);
        ELSE
            INSERT INTO payledger.credit_live_grants VALUES
                (p.grant_id, p.org_id, p.metric, p.priority, p.expires_at,
                 CASE p.category WHEN 'promotional' THEN 0 ELSE 1 END, p.effective_at, p.account_id)
            ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
    PERFORM payledger.credit_check_thresholds(c.org_id);
    RETURN payledger.credits_of(c.amount);
END;
$$;

---------------------------------------------------------------------------
-- Balances
---------------------------------------------------------------------------

-- An organisation's credits: available (what it may spend now, or at `at`),
-- the active grants' total, the next expiry of credit still available, and
-- the same by metric scope ("*" for grants usable on any metric). With a
-- metric: the grants usable for it. Reads the live grants only (now) or the
-- organisation's grants and one balance lookup each (at a past time): never
-- the history of consumption.
CREATE FUNCTION payledger.get_total_credits(org text, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.credit_require_metric(metric);
    -- now: the live grants; in the past: the grants in effect then, each
    -- with its balance at that time from the ledger (one branch runs)
    RETURN QUERY
    WITH g AS (
        SELECT coalesce(l.metric, '*') AS scope, a.balance AS left_, cg.amount, l.expires_at
          FROM payledger.credit_live_grants l
          JOIN payledger.accounts a ON a.id = l.account_id
          JOIN payledger.credit_grants cg ON cg.id = l.grant_id
         WHERE (get_total_credits.at IS NULL OR get_total_credits.at >= now())
           AND l.org_id = org AND (get_total_credits.metric IS NULL OR l.metric IS NULL OR l.metric = get_total_credits.metric)
           AND l.effective_at <= coalesce(get_total_credits.at, now())
           AND (l.expires_at IS NULL OR l.expires_at > coalesce(get_total_credits.at, now()))
        UNION ALL
        SELECT coalesce(cg.metric, '*'), payledger.balance_at(cg.account_id, get_total_credits.at), cg.amount, cg.expires_at
          FROM payledger.credit_grants cg
         WHERE get_total_credits.at < now()
           AND cg.org_id = org AND (get_total_credits.metric IS NULL OR cg.metric IS NULL OR cg.metric = get_total_credits.metric)
           AND cg.effective_at <= get_total_credits.at AND (cg.expires_at IS NULL OR cg.expires_at > get_total_credits.at))
    SELECT payledger.credits_of(coalesce(sum(g.left_), 0)::bigint),
           payledger.credits_of(coalesce(sum(g.amount), 0)::bigint),
           min(g.expires_at) FILTER (WHERE g.left_ > 0),
           coalesce((SELECT jsonb_object_agg(s.scope, payledger.credits_of(s.total))
                       FROM (SELECT g2.scope, sum(g2.left_)::bigint AS total FROM g g2 GROUP BY g2.scope) s), '{}')
      FROM g;
END;
$$;

CREATE FUNCTION payledger.get_total_credits(org uuid, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.get_total_credits(org::text, metric, at);
$$;

CREATE FUNCTION payledger.get_total_credits(org bigint, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.get_total_credits(org::text, metric, at);
$$;

---------------------------------------------------------------------------
-- Gift codes
---------------------------------------------------------------------------

CREATE FUNCTION payledger.create_gift_code(
    code            text,
    credits         numeric,
    metric          text DEFAULT NULL,
    valid_until     timestamptz DEFAULT NULL,
    validity        interval DEFAULT '1 year',
    max_redemptions integer DEFAULT NULL,
    per_org_limit   integer DEFAULT 1,
    priority        integer DEFAULT 5)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(code, 'code');
    IF code !~ '^[A-Za-z0-9_-]{4,64}$' THEN
        RAISE EXCEPTION 'a gift code is 4 to 64 letters, digits, _ or -' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    PERFORM payledger.credit_require_metric(metric);
    IF coalesce(max_redemptions, 1) <= 0 OR coalesce(per_org_limit, 0) <= 0 OR coalesce(validity, '0') <= '0' THEN
        RAISE EXCEPTION 'limits and validity must be positive' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.gift_codes (code, credits, metric, valid_until, validity, max_redemptions, per_org_limit, priority)
    VALUES (code, payledger.credits_minor(credits), metric, valid_until, validity, max_redemptions, per_org_limit,
            coalesce(priority, 5))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gift code % exists', code USING ERRCODE = 'PL014';
    END IF;
    RETURN code;
END;
$$;

-- A promotional grant from a code. Errors change nothing: an unknown code
-- PL031; expired or used up PL032; redeemed already by this organisation (as
-- often as its per-organisation limit allows) PL033.
CREATE FUNCTION payledger.redeem_gift_code(code text, org text)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    gc payledger.gift_codes;
    n integer;
    gid uuid;
BEGIN
    PERFORM payledger.require(code, 'code');
    PERFORM payledger.require(org, 'org');
    SELECT * INTO gc FROM payledger.gift_codes x WHERE x.code = redeem_gift_code.code FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gift code % does not exist', code USING ERRCODE = 'PL031';
    END IF;
    IF gc.valid_until IS NOT NULL AND gc.valid_until <= now() THEN
        RAISE EXCEPTION 'gift code % has expired', code USING ERRCODE = 'PL032';
    END IF;
    IF gc.max_redemptions IS NOT NULL AND gc.redemptions >= gc.max_redemptions THEN
        RAISE EXCEPTION 'gift code % has been redeemed % times, its limit', code, gc.redemptions USING ERRCODE = 'PL032';
    END IF;
    SELECT count(*) INTO n FROM payledger.gift_redemptions r WHERE r.code = gc.code AND r.org_id = org;
    IF n >= gc.per_org_limit THEN
        RAISE EXCEPTION 'organisation % has already redeemed gift code %', org, code USING ERRCODE = 'PL033';
    END IF;
    gid := payledger.grant_credits(org, payledger.credits_of(gc.credits), 'gift_code', gc.metric, gc.priority,
                                   now() + gc.validity, idempotency_key => 'gift:' || gc.code || ':' || (n + 1),
                                   metadata => jsonb_build_object('gift_code', gc.code));
    INSERT INTO payledger.gift_redemptions (code, org_id, n, grant_id) VALUES (gc.code, org, n + 1, gid);
    UPDATE payledger.gift_codes x SET redemptions = x.redemptions + 1 WHERE x.code = gc.code;
    RETURN gid;
END;
$$;

---------------------------------------------------------------------------
-- Packages, bought with a pay-in
---------------------------------------------------------------------------

CREATE FUNCTION payledger.define_credit_package(
    name            text,
    credits         numeric,
    price_asset     text,
    price           bigint,
    metric          text DEFAULT NULL,
    period          interval DEFAULT NULL,
    validity        interval DEFAULT '1 year',
    priority        integer DEFAULT 10)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(price_asset, 'price_asset');
    PERFORM payledger.require(price, 'price');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid package name %', name USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = price_asset) THEN
        RAISE EXCEPTION 'asset % does not exist', price_asset USING ERRCODE = 'PL003';
    END IF;
    IF price <= 0 THEN
        RAISE EXCEPTION 'price must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF coalesce(validity, '0') <= '0' OR coalesce(period, '1 day') <= '0' THEN
        RAISE EXCEPTION 'validity and period must be positive' USING ERRCODE = '22023';
    END IF;
    PERFORM payledger.credit_require_metric(metric);
    INSERT INTO payledger.credit_packages (id, name, metric, credits, price_asset, price, period, validity, priority)
    VALUES (payledger.new_id(), name, metric, payledger.credits_minor(credits), price_asset, price, period, validity,
            coalesce(priority, 10))
    ON CONFLICT DO NOTHING
    RETURNING credit_packages.id INTO id;
    IF id IS NULL THEN
        RAISE EXCEPTION 'package % exists', name USING ERRCODE = 'PL014';
    END IF;
    -- the pay-in and pay-out types a purchase uses
    PERFORM payledger.register_payin_type('CREDIT_PACKAGE', 'a credit package');
    PERFORM payledger.register_payout_type('CREDIT_SALE', 'the sale of credits');
    RETURN id;
END;
$$;

-- Buy a package: a pay-in of its price (paid by the given methods, to the
-- seller's revenue account); the grant is made when the pay-in is PAID
-- (at once when balances cover it), exactly once per pay-in.
CREATE FUNCTION payledger.buy_credit_package(
    org             text,
    package         text,
    methods         jsonb,
    revenue_account uuid,
    payer           text DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS TABLE (payin_id uuid, state payledger.payin_state, grant_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
    p record;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(package, 'package');
    PERFORM payledger.require(revenue_account, 'revenue_account');
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = package AND x.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % does not exist', package USING ERRCODE = 'PL031';
    END IF;
    SELECT * INTO p FROM payledger.create_payin(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, methods,
        jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, idempotency_key, NULL, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
    RETURN QUERY SELECT p.payin_id, p.state, (SELECT g.id FROM payledger.credit_grants g WHERE g.payin_id = p.payin_id);
END;
$$;

-- A credit package's pay-in reached PAID (a handler of the pay-in
-- lifecycle, in the settling transaction): it grants its credits; a
-- subscription's renewals are recurring.
CREATE FUNCTION payledger.credits_payin_paid(p payledger.payins)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = p.metadata ->> 'credit_package';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM payledger.grant_credits(coalesce(p.metadata ->> 'credit_org', p.owner_id), payledger.credits_of(pk.credits),
        CASE WHEN p.metadata ? 'subscription' THEN 'recurring_purchase' ELSE 'purchase' END,
        pk.metric, pk.priority, now() + pk.validity,
        cost_basis => round(pk.price::numeric / payledger.credits_of(pk.credits), 12), cost_asset => pk.price_asset,
        payin => p.id, metadata => jsonb_build_object('package', pk.name));
END;
$$;
SELECT payledger.register_payin_handler('credits', 'reached', 100, '{PAID}',
                                        'payledger.credits_payin_paid(payledger.payins)', 'CREDIT_PACKAGE');

-- A recurring package: a subscription whose every paid period grants.
CREATE FUNCTION payledger.subscribe_credit_package(
    org             text,
    package         text,
    revenue_account uuid,
    methods         jsonb DEFAULT '[{"external": "invoice"}]',
    payer           text DEFAULT NULL,
    starts_at       timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    PERFORM payledger.require(org, 'org');
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = package AND x.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % does not exist', package USING ERRCODE = 'PL031';
    END IF;
    IF pk.period IS NULL THEN
        RAISE EXCEPTION 'credit package % is one-time, not recurring', package USING ERRCODE = '22023';
    END IF;
    RETURN payledger.create_subscription(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, pk.period,
        methods, jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, NULL, starts_at, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
END;
$$;

---------------------------------------------------------------------------
-- Usage, metering, access
---------------------------------------------------------------------------

-- A usage reading: counters add up over the cycle, gauges keep the highest.
CREATE FUNCTION payledger.record_usage(org text, metric text, amount numeric, at timestamptz DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
    o payledger.credit_orgs;
    cyc timestamptz;
    total numeric;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(amount, 'amount');
    SELECT m.kind INTO k FROM payledger.credit_metrics m WHERE m.metric = record_usage.metric;
    IF k IS NULL THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
    IF amount < 0 THEN
        RAISE EXCEPTION 'usage must not be negative' USING ERRCODE = 'PL001';
    END IF;
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    SELECT * INTO o FROM payledger.credit_orgs x WHERE x.org_id = org;
    cyc := payledger.credit_cycle_start(o.cycle_anchor, coalesce(at, now()));
    INSERT INTO payledger.credit_usage AS u (org_id, metric, cycle_start, usage, updated_at)
    VALUES (org, metric, cyc, amount, coalesce(at, now()))
    ON CONFLICT ON CONSTRAINT credit_usage_pkey DO UPDATE
       SET usage = CASE WHEN k = 'counter' THEN u.usage + excluded.usage ELSE greatest(u.usage, excluded.usage) END,
           updated_at = greatest(u.updated_at, excluded.updated_at)
    RETURNING u.usage INTO total;
    RETURN total;
END;
$$;

-- Metering's core, set-based over a batch of organisations: for each meter
-- (organisation, metric, cycle), cost(overage) - what is settled, burnt from
-- credits at the time of the latest reading, in burn order; one journal per
-- organisation; what cannot be paid blocks that metric. The meters looked at
-- are the current and the previous cycle's (readings arrive late) and any
-- older one still blocked; only_unpaid: just the blocked ones (after a
-- top-up). The caller holds each organisation's credit lock, under which
-- alone meter rows and grant balances change. Returns the meters charged.
CREATE FUNCTION payledger.meter_batch(orgs text[], only_unpaid boolean)
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    unit numeric;
    due payledger.credit_meter_due[];
    grants payledger.credit_live_grants[];
    g_id uuid[];
    g_account uuid[];
    g_promo smallint[];
    g_left bigint[];
    want bigint[];
    pair_due integer[];
    pair_grant integer[];
    part_due integer[] := '{}';
    part_grant uuid[] := '{}';
    part_account uuid[] := '{}';
    part_promo smallint[] := '{}';
    part_take bigint[] := '{}';
    parts integer := 0;
    d integer;
    g integer;
    take bigint;
    sink uuid;
    items jsonb[];
    j_orgs text[];
    j_ids uuid[] := '{}';
    cons uuid[];
    r record;
BEGIN
    IF cardinality(orgs) = 0 THEN
        RETURN 0;
    END IF;
    unit := 10::numeric ^ (SELECT a.scale FROM payledger.assets a WHERE a.code = payledger.credit_asset());
    -- 1. the meters and what their overage costs now (graduated tiers,
    -- rounded up to the minor unit once, on the total; never less than what
    -- is settled: a lower reading refunds nothing)
    SELECT coalesce(array_agg(ROW(x.org_id, x.metric, x.cycle_start, x.usage_at, x.overage, x.owed, x.settled, x.charged,
                                  x.old_cost IS NULL, x.overage IS DISTINCT FROM x.old_overage OR x.owed IS DISTINCT FROM x.old_cost
                                  )::payledger.credit_meter_due ORDER BY x.org_id, x.cycle_start, x.metric), '{}')
      INTO due
      FROM (WITH o AS MATERIALIZED (  -- (the cycle bounds once per organisation)
                SELECT o.org_id, o.plan,
                       payledger.credit_cycle_start(o.cycle_anchor, payledger.credit_cycle_start(o.cycle_anchor, now())
                                                                    - interval '1 microsecond') AS since
                  FROM payledger.credit_orgs o WHERE o.org_id = ANY (orgs))
            SELECT u.org_id, u.metric, u.cycle_start, least(u.updated_at, now()) AS usage_at, v.overage,
                   greatest(least(ceil(coalesce(t.credits, 0) * unit), 9223372036854775807)::bigint,
                            coalesce(m.charged + m.forgiven, 0)) AS owed,
                   coalesce(m.charged + m.forgiven, 0) AS settled, coalesce(m.charged, 0) AS charged,
                   m.overage AS old_overage, m.cost AS old_cost
              FROM o
              JOIN payledger.credit_usage u ON u.org_id = o.org_id
              LEFT JOIN payledger.credit_meters m
                ON m.org_id = u.org_id AND m.metric = u.metric AND m.cycle_start = u.cycle_start
              LEFT JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.metric = u.metric
              -- no plan: every unit is overage
              CROSS JOIN LATERAL (SELECT greatest(u.usage - coalesce(l.monthly_limit, 0), 0) AS overage) v
              LEFT JOIN LATERAL (
                   SELECT sum((least(v.overage, coalesce(p.to_units, v.overage)) - p.from_units) * p.credits_per_unit) AS credits
                     FROM payledger.credit_price_tiers p WHERE p.metric = u.metric AND p.from_units < v.overage) t ON true
             WHERE m.blocked OR NOT only_unpaid AND u.cycle_start >= o.since) x;

    IF cardinality(due) = 0 THEN
        RETURN 0;
    END IF;

    -- 2. who pays what: each owed meter in turn (by organisation, cycle,
    -- metric) takes from its eligible grants in burn order (as credit_burn)
    -- (flat arrays of fixed-width values: subscripting them is cheap)
    SELECT coalesce(array_agg(l ORDER BY l.grant_id), '{}'), coalesce(array_agg(a.balance ORDER BY l.grant_id), '{}'),
           coalesce(array_agg(l.grant_id ORDER BY l.grant_id), '{}'), coalesce(array_agg(l.account_id ORDER BY l.grant_id), '{}'),
           coalesce(array_agg(l.promo_first ORDER BY l.grant_id), '{}')
      INTO grants, g_left, g_id, g_account, g_promo
      FROM payledger.credit_live_grants l JOIN payledger.accounts a ON a.id = l.account_id
     WHERE l.org_id IN (SELECT x.org_id FROM unnest(due) x WHERE x.owed > x.settled) AND a.balance > 0;
    SELECT coalesce(array_agg(x.owed - x.settled ORDER BY x.i), '{}') INTO want
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i);
    SELECT coalesce(array_agg(x.i ORDER BY x.i, l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id), '{}'),
           coalesce(array_agg(l.gi ORDER BY x.i, l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id), '{}')
      INTO pair_due, pair_grant
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i)
      JOIN unnest(grants) WITH ORDINALITY AS l(grant_id, org_id, metric, priority, expires_at, promo_first, effective_at,
                                              account_id, gi)
        ON l.org_id = x.org_id AND (l.metric IS NULL OR l.metric = x.metric)
       AND l.effective_at <= greatest(x.usage_at, now()) AND (l.expires_at IS NULL OR l.expires_at > x.usage_at)
     WHERE x.owed > x.settled;
    FOR k IN 1 .. cardinality(pair_due) LOOP
        d := pair_due[k];
        g := pair_grant[k];
        CONTINUE WHEN want[d] = 0 OR g_left[g] = 0;
        take := least(want[d], g_left[g]);
        want[d] := want[d] - take;
        g_left[g] := g_left[g] - take;
        parts := parts + 1;
        part_due[parts] := d;
        part_grant[parts] := g_id[g];
        part_account[parts] := g_account[g];
        part_promo[parts] := g_promo[g];
        part_take[parts] := take;
    END LOOP;
    IF parts = 0 AND NOT EXISTS (SELECT 1 FROM unnest(due) x WHERE x.is_new OR x.changed) THEN
        RETURN 0;
    END IF;

    -- 3. one journal per organisation: each grant gives what it paid, the
    -- consumed sink takes the total (posted in engine batches)
    sink := payledger.credit_system_account('credits_consumed');
    SELECT coalesce(array_agg(j.org_id ORDER BY j.org_id), '{}'), coalesce(array_agg(j.item ORDER BY j.org_id), '{}')
      INTO j_orgs, items
      FROM (SELECT s.org_id, jsonb_build_object(
                       'kind', 'credit_consume',
                       'postings', jsonb_agg(jsonb_build_object('account', s.account_id, 'amount', -s.total))
                                   || jsonb_build_object('account', sink, 'amount', sum(s.total)),
                       'metadata', jsonb_build_object('metering', s.org_id)) AS item
              FROM (SELECT x.org_id, p.account_id, sum(p.take) AS total
                      FROM unnest(part_due, part_account, part_take) AS p(d, account_id, take)
                      JOIN unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled,
                                                           charged, is_new, changed, i) ON x.i = p.d
                     GROUP BY 1, 2) s
             GROUP BY s.org_id) j;
    FOR k IN 0 .. (cardinality(items) - 1) / 1000 LOOP
        FOR r IN SELECT * FROM payledger.engine_batch_as('credits', to_jsonb(items[k * 1000 + 1 : k * 1000 + 1000])) b ORDER BY b.item LOOP
            IF r.status = 'error' THEN
                PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
            END IF;
            j_ids := j_ids || r.journal_id;
        END LOOP;
    END LOOP;

    -- 4. the consumptions (keyed by the cycle and the watermark, as before
    -- any charge), which grants paid them, the meters, the thresholds
    SELECT array_agg(CASE WHEN x.d IS NOT NULL THEN payledger.new_id() END ORDER BY g.i) INTO cons
      FROM generate_series(1, cardinality(due)) g(i) LEFT JOIN (SELECT DISTINCT p.d FROM unnest(part_due) p(d)) x ON x.d = g.i;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id,
                                               source)
    SELECT cons[b.d], x.org_id, x.metric, b.burnt, x.owed - x.settled, x.usage_at,
           format('meter:%s:%s:%s', x.metric, extract(epoch FROM x.cycle_start)::bigint, x.settled), j.id, 'metering'
      FROM (SELECT p.d, sum(p.take) AS burnt FROM unnest(part_due, part_take) AS p(d, take) GROUP BY p.d) b
      JOIN unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i) ON x.i = b.d
      JOIN unnest(j_orgs, j_ids) AS j(org_id, id) ON j.org_id = x.org_id;
    INSERT INTO payledger.credit_consumption_parts (consumption_id, grant_id, amount, category)
    SELECT cons[p.d], p.grant_id, p.take, CASE p.promo WHEN 0 THEN 'promotional' ELSE 'paid' END
      FROM unnest(part_due, part_grant, part_promo, part_take) AS p(d, grant_id, promo, take);
    -- (a meter is written only when something about it changed)
    INSERT INTO payledger.credit_meters AS m (org_id, metric, cycle_start, overage, cost, charged, forgiven, blocked, updated_at)
    SELECT x.org_id, x.metric, x.cycle_start, x.overage, x.owed, x.charged + coalesce(b.burnt, 0), x.settled - x.charged,
           x.settled + coalesce(b.burnt, 0) < x.owed, now()
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i)
      LEFT JOIN (SELECT p.d, sum(p.take) AS burnt FROM unnest(part_due, part_take) AS p(d, take) GROUP BY p.d) b ON b.d = x.i
     WHERE x.is_new OR x.changed OR b.burnt IS NOT NULL
    ON CONFLICT ON CONSTRAINT credit_meters_pkey DO UPDATE
       SET overage = excluded.overage, cost = excluded.cost, charged = excluded.charged, blocked = excluded.blocked,
           updated_at = excluded.updated_at;
    PERFORM payledger.credit_thresholds(j_orgs);
    RETURN (SELECT count(DISTINCT p.d) FROM unnest(part_due) AS p(d));
END;
$$;

-- Charge one organisation's overage now (waits for its lock).
CREATE FUNCTION payledger.meter_org(org text, only_unpaid boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.credit_lock(org);
    RETURN payledger.meter_batch(ARRAY[org], coalesce(only_unpaid, false));
END;
$$;

-- One step of a metering run: up to max_orgs organisations with usage in the
-- current or the previous cycle (or a meter still blocked), in org_id order
-- after after_org, charged in one transaction; with parts > 1, only the
-- organisations of share `part` (by a hash of the id), so that that many
-- sessions can meter at once. An organisation busy at that moment (a
-- consumer, another run) is skipped and left to the next run; two runs at
-- once charge each overage once (the meter rows are the watermark).
-- last_org is where the next step starts; NULL: the share is done. The
-- worker runs a whole run every payledger.metering_interval seconds over
-- payledger.metering_workers sessions; CALL payledger.meter_all() runs one
-- on demand in the calling session.
CREATE FUNCTION payledger.run_metering(max_orgs integer DEFAULT 1000, after_org text DEFAULT NULL,
                                       part integer DEFAULT 0, parts integer DEFAULT 1)
RETURNS TABLE (orgs integer, charged integer, blocked integer, failed integer, last_org text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    picked text[];
    locked text[];
    n integer := 0;
    lost integer := 0;
BEGIN
    IF max_orgs IS NULL OR max_orgs NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_orgs must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    IF parts IS NULL OR parts NOT BETWEEN 1 AND 16 OR part IS NULL OR part NOT BETWEEN 0 AND parts - 1 THEN
        RAISE EXCEPTION 'part must be between 0 and parts - 1, parts between 1 and 16' USING ERRCODE = '22023';
    END IF;
    -- (usage in the last three months: a cheap superset of "the current or
    -- the previous cycle", whose exact rule meter_batch applies)
    SELECT coalesce(array_agg(o.org_id ORDER BY o.org_id), '{}') INTO picked
      FROM (SELECT o.org_id FROM payledger.credit_orgs o
             WHERE (after_org IS NULL OR o.org_id > after_org)
               AND (parts = 1 OR (pg_catalog.hashtextextended(o.org_id, 0) & 1023) % parts = part)
               -- (one EXISTS over a UNION ALL: a probe per organisation; two
               -- EXISTS joined by OR would hash all the usage at every step)
               AND EXISTS (SELECT 1 FROM payledger.credit_usage u
                            WHERE u.org_id = o.org_id AND u.cycle_start > now() - interval '3 months'
                           UNION ALL
                           SELECT 1 FROM payledger.credit_meters b WHERE b.org_id = o.org_id AND b.blocked)
             ORDER BY o.org_id LIMIT max_orgs) o;
    -- (try-locks, in org_id order: a sweep never waits for an organisation)
    SELECT coalesce(array_agg(x.org_id ORDER BY x.o), '{}') INTO locked
      FROM unnest(picked) WITH ORDINALITY AS x(org_id, o) WHERE payledger.credit_try_lock(x.org_id);
    -- a step that fails (a bug, bad configuration) changes nothing, is
    -- logged and counted, and does not stop the run: its organisations are
    -- tried again by the next one
    BEGIN
        n := payledger.meter_batch(locked, false);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'payledger metering: % organisations from % not charged: % (SQLSTATE %)',
            cardinality(locked), locked[1], SQLERRM, SQLSTATE;
        lost := cardinality(locked);
    END;
    RETURN QUERY SELECT cardinality(locked) - lost, n, (SELECT count(*)::integer FROM payledger.credit_meters b WHERE b.blocked),
                        lost, CASE WHEN cardinality(picked) = max_orgs THEN picked[max_orgs] END;
END;
$$;

-- Record a whole metering run as done (the worker and meter_all, at the end).
CREATE FUNCTION payledger.metering_done()
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_status w SET last_metering_at = now();
$$;

-- Is a metering run due (payledger.metering_interval since the last one)?
CREATE FUNCTION payledger.metering_due()
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT w.last_metering_at IS NULL
                            OR w.last_metering_at <= now() - make_interval(secs => payledger.setting_int('metering_interval', 21600))
                       FROM payledger.worker_status w), true);
$$;

-- A whole metering run on demand, a transaction per step (a procedure: CALL
-- it outside a transaction block). No SET search_path (it could not COMMIT):
-- every name is qualified.
CREATE PROCEDURE payledger.meter_all(batch integer DEFAULT 1000, INOUT orgs integer DEFAULT NULL,
                                     INOUT charged integer DEFAULT NULL, INOUT blocked integer DEFAULT NULL,
                                     INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    after_org text;
BEGIN
    orgs := 0;
    charged := 0;
    failed := 0;
    LOOP
        SELECT * INTO r FROM payledger.run_metering(batch, after_org);
        COMMIT;
        orgs := orgs + r.orgs;
        charged := charged + r.charged;
        failed := failed + r.failed;
        blocked := r.blocked;
        after_org := r.last_org;
        EXIT WHEN after_org IS NULL;
    END LOOP;
    PERFORM payledger.metering_done();
END;
$$;
-- May the organisation do an action that uses these metrics? No when any of
-- them is over its plan in the current cycle with the overage unpaid (out
-- of credits); the others stay allowed (a download does not need storage).
CREATE FUNCTION payledger.credit_access(org text, metrics text[])
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM payledger.credit_meters b JOIN payledger.credit_orgs o ON o.org_id = b.org_id
         WHERE b.org_id = org AND b.blocked AND b.metric = ANY (metrics)
           AND b.cycle_start = payledger.credit_cycle_start(o.cycle_anchor, now()));
$$;

---------------------------------------------------------------------------
-- Views for end users (the organisation is payledger.current_owner_id())
---------------------------------------------------------------------------

CREATE VIEW payledger.my_credit_grants WITH (security_barrier) AS
SELECT g.id, g.metric, g.source, g.category, g.priority, g.effective_at, g.expires_at,
       payledger.credits_of(g.amount) AS granted, payledger.credits_of(a.balance) AS remaining
  FROM payledger.credit_grants g JOIN payledger.accounts a ON a.id = g.account_id
 WHERE g.org_id = payledger.current_owner_id();

-- (a function, not get_total_credits itself: end users may not ask for
-- another organisation's credits)
CREATE FUNCTION payledger.my_total_credits()
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT t.* FROM payledger.get_total_credits(payledger.current_owner_id()) t
     WHERE payledger.current_owner_id() IS NOT NULL;
$$;

CREATE VIEW payledger.my_credit_balance AS
SELECT * FROM payledger.my_total_credits();

CREATE VIEW payledger.my_credit_meters WITH (security_barrier) AS
SELECT m.metric, m.cycle_start, m.overage, payledger.credits_of(m.cost) AS cost,
       payledger.credits_of(m.charged) AS charged, m.blocked
  FROM payledger.credit_meters m
 WHERE m.org_id = payledger.current_owner_id();

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

CREATE FUNCTION payledger.credit_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a grant's account: granted - consumed (not undone) - expired - voided
    -- (set-based: one pass over the parts and the events, whatever the history)
    SELECT 'credit_grant_balance', g.id::text,
           format('balance %s, history says %s', a.balance, g.amount - coalesce(u.total, 0) - coalesce(e.total, 0))
      FROM payledger.credit_grants g
      JOIN payledger.accounts a ON a.id = g.account_id
      LEFT JOIN (SELECT p.grant_id, sum(p.amount) AS total
                   FROM payledger.credit_consumption_parts p
                   JOIN payledger.credit_consumptions c ON c.id = p.consumption_id
                  WHERE c.undone_at IS NULL GROUP BY p.grant_id) u ON u.grant_id = g.id
      LEFT JOIN (SELECT e.grant_id, sum(e.amount) AS total FROM payledger.credit_grant_events e GROUP BY e.grant_id) e
        ON e.grant_id = g.id
     WHERE a.balance <> g.amount - coalesce(u.total, 0) - coalesce(e.total, 0)
    UNION ALL
    -- a live grant has its grant; a grant with credit left in effect is live or past its expiry
    SELECT 'credit_live_grant', l.grant_id::text, 'no such grant'
      FROM payledger.credit_live_grants l
     WHERE NOT EXISTS (SELECT 1 FROM payledger.credit_grants g WHERE g.id = l.grant_id)
    UNION ALL
    SELECT 'credit_grant_not_live', g.id::text, 'credit left but not in the burn queue'
      FROM payledger.credit_grants g JOIN payledger.accounts a ON a.id = g.account_id
     WHERE a.balance > 0 AND NOT EXISTS (SELECT 1 FROM payledger.credit_live_grants l WHERE l.grant_id = g.id)
    UNION ALL
    -- a consumption's parts add up to it
    SELECT 'credit_consumption_parts', c.id::text, format('%s consumed, parts %s', c.amount, coalesce(s.total, 0))
      FROM payledger.credit_consumptions c
      LEFT JOIN (SELECT p.consumption_id, sum(p.amount) AS total FROM payledger.credit_consumption_parts p GROUP BY 1) s
        ON s.consumption_id = c.id
     WHERE c.amount <> coalesce(s.total, 0)
    UNION ALL
    -- a meter charged what its consumptions burnt
    SELECT 'credit_meter_charged', m.org_id || ' ' || m.metric || ' ' || m.cycle_start,
           format('charged %s, burnt %s', m.charged, coalesce(s.total, 0))
      FROM payledger.credit_meters m
      LEFT JOIN (SELECT c.org_id, c.metric, split_part(c.idempotency_key, ':', 3) AS cyc, sum(c.amount) AS total
                   FROM payledger.credit_consumptions c WHERE c.source = 'metering' AND c.undone_at IS NULL
                  GROUP BY 1, 2, 3) s
        ON s.org_id = m.org_id AND s.metric = m.metric AND s.cyc = extract(epoch FROM m.cycle_start)::bigint::text
     WHERE m.charged <> coalesce(s.total, 0);
$$;

---------------------------------------------------------------------------
-- Threshold events
---------------------------------------------------------------------------

-- The rules in force: the table's, or, while it is empty, the defaults
-- (50, 75, 90 and 100 % used; depleted/recovered; expiring within 7 days).
CREATE FUNCTION payledger.credit_threshold_rules()
RETURNS TABLE (name text, kind text, value numeric)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT t.name, t.kind, t.value FROM payledger.credit_thresholds t WHERE t.active
    UNION ALL
    SELECT d.name, d.kind, d.value
      FROM (VALUES ('used_50', 'used_pct', 50::numeric), ('used_75', 'used_pct', 75), ('used_90', 'used_pct', 90),
                   ('used_100', 'used_pct', 100), ('depleted', 'depleted', 0), ('expiring_7d', 'expiring', 7))
           AS d(name, kind, value)
     WHERE NOT EXISTS (SELECT 1 FROM payledger.credit_thresholds);
$$;

CREATE FUNCTION payledger.set_credit_threshold(name text, kind text, value numeric DEFAULT 0, active boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[a-z][a-z0-9_]{0,62}$' OR kind IS NULL OR kind NOT IN ('used_pct', 'depleted', 'expiring')
       OR coalesce(value, -1) < 0 THEN
        RAISE EXCEPTION 'a threshold has a lower-case name, a kind (used_pct, depleted, expiring) and a value >= 0'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_thresholds AS t (name, kind, value, active)
    VALUES (name, kind, value, coalesce(active, true))
    ON CONFLICT ON CONSTRAINT credit_thresholds_pkey DO UPDATE
       SET kind = excluded.kind, value = excluded.value, active = excluded.active;
END;
$$;

-- Evaluate an organisation's rules against its credits now; write an event
-- (credits.threshold, credits.depleted, credits.recovered, credits.expiring)
-- for each rule whose state changed, once per crossing. Percentages are of
-- the active granted credit only (expired credit is not "used").
-- Threshold crossings for a batch of organisations (the caller holds their
-- credit locks, so two checks cannot both see one crossing): each rule's
-- state is compared with the organisation's credits now; a change is
-- recorded, and a rising edge (or depleted's falling edge, "recovered") is
-- written to the outbox. Returns the events written.
CREATE FUNCTION payledger.credit_thresholds(orgs text[])
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    WITH t AS (
        -- get_total_credits(org), for many
        -- (in minor units; credits in the events)
        SELECT o.org_id, coalesce(sum(a.balance), 0) AS available, coalesce(sum(g.amount), 0) AS granted_active,
               min(l.expires_at) FILTER (WHERE a.balance > 0) AS next_expiry
          FROM unnest(orgs) AS o(org_id)
          LEFT JOIN payledger.credit_live_grants l
            ON l.org_id = o.org_id AND l.effective_at <= now() AND (l.expires_at IS NULL OR l.expires_at > now())
          LEFT JOIN payledger.accounts a ON a.id = l.account_id
          LEFT JOIN payledger.credit_grants g ON g.id = l.grant_id
         GROUP BY o.org_id),
    c AS (
        SELECT q.* FROM (
            SELECT t.*, r.name, r.kind, r.value, r.n, coalesce(s.crossed, false) AS was,
                   coalesce(CASE r.kind
                       WHEN 'used_pct' THEN t.granted_active > 0 AND (t.granted_active - t.available) * 100 >= r.value * t.granted_active
                       WHEN 'depleted' THEN t.granted_active > 0 AND t.available = 0
                       WHEN 'expiring' THEN t.available > 0 AND t.next_expiry <= now() + make_interval(days => r.value::integer)
                   END, false) AS crossed
              FROM t CROSS JOIN payledger.credit_threshold_rules() WITH ORDINALITY AS r(name, kind, value, n)
              LEFT JOIN payledger.credit_threshold_state s ON s.org_id = t.org_id AND s.threshold = r.name) q
         WHERE q.crossed <> q.was),
    changed AS (
        INSERT INTO payledger.credit_threshold_state AS s (org_id, threshold, crossed, changed_at)
        SELECT c.org_id, c.name, c.crossed, now() FROM c
        ON CONFLICT ON CONSTRAINT credit_threshold_state_pkey DO UPDATE
           SET crossed = excluded.crossed, changed_at = excluded.changed_at)
    INSERT INTO payledger.events (topic, subject_id, owner_id, payload)
    SELECT CASE WHEN c.kind = 'depleted' AND c.crossed THEN 'credits.depleted'
                WHEN c.kind = 'depleted' THEN 'credits.recovered'
                WHEN c.kind = 'expiring' THEN 'credits.expiring'
                ELSE 'credits.threshold' END,
           NULL, c.org_id,
           jsonb_build_object('org', c.org_id, 'threshold', c.name, 'kind', c.kind, 'value', c.value,
                              'available', payledger.credits_of(c.available::bigint),
                              'granted_active', payledger.credits_of(c.granted_active::bigint), 'next_expiry', c.next_expiry)
      FROM c WHERE c.crossed OR c.kind = 'depleted'
     ORDER BY c.org_id, c.n;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

CREATE FUNCTION payledger.credit_check_thresholds(org text)
RETURNS integer LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger.credit_lock(org);
    SELECT payledger.credit_thresholds(ARRAY[org]);
$$;

-- Organisations whose credit expires within the longest "expiring" window:
-- time alone crosses that rule, so the worker asks (housekeeping).
CREATE FUNCTION payledger.credit_check_expiring(max_orgs integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    days numeric := (SELECT max(r.value) FROM payledger.credit_threshold_rules() r WHERE r.kind = 'expiring');
BEGIN
    PERFORM payledger.require_limit(max_orgs, 'max_orgs');
    IF days IS NULL THEN
        RETURN 0;
    END IF;
    RETURN payledger.credit_thresholds(ARRAY(
        SELECT o.org_id
          FROM (SELECT DISTINCT l.org_id FROM payledger.credit_live_grants l
                 WHERE l.expires_at BETWEEN now() - interval '1 day' AND now() + make_interval(days => days::integer)
                 ORDER BY l.org_id LIMIT max_orgs) o
         WHERE payledger.credit_try_lock(o.org_id)));
END;
$$;

SELECT payledger.register_housekeeping_step('credits', 'credit_grants_expired', 30, 'payledger.expire_credits(integer)',
                                            max_calls => 1),
       payledger.register_housekeeping_step('credits', 'credit_expiry_events', 40,
                                            'payledger.credit_check_expiring(integer)', max_calls => 1);

---------------------------------------------------------------------------
-- History
---------------------------------------------------------------------------

-- Month by month (calendar months, UTC, the current one included) for an
-- organisation: per metric, the cycle's usage, plan limit and overage, the
-- credits used for it (paid and promotional), credit expired and voided from
-- grants scoped to it, and what was left for it at the month's end; the
-- metric '*' holds what concerns grants usable for any metric.
CREATE FUNCTION payledger.credit_history(org text, months integer DEFAULT 12)
RETURNS TABLE (month date, metric text, usage numeric, monthly_limit numeric, overage numeric,
               credits_used numeric, paid_used numeric, promotional_used numeric, expired numeric, voided numeric,
               closing_balance numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    IF months IS NULL OR months NOT BETWEEN 1 AND 120 THEN
        RAISE EXCEPTION 'months must be between 1 and 120' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH m AS (
        SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => g))::date AS month
          FROM generate_series(0, months - 1) g),
    metrics AS (SELECT x.metric FROM payledger.credit_metrics x UNION ALL SELECT '*'),
    used AS (
        SELECT date_trunc('month', c.usage_at AT TIME ZONE 'UTC')::date AS month, c.metric,
               sum(p.amount) AS total, sum(p.amount) FILTER (WHERE p.category = 'paid') AS paid,
               sum(p.amount) FILTER (WHERE p.category = 'promotional') AS promo
          FROM payledger.credit_consumptions c JOIN payledger.credit_consumption_parts p ON p.consumption_id = c.id
         WHERE c.org_id = org AND c.undone_at IS NULL
         GROUP BY 1, 2),
    lost AS (
        SELECT date_trunc('month', e.at AT TIME ZONE 'UTC')::date AS month, coalesce(g.metric, '*') AS metric,
               sum(e.amount) FILTER (WHERE e.kind IN ('expired', 'restored_expired')) AS expired,
               sum(e.amount) FILTER (WHERE e.kind = 'voided') AS voided
          FROM payledger.credit_grant_events e JOIN payledger.credit_grants g ON g.id = e.grant_id
         WHERE g.org_id = org
         GROUP BY 1, 2),
    meter AS (
        SELECT date_trunc('month', u.cycle_start AT TIME ZONE 'UTC')::date AS month, u.metric,
               sum(u.usage) AS usage, max(l.monthly_limit) AS monthly_limit, sum(mt.overage) AS overage
          FROM payledger.credit_usage u
          JOIN payledger.credit_orgs o ON o.org_id = u.org_id
          LEFT JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.metric = u.metric
          LEFT JOIN payledger.credit_meters mt ON mt.org_id = u.org_id AND mt.metric = u.metric AND mt.cycle_start = u.cycle_start
         WHERE u.org_id = org
         GROUP BY 1, 2)
    SELECT m.month, x.metric, meter.usage, meter.monthly_limit, meter.overage,
           payledger.credits_of(coalesce(used.total, 0)::bigint), payledger.credits_of(coalesce(used.paid, 0)::bigint),
           payledger.credits_of(coalesce(used.promo, 0)::bigint), payledger.credits_of(coalesce(lost.expired, 0)::bigint),
           payledger.credits_of(coalesce(lost.voided, 0)::bigint),
           (SELECT t.available FROM payledger.get_total_credits(org, nullif(x.metric, '*'),
                                   least(now(), ((m.month + interval '1 month') AT TIME ZONE 'UTC') - interval '1 microsecond')) t)
      FROM m CROSS JOIN metrics x
      LEFT JOIN used ON used.month = m.month AND used.metric = x.metric
      LEFT JOIN lost ON lost.month = m.month AND lost.metric = x.metric
      LEFT JOIN meter ON meter.month = m.month AND meter.metric = x.metric
     ORDER BY m.month DESC, x.metric;
END;
$$;

CREATE FUNCTION payledger.my_credit_history(months integer DEFAULT 12)
RETURNS TABLE (month date, metric text, usage numeric, monthly_limit numeric, overage numeric,
               credits_used numeric, paid_used numeric, promotional_used numeric, expired numeric, voided numeric,
               closing_balance numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.credit_history(payledger.current_owner_id(), months)
     WHERE payledger.current_owner_id() IS NOT NULL;
$$;

CREATE VIEW payledger.my_credit_history AS
SELECT * FROM payledger.my_credit_history(12);
