-- payledger demo: the ledger core, pay-ins and pay-outs, a NIP-90 job, a
-- pay-in settled, a withdrawal and a tip paid, zaps paid peer to peer into
-- a receiver's NWC and LNbits wallets, and a cancelled invoice
-- watched for late money by the background worker at a local LNbits,
-- prepaid credits. Run by
-- scripts/demo.sh against a throwaway cluster (it sets lnbits_url,
-- lnbits_inkey and demo_dir, and LNBITS_URL, LNBITS_PAYKEY, DEMO_DIR for curl).
\pset footer off
\set VERBOSITY terse
CREATE EXTENSION payledger;

\echo '--- assets with exact minor units'
SELECT payledger.create_asset('msat', 3, 'millisatoshi (1 sat = 1000 msat)');
SELECT payledger.create_asset('usd', 2, 'US dollar cents');

\echo '--- accounts: two users, the outside world (may go negative), a revenue account'
SELECT payledger.open_account('alice', 'msat') AS alice \gset
SELECT payledger.open_account('bob', 'msat') AS bob \gset
SELECT payledger.open_account('world', 'msat', 'external', 'lightning', allow_negative => true) AS world \gset
SELECT payledger.open_account('operator', 'msat', 'revenue') AS revenue \gset

\echo '--- a deposit of 50,000 sat to alice, sent twice with one idempotency key: one journal'
SELECT payledger.transfer(:'world', :'alice', 50000000, idempotency_key => 'deposit-1') = 
       payledger.transfer(:'world', :'alice', 50000000, idempotency_key => 'deposit-1') AS same_journal;

SELECT clock_timestamp() AS before_coffee \gset
\echo '--- alice pays bob 1,000 sat with a 1% fee to the operator: one three-leg journal'
SELECT payledger.post_journal(jsonb_build_array(
         jsonb_build_object('account', :'alice', 'amount', -1010000),
         jsonb_build_object('account', :'bob', 'amount', 1000000),
         jsonb_build_object('account', :'revenue', 'amount', 10000)),
       metadata => '{"memo": "coffee"}') IS NOT NULL AS posted;

\echo '--- bob tries to spend more than he has: a clear error, nothing changes'
\set ON_ERROR_STOP off
SELECT payledger.transfer(:'bob', :'alice', 5000000);
\set ON_ERROR_STOP on
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE

\echo '--- two-phase: alice reserves 2,000 sat for bob, then 1,500 are posted and the rest released'
SELECT payledger.create_hold(:'alice', :'bob', 2000000, timeout => '10 minutes') AS hold \gset
SELECT payledger.format_amount('msat', payledger.balance(:'alice')) AS alice_posted_sat,
       payledger.format_amount('msat', payledger.available_balance(:'alice')) AS alice_available_sat;
SELECT payledger.post_hold(:'hold', 1500000) IS NOT NULL AS posted;
SELECT payledger.format_amount('msat', payledger.balance(:'alice')) AS alice_posted_sat,
       payledger.format_amount('msat', payledger.available_balance(:'alice')) AS alice_available_sat;

\echo '--- a batch: each item succeeds or fails on its own'
SELECT item, status, sqlstate, message
  FROM payledger.transfer_batch(jsonb_build_array(
         jsonb_build_object('from', :'alice', 'to', :'bob', 'amount', 1000),
         jsonb_build_object('from', :'bob', 'to', :'alice', 'amount', 999999999999),
         jsonb_build_object('from', :'alice', 'to', :'bob', 'amount', 0),
         jsonb_build_object('from', :'bob', 'to', :'revenue', 'amount', 500)));

\echo '--- a hot account: the operator''s revenue gets 8 shards; each credit takes a free shard'
SELECT payledger.set_account_shards(:'revenue', 8) AS shards;
SELECT count(*) AS credits FROM (SELECT payledger.transfer(:'world', :'revenue', 1000) FROM generate_series(1, 200)) s;
SELECT count(*) FILTER (WHERE balance > 0) AS shards_used, payledger.format_amount('msat', payledger.balance(:'revenue')) AS revenue_sat
  FROM payledger.accounts WHERE parent_id = :'revenue';

