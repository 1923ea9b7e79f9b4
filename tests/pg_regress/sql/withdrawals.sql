-- Withdrawals (money out) through SQL: the worker's claims and results fed by
-- hand, as the worker would after calling the provider
-- (tests/integration/lnbits.sh pays for real). Paid, with the unused fee
-- budget back; failed, with the escrow back; an outcome unknown after a
-- crash is looked up, never paid again; bad destinations refused.
\set db t_withdrawals
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0),
       payledger.register_payin_type('ZAP', 'zap'),
       payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
SELECT payledger.transfer(acc('world'), acc('alice'), 1000000) IS NOT NULL AS funded;
SELECT payledger.create_merchant_profile('main', is_default => true) IS NOT NULL AS profile;
-- an invoice-only provider cannot pay: PL028
SELECT payledger.add_provider('main', 'ln-in', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "in"}') IS NOT NULL AS added;
CREATE FUNCTION t_invoice(amount bigint, label text, expiry bigint DEFAULT 3600, network text DEFAULT 'bitcoin') RETURNS text
LANGUAGE sql AS $$
  SELECT payledger.bolt11_create(sha256('receiver'::bytea), amount, sha256(convert_to(label, 'UTF8')), label, NULL, expiry, network)
$$;
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'w0'), 2000)$$);
SELECT payledger.add_provider('main', 'ln-out', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "in", "admin_key": "adm"}',
                              priority => 1) AS out_provider \gset

-- bad input: nothing moves
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', 'lnbc1notaninvoice', 2000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(NULL, 'w1'), 2000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', payledger.bolt11_create(sha256('receiver'::bytea), 100000,
  sha256('w2'::bytea), 'old', NULL, 60, 'bitcoin', now() - interval '1 hour'), 2000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'w3', network => 'testnet'), 2000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'w4'), -1)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'w4'), 2000, payin_type => 'ZAP')$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'w4'), 2000, provider => gen_random_uuid())$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(5000000, 'w4'), 2000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', NULL, 2000)$$);
SELECT payledger.balance(acc('alice')) AS alice, count(*) AS withdrawals FROM payledger.withdrawals;

CREATE FUNCTION t_claims() RETURNS TABLE (op text, amount bigint, kind text) LANGUAGE sql AS $$
  SELECT x ->> 'op', (x ->> 'amount')::bigint, x ->> 'kind' FROM jsonb_array_elements(payledger.worker_claim(10)) x
   WHERE x ? 'withdrawal_id'
$$;
CREATE FUNCTION t_apply(w uuid, r jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.worker_apply(r || jsonb_build_object('withdrawal_id', w,
                                                        'provider_id', (SELECT provider_id FROM payledger.withdrawals WHERE id = w)))
$$;
CREATE FUNCTION t_w(w uuid) RETURNS text LANGUAGE sql AS $$
  SELECT x.status || ' / ' || p.state || coalesce(' ' || p.failure_reason, '')
    FROM payledger.withdrawals x JOIN payledger.payins p ON p.id = x.payin_id WHERE x.id = w
$$;

-- 1. paid: the amount and the fee to the provider's clearing account, the
--    unused budget back to alice
SELECT withdrawal_id AS w1, state, amount FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'p1'), 2000) \gset
SELECT :'state' AS state, :amount AS amount, payledger.balance(acc('alice')) AS alice_after_escrow;
SELECT * FROM t_claims();        -- to pay, recorded as sent before the call
SELECT status, attempts FROM payledger.withdrawals WHERE id = :'w1';
SELECT * FROM t_claims();        -- leased: nothing more
SELECT t_apply(:'w1', '{"op": "pay", "status": "succeeded", "fee": 500, "preimage": "00aa"}') AS applied;
SELECT t_apply(:'w1', '{"op": "lookup", "status": "succeeded", "fee": 500}') AS again;
SELECT t_w(:'w1'), fee, preimage FROM payledger.withdrawals WHERE id = :'w1';
SELECT payledger.balance(acc('alice')) AS alice,
       payledger.balance(payledger.account_id('payledger', 'msat', 'provider_clearing', 'invoice')) AS clearing;
SELECT kind, metadata ? 'withdrawal' AS names_it FROM payledger.journals j
 WHERE j.id = (SELECT fee_journal FROM payledger.withdrawals WHERE id = :'w1');
-- the same invoice again: it is paid already (PL036)
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(100000, 'p1'), 2000)$$);

