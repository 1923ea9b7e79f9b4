-- Roles, grants, and the owner-filtered views.
\set db t_security
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
-- alice has money in msat and usd, bob in msat
SELECT payledger.transfer(acc('world'), acc('alice'), 1000) IS NOT NULL AS funded,
       payledger.transfer(acc('usd_world'), acc('alice_usd'), 500) IS NOT NULL AS funded_usd,
       payledger.transfer(acc('world'), acc('bob'), 100) IS NOT NULL AS funded_bob;
SELECT rolname FROM pg_roles WHERE rolname LIKE 'payledger%' ORDER BY 1;
-- nothing is granted to PUBLIC
SELECT count(*) AS public_table_grants FROM information_schema.role_table_grants
 WHERE table_schema = 'payledger' AND grantee = 'PUBLIC';
SELECT count(*) AS public_function_grants FROM information_schema.role_routine_grants
 WHERE routine_schema = 'payledger' AND grantee = 'PUBLIC';
-- every function of the API pins its search_path, but three admin routines
-- that run as their caller and must not pin it: run_tick and meter_all (a
-- procedure with SET cannot COMMIT) and register_settle_hook (it records the
-- caller's search_path for the hook)
SELECT p.proname,
       has_function_privilege('payledger_admin', p.oid, 'EXECUTE')
       OR has_function_privilege('payledger_app', p.oid, 'EXECUTE')
       OR has_function_privilege('payledger_enduser', p.oid, 'EXECUTE') AS callable
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payledger' AND NOT EXISTS (
   SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
 ORDER BY 1;
-- the operators may call the whole API; nothing inside is anyone's: no role
-- may use payledger_internal, nor call a function there
SELECT count(*) FILTER (WHERE NOT has_function_privilege('payledger_admin', p.oid, 'EXECUTE')) AS api_not_admins,
       count(*) AS api_routines
  FROM pg_proc p WHERE p.pronamespace = 'payledger'::regnamespace;
SELECT r.rolname, has_schema_privilege(r.rolname, 'payledger_internal', 'USAGE') AS uses_internal,
       (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'payledger_internal'::regnamespace
           AND has_function_privilege(r.rolname, p.oid, 'EXECUTE')) AS internal_callable
  FROM pg_roles r WHERE r.rolname LIKE 'payledger\_%' ORDER BY 1;
SELECT count(*) AS public_internal_grants FROM information_schema.role_routine_grants
 WHERE routine_schema = 'payledger_internal' AND grantee = 'PUBLIC';
-- who may call what: the backend's and end users' functions (granted next to
-- each definition; the operators' are all of them)
SELECT p.proname, string_agg(DISTINCT r, ', ' ORDER BY r) AS granted_to
  FROM pg_proc p, unnest(ARRAY['payledger_app', 'payledger_enduser']) r
 WHERE p.pronamespace = 'payledger'::regnamespace AND has_function_privilege(r, p.oid, 'EXECUTE')
 GROUP BY p.proname ORDER BY 1;
-- the tables and views each role reads
SELECT c.relname, c.relkind,
       has_table_privilege('payledger_app', c.oid, 'SELECT') AS app,
       has_table_privilege('payledger_enduser', c.oid, 'SELECT') AS enduser,
       has_table_privilege('payledger_admin', c.oid, 'SELECT') AS admin
  FROM pg_class c WHERE c.relnamespace = 'payledger'::regnamespace AND c.relkind IN ('r', 'v')
   AND NOT (has_table_privilege('payledger_app', c.oid, 'SELECT') AND has_table_privilege('payledger_admin', c.oid, 'SELECT')
            AND NOT has_table_privilege('payledger_enduser', c.oid, 'SELECT'))
 ORDER BY 1;
-- definer functions, which bypass RLS, are exactly the API
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payledger' AND p.prosecdef ORDER BY 1;

CREATE ROLE t_plain;
CREATE ROLE t_app IN ROLE payledger_app;
CREATE ROLE t_user IN ROLE payledger_enduser;
CREATE ROLE t_admin IN ROLE payledger_admin;

-- a role without payledger grants can do nothing
SET ROLE t_plain;
SELECT t_try($$SELECT count(*) FROM payledger.accounts$$);
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('alice'), acc('bob')));
SELECT t_try($$SELECT count(*) FROM payledger.my_accounts$$);
RESET ROLE;

-- the application backend moves money and reads tables, but does not administer
SET ROLE t_app;
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('alice'), acc('bob')));
SELECT t_try($$SELECT payledger.open_account('frank', 'msat')$$);
SELECT t_try($$SELECT count(*) > 0 FROM payledger.entries$$);
SELECT t_try($$SELECT payledger.create_asset('eur', 2)$$);
SELECT t_try($$SELECT count(*) FROM payledger.check_invariants()$$);
SELECT t_try($$INSERT INTO payledger.assets VALUES ('eur', 2)$$);
SELECT t_try(format('UPDATE payledger.accounts SET balance = 0 WHERE id = %L', acc('alice')));
RESET ROLE;

-- end users see their own rows through the views, and nothing else
SET ROLE t_user;
SET payledger.owner_id = 'alice';
SELECT asset, kind, name, balance >= 0 AS has_balance FROM payledger.my_accounts ORDER BY asset;
SELECT count(*) > 0 AS has_entries, bool_and(account_id IN (acc('alice'), acc('alice_usd'))) AS only_own
  FROM payledger.my_entries;
