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
