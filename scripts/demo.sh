#!/usr/bin/env bash
# The demo: set up the machine, build and install payledger, start a local
# LNbits and a throwaway cluster (as the postgres user, with the payledger
# worker), and run scripts/demo.sql in psql.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

setup_machine
install_extension
setup_lnbits
DIR=$(pg_scratch)
trap 'stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
LNBITS_PORT=$((DEMO_PORT + 1000))
log "starting LNbits (FakeWallet) on 127.0.0.1:$LNBITS_PORT"
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY MERCHANT_ADMIN PAYER_INKEY < <(lnbits_setup "$LNBITS_PORT")
log "starting a throwaway cluster on port $DEMO_PORT, with the payledger worker"
start_cluster "$DIR" "$DEMO_PORT" "shared_preload_libraries = 'payledger'
payledger.worker_database = 'postgres'
payledger.worker_interval = 1"
cp "$REPO/scripts/demo.sql" "$DIR/demo.sql" && chown postgres "$DIR/demo.sql"
log "running scripts/demo.sql"
as_pg env LNBITS_URL="http://127.0.0.1:$LNBITS_PORT" LNBITS_PAYKEY="$PAYKEY" LNBITS_PAYER_INKEY="$PAYER_INKEY" DEMO_DIR="$DIR" \
  "$PG_BIN/psql" -X -h "$DIR" -p "$DEMO_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -v lnbits_url="http://127.0.0.1:$LNBITS_PORT" -v lnbits_inkey="$INKEY" -v lnbits_admin="$MERCHANT_ADMIN" \
  -v demo_dir="$DIR" -f "$DIR/demo.sql"
