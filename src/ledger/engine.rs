//! The posting engine: applies a batch of transfers and hold operations.
//!
//! One call runs in five steps, whatever the batch size:
//! 1. parse every item (a bad item fails alone);
//! 2. serialise idempotency keys with advisory locks (sorted), then look them up;
//! 3. lock the holds named by the batch, then every account it touches, each
//!    set in uuid order (holds before accounts everywhere, so no deadlock);
//!    a sharded account that the call only credits gets one free shard instead;
//! 4. apply the items one by one in memory, each succeeding or failing alone;
//! 5. write everything with one statement.
//!
//! Domain failures come back as data (sqlstate, message, detail) because pgrx
//! cannot raise a custom SQLSTATE; the SQL wrappers raise them.

pub(crate) use super::prepared::array;
pub(crate) use super::prepared::exec;
use super::prepared::Row;
use super::request::{key_lock, parse_item, uuid_str as id_str, Id, Item, Op};
use crate::errors::{Code, LedgerError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The outcome of one item.
pub struct Outcome {
    pub status: &'static str,
    pub journal_id: Option<Id>,
    pub hold_id: Option<Id>,
    pub error: Option<LedgerError>,
}

impl Outcome {
    fn ok(journal_id: Option<Id>, hold_id: Option<Id>) -> Self {
        Outcome {
            status: "ok",
            journal_id,
            hold_id,
            error: None,
        }
    }
    fn exists(journal_id: Option<Id>, hold_id: Option<Id>) -> Self {
        Outcome {
            status: "exists",
            journal_id,
            hold_id,
            error: None,
        }
    }
    fn failed(e: LedgerError) -> Self {
        Outcome {
            status: "error",
            journal_id: None,
            hold_id: None,
            error: Some(e),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Account {
    pub(crate) owner: String,
    pub(crate) asset: String,
    /// The lowest available balance allowed; None = unbounded.
    pub(crate) floor: Option<i64>,
    pub(crate) balance: i64,
    pub(crate) pending: i64,
    seq: i64,
    pub(crate) closed: bool,
    dirty: bool,
    /// Set on the shard rows of a sharded account: the account they belong to.
    pub(crate) parent: Option<Id>,
    /// Money held by the account's shards (read without locking them; shards
    /// only ever receive, so this is a lower bound). 0 for unsharded accounts.
    pub(crate) in_shards: i64,
    /// The latest effective time among the row's entries (microseconds since 2000).
    eff_max: Option<i64>,
    /// The module that owns the account (`accounts.managed_by`): only items
    /// of that module may move it.
    pub(crate) managed_by: Option<String>,
}

#[derive(Clone)]
struct Hold {
    debit: Id,
    credit: Id,
    amount: i64,
    status: String,
    expired: bool,
}

#[derive(Default)]
pub(crate) struct Writes {
    // journals
    j_id: Vec<Uuid>,
    j_kind: Vec<String>,
    j_key: Vec<Option<String>>,
    j_hash: Vec<Option<Vec<u8>>>,
    j_hold: Vec<Option<Uuid>>,
    j_meta: Vec<String>,
    j_eff: Vec<TimestampWithTimeZone>,
    /// 1-based position of the journal's first entry in the entry arrays, and how many.
    j_first: Vec<i32>,
    j_count: Vec<i32>,
    // entries
    e_account: Vec<Uuid>,
    e_seq: Vec<i64>,
    e_journal: Vec<Uuid>,
    e_owner: Vec<String>,
    e_asset: Vec<String>,
    e_amount: Vec<i64>,
    e_after: Vec<i64>,
    e_eff: Vec<TimestampWithTimeZone>,
    e_eff_max: Vec<TimestampWithTimeZone>,
    // new holds
    h_id: Vec<Uuid>,
    h_owner: Vec<String>,
    h_debit: Vec<Uuid>,
    h_credit: Vec<Uuid>,
    h_asset: Vec<String>,
    h_amount: Vec<i64>,
    h_expires: Vec<Option<String>>,
    h_timeout: Vec<Option<i64>>,
    h_key: Vec<Option<String>>,
    h_hash: Vec<Option<Vec<u8>>>,
    h_meta: Vec<String>,
    // resolved holds
    r_id: Vec<Uuid>,
    r_status: Vec<String>,
    r_posted: Vec<Option<i64>>,
    r_journal: Vec<Option<Uuid>>,
}

pub(crate) fn u(id: &Id) -> Uuid {
    Uuid::from_bytes(*id)
}

pub(crate) fn new_id() -> Id {
    *uuid::Uuid::now_v7().as_bytes()
}

fn read_account(row: &Row) -> (Id, Account, i16) {
    let id: Uuid = row.get(1).ok().flatten().expect("id");
    let allow_negative: bool = row.get(4).ok().flatten().unwrap_or(false);
    let overdraft: Option<i64> = row.get(5).ok().flatten();
    let floor = if allow_negative {
        overdraft.map(|l| -l)
    } else {
        Some(0)
    };
    let parent: Option<Uuid> = row.get(11).ok().flatten();
    let account = Account {
        owner: row.get(2).ok().flatten().unwrap_or_default(),
        asset: row.get(3).ok().flatten().unwrap_or_default(),
        floor,
        balance: row.get(6).ok().flatten().unwrap_or_default(),
        pending: row.get(7).ok().flatten().unwrap_or_default(),
        seq: row.get(8).ok().flatten().unwrap_or_default(),
        closed: row.get(9).ok().flatten().unwrap_or(false),
        dirty: false,
        parent: parent.map(|p| *p.as_bytes()),
        in_shards: 0,
        eff_max: row
            .get::<TimestampWithTimeZone>(12)
            .ok()
            .flatten()
            .map(|t| t.into()),
        managed_by: row.get(13).ok().flatten(),
    };
    (
        *id.as_bytes(),
        account,
        row.get(10).ok().flatten().unwrap_or(1),
    )
}

/// The transaction's start (what `now()` returns), the default effective time.
fn now_micros() -> i64 {
    // SAFETY: reads the current transaction's start time; no arguments.
    unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() }
}

fn timestamp(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros)
        .unwrap_or_else(|_| pgrx::error!("payledger: time out of range: {micros}"))
}

/// Parse and apply a JSON array of items; one outcome per item, in order.
/// `module`: the module the items move money for (None: the generic API).
pub fn apply_json(items: &Value, max_items: usize, module: Option<String>) -> Vec<Outcome> {
    let arr = match items.as_array() {
        Some(a) => a,
        None => crate::errors::raise_malformed("the batch must be a JSON array of items"),
    };
    if arr.len() > max_items {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a batch holds at most {max_items} items (payledger.max_batch_size), got {}",
                arr.len()
            )
        );
    }
    apply_items(
        arr.iter()
            .map(|v| {
                parse_item(v).map(|mut it| {
                    it.module.clone_from(&module);
                    it
                })
            })
            .collect(),
    )
}

