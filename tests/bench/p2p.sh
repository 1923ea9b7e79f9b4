#!/usr/bin/env bash
# P2P zaps completed per second end to end, and the latency from the payer's
# payment to the receiver's settlement, every figure from one run against
# the test components: the receiver's wallet a real LNbits wallet
# (FakeWallet), the operator's node the LND test server
# (tests/integration/mock_providers.py), paying the receiver's invoices
# through an LNbits wallet of its own.
#
# Baseline: the same calls made directly by a plain client, one zap after
# the other over keep-alive connections: the receiver's invoice at LNbits,
# the hold invoice at the node, the payer's payment held, the forward
# (router/send), the settle. payledger: N zaps created in one statement,
# then CALL payledger.run_tick() (wrapping: the wallet asked, the hold
# invoices created), the payer's payments held by the same client calls,
# then run_tick until all are PAID (held seen, forwarded, settled). Both
# include the payer's calls. Latency: after one zap's payment is held, the
# direct forward and settle, against one run_tick (the check that sees it
# held, the forward, the settle and the books); and against the background
# worker at payledger.worker_interval = 1 (its polling included).
#   bash tests/bench/p2p.sh   (N=100 ROUNDS=3 LATENCY=10 CONCURRENCY=8)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
N=${N:-100}
ROUNDS=${ROUNDS:-3}
LATENCY=${LATENCY:-10}
CONCURRENCY=${CONCURRENCY:-8}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
setup_lnbits
DIR=$(pg_scratch)
LNBITS_PORT=$((TEST_PORT + 1000)) NODE_PORT=$((TEST_PORT + 1001))
NODE_PID=
trap '[ -z "$NODE_PID" ] || kill "$NODE_PID" 2>/dev/null; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "shared_preload_libraries = 'payledger'
payledger.worker_database = 'postgres'
payledger.worker_interval = 3600
payledger.worker_concurrency = $CONCURRENCY"
start_lnbits "$DIR" "$LNBITS_PORT"
read -r RECEIVER_INKEY GATEWAY_ADMIN _ _ < <(lnbits_setup "$LNBITS_PORT")
L="http://127.0.0.1:$LNBITS_PORT" NODE="http://127.0.0.1:$NODE_PORT"
"$LNBITS_VENV/bin/python" "$REPO/tests/integration/mock_providers.py" "$NODE_PORT" >"$DIR/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 40); do port_busy "$NODE_PORT" && break; sleep 0.25; done
curl -sf -X POST "$NODE/_control/gateway" -d "{\"url\": \"$L\", \"admin_key\": \"$GATEWAY_ADMIN\"}" >/dev/null
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"; }
{ echo "CREATE EXTENSION payledger; SELECT payledger.create_asset('msat', 3, 'millisatoshi');"; zap_setup_sql "$NODE"; } |
  psql_ >/dev/null
psql_ >/dev/null <<SQL
SELECT payledger.attach_receiver_wallet('bob', 'lnbits', jsonb_build_object('url', '$L', 'invoice_key', '$RECEIVER_INKEY'));
SQL

# the plain client: the same calls as payledger makes for a zap of 100 sat
# (70 to the receiver), serially; prints zaps per second, or with "latency"
# the milliseconds from the held payment to the settle, one per zap
cat > "$DIR/direct.py" <<'PY'
import base64, hashlib, http.client, json, sys, time
lnbits_port, node_port, inkey, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
ln = http.client.HTTPConnection("127.0.0.1", lnbits_port)
node = http.client.HTTPConnection("127.0.0.1", node_port)
def call(c, method, path, body=None, headers=None, stream=False):
    c.request(method, path, json.dumps(body) if body is not None else None, headers or {})
    r = c.getresponse(); data = r.read()
    assert r.status in (200, 201), (path, r.status, data[:200])
    return json.loads(data.splitlines()[-1]) if stream else (json.loads(data) if data else {})
INV = {"Grpc-Metadata-macaroon": "0201036c6e64"}
ADMIN = {"Grpc-Metadata-macaroon": "0201036c6e64ad"}
lat = []
t = time.monotonic()
for i in range(n):
    inv = call(ln, "POST", "/api/v1/payments", {"out": False, "amount": 70, "memo": "zap", "expiry": 1020},
               {"X-Api-Key": inkey, "Content-Type": "application/json"})
    h = inv["payment_hash"]
    call(node, "POST", "/v2/invoices/hodl", {"hash": base64.b64encode(bytes.fromhex(h)).decode(), "value_msat": "73000",
                                             "memo": "zap", "expiry": "900", "cltv_expiry": "242"}, INV)
    call(node, "POST", "/_control/settle/" + h)          # the payer's payment, held
    t0 = time.monotonic()
    p = call(node, "POST", "/v2/router/send", {"payment_request": inv["bolt11"], "fee_limit_msat": "3000",
                                               "timeout_seconds": 60, "cltv_limit": 162}, ADMIN, stream=True)["result"]
    assert p["status"] == "SUCCEEDED", p
    call(node, "POST", "/v2/invoices/settle", {"preimage": base64.b64encode(bytes.fromhex(p["payment_preimage"])).decode()}, INV)
    lat.append((time.monotonic() - t0) * 1000)
if mode == "latency":
    print(" ".join(str(round(x, 1)) for x in lat))
