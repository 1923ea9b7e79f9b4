# Helpers for integration tests: a throwaway cluster on the test port, psql as postgres.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "${CLUSTER_CONF:-}"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# restart_after_crash <round>: start the server again after a SIGKILL to the
# postmaster (crash recovery). The orphaned backends notice and exit; until
# then the old shared memory is in use and the server refuses to start.
restart_after_crash() {
  local try
  for try in $(seq 1 60); do
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  fail "round $1: the server did not start again"
}

# crash_under_clients <round> <what>: CLIENTS clients (the test's `client
# <round> <n>`, looping until $DIR/stop exists) at work, SIGKILL to the
# postmaster after 3 to 7 s (from RANDOM, seeded by the test; the delay is
# left in $delay), the clients stopped, the server started again.
crash_under_clients() {
  local c pids=()
  rm -f "$DIR/stop"
  for c in $(seq 1 "$CLIENTS"); do client "$1" "$c" & pids+=($!); done
  delay=$((3 + RANDOM % 5))
  log "round $1: $CLIENTS clients $2, SIGKILL to the postmaster after ${delay}s"
  sleep "$delay"
  kill -KILL "$(head -1 "$DIR/data/postmaster.pid")"
  touch "$DIR/stop"
  wait "${pids[@]}" 2>/dev/null || true
  restart_after_crash "$1"
}

# check_after_crash <round> <db> <acks table> <what>: every key in
# $DIR/acks (the clients' acknowledged work) is in the acks table, and
# check_invariants() is empty; $acked is left with their number.
check_after_crash() {
  local missing v
  acked=$(wc -l < "$DIR/acks")
  missing=$(psql_ -d "$2" -Atc "SELECT count(*) FROM unnest(string_to_array('$(tr '\n' ' ' < "$DIR/acks" | sed 's/ $//')', ' ')) k
                WHERE k <> '' AND NOT EXISTS (SELECT 1 FROM $3 a WHERE a.key = k)")
  [ "$missing" = 0 ] || fail "round $1: $missing of $acked acknowledged $4 are missing"
  v=$(psql_ -d "$2" -Atc "SELECT count(*) FROM payledger.check_invariants()")
  [ "$v" = 0 ] || { psql_ -d "$2" -c "SELECT * FROM payledger.check_invariants() LIMIT 20"; fail "round $1: $v invariant violations"; }
}
