#!/usr/bin/env bash
# Credits benchmarks, every figure from one run on one throwaway cluster:
#   get_total_credits latency (pgbench, 1 client) for an organisation with 1k
#   history entries and one with 1M (5 grants each; the entries are
#   consumptions booked on the grants' accounts in engine batches);
#   a metering run by the background worker (payledger.metering_workers = 2
#   sessions) over ORGS organisations x 3 metrics, all over their plan with
#   credit to pay, at ORGS and at ORGS/10; and the same run in one session
#   (CALL payledger.meter_all()) at ORGS/10.
#   bash tests/bench/credits.sh   (ORGS=100000 BIG=1000000 DURATION=10)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ORGS=${ORGS:-100000}
BIG=${BIG:-1000000}
DURATION=${DURATION:-10}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
# the worker meters when told (the run's last_run_at NULL), never on its own
start_cluster "$DIR" "$TEST_PORT" "shared_buffers = 2GB
shared_preload_libraries = 'payledger'
payledger.worker_database = 'postgres'
payledger.worker_interval = 1
payledger.metering_interval = 100000000
payledger.metering_workers = 2"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"; }

psql_ <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric(m) FROM unnest(ARRAY['mau', 'bandwidth', 'storage']) m;
SELECT payledger.set_credit_price_tiers(m, '[{"from": 0, "to": 1000, "price": 0.003}, {"from": 1000, "price": 0.002}]')
  FROM unnest(ARRAY['mau', 'bandwidth', 'storage']) m;
