//! The handle the HTTP server holds: how requests reach the Raft loop and
//! how they learn what became of them.
//!
//! Everything here is cheap and never waits on consensus unless the caller
//! asks it to (`propose`, `read_barrier`); status and health come from a
//! `watch` channel the loop refreshes after every round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::kv::{ApplyResult, KvCommand, KvItem};
use crate::raft::{Message, NodeId, PeerStatus, Role};
use crate::storage::{StagedImage, StorageError};

use super::membership::Membership;
use super::snapshot::{ChunkReject, ReceiveProgress, SnapshotReceiver};
use super::wire::{MessageBatch, RpcHeader, SnapshotChunk, WIRE_VERSION};

/// Read access to the applied key-value data, usable from any thread while
/// the Raft loop writes.
pub trait KvReader: Send + Sync + 'static {
    /// One key: value and mod index.
    fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError>;
    /// Keys with `prefix`, strictly after `after`, sorted, at most `limit`;
    /// the flag says whether more follow.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KvItem>, bool), StorageError>;
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

/// Why a write was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// This node is not the leader; nothing was proposed.
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The entry was proposed but another leader's entry took its place in
    /// the log: it was definitely not applied, so retrying is safe.
    NotApplied,
    /// The write may or may not have been applied.
    Unknown {
        /// Why the outcome is unknown.
        reason: String,
    },
    /// Nothing was proposed (shutting down, overloaded, leadership
    /// transfer); retrying is safe.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Why a linearizable read could not be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// This node is not (or no longer) the leader.
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership was not confirmed in time, or the node is stopping.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// A client write on its way into the log.
pub(crate) struct Proposal {
    /// The encoded [`KvCommand`].
    pub cmd: Vec<u8>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ApplyResult, WriteError>>,
}

/// A linearizable read waiting for a ReadIndex confirmation.
pub(crate) struct ReadRequest {
    /// Answered with `Ok` once the state machine may be read.
    pub reply: oneshot::Sender<Result<(), ReadError>>,
}

/// A snapshot received whole and staged, with the leader's
/// InstallSnapshot message to step once the loop holds the image.
pub(crate) struct StagedSnapshot {
    /// The leader's InstallSnapshot (its term, the image's meta).
    pub message: Message,
    /// The verified, durable image in the inactive key-value tree.
    pub staged: StagedImage,
}

/// Everything else the Raft loop hears about.
pub(crate) enum Inbound {
    /// Messages from a peer.
    Messages(Vec<Message>),
    /// A staged snapshot image with its InstallSnapshot message.
    Snapshot(Box<StagedSnapshot>),
    /// A batch to this peer could not be delivered.
    Unreachable(NodeId),
    /// A snapshot transfer to `peer` finished.
    SnapshotSent {
        /// The receiver.
        peer: NodeId,
        /// Whether it was installed.
        success: bool,
    },
    /// Shutdown: hand leadership to the most up-to-date peer.
    TransferLeadership,
}

/// Reachability of a peer as seen by its sender task.
#[derive(Default)]
pub(crate) struct PeerHealth {
    /// 0 = not contacted yet, 1 = reachable, 2 = unreachable.
    state: AtomicU8,
}

impl PeerHealth {
    pub(crate) fn set(&self, reachable: bool) -> bool {
        let new = if reachable { 1 } else { 2 };
        self.state.swap(new, Ordering::Relaxed) != new
    }
    pub(crate) fn get(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// Why an RPC envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcReject {
    /// Another cluster, wire version or an unknown sender/receiver.
    Foreign(String),
    /// The node is stopping.
    Stopping,
}

pub(crate) struct Shared {
    pub membership: Membership,
    /// Display names learned from RPC envelopes (bare `--peers` form).
    pub learned_names: RwLock<HashMap<NodeId, String>>,
    pub proposals: mpsc::Sender<Proposal>,
    pub reads: mpsc::Sender<ReadRequest>,
    pub inbound: mpsc::Sender<Inbound>,
    pub status: watch::Receiver<NodeStatus>,
    pub reader: Arc<dyn KvReader>,
    pub peer_health: HashMap<NodeId, Arc<PeerHealth>>,
    pub request_timeout: Duration,
    pub leader_wait: Duration,
    pub stopping: AtomicBool,
    /// Incoming snapshot transfers.
    pub snapshots: SnapshotReceiver,
}

/// The server's view of a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) shared: Arc<Shared>,
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
    pub(crate) async fn hand_over_leadership(&self, within: Duration) -> bool {
        let st = self.status();
        if st.role != Role::Leader || st.peers.is_empty() {
            return false;
        }
        if self
            .shared
            .inbound
            .send(Inbound::TransferLeadership)
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

    pub(crate) fn set_stopping(&self) {
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
            if let Ok(names) = self.shared.learned_names.read() {
                if let Some(n) = names.get(&id) {
                    return n.clone();
                }
            }
            return member.addr.clone();
        }
        format!("{id:016x}")
    }

