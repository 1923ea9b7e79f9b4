-- Pay-ins and pay-outs: creation by several methods, every transition, every
-- invariant violation with its SQLSTATE, refunds, retries, statistics.
\set db t_payins
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql

---------------------------------------------------------------------------
-- Registries
---------------------------------------------------------------------------
SELECT payledger.register_payin_type('ITEM_CREATE', 'post an item');
SELECT payledger.register_payin_type('ZAP', 'zap an item');
SELECT payledger.register_payin_type('BOOST', 'boost an item', max_retries => 1);
SELECT payledger.register_payin_type('MEDIA_UPLOAD', 'upload media with an item');
SELECT payledger.register_payin_type('TERRITORY_BILLING', 'bill a territory', allow_external => false);
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdraw sats', allow_external => false, withdrawal => true);
SELECT payledger.register_payout_type(t, initcap(replace(t, '_', ' ')))
  FROM unnest(ARRAY['TERRITORY_REVENUE', 'REWARDS_POOL', 'ZAP', 'SYSTEM_REVENUE', 'ROUTING_FEE', 'WITHDRAWAL']) t;
SELECT payledger.register_payin_type('ZAP', 'zap an item');   -- again: a no-op
SELECT t_try($$SELECT payledger.register_payin_type('ZAP', 'zap', allow_external => false)$$);
SELECT t_try($$SELECT payledger.register_payin_type('bad type', 'x')$$);
SELECT t_try($$SELECT payledger.register_payin_type(NULL, 'x')$$);

INSERT INTO t_acc VALUES
  ('pay_world',  payledger.open_account('lightning', 'msat', 'external', 'main', allow_negative => true)),
  ('a_credits',  payledger.open_account('ann', 'msat', 'user', 'credits')),
  ('a_sats',     payledger.open_account('ann', 'msat', 'user', 'sats')),
  ('b_sats',     payledger.open_account('ben', 'msat', 'user', 'sats')),
  ('founder',    payledger.open_account('founder', 'msat', 'revenue', 'territory')),
  ('pool',       payledger.open_account('rewards', 'msat', 'rewards_pool')),
  ('sn',         payledger.open_account('sn', 'msat', 'revenue')),
  ('routing',    payledger.open_account('sn', 'msat', 'fees', 'routing'));

-- split rules: percents that sum to 100, the rounding remainder to one role
SELECT payledger.define_split_rule('territory', jsonb_build_array(
  jsonb_build_object('role', 'founder', 'payout_type', 'TERRITORY_REVENUE', 'percent', 70),
  jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 30, 'account', acc('pool'))), 'pool');
SELECT payledger.define_split_rule('zap_in_territory', jsonb_build_array(
  jsonb_build_object('role', 'receiver', 'payout_type', 'ZAP', 'percent', 70),
  jsonb_build_object('role', 'founder', 'payout_type', 'TERRITORY_REVENUE', 'percent', 21),
  jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 9, 'account', acc('pool'))), 'pool');
SELECT t_try($$SELECT payledger.define_split_rule('bad', '[{"role":"a","payout_type":"ZAP","percent":60}]', 'a')$$);
SELECT t_try($$SELECT payledger.define_split_rule('bad', '[{"role":"a","payout_type":"NOPE","percent":100}]', 'a')$$);
SELECT t_try($$SELECT payledger.define_split_rule('bad', '[{"role":"a","payout_type":"ZAP","percent":50},{"role":"a","payout_type":"ZAP","percent":50}]', 'a')$$);
SELECT t_try($$SELECT payledger.define_split_rule('bad', '[{"role":"a","payout_type":"ZAP","percent":100}]', 'b')$$);
SELECT t_try($$SELECT payledger.define_split_rule('bad', '{"role":"a"}', 'a')$$);
SELECT t_try($$SELECT payledger.define_split_rule('territory', '[{"role":"a","payout_type":"ZAP","percent":100}]', 'a')$$);
-- exact integer rounding: 70/21/9 of 1,001 floors to 700/210/90, the 1 left goes to the pool
SELECT e ->> 'role' AS role, e ->> 'type' AS type, (e ->> 'amount')::bigint AS amount
  FROM jsonb_array_elements(payledger.split_payouts('zap_in_territory', 1001,
                                                    jsonb_build_object('receiver', acc('b_sats'), 'founder', acc('founder')))) e;
