#!/usr/bin/env bash
# The background worker against a real LNbits (FakeWallet) on loopback:
#  1. a pay-in with an invoice remainder: the worker creates the invoice at
#     LNbits, a second wallet pays it, the worker settles it (pay-outs
#     credited, the settle hook runs once);
#  2. an unpaid invoice with a short expiry: FAILED (INVOICE_EXPIRED), the
#     balance part refunded;
#  3. LNbits down: the worker backs off, the pay-in waits, and is invoiced and
#     settled once LNbits is back;
#  4. an invoice paid just before LNbits went down is settled after it
#     returns (settings reloaded on SIGHUP to hold the worker still meanwhile);
#  5. the worker killed with SIGKILL comes back and carries on;
#  6. a NIP-90 job paid upfront by its own invoice: the worker opens it at
#     LNbits, the customer pays the bolt11 of the payment-required feedback,
#     and the settlement credits the job, which moves to processing;
#  7. the worker's periodic run registered by credits (metering), shared
#     with a helper process: every organisation over its plan is charged
#     once, by the worker or by the helper;
#  8. withdrawals, real payments out of the merchant's LNbits wallet to an
#     invoice of the payer's: paid once, the fee budget's rest back, LNbits'
#     books and the ledger's agree; one LNbits refuses (more than the wallet
#     holds) fails and gives the money back;
#  9. a tip paid out through the provider the purchase came in by (Keysat's
#     tipping): the payer's wallet receives it; a pay-in cancelled while its
#     LNbits invoice is open (LNbits cannot cancel one: marked so, still
#     watched), then paid anyway: late money in suspense, nothing lost.
set -euo pipefail
INTERVAL=1
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'payledger_it'
payledger.worker_interval = $INTERVAL
payledger.worker_max_backoff = 2
payledger.worker_http_timeout = 3000
payledger.metering_workers = 2"
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
setup_lnbits
LNBITS_PORT=${LNBITS_PORT:-$((TEST_PORT + 1000))}
trap 'stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY MERCHANT_ADMIN PAYER_INKEY < <(lnbits_setup "$LNBITS_PORT")

psql_ -d postgres -c "CREATE DATABASE payledger_it"
q() { psql_ -d payledger_it -Atc "$1"; }
# wait_for <sql returning true> <what> [seconds]
wait_for() {
  local i
  for i in $(seq 1 $((${3:-20} * 4))); do
    [ "$(q "$1")" = t ] && return 0
    sleep 0.25
  done
  fail "timed out waiting for: $2"
}

psql_ -d payledger_it <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.register_payin_type('ITEM_CREATE', 'post an item');
SELECT payledger.register_payout_type('FOUNDER', 'to the territory founder');
SELECT payledger.create_merchant_profile('shop', is_default => true);
SELECT payledger.add_provider('shop', 'lnbits', 'lnbits', 'http://127.0.0.1:$LNBITS_PORT',
                              '{"invoice_key": "$INKEY"}', invoice_expiry => '10 minutes');
SELECT payledger.open_account('ann', 'msat');
SELECT payledger.open_account('bob', 'msat');
SELECT payledger.transfer(payledger.open_account('payledger', 'msat', 'external', 'world', allow_negative => true),
                          payledger.account_id('ann', 'msat'), 1000000);
-- the application's settle hook: one license per pay-in, enforced by a key
CREATE TABLE licenses (payin_id uuid PRIMARY KEY, issued_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION issue_license(payin uuid, state payledger.payin_state) RETURNS void
LANGUAGE sql AS 'INSERT INTO licenses (payin_id) VALUES (payin)';
SELECT payledger.register_settle_hook('license', 'issue_license(uuid, payledger.payin_state)');
-- 40 sats from ann's balance, 60 by invoice
CREATE FUNCTION new_payin() RETURNS uuid LANGUAGE sql AS \$\$
  SELECT payin_id FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 100000,
    jsonb_build_array(jsonb_build_object('account', payledger.account_id('ann', 'msat'), 'amount', 40000),
                      '{"external": "invoice", "amount": 60000}'::jsonb),
    jsonb_build_array(jsonb_build_object('type', 'FOUNDER', 'account', payledger.account_id('bob', 'msat'),
                                         'amount', 100000)))
\$\$;
SQL
wait_for "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'payledger worker'" "the worker to start" 30
pay() { lnbits_pay "$LNBITS_PORT" "$PAYKEY" "$(q "SELECT payment_request FROM payledger.invoices WHERE payin_id = '$1'")"; }
state() { q "SELECT state FROM payledger.payins WHERE id = '$1'"; }
balance() { q "SELECT payledger.balance(payledger.account_id('$1', 'msat'))"; }

