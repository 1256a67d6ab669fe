//! The leader's side of the etcd API's forwarding: `POST /internal/etcd`.
//!
//! A follower serving an etcd write or linearizable range hands the
//! already validated [`crate::kv`] request to the leader here, as bincode,
//! instead of replaying the gRPC call: the follower keeps answering its own
//! gRPC (or gateway) client, and the leader only does what needs the
//! leader. This route never forwards again: a node that is not (or no
//! longer) the leader answers [`LeaderAnswer::NotLeader`] with its view of
//! the leader and the follower retries there, so a request makes at most
//! one hop per attempt and the follower's deadline bounds the attempts.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::etcd::EtcdError;
use crate::kv::{
    Command, CommandResponse, ExecError, KvError, RangeRequest, RangeResponse, Revisioned,
};
use crate::node::{NodeHandle, ReadError, WriteError};
use crate::raft::NodeId;

use super::super::input::read_body;
use super::super::kv::MAX_TXN_BODY_BYTES;
use super::super::AppState;

/// The route's path.
pub const PATH: &str = "/internal/etcd";

/// Header carrying how long the follower still waits, in milliseconds: the
/// leader gives up no later (and never later than its own request
/// timeout).
pub const TIMEOUT_HEADER: &str = "x-raftkv-timeout-ms";

/// First byte of every body, so a changed encoding is refused rather than
/// misread by a node of another version.
const WIRE_VERSION: u8 = 1;

/// What a follower asks the leader to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderOp {
    /// Propose the command and answer what apply produced.
    Propose(Command),
    /// Confirm leadership (ReadIndex), then read locally.
    Range(RangeRequest),
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderAnswer {
    /// The command was applied with this answer.
    Applied(Revisioned<CommandResponse>),
    /// The range as read after the barrier.
    Range(Revisioned<RangeResponse>),
    /// This node does not lead; nothing was done. Its view of the leader.
    NotLeader(Option<NodeId>),
    /// Nothing took effect (the entry was superseded): safe to retry.
    Retry,
    /// A final failure.
    Failed(Failure),
}

/// An [`EtcdError`] on the wire (the errors a proposal or a read can end
/// with; anything else travels as its text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Refused by the data model.
    Kv(KvError),
    /// [`EtcdError::NoLeader`].
    NoLeader,
    /// [`EtcdError::LeaderChanged`].
    LeaderChanged,
    /// [`EtcdError::Stopped`].
    Stopped,
    /// [`EtcdError::Timeout`].
    Timeout,
    /// [`EtcdError::TooManyRequests`].
    TooManyRequests,
    /// [`EtcdError::Unavailable`].
    Unavailable(String),
    /// [`EtcdError::Internal`], or another error's text.
    Internal(String),
}

impl From<EtcdError> for Failure {
    fn from(e: EtcdError) -> Failure {
        match e {
            EtcdError::Kv(k) => Failure::Kv(k),
            EtcdError::NoLeader => Failure::NoLeader,
            EtcdError::LeaderChanged | EtcdError::NotLeader => Failure::LeaderChanged,
            EtcdError::Stopped => Failure::Stopped,
            EtcdError::Timeout => Failure::Timeout,
            EtcdError::TooManyRequests => Failure::TooManyRequests,
            EtcdError::Unavailable(s) => Failure::Unavailable(s),
            other => Failure::Internal(other.to_string()),
        }
    }
}

impl From<Failure> for EtcdError {
    fn from(f: Failure) -> EtcdError {
        match f {
            Failure::Kv(k) => EtcdError::Kv(k),
            Failure::NoLeader => EtcdError::NoLeader,
            Failure::LeaderChanged => EtcdError::LeaderChanged,
            Failure::Stopped => EtcdError::Stopped,
            Failure::Timeout => EtcdError::Timeout,
            Failure::TooManyRequests => EtcdError::TooManyRequests,
            Failure::Unavailable(s) => EtcdError::Unavailable(s),
            Failure::Internal(s) => EtcdError::Internal(s),
        }
    }
}

/// Why a body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Empty body.
    #[error("empty body")]
    Empty,
    /// Another encoding version.
    #[error("unknown encoding version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    /// Bincode refused it.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// Bytes left over after the value.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
}

/// Encodes a value with the version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Decodes what [`encode`] wrote; every byte must be used.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// Proposes `cmd` on this node, which believes it leads.
pub async fn propose_here(node: &NodeHandle, cmd: &Command, deadline: Instant) -> LeaderAnswer {
    match node.propose(cmd, deadline).await {
        Ok(applied) => match applied.answer {
            Ok(a) => LeaderAnswer::Applied(a),
            Err(k) => LeaderAnswer::Failed(Failure::Kv(k)),
        },
        Err(WriteError::NotLeader { leader }) => LeaderAnswer::NotLeader(leader),
        Err(WriteError::NotApplied) => LeaderAnswer::Retry,
        Err(e) => LeaderAnswer::Failed(EtcdError::from(e).into()),
    }
}

/// Reads `req` on this node: after a ReadIndex barrier unless
/// serializable.
pub async fn range_here(node: &NodeHandle, req: &RangeRequest, deadline: Instant) -> LeaderAnswer {
    if !req.serializable {
        match node.read_barrier(deadline).await {
            Ok(()) => {}
            Err(ReadError::NotLeader { leader }) => return LeaderAnswer::NotLeader(leader),
            Err(e) => return LeaderAnswer::Failed(EtcdError::from(e).into()),
        }
    }
    match read_local(node, req) {
        Ok(r) => LeaderAnswer::Range(r),
        Err(e) => LeaderAnswer::Failed(e.into()),
    }
}

/// A range read of the local store, errors in etcd's terms.
pub fn read_local(
    node: &NodeHandle,
    req: &RangeRequest,
) -> Result<Revisioned<RangeResponse>, EtcdError> {
    node.reader().range(req).map_err(|e| match e {
        ExecError::Kv(k) => EtcdError::Kv(k),
        ExecError::Store(s) => EtcdError::Internal(format!("reading the store failed: {s}")),
    })
}

/// `POST /internal/etcd`: body = [`encode`]d [`LeaderOp`], answer = 200
/// with an [`encode`]d [`LeaderAnswer`]; 400 for a body it cannot decode.
pub async fn serve(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&headers, body, MAX_TXN_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let op: LeaderOp = match decode(&bytes) {
        Ok(op) => op,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let node = &app.node;
    let wait = headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(node.request_timeout(), |ms| {
            Duration::from_millis(ms).min(node.request_timeout())
        });
    let deadline = Instant::now() + wait;
    let answer = match &op {
        LeaderOp::Propose(cmd) => propose_here(node, cmd, deadline).await,
        LeaderOp::Range(req) => range_here(node, req, deadline).await,
    };
    match encode(&answer) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
