//! Disk growth of the sled store under a sustained overwrite load of a
//! fixed key set, the way a node writes (save + fsync, apply, compact every
//! 10 000 entries), without the network. `#[ignore]`d: it is a measurement
//! that takes a minute or two in release mode:
//!
//! ```text
//! cargo test --release --test storage_disk_growth -- --ignored --nocapture
//! ```
//!
//! Knobs: `RAFTKV_GROWTH_KEYS` (default 20 000), `RAFTKV_GROWTH_WRITES`
//! (600 000), `RAFTKV_GROWTH_SECS` (time cap, 300). The process-level
//! counterpart is `benches/disk_growth.sh`.

mod storage_common;

use std::time::{Duration, Instant};

use raftkv::raft::{Entry, HardState};
use raftkv::storage::{LogStore, StateMachine};
use rand::{Rng, SeedableRng};
use storage_common::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `db` file must level off: in the second half of the run it stays
/// within a bounded multiple of the live data (key-value pairs plus the
/// log that compaction keeps), instead of growing with the writes.
#[test]
#[ignore = "measurement; run in release mode with --ignored --nocapture"]
fn db_file_levels_off_under_sustained_overwrites() {
    let keys = env("RAFTKV_GROWTH_KEYS", 20_000);
    let writes = env("RAFTKV_GROWTH_WRITES", 600_000);
    let cap = Duration::from_secs(env("RAFTKV_GROWTH_SECS", 300));
    const BATCH: u64 = 64;
    const THRESHOLD: u64 = 10_000;
    const VALUE: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let value = "x".repeat(VALUE);
    let key = |k: u64| format!("bench/{k:010}");
    let live = keys * (key(0).len() + VALUE) as u64;
    let log_kept = 2 * THRESHOLD * (VALUE as u64 + 64);
    let (mut next, mut snap) = (1u64, 0u64);
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    while next <= writes && started.elapsed() < cap {
        let entries: Vec<Entry> = (0..BATCH)
            .map(|k| put(next + k, 1, &key(rng.gen_range(0..keys)), &value))
            .collect();
        next += BATCH;
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: next - 1,
        };
        s.save(Some(&hs), &entries).unwrap();
        s.apply(&entries).unwrap();
        if next > snap + THRESHOLD {
            let meta = s.applied();
            s.compact(meta).unwrap();
            snap = meta.index;
        }
        if (next - 1) % 25_000 < BATCH {
            let size = std::fs::metadata(dir.path().join("db")).unwrap().len();
            println!(
                "writes {:>7}  t {:>5.1} s  db {:>4} MB",
                next - 1,
                started.elapsed().as_secs_f64(),
                size >> 20
            );
            samples.push((next - 1, size));
        }
    }
    assert!(samples.len() >= 8, "too few samples to judge");
    let second_half = &samples[samples.len() / 2..];
    let worst = second_half.iter().map(|s| s.1).max().unwrap();
    println!(
        "live key-value data {} MB, log kept ≤ {} MB; db file in the second half ≤ {} MB \
         ({:.1}x the live data, {:.1}x live + log)",
        live >> 20,
        log_kept >> 20,
        worst >> 20,
        worst as f64 / live as f64,
        worst as f64 / (live + log_kept) as f64
    );
    assert!(
        worst <= 4 * (live + log_kept),
        "the db file keeps growing: {worst} bytes for {live} bytes of live data"
    );
}
