//! The key-value routes: `/kv/{key}` (the single-key contract), `/kv`
//! (range reads and range deletes), `/txn` and `/compact` (see
//! `docs/api.md`).
//!
//! A node that is not the leader forwards writes and linearizable reads to
//! the leader; one with no leader in sight waits a little for an election
//! before answering 503. Writes are answered only once applied, and a write
//! whose fate cannot be known says so (`"outcome":"unknown"`). Every route
//! parses its input once (`super::json`, `super::input`), builds one
//! [`Command`] or [`RangeRequest`], and hands it to the same write or read
//! path.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::time::Instant;

use crate::kv::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest, ExecError,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp, Revisioned, TxnRequest,
};
use crate::node::{NodeHandle, ReadError, WriteError};
use crate::raft::NodeId;

use super::error::ApiError;
use super::forward::{forward, hops, ForwardError, Incoming, MAX_HOPS};
use super::input::{key_from_path, parse_put_body, read_body, write_params, MAX_KV_BODY_BYTES};
use super::json::{
    self, delete_query, key_read_request, parse_compact_body, parse_txn_body, JsonCompactReply,
    JsonDeleteReply, JsonGetReply, JsonHeader, JsonRangeReply, JsonRecord, JsonTxnReply,
    RangeContext, RangeQuery,
};
use super::AppState;

/// Largest `POST /txn` body: a transaction of up to 128 ops may carry
/// several 1 MiB values (etcd's request limit is 1.5 MiB; ours is larger
/// because values travel as JSON text).
const MAX_TXN_BODY_BYTES: usize = 16 << 20;

/// Pause before retrying when the leader is being replaced.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// The header of an answer served by `node` at `revision`.
pub fn header(node: &NodeHandle, revision: i64) -> JsonHeader {
    JsonHeader {
        cluster_id: node.membership().cluster_id_u64(),
        member_id: node.self_id(),
        revision,
        raft_term: node.term(),
    }
}

/// The compare-and-swap of the single-key contract: `?cas=M` means "only
/// if the key's `mod_revision` is M" (0: only if absent — an absent key
/// compares as 0). Runs `op` if it holds, else reads the key so the 412
/// can say where it is.
fn cas_txn(key: &[u8], cas: u64, op: RequestOp) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            range_end: Vec::new(),
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(i64::try_from(cas).unwrap_or(i64::MAX)),
        }],
        success: vec![op],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..Default::default()
        })],
    })
}

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
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.into_bytes(),
        ..Default::default()
    };
    let cmd = match params.cas {
        None => Command::Put(put),
        Some(cas) => cas_txn(key.as_bytes(), cas, RequestOp::Put(put)),
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body,
    };
    let cas = params.cas;
    write(&app, cmd, &key, &req, |_, answer| {
        single_key_answer(&key, cas, answer)
    })
    .await
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
    let del = DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        prev_kv: false,
    };
    let cmd = match params.cas {
        None => Command::DeleteRange(del),
        Some(cas) => cas_txn(key.as_bytes(), cas, RequestOp::DeleteRange(del)),
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    let cas = params.cas;
    write(&app, cmd, &key, &req, |_, answer| {
        single_key_answer(&key, cas, answer)
    })
    .await
}

/// The single-key contract's answer to a put or delete (plain or CAS).
fn single_key_answer(key: &str, cas: Option<u64>, answer: Revisioned<CommandResponse>) -> Response {
    let committed = |revision: i64| {
        Json(json!({"status": "committed", "key": key, "index": revision})).into_response()
    };
    match answer.body {
        CommandResponse::Put(_) => committed(answer.revision),
        CommandResponse::DeleteRange(d) if d.deleted == 0 => {
            ApiError::key_not_found(key).into_response()
        }
        CommandResponse::DeleteRange(_) => committed(answer.revision),
        CommandResponse::Txn(t) if t.succeeded => match t.responses.first() {
            Some(ResponseOp::DeleteRange(d)) if d.body.deleted == 0 => {
                ApiError::key_not_found(key).into_response()
            }
            _ => committed(answer.revision),
        },
        CommandResponse::Txn(t) => {
            let current = match t.responses.first() {
                Some(ResponseOp::Range(r)) => r.body.kvs.first().map_or(0, |kv| kv.mod_revision),
                _ => 0,
            };
            cas_mismatch(key, cas.unwrap_or(0), u64::try_from(current).unwrap_or(0)).into_response()
        }
        CommandResponse::Compact(_) => {
            ApiError::internal("a single-key write was answered as a compaction").into_response()
        }
    }
}

/// `GET /kv/{key}` (`?revision=`, `?consistency=`).
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
    let range = match key_read_request(key.as_bytes(), uri.query()) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).with("key", key.as_str()).into_response(),
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    read(&app, &range, &req, |node, r| match r.body.kvs.first() {
        Some(kv) => Json(JsonGetReply {
            record: JsonRecord::from(kv),
            header: header(node, r.revision),
        })
        .into_response(),
        None => ApiError::key_not_found(&key).into_response(),
    })
    .await
}

