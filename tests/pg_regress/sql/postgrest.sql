-- The credits console's requests, replayed as PostgREST sends them (and
-- Supabase's API behind it): per request, a transaction (read-only for GET),
-- the search_path, SET LOCAL ROLE to the JWT's role, the claims, method,
-- path and headers as settings, then the query. The login is PostgREST's
-- authenticator, trusted to say who the end user is (payledger_identity).
-- Two users in two organisations; one is removed in the middle of a session.
\set db t_postgrest
\i sql/fixtures/base.sql

DO $$
BEGIN
    CREATE ROLE authenticator LOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE anon NOLOGIN;
    CREATE ROLE authenticated NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
GRANT anon, authenticated TO authenticator;
GRANT payledger_identity TO authenticator;
GRANT payledger_enduser TO authenticated;

-- what the operator set up: metrics, a plan, packages on sale, members
SELECT payledger.credits_configure('credit', 6) AS asset;
SELECT payledger.register_credit_metric('mau', 'counter', 'user'), payledger.register_credit_metric('storage', 'gauge', 'GiB');
SELECT payledger.define_credit_plan('solo', '{"mau": 1000, "storage": 2}');
SELECT payledger.set_credit_org('org_a', 'solo'), payledger.set_credit_org('org_b', 'solo');
SELECT payledger.grant_credits('org_a', 40, 'purchase', expires_at => now() + interval '30 days') IS NOT NULL AS a_granted,
       payledger.grant_credits('org_b', 7, 'promotion') IS NOT NULL AS b_granted;
SELECT payledger.record_usage('org_a', 'mau', 800), payledger.record_usage('org_b', 'storage', 3);
SELECT payledger.define_credit_package('credits-100', 100, 'usd', 500) IS NOT NULL AS package;
SELECT payledger.set_credit_sales_account('usd', payledger.open_account('vendor', 'usd', 'revenue', 'credit_sales')) IS NOT NULL AS on_sale;
SELECT payledger.create_merchant_profile('shop', is_default => true) IS NOT NULL AS shop,
       payledger.add_provider('shop', 'card', 'stripe', 'http://127.0.0.1:9', '{"secret_key": "sk_test_1"}',
                              rail => 'card', asset => 'usd') IS NOT NULL AS card;
SELECT payledger.add_org_member('org_a', 'ana', 'owner') AS ana, payledger.add_org_member('org_b', 'bo') AS bo;

SET SESSION AUTHORIZATION authenticator;
SELECT session_user, current_user;

-- GET /my_org_memberships, as ana (no organisation chosen yet)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('search_path', '"payledger", "public"', true) IS NOT NULL AS search_path;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.method', 'GET', true) IS NOT NULL AS method,
       set_config('request.path', '/my_org_memberships', true) IS NOT NULL AS path,
       set_config('request.headers', '{"accept": "application/json"}', true) IS NOT NULL AS headers;
SELECT coalesce(json_agg(t), '[]') AS body FROM (SELECT org_id, role FROM "payledger"."my_org_memberships") t;
COMMIT;

-- POST /rpc/my_total_credits with X-Org-Id: org_a (read-only: a STABLE function is called by GET or POST)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('search_path', '"payledger", "public"', true) IS NOT NULL AS search_path;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.method', 'POST', true) IS NOT NULL AS method,
       set_config('request.path', '/rpc/my_total_credits', true) IS NOT NULL AS path,
       set_config('request.headers', '{"x-org-id": "org_a", "content-type": "application/json"}', true) IS NOT NULL AS headers;
SELECT available, granted_active, next_expiry > now() AS expires_later, by_metric FROM "payledger"."my_total_credits"();
SELECT coalesce(json_agg(t ORDER BY t.metric), '[]') AS body
  FROM (SELECT metric, usage, monthly_limit, percent, blocked FROM "payledger"."my_plan_usage") t;
