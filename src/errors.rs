//! payledger's error codes, and how a failure in Rust reaches SQL.
//!
//! - A standard SQLSTATE (22004, 22023, 23514, 54000) is raised from Rust at
//!   once (`raise_null`, `raise_malformed`, `pgrx::ereport!`): pgrx knows
//!   those codes.
//! - A payledger failure (class `PL`, which PostgreSQL does not use) is a
//!   [`LedgerError`]. pgrx cannot raise it (an unknown code becomes XX000),
//!   so an entry point returns it as three columns, `sqlstate, message,
//!   detail` ([`LedgerError::into_row`]), and its SQL wrapper raises them
//!   with `payledger_internal.raise_failure()`, the one place such a
//!   failure is raised. `transfer_journal` hands over the same row a moment
//!   later: it returns a scalar (NULL when it failed) so that `transfer()`
//!   evaluates it as a simple expression, about 4 % of a transfer, and
//!   `engine_failure()` gives the row.
//! - A broken invariant of the code itself is XX000 (`pgrx::error!`).
//!
//! The table is documented in `docs/errors.md`.

use pgrx::search_path;
use std::fmt;

/// The registry: every SQLSTATE payledger raises, defined once. SQL raises
/// them by code (`RAISE … USING ERRCODE = 'PL006'`), Rust through
/// `LedgerError`; `docs/errors.md` documents each, and a test checks that
/// the SQL, the Rust code and the docs name exactly these.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $state:literal, $name:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in SQLSTATE order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub const fn sqlstate(self) -> &'static str {
                match self {
                    $(Code::$variant => $state,)*
                }
            }

            /// The name docs/errors.md gives it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }
        }
    };
}

codes! {
    InvalidAmount = "PL001", "invalid_amount";
    UnknownAccount = "PL002", "unknown_account";
    UnknownAsset = "PL003", "unknown_asset";
    AssetMismatch = "PL004", "asset_mismatch";
    AccountClosed = "PL005", "account_closed";
    InsufficientFunds = "PL006", "insufficient_funds";
    Unbalanced = "PL007", "unbalanced_postings";
    IdempotencyConflict = "PL008", "idempotency_conflict";
    UnknownHold = "PL009", "unknown_hold";
    HoldNotPending = "PL010", "hold_not_pending";
    HoldExpired = "PL011", "hold_expired";
    HoldAmountExceeded = "PL012", "hold_amount_exceeded";
    AccountNotEmpty = "PL013", "account_not_empty";
    ConflictingDefinition = "PL014", "conflicting_definition";
    AppendOnly = "PL015", "append_only";
    /// Reserved: never raised.
    Reserved16 = "PL016", "(reserved)";
    UnknownAccountKind = "PL017", "unknown_account_kind";
    UnknownJournal = "PL018", "unknown_journal";
    UnknownPayin = "PL019", "unknown_payin";
    InvalidTransition = "PL020", "invalid_transition";
    UnbalancedPayin = "PL021", "unbalanced_payin";
    UnknownType = "PL022", "unknown_type";
    RefundExceedsPaid = "PL023", "refund_exceeds_paid";
    NotRetryable = "PL024", "not_retryable";
    UnknownJob = "PL025", "unknown_job";
    InvalidSignature = "PL026", "invalid_signature";
    JobFinal = "PL027", "job_final";
    UnknownProvider = "PL028", "unknown_provider";
    UnknownInvoice = "PL029", "unknown_invoice";
    UnknownSubscription = "PL030", "unknown_subscription";
    UnknownCreditObject = "PL031", "unknown_credit_object";
    GiftCodeUnavailable = "PL032", "gift_code_unavailable";
    GiftCodeRedeemed = "PL033", "gift_code_redeemed";
    /// An account a module owns (pay-in escrow, credit grants, the credit
    /// system accounts), named where that module is not the one moving it.
    ManagedAccount = "PL034", "managed_account";
    /// A withdrawal's destination cannot be paid: an expired BOLT11, one with
    /// no amount, or one of another network than the provider's.
    UnpayableDestination = "PL035", "unpayable_destination";
    /// A live withdrawal already pays this BOLT11 (its payment hash).
    DestinationInFlight = "PL036", "destination_in_flight";
    /// A receiver wallet id that does not exist (or is not the end user's).
    UnknownReceiverWallet = "PL037", "unknown_receiver_wallet";
    /// 22004: a required argument is NULL.
    NullValue = "22004", "null_value_not_allowed";
    /// 22023: a malformed argument (wrong JSON shape, bad uuid, bad time).
    Malformed = "22023", "invalid_parameter_value";
}

