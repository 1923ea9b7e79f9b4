-- Providers, invoices, webhooks, settle hooks, events and subscriptions,
-- through SQL (no HTTP: the worker's results are fed to its record step, as
-- the worker would after calling a provider; tests/integration/lnbits.sh and
-- providers.sh do the calls for real).
\set db t_providers
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
CREATE EXTENSION pgcrypto;  -- to sign test webhooks

SELECT payledger.register_payin_type('LICENSE', 'buy a software license');
SELECT payledger.register_payin_type('PLAN', 'a monthly plan');
SELECT payledger.register_payout_type('SALE', 'a sale');
INSERT INTO t_acc VALUES
  ('pay_world', payledger.open_account('lightning', 'msat', 'external', 'main', allow_negative => true)),
  ('shop',  payledger.open_account('shop', 'msat', 'revenue')),
  ('cara',  payledger.open_account('cara', 'msat')),
  ('shopusd', payledger.open_account('shop', 'usd', 'revenue'));
SELECT payledger.transfer(acc('pay_world'), acc('cara'), 500000) IS NOT NULL AS funded;

---------------------------------------------------------------------------
-- Profiles and providers (admin)
---------------------------------------------------------------------------
SELECT payledger.create_merchant_profile('main', is_default => true) IS NOT NULL AS created;
SELECT payledger.create_merchant_profile('main', is_default => true) = payledger_internal.profile_id('main') AS same_again;
SELECT t_try($$SELECT payledger.create_merchant_profile('main', owner_id => 'someone')$$);
SELECT t_try($$SELECT payledger.create_merchant_profile('bad name')$$);
SELECT t_try($$SELECT payledger.create_merchant_profile(NULL)$$);
SELECT payledger.create_merchant_profile('eu') IS NOT NULL AS created;

SELECT payledger.add_provider('main', 'lnbits', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "inkey-secret-1"}') IS NOT NULL AS added;
SELECT payledger.add_provider('main', 'btcpay', 'btcpay', 'https://btcpay.example/', '{"api_key": "btcpay-secret"}',
  config => '{"store_id": "Store1"}', priority => 5, webhook_secret => 'whsec-btcpay') IS NOT NULL AS added;
SELECT payledger.add_provider('main', 'stripe', 'stripe', 'https://api.stripe.example', '{"secret_key": "sk_test_1"}',
  asset => 'usd', webhook_secret => 'whsec_stripe') IS NOT NULL AS added;
