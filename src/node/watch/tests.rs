//! The hub against the reference model: a [`MemMvcc`] behind a mutex is
//! both the store the commands are applied to and the [`EventHistory`] the
//! hub catches up from; what every watcher yields must be exactly
//! `MemMvcc::events` for its range and start, filtered, split by revision.

use std::time::Duration;

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::*;
use crate::kv::{
    prefix_end, Command, CompactionRequest, DeleteRangeRequest, MemMvcc, PutRequest, RequestOp,
    TxnRequest,
};

/// Long enough never to fire on a working hub; a hang fails instead of
/// blocking the suite.
const WAIT: Duration = Duration::from_secs(20);

struct Store(Mutex<MemMvcc>);

impl EventHistory for Store {
    fn revision(&self) -> i64 {
        lock(&self.0).revision()
    }
    fn compact_revision(&self) -> i64 {
        lock(&self.0).compact_revision()
    }
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, HistoryError> {
        Ok(lock(&self.0).events(from_revision, range, limit)?)
    }
}

struct Harness {
    store: Arc<Store>,
    hub: WatchHub,
}

impl Harness {
    fn new(limits: WatchLimits) -> Harness {
        let store = Arc::new(Store(Mutex::new(MemMvcc::new())));
        let hub = WatchHub::new(store.clone(), limits);
        Harness { store, hub }
    }

    /// Applies `cmd` to the store, then tells the hub, as the Raft loop does.
    fn apply(&self, cmd: &Command) {
        let (applied, revision) = {
            let mut m = lock(&self.store.0);
            let a = m.apply(cmd);
            (a, m.revision())
        };
        match applied.new_revision() {
            Some(rev) => self.hub.applied(rev, &applied.events),
            None => self.hub.caught_up(revision),
        }
        if let Some(c) = applied.compact_revision {
            self.hub.compacted(c);
        }
    }

    /// Applies `cmd` to the store only (changes a snapshot brings along).
    fn apply_silently(&self, cmd: &Command) {
        lock(&self.store.0).apply(cmd);
    }

    fn revision(&self) -> i64 {
        lock(&self.store.0).revision()
    }

    /// What a watcher of `req` starting at `start` must yield, per revision.
    fn expected(&self, req: &WatchRequest, start: i64) -> Vec<(i64, Vec<Event>)> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let events = lock(&self.store.0)
            .events(start, range, usize::MAX)
            .expect("history kept");
        let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
        for mut e in events {
            let keep = match e.kind {
                EventKind::Put => !req.no_put,
                EventKind::Delete => !req.no_delete,
            };
            if !keep {
                continue;
            }
            if !req.prev_kv {
                e.prev_kv = None;
            }
            let rev = e.kv.mod_revision;
            match out.last_mut() {
                Some((r, evs)) if *r == rev => evs.push(e),
                _ => out.push((rev, vec![e])),
            }
        }
        out
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

fn delete(key: &[u8], range_end: &[u8]) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    })
}

fn compact(revision: i64) -> Command {
    Command::Compact(CompactionRequest {
        revision,
        physical: false,
    })
}

const KEYS: &[&str] = &["a", "a/1", "a/2", "a/3", "b", "b/x", "c", "d"];

/// A random write: puts, single and range deletes, two-key transactions;
/// some change nothing (deleting what is absent), which the hub sees as
/// `caught_up`.
fn random_command(rng: &mut SmallRng, n: usize) -> Command {
    let key = KEYS[rng.gen_range(0..KEYS.len())];
    match rng.gen_range(0..10) {
        0..=4 => put(key, &format!("v{n}")),
        5 => delete(key.as_bytes(), b""),
        6 => delete(b"a/", &prefix_end(b"a/")),
        7 => delete(b"b", b"c"),
        _ => {
            let other = KEYS[(KEYS.iter().position(|k| *k == key).unwrap_or(0) + 1) % KEYS.len()];
            Command::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: key.into(),
                        value: format!("t{n}").into(),
                        ..PutRequest::default()
                    }),
                    RequestOp::Put(PutRequest {
                        key: other.into(),
                        value: format!("u{n}").into(),
                        ..PutRequest::default()
                    }),
                ],
                failure: Vec::new(),
            })
        }
    }
}