/// Apply already-parsed items (a parse failure is that item's outcome).
pub fn apply_items(parsed: Vec<Result<Item>>) -> Vec<Outcome> {
    Spi::connect_mut(|client| apply(client, parsed))
}

pub(crate) fn apply(client: &mut SpiClient<'_>, parsed: Vec<Result<Item>>) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = parsed
        .iter()
        .map(|r| r.as_ref().err().map(|e| Outcome::failed(e.clone())))
        .collect();
    let items: Vec<Option<&Item>> = parsed.iter().map(|r| r.as_ref().ok()).collect();

    // 2. idempotency keys: wait for any session using the same key, then look it up.
    let mut journal_keys = BTreeSet::new();
    let mut hold_keys = BTreeSet::new();
    for it in items.iter().flatten() {
        if let Some(k) = &it.key {
            if it.key_is_journal() {
                journal_keys.insert(k.clone());
            } else {
                hold_keys.insert(k.clone());
            }
        }
    }
    // (key, is_journal) -> (hash, id)
    let mut known: HashMap<(String, bool), (Vec<u8>, Id)> = HashMap::new();
    if !journal_keys.is_empty() || !hold_keys.is_empty() {
        let mut locks: Vec<i64> = journal_keys
            .iter()
            .map(|k| key_lock(k))
            .chain(hold_keys.iter().map(|k| key_lock(&format!("hold/{k}"))))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        exec(
            client,
            "SELECT pg_catalog.pg_advisory_xact_lock(k) FROM \
             (SELECT k FROM pg_catalog.unnest($1::int8[]) WITH ORDINALITY AS u(k, o) ORDER BY o OFFSET 0) s",
            &[DatumWithOid::from(locks)],
        );
        for (q, keys, is_journal) in [
            (
                "SELECT idempotency_key, request_hash, id FROM payledger.journals WHERE idempotency_key = ANY($1)",
                &journal_keys,
                true,
            ),
            (
                "SELECT idempotency_key, request_hash, id FROM payledger.holds WHERE idempotency_key = ANY($1)",
                &hold_keys,
                false,
            ),
        ] {
            if keys.is_empty() {
                continue;
            }
            let keys: Vec<String> = keys.iter().cloned().collect();
            let rows = exec(client, q, &[DatumWithOid::from(keys)]);
            for row in rows {
                let k: String = row.get(1).ok().flatten().unwrap_or_default();
                let h: Vec<u8> = row.get(2).ok().flatten().unwrap_or_default();
                let id: Uuid = row
                    .get(3)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| pgrx::error!("idempotent row without id"));
                known.insert((k, is_journal), (h, *id.as_bytes()));
            }
        }
    }

    // 3a. lock the holds the batch names.
    let hold_ids: BTreeSet<Id> = items
        .iter()
        .flatten()
        .filter_map(|it| match it.op {
            Op::HoldPost { hold, .. } | Op::HoldVoid { hold } | Op::HoldExpire { hold } => {
                Some(hold)
            }
            _ => None,
        })
        .collect();
    let mut holds: HashMap<Id, Hold> = HashMap::new();
    if !hold_ids.is_empty() {
        let ids: Vec<Uuid> = hold_ids.iter().map(u).collect();
        let rows = exec(
            client,
            "SELECT id, debit_account, credit_account, amount, status, \
                    coalesce(expires_at <= pg_catalog.clock_timestamp(), false) \
               FROM payledger.holds WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[DatumWithOid::from(ids)],
        );
        for row in rows {
            let g = |i| -> Uuid { row.get::<Uuid>(i).ok().flatten().expect("not null") };
            let hold = Hold {
                debit: *g(2).as_bytes(),
                credit: *g(3).as_bytes(),
                amount: row.get(4).ok().flatten().unwrap_or_default(),
                status: row.get(5).ok().flatten().unwrap_or_default(),
                expired: row.get(6).ok().flatten().unwrap_or_default(),
            };
            holds.insert(*g(1).as_bytes(), hold);
        }
    }

    // 3b. lock every account the batch touches, in uuid order. An account that
    // this call only credits and that has shards is not locked: one of its
    // shards is, with SKIP LOCKED, after all the others (3c).
    let mut account_ids: BTreeSet<Id> = BTreeSet::new();
    let mut debited: HashSet<Id> = HashSet::new();
    for it in items.iter().flatten() {
        match &it.op {
            Op::Transfer { postings, .. } => {
                for (id, amount) in postings {
                    account_ids.insert(*id);
                    if *amount < 0 {
                        debited.insert(*id);
                    }
                }
            }
            Op::HoldCreate { debit, credit, .. } => {
                account_ids.insert(*debit);
                account_ids.insert(*credit);
                debited.insert(*debit);
                debited.insert(*credit);
            }
            _ => {}
        }
    }
    for h in holds.values() {
        account_ids.insert(h.debit);
        account_ids.insert(h.credit);
        debited.insert(h.debit);
        debited.insert(h.credit);
    }
    let Locked {
        mut accounts,
        redirect,
    } = lock_accounts(client, &account_ids, &debited);

    // 4. apply in order.
    let mut w = Writes::default();
    let now = now_micros();
    for (i, it) in items.iter().enumerate() {
        let Some(it) = it else { continue };
        if let (Some(key), Some(hash)) = (&it.key, &it.hash) {
            if let Some((h, id)) = known.get(&(key.clone(), it.key_is_journal())) {
                outcomes[i] = Some(if h == hash {
                    if it.key_is_journal() {
                        Outcome::exists(Some(*id), None)
                    } else {
                        Outcome::exists(None, Some(*id))
                    }
                } else {
                    Outcome::failed(
                        LedgerError::new(
                            Code::IdempotencyConflict,
                            format!(
                                "idempotency key {key:?} was already used with a different request"
                            ),
                        )
                        .detail(format!("the key belongs to {}", id_str(id))),
                    )
                });
                continue;
            }
        }
        let result = match &it.op {
            Op::Transfer {
                postings,
                kind,
                effective_at,
            } => match postings
                .iter()
                .find_map(|(id, _)| shard_named(&accounts, id))
            {
                Some(e) => Err(e),
                None => {
                    let postings: Vec<(Id, i64)> = postings
                        .iter()
                        .map(|(id, n)| (*redirect.get(id).unwrap_or(id), *n))
                        .collect();
                    let eff = effective_micros(effective_at, now);
                    apply_transfer(&mut accounts, &mut w, it, &postings, kind, eff, None)
                        .map(|j| (Some(j), None))
                }
            },
            Op::HoldCreate {
                debit,
                credit,
                amount,
                expires_at,
                timeout_ms,
            } => match shard_named(&accounts, debit).or_else(|| shard_named(&accounts, credit)) {
                Some(e) => Err(e),
                None => apply_hold_create(
                    &mut accounts,
                    &mut w,
                    it,
                    (*debit, *credit, *amount),
                    expires_at,
                    *timeout_ms,
                )
                .map(|h| (None, Some(h))),
            },
            Op::HoldPost {
                hold,
                amount,
                effective_at,
            } => apply_hold_post(
                &mut accounts,
                &mut holds,
                &mut w,
                it,
                *hold,
                *amount,
                effective_micros(effective_at, now),
            )
            .map(|j| (Some(j), Some(*hold))),
            Op::HoldVoid { hold } => {
                release_hold(&mut accounts, &mut holds, &mut w, *hold, "voided")
                    .map(|_| (None, Some(*hold)))
            }
            Op::HoldExpire { hold } => {
                release_hold(&mut accounts, &mut holds, &mut w, *hold, "expired")
                    .map(|_| (None, Some(*hold)))
            }
        };
        outcomes[i] = Some(match result {
            Ok((j, h)) => {
                if let (Some(key), Some(hash)) = (&it.key, &it.hash) {
                    let id = if it.key_is_journal() { j } else { h };
                    if let Some(id) = id {
                        known.insert((key.clone(), it.key_is_journal()), (hash.clone(), id));
                    }
                }
                Outcome::ok(j, h)
            }
            Err(e) => Outcome::failed(e),
        });
    }

    // 5. write.
    write(client, &accounts, w);
    outcomes
        .into_iter()
        .map(|o| o.expect("every item has an outcome"))
        .collect()
}

