//! Behaviour of the sled store through its public API: reopen, identity,
//! log rules, apply semantics, scans, snapshots, compaction.

mod storage_common;

use raftkv::raft::{Entry, EntryPayload, HardState, SnapshotMeta};
use raftkv::storage::{EntryOutcome, LogStore, SledStore, StateMachine, StorageError};
use storage_common::*;

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

#[test]
fn fresh_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let rec = s.load().unwrap();
    assert_eq!(rec.hard_state, HardState::default());
    assert_eq!(rec.snapshot, SnapshotMeta::default());
    assert!(rec.entries.is_empty());
    assert_eq!(s.last_index(), 0);
    assert_eq!(s.first_index(), 1);
    assert_eq!(s.applied_index(), 0);
    assert_eq!(get(&s, "k").unwrap(), None);
}

#[test]
fn reopen_after_clean_close_recovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let entries = puts(1, 10, 2, 50);
    {
        let mut s = open(dir.path());
        s.save(Some(&hs(2, 3, 4)), &entries).unwrap();
        s.apply(&entries[..4]).unwrap();
        s.flush().unwrap();
    }
    let s = open(dir.path());
    let rec = s.load().unwrap();
    assert_eq!(rec.hard_state, hs(2, 3, 4));
    assert_eq!(rec.entries, entries);
    assert_eq!(s.last_index(), 10);
    assert_eq!(s.applied_index(), 4);
    assert_eq!(s.applied(), SnapshotMeta { index: 4, term: 2 });
    assert_eq!(get(&s, "k4").unwrap().unwrap().1, 5);
    assert_eq!(get(&s, "k5").unwrap(), None);
}

#[test]
fn hard_state_alone_and_entries_alone_are_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.save(Some(&hs(1, 0, 0)), &[]).unwrap();
    s.save(None, &puts(1, 3, 1, 10)).unwrap();
    s.save(Some(&hs(1, 2, 3)), &[]).unwrap();
    drop(s);
    let rec = open(dir.path()).load().unwrap();
    assert_eq!(rec.hard_state, hs(1, 2, 3));
    assert_eq!(rec.entries.len(), 3);
}

#[test]
fn save_truncates_a_conflicting_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.save(Some(&hs(1, 0, 0)), &puts(1, 10, 1, 10)).unwrap();
    // A new leader of term 2 overwrites from 6 with only two entries.
    let new = puts(6, 7, 2, 10);
    s.save(Some(&hs(2, 0, 5)), &new).unwrap();
    assert_eq!(s.last_index(), 7);
    let rec = s.load().unwrap();
    assert_eq!(rec.entries.len(), 7);
    assert_eq!(&rec.entries[5..], &new[..]);
    assert_eq!(s.term(8).unwrap(), None);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.last_index(), 7);
    assert_eq!(s.load().unwrap().entries[6], new[1]);
}

#[test]
fn save_refuses_holes_and_non_contiguous_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.save(Some(&hs(1, 0, 0)), &puts(1, 3, 1, 10)).unwrap();
    let err = s.save(None, &puts(5, 6, 1, 10)).unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err}");
    let mut gap = puts(4, 5, 1, 10);
    gap[1].index = 7;
    assert!(matches!(
        s.save(None, &gap),
        Err(StorageError::Inconsistent(_))
    ));
    assert_eq!(s.last_index(), 3);
    assert_eq!(s.load().unwrap().entries.len(), 3);
}

#[test]
fn identity_mismatch_is_refused_naming_path_and_values() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let path = dir.path().display().to_string();

    let err = SledStore::open(dir.path(), "node-2", CLUSTER).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::IdentityMismatch { .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&path) && msg.contains(NODE) && msg.contains("node-2"),
        "{msg}"
    );

    let err = SledStore::open(dir.path(), NODE, "other-cluster").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::IdentityMismatch { .. }),
        "{msg}"
    );
    assert!(
        msg.contains(CLUSTER) && msg.contains("other-cluster"),
        "{msg}"
    );

    // The right identity still opens.
    open(dir.path());
}