\echo '--- balances now (they sum to zero), and alice''s balance before she paid for the coffee'
SELECT o.owner, payledger.format_amount('msat', payledger.balance(o.id)) AS sat
  FROM (VALUES ('alice', :'alice'::uuid), ('bob', :'bob'::uuid), ('world', :'world'::uuid),
               ('operator', :'revenue'::uuid)) AS o(owner, id);
SELECT payledger.format_amount('msat', payledger.balance_at(:'alice', :'before_coffee')) AS alice_before_coffee_sat;

\echo '--- what alice sees through the owner-filtered view (as an end user)'
SET ROLE payledger_enduser;
SET payledger.owner_id = 'alice';
SELECT asset, kind, name, payledger.format_amount(asset, balance) AS balance_sat FROM payledger.my_accounts;
SELECT seq, kind, amount, balance_after FROM payledger.my_entries ORDER BY seq;
\echo 'the ledger tables themselves are not readable by end users:'
\set ON_ERROR_STOP off
SELECT count(*) FROM payledger.entries;
\set ON_ERROR_STOP on
RESET ROLE;

\echo ''
\echo '=== pay-ins and pay-outs (Stacker News'' model) ==='
\echo '--- types, a territory split (founder 70%, rewards pool 30%), and carol''s two balances'
SELECT payledger.register_payin_type('ITEM_CREATE', 'post an item');
SELECT payledger.register_payout_type('TERRITORY_REVENUE', 'to the territory founder'),
       payledger.register_payout_type('REWARDS_POOL', 'to the daily rewards');
SELECT payledger.open_account('founder', 'msat', 'revenue', 'territory') AS founder \gset
SELECT payledger.open_account('rewards', 'msat', 'rewards_pool') AS pool \gset
SELECT payledger.define_split_rule('territory', jsonb_build_array(
         jsonb_build_object('role', 'founder', 'payout_type', 'TERRITORY_REVENUE', 'percent', 70),
         jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 30, 'account', :'pool')), 'pool');
SELECT payledger.open_account('carol', 'msat', 'user', 'credits') AS credits \gset
SELECT payledger.open_account('carol', 'msat', 'user', 'sats') AS sats \gset
SELECT payledger.transfer(:'world', :'credits', 20000) IS NOT NULL AS credits_20_sat,
       payledger.transfer(:'world', :'sats', 20000) IS NOT NULL AS reward_sats_20_sat;

\echo '--- a 100-sat action paid 20 credits + 20 reward sats + 60 by invoice'
SELECT payin_id AS item, state, custodial_amount, external_amount
  FROM payledger.create_payin('carol', 'ITEM_CREATE', 'msat', 100000, jsonb_build_array(
         jsonb_build_object('account', :'credits', 'amount', 20000),
         jsonb_build_object('account', :'sats', 'amount', 20000),
         jsonb_build_object('external', 'invoice', 'amount', 60000)),
       split => 'territory', payees => jsonb_build_object('founder', :'founder'), idempotency_key => 'item-1') \gset
SELECT :'state' AS state, :custodial_amount AS from_balances_msat, :external_amount AS by_invoice_msat;
\echo 'nothing is paid out yet; carol''s 40 sat wait in her escrow account:'
SELECT payledger.balance(:'credits') AS credits, payledger.balance(:'sats') AS sats,
       payledger.balance(:'founder') AS founder, payledger.balance(:'pool') AS pool;

\echo '--- the invoice is created, then paid: PAID, founder and pool credited in the same transaction'
SELECT * FROM payledger.transition_payin(:'item', 'PENDING', external_ref => 'payment-hash-1');
SELECT * FROM payledger.settle_payin(:'item');
\echo 'a second settler (webhook racing the reconciler) changes nothing:'
SELECT * FROM payledger.settle_payin(:'item');
SELECT payledger.balance(:'founder') AS founder, payledger.balance(:'pool') AS pool;
SELECT journal_kind, owner_id, account_kind, account_name, amount, balance_before, balance_after
  FROM payledger.payin_audit(:'item');

