-- Peer-to-peer payments: receiver wallets (attach, change, detach, what end
-- users see, secrets kept from everyone but the operators) and p2p pay-ins
-- (the receiver's share and the routing fee budget paid by the invoice,
-- never by balances).
\set db t_p2p
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
\set wallet_pk 'b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4'
\set secret '71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c'
SELECT 'nostr+walletconnect://' || :'wallet_pk' || '?relay=ws%3A%2F%2F127.0.0.1%3A7447&relay=wss://relay.example&secret='
       || :'secret' || '&lud16=bob%40example.com' AS nwc_uri \gset

-- attaching, one of each kind
SELECT payledger.attach_receiver_wallet('bob', 'nwc', jsonb_build_object('uri', :'nwc_uri'), label => 'Alby Hub') AS w_nwc \gset
SELECT payledger.attach_receiver_wallet('bob', 'lnbits', '{"url": "https://lnbits.example", "invoice_key": "bob-inkey"}',
                                        priority => 1) AS w_lnbits \gset
SELECT payledger.attach_receiver_wallet('bob', 'lnd_rest', '{"url": "https://node.example:8080", "invoice_macaroon": "0201ab"}',
                                        priority => 2) IS NOT NULL AS lnd_attached;
SELECT payledger.attach_receiver_wallet('carol', 'lightning_address', '{"address": "Carol@Example.com"}') AS w_carol \gset
SELECT kind, label, priority, enabled, config FROM payledger.receiver_wallets ORDER BY owner_id, priority;
-- the credentials are apart, and never in the settings
SELECT w.kind, s.credentials FROM payledger.receiver_wallet_secrets s JOIN payledger.receiver_wallets w ON w.id = s.wallet_id
 ORDER BY w.owner_id, w.priority;
SELECT count(*) AS settings_with_a_secret FROM payledger.receiver_wallets w
 WHERE w.config::text LIKE '%' || :'secret' || '%' OR w.config::text LIKE '%inkey%' OR w.config::text LIKE '%0201ab%';

-- bad connections: 22023 saying what is wrong, never echoing a secret; nothing stored
SELECT t_try(format($$SELECT payledger.attach_receiver_wallet('bob', 'nwc', %L)$$, x)) AS refused
  FROM (VALUES ('"nostr+walletconnect://x"'::jsonb), ('{}'),
               (jsonb_build_object('uri', 'nostrwalletconnect://' || :'wallet_pk' || '?relay=ws://x&secret=' || :'secret')),
               (jsonb_build_object('uri', 'nostr+walletconnect://' || :'wallet_pk' || '?secret=' || :'secret')),
               (jsonb_build_object('uri', 'nostr+walletconnect://' || :'wallet_pk' || '?relay=https://x&secret=' || :'secret')),
               (jsonb_build_object('uri', 'nostr+walletconnect://' || :'wallet_pk' || '?relay=ws://x&secret=' || repeat('0', 64))),
               (jsonb_build_object('uri', 'nostr+walletconnect://' || repeat('0', 64) || '?relay=ws://x&secret=' || :'secret')))
       AS t(x);
SELECT t_try($$SELECT payledger.attach_receiver_wallet('bob', 'lnbits', '{"url": "https://u:p@lnbits.example", "invoice_key": "k"}')$$),
       t_try($$SELECT payledger.attach_receiver_wallet('bob', 'lnbits', '{"url": "https://lnbits.example"}')$$),
       t_try($$SELECT payledger.attach_receiver_wallet('bob', 'lnd_rest', '{"url": "https://n", "invoice_macaroon": 7}')$$),
       t_try($$SELECT payledger.attach_receiver_wallet('bob', 'lightning_address', '{"address": "not an address"}')$$),
       t_try($$SELECT payledger.attach_receiver_wallet('bob', 'lightning_address', '{"address": "a@b.c"}', label => repeat('x', 101))$$),
       t_try($$SELECT payledger.attach_receiver_wallet(NULL, 'lightning_address', '{"address": "a@b.c"}')$$),
       t_try($$SELECT payledger.attach_receiver_wallet('bob', 'card', '{}')$$);
SELECT count(*) AS wallets, (SELECT count(*) FROM payledger.receiver_wallet_secrets) AS secrets FROM payledger.receiver_wallets;

-- changing: priority, disabled, enabled again with a clean record, detached for good
UPDATE payledger.receiver_wallets SET consecutive_failures = 3 WHERE id = :'w_lnbits';
SELECT (payledger.set_receiver_wallet(:'w_lnbits', enabled => false)).enabled AS enabled;
SELECT (x).enabled, (x).consecutive_failures, (x).priority
  FROM (SELECT payledger.set_receiver_wallet(:'w_lnbits', enabled => true, priority => 5) AS x) y;
SELECT (payledger.detach_receiver_wallet(:'w_carol')).enabled AS carol_enabled;
SELECT count(*) AS carol_secrets_left FROM payledger.receiver_wallet_secrets WHERE wallet_id = :'w_carol';
SELECT t_try(format($$SELECT payledger.set_receiver_wallet(%L, enabled => true)$$, :'w_carol')) AS detached,
       t_try($$SELECT payledger.set_receiver_wallet(gen_random_uuid(), enabled => true)$$) AS unknown,
       t_try($$SELECT payledger.detach_receiver_wallet(NULL)$$) AS null_wallet;

