#!/usr/bin/env bash
# Fuzzing the SQL API: CASES calls (10,000 by default, seeded: SEED) of every
# function an application or an operator may call, with random and boundary
# arguments: NULLs, empty and huge strings, extreme numbers, malformed JSON,
# BOLT11 and Nostr events, wrong types passed as text, infinite times. Each
# call runs in its own subtransaction against the same base state (rolled
# back either way). It passes when every call either succeeds or fails with
# a documented SQLSTATE (docs/errors.md), the server never crashes, and
# check_invariants() stays empty.
#   bash tests/integration/fuzz.sh    (CASES=10000 SEED=0.42)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
CASES=${CASES:-10000}
SEED=${SEED:-0.42}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# the documented codes: payledger's own and the PostgreSQL ones docs/errors.md
# lists; plus PostgreSQL's own for a malformed literal, which fails its cast
# before payledger runs (22P02 bad syntax, 22007 bad date, 22008 date out of
# range, 22015 interval out of range, 42883 no such function for a regproc)
ALLOWED=$(grep -o '^| `[0-9A-Z]\{5\}`' "$REPO/docs/errors.md" | tr -d '|` ' | paste -sd, -),22P02,22007,22008,22015,42883

psql_ -d postgres <<'SQL'
CREATE EXTENSION payledger;
-- a base state with something of each kind to aim at
SELECT payledger.create_asset('usd', 2), payledger.create_asset('msat', 3);
SELECT payledger.open_account('alice', 'msat'), payledger.open_account('bob', 'msat'),
       payledger.open_account('payledger', 'msat', 'external', 'world', allow_negative => true);
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'), payledger.account_id('alice', 'msat'), 1000000);
SELECT payledger.register_payin_type('ITEM', 'an item'), payledger.register_payout_type('FOUNDER', 'the founder');
SELECT payin_id FROM payledger.create_payin('alice', 'ITEM', 'msat', 1000,
         jsonb_build_array(jsonb_build_object('account', payledger.account_id('alice', 'msat'))),
         jsonb_build_array(jsonb_build_object('type', 'FOUNDER', 'account', payledger.account_id('bob', 'msat'), 'amount', 1000)));
-- carol's pay-in waits on its invoice with 1,000 in her escrow (an account
-- of the pay-in module, which the generic API must refuse)
SELECT payledger.open_account('carol', 'msat');
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'), payledger.account_id('carol', 'msat'), 1000);
SELECT payin_id FROM payledger.create_payin('carol', 'ITEM', 'msat', 5000,
         jsonb_build_array(jsonb_build_object('account', payledger.account_id('carol', 'msat')), '{"external": "invoice"}'::jsonb),
         jsonb_build_array(jsonb_build_object('type', 'FOUNDER', 'account', payledger.account_id('bob', 'msat'), 'amount', 5000)));
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric('mau'), payledger.register_credit_metric('storage', 'gauge');
SELECT payledger.set_credit_price_tiers('mau', '[{"from": 0, "price": 0.01}]');
SELECT payledger.define_credit_plan('basic', '{"mau": 10}');
SELECT payledger.set_credit_org('org1', 'basic'), payledger.grant_credits('org1', 100, 'purchase');
SELECT payledger.record_usage('org1', 'mau', 50);
SELECT payledger.create_gift_code('GIFT-1', 5);
SELECT payledger.seal_ledger();

