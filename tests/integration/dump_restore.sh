#!/usr/bin/env bash
# pg_dump / pg_restore round trip: every row of every payledger table survives,
# the restored ledger passes check_invariants(), and keeps working.
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

psql_ -d postgres -c "CREATE DATABASE src" -c "CREATE DATABASE dst"
psql_ -d src <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.create_asset('msat', 3);
SELECT payledger.register_account_kind('territory', 'territory revenue');
CREATE TEMP TABLE a AS SELECT n, payledger.open_account('u' || n, 'msat', CASE WHEN n = 0 THEN 'external' ELSE 'user' END,
                                                      'main', n = 0) AS id FROM generate_series(0, 20) n;
SELECT payledger.set_account_shards(payledger.open_account('founder', 'msat', 'territory'), 8);
SELECT count(*) FROM (SELECT payledger.transfer((SELECT id FROM a WHERE n = 0), id, 100000, idempotency_key => 'dep-' || n)
                        FROM a WHERE n > 0) s;
SELECT count(*) FROM payledger.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
  'from', (SELECT id FROM a WHERE n = 1 + g % 20), 'to', (SELECT id FROM a WHERE n = 1 + (g + 7) % 20),
  'amount', g, 'metadata', jsonb_build_object('g', g))) FROM generate_series(1, 500) g));
SELECT count(*) FROM (SELECT payledger.transfer((SELECT id FROM a WHERE n = 1 + g % 20),
  payledger.account_id('founder', 'msat', 'territory'), 7) FROM generate_series(1, 50) g) s;
SELECT payledger.create_hold((SELECT id FROM a WHERE n = 3), (SELECT id FROM a WHERE n = 4), 777, timeout => '1 day');
SELECT payledger.post_hold(payledger.create_hold((SELECT id FROM a WHERE n = 5), (SELECT id FROM a WHERE n = 6), 50), 20);
SQL

digest() { # one line per table: name, row count, md5 of the ordered rows
  psql_ -d "$1" -At <<'SQL'
SELECT 'assets', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.assets t
UNION ALL SELECT 'account_kinds', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.account_kinds t
UNION ALL SELECT 'accounts', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.accounts t
UNION ALL SELECT 'journals', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.journals t
UNION ALL SELECT 'entries', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.entries t
UNION ALL SELECT 'holds', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.holds t;
SQL
}
before=$(digest src)
echo "$before"
as_pg "$PG_BIN/pg_dump" -h "$DIR" -p "$TEST_PORT" -U postgres -Fc -f "$DIR/src.dump" src
as_pg "$PG_BIN/pg_restore" -h "$DIR" -p "$TEST_PORT" -U postgres -d dst --exit-on-error "$DIR/src.dump"
after=$(digest dst)
[ "$before" = "$after" ] || { echo "after restore:"; echo "$after"; fail "restored rows differ"; }
v=$(psql_ -d dst -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || fail "restored ledger has $v invariant violations"
# the restored ledger keeps working, including idempotency keys from before the dump
psql_ -d dst -At <<'SQL' | grep -qx t || fail "restored ledger does not accept transfers"
SELECT payledger.transfer(payledger.account_id('u0', 'msat', 'external'), payledger.account_id('u1', 'msat'), 100000,
                          idempotency_key => 'dep-1') = (SELECT id FROM payledger.journals WHERE idempotency_key = 'dep-1');
SQL
echo "dump/restore: $(echo "$before" | awk -F'|' '{s += $2} END {print s}') rows identical, invariants hold"
