-- payledger providers: withdrawals, money going out. A withdrawal is a pay-in
-- of a withdrawal type paid from the payer's balances: its cost is the
-- amount plus a fee budget, held in escrow (PENDING_WITHDRAWAL) while the
-- worker pays the BOLT11 at a provider with no transaction open. Paid: PAID,
-- the pay-outs (WITHDRAWAL, ROUTING_FEE) go to the provider's clearing
-- account, and the unused part of the budget comes back to the payer.
-- Failed: FAILED (WITHDRAWAL_FAILED), the escrow back. An outcome the worker
-- did not see (a timeout, a crash after the call) is learnt by looking the
-- payment up by its hash: a withdrawal is never paid twice, nor refunded
-- while it may still succeed. See docs/providers.md.

-- The credential a provider pays out with, by kind (NULL: it does not).
CREATE FUNCTION payledger_internal.payout_key(kind payledger.provider_kind)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE kind WHEN 'lnbits' THEN 'admin_key' WHEN 'lnd_rest' THEN 'admin_macaroon'
                     WHEN 'cln_rest' THEN 'pay_rune' WHEN 'stripe' THEN 'secret_key' END;
$$;

-- The provider a withdrawal is paid at: the given one, else the type's
-- route, else the default profile; the first active one, by priority then
-- name, of the rail, in the asset, whose credentials hold its pay-out key.
CREATE FUNCTION payledger_internal.pick_payer_provider(payin_type text, asset text, provider uuid,
                                                       rail text DEFAULT 'invoice')
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT p.id FROM payledger.providers p JOIN payledger.provider_secrets s ON s.provider_id = p.id
     WHERE (provider IS NULL OR p.id = provider)
       AND (provider IS NOT NULL OR p.profile_id = coalesce(
               (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = pick_payer_provider.payin_type),
               (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default)))
       AND p.active AND p.rail = pick_payer_provider.rail AND p.asset = pick_payer_provider.asset
       AND jsonb_typeof(s.credentials -> payledger_internal.payout_key(p.kind)) = 'string'
     ORDER BY p.priority, p.name
     LIMIT 1;
$$;

-- The pay-in and the payment row of a withdrawal (withdraw, refund_to_card):
-- the pay-in costs the amount plus the fee budget, paid from `accounts`
-- (default: the payer's main account), and pays WITHDRAWAL (and
-- ROUTING_FEE) to the provider's clearing account. A repeat of the same
-- request (idempotency_key) returns the first withdrawal.
CREATE FUNCTION payledger_internal.start_withdrawal(
    payer text, asset text, pr payledger.providers, destination text, payment_hash text, amount bigint,
    max_fee bigint, accounts jsonb, payin_type text, idempotency_key text, metadata jsonb, address text DEFAULT NULL,
    OUT withdrawal_id uuid, OUT payin_id uuid, OUT state payledger.payin_state, OUT amount_out bigint)
LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    clearing uuid;
    methods jsonb;
    p record;
    w payledger.withdrawals;