-- argument pools, as SQL literals, by type
CREATE TABLE fuzz_pool (typ text, lit text);
INSERT INTO fuzz_pool
SELECT t, v FROM (VALUES
  ('text', $$'alice'$$), ('text', $$''$$), ('text', $$'msat'$$), ('text', $$'usd'$$), ('text', $$'credit'$$),
  ('text', $$'mau'$$), ('text', $$'org1'$$), ('text', $$'ITEM'$$), ('text', $$'FOUNDER'$$), ('text', $$'GIFT-1'$$),
  ('text', $$'basic'$$), ('text', $$'purchase'$$), ('text', $$'user'$$), ('text', $$'main'$$), ('text', $$'PAID'$$),
  ('text', $$repeat('x', 100000)$$), ('text', $$'🙂 ünïcode'$$), ('text', $$E'nul\\x01ctrl'$$),
  ('text', $$'x''; DROP TABLE payledger.entries; --'$$), ('text', $$'lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpuaztrnwngzn3kdzw5hydlzf03qdgm2hdq27cqv3agm2awhz5se903vruatfhq77w3ls4evs3ch9zw97j25emudupq63nyw24cg27h2rspfj9srp'$$),
  ('text', $$'lnbc1invalid'$$), ('text', $$'{"kind": 9735}'$$), ('text', $$'not json'$$),
  ('uuid', $$payledger.account_id('alice', 'msat')$$), ('uuid', $$payledger.account_id('bob', 'msat')$$),
  ('uuid', $$(SELECT id FROM payledger.payins LIMIT 1)$$), ('uuid', $$(SELECT id FROM payledger.credit_grants LIMIT 1)$$),
  ('uuid', $$(SELECT id FROM payledger.accounts WHERE kind = 'payin_escrow' LIMIT 1)$$),
  ('uuid', $$(SELECT account_id FROM payledger.credit_grants LIMIT 1)$$),
  ('uuid', $$(SELECT id FROM payledger.accounts WHERE name = 'credits_issued')$$),
  ('uuid', $$gen_random_uuid()$$), ('uuid', $$'00000000-0000-0000-0000-000000000000'$$),
  ('bigint', '0'), ('bigint', '1'), ('bigint', '-1'), ('bigint', '1000'), ('bigint', '9223372036854775807'),
  ('bigint', '(-9223372036854775807 - 1)'), ('bigint', '2147483648'),
  ('integer', '0'), ('integer', '1'), ('integer', '-1'), ('integer', '10'), ('integer', '2147483647'), ('integer', '(-2147483647 - 1)'),
  ('smallint', '0'), ('smallint', '-1'), ('smallint', '32767'),
  ('numeric', '0'), ('numeric', '1'), ('numeric', '-1'), ('numeric', '0.0000001'), ('numeric', '12.5'),
  ('numeric', '1e30'), ('numeric', $$'NaN'$$), ('numeric', '99999999999999999999.999'),
  ('boolean', 'true'), ('boolean', 'false'),
  ('jsonb', $$'{}'$$), ('jsonb', $$'[]'$$), ('jsonb', $$'null'$$), ('jsonb', $$'"x"'$$), ('jsonb', $$'12'$$),
  ('jsonb', $$jsonb_build_array(jsonb_build_object('from', payledger.account_id('alice', 'msat'), 'to', payledger.account_id('bob', 'msat'), 'amount', 1))$$),
  ('jsonb', $$jsonb_build_array(jsonb_build_object('account', payledger.account_id('alice', 'msat'), 'amount', 5), jsonb_build_object('account', payledger.account_id('bob', 'msat'), 'amount', -5))$$),
  ('jsonb', $$jsonb_build_array(jsonb_build_object('account', payledger.account_id('alice', 'msat')))$$),
  ('jsonb', $$'[{"external": "invoice"}]'$$), ('jsonb', $$'[{"from": "nope", "to": 1, "amount": "x"}]'$$),
  ('jsonb', $$'{"mau": 5, "storage": -1}'$$), ('jsonb', $$'[{"from": 0, "price": 1}]'$$),
  ('jsonb', $$(SELECT jsonb_agg(g) FROM generate_series(1, 20000) g)$$),
  ('jsonb', $$(SELECT repeat('[', 5000) || repeat(']', 5000))::jsonb$$),
  ('jsonb', $$'{"id": "00", "pubkey": "zz", "sig": "", "kind": 9735, "tags": [["bolt11", "lnbc1"]], "content": "", "created_at": -1}'$$),
  ('timestamptz', 'now()'), ('timestamptz', $$'infinity'$$), ('timestamptz', $$'-infinity'$$),
  ('timestamptz', $$'1970-01-01'$$), ('timestamptz', $$now() + interval '1 year'$$), ('timestamptz', $$'4000-01-01'$$),
  ('interval', $$'0'$$), ('interval', $$'-1 day'$$), ('interval', $$'1 month'$$), ('interval', $$'1000 years'$$),
  ('text[]', $$'{}'$$), ('text[]', $$'{mau}'$$), ('text[]', $$'{mau,storage,nope}'$$), ('text[]', $$'{NULL}'$$),
  ('bytea', $$'\x'$$), ('bytea', $$'\x00ff'$$), ('bytea', $$decode(repeat('ab', 32), 'hex')$$),
  ('regprocedure', $$'now()'$$)
) AS x(t, v);
-- enums: each value
INSERT INTO fuzz_pool SELECT t.typname, quote_literal(e.enumlabel)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = 'payledger';
INSERT INTO fuzz_pool SELECT t.typname || '[]', quote_literal('{' || e.enumlabel || '}')
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = 'payledger';

