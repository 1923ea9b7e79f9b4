//! Creating a pay-in: the hot path, in Rust.
//!
//! One call does, in one SPI connection: argument checks; the idempotency key
//! (advisory lock, then lookup); one lookup of the type, asset and pay-out
//! types; the split rule; one check of every account named; one lock of the
//! payer's accounts, the escrow and the pay-out accounts in uuid order (sharded
//! pay-out accounts excepted, as in the engine); the split of the cost over the
//! methods; the journal through the ledger engine; and one statement writing
//! the pay-in, its legs, pay-outs and first history row.
//!
//! Failures come back as `LedgerError`s (pgrx cannot raise custom SQLSTATEs);
//! `payledger.create_payin` and `retry_payin` raise them.

use crate::errors::{Code, LedgerError, Result};
use crate::ledger::engine::{self, array, exec, u, Locked};
use crate::ledger::request::{uuid_str as id_str, Id, Item, Op, MAX_KEY_LEN};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;

/// What `create_payin` (or `retry_payin`, with `predecessor`) asks for.
pub struct Request {
    pub payer: Option<String>,
    pub ptype: Option<String>,
    pub asset: Option<String>,
    pub cost: Option<i64>,
    pub methods: Option<Value>,
    pub payouts: Option<Value>,
    pub split: Option<String>,
    pub payees: Option<Value>,
    pub key: Option<String>,
    pub parent: Option<Id>,
    pub metadata: Option<Value>,
    pub predecessor: Option<Predecessor>,
    pub policy: Option<String>,
}

pub struct Predecessor {
    pub id: Id,
    pub genesis: Option<Id>,
    pub retry_count: i32,
}

pub struct Created {
    pub id: Id,
    pub state: String,
    pub custodial: i64,
    pub external: i64,
    /// an idempotent repeat: the first call's pay-in, nothing written now
    pub replayed: bool,
}

#[derive(Debug)]
struct Method {
    account: Id,
    amount: Option<i64>,
    options: Value,
}

#[derive(Debug)]
struct External {
    rail: String,
    amount: Option<i64>,
    unit: i64,
    p2p: bool,
    account: Option<Id>,
    options: Value,
}

#[derive(Debug)]
struct Payout {
    ptype: String,
    account: Id,
    amount: i64,
    role: Option<String>,
}

fn err(code: Code, msg: impl Into<String>) -> LedgerError {
    LedgerError::new(code, msg)
}

/// `left(v::text, 60)`, as the messages show a bad JSON value.
fn shown(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(v) => v.to_string().chars().take(60).collect(),
    }
}

fn json_uuid(v: Option<&Value>, what: &str) -> Result<Id> {
    v.and_then(Value::as_str)
        .filter(|s| s.len() == 36)
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .map(|u| *u.as_bytes())
        .ok_or_else(|| {
            err(
                Code::Malformed,
                format!("{what} must be a uuid string, got {}", shown(v)),
            )
        })
}

/// A whole, non-negative number of minor units.
fn json_amount(v: Option<&Value>, what: &str) -> Result<i64> {
    let n = v.and_then(|v| match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        _ => None,
    });
    n.filter(|n| *n >= 0).ok_or_else(|| {
        err(
            Code::InvalidAmount,
            format!(
                "{what} must be a whole non-negative number of minor units, got {}",
                shown(v)
            ),
        )
    })
}