/// Accounts locked for one call: the rows read, and for each sharded account
/// that the call only credits, the shard locked in its place.
pub(crate) struct Locked {
    pub(crate) accounts: HashMap<Id, Account>,
    pub(crate) redirect: HashMap<Id, Id>,
}

impl Locked {
    /// The row a posting to `id` lands on (a shard of a credited sharded account).
    pub(crate) fn target(&self, id: &Id) -> Option<&Account> {
        self.accounts.get(self.redirect.get(id).unwrap_or(id))
    }
}

/// Lock the accounts of a call in one pass in uuid order (3b, 3c below).
pub(crate) fn lock_accounts(
    client: &mut SpiClient<'_>,
    account_ids: &BTreeSet<Id>,
    debited: &HashSet<Id>,
) -> Locked {
    // One statement locks every account except the sharded ones this call
    // only credits (the row filter runs before the row lock): those are the
    // accounts asked for that do not come back, and get a shard in 3c.
    let mut accounts: HashMap<Id, Account> = HashMap::new();
    let mut sharded_debited: Vec<Uuid> = Vec::new();
    if !account_ids.is_empty() {
        let all: Vec<Uuid> = account_ids.iter().map(u).collect();
        let must: Vec<Uuid> = debited.iter().map(u).collect();
        let rows = exec(
            client,
            "SELECT id, owner_id, asset, allow_negative, overdraft_limit, balance, pending_debits, \
                    entry_count, closed_at IS NOT NULL, shards, parent_id, effective_max, managed_by \
               FROM payledger.accounts WHERE id = ANY($1) AND (shards = 1 OR id = ANY($2)) \
              ORDER BY id FOR NO KEY UPDATE",
            &[DatumWithOid::from(all), DatumWithOid::from(must)],
        );
        for row in rows {
            let (id, account, shards) = read_account(&row);
            if shards > 1 && debited.contains(&id) {
                sharded_debited.push(u(&id));
            }
            accounts.insert(id, account);
        }
    }
    // Not returned: sharded and only credited, or unknown (reported when applied).
    let credit_only_sharded: BTreeSet<Id> = account_ids
        .iter()
        .filter(|id| !accounts.contains_key(*id))
        .copied()
        .collect();
    // A sharded account's money is partly in its shards; a debit may use it.
    if !sharded_debited.is_empty() {
        let rows = exec(
            client,
            "SELECT parent_id, sum(balance)::int8 FROM payledger.accounts \
              WHERE parent_id = ANY($1) GROUP BY parent_id",
            &[DatumWithOid::from(sharded_debited)],
        );
        for row in rows {
            let parent: Uuid = row.get(1).ok().flatten().expect("parent");
            let sum: i64 = row.get(2).ok().flatten().unwrap_or(0);
            if let Some(a) = accounts.get_mut(parent.as_bytes()) {
                a.in_shards = sum;
            }
        }
    }
    // 3c. one shard per credited sharded account: a free one if any, else wait
    // for a random one. Shards come last in the lock order and are taken one
    // per account in uuid order, so this cannot deadlock either.
    let mut redirect: HashMap<Id, Id> = HashMap::new();
    for parent in &credit_only_sharded {
        let mut shard = None;
        for sql in [
            "SELECT id, owner_id, asset, allow_negative, overdraft_limit, balance, pending_debits, \
                    entry_count, closed_at IS NOT NULL, shards, parent_id, effective_max, managed_by \
               FROM payledger.accounts WHERE parent_id = $1 \
              ORDER BY random() LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
            "SELECT id, owner_id, asset, allow_negative, overdraft_limit, balance, pending_debits, \
                    entry_count, closed_at IS NOT NULL, shards, parent_id, effective_max, managed_by \
               FROM payledger.accounts WHERE parent_id = $1 \
              ORDER BY random() LIMIT 1 FOR NO KEY UPDATE",
        ] {
            if let Some(row) = exec(client, sql, &[DatumWithOid::from(u(parent))]).next() {
                shard = Some(read_account(&row));
                break;
            }
        }
        // No shard: the account does not exist, and applying says so.
        if let Some((id, account, _)) = shard {
            accounts.insert(id, account);
            redirect.insert(*parent, id);
        }
    }

    Locked { accounts, redirect }
}