SELECT count(*) AS history_rows, count(DISTINCT month) AS months FROM "payledger"."my_credit_history";
SELECT coalesce(json_agg(t ORDER BY t.name), '[]') AS body
  FROM (SELECT name, credits, price_asset, price, recurring FROM "payledger"."my_credit_packages") t;
COMMIT;

-- the same user asking for org_b, which she is not in: nothing, and no purchase
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT set_config('search_path', '"payledger", "public"', true) IS NOT NULL AS search_path;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.headers', '{"x-org-id": "org_b"}', true) IS NOT NULL AS headers;
SELECT (SELECT count(*) FROM "payledger"."my_total_credits"()) AS balance_rows,
       (SELECT count(*) FROM "payledger"."my_plan_usage") AS usage_rows,
       (SELECT count(*) FROM "payledger"."my_credit_grants") AS grant_rows,
       (SELECT count(*) FROM "payledger"."my_credit_history") AS history_rows;
SELECT t_try($$SELECT payin_id FROM "payledger"."buy_credits"("package" := 'credits-100', "rail" := 'card')$$);
COMMIT;

-- POST /rpc/buy_credits as ana for org_a (Prefer: params=single-object is not used: named arguments)
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT set_config('search_path', '"payledger", "public"', true) IS NOT NULL AS search_path;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.method', 'POST', true) IS NOT NULL AS method,
       set_config('request.path', '/rpc/buy_credits', true) IS NOT NULL AS path,
       set_config('request.headers', '{"x-org-id": "org_a"}', true) IS NOT NULL AS headers;
SELECT state, subscription_id FROM "payledger"."buy_credits"("package" := 'credits-100', "rail" := 'card',
                                                             "idempotency_key" := 'click-1');
COMMIT;

-- GET /my_payins and /my_invoices: the purchase is org_a's, seen by its members only
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.headers', '{"x-org-id": "org_a"}', true) IS NOT NULL AS headers;
SELECT type, state, cost, asset FROM "payledger"."my_payins";
COMMIT;
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "bo", "role": "authenticated", "org_id": "org_b"}', true) IS NOT NULL AS claims;
SELECT count(*) AS bo_sees_payins, (SELECT available FROM "payledger"."my_total_credits"()) AS bo_available
  FROM "payledger"."my_payins";
COMMIT;

-- bo is removed from org_b between two requests of one session
RESET SESSION AUTHORIZATION;
SELECT payledger.remove_org_member('org_b', 'bo') AS removed;
SET SESSION AUTHORIZATION authenticator;
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "bo", "role": "authenticated", "org_id": "org_b"}', true) IS NOT NULL AS claims;
SELECT (SELECT count(*) FROM "payledger"."my_total_credits"()) AS balance_rows,
       (SELECT count(*) FROM "payledger"."my_credit_grants") AS grant_rows;
COMMIT;

-- anon (no JWT): no right to anything (PostgREST answers 401)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SET LOCAL ROLE anon;
SELECT t_try($$SELECT count(*) FROM "payledger"."my_credit_balance"$$);
SELECT t_try($$SELECT count(*) FROM "payledger"."buy_credits"('credits-100')$$);
COMMIT;

-- a login that is not trusted as an identity cannot claim to be ana
RESET SESSION AUTHORIZATION;
DO $$
BEGIN
    CREATE ROLE t_untrusted LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
GRANT authenticated TO t_untrusted;
SET SESSION AUTHORIZATION t_untrusted;
BEGIN;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "role": "authenticated"}', true) IS NOT NULL AS claims,
       set_config('request.headers', '{"x-org-id": "org_a"}', true) IS NOT NULL AS headers;
SELECT payledger.current_user_id() AS user_id, (SELECT count(*) FROM "payledger"."my_total_credits"()) AS balance_rows;
SELECT t_try($$SELECT payin_id FROM "payledger"."buy_credits"('credits-100', "rail" := 'card')$$);
COMMIT;
RESET SESSION AUTHORIZATION;
SELECT * FROM payledger.check_invariants();
