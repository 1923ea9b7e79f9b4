#!/usr/bin/env bash
# Randomized concurrent workload: many pgbench clients run random transfers,
# multi-leg journals, batches, holds, posts, voids and expiry sweeps over a few
# hot accounts. Expected refusals (insufficient funds, resolved holds) are
# counted; any other error, a deadlock included, fails the run. Afterwards
# check_invariants() must be empty and balances must match a recomputation.
# Two of the accounts are sharded.
CLUSTER_CONF="deadlock_timeout = 100ms"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
CLIENTS=${CLIENTS:-16}
SECONDS_=${DURATION:-20}

psql_ -d postgres <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3);
CREATE TABLE w_acc AS SELECT n, payledger.open_account('w' || n, 'msat', CASE WHEN n = 0 THEN 'external' ELSE 'user' END,
                                                       'main', n = 0) AS id FROM generate_series(0, 12) n;
-- two of the accounts are sharded (hot): credits spread over shards, debits see them
SELECT payledger.set_account_shards(id, 4) FROM w_acc WHERE n IN (1, 2);
SELECT count(*) FROM (SELECT payledger.transfer((SELECT id FROM w_acc WHERE n = 0), id, 5000) FROM w_acc WHERE n > 0) s;
CREATE TABLE w_outcome (code text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE FUNCTION w_acc(k int) RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT id FROM w_acc WHERE n = k $$;
-- One random operation; expected refusals are recorded, everything else propagates.
CREATE FUNCTION w_step(op int, a int, b int, c int, amt int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  h uuid;
BEGIN
  BEGIN
    CASE op
    WHEN 0, 1, 2 THEN PERFORM payledger.transfer(w_acc(a), w_acc(b), amt);
    WHEN 3 THEN PERFORM payledger.post_journal(jsonb_build_array(
                  jsonb_build_object('account', w_acc(a), 'amount', -2 * amt),
                  jsonb_build_object('account', w_acc(b), 'amount', amt),
                  jsonb_build_object('account', w_acc(c), 'amount', amt)));
    WHEN 4 THEN PERFORM payledger.create_hold(w_acc(a), w_acc(b), amt, timeout => (1 + amt % 200) * interval '1 millisecond');
    WHEN 5 THEN
      SELECT id INTO h FROM payledger.holds WHERE status = 'pending' ORDER BY random() LIMIT 1;
      IF h IS NOT NULL THEN PERFORM payledger.post_hold(h, 1 + amt % 50); END IF;
    WHEN 6 THEN
      SELECT id INTO h FROM payledger.holds WHERE status = 'pending' ORDER BY random() LIMIT 1;
      IF h IS NOT NULL THEN PERFORM payledger.void_hold(h); END IF;
    WHEN 7 THEN PERFORM payledger.expire_holds(10);
    WHEN 8 THEN PERFORM count(*) FROM payledger.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
                  'from', w_acc(1 + (a + g) % 12), 'to', w_acc(1 + (b + 3 * g) % 12), 'amount', amt))
                  FROM generate_series(1, 20) g WHERE (a + g) % 12 <> (b + 3 * g) % 12));
    ELSE PERFORM payledger.transfer(w_acc(a), w_acc(b), amt, idempotency_key => 'w-' || (amt % 40));
    END CASE;
    INSERT INTO w_outcome VALUES ('ok', 1) ON CONFLICT (code) DO UPDATE SET n = w_outcome.n + 1;
  EXCEPTION WHEN SQLSTATE 'PL006' OR SQLSTATE 'PL010' OR SQLSTATE 'PL011' OR SQLSTATE 'PL012' OR SQLSTATE 'PL008' THEN
    INSERT INTO w_outcome VALUES (SQLSTATE, 1) ON CONFLICT (code) DO UPDATE SET n = w_outcome.n + 1;
  END;
END;
$$;
SQL
cat >"$DIR/workload.sql" <<'SQL'
\set op random(0, 9)
\set a random(1, 12)
\set d random(1, 11)
\set c random(0, 12)
\set amt random(1, 400)
SELECT w_step(:op, :a, 1 + (:a + :d - 1) % 12, :c, :amt);
SQL
chown postgres "$DIR/workload.sql"
as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c "$CLIENTS" -j 2 -T "$SECONDS_" \
  -f "$DIR/workload.sql" postgres > "$DIR/pgbench.log" 2>&1 || { cat "$DIR/pgbench.log"; fail "a client failed"; }
grep -E "^(number of transactions actually processed|number of failed|tps)" "$DIR/pgbench.log" || true
grep -q "number of failed transactions: 0 " "$DIR/pgbench.log" || { cat "$DIR/pgbench.log"; fail "failed transactions"; }
psql_ -d postgres -c "SELECT code, n FROM w_outcome ORDER BY code"
v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { psql_ -d postgres -c "SELECT * FROM payledger.check_invariants() LIMIT 20"; fail "$v invariant violations"; }
m=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.accounts a WHERE a.balance <>
      coalesce((SELECT sum(amount) FROM payledger.entries e WHERE e.account_id = a.id), 0)")
[ "$m" = 0 ] || fail "$m balances differ from the sum of their entries"
echo "concurrency: $CLIENTS clients for ${SECONDS_}s, no deadlock, invariants hold"