pub fn create(mut r: Request) -> Result<Created> {
    let (Some(payer), Some(ptype), Some(asset), Some(cost), Some(methods)) = (
        r.payer.take(),
        r.ptype.take(),
        r.asset.take(),
        r.cost,
        r.methods.take(),
    ) else {
        return Err(err(
            Code::NullValue,
            "payer, type, asset, cost and methods must not be null",
        ));
    };
    if cost <= 0 {
        return Err(err(
            Code::InvalidAmount,
            format!("cost must be positive, got {cost}"),
        ));
    }
    if payer.is_empty() {
        return Err(err(Code::Malformed, "payer must not be empty"));
    }
    let metadata = r.metadata.take().unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        return Err(err(Code::Malformed, "metadata must be a JSON object"));
    }
    if let Some(k) = &r.key {
        if k.is_empty() || k.chars().count() > MAX_KEY_LEN {
            return Err(err(
                Code::Malformed,
                "idempotency_key must be 1 to 255 characters",
            ));
        }
    }
    Spi::connect_mut(|client| {
        let hash = r.key.as_ref().map(|_| {
            let canonical = json!([
                payer,
                ptype,
                asset,
                cost,
                methods,
                r.payouts,
                r.split,
                r.payees,
                r.parent.as_ref().map(id_str),
                metadata,
                r.predecessor.as_ref().map(|p| id_str(&p.id)),
                r.policy
            ]);
            Sha256::digest(canonical.to_string().as_bytes()).to_vec()
        });
        // A replay returns the first pay-in; concurrent calls with one key queue here.
        if let (Some(key), Some(hash)) = (&r.key, &hash) {
            exec(
                client,
                "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.payin:' || $1, 0))",
                &[DatumWithOid::from(key.as_str())],
            );
            let found = exec(
                client,
                "SELECT id, request_hash, state::text, custodial_amount, external_amount \
                   FROM payledger.payins WHERE idempotency_key = $1",
                &[DatumWithOid::from(key.as_str())],
            )
            .next()
            .map(|row| {
                let id: Uuid = row.get(1).ok().flatten().expect("id");
                let h: Vec<u8> = row.get(2).ok().flatten().unwrap_or_default();
                (
                    *id.as_bytes(),
                    h,
                    Created {
                        id: *id.as_bytes(),
                        state: row.get(3).ok().flatten().unwrap_or_default(),
                        custodial: row.get(4).ok().flatten().unwrap_or_default(),
                        external: row.get(5).ok().flatten().unwrap_or_default(),
                        replayed: true,
                    },
                )
            });
            if let Some((id, h, created)) = found {
                if &h != hash {
                    return Err(err(
                        Code::IdempotencyConflict,
                        format!("idempotency key '{key}' was used for another request"),
                    )
                    .detail(format!("pay-in {}", id_str(&id))));
                }
                return Ok(created);
            }
        }
        open(
            client, &payer, &ptype, &asset, cost, methods, &r, metadata, hash,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn open(
    client: &mut SpiClient<'_>,
    payer: &str,
    ptype: &str,
    asset: &str,
    cost: i64,
    methods: Value,
    r: &Request,
    metadata: Value,
    hash: Option<Vec<u8>>,
) -> Result<Created> {
    let (allow_external, withdrawal) = payin_type(client, ptype, asset)?;
    let parent_state = match &r.parent {
        Some(p) => Some(lock_parent(client, p)?),
        None => None,
    };

    let (legs, ext) = parse_methods(&methods)?;
    if ext.is_some() && !allow_external {
        return Err(err(
            Code::Malformed,
            format!("pay-ins of type {ptype} are paid from balances only"),
        ));
    }
    if ext.is_some() && r.parent.is_some() {
        return Err(err(
            Code::Malformed,
            "a child pay-in is paid from balances only",
        ));
    }
    if legs
        .iter()
        .map(|l| l.account)
        .collect::<BTreeSet<_>>()
        .len()
        != legs.len()
    {
        return Err(err(Code::Malformed, "an account appears twice in methods"));
    }

    let payouts = resolve_payouts(client, r, cost)?;

    // Where external money comes from, and where custodial money waits.
    let ext_account = match ext.as_ref() {
        None => None,
        Some(External {
            account: Some(a), ..
        }) => {
            check_external_account(client, a, asset)?;
            Some(*a)
        }
        Some(e) => Some(open_account(
            client,
            "payledger",
            asset,
            "provider_clearing",
            &e.rail,
            true,
            None,
        )),
    };
    // Custodial money that may have to wait needs the payer's escrow account
    // (an invoice-only pay-in has none to keep).
    let escrow = if !legs.is_empty() && (ext.is_some() || withdrawal || r.parent.is_some()) {
        Some(open_account(
            client,
            payer,
            asset,
            "payin_escrow",
            "main",
            false,
            // the pay-in module's own: the generic API cannot move it
            Some("payin"),
        ))
    } else {
        None
    };

    // Lock, in one pass in uuid order, the payer's accounts, the escrow and
    // the pay-out accounts (a sharded pay-out account gets a free shard
    // instead, as in any engine call).
    let debited: HashSet<Id> = legs.iter().map(|l| l.account).collect();
    let all: BTreeSet<Id> = legs
        .iter()
        .map(|l| l.account)
        .chain(payouts.iter().map(|p| p.account))
        .chain(escrow)
        .collect();
    let mut locked = engine::lock_accounts(client, &all, &debited);

    let owners = check_accounts(&locked, &legs, &payouts, payer, asset)?;
    let p2p_min = match ext.as_ref() {
        Some(e) if e.p2p => p2p_share(&payouts)?,
        _ => 0,
    };
    let (amounts, remaining) = pay_from_balances(&locked, &legs, ext.as_ref(), cost, p2p_min)?;
    let custodial = cost - remaining;
    let state = match (&parent_state, remaining > 0) {
        (Some(s), _) => s.clone(),
        (None, true) if ext.as_ref().is_some_and(|e| e.p2p) => "PENDING_INVOICE_WRAP".into(),
        (None, true) => "PENDING_INVOICE_CREATION".into(),
        (None, false) if withdrawal => "PENDING_WITHDRAWAL".into(),
        (None, false) => "PAID".into(),
    };

    let id = engine::new_id();
    let new = NewPayin {
        id,
        payer,
        ptype,
        asset,
        cost,
        state: &state,
        remaining,
        ext: ext.as_ref(),
        ext_account,
        escrow,
        request: r,
        hash,
        metadata: &metadata,
    };
    write_payin(client, &mut locked, &new, &legs, &amounts, &payouts, owners)?;
    Ok(Created {
        id,
        state,
        custodial,
        external: remaining,
        replayed: false,
    })
}

/// A pay-in about to be written.
struct NewPayin<'a> {
    id: Id,
    payer: &'a str,
    ptype: &'a str,
    asset: &'a str,
    cost: i64,
    state: &'a str,
    remaining: i64,
    ext: Option<&'a External>,
    ext_account: Option<Id>,
    escrow: Option<Id>,
    request: &'a Request,
    hash: Option<Vec<u8>>,
    metadata: &'a Value,
}

#[allow(clippy::too_many_arguments)]
fn write_payin(
    client: &mut SpiClient<'_>,
    locked: &mut Locked,
    n: &NewPayin<'_>,
    legs: &[Method],
    amounts: &[i64],
    payouts: &[Payout],
    owners: Vec<String>,
) -> Result<()> {
    let custodial = n.cost - n.remaining;
    // The pay-in, its legs, pay-outs and first history row are written by the
    // engine's statement, with the journal of the custodial legs: straight to
    // the pay-outs when PAID now, else into escrow.
    let mut leg_method: Vec<String> = vec!["custodial".into(); legs.len()];
    let mut leg_account: Vec<Option<Uuid>> = legs.iter().map(|l| Some(u(&l.account))).collect();
    let mut leg_amount = amounts.to_vec();
    let mut leg_options: Vec<String> = legs.iter().map(|l| l.options.to_string()).collect();
    if let Some(e) = n.ext {
        leg_method.push(e.rail.clone());
        leg_account.push(None);
        leg_amount.push(n.remaining);
        leg_options.push(e.options.to_string());
    }
    let pred = n.request.predecessor.as_ref();
    let rows: Vec<DatumWithOid> = vec![
        DatumWithOid::from(u(&n.id)),
        DatumWithOid::from(n.payer),
        DatumWithOid::from(n.ptype),
        DatumWithOid::from(n.asset),
        DatumWithOid::from(n.cost),
        DatumWithOid::from(n.state),
        DatumWithOid::from(custodial),
        DatumWithOid::from(n.remaining),
        DatumWithOid::from(n.ext.filter(|_| n.remaining > 0).map(|e| e.rail.clone())),
        DatumWithOid::from(n.ext_account.filter(|_| n.remaining > 0).map(|a| u(&a))),
        DatumWithOid::from(n.escrow.map(|a| u(&a))),
        DatumWithOid::from(n.request.parent.map(|p| u(&p))),
        DatumWithOid::from(pred.map(|p| u(&p.genesis.unwrap_or(p.id)))),
        DatumWithOid::from(pred.map(|p| u(&p.id))),
        DatumWithOid::from(pred.map_or(0, |p| p.retry_count + 1)),
        DatumWithOid::from(n.request.policy.clone()),
        DatumWithOid::from(n.request.key.clone()),
        DatumWithOid::from(n.hash.clone()),
        DatumWithOid::from(n.metadata.to_string()),
        array(&leg_method),
        array(&leg_account),
        array(&leg_amount),
        array(&leg_options),
        array(&types_of(payouts)),
        array(&payouts.iter().map(|p| u(&p.account)).collect::<Vec<_>>()),
        array(&owners),
        array(&payouts.iter().map(|p| p.amount).collect::<Vec<_>>()),
        array(&payouts.iter().map(|p| p.role.clone()).collect::<Vec<_>>()),
    ];
    if custodial > 0 {
        let mut postings: Vec<(Id, i64)> = legs
            .iter()
            .zip(amounts)
            .filter(|(_, a)| **a > 0)
            .map(|(l, a)| (l.account, -a))
            .collect();
        if n.state == "PAID" {
            postings.extend(payouts.iter().map(|p| (p.account, p.amount)));
        } else {
            postings.push((n.escrow.expect("an escrow for a pending pay-in"), custodial));
        }
        let item = Item {
            op: Op::Transfer {
                postings,
                kind: if n.state == "PAID" {
                    "payin"
                } else {
                    "payin_open"
                }
                .into(),
                effective_at: None,
            },
            key: None,
            hash: None,
            metadata: json!({ "payin": id_str(&n.id) }).to_string(),
            module: Some("payin".into()),
        };
        engine::post_locked(client, locked, &item, Some((WRITE_PAYIN, rows)))?;
    } else {
        engine::write_with(
            client,
            &locked.accounts,
            Default::default(),
            Some((WRITE_PAYIN, rows)),
        );
    }
    Ok(())
}

/// The pay-outs, explicit or from a split rule: they sum to the cost and
/// their types are registered.
fn resolve_payouts(client: &mut SpiClient<'_>, r: &Request, cost: i64) -> Result<Vec<Payout>> {
    let payouts = match (&r.payouts, &r.split) {
        (Some(p), None) => parse_payouts(p)?,
        (None, Some(rule)) => split(client, rule, cost, r.payees.as_ref())?,
        _ => return Err(err(Code::Malformed, "give either payouts or split")),
    };
    let total: i128 = payouts.iter().map(|p| p.amount as i128).sum();
    if total != cost as i128 {
        return Err(err(
            Code::UnbalancedPayin,
            format!("pay-outs sum to {total}, not the cost {cost}"),
        ));
    }
    let types: Vec<String> = payouts.iter().map(|p| p.ptype.clone()).collect();
    if let Some(row) = exec(
        client,
        "SELECT x FROM pg_catalog.unnest($1::text[]) x \
          WHERE NOT EXISTS (SELECT 1 FROM payledger.payout_types t WHERE t.type = x) LIMIT 1",
        &[DatumWithOid::from(types)],
    )
    .next()
    {
        let t: String = row.get(1).ok().flatten().unwrap_or_default();
        return Err(err(
            Code::UnknownType,
            format!("pay-out type '{t}' is not registered"),
        ));
    }
    Ok(payouts)
}

/// The pay-in type's flags (allow_external, withdrawal); the asset must exist.
fn payin_type(client: &mut SpiClient<'_>, ptype: &str, asset: &str) -> Result<(bool, bool)> {
    let row = exec(
        client,
        "SELECT t.allow_external, t.withdrawal, \
                EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = $2) \
           FROM (SELECT 1) one LEFT JOIN payledger.payin_types t ON t.type = $1",
        &[DatumWithOid::from(ptype), DatumWithOid::from(asset)],
    )
    .next()
    .expect("one row");
    let allow_external: Option<bool> = row.get(1).ok().flatten();
    let withdrawal: bool = row.get(2).ok().flatten().unwrap_or(false);
    let asset_exists: bool = row.get(3).ok().flatten().unwrap_or(false);
    let Some(allow_external) = allow_external else {
        return Err(err(
            Code::UnknownType,
            format!("pay-in type '{ptype}' is not registered"),
        ));
    };
    if !asset_exists {
        return Err(err(
            Code::UnknownAsset,
            format!("asset '{asset}' does not exist"),
        ));
    }
    Ok((allow_external, withdrawal))
}

/// A child joins a pending parent that is not itself a child. The parent's
/// row is locked the way an UPDATE of it would lock it, so moving the parent
/// later in this transaction is no lock upgrade (which could deadlock).
/// Returns the parent's state, the child's first state.
fn lock_parent(client: &mut SpiClient<'_>, parent: &Id) -> Result<String> {
    let row = exec(
        client,
        "SELECT state::text, parent_id IS NOT NULL FROM payledger.payins WHERE id = $1 FOR NO KEY UPDATE",
        &[DatumWithOid::from(u(parent))],
    )
    .next();
    let Some(row) = row else {
        return Err(err(
            Code::UnknownPayin,
            format!("pay-in {} does not exist", id_str(parent)),
        ));
    };
    let state: String = row.get(1).ok().flatten().unwrap_or_default();
    let is_child: bool = row.get(2).ok().flatten().unwrap_or(false);
    if matches!(state.as_str(), "PAID" | "FAILED" | "CANCELLED") || is_child {
        return Err(err(
            Code::InvalidTransition,
            format!(
                "pay-in {} is {state} and cannot take a child",
                id_str(parent)
            ),
        ));
    }
    Ok(state)
}

/// Every account named exists, holds the asset, is not a shard, and a
/// method's account is the payer's. Returns the owner of each pay-out.
fn check_accounts(
    locked: &Locked,
    legs: &[Method],
    payouts: &[Payout],
    payer: &str,
    asset: &str,
) -> Result<Vec<String>> {
    let named = legs
        .iter()
        .map(|l| (l.account, true))
        .chain(payouts.iter().map(|p| (p.account, false)));
    for (id, is_method) in named {
        let Some(a) = locked.target(&id) else {
            return Err(err(
                Code::UnknownAccount,
                format!("account {} does not exist", id_str(&id)),
            ));
        };
        if a.asset != asset {
            return Err(err(
                Code::AssetMismatch,
                format!(
                    "account {} holds {}, the pay-in costs {asset}",
                    id_str(&id),
                    a.asset
                ),
            ));
        }
        // methods and pay-outs are the application's accounts, never one a
        // module manages (a payer's escrow, a credit grant)
        if a.managed_by.is_some() {
            return Err(engine::managed(&id, a));
        }
        if let (Some(p), false) = (a.parent, locked.redirect.contains_key(&id)) {
            return Err(err(
                Code::Malformed,
                format!("account {} is a shard of {}", id_str(&id), id_str(&p)),
            ));
        }
        if is_method && a.owner != payer {
            return Err(err(
                Code::Malformed,
                format!(
                    "account {} belongs to {}, not to the payer {payer}",
                    id_str(&id),
                    a.owner
                ),
            ));
        }
    }
    Ok(payouts
        .iter()
        .map(|p| {
            locked
                .target(&p.account)
                .map(|a| a.owner.clone())
                .unwrap_or_default()
        })
        .collect())
}

/// What each method pays, in order, and the external remainder.
/// What a p2p pay-in's invoice must cover at least: the receiver's share
/// (the pay-out with role "receiver", forwarded to the receiver's wallet)
/// and the routing fee budget (role "routing_fee", optional). The node must
/// have received what it forwards.
fn p2p_share(payouts: &[Payout]) -> Result<i64> {
    let role = |r: &str| {
        payouts
            .iter()
            .filter(|p| p.role.as_deref() == Some(r))
            .map(|p| p.amount)
            .collect::<Vec<_>>()
    };
    let (receiver, fee) = (role("receiver"), role("routing_fee"));
    if receiver.len() != 1 || fee.len() > 1 {
        return Err(err(
            Code::Malformed,
            "a p2p pay-in needs exactly one pay-out with role \"receiver\" (forwarded to the receiver's \
             wallet) and at most one with role \"routing_fee\" (the routing fee budget)",
        ));
    }
    Ok(receiver[0] + fee.first().copied().unwrap_or(0))
}

fn pay_from_balances(
    locked: &Locked,
    legs: &[Method],
    ext: Option<&External>,
    cost: i64,
    p2p_min: i64,
) -> Result<(Vec<i64>, i64)> {
    let can_spend = |id: &Id, want: i64| -> i64 {
        match locked.accounts.get(id) {
            Some(a) => match a.floor {
                None => want,
                Some(floor) => (a.balance - a.pending + a.in_shards - floor).max(0),
            },
            None => 0,
        }
    };

    // What each method pays, in order.
    let mut amounts: Vec<i64> = Vec::with_capacity(legs.len());
    let explicit = legs
        .first()
        .map_or(ext.is_some_and(|e| e.amount.is_some()), |l| {
            l.amount.is_some()
        });
    let remaining;
    if explicit {
        let paid: i128 = legs.iter().map(|l| l.amount.unwrap_or(0) as i128).sum();
        let ext_amount = ext.and_then(|e| e.amount).unwrap_or(0) as i128;
        if paid + ext_amount != cost as i128 {
            return Err(err(
                Code::UnbalancedPayin,
                format!("methods sum to {}, not the cost {cost}", paid + ext_amount),
            ));
        }
        for l in legs {
            let want = l.amount.unwrap_or(0);
            let have = can_spend(&l.account, want);
            if want > have {
                return Err(err(
                    Code::InsufficientFunds,
                    format!("insufficient funds in account {}", id_str(&l.account)),
                )
                .detail(format!("available {have}, needed {want}")));
            }
            amounts.push(want);
        }
        remaining = ext_amount as i64;
        if remaining < p2p_min {
            return Err(err(
                Code::UnbalancedPayin,
                format!(
                    "a p2p pay-in's invoice must cover the receiver's share and the routing fee \
                     budget ({p2p_min}), not {remaining}"
                ),
            ));
        }
    } else {
        // (balances never pay what a p2p pay-in forwards: the invoice does)
        let mut budget = cost - p2p_min;
        for l in legs {
            let take = budget.min(can_spend(&l.account, budget));
            amounts.push(take);
            budget -= take;
        }
        let mut left = cost - amounts.iter().sum::<i64>();
        // The external remainder is a whole number of units (1,000 msat for a
        // Lightning invoice): pay that much less from the last balances.
        let unit = ext.map_or(1, |e| e.unit);
        if left > 0 && left % unit != 0 {
            let rounded = cost.min((left / unit + 1).saturating_mul(unit));
            let mut less = rounded - left;
            left = rounded;
            for a in amounts.iter_mut().rev() {
                let d = less.min(*a);
                *a -= d;
                less -= d;
            }
        }
        if left > 0 && ext.is_none() {
            return Err(err(
                Code::InsufficientFunds,
                format!(
                    "insufficient funds: the payer's balances cover {} of {cost}",
                    cost - left
                ),
            ));
        }
        remaining = left;
    }
    Ok((amounts, remaining))
}

// The pay-in's rows, written by the engine's statement (its parameters $1-$38)
// from $39 on; the pay-in's journal is the statement's first ($5[1]).
macro_rules! payin_rows {
    () => {
        ",
p AS (
    INSERT INTO payledger.payins (id, owner_id, type, asset, cost, state, initial_state, state_changed_at,
                                  created_at, custodial_amount, external_amount, external_method,
                                  external_account, escrow_account, open_journal, paid_journal, parent_id,
                                  genesis_id, predecessor_id, retry_count, retry_policy, idempotency_key,
                                  request_hash, metadata)
    VALUES ($39, $40, $41, $42, $43, $44::payledger.payin_state, $44::payledger.payin_state,
            pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp(), $45, $46, $47, $48, $49,
            ($5::uuid[])[1], CASE WHEN $44 = 'PAID' THEN ($5::uuid[])[1] END,
            $50, $51, $52, $53, $54, $55, $56, $57::jsonb)),
l AS (
    INSERT INTO payledger.payin_legs (payin_id, seq, owner_id, method, account_id, amount, options)
    SELECT $39, n, $40, m, a, x, o::jsonb
      FROM unnest($58::text[], $59::uuid[], $60::int8[], $61::text[]) WITH ORDINALITY u(m, a, x, o, n)),
o AS (
    INSERT INTO payledger.payouts (payin_id, seq, type, account_id, owner_id, amount, role)
    SELECT $39, n, t, a, w, x, r
      FROM unnest($62::text[], $63::uuid[], $64::text[], $65::int8[], $66::text[]) WITH ORDINALITY u(t, a, w, x, r, n)),
h AS (
    INSERT INTO payledger.payin_history (payin_id, to_state, from_state, owner_id, failure_reason, at)
    VALUES ($39, $44::payledger.payin_state, NULL, $40, NULL, pg_catalog.clock_timestamp()))"
    };
}
const WRITE_PAYIN: &str = concat!(
    engine::write_head!(),
    payin_rows!(),
    engine::write_entries!()
);

/// An external rail's clearing account, when the caller names it.
fn check_external_account(client: &mut SpiClient<'_>, id: &Id, asset: &str) -> Result<()> {
    let row = exec(
        client,
        "SELECT asset, parent_id IS NOT NULL FROM payledger.accounts WHERE id = $1",
        &[DatumWithOid::from(u(id))],
    )
    .next();
    let Some(row) = row else {
        return Err(err(
            Code::UnknownAccount,
            format!("account {} does not exist", id_str(id)),
        ));
    };
    let a_asset: String = row.get(1).ok().flatten().unwrap_or_default();
    if a_asset != asset {
        return Err(err(
            Code::AssetMismatch,
            format!(
                "account {} holds {a_asset}, the pay-in costs {asset}",
                id_str(id)
            ),
        ));
    }
    if row.get::<bool>(2).ok().flatten().unwrap_or(false) {
        return Err(err(
            Code::Malformed,
            format!("account {} is a shard", id_str(id)),
        ));
    }
    Ok(())
}

fn types_of(payouts: &[Payout]) -> Vec<String> {
    payouts.iter().map(|p| p.ptype.clone()).collect()
}

/// The id of (owner, asset, kind, name), opened if missing.
fn open_account(
    client: &mut SpiClient<'_>,
    owner: &str,
    asset: &str,
    kind: &str,
    name: &str,
    allow_negative: bool,
    managed_by: Option<&str>,
) -> Id {
    let row = exec(
        client,
        "WITH ins AS (
            INSERT INTO payledger.accounts (id, owner_id, asset, kind, name, allow_negative, min_available, managed_by)
            VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 THEN -9223372036854775808 ELSE 0 END, $7)
            ON CONFLICT (owner_id, asset, kind, name) DO NOTHING RETURNING id)
         SELECT id FROM ins
         UNION ALL
         SELECT id FROM payledger.accounts WHERE owner_id = $2 AND asset = $3 AND kind = $4 AND name = $5",
        &[
            DatumWithOid::from(u(&engine::new_id())),
            DatumWithOid::from(owner),
            DatumWithOid::from(asset),
            DatumWithOid::from(kind),
            DatumWithOid::from(name),
            DatumWithOid::from(allow_negative),
            DatumWithOid::from(managed_by),
        ],
    )
    .next();
    // Opened by a concurrent transaction that committed while the insert
    // waited on it: not in this statement's snapshot, but in the next one's.
    let row = row.or_else(|| {
        exec(
            client,
            "SELECT id FROM payledger.accounts WHERE owner_id = $1 AND asset = $2 AND kind = $3 AND name = $4",
            &[
                DatumWithOid::from(owner),
                DatumWithOid::from(asset),
                DatumWithOid::from(kind),
                DatumWithOid::from(name),
            ],
        )
        .next()
    });
    let id: Uuid = row
        .and_then(|r| r.get(1).ok().flatten())
        .unwrap_or_else(|| {
            pgrx::error!("payledger: account {owner}/{asset}/{kind}/{name} vanished")
        });
    *id.as_bytes()
}