SELECT t_try($$SELECT payledger.split_payouts('zap_in_territory', 1001, '{}')$$);
SELECT t_try($$SELECT payledger.split_payouts('nope', 1001, '{}')$$);

-- Ann has 20 sats of credits and 20 reward sats.
SELECT count(*) FROM (SELECT payledger.transfer(acc('pay_world'), acc('a_credits'), 20000),
                             payledger.transfer(acc('pay_world'), acc('a_sats'), 20000)) x;

-- helpers: Ann's methods, the territory payees, balances of interest
CREATE FUNCTION t_methods(VARIADIC m jsonb[]) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(m) $$;
CREATE FUNCTION t_ann() RETURNS jsonb LANGUAGE sql AS $$
  SELECT t_methods(jsonb_build_object('account', acc('a_credits')), jsonb_build_object('account', acc('a_sats')),
                   '{"external": "invoice", "unit": 1000}') $$;
CREATE FUNCTION t_payees() RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('founder', acc('founder')) $$;
CREATE FUNCTION t_balances() RETURNS TABLE (credits bigint, sats bigint, escrow bigint, founder bigint, pool bigint, payins bigint)
LANGUAGE sql AS $$
  SELECT payledger.balance(acc('a_credits')), payledger.balance(acc('a_sats')),
         coalesce((SELECT balance FROM payledger.accounts WHERE owner_id = 'ann' AND kind = 'payin_escrow'), 0),
         payledger.balance(acc('founder')), payledger.balance(acc('pool')), (SELECT count(*) FROM payledger.payins) $$;
CREATE FUNCTION t_legs(p uuid) RETURNS TABLE (seq smallint, method text, amount bigint) LANGUAGE sql AS $$
  SELECT seq, method, amount FROM payledger.payin_legs WHERE payin_id = p ORDER BY seq $$;
CREATE TABLE t_pay (name text PRIMARY KEY, id uuid NOT NULL);
CREATE FUNCTION pay(n text) RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT id FROM t_pay WHERE name = n $$;

---------------------------------------------------------------------------
-- The demo: a 100-sat action paid 20 credits + 20 reward sats + 60 by invoice
---------------------------------------------------------------------------
WITH p AS (SELECT * FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 100000,
             t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 20000),
                       jsonb_build_object('account', acc('a_sats'), 'amount', 20000),
                       '{"external": "invoice", "amount": 60000}'),
             split => 'territory', payees => t_payees(), idempotency_key => 'item-1'))
INSERT INTO t_pay SELECT 'item1', payin_id FROM p RETURNING (SELECT state FROM p), (SELECT custodial_amount FROM p),
                                                             (SELECT external_amount FROM p);
SELECT * FROM t_balances();          -- 40 sats wait in Ann's escrow; nothing is paid out yet
SELECT * FROM t_legs(pay('item1'));
SELECT type, amount, role FROM payledger.payouts WHERE payin_id = pay('item1') ORDER BY seq;
-- the same key and request returns the first pay-in; another request under it is a conflict
SELECT payin_id = pay('item1') AS same FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 100000,
             t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 20000),
                       jsonb_build_object('account', acc('a_sats'), 'amount', 20000),
                       '{"external": "invoice", "amount": 60000}'),
             split => 'territory', payees => t_payees(), idempotency_key => 'item-1');
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 99000, %L, split => 'territory',
                                                   payees => %L, idempotency_key => 'item-1')$$, t_ann(), t_payees()));
