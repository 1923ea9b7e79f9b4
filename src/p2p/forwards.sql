-- payledger p2p: wrapping and forwarding. A p2p pay-in (PENDING_INVOICE_WRAP)
-- gets an invoice for its receiver's share from the receiver's wallet; once
-- checked, a hold invoice with the same payment hash is opened at the
-- operator's node for what the payer owes (PENDING_HELD, when the node has
-- issued it: payledger.invoice_apply). When the payer's payment is held
-- (HELD), the node pays the receiver's invoice (FORWARDING); the preimage it
-- learns settles the hold invoice (FORWARDED, then PAID). The worker drives
-- it: p2p_claim in its claim step, the wallet and the node called on its
-- threads, p2p_apply for each result. See docs/p2p.md.
--
-- Lock order: a forward's row first, then its hold invoice, then its pay-in
-- (then the accounts). A pay-in's move never locks a forward.

-- A p2p pay-in's receiver (the owner of the receiver pay-out's account),
-- the share forwarded, and the routing fee budget.
CREATE FUNCTION payledger_internal.p2p_shares(payin uuid, OUT receiver_id text, OUT amount bigint, OUT fee_budget bigint)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT r.owner_id, r.amount,
           coalesce((SELECT f.amount FROM payledger.payouts f WHERE f.payin_id = r.payin_id AND f.role = 'routing_fee'), 0)
      FROM payledger.payouts r WHERE r.payin_id = payin AND r.role = 'receiver';
$$;

-- The reasons that blame the receiver's wallet (Stacker News'
-- PAY_IN_RECEIVER_FAILURE_REASONS): a pay-in failed with one is retried with
-- another wallet, or with credits (p2p_fallback).
CREATE FUNCTION payledger_internal.p2p_receiver_blamed(reason payledger.payin_failure_reason)
RETURNS boolean LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(reason::text IN ('INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_FEE', 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY',
                                     'INVOICE_WRAPPING_FAILED_UNKNOWN', 'INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW',
                                     'INVOICE_FORWARDING_FAILED'), false);
$$;

-- The wallet to ask for a pay-in of a chain of retries (chain: its genesis):
-- the receiver's, enabled and attached, not cooling down after
-- payledger.p2p_wallet_max_failures failures in a row, not one that a pay-in
-- of the chain (other than exclude) failed with for a reason that blames the
-- wallet; lowest priority first.
CREATE FUNCTION payledger_internal.p2p_pick_wallet(chain uuid, exclude uuid, receiver text)
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT w.id FROM payledger.receiver_wallets w
     WHERE w.owner_id = receiver AND w.enabled AND w.detached_at IS NULL
       AND NOT (w.consecutive_failures >= payledger.setting_int('p2p_wallet_max_failures')
                AND w.last_failure_at > now() - make_interval(secs => payledger.setting_int('p2p_wallet_cooldown')))
       AND NOT EXISTS (SELECT 1 FROM payledger.p2p_forwards f JOIN payledger.payins x ON x.id = f.payin_id
                        WHERE f.wallet_id = w.id AND x.id IS DISTINCT FROM exclude
                          AND x.state = 'FAILED' AND payledger_internal.p2p_receiver_blamed(x.failure_reason)
                          AND coalesce(x.genesis_id, x.id) = chain)
     ORDER BY w.priority, w.created_at, w.id
     LIMIT 1;
$$;

