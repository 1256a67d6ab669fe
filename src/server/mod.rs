//! The HTTP server (axum): the client API of the contract and the `/raft/*`
//! peer RPCs, on one port.
//!
//! | route | handler |
//! |---|---|
//! | `PUT/GET/DELETE /kv/{key}` | [`kv`] (key = the rest of the path, `/` allowed) |
//! | `GET /kv` (range), `DELETE /kv` (range delete) | [`kv::list`], [`kv::delete_range`] |
//! | `POST /txn`, `POST /compact` | [`kv::txn`], [`kv::compact`] |
//! | `GET /watch` (SSE or long poll, served locally) | [`watch::watch`] |
//! | `GET /cluster/status`, `/cluster/leader`, `/health` | [`cluster`] |
//! | `POST /raft/*` | the peer transport's routes (`crate::transport::routes`), mounted by the process |
//! | gRPC `/etcdserverpb.*/*` (HTTP/2), `POST /v3/*`, `GET /version` | etcd v3's API and JSON gateway over the node ([`etcd`]) |
//! | `POST /internal/etcd` | the leader's side of the etcd API's forwarding ([`etcd::leader`]) |
//!
//! docs/api.md is the API's reference; [`json`] translates between its
//! JSON and [`crate::kv`]'s requests and answers.
//!
//! No handler uses an extractor that can reject (handlers parse raw path,
//! query and body themselves), so every error is the JSON of
//! [`error::ApiError`]; unknown routes get a JSON 404, wrong methods a JSON
//! 405, and a panic a JSON 500 rather than a dropped connection.

pub mod cluster;
pub mod error;
pub mod etcd;
pub mod forward;
pub mod input;
pub(crate) mod json;
pub mod kv;
pub mod watch;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use futures::FutureExt;

use crate::node::NodeHandle;

use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The local node.
    pub node: NodeHandle,
    /// Kept-alive client for forwarding requests to the leader (it keeps
    /// paths byte for byte, see [`crate::http_client`]).
    pub client: crate::http_client::HttpClient,
    /// How long an SSE watch may stay silent before it sends a progress
    /// message (`progress_notify`) or a keep-alive comment.
    pub watch_progress_every: Duration,
    /// The node's data directory, measured for etcd's Maintenance.Status
    /// (`db_size`); `None` reports 0.
    pub data_dir: Option<PathBuf>,
}

/// Default of [`AppState::watch_progress_every`] (etcd sends its progress
/// notifications every 10 minutes; HTTP clients and proxies time idle
/// streams out much sooner).
pub const WATCH_PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl AppState {
    /// State for `node`, with its own forwarding client.
    pub fn new(node: NodeHandle) -> Self {
        let client = crate::http_client::HttpClient::new(crate::http_client::HttpClientConfig {
            connect_timeout: Duration::from_millis(1000),
            pool_idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
        });
        AppState {
            node,
            client,
            watch_progress_every: WATCH_PROGRESS_EVERY,
            data_dir: None,
        }
    }

    /// The same state, reporting the size of `dir` as etcd's `db_size`.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
}

/// Builds the router with the client API's routes.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// Builds the router with the client API's routes and `peer_routes` (the
/// peer transport's `/raft/*`), all behind the same JSON fallbacks and
/// panic guard.
pub fn router_with(state: AppState, peer_routes: Router) -> Router {
    let etcd_routes = etcd::routes(&state);
    Router::new()
        .route(
            "/kv",
            get(kv::list).put(kv::empty_key).delete(kv::delete_range),
        )
        .route("/txn", post(kv::txn))
        .route("/compact", post(kv::compact))
        .route("/watch", get(watch::watch))
        .route("/kv/", any(kv::empty_key))
        .route("/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/cluster/status", get(cluster::status))
        .route("/cluster/leader", get(cluster::leader))
        .route("/health", get(cluster::health))
        .with_state(state)
        .merge(peer_routes)
        .merge(etcd_routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(catch_panic))
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response();
    let allow = match req.uri().path() {
        "/kv" => "GET, DELETE",
        "/txn" | "/compact" => "POST",
        p if p.starts_with("/kv/") => "GET, PUT, DELETE",
        p if p.starts_with("/raft/") || p.starts_with("/v3/") || p.starts_with("/internal/") => {
            "POST"
        }
        _ => "GET",
    };
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Turns a panicking handler into a JSON 500 instead of a dropped
/// connection.
async fn catch_panic(req: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "request handler panicked");
            ApiError::internal(format!("internal error: {what}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests;
