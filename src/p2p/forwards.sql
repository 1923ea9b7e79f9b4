-- payledger p2p: wrapping. A p2p pay-in (PENDING_INVOICE_WRAP) gets an
-- invoice for its receiver's share from the receiver's wallet; once checked,
-- a hold invoice with the same payment hash is opened at the operator's node
-- for what the payer owes, and the pay-in is PENDING_HELD when the node has
-- issued it (payledger.invoice_apply). The worker drives it: p2p_claim in
-- its claim step, the wallet called on its threads, p2p_apply for each
-- result. See docs/p2p.md.

-- A p2p pay-in's receiver (the owner of the receiver pay-out's account),
-- the share forwarded, and the routing fee budget.
CREATE FUNCTION payledger_internal.p2p_shares(payin uuid, OUT receiver_id text, OUT amount bigint, OUT fee_budget bigint)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT r.owner_id, r.amount,
           coalesce((SELECT f.amount FROM payledger.payouts f WHERE f.payin_id = r.payin_id AND f.role = 'routing_fee'), 0)
      FROM payledger.payouts r WHERE r.payin_id = payin AND r.role = 'receiver';
$$;

-- The wallet to ask: the receiver's, enabled and attached, not cooling down
-- after payledger.p2p_wallet_max_failures failures in a row, not one that
-- already failed earlier in this pay-in's chain of retries; lowest priority
-- first.
CREATE FUNCTION payledger_internal.p2p_pick_wallet(p payledger.payins, receiver text)
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT w.id FROM payledger.receiver_wallets w
     WHERE w.owner_id = receiver AND w.enabled AND w.detached_at IS NULL
       AND NOT (w.consecutive_failures >= payledger.setting_int('p2p_wallet_max_failures')
                AND w.last_failure_at > now() - make_interval(secs => payledger.setting_int('p2p_wallet_cooldown')))
       AND NOT EXISTS (SELECT 1 FROM payledger.p2p_forwards f JOIN payledger.payins x ON x.id = f.payin_id
                        WHERE f.wallet_id = w.id AND f.status = 'failed' AND x.id <> p.id
                          AND coalesce(x.genesis_id, x.id) = coalesce(p.genesis_id, p.id))
     ORDER BY w.priority, w.created_at, w.id
     LIMIT 1;
$$;