echo "1. settled by the worker"
P1=$(q "SELECT new_payin()")
wait_for "SELECT state = 'PENDING' FROM payledger.payins WHERE id = '$P1'" "P1's invoice at LNbits"
[ "$(balance ann)" = 960000 ] || fail "ann's 40 sats should be in escrow"
# a listener, as an application would run one: NOTIFY payledger_events
psql_ -d payledger_it -c "LISTEN payledger_events" -c "SELECT pg_sleep(6)" >"$DIR/notify.out" 2>&1 &
listener=$!
sleep 0.5
paid_at=$(date +%s.%N)
pay "$P1"
wait_for "SELECT state = 'PAID' FROM payledger.payins WHERE id = '$P1'" "P1 PAID"
settled_in=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $paid_at }")
[ "$(balance bob)" = 100000 ] || fail "bob should have earned 100 sats, has $(balance bob)"
[ "$(q "SELECT count(*) FROM licenses WHERE payin_id = '$P1'")" = 1 ] || fail "one license for P1"
[ "$(q "SELECT status || ' ' || amount_received FROM payledger.invoices WHERE payin_id = '$P1'")" = "paid 60000" ] \
  || fail "P1's invoice should be paid in full"
echo "   paid at LNbits -> PAID in ${settled_in}s (worker interval ${INTERVAL}s)"
wait "$listener"
grep -q 'notification "payledger_events" with payload "{"last_id": [0-9]*}"' "$DIR/notify.out" \
  || { cat "$DIR/notify.out"; fail "no NOTIFY payledger_events"; }
[ "$(q "SELECT count(*) FROM payledger.events_since(0, 1000) WHERE topic = 'payin.paid' AND subject_id = '$P1'")" = 1 ] \
  || fail "the payin.paid event of P1"
[ "$(q "SELECT last_id = (SELECT max(id) FROM payledger.events) FROM payledger.events_announced")" = t ] \
  || fail "the worker announced every event"

echo "2. expiry"
# (in the creating transaction, before the worker opens the invoice itself)
P2=$(q "WITH p AS (SELECT new_payin() AS id) SELECT p.id FROM p, payledger.request_invoice(p.id, expiry => '2 seconds')")
wait_for "SELECT state = 'FAILED' FROM payledger.payins WHERE id = '$P2'" "P2 FAILED" 30
[ "$(q "SELECT failure_reason FROM payledger.payins WHERE id = '$P2'")" = INVOICE_EXPIRED ] || fail "P2's reason"
[ "$(q "SELECT status FROM payledger.invoices WHERE payin_id = '$P2'")" = expired ] || fail "P2's invoice expired"
[ "$(balance ann)" = 960000 ] || fail "ann's 40 sats of P2 should be back: $(balance ann)"

echo "3. LNbits unreachable"
stop_lnbits "$DIR"
P3=$(q "SELECT new_payin()")
wait_for "SELECT consecutive_failures >= 2 AND retry_after IS NOT NULL FROM payledger.providers" "the provider's backoff" 30
[ "$(state "$P3")" = PENDING_INVOICE_CREATION ] || fail "P3 should wait, is $(state "$P3")"
[ "$(q "SELECT status FROM payledger.invoices WHERE payin_id = '$P3'")" = creating ] || fail "P3's invoice waits"
q "SELECT last_error FROM payledger.providers" | grep -q connection || fail "the provider's last error"
start_lnbits "$DIR" "$LNBITS_PORT"
wait_for "SELECT state = 'PENDING' FROM payledger.payins WHERE id = '$P3'" "P3 invoiced after the outage" 30
pay "$P3"
wait_for "SELECT state = 'PAID' FROM payledger.payins WHERE id = '$P3'" "P3 PAID"

echo "4. paid just before LNbits went down"
psql_ -d payledger_it -c "ALTER SYSTEM SET payledger.worker_interval = 3600" -c "SELECT pg_reload_conf()" >/dev/null
sleep 2  # the worker wakes on SIGHUP, ticks once, then sleeps an hour
P4=$(q "SELECT new_payin()")
psql_ -d payledger_it -c "CALL payledger.run_tick()" 2>/dev/null
[ "$(state "$P4")" = PENDING ] || fail "P4 should be PENDING, is $(state "$P4")"
pay "$P4"
stop_lnbits "$DIR"
psql_ -d payledger_it -c "CALL payledger.run_tick()" 2>/dev/null   # fails to reach LNbits: nothing changes
[ "$(q "SELECT status FROM payledger.invoices WHERE payin_id = '$P4'")" = pending ] || fail "P4 must not be settled yet"
start_lnbits "$DIR" "$LNBITS_PORT"
psql_ -d payledger_it -c "ALTER SYSTEM SET payledger.worker_interval = $INTERVAL" -c "SELECT pg_reload_conf()" >/dev/null
wait_for "SELECT state = 'PAID' FROM payledger.payins WHERE id = '$P4'" "P4 PAID after LNbits returned" 30
grep -q "settings reloaded" "$DIR/server.log" || fail "the worker did not log the reload"