-- 2. failed at the provider: FAILED, the escrow back
SELECT withdrawal_id AS w2 FROM payledger.withdraw('alice', 'msat', t_invoice(50000, 'p2'), 1000) \gset
SELECT op FROM t_claims();
SELECT t_apply(:'w2', '{"op": "pay", "status": "failed", "error": "HTTP 520: Insufficient balance."}') AS applied;
SELECT t_w(:'w2'), last_error FROM payledger.withdrawals WHERE id = :'w2';
SELECT payledger.balance(acc('alice')) AS alice_unchanged;
-- a failed invoice may be withdrawn to again
SELECT t_w(withdrawal_id) FROM payledger.withdraw('alice', 'msat', t_invoice(50000, 'p2'), 1000);

-- 3. no answer (a timeout): unknown, looked up, never paid again; the
--    lookup finds it paid, with a fee above the budget (the operator's)
SELECT withdrawal_id AS w3 FROM payledger.withdraw('alice', 'msat', t_invoice(20000, 'p3'), 100) \gset
SELECT op FROM t_claims() ORDER BY 1;
SELECT t_apply(:'w3', '{"op": "pay", "ok": false, "retryable": true, "error": "timeout (global)"}') AS applied;
SELECT status, errors, last_error FROM payledger.withdrawals WHERE id = :'w3';
UPDATE payledger.withdrawals SET next_check_at = now() WHERE id = :'w3';
SELECT op FROM t_claims();       -- a lookup this time, not a second payment
SELECT t_apply(:'w3', '{"op": "lookup", "status": "pending"}') AS applied;
UPDATE payledger.withdrawals SET next_check_at = now() WHERE id = :'w3';
SELECT op FROM t_claims();
SELECT t_apply(:'w3', '{"op": "lookup", "status": "succeeded", "fee": 150}') AS applied;
SELECT t_w(:'w3'), fee FROM payledger.withdrawals WHERE id = :'w3';
SELECT topic, payload ->> 'fee' AS fee, payload ->> 'max_fee' AS max_fee FROM payledger.events WHERE topic = 'withdrawal.fee_over_limit';
SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'fee_overrun')) AS operator_paid;

-- 4. the worker crashed after claiming: the lease runs out, the payment is
--    looked up; the provider never heard of it, and after a quiet time it fails
SELECT withdrawal_id AS w4 FROM payledger.withdraw('alice', 'msat', t_invoice(30000, 'p4'), 0) \gset
SELECT op FROM t_claims();
UPDATE payledger.withdrawals SET locked_until = now() - interval '1 second' WHERE id = :'w4';
SELECT op FROM t_claims();
SELECT t_apply(:'w4', '{"op": "lookup", "status": "not_found"}') AS too_soon;
SELECT t_w(:'w4');
UPDATE payledger.withdrawals SET sent_at = now() - interval '10 minutes', next_check_at = now() WHERE id = :'w4';
SELECT op FROM t_claims();
SELECT t_apply(:'w4', '{"op": "lookup", "status": "not_found"}') AS applied;
SELECT t_w(:'w4'), last_error FROM payledger.withdrawals WHERE id = :'w4';

-- while its payment may be under way, nobody moves the pay-in (a refund then
-- could pay the money out twice); one not sent yet may be cancelled, and is
-- then never sent
SELECT withdrawal_id AS w6 FROM payledger.withdraw('alice', 'msat', t_invoice(9000, 'p6b'), 0) \gset
SELECT payin_id AS w6p FROM payledger.withdrawals WHERE id = :'w6' \gset
SELECT op FROM t_claims();
SELECT t_try(format('SELECT changed FROM payledger.fail_payin(%L, %L)', :'w6p', 'USER_CANCELLED'));
SELECT t_try(format('SELECT changed FROM payledger.settle_payin(%L)', :'w6p'));
SELECT t_w(:'w6');
SELECT withdrawal_id AS w7 FROM payledger.withdraw('alice', 'msat', t_invoice(9000, 'p7b'), 0) \gset
SELECT changed FROM payledger.fail_payin((SELECT payin_id FROM payledger.withdrawals WHERE id = :'w7'), 'USER_CANCELLED');
SELECT t_w(:'w7'), last_error FROM payledger.withdrawals WHERE id = :'w7';
SELECT count(*) AS to_pay FROM t_claims() WHERE op = 'pay';

