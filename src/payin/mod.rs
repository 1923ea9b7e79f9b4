//! Pay-ins and pay-outs: one action paid by several methods (balances first,
//! then an external rail for the rest), its earnings declared up front and
//! credited only when it is PAID, refunds, retries and statistics.
//!
//! `schema.sql` holds the tables and the transition table; `api.sql` the
//! state trigger (which moves the money of every state change, whoever makes
//! it) and the SQL API; `create` the hot path, creating a pay-in, in Rust.

mod create;

use crate::errors::JsonArg;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

extension_sql_file!(
    "schema.sql",
    name = "payin_schema",
    // (the whole ledger first)
    requires = ["ledger_seal"]
);
extension_sql_file!(
    "lifecycle.sql",
    name = "payin_lifecycle",
    requires = ["payin_schema"]
);
extension_sql_file!(
    "api.sql",
    name = "payin_api",
    requires = [
        "payin_lifecycle",
        "ledger_api",
        payin_create_core,
        split_payouts_core
    ]
);

/// The body of `payledger.create_payin` and `retry_payin` (which raise the
/// failure this returns, and pin the search_path).
/// Internal: granted to no one.
#[pg_extern(volatile, parallel_unsafe, schema = "payledger_internal")]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn payin_create_core(
    payer: Option<String>,
    payin_type: Option<String>,
    asset: Option<String>,
    cost: Option<i64>,
    methods: Option<JsonArg>,
    payouts: Option<JsonArg>,
    split: Option<String>,
    payees: Option<JsonArg>,
    idempotency_key: Option<String>,
    parent: Option<Uuid>,
    metadata: Option<JsonArg>,
    predecessor: Option<Uuid>,
    genesis: Option<Uuid>,
    retry_count: Option<i32>,
    retry_policy: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(payin_id, Option<Uuid>),
        name!(state, Option<String>),
        name!(custodial_amount, Option<i64>),
        name!(external_amount, Option<i64>),
        name!(replayed, Option<bool>),
        name!(sqlstate, Option<&'static str>),
        name!(message, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    let request = create::Request {
        payer,
        ptype: payin_type,
        asset,
        cost,
        methods: methods.map(|j| j.0),
        payouts: payouts.map(|j| j.0),
        split,
        payees: payees.map(|j| j.0),
        key: idempotency_key,
        parent: parent.map(|p| *p.as_bytes()),
        metadata: metadata.map(|j| j.0),
        predecessor: predecessor.map(|p| create::Predecessor {
            id: *p.as_bytes(),
            genesis: genesis.map(|g| *g.as_bytes()),
            retry_count: retry_count.unwrap_or(0),
        }),
        policy: retry_policy,
    };
    TableIterator::once(match create::create(request) {
        Ok(c) => (
            Some(Uuid::from_bytes(c.id)),
            Some(c.state),
            Some(c.custodial),
            Some(c.external),
            Some(c.replayed),
            None,
            None,
            None,
        ),
        Err(e) => {
            let (code, message, detail) = e.into_row();
            (None, None, None, None, None, code, message, detail)
        }
    })
}

/// The body of `payledger.split_payouts`. Internal: granted to no one.
#[pg_extern(stable, parallel_safe, schema = "payledger_internal")]
#[allow(clippy::type_complexity)]
fn split_payouts_core(
    rule: String,
    cost: i64,
    payees: Option<JsonArg>,
) -> TableIterator<
    'static,
    (
        name!(payouts, Option<JsonB>),
        name!(sqlstate, Option<&'static str>),
        name!(message, Option<String>),
        name!(detail, Option<String>),
    ),
> {
    TableIterator::once(
        match create::split_json(&rule, cost, payees.as_ref().map(|p| &p.0)) {
            Ok(v) => (Some(JsonB(v)), None, None, None),
            Err(e) => {
                let (code, message, detail) = e.into_row();
                (None, code, message, detail)
            }
        },
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setup() {
        Spi::run(
            "SELECT payledger.create_asset('msat', 3);
             SELECT payledger.register_payin_type('ZAP', 'a zap');
             SELECT payledger.register_payout_type('ZAP', 'to the zapped');
             SELECT payledger.register_payout_type('REWARDS_POOL', 'to the pool');
             SELECT payledger.transfer(payledger.open_account('world', 'msat', 'external', allow_negative => true),
                                       payledger.open_account('u1', 'msat', 'user', 'credits'), 50000);",
        )
        .unwrap();
    }

    fn scalar<T: IntoDatum + FromDatum>(q: &str) -> T {
        Spi::get_one::<T>(q).unwrap().unwrap()
    }

    #[pg_test]
    fn covered_payin_is_paid_at_once_and_credits_payouts() {
        setup();
        let state: String = scalar(
            "SELECT (payledger.create_payin('u1', 'ZAP', 'msat', 10000,
                 jsonb_build_array(jsonb_build_object('account', payledger.account_id('u1', 'msat', 'user', 'credits'))),
                 jsonb_build_array(
                   jsonb_build_object('type', 'ZAP', 'account', payledger.open_account('u2', 'msat'), 'amount', 7000),
                   jsonb_build_object('type', 'REWARDS_POOL',
                                      'account', payledger.open_account('pool', 'msat', 'rewards_pool'), 'amount', 3000))
               )).state::text",
        );
        assert_eq!(state, "PAID");
        assert_eq!(
            scalar::<i64>("SELECT payledger.balance(payledger.account_id('u2', 'msat'))"),
            7000
        );
        assert_eq!(
            scalar::<i64>("SELECT count(*) FROM payledger.check_invariants()"),
            0
        );
    }

    #[pg_test]
    fn remainder_waits_then_fails_and_is_released() {
        setup();
        Spi::run(
            "SELECT payledger.create_payin('u1', 'ZAP', 'msat', 80000,
                 jsonb_build_array(jsonb_build_object('account', payledger.account_id('u1', 'msat', 'user', 'credits')),
                                   jsonb_build_object('external', 'invoice', 'unit', 1000)),
                 jsonb_build_array(jsonb_build_object('type', 'ZAP', 'account', payledger.open_account('u2', 'msat'),
                                                      'amount', 80000)),
                 idempotency_key => 'k1')",
        )
        .unwrap();
        let (custodial, external): (i64, i64) = (
            scalar("SELECT custodial_amount FROM payledger.payins WHERE idempotency_key = 'k1'"),
            scalar("SELECT external_amount FROM payledger.payins WHERE idempotency_key = 'k1'"),
        );
        assert_eq!((custodial, external), (50000, 30000));
        let failed: bool = scalar(
            "SELECT changed FROM payledger.fail_payin(
                 (SELECT id FROM payledger.payins WHERE idempotency_key = 'k1'), 'INVOICE_EXPIRED')",
        );
        assert!(failed);
        assert_eq!(
            scalar::<i64>(
                "SELECT payledger.balance(payledger.account_id('u1', 'msat', 'user', 'credits'))"
            ),
            50000
        );
        assert_eq!(
            scalar::<i64>("SELECT count(*) FROM payledger.check_invariants()"),
            0
        );
    }
}