echo "5. the worker killed"
old=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'payledger worker'")
kill -KILL "$old"
wait_for "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'payledger worker' AND pid <> $old" \
  "the worker to come back" 60
P5=$(q "SELECT new_payin()")
wait_for "SELECT state = 'PENDING' FROM payledger.payins WHERE id = '$P5'" "P5 invoiced by the new worker" 30
pay "$P5"
wait_for "SELECT state = 'PAID' FROM payledger.payins WHERE id = '$P5'" "P5 PAID"

echo "checks"
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }
[ "$(q "SELECT count(*) FROM licenses")" = 4 ] || fail "four licenses (P1, P3, P4, P5)"
[ "$(q "SELECT count(*) FROM payledger.hook_runs WHERE status = 'done'")" = 4 ] || fail "four hook runs done"
[ "$(q "SELECT count(*) FROM payledger.events WHERE topic = 'payin.paid'")" = 4 ] || fail "four payin.paid events"
[ "$(q "SELECT count(*) FROM payledger.events WHERE topic = 'payin.failed'")" = 1 ] || fail "one payin.failed event"
grep -q 'payledger worker: {' "$DIR/server.log" || fail "the worker logs what it did"
if grep -q "$INKEY" "$DIR/server.log"; then fail "the invoice key appears in the server log"; fi
echo "6. a NIP-90 job paid by its invoice"
psql_ -d payledger_it >/dev/null <<'SQL'
CREATE TABLE t_key AS SELECT n AS name, sha256(convert_to(n, 'UTF8')) AS sk FROM unnest(ARRAY['customer', 'provider', 'lnurl']) n;
CREATE FUNCTION sk(n text) RETURNS bytea LANGUAGE sql AS $$ SELECT sk FROM t_key WHERE name = n $$;
CREATE FUNCTION pk(n text) RETURNS text LANGUAGE sql AS $$ SELECT payledger.nostr_sign_event('{"kind": 1}', sk(n)) ->> 'pubkey' $$;
CREATE TABLE t_job AS SELECT payledger.nostr_job_open(
    payledger.nostr_sign_event(jsonb_build_object('kind', 5100, 'content', '', 'tags',
      jsonb_build_array(jsonb_build_array('i', 'translate me', 'text'))), sk('customer')),
    pk('provider'), pk('lnurl'), payledger.open_account('dvm', 'msat', 'revenue'), 'upfront', 21000) AS id;
CREATE TABLE t_job_invoice AS SELECT i.* FROM t_job j, payledger.nostr_job_invoice(j.id) i;
SQL
JOB=$(q "SELECT id FROM t_job")
JP=$(q "SELECT payin_id FROM t_job_invoice")
wait_for "SELECT state = 'PENDING' FROM payledger.payins WHERE id = '$JP'" "the job's invoice at LNbits"
# the provider publishes payment-required with the invoice's bolt11
[ "$(q "SELECT payledger.nostr_job_published('$JOB', payledger.nostr_sign_event(payledger.nostr_job_feedback('$JOB',
        'payment-required', 21000, (SELECT payment_request FROM payledger.invoices WHERE payin_id = '$JP')), sk('provider')))")" \
  = payment_required ] || fail "the job should wait for its payment"
bolt11=$(q "SELECT e.event -> 'tags' -> 1 ->> 2 FROM payledger.nostr_job_events e WHERE e.job_id = '$JOB'")
lnbits_pay "$LNBITS_PORT" "$PAYKEY" "$bolt11"
wait_for "SELECT state = 'processing' FROM payledger.nostr_jobs WHERE id = '$JOB'" "the job credited by its invoice"
[ "$(q "SELECT paid_msat || ' ' || (SELECT via FROM payledger.nostr_job_payments WHERE job_id = '$JOB')
       FROM payledger.nostr_jobs WHERE id = '$JOB'")" = "21000 invoice" ] || fail "the job's payment"
