#!/usr/bin/env bash
# The credits console (examples/credits-console) end to end, with real parts:
# payledger with its worker, a real LNbits issuing the invoices, postrust in
# PostgREST compatibility mode in front of the database, the console's own
# server, and headless Chromium driven by playwright-core
# (console_browser.mjs, screenshots in tests/.out/console/). Then, over the
# REST API: one user never sees another organisation's data, a read-only
# member cannot buy, a member removed mid-session sees nothing from the next
# request, and the purchase's event reaches a webhook endpoint that verifies
# its signature.
set -euo pipefail
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'payledger_it'
payledger.worker_interval = 1
payledger.worker_max_backoff = 2
listen_addresses = '127.0.0.1'"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
setup_lnbits
setup_console
LNBITS_PORT=$((TEST_PORT + 1010)) REST_PORT=$((TEST_PORT + 1011)) CONSOLE_PORT=$((TEST_PORT + 1012))
HOOK_PORT=$((TEST_PORT + 1013))
SHOTS="$REPO/tests/.out/console"
JWT_SECRET="console-test-secret-of-at-least-32-characters"
trap 'kill ${RECEIVER:-0} 2>/dev/null; stop_console "$DIR"; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY _ _ < <(lnbits_setup "$LNBITS_PORT")
psql_ -d postgres -c "CREATE DATABASE payledger_it"
q() { psql_ -d payledger_it -Atc "$1"; }
wait_for() { # <sql returning true> <what>
  local i
  for i in $(seq 1 120); do [ "$(q "$1")" = t ] && return 0; sleep 0.25; done
  fail "timed out waiting for: $2"
}

# what the demo has before its console part, then the console's data
psql_ -d payledger_it >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3, 'millisatoshi');
SELECT payledger.create_merchant_profile('shop', is_default => true);
SELECT payledger.add_provider('shop', 'lnbits', 'lnbits', 'http://127.0.0.1:$LNBITS_PORT',
                              '{"invoice_key": "$INKEY"}', invoice_expiry => '10 minutes');
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric('storage', 'gauge', 'GiB'), payledger.register_credit_metric('bandwidth', 'counter', 'GiB');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "to": 10, "price": 0.09}, {"from": 10, "price": 0.08}]');
SELECT payledger.define_credit_plan('starter', '{"storage": 5, "bandwidth": 50}');
SELECT payledger.set_credit_org('acme', 'starter');
$(console_roles_sql)
SQL
psql_ -d payledger_it -f - >/dev/null <"$REPO/scripts/console.sql"
SECRET=$(q "SELECT endpoint_secret FROM payledger.add_webhook_endpoint('app', 'http://127.0.0.1:$HOOK_PORT/hooks', ARRAY['credits.purchase_%'])")
HOOKS="$DIR/hooks.jsonl"; touch "$HOOKS"
python3 "$REPO/tests/integration/webhook_receiver.py" "$HOOK_PORT" "$SECRET" "$HOOKS" &
RECEIVER=$!

start_postrust "$DIR" "$REST_PORT" "postgres://authenticator@127.0.0.1:$TEST_PORT/payledger_it" "$JWT_SECRET"
start_console "$DIR" "$CONSOLE_PORT" "http://127.0.0.1:$REST_PORT"
ANA=$(mint_jwt "$JWT_SECRET" ana) BO=$(mint_jwt "$JWT_SECRET" bo)

echo "the browser: sign in, see acme's credits, usage and history, buy a package, pay it, watch it arrive"
rm -rf "$SHOTS"; mkdir -p "$SHOTS"
node "$REPO/tests/integration/console_browser.mjs" "http://127.0.0.1:$CONSOLE_PORT/" "$ANA" \
  "http://127.0.0.1:$LNBITS_PORT" "$PAYKEY" "$SHOTS" || { tail -20 "$DIR/postrust.log"; fail "the browser test"; }
wait_for "SELECT count(*) = 1 FROM payledger.credit_grants g JOIN payledger.payins p ON p.id = g.payin_id
           WHERE g.org_id = 'acme' AND p.metadata ->> 'bought_by' = 'ana' AND p.state = 'PAID'" "acme's purchased grant"

echo "the REST API (postrust in PostgREST mode): organisations kept apart"
rest() { # <method> <path> <token|-> [org] [json body]: prints "status body"
  local args=(-s -o "$DIR/body" -w '%{http_code}' -X "$1" "http://127.0.0.1:$REST_PORT$2"
              -H 'Accept-Profile: payledger' -H 'Content-Profile: payledger' -H 'Content-Type: application/json')
  [ "$3" != - ] && args+=(-H "Authorization: Bearer $3")
  [ -n "${4:-}" ] && args+=(-H "X-Org-Id: $4")
  [ -n "${5:-}" ] && args+=(-d "$5")
  echo "$(curl "${args[@]}") $(cat "$DIR/body")"
}
expect() { # <what> <actual> <jq filter on "status body" split>
  local status=${2%% *} body=${2#* }
  jq -e --argjson status "$status" "$3" <<<"$body" >/dev/null || fail "$1: got $2"
}
expect "anon reads nothing" "$(rest GET /my_credit_balance -)" '$status == 401'
expect "ana's organisations" "$(rest GET '/my_org_memberships?order=org_id' "$ANA")" \
  '$status == 200 and (map(.org_id + ":" + .role) == ["acme:owner", "globex:read_only"])'
expect "bo sees globex's credits, all used" "$(rest POST /rpc/my_total_credits "$BO" globex '{}')" '$status == 200 and .[0].available == 0'
expect "and its storage blocked" "$(rest GET '/my_plan_usage?metric=eq.storage' "$BO" globex)" '$status == 200 and .[0].blocked'
expect "bo asking for acme sees nothing" "$(rest POST /rpc/my_total_credits "$BO" acme '{}')" '$status == 200 and . == []'
expect "bo cannot see acme's grants" "$(rest GET /my_credit_grants "$BO" acme)" '$status == 200 and . == []'
expect "bo cannot buy for acme" "$(rest POST /rpc/buy_credits "$BO" acme '{"package": "credits-100"}')" \
  '$status >= 400 and .code == "42501"'
expect "ana, read-only in globex, cannot buy there" "$(rest POST /rpc/buy_credits "$ANA" globex '{"package": "credits-100"}')" \
  '$status >= 400 and .code == "42501"'
expect "a forged token is refused" "$(rest GET /my_org_memberships "${BO%?}x")" '$status == 401'
q "SELECT payledger.remove_org_member('globex', 'bo')" >/dev/null
expect "bo, removed, sees nothing with the same token" "$(rest POST /rpc/my_total_credits "$BO" globex '{}')" \
  '$status == 200 and . == []'
expect "nor globex's payins" "$(rest GET /my_payins "$BO" globex)" '$status == 200 and . == []'

echo "the purchase's event, delivered and verified"
for _ in $(seq 1 80); do
  [ "$(jq -rs '[.[] | select(.valid and .type == "credits.purchase_paid")] | length' "$HOOKS")" = 1 ] && break
  sleep 0.25
done
[ "$(jq -rs '[.[] | select(.valid and .type == "credits.purchase_paid" and .data.payload.org == "acme")] | length' "$HOOKS")" = 1 ] \
  || { cat "$HOOKS"; fail "credits.purchase_paid for acme, signed"; }
[ "$(q "SELECT count(*) FROM payledger.check_invariants()")" = 0 ] || fail "invariants"
echo "console: ok (screenshots in tests/.out/console/)"