SELECT payledger.add_provider('eu', 'lnd', 'lnd_rest', 'https://lnd.example:8080', '{"macaroon": "0201abcd"}') IS NOT NULL AS added;
SELECT t_try($$SELECT payledger.add_provider('nope', 'x', 'lnbits', 'http://h', '{"invoice_key": "k"}')$$);
-- JSON the worker could not read back is refused before it is stored
SELECT t_try($$SELECT payledger.add_provider('main', 'deep', 'lnbits', 'http://h', '{"invoice_key": "k"}', (repeat('[', 200) || repeat(']', 200))::jsonb)$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'lnbits', 'http://user:pw@h', '{"invoice_key": "k"}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'lnbits', 'ftp://h', '{"invoice_key": "k"}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'lnbits', 'http://h', '{"api_key": "do-not-print-me"}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'btcpay', 'http://h', '{"api_key": "k"}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'stripe', 'http://h', '{"secret_key": "k"}', asset => 'eur')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'lnbits', 'lnbits', 'http://h', '{"invoice_key": "k"}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'paypal', 'http://h', '{}')$$);
SELECT t_try($$SELECT payledger.add_provider('main', 'x', 'lnbits', NULL, '{"invoice_key": "k"}')$$);
SELECT name, kind, rail, asset, priority, active FROM payledger.providers ORDER BY name;

-- credentials: admin only, never in the providers table
SET ROLE payledger_app;
SELECT t_try($$SELECT count(*) FROM payledger.provider_secrets$$);
SELECT count(*) AS providers_visible FROM payledger.providers;
RESET ROLE;
SELECT count(*) AS no_secret_columns FROM information_schema.columns
 WHERE table_schema = 'payledger' AND table_name = 'providers' AND column_name ~ 'key|secret|macaroon|rune';
SELECT t_try($$SELECT payledger.set_provider_credentials(payledger.new_id(), '{"invoice_key": "k"}')$$);
SELECT t_try(format($$SELECT payledger.set_provider_credentials(%L, '{"macaroon": "k"}')$$,
                    (SELECT id FROM payledger.providers WHERE name = 'lnbits')));

-- routes: a type to a profile; unknown names are errors
SELECT payledger.route_payin_type('PLAN', 'eu');
SELECT t_try($$SELECT payledger.route_payin_type('NOPE', 'eu')$$);
SELECT t_try($$SELECT payledger.route_payin_type('PLAN', 'nope')$$);
SELECT p.name AS picked FROM payledger.providers p WHERE p.id = payledger_internal.pick_provider('LICENSE', 'msat', 'invoice');
SELECT p.name AS picked FROM payledger.providers p WHERE p.id = payledger_internal.pick_provider('PLAN', 'msat', 'invoice');
SELECT payledger_internal.pick_provider('LICENSE', 'msat', 'card') IS NULL AS none_for_cards_in_msat;

---------------------------------------------------------------------------
-- An invoice's life, fed through the worker's steps
---------------------------------------------------------------------------
-- the application's settle hook: one license per pay-in (a key enforces it)
CREATE TABLE licenses (payin_id uuid PRIMARY KEY);
CREATE FUNCTION issue_license(payin uuid, state payledger.payin_state) RETURNS void
LANGUAGE sql AS 'INSERT INTO licenses VALUES (payin)';   -- unqualified: runs with the registrant's search_path
SELECT payledger.register_settle_hook('license', 'issue_license(uuid, payledger.payin_state)');
SELECT t_try($$SELECT payledger.register_settle_hook('bad', 'md5(text)')$$);
SELECT t_try($$SELECT payledger.register_settle_hook('bad', 'issue_license(uuid, payledger.payin_state)', '{PENDING}')$$);

CREATE FUNCTION t_buy(amount bigint DEFAULT 30000) RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('cara', 'LICENSE', 'msat', 100000,
    jsonb_build_array(jsonb_build_object('account', acc('cara'), 'amount', 100000 - amount),
                      jsonb_build_object('external', 'invoice', 'amount', amount)),
    jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 100000)))
$$;
CREATE FUNCTION t_inv(p uuid) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM payledger.invoices WHERE payin_id = p $$;
CREATE FUNCTION t_pstate(p uuid) RETURNS text LANGUAGE sql AS $$
  SELECT p.state || coalesce(' ' || p.failure_reason, '') || ' / invoice ' || coalesce(i.status::text, '-')
    FROM payledger.payins p LEFT JOIN payledger.invoices i ON i.payin_id = p.id WHERE p.id = $1
$$;
CREATE FUNCTION t_apply(p uuid, r jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.invoice_apply(t_inv(p), r || jsonb_build_object('invoice_id', t_inv(p)))
$$;
CREATE TABLE t_p (name text PRIMARY KEY, id uuid);

SELECT coalesce(max(id), 0) AS ev0 FROM payledger.events \gset
-- 1. created, pending, paid: once, however often the news comes
INSERT INTO t_p VALUES ('p1', t_buy());
SELECT t_pstate((SELECT id FROM t_p WHERE name = 'p1'));
SELECT op, kind, amount, expiry_secs, claims::text ~ 'secret' AS leaks_secret
  FROM payledger.worker_claim(10) c, jsonb_to_recordset(c) AS x(op text, kind text, amount bigint, expiry_secs bigint),
       LATERAL (SELECT c AS claims) s;
SELECT payledger.worker_claim(10) AS claimed_again;   -- leased: nothing more to claim
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "aa11", "payment_hash": "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11", "payment_request": "lnbc1..."}')
  FROM t_p WHERE name = 'p1';
SELECT t_pstate(id), t_apply(id, '{"op": "check", "status": "pending"}') FROM t_p WHERE name = 'p1';
SELECT t_apply(id, '{"op": "check", "status": "paid", "received": 29000}') AS underpaid FROM t_p WHERE name = 'p1';
SELECT t_apply(id, '{"op": "check", "status": "paid", "received": 30000, "preimage": "00"}') FROM t_p WHERE name = 'p1';
SELECT t_apply(id, '{"op": "check", "status": "paid"}') AS again FROM t_p WHERE name = 'p1';
SELECT t_apply(id, '{"op": "check", "status": "expired"}') AS expired_after_paid FROM t_p WHERE name = 'p1';
SELECT t_pstate(id), (SELECT count(*) FROM licenses l WHERE l.payin_id = t_p.id) AS licenses FROM t_p WHERE name = 'p1';
SELECT payledger.balance(acc('shop')) AS shop_earned;
SELECT topic, payload ->> 'state' AS state FROM payledger.events WHERE id > :ev0 ORDER BY id;

