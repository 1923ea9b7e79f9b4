-- payledger credits: consumption in burn order, undo, and balances
-- (get_total_credits).

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
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.require(metric, 'metric');
    PERFORM payledger_internal.require(idempotency_key, 'idempotency_key');
    PERFORM payledger_internal.credit_require_metric(metric);
    want := payledger_internal.credits_minor(credits);
    c := payledger_internal.credit_burn(org, metric, want, idempotency_key, usage_at, coalesce(partial, false));
    RETURN QUERY SELECT c.id, payledger.credits_of(c.amount), payledger.credits_of(c.requested - c.amount),
        (SELECT coalesce(jsonb_agg(jsonb_build_object('grant', p.grant_id, 'credits', payledger.credits_of(p.amount),
                                                      'category', p.category) ORDER BY p.amount DESC), '[]')
           FROM payledger.credit_consumption_parts p WHERE p.consumption_id = c.id);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.consume_credits(text, text, numeric, text, timestamptz, boolean) TO payledger_app;

-- The burn itself, in minor units (metering burns set-based: meter_batch).
CREATE FUNCTION payledger_internal.credit_burn(org text, metric text, want bigint, key text, usage_at timestamptz,
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
    PERFORM payledger_internal.credit_lock(org);
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
        j := payledger_internal.credit_post(postings || jsonb_build_object('account', payledger_internal.credit_system_account('credits_consumed'),
                                                                  'amount', want - left_),
                                   jsonb_build_object('consumption', id, 'org', org, 'metric', metric), 'credit_consume');
    END IF;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id)
    VALUES (id, org, metric, want - left_, want, usage_at, key, j)
    RETURNING * INTO c;
    INSERT INTO payledger.credit_consumption_parts (consumption_id, grant_id, amount, category)
    SELECT id, x.g, x.a, x.c FROM unnest(part_grants, part_amounts, part_categories) AS x(g, a, c);
    PERFORM payledger_internal.credit_check_thresholds(org);
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
    PERFORM payledger_internal.require(consumption, 'consumption');
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumption % does not exist', consumption USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger_internal.credit_lock(c.org_id);
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption FOR UPDATE;
    IF c.undone_at IS NOT NULL OR c.amount = 0 THEN
        RETURN 0;
    END IF;
    FOR p IN SELECT cp.grant_id, cp.amount, g.account_id FROM payledger.credit_consumption_parts cp
               JOIN payledger.credit_grants g ON g.id = cp.grant_id WHERE cp.consumption_id = c.id LOOP
        postings := postings || jsonb_build_object('account', p.account_id, 'amount', p.amount);
    END LOOP;
    j := payledger_internal.credit_post(postings || jsonb_build_object('account', payledger_internal.credit_system_account('credits_consumed'),
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
            j2 := payledger_internal.credit_move(p.account_id, payledger_internal.credit_system_account('credits_expired'), p.amount,
                                        jsonb_build_object('grant', p.grant_id, 'undo', c.id), NULL, 'credit_expire');
            INSERT INTO payledger.credit_grant_events VALUES (p.grant_id, 'restored_expired', p.amount, j2, now(), reason);
        ELSE
            INSERT INTO payledger.credit_live_grants VALUES
                (p.grant_id, p.org_id, p.metric, p.priority, p.expires_at,
                 CASE p.category WHEN 'promotional' THEN 0 ELSE 1 END, p.effective_at, p.account_id)
            ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
    PERFORM payledger_internal.credit_check_thresholds(c.org_id);
    RETURN payledger.credits_of(c.amount);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.undo_consumption(uuid, text) TO payledger_app;

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
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.credit_require_metric(metric);
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
GRANT EXECUTE ON FUNCTION
    payledger.get_total_credits(text, text, timestamptz),
    payledger.get_total_credits(uuid, text, timestamptz),
    payledger.get_total_credits(bigint, text, timestamptz)
TO payledger_app;