-- trying a wallet (tests/integration/p2p_wallets.sh asks real ones): one
-- that does not answer is a result, recorded as its health, not an error
SELECT payledger.attach_receiver_wallet('dave', 'lnbits', '{"url": "http://127.0.0.1:9", "invoice_key": "k"}') AS w_dead \gset
SELECT ok, bolt11 IS NULL AS no_invoice, error IS NOT NULL AS says_why FROM payledger.test_receiver_wallet(:'w_dead', 1000);
SELECT consecutive_failures, last_failure_at IS NOT NULL AS failed_at, last_error IS NOT NULL AS has_error
  FROM payledger.receiver_wallets WHERE id = :'w_dead';
SELECT t_try(format($$SELECT ok FROM payledger.test_receiver_wallet(%L, 1500)$$, :'w_lnbits')) AS part_sat,
       t_try(format($$SELECT ok FROM payledger.test_receiver_wallet(%L, 0)$$, :'w_lnbits')) AS zero,
       t_try(format($$SELECT ok FROM payledger.test_receiver_wallet(%L)$$, :'w_carol')) AS detached,
       t_try($$SELECT ok FROM payledger.test_receiver_wallet(gen_random_uuid())$$) AS unknown;

-- an end user: their own wallets only, no secrets, no tables
SET ROLE payledger_enduser;
SET payledger.owner_id = 'bob';
SELECT t_try($$SELECT 1 FROM payledger.receiver_wallets$$) AS wallets_table,
       t_try($$SELECT 1 FROM payledger.receiver_wallet_secrets$$) AS secrets_table;
SELECT payledger.attach_my_receiver_wallet('lightning_address', '{"address": "bob@example.com"}', priority => 9) AS w_bob_la \gset
-- an end user's own wallet is reached over TLS (the database server makes the calls)
SELECT t_try($$SELECT payledger.attach_my_receiver_wallet('lnbits', '{"url": "http://10.0.0.5", "invoice_key": "k"}')$$) AS http,
       t_try(format($$SELECT payledger.attach_my_receiver_wallet('nwc', %L)$$, jsonb_build_object('uri', :'nwc_uri'))) AS ws_relay;
RESET ROLE;
-- but for the loopback test hosts an operator lists in payledger.lnurl_http_hosts
ALTER SYSTEM SET payledger.lnurl_http_hosts = '127.0.0.1, relay.example';
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SET ROLE payledger_enduser;
SELECT payledger.attach_my_receiver_wallet('nwc', jsonb_build_object('uri', :'nwc_uri'), priority => 8, label => 'test relay')
       IS NOT NULL AS ws_relay_listed;
SELECT (payledger.set_my_receiver_wallet(id, detach => true)) IS NOT NULL AS detached_again
  FROM payledger.my_receiver_wallets WHERE label = 'test relay';
RESET ROLE;
ALTER SYSTEM RESET payledger.lnurl_http_hosts;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SET ROLE payledger_enduser;
SELECT kind, label, priority, enabled, points_to, consecutive_failures FROM payledger.my_receiver_wallets ORDER BY priority;
SELECT payledger.set_my_receiver_wallet(:'w_bob_la', enabled => false) IS NOT NULL AS disabled,
       t_try(format($$SELECT payledger.set_my_receiver_wallet(%L, detach => true)$$, :'w_carol')) AS not_bobs;
SET payledger.owner_id = 'carol';
SELECT count(*) AS carol_sees FROM payledger.my_receiver_wallets;
SELECT t_try(format($$SELECT ok FROM payledger.test_my_receiver_wallet(%L)$$, :'w_lnbits')) AS not_carols;
RESET payledger.owner_id;
SELECT t_try($$SELECT payledger.attach_my_receiver_wallet('lightning_address', '{"address": "x@example.com"}')$$) AS nobody;
RESET ROLE;
-- the backend reads the wallets, not their secrets
SET ROLE payledger_app;
SELECT count(*) AS app_reads_wallets FROM payledger.receiver_wallets;
SELECT t_try($$SELECT 1 FROM payledger.receiver_wallet_secrets$$) AS app_reads_secrets;
RESET ROLE;

-- p2p pay-ins: Stacker News' zap in a territory, paid p2p: 70 % to the
-- receiver's wallet, 21 % founder, 6 % rewards pool, 3 % routing fee budget.
-- (ZAP is never retried, so that each failure below stays one pay-in; the
-- automatic retries have their section at the end.)
SELECT payledger.register_payin_type('ZAP', 'zap', max_retries => 0),
       payledger.register_payin_type('BOUNTY_PAYMENT', 'bounty', p2p_fallback => 'none');