-- the payer closes the account it paid from while the payment is under way:
-- the budget's rest goes to suspense, the booking does not fail
SELECT payledger.open_account('alice', 'msat', 'user', 'spare') AS spare \gset
SELECT payledger.transfer(acc('alice'), :'spare', 11000) IS NOT NULL AS moved;
SELECT withdrawal_id AS w8 FROM payledger.withdraw('alice', 'msat', t_invoice(10000, 'p8b'), 1000,
  jsonb_build_array(jsonb_build_object('account', :'spare'))) \gset
SELECT payledger.close_account(:'spare') IS NOT NULL AS closed;
SELECT op FROM t_claims() WHERE op = 'pay';
SELECT t_apply(:'w8', '{"op": "pay", "status": "succeeded", "fee": 200}') AS applied;
SELECT t_w(:'w8'), payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'unclaimed_refunds')) AS in_suspense;

-- idempotent: the same key returns the same withdrawal
SELECT withdrawal_id AS w5 FROM payledger.withdraw('alice', 'msat', t_invoice(10000, 'p5'), 0, idempotency_key => 'wd-5') \gset
SELECT withdrawal_id = :'w5' AS same FROM payledger.withdraw('alice', 'msat', t_invoice(10000, 'p5'), 0, idempotency_key => 'wd-5');
SELECT count(*) AS withdrawals_of_p5 FROM payledger.withdrawals WHERE payment_hash = encode(sha256('p5'::bytea), 'hex');

-- a tip through the provider the purchase came in by (via_payin)
INSERT INTO t_acc VALUES ('shop', payledger.open_account('shop', 'msat', 'revenue'));
CREATE FUNCTION t_purchase(provider text, hash text) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE p uuid;
BEGIN
  SELECT payin_id INTO p FROM payledger.create_payin('bob', 'ZAP', 'msat', 50000, '[{"external": "invoice"}]',
    jsonb_build_array(jsonb_build_object('type', 'WITHDRAWAL', 'account', acc('shop'), 'amount', 50000)));
  PERFORM payledger.request_invoice(p, (SELECT id FROM payledger.providers WHERE name = provider));
  PERFORM payledger.worker_claim(10);
  PERFORM payledger.invoice_apply(i.id, jsonb_build_object('op', 'create', 'ok', true, 'external_id', hash, 'payment_hash', hash))
     FROM payledger.invoices i WHERE i.payin_id = p;
  PERFORM payledger.invoice_apply(i.id, '{"op": "check", "status": "paid"}') FROM payledger.invoices i WHERE i.payin_id = p;
  RETURN p;
END $$;
SELECT t_purchase('ln-out', repeat('ab', 32)) AS bought_out, t_purchase('ln-in', repeat('cd', 32)) AS bought_in \gset
SELECT withdrawal_id AS tip FROM payledger.withdraw('alice', 'msat', t_invoice(8000, 't1'), 0, via_payin => :'bought_out') \gset
SELECT pr.name AS paid_at FROM payledger.withdrawals w JOIN payledger.providers pr ON pr.id = w.provider_id WHERE w.id = :'tip';
SELECT t_try(format('SELECT withdrawal_id FROM payledger.withdraw(%L, %L, t_invoice(8000, %L), 0, via_payin => %L)',
                    'alice', 'msat', 't2', :'bought_in'));
SELECT t_try(format('SELECT withdrawal_id FROM payledger.withdraw(%L, %L, t_invoice(8000, %L), 0, via_payin => %L)',
                    'alice', 'msat', 't3', gen_random_uuid()));
SELECT t_try(format('SELECT withdrawal_id FROM payledger.withdraw(%L, %L, t_invoice(8000, %L), 0, provider => %L, via_payin => %L)',
                    'alice', 'msat', 't4', (SELECT id FROM payledger.providers WHERE name = 'ln-in'), :'bought_out'));

-- LND and Core Lightning pay out too, each with its pay-out key (an admin
-- macaroon, a rune that may pay): without it, the provider cannot be picked
SELECT payledger.add_provider('main', 'lnd-out', 'lnd_rest', 'https://lnd.example:8080', '{"macaroon": "m"}') AS lnd_out \gset
SELECT payledger.add_provider('main', 'cln-out', 'cln_rest', 'https://cln.example:3010', '{"rune": "r"}', priority => 2) AS cln_out \gset
SELECT t_try(format('SELECT withdrawal_id FROM payledger.withdraw(%L, %L, t_invoice(7000, %L), 0, provider => %L)',
                    'alice', 'msat', 'k1', :'lnd_out'));
SELECT payledger.set_provider_credentials(:'lnd_out', '{"macaroon": "m", "admin_macaroon": "a"}'),
       payledger.set_provider_credentials(:'cln_out', '{"rune": "r", "pay_rune": "p"}');
