//! The shaping of a range's answer: filters, sort, limit, `keys_only` and
//! `count_only`, exactly as etcd 3.4's `applierV3backend.Range` does it.
//!
//! The store collects the first [`fetch_limit`] records of the range (in key
//! order) and counts all of them; [`shape`] does the rest:
//! 1. drop records outside the min/max mod/create revision filters;
//! 2. if `sort_target` is not `Key` and `sort_order` is `None`, sort
//!    ascending; sort (stably: ties keep key order, also when descending);
//! 3. truncate to `limit`, `more = true` if that dropped something;
//! 4. `keys_only` empties the values (after sorting, so sorting by value
//!    still works); `count` is the number of keys in the range before the
//!    filters and the limit.
//!
//! When no sort order and no filter is given, only `limit + 1` records are
//! fetched; that is etcd's rule even when `sort_target` is not `Key` (the
//! first `limit + 1` keys are then sorted by the target, and the last one
//! dropped).

use std::cmp::Ordering;

use super::request::{RangeRequest, SortOrder, SortTarget};
use super::response::RangeResponse;
use super::types::KeyValue;

/// How many records (in key order) a range needs from the store: all of
/// them when sorting or filtering, else `limit + 1` (to tell `more`), or
/// all when there is no limit. `count_only` still counts every key.
pub(crate) fn fetch_limit(r: &RangeRequest) -> usize {
    if r.count_only {
        return 0;
    }
    let sorting = r.sort_order != SortOrder::None;
    let filtering = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    if sorting || filtering || r.limit <= 0 {
        return usize::MAX;
    }
    usize::try_from(r.limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

/// Builds the answer from the fetched records (at most [`fetch_limit`], in
/// key order) and the count of all keys in the range.
pub(crate) fn shape(r: &RangeRequest, mut kvs: Vec<KeyValue>, count: i64) -> RangeResponse {
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }

    let order = match (r.sort_target, r.sort_order) {
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    // Records arrive in ascending key order, so that case needs no sort.
    let presorted = order == SortOrder::None
        || (r.sort_target == SortTarget::Key && order == SortOrder::Ascend);
    if !presorted {
        let by = |a: &KeyValue, b: &KeyValue| by_target(r.sort_target, a, b);
        // `sort_by` is stable: equal targets stay in key order.
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
            _ => kvs.sort_by(by),
        }
    }

    let mut more = false;
    if let Ok(limit) = usize::try_from(r.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    RangeResponse { kvs, more, count }
}

fn by_target(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}
