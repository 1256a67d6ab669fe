//! `/kv` routes: writes, linearizable and stale reads, prefix listing.
//!
//! A node that is not the leader forwards writes and linearizable reads to
//! the leader; one with no leader in sight waits a little for an election
//! before answering 503. Writes are answered only once applied, and a write
//! whose fate cannot be known says so (`"outcome":"unknown"`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::time::Instant;

use crate::kv::{ApplyResult, KvCommand};
use crate::node::{NodeHandle, ReadError, WriteError};
use crate::raft::NodeId;

use super::error::ApiError;
use super::forward::{forward, hops, ForwardError, Incoming, MAX_HOPS};
use super::input::{
    key_from_path, list_params, parse_put_body, read_body, read_params, write_params,
    MAX_KV_BODY_BYTES,
};
use super::AppState;

/// Pause before retrying when the leader is being replaced.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// `PUT /kv/{key}`.
pub async fn put(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match key_from_path(uri.path()) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let params = match write_params(uri.query()) {
        Ok(p) => p,
        Err(e) => return e.with("key", key.as_str()).into_response(),
    };
    let body = match read_body(&headers, body, MAX_KV_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.with("key", key.as_str()).into_response(),
    };
    let value = match parse_put_body(&body) {
        Ok(v) => v,
        Err(e) => return e.with("key", key.as_str()).into_response(),
    };
    let cmd = KvCommand::Put {
        key,
        value,
        cas: params.cas,
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body,
    };
    write(&app, cmd, &req).await
}