-- 2. not paid in time: FAILED (INVOICE_EXPIRED), the balance part back,
--    then the money arrives late: recorded, in suspense, with an event
INSERT INTO t_p VALUES ('p2', t_buy());
SELECT payledger.balance(acc('cara')) AS cara_before_expiry;
SELECT payledger.worker_claim(10) IS NOT NULL AS claimed;
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "bb22", "payment_hash": "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22"}') FROM t_p WHERE name = 'p2';
SELECT t_apply(id, '{"op": "check", "status": "expired"}') FROM t_p WHERE name = 'p2';
SELECT t_pstate(id), payledger.balance(acc('cara')) AS cara_after FROM t_p WHERE name = 'p2';
SELECT next_check_at IS NOT NULL AS still_watched FROM payledger.invoices WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p2');
SELECT t_apply(id, '{"op": "check", "status": "paid"}') AS late FROM t_p WHERE name = 'p2';
SELECT t_pstate(t_p.id), i.paid_late,
       payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments')) AS in_suspense
  FROM t_p, payledger.invoices i WHERE t_p.name = 'p2' AND i.payin_id = t_p.id;
SELECT topic, payload ->> 'amount' AS amount FROM payledger.events WHERE topic = 'invoice.paid_late';

-- 3. creation: an unreachable provider does not use up the tries; refusals
--    do, and the last one fails the pay-in
INSERT INTO t_p VALUES ('p3', t_buy());
SELECT payledger.worker_claim(10) IS NOT NULL AS claimed;
SELECT t_apply(id, '{"op": "create", "ok": false, "retryable": true, "error": "connection refused"}') FROM t_p WHERE name = 'p3';
SELECT create_attempts, status FROM payledger.invoices WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p3');
SELECT t_apply(id, '{"op": "create", "ok": false, "retryable": false, "error": "HTTP 400: bad amount"}') FROM t_p WHERE name = 'p3';
UPDATE payledger.invoices SET create_attempts = 5 WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p3');
SELECT t_apply(id, '{"op": "create", "ok": false, "retryable": false, "error": "HTTP 400: bad amount"}') FROM t_p WHERE name = 'p3';
SELECT t_pstate(id), (SELECT last_error FROM payledger.invoices i WHERE i.payin_id = t_p.id) FROM t_p WHERE name = 'p3';

-- 4. invalid at the provider, unknown there, an unknown result, a bad invoice id
INSERT INTO t_p VALUES ('p4', t_buy());
SELECT payledger.worker_claim(10) IS NOT NULL AS claimed;
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "cc33"}') FROM t_p WHERE name = 'p4';
SELECT t_apply(id, '{"op": "check", "status": "not_found"}') FROM t_p WHERE name = 'p4';
SELECT errors, last_error FROM payledger.invoices WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p4');
SELECT t_try(format($$SELECT t_apply(%L, '{"op": "check", "status": "weird"}')$$, id)) FROM t_p WHERE name = 'p4';
SELECT t_apply(id, '{"op": "check", "status": "invalid", "error": "Invalid at BTCPay"}') FROM t_p WHERE name = 'p4';
SELECT t_pstate(id) FROM t_p WHERE name = 'p4';
SELECT t_try($$SELECT payledger.invoice_apply(payledger.new_id(), '{"op": "check", "status": "paid"}')$$);

-- 5. no provider serves the pay-in: the worker leaves it to the application,
--    and asking payledger for its invoice is an error that changes nothing
SELECT payledger.register_payin_type('CARD_ONLY', 'paid by card');
INSERT INTO t_p VALUES ('p5', (SELECT payin_id FROM payledger.create_payin('cara', 'CARD_ONLY', 'msat', 1000,
  '[{"external": "card"}]', jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 1000)))));
SELECT payledger.worker_claim(10) AS nothing_to_call;
SELECT t_pstate(id) AS left_alone FROM t_p WHERE name = 'p5';
SELECT t_try(format($$SELECT payledger.request_invoice(%L)$$, id)) FROM t_p WHERE name = 'p5';
SELECT t_pstate(id) AS unchanged FROM t_p WHERE name = 'p5';