\echo '--- another action whose invoice expires: FAILED, the balances are refunded atomically'
SELECT payledger.transfer(:'world', :'credits', 30000) IS NOT NULL AS topped_up;
SELECT payin_id AS item2 FROM payledger.create_payin('carol', 'ITEM_CREATE', 'msat', 100000, jsonb_build_array(
         jsonb_build_object('account', :'credits'), jsonb_build_object('account', :'sats'),
         jsonb_build_object('external', 'invoice', 'unit', 1000)),
       split => 'territory', payees => jsonb_build_object('founder', :'founder')) \gset
SELECT payledger.balance(:'credits') AS credits_after_create;
SELECT * FROM payledger.transition_payin(:'item2', 'PENDING', external_ref => 'payment-hash-2');
SELECT * FROM payledger.fail_payin(:'item2', 'INVOICE_EXPIRED');
SELECT payledger.balance(:'credits') AS credits_after_refund, kind, amount, reason
  FROM payledger.payin_refunds WHERE payin_id = :'item2';
SELECT from_state, to_state, failure_reason FROM payledger.payin_history WHERE payin_id = :'item2' ORDER BY at;

\echo '--- statistics: spending and earning by type and day'
SELECT owner_id, direction, type, payledger.format_amount('msat', amount) AS sat, count
  FROM payledger.payin_stats(now() - interval '1 day', now() + interval '1 day') ORDER BY owner_id, direction;

\echo ''
\echo '=== a NIP-90 job paid upfront by a zap ==='
\echo '--- test keys (in production the apps hold them): a customer, the service provider, its LNURL server, a node'
SELECT sha256('demo customer') AS customer_sk, sha256('demo provider') AS provider_sk,
       sha256('demo lnurl') AS lnurl_sk, sha256('demo node') AS node_sk \gset
SELECT payledger.nostr_sign_event('{"kind": 1}', :'provider_sk') ->> 'pubkey' AS provider_pk,
       payledger.nostr_sign_event('{"kind": 1}', :'lnurl_sk') ->> 'pubkey' AS lnurl_pk \gset
SELECT payledger.open_account('dvm', 'msat', 'revenue') AS dvm \gset

\echo '--- the customer''s request (kind 5100, signed), and the job: upfront, 21 sat'
SELECT payledger.nostr_sign_event(jsonb_build_object('kind', 5100, 'content', '', 'tags', jsonb_build_array(
         jsonb_build_array('i', 'translate: bonjour', 'text'), jsonb_build_array('p', :'provider_pk'))), :'customer_sk') AS request \gset
SELECT payledger.nostr_job_open(:'request', :'provider_pk', :'lnurl_pk', :'dvm', 'upfront', 21000) AS job \gset
SELECT state FROM payledger.nostr_jobs WHERE id = :'job';

\echo '--- the payment-required feedback payledger templates, as the provider signs and publishes it'
SELECT payledger.nostr_sign_event(payledger.nostr_job_feedback(:'job', 'payment-required'), :'provider_sk') AS feedback \gset
SELECT :'feedback'::jsonb -> 'tags' AS feedback_tags;
SELECT payledger.nostr_job_published(:'job', :'feedback') AS state;

\echo '--- the customer zaps the feedback: a zap request, an invoice for it, the receipt from the LNURL server'
SELECT payledger.nostr_sign_event(jsonb_build_object('kind', 9734, 'content', '', 'tags', jsonb_build_array(
         jsonb_build_array('relays', 'wss://relay.example'), jsonb_build_array('amount', '21000'),
         jsonb_build_array('p', :'provider_pk'), jsonb_build_array('e', :'feedback'::jsonb ->> 'id'))), :'customer_sk') AS zap_request \gset
