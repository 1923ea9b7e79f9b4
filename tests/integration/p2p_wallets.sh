#!/usr/bin/env bash
# Receiver wallets asked for an invoice, with real parts: a real LNbits
# wallet (its invoice key), the same wallet behind a real NIP-47 wallet
# service (@getalby/sdk 7's NWCWalletService) on a real Nostr relay (PyPI
# nostr-relay, which checks signatures), payledger being the NWC client
# (NIP-44 v2, as the service's info event offers; NIP-04 with a service that
# publishes no info event), and a Lightning Address
# (LNURL-pay) served by the LNURL test server. test_receiver_wallet gets a
# BOLT11 for the amount from each, LNbits knows it as its own, and a payer
# paying it credits the receiver's LNbits wallet. Failures are recorded as
# the wallet's health: a wrong key, a wallet service that is gone. Then p2p
# zaps driven by the worker (run_tick): the receiver's NWC wallet's invoice,
# then its LNbits wallet's, wrapped in a hold invoice with the same payment
# hash at the operator's LND node (the LND test server,
# tests/integration/mock_providers.py, paying through an LNbits wallet of
# its own), held, forwarded, settled: PAID, and the receiver's wallet has
# the sats.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
setup_lnbits
setup_nostr_relay
setup_nwc_wallet
LNBITS_PORT=$((TEST_PORT + 1003)) RELAY_PORT=$((TEST_PORT + 1004)) MOCK_PORT=$((TEST_PORT + 1005))
trap 'stop_nwc_wallet "$DIR"; stop_nostr_relay "$DIR"; stop_lnbits "$DIR"; kill $MOCK_PID 2>/dev/null; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
MOCK_PID=
start_lnbits "$DIR" "$LNBITS_PORT"
start_nostr_relay "$DIR" "$RELAY_PORT"
"$LNBITS_VENV/bin/python" "$REPO/tests/integration/mock_providers.py" "$MOCK_PORT" >"$DIR/mock.log" 2>&1 &
MOCK_PID=$!
read -r RECEIVER_INKEY PAYER_ADMIN _ _ < <(lnbits_setup "$LNBITS_PORT")
LNBITS="http://127.0.0.1:$LNBITS_PORT"
NWC_URI=$(start_nwc_wallet "$DIR" "ws://127.0.0.1:$RELAY_PORT" "$LNBITS" "$RECEIVER_INKEY")
for _ in $(seq 1 40); do port_busy "$MOCK_PORT" && break; sleep 0.25; done
LNURL=$("$LNBITS_VENV/bin/python" -c "
from bech32 import bech32_encode, convertbits
print(bech32_encode('lnurl', convertbits(b'http://127.0.0.1:$MOCK_PORT/.well-known/lnurlp/lnd-bob', 8, 5)).upper())")

psql_ -d postgres -c "CREATE DATABASE payledger_it"
q() { psql_ -d payledger_it -Atc "$1"; }
psql_ -d payledger_it -q -c "CREATE EXTENSION payledger" -c "SELECT payledger.create_asset('msat', 3, 'millisatoshi')" >/dev/null
psql_ -d payledger_it -q -c "LOAD 'payledger'" -c "ALTER SYSTEM SET payledger.lnurl_http_hosts = '127.0.0.1'" -c "SELECT pg_reload_conf()" >/dev/null
W_NWC=$(q "SELECT payledger.attach_receiver_wallet('bob', 'nwc', jsonb_build_object('uri', '$NWC_URI'))")
W_LNBITS=$(q "SELECT payledger.attach_receiver_wallet('bob', 'lnbits', jsonb_build_object('url', '$LNBITS', 'invoice_key', '$RECEIVER_INKEY'), priority => 1)")
W_LNADDR=$(q "SELECT payledger.attach_receiver_wallet('bob', 'lightning_address', jsonb_build_object('address', '$LNURL'), priority => 2)")

lnbits_payment() { # <payment hash>: what LNbits says of it, to the receiver's invoice key
  curl -sf "$LNBITS/api/v1/payments/$1" -H "X-Api-Key: $RECEIVER_INKEY"
}
balance() { curl -sf "$LNBITS/api/v1/wallet" -H "X-Api-Key: $RECEIVER_INKEY" | jq -r .balance; }

# NWC: make_invoice over the relay, answered from the LNbits wallet
IFS='|' read -r ok bolt11 hash network error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_NWC', 21000)")
[ "$ok" = t ] || fail "NWC: $error"
[ "$network" = bitcoin ] || fail "NWC: network $network"
lnbits_payment "$hash" | jq -e '.paid == false' >/dev/null || fail "NWC: LNbits does not know the invoice $hash"
before=$(balance)
lnbits_pay "$LNBITS_PORT" "$PAYER_ADMIN" "$bolt11"
lnbits_payment "$hash" | jq -e '.paid == true' >/dev/null || fail "NWC: the invoice was not paid"
[ "$(balance)" = $((before + 21000)) ] || fail "NWC: the receiver's wallet did not get 21 sat ($before -> $(balance))"
grep -q "request encrypted with nip44_v2" "$DIR/nwc.log" || fail "NWC: the request was not encrypted with NIP-44 v2"
echo "NWC: a 21-sat invoice from the wallet service over the relay (NIP-44 v2), paid into the receiver's LNbits wallet"

# an older wallet service with no info event: the client speaks NIP-04
stop_nwc_wallet "$DIR"
NWC04_URI=$(start_nwc_wallet "$DIR" "ws://127.0.0.1:$RELAY_PORT" "$LNBITS" "$RECEIVER_INKEY" none)
W_NWC04=$(q "SELECT payledger.attach_receiver_wallet('bob', 'nwc', jsonb_build_object('uri', '$NWC04_URI'), priority => 3)")
IFS='|' read -r ok bolt11 hash network error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_NWC04', 2000)")
[ "$ok" = t ] || fail "NWC (NIP-04): $error"
grep -q "request encrypted with nip04" "$DIR/nwc.log" || fail "NWC: the request to an info-less service was not NIP-04"
lnbits_payment "$hash" | jq -e '.paid == false' >/dev/null || fail "NWC (NIP-04): LNbits does not know the invoice $hash"
echo "NWC: a wallet service without an info event answers a NIP-04 request"

# LNbits directly
IFS='|' read -r ok bolt11 hash network error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_LNBITS', 5000)")
[ "$ok" = t ] || fail "LNbits: $error"
lnbits_payment "$hash" | jq -e '.paid == false' >/dev/null || fail "LNbits: unknown invoice"
echo "LNbits: a 5-sat invoice of the receiver's wallet"

# a Lightning Address (LNURL-pay, checked as withdrawals check it)
IFS='|' read -r ok bolt11 hash network error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_LNADDR', 3000)")
[ "$ok" = t ] || fail "Lightning Address: $error"
echo "Lightning Address: a 3-sat invoice from the LNURL server"
[ "$(q "SELECT count(*) FROM payledger.receiver_wallets WHERE last_ok_at IS NOT NULL AND consecutive_failures = 0")" = 4 ] ||
  fail "the four wallets are not recorded healthy"

# a p2p zap wrapped by the worker (one tick at a time, CALL run_tick): the
# NWC wallet's invoice for bob's 70 sat, then a hold invoice with the same
# payment hash at the operator's LND node (the LND test server) for the 100
# sat alice owes; the payer's payment is then held there (ACCEPTED)
zap_setup_sql "http://127.0.0.1:$MOCK_PORT" | psql_ -d payledger_it -q >/dev/null
# (the running wallet service is the NIP-04 one: the others stand aside)
q "SELECT count(payledger.set_receiver_wallet(id, enabled => false)) FROM payledger.receiver_wallets WHERE id <> '$W_NWC04'" >/dev/null
ZAP=$(q "SELECT payin_id FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000, '[{\"external\": \"invoice\", \"p2p\": true, \"unit\": 1000}]',
          split => 'zap_p2p', payees => jsonb_build_object('receiver', payledger.open_account('bob', 'msat')))")
for _ in $(seq 1 10); do
  psql_ -d payledger_it -q -c "CALL payledger.run_tick()" 2>/dev/null
  [ "$(q "SELECT state FROM payledger.payins WHERE id = '$ZAP'")" = PENDING_HELD ] && break
done
[ "$(q "SELECT state FROM payledger.payins WHERE id = '$ZAP'")" = PENDING_HELD ] ||
  fail "p2p: not wrapped: $(q "SELECT state || ' ' || coalesce(failure_reason::text, '') FROM payledger.payins WHERE id = '$ZAP'") / $(q "SELECT status || ' ' || coalesce(failure, last_error, '') FROM payledger.p2p_forwards WHERE payin_id = '$ZAP'")"
IFS='|' read -r receiver_hash hold_bolt11 hold_hash < <(q "SELECT f.payment_hash, i.payment_request, i.payment_hash
  FROM payledger.p2p_forwards f JOIN payledger.invoices i ON i.payin_id = f.payin_id WHERE f.payin_id = '$ZAP'")
[ "$receiver_hash" = "$hold_hash" ] || fail "p2p: the hold invoice's hash is not the receiver's"
lnbits_payment "$receiver_hash" | jq -e '.paid == false' >/dev/null || fail "p2p: the receiver's LNbits wallet does not know its invoice"
[ "$(q "SELECT amount_msat || ' ' || payment_hash FROM payledger.bolt11_decode('$hold_bolt11')")" = "100000 $receiver_hash" ] ||
  fail "p2p: the hold invoice is not for 100 sat with the receiver's hash"
curl -sf "http://127.0.0.1:$MOCK_PORT/v1/invoice/$hold_hash" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -e '.state == "OPEN"' >/dev/null ||
  fail "p2p: the node has no open hold invoice"
# the node pays other nodes' invoices through an LNbits wallet (its gateway:
# the payer's wallet above): the receiver's LNbits wallet is really paid, and
# the preimage is real
GATEWAY_ADMIN=$PAYER_ADMIN
curl -sf -X POST "http://127.0.0.1:$MOCK_PORT/_control/gateway" \
  -d "{\"url\": \"$LNBITS\", \"admin_key\": \"$GATEWAY_ADMIN\"}" >/dev/null
gateway_balance() { curl -sf "$LNBITS/api/v1/wallet" -H "X-Api-Key: $GATEWAY_ADMIN" | jq -r .balance; }

# alice pays the hold invoice and the node holds her payment; the worker sees
# it HELD, forwards bob's 70 sat to his wallet's invoice with the 3-sat fee
# budget, settles the hold invoice with the preimage it learns: PAID
zap_to_paid() { # <pay-in> <hold hash>
  curl -sf -X POST "http://127.0.0.1:$MOCK_PORT/_control/settle/$2" >/dev/null
  curl -sf "http://127.0.0.1:$MOCK_PORT/v1/invoice/$2" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -e '.state == "ACCEPTED"' >/dev/null ||
    fail "p2p: the node did not hold the payment"
  for _ in $(seq 1 5); do
    psql_ -d payledger_it -q -c "UPDATE payledger.invoices SET next_check_at = now() WHERE payin_id = '$1' AND status = 'pending'" \
          -c "CALL payledger.run_tick()" 2>/dev/null
    [ "$(q "SELECT state FROM payledger.payins WHERE id = '$1'")" = PAID ] && break
  done
  [ "$(q "SELECT state FROM payledger.payins WHERE id = '$1'")" = PAID ] ||
    fail "p2p: not paid: $(q "SELECT state || ' ' || coalesce(failure_reason::text, '') FROM payledger.payins WHERE id = '$1'") / $(q "SELECT status || ' ' || coalesce(failure, last_error, '') FROM payledger.p2p_forwards WHERE payin_id = '$1'")"
  [ "$(q "SELECT string_agg(to_state::text, ' ' ORDER BY at) FROM payledger.payin_history WHERE payin_id = '$1'")" = \
    "PENDING_INVOICE_WRAP PENDING_HELD HELD FORWARDING FORWARDED PAID" ] || fail "p2p: not the states of a forward"
  [ "$(q "SELECT i.held_amount || ' ' || i.htlc_expiry_height || ' ' || i.held_block_height || ' ' || f.cltv_limit || ' ' || f.fee_paid || ' ' || f.status
           FROM payledger.invoices i JOIN payledger.p2p_forwards f ON f.payin_id = i.payin_id WHERE i.payin_id = '$1'")" = \
    "100000 870242 870000 162 1070 settled" ] || fail "p2p: the held payment and the forward are not as the node made them"
  curl -sf "http://127.0.0.1:$MOCK_PORT/v1/invoice/$2" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -e '.state == "SETTLED"' >/dev/null ||
    fail "p2p: the node's hold invoice is not settled"
}
receiver_before=$(balance) gateway_before=$(gateway_balance)
zap_to_paid "$ZAP" "$hold_hash"
lnbits_payment "$receiver_hash" | jq -e '.paid == true' >/dev/null || fail "p2p: the NWC wallet's invoice is not paid"
[ "$(balance)" = $((receiver_before + 70000)) ] || fail "p2p: bob's NWC wallet did not get 70 sat ($receiver_before -> $(balance))"
[ "$(gateway_balance)" = $((gateway_before - 70000)) ] || fail "p2p: the node's gateway did not pay 70 sat"
[ "$(q "SELECT count(*) FROM payledger.check_invariants()")" = 0 ] || fail "p2p: invariants: $(q "SELECT string_agg(invariant, ', ') FROM payledger.check_invariants()")"
echo "p2p: a zap held at the node, forwarded to bob's NWC wallet (70 sat, fee 1.07 sat within 3) and settled with its preimage: PAID"

# the same to bob's LNbits wallet, attached with its invoice key
q "SELECT count(payledger.set_receiver_wallet(id, enabled => id = '$W_LNBITS')) FROM payledger.receiver_wallets" >/dev/null
ZAP2=$(q "SELECT payin_id FROM payledger.create_payin('alice', 'ZAP', 'msat', 100000, '[{\"external\": \"invoice\", \"p2p\": true, \"unit\": 1000}]',
          split => 'zap_p2p', payees => jsonb_build_object('receiver', payledger.open_account('bob', 'msat')))")
for _ in $(seq 1 10); do
  psql_ -d payledger_it -q -c "CALL payledger.run_tick()" 2>/dev/null
  [ "$(q "SELECT state FROM payledger.payins WHERE id = '$ZAP2'")" = PENDING_HELD ] && break
done
IFS='|' read -r receiver_hash2 wallet_kind < <(q "SELECT f.payment_hash, w.kind FROM payledger.p2p_forwards f
  JOIN payledger.receiver_wallets w ON w.id = f.wallet_id WHERE f.payin_id = '$ZAP2'")
[ "$wallet_kind" = lnbits ] || fail "p2p: not the LNbits wallet: $wallet_kind"
receiver_before=$(balance)
zap_to_paid "$ZAP2" "$receiver_hash2"
[ "$(balance)" = $((receiver_before + 70000)) ] || fail "p2p: bob's LNbits wallet did not get 70 sat"
[ "$(q "SELECT payledger.balance(payledger.open_account('bob', 'msat')) || ' ' ||
           payledger.balance(payledger.open_account('operator', 'msat', 'fees', 'routing'))")" = "0 3860" ] ||
  fail "p2p: bob's balance should be untouched and the routing fee account keep 2 x 1.93 sat"
[ "$(q "SELECT count(*) FROM payledger.check_invariants()")" = 0 ] || fail "p2p: invariants after the second zap"
echo "p2p: the same into bob's LNbits wallet; bob's balance untouched, the unspent fee budget kept"
q "SELECT count(payledger.set_receiver_wallet(id, enabled => true)) FROM payledger.receiver_wallets WHERE NOT enabled" >/dev/null

# failures: recorded, not raised
q "UPDATE payledger.receiver_wallet_secrets SET credentials = '{\"invoice_key\": \"wrong\"}' WHERE wallet_id = '$W_LNBITS'" >/dev/null
IFS='|' read -r ok _ _ _ error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_LNBITS', 5000)")
[ "$ok" = f ] || fail "a wrong invoice key was not noticed"
echo "LNbits with a wrong key: $error"
stop_nwc_wallet "$DIR"
IFS='|' read -r ok _ _ _ error < <(q "SELECT * FROM payledger.test_receiver_wallet('$W_NWC04', 1000)")
[ "$ok" = f ] || fail "a gone wallet service was not noticed"
echo "NWC with the wallet service gone: $error"
[ "$(q "SELECT string_agg(kind || ':' || consecutive_failures, ' ' ORDER BY priority) FROM payledger.receiver_wallets")" = \
  "nwc:0 lnbits:1 lightning_address:0 nwc:1" ] || fail "health not recorded: $(q "SELECT string_agg(kind || ':' || consecutive_failures, ' ') FROM payledger.receiver_wallets")"
! grep -q "$(q "SELECT credentials ->> 'secret' FROM payledger.receiver_wallet_secrets WHERE wallet_id = '$W_NWC04'")" "$DIR"/data/log/* "$DIR/server.log" 2>/dev/null ||
  fail "the NWC secret is in the server log"
echo "ok: p2p_wallets"