-- settling before the invoice exists is not a move the table allows
SELECT t_try(format($$SELECT state FROM payledger.settle_payin(%L)$$, pay('item1')));
SELECT * FROM payledger.transition_payin(pay('item1'), 'PENDING', external_ref => 'hash-item-1');
SELECT * FROM payledger.settle_payin(pay('item1'));
SELECT * FROM payledger.settle_payin(pay('item1'));     -- a second settler: changed = false, no error
SELECT * FROM payledger.fail_payin(pay('item1'));       -- too late to fail: changed = false, still PAID
SELECT * FROM t_balances();          -- founder 70, pool 30, escrow empty
SELECT to_state, from_state, failure_reason FROM payledger.payin_history WHERE payin_id = pay('item1') ORDER BY at;
SELECT journal_kind, owner_id, account_kind, account_name, amount, balance_before, balance_after
  FROM payledger.payin_audit(pay('item1'));

---------------------------------------------------------------------------
-- Methods in order, the remainder in whole units
---------------------------------------------------------------------------
SELECT payledger.transfer(acc('pay_world'), acc('a_credits'), 20500) IS NOT NULL AS topped_up;
-- 100 sats: credits pay 20.5, sats 0, the invoice must be whole sats, so credits pay 20 and the invoice 80
WITH p AS (SELECT * FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 100000, t_ann(),
                                                split => 'territory', payees => t_payees()))
INSERT INTO t_pay SELECT 'item2', payin_id FROM p RETURNING (SELECT state FROM p), (SELECT custodial_amount FROM p),
                                                             (SELECT external_amount FROM p);
SELECT * FROM t_legs(pay('item2'));
-- fully covered by balances: PAID in the creating transaction, pay-outs credited at once
WITH p AS (SELECT * FROM payledger.create_payin('ann', 'ZAP', 'msat', 400, t_ann(), split => 'zap_in_territory',
                                                payees => jsonb_build_object('receiver', acc('b_sats'), 'founder', acc('founder'))))
INSERT INTO t_pay SELECT 'zap1', payin_id FROM p RETURNING (SELECT state FROM p), (SELECT custodial_amount FROM p),
                                                            (SELECT external_amount FROM p);
SELECT type, amount FROM payledger.payouts WHERE payin_id = pay('zap1') ORDER BY seq;
SELECT payledger.balance(acc('b_sats')) AS ben_sats;

---------------------------------------------------------------------------
-- Bad input: a specific SQLSTATE, and nothing changes
---------------------------------------------------------------------------
CREATE TEMP TABLE t_before AS SELECT * FROM t_balances();
SELECT t_try($$SELECT payledger.create_payin(NULL, 'ZAP', 'msat', 1, '[]', '[]')$$);
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 0, %L, split => 'territory', payees => %L)$$, t_ann(), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'NOPE', 'msat', 1000, %L, split => 'territory', payees => %L)$$, t_ann(), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'eur', 1000, %L, split => 'territory', payees => %L)$$, t_ann(), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, '{}', split => 'territory', payees => %L)$$, t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, '[{"external": "invoice"}, {"account": %s}]', split => 'territory', payees => %L)$$, to_json(acc('a_sats')), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, '[{"account": "nope"}]', split => 'territory', payees => %L)$$, t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, '[{"account": "00000000-0000-0000-0000-000000000000"}]', split => 'territory', payees => %L)$$, t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('b_sats'))), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_sats')), jsonb_build_object('account', acc('a_sats'))), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'usd', 1000, %L, split => 'territory', payees => %L)$$, t_ann(), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L)$$, t_ann()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, %L, 'territory', %L)$$,
                    t_ann(), jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('b_sats'), 'amount', 1000)), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, %L)$$,
                    t_ann(), jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('b_sats'), 'amount', 999))));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, %L)$$,
                    t_ann(), jsonb_build_array(jsonb_build_object('type', 'NOPE', 'account', acc('b_sats'), 'amount', 1000))));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, %L)$$,
                    t_ann(), jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('alice_usd'), 'amount', 1000))));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, %L)$$,
                    t_ann(), jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', acc('b_sats'), 'amount', 1000.5))));
