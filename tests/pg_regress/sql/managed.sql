-- Accounts a module owns (a payer's pay-in escrow, credit grants, the credit
-- system accounts) are moved only by that module's functions: every entry
-- point of the generic API refuses them with PL034 and changes nothing.
\set db t_managed
\i sql/fixtures/base.sql

SELECT payledger.register_payin_type('ITEM_CREATE', 'post an item');
SELECT payledger.register_payout_type('TERRITORY_REVENUE', 'territory revenue');
INSERT INTO t_acc VALUES
  ('world',   payledger.open_account('world', 'msat', 'external', 'main', allow_negative => true)),
  ('ann',     payledger.open_account('ann', 'msat')),
  ('carol',   payledger.open_account('carol', 'msat')),
  ('founder', payledger.open_account('founder', 'msat', 'revenue'));
SELECT payledger.transfer(acc('world'), acc('ann'), 20000) IS NOT NULL AS funded;

-- ann: 20,000 msat; a 100,000-msat pay-in waits on its invoice with 20,000 in her escrow
CREATE TABLE t_pay AS
SELECT payin_id AS id, state FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 100000,
  jsonb_build_array(jsonb_build_object('account', acc('ann')), '{"external": "invoice"}'::jsonb),
  jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', acc('founder'), 'amount', 100000)));
SELECT state FROM t_pay;
INSERT INTO t_acc SELECT 'escrow', id FROM payledger.accounts WHERE owner_id = 'ann' AND kind = 'payin_escrow';
SELECT managed_by, balance FROM payledger.accounts WHERE id = acc('escrow');

-- credits: a grant of 50 credits, its account and the system accounts
SELECT payledger.register_credit_metric('storage') IS NOT NULL AS metric;
SELECT payledger.grant_credits('org-1', 50, 'purchase', metric => 'storage') IS NOT NULL AS granted;
INSERT INTO t_acc SELECT 'grant', account_id FROM payledger.credit_grants WHERE org_id = 'org-1';
INSERT INTO t_acc SELECT name, id FROM payledger.accounts WHERE owner_id = 'payledger' AND asset = 'credit';
SELECT t_mask(name) AS name, kind, managed_by FROM payledger.accounts
 WHERE asset = 'credit' AND parent_id IS NULL ORDER BY name;
INSERT INTO t_acc VALUES ('org_credit', payledger.open_account('org-1', 'credit'));

CREATE ROLE t_managed_app IN ROLE payledger_app;
SET ROLE t_managed_app;
-- the issue's reproduction: the escrow cannot be drained
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 20000)', acc('escrow'), acc('carol')));
-- nor credited, nor named in a journal, a batch or a hold
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('ann'), acc('escrow')));
SELECT t_try(format('SELECT payledger.post_journal(%L)', jsonb_build_array(
  jsonb_build_object('account', acc('escrow'), 'amount', -1), jsonb_build_object('account', acc('carol'), 'amount', 1))));
SELECT item, status, sqlstate, t_mask(message) FROM payledger.transfer_batch(jsonb_build_array(
  jsonb_build_object('from', acc('escrow'), 'to', acc('carol'), 'amount', 1),
  jsonb_build_object('from', acc('ann'), 'to', acc('carol'), 'amount', 0),
  jsonb_build_object('op', 'hold', 'from', acc('escrow'), 'to', acc('carol'), 'amount', 1)));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 1)', acc('escrow'), acc('carol')));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 1)', acc('carol'), acc('escrow')));
-- a grant's credit is neither moved to another organisation nor made from the source
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000000)', acc('grant'), acc('org_credit')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000000)', acc('credits_issued'), acc('grant')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000000)', acc('credits_consumed'), acc('org_credit')));
-- nor are the modules' kinds opened, or their accounts re-opened, by the generic API
SELECT t_try($$SELECT payledger.open_account('bob', 'msat', 'payin_escrow')$$);
SELECT t_try($$SELECT payledger.open_account('org-2', 'credit', 'credit_grant', 'mine')$$);
SELECT t_try($$SELECT payledger.open_account('payledger', 'credit', 'credit_sink', 'credits_consumed')$$);
SELECT t_try($$SELECT payledger.open_account('payledger', 'credit', 'credit_source', 'credits_issued', true)$$);
-- a pay-in names the application's accounts only: no escrow or grant as a method or a pay-out
SELECT t_try(format($$SELECT payin_id FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 1000, %L, %L)$$,
  jsonb_build_array(jsonb_build_object('account', acc('escrow'))),
  jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', acc('founder'), 'amount', 1000))));
SELECT t_try(format($$SELECT payin_id FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 1000, %L, %L)$$,
  jsonb_build_array(jsonb_build_object('account', acc('ann'))),
  jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', acc('escrow'), 'amount', 1000))));
RESET ROLE;

-- operators neither close nor re-limit them
SELECT t_try(format('SELECT payledger.close_account(%L)', acc('credits_issued')));
SELECT t_try(format('SELECT payledger.set_account_limits(%L, true)', acc('escrow')));
-- a sharded module account (credits_consumed is hot) keeps its owner on every shard
SELECT payledger.set_account_shards(acc('credits_consumed'), 17) AS shards;
SELECT count(*) FILTER (WHERE managed_by = 'credits') AS managed_shards FROM payledger.accounts
 WHERE parent_id = acc('credits_consumed');
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('org_credit'), acc('credits_consumed')));

-- nothing changed, and the modules still move their own accounts
SELECT payledger.balance(acc('escrow')) AS escrow, payledger.balance(acc('ann')) AS ann,
       payledger.balance(acc('carol')) AS carol, payledger.balance(acc('grant')) AS grant_left;
SELECT changed, state, failure_reason FROM payledger.fail_payin((SELECT id FROM t_pay), 'INVOICE_EXPIRED');
SELECT payledger.balance(acc('escrow')) AS escrow, payledger.balance(acc('ann')) AS ann;
-- a refund goes to the application's account, not into a module's
CREATE TABLE t_paid AS SELECT payin_id AS id FROM payledger.create_payin('ann', 'ITEM_CREATE', 'msat', 1000,
  jsonb_build_array(jsonb_build_object('account', acc('ann'))),
  jsonb_build_array(jsonb_build_object('type', 'TERRITORY_REVENUE', 'account', acc('founder'), 'amount', 1000)));
SELECT t_try(format('SELECT payledger.refund_payin(%L, 500, %L)', (SELECT id FROM t_paid), acc('escrow')));
SELECT payledger.refund_payin((SELECT id FROM t_paid), 500) IS NOT NULL AS refunded;
SELECT consumed, shortfall FROM payledger.consume_credits('org-1', 'storage', 12.5, 'use-1');
SELECT available FROM payledger.get_total_credits('org-1');
SELECT * FROM payledger.check_invariants();
DROP ROLE t_managed_app;
