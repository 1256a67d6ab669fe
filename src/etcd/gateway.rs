//! etcd's JSON gateway: the gRPC calls as `POST /v3/...` with JSON bodies,
//! as etcd 3.4's grpc-gateway serves them on the client port.
//!
//! - **Paths** are etcd's `google.api.http` annotations (`/v3/kv/range`,
//!   `/v3/kv/deleterange`, `/v3/kv/compaction`, `/v3/watch`,
//!   `/v3/maintenance/status`, `/v3/cluster/member/list`, ...). etcd maps
//!   both Hash and HashKV to `/v3/maintenance/hash`, and the gateway's mux
//!   serves the one registered last, HashKV: so does this one.
//! - **Bodies** are the request messages in the proto3 JSON mapping (both
//!   field-name spellings, bytes as base64, 64-bit integers as strings or
//!   numbers); an empty body is the empty message. Answers use the schema's
//!   field names and leave default values out ([`super::pb`]'s serde impls).
//! - **Errors** are `{"error": text, "message": text, "code": grpc_code}`
//!   with the HTTP status grpc-gateway maps the code to.
//! - **`/v3/watch`** reads watch requests (JSON objects, one after
//!   another) from the body as they arrive and answers a chunked stream of
//!   `{"result": WatchResponse}` lines, one per response, until the client
//!   goes away.
//! - **`GET /version`** answers etcd's version document.
//!
//! Every call goes through [`EtcdService`], so validation, errors and
//! headers are the gRPC API's.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::backend::EtcdBackend;
use super::pb::etcdserverpb as rpc;
use super::pb::etcdserverpb::{
    auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance,
};
use super::service::EtcdService;
use super::ETCD_VERSION;

/// Largest gateway request body: a gRPC request's limit, plus a third for
/// base64.
pub const MAX_GATEWAY_BODY_BYTES: usize = super::service::MAX_REQUEST_BYTES / 3 * 4 + 4096;

/// The HTTP status grpc-gateway answers for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The gateway's error answer for `status`.
pub fn error_response(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "message": status.message(),
        "code": status.code() as i32,
    });
    (http_status(status.code()), axum::Json(body)).into_response()
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => error_response(&Status::internal(format!(
            "encoding the answer failed: {e}"
        ))),
    }
}

fn respond<T: Serialize>(answer: Result<tonic::Response<T>, Status>) -> Response {
    match answer {
        Ok(r) => json_response(r.get_ref()),
        Err(s) => error_response(&s),
    }
}

/// A request the gateway refuses before calling the service (a small
/// error value; it becomes a [`Status`] answer).
struct Refusal(Code, String);

impl Refusal {
    fn into_response(self) -> Response {
        error_response(&Status::new(self.0, self.1))
    }
}