SELECT payledger.bolt11_create(:'node_sk', 21000, sha256('demo preimage'),
                               description_hash => sha256(convert_to(:'zap_request', 'UTF8'))) AS bolt11 \gset
SELECT payledger.nostr_sign_event(jsonb_build_object('kind', 9735, 'content', '', 'tags', jsonb_build_array(
         jsonb_build_array('p', :'provider_pk'), jsonb_build_array('e', :'feedback'::jsonb ->> 'id'),
         jsonb_build_array('bolt11', :'bolt11'), jsonb_build_array('description', :'zap_request'),
         jsonb_build_array('preimage', encode('demo preimage'::bytea, 'hex')))), :'lnurl_sk') AS receipt \gset
SELECT valid, failures, amount_msat, description_hash_matches, preimage_matches
  FROM payledger.verify_zap_receipt(:'receipt', :'lnurl_pk', expected_amount_msat => 21000);
\echo 'credited once (a relay delivering the receipt twice changes nothing), and the job may start:'
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap(:'receipt');
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap(:'receipt');
SELECT payledger.balance(:'dvm') AS provider_revenue_msat;

\echo '--- the result event (kind 6100) payledger templates; published, the job is a success'
SELECT r -> 'kind' AS kind, r ->> 'content' AS content, (SELECT jsonb_agg(t ->> 0) FROM jsonb_array_elements(r -> 'tags') t) AS tags
  FROM payledger.nostr_job_result(:'job', 'hello') r;
SELECT payledger.nostr_job_published(:'job', payledger.nostr_sign_event(payledger.nostr_job_result(:'job', 'hello'), :'provider_sk')) AS state;

\echo '=== a pay-in settled by the background worker against a local LNbits ==='
\echo '--- a merchant profile and its provider (the invoice key stays in an admin-only table)'
SELECT payledger.create_merchant_profile('shop', is_default => true) IS NOT NULL AS profile,
       payledger.add_provider('shop', 'lnbits', 'lnbits', :'lnbits_url', jsonb_build_object('invoice_key', :'lnbits_inkey'),
                              invoice_expiry => '10 minutes') IS NOT NULL AS provider;
CREATE FUNCTION demo_wait(payin uuid, want payledger.payin_state) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..120 LOOP
    IF (SELECT state FROM payledger.payins WHERE id = payin) = want THEN RETURN want; END IF;
    PERFORM pg_sleep(0.25);
  END LOOP;
  RETURN 'still ' || (SELECT state FROM payledger.payins WHERE id = payin);
