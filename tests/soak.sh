#!/usr/bin/env bash
# Soak: the crash test's workload (tests/integration/workload.sql) for
# MINUTES (15) with CLIENTS (16) long-lived pgbench sessions at RATE (20)
# operations a second in all, the background worker settling invoices at a
# real LNbits and a payer paying two thirds of them, and no kill.
#
# The load is sized to what the provider answers: LNbits on this 2-vCPU
# machine, sharing it with the database, serves about 20 to 30 calls a
# second, and an unpaid invoice costs a check every tick while young, then
# more rarely (providers.md). Invoices expire after 2 minutes and are watched
# 2 more (INVOICE_EXPIRY, MONITORING), so that the number of invoices being
# watched stops growing after 4 minutes; the first WARMUP (300) seconds are
# not judged.
#
# Every SAMPLE (30) seconds it records the worker's lag (how overdue the most
# overdue invoice check is; a check due since -infinity counts from the
# invoice's last change), the private memory (RssAnon) of the worker and of
# the client backends, the worker's calls to the provider a second and
# LNbits' CPU. It passes when no client stopped on an error other than a
# documented business one (PL…, 22…; a deadlock fails it), the lag and the
# memory in the last third of the judged samples are not above the first
# third's by more than the slack below, and the invariants and seals hold at
# the end. Not part of tests/run.sh (it takes MINUTES):
#   bash tests/soak.sh    (MINUTES=15 CLIENTS=16 RATE=20 SAMPLE=30 WARMUP=300)
set -euo pipefail
CLUSTER_CONF="shared_preload_libraries = 'payledger'
payledger.worker_database = 'soak'
payledger.worker_interval = 1
payledger.worker_max_backoff = 2
payledger.worker_http_timeout = 3000
payledger.metering_interval = 60
max_connections = 60
log_lock_waits = on
log_line_prefix = '%m [%p] %b '"
source "$(dirname "${BASH_SOURCE[0]}")/integration/common.bash"
[ -n "${INSTALLED:-}" ] || { setup_machine; install_extension; }
MINUTES=${MINUTES:-15}
CLIENTS=${CLIENTS:-16}
SAMPLE=${SAMPLE:-30}
RATE=${RATE:-20}
WARMUP=${WARMUP:-300}
INVOICE_EXPIRY=${INVOICE_EXPIRY:-2 minutes}
MONITORING=${MONITORING:-2 minutes}
WORKLOAD_DB=soak
source "$(dirname "${BASH_SOURCE[0]}")/integration/workload.bash"
# a failed soak keeps its server log (lock waits, deadlocks) for diagnosis
fail() {
  cp "$DIR/server.log" "${TMPDIR:-/tmp}/payledger-soak-server.log" 2>/dev/null || true
  echo "FAIL: $* (server log: ${TMPDIR:-/tmp}/payledger-soak-server.log)" >&2
  exit 1
}
psql_ -d soak >/dev/null <<'SQL'
CREATE SEQUENCE soak_seq;
CREATE UNLOGGED TABLE soak_refusals (sqlstate text NOT NULL);
-- one operation; a documented business refusal is counted, anything else
-- stops the client (and fails the soak)
CREATE FUNCTION soak_op() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  st text;
BEGIN
  PERFORM crash_op('s' || nextval('soak_seq'));
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
  IF st !~ '^(PL|22)' THEN
    RAISE;
  END IF;
  INSERT INTO soak_refusals VALUES (st);
END $$;
SQL
echo "SELECT soak_op();" > "$DIR/op.sql"
chown postgres "$DIR/op.sql"

