//! The watch hub: fans applied changes out to watchers, and catches up
//! the ones that start in the past or fall behind from stored history.
//!
//! [`WatchHub`] is the Raft loop's [`ApplyObserver`]. Every applied
//! revision goes into a bounded ring of recent revisions and, for the
//! watchers whose range holds one of its keys, into their bounded queues.
//! Exact-key watchers are found through a map, so a put on one key touches
//! only that key's watchers (plus the range watchers, which are checked
//! one by one). `applied` never waits on a watcher: a watcher whose queue
//! is full is switched to catch-up instead, and its own task reads what it
//! missed later.
//!
//! Each watcher is in one of two modes, changed only under the hub's lock:
//! * **live**: every matching revision up to the hub's revision is in its
//!   queue or was yielded; `applied` appends the next ones.
//! * **catching up** from `next`: every matching revision below `next` is
//!   queued or yielded, and the watcher's task fetches the rest, from the
//!   ring while it still covers `next`, else from
//!   [`EventHistory::events`] in pages of at most
//!   [`WatchLimits::page_events`], never beyond the hub's revision. When it
//!   reaches the hub's revision (under the lock, so `applied` cannot slip a
//!   revision in between) it becomes live again. That is why nothing is
//!   lost and nothing is yielded twice.
//!
//! A watcher's memory is its queue: at most [`WatchLimits::buffer_events`]
//! events, or a single revision when one revision alone is larger.
//!
//! The [`Watcher`] is a [`Stream`] of [`WatchItem`]s, built to make the
//! etcd layer's feed contract (`crate::etcd`'s `WatchFeed`) a thin wrapper:
//! whole revisions in order, exactly once, progress on request once
//! synced, a cancel reason as the last item, and dropping it unregisters.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use futures::Stream;

use super::observer::{ApplyObserver, EventHistory, HistoryError};
use crate::kv::{Event, EventKind, KeyRange, KvError};

#[cfg(test)]
mod tests;

/// The hub's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Events one watcher may have queued before it is switched to
    /// catch-up (a single larger revision is still queued whole).
    pub buffer_events: usize,
    /// Recent revisions kept in memory for catching up without reading
    /// storage.
    pub ring_revisions: usize,
    /// Events asked of [`EventHistory::events`] per catch-up read (a
    /// revision is never split, so a page may hold more).
    pub page_events: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            buffer_events: 1024,
            ring_revisions: 4096,
            page_events: 256,
        }
    }
}

/// What one watch wants (etcd's `WatchCreateRequest`, the parts the hub
/// acts on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// First key of the range, or the only key (non-empty).
    pub key: Vec<u8>,
    /// End of the range, etcd's conventions ([`KeyRange::new`]).
    pub range_end: Vec<u8>,
    /// First revision to report, inclusive; 0 = the revision after the
    /// hub's current one.
    pub start_revision: i64,
    /// Keep `prev_kv` in events (dropped otherwise).
    pub prev_kv: bool,
    /// Leave out put events.
    pub no_put: bool,
    /// Leave out delete events.
    pub no_delete: bool,
}

/// Why [`WatchHub::watch`] refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// Keys are non-empty, so an empty `key` matches nothing (etcd's layer
    /// replaces it by `[0]` before asking).
    #[error("watch key must not be empty")]
    EmptyKey,
    /// `range_end` is at or below `key`: no key can match.
    #[error("watch range is empty (range_end <= key)")]
    EmptyRange,
    /// `start_revision` is negative.
    #[error("watch start revision {0} is negative")]
    NegativeRevision(i64),
    /// The hub was stopped ([`WatchHub::stop`]).
    #[error("the watch hub is stopped")]
    Stopped,
}

/// Why a watcher ended; always its last item.
#[derive(Clone, Debug)]
pub enum CancelReason {
    /// The history the watcher needs is compacted away; the client must
    /// re-read from `compact_revision`.
    Compacted {
        /// The store's compact revision.
        compact_revision: i64,
    },
    /// The hub was stopped (the node shuts down).
    Stopped,
    /// Reading the history failed.
    Failed(HistoryError),
}

/// One item of a [`Watcher`].
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// The matching events of one whole revision.
    Events {
        /// The revision of every event in `events`.
        revision: i64,
        /// The events, in sub-revision order (never empty).
        events: Vec<Event>,
    },
    /// Every matching event up to `revision` has been yielded (the answer
    /// to [`Watcher::request_progress`], sent once the watcher is synced).
    Progress {
        /// The hub's revision.
        revision: i64,
    },
    /// The watch is over; nothing follows.
    Canceled(CancelReason),
}