-- balances only, and they fall short
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'TERRITORY_BILLING', 'msat', 10000000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_credits')), jsonb_build_object('account', acc('a_sats'))), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'TERRITORY_BILLING', 'msat', 1000, %L, split => 'territory', payees => %L)$$, t_ann(), t_payees()));
-- explicit amounts: for every method or none, summing to the cost, covered by the balance
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 500), '{"external": "invoice"}'), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 500), '{"external": "invoice", "amount": 400}'), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 100000000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 99000000), '{"external": "invoice", "amount": 1000000}'), t_payees()));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1000, %L, split => 'territory', payees => %L)$$,
                    t_methods(jsonb_build_object('account', acc('a_credits'), 'amount', 0), '{"external": "invoice", "amount": 1000}'), t_payees()));
SELECT (SELECT row(t.*) FROM t_balances() t) = (SELECT row(b.*) FROM t_before b) AS nothing_changed;

---------------------------------------------------------------------------
-- Every transition: the table's moves succeed, every other move is PL020,
-- also for a direct UPDATE past the API
---------------------------------------------------------------------------
-- walk a pay-in to a state along the table (shortest path), with direct UPDATEs
CREATE FUNCTION t_walk(p uuid, target payledger.payin_state) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  path payledger.payin_state[];
  s payledger.payin_state;
BEGIN
  WITH RECURSIVE w(state, path) AS (
      SELECT x.state, ARRAY[x.state] FROM payledger.payins x WHERE x.id = p
      UNION ALL
      SELECT t.to_state, w.path || t.to_state FROM w JOIN payledger.payin_transitions t ON t.from_state = w.state
       WHERE NOT t.to_state = ANY (w.path))
  SELECT w.path INTO path FROM w WHERE w.state = target ORDER BY cardinality(w.path) LIMIT 1;
  IF path IS NULL THEN RETURN false; END IF;
  FOREACH s IN ARRAY path[2:] LOOP
    UPDATE payledger.payins SET state = s WHERE id = p;
  END LOOP;
  RETURN true;
END $$;
-- a fresh pay-in for each start: an invoice, a wrapped (p2p) invoice (the
-- receiver's 70 % by invoice), a withdrawal
CREATE FUNCTION t_fresh(start payledger.payin_state) RETURNS uuid LANGUAGE sql AS $$
  SELECT (payledger.create_payin('ann', CASE WHEN start = 'PENDING_WITHDRAWAL' THEN 'WITHDRAWAL' ELSE 'ITEM_CREATE' END,
            'msat', 2000,
            CASE WHEN start = 'PENDING_WITHDRAWAL' THEN t_methods(jsonb_build_object('account', acc('a_sats')))
                 WHEN start = 'PENDING_INVOICE_WRAP' THEN
                   t_methods(jsonb_build_object('account', acc('a_sats'), 'amount', 600),
                             jsonb_build_object('external', 'invoice', 'amount', 1400, 'p2p', true))
                 ELSE t_methods(jsonb_build_object('account', acc('a_sats'), 'amount', 1000),
                                jsonb_build_object('external', 'invoice', 'amount', 1000)) END,
            split => CASE WHEN start = 'PENDING_INVOICE_WRAP' THEN 'zap_in_territory' ELSE 'territory' END,
            payees => t_payees() || CASE WHEN start = 'PENDING_INVOICE_WRAP' THEN jsonb_build_object('receiver', acc('founder'))
                                         ELSE '{}' END)).payin_id $$;
SELECT payledger.transfer(acc('pay_world'), acc('a_sats'), 10000000) IS NOT NULL AS topped_up;
CREATE TEMP TABLE t_matrix AS
SELECT f.s AS from_state, t.s AS to_state,
       (SELECT x.start FROM unnest(ARRAY['PENDING_INVOICE_CREATION', 'PENDING_INVOICE_WRAP', 'PENDING_WITHDRAWAL']::payledger.payin_state[]) x(start)
         WHERE EXISTS (WITH RECURSIVE w(state) AS (SELECT x.start UNION SELECT tr.to_state FROM w JOIN payledger.payin_transitions tr ON tr.from_state = w.state)
                       SELECT 1 FROM w WHERE w.state = f.s) LIMIT 1) AS start
  FROM unnest(enum_range(NULL::payledger.payin_state)) f(s), unnest(enum_range(NULL::payledger.payin_state)) t(s)
 WHERE f.s <> t.s;
ALTER TABLE t_matrix ADD COLUMN result text;
DO $$
DECLARE r record; p uuid;
BEGIN
  FOR r IN SELECT * FROM t_matrix ORDER BY from_state, to_state LOOP
    p := t_fresh(r.start);
    PERFORM t_walk(p, r.from_state);
    UPDATE t_matrix SET result = t_try(format('UPDATE payledger.payins SET state = %L WHERE id = %L RETURNING NULL::text', r.to_state, p))
     WHERE from_state = r.from_state AND to_state = r.to_state;
  END LOOP;
END $$;
-- allowed moves (all succeed) ...
SELECT m.from_state, string_agg(m.to_state::text || CASE WHEN m.result = 'ok' THEN '' ELSE ' ' || m.result END, ', ' ORDER BY m.to_state) AS allowed
  FROM t_matrix m JOIN payledger.payin_transitions t USING (from_state, to_state) GROUP BY 1 ORDER BY 1;
-- ... and every other move is rejected with PL020
SELECT count(*) AS other_moves, count(*) FILTER (WHERE result LIKE 'PL020:%') AS rejected_pl020
  FROM t_matrix m WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_transitions t WHERE (t.from_state, t.to_state) = (m.from_state, m.to_state));
