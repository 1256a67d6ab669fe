//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use raftkv::kv::KvCommand;
use raftkv::raft::{Entry, EntryPayload};
use raftkv::storage::SledStore;
use std::path::Path;

pub const NODE: &str = "node-1";
pub const CLUSTER: &str = "test-cluster";

pub fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, NODE, CLUSTER).expect("open store")
}

pub fn put_cmd(key: &str, value: &str, cas: Option<u64>) -> Vec<u8> {
    KvCommand::Put {
        key: key.into(),
        value: value.into(),
        cas,
    }
    .encode()
}

pub fn del_cmd(key: &str, cas: Option<u64>) -> Vec<u8> {
    KvCommand::Delete {
        key: key.into(),
        cas,
    }
    .encode()
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
