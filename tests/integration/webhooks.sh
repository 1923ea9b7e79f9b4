#!/usr/bin/env bash
# The outbox delivered to an application's HTTP endpoint by the background
# worker, signed as the Standard Webhooks specification says and verified by
# the endpoint with its own code (tests/integration/webhook_receiver.py):
# topics filtered, failures retried with the same message id, a dead
# delivery sent again, a paused endpoint catching up, the secret in no log.
set -euo pipefail
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'payledger_it'
payledger.worker_interval = 1
payledger.worker_max_backoff = 2
payledger.webhook_max_attempts = 3"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
HOOK_PORT=$((TEST_PORT + 1003))
port_busy "$HOOK_PORT" && fail "port $HOOK_PORT is busy"
psql_ -d postgres -c "CREATE DATABASE payledger_it"
q() { psql_ -d payledger_it -Atc "$1"; }
wait_for() { # <sql returning true> <what>
  local i
  for i in $(seq 1 80); do [ "$(q "$1")" = t ] && return 0; sleep 0.25; done
  fail "timed out waiting for: $2"
}
psql_ -d payledger_it >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3, 'millisatoshi');
SELECT payledger.register_payin_type('BUY', 'a purchase'), payledger.register_payout_type('SALE', 'a sale');
SELECT payledger.transfer(payledger.open_account('world', 'msat', 'external', 'main', allow_negative => true),
                          payledger.open_account('ann', 'msat'), 1000000);
SELECT payledger.open_account('shop', 'msat', 'revenue');
CREATE FUNCTION buy(amount bigint) RETURNS uuid LANGUAGE sql AS \$\$
  SELECT payin_id FROM payledger.create_payin('ann', 'BUY', 'msat', amount,
    jsonb_build_array(jsonb_build_object('account', payledger.account_id('ann', 'msat'))),
    jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', payledger.account_id('shop', 'msat', 'revenue'),
                                         'amount', amount)))
\$\$;
SQL
SECRET=$(q "SELECT endpoint_secret FROM payledger.add_webhook_endpoint('app', 'http://127.0.0.1:$HOOK_PORT/hooks', ARRAY['payin.%'])")
LOG="$DIR/hooks.jsonl"; touch "$LOG"; chmod a+r "$LOG"
python3 "$REPO/tests/integration/webhook_receiver.py" "$HOOK_PORT" "$SECRET" "$LOG" &
RECEIVER=$!
trap 'kill $RECEIVER 2>/dev/null; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
for _ in $(seq 1 40); do port_busy "$HOOK_PORT" && break; sleep 0.25; done
mode() { curl -sf -X POST "http://127.0.0.1:$HOOK_PORT/_mode/$1" >/dev/null; }
got() { jq -rs "$1" "$LOG"; }

echo "delivered, signed, topics filtered"
P1=$(q "SELECT buy(1000)")
q "SELECT payledger_internal.emit_event('credits.low', NULL, 'acme', '{}')" >/dev/null
wait_for "SELECT count(*) = 1 FROM payledger.webhook_deliveries WHERE status = 'delivered'" "the payin.paid delivery"
[ "$(got '[.[] | select(.valid)] | length')" = 1 ] || { cat "$LOG"; fail "one valid request"; }
[ "$(got '.[0].type + " " + .[0].data.subject_id')" = "payin.paid $P1" ] || fail "the event's type and subject"
[ "$(q "SELECT count(*) FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id
         WHERE e.topic = 'credits.low'")" = 0 ] || fail "a topic the endpoint does not take was queued"

echo "two failures, then delivered: the same message id each time"
mode fail/2
P2=$(q "SELECT buy(2000)")
wait_for "SELECT status = 'delivered' FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id
           WHERE e.subject_id = '$P2'" "P2's delivery after two failures"
[ "$(q "SELECT attempts FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id WHERE e.subject_id = '$P2'")" = 3 ] \
  || fail "three attempts"
[ "$(got "[.[] | select(.data.subject_id == \"$P2\" or .status == 500) | .id] | unique | length")" = 1 ] || { cat "$LOG"; fail "one message id for the retries"; }

echo "dead after webhook_max_attempts, sent again by hand"
mode down
P3=$(q "SELECT buy(3000)")
wait_for "SELECT status = 'dead' FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id
           WHERE e.subject_id = '$P3'" "P3's delivery dead"
mode ok
D3=$(q "SELECT d.id FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id WHERE e.subject_id = '$P3'")
[ "$(q "SELECT payledger.retry_webhook_delivery('$D3')")" = pending ] || fail "retry"
wait_for "SELECT status = 'delivered' FROM payledger.webhook_deliveries WHERE id = '$D3'" "P3 delivered after the retry"

echo "a paused endpoint catches up when resumed"
EP=$(q "SELECT id FROM payledger.webhook_endpoints WHERE name = 'app'")
q "SELECT payledger.set_webhook_endpoint_enabled('$EP', false)" >/dev/null
P4=$(q "SELECT buy(4000)")
sleep 2.5
[ "$(got "[.[] | select(.data.subject_id == \"$P4\")] | length")" = 0 ] || fail "sent while paused"
q "SELECT payledger.set_webhook_endpoint_enabled('$EP', true)" >/dev/null
wait_for "SELECT status = 'delivered' FROM payledger.webhook_deliveries d JOIN payledger.events e ON e.id = d.event_id
           WHERE e.subject_id = '$P4'" "P4 delivered after resuming"

[ "$(got '[.[] | select(.valid | not)] | length')" = 0 ] || fail "a request with a bad signature"
if grep -q "${SECRET#whsec_}" "$DIR/server.log"; then fail "the secret in the server log"; fi
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || fail "invariants"
echo "ok: webhooks"
