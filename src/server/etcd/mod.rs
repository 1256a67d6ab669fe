//! etcd v3 on the client port: the gRPC services ([`crate::etcd`]) and
//! etcd's JSON gateway ([`crate::etcd::gateway`]) over the running node
//! ([`backend::NodeBackend`]), and the leader's side of their forwarding
//! ([`leader`], `POST /internal/etcd`).

pub mod backend;
pub mod leader;

use axum::routing::post;
use axum::Router;

pub use backend::{NodeBackend, NodeFeed};

use super::AppState;

/// The etcd routes over `app`'s node: gRPC (HTTP/2), the JSON gateway
/// (`/v3/*`, `/version`) and `/internal/etcd`.
pub fn routes(app: &AppState) -> Router {
    let service = backend::service(app.node.clone(), app.client.clone(), app.data_dir.clone());
    Router::new()
        .route(leader::PATH, post(leader::serve))
        .with_state(app.clone())
        .merge(service.router())
        .merge(crate::etcd::gateway::router(service))
}
