//! The two seams between the Raft loop and whatever reacts to applied
//! changes (the watch hub, [`super::watch`]):
//!
//! * [`ApplyObserver`]: the loop tells it, after every apply and every
//!   snapshot install, what changed. It is called on the loop's thread, so
//!   it must not block (a watch hub only appends to a bounded buffer and
//!   wakes tasks).
//! * [`EventHistory`]: read access to the stored history, so a watcher that
//!   starts in the past or falls behind is caught up from storage instead
//!   of from memory.

use crate::kv::{Event, KeyRange, KvError};
use crate::storage::StorageError;

/// Told by the Raft loop what every apply changed. Implementations must be
/// cheap and never block: they run on the loop's thread between applying
/// and answering clients.
pub trait ApplyObserver: Send + Sync + 'static {
    /// The state machine moved to `revision` by applying a command whose
    /// changes are `events` (all of that one revision, in sub-revision
    /// order, `prev_kv` filled). Called once per revision, in revision
    /// order, after the batch holding it is durable in the state machine.
    fn applied(&self, revision: i64, events: &[Event]);

    /// Entries were applied that changed nothing (a no-op, a refused
    /// command, a read-only txn): the revision is still `revision`. Lets
    /// progress notifications report how far this member has applied.
    fn caught_up(&self, revision: i64);

    /// The whole state was replaced by a snapshot (InstallSnapshot): the
    /// store is now at `revision` with compact revision `compact_revision`.
    /// Events between the last [`ApplyObserver::applied`] and `revision`
    /// were never announced; watchers must be caught up from history.
    fn restored(&self, revision: i64, compact_revision: i64);

    /// The history below `compact_revision` is gone (compaction applied):
    /// watchers still needing it must be canceled with that revision.
    fn compacted(&self, compact_revision: i64);
}

/// An observer that ignores everything (tests, tools).
#[derive(Debug, Default)]
pub struct NoObserver;

impl ApplyObserver for NoObserver {
    fn applied(&self, _: i64, _: &[Event]) {}
    fn caught_up(&self, _: i64) {}
    fn restored(&self, _: i64, _: i64) {}
    fn compacted(&self, _: i64) {}
}

/// Why [`EventHistory::events`] could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    /// The start is below the compact revision (the watcher must re-list).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The store failed to read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The stored history of applied changes, readable from any thread.
pub trait EventHistory: Send + Sync + 'static {
    /// The store's current revision.
    fn revision(&self) -> i64;
    /// The store's compact revision (0 if never compacted).
    fn compact_revision(&self) -> i64;
    /// The events of revisions `from_revision..` on keys of `range`, in
    /// order, `prev_kv` filled where the key existed before. Stops at the
    /// end of the revision in which the count reached `limit`, so a
    /// revision is never split. A start below the compact revision is
    /// [`KvError::Compacted`].
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, HistoryError>;
}
