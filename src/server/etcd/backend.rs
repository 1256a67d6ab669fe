//! [`NodeBackend`]: [`EtcdBackend`] over the running node.
//!
//! - **Writes** are proposed on the leader: here through
//!   [`NodeHandle::propose`], from a follower through the leader's
//!   `POST /internal/etcd` ([`super::leader`]). Like the JSON API, a node
//!   with no leader in sight waits [`NodeHandle::leader_wait`] for an
//!   election, and a leader change during the call is retried until the
//!   request timeout, as long as nothing can have been applied.
//! - **Linearizable ranges** go the same way (the leader confirms with a
//!   ReadIndex round and reads); **serializable** ones read the local store.
//! - **Watches** are the local hub's (`NodeHandle::watch`): the hub hears
//!   only applied entries, so a follower's watcher never sees what a
//!   linearizable read could not.
//! - **Members** are the static membership; the one port serves peers and
//!   clients, so peer and client URLs are the same.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;

use crate::etcd::{
    EtcdBackend, EtcdError, HashKvInfo, HeaderInfo, MemberInfo, StatusInfo, WatchCancel, WatchFeed,
    WatchSpec, WatchUpdate,
};
use crate::http_client::HttpClient;
use crate::kv::{Command, CommandResponse, ExecError, RangeRequest, RangeResponse, Revisioned};
use crate::node::watch::{CancelReason, WatchError, WatchItem, WatchRequest, Watcher};
use crate::node::NodeHandle;
use crate::raft::{NodeId, Role};

use super::leader::{self, LeaderAnswer, LeaderOp};

/// Pause before retrying when the leader is being replaced.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Files summed for `db_size`, at most (a data dir holds a few dozen).
const MAX_DIR_ENTRIES: usize = 10_000;

/// The running node as the etcd API sees it.
pub struct NodeBackend {
    node: NodeHandle,
    client: HttpClient,
    data_dir: Option<PathBuf>,
}

impl NodeBackend {
    /// The backend of `node`, forwarding with `client`; `data_dir` (when
    /// known) is measured for Maintenance.Status's `db_size`.
    pub fn new(node: NodeHandle, client: HttpClient, data_dir: Option<PathBuf>) -> Self {
        NodeBackend {
            node,
            client,
            data_dir,
        }
    }

