//! `/kv`, `/txn` and `/compact`: writes, linearizable and stale reads,
//! ranges, range deletes, transactions and compaction (docs/api.md).
//!
//! A node that is not the leader forwards writes and linearizable reads to
//! the leader; one with no leader in sight waits a little for an election
//! before answering 503. Writes are answered only once applied, and a write
//! whose fate cannot be known says so (`"outcome":"unknown"`). Every write
//! is one [`Command`] through the log; the old contract's `?cas=M` becomes
//! a transaction comparing the key's `mod_revision` with `M`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::kv::{
    validate_command, Command, CommandResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, ExecError, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    Revisioned, TxnRequest,
};
use crate::node::{NodeHandle, ReadError, WriteError};
use crate::raft::NodeId;

use super::error::ApiError;
use super::forward::{forward, hops, ForwardError, Incoming, MAX_HOPS};
use super::input::{key_from_path, parse_put_body, read_body, write_params, MAX_KV_BODY_BYTES};
use super::json::{
    delete_query, key_read_request, kv_error, parse_compact_body, parse_txn_body, JsonCompactReply,
    JsonDeleteReply, JsonGetReply, JsonHeader, JsonRangeReply, JsonRecord, JsonTxnReply,
    RangeContext, RangeQuery,
};
use super::AppState;

/// Pause before retrying when the leader is being replaced.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Largest `POST /txn` body: a transaction of up to 128 ops may carry
/// several 1 MiB values (etcd's request limit is 1.5 MiB; ours is larger
/// because values travel as JSON text).
pub const MAX_TXN_BODY_BYTES: usize = 16 << 20;

/// The header of an answer served or created at `revision`: the cluster
/// id is [`crate::node::Membership::cluster_id_u64`] (the same on every
/// member), the member id this node's Raft id, the term its current one.
pub fn header(node: &NodeHandle, revision: i64) -> JsonHeader {
    JsonHeader {
        cluster_id: node.membership().cluster_id_u64(),
        member_id: node.self_id(),
        revision,
        raft_term: node.term(),
    }
}

fn header_value(node: &NodeHandle, revision: i64) -> Value {
    serde_json::to_value(header(node, revision)).unwrap_or(Value::Null)
}

fn with_key(e: ApiError, key: Option<&str>) -> ApiError {
    match key {
        Some(k) => e.with("key", k),
        None => e,
    }
}

/// The 500 of an answer that does not fit the command (a bug).
fn unexpected(what: &str) -> Response {
    ApiError::internal(format!(
        "the state machine's answer does not fit the command ({what})"
    ))
    .into_response()
}

/// Runs a range read on the local copy, mapping refusals (compacted,
/// future revision, bad options) through [`kv_error`].
fn read_local(
    node: &NodeHandle,
    req: &RangeRequest,
) -> Result<Revisioned<RangeResponse>, ApiError> {
    node.reader().range(req).map_err(|e| match e {
        ExecError::Kv(k) => kv_error(&k),
        ExecError::Store(s) => ApiError::internal(format!("reading the state machine failed: {s}")),
    })
}

fn incoming(method: Method, uri: Uri, headers: HeaderMap, body: bytes::Bytes) -> Incoming {
    Incoming {
        method,
        uri,
        headers,
        body,
    }
}

// ------------------------------------------------------ single-key routes ---

/// A compare-and-swap as a transaction: `mod_revision(key) == expected`
/// (0 = absent), then `op`, else read the key (its current `mod_revision`
/// goes into the 412).
fn cas_txn(key: &[u8], expected: i64, op: RequestOp) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            range_end: Vec::new(),
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(expected),
        }],
        success: vec![op],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..RangeRequest::default()
        })],
    })
}

fn cas_param(key: &str, cas: Option<u64>) -> Result<Option<i64>, ApiError> {
    cas.map(|m| {
        i64::try_from(m).map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter `cas` must be at most {}, got {m}",
                i64::MAX
            ))
            .with("key", key)
        })
    })
    .transpose()
}

