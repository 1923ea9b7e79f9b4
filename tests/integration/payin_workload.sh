#!/usr/bin/env bash
# Randomized concurrent pay-in workload: many pgbench clients create pay-ins
# (balances only, balances + invoice, explicit splits, split rules, children),
# mark invoices created, settle, fail, cancel, refund in part and retry, over
# a few payers and one hot (sharded) payee. Expected refusals (insufficient
# funds, a reused key, already retried, nothing left to refund) are counted; a lost race is
# a result (changed = false), not an error; any other error, a deadlock
# included, fails the run. Afterwards check_invariants() must be empty (legs,
# pay-outs, escrow, releases, refunds, history, retry chains) and every
# balance must equal the sum of its entries.
CLUSTER_CONF="deadlock_timeout = 100ms"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
CLIENTS=${CLIENTS:-16}
SECONDS_=${DURATION:-20}

psql_ -d postgres <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3);
SELECT payledger.register_payin_type('ITEM', 'an item', max_retries => 3);
SELECT payledger.register_payin_type('MEDIA', 'media under an item');
SELECT payledger.register_payout_type(t, t) FROM unnest(ARRAY['TERRITORY_REVENUE', 'REWARDS_POOL', 'ZAP']) t;
CREATE TABLE w AS SELECT payledger.open_account('world', 'msat', 'external', 'main', true) AS world,
                         payledger.open_account('founder', 'msat', 'revenue') AS founder,
                         payledger.open_account('rewards', 'msat', 'rewards_pool') AS pool;
SELECT payledger.set_account_shards(founder, 8) FROM w;
SELECT payledger.define_split_rule('territory', jsonb_build_array(
  jsonb_build_object('role', 'founder', 'payout_type', 'TERRITORY_REVENUE', 'percent', 70, 'account', founder),
  jsonb_build_object('role', 'pool', 'payout_type', 'REWARDS_POOL', 'percent', 30, 'account', pool)), 'pool') FROM w;
CREATE TABLE w_payer AS SELECT n, payledger.open_account('p' || n, 'msat', 'user', 'credits') AS credits,
                               payledger.open_account('p' || n, 'msat', 'user', 'sats') AS sats
  FROM generate_series(1, 8) n;