SELECT payledger.register_payout_type(t, t) FROM (VALUES ('ZAP'), ('TERRITORY_REVENUE'), ('REWARDS_POOL'), ('ROUTING_FEE')) x(t);
SELECT t_try($$SELECT payledger.register_payin_type('ZAP', 'zap', p2p_fallback => 'none')$$) AS redefined,
       t_try($$SELECT payledger.register_payin_type('X', 'x', p2p_fallback => 'sometimes')$$) AS bad_policy,
       t_try($$SELECT payledger.register_payin_type('X', 'x', p2p_fallback => NULL)$$) AS null_policy;
SELECT type, p2p_fallback FROM payledger.payin_types ORDER BY type;
SELECT payledger.define_split_rule('zap_p2p', jsonb_build_array(
  jsonb_build_object('role', 'receiver', 'payout_type', 'ZAP', 'percent', 70),
  jsonb_build_object('role', 'founder', 'payout_type', 'TERRITORY_REVENUE', 'percent', 21),
  jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 6, 'account', acc('fees')),
  jsonb_build_object('role', 'routing_fee', 'payout_type', 'ROUTING_FEE', 'percent', 3, 'account', acc('fees'))), 'pool');
SELECT payledger.transfer(acc('world'), acc('alice'), 80000) IS NOT NULL AS alice_has_80_sat;
-- a 100-sat zap: alice's balance may pay only the 27 sat not forwarded; the invoice covers 73 (70 + 3)
SELECT state, custodial_amount, external_amount
  FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000,
         jsonb_build_array(jsonb_build_object('account', acc('alice')), '{"external": "invoice", "p2p": true, "unit": 1000}'::jsonb),
         split => 'zap_p2p', payees => jsonb_build_object('receiver', acc('bob'), 'founder', acc('carol')));
SELECT payledger.balance(acc('alice')) AS alice_left;
-- explicit amounts: the invoice must cover the receiver's share and the budget (PL021)
SELECT t_try(format($$SELECT state FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000, %L, split => 'zap_p2p', payees => %L)$$,
         jsonb_build_array(jsonb_build_object('account', acc('alice'), 'amount', 30000), '{"external": "invoice", "p2p": true, "amount": 70000}'::jsonb),
         jsonb_build_object('receiver', acc('bob'), 'founder', acc('carol')))) AS short_invoice;
-- a p2p pay-in names its receiver: one pay-out with role receiver (22023)
SELECT t_try(format($$SELECT state FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000, '[{"external": "invoice", "p2p": true}]', %L)$$,
         jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('bob'), 'amount', 100000)))) AS no_receiver,
       t_try(format($$SELECT state FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000, '[{"external": "invoice", "p2p": true}]', %L)$$,
         jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('bob'), 'amount', 50000, 'role', 'receiver'),
                           jsonb_build_object('type', 'ZAP', 'account', acc('carol'), 'amount', 50000, 'role', 'receiver')))) AS two_receivers;
-- the refused ones moved nothing: one pay-in, alice's 27 sat in it
SELECT count(*) AS payins, payledger.balance(acc('alice')) AS alice FROM payledger.payins;
-- not wrapped yet (the worker's p2p steps are to come): it waits for
-- PENDING_INVOICE_WRAP's deadline, then fails with the wrapping reason and
-- alice's 27 sat come back
SELECT payledger.set_payin_deadline('PENDING_INVOICE_WRAP', '1 millisecond') IS NOT NULL AS shortened;
SELECT pg_sleep(0.05);
SELECT payledger.fail_overdue_payins(10) AS failed;
SELECT state, failure_reason, payledger.balance(acc('alice')) AS alice FROM payledger.payins;
SELECT count(*) AS violations FROM payledger.check_invariants();

-- Wrapping, driven by hand as the worker drives it: its claims, and the
-- results it would record after calling the wallet and the node
-- (tests/integration/p2p_wallets.sh runs it against real ones).
SELECT payledger.set_payin_deadline('PENDING_INVOICE_WRAP', '1 hour') IS NOT NULL AS deadline_back;
CREATE FUNCTION t_zap(key text) RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000,
           jsonb_build_array(jsonb_build_object('account', acc('alice')), '{"external": "invoice", "p2p": true, "unit": 1000}'::jsonb),
           split => 'zap_p2p', payees => jsonb_build_object('receiver', acc('bob'), 'founder', acc('carol')), idempotency_key => key)
$$;
-- (the wallet's invoices: for label, the preimage sha256(label), the payment
-- hash sha256 of that)
CREATE FUNCTION t_bolt11(amount bigint, label text, expiry bigint DEFAULT 3600, network text DEFAULT 'bitcoin') RETURNS text
LANGUAGE sql AS $$
  SELECT payledger.bolt11_create(sha256('bob wallet'::bytea), amount, sha256(sha256(convert_to(label, 'UTF8'))), label, NULL,
                                 expiry, network)
$$;
CREATE FUNCTION t_preimage(label text) RETURNS text LANGUAGE sql AS $$
  SELECT encode(sha256(convert_to(label, 'UTF8')), 'hex')
$$;
-- (the worker's claims, the items that need no call applied at once, as the
-- worker applies them, each in its own transaction)
CREATE FUNCTION t_claims() RETURNS SETOF jsonb LANGUAGE plpgsql AS $$
DECLARE
  x jsonb;