fn req(key: &[u8], range_end: &[u8], start_revision: i64) -> WatchRequest {
    WatchRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision,
        prev_kv: true,
        ..WatchRequest::default()
    }
}

/// The next item, failing the test if none comes within [`WAIT`].
async fn next(w: &mut Watcher) -> WatchItem {
    timeout(WAIT, w.next())
        .await
        .expect("the watcher yields within the wait")
        .expect("the watcher yields an item before ending")
}

/// Collects events until a progress report at or above `until`; returns
/// them and the reported revision.
async fn collect(w: &mut Watcher, until: i64) -> (Vec<(i64, Vec<Event>)>, i64) {
    let mut got = Vec::new();
    w.request_progress();
    loop {
        match next(w).await {
            WatchItem::Events { revision, events } => got.push((revision, events)),
            WatchItem::Progress { revision } if revision >= until => return (got, revision),
            WatchItem::Progress { .. } => w.request_progress(),
            WatchItem::Canceled(r) => panic!("unexpected cancel {r:?}"),
        }
    }
}

/// Checks the per-item shape: revision equals every event's revision,
/// never empty.
fn check_shape(items: &[(i64, Vec<Event>)]) {
    for (rev, events) in items {
        assert!(!events.is_empty(), "empty item at {rev}");
        for e in events {
            assert_eq!(e.kv.mod_revision, *rev);
        }
    }
}

fn specs() -> Vec<WatchRequest> {
    let mut v = Vec::new();
    for (key, end) in [
        (&b"a"[..], &b""[..]),
        (b"a/2", b""),
        (b"b/x", b""),
        (b"a/", &prefix_end(b"a/")[..]),
        (b"a", b"b/"),
        (b"b", b"\x00"),
        (b"\x00", b"\x00"),
        (b"zz", b""),
    ] {
        v.push(req(key, end, 0));
        let mut only_del = req(key, end, 0);
        only_del.no_put = true;
        v.push(only_del);
        let mut only_put = req(key, end, 0);
        only_put.no_delete = true;
        only_put.prev_kv = false;
        v.push(only_put);
    }
    v
}

