-- payledger demo: the ledger core. Run by scripts/demo.sh against a throwaway cluster.
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

\echo '--- invariants: no violation'
SELECT count(*) AS violations FROM payledger.check_invariants();