/// Apply one transfer item to locked accounts and write it, together with
/// `extra` (a caller's statement built on `write_head!`/`write_entries!`, and
/// its parameters from $39 on) when given.
pub(crate) fn post_locked(
    client: &mut SpiClient<'_>,
    locked: &mut Locked,
    item: &Item,
    extra: Option<(&'static str, Vec<DatumWithOid>)>,
) -> Result<Id> {
    let Op::Transfer {
        postings,
        kind,
        effective_at,
    } = &item.op
    else {
        pgrx::error!("payledger: post_locked takes a transfer");
    };
    if let Some(e) = postings
        .iter()
        .find_map(|(id, _)| shard_named(&locked.accounts, id))
    {
        return Err(e);
    }
    let postings: Vec<(Id, i64)> = postings
        .iter()
        .map(|(id, n)| (*locked.redirect.get(id).unwrap_or(id), *n))
        .collect();
    let mut w = Writes::default();
    let eff = effective_micros(effective_at, now_micros());
    let journal = apply_transfer(
        &mut locked.accounts,
        &mut w,
        item,
        &postings,
        kind,
        eff,
        None,
    )?;
    write_with(client, &locked.accounts, w, extra);
    Ok(journal)
}

/// Shards are reached through their account, never named directly: debiting
/// one would break the rule that shards only receive.
fn shard_named(accounts: &HashMap<Id, Account>, id: &Id) -> Option<LedgerError> {
    let parent = accounts.get(id)?.parent?;
    Some(
        LedgerError::new(
            Code::Malformed,
            format!(
                "account {} is a shard of account {}",
                id_str(id),
                id_str(&parent)
            ),
        )
        .detail("name the sharded account itself"),
    )
}

/// An account an item may move: it exists, is open, and is managed by no
/// module or by the item's own (`module`: None for the generic API).
fn account<'a>(
    accounts: &'a HashMap<Id, Account>,
    id: &Id,
    module: Option<&str>,
) -> Result<&'a Account> {
    let a = accounts.get(id).ok_or_else(|| {
        LedgerError::new(
            Code::UnknownAccount,
            format!("account {} does not exist", id_str(id)),
        )
    })?;
    if a.closed {
        return Err(LedgerError::new(
            Code::AccountClosed,
            format!("account {} is closed", id_str(id)),
        ));
    }
    if let Some(owner) = a.managed_by.as_deref() {
        if module != Some(owner) {
            return Err(managed(id, a));
        }
    }
    Ok(a)
}