-- the functions: what the app and admin roles may call, but for the ones
-- that call out (provider_call reaches the providers' URLs in its claims)
CREATE TABLE fuzz_fn AS
SELECT p.oid, p.proname, p.pronargs,
       ARRAY(SELECT format_type(a, NULL) FROM unnest(p.proargtypes::oid[]) a) AS types
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payledger' AND p.prokind = 'f'
   AND (has_function_privilege('payledger_app', p.oid, 'EXECUTE') OR has_function_privilege('payledger_admin', p.oid, 'EXECUTE'))
   AND p.proname NOT IN ('provider_call');

CREATE TABLE fuzz_log (n integer, fn text, call text, sqlstate text, message text);

CREATE FUNCTION fuzz_arg(typ text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r float8 := random();
  lit text;
BEGIN
  IF r < 0.12 THEN
    RETURN 'NULL';
  ELSIF r < 0.18 THEN
    -- a wrong type, given as text
    RETURN quote_literal((ARRAY['abc', '-', '1e999', '2026-13-45', '{', 'true?'])[1 + floor(random() * 6)::int]) || '::' || typ;
  END IF;
  SELECT p.lit INTO lit FROM fuzz_pool p WHERE p.typ = fuzz_arg.typ ORDER BY random() LIMIT 1;
  RETURN coalesce(lit || '::' || typ, 'NULL::' || typ);
END $$;

CREATE PROCEDURE fuzz(cases integer, seed float8) LANGUAGE plpgsql AS $$
DECLARE
  f record;
  sql text;
  state text;
  msg text;
BEGIN
  PERFORM setseed(seed);
  FOR i IN 1 .. cases LOOP
    SELECT * INTO f FROM fuzz_fn ORDER BY random() LIMIT 1;
    sql := format('SELECT * FROM payledger.%I(%s)', f.proname,
                  (SELECT coalesce(string_agg(fuzz_arg(t), ', ' ORDER BY o), '') FROM unnest(f.types) WITH ORDINALITY u(t, o)));
    BEGIN
      EXECUTE sql;
      RAISE SQLSTATE 'FZ000';   -- undo the call's effects: every case starts from the same state
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    END;
    INSERT INTO fuzz_log VALUES (i, f.proname, left(sql, 300), nullif(state, 'FZ000'), left(msg, 300));
    IF i % 1000 = 0 THEN
      COMMIT;
    END IF;
  END LOOP;
END $$;
SQL

log "fuzzing $CASES calls (seed $SEED)"
psql_ -d postgres -c "SET client_min_messages = error" -c "CALL fuzz($CASES, $SEED)"
psql_ -d postgres -At -c "SELECT 'fuzz: ' || count(*) || ' calls of ' || count(DISTINCT fn) || ' functions, '
                                 || count(*) FILTER (WHERE sqlstate IS NULL) || ' succeeded, '
                                 || count(*) FILTER (WHERE sqlstate IS NOT NULL) || ' refused' FROM fuzz_log"
psql_ -d postgres -c "SELECT sqlstate, count(*), count(DISTINCT fn) AS functions FROM fuzz_log GROUP BY 1 ORDER BY 2 DESC"
bad=$(psql_ -d postgres -At -c "SELECT count(*) FROM fuzz_log WHERE sqlstate IS NOT NULL AND sqlstate <> ALL (string_to_array('$ALLOWED', ','))")
if [ "$bad" != 0 ]; then
  psql_ -d postgres -c "SELECT sqlstate, fn, message, call FROM fuzz_log
                         WHERE sqlstate IS NOT NULL AND sqlstate <> ALL (string_to_array('$ALLOWED', ','))
                         ORDER BY sqlstate, fn LIMIT 400"
  fail "$bad calls ended with an undocumented SQLSTATE"
fi
[ "$(psql_ -d postgres -At -c "SELECT count(*) FROM fuzz_log")" = "$CASES" ] || fail "the fuzzer did not finish"
v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || fail "check_invariants() found $v violations after fuzzing"
p=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.verify_ledger()")
[ "$p" = 0 ] || fail "verify_ledger() found $p problems after fuzzing"
echo "fuzz: no undocumented SQLSTATE, no crash, invariants hold"
