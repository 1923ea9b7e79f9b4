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
