-- transfer_batch: many transfers and hold operations in one call, each on its own.
\set db t_batch
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.open_account('batch-a', 'msat') AS a \gset
SELECT payledger.open_account('batch-b', 'msat') AS b \gset
SELECT payledger.transfer(acc('world'), :'a', 1000) IS NOT NULL AS funded;

-- item 2 overdraws a after item 1; item 3 is valid again; bad items fail alone
SELECT item, status, journal_id IS NOT NULL AS has_journal, sqlstate, t_mask(message) AS message
  FROM payledger.transfer_batch(jsonb_build_array(
    jsonb_build_object('from', :'a', 'to', :'b', 'amount', 600),
    jsonb_build_object('from', :'a', 'to', :'b', 'amount', 600),
    jsonb_build_object('from', :'a', 'to', :'b', 'amount', 400),
    jsonb_build_object('from', :'a', 'to', :'b', 'amount', -1),
    jsonb_build_object('op', 'teleport'),
    '"not an object"'::jsonb,
    jsonb_build_object('from', :'b', 'to', :'a', 'amount', 50, 'idempotency_key', 'batch-k'),
    jsonb_build_object('from', :'b', 'to', :'a', 'amount', 50, 'idempotency_key', 'batch-k'),
    jsonb_build_object('from', :'b', 'to', :'a', 'amount', 51, 'idempotency_key', 'batch-k')))
 ORDER BY item;
SELECT payledger.balance(:'a') AS a, payledger.balance(:'b') AS b;
SELECT payledger.transfer(acc('world'), :'a', 10000) IS NOT NULL AS funded_again;

-- holds in a batch: create, then post and void in a later call
SELECT item, status, hold_id IS NOT NULL AS has_hold, sqlstate
  FROM payledger.transfer_batch(jsonb_build_array(
    jsonb_build_object('op', 'hold', 'from', :'a', 'to', :'b', 'amount', 100, 'idempotency_key', 'bh-1'),
    jsonb_build_object('op', 'hold', 'from', :'a', 'to', :'b', 'amount', 100, 'idempotency_key', 'bh-2'),
    jsonb_build_object('op', 'hold', 'from', :'a', 'to', :'b', 'amount', 10000)))
 ORDER BY item;
SELECT payledger.available_balance(:'a') AS a_available;
SELECT item, status, sqlstate
  FROM payledger.transfer_batch(jsonb_build_array(
    jsonb_build_object('op', 'post_hold', 'hold', (SELECT id FROM payledger.holds WHERE idempotency_key = 'bh-1')),
    jsonb_build_object('op', 'void_hold', 'hold', (SELECT id FROM payledger.holds WHERE idempotency_key = 'bh-2')),
    jsonb_build_object('op', 'void_hold', 'hold', (SELECT id FROM payledger.holds WHERE idempotency_key = 'bh-1'))))
 ORDER BY item;
SELECT payledger.balance(:'a') AS a, payledger.available_balance(:'a') AS a_available;

-- whole-call errors
SELECT t_try($$SELECT count(*) FROM payledger.transfer_batch('{"from": 1}')$$);
SELECT t_try($$SELECT count(*) FROM payledger.transfer_batch(NULL)$$);
SELECT count(*) AS empty_batch FROM payledger.transfer_batch('[]');
SET payledger.max_batch_size = 2;
SELECT t_try($$SELECT count(*) FROM payledger.transfer_batch('[{},{},{}]')$$);
RESET payledger.max_batch_size;

-- a large batch over a few accounts
SELECT count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status = 'error') AS failed
  FROM payledger.transfer_batch((
    SELECT jsonb_agg(jsonb_build_object('from', CASE WHEN g % 2 = 0 THEN :'a' ELSE :'b' END,
                                        'to', CASE WHEN g % 2 = 0 THEN :'b' ELSE :'a' END, 'amount', 1))
      FROM generate_series(1, 1000) g));
SELECT payledger.balance(:'a') AS a, payledger.balance(:'b') AS b;
SELECT * FROM payledger.check_invariants();

-- hostile input never crashes the backend nor leaks an internal error: every
-- item gets a 22023/PL001-class answer
SELECT item, status, sqlstate FROM payledger.transfer_batch($$[
  {"from": 1e300, "to": "x", "amount": 1},
  {"postings": [{"account": null, "amount": 1}, {"account": [], "amount": -1}]},
  {"postings": "[]"},
  {"from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": 1e30},
  {"from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": -9223372036854775808},
  {"from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": "12abc"},
  {"op": "post_hold", "hold": "00000000-0000-0000-0000-000000000000", "amount": {}},
  {"op": "hold", "from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": 5, "timeout_ms": "soon"},
  {"op": "void_hold"},
  {"op": 7},
  {"from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": 1, "effective_at": "2026-13-45T99:00:00Z"},
  {"from": "00000000-0000-0000-0000-000000000000", "to": "00000000-0000-0000-0000-000000000001", "amount": 1, "metadata": "x"},
  null,
  [],
  "just a string"
]$$::jsonb) ORDER BY item;
SELECT t_try($$SELECT count(*) FROM payledger.transfer_batch((SELECT jsonb_agg(jsonb_build_object('from', repeat('x', 100000))) FROM generate_series(1, 3)))$$);
SELECT t_try(format($q$SELECT payledger.post_journal((SELECT jsonb_agg(jsonb_build_object('account', %L, 'amount', 1)) FROM generate_series(1, 10001)))$q$, acc('alice')));
-- a huge bad value is quoted short in the message
SELECT sqlstate, length(message) < 120 AS short_message
  FROM payledger.transfer_batch(jsonb_build_array(jsonb_build_object('from', repeat('x', 100000), 'to', 'y', 'amount', 1)));
