//! What the rest of the process holds of a node: the [`NodeHandle`] the
//! HTTP server calls into, the [`Inbox`] the peer transport delivers into,
//! and the values that travel between them and the Raft loop.
//!
//! Everything here is cheap and never waits on consensus unless the caller
//! asks it to (`propose`, `read_barrier`); status and health come from a
//! `watch` channel the loop refreshes after every round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::kv::{
    Command, CommandResponse, Event, ExecError, KeyRange, KvError, RangeRequest, RangeResponse,
    Revisioned,
};
use crate::raft::{Message, NodeId, PeerStatus, RaftError, Role};
use crate::storage::{StateMachine, StorageError};

use super::membership::Membership;
use super::observer::{EventHistory, HistoryError};
use super::watch::{WatchError, WatchHub, WatchRequest, Watcher};

/// Read access to the applied key-value data (etcd's MVCC store), usable
/// from any thread while the Raft loop writes.
pub trait KvReader: Send + Sync + 'static {
    /// A range read at the current or a past revision.
    fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<Revisioned<RangeResponse>, ExecError<StorageError>>;
    /// Stored changes from `from_revision` on (see
    /// [`StateMachine::events`]).
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, ExecError<StorageError>>;
    /// The current revision.
    fn revision(&self) -> Result<i64, StorageError>;
    /// The compact revision (0 if never compacted).
    fn compact_revision(&self) -> Result<i64, StorageError>;
    /// etcd's HashKV at `revision` (0 = current).
    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>>;
}

/// A [`KvReader`] over a store handle that reads while another handle of
/// the same store applies (the sled store; clones share the data).
pub struct StoreReader<S>(pub S);

impl<S: StateMachine + Send + Sync + 'static> KvReader for StoreReader<S> {
    fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<Revisioned<RangeResponse>, ExecError<StorageError>> {
        self.0.range(req)
    }
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, ExecError<StorageError>> {
        self.0.events(from_revision, range, limit)
    }
    fn revision(&self) -> Result<i64, StorageError> {
        self.0.revision()
    }
    fn compact_revision(&self) -> Result<i64, StorageError> {
        self.0.compact_revision()
    }
    fn hash_kv(&self, revision: i64) -> Result<u32, ExecError<StorageError>> {
        self.0.hash_kv(revision)
    }
}

/// The watch hub's view of the stored history: a [`KvReader`].
pub struct ReaderHistory(pub Arc<dyn KvReader>);

impl EventHistory for ReaderHistory {
    fn revision(&self) -> i64 {
        // A failed read of one meta record: the hub only uses this as a
        // starting point; the next apply corrects it.
        self.0.revision().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the revision for the watch hub failed");
            1
        })
    }
    fn compact_revision(&self) -> i64 {
        self.0.compact_revision().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the compact revision for the watch hub failed");
            0
        })
    }
    fn events(
        &self,
        from_revision: i64,
        range: KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Event>, HistoryError> {
        self.0
            .events(from_revision, range, limit)
            .map_err(|e| match e {
                ExecError::Kv(k) => HistoryError::Kv(k),
                ExecError::Store(s) => HistoryError::Storage(s),
            })
    }
}

/// What the peer transport knows about the peers, for `/cluster/status`
/// and display names. Implemented by the transport (`crate::transport`),
/// handed to the node when it is built, so the node never depends on it.
pub trait PeerInfo: Send + Sync + 'static {
    /// Reachability of a peer, if the transport has tried it yet.
    fn peer_reachable(&self, id: NodeId) -> Option<bool>;
    /// A display name a peer reported about itself (bare `--peers` form).
    fn learned_name(&self, id: NodeId) -> Option<String>;
    /// The snapshot transfer being received, if any.
    fn snapshot_receiving(&self) -> Option<ReceiveProgress>;
}

/// A [`PeerInfo`] that knows nothing (a node without peers, or tests).
#[derive(Debug, Default)]
pub struct NoPeerInfo;

impl PeerInfo for NoPeerInfo {
    fn peer_reachable(&self, _: NodeId) -> Option<bool> {
        None
    }
    fn learned_name(&self, _: NodeId) -> Option<String> {
        None
    }
    fn snapshot_receiving(&self) -> Option<ReceiveProgress> {
        None
    }
}

/// Progress of the snapshot transfer being received, for `/cluster/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveProgress {
    /// The sender.
    pub from: NodeId,
    /// Index of the snapshot.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Bytes staged so far.
    pub bytes: u64,
    /// Chunks staged so far.
    pub chunks: u32,
}