/// PL034: an account a module owns, named where that module is not moving it.
pub(crate) fn managed(id: &Id, a: &Account) -> LedgerError {
    LedgerError::new(
        Code::ManagedAccount,
        format!(
            "account {} belongs to the {} module",
            id_str(a.parent.as_ref().unwrap_or(id)),
            a.managed_by.as_deref().unwrap_or("?")
        ),
    )
    .detail("only that module's functions move it")
}

fn insufficient(id: &Id, a: &Account, needed: i64) -> LedgerError {
    let available = a.balance - a.pending + a.in_shards;
    LedgerError::new(
        Code::InsufficientFunds,
        format!("insufficient funds in account {}", id_str(id)),
    )
    .detail(format!(
        "available {available} {asset}, needed {needed} {asset}, floor {floor}",
        asset = a.asset,
        floor = a.floor.map_or("none".to_string(), |f| f.to_string())
    ))
}

fn check_floor(id: &Id, a: &Account, new_available: i64, needed: i64) -> Result<()> {
    match a.floor {
        Some(f) if new_available + a.in_shards < f => Err(insufficient(id, a, needed)),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_transfer(
    accounts: &mut HashMap<Id, Account>,
    w: &mut Writes,
    it: &Item,
    postings: &[(Id, i64)],
    kind: &str,
    eff: i64,
    hold: Option<Id>,
) -> Result<Id> {
    // Validate against the current state, then apply: an item fails whole.
    let mut net: Vec<(Id, i64)> = Vec::new();
    let mut per_asset: HashMap<&str, i128> = HashMap::new();
    for (id, amount) in postings {
        let a = account(accounts, id, it.module.as_deref())?;
        *per_asset.entry(a.asset.as_str()).or_default() += *amount as i128;
        match net.iter_mut().find(|(n, _)| n == id) {
            Some(n) => n.1 = n.1.checked_add(*amount).ok_or_else(overflow)?,
            None => net.push((*id, *amount)),
        }
    }
    if per_asset.len() > 1 && postings.len() == 2 {
        return Err(LedgerError::new(
            Code::AssetMismatch,
            "the two accounts hold different assets".to_string(),
        )
        .detail(format!(
            "{} is {}, {} is {}",
            id_str(&postings[0].0),
            accounts[&postings[0].0].asset,
            id_str(&postings[1].0),
            accounts[&postings[1].0].asset
        )));
    }
    if let Some((asset, sum)) = per_asset.iter().find(|(_, s)| **s != 0) {
        return Err(LedgerError::new(
            Code::Unbalanced,
            format!("postings do not balance: {asset} legs sum to {sum}"),
        ));
    }
    for (id, delta) in &net {
        let a = &accounts[id];
        let balance = a.balance.checked_add(*delta).ok_or_else(overflow)?;
        if *delta < 0 {
            check_floor(id, a, balance - a.pending, -delta)?;
        }
    }
    let journal = new_id();
    w.j_first.push(w.e_account.len() as i32 + 1);
    w.j_count.push(postings.len() as i32);
    for (id, amount) in postings {
        let a = accounts.get_mut(id).expect("validated");
        a.balance += amount;
        a.seq += 1;
        a.dirty = true;
        a.eff_max = Some(a.eff_max.map_or(eff, |m| m.max(eff)));
        w.e_account.push(u(id));
        w.e_seq.push(a.seq);
        w.e_journal.push(u(&journal));
        w.e_owner.push(a.owner.clone());
        w.e_asset.push(a.asset.clone());
        w.e_amount.push(*amount);
        w.e_after.push(a.balance);
        w.e_eff.push(timestamp(eff));
        w.e_eff_max.push(timestamp(a.eff_max.unwrap_or(eff)));
    }
    w.j_id.push(u(&journal));
    w.j_kind.push(kind.to_string());
    w.j_key.push(it.key.clone());
    w.j_hash.push(it.hash.clone());
    w.j_hold.push(hold.as_ref().map(u));
    w.j_meta.push(it.metadata.clone());
    w.j_eff.push(timestamp(eff));
    Ok(journal)
}

/// An item's effective time: as given (RFC 3339, already validated), else now.
fn effective_micros(effective_at: &Option<String>, now: i64) -> i64 {
    effective_at
        .as_deref()
        .and_then(super::request::pg_micros)
        .unwrap_or(now)
}

fn overflow() -> LedgerError {
    LedgerError::new(
        Code::InvalidAmount,
        "amount out of range: a balance would overflow bigint",
    )
}

#[allow(clippy::too_many_arguments)]
fn apply_hold_create(
    accounts: &mut HashMap<Id, Account>,
    w: &mut Writes,
    it: &Item,
    (debit, credit, amount): (Id, Id, i64),
    expires_at: &Option<String>,
    timeout_ms: Option<i64>,
) -> Result<Id> {
    let d = account(accounts, &debit, it.module.as_deref())?;
    let c = account(accounts, &credit, it.module.as_deref())?;
    if d.asset != c.asset {
        return Err(LedgerError::new(
            Code::AssetMismatch,
            "the two accounts hold different assets",
        )
        .detail(format!(
            "{} is {}, {} is {}",
            id_str(&debit),
            d.asset,
            id_str(&credit),
            c.asset
        )));
    }
    if let Some(t) = expires_at {
        if t.as_str()
            <= chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_str()
        {
            return Err(LedgerError::new(
                Code::Malformed,
                format!("\"expires_at\" {t} is not in the future"),
            ));
        }
    }
    let pending = d.pending.checked_add(amount).ok_or_else(overflow)?;
    check_floor(&debit, d, d.balance - pending, amount)?;
    let (owner, asset) = (d.owner.clone(), d.asset.clone());
    let d = accounts.get_mut(&debit).expect("validated");
    d.pending = pending;
    d.dirty = true;
    let id = new_id();
    w.h_id.push(u(&id));
    w.h_owner.push(owner);
    w.h_debit.push(u(&debit));
    w.h_credit.push(u(&credit));
    w.h_asset.push(asset);
    w.h_amount.push(amount);
    w.h_expires.push(expires_at.clone());
    w.h_timeout.push(timeout_ms);
    w.h_key.push(it.key.clone());
    w.h_hash.push(it.hash.clone());
    w.h_meta.push(it.metadata.clone());
    Ok(id)
}

fn pending_hold<'a>(holds: &'a HashMap<Id, Hold>, id: &Id, expiring: bool) -> Result<&'a Hold> {
    let h = holds.get(id).ok_or_else(|| {
        LedgerError::new(
            Code::UnknownHold,
            format!("hold {} does not exist", id_str(id)),
        )
    })?;
    if h.status != "pending" {
        return Err(LedgerError::new(
            Code::HoldNotPending,
            format!("hold {} is already {}", id_str(id), h.status),
        ));
    }
    if h.expired && !expiring {
        return Err(LedgerError::new(
            Code::HoldExpired,
            format!("hold {} has expired", id_str(id)),
        )
        .detail("an expired hold can be neither posted nor voided; its amount is released"));
    }
    if !h.expired && expiring {
        return Err(LedgerError::new(
            Code::HoldNotPending,
            format!("hold {} has not expired yet", id_str(id)),
        ));
    }
    Ok(h)
}