/// The `mod_revision` of the key a failed CAS read (0 = absent).
fn current_mod(responses: &[ResponseOp]) -> i64 {
    match responses.first() {
        Some(ResponseOp::Range(r)) => r.body.kvs.first().map_or(0, |kv| kv.mod_revision),
        _ => 0,
    }
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
    let cas = match cas_param(&key, params.cas) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
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
        key: key.clone().into_bytes(),
        value: value.into_bytes(),
        ..PutRequest::default()
    };
    let cmd = match cas {
        None => Command::Put(put),
        Some(m) => cas_txn(key.as_bytes(), m, RequestOp::Put(put)),
    };
    let req = incoming(method, uri, headers, body);
    write(&app, &cmd, &req, Some(&key), |node, answer| {
        let committed = |revision: i64| {
            Json(json!({
                "status": "committed",
                "key": key,
                "index": revision,
                "header": header_value(node, revision),
            }))
            .into_response()
        };
        match answer.body {
            CommandResponse::Put(_) => committed(answer.revision),
            CommandResponse::Txn(t) if t.succeeded => committed(answer.revision),
            CommandResponse::Txn(t) => {
                cas_mismatch(&key, cas.unwrap_or(0), current_mod(&t.responses)).into_response()
            }
            _ => unexpected("put"),
        }
    })
    .await
}

/// `DELETE /kv/{key}`: 404 when the key does not exist.
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
    let cas = match cas_param(&key, params.cas) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // A DELETE carries no body; read (and bound) it anyway so that the
    // connection stays usable.
    if let Err(e) = read_body(&headers, body, MAX_KV_BODY_BYTES).await {
        return e.into_response();
    }
    let del = DeleteRangeRequest {
        key: key.clone().into_bytes(),
        range_end: Vec::new(),
        prev_kv: false,
    };
    let cmd = match cas {
        None => Command::DeleteRange(del),
        Some(m) => cas_txn(key.as_bytes(), m, RequestOp::DeleteRange(del)),
    };
    let req = incoming(method, uri, headers, Default::default());
    write(&app, &cmd, &req, Some(&key), |node, answer| {
        let deleted = |n: i64, revision: i64| {
            if n == 0 {
                return ApiError::key_not_found(&key).into_response();
            }
            Json(json!({
                "status": "committed",
                "key": key,
                "index": revision,
                "header": header_value(node, revision),
            }))
            .into_response()
        };
        match answer.body {
            CommandResponse::DeleteRange(d) => deleted(d.deleted, answer.revision),
            CommandResponse::Txn(t) if t.succeeded => match t.responses.first() {
                Some(ResponseOp::DeleteRange(d)) => deleted(d.body.deleted, answer.revision),
                _ => unexpected("delete"),
            },
            CommandResponse::Txn(t) => {
                cas_mismatch(&key, cas.unwrap_or(0), current_mod(&t.responses)).into_response()
            }
            _ => unexpected("delete"),
        }
    })
    .await
}

/// `GET /kv/{key}[?revision=R][&consistency=stale]`.
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
    if !range.serializable {
        let req = incoming(method, uri, headers, Default::default());
        if let Err(resp) = linearizable(&app, &req).await {
            return resp;
        }
    }
    match read_local(&app.node, &range) {
        Ok(r) => match r.body.kvs.first() {
            Some(kv) => Json(JsonGetReply {
                record: JsonRecord::from(kv),
                header: header(&app.node, r.revision),
            })
            .into_response(),
            None => ApiError::key_not_found(&key).into_response(),
        },
        Err(e) => e.with("key", key.as_str()).into_response(),
    }
}

// ------------------------------------------------------------ range routes ---

