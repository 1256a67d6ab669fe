//! [`EtcdBackend`]: what the etcd API needs from the node.
//!
//! The gRPC services ([`super::EtcdService`]) and the JSON gateway
//! ([`super::gateway`]) translate etcd's messages and errors; everything
//! with state lives behind this trait: proposing commands through Raft,
//! reads (linearizable or serializable), watches, membership and status.
//! The server implements it over the running node
//! (`crate::server::etcd::NodeBackend`); the tests implement it over an
//! in-memory [`crate::kv::MemMvcc`].
//!
//! Errors are [`EtcdError`]s, so the node decides which of etcd's errors a
//! failure is (`From<WriteError>` and `From<ReadError>` give the usual
//! mapping); a refused command is an [`EtcdError::Kv`].

use std::future::Future;

use futures::Stream;

use super::convert::HeaderInfo;
use super::error::EtcdError;
use crate::kv::{Command, CommandResponse, Event, RangeRequest, RangeResponse, Revisioned};

/// The node as the etcd API sees it. Every method may be called from any
/// task, concurrently; none may block the caller's thread (await instead).
pub trait EtcdBackend: Send + Sync + 'static {
    /// The event feed of one watch (see [`WatchFeed`]).
    type Feed: WatchFeed;

    /// Cluster id, this member's id and the current Raft term, for the
    /// response headers. Cheap: called for every answer.
    fn header_info(&self) -> HeaderInfo;

    /// The current revision of this member's store (the header revision
    /// of answers that do not carry their own: member list, status,
    /// watch control messages).
    fn revision(&self) -> i64;

    /// Proposes `cmd` through Raft and waits until it is applied here, or
    /// its deadline passes. The answer is the one apply produced (a refused
    /// command is `Err(EtcdError::Kv)`, as applied by every replica).
    /// Followers forward to the leader or answer an error, as the node
    /// does for the JSON API.
    fn propose(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<Revisioned<CommandResponse>, EtcdError>> + Send;

    /// Serves a range read: linearizable (ReadIndex, on the leader or
    /// through it) unless `req.serializable`, which reads the local store
    /// as it is. The request has been validated.
    fn range(
        &self,
        req: RangeRequest,
    ) -> impl Future<Output = Result<Revisioned<RangeResponse>, EtcdError>> + Send;

    /// Starts a watch (see [`WatchSpec`] and [`WatchFeed`] for the
    /// contract). `Err` refuses it at once (etcd then answers a created and
    /// canceled response with the error's text as `cancel_reason`); a start
    /// below the compact revision is *not* an `Err` but a feed whose first
    /// item is [`WatchUpdate::Canceled`] with
    /// [`WatchCancel::Compacted`], as etcd does.
    fn watch(&self, spec: WatchSpec) -> Result<Self::Feed, EtcdError>;

    /// The cluster's members (etcd lists voters and learners, with peer
    /// and client URLs). `linearizable` (etcd 3.5) asks for the list as of
    /// a ReadIndex rather than this member's view.
    fn members(
        &self,
        linearizable: bool,
    ) -> impl Future<Output = Result<Vec<MemberInfo>, EtcdError>> + Send;

    /// This member's status, for Maintenance.Status.
    fn status(&self) -> impl Future<Output = Result<StatusInfo, EtcdError>> + Send;

    /// The hash of the key-value history at `revision` (0 = current),
    /// equal on every replica that has applied it: a corruption check.
    fn hash_kv(&self, revision: i64) -> impl Future<Output = Result<HashKvInfo, EtcdError>> + Send;

    /// Transfers leadership to member `target` (this member must lead;
    /// etcd answers [`EtcdError::NotLeader`] otherwise and
    /// [`EtcdError::BadLeaderTransferee`] for an unknown target).
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

/// What one watch wants. The key range follows etcd's conventions
/// ([`crate::kv::KeyRange`]); an empty `key` has already been replaced by
/// `[0]` (etcd's "smallest key"), and an empty interval has already been
/// refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key of the range (or the only key).
    pub key: Vec<u8>,
    /// End of the range (etcd's conventions).
    pub range_end: Vec<u8>,
    /// First revision to report (inclusive); 0 = the revision after the
    /// current one.
    pub start_revision: i64,
    /// Whether the watcher wants `prev_kv`. A hint: the service drops
    /// `prev_kv` from events when it is false, so a feed may always fill it.
    pub prev_kv: bool,
    /// Whether the watcher drops put events. A hint: the service filters.
    pub no_put: bool,
    /// Whether the watcher drops delete events. A hint: the service filters.
    pub no_delete: bool,
}

