//! Damaged stores: records overwritten through sled, bytes flipped in the
//! files on disk, and a child process that must refuse to start with a
//! message naming what is damaged.

mod storage_common;

use raftkv::raft::{HardState, SnapshotMeta};
use raftkv::storage::sled_store::{
    log_key, watermark, APPLIED_KEY, HARD_STATE_KEY, HARD_STATE_TREE, IDENTITY_KEY, IDENTITY_TREE,
    KV_TREE, LOG_TREE, SNAPSHOT_META_KEY, SNAPSHOT_TREE,
};
use raftkv::storage::{LogStore, SledStore, StateMachine, StorageError};
use std::path::Path;
use std::process::Command;
use raftkv::storage::mvcc_tree::keys::current_key;
use storage_common::*;

const N: u64 = 400;
const SNAP: u64 = 100;

/// Entries per save in [`build_store`]: the log tree then holds one batch
/// record per 50 entries, keyed 1, 51, 101, … (101, 151, …, 351 after the
/// compaction).
const SAVE: u64 = 50;

/// A store with N entries (saved SAVE at a time), all applied, compacted
/// up to SNAP, cleanly closed.
fn build_store(dir: &Path) {
    let mut s = open(dir);
    for lo in (1..=N).step_by(SAVE as usize) {
        let entries = puts(lo, lo + SAVE - 1, 1, 100);
        s.save(
            Some(&HardState {
                term: 1,
                vote: 1,
                commit: lo + SAVE - 1,
            }),
            &entries,
        )
        .unwrap();
        s.apply(&entries).unwrap();
    }
    s.compact(SnapshotMeta {
        index: SNAP,
        term: 1,
    })
    .unwrap();
    s.flush().unwrap();
}

/// Opens, loads and reads everything. `Ok` only when every bit of the
/// store built by [`build_store`] is there.
fn open_and_check_all(dir: &Path) -> Result<(), String> {
    let s = SledStore::open(dir, NODE, CLUSTER).map_err(|e| e.to_string())?;
    let rec = s.load().map_err(|e| e.to_string())?;
    let (items, _) = scan(&s, "", None, 10_000).map_err(|e| e.to_string())?;
    let complete = rec.entries.len() as u64 == N - SNAP
        && rec.snapshot.index == SNAP
        && rec.hard_state.commit == N
        && s.applied_index() == N
        && items.len() as u64 == N;
    if complete {
        Ok(())
    } else {
        Err(format!(
            "SILENT LOSS: opened with entries={} snapshot={} commit={} applied={} keys={}",
            rec.entries.len(),
            rec.snapshot.index,
            rec.hard_state.commit,
            s.applied_index(),
            items.len()
        ))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Overwrites the record at `tree`/`key` through sled with a copy that has
/// one byte flipped, then closes the store.
fn damage_through_sled(dir: &Path, tree: &str, key: &[u8], byte: usize) {
    let s = open(dir);
    let t = s.raw_db().open_tree(tree).unwrap();
    let mut v = t.get(key).unwrap().expect("record exists").to_vec();
    let at = byte.min(v.len() - 1);
    v[at] ^= 0x10;
    t.insert(key, v).unwrap();
    s.flush().unwrap();
}

fn expect_corruption(dir: &Path, want_tree: &str, want_key: &str) {
    let err = match SledStore::open(dir, NODE, CLUSTER) {
        Err(e) => e,
        Ok(s) => s.load().expect_err("damaged store loaded"),
    };
    match &err {
        StorageError::Corruption { tree, key, .. } => {
            assert_eq!(tree, want_tree, "{err}");
            assert!(
                key.contains(want_key),
                "key {key:?} should name {want_key:?}: {err}"
            );
        }
        other => panic!("expected corruption of {want_tree}/{want_key}, got {other}"),
    }
}

#[test]
fn damaged_records_through_sled_are_named_on_open() {
    let base = tempfile::tempdir().unwrap();
    build_store(base.path());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (LOG_TREE, log_key(251).to_vec(), "batch at index 251"),
        (
            LOG_TREE,
            log_key(N - SAVE + 1).to_vec(),
            "batch at index 351",
        ),
        (HARD_STATE_TREE, HARD_STATE_KEY.to_vec(), "hard_state"),
        (SNAPSHOT_TREE, SNAPSHOT_META_KEY.to_vec(), "meta"),
        (KV_TREE, current_key(b"k123"), "k123"),
        (KV_TREE, APPLIED_KEY.to_vec(), "applied"),
        (IDENTITY_TREE, IDENTITY_KEY.to_vec(), "identity"),
    ];
    for (tree, key, desc) in cases {
        // Damage the header (version/crc) and, separately, the payload.
        for byte in [1usize, 9] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(base.path(), work.path());
            damage_through_sled(work.path(), tree, &key, byte);
            expect_corruption(work.path(), tree, desc);
        }
    }
}

