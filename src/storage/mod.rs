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
//! * [`SnapshotStore`] is what the Raft loop needs beyond those two to
//!   ship and receive whole states: a consistent view of the applied state
//!   to stream to a follower ([`SnapshotSource`]), staging an incoming
//!   image without touching the live state ([`SnapshotWriter`] →
//!   [`StagedSnapshot`]), and installing a staged image atomically.
//! * [`NodeStore`] is all three together: the storage the Raft loop
//!   (`crate::node`) is generic over.
//!
//! Every trait is implemented on sled (`sled_store`, the real node) and in
//! memory ([`mem::MemStore`], used by the deterministic simulation), so the
//! simulation runs the same loop over storage with the same contract;
//! [`conformance`] is the suite of checks both pass
//! (`tests/storage_conformance.rs`).

use std::sync::Arc;

use crate::kv;
use crate::raft::{Entry, HardState, SnapshotMeta};

pub mod conformance;
#[cfg(test)]
pub(crate) mod golden_tests;
pub mod identity;
pub mod image;
pub mod mem;
pub mod mvcc_tree;
pub mod record;
pub mod sled_store;
pub mod snapshot_file;

pub use image::{ImageChunk, ImageChunks, ImageTrailer};
pub use sled_store::{SledStore, SnapshotSession, StagedImage, StagingWriter};

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// An operating-system call failed (open, write, fsync, ...).
    #[error("storage I/O error: {context}: {source}")]
    Io {
        /// What was being done, on which file.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// sled failed with neither an I/O error nor corruption (a bug or a
    /// misuse inside sled).
    #[error("sled failed: {context}: {source}")]
    Sled {
        /// What was being done, on which tree.
        context: String,
        /// sled's error.
        #[source]
        source: Arc<sled::Error>,
    },
    /// A record could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(#[source] record::RecordError),
    /// Another process holds the data dir.
    #[error("data dir {path} is in use by another process (lock on {lock} held)")]
    Locked {
        /// The data dir.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// Another snapshot is being staged or waits to be installed.
    #[error("{path}: another snapshot is being received or installed")]
    StagingBusy {
        /// The data dir.
        path: String,
    },
    /// A snapshot view ended before its image was read (a snapshot was
    /// installed meanwhile, or too many keys changed under it).
    #[error("snapshot image aborted: {reason}")]
    SessionAborted {
        /// Why.
        reason: String,
    },
    /// A sled transaction was aborted.
    #[error("{path}: transaction aborted")]
    TransactionAborted {
        /// The data dir.
        path: String,
    },
    /// The store refuses writes after an earlier write failed: what is on
    /// disk may not be what the process believes.
    #[error(
        "{path}: store refuses writes after an earlier write failure ({first}); restart the node"
    )]
    Halted {
        /// The data dir.
        path: String,
        /// The first failure.
        first: Arc<StorageError>,
    },
    /// A thread of the store panicked.
    #[error("{task} panicked")]
    Panicked {
        /// Which thread.
        task: &'static str,
    },
}

impl StorageError {
    /// An [`StorageError::Io`] while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
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

/// What applying one log entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Nothing to execute: a no-op or configuration entry, or an entry at
    /// or below the applied index (skipped).
    Noop,
    /// A key-value command ran: its answer and the changes it made (see
    /// [`kv::Applied`]); a command that does not decode is answered with
    /// [`kv::KvError::Invalid`]-style refusal and changes nothing.
    Command(kv::Applied),
}

/// The applied key-value data: etcd v3's MVCC store (see [`crate::kv`]),
/// with the applied index.
///
/// Every implementation runs [`kv::execute`] over its own
/// [`kv::MvccView`] and persists the outcome, so stores cannot disagree on
/// what a command means.
pub trait StateMachine {
    /// Highest log index applied.
    fn applied_index(&self) -> u64;

    /// Applies committed entries in order (entries ≤ the applied index are
    /// skipped and reported as [`EntryOutcome::Noop`]); the data, the
    /// revision, the history and the new applied index change in one
    /// atomic step. An entry that does not follow the applied index is
    /// refused, and then nothing of the batch is applied. Returns one
    /// outcome per entry.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, StorageError>;

    /// A range read at the current revision or a past one
    /// ([`kv::read_range`]'s semantics).
    fn range(
        &self,
        req: &kv::RangeRequest,
    ) -> Result<kv::Revisioned<kv::RangeResponse>, kv::ExecError<StorageError>>;