SELECT result FROM t_matrix WHERE from_state = 'PAID' AND to_state = 'FAILED';
-- the guarded API: a move the table does not allow from a pending state is an error ...
SELECT t_try(format($$SELECT state FROM payledger.transition_payin(%L, 'HELD')$$, t_fresh('PENDING_INVOICE_CREATION')));
-- ... and so is an unknown pay-in
SELECT t_try($$SELECT state FROM payledger.settle_payin('00000000-0000-0000-0000-000000000000')$$);
SELECT t_try($$SELECT state FROM payledger.transition_payin(NULL, 'PAID')$$);

---------------------------------------------------------------------------
-- Failure: reasons, and the custodial legs released
---------------------------------------------------------------------------
INSERT INTO t_pay VALUES ('f1', t_fresh('PENDING_INVOICE_CREATION')), ('f2', t_fresh('PENDING_INVOICE_CREATION')),
                         ('f3', t_fresh('PENDING_INVOICE_CREATION'));
SELECT * FROM payledger.fail_payin(pay('f1'));                             -- the state's default reason
SELECT * FROM payledger.fail_payin(pay('f2'), 'EXECUTION_FAILED');         -- the caller's reason wins
SELECT * FROM payledger.transition_payin(pay('f3'), 'PENDING', external_ref => 'hash-f3');
SELECT * FROM payledger.cancel_payin(pay('f3'));                           -- USER_CANCELLED, released at once
SELECT * FROM payledger.fail_payin(pay('f3'));                             -- keeps USER_CANCELLED, releases nothing more
SELECT p.state, p.failure_reason, p.external_cancel, r.kind, r.amount, r.reason
  FROM payledger.payins p JOIN payledger.payin_refunds r ON r.payin_id = p.id
 WHERE p.id IN (pay('f1'), pay('f2'), pay('f3')) ORDER BY p.id;
SELECT to_state, from_state, failure_reason FROM payledger.payin_history WHERE payin_id = pay('f3') ORDER BY at;
-- a reason on a move that is not a failure
SELECT t_try(format($$UPDATE payledger.payins SET state = 'PENDING', failure_reason = 'UNKNOWN_FAILURE' WHERE id = %L$$,
                    t_fresh('PENDING_INVOICE_CREATION')));

