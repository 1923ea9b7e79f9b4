#!/usr/bin/env bash
# Benchmark with pgbench, every figure measured in one run on one throwaway cluster:
#   floor    plain SQL: lock two rows in id order, two UPDATEs, two INSERTs, no checks
#   payledger.transfer over the same accounts, same clients
#   spread = random pairs of 50 accounts; hot = every transfer credits one account
#   batch  = payledger.transfer_batch with 1,000 transfers per call
# Prints transfers/s and the ratios the README reports.
#   bash tests/bench/run.sh            (DURATION=15 CLIENTS=20 by default)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-20}
ACCOUNTS=${ACCOUNTS:-50}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "max_connections = 200"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
cp "$REPO"/tests/bench/*.sql "$DIR/" && chown postgres "$DIR"/*.sql
psql_ -d postgres -v accounts="$ACCOUNTS" -f "$DIR/setup.sql"

bench() { # bench <script> -> transactions per second
  as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c "$CLIENTS" -j 2 -T "$DURATION" \
    -D accounts="$ACCOUNTS" -f "$DIR/$1.sql" postgres 2>&1 | tee "$DIR/$1.log" |
    awk '/^tps = / {printf "%d\n", $3}'
  grep -q "number of failed transactions: 0 " "$DIR/$1.log" || { cat "$DIR/$1.log" >&2; exit 1; }
}

log "pgbench: $CLIENTS clients, ${DURATION}s per run, $ACCOUNTS accounts, $(nproc) cores"
floor_spread=$(bench floor_spread);   echo "floor spread      $floor_spread transfers/s"
pl_spread=$(bench transfer_spread);   echo "payledger spread  $pl_spread transfers/s"
floor_hot=$(bench floor_hot);         echo "floor hot         $floor_hot transfers/s"
pl_hot=$(bench transfer_hot);         echo "payledger hot     $pl_hot transfers/s"
batch_calls=$(bench batch_1000);      batch=$((batch_calls * 1000))
echo "payledger batch   $batch transfers/s ($batch_calls calls/s of 1,000)"
v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { echo "invariant violations after the benchmark: $v" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cat <<TXT

| measure | result | target |
|---|---|---|
| payledger / floor, spread | $(ratio "$pl_spread" "$floor_spread")x ($pl_spread vs $floor_spread/s) | >= 0.9x |
| payledger / floor, hot account | $(ratio "$pl_hot" "$floor_hot")x ($pl_hot vs $floor_hot/s) | |
| payledger hot / spread | $(ratio "$pl_hot" "$pl_spread")x | >= 0.8x |
| batch / single call | $(ratio "$batch" "$pl_spread")x ($batch/s) | >= 20x |
TXT