END $$;
\echo '--- alice posts an item for 100 sat: 30 from her balance, 70 by invoice'
SELECT payin_id AS worker_payin, state FROM payledger.create_payin('alice', 'ITEM_CREATE', 'msat', 100000000,
  jsonb_build_array(jsonb_build_object('account', :'alice', 'amount', 30000000), '{"external": "invoice", "amount": 70000000}'::jsonb),
  jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', :'revenue', 'amount', 100000000))) \gset
\echo 'the worker creates the invoice at LNbits within a tick:'
SELECT demo_wait(:'worker_payin', 'PENDING') AS state;
SELECT provider_name, status, amount, left(payment_request, 24) || '…' AS bolt11
  FROM payledger.invoices WHERE payin_id = :'worker_payin';
\set QUIET on
\pset tuples_only on
\pset format unaligned
SELECT payment_request FROM payledger.invoices WHERE payin_id = :'worker_payin' \g :demo_dir/bolt11
\pset tuples_only off
\pset format aligned
\set QUIET off
\echo '--- a second LNbits wallet pays it'
\! curl -sf -X POST "$LNBITS_URL/api/v1/payments" -H "X-Api-Key: $LNBITS_PAYKEY" -H 'Content-Type: application/json' -d "{\"out\": true, \"bolt11\": \"$(cat "$DEMO_DIR/bolt11")\"}" >/dev/null && echo 'paid'
\echo 'the worker sees it paid at its next tick: PAID, the revenue credited, an event written'
SELECT demo_wait(:'worker_payin', 'PAID') AS state;
SELECT status, amount_received, paid_at IS NOT NULL AS paid FROM payledger.invoices WHERE payin_id = :'worker_payin';
SELECT to_state, from_state FROM payledger.payin_history WHERE payin_id = :'worker_payin' ORDER BY at;
SELECT topic, payload ->> 'state' AS state FROM payledger.events WHERE subject_id = :'worker_payin';
SELECT backend_type, application_name FROM pg_stat_activity WHERE backend_type = 'payledger worker';

\echo '=== money out: the operator withdraws 20,000 sat of its revenue to a wallet at LNbits ==='
\echo '--- the provider may now pay (its admin key, in the admin-only table), and the withdrawal types'
SELECT payledger.set_provider_credentials(id, jsonb_build_object('invoice_key', :'lnbits_inkey', 'admin_key', :'lnbits_admin'))
  FROM payledger.providers WHERE name = 'lnbits';
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0);
SELECT payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
\echo '--- the destination: an invoice of the other LNbits wallet'
\! curl -sf -X POST "$LNBITS_URL/api/v1/payments" -H "X-Api-Key: $LNBITS_PAYER_INKEY" -H 'Content-Type: application/json' -d '{"out": false, "amount": 20000, "memo": "operator withdrawal"}' | jq -r .bolt11 > "$DEMO_DIR/withdrawal"
\set QUIET on
SELECT pg_read_file(:'demo_dir' || '/withdrawal') AS wd_bolt11 \gset
\set QUIET off
\echo '--- withdraw, with at most 10 sat of routing fee: amount and budget wait in escrow'
SELECT withdrawal_id AS wd, state, amount FROM payledger.withdraw('operator', 'msat', trim(E'\n' FROM :'wd_bolt11'), 10000,
  jsonb_build_array(jsonb_build_object('account', :'revenue'))) \gset
SELECT :'state' AS state, :amount AS amount_msat;
CREATE FUNCTION demo_wait_withdrawal(w uuid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..120 LOOP
    IF (SELECT status FROM payledger.withdrawals WHERE id = w) IN ('succeeded', 'failed') THEN
      RETURN (SELECT status::text FROM payledger.withdrawals WHERE id = w);
    END IF;
    PERFORM pg_sleep(0.25);
  END LOOP;
  RETURN 'still ' || (SELECT status FROM payledger.withdrawals WHERE id = w);
END $$;
\echo 'the worker pays it at LNbits (recorded as sent before the call: never paid twice); PAID, the unused fee back:'
SELECT demo_wait_withdrawal(:'wd') AS withdrawal;
SELECT w.status, p.state, w.amount, w.fee, w.attempts FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
 WHERE w.id = :'wd';
SELECT payledger.format_amount('msat', payledger.balance(:'revenue')) AS operator_revenue_left;

\echo '--- a tip (Keysat): the operator tips 5,000 sat to the payer wallet, paid out through the provider alice''s purchase came in by'
\! curl -sf -X POST "$LNBITS_URL/api/v1/payments" -H "X-Api-Key: $LNBITS_PAYER_INKEY" -H 'Content-Type: application/json' -d '{"out": false, "amount": 5000, "memo": "a tip"}' | jq -r .bolt11 > "$DEMO_DIR/tip"
\set QUIET on
SELECT pg_read_file(:'demo_dir' || '/tip') AS tip_bolt11 \gset
\set QUIET off
SELECT withdrawal_id AS tip FROM payledger.withdraw('operator', 'msat', trim(E'\n' FROM :'tip_bolt11'), 10000,
  jsonb_build_array(jsonb_build_object('account', :'revenue')), via_payin => :'worker_payin') \gset
SELECT demo_wait_withdrawal(:'tip') AS tip;
SELECT pr.name AS paid_at, w.status, w.amount, w.fee FROM payledger.withdrawals w
  JOIN payledger.providers pr ON pr.id = w.provider_id WHERE w.id = :'tip';

\echo '=== peer to peer: alice zaps bob, paid into bob''s own wallets ==='
\echo '--- zaps go through the operator''s LND node, which can hold invoices (its REST API; the LND test server'
\echo '    stands in, as no LND runs here): a profile for zaps, and Stacker News'' split outside a territory'
SELECT payledger.create_merchant_profile('zaps') IS NOT NULL AS profile,
       payledger.add_provider('zaps', 'node', 'lnd_rest', :'node_url',
                              jsonb_build_object('macaroon', '0201036c6e64', 'admin_macaroon', '0201036c6e64ad')) IS NOT NULL AS node;
SELECT payledger.register_payin_type('ZAP', 'zap'), payledger.register_payout_type('ZAP', 'a zap, to its receiver');
SELECT payledger.route_payin_type('ZAP', 'zaps');
SELECT payledger.define_split_rule('zap_p2p', jsonb_build_array(
         jsonb_build_object('role', 'receiver', 'payout_type', 'ZAP', 'percent', 70),
         jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 27, 'account', :'pool'),
         jsonb_build_object('role', 'routing_fee', 'payout_type', 'ROUTING_FEE', 'percent', 3, 'account', :'revenue')), 'pool');