[ "$(q "SELECT payledger.balance(payledger.account_id('dvm', 'msat', 'revenue'))")" = 21000 ] || fail "the provider's revenue"
[ "$(q "SELECT payledger.nostr_job_published('$JOB', payledger.nostr_sign_event(
        payledger.nostr_job_result('$JOB', 'traduis-moi'), sk('provider')))")" = success ] || fail "the job's success"
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }

echo "7. metering, the worker's periodic run, over two sessions"
psql_ -d payledger_it >/dev/null <<'SQL'
SELECT payledger.credits_configure('credit', 6);
SELECT payledger.register_credit_metric('storage', 'gauge');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "price": 1}]');
SELECT payledger.define_credit_plan('basic', '{"storage": 10}');
-- 40 organisations, each 5 over its plan with 100 credits to pay from
SELECT payledger.set_credit_org('org' || g, 'basic'), payledger.grant_credits('org' || g, 100, 'purchase'),
       payledger.record_usage('org' || g, 'storage', 15)
  FROM generate_series(1, 40) g;
UPDATE payledger.worker_runs SET last_run_at = NULL WHERE name = 'metering';
SQL
wait_for "SELECT last_run_at IS NOT NULL FROM payledger.worker_runs WHERE name = 'metering'" "the metering run" 30
got=$(q "SELECT count(*) || ' ' || sum(payledger.credits_of(charged)) FROM payledger.credit_meters WHERE NOT blocked")
[ "$got" = "40 200" ] \
  || fail "every organisation charged 5 credits, once: $got"
[ "$(q "SELECT count(*) FROM payledger.get_total_credits('org7') WHERE available = 95")" = 1 ] || fail "org7 has 95 credits left"
wait_for "SELECT (last_result ->> 'orgs_metered')::int BETWEEN 1 AND 40 FROM payledger.worker_status" "the tick's metering count"
grep -q "payledger metering 2/2: [0-9]* done, 0 failed" "$DIR/server.log" || { grep metering "$DIR/server.log"; fail "the helper's share"; }
helper=$(grep -o "payledger metering 2/2: [0-9]* done" "$DIR/server.log" | tail -1 | awk '{print $4}')
[ "$(( $(q "SELECT last_result ->> 'orgs_metered' FROM payledger.worker_status") + helper ))" = 40 ] \
  || fail "the worker's and the helper's shares make the 40 organisations"
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }

echo "8. withdrawals through LNbits"
L="http://127.0.0.1:$LNBITS_PORT"
wallet_msat() { curl -sf "$L/api/v1/wallet" -H "X-Api-Key: $1" | jq -r .balance; }
new_invoice() { # <sats>: a BOLT11 of the payer's LNbits wallet
  curl -sf -X POST "$L/api/v1/payments" -H "X-Api-Key: $PAYER_INKEY" -H 'Content-Type: application/json' \
    -d "{\"out\":false,\"amount\":$1,\"memo\":\"withdrawal\"}" | jq -r .bolt11
}
clearing() { q "SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'provider_clearing', 'invoice'))"; }
psql_ -d payledger_it >/dev/null <<SQL
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0);
SELECT payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
SELECT payledger.set_provider_credentials(id, '{"invoice_key": "$INKEY", "admin_key": "$MERCHANT_ADMIN"}')
  FROM payledger.providers WHERE name = 'lnbits';
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'), payledger.account_id('ann', 'msat'), 2000000);
SQL
merchant0=$(wallet_msat "$MERCHANT_ADMIN"); payer0=$(wallet_msat "$PAYKEY"); clearing0=$(clearing); ann0=$(balance ann)
bolt11=$(new_invoice 100)
W1=$(q "SELECT withdrawal_id FROM payledger.withdraw('ann', 'msat', '$bolt11', 5000)")
[ -n "$W1" ] || fail "the withdrawal"
wait_for "SELECT status = 'succeeded' FROM payledger.withdrawals WHERE id = '$W1'" "the withdrawal paid" 30
[ "$(q "SELECT p.state || ' ' || w.fee || ' ' || w.attempts FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
       WHERE w.id = '$W1'")" = "PAID 0 1" ] || fail "W1: PAID, no fee, paid once"
merchant1=$(wallet_msat "$MERCHANT_ADMIN"); payer1=$(wallet_msat "$PAYKEY"); clearing1=$(clearing); ann1=$(balance ann)
[ $((ann0 - ann1)) = 100000 ] || fail "ann pays 100 sats, the fee budget back: $ann0 -> $ann1"
[ $((payer1 - payer0)) = 100000 ] || fail "the payer's LNbits wallet received 100 sats: $payer0 -> $payer1"
[ $((merchant0 - merchant1)) = $((clearing1 - clearing0)) ] \
  || fail "LNbits' books (merchant $merchant0 -> $merchant1) and the ledger's (clearing $clearing0 -> $clearing1) disagree"
