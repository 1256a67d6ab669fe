//! Storage benchmarks (`cargo bench --bench storage`).
//!
//! * `save_fsync/{1,16,256}`: `LogStore::save` of that many 100-byte
//!   entries with a hard state (one sled transaction + one durable flush);
//!   throughput in entries/s, time per iteration = time per flush.
//! * `save_fsync_no_hs/16`: the same without a hard state (a plain sled
//!   batch instead of a transaction), to price the transaction.
//! * `flush_parts`: where a durable flush spends its time — sled's own
//!   `flush` (pwrite + sync_file_range), the full durable sync (+
//!   fdatasync), and, as a baseline, appending the same bytes to a plain
//!   file + fdatasync (what a hand-rolled WAL would pay).
//! * `apply/256`: applying 256 puts to the KV tree (one sled batch, no
//!   flush).
//! * `read_range/256`: reading 256 entries for replication.

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftkv::kv::{Command, PutRequest};
use raftkv::raft::{Entry, EntryPayload, HardState, SnapshotMeta};
use raftkv::storage::{LogStore, SledStore, StateMachine};

/// A log entry carrying a 100-byte command.
fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(vec![(index % 251) as u8; 100]),
    }
}

/// A put of a ~100-byte value to one of 10k keys.
fn put_entry(index: u64) -> Entry {
    let value = format!("{index:0>100}");
    Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(
            Command::Put(PutRequest {
                key: format!("key-{:05}", (index * 7919) % 10_000).into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            })
            .encode(),
        ),
    }
}

/// A temporary dir on the disk under test: `RAFTKV_BENCH_DIR` if set, else
/// the system temp dir.
fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("RAFTKV_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir")
}

fn new_store() -> (tempfile::TempDir, SledStore) {
    let dir = bench_dir();
    let store = SledStore::open(dir.path(), "bench", "bench").expect("open");
    (dir, store)
}

/// Keeps the log short while benchmarking: applies and compacts everything
/// (outside the timed section).
fn trim(store: &mut SledStore) {
    let last = store.last_index();
    let applied = store.applied_index();
    if last > applied {
        let todo = store.entries(applied + 1, last + 1, usize::MAX).unwrap();
        store.apply(&todo).unwrap();
    }
    let term = store.term(last).unwrap().unwrap_or(1);
    store.compact(SnapshotMeta { index: last, term }).unwrap();
}

fn bench_save(c: &mut Criterion) {
    let mut group = c.benchmark_group("save_fsync");
    for batch in [1u64, 16, 256] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let (_dir, mut store) = new_store();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = store.last_index() + 1;
                    let entries: Vec<Entry> = (first..first + batch).map(|i| entry(i, 1)).collect();
                    let hs = HardState {
                        term: 1,
                        vote: 1,
                        commit: first - 1,
                    };
                    let t = Instant::now();
                    store.save(Some(&hs), &entries).unwrap();
                    total += t.elapsed();
                    if store.last_index() - store.first_index() > 20_000 {
                        trim(&mut store);
                    }
                }
                total
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("save_fsync_no_hs");
    group.throughput(Throughput::Elements(16));
    group.bench_function("16", |b| {
        let (_dir, mut store) = new_store();
        store
            .save(
                Some(&HardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                }),
                &[],
            )
            .unwrap();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = store.last_index() + 1;
                let entries: Vec<Entry> = (first..first + 16).map(|i| entry(i, 1)).collect();
                let t = Instant::now();
                store.save(None, &entries).unwrap();
                total += t.elapsed();
                if store.last_index() - store.first_index() > 20_000 {
                    trim(&mut store);
                }
            }
            total
        });
    });
    group.finish();
}

fn bench_flush_parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush_parts");
    // 16 entries' worth of bytes per write.
    let payload = vec![7u8; 16 * 110];
    group.bench_function("sled_insert_flush_only", |b| {
        let (_dir, store) = new_store();
        let tree = store.raw_db().open_tree("bench_raw").unwrap();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tree.insert(i.to_be_bytes(), payload.as_slice()).unwrap();
            store.raw_db().flush().unwrap();
        });
    });
    group.bench_function("sled_insert_durable_sync", |b| {
        let (_dir, store) = new_store();
        let tree = store.raw_db().open_tree("bench_raw").unwrap();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tree.insert(i.to_be_bytes(), payload.as_slice()).unwrap();
            store.flush().unwrap();
        });
    });
    group.bench_function("plain_file_append_fdatasync", |b| {
        let dir = bench_dir();
        let mut f = std::fs::File::create(dir.path().join("wal")).unwrap();
        // Preallocate like a WAL segment would, so fdatasync has no size
        // metadata to write.
        f.set_len(256 << 20).unwrap();
        f.sync_all().unwrap();
        b.iter(|| {
            f.write_all(&payload).unwrap();
            f.sync_data().unwrap();
        });
    });
    group.finish();
}

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(256));
    group.bench_function("256", |b| {
        let (_dir, mut store) = new_store();
        // Pre-populate the key space.
        let pre: Vec<Entry> = (1..=10_000).map(put_entry).collect();
        store
            .save(
                Some(&HardState {
                    term: 1,
                    vote: 1,
                    commit: 10_000,
                }),
                &pre,
            )
            .unwrap();
        store.apply(&pre).unwrap();
        trim(&mut store);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = store.last_index() + 1;
                let entries: Vec<Entry> = (first..first + 256).map(put_entry).collect();
                store.save(None, &entries).unwrap();
                let t = Instant::now();
                store.apply(&entries).unwrap();
                total += t.elapsed();
                if store.last_index() - store.first_index() > 20_000 {
                    trim(&mut store);
                }
            }
            total
        });
    });
    group.finish();
}

fn bench_read_range(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_range");
    group.throughput(Throughput::Elements(256));
    group.bench_function("256", |b| {
        let (_dir, mut store) = new_store();
        let entries: Vec<Entry> = (1..=10_000).map(|i| entry(i, 1)).collect();
        store
            .save(
                Some(&HardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                }),
                &entries,
            )
            .unwrap();
        let mut lo = 1u64;
        b.iter(|| {
            let got = store.entries(lo, lo + 256, usize::MAX).unwrap();
            assert_eq!(got.len(), 256);
            lo = if lo + 512 > 10_000 { 1 } else { lo + 256 };
            got
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_save, bench_flush_parts, bench_apply, bench_read_range
}
criterion_main!(benches);