\echo '--- bob attaches his wallets: Nostr Wallet Connect (a wallet service on a local relay) first, his LNbits wallet next'
SELECT payledger.attach_receiver_wallet('bob', 'nwc', jsonb_build_object('uri', :'nwc_uri'), label => 'phone') AS bob_nwc \gset
SELECT payledger.attach_receiver_wallet('bob', 'lnbits', jsonb_build_object('url', :'lnbits_url', 'invoice_key', :'bob_inkey'),
                                        priority => 1, label => 'lnbits') AS bob_lnbits \gset
SELECT kind, label, priority, relay_or_url FROM (
  SELECT kind, label, priority, coalesce(config -> 'relays' ->> 0, config ->> 'url') AS relay_or_url
    FROM payledger.receiver_wallets WHERE owner_id = 'bob') w ORDER BY priority;
CREATE FUNCTION demo_zap(key text) RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000,
           jsonb_build_array(jsonb_build_object('account', payledger.account_id('alice', 'msat')),
                             '{"external": "invoice", "p2p": true, "unit": 1000}'::jsonb),
           split => 'zap_p2p', payees => jsonb_build_object('receiver', payledger.account_id('bob', 'msat')), idempotency_key => key)
$$;
\echo '--- alice zaps bob 100 sat: 27 from her balance; 73 by a hold invoice of the node that wraps an invoice of'
\echo '    bob''s NWC wallet for his 70 (same payment hash), the other 3 the routing fee budget'
SELECT demo_zap('zap-1') AS zap1 \gset
SELECT demo_wait(:'zap1', 'PENDING_HELD') AS state;
SELECT w.kind AS wallet, f.amount AS bob_share, f.fee_budget, i.amount AS hold_invoice, i.payment_hash = f.payment_hash AS same_hash
  FROM payledger.p2p_forwards f JOIN payledger.receiver_wallets w ON w.id = f.wallet_id
  JOIN payledger.invoices i ON i.payin_id = f.payin_id WHERE f.payin_id = :'zap1';
\set QUIET on
\pset tuples_only on
\pset format unaligned
SELECT payment_hash FROM payledger.invoices WHERE payin_id = :'zap1' \g :demo_dir/hold
\pset tuples_only off
\pset format aligned
\set QUIET off
\echo '--- alice''s wallet pays it and the node holds the payment; the worker forwards 70 sat to bob''s wallet, and settles'
\echo '    the hold invoice with the preimage it learns'
\! curl -sf -X POST "$NODE_URL/_control/settle/$(cat "$DEMO_DIR/hold")" >/dev/null && echo 'paid: held at the node'
SELECT demo_wait(:'zap1', 'PAID') AS state;
SELECT string_agg(to_state::text, ' -> ' ORDER BY at) AS states FROM payledger.payin_history WHERE payin_id = :'zap1';
SELECT f.status, f.fee_paid AS routing_fee_paid, i.status AS hold_invoice FROM payledger.p2p_forwards f
  JOIN payledger.invoices i ON i.payin_id = f.payin_id WHERE f.payin_id = :'zap1';
