-- payledger credits: views for end users.

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
GRANT EXECUTE ON FUNCTION payledger.my_total_credits() TO payledger_enduser, payledger_app;

CREATE VIEW payledger.my_credit_balance AS
SELECT * FROM payledger.my_total_credits();

CREATE VIEW payledger.my_credit_meters WITH (security_barrier) AS
SELECT m.metric, m.cycle_start, m.overage, payledger.credits_of(m.cost) AS cost,
       payledger.credits_of(m.charged) AS charged, m.blocked
  FROM payledger.credit_meters m
 WHERE m.org_id = payledger.current_owner_id();

-- The current cycle's usage of each metric of the organisation's plan,
-- against its limit (built-in functions only: a view's functions are
-- checked against the end user's rights).
CREATE VIEW payledger.my_plan_usage WITH (security_barrier) AS
SELECT o.plan, l.metric, c.cycle_start, coalesce(u.usage, 0) AS usage, l.monthly_limit,
       CASE WHEN l.monthly_limit > 0 THEN round(100 * coalesce(u.usage, 0) / l.monthly_limit, 1) END AS percent,
       coalesce(m.overage, 0) AS overage, coalesce(m.blocked, false) AS blocked
  FROM payledger.credit_orgs o
  -- (months from the anchor, clamped as credit_cycle_start does)
  CROSS JOIN LATERAL (
      SELECT (extract(year FROM now()) - extract(year FROM o.cycle_anchor))::integer * 12
             + (extract(month FROM now()) - extract(month FROM o.cycle_anchor))::integer AS n) k
  CROSS JOIN LATERAL (
      SELECT o.cycle_anchor + make_interval(months => k.n - (o.cycle_anchor + make_interval(months => k.n) > now())::integer)
             AS cycle_start) c
  JOIN payledger.credit_plan_limits l ON l.plan = o.plan
  LEFT JOIN payledger.credit_usage u ON u.org_id = o.org_id AND u.metric = l.metric AND u.cycle_start = c.cycle_start
  LEFT JOIN payledger.credit_meters m ON m.org_id = o.org_id AND m.metric = l.metric AND m.cycle_start = c.cycle_start
 WHERE o.org_id = payledger.current_owner_id();