BEGIN
  FOR x IN SELECT y FROM jsonb_array_elements(payledger.worker_claim(10)) y LOOP
    IF x ->> 'op' IN ('fail', 'fallback') THEN
      PERFORM payledger.worker_apply(x);
    END IF;
    RETURN NEXT x;
  END LOOP;
END $$;
CREATE FUNCTION t_p2p_claims() RETURNS TABLE (op text, wallet_kind text, amount bigint, hold boolean, cltv integer) LANGUAGE sql AS $$
  SELECT x ->> 'op', x ->> 'wallet_kind', (x ->> 'amount')::bigint, (x ->> 'hold')::boolean, (x ->> 'cltv_expiry')::integer
    FROM t_claims() x ORDER BY 1, 2
$$;
CREATE FUNCTION t_answer(payin uuid, bolt11 text) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.worker_apply(jsonb_build_object('forward_id', payin, 'op', 'receiver_invoice', 'ok', true, 'bolt11', bolt11))
$$;
CREATE FUNCTION t_p2p(payin uuid) RETURNS TABLE (state payledger.payin_state, reason payledger.payin_failure_reason,
                                                 forward text, failure text) LANGUAGE sql AS $$
  SELECT p.state, p.failure_reason, f.status, t_mask(f.failure)
    FROM payledger.payins p LEFT JOIN payledger.p2p_forwards f ON f.payin_id = p.id WHERE p.id = payin
$$;
SELECT payledger.create_merchant_profile('main', is_default => true) IS NOT NULL AS profile;
-- no provider: the claim's fail item fails the pay-in, saying why
SELECT t_zap('z1') AS z1 \gset
SELECT * FROM t_p2p_claims();
SELECT * FROM t_p2p(:'z1');
-- a provider that cannot hold invoices (LNbits): the same
SELECT payledger.add_provider('main', 'ln-lnbits', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "k"}') IS NOT NULL AS lnbits;
SELECT t_zap('z2') AS z2 \gset
SELECT * FROM t_p2p_claims();
SELECT * FROM t_p2p(:'z2');
-- the operator's LND node: bob's first wallet (NWC) is asked for 70 sat
SELECT payledger.set_provider_active((SELECT id FROM payledger.providers WHERE name = 'ln-lnbits'), false) IS NOT NULL AS retired;
SELECT payledger.add_provider('main', 'node', 'lnd_rest', 'https://127.0.0.1:9', '{"macaroon": "0201"}') IS NOT NULL AS node;
SELECT t_zap('z3') AS z3 \gset
SELECT * FROM t_p2p_claims();
-- the wallet refuses: FAILED, counted against the wallet, alice's 27 sat back
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'z3', 'op', 'receiver_invoice', 'ok', false,
                                                 'retryable', false, 'error', 'QUOTA_EXCEEDED'));
SELECT * FROM t_p2p(:'z3');
SELECT kind, consecutive_failures, last_error FROM payledger.receiver_wallets WHERE id = :'w_nwc';
-- the wallet does not answer: asked again after a backoff, not now
SELECT t_zap('z4') AS z4 \gset
SELECT count(*) AS claims FROM t_p2p_claims();
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'z4', 'op', 'receiver_invoice', 'ok', false,
                                                 'retryable', true, 'error', 'relay: no answer in time'));
SELECT count(*) AS claims_now FROM t_p2p_claims();
SELECT state, forward, errors FROM t_p2p(:'z4'), payledger.p2p_forwards WHERE payin_id = :'z4';
-- invoices the node could not pay as they are: each fails with its reason
UPDATE payledger.p2p_forwards SET next_check_at = now() WHERE payin_id = :'z4';
SELECT count(*) AS claims_again FROM t_p2p_claims();
SELECT t_answer(:'z4', t_bolt11(69000, 'short')) AS wrong_amount;
SELECT * FROM t_p2p(:'z4');
SELECT t_zap('z5') AS z5 \gset
SELECT count(*) FROM t_p2p_claims();
SELECT t_answer(:'z5', t_bolt11(70000, 'testnet', network => 'testnet')) AS other_network;
SELECT * FROM t_p2p(:'z5');
SELECT t_zap('z6') AS z6 \gset
SELECT count(*) FROM t_p2p_claims();
SELECT t_answer(:'z6', t_bolt11(70000, 'soon', expiry => 60)) AS expires_soon;
SELECT * FROM t_p2p(:'z6');
SELECT t_zap('z7') AS z7 \gset
SELECT count(*) FROM t_p2p_claims();
SELECT t_answer(:'z7', 'lnbc1garbage') AS not_an_invoice;
SELECT * FROM t_p2p(:'z7');
-- (a node allowing 90 blocks: the wallet's final 18, 144 for the route and 80 to settle do not fit)
ALTER SYSTEM SET payledger.p2p_max_cltv_delta = 90;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT t_zap('z8') AS z8 \gset
SELECT count(*) FROM t_p2p_claims();
SELECT t_answer(:'z8', t_bolt11(70000, 'cltv')) AS cltv_too_high;
SELECT * FROM t_p2p(:'z8');
ALTER SYSTEM RESET payledger.p2p_max_cltv_delta;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
-- a good invoice: the hold invoice is opened at the node for the 73 sat alice
-- owes, with the wallet's payment hash and final CLTV delta plus 144 for the
-- route and 80 to settle
SELECT t_zap('z9') AS z9 \gset
SELECT count(*) FROM t_p2p_claims();
SELECT t_answer(:'z9', t_bolt11(70000, 'good')) AS good;
SELECT * FROM t_p2p(:'z9');
SELECT i.hold, i.cltv_expiry, i.amount, i.status, i.payment_hash = f.payment_hash AS same_hash,
       i.expiry <= interval '900 seconds' AS within_max
  FROM payledger.invoices i JOIN payledger.p2p_forwards f ON f.payin_id = i.payin_id WHERE i.payin_id = :'z9';
-- the worker's next claim creates it at the node: a hold invoice for that hash
SELECT * FROM t_p2p_claims();
-- a second wallet answering with an invoice payledger already wraps: refused
SELECT t_zap('z10') AS z10 \gset
SELECT * FROM t_p2p_claims();
SELECT t_answer(:'z10', t_bolt11(70000, 'good')) AS same_hash;
SELECT * FROM t_p2p(:'z10');
-- the node has issued the hold invoice: PENDING_HELD
SELECT payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'create', 'ok', true, 'external_id', i.payment_hash,
                                                 'payment_hash', i.payment_hash, 'payment_request', 'lnbc730n1hold'))
  FROM payledger.invoices i WHERE i.payin_id = :'z9';