/// The registry in SQL: every SQLSTATE payledger raises, with the name
/// docs/errors.md gives it (catch errors by these codes, never by message).
#[pgrx::pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn error_codes() -> pgrx::iter::TableIterator<
    'static,
    (
        pgrx::name!(sqlstate, &'static str),
        pgrx::name!(name, &'static str),
    ),
> {
    pgrx::iter::TableIterator::new(Code::ALL.iter().map(|c| (c.sqlstate(), c.name())))
}

// Who may call it (the operators may call all of the API: src/security.sql).
pgrx::extension_sql!(
    "GRANT EXECUTE ON FUNCTION payledger.error_codes() TO payledger_enduser, payledger_app;",
    name = "errors_grants",
    requires = [error_codes]
);

/// A failed item: its SQLSTATE, a message and an optional detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerError {
    pub code: Code,
    pub message: String,
    pub detail: Option<String>,
}

impl LedgerError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        LedgerError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A failure as the `sqlstate`, `message` and `detail` columns the SQL
/// wrappers raise from.
pub type FailureRow = (Option<&'static str>, Option<String>, Option<String>);

impl LedgerError {
    pub fn into_row(self) -> FailureRow {
        (Some(self.code.sqlstate()), Some(self.message), self.detail)
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.sqlstate())
    }
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// Raise a standard-SQLSTATE error for a whole call (not one item of it).
pub fn raise_malformed(message: &str) -> ! {
    pgrx::ereport!(
        ERROR,
        pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message
    );
}

/// Raise 22004 for a required argument that is NULL.
pub fn raise_null(argument: &str) -> ! {
    pgrx::ereport!(
        ERROR,
        pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("argument \"{argument}\" must not be null")
    );
}

/// A `jsonb` argument, read as pgrx's `JsonB` reads one (its text, parsed by
/// serde_json) but failing with SQLSTATE 22023 where that one fails with an
/// internal error: on what serde_json cannot hold, nesting deeper than 128
/// levels or a number beyond the range of a double.
#[derive(Debug)]
pub struct JsonArg(pub serde_json::Value);

impl pgrx::FromDatum for JsonArg {
    unsafe fn from_polymorphic_datum(
        datum: pgrx::pg_sys::Datum,
        is_null: bool,
        _: pgrx::pg_sys::Oid,
    ) -> Option<JsonArg> {
        if is_null {
            return None;
        }
        // SAFETY: the datum is a jsonb (the function's SQL signature says so).
        let text = unsafe {
            let detoasted = pgrx::pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            pgrx::direct_function_call::<&core::ffi::CStr>(
                pgrx::pg_sys::jsonb_out,
                &[Some(detoasted.into())],
            )
        }
        .and_then(|c| c.to_str().ok())
        .unwrap_or_else(|| raise_malformed("a jsonb argument could not be read"));
        match serde_json::from_str(text) {
            Ok(v) => Some(JsonArg(v)),
            Err(e) => raise_malformed(&format!("a JSON argument payledger cannot take: {e}")),
        }
    }
}

// SAFETY: the argument's SQL type is jsonb, which FromDatum above reads.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonArg {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| raise_null(&format!("argument {index}")))
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: maps to the built-in jsonb type.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for JsonArg {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonArg);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: std::result::Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: std::result::Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"),
    ));
}

#[cfg(test)]
mod registry {
    //! The registry, the code and the docs agree: every `PL` code the SQL
    //! raises or Rust names is registered, every registered one is raised
    //! somewhere (but the reserved one), and docs/errors.md lists exactly
    //! the registered codes under their names.
    use super::Code;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readable") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "sql" || x == "rs") {
                out.push(p);
            }
        }
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `PL` followed by three digits, wherever they appear.
    fn pl_codes(text: &str) -> BTreeSet<String> {
        let b = text.as_bytes();
        (0..b.len().saturating_sub(4))
            .filter(|&i| &b[i..i + 2] == b"PL" && b[i + 2..i + 5].iter().all(u8::is_ascii_digit))
            .filter(|&i| i + 5 == b.len() || !b[i + 5].is_ascii_digit())
            .map(|i| text[i..i + 5].to_string())
            .collect()
    }

    /// The `| \`CODE\` | name |` rows of a markdown table.
    fn doc_rows(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                (code.len() == 5)
                    .then(|| (code.to_string(), cells.get(2).unwrap_or(&"").to_string()))
            })
            .collect()
    }

    #[test]
    fn sql_rust_and_docs_agree() {
        let registered: BTreeMap<&str, &str> =
            Code::ALL.iter().map(|c| (c.sqlstate(), c.name())).collect();
        assert_eq!(
            registered.len(),
            Code::ALL.len(),
            "a SQLSTATE is registered twice"
        );

        let mut sources = Vec::new();
        files(&root().join("src"), &mut sources);
        let mut used: BTreeSet<String> = BTreeSet::new();
        for path in &sources {
            if path.ends_with("errors.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).expect("utf-8 source");
            for code in pl_codes(&text) {
                assert!(
                    registered.contains_key(code.as_str()),
                    "{} raises {code}, which src/errors.rs does not register",
                    path.display()
                );
                used.insert(code);
            }
            for c in Code::ALL {
                if text.contains(&format!("Code::{c:?}")) {
                    used.insert(c.sqlstate().to_string());
                }
            }
        }
        for c in Code::ALL {
            if c.sqlstate().starts_with("PL") && *c != Code::Reserved16 {
                assert!(
                    used.contains(c.sqlstate()),
                    "{} is registered but never raised",
                    c.sqlstate()
                );
            }
        }

        {
            let doc = "docs/errors.md";
            let rows = doc_rows(&std::fs::read_to_string(root().join(doc)).expect(doc));
            let documented: BTreeSet<&str> = rows
                .keys()
                .map(String::as_str)
                .filter(|c| c.starts_with("PL"))
                .collect();
            let pl: BTreeSet<&str> = registered
                .keys()
                .copied()
                .filter(|c| c.starts_with("PL"))
                .collect();
            assert_eq!(
                documented, pl,
                "{doc} and src/errors.rs list different PL codes"
            );
            for (code, name) in &registered {
                assert_eq!(
                    rows.get(*code).map(String::as_str),
                    Some(*name),
                    "{doc}: the name of {code}"
                );
            }
        }
    }
}