    /// Base URL of a member's API.
    pub fn url_of(&self, id: NodeId) -> Option<String> {
        self.shared.membership.member(id).map(|m| m.url())
    }

    /// Reachability of a peer, if its sender has tried yet.
    pub fn peer_reachable(&self, id: NodeId) -> Option<bool> {
        self.shared.peer_health.get(&id).and_then(|h| h.get())
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

    /// Proposes a write and waits until it is applied (or `deadline`).
    pub async fn propose(
        &self,
        cmd: &KvCommand,
        deadline: Instant,
    ) -> Result<ApplyResult, WriteError> {
        if self.is_stopping() {
            return Err(WriteError::Unavailable {
                reason: "the node is shutting down".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal {
            cmd: cmd.encode(),
            reply: tx,
        };
        match tokio::time::timeout_at(deadline, self.shared.proposals.send(proposal)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(WriteError::Unavailable {
                    reason: "the node is shutting down".into(),
                })
            }
            // Still queued outside the loop: it never reached the log.
            Err(_) => {
                return Err(WriteError::Unavailable {
                    reason: "the node is overloaded; the write was not proposed".into(),
                })
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::Unknown {
                reason: "the node stopped before the write was applied".into(),
            }),
            Err(_) => Err(WriteError::Unknown {
                reason: format!(
                    "the write was not applied within {} ms",
                    self.shared.request_timeout.as_millis()
                ),
            }),
        }
    }

    /// Waits until this node, as leader, has confirmed its leadership with a
    /// quorum and applied everything committed before the call: a read of
    /// the local state machine afterwards is linearizable.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), ReadError> {
        if self.is_stopping() {
            return Err(ReadError::Unavailable {
                reason: "the node is shutting down".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let unavailable = |reason: &str| ReadError::Unavailable {
            reason: reason.into(),
        };
        match tokio::time::timeout_at(deadline, self.shared.reads.send(ReadRequest { reply: tx }))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(unavailable("the node is shutting down")),
            Err(_) => return Err(unavailable("the node is overloaded")),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the node stopped")),
            Err(_) => Err(ReadError::Unavailable {
                reason: format!(
                    "leadership was not confirmed by a quorum within {} ms",
                    self.shared.request_timeout.as_millis()
                ),
            }),
        }
    }

    fn check_header(&self, h: &RpcHeader) -> Result<(), RpcReject> {
        let m = &self.shared.membership;
        if h.version != WIRE_VERSION {
            return Err(RpcReject::Foreign(format!(
                "wire version {} is not supported (this node speaks {WIRE_VERSION})",
                h.version
            )));
        }
        if h.cluster_id != m.cluster_id {
            return Err(RpcReject::Foreign(format!(
                "cluster id mismatch: this node belongs to `{}`, the RPC to `{}`",
                m.cluster_id, h.cluster_id
            )));
        }
        if h.to != m.self_id {
            return Err(RpcReject::Foreign(format!(
                "RPC addressed to node {:016x}, this is {} ({:016x}); \
                 are the peers configured with the same names/addresses everywhere?",
                h.to, m.self_name, m.self_id
            )));
        }
        if h.from == m.self_id || m.member(h.from).is_none() {
            return Err(RpcReject::Foreign(format!(
                "sender {} ({:016x}, {}) is not a member of this cluster",
                h.from_name, h.from, h.from_addr
            )));
        }
        if self.is_stopping() {
            return Err(RpcReject::Stopping);
        }
        Ok(())
    }

    fn learn_name(&self, h: &RpcHeader) {
        if !self.shared.membership.by_address || h.from_name.is_empty() {
            return;
        }
        let known = self
            .shared
            .learned_names
            .read()
            .map(|n| n.get(&h.from) == Some(&h.from_name))
            .unwrap_or(true);
        if !known {
            if let Ok(mut names) = self.shared.learned_names.write() {
                names.insert(h.from, h.from_name.clone());
            }
        }
    }

    /// Hands a batch of peer messages to the Raft loop.
    pub(crate) async fn deliver(&self, batch: MessageBatch) -> Result<(), RpcReject> {
        self.check_header(&batch.header)?;
        self.learn_name(&batch.header);
        // The envelope was checked; messages inside must agree with it.
        let from = batch.header.from;
        let me = self.self_id();
        let messages: Vec<Message> = batch
            .messages
            .into_iter()
            // Snapshots only arrive with their image, through
            // `deliver_snapshot`; a bare InstallSnapshot could not be served.
            .filter(|m| m.from == from && m.to == me)
            .filter(|m| !matches!(m.body, crate::raft::MessageBody::InstallSnapshot { .. }))
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        self.shared
            .inbound
            .send(Inbound::Messages(messages))
            .await
            .map_err(|_| RpcReject::Stopping)
    }

    /// Stages one chunk of a snapshot transfer; after the last one, hands
    /// the image to the Raft loop.
    pub(crate) async fn deliver_snapshot_chunk(&self, c: SnapshotChunk) -> Result<(), ChunkReject> {
        self.check_header(&c.header).map_err(|e| match e {
            RpcReject::Foreign(why) => ChunkReject::Conflict(why),
            RpcReject::Stopping => ChunkReject::Busy("the node is shutting down".into()),
        })?;
        self.learn_name(&c.header);
        if c.message.from != c.header.from || c.message.to != self.self_id() {
            return Err(ChunkReject::Conflict(
                "snapshot message does not match its envelope".into(),
            ));
        }
        // A deposed leader's transfer: not worth staging (the core would
        // ignore its message anyway).
        let term = self.term();
        if c.message.term < term {
            return Err(ChunkReject::Conflict(format!(
                "snapshot from term {}, this node is at term {term}",
                c.message.term
            )));
        }
        let from_name = self.name_of(c.header.from);
        self.shared
            .snapshots
            .handle(c, &from_name, &self.shared.inbound)
            .await
    }

    /// The snapshot transfer being received, if any.
    pub fn snapshot_receiving(&self) -> Option<ReceiveProgress> {
        self.shared.snapshots.progress()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A stand-in for the Raft loop, so the server can be tested without
    //! the consensus core: proposals are applied at once to a map.

    use super::*;
    use crate::kv::{decide, Effect};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// The fake's data, shared with its reader.
    #[derive(Default)]
    pub struct MapReader {
        pub map: Mutex<BTreeMap<String, (String, u64)>>,
    }

    impl KvReader for MapReader {
        fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        fn scan(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<(Vec<KvItem>, bool), StorageError> {
            let map = self.map.lock().unwrap();
            let mut items: Vec<KvItem> = map
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                .map(|(k, (v, i))| KvItem {
                    key: k.clone(),
                    value: v.clone(),
                    index: *i,
                })
                .take(limit + 1)
                .collect();
            let more = items.len() > limit;
            items.truncate(limit);
            Ok((items, more))
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

    pub struct Fake {
        pub handle: NodeHandle,
        pub reader: Arc<MapReader>,
        pub status_tx: watch::Sender<NodeStatus>,
    }

    /// Builds a handle for `membership` driven by a fake loop in `mode`.
    pub fn fake_node(membership: Membership, mode: Mode, timeout: Duration) -> Fake {
        fake_node_staging(membership, mode, timeout, None)
    }

    /// Like [`fake_node`], staging incoming snapshots into `store` (the
    /// fake loop drops them once staged).
    pub fn fake_node_staging(
        membership: Membership,
        mode: Mode,
        timeout: Duration,
        store: Option<crate::storage::SledStore>,
    ) -> Fake {
        let (ptx, mut prx) = mpsc::channel::<Proposal>(64);
        let (rtx, mut rrx) = mpsc::channel::<ReadRequest>(64);
        let (itx, mut irx) = mpsc::channel::<Inbound>(64);
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
        let handle = NodeHandle {
            shared: Arc::new(Shared {
                peer_health: HashMap::new(),
                membership,
                learned_names: RwLock::new(HashMap::new()),
                proposals: ptx,
                reads: rtx,
                inbound: itx,
                status: status_rx,
                reader: reader.clone(),
                request_timeout: timeout,
                leader_wait: timeout,
                stopping: AtomicBool::new(false),
                snapshots: SnapshotReceiver::new(store),
            }),
        };
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
                                let cmd = KvCommand::decode(&p.cmd).unwrap();
                                let mut map = r.map.lock().unwrap();
                                let current = map.get(cmd.key()).map(|(_, i)| *i);
                                let (effect, result) = decide(&cmd, index, current);
                                match effect {
                                    Effect::Set { value, index } => {
                                        map.insert(cmd.key().to_string(), (value, index));
                                    }
                                    Effect::Remove => {
                                        map.remove(cmd.key());
                                    }
                                    Effect::None => {}
                                }
                                let _ = p.reply.send(Ok(result));
                            }
                        }
                    }
                    Some(rr) = rrx.recv() => {
                        let _ = rr.reply.send(match mode {
                            Mode::Follower(l) => Err(ReadError::NotLeader { leader: Some(l) }),
                            _ => Ok(()),
                        });
                    }
                    Some(_) = irx.recv() => {}
                    else => break,
                }
            }
        });
        Fake {
            handle,
            reader,
            status_tx,
        }
    }
}