-- 6. request_invoice: pin the provider and expiry; errors
INSERT INTO t_p VALUES ('p6', t_buy());
SELECT status, (SELECT name FROM payledger.providers WHERE id = provider_id) AS provider
  FROM t_p, payledger.request_invoice(t_p.id, (SELECT id FROM payledger.providers WHERE name = 'btcpay'), '5 minutes')
 WHERE t_p.name = 'p6';
SELECT (SELECT name FROM payledger.providers WHERE id = provider_id) AS same_provider
  FROM t_p, payledger.request_invoice(t_p.id) WHERE t_p.name = 'p6';
SELECT t_try(format($$SELECT payledger.request_invoice(%L)$$, id)) FROM t_p WHERE name = 'p1';
SELECT t_try($$SELECT payledger.request_invoice(payledger.new_id())$$);
SELECT t_try($$SELECT payledger.request_invoice(NULL)$$);
INSERT INTO t_p VALUES ('p7', t_buy());
SELECT t_try(format($$SELECT payledger.request_invoice(%L, %L)$$, id, (SELECT id FROM payledger.providers WHERE name = 'stripe')))
  FROM t_p WHERE name = 'p7';
SELECT t_try(format($$SELECT payledger.request_invoice(%L, expiry => '-1 minute')$$, id)) FROM t_p WHERE name = 'p7';

---------------------------------------------------------------------------
-- Webhooks: verified over the raw body; a bad signature changes nothing
---------------------------------------------------------------------------
SELECT payledger.worker_claim(10) IS NOT NULL AS claimed;
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "BTCinv6"}') FROM t_p WHERE name = 'p6';
CREATE FUNCTION t_btcpay(body text, secret text DEFAULT 'whsec-btcpay') RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('BTCPay-Sig', 'sha256=' || encode(hmac(body, secret, 'sha256'), 'hex'))
$$;
CREATE FUNCTION t_hook(provider text, headers jsonb, body text) RETURNS text LANGUAGE sql AS $$
  SELECT t_try(format('SELECT row(event, action, outcome)::text FROM payledger.provider_webhook(%L, %L, %L)',
                      (SELECT id FROM payledger.providers WHERE name = provider), headers, body))
$$;
-- forged, unsigned, or signed with another secret: PL026
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoiceSettled","invoiceId":"BTCinv6"}', 'guess'),
              '{"type":"InvoiceSettled","invoiceId":"BTCinv6"}');
SELECT t_hook('btcpay', '{}', '{"type":"InvoiceSettled","invoiceId":"BTCinv6"}');
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoiceSettled","invoiceId":"BTCinv6"}'),
              '{"type":"InvoiceSettled","invoiceId":"BTCinv6"} ');
SELECT t_pstate(id) AS unchanged FROM t_p WHERE name = 'p6';
-- one payment settled is not the invoice settled: a check is scheduled
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoicePaymentSettled","invoiceId":"BTCinv6"}'),
              '{"type":"InvoicePaymentSettled","invoiceId":"BTCinv6"}');
-- signed, but about an invoice payledger does not know; signed, not JSON
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoiceSettled","invoiceId":"other"}'), '{"type":"InvoiceSettled","invoiceId":"other"}');
SELECT t_hook('btcpay', t_btcpay('not json'), 'not json');
-- the settlement, then its redelivery
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoiceSettled","invoiceId":"BTCinv6"}'), '{"type":"InvoiceSettled","invoiceId":"BTCinv6"}');
SELECT t_hook('btcpay', t_btcpay('{"type":"InvoiceSettled","invoiceId":"BTCinv6"}'), '{"type":"InvoiceSettled","invoiceId":"BTCinv6"}');
SELECT t_pstate(id), (SELECT count(*) FROM licenses l WHERE l.payin_id = t_p.id) AS licenses FROM t_p WHERE name = 'p6';
-- Stripe: t=…,v1=… over t.body, within 300 s
CREATE FUNCTION t_stripe(body text, t bigint) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('Stripe-Signature',
    format('t=%s,v1=%s', t, encode(hmac(t || '.' || body, 'whsec_stripe', 'sha256'), 'hex')))
$$;
SELECT t_hook('stripe', t_stripe('{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_9"}}}',
                                 extract(epoch FROM now())::bigint - 400),
              '{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_9"}}}');