/// `DELETE /kv/{key}`.
pub async fn delete(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match key_from_path(uri.path()) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let params = match write_params(uri.query()) {
        Ok(p) => p,
        Err(e) => return e.with("key", key.as_str()).into_response(),
    };
    // A DELETE carries no body; read (and bound) it anyway so that the
    // connection stays usable.
    if let Err(e) = read_body(&headers, body, MAX_KV_BODY_BYTES).await {
        return e.into_response();
    }
    let cmd = KvCommand::Delete {
        key,
        cas: params.cas,
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    write(&app, cmd, &req).await
}

/// `GET /kv/{key}`.
pub async fn get(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let key = match key_from_path(uri.path()) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let params = match read_params(uri.query()) {
        Ok(p) => p,
        Err(e) => return e.with("key", key.as_str()).into_response(),
    };
    let read_local = |node: &NodeHandle| match node.reader().get(&key) {
        Ok(Some((value, index))) => {
            Json(json!({"key": key, "value": value, "index": index})).into_response()
        }
        Ok(None) => ApiError::key_not_found(&key).into_response(),
        Err(e) => {
            ApiError::internal(format!("reading the state machine failed: {e}")).into_response()
        }
    };
    if params.stale {
        return read_local(&app.node);
    }
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    match linearizable(&app, &req).await {
        Ok(()) => read_local(&app.node),
        Err(resp) => resp,
    }
}

/// `GET /kv?prefix=&limit=&after=`.
pub async fn list(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let params = match list_params(uri.query()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let read_local = |node: &NodeHandle| match node.reader().scan(
        &params.prefix,
        params.after.as_deref(),
        params.limit,
    ) {
        Ok((items, more)) => Json(json!({"items": items, "more": more})).into_response(),
        Err(e) => {
            ApiError::internal(format!("reading the state machine failed: {e}")).into_response()
        }
    };
    if params.stale {
        return read_local(&app.node);
    }
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    match linearizable(&app, &req).await {
        Ok(()) => read_local(&app.node),
        Err(resp) => resp,
    }
}

/// `/kv` and `/kv/` with a write method: the key is missing.
pub async fn empty_key() -> Response {
    ApiError::bad_request("the key must not be empty: use /kv/{key}").into_response()
}

/// The 412 of a failed compare-and-swap: names the index the write
/// expected and the key's current one (`index`, 0 = absent).
fn cas_mismatch(key: &str, expected: u64, current: u64) -> ApiError {
    let wanted = if expected == 0 {
        "expected the key to be absent (cas=0)".to_string()
    } else {
        format!("expected index {expected} (cas={expected})")
    };
    let actual = if current == 0 {
        "the key does not exist".to_string()
    } else {
        format!("the key's current index is {current}")
    };
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        format!("cas mismatch: {wanted}, but {actual}"),
    )
    .with("key", key)
    .with("index", current)
    .with("expected", expected)
}

fn write_result(cmd: &KvCommand, result: ApplyResult) -> Response {
    let key = cmd.key();
    match result {
        ApplyResult::Written { index } | ApplyResult::Deleted { index } => {
            Json(json!({"status": "committed", "key": key, "index": index})).into_response()
        }
        ApplyResult::NotFound => ApiError::key_not_found(key).into_response(),
        ApplyResult::CasMismatch { current } => {
            let expected = match cmd {
                KvCommand::Put { cas, .. } | KvCommand::Delete { cas, .. } => cas.unwrap_or(0),
            };
            cas_mismatch(key, expected, current).into_response()
        }
        ApplyResult::Noop => {
            ApiError::internal("the write was committed as a no-op (undecodable command)")
                .with("key", key)
                .into_response()
        }
    }
}

/// What to do next while hunting for the leader.
enum Route {
    Local,
    Forward(NodeId),
}

/// Finds where a request must go: here (leader), another node, or nowhere
/// before `deadline` (then the 503 to send).
async fn route(
    node: &NodeHandle,
    hint: Option<NodeId>,
    deadline: Instant,
    req: &Incoming,
) -> Result<Route, ApiError> {
    let me = node.self_id();
    let leader = match hint.or_else(|| node.leader()) {
        Some(l) => l,
        None => {
            let wait_until = deadline.min(Instant::now() + node.leader_wait());
            match node.wait_for_leader(wait_until).await {
                Some(l) => l,
                None => {
                    return Err(ApiError::unavailable(if node.is_stopping() {
                        "the node is shutting down"
                    } else {
                        "no leader is known (election in progress or quorum lost)"
                    }))
                }
            }
        }
    };
    if leader == me {
        return Ok(Route::Local);
    }
    if hops(&req.headers) >= MAX_HOPS {
        return Err(ApiError::unavailable(format!(
            "this node is not the leader (the leader is {}); the request was already forwarded {} times",
            node.name_of(leader),
            hops(&req.headers)
        ))
        .with("leader_id", node.name_of(leader)));
    }
    Ok(Route::Forward(leader))
}

fn forward_timeout(node: &NodeHandle) -> std::time::Duration {
    // The leader answers within its own request timeout; leave room for
    // its answer to travel back.
    node.request_timeout() + std::time::Duration::from_millis(1000)
}

async fn write(app: &AppState, cmd: KvCommand, req: &Incoming) -> Response {
    let node = &app.node;
    let key = cmd.key().to_string();
    let deadline = Instant::now() + node.request_timeout();
    let mut hint: Option<NodeId> = None;
    loop {
        let target = match route(node, hint.take(), deadline, req).await {
            Ok(t) => t,
            Err(e) => return e.with("key", key.as_str()).into_response(),
        };
        match target {
            Route::Local => match node.propose(&cmd, deadline).await {
                Ok(applied) => return write_result(&cmd, applied.result),
                Err(WriteError::NotLeader { leader }) => {
                    if leader != Some(node.self_id()) {
                        hint = leader;
                    }
                }
                Err(WriteError::NotApplied) => {
                    // Superseded in the log: it never took effect, so it
                    // may be proposed again.
                }
                Err(WriteError::Unknown(why)) => {
                    return ApiError::outcome_unknown(why.to_string(), &key).into_response()
                }
                Err(WriteError::Unavailable(why)) => {
                    return ApiError::unavailable(why.to_string())
                        .with("key", key.as_str())
                        .into_response()
                }
            },
            Route::Forward(leader) => {
                let Some(url) = node.url_of(leader) else {
                    return ApiError::internal("the leader is not a known member").into_response();
                };
                match forward(&app.client, &url, req, forward_timeout(node)).await {
                    Ok(resp) => return resp,
                    Err(ForwardError::NotSent(_)) => {
                        // The leader is gone; wait for the cluster to
                        // notice and elect another.
                    }
                    Err(ForwardError::Lost(e)) => {
                        return ApiError::outcome_unknown(
                            format!(
                                "the leader ({}) did not answer the forwarded write: {e}",
                                node.name_of(leader)
                            ),
                            &key,
                        )
                        .into_response()
                    }
                }
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return ApiError::unavailable(format!(
                "no leader accepted the write within {} ms; it was not applied",
                node.request_timeout().as_millis()
            ))
            .with("key", key.as_str())
            .into_response();
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Makes a local read linearizable, or answers the request elsewhere:
/// `Ok` means "read the local state machine now".
async fn linearizable(app: &AppState, req: &Incoming) -> Result<(), Response> {
    let node = &app.node;
    let deadline = Instant::now() + node.request_timeout();
    let mut hint: Option<NodeId> = None;
    loop {
        let target = route(node, hint.take(), deadline, req)
            .await
            .map_err(IntoResponse::into_response)?;
        match target {
            Route::Local => match node.read_barrier(deadline).await {
                Ok(()) => return Ok(()),
                Err(ReadError::NotLeader { leader }) => {
                    if leader != Some(node.self_id()) {
                        hint = leader;
                    }
                }
                Err(ReadError::Unavailable(why)) => {
                    return Err(ApiError::unavailable(why.to_string()).into_response())
                }
            },
            Route::Forward(leader) => {
                let Some(url) = node.url_of(leader) else {
                    return Err(
                        ApiError::internal("the leader is not a known member").into_response()
                    );
                };
                match forward(&app.client, &url, req, forward_timeout(node)).await {
                    Ok(resp) => return Err(resp),
                    // Reads change nothing: any failure may be retried.
                    Err(ForwardError::NotSent(_)) | Err(ForwardError::Lost(_)) => {}
                }
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(ApiError::unavailable(format!(
                "no leader could confirm the read within {} ms",
                node.request_timeout().as_millis()
            ))
            .into_response());
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
