//! Property tests of the sled store against simple models: the log
//! (save/truncate/compact/reset/reopen/read) against a `Vec`, and apply
//! (with batching, transactions, compaction, reopen, scans, past reads,
//! history and snapshots) against the reference model `kv::MemMvcc`.

mod storage_common;

use proptest::prelude::*;
use raftkv::kv::{self, MemMvcc};
use raftkv::raft::{Entry, EntryPayload, HardState, SnapshotMeta};
use raftkv::storage::{EntryOutcome, LogStore, SledStore, StateMachine, StorageError};
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
    Put {
        key: u8,
        cas: Option<u8>,
    },
    Del {
        key: u8,
        cas: Option<u8>,
    },
    DelRange {
        key: u8,
        end: u8,
    },
    /// A transaction: compare `key`'s version against `v`, put `key` and
    /// delete `other` on success, read the keys at a past revision and put
    /// `other` on failure.
    Txn {
        key: u8,
        other: u8,
        v: u8,
        back: u8,
    },
    /// Compact `back` revisions below the current one.
    Compact {
        back: u8,
    },
    Noop,
    Garbage,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let cas = prop::option::weighted(0.3, 0u8..6);
    prop_oneof![
        5 => (0u8..8, cas.clone()).prop_map(|(key, cas)| Cmd::Put { key, cas }),
        2 => (0u8..8, cas).prop_map(|(key, cas)| Cmd::Del { key, cas }),
        1 => (0u8..8, 0u8..8).prop_map(|(key, end)| Cmd::DelRange { key, end }),
        3 => (0u8..8, 0u8..8, 0u8..3, 0u8..6)
            .prop_map(|(key, other, v, back)| Cmd::Txn { key, other, v, back }),
        1 => (0u8..12).prop_map(|back| Cmd::Compact { back }),
        1 => Just(Cmd::Noop),
        1 => Just(Cmd::Garbage),
    ]
}

const KEYS: [&str; 8] = ["a", "a/1", "a/2", "ab", "b", "b/x", "c", "\u{e9}t\u{e9}"];

/// Turns a generated command into an entry at `index`; `revision` is the
/// model's revision before it (so CAS and compactions sometimes match).
fn to_entry(c: &Cmd, index: u64, revision: i64) -> Entry {
    let key = |k: &u8| KEYS[*k as usize].as_bytes().to_vec();
    let cas = |c: &Option<u8>| {
        c.map(|b| {
            if b == 0 {
                0
            } else {
                (revision - b as i64).max(1) as u64
            }
        })
    };
    let payload = match c {
        Cmd::Put { key: k, cas: c } => {
            EntryPayload::Command(put_cmd(KEYS[*k as usize], &format!("v{index}"), cas(c)))
        }
        Cmd::Del { key: k, cas: c } => EntryPayload::Command(del_cmd(KEYS[*k as usize], cas(c))),
        Cmd::DelRange { key: k, end } => EntryPayload::Command(
            kv::Command::DeleteRange(kv::DeleteRangeRequest {
                key: key(k),
                range_end: key(end),
                prev_kv: true,
            })
            .encode(),
        ),
        Cmd::Txn {
            key: k,
            other,
            v,
            back,
        } => EntryPayload::Command(
            kv::Command::Txn(kv::TxnRequest {
                compare: vec![kv::Compare {
                    key: key(k),
                    range_end: Vec::new(),
                    result: kv::CompareResult::Greater,
                    target: kv::CompareTarget::Version(*v as i64),
                }],
                success: vec![
                    kv::RequestOp::Put(kv::PutRequest {
                        key: key(k),
                        value: format!("t{index}").into_bytes(),
                        prev_kv: true,
                        ..Default::default()
                    }),
                    kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                        key: key(other),
                        range_end: Vec::new(),
                        prev_kv: true,
                    }),
                ],
                failure: vec![
                    kv::RequestOp::Range(kv::RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        revision: (revision - *back as i64).max(0),
                        ..Default::default()
                    }),
                    kv::RequestOp::Put(kv::PutRequest {
                        key: key(other),
                        value: format!("f{index}").into_bytes(),
                        ..Default::default()
                    }),
                ],
            })
            .encode(),
        ),
        Cmd::Compact { back } => EntryPayload::Command(
            kv::Command::Compact(kv::CompactionRequest {
                revision: revision - *back as i64,
                physical: false,
            })
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

fn model_apply(model: &mut MemMvcc, e: &Entry) -> EntryOutcome {
    let EntryPayload::Command(bytes) = &e.payload else {
        return EntryOutcome::Noop;
    };
    EntryOutcome::Command(match kv::Command::decode(bytes) {
        Ok(cmd) => model.apply(&cmd),
        Err(why) => kv::Applied {
            answer: Err(kv::KvError::MalformedCommand(why.to_string())),
            events: Vec::new(),
            compact_revision: None,
        },
    })
}

/// The store answers like the model: every key, paged prefix scans,
/// reads at every readable revision, the events since the compact
/// revision, revision and compact revision.
fn check_kv(store: &SledStore, model: &MemMvcc) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.revision().unwrap(), model.revision());
    prop_assert_eq!(store.compact_revision().unwrap(), model.compact_revision());
    for k in KEYS {
        let want = model
            .range(&kv::RangeRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })
            .unwrap()
            .body
            .kvs
            .first()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision as u64,
                )
            });
        prop_assert_eq!(get(store, k).unwrap(), want, "key {}", k);
    }
    for prefix in ["", "a", "a/", "b", "z"] {
        // Page through with limit 2 and compare with the model.
        let (want, _) = scan(model_store(model).as_ref(), prefix, None, 1000).unwrap();
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = scan(store, prefix, after.as_deref(), 2).unwrap();
            prop_assert!(page.len() <= 2);
            after = page.last().map(|i| i.key.clone());
            got.extend(page);
            if !more {
                break;
            }
        }
        prop_assert_eq!(got, want, "prefix {:?}", prefix);
    }
    for rev in model.compact_revision().max(1)..=model.revision() {
        let req = kv::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        };
        prop_assert_eq!(
            store.range(&req).map_err(|e| e.to_string()),
            model.range(&req).map_err(|e| e.to_string()),
            "range at {}",
            rev
        );
    }
    let every = kv::KeyRange::new(&[0], &[0]);
    let from = model.compact_revision().max(1);
    prop_assert_eq!(
        store
            .events(from, every, usize::MAX)
            .map_err(|e| e.to_string()),
        model
            .events(from, every, usize::MAX)
            .map_err(|e| e.to_string())
    );
    Ok(())
}

