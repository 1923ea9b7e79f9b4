-- Roles, grants, and the owner-filtered views.
\set VERBOSITY terse
SELECT rolname FROM pg_roles WHERE rolname LIKE 'payledger%' ORDER BY 1;
-- nothing is granted to PUBLIC
SELECT count(*) AS public_table_grants FROM information_schema.role_table_grants
 WHERE table_schema = 'payledger' AND grantee = 'PUBLIC';
SELECT count(*) AS public_function_grants FROM information_schema.role_routine_grants
 WHERE routine_schema = 'payledger' AND grantee = 'PUBLIC';
-- every function pins its search_path, but for the internal Rust entry points,
-- which no role may call (their PL/pgSQL wrappers pin it), and three admin
-- routines that run as their caller and must not pin it: run_tick and
-- meter_all (a procedure with SET cannot COMMIT) and register_settle_hook (it
-- records the caller's search_path for the hook)
SELECT p.proname,
       has_function_privilege('payledger_admin', p.oid, 'EXECUTE')
       OR has_function_privilege('payledger_app', p.oid, 'EXECUTE')
       OR has_function_privilege('payledger_enduser', p.oid, 'EXECUTE') AS callable
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payledger' AND NOT EXISTS (
   SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
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

-- the admin may check invariants and create assets
SET ROLE t_admin;
SELECT t_try($$SELECT count(*) FROM payledger.check_invariants()$$);
SELECT t_try($$SELECT payledger.create_asset('eur', 2)$$);
RESET ROLE;
DROP ROLE t_plain, t_app, t_user, t_admin;