else:
    print(round(n / (time.monotonic() - t), 2))
PY
cat > "$DIR/hold.py" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for h in open(sys.argv[2]).read().split():
    c.request("POST", "/_control/settle/" + h); r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
chown postgres "$DIR"/*.py

zaps() { # <n> <round tag>: n zaps of bob, in one statement
  psql_ -At -c "SELECT count(*) FROM generate_series(1, $1) g, LATERAL payledger.create_payin('alice', 'ZAP', 'msat', 100000,
    '[{\"external\": \"invoice\", \"p2p\": true, \"unit\": 1000}]', split => 'zap_p2p',
    payees => jsonb_build_object('receiver', payledger.open_account('bob', 'msat')), idempotency_key => '$2-' || g)" >/dev/null
}
holds() { # <round tag>: the hold invoices of the round's zaps waiting for the payer
  psql_ -At -c "SELECT i.payment_hash FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
                 WHERE p.idempotency_key LIKE '$1-%' AND p.state = 'PENDING_HELD'" > "$DIR/holds.txt"
}
paid() { psql_ -At -c "SELECT count(*) FROM payledger.payins WHERE idempotency_key LIKE '$1-%' AND state = 'PAID'"; }
now() { date +%s.%N; }

direct=(); ours=(); ratios=()
for r in $(seq "$ROUNDS"); do
  d=$(python3 "$DIR/direct.py" "$LNBITS_PORT" "$NODE_PORT" "$RECEIVER_INKEY" "$N" rate)
  t0=$(now)
  zaps "$N" "b$r"
  psql_ -c "CALL payledger.run_tick(1000)" 2>/dev/null
  holds "b$r"
  python3 "$DIR/hold.py" "$NODE_PORT" "$DIR/holds.txt"
  for _ in 1 2 3 4 5; do
    psql_ -c "CALL payledger.run_tick(1000)" 2>/dev/null
    [ "$(paid "b$r")" = "$N" ] && break
  done
  t1=$(now)
  [ "$(paid "b$r")" = "$N" ] || { psql_ -c "SELECT state, failure_reason, count(*) FROM payledger.payins GROUP BY 1, 2" -c "SELECT status, failure, last_error FROM payledger.p2p_forwards LIMIT 3" -c "SELECT status, checks, errors, last_error, next_check_at - now() AS due_in, locked_until - now() AS lease FROM payledger.invoices LIMIT 3" >&2; echo "round $r: $(paid "b$r") of $N zaps paid" >&2; exit 1; }
  o=$(python3 -c "print(round($N / ($t1 - $t0), 2))")
  direct+=("$d"); ours+=("$o"); ratios+=("$(python3 -c "print(round($o / $d, 2))")")
  echo "round $r: the components alone $d zaps/s, payledger $o zaps/s (ratio ${ratios[-1]})"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "p2p zaps per second, median of $ROUNDS ($N zaps each): the components alone $(median "${direct[@]}")," \
     "payledger $(median "${ours[@]}"), ratio $(median "${ratios[@]}")x"

# latency from the payer's payment (held) to the receiver's settlement
read -r -a dlat <<<"$(python3 "$DIR/direct.py" "$LNBITS_PORT" "$NODE_PORT" "$RECEIVER_INKEY" "$LATENCY" latency)"
tlat=()
for i in $(seq "$LATENCY"); do
  zaps 1 "t$i"
  psql_ -c "CALL payledger.run_tick()" 2>/dev/null
  holds "t$i"
  python3 "$DIR/hold.py" "$NODE_PORT" "$DIR/holds.txt"
  t0=$(now)
  psql_ -c "CALL payledger.run_tick()" 2>/dev/null
  t1=$(now)
  [ "$(paid "t$i")" = 1 ] || { echo "latency zap $i not paid by one tick" >&2; exit 1; }
  tlat+=("$(python3 -c "print(round(($t1 - $t0) * 1000, 1))")")
done
# the background worker, polling every second
psql_ -c "ALTER SYSTEM SET payledger.worker_interval = 1" -c "SELECT pg_reload_conf()" >/dev/null
sleep 2
wlat=()
for i in $(seq "$LATENCY"); do
  zaps 1 "w$i"
  for _ in $(seq 1 40); do holds "w$i"; [ -s "$DIR/holds.txt" ] && break; sleep 0.1; done
  python3 "$DIR/hold.py" "$NODE_PORT" "$DIR/holds.txt"
  t0=$(now)
  for _ in $(seq 1 400); do [ "$(paid "w$i")" = 1 ] && break; sleep 0.02; done
  t1=$(now)
  wlat+=("$(python3 -c "print(round(($t1 - $t0) * 1000, 1))")")
done
echo "latency from the held payment to the settle, median of $LATENCY: the components alone $(median "${dlat[@]}") ms," \
     "one run_tick $(median "${tlat[@]}") ms (ratio $(python3 -c "print(round($(median "${tlat[@]}") / $(median "${dlat[@]}"), 2))")x)," \
     "the background worker (interval 1 s) $(median "${wlat[@]}") ms"
echo "bob's wallet: $(curl -sf "$L/api/v1/wallet" -H "X-Api-Key: $RECEIVER_INKEY" | jq -r .balance) msat;" \
     "invariants: $(psql_ -At -c "SELECT count(*) FROM payledger.check_invariants()") violations"
