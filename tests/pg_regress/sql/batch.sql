-- transfer_batch: many transfers and hold operations in one call, each on its own.
\set VERBOSITY terse
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
