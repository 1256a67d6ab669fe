//! Durable node storage: the Raft log, hard state, snapshots and the KV
//! state machine.
//!
//! Two traits split the work the way the [`crate::raft::Ready`] contract
//! does:
//!
//! * [`LogStore`] keeps what Raft needs to survive a restart (hard state,
//!   log, snapshot metadata). Its writes must be durable before they return:
//!   the runtime sends votes and append acknowledgements right after.
//! * [`StateMachine`] keeps the applied key-value data; the data and the
//!   applied index change together, atomically.
//!
//! Both are implemented on sled (`sled_store`, the real node) and in memory
//! (`mem`, used by the deterministic simulation), so the simulation runs the
//! same logic the node does; [`conformance`] is the suite of checks both
//! pass (`tests/storage_conformance.rs`).

use crate::kv::{ApplyResult, KvItem};
use crate::raft::{Entry, HardState, SnapshotMeta};

pub mod conformance;
#[cfg(test)]
pub(crate) mod golden_tests;
pub mod identity;
pub mod image;
pub mod mem;
pub mod record;
pub mod sled_store;

pub use sled_store::{ImageChunk, SledStore, SnapshotSession, StagedImage, StagingWriter};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A record failed its checksum or could not be decoded.
    #[error("corrupt record in tree `{tree}` at key {key}: {reason}")]
    Corruption {
        /// Tree (or file) holding the record.
        tree: String,
        /// Key of the record, printed readably.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The data dir belongs to another node or cluster, or has another format.
    #[error("data dir {path} {reason}")]
    IdentityMismatch {
        /// Data dir.
        path: String,
        /// What does not match.
        reason: String,
    },
    /// The stored state breaks an invariant (e.g. a hole in the log).
    #[error("inconsistent storage: {0}")]
    Inconsistent(String),
    /// An entry that was asked for has been compacted away.
    #[error("log entry {0} has been compacted")]
    Compacted(u64),
    /// The underlying database failed.
    #[error("storage I/O error: {0}")]
    Io(String),
}

/// Everything a node recovers from its log store at start.
#[derive(Clone, Debug, Default)]
pub struct RecoveredLog {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// Latest snapshot's metadata (index 0 = none).
    pub snapshot: SnapshotMeta,
    /// Log entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// Durable Raft state: hard state, log entries and snapshot metadata.
///
/// Rules every implementation keeps:
/// * When [`LogStore::save`] returns `Ok`, the hard state and entries are on
///   disk (fsync'd); a crash at any later instant keeps them.
/// * The log has no holes: stored entries are contiguous from
///   `snapshot.index + 1`.
/// * Writes are atomic: a crash during `save` or `compact` leaves either the
///   old or the new state, never a mix that breaks the rule above.
pub trait LogStore {
    /// Reads back what was stored, verifying every checksum.
    fn load(&self) -> Result<RecoveredLog, StorageError>;

    /// Persists `hard_state` (when given) and `entries` with one flush.
    /// Stored entries with index ≥ `entries[0].index` are deleted first
    /// (they conflict with the leader's log).
    fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), StorageError>;

    /// Records `meta` as the latest snapshot; entries ≤ `meta.index` are
    /// no longer part of the log (an implementation may reclaim their space
    /// later). Need not be durable on return, but must be ordered before
    /// every later write: a crash may undo it only together with everything
    /// written after it, which leaves the earlier snapshot and its complete
    /// log. A `meta.index` at or below the current snapshot is a no-op;
    /// a `meta` whose term differs from the log's at its index is refused,
    /// and so is one past the last entry (the sled store, which is its own
    /// state machine, refuses one past its applied index instead).
    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError>;

    /// Replaces the whole log by the snapshot `meta` (a follower installing a
    /// leader's snapshot): every entry is deleted.
    fn reset_to_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError>;
}

/// The applied key-value data.
pub trait StateMachine {
    /// Highest log index applied.
    fn applied_index(&self) -> u64;

    /// Applies committed entries in order (entries ≤ the applied index are
    /// skipped and reported as [`ApplyResult::Noop`]); the data and the new
    /// applied index change in one atomic step. An entry that does not
    /// follow the applied index is refused, and then nothing of the batch
    /// is applied. Returns one result per entry.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, StorageError>;

    /// Reads one key: its value and mod index.
    fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError>;

    /// Lists keys starting with `prefix`, strictly after `after` (if given),
    /// sorted, at most `limit`; the flag says whether more follow.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KvItem>, bool), StorageError>;

    /// Serialises the whole state as of the applied index.
    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError>;

    /// Replaces the whole state by a snapshot image, atomically.
    ///
    /// To install a leader's snapshot, call this *before*
    /// [`LogStore::reset_to_snapshot`]: a crash in between leaves a state
    /// machine ahead of its log, which a store can finish on restart; the
    /// other order would leave a log starting after the state machine, with
    /// the entries in between lost.
    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError>;
}
