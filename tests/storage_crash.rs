//! Crash consistency with real processes: a child process (this test
//! binary, re-executed) drives the sled store through batched saves,
//! truncations, compactions, snapshot installs and applies, printing each
//! operation before it starts and `OK` after it returns; the parent kills it
//! with SIGKILL at random moments, reopens the store and checks that
//!
//! * the store opens and loads (contiguous log, sane hard state);
//! * the log, hard state and snapshot equal the model after the last
//!   acknowledged operation, or after the one in flight (ops are atomic);
//! * the applied index lies between the last one made durable by an
//!   acknowledged flush and the newest one, and the key-value data is
//!   exactly the replay of the entries up to it — never a mix.
//!
//! Set `RAFTKV_CRASH_SEED` to replay a run; `RAFTKV_CRASH_SECS` to change
//! its length (default 18 s).

mod storage_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv::kv::{self, MemMvcc};
use raftkv::raft::{Entry, EntryPayload, HardState, SnapshotMeta};
use raftkv::storage::{LogStore, SledStore, StateMachine};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use storage_common::*;

const DIR_ENV: &str = "RAFTKV_CRASH_CHILD_DIR";
const SEED_ENV: &str = "RAFTKV_CRASH_CHILD_SEED";

/// The command stored at `index` with `term`: deterministic, so the parent
/// can rebuild every entry from the operation log.
fn command(index: u64, term: u64) -> kv::Command {
    let key = format!("k{}", index % 64).into_bytes();
    if index.is_multiple_of(11) {
        kv::Command::DeleteRange(kv::DeleteRangeRequest {
            key,
            range_end: Vec::new(),
            prev_kv: false,
        })
    } else {
        let len = 10 + ((index * 31 + term * 17) % 300) as usize;
        let mut value = format!("v{index}.t{term}.");
        while value.len() < len {
            value.push('x');
        }
        kv::Command::Put(kv::PutRequest {
            key,
            value: value.into_bytes(),
            ..Default::default()
        })
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: if index.is_multiple_of(13) {
            EntryPayload::Noop
        } else {
            EntryPayload::Command(command(index, term).encode())
        },
    }
}

// ---------------------------------------------------------------- child --

/// Child half: runs operations until killed (or for at most 20 s).
#[test]
#[ignore = "child process of crash_consistency_under_kill_9"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut store = open(Path::new(&dir));
    // Report what was recovered (the parent checks it against its model),
    // then start working.
    println!("{}", Observed::from_store(&store).to_line());
    let rec = store.load().expect("child: load");
    let mut hs = rec.hard_state;
    let mut snap = rec.snapshot;
    let mut terms: Vec<u64> = rec.entries.iter().map(|e| e.term).collect(); // after snap
    let mut applied = store.applied_index();
    println!("@READY");
    let started = Instant::now();
    let last_index = |snap: &SnapshotMeta, terms: &Vec<u64>| snap.index + terms.len() as u64;
    for _ in 0..20_000 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        let last = last_index(&snap, &terms);
        let roll = rng.gen_range(0..100);
        if roll < 55 {
            // Save: append, or truncate a suffix above the commit index as a
            // new leader would; sometimes only a hard state.
            let floor = hs.commit.max(snap.index) + 1;
            let truncate = last >= floor && rng.gen_bool(0.3);
            let mut new_hs = hs;
            if truncate || hs.term == 0 || rng.gen_bool(0.05) {
                new_hs.term += 1;
                new_hs.vote = rng.gen_range(0..4);
            }
            let first = if truncate {
                rng.gen_range(floor..=last)
            } else {
                last + 1
            };
            let n = if rng.gen_bool(0.1) {
                0
            } else {
                rng.gen_range(1..=64u64)
            };
            let new_last = if n == 0 { last } else { first + n - 1 };
            // A truncation with no entries keeps the old log.
            let (first, new_last) = if n == 0 {
                (last + 1, last)
            } else {
                (first, new_last)
            };
            if rng.gen_bool(0.7) {
                new_hs.commit = rng.gen_range(hs.commit..=new_last.max(hs.commit));
                new_hs.commit = new_hs.commit.min(new_last.max(hs.commit));
            }
            let give_hs = new_hs != hs || rng.gen_bool(0.5);
            if n == 0 && !give_hs {
                continue;
            }
            let eterm = new_hs.term;
            let entries: Vec<Entry> = (first..first + n).map(|i| entry(i, eterm)).collect();
            println!(
                "@SAVE {} {} {} {} {} {} {}",
                give_hs as u8, new_hs.term, new_hs.vote, new_hs.commit, first, n, eterm
            );
            store
                .save(if give_hs { Some(&new_hs) } else { None }, &entries)
                .expect("child: save");
            if give_hs {
                hs = new_hs;
            }
            if n > 0 {
                terms.truncate((first - snap.index - 1) as usize);
                terms.extend(std::iter::repeat_n(eterm, n as usize));
            }
        } else if roll < 85 {
            let target = hs.commit.min(last);
            if target <= applied {
                continue;
            }
            let upto = rng.gen_range(applied + 1..=target);
            let batch = store
                .entries(applied + 1, upto + 1, usize::MAX)
                .expect("child: read");
            assert_eq!(batch.len() as u64, upto - applied);
            println!("@APPLY {upto}");
            store.apply(&batch).expect("child: apply");
            applied = upto;
        } else if roll < 96 {
            if applied <= snap.index {
                continue;
            }
            let index = rng.gen_range(snap.index + 1..=applied);
            let term = terms[(index - snap.index - 1) as usize];
            println!("@COMPACT {index} {term}");
            store
                .compact(SnapshotMeta { index, term })
                .expect("child: compact");
            terms.drain(..(index - snap.index) as usize);
            snap = SnapshotMeta { index, term };
        } else {
            // Install our own snapshot, as a follower installing the
            // leader's image at its applied index would.
            if applied != hs.commit.min(last) || applied <= snap.index {
                continue;
            }
            let (meta, image) = store.snapshot().expect("child: snapshot");
            println!("@INSTALL {} {}", meta.index, meta.term);
            store
                .install_snapshot(meta, &image)
                .expect("child: install");
            snap = meta;
            terms.clear();
        }
        println!("@OK");
    }
}

