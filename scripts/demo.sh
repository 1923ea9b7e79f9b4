#!/usr/bin/env bash
# The demo: set up the machine, build and install payledger, start a throwaway
# cluster as the postgres user, and run scripts/demo.sql in psql.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

setup_machine
install_extension
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
log "starting a throwaway cluster on port $DEMO_PORT"
start_cluster "$DIR" "$DEMO_PORT"
cp "$REPO/scripts/demo.sql" "$DIR/demo.sql" && chown postgres "$DIR/demo.sql"
log "running scripts/demo.sql"
as_pg "$PG_BIN/psql" -X -h "$DIR" -p "$DEMO_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -f "$DIR/demo.sql"