fn parse_methods(methods: &Value) -> Result<(Vec<Method>, Option<External>)> {
    let list = methods
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err(Code::Malformed, "methods must be a non-empty JSON array"))?;
    let mut legs = Vec::new();
    let mut ext = None;
    let mut explicit = None;
    for (i, m) in list.iter().enumerate() {
        let n = i + 1;
        let obj = m
            .as_object()
            .filter(|o| o.contains_key("account") != o.contains_key("external"))
            .ok_or_else(|| {
                err(
                    Code::Malformed,
                    format!(
                        "method {n} must be {{\"account\": <uuid>}} or {{\"external\": <rail>}}"
                    ),
                )
            })?;
        let has_amount = obj.contains_key("amount");
        if *explicit.get_or_insert(has_amount) != has_amount {
            return Err(err(
                Code::Malformed,
                "give an amount for every method or for none",
            ));
        }
        let amount = if has_amount {
            let a = json_amount(obj.get("amount"), "a method's amount")?;
            if a == 0 {
                return Err(err(
                    Code::InvalidAmount,
                    format!("method {n} has a zero amount"),
                ));
            }
            Some(a)
        } else {
            None
        };
        if let Some(rail) = obj.get("external") {
            let rail = rail
                .as_str()
                .filter(|r| n == list.len() && !r.is_empty() && *r != "custodial")
                .ok_or_else(|| {
                    err(
                        Code::Malformed,
                        "the external method must be the last one and name its rail (e.g. \"invoice\")",
                    )
                })?;
            let unit = match obj.get("unit") {
                None => 1,
                Some(v) => match json_amount(Some(v), "unit")? {
                    0 => return Err(err(Code::Malformed, "unit must be positive")),
                    u => u,
                },
            };
            let p2p = match obj.get("p2p") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(Code::Malformed, "\"p2p\" must be true or false")),
            };
            let account = match obj.get("account") {
                None => None,
                Some(v) => Some(json_uuid(Some(v), "the external account")?),
            };
            ext = Some(External {
                rail: rail.to_string(),
                amount,
                unit,
                p2p,
                account,
                options: m.clone(),
            });
        } else {
            legs.push(Method {
                account: json_uuid(obj.get("account"), "a method's account")?,
                amount,
                options: m.clone(),
            });
        }
    }
    Ok((legs, ext))
}