// --------------------------------------------------------------- parent --

/// What the parent knows the store must hold.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    hs: HardState,
    snap: SnapshotMeta,
    /// Terms of the entries after `snap`.
    terms: Vec<u64>,
    applied: u64,
    /// Applied index at the last acknowledged durable operation.
    durable_applied: u64,
    /// The log as it was before each compaction since the last durable
    /// operation, oldest first: a compaction is written without a flush of
    /// its own, so a crash may undo it (and every later one) until the next
    /// durable write covers it.
    undurable: Vec<(SnapshotMeta, Vec<u64>)>,
}

#[derive(Clone, Debug)]
enum Op {
    Save {
        hs: Option<HardState>,
        first: u64,
        n: u64,
        term: u64,
    },
    Apply(u64),
    Compact(SnapshotMeta),
    Install(SnapshotMeta),
}

fn parse(line: &str) -> Option<Op> {
    let line = line.strip_prefix('@')?;
    let name = line.split_whitespace().next()?;
    if !matches!(name, "SAVE" | "APPLY" | "COMPACT" | "INSTALL") {
        return None;
    }
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    match name {
        "SAVE" => Some(Op::Save {
            hs: (f[0] == 1).then_some(HardState {
                term: f[1],
                vote: f[2],
                commit: f[3],
            }),
            first: f[4],
            n: f[5],
            term: f[6],
        }),
        "APPLY" => Some(Op::Apply(f[0])),
        "COMPACT" => Some(Op::Compact(SnapshotMeta {
            index: f[0],
            term: f[1],
        })),
        "INSTALL" => Some(Op::Install(SnapshotMeta {
            index: f[0],
            term: f[1],
        })),
        _ => None,
    }
}

impl Model {
    /// Applies `op`; `applied_terms` records the term of every applied
    /// index (for the key-value replay).
    fn step(&mut self, op: &Op, applied_terms: &mut Vec<u64>) {
        match op {
            Op::Save { hs, first, n, term } => {
                if let Some(hs) = hs {
                    self.hs = *hs;
                }
                if *n > 0 {
                    self.terms.truncate((first - self.snap.index - 1) as usize);
                    self.terms.extend(std::iter::repeat_n(*term, *n as usize));
                }
                self.durable_applied = self.applied;
                self.undurable.clear();
            }
            Op::Apply(upto) => {
                for i in self.applied + 1..=*upto {
                    let t = self.terms[(i - self.snap.index - 1) as usize];
                    applied_terms.truncate(i as usize - 1);
                    applied_terms.push(t);
                }
                self.applied = *upto;
            }
            Op::Compact(meta) => {
                self.undurable.push((self.snap, self.terms.clone()));
                self.terms.drain(..(meta.index - self.snap.index) as usize);
                self.snap = *meta;
                self.durable_applied = self.applied;
            }
            Op::Install(meta) => {
                self.terms.clear();
                self.snap = *meta;
                self.durable_applied = self.applied;
                self.undurable.clear();
            }
        }
    }
}