/// Reads the whole body, at most [`MAX_GATEWAY_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, Refusal> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refusal(
                Code::InvalidArgument,
                format!("could not read the body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > MAX_GATEWAY_BODY_BYTES {
            return Err(Refusal(
                Code::ResourceExhausted,
                format!(
                    "the request body is larger than the limit of {MAX_GATEWAY_BODY_BYTES} bytes"
                ),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Parses a request message; an empty body is the empty message (as
/// grpc-gateway, which ignores end-of-input).
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Refusal(Code::InvalidArgument, e.to_string()))
}

/// One unary call: `POST path` with the request's JSON, answered by the
/// service's method.
macro_rules! unary {
    ($($name:ident: $service:ident::$method:ident($req:ident);)*) => {
        $(
            async fn $name<B: EtcdBackend>(
                State(svc): State<EtcdService<B>>,
                body: Body,
            ) -> Response {
                let req: rpc::$req = match read_body(body).await.and_then(|b| parse(&b)) {
                    Ok(r) => r,
                    Err(refusal) => return refusal.into_response(),
                };
                respond(<EtcdService<B> as $service>::$method(&svc, tonic::Request::new(req)).await)
            }
        )*
    };
}

unary! {
    kv_range: Kv::range(RangeRequest);
    kv_put: Kv::put(PutRequest);
    kv_delete_range: Kv::delete_range(DeleteRangeRequest);
    kv_txn: Kv::txn(TxnRequest);
    kv_compact: Kv::compact(CompactionRequest);
    lease_grant: Lease::lease_grant(LeaseGrantRequest);
    lease_revoke: Lease::lease_revoke(LeaseRevokeRequest);
    lease_time_to_live: Lease::lease_time_to_live(LeaseTimeToLiveRequest);
    lease_leases: Lease::lease_leases(LeaseLeasesRequest);
    member_add: Cluster::member_add(MemberAddRequest);
    member_remove: Cluster::member_remove(MemberRemoveRequest);
    member_update: Cluster::member_update(MemberUpdateRequest);
    member_list: Cluster::member_list(MemberListRequest);
    member_promote: Cluster::member_promote(MemberPromoteRequest);
    alarm: Maintenance::alarm(AlarmRequest);
    status: Maintenance::status(StatusRequest);
    defragment: Maintenance::defragment(DefragmentRequest);
    hash_kv: Maintenance::hash_kv(HashKvRequest);
    move_leader: Maintenance::move_leader(MoveLeaderRequest);
    auth_enable: Auth::auth_enable(AuthEnableRequest);
    auth_disable: Auth::auth_disable(AuthDisableRequest);
    authenticate: Auth::authenticate(AuthenticateRequest);
    user_add: Auth::user_add(AuthUserAddRequest);
    user_get: Auth::user_get(AuthUserGetRequest);
    user_list: Auth::user_list(AuthUserListRequest);
    user_delete: Auth::user_delete(AuthUserDeleteRequest);
    user_change_password: Auth::user_change_password(AuthUserChangePasswordRequest);
    user_grant_role: Auth::user_grant_role(AuthUserGrantRoleRequest);
    user_revoke_role: Auth::user_revoke_role(AuthUserRevokeRoleRequest);
    role_add: Auth::role_add(AuthRoleAddRequest);
    role_get: Auth::role_get(AuthRoleGetRequest);
    role_list: Auth::role_list(AuthRoleListRequest);
    role_delete: Auth::role_delete(AuthRoleDeleteRequest);
    role_grant_permission: Auth::role_grant_permission(AuthRoleGrantPermissionRequest);
    role_revoke_permission: Auth::role_revoke_permission(AuthRoleRevokePermissionRequest);
}

/// The calls that stream (Snapshot, LeaseKeepAlive) over the gateway.
async fn streaming_unsupported() -> Response {
    error_response(&Status::unimplemented(
        "this streaming call is not served by RaftKV's JSON gateway; use gRPC",
    ))
}

/// One line of the watch stream: `{"result": ...}` or `{"error": ...}`.
fn watch_line(item: Result<rpc::WatchResponse, Status>) -> Bytes {
    let value = match item {
        Ok(resp) => serde_json::to_value(&resp)
            .map(|r| serde_json::json!({ "result": r }))
            .unwrap_or_else(|e| stream_error(&Status::internal(e.to_string()))),
        Err(s) => stream_error(&s),
    };
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// grpc-gateway's error object inside a stream.
fn stream_error(s: &Status) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "grpc_code": s.code() as i32,
            "http_code": http_status(s.code()).as_u16(),
            "message": s.message(),
            "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
        }
    })
}