#[allow(clippy::too_many_arguments)]
fn apply_hold_post(
    accounts: &mut HashMap<Id, Account>,
    holds: &mut HashMap<Id, Hold>,
    w: &mut Writes,
    it: &Item,
    hold_id: Id,
    amount: Option<i64>,
    eff: i64,
) -> Result<Id> {
    let h = pending_hold(holds, &hold_id, false)?.clone();
    let post = amount.unwrap_or(h.amount);
    if post > h.amount {
        return Err(LedgerError::new(
            Code::HoldAmountExceeded,
            format!(
                "cannot post {post} from hold {} of {}",
                id_str(&hold_id),
                h.amount
            ),
        ));
    }
    // Release the reservation first; the transfer then moves what is posted.
    {
        let d = accounts
            .get_mut(&h.debit)
            .expect("hold accounts are locked");
        d.pending -= h.amount;
        d.dirty = true;
    }
    let journal = match apply_transfer(
        accounts,
        w,
        it,
        &[(h.debit, -post), (h.credit, post)],
        "hold_post",
        eff,
        Some(hold_id),
    ) {
        Ok(j) => j,
        Err(e) => {
            accounts.get_mut(&h.debit).expect("locked").pending += h.amount;
            return Err(e);
        }
    };
    holds.get_mut(&hold_id).expect("loaded").status = "posted".into();
    w.r_id.push(u(&hold_id));
    w.r_status.push("posted".into());
    w.r_posted.push(Some(post));
    w.r_journal.push(Some(u(&journal)));
    Ok(journal)
}

