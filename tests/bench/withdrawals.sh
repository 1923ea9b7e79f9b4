#!/usr/bin/env bash
# Withdrawals paid per second against a real LNbits (FakeWallet), every
# figure from one run: LNbits' own capacity for the same calls (a plain
# client loop paying N invoices over one keep-alive connection with the
# merchant's admin key) against payledger paying N withdrawals in one tick
# (CALL payledger.run_tick(): claim, pay with no transaction open, record,
# the fee budget's rest booked). Fresh invoices of a receiver's wallet for
# each; ROUNDS rounds, interleaved; medians.
#   bash tests/bench/withdrawals.sh   (N=200 ROUNDS=3 CONCURRENCY=8)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
N=${N:-200}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-8}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
setup_lnbits
DIR=$(pg_scratch)
LNBITS_PORT=$((TEST_PORT + 1000))
trap 'stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "payledger.worker_concurrency = $CONCURRENCY"
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY MERCHANT_ADMIN PAYER_INKEY < <(lnbits_setup "$LNBITS_PORT")
L="http://127.0.0.1:$LNBITS_PORT"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"; }
# the merchant's wallet gets 500,000 sats from the payer's
curl -sf -X POST "$L/api/v1/payments" -H "X-Api-Key: $PAYKEY" -H 'Content-Type: application/json' \
  -d "{\"out\":true,\"bolt11\":\"$(curl -sf -X POST "$L/api/v1/payments" -H "X-Api-Key: $INKEY" \
        -H 'Content-Type: application/json' -d '{"out":false,"amount":500000}' | jq -r .bolt11)\"}" >/dev/null

psql_ >/dev/null <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0);
SELECT payledger.register_payout_type('WITHDRAWAL', 'withdrawal'), payledger.register_payout_type('ROUTING_FEE', 'routing fee');
SELECT payledger.create_merchant_profile('shop', is_default => true);
SELECT payledger.add_provider('shop', 'lnbits', 'lnbits', '$L', '{"invoice_key": "$INKEY", "admin_key": "$MERCHANT_ADMIN"}');
SELECT payledger.transfer(payledger.open_account('payledger', 'msat', 'external', 'world', allow_negative => true),
                          payledger.open_account('u' || g, 'msat'), 1000000000) FROM generate_series(1, 20) g;
SQL

cat > "$DIR/invoices.py" <<'PY'
import http.client, json, sys
port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("POST", "/api/v1/payments", json.dumps({"out": False, "amount": 10, "memo": "w"}),
              {"X-Api-Key": key, "Content-Type": "application/json"})
    r = c.getresponse(); print(json.loads(r.read())["bolt11"])
PY
cat > "$DIR/pay.py" <<'PY'
import http.client, json, sys, time
port, key, bolt11s = int(sys.argv[1]), sys.argv[2], open(sys.argv[3]).read().split()
c = http.client.HTTPConnection("127.0.0.1", port)
t = time.monotonic()
for b in bolt11s:
    c.request("POST", "/api/v1/payments", json.dumps({"out": True, "bolt11": b}),
              {"X-Api-Key": key, "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
print(round(len(bolt11s) / (time.monotonic() - t), 1))
PY

loops=(); ticks=(); ratios=()
for r in $(seq "$ROUNDS"); do
  python3 "$DIR/invoices.py" "$LNBITS_PORT" "$PAYER_INKEY" "$N" > "$DIR/loop.txt"
  python3 "$DIR/invoices.py" "$LNBITS_PORT" "$PAYER_INKEY" "$N" > "$DIR/wd.txt"
  loop=$(python3 "$DIR/pay.py" "$LNBITS_PORT" "$MERCHANT_ADMIN" "$DIR/loop.txt")
  # the withdrawals, created before the clock starts
  awk -v r="$r" '{printf "SELECT count(*) FROM payledger.withdraw(%s, %s, %s, 1000, idempotency_key => %s);\n",
                  "'"'"'u" (NR % 20 + 1) "'"'"'", "'"'"'msat'"'"'", "'"'"'" $1 "'"'"'", "'"'"'b" r "-" NR "'"'"'"}' \
    "$DIR/wd.txt" > "$DIR/wd.sql"
  chown postgres "$DIR/wd.sql"
  psql_ -f "$DIR/wd.sql" >/dev/null
  secs=$(psql_ -At <<'SQL' 2>/dev/null
SELECT clock_timestamp() AS t0 \gset
CALL payledger.run_tick(1000);
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz)::numeric, 3);
SQL
)
  paid=$(psql_ -At -c "SELECT count(*) FROM payledger.withdrawals w JOIN payledger.payins p ON p.id = w.payin_id
                        WHERE w.status = 'succeeded' AND p.idempotency_key LIKE 'b$r-%'")
  [ "$paid" = "$N" ] || { echo "round $r: $paid of $N withdrawals paid" >&2; exit 1; }
  tick=$(python3 -c "print(round($N / $secs, 1))")
  loops+=("$loop"); ticks+=("$tick"); ratios+=("$(python3 -c "print(round($tick / $loop, 2))")")
  echo "round $r: LNbits alone $loop payments/s, payledger $tick withdrawals/s (ratio ${ratios[-1]})"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "withdrawals paid per second, median of $ROUNDS: LNbits alone $(median "${loops[@]}"), payledger $(median "${ticks[@]}")," \
     "ratio $(median "${ratios[@]}")x (target >= 0.9x)"
echo "merchant wallet left: $(curl -sf "$L/api/v1/wallet" -H "X-Api-Key: $MERCHANT_ADMIN" | jq -r .balance) msat;" \
     "invariants: $(psql_ -At -c "SELECT count(*) FROM payledger.check_invariants()") violations"