/// The events of one watch, as a stream, plus a way to ask how far it is.
///
/// The feed's contract (what the watch hub must provide):
/// - [`WatchUpdate::Events`] carry every event of the watched range with
///   revision ≥ the start, exactly once, in revision order, whole revisions
///   per item (a revision's events are never split across items), only
///   applied events; `prev_kv` filled where the key existed before (it may
///   be omitted when compacted, as etcd does).
/// - The feed buffers a bounded amount; a watcher that falls behind is
///   caught up from storage, or canceled with
///   [`WatchCancel::Compacted`] when the history it needs is gone.
/// - After [`WatchFeed::request_progress`], the feed yields
///   [`WatchUpdate::Progress`] once every event up to that revision has
///   been yielded (etcd sends progress only for synced watchers).
/// - [`WatchUpdate::Canceled`] is the last item; a feed that ends without
///   one is treated as canceled by the server.
/// - Dropping the feed ends the watch and frees its resources at once.
pub trait WatchFeed: Stream<Item = WatchUpdate> + Send + Unpin + 'static {
    /// Asks for one [`WatchUpdate::Progress`] (see the trait doc).
    fn request_progress(&mut self);
}

/// One item of a [`WatchFeed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchUpdate {
    /// Events of one or more whole revisions.
    Events {
        /// The header revision etcd sends with them: the store revision the
        /// hub published them at (≥ the last event's revision).
        revision: i64,
        /// The events, in revision and sub-revision order.
        events: Vec<Event>,
    },
    /// Every event up to `revision` has been yielded.
    Progress {
        /// The revision the watcher is synced to.
        revision: i64,
    },
    /// The watch is over; nothing follows.
    Canceled(WatchCancel),
}

/// Why a watch ended on the server's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchCancel {
    /// The events the watcher needs were compacted away: etcd's answer
    /// carries `compact_revision` and the client re-lists from there.
    Compacted {
        /// The store's compact revision.
        compact_revision: i64,
    },
    /// Any other end (the node stops, ...): sent as `cancel_reason`.
    Error(EtcdError),
}

/// One member, as etcd's `Member`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Human-readable name (empty for a member that has not started).
    pub name: String,
    /// URLs peers reach it at.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it at (empty for a member that has not started).
    pub client_urls: Vec<String>,
    /// Whether it is a learner (non-voting).
    pub is_learner: bool,
}

/// A member's status, as etcd's `StatusResponse` (the version string is
/// the API layer's, [`super::ETCD_VERSION`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// Bytes of storage the member uses.
    pub db_size: i64,
    /// Bytes of storage in use by live data (≤ `db_size`).
    pub db_size_in_use: i64,
    /// The leader's member id, 0 if none is known.
    pub leader: u64,
    /// The member's last Raft log index (etcd: committed index).
    pub raft_index: u64,
    /// The member's current Raft term.
    pub raft_term: u64,
    /// The member's applied index.
    pub raft_applied_index: u64,
    /// Whether the member is a learner.
    pub is_learner: bool,
    /// Active alarms or problems, as text (etcd: "NOSPACE", ...).
    pub errors: Vec<String>,
}

/// The answer to a history hash, as etcd's `HashKVResponse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKvInfo {
    /// The hash of every version with revision ≤ the requested one and ≥
    /// the compact revision.
    pub hash: u32,
    /// The store's compact revision when hashed.
    pub compact_revision: i64,
    /// The store's current revision (the header revision).
    pub revision: i64,
}
