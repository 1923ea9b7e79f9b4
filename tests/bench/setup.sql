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
-- the same idle accounts as payledger's: with only its 51 rows, the floor's
-- lookups were sequential scans whose speed swung with the table's bloat
-- (2,000 to 4,500 transfers/s from one round to the next)
INSERT INTO floor_accounts (id, balance) SELECT id, 0 FROM payledger.accounts WHERE owner_id LIKE 'idle-%';
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

-- What the issues' model asks for at the least, in the floor's style (plain
-- PL/pgSQL, no checks, no guards): how much of a gap to the floor is the
-- model's own cost rather than payledger's checks.
--   floor_model_transfer  the floor, plus the transfer's journal row, in a
--                         SECURITY DEFINER function with a pinned search_path
--                         (the security model)
--   floor_payin           the bench pay-in's rows, all written by one
--                         statement: 5 account updates, a journal, 5 entries
--                         (one per account), the pay-in, 3 legs, 2 pay-outs
--                         and its history row
CREATE TABLE floor_journals (id uuid PRIMARY KEY, kind text NOT NULL, idempotency_key text, metadata jsonb,
                             created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE floor_jentries (account_id uuid, seq bigint, journal_id uuid NOT NULL, amount bigint NOT NULL,
                             balance_after bigint NOT NULL, PRIMARY KEY (account_id, seq));
CREATE FUNCTION floor_model_transfer(a uuid, b uuid, amt bigint) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_catalog, pg_temp AS $$
DECLARE
  j uuid := gen_random_uuid();
BEGIN
  PERFORM 1 FROM floor_accounts WHERE id IN (a, b) ORDER BY id FOR NO KEY UPDATE;
  UPDATE floor_accounts SET balance = balance - amt, seq = seq + 1 WHERE id = a;
  UPDATE floor_accounts SET balance = balance + amt, seq = seq + 1 WHERE id = b;
  INSERT INTO floor_journals (id, kind) VALUES (j, 'transfer');
  INSERT INTO floor_jentries SELECT id, seq, j, CASE WHEN id = a THEN -amt ELSE amt END, balance
    FROM floor_accounts WHERE id IN (a, b);
END;
$$;
INSERT INTO floor_accounts (id, balance)
  SELECT (m ->> 'account')::uuid, 1000000000000000 FROM bench_payer, jsonb_array_elements(methods) m
   WHERE NOT EXISTS (SELECT 1 FROM floor_accounts f WHERE f.id = (m ->> 'account')::uuid);
CREATE TABLE floor_payer AS
  SELECT n, owner, ARRAY(SELECT (m ->> 'account')::uuid FROM jsonb_array_elements(methods) WITH ORDINALITY x(m, o) ORDER BY o) AS ids
    FROM bench_payer;
CREATE UNIQUE INDEX ON floor_payer (n);
CREATE TABLE floor_payins (id uuid PRIMARY KEY, owner_id text NOT NULL, type text NOT NULL, cost bigint NOT NULL,
                           state text NOT NULL, journal_id uuid, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE floor_legs (payin_id uuid, seq int, account_id uuid, amount bigint NOT NULL, PRIMARY KEY (payin_id, seq));
CREATE TABLE floor_payouts (payin_id uuid, seq int, type text NOT NULL, account_id uuid NOT NULL, amount bigint NOT NULL,
                            PRIMARY KEY (payin_id, seq));
CREATE TABLE floor_history (payin_id uuid, to_state text, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (payin_id, to_state));
CREATE FUNCTION floor_payin(payer int, founder int, pool int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  p floor_payer;
  ids uuid[];
  amts bigint[] := ARRAY[-30, -30, -40, 70, 30];
  j uuid := gen_random_uuid();
  pid uuid := gen_random_uuid();
BEGIN
  SELECT * INTO p FROM floor_payer WHERE n = payer;
  ids := p.ids || ARRAY[(SELECT id FROM bench_acc WHERE n = founder), (SELECT id FROM bench_acc WHERE n = pool)];
  PERFORM 1 FROM floor_accounts WHERE id = ANY (ids) ORDER BY id FOR NO KEY UPDATE;
  -- (founder and pool may be one account: postings are netted per account)
  WITH u AS (
    UPDATE floor_accounts f SET balance = f.balance + u.amt, seq = f.seq + 1
      FROM (SELECT x.id, sum(x.amt) AS amt FROM unnest(ids, amts) x(id, amt) GROUP BY x.id) u WHERE f.id = u.id
    RETURNING f.id, f.seq, f.balance, u.amt),
  jr AS (INSERT INTO floor_journals (id, kind) VALUES (j, 'payin')),
  pi AS (INSERT INTO floor_payins (id, owner_id, type, cost, state, journal_id)
         VALUES (pid, p.owner, 'ITEM_CREATE', 100, 'PAID', j)),
  lg AS (INSERT INTO floor_legs SELECT pid, o, x.id, -x.amt FROM unnest(ids[1:3], amts[1:3]) WITH ORDINALITY x(id, amt, o)),
  po AS (INSERT INTO floor_payouts SELECT pid, o, t, x.id, x.amt
           FROM unnest(ARRAY['TERRITORY_REVENUE', 'REWARDS_POOL'], ids[4:5], amts[4:5]) WITH ORDINALITY x(t, id, amt, o)),
  hi AS (INSERT INTO floor_history (payin_id, to_state) VALUES (pid, 'PAID'))
  INSERT INTO floor_jentries SELECT u.id, u.seq, j, u.amt, u.balance FROM u;
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
