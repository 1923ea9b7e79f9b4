-- A deadline for every waiting state: a pay-in past its state's deadline is
-- failed by the housekeeping with the state's reason, its escrow back;
-- one whose invoice payledger watches, or whose withdrawal is in flight, is
-- left to those; FORWARDING has none.
\set db t_deadlines
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.register_payin_type('ITEM', 'an item'),
       payledger.register_payin_type('WITHDRAWAL', 'withdrawal', allow_external => false, withdrawal => true, max_retries => 0),
       payledger.register_payout_type('SALE', 'a sale'), payledger.register_payout_type('WITHDRAWAL', 'withdrawal'),
       payledger.register_payout_type('ROUTING_FEE', 'routing fee');
INSERT INTO t_acc VALUES ('shop', payledger.open_account('shop', 'msat', 'revenue'));
SELECT payledger.transfer(acc('world'), acc('alice'), 1000000) IS NOT NULL AS funded;
SELECT * FROM payledger.payin_deadlines_in_force();
SELECT t_try($$SELECT payledger.set_payin_deadline('PAID', '1 hour')$$);
SELECT t_try($$SELECT payledger.set_payin_deadline('FORWARDING', '1 hour')$$);
SELECT t_try($$SELECT payledger.set_payin_deadline('PENDING', '-1 hour')$$);
SELECT t_try($$SELECT payledger.set_payin_deadline('PENDING', NULL)$$);
SELECT t_try($$SELECT payledger.fail_overdue_payins(0)$$);

-- 400 from alice's balance, 600 by an invoice: the application invoices it
-- itself (no provider), or payledger does
CREATE FUNCTION t_buy() RETURNS uuid LANGUAGE sql AS $$
  SELECT payin_id FROM payledger.create_payin('alice', 'ITEM', 'msat', 1000,
    jsonb_build_array(jsonb_build_object('account', acc('alice'), 'amount', 400),
                      jsonb_build_object('external', 'invoice', 'amount', 600)),
    jsonb_build_array(jsonb_build_object('type', 'SALE', 'account', acc('shop'), 'amount', 1000)))
$$;
CREATE FUNCTION t_state(p uuid) RETURNS text LANGUAGE sql AS $$
  SELECT state || coalesce(' ' || failure_reason, '') FROM payledger.payins WHERE id = p
$$;
SELECT t_buy() AS waits_creation \gset
SELECT t_buy() AS pending \gset
SELECT changed FROM payledger.transition_payin(:'pending', 'PENDING');
SELECT t_buy() AS held \gset
SELECT changed FROM payledger.transition_payin(:'held', 'PENDING_HELD');
SELECT changed FROM payledger.transition_payin(:'held', 'HELD');
SELECT t_buy() AS cancelled \gset
SELECT changed FROM payledger.transition_payin(:'cancelled', 'PENDING');
SELECT changed FROM payledger.cancel_payin(:'cancelled', 'USER_CANCELLED');
SELECT payledger.balance(acc('alice')) AS alice_with_four_waiting;

-- not yet past the deadlines: nothing happens
SELECT payledger.fail_overdue_payins(100) AS failed_too_soon;
-- every deadline a millisecond: each fails with its state's reason, its escrow back
SELECT count(payledger.set_payin_deadline(state, '1 millisecond', reason)) AS shortened FROM payledger.payin_deadlines_in_force();
SELECT pg_sleep(0.05);
SELECT payledger.housekeeping_step('payins_past_deadline', 1) AS one_per_call;
SELECT payledger.fail_overdue_payins(100) AS failed;
SELECT t_state(:'waits_creation') AS waits_creation, t_state(:'pending') AS pending, t_state(:'held') AS held,
       t_state(:'cancelled') AS cancelled;
SELECT payledger.balance(acc('alice')) AS alice_all_back;

-- left to the invoice payledger watches, and to a withdrawal in flight
SELECT payledger.create_merchant_profile('main', is_default => true) IS NOT NULL AS profile;
SELECT payledger.add_provider('main', 'ln', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "in", "admin_key": "adm"}') IS NOT NULL AS provider;
SELECT t_buy() AS invoiced \gset
SELECT jsonb_array_length(payledger.worker_claim(10)) AS claimed;   -- its invoice opened, being created
SELECT payledger.bolt11_create(sha256('r'::bytea), 5000, sha256('x'::bytea), 'out') AS inv \gset
SELECT withdrawal_id AS w FROM payledger.withdraw('alice', 'msat', :'inv', 0) \gset
SELECT jsonb_array_length(payledger.worker_claim(10)) AS claimed;   -- sent: its outcome is the provider's to say
-- one to a Lightning Address whose server never answers: nothing was sent, the deadline fails it
SELECT withdrawal_id AS wa FROM payledger.withdraw('alice', 'msat', 'ann@example.com', 0, amount_msat => 3000) \gset
SELECT pg_sleep(0.05);
SELECT payledger.fail_overdue_payins(100) AS failed_while_watched;
SELECT t_state(:'invoiced') AS invoiced, t_state(payin_id) AS withdrawal, status FROM payledger.withdrawals WHERE id = :'w';
SELECT t_state(payin_id) AS unresolved, status, last_error FROM payledger.withdrawals WHERE id = :'wa';
-- once the withdrawal has failed at the provider, its pay-in is FAILED by it, not by the deadline
SELECT payledger.worker_apply(jsonb_build_object('withdrawal_id', :'w', 'op', 'pay', 'status', 'failed', 'error', 'no route'));
SELECT t_state(payin_id) AS withdrawal FROM payledger.withdrawals WHERE id = :'w';
SELECT * FROM payledger.check_invariants();
