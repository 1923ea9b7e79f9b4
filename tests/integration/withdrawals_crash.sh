#!/usr/bin/env bash
# Withdrawals in flight when the server dies: CLIENTS clients withdraw to
# fresh invoices of a receiver's LNbits wallet while the background worker
# pays them out of the merchant's wallet; at a seeded moment the postmaster
# is killed with SIGKILL (the worker with it, perhaps between a payment and
# its record); one in twenty asks more than the merchant's wallet holds and
# is refused by LNbits. After the restart the worker looks up what it did
# not see, and then every withdrawal is paid once or refunded once:
#   - none is left waiting; check_invariants() is empty;
#   - every acknowledged withdrawal is there;
#   - each paid one's invoice is paid at LNbits, each failed one's is not;
#   - LNbits paid out exactly the paid ones (the merchant's outgoing
#     payments), the receiver got exactly their amounts, and the merchant
#     wallet moved by exactly what the clearing account says.
# First, deterministically: a payment made at LNbits whose result is lost
# (the worker held still, its call made by hand, the result thrown away) is
# found by the lookup and settled, paid once.
#   bash tests/integration/withdrawals_crash.sh   (ROUNDS=2 CLIENTS=6 SEED=11)
set -euo pipefail
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'wd'
payledger.worker_interval = 1
payledger.worker_max_backoff = 2
payledger.worker_http_timeout = 1000"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-6}
SEED=${SEED:-11}
setup_lnbits
LNBITS_PORT=${LNBITS_PORT:-$((TEST_PORT + 1000))}
trap 'touch "$DIR/stop"; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_lnbits "$DIR" "$LNBITS_PORT"
# the merchant's wallet pays; the payer's wallet (funded) is the receiver
read -r INKEY PAYKEY MERCHANT_ADMIN PAYER_INKEY < <(lnbits_setup "$LNBITS_PORT")
L="http://127.0.0.1:$LNBITS_PORT"
q() { psql_ -d wd -Atc "$1"; }
wallet_msat() { curl -sf "$L/api/v1/wallet" -H "X-Api-Key: $1" | jq -r .balance; }
invoice() { # <inkey> <sats>
  curl -sf -X POST "$L/api/v1/payments" -H "X-Api-Key: $1" -H 'Content-Type: application/json' \
    -d "{\"out\":false,\"amount\":$2,\"memo\":\"withdrawal\"}" | jq -r .bolt11
}
# the merchant's wallet gets 300,000 sats from the payer's (outside payledger)
lnbits_pay "$LNBITS_PORT" "$PAYKEY" "$(invoice "$INKEY" 300000)" || fail "funding the merchant's wallet"

psql_ -d postgres -c "CREATE DATABASE wd" >/dev/null
psql_ -d wd >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0);
SELECT payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
SELECT payledger.create_merchant_profile('shop', is_default => true);
SELECT payledger.add_provider('shop', 'lnbits', 'lnbits', '$L', '{"invoice_key": "$INKEY", "admin_key": "$MERCHANT_ADMIN"}');
SELECT payledger.open_account('payledger', 'msat', 'external', 'world', allow_negative => true);
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'),
                          payledger.open_account('u' || g, 'msat'), 1000000000) FROM generate_series(1, 10) g;
CREATE TABLE wd_acks (key text PRIMARY KEY, withdrawal_id uuid NOT NULL);
SQL
merchant0=$(wallet_msat "$MERCHANT_ADMIN"); receiver0=$(wallet_msat "$PAYKEY")
clearing() { q "SELECT coalesce((SELECT payledger.balance(a.id) FROM payledger.accounts a
                WHERE a.owner_id = 'payledger' AND a.kind = 'provider_clearing' AND a.name = 'invoice'), 0)"; }
clearing0=$(clearing)

log "a payment whose result is lost"
psql_ -d wd -c "ALTER SYSTEM SET payledger.worker_interval = 3600" -c "SELECT pg_reload_conf()" >/dev/null
sleep 2   # the worker wakes on SIGHUP, ticks once, then sleeps an hour
W0=$(q "SELECT withdrawal_id FROM payledger.withdraw('u1', 'msat', '$(invoice "$PAYER_INKEY" 7)', 5000)")
[ "$(q "SELECT count(*) FROM jsonb_array_elements(payledger.provider_call(payledger.worker_claim(10))) r
         WHERE r ->> 'status' = 'succeeded'")" = 1 ] || fail "the payment made by hand"
[ "$(q "SELECT status FROM payledger.withdrawals WHERE id = '$W0'")" = unknown ] || fail "W0 should be unknown"
q "UPDATE payledger.withdrawals SET locked_until = now() - interval '1 second' WHERE id = '$W0'" >/dev/null
psql_ -d wd -c "ALTER SYSTEM RESET payledger.worker_interval" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 1 40); do
  [ "$(q "SELECT status FROM payledger.withdrawals WHERE id = '$W0'")" = succeeded ] && break; sleep 0.25