/// The key-value state after applying entries `1..=upto`.
fn replay(applied_terms: &[u64], upto: u64) -> BTreeMap<String, (String, u64)> {
    let mut model = MemMvcc::new();
    for i in 1..=upto {
        let term = applied_terms[i as usize - 1];
        if i.is_multiple_of(13) {
            continue;
        }
        model.apply(&command(i, term));
    }
    let every = kv::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let r = model.range(&every).expect("range of the model");
    r.body
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision as u64,
                ),
            )
        })
        .collect()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a freshly opened store holds, as printed by a child right after
/// opening (and computed by the parent for the final state).
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    hs: HardState,
    snap: SnapshotMeta,
    terms: Vec<u64>,
    applied: u64,
    kv_hash: u64,
}

fn kv_hash<'a>(items: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> u64 {
    // FNV-1a over key, value and mod index of every item, in key order.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (k, v, i) in items {
        eat(k.as_bytes());
        eat(&[0]);
        eat(v.as_bytes());
        eat(&[0]);
        eat(&i.to_le_bytes());
    }
    h
}

impl Observed {
    /// Loads everything from `store`, checking what needs no model: every
    /// entry's payload, and the hard state term against the log.
    fn from_store(store: &SledStore) -> Observed {
        let rec = store.load().unwrap_or_else(|e| panic!("load failed: {e}"));
        for (k, e) in rec.entries.iter().enumerate() {
            assert_eq!(e.index, rec.snapshot.index + 1 + k as u64);
            assert_eq!(*e, entry(e.index, e.term), "entry {} payload", e.index);
        }
        assert!(
            rec.entries
                .last()
                .is_none_or(|e| e.term <= rec.hard_state.term),
            "hard state term below the last entry's term"
        );
        let (items, more) = scan(store, "", None, 100_000).unwrap();
        assert!(!more);
        Observed {
            hs: rec.hard_state,
            snap: rec.snapshot,
            terms: rec.entries.iter().map(|e| e.term).collect(),
            applied: store.applied_index(),
            kv_hash: kv_hash(
                items
                    .iter()
                    .map(|i| (i.key.as_str(), i.value.as_str(), i.index)),
            ),
        }
    }

    fn to_line(&self) -> String {
        let terms: Vec<String> = self.terms.iter().map(|t| t.to_string()).collect();
        format!(
            "@STATE {} {} {} {} {} {} {} {}",
            self.hs.term,
            self.hs.vote,
            self.hs.commit,
            self.snap.index,
            self.snap.term,
            self.applied,
            self.kv_hash,
            if terms.is_empty() {
                "-".to_string()
            } else {
                terms.join(",")
            }
        )
    }

    fn parse(line: &str) -> Option<Observed> {
        let rest = line.strip_prefix("@STATE ")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        Some(Observed {
            hs: HardState {
                term: n(0),
                vote: n(1),
                commit: n(2),
            },
            snap: SnapshotMeta {
                index: n(3),
                term: n(4),
            },
            applied: n(5),
            kv_hash: n(6),
            terms: if f[7] == "-" {
                vec![]
            } else {
                f[7].split(',').map(|t| t.parse().unwrap()).collect()
            },
        })
    }
}

