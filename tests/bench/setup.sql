-- Benchmark fixtures: the same 50 accounts (plus one hot account, n = 0) for payledger and the floor.
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3);
SELECT payledger.open_account('bench-world', 'msat', 'external', 'main', true) AS world \gset
CREATE TABLE bench_acc AS
  SELECT n, payledger.open_account('bench-' || n, 'msat') AS id FROM generate_series(0, :accounts) n;
CREATE UNIQUE INDEX ON bench_acc (n);
-- the hot account (n = 0) is sharded, as the docs advise for accounts many sessions credit at once
SELECT payledger.set_account_shards((SELECT id FROM bench_acc WHERE n = 0), 32);
-- a realistic ledger holds more accounts than the active ones
SELECT count(*) FROM (SELECT payledger.open_account('idle-' || g, 'msat') FROM generate_series(1, 10000) g) s;
SELECT count(*) FROM (SELECT payledger.transfer(:'world', id, 1000000000000000) FROM bench_acc) s;

-- The floor: the least a correct two-leg transfer must do, in one server-side call.
CREATE TABLE floor_accounts (id uuid PRIMARY KEY, balance bigint NOT NULL, seq bigint NOT NULL DEFAULT 0);
CREATE TABLE floor_entries (account_id uuid, seq bigint, amount bigint NOT NULL, balance_after bigint NOT NULL,
                            PRIMARY KEY (account_id, seq));
INSERT INTO floor_accounts (id, balance) SELECT id, 1000000000000000 FROM bench_acc;
CREATE FUNCTION floor_transfer(a uuid, b uuid, amt bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM floor_accounts WHERE id IN (a, b) ORDER BY id FOR NO KEY UPDATE;
  UPDATE floor_accounts SET balance = balance - amt, seq = seq + 1 WHERE id = a;
  UPDATE floor_accounts SET balance = balance + amt, seq = seq + 1 WHERE id = b;
  INSERT INTO floor_entries SELECT id, seq, CASE WHEN id = a THEN -amt ELSE amt END, balance
    FROM floor_accounts WHERE id IN (a, b);
END;
$$;

-- Pay-ins: each payer pays 100 msat from three balances (30 + 30 + 40), and two
-- pay-outs (70 to a founder, 30 to a pool) are credited at once (PAID).
SELECT payledger.register_payin_type('ITEM_CREATE', 'post an item');
SELECT payledger.register_payout_type('TERRITORY_REVENUE', 'to the founder');
SELECT payledger.register_payout_type('REWARDS_POOL', 'to the rewards pool');
CREATE TABLE bench_payer AS
  SELECT n, 'bench-' || n AS owner, jsonb_build_array(
           jsonb_build_object('account', id, 'amount', 30),
           jsonb_build_object('account', payledger.open_account('bench-' || n, 'msat', 'user', 'credits'), 'amount', 30),
           jsonb_build_object('account', payledger.open_account('bench-' || n, 'msat', 'user', 'sats'), 'amount', 40)) AS methods
    FROM bench_acc WHERE n > 0;
CREATE UNIQUE INDEX ON bench_payer (n);
SELECT count(*) FROM (SELECT payledger.transfer(:'world', (m ->> 'account')::uuid, 1000000000000000)
                        FROM bench_payer, jsonb_array_elements(methods) m WHERE m ->> 'account' <> (SELECT id FROM bench_acc b WHERE b.n = bench_payer.n)::text) s;
-- PL/pgSQL, like floor_transfer: its statements' plans are cached per session.
CREATE FUNCTION bench_payin(payer int, founder int, pool int) RETURNS payledger.payin_state LANGUAGE plpgsql AS $$
BEGIN
  RETURN (SELECT (payledger.create_payin(p.owner, 'ITEM_CREATE', 'msat', 100, p.methods, jsonb_build_array(
            jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', (SELECT id FROM bench_acc WHERE n = founder), 'amount', 70),
            jsonb_build_object('type', 'REWARDS_POOL', 'account', (SELECT id FROM bench_acc WHERE n = pool), 'amount', 30)))).state
    FROM bench_payer p WHERE p.n = payer);
END;
$$;

-- A ledger with some pay-in history, so that the planner knows the tables are not empty.
SELECT count(bench_payin(1 + g % :accounts, 1 + (g + 7) % :accounts, 1 + (g + 13) % :accounts)) FROM generate_series(1, 2000) g;

-- Pre-built batches of 1,000 random transfers among the spread accounts.
CREATE TABLE bench_batches AS
  SELECT k, jsonb_agg(jsonb_build_object('from', (SELECT id FROM bench_acc WHERE n = x),
                                         'to', (SELECT id FROM bench_acc WHERE n = 1 + (x + d - 1) % :accounts),
                                         'amount', 1)) AS items
    FROM (SELECT k, 1 + (random() * (:accounts - 1))::int AS x, 1 + (random() * (:accounts - 2))::int AS d
            FROM generate_series(1, 20) k, generate_series(1, 1000) g) s
   GROUP BY k;
VACUUM ANALYZE;
