#!/usr/bin/env bash
# The LND REST, Core Lightning REST, BTCPay and Stripe adapters over HTTP,
# against test servers that follow each provider's documented API and status
# values (tests/integration/mock_providers.py), one tick at a time with
# CALL payledger.run_tick(): created, paid, expired, invalid, paid late,
# refused credentials, a provider down, a creation whose answer was lost.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
MOCK_PORT=$((TEST_PORT + 1001))
port_busy "$MOCK_PORT" && fail "port $MOCK_PORT is busy"
python3 "$REPO/tests/integration/mock_providers.py" "$MOCK_PORT" >"$DIR/mock.log" 2>&1 &
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

[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }
echo "ok: providers"