BEGIN
    IF idempotency_key IS NOT NULL THEN
        SELECT x.* INTO w FROM payledger.withdrawals x JOIN payledger.payins y ON y.id = x.payin_id
         WHERE y.idempotency_key = start_withdrawal.idempotency_key;
    END IF;
    IF w.id IS NULL AND EXISTS (SELECT 1 FROM payledger.withdrawals x
                                 WHERE x.provider_id = pr.id AND x.payment_hash = start_withdrawal.payment_hash
                                   AND x.status <> 'failed') THEN
        RAISE EXCEPTION 'a withdrawal already pays the invoice %', payment_hash USING ERRCODE = 'PL036';
    END IF;
    methods := coalesce(start_withdrawal.accounts, jsonb_build_array(jsonb_build_object('account', payledger.account_id(payer, asset))));
    clearing := payledger_internal.open_account_as(NULL, 'payledger', asset, 'provider_clearing', pr.rail, true, NULL, NULL);
    SELECT * INTO p FROM payledger.create_payin(payer, start_withdrawal.payin_type, asset, start_withdrawal.amount + max_fee, methods,
        jsonb_build_array(jsonb_build_object('type', 'WITHDRAWAL', 'account', clearing, 'amount', start_withdrawal.amount))
        || CASE WHEN max_fee > 0
                THEN jsonb_build_array(jsonb_build_object('type', 'ROUTING_FEE', 'account', clearing, 'amount', max_fee))
                ELSE '[]'::jsonb END,
        idempotency_key => start_withdrawal.idempotency_key,
        metadata => coalesce(start_withdrawal.metadata, '{}'::jsonb)
                    || jsonb_build_object('withdrawal', coalesce(start_withdrawal.payment_hash, start_withdrawal.address, destination)));
    IF w.id IS NULL THEN
        SELECT x.* INTO w FROM payledger.withdrawals x WHERE x.payin_id = p.payin_id;
    END IF;
    IF w.id IS NULL THEN
        -- (two withdrawals of one invoice at once: the second waits here on
        -- the first's index entry, and fails as the check above would have)
        BEGIN
            INSERT INTO payledger.withdrawals AS x (id, payin_id, provider_id, destination, address, status, payment_hash,
                                                   amount, max_fee, refund_account, next_check_at)
            VALUES (payledger.new_id(), p.payin_id, pr.id, destination, start_withdrawal.address,
                    CASE WHEN start_withdrawal.address IS NULL THEN 'sending' ELSE 'resolving' END::payledger.withdrawal_status,
                    start_withdrawal.payment_hash,
                    start_withdrawal.amount, max_fee,
                    (SELECT l.account_id FROM payledger.payin_legs l
                      WHERE l.payin_id = p.payin_id AND l.method = 'custodial' ORDER BY l.seq LIMIT 1),
                    now())
            RETURNING x.* INTO w;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'a withdrawal already pays the invoice %', payment_hash USING ERRCODE = 'PL036';
        END;
    END IF;
    withdrawal_id := w.id;
    payin_id := w.payin_id;
    amount_out := w.amount;
    SELECT y.state INTO state FROM payledger.payins y WHERE y.id = w.payin_id;
END;
$$;

-- Withdraw: pay `destination` (a BOLT11 with an amount; or a Lightning
-- Address or LNURL, with `amount`, which the worker resolves into a BOLT11
-- and checks before paying) from the payer's balances, in the order of `accounts` (default: the payer's main account),
-- with at most `max_fee` of routing fee, at `provider`, or at the provider
-- that settled the pay-in `via_payin` (Keysat's tips: paid out through the
-- provider the purchase came in by), else the type's route or the default
-- profile's. The pay-out types WITHDRAWAL and
-- ROUTING_FEE must be registered, and `payin_type` must be a withdrawal type.
-- Idempotent with `idempotency_key` (a repeat returns the first withdrawal).
CREATE FUNCTION payledger.withdraw(
    payer           text,
    asset           text,
    destination     text,
    max_fee         bigint,
    accounts        jsonb DEFAULT NULL,
    payin_type      text DEFAULT 'WITHDRAWAL',
    provider        uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    via_payin       uuid DEFAULT NULL,
    amount_msat     bigint DEFAULT NULL,
    OUT withdrawal_id uuid, OUT payin_id uuid, OUT state payledger.payin_state, OUT amount bigint,
    OUT payment_hash text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    d record;
    pr payledger.providers;
    chosen uuid := provider;
    address text;
    hash text;
    network text;
    pay bigint := amount_msat;
BEGIN
    PERFORM payledger_internal.require(payer, 'payer');
    PERFORM payledger_internal.require(asset, 'asset');
    PERFORM payledger_internal.require(destination, 'destination');
    PERFORM payledger_internal.require(max_fee, 'max_fee');
    PERFORM payledger_internal.require(payin_type, 'payin_type');
    IF max_fee < 0 THEN
        RAISE EXCEPTION 'max_fee must not be negative, got %', max_fee USING ERRCODE = 'PL001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = withdraw.payin_type AND t.withdrawal) THEN
        RAISE EXCEPTION '% is not a registered withdrawal pay-in type', payin_type USING ERRCODE = 'PL022',
            HINT = 'register_payin_type(type, description, allow_external => false, withdrawal => true)';
    END IF;
    IF payledger_internal.lnurl_target(destination) IS NOT NULL THEN
        -- a Lightning Address or LNURL: resolved (and checked) by the worker
        address := destination;
        IF amount_msat IS NULL THEN
            RAISE EXCEPTION 'a Lightning Address or LNURL needs amount_msat' USING ERRCODE = 'PL035';
        ELSIF amount_msat <= 0 THEN
            RAISE EXCEPTION 'amount_msat must be positive, got %', amount_msat USING ERRCODE = 'PL001';
        END IF;
    ELSIF strpos(destination, '@') > 0 THEN
        RAISE EXCEPTION 'not a Lightning Address: %', left(destination, 100) USING ERRCODE = 'PL035',
            HINT = 'LUD-16: a user name of a-z, 0-9 and -_.+, then @ and a domain';
    ELSE
        SELECT * INTO d FROM payledger.bolt11_decode(destination);
        IF d.amount_msat IS NULL OR d.amount_msat <= 0 THEN
            RAISE EXCEPTION 'the destination invoice has no amount' USING ERRCODE = 'PL035';
        END IF;
        IF d.expires_at <= now() THEN
            RAISE EXCEPTION 'the destination invoice has expired' USING ERRCODE = 'PL035',
                DETAIL = format('it expired at %s', d.expires_at);
        END IF;
        IF amount_msat IS NOT NULL AND amount_msat <> d.amount_msat THEN
            RAISE EXCEPTION 'the destination invoice is for % msat, not %', d.amount_msat, amount_msat USING ERRCODE = 'PL035';
        END IF;
        hash := d.payment_hash;
        network := d.network;
        pay := d.amount_msat;
    END IF;
    IF via_payin IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM payledger.payins y WHERE y.id = via_payin) THEN
            RAISE EXCEPTION 'unknown pay-in %', via_payin USING ERRCODE = 'PL019';
        END IF;
        SELECT i.provider_id INTO chosen FROM payledger.invoices i WHERE i.payin_id = via_payin AND i.status = 'paid';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pay-in % was not paid by an invoice of payledger''s', via_payin USING ERRCODE = 'PL029';
        END IF;
        IF withdraw.provider IS NOT NULL AND withdraw.provider <> chosen THEN
            RAISE EXCEPTION 'give provider or via_payin, not both' USING ERRCODE = '22023';
        END IF;
    END IF;
    IF chosen IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.providers x WHERE x.id = chosen) THEN
        RAISE EXCEPTION 'unknown provider %', chosen USING ERRCODE = 'PL028';
    END IF;
    SELECT * INTO pr FROM payledger.providers x
     WHERE x.id = payledger_internal.pick_payer_provider(withdraw.payin_type, withdraw.asset, chosen);
    IF NOT FOUND AND chosen IS NOT NULL THEN
        RAISE EXCEPTION 'provider % cannot pay withdrawals in %', chosen, withdraw.asset USING ERRCODE = 'PL028',
            HINT = 'an active provider pays withdrawals with its pay-out key: lnbits "admin_key", lnd_rest "admin_macaroon", cln_rest "pay_rune"';
    ELSIF NOT FOUND THEN
        RAISE EXCEPTION 'no active provider can pay % withdrawals in %', withdraw.payin_type, withdraw.asset USING ERRCODE = 'PL028',
            HINT = 'an active provider pays withdrawals with its pay-out key: lnbits "admin_key", lnd_rest "admin_macaroon", cln_rest "pay_rune"';
    END IF;
    IF network <> coalesce(pr.config ->> 'network', 'bitcoin') THEN
        RAISE EXCEPTION 'the destination invoice is for %, the provider pays on %', network,
            coalesce(pr.config ->> 'network', 'bitcoin') USING ERRCODE = 'PL035';
    END IF;
    SELECT * INTO withdrawal_id, payin_id, state, amount
      FROM payledger_internal.start_withdrawal(withdraw.payer, withdraw.asset, pr, withdraw.destination, hash, pay,
                                               withdraw.max_fee, withdraw.accounts, withdraw.payin_type,
                                               withdraw.idempotency_key, withdraw.metadata, address);
    payment_hash := hash;
