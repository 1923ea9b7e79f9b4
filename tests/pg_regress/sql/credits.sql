-- Prepaid credits: grants and the burn order (priority, expiry, promotional
-- before paid, per-metric scope), expiry judged at the usage's time, undo,
-- voids, balances now and in the past, gift codes and their limits, tiered
-- prices, packages bought with pay-ins, metering and per-metric blocking.
\set db t_credits
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql

SELECT payledger.credits_configure('credit', 6, expiry_grace => '1 day');
SELECT payledger.register_credit_metric('mau', 'counter', 'user');
SELECT payledger.register_credit_metric('storage', 'gauge', 'GiB');
SELECT payledger.register_credit_metric('bandwidth', 'counter', 'GiB');
SELECT t_try($$SELECT payledger.register_credit_metric('storage', 'counter')$$);
SELECT t_try($$SELECT payledger.register_credit_metric('Bad Name')$$);

CREATE FUNCTION t_credits(org text, metric text DEFAULT NULL, at timestamptz DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
  SELECT format('available %s of %s, by metric %s', available, granted_active, by_metric)
    FROM payledger.get_total_credits(org, metric, at)
$$;
CREATE FUNCTION t_grant(org text, credits numeric, source text, metric text DEFAULT NULL, priority integer DEFAULT 10,
                        expires_at timestamptz DEFAULT NULL, label text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO t_acc VALUES (label, payledger.grant_credits(org, credits, source, metric, priority, expires_at,
                                                           effective_at => now() - interval '10 days'))
$$;
CREATE FUNCTION t_parts(parts jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT string_agg((SELECT name FROM t_acc WHERE id = (p ->> 'grant')::uuid) || '=' || (p ->> 'credits'), ', '
                    ORDER BY p ->> 'credits' DESC, (SELECT name FROM t_acc WHERE id = (p ->> 'grant')::uuid))
    FROM jsonb_array_elements(parts) p
$$;

---------------------------------------------------------------------------
-- Burn order
---------------------------------------------------------------------------
-- org1: a paid grant expiring late, a paid grant expiring soon, a promotional
-- one expiring late, a priority-1 grant, and a storage-only grant
SELECT date_trunc('day', now()) AS today \gset
SELECT t_grant('org1', 100, 'purchase', expires_at => :'today'::timestamptz + interval '300 days', label => 'paid_late');
SELECT t_grant('org1', 100, 'purchase', expires_at => :'today'::timestamptz + interval '30 days', label => 'paid_soon');
SELECT t_grant('org1', 100, 'promotion', expires_at => :'today'::timestamptz + interval '300 days', label => 'promo_late');
SELECT t_grant('org1', 10, 'manual', priority => 1, expires_at => :'today'::timestamptz + interval '400 days', label => 'first');
SELECT t_grant('org1', 50, 'purchase', 'storage', expires_at => :'today'::timestamptz + interval '20 days', label => 'storage_only');
SELECT t_credits('org1');
SELECT t_credits('org1', 'mau');
-- priority first, then the soonest expiry (paid_soon before the others)
SELECT consumed, shortfall, t_parts(parts) FROM payledger.consume_credits('org1', 'mau', 60, 'c1');
-- paid_soon's last 50, then promotional before paid at the same expiry
SELECT consumed, t_parts(parts) FROM payledger.consume_credits('org1', 'mau', 120, 'c2');
-- storage burns its own grant first (the soonest expiry)
SELECT consumed, t_parts(parts) FROM payledger.consume_credits('org1', 'storage', 60, 'c3');
SELECT t_credits('org1');
-- the same key again: the same consumption, nothing burnt twice
SELECT consumed, t_parts(parts) FROM payledger.consume_credits('org1', 'mau', 120, 'c2');
SELECT t_try($$SELECT payledger.consume_credits('org1', 'mau', 121, 'c2')$$);
-- more than there is: PL006 and nothing burnt; or partial
SELECT t_try($$SELECT payledger.consume_credits('org1', 'mau', 1000, 'c4')$$);
SELECT t_credits('org1');
SELECT consumed, shortfall FROM payledger.consume_credits('org1', 'mau', 1000, 'c5', partial => true);
SELECT t_credits('org1');
-- bad input changes nothing
SELECT t_try($$SELECT payledger.consume_credits('org1', 'nope', 1, 'x')$$);
SELECT t_try($$SELECT payledger.consume_credits('org1', 'mau', 0, 'x')$$);
SELECT t_try($$SELECT payledger.consume_credits('org1', 'mau', 0.0000001, 'x')$$);
SELECT t_try($$SELECT payledger.consume_credits('org1', 'mau', 1, NULL)$$);
SELECT t_try($$SELECT payledger.grant_credits('org1', 10, 'stolen')$$);
SELECT t_try($$SELECT payledger.grant_credits('org1', -1)$$);
SELECT t_try($$SELECT payledger.grant_credits('org1', 1, expires_at => now() - interval '1 year')$$);

---------------------------------------------------------------------------
-- Undo: the same grants get their credits back
---------------------------------------------------------------------------
SELECT t_credits('org1', 'mau');
SELECT payledger.undo_consumption(id) AS restored FROM payledger.credit_consumptions
 WHERE org_id = 'org1' AND idempotency_key = 'c1' \gset
SELECT :restored AS restored, t_credits('org1', 'mau');
SELECT payledger.undo_consumption(id) AS again FROM payledger.credit_consumptions WHERE org_id = 'org1' AND idempotency_key = 'c1';
SELECT name, payledger.credits_of(payledger.balance(g.account_id)) AS remaining
  FROM t_acc JOIN payledger.credit_grants g ON g.id = t_acc.id WHERE g.org_id = 'org1' ORDER BY name;
SELECT t_try($$SELECT payledger.undo_consumption(payledger.new_id())$$);

---------------------------------------------------------------------------
-- Expiry is judged at the usage's time
---------------------------------------------------------------------------
-- org2: 100 credits that expired an hour ago (not yet swept: the grace)
SELECT t_grant('org2', 100, 'purchase', expires_at => now() - interval '1 hour', label => 'expired_grant');
SELECT t_credits('org2') AS now_nothing;
SELECT t_credits('org2', at => now() - interval '2 hours') AS two_hours_ago;
-- usage from before the expiry still burns it; usage from after does not
SELECT consumed FROM payledger.consume_credits('org2', 'mau', 30, 'before', usage_at => now() - interval '2 hours');
SELECT t_try($$SELECT payledger.consume_credits('org2', 'mau', 1, 'after')$$);
-- the undo of a consumption from an expired grant: it expires again at once
SELECT payledger.undo_consumption(id) FROM payledger.credit_consumptions WHERE org_id = 'org2' AND idempotency_key = 'before';
SELECT kind, payledger.credits_of(amount) FROM payledger.credit_grant_events WHERE grant_id = acc('expired_grant');
-- past the grace, the sweep expires what is left
UPDATE payledger.credit_settings SET expiry_grace = '0';
SELECT payledger.expire_credits() AS swept;
SELECT kind, payledger.credits_of(amount) FROM payledger.credit_grant_events WHERE grant_id = acc('expired_grant') ORDER BY kind;
-- a sweep over several organisations is one engine batch of at most
-- max_grants grants; what is left waits for the next sweep
SELECT count(payledger.grant_credits(o, c, effective_at => now() - interval '3 days', expires_at => now() - interval '2 days'))
  FROM (VALUES ('orgx1', 10), ('orgx2', 5), ('orgx2', 7)) v(o, c);
SELECT payledger.expire_credits(2) AS first_sweep, payledger.expire_credits(2) AS second_sweep,
       payledger.expire_credits(2) AS nothing_left;
SELECT g.org_id, payledger.credits_of(sum(e.amount)::bigint) AS expired, count(DISTINCT e.journal_id) AS journals,
       (SELECT t.available FROM payledger.get_total_credits(g.org_id) t) AS available
  FROM payledger.credit_grant_events e JOIN payledger.credit_grants g ON g.id = e.grant_id
 WHERE g.org_id IN ('orgx1', 'orgx2') AND e.kind = 'expired' GROUP BY g.org_id ORDER BY 1;
UPDATE payledger.credit_settings SET expiry_grace = '1 day';

-- void: what is left is forfeited, once
SELECT payledger.void_grant(acc('paid_soon'), 'refunded') AS voided;
SELECT payledger.void_grant(acc('paid_soon')) AS again;
SELECT t_credits('org1');
-- the balance in the past, from the ledger
SELECT t_credits('org1', at => now() - interval '5 days') AS five_days_ago;

---------------------------------------------------------------------------
-- Gift codes
---------------------------------------------------------------------------
SELECT payledger.create_gift_code('WELCOME-50', 50, max_redemptions => 2);
SELECT payledger.create_gift_code('STORAGE10', 10, 'storage', per_org_limit => 2);
SELECT payledger.create_gift_code('OLD-CODE', 5, valid_until => now() - interval '1 day');
SELECT t_try($$SELECT payledger.create_gift_code('WELCOME-50', 1)$$);
SELECT t_try($$SELECT payledger.create_gift_code('x', 1)$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('WELCOME-50', 'org3') IS NOT NULL$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('WELCOME-50', 'org3')$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('WELCOME-50', 'org4') IS NOT NULL$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('WELCOME-50', 'org5')$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('STORAGE10', 'org3') IS NOT NULL$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('STORAGE10', 'org3') IS NOT NULL$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('STORAGE10', 'org3')$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('OLD-CODE', 'org3')$$);
SELECT t_try($$SELECT payledger.redeem_gift_code('NOPE-NOPE', 'org3')$$);
SELECT t_credits('org3');
SELECT source, category, metric, payledger.credits_of(amount) FROM payledger.credit_grants WHERE org_id = 'org3' ORDER BY metric NULLS FIRST, id;

---------------------------------------------------------------------------
-- Tiered prices
---------------------------------------------------------------------------
SELECT payledger.set_credit_price_tiers('mau', '[{"from": 0, "to": 1000, "price": 0.003},
                                                 {"from": 1000, "to": 3000, "price": 0.0022},
                                                 {"from": 3000, "price": 0.0016}]');
SELECT payledger.set_credit_price_tiers('storage', '[{"from": 0, "to": 1, "price": 0.09}, {"from": 1, "price": 0.08}]');
SELECT o AS overage, payledger.credit_cost('mau', o) AS credits FROM unnest(ARRAY[0, 1, 1000, 1001, 3000, 5000]) o;
SELECT payledger.credit_cost('storage', 2.5) AS storage_2_5_gib;
SELECT t_try($$SELECT payledger.set_credit_price_tiers('mau', '[{"from": 1, "price": 1}]')$$);
SELECT t_try($$SELECT payledger.set_credit_price_tiers('mau', '[{"from": 0, "to": 10, "price": 1}, {"from": 20, "price": 1}]')$$);
SELECT t_try($$SELECT payledger.set_credit_price_tiers('nope', '[{"from": 0, "price": 1}]')$$);

---------------------------------------------------------------------------
-- Packages, bought with pay-ins: credited when PAID, once
---------------------------------------------------------------------------
SELECT payledger.define_credit_package('storage-1000', 1000, 'usd', 1000, 'storage') IS NOT NULL AS defined;
SELECT payledger.define_credit_package('any-100', 100, 'usd', 150) IS NOT NULL AS defined;
SELECT payledger.define_credit_package('monthly-500', 500, 'usd', 400, period => '1 month') IS NOT NULL AS defined;
SELECT t_try($$SELECT payledger.define_credit_package('any-100', 1, 'usd', 1)$$);
SELECT t_try($$SELECT payledger.define_credit_package('bad', 1, 'eur', 1)$$);
INSERT INTO t_acc VALUES ('org6_usd', payledger.open_account('org6', 'usd')),
                         ('credit_sales', payledger.open_account('vendor', 'usd', 'revenue', 'credit_sales'));
SELECT payledger.transfer(acc('usd_world'), acc('org6_usd'), 1500) IS NOT NULL AS funded;
-- paid from a balance: PAID at once, granted at once
SELECT state, grant_id IS NOT NULL AS granted
  FROM payledger.buy_credit_package('org6', 'storage-1000', jsonb_build_array(jsonb_build_object('account', acc('org6_usd'))),
                                    acc('credit_sales'), idempotency_key => 'buy-1');
SELECT state, grant_id IS NOT NULL AS granted
  FROM payledger.buy_credit_package('org6', 'storage-1000', jsonb_build_array(jsonb_build_object('account', acc('org6_usd'))),
                                    acc('credit_sales'), idempotency_key => 'buy-1');
SELECT t_credits('org6');
SELECT source, category, metric, cost_basis, cost_asset FROM payledger.credit_grants WHERE org_id = 'org6';
-- by card: granted only when the pay-in is PAID
SELECT payin_id AS card_payin FROM payledger.buy_credit_package('org6', 'any-100', '[{"external": "card"}]', acc('credit_sales')) \gset
SELECT t_credits('org6');
SELECT changed FROM payledger.transition_payin(:'card_payin', 'PENDING');
SELECT changed FROM payledger.settle_payin(:'card_payin');
SELECT changed FROM payledger.settle_payin(:'card_payin');
SELECT t_credits('org6');
-- one that is cancelled, then fails: the organisation is told once
SELECT payin_id AS card_payin2 FROM payledger.buy_credit_package('org6', 'any-100', '[{"external": "card"}]', acc('credit_sales')) \gset
SELECT changed FROM payledger.transition_payin(:'card_payin2', 'PENDING');
SELECT changed FROM payledger.cancel_payin(:'card_payin2');
SELECT changed FROM payledger.fail_payin(:'card_payin2');
SELECT topic, payload ->> 'package' AS package, payload ->> 'state' AS state, payload ->> 'reason' AS reason
  FROM payledger.events WHERE topic LIKE 'credits.purchase_%' ORDER BY id;
SELECT t_try($$SELECT payledger.buy_credit_package('org6', 'nope', '[]', acc('credit_sales'))$$);
SELECT t_try($$SELECT payledger.buy_credit_package('org6', 'any-100', jsonb_build_array(jsonb_build_object('account', acc('org6_usd'))), acc('credit_sales'))$$);
SELECT t_try($$SELECT payledger.subscribe_credit_package('org6', 'any-100', acc('credit_sales'))$$);
-- a recurring package: each period's renewal, once PAID, grants again (once per period)
SELECT payledger.transfer(acc('usd_world'), acc('org6_usd'), 1000) IS NOT NULL AS funded;
SELECT payledger.subscribe_credit_package('org6', 'monthly-500', acc('credit_sales'),
                                          jsonb_build_array(jsonb_build_object('account', acc('org6_usd')))) IS NOT NULL AS subscribed;
SELECT payledger.renew_due_subscriptions(10) AS renewed;
SELECT payledger.renew_due_subscriptions(10) AS renewed_again;
SELECT source, payledger.credits_of(amount), payin_id IS NOT NULL AS paid_by_payin
  FROM payledger.credit_grants WHERE org_id = 'org6' AND source = 'recurring_purchase';

---------------------------------------------------------------------------
-- Plans, metering, blocking per metric
---------------------------------------------------------------------------
SELECT payledger.define_credit_plan('solo', '{"mau": 1000, "storage": 2, "bandwidth": 10}');
SELECT t_try($$SELECT payledger.define_credit_plan('bad', '{"nope": 1}')$$);
SELECT t_try($$SELECT payledger.set_credit_org('org7', 'nope')$$);
SELECT payledger.set_credit_org('org7', 'solo');
-- within the plan: nothing to charge
SELECT payledger.record_usage('org7', 'mau', 600), payledger.record_usage('org7', 'mau', 300);
SELECT payledger.record_usage('org7', 'storage', 1.5), payledger.record_usage('org7', 'storage', 1.2);
SELECT payledger.meter_org('org7') AS charged;
SELECT metric, overage, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org7' ORDER BY metric;
-- the plan notices (Capgo's e-mails): mau at 90 % of its limit crossed 50,
-- 75 and 90; storage (a gauge: its highest reading, 1.5 of 2) 50 and 75;
-- each told once per cycle
SELECT payledger.run_plan_notices() AS notices, payledger.run_plan_notices() AS notices_again;
SELECT topic, payload ->> 'metric' AS metric, payload ->> 'percent' AS percent, payload ->> 'usage' AS usage,
       payload ->> 'limit' AS monthly_limit
  FROM payledger.events WHERE owner_id = 'org7' AND topic LIKE 'credits.%' ORDER BY id;
-- past the plan with no credits: that metric is blocked, the others are not
SELECT payledger.record_usage('org7', 'storage', 4.5);
SELECT payledger.meter_org('org7') AS charged;
SELECT metric, overage, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org7' ORDER BY metric;
SELECT payledger.credit_access('org7', '{storage}') AS upload, payledger.credit_access('org7', '{bandwidth}') AS download,
       payledger.credit_access('org7', '{mau,storage}') AS both;
SELECT payledger.run_plan_notices() AS notices;
SELECT topic, payload ->> 'metric' AS metric, payload ->> 'cost' AS cost, payload ->> 'charged' AS charged
  FROM payledger.events WHERE owner_id = 'org7' AND topic LIKE 'credits.metric_%' ORDER BY id;
-- a top-up pays the unpaid overage in the same transaction and lifts the block
SELECT payledger.grant_credits('org7', 0.15, 'purchase') IS NOT NULL AS topped_up;
SELECT metric, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org7' ORDER BY metric;
SELECT payledger.grant_credits('org7', 1, 'purchase') IS NOT NULL AS topped_up;
SELECT metric, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org7' ORDER BY metric;
SELECT payledger.credit_access('org7', '{storage}') AS upload, t_credits('org7');
-- paid again: unblocked, told once
SELECT payledger.run_plan_notices() AS notices, payledger.run_plan_notices() AS notices_again;
SELECT topic, payload ->> 'metric' AS metric, payload ->> 'cost' AS cost, payload ->> 'charged' AS charged
  FROM payledger.events WHERE owner_id = 'org7' AND topic LIKE 'credits.metric_%' ORDER BY id;
-- the overage grows: only the growth is charged; a run again charges nothing
SELECT payledger.grant_credits('org7', 5, 'purchase') IS NOT NULL AS topped_up;
SELECT payledger.record_usage('org7', 'mau', 500);     -- 1,400: 400 over, 1.2 credits
SELECT payledger.meter_org('org7') AS charged;
SELECT payledger.record_usage('org7', 'mau', 100);     -- 1,500: 500 over, 1.5 credits
SELECT payledger.meter_org('org7') AS charged;
SELECT payledger.meter_org('org7') AS charged_again;
SELECT metric, overage, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org7' ORDER BY metric;
SELECT metric, payledger.credits_of(amount) FROM payledger.credit_consumptions
 WHERE org_id = 'org7' ORDER BY created_at, id;
SELECT t_credits('org7');
-- the run over every organisation
SELECT * FROM payledger.run_metering();
SELECT t_try($$SELECT payledger.record_usage('org7', 'nope', 1)$$);
SELECT t_try($$SELECT payledger.record_usage('org7', 'mau', -1)$$);

---------------------------------------------------------------------------
-- Metering runs: one grant for two metrics, steps, shares, late readings
---------------------------------------------------------------------------
-- org9: one credit usable for any metric; bandwidth (0.5 credits over) and
-- mau (0.9 credits over) owe 1.4 together. A run charges each meter in turn
-- (by cycle, then metric): bandwidth in full, mau what is left, and blocks mau.
SELECT payledger.set_credit_price_tiers('bandwidth', '[{"from": 0, "price": 0.1}]');
SELECT payledger.set_credit_org('org9', 'solo');
SELECT payledger.grant_credits('org9', 1, 'purchase') IS NOT NULL AS granted;
SELECT payledger.record_usage('org9', 'mau', 1300), payledger.record_usage('org9', 'bandwidth', 15);
SELECT payledger.meter_org('org9') AS charged;
SELECT metric, overage, cost, charged, blocked FROM payledger.credit_meters WHERE org_id = 'org9' ORDER BY metric;
SELECT c.metric, payledger.credits_of(c.amount) AS burnt, payledger.credits_of(c.requested) AS asked, count(p.*) AS parts,
       c.idempotency_key ~ '^meter:[a-z]+:[0-9]+:0$' AS keyed_by_cycle_and_watermark
  FROM payledger.credit_consumptions c JOIN payledger.credit_consumption_parts p ON p.consumption_id = c.id
 WHERE c.org_id = 'org9' GROUP BY c.id ORDER BY c.metric;
-- both charges of the run are one journal (one per organisation and run)
SELECT count(DISTINCT journal_id) AS journals FROM payledger.credit_consumptions WHERE org_id = 'org9';
SELECT payledger.credit_access('org9', '{bandwidth}') AS download, payledger.credit_access('org9', '{mau}') AS new_users;
-- a run in steps of one organisation: last_org says where the next begins
SELECT orgs, charged, last_org FROM payledger.run_metering(1);
SELECT orgs, charged, last_org FROM payledger.run_metering(1, 'org7');
SELECT orgs, charged, last_org FROM payledger.run_metering(1, 'org9');
-- in shares (the worker's sessions): each organisation in exactly one
SELECT sum(r.orgs) AS orgs_in_two_shares FROM generate_series(0, 1) p, payledger.run_metering(10, NULL, p, 2) r;
SELECT t_try($$SELECT payledger.run_metering(0)$$);
SELECT t_try($$SELECT payledger.run_metering(10, NULL, 2, 2)$$);
SELECT t_try($$SELECT payledger.expire_credits(0)$$), t_try($$SELECT payledger.credit_check_expiring(NULL)$$);
-- the whole run on demand, a transaction per step; then it is not due
CALL payledger.meter_all();
SELECT payledger.metering_due() AS due;
-- org10: cycles from two months back. A late reading for the previous cycle
-- is charged; one for the cycle before it is closed, and is not.
SELECT payledger.set_credit_org('org10', 'solo', cycle_anchor => date_trunc('month', now()) - interval '2 months');
SELECT payledger.grant_credits('org10', 10, 'purchase') IS NOT NULL AS granted;
SELECT payledger.record_usage('org10', 'mau', 1100, at => date_trunc('month', now()) - interval '1 day');
SELECT payledger.record_usage('org10', 'mau', 1200, at => date_trunc('month', now()) - interval '1 month' - interval '1 day');
SELECT payledger.meter_org('org10') AS charged;
SELECT cycle_start = date_trunc('month', now()) - interval '1 month' AS previous_cycle, overage, cost, charged
  FROM payledger.credit_meters WHERE org_id = 'org10';
-- cycles are months from the anchor, clamped to a month's last day
SET TIME ZONE 'UTC';
SELECT t AS at, payledger_internal.credit_cycle_start('2026-01-31 08:00+00', t) AS cycle_start
  FROM unnest(ARRAY['2026-01-31 08:00+00', '2026-02-28 07:59+00', '2026-02-28 08:00+00', '2026-03-30 23:00+00',
                    '2026-03-31 08:00+00', '2025-12-31 09:00+00', '2025-12-15 00:00+00']::timestamptz[]) t;
RESET TIME ZONE;

---------------------------------------------------------------------------
-- Threshold events: once per crossing, of active credit only
---------------------------------------------------------------------------
SELECT payledger.grant_credits('org8', 100, 'purchase', expires_at => now() + interval '300 days') IS NOT NULL AS granted;
SELECT consumed FROM payledger.consume_credits('org8', 'mau', 50, 't1');
SELECT consumed FROM payledger.consume_credits('org8', 'mau', 30, 't2');
SELECT consumed FROM payledger.consume_credits('org8', 'mau', 1, 't3');    -- 81 %: nothing new
SELECT consumed FROM payledger.consume_credits('org8', 'mau', 19, 't4');   -- 90 %, 100 %, depleted
SELECT payledger.grant_credits('org8', 10, 'purchase', expires_at => now() + interval '3 days') IS NOT NULL AS topped_up;
SELECT topic, payload ->> 'threshold' AS threshold FROM payledger.events WHERE owner_id = 'org8' ORDER BY id;
SELECT payledger_internal.credit_check_thresholds('org8') AS nothing_new;
SELECT t_try($$SELECT payledger.set_credit_threshold('Bad', 'used_pct', 10)$$);
-- time alone crosses "expiring", with no credit moving: the worker's check
-- finds it, once (here the rule's window widening stands in for time passing)
SELECT payledger.set_credit_threshold('expiring_soon', 'expiring', 30);
SELECT payledger.grant_credits('org11', 5, 'purchase', expires_at => now() + interval '40 days') IS NOT NULL AS granted;
SELECT count(*) AS events_before FROM payledger.events WHERE owner_id = 'org11';
SELECT payledger.set_credit_threshold('expiring_soon', 'expiring', 50);
SELECT payledger.credit_check_expiring() > 0 AS found, payledger.credit_check_expiring() AS again;
SELECT topic, payload ->> 'threshold' AS threshold, payload ->> 'available' AS available
  FROM payledger.events WHERE owner_id = 'org11' ORDER BY id;
DELETE FROM payledger.credit_thresholds;

---------------------------------------------------------------------------
-- History, month by month
---------------------------------------------------------------------------
SELECT metric, usage, monthly_limit, overage, credits_used, paid_used, promotional_used, expired, voided, closing_balance
  FROM payledger.credit_history('org7', 1) ORDER BY metric;
SELECT metric, credits_used, paid_used, promotional_used, expired, voided, closing_balance
  FROM payledger.credit_history('org1', 1) WHERE metric IN ('*', 'mau', 'storage') ORDER BY metric;
SELECT count(*) AS rows_for_12_months FROM payledger.credit_history('org1');
SELECT t_try($$SELECT count(*) FROM payledger.credit_history('org1', 0)$$);

---------------------------------------------------------------------------
-- End users, invariants
---------------------------------------------------------------------------
SET payledger.owner_id = 'org7';
SET ROLE payledger_enduser;
SELECT available, by_metric FROM payledger.my_credit_balance;
SELECT source, granted, remaining FROM payledger.my_credit_grants ORDER BY granted;
SELECT metric, overage, cost, charged, blocked FROM payledger.my_credit_meters ORDER BY metric;
SELECT plan, metric, usage, monthly_limit, percent, overage, blocked FROM payledger.my_plan_usage ORDER BY metric;
SELECT count(*) AS grants FROM payledger.my_credit_grants;
SELECT metric, credits_used FROM payledger.my_credit_history WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
 ORDER BY metric;
SELECT t_try($$SELECT count(*) FROM payledger.credit_grants$$);
SELECT t_try($$SELECT payledger.grant_credits('org7', 1000)$$);
RESET ROLE;
RESET payledger.owner_id;

-- organisations: an end user sees the organisation the request chose, when
-- a member of it; nothing of one they are not in; their own without a choice
SELECT payledger.add_org_member('org7', 'ana', 'admin') AS ana, payledger.add_org_member('org1', 'bo') AS bo,
       payledger.add_org_member('org7', 'ana', 'owner') AS ana_promoted;
SELECT t_try($$SELECT payledger.add_org_member('org7', 'cy', 'boss')$$);
SELECT t_try($$SELECT payledger.add_org_member('org7', NULL)$$);
SET ROLE payledger_enduser;
SET payledger.owner_id = 'ana';
SELECT payledger.current_owner_id() AS acting_for, count(*) AS grants FROM payledger.my_credit_grants;
SET payledger.org_id = 'org7';
SELECT payledger.current_owner_id() AS acting_for, payledger.current_org_role() AS role,
       (SELECT count(*) FROM payledger.my_credit_grants) AS grants, (SELECT available FROM payledger.my_credit_balance) AS available;
SET payledger.org_id = 'org1';
SELECT payledger.current_owner_id() AS acting_for, count(*) AS grants FROM payledger.my_credit_grants;
SELECT org_id, role FROM payledger.my_org_memberships ORDER BY org_id;
RESET payledger.owner_id;
RESET payledger.org_id;
-- PostgREST's way (Supabase): the JWT's claims, sub the user, org_id the choice
SELECT set_config('request.jwt.claims', '{"sub": "bo", "org_id": "org1"}', false) IS NOT NULL AS claims_set;
SELECT payledger.current_owner_id() AS acting_for, count(*) > 0 AS sees_org1 FROM payledger.my_credit_grants;
SELECT set_config('request.jwt.claims', '{"sub": "bo", "org_id": "org7"}', false) IS NOT NULL AS claims_set;
SELECT payledger.current_owner_id() AS acting_for, count(*) AS grants FROM payledger.my_credit_grants;
-- a request's X-Org-Id header (PostgREST's request.headers) chooses per request, before the claim
SELECT set_config('request.jwt.claims', '{"sub": "ana", "org_id": "org1"}', false) IS NOT NULL AS claims_set,
       set_config('request.headers', '{"x-org-id": "org7"}', false) IS NOT NULL AS header_set;
SELECT payledger.current_owner_id() AS acting_for, payledger.current_org_role() AS role;
SELECT set_config('request.headers', '', false) IS NOT NULL AS header_cleared;
SELECT payledger.current_owner_id() AS acting_for_by_the_claim;
-- removed in the middle of a session: nothing from the next statement on
SELECT set_config('request.jwt.claims', '{"sub": "bo", "org_id": "org1"}', false) IS NOT NULL AS claims_set;
RESET ROLE;
SELECT payledger.remove_org_member('org1', 'bo') AS removed, payledger.remove_org_member('org1', 'bo') AS again;
SET ROLE payledger_enduser;
SELECT payledger.current_owner_id() AS acting_for, count(*) AS grants FROM payledger.my_credit_grants;
SELECT t_try($$SELECT payledger.add_org_member('org1', 'bo')$$);
SELECT t_try($$SELECT count(*) FROM payledger.org_members$$);
RESET ROLE;

-- buying as an end user, for the organisation the request chose: owners,
-- admins and members may; read-only members and strangers may not
SELECT payledger.create_merchant_profile('shop', is_default => true) IS NOT NULL AS shop,
       payledger.add_provider('shop', 'card', 'stripe', 'http://127.0.0.1:9', '{"secret_key": "sk_test_1"}',
                              rail => 'card', asset => 'usd') IS NOT NULL AS card_provider;
SELECT payledger.add_org_member('org7', 'dee', 'read_only') AS dee, payledger.add_org_member('org7', 'eve') AS eve;
SET ROLE payledger_enduser;
SELECT set_config('request.jwt.claims', '{"sub": "ana", "org_id": "org7"}', false) IS NOT NULL AS ana_for_org7;
SELECT count(*) AS on_sale_before_a_sales_account FROM payledger.my_credit_packages;
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100', rail => 'card')$$);
RESET ROLE;
SELECT payledger.set_credit_sales_account('usd', acc('credit_sales')) = acc('credit_sales') AS on_sale;
SELECT t_try($$SELECT payledger.set_credit_sales_account('credit', acc('credit_sales'))$$);
SELECT t_try($$SELECT payledger.set_credit_sales_account('usd', gen_random_uuid())$$);
SET ROLE payledger_enduser;
SELECT name, metric, credits, price_asset, price, period, recurring FROM payledger.my_credit_packages ORDER BY name;
SELECT payin_id AS ana_payin, state AS ana_state, subscription_id IS NULL AS one_time
  FROM payledger.buy_credits('any-100', rail => 'card', idempotency_key => 'console-1') \gset
SELECT :'ana_state' AS state, :'one_time' AS one_time;
SELECT payin_id = :'ana_payin' AS same_payin_again FROM payledger.buy_credits('any-100', rail => 'card', idempotency_key => 'console-1');
SELECT type, state, cost, asset, external_method FROM payledger.my_payins WHERE id = :'ana_payin';
SELECT t_try($$SELECT * FROM payledger.buy_credits('nope', rail => 'card')$$);
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100', true, 'card')$$);
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100')$$);
SELECT t_try($$SELECT * FROM payledger.buy_credits(NULL)$$);
-- a subscription: its first period is billed at once
SELECT payin_id AS sub_payin, subscription_id AS sub
  FROM payledger.buy_credits('monthly-500', true, 'card', 'console-2') \gset
SELECT subscription_id = :'sub' AND payin_id = :'sub_payin' AS same_again FROM payledger.buy_credits('monthly-500', true, 'card', 'console-2');
SELECT status, renewals, last_payin_id = :'sub_payin' AS billed FROM payledger.my_subscriptions WHERE id = :'sub';
-- a member may buy but not cancel; a read-only member may do neither; a stranger, nothing
SELECT set_config('request.jwt.claims', '{"sub": "eve", "org_id": "org7"}', false) IS NOT NULL AS eve_for_org7;
SELECT state FROM payledger.buy_credits('any-100', rail => 'card', idempotency_key => 'eve-1');
SELECT t_try(format('SELECT payledger.cancel_my_subscription(%L)', :'sub'));
SELECT set_config('request.jwt.claims', '{"sub": "dee", "org_id": "org7"}', false) IS NOT NULL AS dee_for_org7;
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100', rail => 'card')$$);
SELECT set_config('request.jwt.claims', '{"sub": "zed", "org_id": "org7"}', false) IS NOT NULL AS zed_for_org7;
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100', rail => 'card')$$);
SELECT set_config('request.jwt.claims', '{"sub": "ana"}', false) IS NOT NULL AS ana_without_org;
SELECT t_try($$SELECT * FROM payledger.buy_credits('any-100', rail => 'card')$$);
SELECT set_config('request.jwt.claims', '{"sub": "ana", "org_id": "org7"}', false) IS NOT NULL AS ana_for_org7;
SELECT payledger.cancel_my_subscription(:'sub') AS cancelled, payledger.cancel_my_subscription(:'sub') AS again;
SELECT t_try($$SELECT payledger.cancel_my_subscription(gen_random_uuid())$$);
RESET ROLE;
SELECT owner_id, metadata ->> 'bought_by' AS bought_by FROM payledger.payins WHERE id = :'ana_payin';
-- the card payment lands: the organisation's grant
SELECT t_credits('org7') AS before_paid;
SELECT changed FROM payledger.transition_payin(:'ana_payin', 'PENDING');
SELECT changed FROM payledger.settle_payin(:'ana_payin');
SELECT t_credits('org7') AS after_paid;
SELECT org_id, source FROM payledger.credit_grants WHERE payin_id = :'ana_payin';
-- a subscription whose period goes unpaid lapses: no next renewal, the organisation is told once
SET ROLE payledger_enduser;
SELECT payin_id AS lapse_payin, subscription_id AS lapse_sub FROM payledger.buy_credits('monthly-500', true, 'card', 'console-3') \gset
RESET ROLE;
SELECT changed FROM payledger.fail_payin(:'lapse_payin', 'INVOICE_EXPIRED');
SELECT status FROM payledger.subscriptions WHERE id = :'lapse_sub';
SELECT t_try(format('SELECT payledger.renew_subscription(%L)', :'lapse_sub'));
SELECT topic, owner_id, payload ->> 'credit_package' AS package, payload ->> 'state' AS state, payload ->> 'reason' AS reason
  FROM payledger.events WHERE topic = 'subscription.lapsed' ORDER BY id;
SELECT set_config('request.jwt.claims', '', false) IS NOT NULL AS claims_cleared;
SELECT * FROM payledger.check_invariants();
