//! The credentials a batch of the worker's claims needs (providers',
//! receiver wallets', webhook endpoints'), read by id in the claiming
//! transaction (SPI) before any call, so that they never pass through SQL
//! values.

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::prelude::*;
use serde_json::Value;
use std::collections::HashMap;

/// The credentials of the ids the claims name in `field`: `sql` takes them
/// as `$1` (text[]) and returns (id text, credential).
pub fn of_claims<T: FromDatum + IntoDatum>(
    claims: &[Value],
    field: &str,
    sql: &str,
) -> HashMap<String, T> {
    let mut ids: Vec<String> = claims
        .iter()
        .filter_map(|c| c[field].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    let mut out = HashMap::new();
    if ids.is_empty() {
        return out;
    }
    Spi::connect(|client| {
        let rows = client
            .select(sql, None, &[ids.into()])
            .unwrap_or_else(|e| pgrx::error!("reading credentials: {e}"));
        for row in rows {
            if let (Ok(Some(id)), Ok(Some(c))) = (row.get::<String>(1), row.get::<T>(2)) {
                out.insert(id, c);
            }
        }
    });
    out
}
