#!/usr/bin/env bash
# P2P zaps in flight when the server dies. The receiver's wallet is a real
# LNbits wallet; the operator's node is the LND test server, which holds the
# payers' payments on hold invoices and pays the receiver's invoices through
# an LNbits wallet of its own (its gateway), so that every forward really
# moves sats at LNbits and its preimage is real.
# First, deterministically: a forward made at the node whose result is lost
# (the worker held still, its call made by hand, the result thrown away) is
# found by its lookup, never sent again; a settle whose result is lost is
# settled again ("already settled"), and the pay-in is PAID once.
# Then CLIENTS clients zap while a payer pays each hold invoice and the
# background worker wraps, forwards and settles; at a seeded moment the
# postmaster is killed with SIGKILL (the worker with it, perhaps between a
# forward and its record). After the restart the worker looks up what it did
# not see, and then:
#   - no zap is left waiting; check_invariants() is empty; every
#     acknowledged zap is there;
#   - never a forward without a settle: a PAID zap's receiver invoice is
#     paid at LNbits and its hold invoice SETTLED at the node; a FAILED
#     one's receiver invoice is not paid;
#   - the receiver's LNbits wallet got exactly the PAID zaps' shares, and the
#     node's gateway paid exactly those and the routing fees the ledger booked.
#   bash tests/integration/p2p_crash.sh   (ROUNDS=2 CLIENTS=3 SEED=7)
set -euo pipefail
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'pd'
payledger.worker_interval = 1
payledger.worker_max_backoff = 2
payledger.worker_http_timeout = 1000"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-3}
SEED=${SEED:-7}
setup_lnbits
LNBITS_PORT=$((TEST_PORT + 1006)) MOCK_PORT=$((TEST_PORT + 1007))
MOCK_PID=
trap 'touch "$DIR/stop"; kill $MOCK_PID 2>/dev/null; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_lnbits "$DIR" "$LNBITS_PORT"
"$LNBITS_VENV/bin/python" "$REPO/tests/integration/mock_providers.py" "$MOCK_PORT" >"$DIR/mock.log" 2>&1 &
MOCK_PID=$!
# the merchant's wallet is the receiver's; the payer's (funded) is the node's gateway
read -r RECEIVER_INKEY GATEWAY_ADMIN _ _ < <(lnbits_setup "$LNBITS_PORT")
L="http://127.0.0.1:$LNBITS_PORT" NODE="http://127.0.0.1:$MOCK_PORT"
for _ in $(seq 1 40); do port_busy "$MOCK_PORT" && break; sleep 0.25; done
curl -sf -X POST "$NODE/_control/gateway" -d "{\"url\": \"$L\", \"admin_key\": \"$GATEWAY_ADMIN\"}" >/dev/null
q() { psql_ -d pd -Atc "$1"; }
wallet_msat() { curl -sf "$L/api/v1/wallet" -H "X-Api-Key: $1" | jq -r .balance; }

psql_ -d postgres -c "CREATE DATABASE pd" >/dev/null
{ echo "CREATE EXTENSION payledger; SELECT payledger.create_asset('msat', 3, 'millisatoshi');"; zap_setup_sql "$NODE"; } |
  psql_ -d pd >/dev/null
