-- Every violation of payledger's invariants, from every module; empty when healthy.
CREATE FUNCTION payledger.check_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.ledger_invariants()
    UNION ALL
    SELECT * FROM payledger.payin_invariants()
    UNION ALL
    SELECT * FROM payledger.events_invariants()
    UNION ALL
    SELECT * FROM payledger.provider_invariants()
    UNION ALL
    SELECT * FROM payledger.nostr_invariants()
    UNION ALL
    SELECT * FROM payledger.credit_invariants()
$$;
