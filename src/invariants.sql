-- Every violation of payledger's invariants, from every module; empty when healthy.
CREATE FUNCTION payledger.check_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger_internal.ledger_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.payin_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.events_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.provider_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.withdrawal_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.nostr_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.credit_invariants()
    UNION ALL
    SELECT * FROM payledger_internal.p2p_invariants()
$$;