/// What the Raft loop last published about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Per-peer replication progress (leader only).
    pub peers: Vec<PeerStatus>,
    /// False once the loop has stopped (shutdown or fatal error).
    pub running: bool,
}

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            role: Role::Follower,
            term: 0,
            leader: None,
            commit_index: 0,
            applied_index: 0,
            first_index: 1,
            last_index: 0,
            snapshot_index: 0,
            peers: Vec::new(),
            running: true,
        }
    }
}

/// Why nothing was done: retrying (here or elsewhere) is safe.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unavailable {
    /// The node is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node's queues are full.
    #[error("the node is overloaded; the request was not taken")]
    Overloaded,
    /// The node's Raft loop has stopped.
    #[error("the node stopped")]
    Stopped,
    /// The loop stopped on a storage failure.
    #[error("the node stopped on a storage error: {0}")]
    StorageFailed(Arc<StorageError>),
    /// The consensus core refused the request (e.g. a leadership transfer
    /// is under way).
    #[error(transparent)]
    Refused(RaftError),
    /// A ReadIndex round was not confirmed by a quorum in time.
    #[error("leadership was not confirmed by a quorum within {ms} ms")]
    NotConfirmed {
        /// The request timeout.
        ms: u64,
    },
}

/// Why a write's outcome is unknown: it may or may not have been applied.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Uncertain {
    /// A leader's snapshot replaced this node's log past the entry.
    #[error("a snapshot from the new leader replaced the log")]
    SnapshotReplacedLog,
    /// The node stopped while the entry was in the log.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The loop stopped on a storage failure while the entry was in the log.
    #[error("the node stopped on a storage error: {0}")]
    StorageFailed(Arc<StorageError>),
    /// The loop went away without answering.
    #[error("the node stopped before the write was applied")]
    Stopped,
    /// Not applied within the request timeout.
    #[error("the write was not applied within {ms} ms")]
    TimedOut {
        /// The request timeout.
        ms: u64,
    },
}

/// Why a write was not acknowledged.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; nothing was proposed.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The entry was proposed but another leader's entry took its place in
    /// the log: it was definitely not applied, so retrying is safe.
    #[error("the write was superseded in the log by another leader's entry")]
    NotApplied,
    /// The write may or may not have been applied.
    #[error(transparent)]
    Unknown(Uncertain),
    /// Nothing was proposed; retrying is safe.
    #[error(transparent)]
    Unavailable(Unavailable),
}

/// Why a linearizable read could not be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    /// This node is not (or no longer) the leader.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership was not confirmed in time, or the node is stopping.
    #[error(transparent)]
    Unavailable(Unavailable),
}

/// A write the state machine applied: where, and with what answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Log index of the entry.
    pub index: u64,
    /// The command's answer (with the store's revision after it), or why
    /// the data model refused it (nothing changed then).
    pub answer: Result<Revisioned<CommandResponse>, KvError>,
}

/// Where the outcome of a [`Proposal`] goes.
pub type WriteReply = oneshot::Sender<Result<Applied, WriteError>>;
/// Where the outcome of a [`ReadRequest`] goes.
pub type ReadReply = oneshot::Sender<Result<(), ReadError>>;

/// A client write on its way into the log.
#[derive(Debug)]
pub struct Proposal {
    /// The encoded [`Command`].
    pub cmd: Vec<u8>,
    /// Where the outcome goes.
    pub reply: WriteReply,
}

/// A linearizable read waiting for a ReadIndex confirmation.
#[derive(Debug)]
pub struct ReadRequest {
    /// Answered with `Ok` once the state machine may be read.
    pub reply: ReadReply,
}

/// A snapshot received whole and staged, with the leader's InstallSnapshot
/// message to step once the loop holds the image.
#[derive(Debug)]
pub struct IncomingSnapshot<I> {
    /// The leader's InstallSnapshot (its term, the image's meta).
    pub message: Message,
    /// The verified, durable image (a [`crate::storage::StagedSnapshot`]).
    pub staged: I,
}

/// What the peer transport tells the Raft loop. `I` is the store's staged
/// image type.
#[derive(Debug)]
pub enum Inbound<I> {
    /// Messages from a peer.
    Messages(Vec<Message>),
    /// A staged snapshot image with its InstallSnapshot message.
    Snapshot(Box<IncomingSnapshot<I>>),
    /// A batch to this peer could not be delivered.
    Unreachable(NodeId),
    /// A snapshot transfer to `peer` finished.
    SnapshotSent {
        /// The receiver.
        peer: NodeId,
        /// Whether it was installed.
        success: bool,
    },
}

