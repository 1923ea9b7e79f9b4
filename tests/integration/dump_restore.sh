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
-- pay-ins in every kind of end: paid at once, pending, settled and refunded, failed and retried, with a child
SELECT payledger.register_payin_type('ITEM', 'an item');
SELECT payledger.register_payout_type('REVENUE', 'revenue');
CREATE TEMP TABLE p AS
SELECT g, (payledger.create_payin('u' || (1 + g % 5), 'ITEM', 'msat', CASE WHEN g % 2 = 0 THEN 1000 ELSE 10000000 END,
             jsonb_build_array(jsonb_build_object('account', payledger.account_id('u' || (1 + g % 5), 'msat')),
                               jsonb_build_object('external', 'invoice', 'unit', 1000)),
             jsonb_build_array(jsonb_build_object('type', 'REVENUE', 'account', payledger.account_id('founder', 'msat', 'territory'),
                                                  'amount', CASE WHEN g % 2 = 0 THEN 1000 ELSE 10000000 END)))).payin_id AS id
  FROM generate_series(1, 12) g;
SELECT payledger.create_payin('u2', 'ITEM', 'msat', 300, jsonb_build_array(jsonb_build_object('account', payledger.account_id('u2', 'msat'))),
         jsonb_build_array(jsonb_build_object('type', 'REVENUE', 'account', payledger.account_id('u3', 'msat'), 'amount', 300)),
         parent => (SELECT id FROM p WHERE g = 1));
SELECT count(*) FROM p, payledger.transition_payin(id, 'PENDING') WHERE g IN (1, 3, 5);
SELECT count(*) FROM p, payledger.settle_payin(id) WHERE g IN (1, 3);
SELECT count(*) FROM p, payledger.fail_payin(id, 'INVOICE_EXPIRED') WHERE g IN (7, 9);
SELECT payledger.refund_payin(id, 12345, reason => 'partial') FROM p WHERE g = 3;
SELECT payledger.retry_payin(id) FROM p WHERE g = 7;
SQL

digest() { # one line per table: name, row count, md5 of the ordered rows
  psql_ -d "$1" -At <<'SQL'
SELECT 'assets', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.assets t
UNION ALL SELECT 'account_kinds', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.account_kinds t
UNION ALL SELECT 'accounts', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.accounts t
UNION ALL SELECT 'journals', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.journals t
UNION ALL SELECT 'entries', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.entries t
UNION ALL SELECT 'holds', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.holds t
UNION ALL SELECT 'payin_types', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payin_types t
UNION ALL SELECT 'payout_types', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payout_types t
UNION ALL SELECT 'payins', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payins t
UNION ALL SELECT 'payin_legs', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payin_legs t
UNION ALL SELECT 'payouts', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payouts t
UNION ALL SELECT 'payin_refunds', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payin_refunds t
UNION ALL SELECT 'payin_history', count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM payledger.payin_history t;
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
