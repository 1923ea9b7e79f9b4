-- Privileges that follow from where things are, applied last. See
-- docs/security.md. The roles are created first (src/ledger/schema.sql), and
-- each module grants the backend (payledger_app) and end users
-- (payledger_enduser) their functions next to the functions' definitions.
--
--   payledger           the API: every routine is the operators'
--                       (payledger_admin); every table and view is readable
--                       by the operators and the backend, but the provider
--                       credentials (the operators'); the my_* views by end
--                       users too
--   payledger_internal  what the API uses inside: no role may use it (the
--                       API's SECURITY DEFINER functions reach it as the
--                       extension's owner)
--
-- Nothing is granted to PUBLIC; no role writes a table.
REVOKE ALL ON SCHEMA payledger, payledger_internal FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA payledger FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA payledger, payledger_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA payledger TO payledger_admin, payledger_app, payledger_enduser;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA payledger TO payledger_admin;

-- Reading. Every table has row-level security on, so a reader needs a
-- policy too. (Idempotent: an upgrade runs it again over older tables.)
DO $$
DECLARE
    t record;
    readers text;
BEGIN
    FOR t IN SELECT c.relname, c.relkind, c.relrowsecurity FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'payledger'::regnamespace AND c.relkind IN ('r', 'p', 'v')
              ORDER BY c.relname LOOP
        -- (tables named *_secrets hold credentials: the admin's only)
        readers := CASE WHEN t.relname LIKE '%\_secrets' THEN 'payledger_admin'
                        WHEN t.relkind = 'v' AND t.relname LIKE 'my\_%' THEN 'payledger_enduser, payledger_app, payledger_admin'
                        ELSE 'payledger_admin, payledger_app' END;
        EXECUTE format('GRANT SELECT ON payledger.%I TO %s', t.relname, readers);
        IF t.relrowsecurity AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                                             WHERE p.polrelid = format('payledger.%I', t.relname)::regclass) THEN
            EXECUTE format('CREATE POLICY %I ON payledger.%I FOR SELECT TO %s USING (true)',
                           CASE WHEN t.relname LIKE '%\_secrets' THEN 'admin_read' ELSE 'backend_read' END,
                           t.relname, readers);
        END IF;
    END LOOP;
END;
$$;