-- A forward that cannot go on: recorded with why, and its pay-in FAILED
-- with the reason (its custodial part back to the payer). The caller holds
-- the forward's row, or has just written it.
CREATE FUNCTION payledger_internal.p2p_fail(f payledger.p2p_forwards, reason payledger.payin_failure_reason, why text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    UPDATE payledger.p2p_forwards x
       SET status = 'failed', failure = left(why, 500), next_check_at = NULL, locked_until = NULL, updated_at = now()
     WHERE x.payin_id = f.payin_id;
    IF (SELECT p.state FROM payledger.payins p WHERE p.id = f.payin_id) = 'PENDING_INVOICE_WRAP' THEN
        PERFORM payledger.transition_payin(f.payin_id, 'FAILED', reason);
    END IF;
END;
$$;

-- Begin a p2p pay-in the caller has locked: its forward asks the first
-- wallet; without a wallet, or without a node of the operator that can hold
-- invoices (lnd_rest), the pay-in fails at once.
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
    wallet := payledger_internal.p2p_pick_wallet(p, s.receiver_id);
    why := CASE WHEN node.id IS NULL THEN format('no active provider serves %s in %s', p.external_method, p.asset)
                WHEN node.kind <> 'lnd_rest' THEN format('provider %s (%s) cannot hold invoices: p2p needs an lnd_rest node',
                                                         node.name, node.kind)
                WHEN wallet IS NULL THEN format('receiver %s has no wallet to pay into', s.receiver_id) END;
    INSERT INTO payledger.p2p_forwards (payin_id, receiver_id, wallet_id, provider_id, amount, fee_budget, status, failure,
                                        next_check_at)
    VALUES (p.id, s.receiver_id, wallet, CASE WHEN node.kind = 'lnd_rest' THEN node.id END, s.amount, s.fee_budget,
            CASE WHEN why IS NULL THEN 'asking' ELSE 'failed' END, why,
            CASE WHEN why IS NULL THEN '-infinity'::timestamptz END);
    IF why IS NOT NULL THEN
        PERFORM payledger.transition_payin(p.id, 'FAILED', 'INVOICE_WRAPPING_FAILED_UNKNOWN');
        RETURN 'not_wrapped';
    END IF;
    RETURN 'asking';
END;
$$;

-- The worker's claim (inside worker_claim's transaction): begin the p2p
-- pay-ins waiting to be wrapped, then claim the forwards whose wallet is to
-- be asked (SKIP LOCKED, with a lease). No secrets: the worker reads the
-- wallets' credentials itself.
CREATE FUNCTION payledger_internal.p2p_claim(batch integer, lease interval)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    claims jsonb;
BEGIN
    FOR p IN SELECT x.* FROM payledger.payins x
              WHERE x.state = 'PENDING_INVOICE_WRAP'
                AND NOT EXISTS (SELECT 1 FROM payledger.p2p_forwards f WHERE f.payin_id = x.id)
              ORDER BY x.state_changed_at LIMIT batch
              FOR NO KEY UPDATE OF x SKIP LOCKED LOOP
        PERFORM payledger_internal.p2p_begin(p);
    END LOOP;
    WITH due AS (
        SELECT f.payin_id FROM payledger.p2p_forwards f
         WHERE f.status = 'asking' AND f.next_check_at <= now()
           AND (f.locked_until IS NULL OR f.locked_until < now())
         ORDER BY f.next_check_at
         LIMIT batch
         FOR UPDATE OF f SKIP LOCKED),
    claimed AS (
        UPDATE payledger.p2p_forwards f
           SET locked_until = now() + lease, attempts = f.attempts + 1, updated_at = now()
          FROM due WHERE f.payin_id = due.payin_id
        RETURNING f.*)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'forward_id', c.payin_id, 'op', 'receiver_invoice',
               'wallet_id', c.wallet_id, 'wallet_kind', w.kind, 'wallet_config', w.config,
               'amount', c.amount, 'memo', format('%s via %s', y.type, c.payin_id),
               -- (the wallet's invoice must outlive the hold invoice by the buffer)
               'expiry_secs', payledger.setting_int('p2p_max_hold_expiry') + payledger.setting_int('p2p_expiry_buffer'))
             ORDER BY c.payin_id), '[]')
      INTO claims
      FROM claimed c JOIN payledger.receiver_wallets w ON w.id = c.wallet_id
      JOIN payledger.payins y ON y.id = c.payin_id;
    RETURN claims;
END;
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
    ELSIF decoded.min_final_cltv_expiry + payledger.setting_int('p2p_settle_cltv_margin')
          > payledger.setting_int('p2p_max_cltv_delta') THEN
        reason := 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY';
        problem := format('the wallet''s invoice needs a final CLTV delta of %s blocks: with %s to settle, over the %s allowed',
                          decoded.min_final_cltv_expiry, payledger.setting_int('p2p_settle_cltv_margin'),
                          payledger.setting_int('p2p_max_cltv_delta'));
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

-- Apply what the wallet answered (one result, in its own transaction; the
-- forward's row first, then its pay-in). A good invoice opens the hold
-- invoice at the node, for the pay-in's external amount and the same
-- payment hash, expiring before the wallet's by payledger.p2p_expiry_buffer
-- (and within payledger.p2p_max_hold_expiry), with the wallet's final CLTV
-- delta plus payledger.p2p_settle_cltv_margin. A refusal or a bad invoice
-- fails the pay-in with its reason; a wallet that did not answer is asked
-- again after a backoff, until PENDING_INVOICE_WRAP's deadline.
CREATE FUNCTION payledger_internal.p2p_apply(forward uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    f payledger.p2p_forwards;
    p payledger.payins;
    node payledger.providers;
    c record;
    hold_for interval;
BEGIN
    SELECT * INTO f FROM payledger.p2p_forwards x WHERE x.payin_id = forward FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'p2p forward % does not exist', forward USING ERRCODE = 'PL019';
    END IF;
    IF result ->> 'op' IS DISTINCT FROM 'receiver_invoice' THEN
        RAISE EXCEPTION 'unknown p2p result %', left(result::text, 100) USING ERRCODE = '22023';
    END IF;
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
            UPDATE payledger.p2p_forwards x
               SET errors = x.errors + 1, last_error = left(result ->> 'error', 500), locked_until = NULL,
                   next_check_at = now() + payledger_internal.backoff(x.errors + 1), updated_at = now()
             WHERE x.payin_id = f.payin_id;
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
            c.final_cltv + payledger.setting_int('p2p_settle_cltv_margin'),
            now() + hold_for, '-infinity');
    RETURN 'wrapped';
END;
$$;