SET payledger.owner_id = 'bob';
SELECT asset, kind, name FROM payledger.my_accounts ORDER BY asset;
RESET payledger.owner_id;
SELECT count(*) AS without_owner FROM payledger.my_accounts;
-- Supabase: the JWT subject, as PostgREST sets it
SELECT set_config('request.jwt.claims', '{"sub": "alice", "role": "authenticated"}', false) IS NOT NULL AS jwt_set;
SELECT payledger.current_owner_id();
SELECT count(*) AS alice_accounts FROM payledger.my_accounts;
SELECT t_try($$SELECT count(*) FROM payledger.accounts$$);
SELECT t_try($$SELECT count(*) FROM payledger.entries$$);
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('alice'), acc('bob')));
SELECT t_try(format('SELECT payledger.balance(%L)', acc('bob')));
RESET ROLE;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS jwt_cleared;

-- Supabase-like roles: anon gets nothing; authenticated is an end user
-- (GRANT payledger_enduser TO authenticated), with the JWT subject as owner
CREATE ROLE t_anon;
CREATE ROLE t_authenticated IN ROLE payledger_enduser;
SET ROLE t_anon;
SELECT t_try($$SELECT count(*) FROM payledger.my_accounts$$);
SELECT t_try($$SELECT count(*) FROM payledger.provider_secrets$$);
SELECT t_try($$SELECT * FROM payledger.get_total_credits('alice')$$);
RESET ROLE;
SET ROLE t_authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "bob", "role": "authenticated"}', false) IS NOT NULL AS jwt_set;
SELECT count(*) > 0 AS sees_accounts, count(*) FILTER (WHERE id IN (acc('alice'), acc('carol'))) AS others FROM payledger.my_accounts;
SELECT count(*) AS alices_entries_seen FROM payledger.my_entries WHERE account_id = acc('alice');
-- another owner's rows, the secrets, the tables, admin functions: refused
SELECT t_try($$SELECT count(*) FROM payledger.provider_secrets$$);
SELECT t_try($$SELECT count(*) FROM payledger.payins$$);
SELECT t_try($$SELECT * FROM payledger.get_total_credits('alice')$$);
SELECT t_try($$SELECT payledger.seal_ledger()$$);
SELECT t_try($$SELECT payledger.set_provider_active(gen_random_uuid(), false)$$);
RESET ROLE;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS jwt_cleared;
-- who the end user is, only a trusted login may say (a superuser, or a member
-- of payledger_identity or payledger_app): PostgREST's authenticator is one
CREATE ROLE t_authenticator LOGIN IN ROLE payledger_identity;
GRANT t_authenticated TO t_authenticator;
SET SESSION AUTHORIZATION t_authenticator;
SET ROLE t_authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "bob"}', false) IS NOT NULL AS jwt_set;
SELECT count(*) > 0 AS bob_sees_his_accounts FROM payledger.my_accounts;
RESET SESSION AUTHORIZATION;
-- an end user with a SQL session of its own may set the same settings:
-- they are not believed, and it sees nothing
CREATE ROLE t_direct LOGIN IN ROLE payledger_enduser;
SET SESSION AUTHORIZATION t_direct;
SET payledger.owner_id = 'alice';
SELECT set_config('request.jwt.claims', '{"sub": "alice"}', false) IS NOT NULL AS jwt_forged;
SELECT payledger.current_owner_id() IS NULL AS no_one, count(*) AS accounts_seen FROM payledger.my_accounts;
SELECT count(*) AS entries_seen FROM payledger.my_entries;
RESET SESSION AUTHORIZATION;
RESET payledger.owner_id;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS jwt_cleared;
-- the app role reads tables but never a provider credential
SET ROLE t_app;
SELECT t_try($$SELECT count(*) FROM payledger.provider_secrets$$);
RESET ROLE;

-- hijacking a SECURITY DEFINER function through search_path or objects of
-- one's own: a role that owns a schema puts look-alikes first on its path
CREATE ROLE t_evil IN ROLE payledger_app;
CREATE SCHEMA t_evil AUTHORIZATION t_evil;
SET ROLE t_evil;
CREATE FUNCTION t_evil.coalesce_(a anyelement, b anyelement) RETURNS anyelement LANGUAGE sql AS 'SELECT b';
CREATE FUNCTION t_evil.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT timestamptz '2000-01-01'$$;
CREATE FUNCTION t_evil.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE sql AS $$SELECT '{"hijacked": true}'::jsonb$$;
CREATE FUNCTION t_evil.require(value anyelement, name text) RETURNS void LANGUAGE sql AS 'SELECT NULL::void';
CREATE FUNCTION t_evil.plus(bigint, bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint';
CREATE OPERATOR t_evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = t_evil.plus);
SET search_path = t_evil, pg_catalog, public, payledger;
SELECT payledger.balance(acc('bob')) AS bob_before \gset
SELECT payledger.transfer(acc('alice'), acc('bob'), 5, metadata => '{"by": "evil"}') IS NOT NULL AS moved;
SELECT payledger.balance(acc('bob')) - :bob_before AS bob_got;
SELECT metadata FROM payledger.journals ORDER BY created_at DESC, id DESC LIMIT 1;
SELECT t_try($$SELECT payledger.transfer(acc('alice'), acc('bob'), NULL)$$);
-- nor can it put objects where payledger looks first
SELECT t_try($$CREATE FUNCTION payledger.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'$$);
SELECT t_try($$CREATE TABLE payledger.entries_copy (x int)$$);
RESET ROLE;
RESET search_path;
DROP SCHEMA t_evil CASCADE;
DROP ROLE t_evil, t_authenticator, t_direct, t_anon, t_authenticated;

-- the admin may check invariants and create assets
SET ROLE t_admin;
SELECT t_try($$SELECT count(*) FROM payledger.check_invariants()$$);
SELECT t_try($$SELECT payledger.create_asset('eur', 2)$$);
RESET ROLE;
DROP ROLE t_plain, t_app, t_user, t_admin;
