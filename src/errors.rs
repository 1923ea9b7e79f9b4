//! payledger's error codes.
//!
//! pgrx can only raise standard SQLSTATEs from Rust (an unknown code becomes
//! XX000), so the engine returns domain errors as data and the SQL wrappers
//! raise them with `RAISE … USING ERRCODE`. Class `PL` is not used by
//! PostgreSQL. The table is documented in `docs/errors.md`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidAmount,
    UnknownAccount,
    AssetMismatch,
    AccountClosed,
    InsufficientFunds,
    Unbalanced,
    IdempotencyConflict,
    UnknownHold,
    HoldNotPending,
    HoldExpired,
    HoldAmountExceeded,
    UnknownAsset,
    UnknownPayin,
    InvalidTransition,
    UnbalancedPayin,
    UnknownType,
    /// 22004: a required argument is NULL.
    NullValue,
    /// 22023: a malformed argument (wrong JSON shape, bad uuid, bad time).
    Malformed,
}

impl Code {
    pub const fn sqlstate(self) -> &'static str {
        match self {
            Code::InvalidAmount => "PL001",
            Code::UnknownAccount => "PL002",
            Code::AssetMismatch => "PL004",
            Code::AccountClosed => "PL005",
            Code::InsufficientFunds => "PL006",
            Code::Unbalanced => "PL007",
            Code::IdempotencyConflict => "PL008",
            Code::UnknownHold => "PL009",
            Code::HoldNotPending => "PL010",
            Code::HoldExpired => "PL011",
            Code::HoldAmountExceeded => "PL012",
            Code::UnknownAsset => "PL003",
            Code::UnknownPayin => "PL019",
            Code::InvalidTransition => "PL020",
            Code::UnbalancedPayin => "PL021",
            Code::UnknownType => "PL022",
            Code::NullValue => "22004",
            Code::Malformed => "22023",
        }
    }
}

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
