-- payledger credits: usage, metering against plans (a periodic run of the
-- worker), and per-metric access.

-- A usage reading: counters add up over the cycle, gauges keep the highest.
CREATE FUNCTION payledger.record_usage(org text, metric text, amount numeric, at timestamptz DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
    o payledger.credit_orgs;
    cyc timestamptz;
    total numeric;
BEGIN
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.require(metric, 'metric');
    PERFORM payledger_internal.require(amount, 'amount');
    SELECT m.kind INTO k FROM payledger.credit_metrics m WHERE m.metric = record_usage.metric;
    IF k IS NULL THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
    IF amount < 0 THEN
        RAISE EXCEPTION 'usage must not be negative' USING ERRCODE = 'PL001';
    END IF;
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    SELECT * INTO o FROM payledger.credit_orgs x WHERE x.org_id = org;
    cyc := payledger_internal.credit_cycle_start(o.cycle_anchor, coalesce(at, now()));
    INSERT INTO payledger.credit_usage AS u (org_id, metric, cycle_start, usage, updated_at)
    VALUES (org, metric, cyc, amount, coalesce(at, now()))
    ON CONFLICT ON CONSTRAINT credit_usage_pkey DO UPDATE
       SET usage = CASE WHEN k = 'counter' THEN u.usage + excluded.usage ELSE greatest(u.usage, excluded.usage) END,
           updated_at = greatest(u.updated_at, excluded.updated_at)
    RETURNING u.usage INTO total;
    RETURN total;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.record_usage(text, text, numeric, timestamptz) TO payledger_app;

-- Metering's core, set-based over a batch of organisations: for each meter
-- (organisation, metric, cycle), cost(overage) - what is settled, burnt from
-- credits at the time of the latest reading, in burn order; one journal per
-- organisation; what cannot be paid blocks that metric. The meters looked at
-- are the current and the previous cycle's (readings arrive late) and any
-- older one still blocked; only_unpaid: just the blocked ones (after a
-- top-up). The caller holds each organisation's credit lock, under which
-- alone meter rows and grant balances change. Returns the meters charged.
CREATE FUNCTION payledger_internal.meter_batch(orgs text[], only_unpaid boolean)
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
                       payledger_internal.credit_cycle_start(o.cycle_anchor, payledger_internal.credit_cycle_start(o.cycle_anchor, now())
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
    sink := payledger_internal.credit_system_account('credits_consumed');
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
        FOR r IN SELECT * FROM payledger_internal.engine_batch_as('credits', to_jsonb(items[k * 1000 + 1 : k * 1000 + 1000])) b ORDER BY b.item LOOP
            IF r.status = 'error' THEN
                PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
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
    PERFORM payledger_internal.credit_thresholds(j_orgs);
    RETURN (SELECT count(DISTINCT p.d) FROM unnest(part_due) AS p(d));
END;
$$;

-- Charge one organisation's overage now (waits for its lock).
CREATE FUNCTION payledger.meter_org(org text, only_unpaid boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.credit_lock(org);
    RETURN payledger_internal.meter_batch(ARRAY[org], coalesce(only_unpaid, false));
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
      FROM unnest(picked) WITH ORDINALITY AS x(org_id, o) WHERE payledger_internal.credit_try_lock(x.org_id);
    -- a step that fails (a bug, bad configuration) changes nothing, is
    -- logged and counted, and does not stop the run: its organisations are
    -- tried again by the next one
    BEGIN
        n := payledger_internal.meter_batch(locked, false);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'payledger metering: % organisations from % not charged: % (SQLSTATE %)',
            cardinality(locked), locked[1], SQLERRM, SQLSTATE;
        lost := cardinality(locked);
    END;
    RETURN QUERY SELECT cardinality(locked) - lost, n, (SELECT count(*)::integer FROM payledger.credit_meters b WHERE b.blocked),
                        lost, CASE WHEN cardinality(picked) = max_orgs THEN picked[max_orgs] END;
END;
$$;

-- Metering is a periodic run of the worker (src/worker/worker.sql): every
-- payledger.metering_interval seconds, shared out over
-- payledger.metering_workers sessions, a run_metering step at a time.
CREATE FUNCTION payledger_internal.metering_step(max_orgs integer, after_org text, part integer, parts integer)
RETURNS TABLE (done integer, failed integer, last text)
LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT m.orgs, m.failed, m.last_org FROM payledger.run_metering(max_orgs, after_org, part, parts) m;
$$;
SELECT payledger_internal.register_worker_run('credits', 'metering', 'payledger_internal.metering_step(integer, text, integer, integer)',
                                     'metering_interval', 'metering_workers', 'orgs_metered');

-- Record a whole metering run as done (the worker and meter_all, at the end).
CREATE FUNCTION payledger.metering_done()
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger.worker_run_done('metering');
$$;

-- Is a metering run due (payledger.metering_interval since the last one)?
CREATE FUNCTION payledger.metering_due()
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM payledger.worker_runs_due() r WHERE r.name = 'metering');
$$;

-- A whole metering run on demand, a transaction per step, then the plan
-- notices (src/credits/thresholds.sql) (a procedure: CALL
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
    COMMIT;
    -- (and the plan notices, as the worker runs them after metering)
    PERFORM payledger.run_plan_notices();
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
           AND b.cycle_start = payledger_internal.credit_cycle_start(o.cycle_anchor, now()));
$$;
GRANT EXECUTE ON FUNCTION payledger.credit_access(text, text[]) TO payledger_app;
