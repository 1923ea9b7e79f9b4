-- payledger providers: a deadline for every waiting state. A pay-in that
-- waits in a state longer than its deadline (payledger.payin_deadlines) is
-- failed by a housekeeping step, with the state's reason, and its escrow
-- goes back to the payer: no pay-in waits forever. The deadline is the last
-- resort, not the rule: a pay-in whose invoice payledger watches closes with
-- that invoice (expire_invoices), and one whose withdrawal is in flight is
-- settled by what the provider says (withdrawals.sql); neither is failed
-- here while it lasts, except a payment held for a p2p forward (HELD: its
-- deadline cancels it). FORWARDING has none: an outgoing payment is in
-- flight, and only its outcome may end it.

-- The deadlines in force: the operator's where set, else the defaults.
CREATE FUNCTION payledger.payin_deadlines_in_force()
RETURNS TABLE (state payledger.payin_state, after interval, reason payledger.payin_failure_reason)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT v.state, coalesce(d.after, v.after), coalesce(d.reason, v.reason)
      FROM (VALUES ('PENDING_INVOICE_CREATION'::payledger.payin_state, interval '1 hour',
                    'INVOICE_CREATION_FAILED'::payledger.payin_failure_reason),
                   ('PENDING_INVOICE_WRAP', '1 hour', 'INVOICE_WRAPPING_FAILED_UNKNOWN'),
                   ('PENDING_WITHDRAWAL', '1 day', 'WITHDRAWAL_FAILED'),
                   ('PENDING', '1 day', 'INVOICE_EXPIRED'),
                   ('PENDING_HELD', '1 day', 'HELD_INVOICE_UNEXPECTED_ERROR'),
                   ('HELD', '1 hour', 'HELD_INVOICE_SETTLED_TOO_SLOW'),
                   ('FAILED_FORWARD', '10 minutes', 'INVOICE_FORWARDING_FAILED'),
                   ('CANCELLED', '10 minutes', NULL)) v(state, after, reason)
      LEFT JOIN payledger.payin_deadlines d ON d.state = v.state
     ORDER BY v.state;
$$;
GRANT EXECUTE ON FUNCTION payledger.payin_deadlines_in_force() TO payledger_app;

-- Admin: how long a state may last, and the reason a pay-in past it fails
-- with (NULL: the state's own, in payin_deadlines_in_force()).
CREATE FUNCTION payledger.set_payin_deadline(state payledger.payin_state, after interval,
                                             reason payledger.payin_failure_reason DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(state, 'state');
    PERFORM payledger_internal.require(after, 'after');
    IF state IN ('PAID', 'FAILED', 'FORWARDING', 'FORWARDED') THEN
        RAISE EXCEPTION 'a % pay-in is not failed by a deadline', state USING ERRCODE = '22023';
    END IF;
    IF after <= '0' THEN
        RAISE EXCEPTION 'a deadline must be positive, not %', after USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payin_deadlines AS d (state, after, reason)
    VALUES (set_payin_deadline.state, set_payin_deadline.after, set_payin_deadline.reason)
    ON CONFLICT ON CONSTRAINT payin_deadlines_pkey DO UPDATE SET after = excluded.after, reason = excluded.reason;
END;
$$;

-- The housekeeping step: fail up to max_payins pay-ins past their state's
-- deadline, one transaction each (one pay-in's accounts per transaction: the
-- lock order). One that cannot be failed (its move raises) is reported and
-- left for the next tick; the others are not held up. Returns how many it
-- failed.
CREATE FUNCTION payledger.fail_overdue_payins(max_payins integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    o record;
    n integer := 0;
BEGIN
    PERFORM payledger_internal.require_limit(max_payins, 'max_payins');
    FOR o IN SELECT p.id, p.state, d.reason FROM payledger.payins p
               JOIN payledger.payin_deadlines_in_force() d ON d.state = p.state
              WHERE p.state NOT IN ('PAID', 'FAILED') AND p.state_changed_at < now() - d.after
                -- (a held payment is not: HELD's deadline holds for it)
                AND NOT EXISTS (SELECT 1 FROM payledger.invoices i
                                 WHERE i.payin_id = p.id AND i.status IN ('creating', 'pending')
                                   AND NOT (p.state = 'HELD' AND i.held_at IS NOT NULL))
                -- (a payment that may be under way is left to its lookups;
                -- one not sent yet, or an address not resolved yet, may fail)
                AND NOT EXISTS (SELECT 1 FROM payledger.withdrawals w
                                 WHERE w.payin_id = p.id AND w.status IN ('unknown', 'pending'))
              ORDER BY p.state_changed_at
              LIMIT max_payins
              FOR NO KEY UPDATE OF p SKIP LOCKED LOOP
        BEGIN
            PERFORM payledger.transition_payin(o.id, 'FAILED', o.reason);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'payledger: pay-in % past its % deadline could not be failed: % (SQLSTATE %)',
                o.id, o.state, SQLERRM, SQLSTATE;
        END;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger_internal.register_housekeeping_step('provider', 'payins_past_deadline', 15,
                                                     'payledger.fail_overdue_payins(integer)', per_call => 1);