[ "$(psql_ -d payledger_it -Atc "\\set VERBOSITY verbose" -c "SELECT payledger.withdraw('ann', 'msat', '$bolt11', 5000)" 2>&1 \
      | grep -c 'PL036')" = 1 ] || fail "the same invoice again: PL036"
echo "   paid 100 sats out; merchant wallet $merchant0 -> $merchant1 msat, clearing $clearing0 -> $clearing1"
# more than the merchant's LNbits wallet holds: LNbits refuses, the money comes back
big=$(( merchant1 / 1000 + 10 ))
W2=$(q "SELECT withdrawal_id FROM payledger.withdraw('ann', 'msat', '$(new_invoice $big)', 5000)")
wait_for "SELECT status = 'failed' FROM payledger.withdrawals WHERE id = '$W2'" "the refused withdrawal failed" 30
[ "$(q "SELECT p.state || ' ' || p.failure_reason FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
       WHERE w.id = '$W2'")" = "FAILED WITHDRAWAL_FAILED" ] || fail "W2 FAILED"
q "SELECT last_error FROM payledger.withdrawals WHERE id = '$W2'" | grep -qi "balance" || fail "W2's error names the balance"
[ "$(balance ann)" = "$ann1" ] || fail "ann's money back after W2: $ann1 -> $(balance ann)"
[ "$(wallet_msat "$MERCHANT_ADMIN")" = "$merchant1" ] || fail "nothing left the merchant's LNbits wallet for W2"
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }

echo "9. a tip through the purchase's provider; a cancelled invoice paid anyway"
payer2=$(wallet_msat "$PAYKEY"); bob0=$(balance bob)
# bob, who earned P1's 100 sats, tips 30 back to ann's LNbits wallet through the provider P1 came in by
T=$(q "SELECT withdrawal_id FROM payledger.withdraw('bob', 'msat', '$(new_invoice 30)', 2000, via_payin => '$P1')")
wait_for "SELECT status = 'succeeded' FROM payledger.withdrawals WHERE id = '$T'" "the tip paid" 30
[ "$(q "SELECT pr.name FROM payledger.withdrawals w JOIN payledger.providers pr ON pr.id = w.provider_id WHERE w.id = '$T'")" = lnbits ] \
  || fail "the tip is paid at the provider P1 came in by"
[ $(( $(wallet_msat "$PAYKEY") - payer2 )) = 30000 ] || fail "the payer's wallet received the tip"
[ $(( bob0 - $(balance bob) )) = 30000 ] || fail "bob paid the tip (the fee budget back)"
P9=$(q "SELECT new_payin()")
wait_for "SELECT state = 'PENDING' FROM payledger.payins WHERE id = '$P9'" "P9's invoice at LNbits"
q "SELECT changed FROM payledger.cancel_payin('$P9')" >/dev/null
wait_for "SELECT cancel = 'cannot' FROM payledger.invoices WHERE payin_id = '$P9'" "P9's invoice marked at the worker's next tick"
[ "$(q "SELECT status || ' ' || (next_check_at IS NOT NULL) FROM payledger.invoices WHERE payin_id = '$P9'")" = "pending true" ] \
  || fail "an LNbits invoice cannot be cancelled: still watched"
late0=$(q "SELECT coalesce((SELECT payledger.balance(id) FROM payledger.accounts WHERE owner_id = 'payledger' AND kind = 'suspense' AND name = 'late_payments'), 0)")
pay "$P9"
wait_for "SELECT paid_late FROM payledger.invoices WHERE payin_id = '$P9'" "P9's late money recorded" 30
[ "$(q "SELECT state || ' ' || failure_reason FROM payledger.payins WHERE id = '$P9'")" = "CANCELLED USER_CANCELLED" ] || fail "P9 stays cancelled"
[ $(( $(q "SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments'))") - late0 )) = 60000 ] \
  || fail "the 60 sats paid to a cancelled pay-in are in suspense"
[ -z "$(q "SELECT * FROM payledger.check_invariants()")" ] || { q "SELECT * FROM payledger.check_invariants()"; fail "invariants"; }
if grep -q "$MERCHANT_ADMIN" "$DIR/server.log"; then fail "the admin key appears in the server log"; fi
echo "ok: lnbits"
