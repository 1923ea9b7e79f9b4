-- payledger providers: the invoices. One per pay-in that waits for one,
-- pinned to the provider that issues it; what the worker or a webhook
-- learns about it is applied by invoice_apply; past its deadline it closes
-- (a housekeeping step).

-- Open the invoice row of a pay-in that waits for one (status creating; the
-- worker creates it at the provider). Idempotent: the pay-in's existing
-- invoice is returned as it is. Without a provider to issue it: PL028.
CREATE FUNCTION payledger_internal.open_invoice(
    payin        uuid,
    provider     uuid DEFAULT NULL,
    expiry       interval DEFAULT NULL,
    memo         text DEFAULT NULL,
    subscription uuid DEFAULT NULL)
RETURNS payledger.invoices
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    prov payledger.providers;
    inv payledger.invoices;
    max_age interval := make_interval(secs => payledger.setting_int('worker_max_invoice_age'));
BEGIN
    PERFORM payledger_internal.require(payin, 'payin');
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF p.state <> 'PENDING_INVOICE_CREATION' THEN
        RAISE EXCEPTION 'pay-in % is %, not waiting for an invoice', payin, p.state USING ERRCODE = 'PL020';
    END IF;
    IF expiry IS NOT NULL AND expiry <= '0' THEN
        RAISE EXCEPTION 'expiry must be positive' USING ERRCODE = '22023';
    END IF;
    -- (the row lock above makes a concurrent call wait, then find the row)
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    IF provider IS NOT NULL THEN
        SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
        END IF;
        IF prov.asset <> p.asset OR prov.rail <> p.external_method THEN
            RAISE EXCEPTION 'provider % serves % in %, not % in %', prov.name, prov.rail, prov.asset,
                p.external_method, p.asset USING ERRCODE = 'PL004';
        END IF;
    ELSE
        SELECT * INTO prov FROM payledger.providers x
         WHERE x.id = payledger_internal.pick_provider(p.type, p.asset, p.external_method);
    END IF;
    IF prov.id IS NULL THEN
        RAISE EXCEPTION 'no active provider serves % in % for pay-in type %', p.external_method, p.asset, p.type
            USING ERRCODE = 'PL028', HINT = 'Add one with add_provider, or route the type with route_payin_type.';
    END IF;
    INSERT INTO payledger.invoices (id, payin_id, provider_id, provider_kind, provider_name, profile_id, subscription_id,
                                    asset, amount, memo, expiry, status, monitor_until, next_check_at)
    VALUES (payledger.new_id(), p.id, prov.id, prov.kind, prov.name, prov.profile_id, subscription,
            p.asset, p.external_amount, coalesce(memo, p.type || ' ' || p.id), coalesce(expiry, prov.invoice_expiry),
            -- the creation deadline: an invoice not created within its own
            -- expiry (a long outage) fails its pay-in; due at once and first
            -- in line (a payer is waiting for it), in this tick too
            'creating', now() + least(max_age, coalesce(expiry, prov.invoice_expiry)), '-infinity')
    RETURNING * INTO inv;
    RETURN inv;
END;
$$;