SELECT t_hook('stripe', t_stripe('{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_9"}}}',
                                 extract(epoch FROM now())::bigint),
              '{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_9"}}}');
-- LNbits signs nothing: its webhook (JSON inside a JSON string) is a hint
INSERT INTO t_p VALUES ('p8', t_buy());
SELECT payledger.worker_claim(10) IS NOT NULL AS claimed;
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44", "payment_hash": "dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44"}')
  FROM t_p WHERE name = 'p8';
SELECT t_hook('lnbits', '{}', to_jsonb('{"payment_hash": "dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44dd44", "amount": 30000}'::text)::text);
SELECT t_pstate(id) AS still_pending FROM t_p WHERE name = 'p8';
SELECT t_try($$SELECT * FROM payledger.provider_webhook(payledger.new_id(), '{}', '{}')$$);
SELECT t_try(format($$SELECT * FROM payledger.provider_webhook(%L, '{}', NULL)$$, (SELECT id FROM payledger.providers WHERE name = 'lnbits')));

---------------------------------------------------------------------------
-- A failing hook: recorded and retried, the settlement stays
---------------------------------------------------------------------------
CREATE TABLE t_flaky (fail boolean);
INSERT INTO t_flaky VALUES (true);
CREATE FUNCTION flaky_hook(payin uuid, state payledger.payin_state) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT fail FROM t_flaky) THEN RAISE EXCEPTION 'mail server down'; END IF;
END $$;
SELECT payledger.register_settle_hook('mailer', 'flaky_hook(uuid, payledger.payin_state)', '{PAID,FAILED}');
SELECT t_apply(id, '{"op": "check", "status": "paid"}') FROM t_p WHERE name = 'p8';
SELECT t_pstate(id) FROM t_p WHERE name = 'p8';
SELECT hook, status, attempts, last_error FROM payledger.hook_runs
 WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p8') ORDER BY hook;
UPDATE t_flaky SET fail = false;
UPDATE payledger.hook_runs SET next_attempt_at = now() WHERE hook = 'mailer';
SELECT payledger.retry_hooks() AS retried;
SELECT hook, status, attempts FROM payledger.hook_runs WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p8') ORDER BY hook;
SELECT payledger.unregister_settle_hook('mailer');

---------------------------------------------------------------------------
-- Housekeeping: past the deadline, an unpaid invoice expires its pay-in
---------------------------------------------------------------------------
UPDATE payledger.invoices SET monitor_until = now() - interval '1 second', locked_until = NULL  -- (its claim lapsed)
 WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p7');
SELECT payledger.expire_invoices(10) AS expired;
SELECT t_pstate(id) FROM t_p WHERE name = 'p7';
-- the worker's plan: one pay-in (or hook, or renewal) per transaction where
-- money moves for several owners, one engine batch where it moves at once
SELECT * FROM payledger.housekeeping_plan(500);
SELECT payledger.housekeeping_step('invoices_closed', 1) AS nothing_due;
SELECT t_try($$SELECT payledger.housekeeping_step('vacuum', 1)$$);
-- an invoice whose closing fails (here a test trigger refuses its pay-in's
-- move) is backed off and reported; the others are not held up
CREATE TABLE t_refused (id uuid PRIMARY KEY);
CREATE FUNCTION t_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM public.t_refused WHERE id = OLD.id) THEN
    RAISE EXCEPTION 'refused by the test';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER t_refuse BEFORE UPDATE ON payledger.payins FOR EACH ROW EXECUTE FUNCTION t_refuse();
INSERT INTO t_p VALUES ('p9', t_buy());
INSERT INTO t_refused SELECT id FROM t_p WHERE name = 'p9';
SELECT status FROM t_p, payledger.request_invoice(t_p.id) WHERE t_p.name = 'p9';
UPDATE payledger.invoices SET monitor_until = now() - interval '1 second'
 WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p9');
SET client_min_messages = error;  -- (its WARNING names the invoice)
SELECT payledger.housekeeping_step('invoices_closed', 1) AS closed;
RESET client_min_messages;
SELECT status, errors, last_error, locked_until > now() AS backed_off FROM payledger.invoices
 WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p9');
