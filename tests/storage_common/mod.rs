//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use raftkv::kv::{self, Command};
use raftkv::raft::{Entry, EntryPayload};
use raftkv::storage::{EntryOutcome, SledStore, StateMachine, StorageError};
use std::path::Path;

pub const NODE: &str = "node-1";
pub const CLUSTER: &str = "test-cluster";

pub fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, NODE, CLUSTER).expect("open store")
}

/// A put; with `cas`, only if the key's mod revision is `cas` (0 =
/// absent), as the single-key API sends it.
pub fn put_cmd(key: &str, value: &str, cas: Option<u64>) -> Vec<u8> {
    let put = kv::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    match cas {
        None => Command::Put(put),
        Some(m) => cas_txn(key, m, kv::RequestOp::Put(put)),
    }
    .encode()
}

/// A delete of one key, with `cas` as for [`put_cmd`].
pub fn del_cmd(key: &str, cas: Option<u64>) -> Vec<u8> {
    let del = kv::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        prev_kv: false,
    };
    match cas {
        None => Command::DeleteRange(del),
        Some(m) => cas_txn(key, m, kv::RequestOp::DeleteRange(del)),
    }
    .encode()
}

fn cas_txn(key: &str, m: u64, op: kv::RequestOp) -> Command {
    Command::Txn(kv::TxnRequest {
        compare: vec![kv::Compare {
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
            result: kv::CompareResult::Equal,
            target: kv::CompareTarget::ModRevision(m as i64),
        }],
        success: vec![op],
        failure: Vec::new(),
    })
}

pub fn cmd_entry(index: u64, term: u64, cmd: Vec<u8>) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(cmd),
    }
}

pub fn put(index: u64, term: u64, key: &str, value: &str) -> Entry {
    cmd_entry(index, term, put_cmd(key, value, None))
}

/// Entries `lo..=hi` of `term`, each a put of `k{i}` with a value of
/// about `value_len` bytes.
pub fn puts(lo: u64, hi: u64, term: u64, value_len: usize) -> Vec<Entry> {
    (lo..=hi)
        .map(|i| {
            let mut v = format!("v{i}-t{term}-");
            while v.len() < value_len {
                v.push('x');
            }
            put(i, term, &format!("k{i}"), &v)
        })
        .collect()
}

/// One key's value (as text) and mod revision.
pub fn get<S: StateMachine>(s: &S, key: &str) -> Result<Option<(String, u64)>, StorageError> {
    Ok(s.get(key.as_bytes())?.map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision as u64,
        )
    }))
}

/// A key, its value and its mod revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: String,
    pub index: u64,
}

/// Keys starting with `prefix`, strictly after `after`, at most `limit`,
/// and whether more follow (the old paging, over a range read).
pub fn scan<S: StateMachine>(
    s: &S,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Item>, bool), StorageError> {
    let start = match after {
        Some(a) if a >= prefix => {
            let mut k = a.as_bytes().to_vec();
            k.push(0);
            k
        }
        _ => prefix.as_bytes().to_vec(),
    };
    let end = if prefix.is_empty() {
        vec![0]
    } else {
        kv::prefix_end(prefix.as_bytes())
    };
    let start = if start.is_empty() { vec![0] } else { start };
    if limit == 0 {
        return Ok((Vec::new(), true));
    }
    let req = kv::RangeRequest {
        key: start,
        range_end: end,
        limit: limit.min(i64::MAX as usize) as i64,
        ..Default::default()
    };
    let r = s.range(&req).map_err(|e| match e {
        kv::ExecError::Store(e) => e,
        kv::ExecError::Kv(e) => StorageError::Inconsistent(e.to_string()),
    })?;
    let items = r
        .body
        .kvs
        .iter()
        .map(|kv| Item {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            index: kv.mod_revision as u64,
        })
        .collect();
    Ok((items, r.body.more))
}

/// The revision each outcome created (`None`: a no-op entry, a skipped one,
/// or a command that changed nothing).
pub fn revisions(outcomes: &[EntryOutcome]) -> Vec<Option<u64>> {
    outcomes
        .iter()
        .map(|o| match o {
            EntryOutcome::Noop => None,
            EntryOutcome::Command(a) => a.new_revision().map(|r| r as u64),
        })
        .collect()
}