fn parse_payouts(payouts: &Value) -> Result<Vec<Payout>> {
    let list = payouts
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err(Code::Malformed, "payouts must be a non-empty JSON array"))?;
    list.iter()
        .map(|p| {
            let ptype = p
                .get("type")
                .and_then(Value::as_str)
                .filter(|_| p.is_object())
                .ok_or_else(|| {
                    err(
                        Code::Malformed,
                        format!(
                            "each pay-out is {{\"type\", \"account\", \"amount\"}}: {}",
                            p.to_string().chars().take(80).collect::<String>()
                        ),
                    )
                })?;
            let account = json_uuid(p.get("account"), "a pay-out's account")?;
            let amount = json_amount(p.get("amount"), "a pay-out's amount")?;
            if amount == 0 {
                return Err(err(
                    Code::InvalidAmount,
                    "a pay-out's amount must be positive",
                ));
            }
            Ok(Payout {
                ptype: ptype.to_string(),
                account,
                amount,
                role: p.get("role").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// The pay-outs a split rule gives for a cost: each share floored to a whole
/// minor unit, the rounding remainder to the rule's remainder role, shares
/// that round to nothing left out.
fn split(
    client: &mut SpiClient<'_>,
    rule: &str,
    cost: i64,
    payees: Option<&Value>,
) -> Result<Vec<Payout>> {
    let row = exec(
        client,
        "SELECT shares, remainder_role FROM payledger.split_rules WHERE name = $1",
        &[DatumWithOid::from(rule)],
    )
    .next()
    .ok_or_else(|| {
        err(
            Code::UnknownType,
            format!("split rule '{rule}' does not exist"),
        )
    })?;
    let shares: pgrx::JsonB = row.get(1).ok().flatten().expect("shares");
    let rest: String = row.get(2).ok().flatten().unwrap_or_default();
    split_shares(rule, &shares.0, &rest, cost, payees)
}

fn split_shares(
    rule: &str,
    shares: &Value,
    rest: &str,
    cost: i64,
    payees: Option<&Value>,
) -> Result<Vec<Payout>> {
    if payees.is_some_and(|p| !p.is_object()) {
        return Err(err(
            Code::Malformed,
            "payees must be a JSON object of role -> account",
        ));
    }
    let mut out = Vec::new();
    let mut given: i64 = 0;
    for s in shares.as_array().into_iter().flatten() {
        let role = s.get("role").and_then(Value::as_str).unwrap_or_default();
        let account = s
            .get("account")
            .or_else(|| payees.and_then(|p| p.get(role)))
            .ok_or_else(|| {
                err(
                    Code::Malformed,
                    format!("split rule {rule} needs an account for role '{role}'"),
                )
            })?;
        let percent = s
            .get("percent")
            .map(|p| Decimal::from_str(&p.to_string()))
            .and_then(|p| p.ok())
            .unwrap_or_default();
        let amount = (Decimal::from(cost) * percent / Decimal::from(100))
            .floor()
            .to_i64()
            .unwrap_or(0);
        given += amount;
        out.push(Payout {
            ptype: s
                .get("payout_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            account: json_uuid(Some(account), "a payee's account")?,
            amount,
            role: Some(role.to_string()),
        });
    }
    if let Some(p) = out.iter_mut().find(|p| p.role.as_deref() == Some(rest)) {
        p.amount += cost - given;
    }
    out.retain(|p| p.amount > 0);
    Ok(out)
}

/// `split_shares` as JSON, for `payledger.split_payouts` (a preview).
pub fn split_json(rule: &str, cost: i64, payees: Option<&Value>) -> Result<Value> {
    let payouts = Spi::connect_mut(|client| split(client, rule, cost, payees))?;
    Ok(Value::Array(
        payouts
            .iter()
            .map(|p| {
                json!({"type": p.ptype, "account": id_str(&p.account), "amount": p.amount, "role": p.role})
            })
            .collect(),
    ))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn account(n: u8) -> String {
        uuid::Uuid::from_bytes([n; 16]).to_string()
    }

    #[test]
    fn split_floors_each_share_and_gives_the_rest_to_one_role() {
        let shares = json!([
            {"role": "receiver", "payout_type": "ZAP", "percent": 70},
            {"role": "founder", "payout_type": "TERRITORY_REVENUE", "percent": 21},
            {"role": "pool", "payout_type": "REWARDS_POOL", "percent": 9, "account": account(3)}
        ]);
        let payees = json!({"receiver": account(1), "founder": account(2)});
        let out = split_shares("zap", &shares, "pool", 1001, Some(&payees)).unwrap();
        let amounts: Vec<i64> = out.iter().map(|p| p.amount).collect();
        assert_eq!(amounts, vec![700, 210, 91]);
        assert_eq!(amounts.iter().sum::<i64>(), 1001);
        // exact decimal percents, and shares that round to nothing are left out
        let shares = json!([
            {"role": "a", "payout_type": "X", "percent": 97.5, "account": account(1)},
            {"role": "b", "payout_type": "X", "percent": 2.5, "account": account(2)}
        ]);
        let out = split_shares("r", &shares, "a", 39, None).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].amount, 39);
        let out = split_shares("r", &shares, "a", 40, None).unwrap();
        assert_eq!(
            out.iter().map(|p| p.amount).collect::<Vec<_>>(),
            vec![39, 1]
        );
    }

    #[test]
    fn split_needs_an_account_for_every_role() {
        let shares = json!([{"role": "founder", "payout_type": "X", "percent": 100}]);
        let e = split_shares("r", &shares, "founder", 10, Some(&json!({}))).unwrap_err();
        assert_eq!(e.code.sqlstate(), "22023");
        let e = split_shares("r", &shares, "founder", 10, Some(&json!([]))).unwrap_err();
        assert_eq!(e.code.sqlstate(), "22023");
    }

    #[test]
    fn amounts_are_whole_non_negative_numbers() {
        assert_eq!(json_amount(Some(&json!(5)), "x").unwrap(), 5);
        assert_eq!(json_amount(Some(&json!(2e3)), "x").unwrap(), 2000);
        for bad in [json!(1.5), json!(-1), json!("5"), json!(null)] {
            assert_eq!(
                json_amount(Some(&bad), "x").unwrap_err().code.sqlstate(),
                "PL001"
            );
        }
        assert!(json_uuid(Some(&json!("nope")), "x").is_err());
        assert!(json_uuid(Some(&json!(account(7))), "x").is_ok());
    }

    #[test]
    fn methods_parse_in_order_with_one_external_rail_last() {
        let (legs, ext) = parse_methods(&json!([
            {"account": account(1)}, {"account": account(2)}, {"external": "invoice", "unit": 1000}
        ]))
        .unwrap();
        assert_eq!(legs.len(), 2);
        let ext = ext.unwrap();
        assert_eq!(
            (ext.rail.as_str(), ext.unit, ext.p2p),
            ("invoice", 1000, false)
        );
        for bad in [
            json!([]),
            json!([{"external": "invoice"}, {"account": account(1)}]),
            json!([{"account": account(1), "amount": 5}, {"external": "invoice"}]),
            json!([{"account": account(1), "external": "invoice"}]),
            json!([{"external": "invoice", "unit": 0}]),
            json!([{"external": "invoice", "p2p": "yes"}]),
        ] {
            assert_eq!(
                parse_methods(&bad).unwrap_err().code.sqlstate(),
                "22023",
                "{bad}"
            );
        }
        assert_eq!(
            parse_methods(&json!([{"account": account(1), "amount": 0}]))
                .unwrap_err()
                .code
                .sqlstate(),
            "PL001"
        );
    }
}
