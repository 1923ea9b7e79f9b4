#!/usr/bin/env bash
# Benchmark with pgbench, every figure measured in one run on one throwaway cluster:
#   floor    plain SQL: lock two rows in id order, two UPDATEs, two INSERTs, no checks
#   floor_model  the floor plus the journal row, in a SECURITY DEFINER function
#            with a pinned search_path: the least the issue's model and
#            security model ask for, still without a check
#   floor_payin  plain SQL writing the bench pay-in's rows in one statement
#            (5 account updates, journal, 5 entries, pay-in, 3 legs, 2 pay-outs,
#            history), no checks: the least the pay-in model asks for
#   payledger.transfer over the same accounts, same clients
#   spread = random pairs of 50 accounts; hot = every transfer credits one account
#   batch  = payledger.transfer_batch with 1,000 transfers per call
#   payin  = payledger.create_payin: 100 msat paid from three balances of the
#            payer, two pay-outs credited at once (PAID); spread = random
#            founder and pool, hot = every pay-in pays the same founder
#   zaps   = payledger.verify_zap_receipt on a real receipt, in one session (one core)
# Prints transfers/s (pay-ins/s, receipts/s) and the ratios the README reports.
#   bash tests/bench/run.sh   (DURATION=10 CLIENTS=20 BATCH_CLIENTS=2 ROUNDS=3 by default)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-20}
BATCH_CLIENTS=${BATCH_CLIENTS:-2}
ROUNDS=${ROUNDS:-3}
ACCOUNTS=${ACCOUNTS:-50}

setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
CONFIGS=${CONFIGS:-}
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT" "max_connections = 200"
psql_() { as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
cp "$REPO"/tests/bench/*.sql "$DIR/" && chown postgres "$DIR"/*.sql
psql_ -d postgres -v accounts="$ACCOUNTS" -f "$DIR/setup.sql"

bench() { # bench <script> <clients> -> transactions per second
  as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c "$2" -j 2 -T "$DURATION" \
    -D accounts="$ACCOUNTS" -f "$DIR/$1.sql" postgres > "$DIR/$1.log" 2>&1
  grep -q "number of failed transactions: 0 " "$DIR/$1.log" || { cat "$DIR/$1.log" >&2; exit 1; }
  awk '/^tps = / {printf "%d\n", $3}' "$DIR/$1.log"
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# Let the setup's writes settle, then run every configuration ROUNDS times,
# interleaved, and keep the median of each.
psql_ -d postgres -c "VACUUM ANALYZE" -c "CHECKPOINT"
log "pgbench: $CLIENTS clients (batch: $CLIENTS and $BATCH_CLIENTS), ${DURATION}s per run, $ROUNDS rounds, $ACCOUNTS accounts, $(nproc) cores"
declare -A runs
for r in $(seq "$ROUNDS"); do
  for cfg in floor_spread transfer_spread floor_model_spread floor_hot transfer_hot payin_spread payin_hot floor_payin_spread; do
    runs[$cfg]+=" $(bench "$cfg" "$CLIENTS")"
  done
  runs[batch]+=" $(( $(bench batch_1000 "$CLIENTS") * 1000 ))"
  runs[batch_few]+=" $(( $(bench batch_1000 "$BATCH_CLIENTS") * 1000 ))"
  echo "round $r:$(for c in floor_spread transfer_spread floor_model_spread floor_hot transfer_hot payin_spread payin_hot floor_payin_spread batch batch_few; do printf ' %s=%s' "$c" "${runs[$c]##* }"; done)"
done
floor_spread=$(median ${runs[floor_spread]}); pl_spread=$(median ${runs[transfer_spread]})
floor_hot=$(median ${runs[floor_hot]}); pl_hot=$(median ${runs[transfer_hot]})
batch=$(median ${runs[batch]}); batch_few=$(median ${runs[batch_few]})
payin_spread=$(median ${runs[payin_spread]}); payin_hot=$(median ${runs[payin_hot]})
floor_model=$(median ${runs[floor_model_spread]}); floor_payin=$(median ${runs[floor_payin_spread]})
# Zap receipts verified per second by one backend (one core): a real receipt,
# made distinct per row so that nothing is computed once for all rows. Its
# baseline, in the same rounds: the receipt's own zap request (a small signed
# event) verified alone, one BIP-340 verification each. A receipt needs two
# (the receipt's and the request's, rules H1 and H4), so half the events'
# rate is the ceiling for receipts on this core.
cp "$REPO/tests/fixtures/nostr/fountain1_valid_d_field.json" "$DIR/zap.json" && chown postgres "$DIR/zap.json"
zap_round() { # <what: receipt|event> -> verified per second
  psql_ -d postgres -At -v f="$DIR/zap.json" -v what="$1" <<'SQL'
SELECT pg_read_file(:'f')::jsonb AS ev \gset
SELECT (SELECT t ->> 1 FROM jsonb_array_elements(:'ev'::jsonb -> 'tags') t WHERE t ->> 0 = 'description')::jsonb AS req \gset
SELECT clock_timestamp() AS t0 \gset
SELECT CASE :'what' WHEN 'receipt' THEN
         (SELECT count(*) FILTER (WHERE v.valid) FROM generate_series(1, 20000) g, LATERAL payledger.verify_zap_receipt(
            :'ev'::jsonb, :'ev'::jsonb ->> 'pubkey', expected_amount_msat => 100000 + g * 0) v)
       ELSE (SELECT count(*) FILTER (WHERE v) FROM generate_series(1, 20000) g,
                    LATERAL payledger.nostr_verify_event(:'req'::jsonb || jsonb_build_object('x', g * 0) - 'x') v) END AS ok \gset
SELECT CASE WHEN :ok = 20000 THEN (20000 / extract(epoch FROM clock_timestamp() - :'t0'::timestamptz))::int END;
SQL
}
zap_runs=""; event_runs=""
for _ in $(seq 1 "$ROUNDS"); do
  zap_runs+=" $(zap_round receipt)"; event_runs+=" $(zap_round event)"
done
zaps=$(median $zap_runs)
events=$(median $event_runs)
v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { echo "invariant violations after the benchmark: $v" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cat <<TXT

Medians of $ROUNDS rounds (transfers/s):
| measure | result | target |
|---|---|---|
| payledger / floor, 50 accounts | $(ratio "$pl_spread" "$floor_spread")x ($pl_spread vs $floor_spread) | >= 0.9x |
| floor with the model's journal row and security / floor | $(ratio "$floor_model" "$floor_spread")x ($floor_model) | |
| payledger / floor, one hot account | $(ratio "$pl_hot" "$floor_hot")x ($pl_hot vs $floor_hot) | |
| payledger hot / 50 accounts | $(ratio "$pl_hot" "$pl_spread")x | >= 0.8x |
| batch of 1,000 / single calls, $CLIENTS clients | $(ratio "$batch" "$pl_spread")x ($batch) | >= 20x |
| batch of 1,000 / single calls, $BATCH_CLIENTS clients | $(ratio "$batch_few" "$pl_spread")x ($batch_few) | |
| pay-in (3 methods, 2 pay-outs, PAID) / floor transfer | $(ratio "$payin_spread" "$floor_spread")x ($payin_spread pay-ins/s) | >= 0.6x |
| plain-SQL pay-in, no checks / floor transfer | $(ratio "$floor_payin" "$floor_spread")x ($floor_payin pay-ins/s) | |
| pay-in / plain-SQL pay-in | $(ratio "$payin_spread" "$floor_payin")x | |
| pay-in, one hot founder / spread | $(ratio "$payin_hot" "$payin_spread")x ($payin_hot pay-ins/s) | >= 0.8x |
| zap receipts verified per second, one core | $zaps | >= 10000 |
| signed events verified per second, one core (one BIP-340 each) | $events | |
| zap receipts / the two-verification ceiling (events / 2) | $(ratio "$zaps" "$((events / 2))")x | |
TXT