/// Many watchers (exact, prefix, range, all keys; starts in the past, now,
/// in the future; filters), consumed concurrently with a writer on another
/// thread, small buffers and ring so that every catch-up path runs: each
/// yields exactly the model's events.
async fn many_watchers_case(seed: u64, limits: WatchLimits) -> WatchStats {
    let h = Arc::new(Harness::new(limits));
    let mut rng = SmallRng::seed_from_u64(seed);
    for n in 0..60 {
        h.apply(&random_command(&mut rng, n));
    }
    let now = h.revision();
    let mut tasks = Vec::new();
    let mut finals = Vec::new();
    for (i, mut spec) in specs().into_iter().enumerate() {
        spec.start_revision = match i % 5 {
            0 => 0,
            1 => 1,
            2 => (now / 2).max(1),
            3 => now,
            _ => now + 40,
        };
        let mut w = h.hub.watch(spec.clone()).expect("valid watch");
        let start = w.start_revision();
        if spec.start_revision == 0 {
            assert_eq!(start, now + 1);
        }
        let slow = i % 4 == 0;
        let (final_tx, mut final_rx) = oneshot::channel::<i64>();
        finals.push(final_tx);
        tasks.push(tokio::spawn(async move {
            let mut got: Vec<(i64, Vec<Event>)> = Vec::new();
            let mut until = None;
            loop {
                tokio::select! {
                    item = w.next() => match item {
                        Some(WatchItem::Events { revision, events }) => {
                            got.push((revision, events));
                            if slow {
                                tokio::task::yield_now().await;
                            }
                        }
                        Some(WatchItem::Progress { revision }) => match until {
                            Some(u) if revision >= u => return (spec, start, got, revision),
                            Some(_) => w.request_progress(),
                            None => {}
                        },
                        other => panic!("unexpected {other:?}"),
                    },
                    f = &mut final_rx, if until.is_none() => {
                        until = Some(f.expect("final revision sent"));
                        w.request_progress();
                    }
                }
            }
        }));
    }
    let writer = {
        let h = h.clone();
        std::thread::spawn(move || {
            for n in 60..500 {
                h.apply(&random_command(&mut rng, n));
            }
        })
    };
    writer.join().expect("writer thread");
    let final_rev = h.revision();
    for f in finals {
        f.send(final_rev).expect("task waits");
    }
    for t in tasks {
        let (spec, start, got, progress) = timeout(WAIT, t)
            .await
            .expect("watcher finishes")
            .expect("task ok");
        assert_eq!(progress, final_rev, "{spec:?}");
        check_shape(&got);
        assert_eq!(got, h.expected(&spec, start), "{spec:?} from {start}");
    }
    let stats = h.hub.stats();
    assert_eq!(stats.watchers, 0);
    assert_eq!(stats.cancellations, 0);
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_exactly_the_model_events_small_limits() {
    let limits = WatchLimits {
        buffer_events: 3,
        ring_revisions: 5,
        page_events: 2,
    };
    for seed in 0..3 {
        let stats = many_watchers_case(seed, limits).await;
        // Both catch-up sources ran (the ring, and storage).
        assert!(stats.catch_ups > 0 && stats.history_reads > 0, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_exactly_the_model_events_default_limits() {
    for seed in 10..12 {
        let stats = many_watchers_case(seed, WatchLimits::default()).await;
        // Starts in the past caught up; only starts before the hub
        // existed (revision 1) had to read storage, one page each.
        assert!(
            stats.catch_ups > 0 && stats.history_reads <= 24,
            "{stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_exactly_the_model_events_without_ring() {
    let limits = WatchLimits {
        buffer_events: 1,
        ring_revisions: 0,
        page_events: 1,
    };
    let stats = many_watchers_case(20, limits).await;
    assert!(stats.history_reads > 0, "{stats:?}");
}

#[tokio::test]
async fn slow_watcher_with_tiny_buffer_gets_everything_with_bounded_memory() {
    let h = Harness::new(WatchLimits {
        buffer_events: 2,
        ring_revisions: 4,
        page_events: 2,
    });
    let spec = req(b"\x00", b"\x00", 0);
    let mut w = h.hub.watch(spec.clone()).expect("valid");
    let start = w.start_revision();
    let mut rng = SmallRng::seed_from_u64(7);
    for n in 0..200 {
        h.apply(&random_command(&mut rng, n));
        // A queue holds at most the buffer, or one revision (≤ 2 events
        // here) when it was empty.
        assert!(lock(&w.slot.state).queued_events <= 2);
    }
    let before = h.hub.stats();
    assert!(before.catch_ups >= 1, "{before:?}");
    let (got, progress) = collect(&mut w, h.revision()).await;
    assert_eq!(progress, h.revision());
    check_shape(&got);
    assert_eq!(got, h.expected(&spec, start));
    let after = h.hub.stats();
    assert!(after.history_reads > 0, "{after:?}");
    let sent: usize = got.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(after.events_sent, sent as u64);
    // Live again: the next write is queued by applied itself.
    h.apply(&put("a", "last"));
    match next(&mut w).await {
        WatchItem::Events { revision, events } => {
            assert_eq!(revision, h.revision());
            assert_eq!(events.len(), 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(lock(&w.slot.state).mode, Mode::Live);
}

#[tokio::test]
async fn compaction_cancels_watchers_that_need_compacted_history() {
    let h = Harness::new(WatchLimits {
        buffer_events: 2,
        ring_revisions: 64,
        page_events: 2,
    });
    // Falls behind at once and is never read until after the compaction.
    let mut behind = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    for n in 0..20 {
        h.apply(&put("a", &format!("v{n}"))); // revisions 2..=21
    }
    // Synced: nothing queued, needs nothing old.
    let mut synced = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    h.apply(&compact(15));
    assert_eq!(h.store.compact_revision(), 15);
    let mut too_old = h.hub.watch(req(b"a", b"", 10)).expect("valid");
    let at_compact_spec = req(b"a", b"", 15);
    let mut at_compact = h.hub.watch(at_compact_spec.clone()).expect("valid");

    // The queued revisions come first, then the cancel.
    for rev in [2, 3] {
        match next(&mut behind).await {
            WatchItem::Events { revision, .. } => assert_eq!(revision, rev),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(
        next(&mut behind).await,
        WatchItem::Canceled(CancelReason::Compacted {
            compact_revision: 15
        })
    ));
    assert!(behind.next().await.is_none(), "nothing after the cancel");
    assert!(matches!(
        next(&mut too_old).await,
        WatchItem::Canceled(CancelReason::Compacted {
            compact_revision: 15
        })
    ));

    h.apply(&put("a", "after"));
    let (got, _) = collect(&mut synced, h.revision()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, h.revision());
    let (got, _) = collect(&mut at_compact, h.revision()).await;
    assert_eq!(got, h.expected(&at_compact_spec, 15));
    assert_eq!(got.first().map(|g| g.0), Some(15));

    let stats = h.hub.stats();
    assert_eq!(stats.cancellations, 2);
    assert_eq!(stats.watchers, 2);
}

/// A watcher whose start lies beyond a restored snapshot's compact
/// revision stays open through the restore, and reports from its start.
#[tokio::test]
async fn restore_compacting_below_a_future_start_keeps_the_watcher() {
    let h = Harness::new(WatchLimits::default());
    for n in 0..5 {
        h.apply(&put(KEYS[n % KEYS.len()], "v"));
    }
    let start = h.revision() + 20;
    let spec = req(b"\x00", b"\x00", start);
    let mut future = h.hub.watch(spec.clone()).expect("valid");
    // The snapshot brings 10 revisions and compacts all but the last.
    for n in 0..10 {
        h.apply_silently(&put(KEYS[n % KEYS.len()], "s"));
    }
    let c = h.revision() - 1;
    h.apply_silently(&compact(c));
    assert!(c < start);
    h.hub.restored(h.revision(), c);
    while h.revision() < start + 3 {
        h.apply(&put("a/late", "x"));
    }
    let (got, _) = collect(&mut future, h.revision()).await;
    assert_eq!(got, h.expected(&spec, start));
    assert_eq!(got.first().map(|g| g.0), Some(start));
    assert_eq!(h.hub.stats().cancellations, 0);
}

#[tokio::test]
async fn restored_resyncs_every_watcher_from_history() {
    let h = Harness::new(WatchLimits {
        buffer_events: 4,
        ring_revisions: 8,
        page_events: 3,
    });
    let mut rng = SmallRng::seed_from_u64(3);
    for n in 0..10 {
        h.apply(&random_command(&mut rng, n));
    }
    let all = req(b"\x00", b"\x00", 0);
    let mut synced = h.hub.watch(all.clone()).expect("valid");
    let start = synced.start_revision();
    let a_spec = req(b"a/", &prefix_end(b"a/"), 0);
    let mut prefix = h.hub.watch(a_spec.clone()).expect("valid");
    let a_start = prefix.start_revision();
    let (got, _) = collect(&mut synced, h.revision()).await;
    assert!(got.is_empty());
    // A snapshot brings 30 revisions the hub never saw.
    for n in 10..40 {
        h.apply_silently(&random_command(&mut rng, n));
    }
    h.hub.restored(h.revision(), h.store.compact_revision());
    h.apply(&put("a/1", "after"));
    let (got, progress) = collect(&mut synced, h.revision()).await;
    assert_eq!(progress, h.revision());
    assert_eq!(got, h.expected(&all, start));
    let (got, _) = collect(&mut prefix, h.revision()).await;
    assert_eq!(got, h.expected(&a_spec, a_start));

    // A snapshot whose compact revision is above what a watcher needs.
    let mut needs_old = h.hub.watch(all.clone()).expect("valid");
    let needs_from = needs_old.start_revision();
    for n in 40..50 {
        h.apply_silently(&put(KEYS[n % KEYS.len()], "s"));
    }
    let c = h.revision() - 2;
    assert!(c > needs_from);
    h.apply_silently(&compact(c));
    h.hub.restored(h.revision(), c);
    assert!(matches!(
        next(&mut needs_old).await,
        WatchItem::Canceled(CancelReason::Compacted { compact_revision }) if compact_revision == c
    ));
    // The others, also behind by then, were canceled the same way.
    assert!(matches!(
        next(&mut synced).await,
        WatchItem::Canceled(CancelReason::Compacted { compact_revision }) if compact_revision == c
    ));
}

#[tokio::test]
async fn progress_reports_the_revision_after_every_earlier_event() {
    let h = Harness::new(WatchLimits::default());
    let mut live = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    live.request_progress();
    assert!(matches!(
        next(&mut live).await,
        WatchItem::Progress { revision: 1 }
    ));
    for n in 0..5 {
        h.apply(&put("b", &format!("{n}")));
    }
    // Nothing changes the revision: the hub is told it is caught up.
    h.apply(&delete(b"missing", b""));
    live.request_progress();
    assert!(matches!(
        next(&mut live).await,
        WatchItem::Progress { revision: 6 }
    ));

    // A watcher from the past: progress only after its catch-up.
    let mut past = h.hub.watch(req(b"b", b"", 2)).expect("valid");
    past.request_progress();
    for rev in 2..=6 {
        match next(&mut past).await {
            WatchItem::Events { revision, .. } => assert_eq!(revision, rev),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(
        next(&mut past).await,
        WatchItem::Progress { revision: 6 }
    ));
    // A queued event goes before the progress.
    h.apply(&put("a", "x"));
    live.request_progress();
    assert!(matches!(
        next(&mut live).await,
        WatchItem::Events { revision: 7, .. }
    ));
    assert!(matches!(
        next(&mut live).await,
        WatchItem::Progress { revision: 7 }
    ));
}

#[tokio::test]
async fn idle_watchers_cost_applied_nothing() {
    let h = Harness::new(WatchLimits {
        buffer_events: 1000,
        ..WatchLimits::default()
    });
    let mut exact: Vec<Watcher> = (0..1000)
        .map(|i| {
            h.hub
                .watch(req(format!("k{i:04}").as_bytes(), b"", 0))
                .expect("valid")
        })
        .collect();
    let ranges: Vec<Watcher> = (0..3)
        .map(|_| {
            h.hub
                .watch(req(b"z/", &prefix_end(b"z/"), 0))
                .expect("valid")
        })
        .collect();
    let before = h.hub.stats();
    assert_eq!(before.watchers, 1003);
    for n in 0..100 {
        h.apply(&put("k0007", &format!("{n}")));
    }
    let mid = h.hub.stats();
    assert_eq!(mid.apply_visits - before.apply_visits, 100);
    for n in 0..10 {
        h.apply(&put("z/1", &format!("{n}")));
    }
    let after = h.hub.stats();
    assert_eq!(after.apply_visits - mid.apply_visits, 30);
    for (i, w) in exact.iter().enumerate() {
        let queued = lock(&w.slot.state).queue.len();
        assert_eq!(queued, if i == 7 { 100 } else { 0 });
    }
    let (got, _) = collect(&mut exact[7], h.revision()).await;
    assert_eq!(got.len(), 100);
    drop(ranges);
}

#[tokio::test]
async fn dropping_a_watcher_unregisters_it() {
    let h = Harness::new(WatchLimits::default());
    let a = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    let a2 = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    let r = h.hub.watch(req(b"a", b"b", 0)).expect("valid");
    assert_eq!(h.hub.stats().watchers, 3);
    drop(a);
    drop(r);
    assert_eq!(h.hub.stats().watchers, 1);
    {
        let st = lock(&h.hub.inner.state);
        assert_eq!(st.exact.get(&b"a"[..]).map(Vec::len), Some(1));
        assert!(st.ranges.is_empty());
    }
    let before = h.hub.stats().apply_visits;
    h.apply(&put("a", "1"));
    assert_eq!(h.hub.stats().apply_visits - before, 1);
    drop(a2);
    assert_eq!(h.hub.stats().watchers, 0);
    assert!(lock(&h.hub.inner.state).exact.is_empty());
}

#[tokio::test]
async fn stop_yields_what_is_queued_then_stopped() {
    let h = Harness::new(WatchLimits::default());
    let mut w = h.hub.watch(req(b"a", b"", 0)).expect("valid");
    h.apply(&put("a", "1"));
    h.hub.stop();
    assert!(matches!(
        next(&mut w).await,
        WatchItem::Events { revision: 2, .. }
    ));
    assert!(matches!(
        next(&mut w).await,
        WatchItem::Canceled(CancelReason::Stopped)
    ));
    assert!(w.next().await.is_none());
    assert!(matches!(
        h.hub.watch(req(b"a", b"", 0)),
        Err(WatchError::Stopped)
    ));
    assert_eq!(h.hub.stats().watchers, 0);
}

#[test]
fn bad_requests_are_refused() {
    let h = Harness::new(WatchLimits::default());
    assert_eq!(
        h.hub.watch(req(b"", b"", 0)).err(),
        Some(WatchError::EmptyKey)
    );
    assert_eq!(
        h.hub.watch(req(b"b", b"a", 0)).err(),
        Some(WatchError::EmptyRange)
    );
    assert_eq!(
        h.hub.watch(req(b"a", b"", -1)).err(),
        Some(WatchError::NegativeRevision(-1))
    );
    assert_eq!(h.hub.stats().watchers, 0);
}

/// A gap in the announced revisions (a missed `applied`) is read from
/// storage rather than lost.
#[tokio::test]
async fn a_skipped_revision_is_read_from_history() {
    let h = Harness::new(WatchLimits::default());
    let spec = req(b"\x00", b"\x00", 0);
    let mut w = h.hub.watch(spec.clone()).expect("valid");
    h.apply(&put("a", "1"));
    h.apply_silently(&put("b", "2"));
    h.apply(&put("c", "3"));
    let (got, _) = collect(&mut w, h.revision()).await;
    assert_eq!(got, h.expected(&spec, 2));
    assert_eq!(got.len(), 3);
}

/// A history that applies one queued write (store and hub) while a watcher
/// reads it: the write lands after the hub's revision was taken for the
/// page and before the page is queued.
struct RacyStore {
    store: Store,
    hub: std::sync::OnceLock<WatchHub>,
    pending: Mutex<VecDeque<Command>>,
}

impl EventHistory for RacyStore {
    fn revision(&self) -> i64 {
        self.store.revision()
    }
    fn compact_revision(&self) -> i64 {
        self.store.compact_revision()
    }
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, HistoryError> {
        let out = self.store.events(from_revision, range, limit);
        let cmd = lock(&self.pending).pop_front();
        if let (Some(cmd), Some(hub)) = (cmd, self.hub.get()) {
            let applied = lock(&self.store.0).apply(&cmd);
            if let Some(rev) = applied.new_revision() {
                hub.applied(rev, &applied.events);
            }
        }
        out
    }
}

#[tokio::test]
async fn writes_during_a_history_read_are_neither_lost_nor_repeated() {
    let racy = Arc::new(RacyStore {
        store: Store(Mutex::new(MemMvcc::new())),
        hub: std::sync::OnceLock::new(),
        pending: Mutex::new(VecDeque::new()),
    });
    // No ring: every catch-up step reads storage; pages large enough that
    // each read ends at the hub's revision, with a write racing it.
    let limits = WatchLimits {
        buffer_events: 100,
        ring_revisions: 0,
        page_events: 100,
    };
    let hub = WatchHub::new(racy.clone(), limits);
    assert!(racy.hub.set(hub.clone()).is_ok());
    for n in 0..6 {
        let applied = lock(&racy.store.0).apply(&put(KEYS[n % 3], "v"));
        if let Some(rev) = applied.new_revision() {
            hub.applied(rev, &applied.events);
        }
    }
    for n in 0..5 {
        lock(&racy.pending).push_back(put(KEYS[n % 3], "racing"));
    }
    let spec = req(b"\x00", b"\x00", 2);
    let mut w = hub.watch(spec.clone()).expect("valid");
    let mut got = Vec::new();
    while !lock(&racy.pending).is_empty()
        || got.last().map(|g: &(i64, Vec<Event>)| g.0) != Some(racy.revision())
    {
        match next(&mut w).await {
            WatchItem::Events { revision, events } => got.push((revision, events)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected = {
        let m = lock(&racy.store.0);
        let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
        for e in m
            .events(2, KeyRange::new(b"\x00", b"\x00"), usize::MAX)
            .expect("kept")
        {
            out.push((e.kv.mod_revision, vec![e]));
        }
        out
    };
    assert_eq!(got, expected);
    assert_eq!(got.len(), 11); // revisions 2..=12
    assert!(hub.stats().history_reads >= 5);
}