psql_ -d pd >/dev/null <<SQL
SELECT payledger.attach_receiver_wallet('bob', 'lnbits', jsonb_build_object('url', '$L', 'invoice_key', '$RECEIVER_INKEY'));
CREATE TABLE zap_acks (key text PRIMARY KEY, payin_id uuid NOT NULL);
SQL
receiver0=$(wallet_msat "$RECEIVER_INKEY") gateway0=$(wallet_msat "$GATEWAY_ADMIN")
zap() { # <sats> [key]: a zap of bob, paid p2p in full
  q "SELECT payin_id FROM payledger.create_payin('alice', 'ZAP', 'msat', $1 * 1000,
       '[{\"external\": \"invoice\", \"p2p\": true, \"unit\": 1000}]', split => 'zap_p2p',
       payees => jsonb_build_object('receiver', payledger.open_account('bob', 'msat')), idempotency_key => ${2:-NULL})"
}
pay_holds() { # the payers: each open hold invoice paid (held at the node)
  local h
  for h in $(q "SELECT i.payment_hash FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
                 WHERE i.hold AND i.status = 'pending' AND p.state = 'PENDING_HELD'" 2>/dev/null); do
    curl -s -X POST "$NODE/_control/settle/$h" >/dev/null || true
  done
}
wait_state() { # <pay-in> <state> [pay]: (paying the hold invoices meanwhile)
  for _ in $(seq 1 80); do
    [ "$(q "SELECT state FROM payledger.payins WHERE id = '$1'")" = "$2" ] && return 0
    [ -z "${3:-}" ] || pay_holds
    sleep 0.25
  done
  fail "pay-in $1 is $(q "SELECT state || ' ' || coalesce(failure_reason::text, '') FROM payledger.payins WHERE id = '$1'"), not $2"
}
hold_worker() { psql_ -d pd -c "ALTER SYSTEM SET payledger.worker_interval = 3600" -c "SELECT pg_reload_conf()" >/dev/null; sleep 2; }
free_worker() { psql_ -d pd -c "ALTER SYSTEM RESET payledger.worker_interval" -c "SELECT pg_reload_conf()" >/dev/null; }
node_payments() { # <payment hash>: the node's payments of it
  curl -sf "$NODE/_control/payments" | jq --arg h "$1" '[.[] | select(.payment_hash == $h)] | length'
}

log "a forward whose result is lost"
Z0=$(zap 100)
wait_state "$Z0" PENDING_HELD
hold_worker
pay_holds
q "UPDATE payledger.invoices SET next_check_at = now() WHERE payin_id = '$Z0'" >/dev/null
q "SELECT count(payledger.worker_apply(r)) FROM jsonb_array_elements(payledger.provider_call(payledger.worker_claim(10))) r" >/dev/null
[ "$(q "SELECT state FROM payledger.payins WHERE id = '$Z0'")" = HELD ] || fail "Z0 should be HELD"
[ "$(q "SELECT string_agg(r ->> 'status', ',') FROM jsonb_array_elements(payledger.provider_call(payledger.worker_claim(10))) r
         WHERE r ? 'forward_id'")" = succeeded ] || fail "the forward made by hand"
H0=$(q "SELECT payment_hash FROM payledger.p2p_forwards WHERE payin_id = '$Z0'")
[ "$(q "SELECT status FROM payledger.p2p_forwards WHERE payin_id = '$Z0'")" = forwarding ] || fail "Z0 should be forwarding"
q "UPDATE payledger.p2p_forwards SET locked_until = now() - interval '1 second', next_check_at = now() WHERE payin_id = '$Z0'" >/dev/null
# the lookup finds it paid: FORWARDED; the settle's result is lost too
[ "$(q "SELECT payledger.worker_apply(r) FROM jsonb_array_elements(payledger.provider_call(payledger.worker_claim(10))) r
         WHERE r ->> 'forward_id' = '$Z0'")" = forwarded ] || fail "Z0's lookup"
[ "$(q "SELECT count(*) FROM jsonb_array_elements(payledger.provider_call(payledger.worker_claim(10))) r
         WHERE r ->> 'settle' = 'settled'")" = 1 ] || fail "the settle made by hand"
curl -sf "$NODE/v1/invoice/$H0" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -e '.state == "SETTLED"' >/dev/null ||
  fail "Z0's hold invoice is not settled at the node"
q "UPDATE payledger.p2p_forwards SET locked_until = now() - interval '1 second', next_check_at = now() WHERE payin_id = '$Z0'" >/dev/null
free_worker
wait_state "$Z0" PAID pay
[ "$(node_payments "$H0")" = 1 ] || fail "Z0 was forwarded $(node_payments "$H0") times"
[ $(($(wallet_msat "$RECEIVER_INKEY") - receiver0)) = 70000 ] || fail "bob's wallet did not get Z0's 70 sat once"

client() { # <round> <n>: zaps until told to stop; logs what committed
  local i=0 key id
  while [ ! -e "$DIR/stop" ]; do
    i=$((i + 1)); key="r$1-c$2-$i"
    # (40 to 100 sat: the 3 % budget covers the node's fee, 1 sat + 0.1 %)
    if id=$(zap $((10 * (4 + RANDOM % 7))) "'$key'" 2>/dev/null) && [ -n "$id" ]; then
      q "INSERT INTO zap_acks VALUES ('$key', '$id')" >/dev/null 2>&1 && echo "$key" >> "$DIR/acks"
    fi
    sleep 0.2
  done
}
payer() { while [ ! -e "$DIR/payer_stop" ]; do pay_holds; sleep 0.2; done; }

RANDOM=$SEED
touch "$DIR/acks"
for round in $(seq 1 "$ROUNDS"); do
  rm -f "$DIR/payer_stop"
  payer & payer_pid=$!
  crash_under_clients "$round" zapping
  # the worker settles what is left (a forward the node does not know counts
  # as never sent only after 62 s); the payer pays what is still open
  for _ in $(seq 1 240); do
    [ "$(q "SELECT count(*) FROM payledger.payins WHERE state NOT IN ('PAID', 'FAILED')")" = 0 ] && break
    sleep 0.5
  done
  touch "$DIR/payer_stop"; wait "$payer_pid" 2>/dev/null || true
  left=$(q "SELECT count(*) FROM payledger.payins WHERE state NOT IN ('PAID', 'FAILED')")
  [ "$left" = 0 ] || { q "SELECT state, count(*) FROM payledger.payins GROUP BY 1"; fail "round $round: $left zaps still waiting"; }
  check_after_crash "$round" pd zap_acks zaps
  echo "round $round: killed after ${delay}s; $acked zaps acknowledged so far;" \
       "$(q "SELECT string_agg(s || ' ' || n, ', ' ORDER BY s) FROM (SELECT concat_ws(' ', state, failure_reason) AS s, count(*) AS n FROM payledger.payins GROUP BY 1) s")"
done

# each zap against LNbits' and the node's books
bad=0
while IFS='|' read -r hash state; do
  [ -n "$hash" ] || continue
  paid=$(curl -sf "$L/api/v1/payments/$hash" -H "X-Api-Key: $RECEIVER_INKEY" | jq -r .paid)
  hold=$(curl -sf "$NODE/v1/invoice/$hash" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -r .state || echo none)
  if { [ "$state" = PAID ] && { [ "$paid" != true ] || [ "$hold" != SETTLED ]; }; } ||
     { [ "$state" = FAILED ] && [ "$paid" = true ]; }; then
    echo "zap of $hash is $state: the receiver's invoice paid=$paid, the hold invoice $hold" >&2; bad=$((bad + 1))
  fi
done < <(q "SELECT f.payment_hash, p.state FROM payledger.p2p_forwards f JOIN payledger.payins p ON p.id = f.payin_id")
[ "$bad" = 0 ] || fail "$bad zaps disagree with LNbits or the node"
shares=$(q "SELECT coalesce(sum(f.amount), 0) FROM payledger.p2p_forwards f WHERE f.status = 'settled'")
fees=$(q "SELECT coalesce(sum(f.fee_paid), 0) FROM payledger.p2p_forwards f WHERE f.status = 'settled'")
receiver1=$(wallet_msat "$RECEIVER_INKEY") gateway1=$(wallet_msat "$GATEWAY_ADMIN")
[ $((receiver1 - receiver0)) = "$shares" ] || fail "bob's wallet got $((receiver1 - receiver0)) msat, the settled forwards $shares"
[ $((gateway0 - gateway1)) = "$shares" ] || fail "the node's gateway paid $((gateway0 - gateway1)) msat, the settled forwards $shares"
echo "p2p crash: $ROUNDS kills; $(q "SELECT count(*) FROM payledger.payins") zaps," \
     "$(q "SELECT count(*) FROM payledger.payins WHERE state = 'PAID'") forwarded and settled once ($shares msat to bob's wallet, $fees msat in fees)," \
     "the rest failed with nothing forwarded; LNbits, the node and the ledger agree"