SELECT * FROM t_p2p(:'z9');
-- the payer pays it and the node holds the payment (LND's ACCEPTED): in
-- part first (the pay-in waits), then all of it: HELD, with the held HTLC's
-- timeout and the node's height, which tell the forward its blocks
CREATE FUNCTION t_held(payin uuid, held bigint) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'check', 'ok', true, 'status', 'held',
                                                   'held_amount', held, 'htlc_expiry_height', 870242, 'block_height', 870000))
    FROM payledger.invoices i WHERE i.payin_id = payin
$$;
SELECT t_held(:'z9', 50000) AS in_part;
SELECT (t_p2p(:'z9')).state, (SELECT last_error FROM payledger.invoices WHERE payin_id = :'z9');
SELECT t_held(:'z9', 73000) AS all_of_it;
SELECT (t_p2p(:'z9')).state;
SELECT held_amount, htlc_expiry_height, held_block_height, held_at IS NOT NULL AS held, status, last_error
  FROM payledger.invoices WHERE payin_id = :'z9';
SELECT t_held(:'z9', 73000) AS again;

-- Forwarding, driven by hand. The next claim sends the forward: recorded as
-- sent (FORWARDING) before the call, with the routing fee budget (3 sat) as
-- its fee limit and the blocks the held HTLC leaves as its CLTV limit (242
-- - 80 to settle = 162: 144 for the route, and the wallet's final 18)
CREATE FUNCTION t_node_claims() RETURNS TABLE (op text, amount bigint, max_fee bigint, expiry_height integer, margin integer,
                                               final_cltv integer, preimage text) LANGUAGE sql AS $$
  SELECT x ->> 'op', (x ->> 'amount')::bigint, (x ->> 'max_fee')::bigint, (x ->> 'htlc_expiry_height')::integer,
         (x ->> 'settle_margin')::integer, (x ->> 'final_cltv')::integer, x ->> 'preimage'
    FROM t_claims() x WHERE x ? 'forward_id' ORDER BY 1
$$;
CREATE FUNCTION t_forward(payin uuid, result jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.worker_apply(jsonb_build_object('forward_id', payin, 'op', 'pay') || result)
$$;
CREATE FUNCTION t_due(payin uuid) RETURNS void LANGUAGE sql AS $$
  UPDATE payledger.p2p_forwards SET next_check_at = now(), locked_until = NULL WHERE payin_id = payin
$$;
SELECT * FROM t_node_claims();
SELECT (t_p2p(:'z9')).*, cltv_limit, sent_at IS NOT NULL AS sent FROM payledger.p2p_forwards WHERE payin_id = :'z9';
-- while it may be on its way, nobody else moves the pay-in
SELECT t_try(format($$SELECT payledger.transition_payin(%L, 'FAILED_FORWARD')$$, :'z9')) AS app_fails_it,
       t_try(format($$SELECT payledger.fail_payin(%L)$$, :'z9')) AS app_fails_it_again;
-- in flight: looked up later; a lookup that finds nothing so soon is no failure
SELECT t_forward(:'z9', '{"status": "pending"}') AS in_flight;
SELECT t_due(:'z9');
SELECT op, amount, max_fee FROM t_node_claims();
SELECT t_forward(:'z9', '{"op": "lookup", "status": "not_found"}') AS not_found_yet;
SELECT (t_p2p(:'z9')).state;
-- paid, says the node, but with a preimage that is not the hash's: never
-- settled on its word, looked up again
SELECT t_forward(:'z9', jsonb_build_object('status', 'succeeded', 'fee', 1070, 'preimage', t_preimage('not it'))) AS wrong_preimage;
SELECT (t_p2p(:'z9')).state, errors, last_error FROM payledger.p2p_forwards WHERE payin_id = :'z9';
-- paid with the preimage: FORWARDED, and the next claim settles the hold invoice with it
SELECT t_due(:'z9');
SELECT t_forward(:'z9', jsonb_build_object('op', 'lookup', 'status', 'succeeded', 'fee', 1070, 'preimage', t_preimage('good'))) AS paid;
SELECT (t_p2p(:'z9')).*, fee_paid, preimage = t_preimage('good') AS preimage_kept FROM payledger.p2p_forwards WHERE payin_id = :'z9';
SELECT op, preimage = t_preimage('good') AS with_preimage FROM t_node_claims();
-- a check that sees the hold invoice settled first leaves it to the forward
SELECT payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'check', 'ok', true, 'status', 'paid',
                                                 'received', 73000))
  FROM payledger.invoices i WHERE i.payin_id = :'z9';