SELECT t_pstate(id) FROM t_p WHERE name = 'p9';
SELECT payledger.housekeeping_step('invoices_closed', 1) AS skipped_while_backed_off;
-- once the cause is gone and the backoff over, it closes
DROP TRIGGER t_refuse ON payledger.payins;
UPDATE payledger.invoices SET locked_until = NULL WHERE payin_id = (SELECT id FROM t_p WHERE name = 'p9');
SELECT payledger.housekeeping_step('invoices_closed', 1) AS closed;
SELECT t_pstate(id) FROM t_p WHERE name = 'p9';
-- a step that fails as a whole (here: holds refuse to expire) is reported and
-- returns 0: the worker goes on with the next step instead of ending
CREATE FUNCTION t_refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
SELECT payledger.create_hold(acc('cara'), acc('shop'), 1000, interval '1 hour') AS hold \gset
UPDATE payledger.holds SET expires_at = now() - interval '1 second' WHERE id = :'hold';
CREATE TRIGGER t_refuse_all BEFORE UPDATE ON payledger.holds FOR EACH ROW EXECUTE FUNCTION t_refuse_all();
SELECT payledger.housekeeping_step('holds_expired', 10) AS expired;
DROP TRIGGER t_refuse_all ON payledger.holds;
SELECT payledger.housekeeping_step('holds_expired', 10) AS expired;
SELECT status FROM payledger.holds WHERE id = :'hold';

---------------------------------------------------------------------------
-- Subscriptions: pinned to the provider of their creation
---------------------------------------------------------------------------
INSERT INTO t_p VALUES ('s1', payledger.create_subscription('cara', 'PLAN', 'msat', 21000, '1 month',
  payouts => jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 21000)),
  starts_at => now() - interval '1 day'));
SELECT (SELECT name FROM payledger.providers WHERE id = provider_id) AS pinned FROM payledger.subscriptions;
SELECT payledger.route_payin_type('PLAN', 'main');        -- the product moves; the subscriber does not
SELECT payledger.renew_due_subscriptions() AS renewed;
SELECT (SELECT name FROM payledger.providers WHERE id = i.provider_id) AS invoiced_at, i.status, i.amount
  FROM payledger.invoices i WHERE i.subscription_id = (SELECT id FROM t_p WHERE name = 's1');
SELECT renewals, next_renewal_at > now() AS next_in_future FROM payledger.subscriptions;
SELECT payledger.renew_due_subscriptions() AS renewed_again;
-- a row from before snapshots: the profile's current provider, else the route
UPDATE payledger.subscriptions SET provider_id = NULL, profile_id = NULL, next_renewal_at = now();
SELECT payledger.renew_subscription(id) IS NOT NULL AS renewed FROM t_p WHERE name = 's1';
SELECT (SELECT name FROM payledger.providers WHERE id = i.provider_id) AS fallback
  FROM payledger.invoices i WHERE i.subscription_id = (SELECT id FROM t_p WHERE name = 's1') ORDER BY i.created_at DESC LIMIT 1;
SELECT t_try($$SELECT payledger.create_subscription('cara', 'NOPE', 'msat', 1, '1 month')$$);
SELECT t_try($$SELECT payledger.create_subscription('cara', 'PLAN', 'msat', 1, '0 days')$$);
SELECT t_try($$SELECT payledger.create_subscription('cara', 'PLAN', 'msat', 0, '1 month')$$);
SELECT t_try($$SELECT payledger.cancel_subscription(payledger.new_id())$$);
-- a renewal that fails (here a pay-out account that is gone) backs off, with
-- an event, and does not hold up the others; fixed, it renews
INSERT INTO t_p VALUES ('s2', payledger.create_subscription('cara', 'PLAN', 'msat', 1000, '1 month',
  payouts => jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 1000)),
  starts_at => now() - interval '2 days'));
UPDATE payledger.subscriptions SET payouts = jsonb_build_array(jsonb_build_object('type', 'SALE',
       'account', payledger.new_id(), 'amount', 1000))
 WHERE id = (SELECT id FROM t_p WHERE name = 's2');
UPDATE payledger.subscriptions SET next_renewal_at = now() - interval '1 hour' WHERE id = (SELECT id FROM t_p WHERE name = 's1');
SET client_min_messages = error;
SELECT payledger.renew_due_subscriptions(1) AS renewed_first, payledger.renew_due_subscriptions(1) AS renewed_next,
       payledger.renew_due_subscriptions(1) AS nothing_left;