SELECT withdrawal_id AS w9 FROM payledger.withdraw('alice', 'msat', t_invoice(7000, 'k1'), 300) \gset
SELECT withdrawal_id AS w10 FROM payledger.withdraw('alice', 'msat', t_invoice(7000, 'k2'), 300, provider => :'cln_out') \gset
SELECT x ->> 'kind' AS kind, x ->> 'op' AS op, x ->> 'max_fee' AS max_fee, x::text ~ '"(a|p)"' AS leaks_key
  FROM jsonb_array_elements(payledger.worker_claim(10)) x WHERE x ->> 'withdrawal_id' IN (:'w9', :'w10') ORDER BY 1;
SELECT t_apply(:'w9', '{"op": "pay", "status": "succeeded", "fee": 1007, "preimage": "ab"}') AS lnd_paid,
       t_apply(:'w10', '{"op": "pay", "status": "failed", "error": "HTTP 500: Fee exceeds our fee budget"}') AS cln_failed;
SELECT t_w(:'w9') AS lnd, t_w(:'w10') AS cln;
SELECT payledger.set_provider_active(:'lnd_out', false), payledger.set_provider_active(:'cln_out', false);

-- card refunds (Stripe): back to the card that paid the purchase, through
-- its provider, never more than it received
SELECT payledger.add_provider('main', 'card', 'stripe', 'https://api.stripe.example', '{"secret_key": "sk_test"}',
                              rail => 'card', asset => 'usd') AS card \gset
SELECT payledger.register_payin_type('SHOP', 'a purchase'), payledger.register_payout_type('SALE', 'a sale');
INSERT INTO t_acc VALUES ('shop_usd', payledger.open_account('shop', 'usd', 'revenue'));
SELECT payin_id AS card_buy FROM payledger.create_payin('bob', 'SHOP', 'usd', 2500, '[{"external": "card"}]',
  jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop_usd'), 'amount', 2500))) \gset
SELECT invoice_id AS card_inv FROM payledger.request_invoice(:'card_buy', :'card') \gset
SELECT count(*) > 0 AS claimed FROM payledger.worker_claim(10);
SELECT payledger.invoice_apply(:'card_inv', '{"op": "create", "ok": true, "external_id": "pi_3Nabc"}'),
       payledger.invoice_apply(:'card_inv', '{"op": "check", "status": "paid", "received": 2500}');
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 1000)', 'shop', :'bought_out'));  -- not a card payment
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 0)', 'shop', :'card_buy'));
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 2600)', 'shop', :'card_buy'));
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 1000, payin_type => %L)', 'shop', :'card_buy', 'SHOP'));
SELECT withdrawal_id AS r1, state, refunded FROM payledger.refund_to_card('shop', :'card_buy', 1500,
  jsonb_build_array(jsonb_build_object('account', acc('shop_usd'))), idempotency_key => 'refund-1') \gset
SELECT :'state' AS state, :refunded AS refunded, payledger.balance(acc('shop_usd')) AS shop_after_escrow;
SELECT withdrawal_id = :'r1' AS same FROM payledger.refund_to_card('shop', :'card_buy', 1500,
  jsonb_build_array(jsonb_build_object('account', acc('shop_usd'))), idempotency_key => 'refund-1');
-- 1,500 refunded or being refunded, 2,500 paid: 1,000 more at most
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 1001, %L)', 'shop', :'card_buy',
                    jsonb_build_array(jsonb_build_object('account', acc('shop_usd')))));
SELECT x ->> 'kind' AS kind, x ->> 'op' AS op, x ->> 'destination' AS destination, x ->> 'amount' AS amount
  FROM jsonb_array_elements(payledger.worker_claim(10)) x WHERE x ->> 'withdrawal_id' = :'r1';
SELECT t_apply(:'r1', '{"op": "pay", "status": "pending"}') AS pending;
UPDATE payledger.withdrawals SET next_check_at = now() WHERE id = :'r1';
SELECT x ->> 'op' AS op FROM jsonb_array_elements(payledger.worker_claim(10)) x WHERE x ->> 'withdrawal_id' = :'r1';
SELECT t_apply(:'r1', '{"op": "lookup", "status": "succeeded", "fee": 0}') AS refunded;
SELECT t_w(:'r1'), payledger.balance(acc('shop_usd')) AS shop,
       payledger.balance(payledger.account_id('payledger', 'usd', 'provider_clearing', 'card')) AS card_clearing;