SELECT count(*) FROM w, w_payer, LATERAL (SELECT payledger.transfer(world, credits, 200000), payledger.transfer(world, sats, 200000)) x;
CREATE TABLE w_outcome (code text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE FUNCTION w_count(code text) RETURNS void LANGUAGE sql AS $$
  INSERT INTO w_outcome VALUES (code, 1) ON CONFLICT (code) DO UPDATE SET n = w_outcome.n + 1 $$;
-- a random pay-in in one of the given states (children move only with their parent)
CREATE FUNCTION w_pick(states payledger.payin_state[]) RETURNS uuid LANGUAGE sql AS $$
  SELECT id FROM payledger.payins TABLESAMPLE SYSTEM (20) WHERE state = ANY (states) AND parent_id IS NULL LIMIT 1 $$;
CREATE FUNCTION w_step(op int, who int, amt int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  p w_payer;
  x uuid;
  r record;
  cost bigint := 1000 * (1 + amt % 90);
BEGIN
  SELECT * INTO p FROM w_payer WHERE n = who;
  BEGIN
    CASE op
    WHEN 0, 1, 2 THEN  -- balances first, an invoice for the rest
      PERFORM payledger.create_payin('p' || who, 'ITEM', 'msat', cost,
        jsonb_build_array(jsonb_build_object('account', p.credits), jsonb_build_object('account', p.sats),
                          jsonb_build_object('external', 'invoice', 'unit', 1000)),
        split => 'territory', idempotency_key => CASE WHEN amt % 7 = 0 THEN 'k' || (amt % 50) END,
        metadata => jsonb_build_object('k', amt % 50, 'who', who, 'cost', cost));
    WHEN 3 THEN  -- an explicit split, paying another payer directly
      PERFORM payledger.create_payin('p' || who, 'ITEM', 'msat', 10000,
        jsonb_build_array(jsonb_build_object('account', p.credits, 'amount', 2000),
                          jsonb_build_object('account', p.sats, 'amount', 2000),
                          jsonb_build_object('external', 'invoice', 'amount', 6000)),
        jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', (SELECT sats FROM w_payer WHERE n = 1 + who % 8), 'amount', 7000),
                          jsonb_build_object('type', 'REWARDS_POOL', 'account', (SELECT pool FROM w), 'amount', 3000)));
    WHEN 4 THEN  -- the invoice exists; sometimes a child joins first
      x := w_pick('{PENDING_INVOICE_CREATION}');
      IF x IS NOT NULL AND amt % 3 = 0 THEN
        BEGIN
          PERFORM payledger.create_payin(owner_id, 'MEDIA', 'msat', 500,
            jsonb_build_array(jsonb_build_object('account', (SELECT sats FROM w_payer WHERE 'p' || n = owner_id))),
            split => 'territory', parent => id)
            FROM payledger.payins WHERE id = x;
          PERFORM w_count('child');
        EXCEPTION WHEN SQLSTATE 'PL020' THEN
          PERFORM w_count('PL020 parent moved on');  -- the parent was settled or failed meanwhile
        END;
      END IF;
      IF x IS NOT NULL THEN
        SELECT * INTO r FROM payledger.transition_payin(x, 'PENDING', external_ref => 'hash-' || x);
        PERFORM w_count(CASE WHEN r.changed THEN 'moved' ELSE 'lost race' END);
      END IF;
    WHEN 5, 6 THEN
      x := w_pick('{PENDING}');
      IF x IS NOT NULL THEN
        SELECT * INTO r FROM payledger.settle_payin(x);
        PERFORM w_count(CASE WHEN r.changed THEN 'settled' ELSE 'lost race' END);
      END IF;
    WHEN 7 THEN
      x := w_pick('{PENDING_INVOICE_CREATION,PENDING}');
      IF x IS NOT NULL THEN
        SELECT * INTO r FROM payledger.fail_payin(x, 'INVOICE_EXPIRED');
        PERFORM w_count(CASE WHEN r.changed THEN 'failed' ELSE 'lost race' END);
      END IF;
    WHEN 8 THEN
      x := w_pick('{PENDING}');
      IF x IS NOT NULL THEN
        SELECT * INTO r FROM payledger.cancel_payin(x);
        PERFORM w_count(CASE WHEN r.changed THEN 'cancelled' ELSE 'lost race' END);
        IF r.changed THEN PERFORM payledger.fail_payin(x); END IF;
      END IF;
    WHEN 9 THEN
      x := w_pick('{PAID}');
      IF x IS NOT NULL THEN PERFORM payledger.refund_payin(x, 1 + amt * 10, reason => 'workload'); END IF;
    ELSE
      x := w_pick('{FAILED}');
      IF x IS NOT NULL THEN PERFORM payledger.retry_payin(x); END IF;
    END CASE;
    PERFORM w_count('ok');
  EXCEPTION WHEN SQLSTATE 'PL006' OR SQLSTATE 'PL008' OR SQLSTATE 'PL023' OR SQLSTATE 'PL024' THEN
    -- insufficient funds; a key reused for another pay-in; nothing left to
    -- refund; already retried, a child, or out of retries
    PERFORM w_count(SQLSTATE);
  END;
END;
$$;
SQL
cat >"$DIR/workload.sql" <<'SQL'
\set op random(0, 10)
\set who random(1, 8)
\set amt random(1, 4000)
SELECT w_step(:op, :who, :amt);
SQL
chown postgres "$DIR/workload.sql"
as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c "$CLIENTS" -j 2 -T "$SECONDS_" --failures-detailed --verbose-errors \
  -f "$DIR/workload.sql" postgres > "$DIR/pgbench.log" 2>&1 || { cat "$DIR/pgbench.log"; fail "a client failed"; }
grep -E "^(number of transactions actually processed|number of failed|tps)" "$DIR/pgbench.log" || true
grep -q "number of failed transactions: 0 " "$DIR/pgbench.log" || { grep -E -A6 "ERROR|failures" "$DIR/pgbench.log" | head -60 || true; fail "failed transactions"; }
psql_ -d postgres -c "SELECT code, n FROM w_outcome ORDER BY code" \
      -c "SELECT state, count(*), sum(cost) AS cost, sum(refunded) AS refunded FROM payledger.payins GROUP BY 1 ORDER BY 1"
v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { psql_ -d postgres -c "SELECT * FROM payledger.check_invariants() LIMIT 20"; fail "$v invariant violations"; }
m=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.accounts a WHERE a.balance <>
      coalesce((SELECT sum(amount) FROM payledger.entries e WHERE e.account_id = a.id), 0)")
[ "$m" = 0 ] || fail "$m balances differ from the sum of their entries"
n=$(psql_ -d postgres -At -c "SELECT count(DISTINCT to_state) FROM payledger.payin_history")
[ "$n" -ge 5 ] || fail "the workload went through only $n states"
echo "payin workload: $CLIENTS clients for ${SECONDS_}s, no deadlock, invariants hold"
