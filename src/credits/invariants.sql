-- payledger credits: invariants (part of check_invariants()).

CREATE FUNCTION payledger_internal.credit_invariants()
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
