-- The events room alone (no provider): a pay-in's outbox event and settle
-- hooks when it reaches PAID, FAILED or CANCELLED, whoever moves it; a hook
-- runs once per pay-in and state; a failing one is recorded and retried and
-- never undoes the settlement; announcing, reading, and the end user's view.
\set db t_events
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.register_payin_type('LICENSE', 'buy a license'), payledger.register_payout_type('SALE', 'a sale');
INSERT INTO t_acc VALUES ('shop', payledger.open_account('shop', 'msat', 'revenue'));
SELECT payledger.transfer(acc('world'), acc('alice'), 100000) IS NOT NULL AS funded;
-- alice buys for 1000: from her balance (PAID at once), or by an invoice the
-- application issues itself (no provider here)
CREATE FUNCTION t_buy(by_invoice boolean) RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('alice', 'LICENSE', 'msat', 1000,
    CASE WHEN by_invoice THEN '[{"external": "invoice"}]'::jsonb
         ELSE jsonb_build_array(jsonb_build_object('account', acc('alice'))) END,
    jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 1000)))
$$;

-- hooks: the application's functions, with the registrant's search_path
CREATE TABLE licenses (payin_id uuid PRIMARY KEY, state text);
CREATE FUNCTION issue_license(payin uuid, state payledger.payin_state) RETURNS void
LANGUAGE sql AS 'INSERT INTO licenses VALUES (payin, state)';
SELECT payledger.register_settle_hook('license', 'issue_license(uuid, payledger.payin_state)', '{PAID,FAILED}');
SELECT t_try($$SELECT payledger.register_settle_hook('bad', 'md5(text)')$$);
SELECT t_try($$SELECT payledger.register_settle_hook('bad', 'issue_license(uuid, payledger.payin_state)', '{PENDING}')$$);
SELECT t_try($$SELECT payledger.register_settle_hook('bad name!', 'issue_license(uuid, payledger.payin_state)')$$);
SELECT t_try($$SELECT payledger.register_settle_hook(NULL, 'issue_license(uuid, payledger.payin_state)')$$);
SELECT name, function, on_states, max_attempts, active FROM payledger.settle_hooks;

SELECT coalesce(max(id), 0) AS ev0 FROM payledger.events \gset
-- 1. PAID at creation: the event and the hook in the creating transaction
SELECT t_buy(false) AS p1 \gset
SELECT state FROM payledger.payins WHERE id = :'p1';
SELECT state FROM licenses WHERE payin_id = :'p1';
-- 2. by invoice: PAID when the application settles it; a second settle changes nothing
SELECT t_buy(true) AS p2 \gset
SELECT count(*) AS licenses_before_paid FROM licenses WHERE payin_id = :'p2';
SELECT changed FROM payledger.transition_payin(:'p2', 'PENDING');
SELECT changed FROM payledger.settle_payin(:'p2');
SELECT changed FROM payledger.settle_payin(:'p2');
SELECT state, (SELECT count(*) FROM licenses l WHERE l.payin_id = :'p2') AS licenses FROM payledger.payins WHERE id = :'p2';
-- 3. failed: the hook runs for FAILED too; cancelled: no hook on CANCELLED here, an event still
SELECT t_buy(true) AS p3 \gset
SELECT changed FROM payledger.fail_payin(:'p3', 'INVOICE_EXPIRED');
SELECT t_buy(true) AS p4 \gset
SELECT changed FROM payledger.transition_payin(:'p4', 'PENDING');
SELECT changed FROM payledger.cancel_payin(:'p4');
SELECT t_mask(payin_id::text) AS payin, state FROM licenses ORDER BY state, payin_id;
SELECT topic, payload ->> 'state' AS state, payload ->> 'failure_reason' AS reason, owner_id
  FROM payledger.events WHERE id > :ev0 ORDER BY id;
SELECT hook, state, status, attempts FROM payledger.hook_runs ORDER BY created_at, state;

-- a failing hook: recorded, retried with backoff, the settlement stays; after
-- max_attempts it fails for good, with an event
CREATE TABLE t_flaky (fail boolean);
INSERT INTO t_flaky VALUES (true);
CREATE FUNCTION flaky_hook(payin uuid, state payledger.payin_state) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT fail FROM t_flaky) THEN RAISE EXCEPTION 'mail server down'; END IF;
END $$;
SELECT payledger.register_settle_hook('mailer', 'flaky_hook(uuid, payledger.payin_state)', max_attempts => 2);
SELECT t_buy(false) AS p5 \gset
SELECT state FROM payledger.payins WHERE id = :'p5';
SELECT hook, status, attempts, last_error, next_attempt_at > now() AS backs_off
  FROM payledger.hook_runs WHERE payin_id = :'p5' ORDER BY hook;
SELECT payledger.retry_hooks() AS retried_before_due;
UPDATE payledger.hook_runs SET next_attempt_at = now() WHERE hook = 'mailer';
SELECT payledger.retry_hooks() AS retried;
SELECT hook, status, attempts FROM payledger.hook_runs WHERE payin_id = :'p5' ORDER BY hook;
SELECT topic, payload ->> 'hook' AS hook, payload ->> 'error' AS error FROM payledger.events WHERE topic = 'hook.failed';
-- fixed, a new pay-in's hook runs; an unregistered hook runs no more
UPDATE t_flaky SET fail = false;
SELECT t_buy(false) AS p6 \gset
SELECT hook, status FROM payledger.hook_runs WHERE payin_id = :'p6' ORDER BY hook;
SELECT payledger.unregister_settle_hook('mailer');
SELECT t_buy(false) AS p7 \gset
SELECT hook, status FROM payledger.hook_runs WHERE payin_id = :'p7' ORDER BY hook;