SELECT (t_p2p(:'z9')).state, (SELECT status FROM payledger.invoices WHERE payin_id = :'z9') AS invoice;
-- the node could not answer: tried again; then settled: PAID, the pay-outs
-- credited, and the share and the 1.07 sat fee booked as gone by Lightning
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'z9', 'op', 'settle', 'ok', false, 'retryable', true,
                                                 'error', 'connection refused')) AS unreachable;
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'z9', 'op', 'settle', 'settle', 'settled')) AS settled;
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'z9', 'op', 'settle', 'settle', 'settled')) AS twice;
SELECT (t_p2p(:'z9')).*, f.settled_at IS NOT NULL AS settled, i.status AS invoice, i.amount_received, i.preimage = f.preimage AS same_preimage
  FROM payledger.p2p_forwards f JOIN payledger.invoices i ON i.payin_id = f.payin_id WHERE f.payin_id = :'z9';
SELECT journal_kind, owner_id, account_kind, account_name, amount FROM payledger.payin_audit(:'z9')
 WHERE journal_kind <> 'payin_open';
-- the forward's journal: bob's 70 sat and the 1.07 sat fee left by Lightning
-- (from the clearing account the payer's 73 sat came into); 1.93 sat of the
-- budget stay with the routing fee pay-out
SELECT j.kind, a.owner_id, a.kind AS account_kind, e.amount
  FROM payledger.p2p_forwards f JOIN payledger.journals j ON j.id = f.forward_journal
  JOIN payledger.entries e ON e.journal_id = j.id JOIN payledger.accounts a ON a.id = e.account_id
 WHERE f.payin_id = :'z9' ORDER BY e.amount;
SELECT payledger.balance(acc('bob')) AS bob, payledger.balance(acc('fees')) AS fees;
SELECT to_state, from_state FROM payledger.payin_history WHERE payin_id = :'z9' ORDER BY at;
SELECT count(*) AS violations FROM payledger.check_invariants();

-- What goes wrong after the payer's payment is held. t_to_held takes a zap
-- to HELD as above (wrapped, the hold invoice issued, paid and held).
SELECT payledger.transfer(acc('world'), acc('alice'), 200000) IS NOT NULL AS topped_up;
CREATE FUNCTION t_to_held(key text, expiry_height integer DEFAULT 870242) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  z uuid := t_zap(key);
  i payledger.invoices;
BEGIN
  PERFORM t_claims();
  PERFORM t_answer(z, t_bolt11(70000, key));
  PERFORM t_claims();
  SELECT * INTO i FROM payledger.invoices x WHERE x.payin_id = z;
  PERFORM payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'create', 'ok', true, 'external_id', i.payment_hash,
                                                    'payment_hash', i.payment_hash, 'payment_request', 'lnbc730n1hold'));
  PERFORM payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'check', 'ok', true, 'status', 'held',
                                                    'held_amount', 73000, 'htlc_expiry_height', expiry_height,
                                                    'block_height', 870000));
  RETURN z;
END $$;
-- (the hold invoice's next calls, its last check's lease over)
CREATE FUNCTION t_invoice_ops(payin uuid) RETURNS TABLE (op text) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE payledger.invoices SET locked_until = NULL WHERE payin_id = payin;
  RETURN QUERY SELECT x ->> 'op' FROM t_claims() x
                WHERE x ->> 'invoice_id' = (SELECT id::text FROM payledger.invoices WHERE payin_id = payin);
