//! Pay-ins and pay-outs: one action paid by several methods (balances first,
//! then an external rail for the rest), its earnings declared up front and
//! credited only when it is PAID, refunds, retries and statistics.
//!
//! All of it is SQL on top of the ledger engine: `schema.sql` holds the tables
//! and the transition table, `api.sql` the state trigger (which moves the money
//! of every state change, whoever makes it) and the functions.

use pgrx::prelude::*;

extension_sql_file!(
    "schema.sql",
    name = "payin_schema",
    requires = ["ledger_schema"]
);
extension_sql_file!(
    "api.sql",
    name = "payin_api",
    requires = ["payin_schema", "ledger_api"]
);

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