-- For the application: pin the provider, expiry or memo of a pay-in's
-- invoice right after creating the pay-in (else the worker opens it with the
-- route's provider and defaults).
CREATE FUNCTION payledger.request_invoice(
    payin    uuid,
    provider uuid DEFAULT NULL,
    expiry   interval DEFAULT NULL,
    memo     text DEFAULT NULL)
RETURNS TABLE (invoice_id uuid, status payledger.invoice_status, provider_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
BEGIN
    inv := payledger_internal.open_invoice(payin, provider, expiry, memo);
    RETURN QUERY SELECT inv.id, inv.status, inv.provider_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.request_invoice(uuid, uuid, interval, text) TO payledger_app;

-- Money that arrived for a pay-in that had already failed: from the rail's
-- clearing account to the suspense account 'late_payments', with an event,
-- so that nothing received goes unrecorded. What to do with it (credit the
-- payer, refund) is the operator's call.
CREATE FUNCTION payledger_internal.record_late_payment(inv payledger.invoices, received bigint)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    late uuid;
    j uuid;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id;
    late := payledger.open_account('payledger', p.asset, 'suspense', 'late_payments');
    j := payledger.transfer(p.external_account, late, received, 'late-payment:' || inv.id,
                            jsonb_build_object('invoice', inv.id, 'payin', p.id), NULL, 'late_payment');
    PERFORM payledger_internal.emit_event('invoice.paid_late', inv.id, p.owner_id,
        jsonb_build_object('invoice', inv.id, 'payin', p.id, 'payin_state', p.state, 'amount', received,
                           'asset', p.asset, 'journal', j));
    RETURN j;
END;
$$;

-- More received than the invoice asked (Stacker News'
-- INVOICE_OVERPAY_SPILLOVER): the excess goes from the rail's clearing
-- account to the payer's main account, or, where the provider's config says
-- "overpayment": "suspense", to the suspense account 'overpayments'; with an
-- event. Once per invoice (its idempotency key).
CREATE FUNCTION payledger_internal.record_overpayment(inv payledger.invoices, p payledger.payins, excess bigint)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    to_suspense boolean := (SELECT pr.config ->> 'overpayment' = 'suspense' FROM payledger.providers pr
                             WHERE pr.id = inv.provider_id);
    dest uuid;
    j uuid;
BEGIN
    dest := CASE WHEN coalesce(to_suspense, false)
                 THEN payledger.open_account('payledger', p.asset, 'suspense', 'overpayments')
                 ELSE payledger.open_account(p.owner_id, p.asset) END;
    j := payledger.transfer(p.external_account, dest, excess, 'overpayment:' || inv.id,
                            jsonb_build_object('invoice', inv.id, 'payin', p.id), NULL, 'invoice_overpay_spillover');
    PERFORM payledger_internal.emit_event('invoice.overpaid', inv.id, p.owner_id,
        jsonb_build_object('invoice', inv.id, 'payin', p.id, 'asked', inv.amount, 'received', inv.amount + excess,
                           'excess', excess, 'to', CASE WHEN coalesce(to_suspense, false) THEN 'suspense' ELSE 'payer' END,
                           'journal', j));
    RETURN j;
END;
$$;

-- When to check an unsettled invoice again: after a tenth of its age, at
-- most a minute until it expires and at most ten minutes after (while it is
-- watched for late money). Young invoices (the ones customers are paying)
-- are checked at every tick, old ones rarely, so that the checks a provider
-- must answer do not grow with the invoices left unpaid; webhooks bring news
-- sooner. (The soak found both: every pending invoice checked at every
-- tick, then every expired one, outgrew what LNbits answers.)
CREATE FUNCTION payledger_internal.invoice_recheck_at(i payledger.invoices)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT now() + least((now() - i.created_at) / 10,
                         CASE WHEN i.expires_at IS NULL OR now() < i.expires_at THEN interval '1 minute'
                              ELSE interval '10 minutes' END);
$$;

-- Apply what was learnt about an invoice: by the worker after a call, or by
-- a verified webhook. The invoice row is locked first (then the pay-in, then
-- accounts), and every change is guarded by the state it comes from, so two
-- reports of the same payment settle it once.
--   {"op": "create", "ok": true, "external_id", "payment_hash", "payment_request", "expires_at", "monitor_until"}
--   {"op": "create", "ok": false, "error", "retryable"}
--   {"op": "check", "status": "paid", "received", "preimage"}
--   {"op": "check", "status": "pending" | "expired" | "invalid" | "not_found", "note"}
--   {"op": "check", "ok": false, "error", "retryable"}
--   {"op": "cancel", "cancel": "cancelled" | "too_late" | "gone"}
--   {"op": "cancel", "ok": false, "error", "retryable"}
-- Returns what it did, in a word.
CREATE FUNCTION payledger.invoice_apply(invoice uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
    p payledger.payins;
    prov payledger.providers;
    t record;
    received bigint;
    said text := result ->> 'status';
    max_attempts integer := payledger.setting_int('worker_create_attempts');
BEGIN
    SELECT * INTO inv FROM payledger.invoices i WHERE i.id = invoice FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invoice % does not exist', invoice USING ERRCODE = 'PL029';
    END IF;
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = inv.provider_id;

    IF result ->> 'op' = 'create' THEN
        IF inv.status <> 'creating' THEN
            RETURN 'ignored';
        END IF;
        IF result ->> 'ok' = 'false' THEN
            -- an unreachable provider does not use up the tries (its backoff
            -- paces them); the creation deadline (monitor_until) still holds
            IF coalesce((result ->> 'retryable')::boolean, false) THEN
                UPDATE payledger.invoices i
                   SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                       create_attempts = greatest(i.create_attempts - 1, 0),
                       next_check_at = now(), locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                RETURN 'creation_unreachable';
            END IF;
            IF inv.create_attempts >= max_attempts THEN
                UPDATE payledger.invoices i
                   SET status = 'failed', last_error = left(result ->> 'error', 500), next_check_at = NULL,
                       locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED', 'INVOICE_CREATION_FAILED');
                RETURN 'creation_failed';
            END IF;
            UPDATE payledger.invoices i
               SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                   next_check_at = now() + payledger_internal.backoff(i.create_attempts), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'creation_retry';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'pending', external_id = result ->> 'external_id', payment_hash = result ->> 'payment_hash',
               payment_request = result ->> 'payment_request',
               expires_at = coalesce(to_timestamp((result ->> 'expires_at')::double precision), now() + i.expiry),
               monitor_until = least(i.created_at + make_interval(secs => payledger.setting_int('worker_max_invoice_age')),
                                     coalesce(to_timestamp((result ->> 'monitor_until')::double precision),
                                              coalesce(to_timestamp((result ->> 'expires_at')::double precision),
                                                       now() + i.expiry) + prov.monitoring)),
               errors = 0, last_error = NULL, next_check_at = now(), locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        -- (a hold invoice is a p2p pay-in's: it waits for the payer's payment to be held)
        SELECT * INTO t FROM payledger.transition_payin(inv.payin_id, (CASE WHEN inv.hold THEN 'PENDING_HELD' ELSE 'PENDING' END)::payledger.payin_state,
                                                        NULL, coalesce(result ->> 'payment_hash', result ->> 'external_id'));
        RETURN CASE WHEN t.changed THEN 'created' ELSE 'created_for_' || lower(t.state::text) END;
    END IF;

    IF result ->> 'op' = 'cancel' THEN
        IF inv.cancel IS DISTINCT FROM 'requested' THEN
            UPDATE payledger.invoices i SET locked_until = NULL WHERE i.id = inv.id;
            RETURN 'ignored';
        END IF;
        IF result ->> 'ok' = 'false' THEN
            -- still requested: tried again after a backoff
            UPDATE payledger.invoices i
               SET errors = i.errors + 1, last_error = left('cancelling: ' || (result ->> 'error'), 500),
                   next_check_at = now() + payledger_internal.backoff(i.errors + 1), locked_until = NULL,
                   updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'cancel_error';
        END IF;
        IF result ->> 'cancel' = 'too_late' THEN
            -- paid before the cancel: the next check books it as late money
            UPDATE payledger.invoices i
               SET cancel = 'too_late', errors = 0, next_check_at = now(), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'cancel_too_late';
        END IF;
        IF result ->> 'cancel' NOT IN ('cancelled', 'gone') THEN
            RAISE EXCEPTION 'unknown cancel result %', result USING ERRCODE = '22023';
        END IF;
        -- it can no longer be paid: no longer watched
        UPDATE payledger.invoices i
           SET cancel = result ->> 'cancel', cancelled_at = now(), status = 'failed', errors = 0,
               last_error = CASE WHEN result ->> 'cancel' = 'gone' THEN 'the provider has no such invoice (its pay-in ended)'
                                 ELSE 'cancelled at the provider: its pay-in ended' END,
               next_check_at = NULL, locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        RETURN 'invoice_cancelled';
    END IF;

    -- a check (or a webhook's news)
    IF result ->> 'ok' = 'false' OR said = 'not_found' THEN
        UPDATE payledger.invoices i
           SET errors = i.errors + 1, checks = i.checks + 1,
               last_error = left(coalesce(result ->> 'error', 'not found at the provider'), 500),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL
                                    ELSE now() + payledger_internal.backoff(i.errors + 1) END,
               locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        RETURN 'error';
    END IF;

    IF said = 'paid' THEN
        IF inv.status = 'paid' THEN
            UPDATE payledger.invoices i SET next_check_at = NULL, locked_until = NULL WHERE i.id = inv.id;
            RETURN 'already_paid';
        END IF;
        IF inv.hold THEN
            -- settled at the node: only by payledger's forward (src/p2p/),
            -- whose settle result moves the pay-in and books the money; its
            -- answer was lost, or is on its way. Left to it.
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, locked_until = NULL, updated_at = now(),
                   last_error = 'settled at the node: waiting for the forward''s settle result',
                   next_check_at = payledger_internal.invoice_recheck_at(i)
             WHERE i.id = inv.id;
            RETURN 'hold_settled';
        END IF;
        received := coalesce((result ->> 'received')::bigint, inv.amount);
        IF received < inv.amount THEN
            -- not all of it: keep watching, and say so
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, last_error = format('underpaid: %s of %s', received, inv.amount),
                   next_check_at = now(), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'underpaid';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'paid', amount_received = received, preimage = result ->> 'preimage', paid_at = now(),
               checks = i.checks + 1, errors = 0, last_error = NULL, next_check_at = NULL, locked_until = NULL,
               updated_at = now()
         WHERE i.id = inv.id
        RETURNING * INTO inv;
        -- locked, so that a cancel or failure committing meanwhile is seen
        -- (then the money is a late payment, not lost)
        SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id FOR NO KEY UPDATE;
        IF p.state IN ('PENDING_INVOICE_CREATION', 'PENDING', 'HELD') THEN
            IF p.state = 'PENDING_INVOICE_CREATION' THEN
                PERFORM payledger.transition_payin(p.id, 'PENDING', NULL, coalesce(inv.payment_hash, inv.external_id));
            END IF;
            SELECT * INTO t FROM payledger.transition_payin(p.id, 'PAID');
        END IF;
        IF p.state IN ('PENDING_INVOICE_CREATION', 'PENDING', 'HELD', 'PAID') THEN
            IF received > inv.amount THEN
                UPDATE payledger.invoices i
                   SET overpay_journal = payledger_internal.record_overpayment(inv, p, received - inv.amount)
                 WHERE i.id = inv.id;
            END IF;
            RETURN CASE WHEN p.state = 'PAID' THEN 'already_paid' ELSE 'paid' END;
        END IF;
        -- FAILED or CANCELLED before the money came
        UPDATE payledger.invoices i SET paid_late = true, late_journal = payledger_internal.record_late_payment(inv, received)
         WHERE i.id = inv.id;
        RETURN 'paid_late';
    END IF;

    IF said = 'pending' THEN
        UPDATE payledger.invoices i
           SET checks = i.checks + 1, errors = 0, last_error = NULL, locked_until = NULL, updated_at = now(),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL ELSE payledger_internal.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        RETURN 'pending';
    END IF;

    -- a hold invoice's payment held by the node (src/p2p/): recorded, and the
    -- pay-in HELD when all of it is; the node keeps it until payledger
    -- settles it with the preimage or cancels it
    IF said = 'held' THEN
        IF NOT inv.hold THEN
            RAISE EXCEPTION 'invoice % is not a hold invoice, and cannot be held', inv.id USING ERRCODE = '22023';
        END IF;
        received := (result ->> 'held_amount')::bigint;
        UPDATE payledger.invoices i
           SET held_at = coalesce(i.held_at, now()), held_amount = received,
               htlc_expiry_height = (result ->> 'htlc_expiry_height')::integer,
               held_block_height = (result ->> 'block_height')::integer,
               last_error = CASE WHEN received < i.amount THEN format('held in part: %s of %s', received, i.amount) END,
               checks = i.checks + 1, errors = 0, locked_until = NULL, updated_at = now(),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL ELSE payledger_internal.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        -- (locked, so that a failure committing meanwhile is seen: then the
        -- worker cancels the hold invoice and the payer gets the HTLC back)
        SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id FOR NO KEY UPDATE;
        IF received >= inv.amount AND p.state = 'PENDING_HELD' THEN
            PERFORM payledger.transition_payin(p.id, 'HELD');
            RETURN 'held';
        END IF;
        RETURN 'held_unchanged';
    END IF;

    IF said IN ('expired', 'invalid') THEN
        IF inv.hold AND inv.status = 'pending'
           AND (SELECT y.state FROM payledger.payins y WHERE y.id = inv.payin_id) IN ('FORWARDING', 'FORWARDED') THEN
            -- the node cancelled a held payment that is being forwarded: only
            -- the forward's outcome may move the pay-in (src/p2p/)
            UPDATE payledger.invoices i
               SET status = 'failed', checks = i.checks + 1, errors = 0, locked_until = NULL, next_check_at = NULL,
                   last_error = 'the node cancelled the held payment while it was forwarded', updated_at = now()
             WHERE i.id = inv.id;
            PERFORM payledger_internal.emit_event('invoice.hold_cancelled', inv.id, NULL,
                jsonb_build_object('invoice', inv.id, 'payin', inv.payin_id));
            RETURN 'hold_cancelled';
        END IF;
        IF inv.status IN ('paid', 'failed') OR (inv.status = 'expired' AND said = 'expired') THEN
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, locked_until = NULL,
                   next_check_at = CASE WHEN i.next_check_at IS NOT NULL AND i.monitor_until > now()
                                        THEN payledger_internal.invoice_recheck_at(i) END
             WHERE i.id = inv.id;
            RETURN 'unchanged';
        END IF;
        UPDATE payledger.invoices i
           SET status = CASE WHEN said = 'expired' THEN 'expired' ELSE 'failed' END::payledger.invoice_status,
               checks = i.checks + 1, errors = 0, locked_until = NULL, updated_at = now(),
               last_error = left(coalesce(result ->> 'note', result ->> 'error'), 500),
               -- an expired invoice is still watched for late money until monitor_until
               next_check_at = CASE WHEN said = 'expired' AND i.monitor_until > now() THEN payledger_internal.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        IF result ->> 'note' IS NOT NULL THEN
            PERFORM payledger_internal.emit_event('invoice.partial_payment', inv.id, NULL,
                jsonb_build_object('invoice', inv.id, 'payin', inv.payin_id, 'note', result ->> 'note'));
        END IF;
        PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
            CASE WHEN said = 'expired' THEN 'INVOICE_EXPIRED' ELSE 'UNKNOWN_FAILURE' END::payledger.payin_failure_reason);
        RETURN said;
    END IF;
    RAISE EXCEPTION 'unknown invoice result %', result USING ERRCODE = '22023';
END;
$$;

-- A pay-in ended (FAILED, CANCELLED): its open invoice is checked at the
-- worker's next tick, where the claim has it cancelled (see worker_claim). A
-- handler of the pay-in lifecycle; SKIP LOCKED, so that it never waits for
-- an invoice the worker holds (that one is checked again soon anyway), and
-- never locks in the order opposite to invoice_apply's.
CREATE FUNCTION payledger_internal.invoice_check_soon(p payledger.payins)
RETURNS void LANGUAGE sql SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.invoices i SET next_check_at = now()
     WHERE i.id IN (SELECT x.id FROM payledger.invoices x
                     WHERE x.payin_id = p.id AND x.status = 'pending' AND x.next_check_at > now()
                       FOR UPDATE SKIP LOCKED);
$$;
SELECT payledger_internal.register_payin_handler('provider', 'reached', 300, '{FAILED,CANCELLED}',
                                                 'payledger_internal.invoice_check_soon(payledger.payins)');

-- Invoices past their deadline: one unpaid past monitoring (or never created
-- in time) expires (or fails) and fails its pay-in, which gives back its
-- custodial legs; an expired one past monitoring is no longer watched.
-- Returns how many it closed. The worker calls it with max_invoices 1, one
-- transaction each (one pay-in's accounts per transaction: see worker_apply).
CREATE FUNCTION payledger.expire_invoices(max_invoices integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger_internal.require_limit(max_invoices, 'max_invoices');
    FOR inv IN SELECT i.id, i.status, i.payin_id FROM payledger.invoices i
                WHERE i.next_check_at IS NOT NULL AND i.monitor_until < now()
                  AND (i.locked_until IS NULL OR i.locked_until < now())
                  -- (a held payment does not expire: the HELD deadline and
                  -- the forward end it, src/p2p/)
                  AND i.held_at IS NULL
                LIMIT max_invoices FOR UPDATE SKIP LOCKED LOOP
        -- an invoice whose closing fails (its pay-in's move raises) is
        -- backed off and reported, so that it holds up neither the others
        -- nor the worker
        BEGIN
            UPDATE payledger.invoices i
               SET status = CASE WHEN i.status = 'creating' THEN 'failed'
                                 WHEN i.status = 'pending' THEN 'expired' ELSE i.status END,
                   last_error = CASE WHEN i.status IN ('creating', 'pending') THEN coalesce(i.last_error, 'past its deadline')
                                     ELSE i.last_error END,
                   next_check_at = NULL, updated_at = now()
             WHERE i.id = inv.id;
            IF inv.status IN ('creating', 'pending') THEN
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
                    CASE WHEN inv.status = 'creating' THEN 'INVOICE_CREATION_FAILED' ELSE 'INVOICE_EXPIRED' END::payledger.payin_failure_reason);
            END IF;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.invoices i
               SET errors = i.errors + 1, last_error = left('closing failed: ' || msg, 500),
                   locked_until = now() + payledger_internal.backoff(i.errors + 1), updated_at = now()
             WHERE i.id = inv.id;
            RAISE WARNING 'payledger: closing invoice % failed: %', inv.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger_internal.register_housekeeping_step('provider', 'invoices_closed', 10,
                                            'payledger.expire_invoices(integer)', per_call => 1);

CREATE VIEW payledger.my_invoices WITH (security_barrier) AS
SELECT i.id, i.payin_id, i.status, i.asset, i.amount, i.payment_request, i.payment_hash, i.expires_at,
       i.paid_at, i.amount_received, i.created_at
  FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
 WHERE p.owner_id = payledger.current_owner_id();

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

CREATE FUNCTION payledger_internal.provider_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a paid invoice's pay-in is PAID, or its money went to the late account
    SELECT 'invoice_paid_payin_paid', i.id::text, format('pay-in %s is %s', p.id, p.state)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.status = 'paid' AND NOT i.paid_late AND p.state <> 'PAID'
    UNION ALL
    -- a PAID pay-in with an external leg has its invoice paid (when payledger issued one)
    SELECT 'payin_paid_invoice_paid', p.id::text, format('invoice %s is %s', i.id, i.status)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE p.state = 'PAID' AND i.status <> 'paid'
    UNION ALL
    -- late money is in the ledger, once
    SELECT 'late_payment_journal', i.id::text, 'no journal ' || i.late_journal
      FROM payledger.invoices i
     WHERE i.paid_late AND NOT EXISTS (SELECT 1 FROM payledger.journals j WHERE j.id = i.late_journal)
    UNION ALL
    -- an invoice's amount is what its pay-in owes on the rail
    SELECT 'invoice_amount', i.id::text, format('%s, the pay-in owes %s', i.amount, p.external_amount)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.amount <> p.external_amount
    UNION ALL
    -- more received than asked, in time: the excess booked once
    SELECT 'invoice_overpaid', i.id::text, format('received %s of %s, journal %s', i.amount_received, i.amount, i.overpay_journal)
      FROM payledger.invoices i
     WHERE i.status = 'paid' AND NOT i.paid_late AND (i.amount_received > i.amount) <> (i.overpay_journal IS NOT NULL)
$$;