END;
$$;
GRANT EXECUTE ON FUNCTION
    payledger.withdraw(text, text, text, bigint, jsonb, text, uuid, text, jsonb, uuid, bigint)
TO payledger_app;

-- Refund a card payment: pay `amount` (the asset's minor unit) of the
-- payer's balances back to the card that paid pay-in `payin`, as a refund
-- at the Stripe provider that took it, with the withdrawal's guarantees
-- (sent once, looked up when its outcome is unknown, escrow returned if it
-- fails). The refunds of one payment never exceed what it received (PL023).
-- `payin_type` must be a withdrawal type; the pay-out type WITHDRAWAL must be
-- registered.
CREATE FUNCTION payledger.refund_to_card(
    payer           text,
    payin           uuid,
    amount          bigint,
    accounts        jsonb DEFAULT NULL,
    payin_type      text DEFAULT 'WITHDRAWAL',
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    OUT withdrawal_id uuid, OUT payin_id uuid, OUT state payledger.payin_state, OUT refunded bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
    pr payledger.providers;
    earlier bigint;
BEGIN
    PERFORM payledger_internal.require(payer, 'payer');
    PERFORM payledger_internal.require(payin, 'payin');
    PERFORM payledger_internal.require(amount, 'amount');
    PERFORM payledger_internal.require(payin_type, 'payin_type');
    IF amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive, got %', amount USING ERRCODE = 'PL001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = refund_to_card.payin_type AND t.withdrawal) THEN
        RAISE EXCEPTION '% is not a registered withdrawal pay-in type', payin_type USING ERRCODE = 'PL022',
            HINT = 'register_payin_type(type, description, allow_external => false, withdrawal => true)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payins y WHERE y.id = refund_to_card.payin) THEN
        RAISE EXCEPTION 'unknown pay-in %', payin USING ERRCODE = 'PL019';
    END IF;
    -- locked: two refunds of one payment at once are counted one after the other
    SELECT i.* INTO inv FROM payledger.invoices i
      JOIN payledger.providers x ON x.id = i.provider_id AND x.kind = 'stripe'
     WHERE i.payin_id = refund_to_card.payin AND i.status = 'paid'
       FOR UPDATE OF i;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % was not paid by card through a Stripe provider of payledger''s', payin USING ERRCODE = 'PL029';
    END IF;
    SELECT * INTO pr FROM payledger.providers x WHERE x.id = inv.provider_id;
    IF NOT EXISTS (SELECT 1 FROM payledger.provider_secrets s WHERE s.provider_id = pr.id
                      AND jsonb_typeof(s.credentials -> 'secret_key') = 'string') THEN
        RAISE EXCEPTION 'provider % has no "secret_key" to refund with', pr.id USING ERRCODE = 'PL028';
    END IF;
    -- a repeat of a request is not a second refund
    IF idempotency_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM payledger.withdrawals w JOIN payledger.payins y ON y.id = w.payin_id
         WHERE y.idempotency_key = refund_to_card.idempotency_key AND w.destination = inv.external_id) THEN
        earlier := 0;
    ELSE
        SELECT coalesce(sum(w.amount), 0) INTO earlier FROM payledger.withdrawals w
         WHERE w.provider_id = pr.id AND w.destination = inv.external_id AND w.status <> 'failed';
        IF earlier + amount > inv.amount_received THEN
            RAISE EXCEPTION 'a refund of % would exceed the payment: % received, % refunded or being refunded',
                amount, inv.amount_received, earlier USING ERRCODE = 'PL023';
        END IF;
    END IF;
    SELECT * INTO withdrawal_id, payin_id, state, refunded
      FROM payledger_internal.start_withdrawal(refund_to_card.payer, inv.asset, pr, inv.external_id, NULL,
                                               refund_to_card.amount, 0, refund_to_card.accounts,
                                               refund_to_card.payin_type, refund_to_card.idempotency_key,
                                               coalesce(refund_to_card.metadata, '{}'::jsonb)
                                               || jsonb_build_object('refund_of', refund_to_card.payin));
