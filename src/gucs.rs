//! Settings (GUCs). Registered in `_PG_init`, so they exist as soon as the
//! library is loaded (by `shared_preload_libraries` or the first call).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Largest number of items one `transfer_batch` call accepts.
pub static MAX_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"payledger.max_batch_size",
        c"Largest number of items one payledger.transfer_batch call accepts.",
        c"Bounds the memory and lock footprint of one call; larger batches fail with SQLSTATE 54000.",
        &MAX_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}