    /// The changes of revisions `from_revision..` on keys of `range`, in
    /// order with `prev_kv` filled, stopping at the end of the revision in
    /// which the count reached `limit` (see
    /// [`crate::kv::MemMvcc::events`]).
    fn events(
        &self,
        from_revision: i64,
        range: kv::KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<kv::Event>, kv::ExecError<StorageError>>;

    /// The current revision (1 for an empty store).
    fn revision(&self) -> Result<i64, StorageError>;

    /// The compact revision (0 if never compacted).
    fn compact_revision(&self) -> Result<i64, StorageError>;

    /// Physically removes history below the compact revision, at most
    /// about `budget` changes per call; `true` when nothing is left to
    /// remove. Reads are exact before, during and after (see
    /// [`crate::kv::view`]). A store may postpone the work while a snapshot
    /// is being read (returning `false`).
    fn compact_step(&mut self, budget: usize) -> Result<bool, StorageError>;

    /// etcd's HashKV: a hash of every version at or below `revision` and
    /// above the compact revision, equal on replicas with equal history.
    fn hash_kv(&self, revision: i64) -> Result<u32, kv::ExecError<StorageError>>;

    /// One key's current record (a convenience over [`StateMachine::range`]).
    fn get(&self, key: &[u8]) -> Result<Option<kv::KeyValue>, StorageError> {
        let req = kv::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        match self.range(&req) {
            Ok(r) => Ok(r.body.kvs.into_iter().next()),
            Err(kv::ExecError::Store(e)) => Err(e),
            Err(kv::ExecError::Kv(e)) => Err(StorageError::Corruption {
                tree: "kv".into(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!("a plain read was refused: {e}"),
            }),
        }
    }

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

/// A consistent view of the applied state at one index, to be streamed to
/// a follower while the state machine keeps applying. Dropping it ends the
/// view.
pub trait SnapshotSource: Send + 'static {
    /// The chunks of the view's image.
    type Chunks: Iterator<Item = Result<ImageChunk, StorageError>> + Send;

    /// The applied index (and its term) the view shows.
    fn meta(&self) -> SnapshotMeta;

    /// The view as an [image] in chunks of about `chunk_bytes`; the
    /// last chunk carries the [`ImageTrailer`]. Reading may block (run it
    /// off the Raft loop).
    fn chunks(self, chunk_bytes: usize) -> Self::Chunks;
}

/// Receives an incoming image piece by piece, verifying every frame, into
/// storage that is not the live state machine. Dropping it unfinished
/// discards what was staged.
pub trait SnapshotWriter: Send + 'static {
    /// What a finished writer produces.
    type Staged: StagedSnapshot;

    /// Verifies and stages the next piece of the image (any size; frames
    /// may span pieces).
    fn write(&mut self, piece: &[u8]) -> Result<(), StorageError>;

    /// Checks that the whole image arrived intact (end marker, the
    /// trailer's length and crc32) and makes it durable.
    fn finish(self, trailer: &ImageTrailer) -> Result<Self::Staged, StorageError>;
}

/// A complete, verified, durable image waiting to be installed with
/// [`SnapshotStore::install_staged`]. Dropping it discards the image.
pub trait StagedSnapshot: Send + 'static {
    /// The snapshot the image holds.
    fn meta(&self) -> SnapshotMeta;
    /// Keys in the image.
    fn items(&self) -> u64;
    /// Size of the image in bytes.
    fn bytes(&self) -> u64;
}

/// The snapshot operations of a node's store.
///
/// Rules every implementation keeps:
/// * [`SnapshotStore::begin_snapshot`] is cheap (the Raft loop calls it)
///   and its view does not change while `apply` goes on.
/// * Staging never changes what [`StateMachine`] reads or what
///   [`LogStore::load`] returns.
/// * [`SnapshotStore::install_staged`] is atomic and durable: after a
///   crash the store holds either its old state and log, or the image as
///   state machine, the image's meta as snapshot and an empty log.
pub trait SnapshotStore {
    /// A consistent view being read.
    type Source: SnapshotSource;
    /// A verified image waiting to be installed.
    type Staged: StagedSnapshot;
    /// Stages an incoming image.
    type Writer: SnapshotWriter<Staged = Self::Staged>;

    /// The applied index and the term of the entry at it.
    fn applied(&self) -> SnapshotMeta;

    /// A consistent view of the state machine at the applied index.
    fn begin_snapshot(&self) -> Result<Self::Source, StorageError>;

    /// Starts staging an incoming image. May wait for an earlier staging
    /// to finish (run it off the Raft loop).
    fn stage_snapshot(&self) -> Result<Self::Writer, StorageError>;

    /// Makes `staged` the state machine, records its meta as the latest
    /// snapshot and empties the log, in one durable step.
    fn install_staged(&mut self, staged: Self::Staged) -> Result<(), StorageError>;
}

/// Everything the Raft loop does to its node's storage.
pub trait NodeStore: LogStore + StateMachine + SnapshotStore {
    /// Makes everything written so far durable (before a clean exit).
    fn flush(&self) -> Result<(), StorageError>;
}
