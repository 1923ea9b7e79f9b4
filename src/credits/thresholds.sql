-- payledger credits: threshold events.

-- The rules in force: the table's, or, while it is empty, the defaults
-- (50, 75, 90 and 100 % used; depleted/recovered; expiring within 7 days).
CREATE FUNCTION payledger_internal.credit_threshold_rules()
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
    PERFORM payledger_internal.require(name, 'name');
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
CREATE FUNCTION payledger_internal.credit_thresholds(orgs text[])
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
              FROM t CROSS JOIN payledger_internal.credit_threshold_rules() WITH ORDINALITY AS r(name, kind, value, n)
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

CREATE FUNCTION payledger_internal.credit_check_thresholds(org text)
RETURNS integer LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.credit_lock(org);
    SELECT payledger_internal.credit_thresholds(ARRAY[org]);
$$;

-- Organisations whose credit expires within the longest "expiring" window:
-- time alone crosses that rule, so the worker asks (housekeeping).
CREATE FUNCTION payledger.credit_check_expiring(max_orgs integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    days numeric := (SELECT max(r.value) FROM payledger_internal.credit_threshold_rules() r WHERE r.kind = 'expiring');
BEGIN
    PERFORM payledger_internal.require_limit(max_orgs, 'max_orgs');
    IF days IS NULL THEN
        RETURN 0;
    END IF;
    RETURN payledger_internal.credit_thresholds(ARRAY(
        SELECT o.org_id
          FROM (SELECT DISTINCT l.org_id FROM payledger.credit_live_grants l
                 WHERE l.expires_at BETWEEN now() - interval '1 day' AND now() + make_interval(days => days::integer)
                 ORDER BY l.org_id LIMIT max_orgs) o
         WHERE payledger_internal.credit_try_lock(o.org_id)));
END;
$$;

SELECT payledger_internal.register_housekeeping_step('credits', 'credit_grants_expired', 30, 'payledger.expire_credits(integer)',
                                            max_calls => 1),
       payledger_internal.register_housekeeping_step('credits', 'credit_expiry_events', 40,
                                            'payledger.credit_check_expiring(integer)', max_calls => 1);

---------------------------------------------------------------------------
-- Plan notices (Capgo's plan e-mails)
---------------------------------------------------------------------------

-- The plan notices of a batch of organisations (Capgo's plan e-mails);
-- returns the events written:
--   credits.plan_usage: usage in the current cycle crossed 50, 75, 90 or 100 %
--     of the metric's plan limit; one event per level, once per cycle;
--   credits.metric_blocked / credits.metric_unblocked: a meter of the current
--     or the previous cycle became blocked (overage unpaid) or paid again.
-- A periodic run of its own, after metering's (it is named after it and
-- shares its interval), not inside it: written in the metering batch, the
-- events made the worker's metering run 7 times slower.
CREATE FUNCTION payledger_internal.plan_notices(picked text[])
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    raised_events integer;
    blocked_events integer;
BEGIN
    -- usage levels (levels only rise within a cycle: usage never falls).
    -- (Joins from the picked organisations, and the events from what the
    -- upsert returns, joined to tables by their keys: never a CTE joined to
    -- a CTE, whose row counts the planner cannot know; a nested loop over
    -- two of them made a step of 1,000 organisations take 3 s.)
    WITH cur AS (
        SELECT u.org_id, u.metric, u.cycle_start,
               CASE WHEN u.usage >= l.monthly_limit THEN 100 WHEN u.usage * 10 >= l.monthly_limit * 9 THEN 90
                    WHEN u.usage * 4 >= l.monthly_limit * 3 THEN 75 WHEN u.usage * 2 >= l.monthly_limit THEN 50
                    ELSE 0 END AS level
          FROM unnest(picked) AS x(org_id)
          JOIN payledger.credit_orgs o ON o.org_id = x.org_id
          JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.monthly_limit > 0
          JOIN payledger.credit_usage u
            ON u.org_id = o.org_id AND u.metric = l.metric
           AND u.cycle_start = payledger_internal.credit_cycle_start(o.cycle_anchor, now())
          LEFT JOIN payledger.credit_plan_notices n
            ON n.org_id = u.org_id AND n.metric = u.metric AND n.cycle_start = u.cycle_start
         WHERE n.level IS NULL OR n.level < 100),
    -- (only rows this statement raised are told: two runs at once tell once)
    raised AS (
        INSERT INTO payledger.credit_plan_notices AS n (org_id, metric, cycle_start, level)
        SELECT c.org_id, c.metric, c.cycle_start, c.level FROM cur c WHERE c.level > 0
        ON CONFLICT ON CONSTRAINT credit_plan_notices_pkey DO UPDATE
           SET previous_level = n.level, level = excluded.level
         WHERE n.level < excluded.level
        RETURNING n.org_id, n.metric, n.cycle_start, n.level, n.previous_level)
    INSERT INTO payledger.events (topic, subject_id, owner_id, payload)
    SELECT 'credits.plan_usage', NULL, r.org_id,
           jsonb_build_object('org', r.org_id, 'metric', r.metric, 'cycle_start', r.cycle_start, 'percent', x,
                              'usage', u.usage, 'limit', l.monthly_limit)
      FROM raised r
      JOIN payledger.credit_usage u ON u.org_id = r.org_id AND u.metric = r.metric AND u.cycle_start = r.cycle_start
      JOIN payledger.credit_orgs o ON o.org_id = r.org_id
      JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.metric = r.metric
      CROSS JOIN unnest(ARRAY[50, 75, 90, 100]) x
     WHERE x > r.previous_level AND x <= r.level
     ORDER BY r.org_id, r.metric, x;
    GET DIAGNOSTICS raised_events = ROW_COUNT;
    -- blocked and unblocked meters (the statement's snapshot of the notices
    -- is the state before it)
    WITH changed AS (
        SELECT m.org_id, m.metric, m.cycle_start, m.blocked
          FROM unnest(picked) AS x(org_id)
          JOIN payledger.credit_meters m ON m.org_id = x.org_id
          LEFT JOIN payledger.credit_plan_notices n
            ON n.org_id = m.org_id AND n.metric = m.metric AND n.cycle_start = m.cycle_start
         WHERE m.cycle_start > now() - interval '3 months'
           AND m.blocked IS DISTINCT FROM coalesce(n.blocked, false)),
    -- (only rows this statement changed are told: two runs at once tell once)
    told AS (
        INSERT INTO payledger.credit_plan_notices AS n (org_id, metric, cycle_start, blocked)
        SELECT c.org_id, c.metric, c.cycle_start, c.blocked FROM changed c
        ON CONFLICT ON CONSTRAINT credit_plan_notices_pkey DO UPDATE SET blocked = excluded.blocked
         WHERE n.blocked IS DISTINCT FROM excluded.blocked
        RETURNING n.org_id, n.metric, n.cycle_start, n.blocked)
    INSERT INTO payledger.events (topic, subject_id, owner_id, payload)
    SELECT CASE WHEN t.blocked THEN 'credits.metric_blocked' ELSE 'credits.metric_unblocked' END, NULL, t.org_id,
           jsonb_build_object('org', t.org_id, 'metric', t.metric, 'cycle_start', t.cycle_start,
                              'cost', payledger.credits_of(m.cost), 'charged', payledger.credits_of(m.charged))
      FROM told t
      JOIN payledger.credit_meters m ON m.org_id = t.org_id AND m.metric = t.metric AND m.cycle_start = t.cycle_start
     ORDER BY t.org_id, t.cycle_start, t.metric;
    GET DIAGNOSTICS blocked_events = ROW_COUNT;
    RETURN raised_events + blocked_events;
END;
$$;

-- One step of the run: the next max_orgs organisations after after_org (of
-- share part of parts), told in this step's transaction.
CREATE FUNCTION payledger_internal.plan_notices_step(max_orgs integer, after_org text, part integer, parts integer)
RETURNS TABLE (done integer, failed integer, last text)
LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    picked text[];
BEGIN
    SELECT coalesce(array_agg(o.org_id ORDER BY o.org_id), '{}') INTO picked
      FROM (SELECT o.org_id FROM payledger.credit_orgs o
             WHERE (after_org IS NULL OR o.org_id > after_org)
               AND (parts = 1 OR (pg_catalog.hashtextextended(o.org_id, 0) & 1023) % parts = part)
             ORDER BY o.org_id LIMIT max_orgs) o;
    PERFORM payledger_internal.plan_notices(picked);
    RETURN QUERY SELECT cardinality(picked), 0, CASE WHEN cardinality(picked) = max_orgs THEN picked[max_orgs] END;
END;
$$;
SELECT payledger_internal.register_worker_run('credits', 'metering_notices',
                                              'payledger_internal.plan_notices_step(integer, text, integer, integer)',
                                              'metering_interval', NULL, 'orgs_noticed');

-- The plan notices now, for every organisation (after meter_all, or a
-- backfill of usage), in the calling transaction. Returns the events written.
CREATE FUNCTION payledger.run_plan_notices()
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    picked text[];
    told integer := 0;
BEGIN
    -- (the events this call wrote: another run's, committed meanwhile, are not its)
    FOR picked IN SELECT array_agg(x.org_id ORDER BY x.org_id)
                    FROM (SELECT o.org_id, (row_number() OVER (ORDER BY o.org_id) - 1) / 1000 AS k
                            FROM payledger.credit_orgs o) x
                   GROUP BY x.k ORDER BY x.k LOOP
        told := told + payledger_internal.plan_notices(picked);
    END LOOP;
    PERFORM payledger.worker_run_done('metering_notices');
    RETURN told;
END;
$$;