    /// Runs `op` on the leader (here or forwarded), retrying a leader
    /// change until the request timeout. Answers with the leader's
    /// [`LeaderAnswer::Applied`] or [`LeaderAnswer::Range`].
    async fn on_leader(&self, op: LeaderOp) -> Result<LeaderAnswer, EtcdError> {
        let node = &self.node;
        let me = node.self_id();
        let deadline = Instant::now() + node.request_timeout();
        let is_write = matches!(op, LeaderOp::Propose(_));
        // Encoded once: a forwarded write may be retried on another leader.
        let mut encoded: Option<Bytes> = None;
        let mut hint: Option<NodeId> = None;
        let mut last = EtcdError::NoLeader;
        loop {
            let leader = match hint.take().or_else(|| node.leader()) {
                Some(l) => l,
                None => {
                    let until = deadline.min(Instant::now() + node.leader_wait());
                    match node.wait_for_leader(until).await {
                        Some(l) => l,
                        None if node.is_stopping() => return Err(EtcdError::Stopped),
                        None => return Err(EtcdError::NoLeader),
                    }
                }
            };
            let answer = if leader == me {
                match &op {
                    LeaderOp::Propose(cmd) => leader::propose_here(node, cmd, deadline).await,
                    LeaderOp::Range(req) => leader::range_here(node, req, deadline).await,
                }
            } else {
                let body = match &encoded {
                    Some(b) => b.clone(),
                    None => {
                        let b = Bytes::from(
                            leader::encode(&op).map_err(|e| EtcdError::Internal(e.to_string()))?,
                        );
                        encoded = Some(b.clone());
                        b
                    }
                };
                match self.forward(leader, body, deadline).await {
                    Ok(a) => a,
                    // The leader could not be reached: nothing was sent.
                    Err(Forwarding::NotSent) => {
                        last = EtcdError::NoLeader;
                        LeaderAnswer::Retry
                    }
                    // A write may have been applied: etcd's "request timed
                    // out". A read changes nothing and may be retried.
                    Err(Forwarding::Lost) if is_write => return Err(EtcdError::Timeout),
                    Err(Forwarding::Lost) => LeaderAnswer::Retry,
                    Err(Forwarding::Refused(why)) => return Err(EtcdError::Internal(why)),
                }
            };
            match answer {
                LeaderAnswer::NotLeader(l) => {
                    last = if l.is_some() {
                        EtcdError::LeaderChanged
                    } else {
                        EtcdError::NoLeader
                    };
                    // Not the node that just refused: ask the others' view.
                    hint = l.filter(|&l| l != leader);
                }
                LeaderAnswer::Retry => {
                    if !matches!(last, EtcdError::NoLeader) {
                        last = EtcdError::LeaderChanged;
                    }
                }
                LeaderAnswer::Failed(f) => return Err(f.into()),
                done @ (LeaderAnswer::Applied(_) | LeaderAnswer::Range(_)) => return Ok(done),
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(last);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sends an encoded [`LeaderOp`] to `leader`'s `/internal/etcd`.
    async fn forward(
        &self,
        leader: NodeId,
        body: Bytes,
        deadline: Instant,
    ) -> Result<LeaderAnswer, Forwarding> {
        let Some(url) = self.node.url_of(leader) else {
            return Err(Forwarding::Refused(format!(
                "the leader {leader:016x} is not a known member"
            )));
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut headers = HeaderMap::new();
        headers.insert(
            leader::TIMEOUT_HEADER,
            HeaderValue::from(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX)),
        );
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        // The leader answers within `remaining`; leave room for the answer
        // to travel back.
        let timeout = remaining + Duration::from_millis(1000);
        let resp = self
            .client
            .request(
                Method::POST,
                &format!("{url}{}", leader::PATH),
                headers,
                Some(body),
                timeout,
            )
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Forwarding::NotSent
                } else {
                    Forwarding::Lost
                }
            })?;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE {
            // The leader is shutting down and refuses requests: nothing ran.
            return Err(Forwarding::NotSent);
        }
        if resp.status != StatusCode::OK {
            return Err(Forwarding::Refused(format!(
                "the leader refused the forwarded request ({}): {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            )));
        }
        leader::decode(&resp.body)
            .map_err(|e| Forwarding::Refused(format!("the leader's answer is unreadable: {e}")))
    }
}

/// Why forwarding to the leader failed.
enum Forwarding {
    /// Not sent (connection refused): retry after an election.
    NotSent,
    /// Sent, but no answer: a write's outcome is unknown.
    Lost,
    /// The leader answered something unusable.
    Refused(String),
}

fn unexpected(what: &str) -> EtcdError {
    EtcdError::Internal(format!(
        "the leader's answer does not fit the request ({what})"
    ))
}

impl EtcdBackend for NodeBackend {
    type Feed = NodeFeed;

    fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.node.membership().cluster_id_u64(),
            member_id: self.node.self_id(),
            raft_term: self.node.term(),
        }
    }

    fn revision(&self) -> i64 {
        self.node
            .reader()
            .revision()
            .unwrap_or_else(|_| self.node.watch_hub().revision())
    }

    async fn propose(&self, cmd: Command) -> Result<Revisioned<CommandResponse>, EtcdError> {
        match self.on_leader(LeaderOp::Propose(cmd)).await? {
            LeaderAnswer::Applied(a) => Ok(a),
            _ => Err(unexpected("propose")),
        }
    }

    async fn range(&self, req: RangeRequest) -> Result<Revisioned<RangeResponse>, EtcdError> {
        if req.serializable {
            return leader::read_local(&self.node, &req);
        }
        match self.on_leader(LeaderOp::Range(req)).await? {
            LeaderAnswer::Range(r) => Ok(r),
            _ => Err(unexpected("range")),
        }
    }

    fn watch(&self, spec: WatchSpec) -> Result<NodeFeed, EtcdError> {
        let watcher = self
            .node
            .watch(WatchRequest {
                key: spec.key,
                range_end: spec.range_end,
                start_revision: spec.start_revision,
                prev_kv: spec.prev_kv,
                no_put: spec.no_put,
                no_delete: spec.no_delete,
            })
            .map_err(|e| match e {
                WatchError::Stopped => EtcdError::Stopped,
                other => EtcdError::Internal(format!("the watch hub refused the watch: {other}")),
            })?;
        Ok(NodeFeed { watcher })
    }

    async fn members(&self, _linearizable: bool) -> Result<Vec<MemberInfo>, EtcdError> {
        // The membership is static (changes come with issue 18): every
        // member's view is the same, so a linearizable list is this one.
        let m = self.node.membership();
        Ok(m.members
            .iter()
            .map(|member| {
                let url = member.url();
                MemberInfo {
                    id: member.id,
                    name: self.node.name_of(member.id),
                    peer_urls: vec![url.clone()],
                    client_urls: vec![url],
                    is_learner: false,
                }
            })
            .collect())
    }

    async fn status(&self) -> Result<StatusInfo, EtcdError> {
        let st = self.node.status();
        let db_size = match &self.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || dir_size(&dir))
                    .await
                    .unwrap_or(0)
            }
            None => 0,
        };
        Ok(StatusInfo {
            db_size,
            // sled does not say how much of its files is live data.
            db_size_in_use: db_size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            is_learner: false,
            errors: Vec::new(),
        })
    }

    async fn hash_kv(&self, revision: i64) -> Result<HashKvInfo, EtcdError> {
        let node = self.node.clone();
        // Hashing reads the whole history: off the async threads.
        tokio::task::spawn_blocking(move || {
            let reader = node.reader();
            let hash = reader.hash_kv(revision).map_err(|e| match e {
                ExecError::Kv(k) => EtcdError::Kv(k),
                ExecError::Store(s) => store(s),
            })?;
            Ok(HashKvInfo {
                hash,
                compact_revision: reader.compact_revision().map_err(store)?,
                revision: reader.revision().map_err(store)?,
            })
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("hashing failed: {e}")))?
    }

    async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        let node = &self.node;
        if node.status().role != Role::Leader {
            return Err(EtcdError::NotLeader);
        }
        if node.membership().member(target).is_none() {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if target == node.self_id() {
            return Ok(());
        }
        if node
            .transfer_leadership_to(target, node.request_timeout())
            .await
        {
            Ok(())
        } else {
            Err(EtcdError::LeaderTransferTimeout)
        }
    }
}

