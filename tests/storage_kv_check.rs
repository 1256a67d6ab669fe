//! The key-value tree check of a node's store ([`KvCheck::Background`]):
//! `open` returns without walking the key-value tree, a background thread
//! walks it, and a damaged record is still found — reported by
//! `kv_check_status`, refusing later writes, and stopping a real node
//! process with exit code ≠ 0 and a message naming tree and key.

mod common;
mod storage_common;

use std::time::Duration;

use raftkv::raft::{HardState, SnapshotMeta};
use raftkv::storage::mvcc_tree::keys::current_key;
use raftkv::storage::sled_store::{KvCheck, KvCheckStatus, StoreOptions, KV_TREE};
use raftkv::storage::{LogStore, SledStore, StateMachine, StorageError};
use storage_common::*;

const N: u64 = 20_000;

fn background() -> StoreOptions {
    StoreOptions {
        kv_check: KvCheck::Background,
        ..StoreOptions::default()
    }
}

/// N applied puts (several check chunks' worth), compacted, closed.
fn build_store(dir: &std::path::Path) {
    let mut s = open(dir);
    let entries = puts(1, N, 1, 100);
    s.save(
        Some(&HardState {
            term: 1,
            vote: 1,
            commit: N,
        }),
        &entries,
    )
    .unwrap();
    s.apply(&entries).unwrap();
    s.compact(SnapshotMeta { index: N, term: 1 }).unwrap();
    s.flush().unwrap();
}

/// Flips one byte of the record of `key` in the kv tree, through sled.
fn damage(dir: &std::path::Path, key: &str) {
    let s = open(dir);
    let kv = s.raw_db().open_tree(KV_TREE).unwrap();
    let key = current_key(key.as_bytes());
    let mut v = kv.get(&key).unwrap().expect("record exists").to_vec();
    let last = v.len() - 1;
    v[last] ^= 0x10;
    kv.insert(key, v).unwrap();
    s.flush().unwrap();
}

#[test]
fn a_healthy_store_passes_the_background_check() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    let s = SledStore::open_with(dir.path(), NODE, CLUSTER, background()).unwrap();
    let status = s.wait_kv_check(Duration::from_secs(30));
    assert!(matches!(status, KvCheckStatus::Passed), "{status:?}");
    assert_eq!(s.applied_index(), N);
    // Entry i is a put of k{i}, revision i + 1.
    assert_eq!(get(&s, &format!("k{N}")).unwrap().map(|(_, i)| i), Some(N + 1));
}

#[test]
fn at_open_is_what_open_does() {
    // The check at open walks the tree in two halves on two threads: damage
    // in the first key, in the lower half and in the last key is found.
    for bad in ["k1", "k19999", "k9999"] {
        let dir = tempfile::tempdir().unwrap();
        build_store(dir.path());
        damage(dir.path(), bad);
        let err = SledStore::open(dir.path(), NODE, CLUSTER).unwrap_err();
        assert!(
            matches!(err, StorageError::Corruption { ref tree, ref key, .. } if tree == KV_TREE && key.contains(bad)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_damaged_cold_record_is_found_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    // A key in the last check chunk (keys sort as strings: k9999 is last).
    damage(dir.path(), "k9999");
    let mut s = SledStore::open_with(dir.path(), NODE, CLUSTER, background())
        .expect("open does not walk the kv tree");
    let status = s.wait_kv_check(Duration::from_secs(30));
    let err = status.error().unwrap_or_else(|| panic!("{status:?}"));
    assert!(
        matches!(err, StorageError::Corruption { ref tree, ref key, .. } if tree == KV_TREE && key.contains("k9999")),
        "{err}"
    );
    // The damaged record is never served meanwhile, and writes are refused.
    assert!(get(&s, "k9999").is_err());
    let next = puts(N + 1, N + 1, 1, 10);
    let refused = s.save(None, &next).unwrap_err().to_string();
    assert!(refused.contains("k9999"), "{refused}");
    assert!(s.apply(&next).is_err());
}

/// A real node with a damaged key-value record refuses to start (exit ≠ 0),
/// naming the tree and the key: by default the check runs before serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_kv_record_refuses_to_start() {
    damaged_node_stops(false).await;
}

/// With `--kv-check-in-background` it starts, then stops soon after, with
/// the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_checking_in_the_background_stops_on_a_damaged_record() {
    damaged_node_stops(true).await;
}

async fn damaged_node_stops(background: bool) {
    use common::*;
    let mut c = Cluster::new(1, &Opts::default());
    let args: Vec<String> = c.nodes[0].args().to_vec();
    let peers_at = args.iter().position(|a| a == "--peers").unwrap();
    let mut base = args.clone();
    base.drain(peers_at..peers_at + 2);
    if background {
        base.push("--kv-check-in-background".into());
    }
    c.nodes[0].set_args(base);
    c.nodes[0].start();
    c.wait_for_leader(Duration::from_secs(20)).await;
    for i in 0..50 {
        let (s, _) = c.put(0, &format!("cold/{i:03}"), "v").await.unwrap();
        assert_eq!(s, 200);
    }
    let status = c.nodes[0].terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", c.nodes[0].log());
    {
        let db = raftkv::storage::sled_store::sled_config(&c.nodes[0].data_dir)
            .open()
            .expect("open the node's sled db");
        let kv = db.open_tree(KV_TREE).unwrap();
        let key = current_key(b"cold/017");
        let mut bad = kv.get(&key).unwrap().expect("record").to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        kv.insert(key, bad).unwrap();
        db.flush().unwrap();
    }
    let before = c.nodes[0].log().len();
    c.nodes[0].start();
    let status = c.nodes[0].wait_exit(Duration::from_secs(20));
    let log = c.nodes[0].log()[before..].to_string();
    assert_ne!(status.code(), Some(0), "started anyway: {log}");
    assert!(
        log.contains("`kv`") && log.contains("cold/017"),
        "message should name the tree and key: {log}"
    );
}