-- a failed refund gives its room back
SELECT withdrawal_id AS r2 FROM payledger.refund_to_card('shop', :'card_buy', 1000,
  jsonb_build_array(jsonb_build_object('account', acc('shop_usd')))) \gset
SELECT count(*) FROM payledger.worker_claim(10);
SELECT t_apply(:'r2', '{"op": "pay", "status": "failed", "error": "HTTP 400: charge_disputed"}') AS failed;
SELECT t_w(:'r2'), payledger.balance(acc('shop_usd')) AS shop_unchanged;
SELECT t_try(format('SELECT refunded FROM payledger.refund_to_card(%L, %L, 1000, %L)', 'shop', :'card_buy',
                    jsonb_build_array(jsonb_build_object('account', acc('shop_usd')))));

-- a Lightning Address or LNURL (with amount_msat): the worker resolves it
-- into a BOLT11 (tests/integration/providers.sh, against an LNURL server),
-- checked here again before it is paid
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', 'ann@example.com', 100)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', 'ann@example.com', 100, amount_msat => 0)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', 'Ann@example.com', 100, amount_msat => 1000)$$);
SELECT t_try($$SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', t_invoice(5000, 'a0'), 100, amount_msat => 4000)$$);
SELECT payledger_internal.lnurl_target('lightning:ann@example.com') AS address,
       payledger_internal.lnurl_target('LNURL1DP68GURN8GHJ7UM9WFMXJCM99E3K7MF0V9CXJ0M385EKVCENXC6R2C35XVUKXEFCV5MKVV34X5EKZD3EV56NYD3HXQURZEPEXEJXXEPNXSCRVWFNV9NXZCN9XQ6XYEFHVGCXXCMYXYMNSERXFQ5FNS') AS lnurl;
CREATE FUNCTION t_address(label text, amount bigint DEFAULT 12000) RETURNS uuid LANGUAGE sql AS $$
  SELECT withdrawal_id FROM payledger.withdraw('alice', 'msat', label || '@example.com', 100, amount_msat => amount)
$$;
SELECT t_address('a1') AS a1, t_address('a2') AS a2, t_address('a3') AS a3, t_address('a4') AS a4, t_address('a5') AS a5 \gset
SELECT status, address, destination, payment_hash, amount, max_fee FROM payledger.withdrawals WHERE id = :'a1';
SELECT x ->> 'withdrawal_id' = :'a1' AS a1, x ->> 'op' AS op, x ->> 'destination' AS destination, x ->> 'amount' AS amount,
       x ->> 'network' AS network
  FROM jsonb_array_elements(payledger.worker_claim(10)) x WHERE x ->> 'withdrawal_id' IN (:'a1', :'a2', :'a3', :'a4', :'a5')
 ORDER BY x ->> 'withdrawal_id';
-- resolved: to be paid at the next claim
SELECT t_apply(:'a1', jsonb_build_object('op', 'resolve', 'status', 'resolved', 'bolt11', t_invoice(12000, 'a1'),
                                         'payment_hash', encode(sha256('a1'::bytea), 'hex'))) AS a1;
SELECT t_w(:'a1'), destination = t_invoice(12000, 'a1') AS resolved_into FROM payledger.withdrawals WHERE id = :'a1';
SELECT x ->> 'op' AS op FROM jsonb_array_elements(payledger.worker_claim(10)) x WHERE x ->> 'withdrawal_id' = :'a1';
-- an invoice for another amount, an unreachable server, a refusal
SELECT t_apply(:'a2', jsonb_build_object('op', 'resolve', 'status', 'resolved', 'bolt11', t_invoice(13000, 'a2'),
                                         'payment_hash', encode(sha256('a2'::bytea), 'hex'))) AS a2;
SELECT t_apply(:'a3', '{"op": "resolve", "ok": false, "retryable": true, "error": "LNURL: HTTP 503"}') AS a3;
SELECT t_apply(:'a4', '{"op": "resolve", "ok": false, "retryable": false, "error": "LNURL: no such user"}') AS a4;
SELECT t_w(id), last_error FROM payledger.withdrawals WHERE id IN (:'a2', :'a3', :'a4') ORDER BY id;
-- the application may still fail one being resolved: it is then never paid
SELECT changed FROM payledger.fail_payin((SELECT payin_id FROM payledger.withdrawals WHERE id = :'a5'), 'USER_CANCELLED');
SELECT t_w(:'a5');
SELECT t_apply(:'a5', jsonb_build_object('op', 'resolve', 'status', 'resolved', 'bolt11', t_invoice(12000, 'a5'),
                                         'payment_hash', encode(sha256('a5'::bytea), 'hex'))) AS too_late;

-- auto-withdrawal (Stacker News): above the threshold by a tenth of it or
-- more, the excess goes to an address, less the fee budget; one at a time
SELECT payledger.register_payin_type('AUTO_WITHDRAWAL', 'auto-withdrawal', allow_external => false, withdrawal => true, max_retries => 0);
INSERT INTO t_acc VALUES ('dan', payledger.open_account('dan', 'msat'));
SELECT t_try($$SELECT payledger.set_auto_withdrawal('dan', 'msat', t_invoice(1000, 'x'), 100000)$$);
SELECT t_try($$SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 0)$$);
SELECT t_try($$SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 100000, 101)$$);
SELECT t_try($$SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 100000, payin_type => 'ZAP')$$);
SELECT t_try($$SELECT payledger.set_auto_withdrawal('nobody', 'msat', 'dan@example.com', 100000)$$);
SELECT t_try($$SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 100000, account => acc('alice'))$$);
SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 100000, 2, max_fee_total => 3000) = acc('dan') AS set;
SELECT payledger.transfer(acc('world'), acc('dan'), 105000) IS NOT NULL AS below_a_tenth_over;
SELECT payledger.run_auto_withdrawals(10) AS started;
SELECT payledger.transfer(acc('world'), acc('dan'), 145500) IS NOT NULL AS now_150500;
SELECT payledger.run_auto_withdrawals(10) AS started;
-- excess 150,500; budget 2 % = 3,010, capped at 3,000; 147,000 sent (whole sats)
SELECT w.status, w.address, w.amount, w.max_fee, p.type, payledger.balance(acc('dan')) AS dan_left
  FROM payledger.auto_withdrawals a JOIN payledger.withdrawals w ON w.id = a.last_withdrawal_id
  JOIN payledger.payins p ON p.id = w.payin_id WHERE a.account_id = acc('dan');