rss() { awk '/^RssAnon/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

log "soak: $CLIENTS clients, $RATE operations/s, for $MINUTES min; a sample every ${SAMPLE}s"
payer & payer_pid=$!
as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c "$CLIENTS" -R "$RATE" -T $((MINUTES * 60)) -f "$DIR/op.sql" soak \
  > "$DIR/pgbench.log" 2>&1 & bench=$!
# the provider's side: the worker's calls a second (creations and checks)
# and LNbits' CPU (% of one core), over each sample
calls() { q "SELECT coalesce(sum(checks + create_attempts), 0) FROM payledger.invoices"; }
cpu_ticks() { # LNbits' process group (it serves from a child process)
  local g; g=$(cat "$DIR/lnbits.pid")
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$g" '{ sub(/^.*\) /, ""); if ($3 == g) t += $12 + $13 } END { print t + 0 }'
}
hz=$(getconf CLK_TCK)
echo "t_s lag_s worker_kb client_kb_max client_kb_avg tps_so_far calls_s lnbits_cpu" > "$DIR/samples"
start=$(date +%s)
c0=$(calls); k0=$(cpu_ticks); t0=$start
while kill -0 "$bench" 2>/dev/null; do
  sleep "$SAMPLE"
  kill -0 "$bench" 2>/dev/null || break
  now=$(date +%s); t=$(( now - start ))
  c1=$(calls); k1=$(cpu_ticks); dt=$(( now > t0 ? now - t0 : 1 ))
  rate="$(( (c1 - c0) / dt )) $(( (k1 - k0) * 100 / hz / dt ))"
  c0=$c1; k0=$k1; t0=$now
  lag=$(q "SELECT round(coalesce(extract(epoch FROM now() - min(greatest(next_check_at, updated_at))), 0)::numeric, 1)
             FROM payledger.invoices WHERE next_check_at <= now()")
  wpid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'payledger worker'")
  cl=$(q "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = 'pgbench'")
  cmax=0; csum=0; n=0
  for p in $cl; do v=$(rss "$p"); n=$((n + 1)); csum=$((csum + v)); [ "$v" -gt "$cmax" ] && cmax=$v; done
  ops=$(q "SELECT last_value FROM soak_seq")
  echo "$t $lag $(rss "${wpid:-0}") $cmax $(( n > 0 ? csum / n : 0 )) $(( ops / (t > 0 ? t : 1) )) $rate" | tee -a "$DIR/samples"
done
wait "$bench" || true
touch "$DIR/stop"
wait "$payer_pid" 2>/dev/null || true
grep -E "number of (transactions|failed)|tps" "$DIR/pgbench.log" || true
# (pgbench counts a deadlock or serialization failure as a failed
# transaction and goes on: the server log says which)
grep -A14 -E "deadlock detected|could not serialize" "$DIR/server.log" | head -60 || true
if grep -qE "aborted|ERROR|number of failed transactions: [1-9]" "$DIR/pgbench.log"; then
  grep -E "aborted|ERROR|DETAIL|CONTEXT" "$DIR/pgbench.log" | head -20 || true
  fail "a client stopped on an undocumented error"
fi

# the trend: last third against first third (after the warm-up)
[ "$(awk -v warm="$WARMUP" 'NR > 1 && $1 >= warm' "$DIR/samples" | wc -l)" -ge 3 ] \
  || fail "too few samples after the ${WARMUP}s warm-up to judge a trend (give more MINUTES)"
read -r lag_first lag_last mem_first mem_last wmem_first wmem_last < <(awk -v warm="$WARMUP" '
  NR > 1 && $1 >= warm { n++; t[n] = $1; lag[n] = $2; w[n] = $3; c[n] = $4 }
  END { k = int(n / 3); if (k < 1) k = 1
        for (i = 1; i <= k; i++) { lf += lag[i]; cf += c[i]; wf += w[i] }
        for (i = n - k + 1; i <= n; i++) { ll += lag[i]; cl += c[i]; wl += w[i] }
        printf "%.1f %.1f %d %d %d %d\n", lf / k, ll / k, cf / k, cl / k, wf / k, wl / k }' "$DIR/samples")
echo "worker lag: ${lag_first}s first third, ${lag_last}s last third"
echo "client backend memory (max RssAnon): ${mem_first} kB first third, ${mem_last} kB last third"
echo "worker memory (RssAnon): ${wmem_first} kB first third, ${wmem_last} kB last third"
awk -v f="$lag_first" -v l="$lag_last" 'BEGIN { exit !(l <= 1.5 * f + 10) }' || fail "the worker's lag grows"
awk -v f="$mem_first" -v l="$mem_last" 'BEGIN { exit !(l <= 1.25 * f + 5120) }' || fail "client backends' memory grows"
awk -v f="$wmem_first" -v l="$wmem_last" 'BEGIN { exit !(l <= 1.25 * f + 5120) }' || fail "the worker's memory grows"
q "SELECT 'refused (documented): ' || coalesce(string_agg(sqlstate || ' ' || n, ', ' ORDER BY n DESC), 'none')
     FROM (SELECT sqlstate, count(*) AS n FROM soak_refusals GROUP BY 1) s"
q "SELECT 'committed by kind: ' || string_agg(what || ' ' || n, ', ' ORDER BY what) FROM (SELECT what, count(*) AS n FROM crash_acks GROUP BY 1) s"
v=$(q "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || fail "$v invariant violations after the soak"
q "SELECT payledger.seal_ledger(10000000)" >/dev/null
p=$(q "SELECT count(*) FROM payledger.verify_ledger()")
[ "$p" = 0 ] || fail "verify_ledger found $p problems after the soak"
echo "soak: $MINUTES min, $(q "SELECT count(*) FROM crash_acks") operations committed, no undocumented error, lag and memory flat, invariants hold"