\! echo "bob's LNbits wallet (behind his NWC connection) holds $(curl -sf "$LNBITS_URL/api/v1/wallet" -H "X-Api-Key: $BOB_INKEY" | jq -r .balance) msat"
\echo 'bob''s balance at the operator is untouched: his share is in his own wallet (earned, then forwarded):'
SELECT payledger.balance(:'bob') AS bob_custodial_msat,
       (SELECT string_agg(j.kind || ' ' || e.amount, ', ' ORDER BY e.seq) FROM payledger.entries e JOIN payledger.journals j ON j.id = e.journal_id
         WHERE e.account_id = :'bob' AND j.kind IN ('payin_paid', 'p2p_forward')) AS bob_history;
\echo '--- bob turns his NWC wallet off: the next zap goes to his LNbits wallet'
SELECT (payledger.set_receiver_wallet(:'bob_nwc', enabled => false)).enabled AS nwc_enabled;
SELECT demo_zap('zap-2') AS zap2 \gset
SELECT demo_wait(:'zap2', 'PENDING_HELD') AS state;
\set QUIET on
\pset tuples_only on
\pset format unaligned
SELECT payment_hash FROM payledger.invoices WHERE payin_id = :'zap2' \g :demo_dir/hold
\pset tuples_only off
\pset format aligned
\set QUIET off
\! curl -sf -X POST "$NODE_URL/_control/settle/$(cat "$DEMO_DIR/hold")" >/dev/null && echo 'paid: held at the node'
SELECT demo_wait(:'zap2', 'PAID') AS state;
SELECT w.kind AS wallet, f.status FROM payledger.p2p_forwards f JOIN payledger.receiver_wallets w ON w.id = f.wallet_id
 WHERE f.payin_id = :'zap2';
\! echo "bob's LNbits wallet now holds $(curl -sf "$LNBITS_URL/api/v1/wallet" -H "X-Api-Key: $BOB_INKEY" | jq -r .balance) msat"