RESET client_min_messages;
SELECT (SELECT name FROM t_p WHERE id = s.id) AS sub, errors, last_error IS NOT NULL AS has_error,
       retry_at > now() AS backing_off
  FROM payledger.subscriptions s ORDER BY 1;
SELECT topic, payload ->> 'errors' AS errors FROM payledger.events WHERE topic = 'subscription.renewal_failed';
UPDATE payledger.subscriptions SET payouts = jsonb_build_array(jsonb_build_object('type', 'SALE',
       'account', acc('shop'), 'amount', 1000)), retry_at = now()
 WHERE id = (SELECT id FROM t_p WHERE name = 's2');
SELECT payledger.renew_due_subscriptions() AS renewed_when_fixed;
SELECT errors, last_error, retry_at, renewals FROM payledger.subscriptions WHERE id = (SELECT id FROM t_p WHERE name = 's2');
SELECT payledger.cancel_subscription(id) FROM t_p WHERE name = 's2';
SELECT payledger.cancel_subscription(id) FROM t_p WHERE name = 's1';
SELECT t_try(format($$SELECT payledger.renew_subscription(%L)$$, id)) FROM t_p WHERE name = 's1';

---------------------------------------------------------------------------
-- Overpaid: the excess to the payer's main account, once; or to suspense
-- where the provider's config says so
---------------------------------------------------------------------------
SELECT payledger.balance(acc('cara')) AS cara_before \gset
INSERT INTO t_p VALUES ('o1', t_buy());
SELECT count(*) > 0 AS claimed FROM jsonb_array_elements(payledger.worker_claim(10));
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "ee11", "payment_hash": "ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11ee11"}')
  FROM t_p WHERE name = 'o1';
SELECT t_apply(id, '{"op": "check", "status": "paid", "received": 31500}') FROM t_p WHERE name = 'o1';
SELECT t_apply(id, '{"op": "check", "status": "paid", "received": 31500}') AS again FROM t_p WHERE name = 'o1';
SELECT t_pstate(t_p.id), i.amount, i.amount_received, j.kind FROM t_p JOIN payledger.invoices i ON i.payin_id = t_p.id
  JOIN payledger.journals j ON j.id = i.overpay_journal WHERE name = 'o1';
SELECT payledger.balance(acc('cara')) - :cara_before AS cara_paid_net;   -- 70,000 from her balance, 1,500 back
SELECT payload ->> 'excess' AS excess, payload ->> 'to' AS to_whom FROM payledger.events WHERE topic = 'invoice.overpaid';
UPDATE payledger.providers SET config = config || '{"overpayment": "suspense"}' WHERE name = 'lnbits';
INSERT INTO t_p VALUES ('o2', t_buy());
SELECT count(*) > 0 AS claimed FROM jsonb_array_elements(payledger.worker_claim(10));
SELECT t_apply(id, '{"op": "create", "ok": true, "external_id": "ee22", "payment_hash": "ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22ee22"}')
  FROM t_p WHERE name = 'o2';
SELECT t_apply(id, '{"op": "check", "status": "paid", "received": 30700}') FROM t_p WHERE name = 'o2';
SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'overpayments')) AS in_suspense;
UPDATE payledger.providers SET config = config - 'overpayment' WHERE name = 'lnbits';

---------------------------------------------------------------------------
-- Cancel: a pay-in that ends while its invoice is open
---------------------------------------------------------------------------
CREATE FUNCTION t_open(name text, provider text, hash text, fail boolean DEFAULT false) RETURNS text LANGUAGE plpgsql AS $$
DECLARE p uuid := t_buy();
BEGIN
  INSERT INTO t_p VALUES (name, p);
  PERFORM payledger.request_invoice(p, (SELECT id FROM payledger.providers x WHERE x.name = provider));
  PERFORM payledger.worker_claim(10);
  IF fail THEN
    PERFORM payledger.fail_payin(p, 'USER_CANCELLED');   -- before the creation's answer
  END IF;
  RETURN t_apply(p, jsonb_build_object('op', 'create', 'ok', true, 'external_id', hash, 'payment_hash', hash));
END $$;
CREATE FUNCTION t_cancel(n text) RETURNS text LANGUAGE sql AS $$
  SELECT t_pstate(t_p.id) || ' / cancel ' || coalesce(i.cancel, '-') || ' / watched ' || (i.next_check_at IS NOT NULL)
    FROM t_p JOIN payledger.invoices i ON i.payin_id = t_p.id WHERE t_p.name = n