---------------------------------------------------------------------------
-- Invariant violations past the API (as a superuser): each has its SQLSTATE
---------------------------------------------------------------------------
SELECT t_try(format($$UPDATE payledger.payins SET cost = cost + 1 WHERE id = %L$$, pay('item1')));
SELECT t_try(format($$UPDATE payledger.payins SET paid_journal = NULL WHERE id = %L$$, pay('item1')));
SELECT t_try(format($$UPDATE payledger.payins SET refunded = 1 WHERE id = %L$$, pay('f1')));
SELECT t_try(format($$UPDATE payledger.payins SET successor_id = gen_random_uuid() WHERE id = %L$$, pay('item1')));
SELECT t_try(format($$UPDATE payledger.payin_legs SET amount = 0 WHERE payin_id = %L$$, pay('item1')));
SELECT t_try(format($$DELETE FROM payledger.payouts WHERE payin_id = %L$$, pay('item1')));
SELECT t_try(format($$DELETE FROM payledger.payins WHERE id = %L$$, pay('item1')));
SELECT t_try(format($$UPDATE payledger.payin_history SET at = now() WHERE payin_id = %L$$, pay('item1')));
-- a pay-in starts in a starting state; its pay-outs add up to its cost; its row agrees with itself
SELECT t_try($$INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at, created_at,
                                            custodial_amount, external_amount)
               VALUES (gen_random_uuid(), 'ann', 'ZAP', 'msat', 10, 'HELD', 'HELD', now(), now(), 10, 0)$$);
SELECT t_try(format($$INSERT INTO payledger.payouts VALUES (%L, 9, 'ZAP', %L, 'ben', 5)$$, pay('zap1'), acc('b_sats')));
SELECT t_try(format($$INSERT INTO payledger.payouts VALUES (gen_random_uuid(), 1, 'ZAP', %L, 'ben', 5)$$, acc('b_sats')));
SELECT t_try($$INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at, created_at,
                                            custodial_amount, external_amount, paid_journal)
               VALUES (gen_random_uuid(), 'ann', 'ZAP', 'msat', 10, 'PAID', 'PAID', now(), now(), 4, 0, gen_random_uuid())$$);
SELECT t_try($$INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at, created_at,
                                            custodial_amount, external_amount)
               VALUES (gen_random_uuid(), 'ann', 'ZAP', 'msat', 10, 'PAID', 'PAID', now(), now(), 10, 0)$$);
SELECT t_try($$INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at, created_at,
                                            custodial_amount, external_amount, escrow_account)
               VALUES (gen_random_uuid(), 'ann', 'ZAP', 'msat', 10, 'PENDING_INVOICE_CREATION', 'PENDING_INVOICE_CREATION',
                       now(), now(), 10, 0, gen_random_uuid())$$);
SELECT t_try($$INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at, created_at,
                                            custodial_amount, external_amount, escrow_account, failure_reason)
               VALUES (gen_random_uuid(), 'ann', 'ZAP', 'msat', 10, 'FAILED', 'PENDING_INVOICE_CREATION',
                       now(), now(), 10, 0, gen_random_uuid(), 'UNKNOWN_FAILURE')$$);

---------------------------------------------------------------------------
-- Child pay-ins move with their parent
---------------------------------------------------------------------------
INSERT INTO t_pay VALUES ('parent', t_fresh('PENDING_INVOICE_CREATION'));
INSERT INTO t_pay SELECT 'child', payin_id FROM payledger.create_payin('ann', 'MEDIA_UPLOAD', 'msat', 500,
    t_methods(jsonb_build_object('account', acc('a_sats'))),
    jsonb_build_array(jsonb_build_object('type', 'SYSTEM_REVENUE', 'account', acc('sn'), 'amount', 500)), parent => pay('parent'));
SELECT state, custodial_amount, external_amount FROM payledger.payins WHERE id = pay('child');
SELECT t_try(format($$SELECT state FROM payledger.fail_payin(%L)$$, pay('child')));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'MEDIA_UPLOAD', 'msat', 500, %L, %L, parent => %L)$$, t_ann(),
    jsonb_build_array(jsonb_build_object('type', 'SYSTEM_REVENUE', 'account', acc('sn'), 'amount', 500)), pay('parent')));
SELECT t_try(format($$SELECT payledger.create_payin('ann', 'MEDIA_UPLOAD', 'msat', 500, %L, %L, parent => %L)$$,
    t_methods(jsonb_build_object('account', acc('a_sats'))),
    jsonb_build_array(jsonb_build_object('type', 'SYSTEM_REVENUE', 'account', acc('sn'), 'amount', 500)), pay('item1')));