#[test]
fn a_store_cannot_be_opened_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path());
    let err = SledStore::open(dir.path(), NODE, CLUSTER).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn apply_follows_kv_semantics_and_records_mod_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let entries = vec![
        put(1, 1, "a", "1"), // revision 2
        Entry {
            index: 2,
            term: 1,
            payload: EntryPayload::Noop,
        },
        cmd_entry(3, 1, put_cmd("a", "2", Some(2))), // cas ok: revision 3
        cmd_entry(4, 1, put_cmd("a", "3", Some(2))), // cas fails: now 3
        cmd_entry(5, 1, put_cmd("b", "x", Some(0))), // create-only ok: 4
        cmd_entry(6, 1, del_cmd("zz", None)),        // missing
        cmd_entry(7, 1, vec![0xde, 0xad, 0xbe, 0xef]), // undecodable
        cmd_entry(8, 1, del_cmd("b", Some(4))),      // cas delete ok: 5
    ];
    s.save(Some(&hs(1, 1, 8)), &entries).unwrap();
    let r = s.apply(&entries).unwrap();
    assert_eq!(
        revisions(&r),
        vec![Some(2), None, Some(3), None, Some(4), None, None, Some(5)]
    );
    assert!(matches!(&r[6], EntryOutcome::Command(a) if a.answer.is_err()));
    assert_eq!(get(&s, "a").unwrap(), Some(("2".to_string(), 3)));
    assert_eq!(get(&s, "b").unwrap(), None);
    assert_eq!(s.applied_index(), 8);
    assert_eq!(s.revision().unwrap(), 5);

    // Re-applying is a no-op for every entry.
    let again = s.apply(&entries).unwrap();
    assert!(again.iter().all(|r| *r == EntryOutcome::Noop));
    assert_eq!(get(&s, "a").unwrap(), Some(("2".to_string(), 3)));

    // A gap is refused.
    let err = s.apply(&[put(10, 1, "c", "1")]).unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err}");
    assert_eq!(get(&s, "c").unwrap(), None);
}

#[test]
fn apply_after_reopen_skips_what_was_applied() {
    let dir = tempfile::tempdir().unwrap();
    let entries = vec![
        put(1, 1, "k", "a"),
        cmd_entry(2, 1, put_cmd("k", "b", Some(2))),
    ];
    {
        let mut s = open(dir.path());
        s.save(Some(&hs(1, 0, 2)), &entries).unwrap();
        s.apply(&entries[..1]).unwrap();
        s.flush().unwrap();
    }
    let mut s = open(dir.path());
    let r = s.apply(&entries).unwrap();
    assert_eq!(r[0], EntryOutcome::Noop);
    assert_eq!(revisions(&r), vec![None, Some(3)]);
    assert_eq!(get(&s, "k").unwrap(), Some(("b".into(), 3)));
}

#[test]
fn scan_lists_by_prefix_with_paging() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let keys = ["a", "app/1", "app/2", "app/3", "apple", "b", "\u{10ffff}"];
    let entries: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put(i as u64 + 1, 1, k, &format!("v{i}")))
        .collect();
    s.save(Some(&hs(1, 0, 0)), &entries).unwrap();
    s.apply(&entries).unwrap();

    let (all, more) = scan(&s, "", None, 100).unwrap();
    assert!(!more);
    let names: Vec<_> = all.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        names,
        keys.to_vec(),
        "applied-index record must not be listed"
    );

    let (page, more) = scan(&s, "app/", None, 2).unwrap();
    assert!(more);
    assert_eq!(
        page.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["app/1", "app/2"]
    );
    assert_eq!(page[1].index, 4, "mod revision of app/2");
    let (page, more) = scan(&s, "app/", Some("app/2"), 2).unwrap();
    assert!(!more);
    assert_eq!(
        page.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["app/3"]
    );
    let (page, more) = scan(&s, "app", Some("app/3"), 10).unwrap();
    assert!(!more);
    assert_eq!(
        page.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["apple"]
    );
    let (none, more) = scan(&s, "zzz", None, 10).unwrap();
    assert!(none.is_empty() && !more);
    let (zero, more) = scan(&s, "", None, 0).unwrap();
    assert!(zero.is_empty() && more);
}