END $$;
-- the forward fails at the node: FAILED_FORWARD, then FAILED with
-- INVOICE_FORWARDING_FAILED, counted against the wallet; alice's 27 sat
-- back, and the next claim cancels the hold invoice (the payer's HTLC goes back)
SELECT t_to_held('f1') AS f1 \gset
SELECT (t_p2p(:'f1')).state, payledger.balance(acc('alice')) AS alice;
SELECT op FROM t_node_claims();
SELECT t_forward(:'f1', '{"status": "failed", "error": "LND: FAILURE_REASON_NO_ROUTE"}') AS no_route;
SELECT * FROM t_p2p(:'f1');
SELECT to_state, failure_reason FROM payledger.payin_history WHERE payin_id = :'f1' ORDER BY at DESC LIMIT 2;
SELECT payledger.balance(acc('alice')) AS alice, w.consecutive_failures AS wallet_failures
  FROM payledger.p2p_forwards f JOIN payledger.receiver_wallets w ON w.id = f.wallet_id WHERE f.payin_id = :'f1';
SELECT * FROM t_invoice_ops(:'f1');
-- a held HTLC that leaves too few blocks (50 - 80 to settle < the wallet's
-- 18): never sent (the claim's fail item instead of a pay), FAILED with
-- INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW
SELECT t_to_held('f2', 870050) AS f2 \gset
SELECT op FROM t_node_claims();
SELECT * FROM t_p2p(:'f2');
-- the same found by the worker at the node's height of the moment, before sending
SELECT t_to_held('f3') AS f3 \gset
SELECT op FROM t_node_claims();
SELECT t_forward(:'f3', '{"status": "failed", "reason": "INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW", "cltv_limit": 10,
                          "error": "not sent: 10 blocks left to forward, the receiver''s invoice needs 18"}') AS too_late;
SELECT * FROM t_p2p(:'f3');
-- a held payment not forwarded within HELD's deadline: FAILED with
-- HELD_INVOICE_SETTLED_TOO_SLOW; the worker never forwards it, and cancels its hold invoice
SELECT t_to_held('f4') AS f4 \gset
SELECT payledger.set_payin_deadline('HELD', '1 millisecond') IS NOT NULL AS shortened;
SELECT pg_sleep(0.05);
SELECT payledger.fail_overdue_payins(10) AS failed;
SELECT payledger.set_payin_deadline('HELD', '1 hour') IS NOT NULL AS back;
SELECT * FROM t_invoice_ops(:'f4');
SELECT * FROM t_p2p(:'f4');
-- a forward the node does not know long after it was sent was never made: FAILED
SELECT t_to_held('f5') AS f5 \gset
SELECT op FROM t_node_claims();
UPDATE payledger.p2p_forwards SET sent_at = now() - interval '10 minutes', next_check_at = now(), locked_until = NULL
 WHERE payin_id = :'f5';
SELECT t_forward(:'f5', '{"op": "lookup", "status": "not_found"}') AS never_made;
SELECT * FROM t_p2p(:'f5');
-- the node cancels the held payment while it is forwarded: recorded, the
-- pay-in left to the forward (here it fails, and nothing is lost)
SELECT t_to_held('f6') AS f6 \gset
SELECT op FROM t_node_claims();
SELECT payledger.worker_apply(jsonb_build_object('invoice_id', i.id, 'op', 'check', 'ok', true, 'status', 'expired'))
  FROM payledger.invoices i WHERE i.payin_id = :'f6';
SELECT (t_p2p(:'f6')).state, i.status, i.last_error FROM payledger.invoices i WHERE i.payin_id = :'f6';
-- results the worker cannot read (22023, recorded with a backoff, nothing moved)
SET client_min_messages = error;
SELECT t_forward(:'f6', '{"status": "exploded"}') AS unknown_status,
       t_forward(:'f6', jsonb_build_object('status', 'succeeded', 'fee', -1, 'preimage', t_preimage('f6'))) AS negative_fee,
       payledger.worker_apply(jsonb_build_object('forward_id', :'f6', 'op', 'teleport')) AS unknown_op;
RESET client_min_messages;
SELECT (t_p2p(:'f6')).state, status, errors, t_mask(last_error) AS last_error FROM payledger.p2p_forwards WHERE payin_id = :'f6';
SELECT t_forward(:'f6', '{"status": "failed", "error": "LND: FAILURE_REASON_TIMEOUT"}') AS then_failed;
SELECT * FROM t_p2p(:'f6');
-- ... or the forward was paid and the node cannot settle: the operator's
-- loss, said by the event p2p.settle_failed; the pay-in stays FORWARDED
SELECT t_to_held('f7') AS f7 \gset
SELECT op FROM t_node_claims();
SELECT t_forward(:'f7', jsonb_build_object('status', 'succeeded', 'fee', 0, 'preimage', t_preimage('f7'))) AS paid;
SELECT payledger.worker_apply(jsonb_build_object('forward_id', :'f7', 'op', 'settle', 'settle', 'cancelled')) AS cannot_settle;
SELECT (t_p2p(:'f7')).state, last_error, next_check_at FROM payledger.p2p_forwards WHERE payin_id = :'f7';
SELECT topic, payload ->> 'node' AS node FROM payledger.events WHERE topic = 'p2p.settle_failed';
SELECT count(*) AS violations FROM payledger.check_invariants();
-- a payment held on an invoice that is not a hold invoice: refused, recorded
SELECT payledger.transfer(acc('world'), acc('alice'), 100000) IS NOT NULL AS topped_up;
SELECT payin_id AS plain FROM payledger.create_payin('alice', 'ZAP', 'msat', 1000, '[{"external": "invoice"}]',
         jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('bob'), 'amount', 1000))) \gset
