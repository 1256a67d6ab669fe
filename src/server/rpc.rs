//! `/raft/*`: peer RPCs with bincode bodies.
//!
//! The handlers only check the envelope and queue the messages for the Raft
//! loop, answering `204 No Content`; the Raft replies travel back as
//! messages of their own. Refusals are JSON errors: 400 for an undecodable
//! body, 409 for another cluster (or a sender/receiver that is not a
//! member), 503 while the node stops.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use crate::node::wire::{self, MessageBatch, SnapshotChunk};
use crate::node::{ChunkReject, RpcReject};

use super::error::ApiError;
use super::input::read_body;
use super::AppState;

/// Largest message batch accepted.
pub const MAX_BATCH_BODY_BYTES: usize = 256 << 20;
/// Largest snapshot chunk accepted (chunks are about 1 MiB; one holding
/// a maximal item is a little larger).
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 16 << 20;

fn reject(e: RpcReject) -> Response {
    match e {
        RpcReject::Foreign(why) => {
            debug!(error = %why, "RPC rejected");
            ApiError::new(StatusCode::CONFLICT, why).into_response()
        }
        RpcReject::Stopping => ApiError::unavailable("the node is shutting down").into_response(),
    }
}

/// `POST /raft/vote`, `/raft/append`, `/raft/message`: a batch of messages.
pub async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
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
    match app.node.deliver(batch).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => reject(e),
    }
}

/// `POST /raft/snapshot`: one chunk of a snapshot transfer (see
/// [`crate::node::wire::SnapshotChunk`]). `204` once the chunk is staged;
/// 400 for a damaged chunk or image, 409 for a chunk out of sequence or
/// from another cluster, 503 when the node cannot take a snapshot now.
pub async fn snapshot(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
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
    match app.node.deliver_snapshot_chunk(chunk).await {
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