fn release_hold(
    accounts: &mut HashMap<Id, Account>,
    holds: &mut HashMap<Id, Hold>,
    w: &mut Writes,
    hold_id: Id,
    status: &str,
) -> Result<()> {
    let h = pending_hold(holds, &hold_id, status == "expired")?.clone();
    let d = accounts
        .get_mut(&h.debit)
        .expect("hold accounts are locked");
    d.pending -= h.amount;
    d.dirty = true;
    holds.get_mut(&hold_id).expect("loaded").status = status.into();
    w.r_id.push(u(&hold_id));
    w.r_status.push(status.into());
    w.r_posted.push(None);
    w.r_journal.push(None);
    Ok(())
}

// Everything is written by one statement: fewer executor start-ups than a
// statement per table. Parameters: $1-$4 accounts, $5-$11 journals, $12-$19
// entries, $20-$30 new holds, $31-$34 resolved holds, then $35 accounts'
// effective_max, $36-$37 each journal's slice of the entry arrays, $38 the
// entries' effective_max. Calls without hold changes pass empty hold arrays to
// the shorter statement, which has no hold CTEs.
macro_rules! write_head {
    () => {
        "WITH acc AS (
    UPDATE payledger.accounts a SET balance = u.b, pending_debits = u.p, entry_count = u.s, effective_max = u.e
      FROM (SELECT unnest($1::uuid[]) AS id, unnest($2::int8[]) AS b, unnest($3::int8[]) AS p,
                   unnest($4::int8[]) AS s, unnest($35::timestamptz[]) AS e) AS u
     WHERE a.id = u.id),
jrn AS (
    INSERT INTO payledger.journals (id, kind, idempotency_key, request_hash, hold_id, metadata, effective_at,
                                    entry_accounts, entry_seqs)
    SELECT id, kind, k, h, hold, m::jsonb, eff, ($12::uuid[])[f : f + c - 1], ($13::int8[])[f : f + c - 1]
      FROM (SELECT unnest($5::uuid[]) AS id, unnest($6::text[]) AS kind, unnest($7::text[]) AS k,
                   unnest($8::bytea[]) AS h, unnest($9::uuid[]) AS hold, unnest($10::text[]) AS m,
                   unnest($11::timestamptz[]) AS eff, unnest($36::int4[]) AS f, unnest($37::int4[]) AS c) AS u)"
    };
}
macro_rules! write_entries {
    () => {
        "
INSERT INTO payledger.entries (account_id, seq, journal_id, owner_id, asset, amount, balance_after,
                               effective_at, effective_max)
SELECT a, s, j, o, c, n, b, eff, emax
  FROM (SELECT unnest($12::uuid[]) AS a, unnest($13::int8[]) AS s, unnest($14::uuid[]) AS j,
               unnest($15::text[]) AS o, unnest($16::text[]) AS c, unnest($17::int8[]) AS n,
               unnest($18::int8[]) AS b, unnest($19::timestamptz[]) AS eff,
               unnest($38::timestamptz[]) AS emax) AS u"
    };
}
pub(crate) use {write_entries, write_head};
const WRITE_TRANSFERS: &str = concat!(write_head!(), write_entries!());
const WRITE_ALL: &str = concat!(
    write_head!(),
    ",
new_holds AS (
    INSERT INTO payledger.holds (id, owner_id, debit_account, credit_account, asset, amount, expires_at,
                                 idempotency_key, request_hash, metadata)
    SELECT id, o, d, c, a, n,
           coalesce(e::timestamptz, pg_catalog.clock_timestamp() + t * interval '1 millisecond'), k, h, m::jsonb
      FROM (SELECT unnest($20::uuid[]) AS id, unnest($21::text[]) AS o, unnest($22::uuid[]) AS d,
                   unnest($23::uuid[]) AS c, unnest($24::text[]) AS a, unnest($25::int8[]) AS n,
                   unnest($26::text[]) AS e, unnest($27::text[]) AS k, unnest($28::bytea[]) AS h,
                   unnest($29::text[]) AS m, unnest($30::int8[]) AS t) AS u),
resolved AS (
    UPDATE payledger.holds h SET status = u.s, posted_amount = u.p, journal_id = u.j,
           resolved_at = pg_catalog.clock_timestamp()
      FROM (SELECT unnest($31::uuid[]) AS id, unnest($32::text[]) AS s, unnest($33::int8[]) AS p,
                   unnest($34::uuid[]) AS j) AS u
     WHERE h.id = u.id)",
    write_entries!()
);

// A two-leg transfer, the commonest call, in scalar parameters: a statement of
// plain VALUES initialises and runs in about half the instructions of the
// general one, whose set-returning unnests are built per execution.
// (One UPDATE for both accounts: each UPDATE node has its own start-up.)
const WRITE_PAIR: &str = "WITH acc AS (
    UPDATE payledger.accounts a
       SET balance = CASE WHEN a.id = $1 THEN $2 ELSE $7 END,
           pending_debits = CASE WHEN a.id = $1 THEN $3 ELSE $8 END,
           entry_count = CASE WHEN a.id = $1 THEN $4 ELSE $9 END,
           effective_max = CASE WHEN a.id = $1 THEN $5 ELSE $10 END
     WHERE a.id IN ($1, $6)),
