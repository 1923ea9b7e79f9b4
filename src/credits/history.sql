-- payledger credits: history by month.

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
    PERFORM payledger_internal.require(org, 'org');
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
GRANT EXECUTE ON FUNCTION payledger.credit_history(text, integer) TO payledger_app;

CREATE FUNCTION payledger.my_credit_history(months integer DEFAULT 12)
RETURNS TABLE (month date, metric text, usage numeric, monthly_limit numeric, overage numeric,
               credits_used numeric, paid_used numeric, promotional_used numeric, expired numeric, voided numeric,
               closing_balance numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.credit_history(payledger.current_owner_id(), months)
     WHERE payledger.current_owner_id() IS NOT NULL;
$$;
GRANT EXECUTE ON FUNCTION payledger.my_credit_history(integer) TO payledger_enduser, payledger_app;

CREATE VIEW payledger.my_credit_history AS
SELECT * FROM payledger.my_credit_history(12);