/// Counters for metrics, as of one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Watchers registered now.
    pub watchers: usize,
    /// Events yielded to watchers, in total.
    pub events_sent: u64,
    /// Times a watcher had to catch up (started in the past, overflowed
    /// its queue, or a snapshot was installed).
    pub catch_ups: u64,
    /// Catch-up reads from [`EventHistory::events`].
    pub history_reads: u64,
    /// Watchers ended by the hub (compaction, stop, failure).
    pub cancellations: u64,
    /// Watchers `applied` handed a revision to (or switched to catch-up):
    /// the per-apply work, apart from checking the range watchers.
    pub apply_visits: u64,
}

/// The watch hub (see the module doc). Cheap to clone: clones share it.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    history: Arc<dyn EventHistory>,
    limits: WatchLimits,
    state: Mutex<HubState>,
    watchers: AtomicUsize,
    events_sent: AtomicU64,
    catch_ups: AtomicU64,
    history_reads: AtomicU64,
    cancellations: AtomicU64,
    apply_visits: AtomicU64,
}

struct HubState {
    /// The last revision announced (applied, caught up or restored).
    revision: i64,
    compact_revision: i64,
    /// Every revision in `(ring_floor, revision]`, oldest first.
    ring: VecDeque<(i64, Arc<[Event]>)>,
    ring_floor: i64,
    stopped: bool,
    next_id: u64,
    /// Exact-key watchers by key.
    exact: HashMap<Vec<u8>, Vec<Arc<Slot>>>,
    /// Range and prefix watchers.
    ranges: Vec<Arc<Slot>>,
}

/// One watcher's shared part: what it watches (fixed), its queue and mode
/// (behind its lock), and its task's waker.
struct Slot {
    id: u64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    state: Mutex<SlotState>,
    waker: AtomicWaker,
}

