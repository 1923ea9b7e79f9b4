#!/usr/bin/env bash
# The LND REST, Core Lightning REST, BTCPay and Stripe adapters over HTTP,
# against test servers that follow each provider's documented API and status
# values and issue real signed BOLT11s (tests/integration/mock_providers.py),
# one tick at a time with CALL payledger.run_tick(): created, paid, expired,
# invalid, paid late, refused credentials, a provider down, a creation whose
# answer was lost; money out (withdrawals at LND and Core Lightning, paid,
# failed, in flight, timed out; a card refund), and open invoices cancelled
# when their pay-in ends. The providers' books are compared with the ledger's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
setup_lnbits   # (its Python has the bolt11 package the test servers sign with)
MOCK_PORT=$((TEST_PORT + 1001))
port_busy "$MOCK_PORT" && fail "port $MOCK_PORT is busy"
"$LNBITS_VENV/bin/python" "$REPO/tests/integration/mock_providers.py" "$MOCK_PORT" >"$DIR/mock.log" 2>&1 &
MOCK_PID=$!
trap 'kill $MOCK_PID 2>/dev/null; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
for _ in $(seq 1 40); do port_busy "$MOCK_PORT" && break; sleep 0.25; done
M="http://127.0.0.1:$MOCK_PORT"
ctl() { curl -sf -X POST "$M/_control/$1" >/dev/null || fail "control $1"; }