#[test]
fn snapshot_restores_into_another_store() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = open(a_dir.path());
    let entries = puts(1, 20, 3, 30);
    a.save(Some(&hs(3, 0, 20)), &entries).unwrap();
    a.apply(&entries).unwrap();
    let (meta, image) = a.snapshot().unwrap();
    assert_eq!(meta, SnapshotMeta { index: 20, term: 3 });

    let mut b = SledStore::open(b_dir.path(), "node-2", CLUSTER).unwrap();
    // b has its own stale key that the snapshot does not contain.
    b.save(Some(&hs(1, 0, 1)), &[put(1, 1, "stale", "x")])
        .unwrap();
    b.apply(&[put(1, 1, "stale", "x")]).unwrap();
    b.install_snapshot(meta, &image).unwrap();
    assert_eq!(b.applied(), meta);
    assert_eq!(get(&b, "stale").unwrap(), None);
    assert_eq!(
        scan(&b, "", None, 100).unwrap().0,
        scan(&a, "", None, 100).unwrap().0
    );
    assert_eq!(b.last_index(), 20);
    assert_eq!(b.first_index(), 21);
    let rec = b.load().unwrap();
    assert_eq!(rec.snapshot, meta);
    assert!(rec.entries.is_empty());
    drop(b);
    let b = SledStore::open(b_dir.path(), "node-2", CLUSTER).unwrap();
    assert_eq!(b.applied(), meta);
    assert_eq!(get(&b, "k7").unwrap(), get(&a, "k7").unwrap());
}

#[test]
fn restore_rejects_a_damaged_or_mismatched_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let entries = puts(1, 3, 1, 10);
    s.save(Some(&hs(1, 0, 3)), &entries).unwrap();
    s.apply(&entries).unwrap();
    let (meta, image) = s.snapshot().unwrap();
    let mut bad = image.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(
        s.restore(meta, &bad),
        Err(StorageError::Corruption { .. })
    ));
    let other = SnapshotMeta { index: 9, term: 9 };
    assert!(s.restore(other, &image).is_err());
    // Nothing changed.
    assert_eq!(s.applied_index(), 3);
    assert!(get(&s, "k2").unwrap().is_some());
}

#[test]
fn compact_drops_the_prefix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries = puts(1, 30, 2, 20);
    {
        let mut s = open(dir.path());
        s.save(Some(&hs(2, 1, 30)), &entries).unwrap();
        // Cannot compact past the applied index.
        assert!(matches!(
            s.compact(SnapshotMeta { index: 10, term: 2 }),
            Err(StorageError::Inconsistent(_))
        ));
        s.apply(&entries[..20]).unwrap();
        s.compact(SnapshotMeta { index: 10, term: 2 }).unwrap();
        assert_eq!(s.first_index(), 11);
        assert_eq!(s.last_index(), 30);
        assert!(matches!(s.term(5), Err(StorageError::Compacted(5))));
        assert_eq!(s.term(10).unwrap(), Some(2));
        assert!(matches!(
            s.entries(10, 12, usize::MAX),
            Err(StorageError::Compacted(10))
        ));
        assert_eq!(
            s.entries(11, 13, usize::MAX).unwrap(),
            entries[10..12].to_vec()
        );
        // Stale compaction is ignored.
        s.compact(SnapshotMeta { index: 5, term: 2 }).unwrap();
        assert_eq!(s.first_index(), 11);
    }
    let s = open(dir.path());
    let rec = s.load().unwrap();
    assert_eq!(rec.snapshot, SnapshotMeta { index: 10, term: 2 });
    assert_eq!(rec.entries, entries[10..].to_vec());
}

#[test]
fn entries_respects_byte_limit_and_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let entries = puts(1, 50, 1, 100);
    s.save(Some(&hs(1, 0, 0)), &entries).unwrap();
    let one = entries[0].approx_size();
    let got = s.entries(5, 40, one * 3).unwrap();
    assert_eq!(got, entries[4..7].to_vec());
    assert_eq!(s.entries(5, 40, 1).unwrap().len(), 1, "at least one entry");
    assert_eq!(
        s.entries(45, 100, usize::MAX).unwrap(),
        entries[44..].to_vec()
    );
    assert!(s.entries(51, 60, usize::MAX).unwrap().is_empty());
}