#[test]
fn a_record_moved_under_another_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    {
        let s = open(dir.path());
        let log = s.raw_db().open_tree(LOG_TREE).unwrap();
        let other = log.get(log_key(301)).unwrap().unwrap();
        log.insert(log_key(351), other).unwrap();
        s.flush().unwrap();
    }
    expect_corruption(dir.path(), LOG_TREE, "index 351");
}

#[test]
fn a_hole_in_the_log_is_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    {
        let s = open(dir.path());
        s.raw_db()
            .open_tree(LOG_TREE)
            .unwrap()
            .remove(log_key(201))
            .unwrap();
        s.flush().unwrap();
    }
    let err = SledStore::open(dir.path(), NODE, CLUSTER).unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err}");
    assert!(err.to_string().contains("201"), "{err}");
}

#[test]
fn damage_found_while_running_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    let s = open(dir.path());
    let kv = s.raw_db().open_tree(KV_TREE).unwrap();
    let mut v = kv.get(current_key(b"k7")).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    kv.insert(current_key(b"k7"), v).unwrap();
    let err = get(&s, "k7").unwrap_err();
    assert!(
        matches!(err, StorageError::Corruption { ref tree, ref key, .. } if tree == KV_TREE && key.contains("k7")),
        "{err}"
    );
    assert!(scan(&s, "k", None, 1000).is_err());
    assert!(s.snapshot().is_err());
    let log = s.raw_db().open_tree(LOG_TREE).unwrap();
    let mut v = log.get(log_key(151)).unwrap().unwrap().to_vec();
    v[6] ^= 1;
    log.insert(log_key(151), v).unwrap();
    let err = s.entries(140, 160, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("index 151"), "{err}");
}

/// Every flipped byte of sled's `db` file must either be detected (a typed
/// error) or be harmless (every record still there). sled itself treats
/// most of them as a torn log tail and silently drops data, which the
/// watermark check turns into an error.
#[test]
fn flipped_bytes_in_the_db_file_are_never_silent() {
    let base = tempfile::tempdir().unwrap();
    build_store(base.path());
    let orig = std::fs::read(base.path().join("db")).unwrap();
    let mut offsets: Vec<usize> = (0..orig.len()).step_by(orig.len() / 48).collect();
    // A few pseudo-random offsets too (fixed seed: reproducible).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..16 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.push((x % orig.len() as u64) as usize);
    }
    let mut detected = 0;
    for off in offsets {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let mut bytes = orig.clone();
        bytes[off] ^= 0x5A;
        std::fs::write(work.path().join("db"), &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| open_and_check_all(work.path()));
        match outcome {
            Err(_) => panic!("flip at {off}: panicked instead of a typed error"),
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                assert!(!msg.contains("SILENT LOSS"), "flip at {off}: {msg}");
                detected += 1;
            }
        }
    }
    assert!(detected > 0, "no flip was detected at all");
}

#[test]
fn truncated_db_file_is_detected() {
    let base = tempfile::tempdir().unwrap();
    build_store(base.path());
    let len = std::fs::metadata(base.path().join("db")).unwrap().len();
    for keep in [0, len / 3, len / 2, len - 100] {
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(work.path().join("db"))
            .unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        let r = std::panic::catch_unwind(|| open_and_check_all(work.path()))
            .unwrap_or_else(|_| panic!("truncation to {keep}: panic"));
        let msg = r.expect_err("truncated store opened");
        assert!(!msg.contains("SILENT LOSS"), "truncation to {keep}: {msg}");
    }
}

