//! The receiving side: the `/raft/*` routes, with bincode bodies.
//!
//! The handlers check the envelope ([`PeerReceiver::check_header`]: wire
//! version, cluster, sender and receiver), then queue the messages for the
//! Raft loop through its [`Inbox`] and answer `204 No Content`; the Raft
//! replies travel back as messages of their own. Snapshot chunks are
//! staged as they arrive ([`super::snapshot`]). Refusals are JSON errors:
//! 400 for an undecodable body or a damaged chunk, 409 for another cluster
//! (or a sender/receiver that is not a member, or a chunk out of sequence),
//! 503 while the node stops or cannot take a snapshot now. Bodies are read
//! and errors shaped by the server's helpers (`crate::server::input`,
//! `crate::server::error`), so peer routes answer like every other route.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tracing::debug;

use crate::node::{Inbound, Inbox, NodeHandle};
use crate::raft::{Message, MessageBody};
use crate::server::error::ApiError;
use crate::server::input::read_body;
use crate::storage::SnapshotStore;

use super::snapshot::{ChunkReject, SnapshotReceiver};
use super::wire::{self, MessageBatch, RpcHeader, SnapshotChunk, WIRE_VERSION};
use super::PeerState;

/// Largest message batch accepted.
pub const MAX_BATCH_BODY_BYTES: usize = 256 << 20;
/// Largest snapshot chunk accepted (chunks are about 1 MiB; one holding
/// a maximal item is a little larger).
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 16 << 20;

/// Why an RPC envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcReject {
    /// Another cluster, wire version or an unknown sender/receiver.
    #[error("{0}")]
    Foreign(String),
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopping,
}

/// Everything the `/raft/*` handlers need.
pub struct PeerReceiver<S: SnapshotStore> {
    node: NodeHandle,
    inbox: Inbox<S::Staged>,
    peers: Arc<PeerState>,
    snapshots: SnapshotReceiver<S>,
}

impl<S> PeerReceiver<S>
where
    S: SnapshotStore + Clone + Send + Sync + 'static,
{
    /// Receives for `node`, delivering into `inbox` and staging snapshots
    /// into `store` (`None`: snapshots are refused with 503).
    pub fn new(
        node: NodeHandle,
        inbox: Inbox<S::Staged>,
        peers: Arc<PeerState>,
        store: Option<S>,
    ) -> Self {
        PeerReceiver {
            snapshots: SnapshotReceiver::new(store, peers.clone()),
            node,
            inbox,
            peers,
        }
    }

    /// Checks an envelope: our wire version and cluster, addressed to this
    /// node, from another member; refused while the node stops.
    pub fn check_header(&self, h: &RpcHeader) -> Result<(), RpcReject> {
        let m = self.node.membership();
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
        if self.node.is_stopping() {
            return Err(RpcReject::Stopping);
        }
        Ok(())
    }

    fn learn_name(&self, h: &RpcHeader) {
        if self.node.membership().by_address && !h.from_name.is_empty() {
            self.peers.learn_name(h.from, &h.from_name);
        }
    }

    /// Hands a batch of peer messages to the Raft loop.
    pub async fn deliver(&self, batch: MessageBatch) -> Result<(), RpcReject> {
        self.check_header(&batch.header)?;
        self.learn_name(&batch.header);
        // The envelope was checked; messages inside must agree with it.
        let from = batch.header.from;
        let me = self.node.self_id();
        let messages: Vec<Message> = batch
            .messages
            .into_iter()
            // Snapshots only arrive with their image, through
            // `deliver_snapshot_chunk`; a bare InstallSnapshot could not be
            // served.
            .filter(|m| m.from == from && m.to == me)
            .filter(|m| !matches!(m.body, MessageBody::InstallSnapshot { .. }))
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        self.inbox
            .deliver(Inbound::Messages(messages))
            .await
            .map_err(|_| RpcReject::Stopping)
    }

    /// Stages one chunk of a snapshot transfer; after the last one, hands
    /// the image to the Raft loop.
    pub async fn deliver_snapshot_chunk(&self, c: SnapshotChunk) -> Result<(), ChunkReject> {
        self.check_header(&c.header).map_err(|e| match e {
            RpcReject::Foreign(why) => ChunkReject::Conflict(why),
            RpcReject::Stopping => ChunkReject::Busy("the node is shutting down".into()),
        })?;
        self.learn_name(&c.header);
        if c.message.from != c.header.from || c.message.to != self.node.self_id() {
            return Err(ChunkReject::Conflict(
                "snapshot message does not match its envelope".into(),
            ));
        }
        // A deposed leader's transfer: not worth staging (the core would
        // ignore its message anyway).
        let term = self.node.term();
        if c.message.term < term {
            return Err(ChunkReject::Conflict(format!(
                "snapshot from term {}, this node is at term {term}",
                c.message.term
            )));
        }
        let from_name = self.node.name_of(c.header.from);
        self.snapshots.handle(c, &from_name, &self.inbox).await
    }
}

fn reject(e: RpcReject) -> Response {
    match e {
        RpcReject::Foreign(why) => {
            debug!(error = %why, "RPC rejected");
            ApiError::new(StatusCode::CONFLICT, why).into_response()
        }
        RpcReject::Stopping => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// `POST /raft/vote`, `/raft/append`, `/raft/message`: a batch of messages.
async fn messages<S>(
    State(rx): State<Arc<PeerReceiver<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response
where
    S: SnapshotStore + Clone + Send + Sync + 'static,
{
    let bytes = match read_body(&headers, body, MAX_BATCH_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let batch: MessageBatch = match wire::decode(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("undecodable message batch: {e}")).into_response()
        }
    };
    match rx.deliver(batch).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => reject(e),
    }
}

/// `POST /raft/snapshot`: one chunk of a snapshot transfer (see
/// [`SnapshotChunk`]). `204` once the chunk is staged; 400 for a damaged
/// chunk or image, 409 for a chunk out of sequence or from another
/// cluster, 503 when the node cannot take a snapshot now.
async fn snapshot<S>(
    State(rx): State<Arc<PeerReceiver<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response
where
    S: SnapshotStore + Clone + Send + Sync + 'static,
{
    let bytes = match read_body(&headers, body, MAX_SNAPSHOT_CHUNK_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let chunk: SnapshotChunk = match wire::decode(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return ApiError::bad_request(format!("undecodable snapshot chunk: {e}"))
                .into_response()
        }
    };
    drop(bytes);
    match rx.deliver_snapshot_chunk(chunk).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(ChunkReject::Invalid(why)) => {
            debug!(error = %why, "snapshot chunk rejected");
            ApiError::bad_request(why).into_response()
        }
        Err(ChunkReject::Conflict(why)) => {
            debug!(error = %why, "snapshot chunk rejected");
            ApiError::new(StatusCode::CONFLICT, why).into_response()
        }
        Err(ChunkReject::Busy(why)) => ApiError::unavailable(why).into_response(),
    }
}

/// The `/raft/*` routes, for the server to mount next to its own (the
/// server adds the JSON 404/405 fallbacks).
pub fn routes<S>(receiver: Arc<PeerReceiver<S>>) -> Router
where
    S: SnapshotStore + Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/raft/vote", post(messages::<S>))
        .route("/raft/append", post(messages::<S>))
        .route("/raft/message", post(messages::<S>))
        .route("/raft/snapshot", post(snapshot::<S>))
        .with_state(receiver)
}