#[test]
fn reset_without_restore_is_detected_on_load() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.save(Some(&hs(1, 0, 0)), &puts(1, 5, 1, 10)).unwrap();
        s.reset_to_snapshot(SnapshotMeta {
            index: 100,
            term: 4,
        })
        .unwrap();
        assert_eq!(s.last_index(), 100);
    }
    let s = open(dir.path());
    let err = s.load().unwrap_err();
    assert!(matches!(err, StorageError::Inconsistent(_)), "{err}");
    assert!(err.to_string().contains("lost"), "{err}");
}

#[test]
fn interrupted_snapshot_install_is_finished_by_load() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = open(a_dir.path());
    let entries = puts(1, 10, 2, 10);
    a.save(Some(&hs(2, 0, 10)), &entries).unwrap();
    a.apply(&entries).unwrap();
    let (meta, image) = a.snapshot().unwrap();
    {
        let mut b = open(b_dir.path());
        // b has a conflicting log from term 1, then only the restore step
        // of an install happens before the "crash".
        b.save(Some(&hs(2, 0, 0)), &puts(1, 12, 1, 10)).unwrap();
        b.restore(meta, &image).unwrap();
    }
    let b = open(b_dir.path());
    let rec = b.load().unwrap();
    assert_eq!(rec.snapshot, meta);
    assert!(rec.entries.is_empty());
    assert_eq!(b.last_index(), 10);
    assert_eq!(b.applied(), meta);
}

#[test]
fn readers_run_concurrently_with_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let reader = s.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut last = 0;
        let mut reads = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some((v, idx)) = get(&reader, "hot").unwrap() {
                assert!(idx >= last, "mod revision went backwards");
                // Entry i (a put, no no-op before it) is revision i + 1.
                assert_eq!(v, format!("v{}", idx - 1));
                last = idx;
            }
            let (items, _) = scan(&reader, "", None, 10).unwrap();
            assert!(items.len() <= 1);
            reads += 1;
        }
        (last, reads)
    });
    for batch in 0..50u64 {
        let entries: Vec<_> = (1..=20)
            .map(|i| {
                let idx = batch * 20 + i;
                put(idx, 1, "hot", &format!("v{idx}"))
            })
            .collect();
        s.save(Some(&hs(1, 0, 0)), &entries).unwrap();
        s.apply(&entries).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (last, reads) = handle.join().unwrap();
    assert!(reads > 0);
    assert!(last <= 1001);
    assert_eq!(get(&s, "hot").unwrap(), Some(("v1000".into(), 1001)));
}

#[test]
fn huge_length_prefixes_in_a_command_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    // Format 2, variant 0 (Put), then a key length of ~2^62: must not
    // allocate or panic; the entry is refused as malformed and changes
    // nothing.
    let mut evil = vec![2u8, 0u8, 0xFF];
    evil.extend_from_slice(&(1u64 << 62).to_le_bytes());
    evil.extend_from_slice(b"abc");
    let e = cmd_entry(1, 1, evil);
    s.save(Some(&hs(1, 0, 1)), std::slice::from_ref(&e))
        .unwrap();
    let r = s.apply(&[e]).unwrap();
    assert!(
        matches!(&r[0], EntryOutcome::Command(a)
            if matches!(a.answer, Err(raftkv::kv::KvError::MalformedCommand(_))) && a.events.is_empty()),
        "{r:?}"
    );
    assert_eq!(s.applied_index(), 1);
    assert_eq!(s.revision().unwrap(), 1);
}

// ---- The log layout: one record per saved batch (`raft_log` keyed by the
// ---- batch's first index). Every scenario is checked again after a reopen.