\echo '=== a purchase cancelled while its invoice is open, and paid anyway ==='
SELECT payin_id AS cancelled_payin FROM payledger.create_payin('alice', 'ITEM_CREATE', 'msat', 20000000,
  '[{"external": "invoice"}]', jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', :'revenue', 'amount', 20000000))) \gset
SELECT demo_wait(:'cancelled_payin', 'PENDING') AS state;
SELECT state, failure_reason FROM payledger.cancel_payin(:'cancelled_payin');
CREATE FUNCTION demo_wait_cancel(payin uuid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..120 LOOP
    IF (SELECT cancel FROM payledger.invoices WHERE payin_id = payin) IS NOT NULL THEN
      RETURN (SELECT cancel FROM payledger.invoices WHERE payin_id = payin);
    END IF;
    PERFORM pg_sleep(0.25);
  END LOOP;
  RETURN 'not yet';
END $$;
\echo 'at its next tick the worker would cancel it at LND, Core Lightning or Stripe; LNbits has no such call,'
\echo 'so payledger says so and keeps watching the invoice for late money'
SELECT demo_wait_cancel(:'cancelled_payin') AS cancel;
SELECT status, cancel, next_check_at IS NOT NULL AS watched FROM payledger.invoices WHERE payin_id = :'cancelled_payin';
\set QUIET on
\pset tuples_only on
\pset format unaligned
SELECT payment_request FROM payledger.invoices WHERE payin_id = :'cancelled_payin' \g :demo_dir/late
\pset tuples_only off
\pset format aligned
\set QUIET off
\! curl -sf -X POST "$LNBITS_URL/api/v1/payments" -H "X-Api-Key: $LNBITS_PAYKEY" -H 'Content-Type: application/json' -d "{\"out\": true, \"bolt11\": \"$(cat "$DEMO_DIR/late")\"}" >/dev/null && echo 'paid anyway'
CREATE FUNCTION demo_wait_late(payin uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..120 LOOP
    IF (SELECT paid_late FROM payledger.invoices WHERE payin_id = payin) THEN RETURN true; END IF;
    PERFORM pg_sleep(0.25);
  END LOOP;
  RETURN false;
END $$;
\echo 'the worker books it as late money, in suspense for the operator to return, with an event:'
SELECT demo_wait_late(:'cancelled_payin') AS paid_late;
SELECT payledger.format_amount('msat', payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments'))) AS late_payments_sat,
       (SELECT count(*) FROM payledger.events WHERE topic = 'invoice.paid_late') AS events;

\echo '=== prepaid credits: a storage package, metering past the plan, blocking per metric ==='
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric('storage', 'gauge', 'GiB'), payledger.register_credit_metric('bandwidth', 'counter', 'GiB');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "to": 10, "price": 0.09}, {"from": 10, "price": 0.08}]');
SELECT payledger.set_credit_price_tiers('bandwidth', '[{"from": 0, "price": 0.06}]');
SELECT payledger.define_credit_plan('starter', '{"storage": 5, "bandwidth": 50}');
SELECT payledger.set_credit_org('acme', 'starter');
SELECT payledger.define_credit_package('storage-1', 1, 'usd', 100, 'storage') IS NOT NULL AS package;
SELECT payledger.open_account('acme', 'usd') AS acme_usd, payledger.open_account('vendor', 'usd', 'revenue') AS vendor_usd \gset
SELECT payledger.transfer(payledger.open_account('world', 'usd', 'external', 'card', allow_negative => true), :'acme_usd', 500) IS NOT NULL AS funded;
\echo '--- acme buys the 1-credit storage package for 1.00 USD: a pay-in, the grant when it is PAID'
SELECT state, grant_id IS NOT NULL AS granted
  FROM payledger.buy_credit_package('acme', 'storage-1', jsonb_build_array(jsonb_build_object('account', :'acme_usd')), :'vendor_usd');
SELECT available, granted_active, by_metric FROM payledger.get_total_credits('acme');
\echo '--- storage grows past the plan (5 GiB): metering charges only the growth of the overage'
SELECT payledger.record_usage('acme', 'storage', 8) AS storage_gib;
SELECT payledger.meter_org('acme') AS metered;
SELECT metric, overage, payledger.credits_of(cost) AS cost, payledger.credits_of(charged) AS charged, blocked
  FROM payledger.credit_meters WHERE org_id = 'acme';
SELECT payledger.record_usage('acme', 'storage', 20) AS storage_gib;
SELECT payledger.meter_org('acme') AS metered;
\echo 'out of credits: storage is blocked (uploads refused), bandwidth is not (downloads work)'
SELECT metric, overage, payledger.credits_of(cost) AS cost, payledger.credits_of(charged) AS charged, blocked
  FROM payledger.credit_meters WHERE org_id = 'acme';
SELECT payledger.credit_access('acme', '{storage}') AS upload, payledger.credit_access('acme', '{bandwidth}') AS download;
SELECT topic, payload ->> 'threshold' AS threshold FROM payledger.events WHERE owner_id = 'acme' ORDER BY id;
\echo '--- the monthly history'
SELECT month, metric, usage, monthly_limit, overage, credits_used, paid_used, closing_balance
  FROM payledger.credit_history('acme', 2) WHERE metric <> '*' ORDER BY month DESC, metric;

\echo '--- invariants (ledger, pay-ins, jobs): no violation'
SELECT count(*) AS violations FROM payledger.check_invariants();