/// Requests from the node's owner to the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Shutdown: hand leadership to the most up-to-date peer.
    TransferLeadership,
    /// A client's request (etcd's MoveLeader): hand leadership to this
    /// member.
    TransferTo(NodeId),
}

/// The Raft loop stopped: nothing can be delivered any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node's Raft loop has stopped")]
pub struct LoopStopped;

/// Where the peer transport delivers what it received. Cheap to clone.
#[derive(Debug)]
pub struct Inbox<I> {
    pub(crate) tx: mpsc::Sender<Inbound<I>>,
}

impl<I> Clone for Inbox<I> {
    fn clone(&self) -> Self {
        Inbox {
            tx: self.tx.clone(),
        }
    }
}

impl<I> Inbox<I> {
    /// Hands `ev` to the Raft loop, waiting while its queue is full.
    pub async fn deliver(&self, ev: Inbound<I>) -> Result<(), LoopStopped> {
        self.tx.send(ev).await.map_err(|_| LoopStopped)
    }
}

pub(crate) struct Shared {
    pub membership: Membership,
    pub proposals: mpsc::Sender<Proposal>,
    pub reads: mpsc::Sender<ReadRequest>,
    pub control: mpsc::Sender<Control>,
    pub status: watch::Receiver<NodeStatus>,
    pub reader: Arc<dyn KvReader>,
    pub watch: WatchHub,
    pub peers: Arc<dyn PeerInfo>,
    pub request_timeout: Duration,
    pub leader_wait: Duration,
    pub stopping: AtomicBool,
}