/// First indexes of the batch records in the log tree (the durable-write
/// sequence number, nine bytes, is not a batch).
fn batch_keys(s: &SledStore) -> Vec<u64> {
    use raftkv::storage::sled_store::{LOG_TREE, SEQ_KEY};
    let log = s.raw_db().open_tree(LOG_TREE).unwrap();
    log.range(..SEQ_KEY)
        .map(|kv| {
            let (k, _) = kv.unwrap();
            u64::from_be_bytes(k.as_ref().try_into().expect("8-byte log key"))
        })
        .collect()
}

/// Checks every way of reading the log against `want` (the whole expected
/// log after `snapshot`): load, `term` of every index, and `entries` for
/// every range within and across batches.
fn check_log(s: &SledStore, snapshot: SnapshotMeta, want: &[Entry]) {
    let rec = s.load().unwrap();
    assert_eq!(rec.snapshot, snapshot);
    assert_eq!(rec.entries, want);
    let last = snapshot.index + want.len() as u64;
    assert_eq!(s.last_index(), last);
    assert_eq!(s.first_index(), snapshot.index + 1);
    assert_eq!(s.term(snapshot.index).unwrap(), Some(snapshot.term));
    assert_eq!(s.term(last + 1).unwrap(), None);
    for (i, e) in want.iter().enumerate() {
        assert_eq!(
            s.term(e.index).unwrap(),
            Some(e.term),
            "term of {}",
            e.index
        );
        for hi in e.index + 1..=last + 2 {
            let expect = &want[i..want.len().min(i + (hi - e.index) as usize)];
            assert_eq!(
                s.entries(e.index, hi, usize::MAX).unwrap(),
                expect,
                "entries [{}, {hi})",
                e.index
            );
        }
    }
    if snapshot.index > 0 {
        assert!(matches!(
            s.entries(snapshot.index, last + 1, usize::MAX),
            Err(StorageError::Compacted(_))
        ));
        assert!(matches!(
            s.term(snapshot.index - 1),
            Err(StorageError::Compacted(_))
        ));
    }
}

#[test]
fn each_save_is_one_record_and_reads_cross_batch_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let mut s = open(dir.path());
        for (lo, hi, term) in [(1, 3, 1), (4, 8, 1), (9, 9, 2), (10, 16, 3)] {
            let e = puts(lo, hi, term, 30);
            s.save(Some(&hs(term, 1, 0)), &e).unwrap();
            want.extend(e);
        }
        assert_eq!(batch_keys(&s), vec![1, 4, 9, 10]);
        check_log(&s, SnapshotMeta::default(), &want);
        // The byte limit works across batches too.
        let three = want[2].approx_size() + want[3].approx_size() + want[4].approx_size();
        assert_eq!(s.entries(3, 17, three).unwrap(), want[2..5].to_vec());
    }
    let s = open(dir.path());
    assert_eq!(batch_keys(&s), vec![1, 4, 9, 10]);
    check_log(&s, SnapshotMeta::default(), &want);
}

#[test]
fn suffix_overwrite_mid_batch_cuts_that_batch_and_drops_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut want: Vec<Entry> = Vec::new();
    {
        let mut s = open(dir.path());
        for lo in [1, 6, 11] {
            let e = puts(lo, lo + 4, 1, 20);
            s.save(Some(&hs(1, 1, 0)), &e).unwrap();
            want.extend(e);
        }
        assert_eq!(batch_keys(&s), vec![1, 6, 11]);

        // Mid-batch: 8..=9 of term 2 replace 8..=15.
        let new = puts(8, 9, 2, 20);
        s.save(Some(&hs(2, 0, 3)), &new).unwrap();
        want.truncate(7);
        want.extend(new);
        assert_eq!(batch_keys(&s), vec![1, 6, 8]);
        check_log(&s, SnapshotMeta::default(), &want);
    }
    let mut s = open(dir.path());
    check_log(&s, SnapshotMeta::default(), &want);

    // At a batch's first index, longer than what it replaces, no hard state.
    let new = puts(6, 12, 3, 20);
    s.save(None, &new).unwrap();
    want.truncate(5);
    want.extend(new);
    assert_eq!(batch_keys(&s), vec![1, 6]);
    check_log(&s, SnapshotMeta::default(), &want);

    // Inside the first batch, replacing every later batch.
    let new = puts(2, 2, 4, 20);
    s.save(Some(&hs(4, 0, 1)), &new).unwrap();
    want.truncate(1);
    want.extend(new);
    assert_eq!(batch_keys(&s), vec![1, 2]);
    check_log(&s, SnapshotMeta::default(), &want);
    drop(s);
    let s = open(dir.path());
    assert_eq!(batch_keys(&s), vec![1, 2]);
    check_log(&s, SnapshotMeta::default(), &want);
}

