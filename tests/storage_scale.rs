//! Open time of a large store (issue 8: "restart to serving ≤ 2 s").
//!
//! Ignored by default: it writes `RAFTKV_SCALE_KEYS` keys (default 100 000)
//! of 100-byte values through the [`StateMachine`] apply path, the way a
//! node does (log append, apply, compaction every 10 000 entries), then
//! reopens the store and prints how long `open` and `load` took. Speed is
//! measured here, not asserted; the assertions check that the reopened
//! store holds every key. It also prints the process's peak and current
//! RSS, with sled's cache set by `RAFTKV_SCALE_CACHE_MB` (default: the
//! store's default). Run it in release:
//!
//! ```sh
//! RAFTKV_SCALE_KEYS=1000000 RAFTKV_SCALE_CACHE_MB=64 \
//!     cargo test --release --test storage_scale -- --ignored --nocapture
//! ```

mod storage_common;

use std::time::Instant;

use raftkv::raft::{HardState, SnapshotMeta};
use raftkv::storage::sled_store::{KvCheck, StoreOptions, CACHE_CAPACITY};
use raftkv::storage::{LogStore, SledStore, StateMachine};
use storage_common::*;

const BATCH: u64 = 1000;
const COMPACT_EVERY: u64 = 10_000;

#[test]
#[ignore = "slow: a scale measurement, run with --release -- --ignored --nocapture"]
fn open_time_at_scale() {
    let n: u64 = std::env::var("RAFTKV_SCALE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cache_bytes = std::env::var("RAFTKV_SCALE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(CACHE_CAPACITY, |mb| mb << 20);
    let options = |kv_check| StoreOptions {
        cache_bytes,
        kv_check,
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut max_compact = std::time::Duration::ZERO;
    {
        let mut s =
            SledStore::open_with(dir.path(), NODE, CLUSTER, options(KvCheck::AtOpen)).unwrap();
        let mut last_compact = 0;
        let mut lo = 1;
        while lo <= n {
            let hi = (lo + BATCH - 1).min(n);
            let entries = puts(lo, hi, 1, 100);
            let hs = HardState {
                term: 1,
                vote: 1,
                commit: hi,
            };
            s.save(Some(&hs), &entries).unwrap();
            s.apply(&entries).unwrap();
            if hi - last_compact >= COMPACT_EVERY {
                let t = Instant::now();
                s.compact(SnapshotMeta { index: hi, term: 1 }).unwrap();
                max_compact = max_compact.max(t.elapsed());
                last_compact = hi;
            }
            lo = hi + 1;
        }
        s.flush().unwrap();
    }
    let load_time = started.elapsed();
    let peak_writing = proc_status_kb("VmHWM");
    let t = Instant::now();
    let s = SledStore::open_with(dir.path(), NODE, CLUSTER, options(KvCheck::AtOpen)).unwrap();
    let open_at_open = t.elapsed();
    drop(s);
    let t = Instant::now();
    let s = SledStore::open_with(dir.path(), NODE, CLUSTER, options(KvCheck::Background)).unwrap();
    let open_time = t.elapsed();
    let t = Instant::now();
    let rec = s.load().unwrap();
    let load_log_time = t.elapsed();
    assert_eq!(s.applied_index(), n);
    assert_eq!(rec.hard_state.commit, n);
    let (items, more) = scan(&s, &format!("k{n}"), None, 10).unwrap();
    assert_eq!(items.len(), 1, "{items:?} {more}");
    let t = Instant::now();
    let verified = s.verify_kv_now();
    let verify_time = t.elapsed();
    assert!(verified.is_ok(), "{verified:?}");
    let background = s.wait_kv_check(std::time::Duration::from_secs(120));
    assert!(
        matches!(
            background,
            raftkv::storage::sled_store::KvCheckStatus::Passed
        ),
        "{background:?}"
    );
    println!(
        "keys={n} cache={}MiB write={load_time:?} open(AtOpen)={open_at_open:?} \
         open(Background)={open_time:?} load={load_log_time:?} full_kv_verify={verify_time:?} \
         max_compact={max_compact:?} log_tail={} peak_rss_writing={}MB rss_now={}MB db={}MB",
        cache_bytes >> 20,
        rec.entries.len(),
        peak_writing / 1024,
        proc_status_kb("VmRSS") / 1024,
        dir_size(dir.path()) >> 20,
    );
}

/// A field of /proc/self/status, in kB (0 when unavailable).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
