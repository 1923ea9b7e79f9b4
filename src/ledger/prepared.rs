//! The engine's statements: prepared once per backend, always with a generic
//! plan, run through SPI, and their rows read in place.
//!
//! Why not pgrx's `PreparedStatement`:
//! - it cannot ask for a generic plan. The plan cache would otherwise make
//!   a custom plan for every call of a statement whose parameters are arrays,
//!   and the API functions had to `SET plan_cache_mode`, which costs a GUC
//!   save and restore per call;
//! - its rows read every column with `SPI_getbinval` up front, which walks
//!   the tuple from its start for each column once a row holds a NULL.
//!   A row here is deformed once, in one pass.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum, TryFromDatumError};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::ffi::CString;
use std::marker::PhantomData;

thread_local! {
    // Found by the address of their text: hashing the text itself cost about
    // 1 % of a transfer. Kept (SPI_keepplan) for the life of the backend.
    static PLANS: RefCell<Vec<(usize, pg_sys::SPIPlanPtr)>> = const { RefCell::new(Vec::new()) };
}

fn spi_failed(what: &str, code: i32) -> ! {
    // An SPI failure here is a bug or a broken installation, never bad input
    // (errors raised by the statement itself propagate as they are).
    pgrx::error!("payledger engine: SPI {what} failed ({code})")
}

fn plan_for(sql: &'static str, args: &[DatumWithOid]) -> pg_sys::SPIPlanPtr {
    let key = sql.as_ptr() as usize;
    PLANS.with(|plans| {
        if let Some((_, plan)) = plans.borrow().iter().find(|(k, _)| *k == key) {
            return *plan;
        }
        let text = CString::new(sql).expect("a statement without NUL bytes");
        let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
        // SAFETY: a NUL-terminated statement and one type per parameter.
        let plan = unsafe {
            pg_sys::SPI_prepare_cursor(
                text.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            )
        };
        if plan.is_null() {
            // SAFETY: SPI_result is set by the failed SPI_prepare_cursor.
            spi_failed("prepare", unsafe { pg_sys::SPI_result });
        }
        // SAFETY: a plan just prepared in this SPI connection.
        let rc = unsafe { pg_sys::SPI_keepplan(plan) };
        if rc != 0 {
            spi_failed("keepplan", rc);
        }
        plans.borrow_mut().push((key, plan));
        plan
    })
}

/// Run one of the engine's statements (read-write) through its kept plan.
/// The client proves an open SPI connection; the rows live as long as it.
pub(crate) fn exec<'c>(
    _client: &mut SpiClient<'c>,
    sql: &'static str,
    args: &[DatumWithOid],
) -> Rows<'c> {
    let plan = plan_for(sql, args);
    let mut values: Vec<pg_sys::Datum> = Vec::with_capacity(args.len());
    let mut nulls: Vec<std::ffi::c_char> = Vec::with_capacity(args.len());
    for a in args {
        match a.datum() {
            Some(d) => {
                values.push(d.sans_lifetime());
                nulls.push(b' ' as std::ffi::c_char);
            }
            None => {
                values.push(pg_sys::Datum::from(0usize));
                nulls.push(b'n' as std::ffi::c_char);
            }
        }
    }
    // SAFETY: a kept plan of this many parameters, inside an SPI connection;
    // SPI_tuptable is this call's result until the connection ends.
    unsafe {
        pg_sys::SPI_tuptable = std::ptr::null_mut();
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc < 0 {
            spi_failed("execute", rc);
        }
        let table = pg_sys::SPI_tuptable;
        let len = if table.is_null() {
            0
        } else {
            (*table).numvals as usize
        };
        Rows {
            table,
            len,
            at: 0,
            _conn: PhantomData,
        }
    }
}

/// The rows a statement returned.
pub(crate) struct Rows<'c> {
    table: *mut pg_sys::SPITupleTable,
    len: usize,
    at: usize,
    _conn: PhantomData<&'c ()>,
}

impl<'c> Iterator for Rows<'c> {
    type Item = Row<'c>;

    fn next(&mut self) -> Option<Row<'c>> {
        if self.at >= self.len {
            return None;
        }
        // SAFETY: at < numvals of a live SPI tuple table.
        let row = unsafe {
            let tuple = *(*self.table).vals.add(self.at);
            Row::deform(tuple, (*self.table).tupdesc)
        };
        self.at += 1;
        Some(row)
    }
}

/// One row, deformed.
pub(crate) struct Row<'c> {
    desc: pg_sys::TupleDesc,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    _conn: PhantomData<&'c ()>,
}

impl Row<'_> {
    unsafe fn deform(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Self {
        let n = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); n];
        let mut nulls = vec![true; n];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Row {
            desc,
            values,
            nulls,
            _conn: PhantomData,
        }
    }

    /// Column `ordinal` (1-based) as a `T`, checked against the column's type.
    pub(crate) fn get<T: FromDatum + IntoDatum>(
        &self,
        ordinal: usize,
    ) -> Result<Option<T>, TryFromDatumError> {
        let i = ordinal
            .checked_sub(1)
            .filter(|i| *i < self.values.len())
            .ok_or(TryFromDatumError::NoSuchAttributeNumber(
                std::num::NonZeroUsize::new(ordinal.max(1)).expect("not zero"),
            ))?;
        // SAFETY: i is a column of this row's descriptor; the datum lives in
        // the SPI tuple table, and try_from_datum checks the type.
        unsafe {
            // (PostgreSQL 18 keeps compact attributes first: ask it)
            #[cfg(not(feature = "pg18"))]
            let oid = (*(*self.desc).attrs.as_ptr().add(i)).atttypid;
            #[cfg(feature = "pg18")]
            let oid = (*pg_sys::TupleDescAttr(self.desc, i as std::ffi::c_int)).atttypid;
            T::try_from_datum(self.values[i], self.nulls[i], oid)
        }
    }
}