#[test]
fn compaction_mid_batch_keeps_the_tail_of_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<Entry> = Vec::new();
    let snap = SnapshotMeta { index: 15, term: 2 };
    {
        let mut s = open(dir.path());
        for (lo, term) in [(1, 1), (11, 2), (21, 2)] {
            let e = puts(lo, lo + 9, term, 20);
            s.save(Some(&hs(term, 1, lo + 9)), &e).unwrap();
            all.extend(e);
        }
        s.apply(&all[..25]).unwrap();
        s.compact(snap).unwrap();
        // Batch 1 is gone; batch 11 stays (its entries 16..=20 are live),
        // and reads skip its entries up to the snapshot.
        assert_eq!(batch_keys(&s), vec![11, 21]);
        check_log(&s, snap, &all[15..]);
    }
    let mut s = open(dir.path());
    assert_eq!(batch_keys(&s), vec![11, 21]);
    check_log(&s, snap, &all[15..]);

    // Exactly at a batch's end: that batch goes whole.
    let snap = SnapshotMeta { index: 20, term: 2 };
    s.compact(snap).unwrap();
    assert_eq!(batch_keys(&s), vec![21]);
    check_log(&s, snap, &all[20..]);
    // Appending after a compaction, then compacting into the new batch.
    let more = puts(31, 34, 2, 20);
    s.save(Some(&hs(2, 1, 34)), &more).unwrap();
    all.extend(more);
    s.apply(&all[25..]).unwrap();
    let snap = SnapshotMeta { index: 32, term: 2 };
    s.compact(snap).unwrap();
    assert_eq!(batch_keys(&s), vec![31]);
    check_log(&s, snap, &all[32..]);
    drop(s);
    let mut s = open(dir.path());
    check_log(&s, snap, &all[32..]);

    // A snapshot install clears every batch.
    let (meta, image) = s.snapshot().unwrap();
    s.restore(meta, &image).unwrap();
    s.reset_to_snapshot(meta).unwrap();
    assert!(batch_keys(&s).is_empty());
    check_log(&s, meta, &[]);
    drop(s);
    let s = open(dir.path());
    assert!(batch_keys(&s).is_empty());
    check_log(&s, meta, &[]);
}

#[test]
fn a_large_save_is_split_into_bounded_records_written_together() {
    use raftkv::storage::sled_store::{LOG_TREE, SEQ_KEY};
    let dir = tempfile::tempdir().unwrap();
    let entries = puts(1, 3000, 1, 100);
    {
        let mut s = open(dir.path());
        s.save(Some(&hs(1, 1, 0)), &entries).unwrap();
        let keys = batch_keys(&s);
        assert!(keys.len() > 3, "{keys:?}");
        let log = s.raw_db().open_tree(LOG_TREE).unwrap();
        for kv in log.range(..SEQ_KEY) {
            let (k, v) = kv.unwrap();
            assert!(v.len() <= 64 << 10, "record {k:?} is {} bytes", v.len());
        }
        // Overwrite from the middle of a middle record.
        let cut = (keys[1] + keys[2]) / 2;
        let new = puts(cut, cut + 2, 2, 100);
        s.save(Some(&hs(2, 1, 0)), &new).unwrap();
        assert_eq!(s.last_index(), cut + 2);
        assert_eq!(batch_keys(&s), vec![keys[0], keys[1], cut]);
        assert_eq!(s.term(cut - 1).unwrap(), Some(1));
        assert_eq!(s.term(cut).unwrap(), Some(2));
        assert_eq!(s.entries(cut - 1, cut + 1, usize::MAX).unwrap()[1], new[0]);
    }
    let s = open(dir.path());
    let rec = s.load().unwrap();
    assert_eq!(rec.entries.len() as u64, s.last_index());
    assert_eq!(rec.entries[..10], entries[..10]);
}