fn store(e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Internal(format!("reading the store failed: {e}"))
}

/// Bytes of the files under `dir` (best effort: unreadable entries count
/// as nothing).
fn dir_size(dir: &Path) -> i64 {
    let mut total: u64 = 0;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                return i64::try_from(total).unwrap_or(i64::MAX);
            }
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// One watch of the node's hub as a [`WatchFeed`].
pub struct NodeFeed {
    watcher: Watcher,
}

impl Stream for NodeFeed {
    type Item = WatchUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchUpdate>> {
        Pin::new(&mut self.watcher).poll_next(cx).map(|item| {
            item.map(|item| match item {
                WatchItem::Events { revision, events } => WatchUpdate::Events { revision, events },
                WatchItem::Progress { revision } => WatchUpdate::Progress { revision },
                WatchItem::Canceled(CancelReason::Compacted { compact_revision }) => {
                    WatchUpdate::Canceled(WatchCancel::Compacted { compact_revision })
                }
                WatchItem::Canceled(CancelReason::Stopped) => {
                    WatchUpdate::Canceled(WatchCancel::Error(EtcdError::Stopped))
                }
                WatchItem::Canceled(CancelReason::Failed(e)) => WatchUpdate::Canceled(
                    WatchCancel::Error(EtcdError::Internal(format!("reading history failed: {e}"))),
                ),
            })
        })
    }
}

impl WatchFeed for NodeFeed {
    fn request_progress(&mut self) {
        self.watcher.request_progress();
    }
}

/// The backend and its service, as the server mounts them.
pub fn service(
    node: NodeHandle,
    client: HttpClient,
    data_dir: Option<PathBuf>,
) -> crate::etcd::EtcdService<NodeBackend> {
    crate::etcd::EtcdService::new(Arc::new(NodeBackend::new(node, client, data_dir)))
}
