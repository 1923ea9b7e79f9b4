-- Roles and privileges, applied last. See docs/security.md.
--
--   payledger_admin    operators: everything, including invariants and raw tables
--   payledger_app      the application backend (Supabase: service_role)
--   payledger_enduser  end users (Supabase: authenticated): their own rows, through views
--   payledger_identity logins trusted to say which end user a session serves
--                      (Supabase: authenticator); grants no privilege
--
-- Nothing is granted to PUBLIC. Roles are cluster-wide, so they may already exist.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['payledger_admin', 'payledger_app', 'payledger_enduser', 'payledger_identity'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END;
$$;

REVOKE ALL ON SCHEMA payledger FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA payledger FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA payledger FROM PUBLIC;
GRANT USAGE ON SCHEMA payledger TO payledger_admin, payledger_app, payledger_enduser;

-- Reading the raw tables: the admin and the backend (RLS is on, so say so).
GRANT SELECT ON payledger.assets, payledger.account_kinds, payledger.accounts, payledger.journals,
                payledger.entries, payledger.holds,
                payledger.payin_transitions, payledger.payin_types, payledger.payout_types, payledger.split_rules,
                payledger.payins, payledger.payin_legs, payledger.payouts, payledger.payin_refunds,
                payledger.payin_history, payledger.nostr_jobs, payledger.nostr_job_events, payledger.nostr_job_payments,
                payledger.merchant_profiles, payledger.providers, payledger.payin_routes, payledger.subscriptions,
                payledger.invoices, payledger.settle_hooks, payledger.hook_runs, payledger.events,
                payledger.worker_status, payledger.worker_runs, payledger.events_announced,
                payledger.credit_settings, payledger.credit_metrics, payledger.credit_grants,
                payledger.credit_live_grants, payledger.credit_consumptions, payledger.credit_consumption_parts,
                payledger.credit_grant_events, payledger.credit_price_tiers, payledger.credit_packages,
                payledger.gift_codes, payledger.gift_redemptions, payledger.credit_plans, payledger.credit_plan_limits,
                payledger.credit_orgs, payledger.credit_usage, payledger.credit_meters,
                payledger.credit_thresholds, payledger.credit_threshold_state
    TO payledger_admin, payledger_app;
-- Provider credentials: the admin role (and the worker, a superuser connection) only.
GRANT SELECT ON payledger.provider_secrets TO payledger_admin;
CREATE POLICY admin_read ON payledger.provider_secrets FOR SELECT TO payledger_admin USING (true);
CREATE POLICY backend_read ON payledger.assets FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.account_kinds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.accounts FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.journals FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.entries FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.holds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_transitions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_types FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payout_types FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.split_rules FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payins FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_legs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payouts FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_refunds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_history FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_jobs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_job_events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_job_payments FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.merchant_profiles FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.providers FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_routes FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.subscriptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.invoices FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.settle_hooks FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.hook_runs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.worker_status FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.worker_runs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.events_announced FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_settings FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_metrics FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_grants FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_live_grants FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_consumptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_consumption_parts FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_grant_events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_price_tiers FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_packages FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.gift_codes FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.gift_redemptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_plans FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_plan_limits FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_orgs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_usage FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_meters FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_thresholds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_threshold_state FOR SELECT TO payledger_admin, payledger_app USING (true);

-- End users: the owner-filtered views and the owner lookup only.
GRANT SELECT ON payledger.my_accounts, payledger.my_entries, payledger.my_holds,
                payledger.my_payins, payledger.my_payouts, payledger.my_payin_history, payledger.my_nostr_jobs,
                payledger.my_invoices, payledger.my_events, payledger.my_subscriptions,
                payledger.my_credit_grants, payledger.my_credit_balance, payledger.my_credit_meters,
                payledger.my_credit_history
    TO payledger_enduser, payledger_app, payledger_admin;
GRANT EXECUTE ON FUNCTION payledger.current_owner_id(), payledger.error_codes(), payledger.format_amount(text, bigint),
    payledger.parse_amount(text, numeric), payledger.my_total_credits(), payledger.credits_of(bigint),
    payledger.credit_asset(), payledger.my_credit_history(integer)
TO payledger_enduser, payledger_app, payledger_admin;

-- The backend: money movement and lookups.
GRANT EXECUTE ON FUNCTION
    payledger.open_account(text, text, text, text, boolean, bigint, jsonb),
    payledger.account_id(text, text, text, text),
    payledger.transfer(uuid, uuid, bigint, text, jsonb, timestamptz, text),
    payledger.post_journal(jsonb, text, jsonb, timestamptz, text),
    payledger.transfer_batch(jsonb),
    payledger.create_hold(uuid, uuid, bigint, interval, text, jsonb),
    payledger.post_hold(uuid, bigint, text, jsonb, timestamptz),
    payledger.void_hold(uuid),
    payledger.balance(uuid),
    payledger.available_balance(uuid),
    payledger.balance_at(uuid, timestamptz),
    payledger.journal_entries(uuid),
    payledger.new_id(),
    payledger.create_payin(text, text, text, bigint, jsonb, jsonb, text, jsonb, text, uuid, jsonb),
    payledger.split_payouts(text, bigint, jsonb),
    payledger.transition_payin(uuid, payledger.payin_state, payledger.payin_failure_reason, text),
    payledger.settle_payin(uuid),
    payledger.fail_payin(uuid, payledger.payin_failure_reason),
    payledger.cancel_payin(uuid, payledger.payin_failure_reason),
    payledger.refund_payin(uuid, bigint, uuid, text, text),
    payledger.retry_payin(uuid, jsonb, jsonb, text, jsonb, text, text),
    payledger.payin_stats(timestamptz, timestamptz, text),
    payledger.payin_audit(uuid),
    payledger.bolt11_decode(text),
    payledger.nostr_event_id(jsonb),
    payledger.nostr_verify_event(jsonb),
    payledger.bip340_verify(bytea, bytea, bytea),
    payledger.verify_zap_receipt(jsonb, text, text, bigint, text),
    payledger.nostr_job_open(jsonb, text, text, uuid, text, bigint, regproc, interval),
    payledger.nostr_job_feedback(uuid, text, bigint, text, text),
    payledger.nostr_job_result(uuid, text, bigint, text),
    payledger.nostr_job_published(uuid, jsonb),
    payledger.nostr_job_pay_zap(jsonb),
    payledger.nostr_job_pay_invoice(uuid, text, bigint),
    payledger.nostr_job_invoice(uuid, bigint, uuid, interval),
    payledger.nostr_job_fail(uuid, text),
    payledger.nostr_expire_jobs(integer),
    payledger.request_invoice(uuid, uuid, interval, text),
    payledger.provider_webhook(uuid, jsonb, text),
    payledger.events_since(bigint, integer),
    payledger.create_subscription(text, text, text, bigint, interval, jsonb, jsonb, text, jsonb, text, timestamptz, jsonb),
    payledger.cancel_subscription(uuid),
    payledger.renew_subscription(uuid),
    payledger.grant_credits(text, numeric, text, text, integer, timestamptz, timestamptz, boolean, numeric, text, uuid, text, jsonb),
    payledger.void_grant(uuid, text),
    payledger.consume_credits(text, text, numeric, text, timestamptz, boolean),
    payledger.undo_consumption(uuid, text),
    payledger.get_total_credits(text, text, timestamptz),
    payledger.get_total_credits(uuid, text, timestamptz),
    payledger.get_total_credits(bigint, text, timestamptz),
    payledger.credit_cost(text, numeric),
    payledger.redeem_gift_code(text, text),
    payledger.buy_credit_package(text, text, jsonb, uuid, text, text),
    payledger.subscribe_credit_package(text, text, uuid, jsonb, text, timestamptz),
    payledger.record_usage(text, text, numeric, timestamptz),
    payledger.set_credit_org(text, text, timestamptz),
    payledger.credit_access(text, text[]),
    payledger.credit_history(text, integer)
TO payledger_app, payledger_admin;

-- Operators only.
GRANT EXECUTE ON FUNCTION
    payledger.create_asset(text, integer, text),
    payledger.register_account_kind(text, text),
    payledger.close_account(uuid),
    payledger.set_account_limits(uuid, boolean, bigint),
    payledger.set_account_shards(uuid, integer),
    payledger.expire_holds(integer),
    payledger.register_payin_type(text, text, boolean, boolean, integer),
    payledger.register_payout_type(text, text),
    payledger.define_split_rule(text, jsonb, text),
    payledger.nostr_sign_event(jsonb, bytea),
    payledger.bolt11_create(bytea, bigint, bytea, text, bytea, bigint, text, timestamptz),
    payledger.check_invariants(),
    payledger.create_merchant_profile(text, text, boolean, jsonb),
    payledger.add_provider(text, text, payledger.provider_kind, text, jsonb, jsonb, text, text, interval, interval, integer, text),
    payledger.set_provider_credentials(uuid, jsonb, text),
    payledger.set_provider_active(uuid, boolean),
    payledger.route_payin_type(text, text),
    payledger.register_settle_hook(text, regprocedure, payledger.payin_state[], integer),
    payledger.define_settle_hook(text, regprocedure, payledger.payin_state[], integer, text),
    payledger.unregister_settle_hook(text),
    payledger.worker_claim(integer, timestamptz),
    payledger.provider_call(jsonb),
    payledger.worker_apply(jsonb),
    payledger.worker_provider_health(jsonb),
    payledger.expire_invoices(integer),
    payledger.housekeeping_plan(integer),
    payledger.housekeeping_step(text, integer),
    payledger.worker_note_tick(jsonb, integer),
    payledger.worker_runs_due(),
    payledger.worker_run_step(text, integer, text, integer, integer),
    payledger.worker_run_done(text),
    payledger.announce_events(),
    payledger.invoice_apply(uuid, jsonb),
    payledger.retry_hooks(integer),
    payledger.renew_due_subscriptions(integer),
    payledger.credits_configure(text, integer, interval),
    payledger.register_credit_metric(text, text, text),
    payledger.set_credit_price_tiers(text, jsonb),
    payledger.define_credit_plan(text, jsonb),
    payledger.create_gift_code(text, numeric, text, timestamptz, interval, integer, integer, integer),
    payledger.define_credit_package(text, numeric, text, bigint, text, interval, interval, integer),
    payledger.expire_credits(integer),
    payledger.meter_org(text, boolean),
    payledger.run_metering(integer, text, integer, integer),
    payledger.metering_due(),
    payledger.seal_ledger(integer),
    payledger.ledger_head(),
    payledger.verify_ledger(),
    payledger.metering_done(),
    payledger.set_credit_threshold(text, text, numeric, boolean),
    payledger.credit_check_expiring(integer)
TO payledger_admin;
GRANT EXECUTE ON PROCEDURE payledger.run_tick(integer) TO payledger_admin;
GRANT EXECUTE ON PROCEDURE payledger.meter_all(integer, integer, integer, integer, integer) TO payledger_admin;
