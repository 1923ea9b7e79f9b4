#!/usr/bin/env bash
# Reconciler throughput, every figure from one run:
#   LNbits   a real LNbits (FakeWallet): its own capacity (a plain client loop
#            of status GETs over one keep-alive connection, the same invoices)
#            against payledger's tick checking those invoices;
#   LND REST the test server that follows LND's REST API (mock_providers.py),
#            asyncio, one process: payledger's tick checking N pending invoices
#            with payledger.worker_concurrency connections.
# A tick is CALL payledger.run_tick(): claim (SKIP LOCKED), call with no
# transaction open, record; the invoices are created by an earlier tick.
#   bash tests/bench/reconciler.sh   (LNBITS_INVOICES=300 LND_INVOICES=10000 CONCURRENCY=8 ROUNDS=3)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
LNBITS_INVOICES=${LNBITS_INVOICES:-300}
LND_INVOICES=${LND_INVOICES:-10000}
CONCURRENCY=${CONCURRENCY:-8}
ROUNDS=${ROUNDS:-3}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
setup_lnbits
DIR=$(pg_scratch)
LNBITS_PORT=$((TEST_PORT + 1000))
MOCK_PORT=$((TEST_PORT + 1001))
trap 'kill $MOCK_PID 2>/dev/null; stop_lnbits "$DIR"; stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "payledger.worker_concurrency = $CONCURRENCY"
start_lnbits "$DIR" "$LNBITS_PORT"
read -r INKEY PAYKEY _ < <(lnbits_setup "$LNBITS_PORT")
python3 "$REPO/tests/integration/mock_providers.py" "$MOCK_PORT" >"$DIR/mock.log" 2>&1 &
MOCK_PID=$!
for _ in $(seq 1 40); do port_busy "$MOCK_PORT" && break; sleep 0.25; done
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"; }

psql_ <<SQL
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 0, 'millisatoshi');
SELECT payledger.register_payout_type('SALE', 'a sale');
SELECT payledger.open_account('shop', 'msat', 'revenue');
SELECT payledger.create_merchant_profile(k), payledger.register_payin_type(upper(k), k), payledger.route_payin_type(upper(k), k)
  FROM unnest(ARRAY['lnbits', 'lnd']) k;
SELECT payledger.add_provider('lnbits', 'lnbits', 'lnbits', 'http://127.0.0.1:$LNBITS_PORT', '{"invoice_key": "$INKEY"}');
SELECT payledger.add_provider('lnd', 'lnd', 'lnd_rest', 'http://127.0.0.1:$MOCK_PORT', '{"macaroon": "0201036c6e64"}');
CREATE FUNCTION seed(kind text, n integer) RETURNS void LANGUAGE sql AS \$\$
  SELECT count(*) FROM generate_series(1, n) g, payledger.create_payin('buyer' || g, upper(kind), 'msat', 21000,
    '[{"external": "invoice"}]', jsonb_build_array(jsonb_build_object('type', 'SALE',
      'account', payledger.account_id('shop', 'msat', 'revenue'), 'amount', 21000)))
\$\$;
SQL
# tick: one run_tick; prints its seconds
tick() {
  psql_ -At <<'SQL' 2>/dev/null
SELECT clock_timestamp() AS t0 \gset
CALL payledger.run_tick(500);
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz)::numeric, 3);
SQL
}
checks() { psql_ -At -c "SELECT coalesce(sum(checks), 0) FROM payledger.invoices WHERE provider_name = '$1'"; }
pending() { psql_ -At -c "SELECT count(*) FROM payledger.invoices WHERE provider_name = '$1' AND status = 'pending'"; }

log "LNbits: $LNBITS_INVOICES invoices created by a tick, then checked"
psql_ -c "SELECT seed('lnbits', $LNBITS_INVOICES)"
create_s=$(tick)
created=$(pending lnbits)
psql_ -At -c "SELECT payment_hash FROM payledger.invoices WHERE provider_name = 'lnbits'" > "$DIR/hashes"
# LNbits' own capacity: a plain client loop of status GETs, one keep-alive
# connection; then a tick over the same invoices; ROUNDS times, interleaved
cat > "$DIR/loop.py" <<'PY'
import http.client, sys, time
port, key, hashes = int(sys.argv[1]), sys.argv[2], open(sys.argv[3]).read().split()
c = http.client.HTTPConnection("127.0.0.1", port)
t = time.monotonic()
for h in hashes:
    c.request("GET", "/api/v1/payments/" + h, headers={"X-Api-Key": key})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
print(round(len(hashes) / (time.monotonic() - t)))
PY
ratios=(); loops=(); ticks=()
for r in $(seq "$ROUNDS"); do
  loops+=("$(python3 "$DIR/loop.py" "$LNBITS_PORT" "$INKEY" "$DIR/hashes")")
  before=$(checks lnbits)
  lnbits_s=$(tick)
  lnbits_checked=$(( $(checks lnbits) - before ))
  [ "$lnbits_checked" = "$created" ] || { echo "the tick checked $lnbits_checked of $created LNbits invoices" >&2; exit 1; }
  ticks+=("$(awk -v n="$lnbits_checked" -v s="$lnbits_s" 'BEGIN { printf "%d", n / s }')")
  ratios+=("$(awk -v a="${ticks[-1]}" -v b="${loops[-1]}" 'BEGIN { printf "%.2f", a / b }')")
  echo "round $r: client loop ${loops[-1]}/s, tick ${ticks[-1]}/s, ${ratios[-1]}x"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
# out of the way of the next measure
psql_ -c "UPDATE payledger.invoices SET next_check_at = NULL WHERE provider_name = 'lnbits'"

log "LND REST test server: $LND_INVOICES invoices created by a tick, then checked"
psql_ -c "SELECT seed('lnd', $LND_INVOICES)"
lnd_create_s=$(tick)
lnd_created=$(pending lnd)
before=$(checks lnd)
lnd_s=$(tick)
lnd_checked=$(( $(checks lnd) - before ))
[ "$lnd_checked" = "$lnd_created" ] || { echo "the tick checked $lnd_checked of $lnd_created LND invoices" >&2; exit 1; }
v=$(psql_ -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { echo "invariant violations after the benchmark: $v" >&2; exit 1; }

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%d", n / s }'; }
cat <<TXT

Reconciler, $(nproc) cores, worker_concurrency = $CONCURRENCY, batches of 500:
| measure | result | target |
|---|---|---|
| LNbits: invoices checked per second by a tick / LNbits' own capacity (client loop), median of $ROUNDS | $(median "${ratios[@]}")x (ticks $(median "${ticks[@]}")/s, client loop $(median "${loops[@]}")/s, $created invoices) | >= 0.9x |
| LNbits: invoices created per second by a tick | $(rate "$created" "$create_s") | |
| LND REST test server: invoices checked per second by a tick | $(rate "$lnd_checked" "$lnd_s") ($lnd_checked invoices in ${lnd_s}s) | >= 1,000 |
| LND REST test server: invoices created per second by a tick | $(rate "$lnd_created" "$lnd_create_s") | |
TXT
