//! Validation of requests: pure functions of the request alone.
//!
//! The APIs call them before proposing (so a bad request gets its error at
//! once) and [`crate::kv::execute`] calls them again when applying (so an
//! invalid command that reached the log fails the same way on every
//! replica, and nothing below has to cope with malformed input).
//!
//! The rules are etcd's (`checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest` and `checkIntervals` of etcd's
//! v3rpc layer), checked in the same order so the same request gets the
//! same error, plus RaftKV's own:
//! - a put's key is 1..=[`MAX_KEY_BYTES`] bytes and its value at most
//!   [`MAX_VALUE_BYTES`]; the keys of ranges, deletes and compares are
//!   bounds, so they only must not be empty (a paging client asks for
//!   `last_key + "\0"`, which may be one byte longer than any key);
//! - numbers that have no meaning when negative are refused: a range's
//!   `limit`, `revision` and min/max filters, a put's `lease`, a
//!   compaction's `revision`. Compare targets may be any number.
//!
//! Checks that depend on the store's state (compacted or future revisions,
//! `ignore_value` on a missing key, unknown leases) happen in
//! [`crate::kv::execute`].

use std::collections::HashSet;

use super::command::Command;
use super::error::KvError;
use super::interval::IntervalSet;
use super::request::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use super::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Most compares, and most operations per branch, of a transaction (etcd's
/// default `--max-txn-ops`). A nested transaction gets what its parent left:
/// `MAX_TXN_OPS` minus the largest of the parent's compare, success and
/// failure counts (etcd's rule).
pub const MAX_TXN_OPS: usize = 128;

/// Checks a log command.
pub fn validate_command(cmd: &Command) -> Result<(), KvError> {
    match cmd {
        Command::Put(p) => validate_put(p),
        Command::DeleteRange(d) => validate_delete_range(d),
        Command::Txn(t) => validate_txn(t),
        Command::Compact(c) => validate_compaction(c),
    }
}

/// Checks a range request (etcd: the key must not be empty).
pub fn validate_range(r: &RangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    for (field, value) in [
        ("limit", r.limit),
        ("revision", r.revision),
        ("min_mod_revision", r.min_mod_revision),
        ("max_mod_revision", r.max_mod_revision),
        ("min_create_revision", r.min_create_revision),
        ("max_create_revision", r.max_create_revision),
    ] {
        if value < 0 {
            return Err(KvError::negative(field, value));
        }
    }
    Ok(())
}

/// Checks a put (etcd: non-empty key, no value with `ignore_value`, no lease
/// with `ignore_lease`; RaftKV: key and value limits, no negative lease).
pub fn validate_put(p: &PutRequest) -> Result<(), KvError> {
    if p.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if p.key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong {
            len: p.key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    if p.value.len() > MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLarge {
            len: p.value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    if p.lease < 0 {
        return Err(KvError::negative("lease", p.lease));
    }
    Ok(())
}

/// Checks a range delete (etcd: the key must not be empty).
pub fn validate_delete_range(d: &DeleteRangeRequest) -> Result<(), KvError> {
    if d.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// Checks a compaction (RaftKV: the revision must not be negative; whether
/// it is compacted or in the future depends on the store).
pub fn validate_compaction(c: &CompactionRequest) -> Result<(), KvError> {
    if c.revision < 0 {
        return Err(KvError::negative("revision", c.revision));
    }
    Ok(())
}

/// Checks a transaction: the shape (op counts, every operation, nested
/// transactions) first, then the duplicate-key rule of each branch, as etcd
/// does (the shape check bounds the nesting depth, and with it the
/// recursion of the duplicate-key check).
pub fn validate_txn(t: &TxnRequest) -> Result<(), KvError> {
    check_txn_shape(t, MAX_TXN_OPS)?;
    check_duplicate_keys(&t.success)?;
    check_duplicate_keys(&t.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: the largest of the compare, success and failure
/// counts must fit the budget, which then shrinks by that count for the
/// nested transactions; compares need a key; every op is checked.
fn check_txn_shape(t: &TxnRequest, budget: usize) -> Result<(), KvError> {
    let count = t.compare.len().max(t.success.len()).max(t.failure.len());
    if count > budget {
        return Err(KvError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op, budget - count)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, budget: usize) -> Result<(), KvError> {
    match op {
        RequestOp::Range(r) => validate_range(r),
        RequestOp::Put(p) => validate_put(p),
        RequestOp::DeleteRange(d) => validate_delete_range(d),
        RequestOp::Txn(t) => check_txn_shape(t, budget),
    }
}

/// The keys one branch may write, as collected by [`check_duplicate_keys`].
struct Writes<'a> {
    puts: HashSet<&'a [u8]>,
    deletes: IntervalSet,
}

/// etcd's duplicate-key rule (`checkIntervals`) for one branch, exactly,
/// quirks included:
///
/// - A branch's deletes are its own delete ranges plus those of all nested
///   transactions (both of their branches). A delete's interval is
///   `[key, range_end)` taken literally, a single key when `range_end` is
///   empty. So a "from key" delete (`range_end == [0]`) covers *nothing*
///   here: etcd does not reject a put inside it.
/// - A put is refused if its key was put before at this level or in a
///   nested transaction, or lies in a delete of this level.
/// - A nested transaction's puts are refused if already put (except that
///   its success and failure branches may put the same key, as only one
///   runs), or if they lie in a delete of this level or of an *earlier*
///   nested transaction. A later nested transaction's delete does not
///   conflict with an earlier one's put: `[txn{put a}, txn{delete a}]` is
///   accepted while `[txn{delete a}, txn{put a}]` is not (etcd adds a nested
///   transaction's deletes only after checking its puts).
///
/// Deletes may overlap each other freely. The execution is correct for any
/// accepted transaction: later operations see earlier writes.
fn check_duplicate_keys(ops: &[RequestOp]) -> Result<Writes<'_>, KvError> {
    let mut deletes = IntervalSet::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            let (start, end) = delete_interval(d);
            deletes.insert(start, end);
        }
    }
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let then = check_duplicate_keys(&t.success)?;
        let otherwise = check_duplicate_keys(&t.failure)?;
        for &k in &then.puts {
            if puts.contains(k) || deletes.contains(k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        for &k in &otherwise.puts {
            let put_before = puts.contains(k) && !then.puts.contains(k);
            if put_before || deletes.contains(k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        deletes.union(then.deletes);
        deletes.union(otherwise.deletes);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(p.key.as_slice()) || deletes.contains(&p.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(&p.key);
    }
    Ok(Writes { puts, deletes })
}

/// A delete's interval for the duplicate-key rule: `[key, range_end)`
/// literally, or `[key, key ‖ 0)` (just `key`) when `range_end` is empty.
fn delete_interval(d: &DeleteRangeRequest) -> (Vec<u8>, Vec<u8>) {
    if d.range_end.is_empty() {
        let mut end = d.key.clone();
        end.push(0);
        (d.key.clone(), end)
    } else {
        (d.key.clone(), d.range_end.clone())
    }
}

#[cfg(test)]
mod tests;
