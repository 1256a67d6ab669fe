//! Property tests of the sled store against simple models: the log
//! (save/truncate/compact/reset/reopen/read) against a `Vec`, and apply
//! (with batching, reopen, scans and snapshots) against a `BTreeMap`.

mod storage_common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftkv::kv::{decide, ApplyResult, Effect, KvCommand};
use raftkv::raft::{Entry, EntryPayload, HardState, SnapshotMeta};
use raftkv::storage::{LogStore, SledStore, StateMachine, StorageError};
use storage_common::*;

// ------------------------------------------------------------------ log --

#[derive(Clone, Debug)]
enum LogOp {
    /// Save `n` entries starting `back` entries before the end (0 = plain
    /// append), with a hard state when `with_hs`; a truncation bumps the
    /// term.
    Save {
        back: u8,
        n: u8,
        with_hs: bool,
        len: u16,
    },
    /// Compact at a fraction of the log.
    Compact {
        frac: u8,
    },
    /// Reset the whole log to a snapshot `ahead` entries past the end.
    Reset {
        ahead: u8,
    },
    Reopen,
}

fn log_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        6 => (0u8..6, 0u8..20, any::<bool>(), 0u16..400)
            .prop_map(|(back, n, with_hs, len)| LogOp::Save { back, n, with_hs, len }),
        2 => (0u8..=100).prop_map(|frac| LogOp::Compact { frac }),
        1 => (0u8..5).prop_map(|ahead| LogOp::Reset { ahead }),
        1 => Just(LogOp::Reopen),
    ]
}

struct LogModel {
    hs: HardState,
    snap: SnapshotMeta,
    entries: Vec<Entry>,
}

impl LogModel {
    fn last(&self) -> u64 {
        self.snap.index + self.entries.len() as u64
    }
    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snap.term, |e| e.term)
    }
}

fn noop_or_bytes(index: u64, term: u64, len: u16) -> Entry {
    Entry {
        index,
        term,
        payload: if len == 0 {
            EntryPayload::Noop
        } else {
            EntryPayload::Command(vec![(index % 251) as u8; len as usize])
        },
    }
}

