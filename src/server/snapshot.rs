//! `GET /snapshot`: a consistent snapshot of this node's state machine as a
//! RaftKV snapshot file (`crate::storage::snapshot_file` defines the bytes),
//! streamed as it is read. `raftkv snapshot save` downloads it.
//!
//! Served by whichever node is asked, from its own applied state (like
//! etcd's `Maintenance.Snapshot`, which is not forwarded to the leader
//! either): ask the leader for the most recent data. The response carries
//! the snapshot's index and term in `X-Raftkv-Snapshot-Index` /
//! `X-Raftkv-Snapshot-Term`. An error after the first byte can only cut
//! the body short; the file's trailing SHA-256 makes such a download fail
//! its check instead of passing for a complete file.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use super::input::no_params;
use super::AppState;
use crate::node::ExportError;

/// Header with the snapshot's applied index.
pub const INDEX_HEADER: &str = "x-raftkv-snapshot-index";
/// Header with the term of the entry at that index.
pub const TERM_HEADER: &str = "x-raftkv-snapshot-term";

/// `GET /snapshot`.
pub async fn snapshot(State(app): State<AppState>, uri: Uri) -> Response {
    if let Err(e) = no_params(uri.query()) {
        return e.into_response();
    }
    let export = match app.node.export_snapshot().await {
        Ok(x) => x,
        Err(e) => return export_error(e).into_response(),
    };
    let meta = export.meta();
    let body = Body::from_stream(export.map(|piece| {
        piece.map_err(|e| {
            tracing::warn!(error = %e, "snapshot export failed part way; cutting the response");
            e
        })
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(INDEX_HEADER, HeaderValue::from(meta.index));
    h.insert(TERM_HEADER, HeaderValue::from(meta.term));
    resp
}

fn export_error(e: ExportError) -> ApiError {
    match e {
        ExportError::NotSupported => ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        ExportError::Unavailable(_) | ExportError::Storage(_) => {
            ApiError::unavailable(e.to_string())
        }
        ExportError::File(_) | ExportError::Panicked => ApiError::internal(e.to_string()),
    }
}