SELECT payledger.define_credit_plan('basic', '{"mau": 100, "bandwidth": 100, "storage": 100}');
-- history: n consumptions on an organisation's 5 grants, booked 10,000 per
-- engine batch, with their consumption rows (as consume_credits writes
-- them, so that check_invariants holds)
CREATE FUNCTION history(org text, n integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  accs uuid[];
  gids uuid[];
  sink uuid := payledger_internal.credit_system_account('credits_consumed');
  done integer := 0;
  k integer;
BEGIN
  FOR i IN 1..5 LOOP
    PERFORM payledger.grant_credits(org, 10000000, 'purchase', expires_at => now() + interval '300 days');
  END LOOP;
  SELECT array_agg(g.account_id ORDER BY g.id), array_agg(g.id ORDER BY g.id) INTO accs, gids
    FROM payledger.credit_grants g WHERE g.org_id = org;
  WHILE done < n LOOP
    k := least(10000, n - done);
    CREATE TEMP TABLE b ON COMMIT DROP AS
    SELECT r.item, r.journal_id, gen_random_uuid() AS cid, gids[1 + r.item % 5] AS gid
      -- (grant accounts are the credits module's: booked as it books them)
      FROM payledger_internal.engine_batch_as('credits', (SELECT jsonb_agg(jsonb_build_object('kind', 'credit_consume',
                 'postings', jsonb_build_array(jsonb_build_object('account', accs[1 + g % 5], 'amount', -1000000),
                                               jsonb_build_object('account', sink, 'amount', 1000000))) ORDER BY g)
                 FROM generate_series(1, k) g)) r;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id)
    SELECT b.cid, org, 'mau', 1000000, 1000000, now(), 'h' || (done + b.item), b.journal_id FROM b;
    INSERT INTO payledger.credit_consumption_parts SELECT b.cid, b.gid, 1000000, 'paid' FROM b;
    DROP TABLE b;
    done := done + k;
  END LOOP;
END $$;
SQL
log "history: 1,000 and $BIG entries"
psql_ -c "SELECT history('small', 1000)"
psql_ -c "SELECT history('big', $BIG)"
psql_ -c "VACUUM ANALYZE" -c "CHECKPOINT"
entries() { psql_ -At -c "SELECT count(*) FROM payledger.entries e JOIN payledger.credit_grants g ON g.account_id = e.account_id WHERE g.org_id = '$1'"; }
latency() { # latency <sql>: average ms over DURATION s, one client
  echo "$1" > "$DIR/q.sql"; chown postgres "$DIR/q.sql"
  as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c 1 -T "$DURATION" -f "$DIR/q.sql" postgres > "$DIR/q.log" 2>&1
  awk '/^latency average/ {print $4}' "$DIR/q.log"
}
small_n=$(entries small); big_n=$(entries big)
small=$(latency "SELECT * FROM payledger.get_total_credits('small');")
big=$(latency "SELECT * FROM payledger.get_total_credits('big');")
echo "get_total_credits: $small ms with $small_n entries, $big ms with $big_n"

# metering: n organisations, each with a plan, credit (granted through the
# API, 1,000 organisations per transaction), and usage over the plan in 3 metrics
setup_orgs() { # setup_orgs <n> <prefix>
  psql_ >/dev/null <<SQL
SELECT format('SELECT count(payledger.set_credit_org(%L || g, %L)), count(payledger.grant_credits(%L || g, 1000, %L))
                 FROM generate_series(%s, %s) g', '$2', 'basic', '$2', 'purchase', k * 1000 + 1, least($1, k * 1000 + 1000))
  FROM generate_series(0, ($1 - 1) / 1000) k \gexec
INSERT INTO payledger.credit_usage (org_id, metric, cycle_start, usage)
SELECT '$2' || g, m, payledger_internal.credit_cycle_start(date_trunc('month', now()), now()), 101 + g % 1000
  FROM generate_series(1, $1) g, unnest(ARRAY['mau', 'bandwidth', 'storage']) m;
VACUUM ANALYZE;
SQL
}
worker_run() { # worker_run: seconds of the worker's metering run, then of its plan notices run (it reports both)
  psql_ -c "UPDATE payledger.worker_runs SET last_run_at = NULL WHERE name IN ('metering', 'metering_notices')"
  until [ "$(psql_ -At -c "SELECT bool_and(last_run_at IS NOT NULL) FROM payledger.worker_runs
                            WHERE name IN ('metering', 'metering_notices')")" = t ]; do sleep 0.2; done
  until [ "$(psql_ -At -c "SELECT last_result ? 'metering_notices_ms' FROM payledger.worker_status")" = t ]; do sleep 0.1; done
  psql_ -At -F ' ' -c "SELECT round((last_result ->> 'metering_ms')::numeric / 1000, 2),
                              round((last_result ->> 'metering_notices_ms')::numeric / 1000, 2) FROM payledger.worker_status"
}
session_run() { # session_run: seconds of CALL payledger.meter_all() in one session
  psql_ -At <<'SQL'
SELECT clock_timestamp() AS t0 \gset
CALL payledger.meter_all();
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz)::numeric, 2);
SQL
}
charged() { psql_ -At -c "SELECT count(*) FROM payledger.credit_consumptions WHERE source = 'metering' AND org_id LIKE '$1%'"; }
log "metering $((ORGS / 10)) and $ORGS organisations x 3 metrics"
few=$((ORGS / 10))
setup_orgs "$few" a
read -r s_small n_small < <(worker_run)
[ "$(charged a)" = $((few * 3)) ] || { echo "the run charged $(charged a) meters, not $((few * 3))" >&2; exit 1; }
echo "metering $few organisations, worker: ${s_small}s"
# the same organisations' usage grows: one session meters them all again
psql_ -c "UPDATE payledger.credit_usage SET usage = usage + 100" -c "VACUUM ANALYZE"
s_one=$(session_run | tail -1)
[ "$(charged a)" = $((few * 6)) ] || { echo "meter_all charged $(charged a) meters, not $((few * 6))" >&2; exit 1; }
echo "metering $few organisations, one session: ${s_one}s"
psql_ -c "DELETE FROM payledger.credit_usage WHERE org_id LIKE 'a%'"   # the next run meters only the new ones
setup_orgs "$ORGS" b
e0=$(psql_ -At -c "SELECT count(*) FROM payledger.events WHERE topic = 'credits.plan_usage'")
read -r s_big n_big < <(worker_run)
events=$(( $(psql_ -At -c "SELECT count(*) FROM payledger.events WHERE topic = 'credits.plan_usage'") - e0 ))
[ "$events" = $((ORGS * 3 * 4)) ] || { echo "the notices wrote $events plan_usage events, not $((ORGS * 12))" >&2; exit 1; }
[ "$(charged b)" = $((ORGS * 3)) ] || { echo "the run charged $(charged b) meters, not $((ORGS * 3))" >&2; exit 1; }
echo "metering $ORGS organisations, worker: ${s_big}s; then its plan notices: ${n_big}s, $events events"
v=$(psql_ -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { echo "invariant violations after the benchmark: $v" >&2; exit 1; }

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%d", n / s }'; }
cat <<TXT

Credits, $(nproc) cores:
| measure | result | target |
|---|---|---|
| get_total_credits latency, $big_n vs $small_n history entries | $(awk -v a="$big" -v b="$small" 'BEGIN { printf "%.2f", a / b }')x ($big ms vs $small ms) | <= 1.2x |
| metering run by the worker (2 sessions), $few organisations x 3 metrics | $(rate $((few * 3)) "$s_small") organisation-metrics/s (${s_small}s) | |
| the same in one session (meter_all, its plan notices included: none new) | $(rate $((few * 3)) "$s_one") organisation-metrics/s (${s_one}s) | |
| metering run by the worker (2 sessions), $ORGS organisations x 3 metrics | $(rate $((ORGS * 3)) "$s_big") organisation-metrics/s (${s_big}s) | >= 20,000/s |
| plan notices run after it (worst case: every organisation-metric crosses 50, 75, 90 and 100 % at once, $events events) | $(rate $((ORGS * 3)) "$n_big") organisation-metrics/s (${n_big}s; $(awk -v a="$n_big" -v b="$s_big" 'BEGIN { printf "%.2f", a / b }')x the metering run's time) | |
| linearity: rate at $ORGS / rate at $few organisations | $(awk -v a="$s_small" -v b="$s_big" -v n=$((ORGS / few)) 'BEGIN { printf "%.2f", a * n / b }') | ~1 |
TXT