/// The model as a [`StateMachine`] for the scan helper.
fn model_store(model: &MemMvcc) -> Box<ModelView<'_>> {
    Box::new(ModelView(model))
}

/// Read-only [`StateMachine`] face of a model (only reads are called).
struct ModelView<'a>(&'a MemMvcc);

impl StateMachine for ModelView<'_> {
    fn applied_index(&self) -> u64 {
        0
    }
    fn apply(&mut self, _: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError> {
        Err(StorageError::Inconsistent("read-only".into()))
    }
    fn range(
        &self,
        req: &kv::RangeRequest,
    ) -> Result<kv::Revisioned<kv::RangeResponse>, kv::ExecError<StorageError>> {
        self.0.range(req).map_err(kv::ExecError::Kv)
    }
    fn events(
        &self,
        from: i64,
        range: kv::KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<kv::Event>, kv::ExecError<StorageError>> {
        self.0.events(from, range, limit).map_err(kv::ExecError::Kv)
    }
    fn revision(&self) -> Result<i64, StorageError> {
        Ok(self.0.revision())
    }
    fn compact_revision(&self) -> Result<i64, StorageError> {
        Ok(self.0.compact_revision())
    }
    fn compact_step(&mut self, _: usize) -> Result<bool, StorageError> {
        Ok(true)
    }
    fn hash_kv(&self, rev: i64) -> Result<u32, kv::ExecError<StorageError>> {
        self.0.hash_kv(rev).map_err(kv::ExecError::Kv)
    }
    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        Err(StorageError::Inconsistent("read-only".into()))
    }
    fn restore(&mut self, _: SnapshotMeta, _: &[u8]) -> Result<(), StorageError> {
        Err(StorageError::Inconsistent("read-only".into()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random command sequences (transactions included) applied to the sled
    /// state machine and to the reference model give identical outcomes,
    /// revisions and histories, in batches of random size, across a reopen
    /// and physical compaction at random points, and across a snapshot and
    /// restore at a random point.
    #[test]
    fn apply_matches_the_reference_model(
        cmds in prop::collection::vec(cmd(), 1..80),
        cuts in prop::collection::vec(1usize..12, 1..20),
        reopen_at in prop::option::of(0usize..20),
        restore_at in prop::option::of(0usize..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model = MemMvcc::new();
        let mut pos = 0usize;
        let mut batch_no = 0usize;
        let mut cut = cuts.iter().cycle();
        let mut entries: Vec<Entry> = Vec::new();
        let mut index = 0u64;
        while pos < cmds.len() {
            let end = (pos + cut.next().unwrap()).min(cmds.len());
            // Entries are built as the model reaches them (CAS revisions
            // and compactions refer to its revision).
            let mut want = Vec::new();
            let mut fresh = Vec::new();
            for c in &cmds[pos..end] {
                index += 1;
                let e = to_entry(c, index, model.revision());
                want.push(model_apply(&mut model, &e));
                fresh.push(e);
            }
            store.save(Some(&HardState { term: 1, vote: 0, commit: index }), &fresh).unwrap();
            // Overlap the previous batch by one entry sometimes: already
            // applied entries must come back as Noop and change nothing.
            let mut batch = Vec::new();
            if batch_no % 3 == 1 {
                if let Some(last) = entries.last() {
                    batch.push(last.clone());
                    want.insert(0, EntryOutcome::Noop);
                }
            }
            batch.extend(fresh.iter().cloned());
            entries.extend(fresh);
            let got = store.apply(&batch).unwrap();
            prop_assert_eq!(got, want);
            prop_assert_eq!(store.applied_index(), index);
            pos = end;
            batch_no += 1;
            if reopen_at == Some(batch_no) {
                drop(store);
                store = open(dir.path());
                prop_assert_eq!(store.applied_index(), index);
                while !store.compact_step(3).unwrap() {}
            }
            if restore_at == Some(batch_no) {
                let (meta, image) = store.snapshot().unwrap();
                let other_dir = tempfile::tempdir().unwrap();
                let mut other = SledStore::open(other_dir.path(), "node-2", CLUSTER).unwrap();
                other.install_snapshot(meta, &image).unwrap();
                check_kv(&other, &model)?;
            }
            check_kv(&store, &model)?;
        }
        // A snapshot of the final state restores into a fresh store.
        let (meta, image) = store.snapshot().unwrap();
        prop_assert_eq!(meta.index, index);
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = SledStore::open(other_dir.path(), "node-2", CLUSTER).unwrap();
        other.install_snapshot(meta, &image).unwrap();
        check_kv(&other, &model)?;
        prop_assert_eq!(other.applied(), meta);
        prop_assert_eq!(
            other.hash_kv(0).map_err(|e| e.to_string()),
            store.hash_kv(0).map_err(|e| e.to_string())
        );
    }
}
