//! The ledger's database-level guards, in Rust, whoever writes the tables:
//!
//! - every INSERT into `payledger.entries`: the rows of one statement balance
//!   per journal and asset, and no amount is zero nor any sequence number
//!   below 1 (the engine writes all the postings of a journal in one
//!   statement). A statement trigger reading the transition table: the
//!   PL/pgSQL version ran a grouping query over it, whose start-up cost a
//!   two-leg transfer about 8 % of its instructions.
//! - every account row written: `balance - pending_debits >= min_available`
//!   and `pending_debits >= 0`, the floor behind the engine's
//!   insufficient-funds check. A row trigger: as a CHECK constraint it was
//!   compiled again for every statement that updates accounts, about 5 % of
//!   a transfer.
//!
//! That each entry matches its account and continues its balance chain is
//! the engine's job, verified by `payledger.check_invariants()`.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{FromDatum, Uuid};
use std::collections::HashMap;
use std::ffi::CStr;

// (pgrx creates trigger functions in the extension's schema: they are
// internal, so they move to payledger_internal before their triggers use them)
extension_sql!(
    r#"
ALTER FUNCTION payledger.entries_balance_guard() SET SCHEMA payledger_internal;
ALTER FUNCTION payledger.accounts_floor_guard() SET SCHEMA payledger_internal;
CREATE TRIGGER entries_guard AFTER INSERT ON payledger.entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.entries_balance_guard();
CREATE TRIGGER accounts_floor BEFORE INSERT OR UPDATE OF balance, pending_debits, min_available
    ON payledger.accounts FOR EACH ROW EXECUTE FUNCTION payledger_internal.accounts_floor_guard();
"#,
    name = "ledger_guard_triggers",
    requires = ["ledger_schema", entries_balance_guard, accounts_floor_guard]
);

fn violation(message: String) -> ! {
    pgrx::ereport!(ERROR, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION, message);
}

#[pg_trigger]
fn entries_balance_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let data = trigger.trigger_data();
    if data.tg_newtable.is_null() {
        return Ok(None);
    }
    // SAFETY: an AFTER INSERT statement trigger with REFERENCING NEW TABLE:
    // tg_relation is the open entries relation and tg_newtable its rows.
    let sums = unsafe { sum_new_entries(data.tg_relation, data.tg_newtable) };
    let mut unbalanced: Vec<_> = sums.into_iter().filter(|(_, total)| *total != 0).collect();
    unbalanced.sort();
    if let Some(((journal, asset), total)) = unbalanced.into_iter().next() {
        violation(format!(
            "journal {} does not balance: its {asset} postings sum to {total}",
            Uuid::from_bytes(journal)
        ));
    }
    Ok(None)
}

#[pg_trigger]
fn accounts_floor_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let data = trigger.trigger_data();
    // SAFETY: a BEFORE INSERT OR UPDATE row trigger on accounts: the new row
    // is tg_newtuple for an UPDATE, tg_trigtuple for an INSERT, and
    // tg_relation the open accounts relation. Columns are found by number
    // (pgrx's lookup by name decodes every column's name, about 2 % of a
    // transfer), and read without copying.
    let (balance, pending, min) = unsafe {
        let tuple = if data.tg_newtuple.is_null() {
            data.tg_trigtuple
        } else {
            data.tg_newtuple
        };
        let desc = (*data.tg_relation).rd_att;
        let get = |name: &CStr| -> i128 {
            let datum = pgrx::heap_getattr_raw(tuple, attno(desc, name), desc);
            datum.map_or(0, |d| i128::from(d.value() as i64))
        };
        (
            get(c"balance"),
            get(c"pending_debits"),
            get(c"min_available"),
        )
    };
    if balance - pending < min || pending < 0 {
        // (worded as PostgreSQL words a CHECK's failure)
        violation(
            r#"new row for relation "accounts" violates check constraint "accounts_floor""#.into(),
        );
    }
    Ok(trigger.new())
}

/// Attribute number of a column of a ledger table.
unsafe fn column(desc: pg_sys::TupleDesc, name: &CStr) -> i32 {
    let n = pg_sys::SPI_fnumber(desc, name.as_ptr());
    if n <= 0 {
        pgrx::error!("payledger: the guarded table has no column {name:?}");
    }
    n
}

unsafe fn attno(desc: pg_sys::TupleDesc, name: &CStr) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(column(desc, name) as usize).expect("a positive attribute number")
}

/// The sum of the new rows' amounts per (journal, asset); a zero amount or a
/// sequence number below 1 fails at once.
unsafe fn sum_new_entries(
    rel: pg_sys::Relation,
    store: *mut pg_sys::Tuplestorestate,
) -> HashMap<([u8; 16], String), i128> {
    let desc = (*rel).rd_att;
    let (journal_no, asset_no) = (column(desc, c"journal_id"), column(desc, c"asset"));
    let (amount_no, seq_no) = (column(desc, c"amount"), column(desc, c"seq"));
    // A read pointer of our own, as a NamedTuplestoreScan takes one.
    let reader = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
    pg_sys::tuplestore_select_read_pointer(store, reader);
    pg_sys::tuplestore_rescan(store);
    let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
    let get = |attno: i32| {
        let mut isnull = false;
        let datum = pg_sys::slot_getattr(slot, attno, &mut isnull);
        (datum, isnull)
    };
    // An engine statement writes each journal's entries together: the running
    // key saves a lookup (and the asset's copy) for all but the first entry.
    let mut sums: HashMap<([u8; 16], String), i128> = HashMap::new();
    let mut run: Option<(([u8; 16], String), i128)> = None;
    while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
        let (d, n) = get(journal_no);
        let journal = Uuid::from_datum(d, n).map_or([0; 16], |u| *u.as_bytes());
        let (d, n) = get(amount_no);
        let amount = i64::from_datum(d, n).unwrap_or(0);
        let (d, n) = get(seq_no);
        let seq = i64::from_datum(d, n).unwrap_or(0);
        if amount == 0 || seq < 1 {
            violation(format!(
                "journal {} has an entry with a zero amount or a sequence number below 1",
                Uuid::from_bytes(journal)
            ));
        }
        let (d, n) = get(asset_no);
        let asset = <&str>::from_datum(d, n).unwrap_or_default();
        match &mut run {
            Some(((j, a), total)) if *j == journal && a == asset => *total += i128::from(amount),
            _ => {
                if let Some((key, total)) = run.take() {
                    *sums.entry(key).or_default() += total;
                }
                run = Some(((journal, asset.to_string()), i128::from(amount)));
            }
        }
    }
    if let Some((key, total)) = run {
        *sums.entry(key).or_default() += total;
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    sums
}
