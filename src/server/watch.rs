//! `GET /watch`: changes to a key or range, from this node's applied
//! state (docs/api.md).
//!
//! Watches are never forwarded: every node, follower or leader, serves
//! them from its own watch hub ([`crate::node::watch`]), which sees only
//! applied entries, so a watch never runs ahead of what a linearizable
//! read could see. Two transports:
//!
//! - **Server-Sent Events** (`Accept: text/event-stream`): a comment line
//!   once the watch is registered (so a client knows that changes made
//!   from now on will be reported), then one `events` message per revision,
//!   `progress` messages when asked for with `progress_notify` and nothing
//!   changed for [`AppState::watch_progress_every`] (a `: keep-alive`
//!   comment instead without `progress_notify`), and a `canceled`
//!   message as the last one when the server ends the watch (compacted
//!   start, node stopping, history unreadable).
//!   A reconnecting client's `Last-Event-ID` (the revision of the last
//!   message it got) moves the start to the revision after it.
//! - **Long poll** (any other `Accept`): the first revision's events at or
//!   after `start_revision`, or an empty batch at the revision up to which
//!   nothing changed when `wait` ran out.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::kv::KvError;
use crate::node::watch::{CancelReason, WatchError, WatchItem, WatchRequest, Watcher};

use super::error::ApiError;
use super::json::{kv_error, sse_canceled, sse_events, sse_progress, JsonWatchBatch, WatchQuery};
use super::AppState;

/// How long a long poll whose `wait` ran out waits for the hub to confirm
/// the revision up to which nothing changed (it answers at once unless the
/// watcher is still reading history).
const PROGRESS_GRACE: Duration = Duration::from_secs(1);

/// `GET /watch`.
pub async fn watch(State(app): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let q = match WatchQuery::from_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let sse_wanted = wants_sse(&headers);
    let mut start_revision = q.start_revision;
    if sse_wanted {
        // An EventSource that reconnects repeats the URL and names the last
        // message it got: continue after it rather than from the start.
        match last_event_id(&headers) {
            Ok(Some(id)) => start_revision = start_revision.max(id.saturating_add(1)),
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    let req = WatchRequest {
        key: q.key.clone(),
        range_end: q.range_end.clone(),
        start_revision,
        prev_kv: q.prev_kv,
        no_put: q.no_put,
        no_delete: q.no_delete,
    };
    let watcher = match app.node.watch(req) {
        Ok(w) => w,
        Err(e) => return watch_error(&e).into_response(),
    };
    if sse_wanted {
        sse(watcher, app.watch_progress_every, q.progress_notify)
    } else {
        long_poll(watcher, q.wait).await
    }
}

fn watch_error(e: &WatchError) -> ApiError {
    match e {
        WatchError::Stopped => ApiError::unavailable("the node is shutting down"),
        WatchError::EmptyKey | WatchError::EmptyRange | WatchError::NegativeRevision(_) => {
            ApiError::bad_request(e.to_string()).with("code", "invalid_request")
        }
    }
}

/// The `Last-Event-ID` header: the revision of the last message a
/// reconnecting SSE client received.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(Some(id)),
        _ => Err(ApiError::bad_request(format!(
            "`Last-Event-ID` must be a revision (a non-negative integer), got `{text}`"
        ))
        .with("code", "invalid_request")),
    }
}

/// True when the client asked for Server-Sent Events.
fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The `reason` and `compact_revision` of a `canceled` message.
fn cancel_reason(reason: &CancelReason) -> (String, i64) {
    match reason {
        CancelReason::Compacted { compact_revision } => ("compacted".into(), *compact_revision),
        CancelReason::Stopped => ("stopped".into(), 0),
        CancelReason::Failed(e) => (format!("failed: {e}"), 0),
    }
}

/// What the SSE body's stream carries between messages.
struct SseFeed {
    watcher: Watcher,
    /// How long the stream may stay silent.
    every: Duration,
    /// On silence, ask for a progress message (`progress_notify`) rather
    /// than send a keep-alive comment.
    progress: bool,
    /// The registration comment, sent first.
    hello: Option<String>,
    /// The `canceled` message went out: end the stream.
    done: bool,
}