done
[ "$(q "SELECT status || ' ' || attempts FROM payledger.withdrawals WHERE id = '$W0'")" = "succeeded 1" ] \
  || fail "W0 found by its lookup and paid once: $(q "SELECT status || ' ' || attempts FROM payledger.withdrawals WHERE id = '$W0'")"
[ $((merchant0 - $(wallet_msat "$MERCHANT_ADMIN"))) = 7000 ] || fail "W0 paid once at LNbits"

client() { # <round> <n>: withdrawals until told to stop; logs what committed
  local i=0 key bolt11 id
  while [ ! -e "$DIR/stop" ]; do
    i=$((i + 1)); key="r$1-c$2-$i"
    if [ $((RANDOM % 20)) = 0 ]; then   # more than the merchant's wallet holds
      bolt11=$(invoice "$PAYER_INKEY" 400000) || continue
    else
      bolt11=$(invoice "$PAYER_INKEY" $((1 + RANDOM % 40))) || continue
    fi
    if id=$(as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -d wd -v ON_ERROR_STOP=1 -Atc \
         "INSERT INTO wd_acks SELECT '$key', withdrawal_id
            FROM payledger.withdraw('u$((1 + RANDOM % 10))', 'msat', '$bolt11', 5000, idempotency_key => '$key')
          RETURNING withdrawal_id" 2>/dev/null); then
      echo "$key" >> "$DIR/acks"
    fi
  done
}

RANDOM=$SEED
touch "$DIR/acks"
for round in $(seq 1 "$ROUNDS"); do
  crash_under_clients "$round" withdrawing
  # the worker settles what is left: payments it did not see are looked up
  # (one LNbits does not know counts as never sent only after 62 s)
  for _ in $(seq 1 240); do
    [ "$(q "SELECT count(*) FROM payledger.withdrawals WHERE status NOT IN ('succeeded', 'failed')")" = 0 ] && break
    sleep 0.5
  done
  left=$(q "SELECT count(*) FROM payledger.withdrawals WHERE status NOT IN ('succeeded', 'failed')")
  [ "$left" = 0 ] || { q "SELECT status, count(*) FROM payledger.withdrawals GROUP BY 1"; fail "round $round: $left withdrawals still waiting"; }
  check_after_crash "$round" wd wd_acks withdrawals
  echo "round $round: killed after ${delay}s; $acked withdrawals acknowledged so far;" \
       "$(q "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status::text, count(*) AS n FROM payledger.withdrawals GROUP BY 1) s")"
done

# each withdrawal against LNbits' books: a paid one's invoice is paid, a failed one's is not
bad=0
while IFS='|' read -r hash status; do
  paid=$(curl -sf "$L/api/v1/payments/$hash" -H "X-Api-Key: $PAYER_INKEY" | jq -r .paid)
  if { [ "$status" = succeeded ] && [ "$paid" != true ]; } || { [ "$status" = failed ] && [ "$paid" = true ]; }; then
    echo "withdrawal of $hash is $status, the invoice paid=$paid" >&2; bad=$((bad + 1))
  fi
done < <(q "SELECT payment_hash, status FROM payledger.withdrawals")
[ "$bad" = 0 ] || fail "$bad withdrawals disagree with LNbits"
paid_sum=$(q "SELECT coalesce(sum(amount), 0) FROM payledger.withdrawals WHERE status = 'succeeded'")
fees=$(q "SELECT coalesce(sum(fee), 0) FROM payledger.withdrawals WHERE status = 'succeeded'")
merchant1=$(wallet_msat "$MERCHANT_ADMIN"); receiver1=$(wallet_msat "$PAYKEY"); clearing1=$(clearing)
[ $((receiver1 - receiver0)) = "$paid_sum" ] \
  || fail "the receiver got $((receiver1 - receiver0)) msat, the paid withdrawals are $paid_sum"
[ $((merchant0 - merchant1)) = $((paid_sum + fees)) ] \
  || fail "the merchant's wallet paid out $((merchant0 - merchant1)) msat, the paid withdrawals and fees are $((paid_sum + fees))"
[ $((merchant0 - merchant1)) = $((clearing1 - clearing0)) ] \
  || fail "LNbits' books (merchant $merchant0 -> $merchant1) and the ledger's (clearing $clearing0 -> $clearing1) disagree"
echo "withdrawals crash: $ROUNDS kills; $(q "SELECT count(*) FROM payledger.withdrawals") withdrawals," \
     "$(q "SELECT count(*) FROM payledger.withdrawals WHERE status = 'succeeded'") paid once ($paid_sum msat)," \
     "the rest refunded; LNbits and the ledger agree"
