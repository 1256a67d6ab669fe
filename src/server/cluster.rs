//! `/cluster/status`, `/cluster/leader` and `/health`: answered from the
//! status the Raft loop last published, so they never wait on consensus.

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::input::no_params;
use super::AppState;

/// `GET /cluster/status`.
pub async fn status(State(app): State<AppState>, uri: Uri) -> Response {
    if let Err(e) = no_params(uri.query()) {
        return e.into_response();
    }
    let node = &app.node;
    let st = node.status();
    let m = node.membership();
    let peers: Vec<Value> = m
        .peers()
        .map(|p| {
            let mut v = json!({
                "id": node.name_of(p.id),
                "url": p.url(),
                "reachable": node.peer_reachable(p.id),
            });
            if let Some(progress) = st.peers.iter().find(|ps| ps.id == p.id) {
                v["match_index"] = json!(progress.match_index);
                v["next_index"] = json!(progress.next_index);
            }
            v
        })
        .collect();
    Json(json!({
        "node_id": m.self_name,
        "url": format!("http://{}", m.self_addr()),
        "cluster_id": m.cluster_id,
        "role": st.role.as_str(),
        "term": st.term,
        "leader_id": st.leader.map(|l| node.name_of(l)),
        "leader_url": st.leader.and_then(|l| node.url_of(l)),
        "commit_index": st.commit_index,
        "applied_index": st.applied_index,
        "first_log_index": st.first_index,
        "last_log_index": st.last_index,
        "snapshot_index": st.snapshot_index,
        "snapshot_receiving": node.snapshot_receiving().map(|p| json!({
            "from": node.name_of(p.from),
            "index": p.index,
            "term": p.term,
            "bytes": p.bytes,
            "chunks": p.chunks,
        })),
        "peers": peers,
    }))
    .into_response()
}

/// `GET /cluster/leader`.
pub async fn leader(State(app): State<AppState>, uri: Uri) -> Response {
    if let Err(e) = no_params(uri.query()) {
        return e.into_response();
    }
    let node = &app.node;
    let st = node.status();
    match st.leader {
        Some(l) => Json(json!({
            "leader_id": node.name_of(l),
            "leader_url": node.url_of(l),
            "term": st.term,
        }))
        .into_response(),
        None => ApiError::unavailable("no leader is known (election in progress or quorum lost)")
            .with("term", st.term)
            .into_response(),
    }
}

/// `GET /health`: liveness only.
pub async fn health(State(app): State<AppState>) -> Response {
    let node = &app.node;
    let st = node.status();
    Json(json!({
        "status": "ok",
        "node_id": node.membership().self_name,
        "role": st.role.as_str(),
        "term": st.term,
        "leader_id": st.leader.map(|l| node.name_of(l)),
    }))
    .into_response()
}