/// The server's view of a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) shared: Arc<Shared>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NodeHandle {
    /// The cluster membership.
    pub fn membership(&self) -> &Membership {
        &self.shared.membership
    }

    /// This node's id.
    pub fn self_id(&self) -> NodeId {
        self.shared.membership.self_id
    }

    /// How long a request may wait for commit.
    pub fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    /// How long a request waits for a leader to be elected before a 503.
    pub fn leader_wait(&self) -> Duration {
        self.shared.leader_wait
    }

    /// The latest published status. Never waits on consensus.
    pub fn status(&self) -> NodeStatus {
        self.shared.status.borrow().clone()
    }

    /// The leader this node knows of, without copying the whole status
    /// (asked once per client request).
    pub fn leader(&self) -> Option<NodeId> {
        self.shared.status.borrow().leader
    }

    /// This node's current term, without copying the whole status.
    pub fn term(&self) -> u64 {
        self.shared.status.borrow().term
    }

    /// Local read access to the applied data.
    pub fn reader(&self) -> &dyn KvReader {
        self.shared.reader.as_ref()
    }

    /// True once shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed) || !self.shared.status.borrow().running
    }

    /// When this node leads a cluster of several, asks the Raft loop to hand
    /// leadership to its most up-to-date peer and waits (at most `within`)
    /// until it no longer leads. Returns whether it handed over. Used on
    /// shutdown, before RPCs are refused: the others then have a leader a
    /// round trip later instead of after an election timeout.
    pub async fn hand_over_leadership(&self, within: Duration) -> bool {
        let st = self.status();
        if st.role != Role::Leader || st.peers.is_empty() {
            return false;
        }
        if self
            .shared
            .control
            .send(Control::TransferLeadership)
            .await
            .is_err()
        {
            return false;
        }
        let mut status = self.shared.status.clone();
        let handed_over = tokio::time::timeout(within, status.wait_for(|s| s.role != Role::Leader))
            .await
            .is_ok_and(|r| r.is_ok());
        handed_over
    }

    /// Asks the Raft loop to hand leadership to `target` (etcd's
    /// MoveLeader) and waits (at most `within`) until this node sees
    /// `target` lead. Returns whether it did; the core refuses quietly
    /// (logged) when this node does not lead or `target` is not a peer.
    pub async fn transfer_leadership_to(&self, target: NodeId, within: Duration) -> bool {
        if self
            .shared
            .control
            .send(Control::TransferTo(target))
            .await
            .is_err()
        {
            return false;
        }
        let mut status = self.shared.status.clone();
        tokio::time::timeout(within, status.wait_for(|s| s.leader == Some(target)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Marks the node as stopping: new requests and peer RPCs are refused.
    pub fn set_stopping(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
    }

    /// Display name of a member: its configured name, else the name it
    /// reported in its RPCs, else its address.
    pub fn name_of(&self, id: NodeId) -> String {
        let m = &self.shared.membership;
        if id == m.self_id {
            return m.self_name.clone();
        }
        if let Some(member) = m.member(id) {
            if let Some(n) = &member.name {
                return n.clone();
            }
            if let Some(n) = self.shared.peers.learned_name(id) {
                return n;
            }
            return member.addr.clone();
        }
        format!("{id:016x}")
    }

    /// Display names of every member, for logs.
    pub fn names(&self) -> HashMap<NodeId, String> {
        self.shared
            .membership
            .members
            .iter()
            .map(|m| (m.id, self.name_of(m.id)))
            .collect()
    }

    /// Base URL of a member's API.
    pub fn url_of(&self, id: NodeId) -> Option<String> {
        self.shared.membership.member(id).map(|m| m.url())
    }

    /// Reachability of a peer, if the transport has tried it yet.
    pub fn peer_reachable(&self, id: NodeId) -> Option<bool> {
        self.shared.peers.peer_reachable(id)
    }

    /// The snapshot transfer being received, if any.
    pub fn snapshot_receiving(&self) -> Option<ReceiveProgress> {
        self.shared.peers.snapshot_receiving()
    }

    /// Waits until some leader is known (or `deadline`), returning it.
    pub async fn wait_for_leader(&self, deadline: Instant) -> Option<NodeId> {
        let mut rx = self.shared.status.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if let Some(l) = s.leader {
                    return Some(l);
                }
                if !s.running {
                    return None;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Starts a watch on this node's applied changes (see
    /// [`WatchHub::watch`]).
    pub fn watch(&self, req: WatchRequest) -> Result<Watcher, WatchError> {
        self.shared.watch.watch(req)
    }

    /// The node's watch hub (for its statistics).
    pub fn watch_hub(&self) -> &WatchHub {
        &self.shared.watch
    }

    /// Proposes a write and waits until it is applied (or `deadline`).
    pub async fn propose(&self, cmd: &Command, deadline: Instant) -> Result<Applied, WriteError> {
        if self.is_stopping() {
            return Err(WriteError::Unavailable(Unavailable::ShuttingDown));
        }
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal {
            cmd: cmd.encode(),
            reply: tx,
        };
        match tokio::time::timeout_at(deadline, self.shared.proposals.send(proposal)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(WriteError::Unavailable(Unavailable::ShuttingDown)),
            // Still queued outside the loop: it never reached the log.
            Err(_) => return Err(WriteError::Unavailable(Unavailable::Overloaded)),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::Unknown(Uncertain::Stopped)),
            Err(_) => Err(WriteError::Unknown(Uncertain::TimedOut {
                ms: ms(self.shared.request_timeout),
            })),
        }
    }

    /// Waits until this node, as leader, has confirmed its leadership with a
    /// quorum and applied everything committed before the call: a read of
    /// the local state machine afterwards is linearizable.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), ReadError> {
        if self.is_stopping() {
            return Err(ReadError::Unavailable(Unavailable::ShuttingDown));
        }
        let (tx, rx) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.shared.reads.send(ReadRequest { reply: tx }))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ReadError::Unavailable(Unavailable::ShuttingDown)),
            Err(_) => return Err(ReadError::Unavailable(Unavailable::Overloaded)),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ReadError::Unavailable(Unavailable::Stopped)),
            Err(_) => Err(ReadError::Unavailable(Unavailable::NotConfirmed {
                ms: ms(self.shared.request_timeout),
            })),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A stand-in for the Raft loop, so the server and the transport can be
    //! tested without the consensus core: proposals are applied at once to
    //! a map.

    use super::*;
    use crate::kv::MemMvcc;
    use std::sync::Mutex;

    /// The fake's data, shared with its reader.
    #[derive(Default)]
    pub struct MapReader {
        pub store: Mutex<MemMvcc>,
    }

    impl MapReader {
        /// The current value of `key`, as text.
        pub fn value(&self, key: &str) -> Option<String> {
            let req = RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            let r = self.store.lock().unwrap().range(&req).ok()?;
            let kv = r.body.kvs.into_iter().next()?;
            Some(String::from_utf8_lossy(&kv.value).into_owned())
        }

        /// True when no key is stored.
        pub fn is_empty(&self) -> bool {
            let req = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                count_only: true,
                ..Default::default()
            };
            let r = self.store.lock().unwrap().range(&req);
            r.is_ok_and(|r| r.body.count == 0)
        }
    }

    impl KvReader for MapReader {
        fn range(
            &self,
            req: &RangeRequest,
        ) -> Result<Revisioned<RangeResponse>, ExecError<StorageError>> {
            self.store.lock().unwrap().range(req).map_err(ExecError::Kv)
        }
        fn events(
            &self,
            from_revision: i64,
            range: KeyRange<'_>,
            limit: usize,
        ) -> Result<Vec<Event>, ExecError<StorageError>> {
            let store = self.store.lock().unwrap();
            store
                .events(from_revision, range, limit)
                .map_err(ExecError::Kv)
        }
        fn revision(&self) -> Result<i64, StorageError> {
            Ok(self.store.lock().unwrap().revision())
        }
        fn compact_revision(&self) -> Result<i64, StorageError> {
            Ok(self.store.lock().unwrap().compact_revision())
        }
        fn hash_kv(&self, _revision: i64) -> Result<u32, ExecError<StorageError>> {
            Ok(0)
        }
    }

    /// How the fake behaves.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// A healthy leader.
        Leader,
        /// A follower whose leader is `leader`.
        Follower(NodeId),
        /// Leader that never commits (writes time out).
        Stuck,
    }

    pub struct Fake<I> {
        pub handle: NodeHandle,
        pub reader: Arc<MapReader>,
        pub status_tx: watch::Sender<NodeStatus>,
        /// What the fake loop received from peers.
        pub inbox: Inbox<I>,
        pub inbound: Arc<Mutex<Vec<Inbound<I>>>>,
    }

    /// Builds a handle for `membership` driven by a fake loop in `mode`.
    pub fn fake_node<I: Send + 'static>(
        membership: Membership,
        mode: Mode,
        timeout: Duration,
    ) -> Fake<I> {
        fake_node_with_peers(membership, mode, timeout, Arc::new(NoPeerInfo))
    }

    /// Like [`fake_node`], with the transport's view of the peers.
    pub fn fake_node_with_peers<I: Send + 'static>(
        membership: Membership,
        mode: Mode,
        timeout: Duration,
        peers: Arc<dyn PeerInfo>,
    ) -> Fake<I> {
        let (ptx, mut prx) = mpsc::channel::<Proposal>(64);
        let (rtx, mut rrx) = mpsc::channel::<ReadRequest>(64);
        let (itx, mut irx) = mpsc::channel::<Inbound<I>>(64);
        let (ctx, mut crx) = mpsc::channel::<Control>(4);
        let self_id = membership.self_id;
        let status = NodeStatus {
            role: if matches!(mode, Mode::Follower(_)) {
                Role::Follower
            } else {
                Role::Leader
            },
            term: 1,
            leader: Some(match mode {
                Mode::Follower(l) => l,
                _ => self_id,
            }),
            ..NodeStatus::default()
        };
        let (status_tx, status_rx) = watch::channel(status);
        let reader = Arc::new(MapReader::default());
        let history: Arc<dyn KvReader> = reader.clone();
        let watch = WatchHub::new(
            Arc::new(ReaderHistory(history)),
            super::super::watch::WatchLimits::default(),
        );
        let handle = NodeHandle {
            shared: Arc::new(Shared {
                membership,
                proposals: ptx,
                reads: rtx,
                control: ctx,
                status: status_rx,
                reader: reader.clone(),
                watch: watch.clone(),
                peers,
                request_timeout: timeout,
                leader_wait: timeout,
                stopping: AtomicBool::new(false),
            }),
        };
        let inbound = Arc::new(Mutex::new(Vec::new()));
        let received = inbound.clone();
        let r = reader.clone();
        tokio::spawn(async move {
            let mut index = 1u64;
            let mut parked = Vec::new();
            loop {
                tokio::select! {
                    Some(p) = prx.recv() => {
                        match mode {
                            Mode::Follower(l) => {
                                let _ = p.reply.send(Err(WriteError::NotLeader { leader: Some(l) }));
                            }
                            Mode::Stuck => parked.push(p),
                            Mode::Leader => {
                                index += 1;
                                let cmd = Command::decode(&p.cmd).unwrap();
                                let applied = r.store.lock().unwrap().apply(&cmd);
                                if let Some(rev) = applied.new_revision() {
                                    use super::super::observer::ApplyObserver;
                                    watch.applied(rev, &applied.events);
                                }
                                let _ = p.reply.send(Ok(Applied { index, answer: applied.answer }));
                            }
                        }
                    }
                    Some(rr) = rrx.recv() => {
                        let _ = rr.reply.send(match mode {
                            Mode::Follower(l) => Err(ReadError::NotLeader { leader: Some(l) }),
                            _ => Ok(()),
                        });
                    }
                    Some(ev) = irx.recv() => received.lock().unwrap().push(ev),
                    Some(_) = crx.recv() => {}
                    else => break,
                }
            }
        });
        Fake {
            handle,
            reader,
            status_tx,
            inbox: Inbox { tx: itx },
            inbound,
        }
    }
}