fn check_log(store: &SledStore, m: &LogModel) -> Result<(), TestCaseError> {
    let rec = store
        .load()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(rec.hard_state, m.hs);
    prop_assert_eq!(rec.snapshot, m.snap);
    prop_assert_eq!(&rec.entries, &m.entries);
    prop_assert_eq!(store.last_index(), m.last());
    prop_assert_eq!(store.first_index(), m.snap.index + 1);
    prop_assert_eq!(store.term(m.snap.index).unwrap(), Some(m.snap.term));
    prop_assert_eq!(store.term(m.last() + 1).unwrap(), None);
    if m.snap.index > 0 {
        prop_assert!(matches!(
            store.term(m.snap.index - 1),
            Err(StorageError::Compacted(_))
        ));
    }
    // Every sub-range reads back the model's slice.
    let n = m.entries.len() as u64;
    for (a, b) in [(0, n), (n / 3, n / 2), (n.saturating_sub(1), n)] {
        let lo = m.snap.index + 1 + a;
        let hi = m.snap.index + 1 + b;
        let got = store.entries(lo, hi, usize::MAX).unwrap();
        prop_assert_eq!(&got[..], &m.entries[a as usize..b as usize]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_vec_model(ops in prop::collection::vec(log_op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut m = LogModel { hs: HardState::default(), snap: SnapshotMeta::default(), entries: vec![] };
        for op in ops {
            match op {
                LogOp::Save { back, n, with_hs, len } => {
                    let back = (back as u64).min(m.entries.len() as u64);
                    let first = m.last() + 1 - back;
                    let mut hs = m.hs;
                    if back > 0 || hs.term == 0 || hs.term < m.last_term() {
                        hs.term = hs.term.max(m.last_term()) + 1;
                    }
                    hs.commit = first.saturating_sub(1).max(hs.commit.min(m.last()));
                    let entries: Vec<Entry> = (0..n as u64)
                        .map(|k| noop_or_bytes(first + k, hs.term, len.wrapping_add(k as u16 * 37) % 400))
                        .collect();
                    let give_hs = with_hs || hs != m.hs;
                    store.save(give_hs.then_some(&hs), &entries).unwrap();
                    if give_hs { m.hs = hs; }
                    if n > 0 {
                        m.entries.truncate((first - m.snap.index - 1) as usize);
                        m.entries.extend(entries);
                    }
                }
                LogOp::Compact { frac } => {
                    if m.entries.is_empty() { continue; }
                    let k = (m.entries.len() * frac as usize / 100).max(1);
                    let meta = SnapshotMeta { index: m.entries[k - 1].index, term: m.entries[k - 1].term };
                    // The state machine must have applied it first.
                    let applied = store.applied_index();
                    if meta.index > applied {
                        let todo = store.entries(applied + 1, meta.index + 1, usize::MAX).unwrap();
                        store.apply(&todo).unwrap();
                    }
                    store.compact(meta).unwrap();
                    m.entries.drain(..k);
                    m.snap = meta;
                }
                LogOp::Reset { ahead } => {
                    // A follower installing a leader's snapshot at or past
                    // its applied index (here with an empty image).
                    let meta = SnapshotMeta {
                        index: m.last() + ahead as u64,
                        term: m.hs.term.max(m.last_term()),
                    };
                    if meta.index > store.applied_index() {
                        let image = raftkv::storage::image::encode_image(meta, []).unwrap();
                        store.install_snapshot(meta, &image).unwrap();
                    } else {
                        store.reset_to_snapshot(meta).unwrap();
                    }
                    m.entries.clear();
                    m.snap = meta;
                }
                LogOp::Reopen => {
                    drop(store);
                    store = open(dir.path());
                }
            }
            check_log(&store, &m)?;
        }
    }
}

// ---------------------------------------------------------------- apply --

#[derive(Clone, Debug)]
enum Cmd {
    Put { key: u8, cas: Option<u8> },
    Del { key: u8, cas: Option<u8> },
    Noop,
    Garbage,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let cas = prop::option::weighted(0.3, 0u8..6);
    prop_oneof![
        5 => (0u8..8, cas.clone()).prop_map(|(key, cas)| Cmd::Put { key, cas }),
        2 => (0u8..8, cas).prop_map(|(key, cas)| Cmd::Del { key, cas }),
        1 => Just(Cmd::Noop),
        1 => Just(Cmd::Garbage),
    ]
}

const KEYS: [&str; 8] = ["a", "a/1", "a/2", "ab", "b", "b/x", "c", "\u{e9}t\u{e9}"];

/// Turns a generated command at `index` into an entry. A CAS value `c`
/// means "the mod index `c` entries back" (0 = absent), so that CAS
/// sometimes matches.
fn to_entry(c: &Cmd, index: u64) -> Entry {
    let cas = |c: &Option<u8>| {
        c.map(|b| {
            if b == 0 {
                0
            } else {
                index.saturating_sub(b as u64)
            }
        })
    };
    let payload = match c {
        Cmd::Put { key, cas: c } => EntryPayload::Command(
            KvCommand::Put {
                key: KEYS[*key as usize].into(),
                value: format!("v{index}"),
                cas: cas(c),
            }
            .encode(),
        ),
        Cmd::Del { key, cas: c } => EntryPayload::Command(
            KvCommand::Delete {
                key: KEYS[*key as usize].into(),
                cas: cas(c),
            }
            .encode(),
        ),
        Cmd::Noop => EntryPayload::Noop,
        Cmd::Garbage => EntryPayload::Command(vec![0xFF, 0x01, (index % 256) as u8]),
    };
    Entry {
        index,
        term: 1,
        payload,
    }
}

fn model_apply(kv: &mut BTreeMap<String, (String, u64)>, e: &Entry) -> ApplyResult {
    let EntryPayload::Command(bytes) = &e.payload else {
        return ApplyResult::Noop;
    };
    let Ok(cmd) = KvCommand::decode(bytes) else {
        return ApplyResult::Noop;
    };
    let (effect, result) = decide(&cmd, e.index, kv.get(cmd.key()).map(|v| v.1));
    match effect {
        Effect::Set { value, index } => {
            kv.insert(cmd.key().to_string(), (value, index));
        }
        Effect::Remove => {
            kv.remove(cmd.key());
        }
        Effect::None => {}
    }
    result
}

fn check_kv(store: &SledStore, kv: &BTreeMap<String, (String, u64)>) -> Result<(), TestCaseError> {
    for k in KEYS {
        prop_assert_eq!(store.get(k).unwrap(), kv.get(k).cloned(), "key {}", k);
    }
    for prefix in ["", "a", "a/", "b", "z"] {
        // Page through with limit 2 and compare with the model.
        let want: Vec<_> = kv.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = store.scan(prefix, after.as_deref(), 2).unwrap();
            prop_assert!(page.len() <= 2);
            after = page.last().map(|i| i.key.clone());
            got.extend(page);
            if !more {
                break;
            }
        }
        prop_assert_eq!(got.len(), want.len(), "prefix {:?}", prefix);
        for (g, (k, (v, i))) in got.iter().zip(want) {
            prop_assert_eq!((&g.key, &g.value, g.index), (k, v, *i));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn apply_matches_a_btreemap_model(
        cmds in prop::collection::vec(cmd(), 1..80),
        cuts in prop::collection::vec(1usize..12, 1..20),
        reopen_at in prop::option::of(0usize..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let entries: Vec<Entry> = cmds.iter().enumerate().map(|(i, c)| to_entry(c, i as u64 + 1)).collect();
        store.save(Some(&HardState { term: 1, vote: 0, commit: entries.len() as u64 }), &entries).unwrap();
        let mut kv = BTreeMap::new();
        let mut pos = 0usize;
        let mut batch_no = 0usize;
        let mut cut = cuts.iter().cycle();
        while pos < entries.len() {
            let end = (pos + cut.next().unwrap()).min(entries.len());
            // Overlap the previous batch by one entry sometimes: already
            // applied entries must come back as Noop and change nothing.
            let start = if pos > 0 && batch_no % 3 == 1 { pos - 1 } else { pos };
            let got = store.apply(&entries[start..end]).unwrap();
            let mut want = Vec::new();
            if start < pos { want.push(ApplyResult::Noop); }
            for e in &entries[pos..end] { want.push(model_apply(&mut kv, e)); }
            prop_assert_eq!(got, want);
            prop_assert_eq!(store.applied_index(), end as u64);
            pos = end;
            batch_no += 1;
            if reopen_at == Some(batch_no) {
                drop(store);
                store = open(dir.path());
                prop_assert_eq!(store.applied_index(), pos as u64);
            }
            check_kv(&store, &kv)?;
        }
        // A snapshot of the final state restores into a fresh store.
        let (meta, image) = store.snapshot().unwrap();
        prop_assert_eq!(meta.index, entries.len() as u64);
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = SledStore::open(other_dir.path(), "node-2", CLUSTER).unwrap();
        other.install_snapshot(meta, &image).unwrap();
        check_kv(&other, &kv)?;
        prop_assert_eq!(other.applied(), meta);
    }
}