SELECT * FROM payledger.transition_payin(pay('parent'), 'PENDING');
SELECT * FROM payledger.settle_payin(pay('parent'));
SELECT id = pay('parent') AS is_parent, state FROM payledger.payins WHERE id IN (pay('parent'), pay('child')) ORDER BY 1;
SELECT payledger.balance(acc('sn')) AS system_revenue;
-- a failing parent releases its children's legs too
INSERT INTO t_pay VALUES ('parent2', t_fresh('PENDING_INVOICE_CREATION'));
INSERT INTO t_pay SELECT 'child2', payin_id FROM payledger.create_payin('ann', 'MEDIA_UPLOAD', 'msat', 700,
    t_methods(jsonb_build_object('account', acc('a_sats'))),
    jsonb_build_array(jsonb_build_object('type', 'SYSTEM_REVENUE', 'account', acc('sn'), 'amount', 700)), parent => pay('parent2'));
SELECT * FROM payledger.fail_payin(pay('parent2'), 'INVOICE_EXPIRED');
SELECT state, failure_reason, release_journal IS NOT NULL AS released FROM payledger.payins WHERE id = pay('child2');

---------------------------------------------------------------------------
-- Refunds of a PAID pay-in: new journals, in proportion to the pay-outs
---------------------------------------------------------------------------
SELECT payledger.balance(acc('a_credits')) AS credits_before;
SELECT t_mask(payledger.refund_payin(pay('item1'), 25000, reason => 'moderated', idempotency_key => 'refund-1')::text);
SELECT t_mask(payledger.refund_payin(pay('item1'), 25000, reason => 'moderated', idempotency_key => 'refund-1')::text);  -- replay
SELECT t_try(format($$SELECT payledger.refund_payin(%L, 1000, idempotency_key => 'refund-1')$$, pay('item1')));
SELECT r.seq, o.type, r.amount FROM payledger.payin_refunds r JOIN payledger.payouts o USING (payin_id, seq)
 WHERE r.payin_id = pay('item1') ORDER BY r.seq;
SELECT payledger.balance(acc('a_credits')) AS credits_after, refunded FROM payledger.payins WHERE id = pay('item1');
SELECT t_try(format($$SELECT payledger.refund_payin(%L, 75001)$$, pay('item1')));
SELECT t_try(format($$SELECT payledger.refund_payin(%L, 0)$$, pay('item1')));
SELECT t_try(format($$SELECT payledger.refund_payin(%L)$$, pay('f1')));
SELECT t_try($$SELECT payledger.refund_payin('00000000-0000-0000-0000-000000000000')$$);
SELECT t_mask(payledger.refund_payin(pay('item1'))::text);   -- the rest
SELECT refunded = cost AS fully_refunded FROM payledger.payins WHERE id = pay('item1');
SELECT o.type, o.amount, sum(r.amount) AS refunded FROM payledger.payouts o
  JOIN payledger.payin_refunds r USING (payin_id, seq) WHERE o.payin_id = pay('item1') GROUP BY o.seq, o.type, o.amount ORDER BY o.seq;

---------------------------------------------------------------------------
-- Retries: a new pay-in chained to the failed one; only one successor
---------------------------------------------------------------------------
INSERT INTO t_pay SELECT 'retry1', payin_id FROM payledger.retry_payin(pay('f1'),
    methods => t_methods(jsonb_build_object('account', acc('a_sats'), 'amount', 1000), '{"external": "invoice", "amount": 1000}'),
    policy => 'same_methods');
SELECT state, retry_count, predecessor_id = pay('f1') AS linked, genesis_id = pay('f1') AS genesis, retry_policy
  FROM payledger.payins WHERE id = pay('retry1');
