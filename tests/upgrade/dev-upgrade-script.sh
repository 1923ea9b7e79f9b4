#!/usr/bin/env bash
# Regenerate sql/payledger--0.1.0--0.2.0.sql while 0.2.0 is in development:
# the new objects' text comes from the sources (schema and API files) and from
# the install script cargo pgrx generated (the Rust functions), so install the
# current build first:
#   cargo pgrx install --release && bash tests/upgrade/dev-upgrade-script.sh && cargo pgrx install --release
# tests/integration/upgrade.sh then proves 0.1.0 + the script == a fresh 0.2.0.
# Once 0.2.0 is released (its install script frozen here), the upgrade script
# is never regenerated again, and this file goes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GENERATED=$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension/payledger--0.2.0.sql
{ cat <<'EOF'
-- payledger 0.1.0 -> 0.2.0: pay-ins and pay-outs (src/payin/), Nostr, BOLT11
-- and NIP-90 jobs (src/nostr/, src/bolt11.rs), invoices at payment providers
-- with the background worker (src/provider/, src/worker.rs), prepaid credits
-- (src/credits/), tamper-evident seals over the ledger (src/ledger/seal.sql),
-- and check_invariants() gathering every module's checks (src/invariants.sql).
-- The objects below are the 0.2.0 text of src/payin/schema.sql,
-- src/payin/api.sql, src/provider/*.sql and src/nostr/jobs.sql; tests/integration/upgrade.sh
-- proves the result equals a fresh 0.2.0 install. Released: never edit.

-- The ledger's checks keep their body under a new name; check_invariants()
-- now unions every module's checks.
ALTER FUNCTION payledger.check_invariants() RENAME TO ledger_invariants;
ALTER FUNCTION payledger.ledger_invariants() SECURITY INVOKER;
REVOKE ALL ON FUNCTION payledger.ledger_invariants() FROM payledger_admin;

-- A transfer's engine call is now a scalar (transfer_journal, below, with
-- engine_failure): the set-returning one goes.
DROP FUNCTION payledger.transfer_one(uuid, uuid, bigint, text, jsonb, timestamptz, text);

-- The entries' balance guard and the accounts' floor are now triggers in Rust
-- (entries_balance_guard, accounts_floor_guard, below).
DROP TRIGGER entries_guard ON payledger.entries;
DROP FUNCTION payledger.entries_guard();
ALTER TABLE payledger.accounts DROP CONSTRAINT accounts_floor;

-- The engine's statements now ask for generic plans themselves.
ALTER FUNCTION payledger.transfer_batch(jsonb) RESET plan_cache_mode;
ALTER FUNCTION payledger.apply_one(jsonb) RESET plan_cache_mode;
ALTER FUNCTION payledger.expire_holds(integer) RESET plan_cache_mode;

-- Only trusted logins may say which end user a session serves.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'payledger_identity') THEN
        CREATE ROLE payledger_identity NOLOGIN;
    END IF;
END;
$$;
EOF
sed -n '/^CREATE FUNCTION payledger.current_owner_id()/,/^\$\$;/p' src/ledger/api.sql | sed 's/^CREATE FUNCTION/CREATE OR REPLACE FUNCTION/'
echo
sed -n '/^CREATE TYPE payledger.payin_state/,$p' src/payin/schema.sql
echo
echo "-- The new functions written in Rust (as cargo pgrx generates them)."
for f in $(grep -o '^-- payledger::[a-z0-9_:]*' "$GENERATED" | sed 's/^-- //'); do
  grep -qx -- "-- $f" tests/upgrade/payledger--0.1.0.sql && continue
  awk -v f="-- $f" '$0 == f {p=1} p {print} p && /^[[:space:]]*AS .MODULE_PATHNAME/ {exit}' \
    "$GENERATED"
done
echo
cat src/ledger/seal.sql
echo
cat src/payin/api.sql
echo
cat src/provider/schema.sql
echo
cat src/nostr/jobs.sql
echo
cat src/provider/api.sql
echo
cat src/credits/schema.sql
echo
cat src/credits/api.sql
echo
cat src/invariants.sql
echo
sed -n '/^CREATE TRIGGER /,/;$/p' src/ledger/guard.rs
echo
echo "-- transfer() calls transfer_journal()."
sed -n '/^CREATE FUNCTION payledger.transfer(/,/^\$\$;/p' src/ledger/api.sql | sed 's/^CREATE FUNCTION/CREATE OR REPLACE FUNCTION/'
cat <<'EOF'

-- Privileges, as src/security.sql gives them on a fresh install (granting
-- again what 0.1.0 granted changes nothing).
REVOKE ALL ON ALL TABLES IN SCHEMA payledger FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA payledger FROM PUBLIC;
EOF
sed -n '/^GRANT SELECT ON payledger.assets/,/^CREATE POLICY admin_read/p' src/security.sql
# the policies of the tables 0.1.0 did not have
grep "^CREATE POLICY backend_read" src/security.sql \
  | grep -v -E "ON payledger[.](assets|account_kinds|accounts|journals|entries|holds) "
sed -n '/^GRANT SELECT ON payledger.my_accounts/,/TO payledger_enduser/p' src/security.sql
sed -n '/^GRANT EXECUTE ON FUNCTION payledger.current_owner_id/,/TO payledger_enduser/p' src/security.sql
echo "GRANT EXECUTE ON FUNCTION"
sed -n '/payledger.new_id(),/,/^TO payledger_app/p' src/security.sql | sed 1d
echo "GRANT EXECUTE ON FUNCTION"
sed -n '/payledger.register_payin_type(/,/^TO payledger_admin/p' src/security.sql
grep "^GRANT EXECUTE ON PROCEDURE" src/security.sql
} > sql/payledger--0.1.0--0.2.0.sql