/// `GET /kv?prefix=…|start=…&end=…` and the range options of docs/api.md.
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
    if let Err(e) = crate::kv::validate::validate_range(&range) {
        return kv_error(&e).into_response();
    }
    if !range.serializable {
        let req = incoming(method, uri, headers, Default::default());
        if let Err(resp) = linearizable(&app, &req).await {
            return resp;
        }
    }
    match read_local(&app.node, &range) {
        Ok(r) => Json(JsonRangeReply {
            range: (&r.body).into(),
            header: header(&app.node, r.revision),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /kv?prefix=…|start=…&end=…[&prev_kv=true]`.
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
    let cmd = Command::DeleteRange(del);
    let req = incoming(method, uri, headers, Default::default());
    write(&app, &cmd, &req, None, |node, answer| match answer.body {
        CommandResponse::DeleteRange(d) => Json(JsonDeleteReply::new(
            &d,
            answer.revision,
            header(node, answer.revision),
        ))
        .into_response(),
        _ => unexpected("delete range"),
    })
    .await
}

/// `POST /txn`: a failed compare is a 200 with `"succeeded": false`.
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
    let t = match parse_txn_body(&body) {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let cmd = Command::Txn(t);
    let req = incoming(method, uri, headers, body);
    write(&app, &cmd, &req, None, |node, answer| match answer.body {
        CommandResponse::Txn(t) => Json(JsonTxnReply {
            txn: (&t).into(),
            index: answer.revision,
            header: header(node, answer.revision),
        })
        .into_response(),
        _ => unexpected("txn"),
    })
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
    let c = match parse_compact_body(&body) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let compact_revision = c.revision;
    let cmd = Command::Compact(c);
    let req = incoming(method, uri, headers, body);
    write(&app, &cmd, &req, None, |node, answer| match answer.body {
        CommandResponse::Compact(_) => Json(JsonCompactReply {
            compact_revision,
            header: header(node, answer.revision),
        })
        .into_response(),
        _ => unexpected("compact"),
    })
    .await
}

/// `/kv` and `/kv/` with a write method: the key is missing.
pub async fn empty_key() -> Response {
    ApiError::bad_request("the key must not be empty: use /kv/{key}").into_response()
}

/// The 412 of a failed compare-and-swap: names the index the write
/// expected and the key's current one (`index`, 0 = absent).
fn cas_mismatch(key: &str, expected: i64, current: i64) -> ApiError {
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

/// Proposes `cmd` on the leader (here, or by forwarding `req` to it) and
/// turns the applied answer into the response with `answer`; a refusal of
/// the data model goes through [`kv_error`]. `key` names the key in error
/// bodies (the single-key routes).
async fn write<F>(
    app: &AppState,
    cmd: &Command,
    req: &Incoming,
    key: Option<&str>,
    answer: F,
) -> Response
where
    F: FnOnce(&NodeHandle, Revisioned<CommandResponse>) -> Response,
{
    // Refuse what the data model would refuse before it costs a log entry.
    if let Err(e) = validate_command(cmd) {
        return with_key(kv_error(&e), key).into_response();
    }
    let node = &app.node;
    let deadline = Instant::now() + node.request_timeout();
    let mut hint: Option<NodeId> = None;
    loop {
        let target = match route(node, hint.take(), deadline, req).await {
            Ok(t) => t,
            Err(e) => return with_key(e, key).into_response(),
        };
        match target {
            Route::Local => match node.propose(cmd, deadline).await {
                Ok(applied) => {
                    return match applied.answer {
                        Ok(a) => answer(node, a),
                        Err(e) => with_key(kv_error(&e), key).into_response(),
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
                    return outcome_unknown(why.to_string(), key).into_response()
                }
                Err(WriteError::Unavailable(why)) => {
                    return with_key(ApiError::unavailable(why.to_string()), key).into_response()
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
                        return outcome_unknown(
                            format!(
                                "the leader ({}) did not answer the forwarded write: {e}",
                                node.name_of(leader)
                            ),
                            key,
                        )
                        .into_response()
                    }
                }
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return with_key(
                ApiError::unavailable(format!(
                    "no leader accepted the write within {} ms; it was not applied",
                    node.request_timeout().as_millis()
                )),
                key,
            )
            .into_response();
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The 503 of a write that may or may not have been applied.
fn outcome_unknown(message: String, key: Option<&str>) -> ApiError {
    match key {
        Some(k) => ApiError::outcome_unknown(message, k),
        None => ApiError::unavailable(message).with("outcome", "unknown"),
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