-- A forward that cannot go on: recorded with why, and its pay-in FAILED
-- with the reason (its custodial part back to the payer; its hold invoice,
-- if any, cancelled at the node by the worker's next claim). One that was
-- being forwarded passes through FAILED_FORWARD. The caller holds the
-- forward's row. reason NULL: the pay-in ended already. A reason that
-- blames the receiver's wallet makes the fallback due (p2p_fallback, in a
-- transaction of its own).
CREATE FUNCTION payledger_internal.p2p_fail(f payledger.p2p_forwards, reason payledger.payin_failure_reason, why text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    st payledger.payin_state;
BEGIN
    -- (a failure that blames the receiver's wallet, of a type whose retries
    -- are not spent: the fallback is due)
    UPDATE payledger.p2p_forwards x
       SET status = 'failed', failure = left(why, 500), locked_until = NULL, updated_at = now(),
           next_check_at = CASE WHEN payledger_internal.p2p_receiver_blamed(reason)
                                     AND (SELECT p.retry_count < coalesce(t.max_retries, p.retry_count + 1)
                                            FROM payledger.payins p JOIN payledger.payin_types t ON t.type = p.type
                                           WHERE p.id = f.payin_id) THEN '-infinity'::timestamptz END
     WHERE x.payin_id = f.payin_id;
    SELECT p.state INTO st FROM payledger.payins p WHERE p.id = f.payin_id;
    IF reason IS NULL THEN
        RETURN;
    END IF;
    IF st = 'FORWARDING' THEN
        PERFORM payledger.transition_payin(f.payin_id, 'FAILED_FORWARD', reason);
        st := 'FAILED_FORWARD';
    END IF;
    IF st IN ('PENDING_INVOICE_WRAP', 'PENDING_HELD', 'HELD', 'FAILED_FORWARD') THEN
        PERFORM payledger.transition_payin(f.payin_id, 'FAILED', reason);
    END IF;
END;
$$;

-- A p2p pay-in moves past HELD only with its forward: FORWARDING while the
-- node pays the receiver, FORWARDED once it has, FAILED_FORWARD when that
-- failed, PAID once the payer's held payment is settled. A handler of the
-- pay-in lifecycle (lock stage): any other move (an application's
-- transition_payin) is refused with PL020, so that nothing fails a pay-in
-- whose money may be on its way, and nothing makes one PAID before its
-- payer's payment is collected. It only reads the forward: its writers lock
-- it before the pay-in.
CREATE FUNCTION payledger_internal.p2p_payin_lock(p payledger.payins)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    st text;
    expected text := CASE p.state WHEN 'FORWARDING' THEN 'forwarding' WHEN 'FORWARDED' THEN 'forwarded'
                                  WHEN 'FAILED_FORWARD' THEN 'failed' WHEN 'PAID' THEN 'settled' END;
BEGIN
    SELECT f.status INTO st FROM payledger.p2p_forwards f WHERE f.payin_id = p.id;
    IF NOT FOUND OR st = expected THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'pay-in % is forwarded peer to peer (its forward is %): only the forward moves it to %', p.id, st, p.state
        USING ERRCODE = 'PL020', HINT = 'See docs/p2p.md.';
END;
$$;
SELECT payledger_internal.register_payin_handler('p2p', 'lock', 400, '{FORWARDING,FORWARDED,FAILED_FORWARD,PAID}',
                                                 'payledger_internal.p2p_payin_lock(payledger.payins)');


-- Begin a p2p pay-in the caller has locked: its forward asks the first
-- wallet; without a wallet, or without a node of the operator that can hold
-- invoices (lnd_rest), the pay-in is to fail (the claim's next item).
CREATE FUNCTION payledger_internal.p2p_begin(p payledger.payins)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s record;
    node payledger.providers;
    wallet uuid;
    why text;
BEGIN
    SELECT * INTO s FROM payledger_internal.p2p_shares(p.id);
    SELECT * INTO node FROM payledger.providers x
     WHERE x.id = payledger_internal.pick_provider(p.type, p.asset, p.external_method);
    wallet := payledger_internal.p2p_pick_wallet(coalesce(p.genesis_id, p.id), p.id, s.receiver_id);
    why := CASE WHEN node.id IS NULL THEN format('no active provider serves %s in %s', p.external_method, p.asset)
                WHEN node.kind <> 'lnd_rest' THEN format('provider %s (%s) cannot hold invoices: p2p needs an lnd_rest node',
                                                         node.name, node.kind)
                WHEN wallet IS NULL THEN format('receiver %s has no wallet to pay into', s.receiver_id) END;
    -- (a failure is made by the claim's fail item, in its own transaction)
    INSERT INTO payledger.p2p_forwards (payin_id, receiver_id, wallet_id, provider_id, amount, fee_budget, status, failure,
                                        fail_reason, next_check_at)
    VALUES (p.id, s.receiver_id, wallet, CASE WHEN node.kind = 'lnd_rest' THEN node.id END, s.amount, s.fee_budget,
            'asking', why, CASE WHEN why IS NOT NULL THEN 'INVOICE_WRAPPING_FAILED_UNKNOWN'::payledger.payin_failure_reason END,
            '-infinity');
    RETURN CASE WHEN why IS NULL THEN 'asking' ELSE 'not_wrapped' END;
END;
$$;

-- The worker's claim (inside worker_claim's transaction), in the lock
-- order (forward, then pay-in; SKIP LOCKED, never waiting):
--   1. begin the p2p pay-ins waiting to be wrapped;
--   2. forward the held ones: each is recorded as sent (FORWARDING) before
--      the call, so that after a crash it is looked up, never paid twice;
--      one whose held HTLC leaves too few blocks to forward and still settle
--      is to fail with INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW instead;
--   3. claim the forwards due before due_before (the tick's start; a step
--      that follows one just done is due at once, '-infinity'), with a
--      lease: a wallet to ask, a forward to look up, a hold invoice to
--      settle; and the items the apply step does alone, one transaction each
--      (a pay-in's money moves in them, one pay-in per transaction: the lock
--      order): a failure found here ('fail'), a fallback ('fallback').
-- No secrets: the worker reads the wallets' and the node's credentials itself.
CREATE FUNCTION payledger_internal.p2p_claim(batch integer, lease interval, due_before timestamptz)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    fw payledger.p2p_forwards;
    inv payledger.invoices;
    margin integer := payledger.setting_int('p2p_settle_cltv_margin');
    blocks integer;
    sent jsonb := '[]';
    claims jsonb;
BEGIN
    FOR p IN SELECT x.* FROM payledger.payins x
              WHERE x.state = 'PENDING_INVOICE_WRAP'
                AND NOT EXISTS (SELECT 1 FROM payledger.p2p_forwards f WHERE f.payin_id = x.id)
              ORDER BY x.state_changed_at LIMIT batch
              FOR NO KEY UPDATE OF x SKIP LOCKED LOOP
        PERFORM payledger_internal.p2p_begin(p);
    END LOOP;

    FOR fw IN SELECT x.* FROM payledger.p2p_forwards x
               JOIN payledger.payins y ON y.id = x.payin_id
               JOIN payledger.providers pr ON pr.id = x.provider_id
              WHERE x.status = 'wrapped' AND x.fail_reason IS NULL AND y.state IN ('HELD', 'FAILED', 'CANCELLED')
                AND (pr.retry_after IS NULL OR pr.retry_after <= now())
              ORDER BY y.state_changed_at LIMIT batch
              FOR UPDATE OF x SKIP LOCKED LOOP
        SELECT * INTO p FROM payledger.payins y WHERE y.id = fw.payin_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF p.state <> 'HELD' THEN
            -- (failed or cancelled while held: its hold invoice is cancelled
            -- by the invoice claim, and the payer's payment goes back)
            PERFORM payledger_internal.p2p_fail(fw, NULL, format('the pay-in became %s before it was forwarded', p.state));
            CONTINUE;
        END IF;
        SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = p.id AND i.hold AND i.payment_hash = fw.payment_hash;
        blocks := inv.htlc_expiry_height - inv.held_block_height - margin;
        IF blocks IS NULL OR blocks < fw.final_cltv THEN
            -- (failed by the fail item below, in its own transaction)
            UPDATE payledger.p2p_forwards x
               SET fail_reason = 'INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW', next_check_at = '-infinity', updated_at = now(),
                   failure = format('the held payment leaves %s blocks to forward after the %s to settle; the receiver''s invoice needs %s',
                                    coalesce(blocks::text, 'no'), margin, fw.final_cltv)
             WHERE x.payin_id = fw.payin_id;
            CONTINUE;
        END IF;
        UPDATE payledger.p2p_forwards x
           SET status = 'forwarding', cltv_limit = blocks, sent_at = now(), attempts = x.attempts + 1,
               locked_until = now() + lease, next_check_at = now() + lease, updated_at = now()
         WHERE x.payin_id = fw.payin_id;
        PERFORM payledger.transition_payin(p.id, 'FORWARDING');
        sent := sent || jsonb_build_object('forward_id', fw.payin_id, 'op', 'pay', 'destination', fw.bolt11,
                                           'payment_hash', fw.payment_hash, 'amount', fw.amount, 'max_fee', fw.fee_budget,
                                           'htlc_expiry_height', inv.htlc_expiry_height, 'settle_margin', margin,
                                           'final_cltv', fw.final_cltv, 'provider_id', fw.provider_id);
    END LOOP;

    WITH due AS (
        SELECT f.payin_id FROM payledger.p2p_forwards f
          LEFT JOIN payledger.providers pr ON pr.id = f.provider_id
         WHERE f.next_check_at <= due_before
           AND (f.locked_until IS NULL OR f.locked_until < now())
           AND (f.status NOT IN ('forwarding', 'forwarded') OR pr.retry_after IS NULL OR pr.retry_after <= now())
         ORDER BY f.next_check_at
         LIMIT batch
         FOR UPDATE OF f SKIP LOCKED),
    claimed AS (
        UPDATE payledger.p2p_forwards f
           SET locked_until = now() + lease, attempts = f.attempts + (f.status = 'asking')::integer, updated_at = now()
          FROM due WHERE f.payin_id = due.payin_id
        RETURNING f.*)
    SELECT coalesce(jsonb_agg(CASE
               -- (items for the worker's apply step alone: no call)
               WHEN c.fail_reason IS NOT NULL AND c.status IN ('asking', 'wrapped') THEN jsonb_build_object(
                   'forward_id', c.payin_id, 'op', 'fail', 'reason', c.fail_reason, 'error', c.failure)
               WHEN c.status = 'failed' THEN jsonb_build_object('forward_id', c.payin_id, 'op', 'fallback')
               WHEN c.status = 'asking' THEN jsonb_build_object(
                   'forward_id', c.payin_id, 'op', 'receiver_invoice',
                   'wallet_id', c.wallet_id, 'wallet_kind', w.kind, 'wallet_config', w.config,
                   'amount', c.amount, 'memo', format('%s via %s', y.type, c.payin_id),
                   -- (the wallet's invoice must outlive the hold invoice by the buffer)
                   'expiry_secs', payledger.setting_int('p2p_max_hold_expiry') + payledger.setting_int('p2p_expiry_buffer'))
               WHEN c.status = 'forwarding' THEN jsonb_build_object(
                   'forward_id', c.payin_id, 'op', 'lookup', 'destination', c.bolt11, 'payment_hash', c.payment_hash,
                   'amount', c.amount, 'max_fee', c.fee_budget, 'provider_id', c.provider_id)
               ELSE jsonb_build_object(
                   'forward_id', c.payin_id, 'op', 'settle', 'payment_hash', c.payment_hash, 'preimage', c.preimage,
                   'provider_id', c.provider_id) END
             ORDER BY c.payin_id), '[]')
      INTO claims
      FROM claimed c LEFT JOIN payledger.receiver_wallets w ON w.id = c.wallet_id
      JOIN payledger.payins y ON y.id = c.payin_id;
    -- the node's address for the calls to it
    SELECT coalesce(jsonb_agg(CASE WHEN x ->> 'op' IN ('receiver_invoice', 'fail', 'fallback') THEN x
                                   ELSE x || jsonb_build_object('kind', pr.kind, 'base_url', pr.base_url, 'config', pr.config) END), '[]')
      INTO claims
      FROM jsonb_array_elements(sent || claims) x
      LEFT JOIN payledger.providers pr ON pr.id = (x ->> 'provider_id')::uuid;
    RETURN claims;
END;
$$;

-- A step to try again after a backoff (no answer, or one not to act on),
-- with why.
CREATE FUNCTION payledger_internal.p2p_later(f payledger.p2p_forwards, why text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.p2p_forwards x
       SET errors = x.errors + 1, last_error = left(why, 500), locked_until = NULL,
           next_check_at = now() + payledger_internal.backoff(x.errors + 1), updated_at = now()
     WHERE x.payin_id = f.payin_id;
$$;

-- A wallet's answer counts towards its health.
CREATE FUNCTION payledger_internal.p2p_wallet_health(wallet uuid, problem text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.receiver_wallets x
       SET consecutive_failures = CASE WHEN problem IS NULL THEN 0 ELSE x.consecutive_failures + 1 END,
           last_failure_at = CASE WHEN problem IS NULL THEN x.last_failure_at ELSE now() END,
           last_ok_at = CASE WHEN problem IS NULL THEN now() ELSE x.last_ok_at END,
           last_error = left(problem, 500)
     WHERE x.id = wallet;
$$;

-- What was wrong with a receiver's invoice, judged as the forward will need
-- it, with the failure reason it gives (NULL: nothing). The operator's node
-- must be able to pay it: an amount of exactly the share, the node's
-- network, enough time left to hold the payer's payment first, and a final
-- CLTV delta that leaves room to settle.
CREATE FUNCTION payledger_internal.p2p_invoice_problem(
    f payledger.p2p_forwards, bolt11 text, OUT reason payledger.payin_failure_reason, OUT problem text,
    OUT payment_hash text, OUT expires_at timestamptz, OUT final_cltv integer)
LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    network text;
    decoded record;
BEGIN
    BEGIN
        SELECT * INTO decoded FROM payledger.bolt11_decode(bolt11);
    EXCEPTION WHEN OTHERS THEN
        reason := 'INVOICE_WRAPPING_FAILED_UNKNOWN';
        problem := 'the wallet answered something that is not a BOLT11 invoice: ' || SQLERRM;
        RETURN;
    END;
    SELECT coalesce(x.config ->> 'network', 'bitcoin') INTO network FROM payledger.providers x WHERE x.id = f.provider_id;
    IF decoded.amount_msat IS DISTINCT FROM f.amount THEN
        reason := 'INVOICE_WRAPPING_FAILED_UNKNOWN';
        problem := format('the wallet''s invoice is for %s msat, not %s', coalesce(decoded.amount_msat::text, 'any amount'), f.amount);
    ELSIF decoded.network <> network THEN
        reason := 'INVOICE_WRAPPING_FAILED_UNKNOWN';
        problem := format('the wallet''s invoice is for %s, the node pays on %s', decoded.network, network);
    ELSIF decoded.expires_at < now() + make_interval(secs => payledger.setting_int('p2p_expiry_buffer') + 60) THEN
        reason := 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY';
        problem := format('the wallet''s invoice expires in under %s s: too soon to hold a payment first',
                          payledger.setting_int('p2p_expiry_buffer') + 60);
    ELSIF decoded.min_final_cltv_expiry + payledger.setting_int('p2p_route_cltv') + payledger.setting_int('p2p_settle_cltv_margin')
          > payledger.setting_int('p2p_max_cltv_delta') THEN
        reason := 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY';
        problem := format('the wallet''s invoice needs a final CLTV delta of %s blocks: with %s for the route and %s to settle, over the %s allowed',
                          decoded.min_final_cltv_expiry, payledger.setting_int('p2p_route_cltv'),
                          payledger.setting_int('p2p_settle_cltv_margin'), payledger.setting_int('p2p_max_cltv_delta'));
    ELSIF EXISTS (SELECT 1 FROM payledger.p2p_forwards x WHERE x.payment_hash = decoded.payment_hash AND x.status <> 'failed')
          OR EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payment_hash = decoded.payment_hash) THEN
        reason := 'INVOICE_WRAPPING_FAILED_UNKNOWN';
        problem := 'the wallet''s invoice has a payment hash payledger already knows';
    END IF;
    payment_hash := decoded.payment_hash;
    expires_at := decoded.expires_at;
    final_cltv := decoded.min_final_cltv_expiry;
END;
$$;

-- Apply what the wallet answered (the caller holds the forward's row). A good invoice opens the hold
-- invoice at the node, for the pay-in's external amount and the same
-- payment hash, expiring before the wallet's by payledger.p2p_expiry_buffer
-- (and within payledger.p2p_max_hold_expiry), with the wallet's final CLTV
-- delta plus payledger.p2p_route_cltv for the forward's route and
-- payledger.p2p_settle_cltv_margin to settle after it. A refusal or a bad invoice
-- fails the pay-in with its reason; a wallet that did not answer is asked
-- again after a backoff, until PENDING_INVOICE_WRAP's deadline.
CREATE FUNCTION payledger_internal.p2p_wrap(f payledger.p2p_forwards, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    node payledger.providers;
    c record;
    hold_for interval;
BEGIN
    IF f.status <> 'asking' THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = f.payin_id;
    IF p.state <> 'PENDING_INVOICE_WRAP' THEN
        -- (failed by its deadline, or cancelled, meanwhile)
        PERFORM payledger_internal.p2p_fail(f, NULL, format('the pay-in became %s first', p.state));
        RETURN 'payin_ended';
    END IF;
    IF result ->> 'ok' = 'false' THEN
        IF coalesce((result ->> 'retryable')::boolean, false) THEN
            PERFORM payledger_internal.p2p_later(f, result ->> 'error');
            PERFORM payledger_internal.p2p_wallet_health(f.wallet_id, result ->> 'error');
            RETURN 'wallet_unreachable';
        END IF;
        PERFORM payledger_internal.p2p_wallet_health(f.wallet_id, result ->> 'error');
        PERFORM payledger_internal.p2p_fail(f, 'INVOICE_WRAPPING_FAILED_UNKNOWN', 'the wallet refused: ' || (result ->> 'error'));
        RETURN 'wallet_refused';
    END IF;
    SELECT * INTO c FROM payledger_internal.p2p_invoice_problem(f, result ->> 'bolt11');
    IF c.problem IS NOT NULL THEN
        PERFORM payledger_internal.p2p_wallet_health(f.wallet_id, c.problem);
        PERFORM payledger_internal.p2p_fail(f, c.reason, c.problem);
        RETURN 'invoice_refused';
    END IF;
    PERFORM payledger_internal.p2p_wallet_health(f.wallet_id, NULL);
    UPDATE payledger.p2p_forwards x
       SET status = 'wrapped', bolt11 = result ->> 'bolt11', payment_hash = c.payment_hash,
           expires_at = c.expires_at, final_cltv = c.final_cltv,
           errors = 0, last_error = NULL, next_check_at = NULL, locked_until = NULL, updated_at = now()
     WHERE x.payin_id = f.payin_id;
    SELECT * INTO node FROM payledger.providers x WHERE x.id = f.provider_id;
    hold_for := least(make_interval(secs => payledger.setting_int('p2p_max_hold_expiry')),
                      c.expires_at - now() - make_interval(secs => payledger.setting_int('p2p_expiry_buffer')));
    INSERT INTO payledger.invoices (id, payin_id, provider_id, provider_kind, provider_name, profile_id, asset, amount,
                                    memo, expiry, status, payment_hash, hold, cltv_expiry, monitor_until, next_check_at)
    VALUES (payledger.new_id(), p.id, node.id, node.kind, node.name, node.profile_id, p.asset, p.external_amount,
            p.type || ' ' || p.id, date_trunc('second', hold_for), 'creating', c.payment_hash, true,
            c.final_cltv + payledger.setting_int('p2p_route_cltv') + payledger.setting_int('p2p_settle_cltv_margin'),
            now() + hold_for, '-infinity');
    RETURN 'wrapped';
END;
$$;

-- What the node said of a forward (a pay or a lookup; the caller holds the
-- forward's row):
--   {"status": "succeeded", "fee", "preimage"}   paid: FORWARDED, and its
--       hold invoice is settled next; never without the preimage of the
--       payment hash, which is checked here
--   {"status": "failed", "error", "reason"}      not paid, and it will not
--       be: FAILED_FORWARD, then FAILED (INVOICE_FORWARDING_FAILED, or the
--       reason given); the hold invoice is cancelled
--   {"status": "pending"}, {"status": "not_found"}, {"ok": false, ...}
--       looked up again; a payment the node does not know is taken for
--       never sent only once a call that timed out can no longer be on its way
CREATE FUNCTION payledger_internal.p2p_forward_result(f payledger.p2p_forwards, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    st text := result ->> 'status';
    quiet interval := make_interval(secs => 60 + 2 * payledger.setting_int('worker_http_timeout') / 1000.0);
BEGIN
    IF f.status <> 'forwarding' THEN
        UPDATE payledger.p2p_forwards x SET locked_until = NULL WHERE x.payin_id = f.payin_id;
        RETURN 'ignored';
    END IF;
    IF st = 'succeeded' THEN
        IF coalesce(result ->> 'preimage', '') !~ '^[0-9a-f]{64}$'
           OR sha256(decode(result ->> 'preimage', 'hex')) <> decode(f.payment_hash, 'hex') THEN
            -- (paid, says the node, but without the proof: asked again,
            -- and never settled on its word)
            PERFORM payledger_internal.p2p_later(f, 'the node reported the forward paid without the payment''s preimage');
            RETURN 'forward_without_preimage';
        END IF;
        IF (result ->> 'fee')::bigint < 0 THEN
            RAISE EXCEPTION 'a negative routing fee %', result ->> 'fee' USING ERRCODE = '22023';
        END IF;
        UPDATE payledger.p2p_forwards x
           SET status = 'forwarded', preimage = result ->> 'preimage', fee_paid = coalesce((result ->> 'fee')::bigint, 0),
               forwarded_at = now(), cltv_limit = coalesce((result ->> 'cltv_limit')::integer, x.cltv_limit),
               -- (settled at once: in the same tick)
               errors = 0, last_error = NULL, next_check_at = '-infinity', locked_until = NULL, updated_at = now()
         WHERE x.payin_id = f.payin_id;
        PERFORM payledger.transition_payin(f.payin_id, 'FORWARDED');
        RETURN 'forwarded';
    ELSIF st = 'failed' OR (st = 'not_found' AND f.sent_at < now() - quiet) THEN
        PERFORM payledger_internal.p2p_wallet_health(f.wallet_id, 'the forward failed: '
                                                     || coalesce(result ->> 'error', 'the node has no such payment'));
        PERFORM payledger_internal.p2p_fail(f, coalesce(result ->> 'reason', 'INVOICE_FORWARDING_FAILED')::payledger.payin_failure_reason,
                                            'the forward failed: ' || coalesce(result ->> 'error', 'the node has no such payment'));
        RETURN 'forward_failed';
    ELSIF st IN ('pending', 'not_found') THEN
        UPDATE payledger.p2p_forwards x
           SET next_check_at = now() + least(greatest((now() - x.sent_at) / 10, interval '2 seconds'), interval '1 minute'),
               cltv_limit = coalesce((result ->> 'cltv_limit')::integer, x.cltv_limit),
               locked_until = NULL, updated_at = now()
         WHERE x.payin_id = f.payin_id;
        RETURN 'forward_pending';
    ELSIF result ->> 'ok' = 'false' THEN
        -- no answer: the payment may or may not be under way; a lookup says
        PERFORM payledger_internal.p2p_later(f, result ->> 'error');
        RETURN 'forward_error';
    END IF;
    RAISE EXCEPTION 'unknown forward result %', left(result::text, 200) USING ERRCODE = '22023';
END;
$$;

-- The money of a settled forward, at PAID (after the pay-in's own journal
-- credited its pay-outs): the receiver's share and the actual routing fee
-- left by Lightning, so they go from the receiver's and the routing fee
-- pay-out's accounts to the clearing account the payer's payment came into.
-- What the budget did not spend stays with the routing fee pay-out; a fee
-- over the budget is the operator's, from suspense, with an event.
CREATE FUNCTION payledger_internal.p2p_book(f payledger.p2p_forwards, p payledger.payins)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    receiver uuid;
    fee_account uuid;
    from_budget bigint := least(f.fee_paid, f.fee_budget);
    postings jsonb;
BEGIN
    SELECT o.account_id INTO receiver FROM payledger.payouts o WHERE o.payin_id = p.id AND o.role = 'receiver';
    SELECT o.account_id INTO fee_account FROM payledger.payouts o WHERE o.payin_id = p.id AND o.role = 'routing_fee';
    postings := jsonb_build_array(jsonb_build_object('account', receiver, 'amount', -f.amount),
                                  jsonb_build_object('account', p.external_account, 'amount', f.amount + f.fee_paid));
    IF from_budget > 0 THEN
        postings := postings || jsonb_build_object('account', fee_account, 'amount', -from_budget);
    END IF;
    IF f.fee_paid > from_budget THEN
        postings := postings || jsonb_build_object('account',
            payledger_internal.open_account_as(NULL, 'payledger', p.asset, 'suspense', 'fee_overrun', true, NULL, NULL),
            'amount', -(f.fee_paid - from_budget));
        PERFORM payledger_internal.emit_event('p2p.fee_over_limit', p.id, NULL,
            jsonb_build_object('payin', p.id, 'fee', f.fee_paid, 'max_fee', f.fee_budget));
    END IF;
    RETURN (payledger_internal.apply_as('payin', jsonb_build_object(
        'postings', postings, 'kind', 'p2p_forward',
        'metadata', jsonb_build_object('payin', p.id, 'payment_hash', f.payment_hash, 'fee', f.fee_paid)))).journal_id;
END;
$$;

-- What the node said of settling the hold invoice (the caller holds the
-- forward's row):
--   {"settle": "settled"}   the payer's payment is collected: the hold
--       invoice is paid, the pay-in PAID (its pay-outs credited), and the
--       forward's money booked (p2p_book), in this one transaction
--   {"settle": "cancelled" | "gone"}   the node cannot settle it: the
--       receiver was paid and the payer's payment is lost to the operator.
--       Recorded, with the event p2p.settle_failed; the pay-in stays
--       FORWARDED (the settle margin exists so that this does not happen)
--   {"ok": false, ...}   tried again after a backoff
CREATE FUNCTION payledger_internal.p2p_settle_result(f payledger.p2p_forwards, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
    p payledger.payins;
BEGIN
    IF f.status <> 'forwarded' THEN
        UPDATE payledger.p2p_forwards x SET locked_until = NULL WHERE x.payin_id = f.payin_id;
        RETURN 'ignored';
    END IF;
    IF result ->> 'ok' = 'false' THEN
        PERFORM payledger_internal.p2p_later(f, 'settling: ' || (result ->> 'error'));
        RETURN 'settle_error';
    END IF;
    IF result ->> 'settle' IN ('cancelled', 'gone') THEN
        UPDATE payledger.p2p_forwards x
           SET last_error = format('the node cannot settle the hold invoice (%s): the receiver was paid, the payer''s payment was not collected',
                                   result ->> 'settle'),
               next_check_at = NULL, locked_until = NULL, updated_at = now()
         WHERE x.payin_id = f.payin_id;
        PERFORM payledger_internal.emit_event('p2p.settle_failed', f.payin_id, NULL,
            jsonb_build_object('payin', f.payin_id, 'payment_hash', f.payment_hash, 'node', result ->> 'settle'));
        RETURN 'settle_failed';
    END IF;
    IF result ->> 'settle' IS DISTINCT FROM 'settled' THEN
        RAISE EXCEPTION 'unknown settle result %', left(result::text, 200) USING ERRCODE = '22023';
    END IF;
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = f.payin_id AND i.hold AND i.payment_hash = f.payment_hash
       FOR UPDATE;
    IF inv.status <> 'paid' THEN
        UPDATE payledger.invoices i
           SET status = 'paid', amount_received = coalesce(i.held_amount, i.amount), preimage = f.preimage, paid_at = now(),
               errors = 0, last_error = NULL, next_check_at = NULL, locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id
        RETURNING * INTO inv;
    END IF;
    UPDATE payledger.p2p_forwards x
       SET status = 'settled', settled_at = now(), next_check_at = NULL, locked_until = NULL, errors = 0, last_error = NULL,
           updated_at = now()
     WHERE x.payin_id = f.payin_id
    RETURNING * INTO f;
    PERFORM payledger.transition_payin(f.payin_id, 'PAID');
    SELECT * INTO p FROM payledger.payins y WHERE y.id = f.payin_id;
    UPDATE payledger.p2p_forwards x SET forward_journal = payledger_internal.p2p_book(f, p) WHERE x.payin_id = f.payin_id;
    IF inv.amount_received > inv.amount THEN
        UPDATE payledger.invoices i
           SET overpay_journal = payledger_internal.record_overpayment(inv, p, inv.amount_received - inv.amount)
         WHERE i.id = inv.id;
    END IF;
    RETURN 'settled';
END;
$$;

-- A p2p pay-in failed for a reason that blames the receiver's wallet is
-- retried (Stacker News' fallback), by the worker in a transaction of its
-- own: with the receiver's next wallet while one is left (policy
-- 'p2p_next_wallet'), else, where its type's p2p_fallback is 'credits',
-- without p2p: the receiver's share is credited to their balance (policy
-- 'credits_fallback'). A type whose p2p_fallback is 'none' is not retried
-- once its wallets are spent, nor one past its max_retries. The successor
-- is announced by a payin.retried event (the payer pays its invoice, if it
-- has one); a retry that cannot be made, by a payin.not_retried event.
CREATE FUNCTION payledger_internal.p2p_fallback(p payledger.payins)
RETURNS text LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    receiver text;
    t payledger.payin_types;
    policy text;
    methods jsonb;
    r record;
BEGIN
    -- (locked, as retry_payin locks it: one retried by the application
    -- meanwhile is seen with its successor, and left alone)
    SELECT * INTO p FROM payledger.payins y WHERE y.id = p.id FOR UPDATE;
    IF p.state <> 'FAILED' OR NOT payledger_internal.p2p_receiver_blamed(p.failure_reason) OR p.parent_id IS NOT NULL
       OR p.successor_id IS NOT NULL THEN
        RETURN 'no_fallback';
    END IF;
    SELECT f.receiver_id INTO receiver FROM payledger.p2p_forwards f WHERE f.payin_id = p.id;
    SELECT * INTO t FROM payledger.payin_types x WHERE x.type = p.type;
    IF p.retry_count >= t.max_retries THEN
        RETURN 'no_fallback';
    END IF;
    IF payledger_internal.p2p_pick_wallet(coalesce(p.genesis_id, p.id), NULL, receiver) IS NOT NULL THEN
        policy := 'p2p_next_wallet';
    ELSIF t.p2p_fallback = 'credits' THEN
        policy := 'credits_fallback';
        SELECT jsonb_agg(l.options - 'amount' - 'p2p' ORDER BY l.seq) INTO methods
          FROM payledger.payin_legs l WHERE l.payin_id = p.id;
    ELSE
        RETURN 'no_fallback';
    END IF;
    BEGIN
        SELECT * INTO r FROM payledger.retry_payin(p.id, methods, policy => policy);
        PERFORM payledger_internal.emit_event('payin.retried', p.id, p.owner_id,
            jsonb_build_object('payin', p.id, 'successor', r.payin_id, 'policy', policy, 'state', r.state,
                               'external_amount', r.external_amount));
        RETURN policy;
    EXCEPTION WHEN OTHERS THEN
        PERFORM payledger_internal.emit_event('payin.not_retried', p.id, p.owner_id,
            jsonb_build_object('payin', p.id, 'policy', policy, 'sqlstate', SQLSTATE, 'error', SQLERRM));
        RETURN 'not_retried';
    END;
END;
$$;
-- Apply one result of the worker's calls for a forward, in its own
-- transaction: the forward's row first (then its hold invoice, its pay-in).
CREATE FUNCTION payledger_internal.p2p_apply(forward uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    f payledger.p2p_forwards;
BEGIN
    SELECT * INTO f FROM payledger.p2p_forwards x WHERE x.payin_id = forward FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'p2p forward % does not exist', forward USING ERRCODE = 'PL019';
    END IF;
    CASE result ->> 'op'
        WHEN 'fail' THEN
            IF f.fail_reason IS NULL OR f.status NOT IN ('asking', 'wrapped') THEN
                UPDATE payledger.p2p_forwards x SET locked_until = NULL WHERE x.payin_id = f.payin_id;
                RETURN 'ignored';
            END IF;
            PERFORM payledger_internal.p2p_fail(f, f.fail_reason, f.failure);
            RETURN CASE WHEN f.status = 'asking' THEN 'not_wrapped' ELSE 'not_forwarded' END;
        WHEN 'fallback' THEN
            IF f.status <> 'failed' OR f.next_check_at IS NULL THEN
                UPDATE payledger.p2p_forwards x SET locked_until = NULL WHERE x.payin_id = f.payin_id;
                RETURN 'ignored';
            END IF;
            UPDATE payledger.p2p_forwards x SET next_check_at = NULL, locked_until = NULL, updated_at = now()
             WHERE x.payin_id = f.payin_id;
            RETURN payledger_internal.p2p_fallback((SELECT y FROM payledger.payins y WHERE y.id = f.payin_id));
        WHEN 'receiver_invoice' THEN RETURN payledger_internal.p2p_wrap(f, result);
        WHEN 'pay', 'lookup' THEN RETURN payledger_internal.p2p_forward_result(f, result);
        WHEN 'settle' THEN RETURN payledger_internal.p2p_settle_result(f, result);
        ELSE RAISE EXCEPTION 'unknown p2p result %', left(result::text, 100) USING ERRCODE = '22023';
    END CASE;
END;
$$;

-- Invariants of forwards (part of payledger.check_invariants()).
CREATE FUNCTION payledger_internal.p2p_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a forward's status and its pay-in's state agree
    SELECT 'p2p_forward_state', f.payin_id::text, format('forward %s, pay-in %s', f.status, p.state)
      FROM payledger.p2p_forwards f JOIN payledger.payins p ON p.id = f.payin_id
     WHERE NOT CASE f.status
               WHEN 'asking' THEN p.state IN ('PENDING_INVOICE_WRAP', 'FAILED', 'CANCELLED')
               WHEN 'wrapped' THEN p.state IN ('PENDING_INVOICE_WRAP', 'PENDING_HELD', 'HELD', 'FAILED', 'CANCELLED')
               WHEN 'forwarding' THEN p.state = 'FORWARDING'
               WHEN 'forwarded' THEN p.state = 'FORWARDED'
               WHEN 'settled' THEN p.state = 'PAID'
               ELSE p.state IN ('FAILED', 'CANCELLED') END
    UNION ALL
    -- a settled forward's share and fee went to the clearing account by one
    -- journal
    SELECT 'p2p_forward_booked', f.payin_id::text,
           format('journal %s credits %s, the share and fee are %s', f.forward_journal, coalesce(c.total, 0),
                  f.amount + f.fee_paid)
      FROM payledger.p2p_forwards f
      LEFT JOIN LATERAL (SELECT sum(e.amount) AS total FROM payledger.entries e
                          WHERE e.journal_id = f.forward_journal AND e.amount > 0) c ON true
     WHERE f.status = 'settled' AND (f.forward_journal IS NULL OR coalesce(c.total, 0) <> f.amount + f.fee_paid)
    UNION ALL
    -- the preimage is the payment hash's
    SELECT 'p2p_forward_preimage', f.payin_id::text, 'the preimage does not hash to the payment hash'
      FROM payledger.p2p_forwards f
     WHERE f.preimage IS NOT NULL AND sha256(decode(f.preimage, 'hex')) <> decode(f.payment_hash, 'hex');
$$;