struct SlotState {
    queue: VecDeque<(i64, Vec<Event>)>,
    queued_events: usize,
    mode: Mode,
    progress_wanted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    CatchUp { next: i64 },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every watcher down with it: the
    // state stays consistent between statements that hold the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::new(&self.key, &self.range_end)
    }

    fn is_exact(&self) -> bool {
        self.range_end.is_empty()
    }

    /// The events of one revision this watcher reports, shaped for it.
    fn select(&self, revision: i64, events: &[Event]) -> Vec<Event> {
        if revision < self.start {
            return Vec::new();
        }
        let range = self.range();
        events
            .iter()
            .filter(|e| range.contains(&e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .map(|e| Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect()
    }
}

impl SlotState {
    fn push(&mut self, revision: i64, events: Vec<Event>) {
        self.queued_events += events.len();
        self.queue.push_back((revision, events));
    }
}

impl WatchHub {
    /// A hub over `history`, starting at its current revision.
    pub fn new(history: Arc<dyn EventHistory>, limits: WatchLimits) -> WatchHub {
        let limits = WatchLimits {
            buffer_events: limits.buffer_events.max(1),
            ring_revisions: limits.ring_revisions,
            // A page lands in an empty queue: at most a queue's worth.
            page_events: limits.page_events.clamp(1, limits.buffer_events.max(1)),
        };
        let revision = history.revision();
        let state = HubState {
            revision,
            compact_revision: history.compact_revision(),
            ring: VecDeque::new(),
            ring_floor: revision,
            stopped: false,
            next_id: 1,
            exact: HashMap::new(),
            ranges: Vec::new(),
        };
        WatchHub {
            inner: Arc::new(Inner {
                history,
                limits,
                state: Mutex::new(state),
                watchers: AtomicUsize::new(0),
                events_sent: AtomicU64::new(0),
                catch_ups: AtomicU64::new(0),
                history_reads: AtomicU64::new(0),
                cancellations: AtomicU64::new(0),
                apply_visits: AtomicU64::new(0),
            }),
        }
    }

    /// Starts a watch. A start below the compact revision is not an error:
    /// the watcher's first item is [`CancelReason::Compacted`].
    pub fn watch(&self, req: WatchRequest) -> Result<Watcher, WatchError> {
        if req.key.is_empty() {
            return Err(WatchError::EmptyKey);
        }
        if KeyRange::new(&req.key, &req.range_end).is_empty() {
            return Err(WatchError::EmptyRange);
        }
        if req.start_revision < 0 {
            return Err(WatchError::NegativeRevision(req.start_revision));
        }
        let mut st = lock(&self.inner.state);
        if st.stopped {
            return Err(WatchError::Stopped);
        }
        let start = if req.start_revision == 0 {
            st.revision + 1
        } else {
            req.start_revision
        };
        // A start in the past is served by the watcher's own task: the
        // registration only records where it must begin.
        let mode = if start <= st.revision {
            self.inner.catch_ups.fetch_add(1, Ordering::Relaxed);
            Mode::CatchUp { next: start }
        } else {
            Mode::Live
        };
        let id = st.next_id;
        st.next_id += 1;
        let slot = Arc::new(Slot {
            id,
            key: req.key,
            range_end: req.range_end,
            start,
            prev_kv: req.prev_kv,
            no_put: req.no_put,
            no_delete: req.no_delete,
            state: Mutex::new(SlotState {
                queue: VecDeque::new(),
                queued_events: 0,
                mode,
                progress_wanted: false,
            }),
            waker: AtomicWaker::new(),
        });
        if slot.is_exact() {
            st.exact
                .entry(slot.key.clone())
                .or_default()
                .push(slot.clone());
        } else {
            st.ranges.push(slot.clone());
        }
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        drop(st);
        Ok(Watcher {
            inner: self.inner.clone(),
            slot,
            done: false,
        })
    }

    /// The counters, now.
    pub fn stats(&self) -> WatchStats {
        let i = &self.inner;
        WatchStats {
            watchers: i.watchers.load(Ordering::Relaxed),
            events_sent: i.events_sent.load(Ordering::Relaxed),
            catch_ups: i.catch_ups.load(Ordering::Relaxed),
            history_reads: i.history_reads.load(Ordering::Relaxed),
            cancellations: i.cancellations.load(Ordering::Relaxed),
            apply_visits: i.apply_visits.load(Ordering::Relaxed),
        }
    }

    /// The last revision the hub was told about.
    pub fn revision(&self) -> i64 {
        lock(&self.inner.state).revision
    }

    /// Ends every watch: each watcher yields what it has queued, then
    /// [`CancelReason::Stopped`]; new watches are refused.
    pub fn stop(&self) {
        let mut st = lock(&self.inner.state);
        st.stopped = true;
        st.ring.clear();
        for slot in all_slots(&st) {
            slot.waker.wake();
        }
    }

    /// Every live watcher switches to catch-up from the revision after the
    /// hub's current one: used when revisions went by unannounced.
    fn resync_all(&self, st: &mut HubState) {
        st.ring.clear();
        let after = st.revision + 1;
        let mut switched = 0;
        for slot in all_slots(st) {
            let mut s = lock(&slot.state);
            if s.mode == Mode::Live {
                // A watcher starting in the future owes nothing before its
                // start: catching up from earlier would read history it
                // filters out, or cancel it as compacted when a restored
                // snapshot compacted revisions it never wanted.
                s.mode = Mode::CatchUp {
                    next: after.max(slot.start),
                };
                switched += 1;
            }
            drop(s);
            slot.waker.wake();
        }
        self.inner.catch_ups.fetch_add(switched, Ordering::Relaxed);
    }
}

fn all_slots(st: &HubState) -> impl Iterator<Item = &Arc<Slot>> {
    st.exact.values().flatten().chain(st.ranges.iter())
}

impl ApplyObserver for WatchHub {
    fn applied(&self, revision: i64, events: &[Event]) {
        let mut st = lock(&self.inner.state);
        if st.stopped || revision <= st.revision {
            return;
        }
        if revision != st.revision + 1 {
            // Revisions were skipped: whatever they held is only in storage.
            self.resync_all(&mut st);
            st.ring_floor = revision - 1;
        }
        st.revision = revision;
        let shared: Arc<[Event]> = events.into();
        if self.inner.limits.ring_revisions > 0 {
            while st.ring.len() >= self.inner.limits.ring_revisions {
                if let Some((r, _)) = st.ring.pop_front() {
                    st.ring_floor = r;
                }
            }
            st.ring.push_back((revision, shared.clone()));
        } else {
            st.ring_floor = revision;
        }

        // The watchers this revision concerns: exact ones by key, range
        // ones by checking their range.
        let mut matched: Vec<&Arc<Slot>> = Vec::new();
        for e in events {
            if let Some(slots) = st.exact.get(&e.kv.key) {
                matched.extend(slots);
            }
        }
        for slot in &st.ranges {
            let range = slot.range();
            if events.iter().any(|e| range.contains(&e.kv.key)) {
                matched.push(slot);
            }
        }
        matched.sort_unstable_by_key(|s| s.id);
        matched.dedup_by_key(|s| s.id);
        self.inner
            .apply_visits
            .fetch_add(matched.len() as u64, Ordering::Relaxed);

        let buffer = self.inner.limits.buffer_events;
        let mut overflowed = 0;
        for slot in matched {
            let mut s = lock(&slot.state);
            if s.mode != Mode::Live {
                continue;
            }
            let selected = slot.select(revision, &shared);
            if selected.is_empty() {
                continue;
            }
            if !s.queue.is_empty() && s.queued_events + selected.len() > buffer {
                // Too slow: stop feeding it; its task reads from here on.
                s.mode = Mode::CatchUp { next: revision };
                overflowed += 1;
            } else {
                s.push(revision, selected);
            }
            drop(s);
            slot.waker.wake();
        }
        if overflowed > 0 {
            self.inner
                .catch_ups
                .fetch_add(overflowed, Ordering::Relaxed);
        }
    }

    fn caught_up(&self, revision: i64) {
        let mut st = lock(&self.inner.state);
        if st.stopped || revision <= st.revision {
            return;
        }
        // The revision moved without an announced change: treat the gap
        // as unknown and let watchers read it from storage.
        self.resync_all(&mut st);
        st.revision = revision;
        st.ring_floor = revision;
    }

    fn restored(&self, revision: i64, compact_revision: i64) {
        let mut st = lock(&self.inner.state);
        if st.stopped {
            return;
        }
        self.resync_all(&mut st);
        st.revision = st.revision.max(revision);
        st.ring_floor = st.revision;
        st.compact_revision = st.compact_revision.max(compact_revision);
    }

    fn compacted(&self, compact_revision: i64) {
        let mut st = lock(&self.inner.state);
        if compact_revision <= st.compact_revision {
            return;
        }
        st.compact_revision = compact_revision;
        // Live watchers need nothing old; a catching-up one below the
        // compact revision is canceled by its task, woken here so that it
        // learns even when idle.
        for slot in all_slots(&st) {
            let s = lock(&slot.state);
            if matches!(s.mode, Mode::CatchUp { next } if next < compact_revision) {
                drop(s);
                slot.waker.wake();
            }
        }
    }
}

/// One watch: a [`Stream`] of [`WatchItem`]s (see the module doc). Ends
/// after its [`WatchItem::Canceled`]. Dropping it unregisters it.
///
/// Catch-up reads of [`EventHistory::events`] run inside `poll_next`, on
/// the polling task, one bounded page per step: a slow store delays that
/// watcher only, never `applied`.
pub struct Watcher {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    done: bool,
}

/// What the watcher's task does next, decided under the hub's lock.
enum Step {
    /// Items were queued, or the mode changed: look again.
    Again,
    /// Nothing to do until woken.
    Wait,
    /// Yield this.
    Yield(WatchItem),
    /// Read history from `from`, reporting nothing above `upto`.
    Read { from: i64, upto: i64 },
}

impl Watcher {
    /// Asks for one [`WatchItem::Progress`], yielded once every event up to
    /// the hub's revision has been yielded.
    pub fn request_progress(&self) {
        lock(&self.slot.state).progress_wanted = true;
        self.slot.waker.wake();
    }

    /// The first revision this watcher reports (a start of 0 resolved to
    /// the revision after the hub's then current one).
    pub fn start_revision(&self) -> i64 {
        self.slot.start
    }

    /// The hub's id of this watcher (unique per hub).
    pub fn id(&self) -> u64 {
        self.slot.id
    }

    fn cancel(&mut self, reason: CancelReason) -> WatchItem {
        self.inner.cancellations.fetch_add(1, Ordering::Relaxed);
        self.unregister();
        WatchItem::Canceled(reason)
    }

    fn unregister(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let mut st = lock(&self.inner.state);
        let id = self.slot.id;
        if self.slot.is_exact() {
            if let Some(slots) = st.exact.get_mut(&self.slot.key) {
                slots.retain(|s| s.id != id);
                if slots.is_empty() {
                    st.exact.remove(&self.slot.key);
                }
            }
        } else {
            st.ranges.retain(|s| s.id != id);
        }
        self.inner.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Decides the next step when the queue is empty.
    fn step(&self) -> Step {
        let limits = self.inner.limits;
        let st = lock(&self.inner.state);
        let mut s = lock(&self.slot.state);
        if !s.queue.is_empty() {
            return Step::Again;
        }
        if st.stopped {
            return Step::Yield(WatchItem::Canceled(CancelReason::Stopped));
        }
        let next = match s.mode {
            Mode::Live => {
                if s.progress_wanted {
                    s.progress_wanted = false;
                    return Step::Yield(WatchItem::Progress {
                        revision: st.revision,
                    });
                }
                return Step::Wait;
            }
            Mode::CatchUp { next } => next,
        };
        if next < st.compact_revision {
            return Step::Yield(WatchItem::Canceled(CancelReason::Compacted {
                compact_revision: st.compact_revision,
            }));
        }
        if next > st.revision {
            // Nothing in between is missing: live from here.
            s.mode = Mode::Live;
            return Step::Again;
        }
        if next <= st.ring_floor {
            return Step::Read {
                from: next,
                upto: st.revision,
            };
        }
        // The ring holds every revision from `next`: copy up to a queue's
        // worth, and go live if that reaches the hub's revision.
        let first = st.ring.partition_point(|(r, _)| *r < next);
        let mut reached = next - 1;
        for (r, events) in st.ring.range(first..) {
            let selected = self.slot.select(*r, events);
            if !selected.is_empty() {
                if !s.queue.is_empty() && s.queued_events + selected.len() > limits.buffer_events {
                    break;
                }
                s.push(*r, selected);
            }
            reached = *r;
        }
        s.mode = if reached >= st.revision {
            Mode::Live
        } else {
            Mode::CatchUp { next: reached + 1 }
        };
        Step::Again
    }

    /// One page of history from `from`, queued; the new catch-up point.
    fn read_history(&self, from: i64, upto: i64) -> Result<(), CancelReason> {
        let page = self.inner.limits.page_events;
        self.inner.history_reads.fetch_add(1, Ordering::Relaxed);
        let events = match self.inner.history.events(from, self.slot.range(), page) {
            Ok(events) => events,
            Err(HistoryError::Kv(KvError::Compacted { compact_revision })) => {
                return Err(CancelReason::Compacted { compact_revision })
            }
            Err(e) => return Err(CancelReason::Failed(e)),
        };
        // A full page ends with a complete revision; a short one is
        // everything up to the store's revision, at least `upto`.
        let mut next = upto + 1;
        if events.len() >= page {
            if let Some(last) = events.last() {
                next = next.min(last.kv.mod_revision + 1);
            }
        }
        let mut s = lock(&self.slot.state);
        if s.mode != (Mode::CatchUp { next: from }) {
            // Only this task moves a catching-up watcher; anything else
            // means the page is stale (cannot happen, but never duplicate).
            return Ok(());
        }
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv.mod_revision;
            let end = events[i..]
                .iter()
                .position(|e| e.kv.mod_revision != rev)
                .map_or(events.len(), |n| i + n);
            if rev < next {
                let selected = self.slot.select(rev, &events[i..end]);
                if !selected.is_empty() {
                    s.push(rev, selected);
                }
            }
            i = end;
        }
        s.mode = Mode::CatchUp { next };
        Ok(())
    }
}

impl Stream for Watcher {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Register before looking, so a wake between the look and the
            // return is not lost.
            this.slot.waker.register(cx.waker());
            {
                let mut s = lock(&this.slot.state);
                if let Some((revision, events)) = s.queue.pop_front() {
                    s.queued_events -= events.len();
                    drop(s);
                    this.inner
                        .events_sent
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    return Poll::Ready(Some(WatchItem::Events { revision, events }));
                }
            }
            match this.step() {
                Step::Again => {}
                Step::Wait => return Poll::Pending,
                Step::Yield(WatchItem::Canceled(reason)) => {
                    return Poll::Ready(Some(this.cancel(reason)));
                }
                Step::Yield(item) => return Poll::Ready(Some(item)),
                Step::Read { from, upto } => {
                    if let Err(reason) = this.read_history(from, upto) {
                        return Poll::Ready(Some(this.cancel(reason)));
                    }
                }
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.unregister();
    }
}
