#!/usr/bin/env bash
# Every test suite, from a fresh machine: #[pg_test] units, pg_regress golden
# tests, pg_isolation_regress specs, and the integration tests (a real cluster).
#   bash tests/run.sh            all suites
#   bash tests/run.sh regress    only some: unit regress isolation integration
#   ACCEPT=1 bash tests/run.sh regress   rewrite expected/ from the results
#   PG_MAJOR=17 bash tests/run.sh        only that major (else every one in
#                                        pgrx.toml's majors, each with its suites)
REQUESTED_MAJOR=${PG_MAJOR:-}
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SUITES=${*:-unit regress isolation integration}
# (expected files are the default major's: ACCEPT rewrites them from its run only)
if [ -n "${ACCEPT:-}" ] && [ -z "$REQUESTED_MAJOR" ]; then REQUESTED_MAJOR=$(toml postgres version); fi
OUT="$REPO/tests/.out"
mkdir -p "$OUT"
failed=()

run_unit() {
  log "unit: cargo pgrx test (#[pg_test] and #[test]), PostgreSQL $PG_VERSION"
  local pgdata rc=0; pgdata=$(pg_scratch)
  (cd "$REPO" && PGRX_PG_CONFIG_PATH="$PG_CONFIG" cargo pgrx test --release "pg$PG_VERSION" --runas postgres \
     --pgdata "$pgdata/data") || rc=$?
  rm -rf "$pgdata"
  return $rc
}

# pg_regress / pg_isolation_regress as postgres, on a temp instance.
run_pg_regress() { # <kind: regress|isolation>
  local kind=$1 dir tool args
  dir=$(pg_scratch)
  if [ "$kind" = regress ] || [ "$kind" = regress_reversed ]; then
    cp -r "$REPO/tests/pg_regress/sql" "$REPO/tests/pg_regress/expected" "$REPO/tests/fixtures" "$dir/"
    tool="$PGXS_TEST/regress/pg_regress"
    if [ "$kind" = regress ]; then
      args=(--schedule="$dir/schedule" --dbname=payledger_regress)
    else
      # every file stands alone: the schedule backwards gives the same output
      args=(--dbname=payledger_regress $(awk '/^test:/ {print $2}' "$REPO/tests/pg_regress/schedule" | tac))
    fi
  else
    cp -r "$REPO/tests/isolation/specs" "$REPO/tests/isolation/expected" "$dir/"
    tool="$PGXS_TEST/isolation/pg_isolation_regress"
    args=($(cd "$REPO/tests/isolation/specs" && ls *.spec | sed 's/\.spec$//'))
  fi
  mkdir -p "$dir/results"
  # (the postgres user reads everything from $dir: the clone may be where it cannot)
  cp "$REPO/tests/pg_regress/regress.conf" "$REPO/tests/pg_regress/schedule" "$dir/"
  chown -R postgres:postgres "$dir"
  chmod -R a+rX "$REPO/tests"
  local rc=0
  # (from $dir: the tests include their fixtures as sql/fixtures/…)
  (cd "$dir" && as_pg "$tool" --temp-instance="$dir/tmp_check" --temp-config="$dir/regress.conf" \
    --bindir="$PG_BIN" --inputdir="$dir" --outputdir="$dir" --port="$TEST_PORT" "${args[@]}") || rc=$?
  if [ -n "${ACCEPT:-}" ] && [ "$kind" != regress_reversed ]; then
    local target="$REPO/tests/pg_regress/expected"; [ "$kind" = isolation ] && target="$REPO/tests/isolation/expected"
    cp "$dir"/results/*.out "$target/"
  fi
  if [ $rc -ne 0 ]; then
    [ -f "$dir/regression.diffs" ] && cp "$dir/regression.diffs" "$OUT/$kind.diffs" && cat "$dir/regression.diffs"
    rm -rf "$dir"
    return 1
  fi
  rm -rf "$dir"
}

run_integration() {
  local t rc=0
  for t in "$REPO"/tests/integration/*.sh; do
    log "integration: $(basename "$t"), PostgreSQL $PG_VERSION"
    local t0=$SECONDS
    bash "$t" || { rc=1; log "FAILED: $(basename "$t")"; }
    log "$(basename "$t"): $((SECONDS - t0)) s"
  done
  return $rc
}

setup_machine
for major in ${REQUESTED_MAJOR:-$PG_MAJORS}; do
  use_major "$major"
  INSTALLED=
  for s in $SUITES; do
    # (each major runs the suites pgrx.toml gives it)
    case " $(suites_of "$major") " in *" $s "*) ;; *) log "$s: not run on PostgreSQL $major"; continue ;; esac
    case $s in
      unit) run_unit || failed+=("unit@$major") ;;
      regress|isolation|integration)
        if [ -z "$INSTALLED" ]; then install_extension; INSTALLED=1; fi
        case $s in
          regress) log "pg_regress, PostgreSQL $major"; run_pg_regress regress || failed+=("regress@$major")
                   log "pg_regress, the schedule backwards (each file stands alone)"
                   run_pg_regress regress_reversed || failed+=("regress_reversed@$major") ;;
          isolation) log "pg_isolation_regress, PostgreSQL $major"; run_pg_regress isolation || failed+=("isolation@$major") ;;
          integration) run_integration || failed+=("integration@$major") ;;
        esac ;;
      *) echo "unknown suite $s" >&2; exit 2 ;;
    esac
  done
done
if ((${#failed[@]})); then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all suites passed: $SUITES, on PostgreSQL ${REQUESTED_MAJOR:-$PG_MAJORS}"