/// Splits the complete watch requests off the front of `buf`, leaving an
/// incomplete last one for more bytes. A malformed one is an error.
fn take_requests(buf: &mut BytesMut, out: &mut Vec<rpc::WatchRequest>) -> Result<(), Refusal> {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<rpc::WatchRequest>();
    let mut consumed = 0;
    let result = loop {
        match values.next() {
            None => break Ok(()),
            Some(Ok(req)) => {
                out.push(req);
                consumed = values.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break Ok(()),
            Some(Err(e)) => break Err(Refusal(Code::InvalidArgument, e.to_string())),
        }
    };
    buf.advance(consumed);
    result
}

/// Reads body chunks into `buf` until at least one request is complete or
/// the body ends (then `ended`).
async fn next_requests<S, E>(
    body: &mut S,
    buf: &mut BytesMut,
    ended: &mut bool,
) -> Result<Vec<rpc::WatchRequest>, Refusal>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut out = Vec::new();
    while out.is_empty() && !*ended {
        match body.next().await {
            Some(Ok(chunk)) => {
                if buf.len() + chunk.len() > MAX_GATEWAY_BODY_BYTES {
                    return Err(Refusal(
                        Code::ResourceExhausted,
                        format!("a watch request is larger than the limit of {MAX_GATEWAY_BODY_BYTES} bytes"),
                    ));
                }
                buf.extend_from_slice(&chunk);
                take_requests(buf, &mut out)?;
            }
            Some(Err(e)) => {
                return Err(Refusal(
                    Code::InvalidArgument,
                    format!("could not read the body: {e}"),
                ))
            }
            None => {
                *ended = true;
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    return Err(Refusal(
                        Code::InvalidArgument,
                        "the body ends inside a watch request".into(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// `POST /v3/watch`: watch requests (JSON objects, one after another) read
/// from the body as they arrive, the responses as a chunked stream of
/// lines. A malformed first request is a 400; a later one ends the stream
/// with an `{"error": ...}` line.
async fn watch<B: EtcdBackend>(State(svc): State<EtcdService<B>>, body: Body) -> Response {
    let mut body = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut ended = false;
    let first = match next_requests(&mut body, &mut buf, &mut ended).await {
        Ok(f) => f,
        Err(refusal) => return refusal.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // A malformed later request ends the session; its error is the last line.
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<Status>();
    let mut error_tx = Some(error_tx);
    if !ended {
        // Later requests (cancel, progress) on the still open body. The
        // request side ending does not end the watches (as etcd's stream
        // after a half-close); the client dropping the response does.
        tokio::spawn(async move {
            loop {
                let more = next_requests(&mut body, &mut buf, &mut ended).await;
                let batch = match more {
                    Ok(batch) => batch.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(Refusal(code, message)) => {
                        let status = Status::new(code, message);
                        if let Some(error_tx) = error_tx.take() {
                            let _ = error_tx.send(status.clone());
                        }
                        vec![Err(status)]
                    }
                };
                let stop = ended || batch.iter().any(Result::is_err);
                for item in batch {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                if stop {
                    return;
                }
            }
        });
    }
    let requests = futures::stream::iter(first.into_iter().map(Ok)).chain(ReceiverStream::new(rx));
    let last_error = futures::stream::once(error_rx).filter_map(|r| async move { r.ok().map(Err) });
    let responses = svc.watch_stream(requests).chain(last_error);
    let lines = responses.map(|item| Ok::<_, Infallible>(watch_line(item)));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `GET /version`: etcd's server and cluster versions.
async fn version() -> Response {
    json_response(&serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
    }))
}

/// The gateway's routes over `svc` (to merge into the server's router).
pub fn router<B: EtcdBackend>(svc: EtcdService<B>) -> Router {
    Router::new()
        .route("/v3/kv/range", post(kv_range::<B>))
        .route("/v3/kv/put", post(kv_put::<B>))
        .route("/v3/kv/deleterange", post(kv_delete_range::<B>))
        .route("/v3/kv/txn", post(kv_txn::<B>))
        .route("/v3/kv/compaction", post(kv_compact::<B>))
        .route("/v3/watch", post(watch::<B>))
        .route("/v3/lease/grant", post(lease_grant::<B>))
        .route("/v3/kv/lease/revoke", post(lease_revoke::<B>))
        .route("/v3/lease/revoke", post(lease_revoke::<B>))
        .route("/v3/lease/keepalive", post(streaming_unsupported))
        .route("/v3/kv/lease/timetolive", post(lease_time_to_live::<B>))
        .route("/v3/lease/timetolive", post(lease_time_to_live::<B>))
        .route("/v3/kv/lease/leases", post(lease_leases::<B>))
        .route("/v3/lease/leases", post(lease_leases::<B>))
        .route("/v3/cluster/member/add", post(member_add::<B>))
        .route("/v3/cluster/member/remove", post(member_remove::<B>))
        .route("/v3/cluster/member/update", post(member_update::<B>))
        .route("/v3/cluster/member/list", post(member_list::<B>))
        .route("/v3/cluster/member/promote", post(member_promote::<B>))
        .route("/v3/maintenance/alarm", post(alarm::<B>))
        .route("/v3/maintenance/status", post(status::<B>))
        .route("/v3/maintenance/defragment", post(defragment::<B>))
        .route("/v3/maintenance/hash", post(hash_kv::<B>))
        .route("/v3/maintenance/snapshot", post(streaming_unsupported))
        .route(
            "/v3/maintenance/transfer-leadership",
            post(move_leader::<B>),
        )
        .route("/v3/auth/enable", post(auth_enable::<B>))
        .route("/v3/auth/disable", post(auth_disable::<B>))
        .route("/v3/auth/authenticate", post(authenticate::<B>))
        .route("/v3/auth/user/add", post(user_add::<B>))
        .route("/v3/auth/user/get", post(user_get::<B>))
        .route("/v3/auth/user/list", post(user_list::<B>))
        .route("/v3/auth/user/delete", post(user_delete::<B>))
        .route("/v3/auth/user/changepw", post(user_change_password::<B>))
        .route("/v3/auth/user/grant", post(user_grant_role::<B>))
        .route("/v3/auth/user/revoke", post(user_revoke_role::<B>))
        .route("/v3/auth/role/add", post(role_add::<B>))
        .route("/v3/auth/role/get", post(role_get::<B>))
        .route("/v3/auth/role/list", post(role_list::<B>))
        .route("/v3/auth/role/delete", post(role_delete::<B>))
        .route("/v3/auth/role/grant", post(role_grant_permission::<B>))
        .route("/v3/auth/role/revoke", post(role_revoke_permission::<B>))
        .route("/version", get(version))
        .with_state(svc)
}

#[cfg(test)]
mod tests;