SELECT successor_id = pay('retry1') AS successor_set FROM payledger.payins WHERE id = pay('f1');
SELECT t_try(format($$SELECT payledger.retry_payin(%L)$$, pay('f1')));
SELECT t_try(format($$SELECT payledger.retry_payin(%L)$$, pay('item1')));
SELECT * FROM payledger.fail_payin(pay('retry1'));
-- the second retry falls back to balances only (the invoice leg dropped), and chains to the genesis
INSERT INTO t_pay SELECT 'retry2', payin_id FROM payledger.retry_payin(pay('retry1'),
    methods => t_methods(jsonb_build_object('account', acc('a_sats'))), policy => 'custodial_fallback');
SELECT state, retry_count, genesis_id = pay('f1') AS genesis, retry_policy FROM payledger.payins WHERE id = pay('retry2');
-- BOOST allows one retry
-- (paid by invoice alone: nothing is debited, nothing released)
INSERT INTO t_pay SELECT 'boost', payin_id FROM payledger.create_payin('ann', 'BOOST', 'msat', 3000, '[{"external": "invoice"}]',
                                                                       split => 'territory', payees => t_payees());
SELECT * FROM payledger.transition_payin(pay('boost'), 'PENDING');
SELECT * FROM payledger.fail_payin(pay('boost'), 'INVOICE_EXPIRED');
SELECT t_try(format($$SELECT state FROM payledger.retry_payin(%L, idempotency_key => 'boost-retry')$$, pay('boost')));
SELECT t_try(format($$SELECT payledger.fail_payin(payin_id) FROM payledger.retry_payin(%L, idempotency_key => 'boost-retry')$$, pay('boost')));
SELECT t_try(format($$SELECT payledger.retry_payin(successor_id) FROM payledger.payins WHERE id = %L$$, pay('boost')));
SELECT retry_count, custodial_amount, release_journal IS NULL AS nothing_released FROM payledger.payins WHERE id = pay('boost');

---------------------------------------------------------------------------
-- Withdrawals wait for the outgoing payment
---------------------------------------------------------------------------
INSERT INTO t_pay SELECT 'wd', payin_id FROM payledger.create_payin('ann', 'WITHDRAWAL', 'msat', 10000,
    t_methods(jsonb_build_object('account', acc('a_sats'))),
    jsonb_build_array(jsonb_build_object('type', 'WITHDRAWAL', 'account', acc('pay_world'), 'amount', 9000),
                      jsonb_build_object('type', 'ROUTING_FEE', 'account', acc('routing'), 'amount', 1000)));
SELECT state, custodial_amount, external_amount FROM payledger.payins WHERE id = pay('wd');
SELECT * FROM payledger.settle_payin(pay('wd'));
SELECT payledger.balance(acc('routing')) AS routing_fees;

---------------------------------------------------------------------------
-- Statistics, audit, views
---------------------------------------------------------------------------
SELECT owner_id, direction, type, amount, count FROM payledger.payin_stats(now() - interval '1 day', now() + interval '1 day')
 WHERE owner_id IN ('ann', 'founder', 'rewards', 'ben', 'sn') ORDER BY owner_id, direction, type;
SELECT direction, type, amount, count FROM payledger.payin_stats(now() - interval '1 day', now() + interval '1 day', 'ben');
SELECT t_try($$SELECT count(*) FROM payledger.payin_audit('00000000-0000-0000-0000-000000000000')$$);
CREATE ROLE t_payer IN ROLE payledger_enduser;
SET ROLE t_payer;
SET payledger.owner_id = 'ben';
SELECT type, amount, credited FROM payledger.my_payouts ORDER BY seq;
SELECT count(*) AS ben_payins FROM payledger.my_payins;
SET payledger.owner_id = 'ann';
SELECT count(*) > 10 AS ann_payins, count(DISTINCT state) > 2 AS states FROM payledger.my_payins;
SELECT count(*) > 0 AS ann_history FROM payledger.my_payin_history;
SELECT t_try($$SELECT count(*) FROM payledger.payins$$);
SELECT t_try($$SELECT count(*) FROM payledger.payouts$$);
SELECT t_try($$SELECT payledger.create_payin('ann', 'ZAP', 'msat', 1, '[]', '[]')$$);
RESET payledger.owner_id;
RESET ROLE;
DROP ROLE t_payer;

SELECT count(*) AS violations FROM payledger.check_invariants();