psql_ -d postgres -c "CREATE DATABASE payledger_it"
q() { psql_ -d payledger_it -Atc "$1"; }
tick() { psql_ -d payledger_it -c "CALL payledger.run_tick()" 2>/dev/null; }
# the application's view: "<pay-in state> [reason] / <invoice status>"
st() { q "SELECT p.state || coalesce(' ' || p.failure_reason, '') || ' / ' || i.status
            FROM payledger.payins p JOIN payledger.invoices i ON i.payin_id = p.id WHERE p.id = '$1'"; }
ext() { q "SELECT external_id FROM payledger.invoices WHERE payin_id = '$1'"; }
expect() { [ "$(st "$1")" = "$2" ] || fail "$3: expected '$2', got '$(st "$1")'"; }

psql_ -d payledger_it <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.create_asset('usd', 2, 'US dollar cents');
SELECT payledger.register_payout_type('SALE', 'a sale');
SELECT payledger.open_account('ann', 'msat');
SELECT payledger.open_account('shop', 'msat', 'revenue');
SELECT payledger.open_account('shop', 'usd', 'revenue');
SELECT payledger.transfer(payledger.open_account('world', 'msat', 'external', 'main', allow_negative => true),
                          payledger.account_id('ann', 'msat'), 1000000);
-- one profile and one pay-in type per provider kind
SELECT payledger.create_merchant_profile(k), payledger.register_payin_type(upper(k), k),
       payledger.route_payin_type(upper(k), k)
  FROM unnest(ARRAY['lnd', 'cln', 'btcpay', 'stripe', 'badkey']) k;
SELECT payledger.add_provider('lnd', 'lnd', 'lnd_rest', '$M', '{"macaroon": "0201036c6e64"}');
SELECT payledger.add_provider('cln', 'cln', 'cln_rest', '$M', '{"rune": "test-rune"}');
SELECT payledger.add_provider('btcpay', 'btcpay', 'btcpay', '$M', '{"api_key": "btcpay-key"}', '{"store_id": "Store1"}');
SELECT payledger.add_provider('stripe', 'stripe', 'stripe', '$M', '{"secret_key": "sk_test_payledger"}', asset => 'usd');
SELECT payledger.add_provider('badkey', 'lnd', 'lnd_rest', '$M', '{"macaroon": "not-the-macaroon"}');
-- a pay-in of a type: 40 sats from ann, 60 by invoice (cards: 5.00 USD by card)
CREATE FUNCTION buy(kind text) RETURNS uuid LANGUAGE sql AS \$\$
  SELECT payin_id FROM payledger.create_payin('ann', upper(kind), CASE kind WHEN 'stripe' THEN 'usd' ELSE 'msat' END,
    CASE kind WHEN 'stripe' THEN 500 ELSE 100000 END,
    CASE kind WHEN 'stripe' THEN '[{"external": "card"}]'::jsonb
         ELSE jsonb_build_array(jsonb_build_object('account', payledger.account_id('ann', 'msat'), 'amount', 40000),
                                '{"external": "invoice", "amount": 60000}'::jsonb) END,
    jsonb_build_array(jsonb_build_object('type', 'SALE',
      'account', payledger.account_id('shop', CASE kind WHEN 'stripe' THEN 'usd' ELSE 'msat' END, 'revenue'),
      'amount', CASE kind WHEN 'stripe' THEN 500 ELSE 100000 END)))
\$\$;
SQL

for kind in lnd cln btcpay stripe; do
  echo "$kind: created, then paid"
  P=$(q "SELECT buy('$kind')")
  tick
  expect "$P" "PENDING / pending" "$kind created"
  [ -n "$(ext "$P")" ] || fail "$kind: no external id"
  tick
  expect "$P" "PENDING / pending" "$kind still unpaid"
  ctl "settle/$(ext "$P")"
  tick
  expect "$P" "PAID / paid" "$kind paid"

  echo "$kind: expired (Stripe: canceled)"
  P=$(q "SELECT buy('$kind')")
  tick
  ctl "expire/$(ext "$P")"
  tick
  if [ "$kind" = stripe ]; then
    expect "$P" "FAILED UNKNOWN_FAILURE / failed" "$kind canceled"
  else
    expect "$P" "FAILED INVOICE_EXPIRED / expired" "$kind expired"
  fi
done
[ "$(q "SELECT payledger.balance(payledger.account_id('ann', 'msat'))")" = 880000 ] \
  || fail "ann paid 3 x 40 sats (the expired ones refunded)"
[ "$(q "SELECT amount_received FROM payledger.invoices i JOIN payledger.providers p ON p.id = i.provider_id
         WHERE p.kind = 'lnd_rest' AND i.status = 'paid'")" = 60000 ] || fail "LND's amt_paid_msat"
q "SELECT preimage FROM payledger.invoices i JOIN payledger.providers p ON p.id = i.provider_id
    WHERE p.kind = 'lnd_rest' AND i.status = 'paid'" | grep -Eq '^[0-9a-f]{64}$' || fail "LND's preimage, base64 to hex"

echo "btcpay: paid after expiry (PaidLate): recorded as late money"
P=$(q "SELECT buy('btcpay')")
tick
ctl "expire/$(ext "$P")"
tick
expect "$P" "FAILED INVOICE_EXPIRED / expired" "btcpay expired"
ctl "paidlate/$(ext "$P")"
tick
expect "$P" "FAILED INVOICE_EXPIRED / paid" "btcpay paid late"
[ "$(q "SELECT paid_late FROM payledger.invoices WHERE payin_id = '$P'")" = t ] || fail "paid_late"
[ "$(q "SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments'))")" = 60000 ] \
  || fail "the late money is in suspense"

echo "cln: a creation whose answer was lost is found by its label"
P=$(q "SELECT buy('cln')")
I=$(q "SELECT invoice_id FROM payledger.request_invoice('$P')")
H=$(curl -sf -X POST "$M/v1/invoice" -H 'Rune: test-rune' -H 'Content-Type: application/json' \
      -d "{\"amount_msat\": 60000, \"label\": \"$I\", \"description\": \"x\", \"expiry\": 3600}" | jq -r .payment_hash)
tick
expect "$P" "PENDING / pending" "cln created once"
[ "$(ext "$P")" = "$H" ] || fail "the invoice created before is the one"

echo "refused credentials: tries used up, INVOICE_CREATION_FAILED, the key in no message"
psql_ -d payledger_it -c "LOAD 'payledger'" -c "ALTER SYSTEM SET payledger.worker_create_attempts = 2" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
P=$(q "SELECT buy('badkey')")
tick
expect "$P" "PENDING_INVOICE_CREATION / creating" "first refusal"
q "UPDATE payledger.invoices SET next_check_at = now() WHERE payin_id = '$P'" >/dev/null
tick
expect "$P" "FAILED INVOICE_CREATION_FAILED / failed" "second refusal"
q "SELECT last_error FROM payledger.invoices WHERE payin_id = '$P'" | grep -q "HTTP 401" || fail "the refusal's reason"
if grep -rq "not-the-macaroon" "$DIR/server.log"; then fail "a credential in the server log"; fi
if q "SELECT last_error FROM payledger.invoices UNION ALL SELECT last_error FROM payledger.providers" | grep -q macaroon; then
  fail "a credential in an error"
fi

echo "a provider down: backoff, nothing changes; back up: carried on"
P=$(q "SELECT buy('lnd')")
tick
ctl "settle/$(ext "$P")"
ctl down
tick
expect "$P" "PENDING / pending" "unchanged while the provider is down"
[ "$(q "SELECT consecutive_failures > 0 AND retry_after > now() FROM payledger.providers WHERE profile_id = payledger_internal.profile_id('lnd')")" = t ] \
  || fail "the provider backs off"
P2=$(q "SELECT buy('lnd')")
tick
expect "$P2" "PENDING_INVOICE_CREATION / creating" "no creation while backing off"
ctl up
q "UPDATE payledger.providers SET retry_after = now() WHERE profile_id = payledger_internal.profile_id('lnd')" >/dev/null
q "UPDATE payledger.invoices SET next_check_at = now() WHERE payin_id IN ('$P', '$P2')" >/dev/null
tick
expect "$P" "PAID / paid" "settled once the provider is back"
expect "$P2" "PENDING / pending" "created once the provider is back"

# (the other providers backed off too while the server was down: their
# expired invoices are still watched for late money)
q "UPDATE payledger.providers SET retry_after = NULL" >/dev/null

echo "invoices are real BOLT11s, signed by their node"
for kind in lnd cln; do
  P=$(q "SELECT buy('$kind')")
  tick
  q "SELECT d.payment_hash = i.payment_hash AND d.amount_msat = i.amount AND d.payee IS NOT NULL
       FROM payledger.invoices i, payledger.bolt11_decode(i.payment_request) d WHERE i.payin_id = '$P'" | grep -qx t \
    || fail "$kind: the invoice is not a BOLT11 of its hash and amount: $(q "SELECT status, payment_request, last_error FROM payledger.invoices WHERE payin_id = '$P'")"
done

echo "cancel: a pay-in that ends while its invoice is open"
for kind in lnd cln stripe; do
  P=$(q "SELECT buy('$kind')")
  tick
  q "SELECT changed FROM payledger.cancel_payin('$P')" >/dev/null
  tick
  [ "$(q "SELECT status || ' ' || cancel FROM payledger.invoices WHERE payin_id = '$P'")" = "failed cancelled" ] \
    || fail "$kind: not cancelled: $(q "SELECT status || ' ' || coalesce(cancel, '-') || ' ' || coalesce(last_error, '') FROM payledger.invoices WHERE payin_id = '$P'")"
  X=$(ext "$P")
  case $kind in
    lnd) [ "$(curl -sf "$M/v1/invoice/$X" -H 'Grpc-Metadata-macaroon: 0201036c6e64' | jq -r .state)" = CANCELED ] || fail "LND: not CANCELED" ;;
    cln) [ "$(curl -sf -X POST "$M/v1/listinvoices" -H 'Rune: test-rune' -d "{\"payment_hash\": \"$X\"}" | jq '.invoices | length')" = 0 ] \
           || fail "CLN: not deleted" ;;
    stripe) [ "$(curl -sf "$M/v1/payment_intents/$X" -H 'Authorization: Bearer sk_test_payledger' | jq -r .status)" = canceled ] \
           || fail "Stripe: not canceled" ;;
  esac
