//! Evaluation of one transaction [`Compare`] against one record (etcd's
//! `compareKV` and the missing-key rule of `applyCompare`).

use std::cmp::Ordering;

use super::request::{Compare, CompareResult, CompareTarget};
use super::types::KeyValue;

/// Whether `kv` satisfies `c`: "kv's field `c.result` `c.target`'s value".
pub(crate) fn holds(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Whether `c` holds when its key (or every key of its range) is absent:
/// etcd compares against an all-zero record, except that a value compare
/// is always false (an absent value is not the empty value).
pub(crate) fn holds_when_absent(c: &Compare) -> bool {
    match c.target {
        CompareTarget::Value(_) => false,
        _ => holds(c, &KeyValue::default()),
    }
}