END;
$$;
GRANT EXECUTE ON FUNCTION
    payledger.refund_to_card(text, uuid, bigint, jsonb, text, text, jsonb)
TO payledger_app;

-- When to look a payment up again: soon while it is young, then rarely.
CREATE FUNCTION payledger_internal.withdrawal_recheck_at(w payledger.withdrawals)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT now() + least(greatest((now() - w.created_at) / 10, interval '2 seconds'), interval '10 minutes');
$$;

-- Apply what the worker learnt about a withdrawal, in its own short
-- transaction (the withdrawal row, then its pay-in, then accounts):
--   {"op": "pay" | "lookup", "status": "succeeded", "fee", "preimage"}
--   {"op": "pay" | "lookup", "status": "pending" | "failed", "error"}
--   {"op": "lookup", "status": "not_found"}
--   {"op": "resolve", "status": "resolved", "bolt11", "payment_hash"}
--   {"op": "resolve", "ok": false, "error", "retryable"}   (not retryable: it fails)
--   {"op": "pay" | "lookup", "ok": false, "error", "retryable"}
-- Every change is guarded by the status it comes from, so a result applied
-- twice changes nothing. Returns what it did, in a word.
CREATE FUNCTION payledger_internal.withdrawal_apply(withdrawal uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    w payledger.withdrawals;
    st text := result ->> 'status';
    paid_fee bigint;
    refund bigint;
    j uuid;
    clearing uuid;
    -- a payment the provider does not know is taken for never sent only
    -- once this long has passed since the last try: a call that timed out
    -- may still be on its way
    quiet interval := make_interval(secs => 60 + 2 * payledger.setting_int('worker_http_timeout') / 1000.0);
BEGIN
    SELECT * INTO w FROM payledger.withdrawals x WHERE x.id = withdrawal FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown withdrawal %', withdrawal USING ERRCODE = '22023';
    END IF;
    IF w.status IN ('succeeded', 'failed') THEN
        UPDATE payledger.withdrawals x SET locked_until = NULL WHERE x.id = w.id;
        RETURN 'already_' || w.status;
    END IF;
    IF result ->> 'op' = 'resolve' THEN
        IF w.status <> 'resolving' THEN
            UPDATE payledger.withdrawals x SET locked_until = NULL WHERE x.id = w.id;
            RETURN 'ignored';
        END IF;
        IF st = 'resolved' THEN
            BEGIN
                -- (the worker checked it against the LNURL server's terms;
                -- the amount and hash are checked again here, where it counts)
                IF NOT EXISTS (SELECT 1 FROM payledger.bolt11_decode(result ->> 'bolt11') d
                                WHERE d.amount_msat = w.amount AND d.payment_hash = result ->> 'payment_hash') THEN
                    RAISE EXCEPTION 'the resolved invoice is not for % msat', w.amount USING ERRCODE = '22023';
                END IF;
                IF EXISTS (SELECT 1 FROM payledger.withdrawals x
                            WHERE x.provider_id = w.provider_id AND x.payment_hash = result ->> 'payment_hash'
                              AND x.status <> 'failed') THEN
                    RAISE unique_violation;
                END IF;
                UPDATE payledger.withdrawals x
                   SET status = 'sending', destination = result ->> 'bolt11', payment_hash = result ->> 'payment_hash',
                       errors = 0, last_error = NULL, next_check_at = now(), locked_until = NULL, updated_at = now()
                 WHERE x.id = w.id;
                RETURN 'resolved';
            EXCEPTION
                WHEN unique_violation THEN
                    st := 'failed';
                    result := result || '{"error": "the LNURL server gave an invoice another withdrawal pays"}';
                WHEN invalid_parameter_value THEN
                    st := 'failed';
                    result := result || jsonb_build_object('error', 'the LNURL server''s invoice: ' || SQLERRM);
            END;
        ELSIF NOT coalesce((result ->> 'retryable')::boolean, false) THEN
            -- nothing was paid: a refusal fails it at once
            st := 'failed';
        END IF;
    END IF;
    IF st = 'succeeded' THEN
        paid_fee := coalesce((result ->> 'fee')::bigint, 0);
        IF paid_fee < 0 THEN
            RAISE EXCEPTION 'a negative fee %', paid_fee USING ERRCODE = '22023';
        END IF;
        UPDATE payledger.withdrawals x
           SET status = 'succeeded', fee = paid_fee, preimage = result ->> 'preimage', settled_at = now(),
               next_check_at = NULL, locked_until = NULL, last_error = NULL, updated_at = now()
         WHERE x.id = w.id;
        PERFORM payledger.transition_payin(w.payin_id, 'PAID');
        -- the budget's unused part back to the payer; a fee above it is the
        -- operator's, from suspense, with an event
        SELECT o.account_id INTO clearing FROM payledger.payouts o WHERE o.payin_id = w.payin_id ORDER BY o.seq LIMIT 1;
        refund := w.max_fee - paid_fee;
        IF refund > 0 THEN
            -- (to suspense when the payer closed that account meanwhile: the
            -- payment is made, and its booking must not fail)
            j := (payledger_internal.apply_one(jsonb_build_object('from', clearing,
                    'to', CASE WHEN (SELECT a.closed_at IS NULL FROM payledger.accounts a WHERE a.id = w.refund_account)
                               THEN w.refund_account
                               ELSE payledger_internal.open_account_as(NULL, 'payledger',
                                        (SELECT y.asset FROM payledger.payins y WHERE y.id = w.payin_id),
                                        'suspense', 'unclaimed_refunds', false, NULL, NULL) END,
                    'amount', refund, 'kind', 'withdrawal_fee_refund',
                    'metadata', jsonb_build_object('payin', w.payin_id, 'withdrawal', w.id)))).journal_id;
        ELSIF refund < 0 THEN
            j := (payledger_internal.apply_one(jsonb_build_object(
                    'from', payledger_internal.open_account_as(NULL, 'payledger',
                            (SELECT y.asset FROM payledger.payins y WHERE y.id = w.payin_id), 'suspense', 'fee_overrun', true, NULL, NULL),
                    'to', clearing, 'amount', -refund, 'kind', 'withdrawal_fee_overrun',
                    'metadata', jsonb_build_object('payin', w.payin_id, 'withdrawal', w.id)))).journal_id;
            PERFORM payledger_internal.emit_event('withdrawal.fee_over_limit', w.id, NULL,
                jsonb_build_object('withdrawal', w.id, 'payin', w.payin_id, 'fee', paid_fee, 'max_fee', w.max_fee));
        END IF;
        UPDATE payledger.withdrawals x SET fee_journal = j WHERE x.id = w.id;
        RETURN 'paid';
    ELSIF st = 'failed' OR (st = 'not_found' AND w.status = 'unknown' AND coalesce(w.sent_at, w.created_at) < now() - quiet) THEN
        UPDATE payledger.withdrawals x
           SET status = 'failed', settled_at = now(), next_check_at = NULL, locked_until = NULL,
               last_error = left(coalesce(result ->> 'error', CASE WHEN st = 'not_found' THEN 'the provider has no such payment' END,
                                          x.last_error, 'failed at the provider'), 500),
               updated_at = now()
         WHERE x.id = w.id;
        PERFORM payledger.transition_payin(w.payin_id, 'FAILED', 'WITHDRAWAL_FAILED');
        RETURN 'withdrawal_failed';
    ELSIF st IN ('pending', 'not_found') THEN
        UPDATE payledger.withdrawals x
           SET status = CASE WHEN st = 'pending' THEN 'pending' ELSE x.status END,
               next_check_at = payledger_internal.withdrawal_recheck_at(x), locked_until = NULL, updated_at = now()
         WHERE x.id = w.id;
        RETURN CASE WHEN st = 'pending' THEN 'withdrawal_pending' ELSE 'withdrawal_not_found' END;
    ELSIF result ->> 'ok' = 'false' THEN
        -- no answer, or a refusal: the payment may or may not have been
        -- made; only a lookup can say (status unknown stays unknown)
        UPDATE payledger.withdrawals x
           SET errors = x.errors + 1, last_error = left(result ->> 'error', 500), locked_until = NULL,
               next_check_at = now() + payledger_internal.backoff(x.errors + 1), updated_at = now()
         WHERE x.id = w.id;
        RETURN 'withdrawal_error';
    END IF;
    RAISE EXCEPTION 'unknown withdrawal result %', result USING ERRCODE = '22023';
END;
$$;

-- A pay-in of a withdrawal moves only by what came of its payment: a
-- handler of the pay-in lifecycle, run in the state trigger before the move.
-- While the payment may be under way (unknown, pending) the pay-in may not
-- move (PL020), by the application or anyone: refunding it then could pay
-- the money out twice. One not sent yet (sending) may still be failed or
-- cancelled (also while its address is resolved), and then it never will be
-- sent. withdrawal_apply settles the
-- withdrawal's row first, so its own move goes through.
CREATE FUNCTION payledger_internal.withdrawal_payin_lock(p payledger.payins)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    w payledger.withdrawals;
BEGIN
    IF NOT p.metadata ? 'withdrawal' THEN
        RETURN;
    END IF;
    SELECT * INTO w FROM payledger.withdrawals x WHERE x.payin_id = p.id FOR UPDATE;
    IF NOT FOUND OR w.status IN ('succeeded', 'failed') THEN
        RETURN;
    END IF;
    IF w.status IN ('resolving', 'sending') AND p.state IN ('FAILED', 'CANCELLED') THEN
        UPDATE payledger.withdrawals x
           SET status = 'failed', settled_at = now(), next_check_at = NULL, locked_until = NULL,
               last_error = 'its pay-in ended before it was sent', updated_at = now()
         WHERE x.id = w.id;
        RETURN;
    END IF;
    RAISE EXCEPTION 'pay-in % is a withdrawal being paid at its provider (%): only the payment''s outcome moves it',
        p.id, w.status USING ERRCODE = 'PL020';
END;
$$;
SELECT payledger_internal.register_payin_handler('provider', 'lock', 300, '{PAID,FAILED,CANCELLED}',
                                                 'payledger_internal.withdrawal_payin_lock(payledger.payins)');

CREATE FUNCTION payledger_internal.withdrawal_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a withdrawal's state and its pay-in's agree
    SELECT 'withdrawal_payin_state', w.id::text, format('withdrawal %s, pay-in %s', w.status, p.state)
      FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
     WHERE p.state <> CASE w.status WHEN 'succeeded' THEN 'PAID' WHEN 'failed' THEN 'FAILED'
                                     ELSE 'PENDING_WITHDRAWAL' END::payledger.payin_state
    UNION ALL
    -- the pay-in holds the amount and the fee budget
    SELECT 'withdrawal_cost', w.id::text, format('amount %s + budget %s, the pay-in costs %s', w.amount, w.max_fee, p.cost)
      FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
     WHERE p.cost <> w.amount + w.max_fee
    UNION ALL
    -- a paid withdrawal's fee is settled by one journal, unless it was the budget exactly
    SELECT 'withdrawal_fee', w.id::text, format('fee %s of budget %s, journal %s', w.fee, w.max_fee, w.fee_journal)
      FROM payledger.withdrawals w
     WHERE w.status = 'succeeded' AND (w.fee <> w.max_fee) <> (w.fee_journal IS NOT NULL);
$$;

CREATE VIEW payledger.my_withdrawals WITH (security_barrier) AS
SELECT w.id, w.payin_id, w.status, w.address, w.amount, w.max_fee, w.fee, w.payment_hash, w.created_at, w.settled_at
  FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
 WHERE p.owner_id = payledger.current_owner_id();