#[test]
fn damaged_conf_or_missing_watermark_is_detected() {
    let base = tempfile::tempdir().unwrap();
    build_store(base.path());

    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    let conf = work.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&conf, &bytes).unwrap();
    assert!(open_and_check_all(work.path()).is_err());

    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    std::fs::remove_file(work.path().join(watermark::FILE_NAME)).unwrap();
    let err = SledStore::open(work.path(), NODE, CLUSTER)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(watermark::FILE_NAME) && err.contains("missing"),
        "{err}"
    );

    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    std::fs::write(work.path().join(watermark::FILE_NAME), vec![0u8; 8192]).unwrap();
    let err = SledStore::open(work.path(), NODE, CLUSTER)
        .unwrap_err()
        .to_string();
    assert!(err.contains(watermark::FILE_NAME), "{err}");
}

const CHILD_ENV: &str = "RAFTKV_STORAGE_CHILD_DIR";

/// Child half of [`child_process_refuses_a_damaged_store`]: opens the store
/// like a node would at start and exits non-zero with the message when it
/// is damaged. Only runs when spawned by the parent test.
#[test]
#[ignore = "child process of child_process_refuses_a_damaged_store"]
fn child_open_store() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let result = SledStore::open(&dir, NODE, CLUSTER).and_then(|s| s.load().map(|_| s));
    match result {
        Ok(_) => {
            println!("store opened");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    }
}

fn run_child(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_open_store", "--nocapture", "--ignored"])
        .env(CHILD_ENV, dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn child_process_refuses_a_damaged_store() {
    let healthy = tempfile::tempdir().unwrap();
    build_store(healthy.path());
    // Copies taken before anything reopens the store (a reopen moves
    // sled's log around, and a flip in dead space is harmless).
    let disk = tempfile::tempdir().unwrap();
    copy_dir(healthy.path(), disk.path());

    // Healthy store: the child starts.
    let (code, stderr) = run_child(healthy.path());
    assert_eq!(code, Some(0), "{stderr}");

    // A damaged record: exit ≠ 0, message names tree and key.
    let rec = tempfile::tempdir().unwrap();
    copy_dir(healthy.path(), rec.path());
    damage_through_sled(rec.path(), LOG_TREE, &log_key(201), 7);
    let (code, stderr) = run_child(rec.path());
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("raft_log") && stderr.contains("index 201"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Flipped bytes on disk: exit ≠ 0, message names the sled file.
    let db = disk.path().join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&db, &bytes).unwrap();
    let (code, stderr) = run_child(disk.path());
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");

    // Another node's data dir.
    let other = tempfile::tempdir().unwrap();
    drop(SledStore::open(other.path(), "node-9", CLUSTER).unwrap());
    let (code, stderr) = run_child(other.path());
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("node-9"), "{stderr}");
}

/// Writes `entries` as a correctly checksummed batch record under
/// `log_key(key)`, closing the store.
fn plant_batch(dir: &Path, key: u64, entries: &[raftkv::raft::Entry]) {
    let s = open(dir);
    let rec = raftkv::storage::record::encode(&log_key(key), entries).unwrap();
    let log = s.raw_db().open_tree(LOG_TREE).unwrap();
    log.insert(log_key(key), rec).unwrap();
    s.flush().unwrap();
}

#[test]
fn a_batch_not_starting_at_its_key_or_not_contiguous_is_corruption() {
    let base = tempfile::tempdir().unwrap();
    build_store(base.path());

    // Checksum right, but the batch under 201 starts at 202.
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    plant_batch(work.path(), 201, &puts(202, 250, 1, 100));
    expect_corruption(work.path(), LOG_TREE, "batch at index 201");
    let err = SledStore::open(work.path(), NODE, CLUSTER).unwrap_err();
    assert!(err.to_string().contains("holds entry 202"), "{err}");

    // Checksum right, but entry 230 is missing inside the batch.
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    let mut gap = puts(201, 250, 1, 100);
    gap.remove(29);
    plant_batch(work.path(), 201, &gap);
    expect_corruption(work.path(), LOG_TREE, "batch at index 201");

    // An empty batch.
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    plant_batch(work.path(), 201, &[]);
    expect_corruption(work.path(), LOG_TREE, "batch at index 201");

    // Overlapping batches (each one valid on its own) are a broken log.
    let work = tempfile::tempdir().unwrap();
    copy_dir(base.path(), work.path());
    plant_batch(work.path(), 201, &puts(201, 260, 1, 100));
    let err = SledStore::open(work.path(), NODE, CLUSTER).unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err}");
    assert!(err.to_string().contains("251"), "{err}");

    // The untouched store still opens whole.
    open_and_check_all(base.path()).unwrap();
}