/// A statement parameter of array type, built in one pass: pgrx's
/// `Vec<T>` conversion adds each element to an `ArrayBuildState` (a copy
/// per element, and one more for the result), about 11 % of a batched
/// transfer.
pub(crate) fn array<T: ArrayElem>(values: &[T]) -> DatumWithOid<'static> {
    let mut elems: Vec<pg_sys::Datum> = Vec::with_capacity(values.len());
    let mut nulls: Vec<bool> = Vec::with_capacity(values.len());
    for v in values {
        match v.elem() {
            Some(d) => {
                elems.push(d);
                nulls.push(false);
            }
            None => {
                elems.push(pg_sys::Datum::from(0usize));
                nulls.push(true);
            }
        }
    }
    let mut dims = [values.len() as i32];
    let mut lbs = [1];
    // SAFETY: one dimension of values.len() elements of T's element type,
    // whose storage T declares; by-reference elements point into `values`
    // (or palloc'd copies), which outlive this call, and are copied into the
    // array.
    unsafe {
        let array = pg_sys::construct_md_array(
            elems.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            T::ELEMENT,
            T::LEN,
            T::BYVAL,
            T::ALIGN as std::ffi::c_char,
        );
        DatumWithOid::new(pg_sys::Datum::from(array), T::ARRAY)
    }
}

/// How an element type is stored in an array.
pub(crate) trait ArrayElem {
    const ELEMENT: pg_sys::Oid;
    const ARRAY: pg_sys::Oid;
    const LEN: i32;
    const BYVAL: bool;
    const ALIGN: u8;
    /// The element's datum (None: NULL), valid while `self` is.
    fn elem(&self) -> Option<pg_sys::Datum>;
}

impl ArrayElem for i64 {
    const ELEMENT: pg_sys::Oid = pg_sys::INT8OID;
    const ARRAY: pg_sys::Oid = pg_sys::INT8ARRAYOID;
    const LEN: i32 = 8;
    const BYVAL: bool = true;
    const ALIGN: u8 = b'd';
    fn elem(&self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(*self))
    }
}

impl ArrayElem for i32 {
    const ELEMENT: pg_sys::Oid = pg_sys::INT4OID;
    const ARRAY: pg_sys::Oid = pg_sys::INT4ARRAYOID;
    const LEN: i32 = 4;
    const BYVAL: bool = true;
    const ALIGN: u8 = b'i';
    fn elem(&self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(*self))
    }
}

impl ArrayElem for pgrx::datum::TimestampWithTimeZone {
    const ELEMENT: pg_sys::Oid = pg_sys::TIMESTAMPTZOID;
    const ARRAY: pg_sys::Oid = pg_sys::TIMESTAMPTZARRAYOID;
    const LEN: i32 = 8;
    const BYVAL: bool = true;
    const ALIGN: u8 = b'd';
    fn elem(&self) -> Option<pg_sys::Datum> {
        (*self).into_datum()
    }
}

impl ArrayElem for pgrx::Uuid {
    const ELEMENT: pg_sys::Oid = pg_sys::UUIDOID;
    const ARRAY: pg_sys::Oid = pg_sys::UUIDARRAYOID;
    const LEN: i32 = 16;
    const BYVAL: bool = false;
    const ALIGN: u8 = b'c';
    fn elem(&self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.as_bytes().as_ptr()))
    }
}

impl ArrayElem for String {
    const ELEMENT: pg_sys::Oid = pg_sys::TEXTOID;
    const ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
    const LEN: i32 = -1;
    const BYVAL: bool = false;
    const ALIGN: u8 = b'i';
    fn elem(&self) -> Option<pg_sys::Datum> {
        self.as_str().into_datum()
    }
}

impl ArrayElem for Vec<u8> {
    const ELEMENT: pg_sys::Oid = pg_sys::BYTEAOID;
    const ARRAY: pg_sys::Oid = pg_sys::BYTEAARRAYOID;
    const LEN: i32 = -1;
    const BYVAL: bool = false;
    const ALIGN: u8 = b'i';
    fn elem(&self) -> Option<pg_sys::Datum> {
        self.as_slice().into_datum()
    }
}

impl<T: ArrayElem> ArrayElem for Option<T> {
    const ELEMENT: pg_sys::Oid = T::ELEMENT;
    const ARRAY: pg_sys::Oid = T::ARRAY;
    const LEN: i32 = T::LEN;
    const BYVAL: bool = T::BYVAL;
    const ALIGN: u8 = T::ALIGN;
    fn elem(&self) -> Option<pg_sys::Datum> {
        self.as_ref().and_then(T::elem)
    }
}