/// Checks a recovered state against the model after the acknowledged ops
/// (`acked`) and, when an op was in flight, after it too. Returns the model
/// the store matches.
fn check(
    got: &Observed,
    acked: &Model,
    in_flight: Option<&Op>,
    applied_terms: &mut Vec<u64>,
) -> Model {
    let mut candidates = vec![acked.clone()];
    let mut flight_terms = applied_terms.clone();
    if let Some(op) = in_flight {
        let mut after = acked.clone();
        after.step(op, &mut flight_terms);
        candidates.push(after);
    }
    // Compactions not yet covered by a durable write may be undone.
    for (i, (snap, terms)) in acked.undurable.iter().enumerate() {
        let mut before = acked.clone();
        before.snap = *snap;
        before.terms = terms.clone();
        before.undurable.truncate(i);
        candidates.push(before);
    }
    let matching = candidates
        .iter()
        .find(|m| m.hs == got.hs && m.snap == got.snap && m.terms == got.terms)
        .unwrap_or_else(|| {
            panic!(
                "recovered log state matches neither the last acknowledged state nor the \
                 in-flight one.\n recovered: {got:?}\n acked: {acked:?}\n in flight: {in_flight:?}"
            )
        })
        .clone();

    // Applied index: anywhere between what a flush made durable and the
    // newest (an in-flight apply may have landed).
    let newest = candidates.iter().map(|m| m.applied).max().unwrap();
    let applied = got.applied;
    assert!(
        applied >= acked.durable_applied && applied <= newest,
        "applied index {applied} outside [{}, {newest}]",
        acked.durable_applied
    );
    assert!(applied >= got.snap.index);
    if newest > acked.applied {
        *applied_terms = flight_terms;
    }
    let want = replay(applied_terms, applied);
    let want_hash = kv_hash(want.iter().map(|(k, (v, i))| (k.as_str(), v.as_str(), *i)));
    assert_eq!(
        got.kv_hash, want_hash,
        "key-value data does not match the replay up to applied index {applied}"
    );

    let mut now = matching;
    now.applied = applied;
    now.durable_applied = applied;
    // What the store recovered is what is on disk now.
    now.undurable.clear();
    applied_terms.truncate(applied as usize);
    now
}

#[test]
fn crash_consistency_under_kill_9() {
    let seed: u64 = std::env::var("RAFTKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let secs: u64 = std::env::var("RAFTKV_CRASH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    eprintln!("crash test seed {seed} (RAFTKV_CRASH_SEED={seed} to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();

    let mut model = Model {
        hs: HardState::default(),
        snap: SnapshotMeta::default(),
        terms: Vec::new(),
        applied: 0,
        durable_applied: 0,
        undurable: Vec::new(),
    };
    let mut applied_terms: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut iterations, mut acked_total, mut in_flight_landed, mut checked) =
        (0u64, 0u64, 0u64, 0u64);
    // The operation in flight at the last kill (if any), until a child
    // reports the state that kill left.
    let mut pending: Option<Op> = None;
    while Instant::now() < deadline && iterations < 400 {
        iterations += 1;
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--ignored"])
            .env(DIR_ENV, dir.path())
            .env(SEED_ENV, rng.gen::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        // Kill at a random moment: usually while operations run, sometimes
        // during recovery in open.
        let ready_wait = Instant::now() + Duration::from_secs(10);
        if rng.gen_bool(0.9) {
            while !lines.lock().unwrap().iter().any(|l| l == "@READY") {
                assert!(Instant::now() < ready_wait, "child never became ready");
                if let Some(status) = child.0.try_wait().unwrap() {
                    let mut err = String::new();
                    use std::io::Read;
                    child
                        .0
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("child exited early ({status}): {err}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..100_000)));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        reader.join().unwrap();
        if status.success() {
            // Finished its bounded run before the kill: still checked below.
        } else {
            let mut err = String::new();
            use std::io::Read;
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!err.contains("panicked"), "child failed: {err}");
        }

        // The child first reports what it recovered (the state the previous
        // kill left): check it; then replay its acknowledged operations.
        let lines = lines.lock().unwrap().clone();
        for line in &lines {
            if let Some(got) = Observed::parse(line) {
                let before = model.clone();
                model = check(&got, &before, pending.as_ref(), &mut applied_terms);
                if pending.is_some() && model != before {
                    in_flight_landed += 1;
                }
                pending = None;
                checked += 1;
            } else if line == "@OK" {
                let op = pending.take().expect("OK without an operation");
                model.step(&op, &mut applied_terms);
                acked_total += 1;
            } else if let Some(op) = parse(line) {
                assert!(pending.is_none(), "two operations in flight");
                pending = Some(op);
            }
        }
    }
    // The state the last kill left, checked in this process.
    let store = SledStore::open(dir.path(), NODE, CLUSTER)
        .unwrap_or_else(|e| panic!("final reopen failed: {e}"));
    let got = Observed::from_store(&store);
    drop(store);
    model = check(&got, &model.clone(), pending.as_ref(), &mut applied_terms);
    checked += 1;
    eprintln!(
        "crash test: {iterations} kills, {checked} recovered states checked, {acked_total} \
         acknowledged operations, {in_flight_landed} in-flight operations found landed; \
         final last index {}, snapshot {}, applied {}",
        model.snap.index + model.terms.len() as u64,
        model.snap.index,
        model.applied
    );
    assert!(iterations >= 5, "too few iterations to mean anything");
    assert!(checked >= 5, "too few recovered states checked");
    assert!(acked_total > 0, "the child never completed an operation");
}
