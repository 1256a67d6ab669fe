//! `GET /watch`: the changes of a key, a prefix or a range, served from
//! this node's applied state (followers included, no forwarding), as
//! Server-Sent Events or as a long poll (`docs/api.md`).
//!
//! Both sit on the node's watch hub (`crate::node::watch`), which delivers
//! every event of the range from the start revision exactly once, in
//! revision order, whole revisions at a time, and cancels a watcher whose
//! start was compacted away. The SSE stream ends with a `canceled` message
//! when the hub ends the watch (compaction, the node stopping); a client
//! that goes away drops the stream and with it the watcher.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

use crate::kv::KvError;
use crate::node::watch::{CancelReason, WatchError, WatchItem, WatchRequest, Watcher};

use super::error::ApiError;
use super::json::{self, sse_canceled, sse_events, sse_progress, JsonWatchBatch, WatchQuery};
use super::AppState;

/// How often an SSE stream with `progress_notify` that saw nothing gets a
/// progress message (etcd's gRPC default is 10 minutes; an HTTP stream is
/// better served by a shorter beat).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often an idle SSE stream without `progress_notify` gets a comment
/// line, so that a client that went away is noticed and proxies keep the
/// connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// `GET /watch`.
pub async fn watch(State(app): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let q = match WatchQuery::from_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let req = WatchRequest {
        key: q.key.clone(),
        range_end: q.range_end.clone(),
        start_revision: q.start_revision,
        prev_kv: q.prev_kv,
        no_put: q.no_put,
        no_delete: q.no_delete,
    };
    let watcher = match app.node.watch(req) {
        Ok(w) => w,
        Err(WatchError::Stopped) => {
            return ApiError::unavailable("the node is shutting down").into_response()
        }
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        sse(watcher, q.progress_notify)
    } else {
        long_poll(&app, watcher, q.wait).await
    }
}

/// What a cancel reason says on the wire: the `reason` text and the
/// compact revision (0 unless compacted).
fn cancel_text(reason: &CancelReason) -> (String, i64) {
    match reason {
        CancelReason::Compacted { compact_revision } => {
            ("compacted".to_string(), *compact_revision)
        }
        CancelReason::Stopped => ("the node is shutting down".to_string(), 0),
        CancelReason::Failed(e) => (format!("reading the history failed: {e}"), 0),
    }
}

/// The SSE stream of `watcher` (see the module doc).
fn sse(watcher: Watcher, progress_notify: bool) -> Response {
    let beat = if progress_notify {
        PROGRESS_INTERVAL
    } else {
        KEEPALIVE_INTERVAL
    };
    let state = Some(watcher);
    let stream = futures::stream::unfold(state, move |state| async move {
        let mut watcher = state?;
        loop {
            match tokio::time::timeout(beat, watcher.next()).await {
                Ok(Some(WatchItem::Events { revision, events })) => {
                    let msg = sse_events(revision, &events);
                    return Some((Ok::<_, Infallible>(Bytes::from(msg)), Some(watcher)));
                }
                Ok(Some(WatchItem::Progress { revision })) => {
                    return Some((Ok(Bytes::from(sse_progress(revision))), Some(watcher)));
                }
                Ok(Some(WatchItem::Canceled(reason))) => {
                    let (text, compact) = cancel_text(&reason);
                    return Some((Ok(Bytes::from(sse_canceled(&text, compact))), None));
                }
                Ok(None) => {
                    let msg = sse_canceled("the watch ended", 0);
                    return Some((Ok(Bytes::from(msg)), None));
                }
                Err(_) if progress_notify => watcher.request_progress(),
                Err(_) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(watcher)));
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The long poll: the first batch of events, or an empty batch at the
/// store's revision when `wait` runs out.
async fn long_poll(app: &AppState, mut watcher: Watcher, wait: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, watcher.next()).await {
            Ok(Some(WatchItem::Events { revision, events })) => {
                return Json(JsonWatchBatch::new(revision, &events)).into_response()
            }
            Ok(Some(WatchItem::Progress { .. })) => continue,
            Ok(Some(WatchItem::Canceled(CancelReason::Compacted { compact_revision }))) => {
                return json::kv_error(&KvError::Compacted { compact_revision }).into_response()
            }
            Ok(Some(WatchItem::Canceled(reason))) => {
                let (text, _) = cancel_text(&reason);
                return ApiError::unavailable(text).into_response();
            }
            Ok(None) => return ApiError::unavailable("the watch ended").into_response(),
            Err(_) => {
                let revision = match app.node.reader().revision() {
                    Ok(r) => r,
                    Err(e) => {
                        return ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("reading the revision failed: {e}"),
                        )
                        .into_response()
                    }
                };
                return Json(JsonWatchBatch::new(revision, &[])).into_response();
            }
        }
    }
}