$$;
CREATE FUNCTION t_op(n text) RETURNS text LANGUAGE sql AS $$
  SELECT x ->> 'op' FROM jsonb_array_elements(payledger.worker_claim(10)) x
   WHERE x ->> 'invoice_id' = t_inv((SELECT id FROM t_p WHERE name = n))::text
$$;
-- at LNbits (its API has no cancel): marked so, still watched for late money
SELECT t_open('c1', 'lnbits', 'cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11cc11');
SELECT changed FROM payledger.cancel_payin((SELECT id FROM t_p WHERE name = 'c1'));
SELECT t_op('c1') AS op;   -- the worker's claim notices it
SELECT t_cancel('c1');
-- at LND: the worker cancels it; a failed try is tried again after a backoff
SELECT t_open('c2', 'lnd', 'cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22cc22');
SELECT changed FROM payledger.fail_payin((SELECT id FROM t_p WHERE name = 'c2'), 'USER_CANCELLED');
SELECT t_op('c2') AS op;
SELECT t_cancel('c2');
SELECT t_apply(id, '{"op": "cancel", "ok": false, "retryable": true, "error": "HTTP 503"}') FROM t_p WHERE name = 'c2';
SELECT t_cancel('c2'), last_error FROM payledger.invoices WHERE payin_id = (SELECT id FROM t_p WHERE name = 'c2');
UPDATE payledger.invoices SET next_check_at = now() WHERE payin_id = (SELECT id FROM t_p WHERE name = 'c2');
SELECT t_op('c2') AS op;
SELECT t_apply(id, '{"op": "cancel", "cancel": "cancelled"}') FROM t_p WHERE name = 'c2';
SELECT t_apply(id, '{"op": "cancel", "cancel": "cancelled"}') AS again FROM t_p WHERE name = 'c2';
SELECT t_cancel('c2'), last_error, cancelled_at IS NOT NULL AS cancelled_at
  FROM payledger.invoices WHERE payin_id = (SELECT id FROM t_p WHERE name = 'c2');
-- paid before the cancel got there: the next check books it as late money
SELECT t_open('c3', 'lnd', 'cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33');
SELECT changed FROM payledger.fail_payin((SELECT id FROM t_p WHERE name = 'c3'));
SELECT t_op('c3') AS op, t_apply(id, '{"op": "cancel", "cancel": "too_late"}') FROM t_p WHERE name = 'c3';
SELECT t_op('c3') AS op, t_apply(id, '{"op": "check", "status": "paid"}') FROM t_p WHERE name = 'c3';
SELECT t_cancel('c3');
-- created after its pay-in ended: cancelled as soon as it exists; gone at
-- the provider is as good as cancelled
SELECT t_open('c4', 'lnd', 'cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44cc44', fail => true);
SELECT t_op('c4') AS op;
SELECT t_cancel('c4');
SELECT t_try(format('SELECT payledger.invoice_apply(%L, %L)', t_inv(id), '{"op": "cancel", "cancel": "maybe"}')) FROM t_p WHERE name = 'c4';
SELECT t_apply(id, '{"op": "cancel", "cancel": "gone"}') FROM t_p WHERE name = 'c4';
SELECT t_cancel('c4');

---------------------------------------------------------------------------
-- Events, views, invariants
---------------------------------------------------------------------------
SELECT topic, count(*) FROM payledger.events WHERE id > :ev0 GROUP BY topic ORDER BY topic;
SELECT count(*) > 0 AS some FROM payledger.events_since(0, 5);
SET payledger.owner_id = 'cara';
SET ROLE payledger_enduser;
SELECT count(*) > 0 AS own_invoices, bool_and(status IS NOT NULL) FROM payledger.my_invoices;
SELECT count(*) > 0 AS own_events FROM payledger.my_events;
SELECT count(*) AS own_subscriptions FROM payledger.my_subscriptions;
SELECT t_try($$SELECT count(*) FROM payledger.invoices$$);
SELECT t_try($$SELECT count(*) FROM payledger.provider_secrets$$);
SELECT t_try($$SELECT * FROM payledger.provider_webhook('00000000-0000-0000-0000-000000000000', '{}', '{}')$$);
RESET ROLE;
RESET payledger.owner_id;
SELECT * FROM payledger.check_invariants();