/// `GET /kv`: a range (prefix, `[start, end)`, paging, revision, filters,
/// sort; see `docs/api.md`).
pub async fn list(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let range =
        match RangeQuery::from_query(uri.query()).and_then(|q| q.to_request(RangeContext::List)) {
            Ok(r) => r,
            Err(e) => return ApiError::from(e).into_response(),
        };
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    read(&app, &range, &req, |node, r| {
        Json(JsonRangeReply {
            range: (&r.body).into(),
            header: header(node, r.revision),
        })
        .into_response()
    })
    .await
}

/// `DELETE /kv?prefix=…` or `?start=…&end=…`: a range delete in one
/// revision.
pub async fn delete_range(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let del = match delete_query(uri.query()) {
        Ok(d) => d,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = read_body(&headers, body, MAX_KV_BODY_BYTES).await {
        return e.into_response();
    }
    let req = Incoming {
        method,
        uri,
        headers,
        body: Default::default(),
    };
    let label = String::from_utf8_lossy(&del.key).into_owned();
    write(
        &app,
        Command::DeleteRange(del),
        &label,
        &req,
        |node, answer| match answer.body {
            CommandResponse::DeleteRange(d) => Json(JsonDeleteReply::new(
                &d,
                answer.revision,
                header(node, answer.revision),
            ))
            .into_response(),
            _ => ApiError::internal("a range delete got another command's answer").into_response(),
        },
    )
    .await
}

/// `POST /txn`.
pub async fn txn(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = super::input::no_params(uri.query()) {
        return e.into_response();
    }
    let body = match read_body(&headers, body, MAX_TXN_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let txn = match parse_txn_body(&body) {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let req = Incoming {
        method,
        uri,
        headers,
        body,
    };
    write(
        &app,
        Command::Txn(txn),
        "",
        &req,
        |node, answer| match answer.body {
            CommandResponse::Txn(t) => Json(JsonTxnReply {
                txn: (&t).into(),
                index: answer.revision,
                header: header(node, answer.revision),
            })
            .into_response(),
            _ => ApiError::internal("a transaction got another command's answer").into_response(),
        },
    )
    .await
}

/// `POST /compact`.
pub async fn compact(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = super::input::no_params(uri.query()) {
        return e.into_response();
    }
    let body = match read_body(&headers, body, MAX_KV_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req_body = match parse_compact_body(&body) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let revision = req_body.revision;
    let req = Incoming {
        method,
        uri,
        headers,
        body,
    };
    write(
        &app,
        Command::Compact(req_body),
        "",
        &req,
        move |node, answer| {
            Json(JsonCompactReply {
                compact_revision: revision,
                header: header(node, answer.revision),
            })
            .into_response()
        },
    )
    .await
}

/// `/kv` and `/kv/` with a write method: the key is missing.
pub async fn empty_key() -> Response {
    ApiError::bad_request("the key must not be empty: use /kv/{key}").into_response()
}

/// The 412 of a failed compare-and-swap: names the mod revision the write
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

/// Serves `range` from this node's store: linearizable (through the
/// leader) unless it asks for a serializable read; `answer` builds the
/// response.
async fn read(
    app: &AppState,
    range: &RangeRequest,
    req: &Incoming,
    answer: impl FnOnce(&NodeHandle, Revisioned<RangeResponse>) -> Response,
) -> Response {
    if !range.serializable {
        if let Err(resp) = linearizable(app, req).await {
            return resp;
        }
    }
    match app.node.reader().range(range) {
        Ok(r) => answer(&app.node, r),
        Err(ExecError::Kv(e)) => json::kv_error(&e).into_response(),
        Err(ExecError::Store(e)) => {
            ApiError::internal(format!("reading the state machine failed: {e}")).into_response()
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

/// Proposes `cmd` (here, or through the leader) and answers with
/// `answer` once it is applied; `key` labels errors (empty: none).
async fn write(
    app: &AppState,
    cmd: Command,
    key: &str,
    req: &Incoming,
    answer: impl FnOnce(&NodeHandle, Revisioned<CommandResponse>) -> Response,
) -> Response {
    let node = &app.node;
    let label = |e: ApiError| {
        if key.is_empty() {
            e
        } else {
            e.with("key", key)
        }
    };
    let deadline = Instant::now() + node.request_timeout();
    let mut hint: Option<NodeId> = None;
    let mut answer = Some(answer);
    loop {
        let target = match route(node, hint.take(), deadline, req).await {
            Ok(t) => t,
            Err(e) => return label(e).into_response(),
        };
        match target {
            Route::Local => match node.propose(&cmd, deadline).await {
                Ok(applied) => {
                    return match applied.answer {
                        Ok(a) => match answer.take() {
                            Some(f) => f(node, a),
                            None => ApiError::internal("answered twice").into_response(),
                        },
                        Err(e) => label(json::kv_error(&e)).into_response(),
                    }
                }
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
                    return ApiError::outcome_unknown(why.to_string(), key).into_response()
                }
                Err(WriteError::Unavailable(why)) => {
                    return label(ApiError::unavailable(why.to_string())).into_response()
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
            return label(ApiError::unavailable(format!(
                "no leader accepted the write within {} ms; it was not applied",
                node.request_timeout().as_millis()
            )))
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
