#!/usr/bin/env bash
# CPU instructions per call, counted by callgrind in a single-user backend:
# a figure that does not move with the machine's load, unlike pgbench's, so a
# change's effect on the hot paths can be measured to the percent.
#   floor     the benchmark's plain-SQL transfer (tests/bench/setup.sql)
#   model     the floor plus a journal row, SECURITY DEFINER, pinned search_path
#   fpayin    plain SQL writing the bench pay-in's rows, no checks
#   transfer  payledger.transfer between two of the 50 accounts
#   payin     the benchmark's pay-in (3 methods, 2 pay-outs, PAID)
#   batch     payledger.transfer_batch of 1,000 transfers (per transfer)
# Each statement is its own transaction, as pgbench sends them; a run of N
# and one of 3N calls are counted, and their difference divided by 2N, so
# that start-up and first-call caches drop out.
#   bash tests/bench/instructions.sh   (N=150 by default; valgrind is installed if missing)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
N=${N:-150}
setup_machine
[ -n "${INSTALLED:-}" ] || install_extension
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null
DIR=$(pg_scratch)
trap 'stop_cluster "$DIR"; rm -rf "$DIR"' EXIT
start_cluster "$DIR" "$TEST_PORT"
cp "$REPO"/tests/bench/setup.sql "$DIR/" && chown postgres "$DIR/setup.sql"
as_pg "$PG_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d postgres \
  -v accounts=50 -f "$DIR/setup.sql" -c "VACUUM ANALYZE" \
  -c "CREATE TABLE ids AS SELECT array_agg(id ORDER BY n) AS a FROM bench_acc WHERE n > 0" >/dev/null
stop_cluster "$DIR"

statements() { # <kind> <count>: one call per line, accounts as in the pgbench scripts
  awk -v k="$1" -v n="$2" 'BEGIN { for (g = 1; g <= n; g++) {
    a = 1 + g % 50; b = 1 + (g * 7 + 3) % 50
    if (k == "floor") printf "SELECT floor_transfer((SELECT a[%d] FROM ids), (SELECT a[%d] FROM ids), 1);\n", a, b
    else if (k == "model") printf "SELECT floor_model_transfer((SELECT a[%d] FROM ids), (SELECT a[%d] FROM ids), 1);\n", a, b
    else if (k == "fpayin") printf "SELECT floor_payin(%d, %d, %d);\n", a, 1 + (g + 7) % 50, 1 + (g + 13) % 50
    else if (k == "transfer") printf "SELECT payledger.transfer((SELECT a[%d] FROM ids), (SELECT a[%d] FROM ids), 1);\n", a, b
    else if (k == "payin") printf "SELECT bench_payin(%d, %d, %d);\n", a, 1 + (g + 7) % 50, 1 + (g + 13) % 50
    else printf "SELECT count(*) FROM payledger.transfer_batch((SELECT items FROM bench_batches WHERE k = %d));\n", 1 + g % 20 } }'
}
count() { # <kind> <count> -> instructions of the whole single-user run
  statements "$1" "$2" > "$DIR/in.sql"
  (cd "$DIR" && as_pg valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      "$PG_BIN/postgres" --single -D "$DIR/data" -c synchronous_commit=off postgres \
      < "$DIR/in.sql" 2>&1 >/dev/null) | awk '/Collected/ {print $NF}'
}
per_call() { # <kind> <count>
  local a b
  a=$(count "$1" "$2"); b=$(count "$1" $(($2 * 3)))
  echo $(((b - a) / ($2 * 2)))
}
log "callgrind: instructions per call (N=$N and $((3 * N)) calls, each its own transaction)"
floor=$(per_call floor "$N")
model=$(per_call model "$N")
transfer=$(per_call transfer "$N")
fpayin=$(per_call fpayin "$N")
payin=$(per_call payin "$N")
batch=$(per_call batch $(((N + 9) / 10)))
awk -v f="$floor" -v m="$model" -v t="$transfer" -v q="$fpayin" -v p="$payin" -v b="$batch" 'BEGIN {
  printf "| call | instructions | floor / call |\n|---|---|---|\n"
  printf "| floor transfer | %d | 1.00x |\n", f
  printf "| floor + journal row + SECURITY DEFINER | %d | %.2fx |\n", m, f / m
  printf "| payledger.transfer | %d | %.2fx |\n", t, f / t
  printf "| plain-SQL pay-in, no checks | %d | %.2fx |\n", q, f / q
  printf "| pay-in (3 methods, 2 pay-outs) | %d | %.2fx |\n", p, f / p
  printf "| transfer_batch, per transfer | %d | %.2fx (single / batched: %.2fx) |\n", b / 1000, f * 1000 / b, t * 1000 / b }'