impl SseFeed {
    /// The next message, or `None` at the end of the watch.
    async fn next_message(&mut self) -> Option<String> {
        if let Some(hello) = self.hello.take() {
            return Some(hello);
        }
        if self.done {
            return None;
        }
        loop {
            let item = match tokio::time::timeout(self.every, self.watcher.next()).await {
                Ok(item) => item,
                Err(_) if self.progress => {
                    // Idle for a whole interval: the hub answers with a
                    // progress item once everything is yielded.
                    self.watcher.request_progress();
                    continue;
                }
                // A comment: writing it finds a client that went away
                // (dropping the watcher), and keeps proxies from timing
                // the stream out.
                Err(_) => return Some(": keep-alive\n\n".to_string()),
            };
            let mut chunk = self.message(item?);
            // Under load several revisions are usually queued by the time
            // this task runs: send them as one body chunk (one write, one
            // wake-up) instead of one each. Only what is ready now is
            // taken, so a quiet stream still sends each change at once.
            while !self.done && chunk.len() < COALESCE_BYTES {
                match self.watcher.next().now_or_never() {
                    Some(Some(item)) => chunk.push_str(&self.message(item)),
                    Some(None) => break,
                    None => break,
                }
            }
            return Some(chunk);
        }
    }

    /// The SSE text of one item (the cancel message ends the stream).
    fn message(&mut self, item: WatchItem) -> String {
        match item {
            WatchItem::Events { revision, events } => sse_events(revision, &events),
            WatchItem::Progress { revision } => sse_progress(revision),
            WatchItem::Canceled(reason) => {
                self.done = true;
                let (reason, compact_revision) = cancel_reason(&reason);
                sse_canceled(&reason, compact_revision)
            }
        }
    }
}

/// A coalesced SSE chunk stops growing past this many bytes, so a watcher
/// far behind still sends in pieces a client can parse as they come.
const COALESCE_BYTES: usize = 64 * 1024;

fn sse(watcher: Watcher, every: Duration, progress: bool) -> Response {
    let feed = SseFeed {
        hello: Some(format!(
            ": watching from revision {}\n\n",
            watcher.start_revision()
        )),
        watcher,
        every,
        progress,
        done: false,
    };
    // The stream (and with it the watcher, which unregisters) is dropped
    // when the client goes away.
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let msg = feed.next_message().await?;
        Some((Ok::<Bytes, Infallible>(Bytes::from(msg)), feed))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) would otherwise hold messages back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn long_poll(mut watcher: Watcher, wait: Duration) -> Response {
    let item = match tokio::time::timeout(wait, watcher.next()).await {
        Ok(item) => item,
        Err(_) => {
            // The wait ran out: ask the hub up to which revision nothing
            // changed, so the client continues from exactly there.
            watcher.request_progress();
            match tokio::time::timeout(PROGRESS_GRACE, watcher.next()).await {
                Ok(item) => item,
                // Still reading history: nothing is known beyond the start.
                Err(_) => {
                    let revision = watcher.start_revision() - 1;
                    return Json(JsonWatchBatch::new(revision, &[])).into_response();
                }
            }
        }
    };
    match item {
        Some(WatchItem::Events { revision, events }) => {
            Json(JsonWatchBatch::new(revision, &events)).into_response()
        }
        Some(WatchItem::Progress { revision }) => {
            Json(JsonWatchBatch::new(revision, &[])).into_response()
        }
        Some(WatchItem::Canceled(CancelReason::Compacted { compact_revision })) => {
            kv_error(&KvError::Compacted { compact_revision }).into_response()
        }
        Some(WatchItem::Canceled(CancelReason::Stopped)) | None => {
            ApiError::unavailable("the node is shutting down").into_response()
        }
        Some(WatchItem::Canceled(CancelReason::Failed(e))) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the watch history failed: {e}"),
        )
        .into_response(),
    }
}