-- announcing: one NOTIFY for what is new, then nothing until something is
SELECT payledger.announce_events() = (SELECT max(id) FROM payledger.events) AS announced_newest;
SELECT payledger.announce_events() AS nothing_new;
SELECT count(*) AS read_from_the_start FROM payledger.events_since(0, 1000);
SELECT count(*) AS read_after_ev0 FROM payledger.events_since(:ev0, 2);
SELECT t_try($$SELECT count(*) FROM payledger.events_since(0, 0)$$);
-- the end user sees her own events only
SET ROLE payledger_enduser;
SET payledger.owner_id = 'alice';
SELECT count(*) > 0 AS sees_hers, bool_and(topic LIKE 'payin.%') AS payins_only FROM payledger.my_events;
SET payledger.owner_id = 'shop';
SELECT count(*) AS shop_sees FROM payledger.my_events;
RESET payledger.owner_id;
RESET ROLE;
-- delivery to the operator's webhook endpoints (tests/integration/webhooks.sh
-- sends them for real): the claim, the results, the dead-letter state
SELECT t_try($$SELECT payledger.add_webhook_endpoint('bad name', 'https://app.example/hooks')$$);
SELECT t_try($$SELECT payledger.add_webhook_endpoint('app', 'ftp://app.example/hooks')$$);
SELECT t_try($$SELECT payledger.add_webhook_endpoint('app', 'https://user:pw@app.example/hooks')$$);
SELECT t_try($$SELECT payledger.add_webhook_endpoint('app', 'https://app.example/hooks', '{}')$$);
SELECT t_try($$SELECT payledger.add_webhook_endpoint('app', 'https://app.example/hooks', secret => 'not-a-secret')$$);
SELECT endpoint_id AS ep, endpoint_secret ~ '^whsec_' AS made_a_secret
  FROM payledger.add_webhook_endpoint('app', 'https://app.example/hooks', ARRAY['payin.%'], from_event => :ev0) \gset
SELECT t_try($$SELECT payledger.add_webhook_endpoint('app', 'https://other.example/')$$);
SELECT count(*) AS queued_before FROM payledger.webhook_deliveries;
SELECT jsonb_array_length(c) AS claimed, c::text ~ 'whsec' AS leaks_secret,
       (SELECT bool_and(x ->> 'msg_id' ~ '^evt_[0-9]+$' AND (x ->> 'body')::jsonb ->> 'type' LIKE 'payin.%')
          FROM jsonb_array_elements(c) x) AS shaped
  FROM payledger.webhook_claim(100) c;
SELECT count(*) = (SELECT count(*) FROM payledger.events WHERE id > :ev0 AND topic LIKE 'payin.%') AS one_per_event
  FROM payledger.webhook_deliveries;
SELECT id AS d1 FROM payledger.webhook_deliveries ORDER BY event_id LIMIT 1 \gset
SELECT id AS d2 FROM payledger.webhook_deliveries ORDER BY event_id OFFSET 1 LIMIT 1 \gset
SELECT payledger.webhook_apply(jsonb_build_object('delivery_id', :'d1', 'ok', true, 'status', 204)) AS d1,
       payledger.webhook_apply(jsonb_build_object('delivery_id', :'d1', 'ok', false, 'status', 500)) AS d1_again;
SELECT payledger.webhook_apply(jsonb_build_object('delivery_id', :'d2', 'ok', false, 'status', 500, 'error', 'HTTP 500')) AS d2;
SELECT status, attempts, last_status, last_error, next_attempt_at > now() AS backs_off FROM payledger.webhook_deliveries WHERE id = :'d2';
-- failed webhook_max_attempts (10) times: dead; sent again by hand
UPDATE payledger.webhook_deliveries SET attempts = 10 WHERE id = :'d2';
SELECT payledger.webhook_apply(jsonb_build_object('delivery_id', :'d2', 'ok', false, 'error', 'timeout')) AS d2;
SELECT payledger.retry_webhook_delivery(:'d2') AS retried, payledger.retry_webhook_delivery(:'d1') AS delivered_stays;
SELECT t_try($$SELECT payledger.retry_webhook_delivery(gen_random_uuid())$$);
SELECT t_try($$SELECT payledger.webhook_apply('{"delivery_id": "00000000-0000-0000-0000-000000000000", "ok": true}')$$);
SELECT payledger.set_webhook_endpoint_enabled(:'ep', false) AS enabled;
SELECT jsonb_array_length(payledger.webhook_claim(100)) AS claimed_while_paused;
-- the application's roles: no secrets, no endpoints
SET ROLE payledger_app;
SELECT t_try($$SELECT count(*) FROM payledger.webhook_endpoint_secrets$$);
SELECT t_try($$SELECT payledger.add_webhook_endpoint('x', 'https://x.example/')$$);
SELECT t_try($$SELECT payledger.webhook_claim(1)$$);
SELECT count(*) AS endpoints_seen FROM payledger.webhook_endpoints;
RESET ROLE;
SELECT count(*) AS violations FROM payledger.check_invariants();