#[test]
fn a_data_dir_of_the_per_entry_log_format_is_refused() {
    use raftkv::storage::identity::Identity;
    use raftkv::storage::record;
    use raftkv::storage::sled_store::{IDENTITY_KEY, IDENTITY_TREE};
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let mut old = Identity::current(NODE, CLUSTER);
        old.format_version = 1;
        let t = s.raw_db().open_tree(IDENTITY_TREE).unwrap();
        t.insert(IDENTITY_KEY, record::encode(IDENTITY_KEY, &old).unwrap())
            .unwrap();
        s.flush().unwrap();
    }
    let err = SledStore::open(dir.path(), NODE, CLUSTER).unwrap_err();
    assert!(
        matches!(err, StorageError::IdentityMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("format version 1"), "{err}");
}

#[test]
fn compaction_leaves_covered_batches_to_later_writes_and_restarts_skip_them() {
    // 200 saved batches, compacted up to the middle of batch 150: the
    // snapshot is recorded at once, the 149 batches below it are deleted at
    // most 64 per write (the compaction's own write included), and a store
    // reopened in between reads the same log.
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<Entry> = Vec::new();
    let mut s = open(dir.path());
    for b in 0..200u64 {
        let lo = b * 2 + 1;
        let e = puts(lo, lo + 1, 1, 8);
        s.save(Some(&hs(1, 1, lo + 1)), &e).unwrap();
        all.extend(e);
    }
    s.apply(&all[..300]).unwrap();
    let snap = SnapshotMeta {
        index: 299,
        term: 1,
    };
    s.compact(snap).unwrap();
    // 149 batches lie wholly at or below 299; batch 299 straddles it.
    assert_eq!(batch_keys(&s).len(), 200 - 64);
    check_log(&s, snap, &all[299..]);
    drop(s);

    let mut s = open(dir.path());
    check_log(&s, snap, &all[299..]);
    // Two more writes finish the job (64 + 21 removals); the straddling
    // batch and everything after it stay.
    for lo in [401, 403] {
        let e = puts(lo, lo + 1, 1, 8);
        s.save(None, &e).unwrap();
        all.extend(e);
    }
    let keys = batch_keys(&s);
    assert_eq!(keys.first(), Some(&299));
    assert_eq!(keys.len(), 200 - 149 + 2);
    check_log(&s, snap, &all[299..]);
    drop(s);
    let s = open(dir.path());
    assert_eq!(batch_keys(&s).len(), 200 - 149 + 2);
    check_log(&s, snap, &all[299..]);
}

#[test]
fn a_second_compaction_queues_the_first_ones_leftovers_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<Entry> = Vec::new();
    let mut s = open(dir.path());
    for b in 0..200u64 {
        let lo = b * 2 + 1;
        let e = puts(lo, lo + 1, 1, 8);
        s.save(Some(&hs(1, 1, lo + 1)), &e).unwrap();
        all.extend(e);
    }
    s.apply(&all[..340]).unwrap();
    // 149 batches covered, 64 deleted at once: 85 left over.
    s.compact(SnapshotMeta {
        index: 299,
        term: 1,
    })
    .unwrap();
    assert_eq!(batch_keys(&s).len(), 200 - 64);
    // 106 batches at or below 340 are still there (the 85 leftovers among
    // them): 64 go with this compaction, the other 42 with the next write.
    let snap = SnapshotMeta {
        index: 340,
        term: 1,
    };
    s.compact(snap).unwrap();
    assert_eq!(batch_keys(&s).len(), 200 - 64 - 64);
    let e = puts(401, 402, 1, 8);
    s.save(None, &e).unwrap();
    all.extend(e);
    assert_eq!(batch_keys(&s).first(), Some(&341));
    assert_eq!(batch_keys(&s).len(), 200 - 170 + 1);
    check_log(&s, snap, &all[340..]);
}
