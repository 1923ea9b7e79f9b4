# Helpers for integration tests: a throwaway cluster on the test port, psql as postgres.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "${CLUSTER_CONF:-}"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