done
echo "cancel: paid before the cancel got there is late money"
P=$(q "SELECT buy('lnd')")
tick
ctl "settle/$(ext "$P")"
q "SELECT changed FROM payledger.cancel_payin('$P')" >/dev/null
tick
tick
[ "$(q "SELECT status || ' ' || cancel || ' ' || paid_late FROM payledger.invoices WHERE payin_id = '$P'")" = "paid too_late true" ] \
  || fail "the late money"

echo "overpayment: twice the amount (BOLT 4 allows it), the excess booked to the payer"
for kind in lnd cln; do
  P=$(q "SELECT buy('$kind')")
  tick
  A0=$(q "SELECT payledger.balance(payledger.account_id('ann', 'msat'))")
  ctl "overpay/$(ext "$P")"
  tick
  expect "$P" "PAID / paid" "$kind overpaid"
  [ "$(q "SELECT amount_received || ' ' || (overpay_journal IS NOT NULL) FROM payledger.invoices WHERE payin_id = '$P'")" = "120000 true" ] \
    || fail "$kind: the amount received"
  [ $(( $(q "SELECT payledger.balance(payledger.account_id('ann', 'msat'))") - A0 )) = 60000 ] || fail "$kind: the excess to ann"
done

echo "withdrawals: LND pays a Core Lightning invoice and back, fees booked"
psql_ -d payledger_it <<SQL
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true),
       payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
