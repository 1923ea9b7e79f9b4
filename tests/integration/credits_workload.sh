#!/usr/bin/env bash
# A randomized credits workload with 8 concurrent clients over 20
# organisations: grants (paid, promotional, scoped, already expired), 
# consumption (some partial, some at past usage times), undos, voids, usage
# readings with metering, expiry sweeps. Then: no failed transaction,
# check_invariants() empty, and every organisation's get_total_credits equal
# to a recomputation from the ledger's entries.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
SECONDS_RUN=${SECONDS_RUN:-15}
psql_ -d postgres <<'SQL'
CREATE EXTENSION payledger;
SELECT payledger.credits_configure(expiry_grace => '0');
SELECT payledger.register_credit_metric('mau'), payledger.register_credit_metric('storage', 'gauge');
SELECT payledger.set_credit_price_tiers('mau', '[{"from": 0, "to": 100, "price": 0.01}, {"from": 100, "price": 0.005}]');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "price": 0.2}]');
SELECT payledger.define_credit_plan('basic', '{"mau": 50, "storage": 2}');
SELECT payledger.set_credit_org('org' || g, CASE WHEN g % 2 = 0 THEN 'basic' END) FROM generate_series(1, 20) g;

CREATE FUNCTION pick(a anyarray) RETURNS anyelement LANGUAGE sql AS 'SELECT a[1 + floor(random() * cardinality(a))::int]';
CREATE FUNCTION op() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  org text := 'org' || (1 + floor(random() * 20))::int;
  r float8 := random();
  id uuid;
BEGIN
  IF r < 0.25 THEN
    PERFORM payledger.grant_credits(org, round((1 + random() * 100)::numeric, 2), pick(ARRAY['purchase', 'promotion', 'manual']),
      pick(ARRAY[NULL, 'mau', 'storage']), (1 + floor(random() * 20))::int,
      CASE WHEN random() < 0.1 THEN now() - interval '1 hour' ELSE now() + random() * interval '400 days' END,
      now() - interval '2 days');
  ELSIF r < 0.65 THEN
    PERFORM payledger.consume_credits(org, pick(ARRAY['mau', 'storage']), round((0.5 + random() * 30)::numeric, 3),
      gen_random_uuid()::text, now() - random() * interval '3 hours', random() < 0.5);
  ELSIF r < 0.75 THEN
    SELECT c.id INTO id FROM payledger.credit_consumptions c WHERE c.org_id = org AND c.undone_at IS NULL
     ORDER BY random() LIMIT 1;
    IF id IS NOT NULL THEN PERFORM payledger.undo_consumption(id); END IF;
  ELSIF r < 0.80 THEN
    SELECT g.id INTO id FROM payledger.credit_grants g WHERE g.org_id = org ORDER BY random() LIMIT 1;
    IF id IS NOT NULL THEN PERFORM payledger.void_grant(id); END IF;
  ELSIF r < 0.95 THEN
    PERFORM payledger.record_usage(org, pick(ARRAY['mau', 'storage']), round((random() * 40)::numeric, 1));
    PERFORM payledger.meter_org(org);
  ELSE
    PERFORM payledger.expire_credits(10);
  END IF;
EXCEPTION WHEN SQLSTATE 'PL006' THEN
  NULL;  -- not enough credit: the one expected business error
END $$;
SQL
echo "SELECT op();" > "$DIR/op.sql"; chown postgres "$DIR/op.sql"
as_pg "$PG_BIN/pgbench" -h "$DIR" -p "$TEST_PORT" -U postgres -n -c 8 -j 2 -T "$SECONDS_RUN" --failures-detailed --verbose-errors -f "$DIR/op.sql" postgres \
  > "$DIR/pgbench.log" 2>&1 || { cat "$DIR/pgbench.log"; fail "pgbench"; }
grep -q "number of failed transactions: 0 " "$DIR/pgbench.log" || { cat "$DIR/pgbench.log"; fail "failed transactions"; }
ops=$(awk '/number of transactions actually processed/ {print $NF}' "$DIR/pgbench.log")
psql_ -d postgres -c "SELECT payledger.expire_credits(100000)" >/dev/null

v=$(psql_ -d postgres -At -c "SELECT count(*) FROM payledger.check_invariants()")
[ "$v" = 0 ] || { psql_ -d postgres -c "SELECT * FROM payledger.check_invariants() LIMIT 20"; fail "invariants"; }
# get_total_credits against the entries of the grants in effect
bad=$(psql_ -d postgres -At <<'SQL'
SELECT count(*) FROM (
  SELECT o.org_id, (SELECT available FROM payledger.get_total_credits(o.org_id)) AS reported,
         payledger.credits_of(coalesce((SELECT sum(e.amount) FROM payledger.credit_grants g
                                          JOIN payledger.entries e ON e.account_id = g.account_id
                                         WHERE g.org_id = o.org_id AND g.effective_at <= now()
                                           AND (g.expires_at IS NULL OR g.expires_at > now())), 0)::bigint) AS recomputed
    FROM payledger.credit_orgs o) x
 WHERE reported <> recomputed;
SQL
)
[ "$bad" = 0 ] || fail "$bad organisations' get_total_credits differ from their entries"
stats=$(psql_ -d postgres -At -F ' ' -c "SELECT (SELECT count(*) FROM payledger.credit_grants), (SELECT count(*) FROM payledger.credit_consumptions),
  (SELECT count(*) FROM payledger.credit_consumptions WHERE undone_at IS NOT NULL), (SELECT count(*) FROM payledger.credit_grant_events),
  (SELECT count(*) FROM payledger.credit_meters)")
echo "ok: credits workload ($ops operations by 8 clients in ${SECONDS_RUN}s; grants, consumptions, undone, expiries/voids, meters: $stats)"