jrn AS (
    INSERT INTO payledger.journals (id, kind, idempotency_key, request_hash, hold_id, metadata, effective_at,
                                    entry_accounts, entry_seqs)
    VALUES ($11, $12, $13, $14, $15, $16::jsonb, $17, ARRAY[$18, $27]::uuid[], ARRAY[$19, $28]::int8[]))
INSERT INTO payledger.entries (account_id, seq, journal_id, owner_id, asset, amount, balance_after,
                               effective_at, effective_max)
VALUES ($18, $19, $20, $21, $22, $23, $24, $25, $26), ($27, $28, $29, $30, $31, $32, $33, $34, $35)";

fn write(client: &mut SpiClient<'_>, accounts: &HashMap<Id, Account>, mut w: Writes) {
    let dirty: Vec<(&Id, &Account)> = accounts.iter().filter(|(_, a)| a.dirty).collect();
    if dirty.len() == 2
        && w.j_id.len() == 1
        && w.e_account.len() == 2
        && w.h_id.is_empty()
        && w.r_id.is_empty()
    {
        let mut args: Vec<DatumWithOid> = Vec::with_capacity(35);
        for (id, a) in dirty {
            args.push(u(id).into());
            args.push(a.balance.into());
            args.push(a.pending.into());
            args.push(a.seq.into());
            args.push(a.eff_max.map(timestamp).into());
        }
        args.push(w.j_id[0].into());
        args.push(std::mem::take(&mut w.j_kind[0]).into());
        args.push(w.j_key[0].take().into());
        args.push(w.j_hash[0].take().into());
        args.push(w.j_hold[0].into());
        args.push(std::mem::take(&mut w.j_meta[0]).into());
        args.push(w.j_eff[0].into());
        for e in 0..2 {
            args.push(w.e_account[e].into());
            args.push(w.e_seq[e].into());
            args.push(w.e_journal[e].into());
            args.push(std::mem::take(&mut w.e_owner[e]).into());
            args.push(std::mem::take(&mut w.e_asset[e]).into());
            args.push(w.e_amount[e].into());
            args.push(w.e_after[e].into());
            args.push(w.e_eff[e].into());
            args.push(w.e_eff_max[e].into());
        }
        exec(client, WRITE_PAIR, &args);
        return;
    }
    write_with(client, accounts, w, None)
}

/// Write what the items did in one statement; with `extra`, the caller's
/// statement (which includes the engine's writes) instead of the engine's own.
pub(crate) fn write_with(
    client: &mut SpiClient<'_>,
    accounts: &HashMap<Id, Account>,
    w: Writes,
    extra: Option<(&'static str, Vec<DatumWithOid>)>,
) {
    let mut ids = Vec::new();
    let mut bal = Vec::new();
    let mut pend = Vec::new();
    let mut seq = Vec::new();
    let mut eff_max = Vec::new();
    for (id, a) in accounts.iter().filter(|(_, a)| a.dirty) {
        ids.push(u(id));
        bal.push(a.balance);
        pend.push(a.pending);
        seq.push(a.seq);
        eff_max.push(a.eff_max.map(timestamp));
    }
    let holds_change = !w.h_id.is_empty() || !w.r_id.is_empty();
    if ids.is_empty() && w.j_id.is_empty() && !holds_change && extra.is_none() {
        return;
    }
    let mut args: Vec<DatumWithOid> = vec![
        array(&ids),
        array(&bal),
        array(&pend),
        array(&seq),
        array(&w.j_id),
        array(&w.j_kind),
        array(&w.j_key),
        array(&w.j_hash),
        array(&w.j_hold),
        array(&w.j_meta),
        array(&w.j_eff),
        array(&w.e_account),
        array(&w.e_seq),
        array(&w.e_journal),
        array(&w.e_owner),
        array(&w.e_asset),
        array(&w.e_amount),
        array(&w.e_after),
        array(&w.e_eff),
        array(&w.h_id),
        array(&w.h_owner),
        array(&w.h_debit),
        array(&w.h_credit),
        array(&w.h_asset),
        array(&w.h_amount),
        array(&w.h_expires),
        array(&w.h_key),
        array(&w.h_hash),
        array(&w.h_meta),
        array(&w.h_timeout),
        array(&w.r_id),
        array(&w.r_status),
        array(&w.r_posted),
        array(&w.r_journal),
        array(&eff_max),
        array(&w.j_first),
        array(&w.j_count),
        array(&w.e_eff_max),
    ];
    let sql = match extra {
        Some((sql, more)) => {
            assert!(!holds_change, "an extra statement has no hold CTEs");
            args.extend(more);
            sql
        }
        None if holds_change => WRITE_ALL,
        None => WRITE_TRANSFERS,
    };
    exec(client, sql, &args);
}