SELECT payledger.set_provider_credentials(id, '{"macaroon": "0201036c6e64", "admin_macaroon": "0201036c6e64ad"}')
  FROM payledger.providers WHERE name = 'lnd';
SELECT payledger.set_provider_credentials(id, '{"rune": "test-rune", "pay_rune": "test-pay-rune"}')
  FROM payledger.providers WHERE profile_id = payledger_internal.profile_id('cln');
SQL
# a BOLT11 of the other node, made at its API: <node> <msat>
bolt11_at() {
  case $1 in
    lnd) curl -sf -X POST "$M/v1/invoices" -H 'Grpc-Metadata-macaroon: 0201036c6e64' \
           -d "{\"value_msat\": \"$2\", \"memo\": \"withdrawal\", \"expiry\": \"600\"}" | jq -r .payment_request ;;
    cln) curl -sf -X POST "$M/v1/invoice" -H 'Rune: test-rune' \
           -d "{\"amount_msat\": $2, \"label\": \"w-$RANDOM$RANDOM\", \"description\": \"withdrawal\", \"expiry\": 600}" | jq -r .bolt11 ;;
  esac
}
pid_of() { q "SELECT id FROM payledger.providers WHERE profile_id = payledger_internal.profile_id('$1')"; }
withdraw() { # <provider> <bolt11> <max_fee>
  q "SELECT withdrawal_id FROM payledger.withdraw('ann', 'msat', '$2', $3, provider => '$(pid_of "$1")')"
}
wst() { q "SELECT w.status || ' / ' || p.state || coalesce(' ' || p.failure_reason, '') || coalesce(' fee ' || w.fee, '')
             FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id WHERE w.id = '$1'"; }
wexpect() { [ "$(wst "$1")" = "$2" ] || fail "$3: expected '$2', got '$(wst "$1")' ($(q "SELECT last_error FROM payledger.withdrawals WHERE id = '$1'"))"; }
ann() { q "SELECT payledger.balance(payledger.account_id('ann', 'msat'))"; }
A0=$(ann)
INV=$(bolt11_at cln 50000)
W1=$(withdraw lnd "$INV" 2000)
tick
wexpect "$W1" "succeeded / PAID fee 1050" "LND paid"
[ "$(curl -sf -X POST "$M/v1/listinvoices" -H 'Rune: test-rune' -d "{\"invoice\": \"\", \"payment_hash\": \"$(q "SELECT payment_hash FROM payledger.withdrawals WHERE id = '$W1'")\"}" \
      | jq -r '.invoices[0].status')" = paid ] || fail "the Core Lightning invoice is not paid"
INV=$(bolt11_at lnd 70000)
W2=$(withdraw cln "$INV" 2000)
tick
wexpect "$W2" "succeeded / PAID fee 1070" "Core Lightning paid"
[ "$(ann)" = $((A0 - 50000 - 1050 - 70000 - 1070)) ] || fail "ann paid the amounts and the fees: $(ann)"

echo "withdrawals: over the fee budget, no route: failed, the escrow back"
W3=$(withdraw lnd "$(bolt11_at cln 50000)" 100)
W4=$(withdraw cln "$(bolt11_at lnd 50000)" 100)
ctl network/fail
W5=$(withdraw lnd "$(bolt11_at cln 20000)" 5000)
tick
ctl network/ok
wexpect "$W3" "failed / FAILED WITHDRAWAL_FAILED" "LND over budget"
wexpect "$W4" "failed / FAILED WITHDRAWAL_FAILED" "Core Lightning over budget"
wexpect "$W5" "failed / FAILED WITHDRAWAL_FAILED" "LND no route"
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W4'" | grep -q "fee budget" || fail "Core Lightning's reason"
[ "$(ann)" = $((A0 - 50000 - 1050 - 70000 - 1070)) ] || fail "failed withdrawals cost nothing"

echo "withdrawals: in flight at LND, then paid"
ctl network/hold
INV=$(bolt11_at cln 30000)
W6=$(withdraw lnd "$INV" 2000)
tick
wexpect "$W6" "pending / PENDING_WITHDRAWAL" "in flight"
H6=$(q "SELECT payment_hash FROM payledger.withdrawals WHERE id = '$W6'")
ctl "resolve/$H6/ok"
ctl network/ok
q "UPDATE payledger.withdrawals SET next_check_at = now() WHERE id = '$W6'" >/dev/null
tick
wexpect "$W6" "succeeded / PAID fee 1030" "paid after the flight"

echo "withdrawals: Core Lightning's pay outlasts the worker's timeout: looked up, not paid again"
psql_ -d payledger_it -c "LOAD 'payledger'" -c "ALTER SYSTEM SET payledger.worker_http_timeout = 1500" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
ctl network/slow
INV=$(bolt11_at lnd 40000)
W7=$(withdraw cln "$INV" 2000)
tick
wexpect "$W7" "unknown / PENDING_WITHDRAWAL" "timed out"
ctl network/ok
q "UPDATE payledger.withdrawals SET next_check_at = now() WHERE id = '$W7'" >/dev/null
tick
wexpect "$W7" "succeeded / PAID fee 1040" "found paid"
psql_ -d payledger_it -c "LOAD 'payledger'" -c "ALTER SYSTEM RESET payledger.worker_http_timeout" -c "SELECT pg_reload_conf()" >/dev/null

echo "withdrawals to a Lightning Address and an LNURL: resolved, checked, paid"
psql_ -d payledger_it -c "LOAD 'payledger'" -c "ALTER SYSTEM SET payledger.lnurl_http_hosts = '127.0.0.1'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
address() { # <provider> <address or lnurl> <msat>
  q "SELECT withdrawal_id FROM payledger.withdraw('ann', 'msat', '$2', 2000, provider => '$(pid_of "$1")', amount_msat => $3)"
}
W8=$(address lnd "cln-bob@127.0.0.1:$MOCK_PORT" 21000)
lnurl() { "$LNBITS_VENV/bin/python" -c "
from bech32 import bech32_encode, convertbits
print(bech32_encode('lnurl', convertbits(b'$1', 8, 5)).upper())"; }
W9=$(address cln "$(lnurl "http://127.0.0.1:$MOCK_PORT/.well-known/lnurlp/lnd-carl")" 22000)
tick
wexpect "$W8" "sending / PENDING_WITHDRAWAL" "address resolved"
wexpect "$W9" "sending / PENDING_WITHDRAWAL" "LNURL resolved"
tick
wexpect "$W8" "succeeded / PAID fee 1021" "paid to the address"
wexpect "$W9" "succeeded / PAID fee 1022" "paid to the LNURL"
H8=$(q "SELECT payment_hash FROM payledger.withdrawals WHERE id = '$W8'")
[ "$(curl -sf -X POST "$M/v1/listinvoices" -H 'Rune: test-rune' -d "{\"payment_hash\": \"$H8\"}" | jq -r '.invoices[0].status')" = paid ] \
  || fail "bob's invoice is not paid at his node"
echo "withdrawals to addresses that do not hold to LUD-06: failed before paying, the escrow back"
A1=$(ann)
W10=$(address lnd "liar@127.0.0.1:$MOCK_PORT" 21000)
W11=$(address lnd "plain@127.0.0.1:$MOCK_PORT" 21000)
W12=$(address lnd "closed@127.0.0.1:$MOCK_PORT" 21000)
W13=$(address lnd "nobody@127.0.0.1:$MOCK_PORT" 21000)
W14=$(address lnd "$(lnurl "http://localhost:$MOCK_PORT/.well-known/lnurlp/lnd-dan")" 21000)
tick
for w in $W10 $W11 $W12 $W13 $W14; do wexpect "$w" "failed / FAILED WITHDRAWAL_FAILED" "a bad LNURL server"; done
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W10'" | grep -q "is for Some(22000) msat, not 21000" || fail "the liar's amount"
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W11'" | grep -q "description hash" || fail "the plain description"
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W12'" | grep -q "takes no payments" || fail "LUD-06 ERROR reason"
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W14'" | grep -q "not https" || fail "http to a host not allowed"
[ "$(ann)" = "$A1" ] || fail "failed resolutions cost nothing"

echo "auto-withdrawal above a threshold, to a Lightning Address"
psql_ -d payledger_it <<SQL >/dev/null
SELECT payledger.register_payin_type('AUTO_WITHDRAWAL', 'auto-withdrawal', allow_external => false, withdrawal => true);
SELECT payledger.open_account('eve', 'msat');
SELECT payledger.set_auto_withdrawal('eve', 'msat', 'lnd-eve@127.0.0.1:$MOCK_PORT', 100000, 5,
                                     provider => (SELECT id FROM payledger.providers WHERE profile_id = payledger_internal.profile_id('cln')));
SELECT payledger.transfer(payledger.account_id('world', 'msat', 'external', 'main'), payledger.account_id('eve', 'msat'), 160000);
SQL
tick; tick; tick
AW=$(q "SELECT last_withdrawal_id FROM payledger.auto_withdrawals WHERE owner_id = 'eve'")
[ -n "$AW" ] || fail "no auto-withdrawal started: $(q "SELECT last_error FROM payledger.auto_withdrawals")"
wexpect "$AW" "succeeded / PAID fee 1057" "auto-withdrawn"
# 60,000 over: a 5 % budget of 3,000, 57,000 sent, 1,057 paid in fees, 1,943 of the budget back
[ "$(q "SELECT amount || ' ' || max_fee FROM payledger.withdrawals WHERE id = '$AW'")" = "57000 3000" ] || fail "the auto-withdrawal's amounts"
[ "$(q "SELECT payledger.balance(payledger.account_id('eve', 'msat'))")" = 101943 ] || fail "eve keeps the threshold and the budget's rest"
tick
[ "$(q "SELECT count(*) FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id WHERE p.owner_id = 'eve'")" = 1 ] \
  || fail "one auto-withdrawal, not another below the threshold"

echo "a card refund at Stripe"
P=$(q "SELECT buy('stripe')")
tick
ctl "settle/$(ext "$P")"
tick
expect "$P" "PAID / paid" "card purchase"
R1=$(q "SELECT withdrawal_id FROM payledger.refund_to_card('shop', '$P', 200,
          jsonb_build_array(jsonb_build_object('account', payledger.account_id('shop', 'usd', 'revenue'))))")
tick
wexpect "$R1" "succeeded / PAID fee 0" "refunded"
[ "$(curl -sf "$M/v1/refunds?payment_intent=$(ext "$P")" -H 'Authorization: Bearer sk_test_payledger' \
      | jq -r '[.data[] | select(.metadata.payledger_withdrawal == "'"$R1"'") | .amount] | add')" = 200 ] || fail "Stripe's refund"

echo "the providers' books agree with the ledger's"
BOOKS=$(curl -sf "$M/_control/payments" | jq -r '.[] | select(.status == "SUCCEEDED") | "\(.payment_hash) \(.fee_msat)"' | sort)
LEDGER=$(q "SELECT payment_hash || ' ' || fee FROM payledger.withdrawals WHERE status = 'succeeded' AND payment_hash IS NOT NULL ORDER BY 1" | sort)
[ "$BOOKS" = "$LEDGER" ] || fail "the nodes paid: $BOOKS; the ledger says: $LEDGER"
[ "$(curl -sf "$M/_control/payments" | jq '[.[] | .attempts] | max')" = 1 ] || fail "a payment was sent twice"

[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }
echo "ok: providers"
