#!/usr/bin/env bash
# The demo: set up the machine, build and install payledger, start a local
# LNbits and a throwaway cluster (as the postgres user, with the payledger
# worker), and run scripts/demo.sql in psql.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

setup_machine
install_extension
setup_lnbits
setup_console
setup_nostr_relay
setup_nwc_wallet
DIR=$(pg_scratch)
NODE_PID=
trap 'stop_console "$DIR"; stop_nwc_wallet "$DIR"; stop_nostr_relay "$DIR"; [ -z "$NODE_PID" ] || kill "$NODE_PID" 2>/dev/null
      stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
LNBITS_PORT=$((DEMO_PORT + 1000)) RELAY_PORT=$((DEMO_PORT + 1003)) NODE_PORT=$((DEMO_PORT + 1004))
log "starting LNbits (FakeWallet) on 127.0.0.1:$LNBITS_PORT"
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY MERCHANT_ADMIN PAYER_INKEY < <(lnbits_setup "$LNBITS_PORT")
# peer to peer: bob's own LNbits wallet, behind an NWC wallet service on a
# local Nostr relay; the operator's LND node is the LND test server, paying
# other nodes' invoices through the payer's LNbits wallet
log "starting a Nostr relay, bob's NWC wallet service and the operator's node (the LND test server)"
BOB_INKEY=$(curl -sf -X POST "http://127.0.0.1:$LNBITS_PORT/api/v1/account" -H 'Content-Type: application/json' \
  -d '{"name": "bob"}' | jq -r .inkey)
start_nostr_relay "$DIR" "$RELAY_PORT"
NWC_URI=$(start_nwc_wallet "$DIR" "ws://127.0.0.1:$RELAY_PORT" "http://127.0.0.1:$LNBITS_PORT" "$BOB_INKEY")
"$LNBITS_VENV/bin/python" "$REPO/tests/integration/mock_providers.py" "$NODE_PORT" >"$DIR/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 40); do port_busy "$NODE_PORT" && break; sleep 0.25; done
curl -sf -X POST "http://127.0.0.1:$NODE_PORT/_control/gateway" \
  -d "{\"url\": \"http://127.0.0.1:$LNBITS_PORT\", \"admin_key\": \"$PAYKEY\"}" >/dev/null
log "starting a throwaway cluster on port $DEMO_PORT, with the payledger worker"
start_cluster "$DIR" "$DEMO_PORT" "shared_preload_libraries = 'payledger'
payledger.worker_database = 'postgres'
payledger.worker_interval = 1
listen_addresses = '127.0.0.1'"
cp "$REPO/scripts/demo.sql" "$DIR/demo.sql" && chown postgres "$DIR/demo.sql"
log "running scripts/demo.sql"
as_pg env LNBITS_URL="http://127.0.0.1:$LNBITS_PORT" LNBITS_PAYKEY="$PAYKEY" LNBITS_PAYER_INKEY="$PAYER_INKEY" DEMO_DIR="$DIR" \
  NODE_URL="http://127.0.0.1:$NODE_PORT" BOB_INKEY="$BOB_INKEY" \
  "$PG_BIN/psql" -X -h "$DIR" -p "$DEMO_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -v lnbits_url="http://127.0.0.1:$LNBITS_PORT" -v lnbits_inkey="$INKEY" -v lnbits_admin="$MERCHANT_ADMIN" \
  -v node_url="http://127.0.0.1:$NODE_PORT" -v nwc_uri="$NWC_URI" -v bob_inkey="$BOB_INKEY" \
  -v demo_dir="$DIR" -f "$DIR/demo.sql"

log "the credits console: PostgreSQL's REST API (postrust, PostgREST mode) and the console's page"
REST_PORT=$((DEMO_PORT + 1001)) CONSOLE_PORT=$((DEMO_PORT + 1002))
JWT_SECRET="payledger-demo-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
{ console_roles_sql; cat "$REPO/scripts/console.sql"; } |
  as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$DEMO_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -f - >/dev/null
start_postrust "$DIR" "$REST_PORT" "postgres://authenticator@127.0.0.1:$DEMO_PORT/postgres" "$JWT_SECRET"
start_console "$DIR" "$CONSOLE_PORT" "http://127.0.0.1:$REST_PORT"
ANA=$(mint_jwt "$JWT_SECRET" ana)
rest() { # <method> <path> [json]: as ana, for acme, through the console's server
  curl -sf -X "$1" "http://127.0.0.1:$CONSOLE_PORT/rest/v1$2" -H "Authorization: Bearer $ANA" -H 'X-Org-Id: acme' \
    -H 'Accept-Profile: payledger' -H 'Content-Profile: payledger' -H 'Content-Type: application/json' ${3:+-d "$3"}
}
echo "ana (owner of acme) buys 100 credits for 50 sat, as the console does:"
echo "  available before: $(rest POST /rpc/my_total_credits '{}' | jq -r '.[0].available')"
PAYIN=$(rest POST /rpc/buy_credits '{"package": "credits-100"}' | jq -r '.[0].payin_id')
for _ in $(seq 1 80); do
  BOLT11=$(rest GET "/my_invoices?payin_id=eq.$PAYIN&select=payment_request" | jq -r '.[0].payment_request // empty')
  [ -n "$BOLT11" ] && break; sleep 0.25
done
echo "  the invoice the console shows: ${BOLT11:0:60}..."
lnbits_pay "$LNBITS_PORT" "$PAYKEY" "$BOLT11"
for _ in $(seq 1 80); do
  [ "$(rest GET "/my_payins?id=eq.$PAYIN&select=state" | jq -r '.[0].state')" = PAID ] && break; sleep 0.25
done
echo "  paid from the payer's LNbits wallet; available now: $(rest POST /rpc/my_total_credits '{}' | jq -r '.[0].available')"
echo
echo "The credits console: http://127.0.0.1:$CONSOLE_PORT/#token=$ANA"
echo "  (ana: owner of acme, read-only in globex; tokens for others: mint_jwt in scripts/lib.sh, secret $JWT_SECRET)"
echo "  pay its invoices with the payer wallet: LNbits at http://127.0.0.1:$LNBITS_PORT, admin key $PAYKEY"
if [ -t 0 ]; then
  read -r -p "Press Enter to stop the demo. " _
fi