SELECT count(*) FILTER (WHERE op = 'create') AS plain_created FROM t_p2p_claims();
SET client_min_messages = error;
SELECT t_held(:'plain', 1000) AS not_hold;
RESET client_min_messages;
SELECT errors, t_mask(last_error) FROM payledger.invoices WHERE payin_id = :'plain';
-- a late answer for an ended pay-in changes nothing
SELECT t_answer(:'z3', t_bolt11(70000, 'late')) AS late;
-- the NWC wallet failed three times in a row: skipped for an hour, the next asked
SELECT kind, priority, consecutive_failures, enabled FROM payledger.receiver_wallets WHERE owner_id = 'bob' ORDER BY priority;
SELECT payledger.balance(acc('alice')) AS alice, count(*) FILTER (WHERE state = 'FAILED') AS failed,
       count(*) FILTER (WHERE state = 'HELD') AS held FROM payledger.payins;
SELECT count(*) AS violations FROM payledger.check_invariants();

-- The fallback. A pay-in failed for a reason that blames the receiver's
-- wallet is retried at once: with the receiver's next wallet while one is
-- left, then, for a type whose p2p_fallback is 'credits', without p2p (the
-- receiver's share credited to their balance); a type whose p2p_fallback is
-- 'none' stops when the wallets are spent. Each successor is announced by a
-- payin.retried event.
SELECT payledger.register_payin_type('TIP', 'tip'),
       payledger.register_payin_type('TIP_P2P_ONLY', 'tip, p2p only', p2p_fallback => 'none');
INSERT INTO t_acc VALUES ('erin', payledger.open_account('erin', 'msat'));
SELECT payledger.attach_receiver_wallet('erin', 'lnbits', '{"url": "https://lnbits.example", "invoice_key": "k1"}') AS w_erin1 \gset
SELECT payledger.attach_receiver_wallet('erin', 'lnd_rest', '{"url": "https://lnd.example", "invoice_macaroon": "0201"}',
                                        priority => 1) AS w_erin2 \gset
CREATE FUNCTION t_tip(type text, key text) RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('alice', type, 'msat', 100000,
           jsonb_build_array(jsonb_build_object('account', acc('alice')), '{"external": "invoice", "p2p": true, "unit": 1000}'::jsonb),
           split => 'zap_p2p', payees => jsonb_build_object('receiver', acc('erin'), 'founder', acc('carol')), idempotency_key => key)
$$;
CREATE FUNCTION t_chain(first uuid) RETURNS TABLE (retry_count integer, state payledger.payin_state, reason payledger.payin_failure_reason,
                                                   policy text, wallet text, custodial bigint, external bigint) LANGUAGE sql AS $$
  SELECT p.retry_count, p.state, p.failure_reason, p.retry_policy, w.kind::text, p.custodial_amount, p.external_amount
    FROM payledger.payins p LEFT JOIN payledger.p2p_forwards f ON f.payin_id = p.id
    LEFT JOIN payledger.receiver_wallets w ON w.id = f.wallet_id
   WHERE coalesce(p.genesis_id, p.id) = first ORDER BY p.retry_count
$$;
CREATE FUNCTION t_refuse(first uuid) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.worker_apply(jsonb_build_object('forward_id', f.payin_id, 'op', 'receiver_invoice', 'ok', false,
                                                   'retryable', false, 'error', 'NOT_AVAILABLE'))
    FROM payledger.p2p_forwards f JOIN payledger.payins p ON p.id = f.payin_id
   WHERE coalesce(p.genesis_id, p.id) = first AND f.status = 'asking'
$$;
-- erin's first wallet refuses: the worker's next claim makes the fallback
-- (a successor, in its own transaction), the one after asks erin's second
-- wallet
SELECT t_tip('TIP', 't1') AS t1 \gset
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT t_refuse(:'t1') AS first_wallet;
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT * FROM t_chain(:'t1');
-- the second refuses too: none left, so the successor pays erin in credits;
-- alice's balance covers the 100 sat, so it is PAID at once, and erin's
-- share is on their balance
SELECT t_refuse(:'t1') AS second_wallet;
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT * FROM t_chain(:'t1');
SELECT payledger.balance(acc('erin')) AS erin;
SELECT topic, payload ->> 'policy' AS policy, payload ->> 'state' AS successor_state
  FROM payledger.events WHERE topic = 'payin.retried' ORDER BY id;
-- a p2p-only type: after the second wallet, no successor
SELECT t_tip('TIP_P2P_ONLY', 't2') AS t2 \gset
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT t_refuse(:'t2') AS first_wallet;
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT t_refuse(:'t2') AS second_wallet;
SELECT op, wallet_kind FROM t_p2p_claims();
SELECT * FROM t_chain(:'t2');
-- a failure that does not blame the wallet (the application's, a
-- deadline's) is not retried
SELECT t_tip('TIP', 't3') AS t3 \gset
SELECT payledger.fail_payin(:'t3', 'SYSTEM_CANCELLED') IS NOT NULL AS failed;
SELECT * FROM t_chain(:'t3');
SELECT count(*) AS violations FROM payledger.check_invariants();