SELECT payledger.transfer(acc('world'), acc('dan'), 200000) IS NOT NULL AS more;
SELECT payledger.run_auto_withdrawals(10) AS while_one_is_live;
SELECT t_apply(last_withdrawal_id, '{"op": "resolve", "ok": false, "retryable": false, "error": "LNURL: no such user"}') AS failed
  FROM payledger.auto_withdrawals WHERE account_id = acc('dan');
SELECT payledger.run_auto_withdrawals(10) AS after_it_failed;
SELECT amount, max_fee FROM payledger.withdrawals w JOIN payledger.auto_withdrawals a ON w.id = a.last_withdrawal_id;
-- one that cannot start records why and backs off
SELECT payledger.set_auto_withdrawal('dan', 'msat', 'dan@example.com', 100000, provider => :'card') = acc('dan') AS set;
SELECT t_apply(last_withdrawal_id, '{"op": "resolve", "ok": false, "retryable": false, "error": "x"}') AS failed
  FROM payledger.auto_withdrawals WHERE account_id = acc('dan');
SELECT payledger.run_auto_withdrawals(10) AS cannot;
SELECT errors, t_mask(last_error) AS last_error, retry_at > now() AS backs_off FROM payledger.auto_withdrawals WHERE account_id = acc('dan');
SELECT payledger.clear_auto_withdrawal('dan', 'msat') AS cleared;
UPDATE payledger.auto_withdrawals SET retry_at = NULL;
SELECT payledger.run_auto_withdrawals(10) AS when_off;
SET ROLE payledger_enduser;
SET payledger.owner_id = 'dan';
SELECT destination, threshold, enabled, last_error IS NOT NULL AS has_error FROM payledger.my_auto_withdrawals;
RESET payledger.owner_id;
RESET ROLE;

-- the end user sees her withdrawals; the backend may withdraw
SELECT t_invoice(10000, 'p6') AS inv6 \gset
SET ROLE payledger_app;
SELECT t_try(format('SELECT state FROM payledger.withdraw(%L, %L, %L, 0)', 'alice', 'msat', :'inv6'));
RESET ROLE;
SET ROLE payledger_enduser;
SET payledger.owner_id = 'alice';
SELECT status, amount, max_fee, fee FROM payledger.my_withdrawals ORDER BY created_at;
RESET payledger.owner_id;
RESET ROLE;
SELECT * FROM payledger.check_invariants();
