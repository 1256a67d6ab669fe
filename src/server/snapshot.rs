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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::kv::{Command, PutRequest};
    use crate::node::handle::testing::{fake_node, Mode};
    use crate::node::{Membership, NodeConfig, StoreExporter};
    use crate::raft::{Entry, EntryPayload};
    use crate::storage::snapshot_file::{decode_file, MvccSummary};
    use crate::storage::{SledStore, StateMachine};

    async fn get(app: &axum::Router, uri: &str) -> Response {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn streams_the_node_state_as_a_verified_file() {
        let membership = Membership::resolve(&NodeConfig::new("n1")).unwrap();
        let cluster_id = membership.cluster_id.clone();
        let fake = fake_node::<()>(membership, Mode::Leader, Duration::from_secs(5));
        let app = crate::server::router(AppState::new(fake.handle.clone()));

        // Composed without an exporter: refused, not a broken stream.
        let resp = get(&app, "/snapshot").await;
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);

        let tmp = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(tmp.path(), "n1", &cluster_id).unwrap();
        let entries: Vec<Entry> = (0..50u64)
            .map(|i| Entry {
                index: i + 1,
                term: 2,
                payload: EntryPayload::Command(
                    Command::Put(PutRequest {
                        key: format!("k{}", i % 20).into_bytes(),
                        value: vec![b'v'; 100],
                        ..Default::default()
                    })
                    .encode(),
                ),
            })
            .collect();
        store.apply(&entries).unwrap();
        let exporter = Arc::new(StoreExporter(store.clone()));
        assert!(fake.handle.shared.exporter.set(exporter).is_ok());

        assert_eq!(
            get(&app, "/snapshot?x=1").await.status(),
            StatusCode::BAD_REQUEST
        );
        let resp = get(&app, "/snapshot").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[INDEX_HEADER], "50");
        assert_eq!(resp.headers()[TERM_HEADER], "2");
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        assert_eq!(body.len() % 512, 32, "etcdctl's length rule");
        let (summary, items) = decode_file(&body).unwrap();
        assert_eq!(summary.cluster_id, cluster_id);
        assert_eq!(summary.meta, store.applied());
        let mut mvcc = MvccSummary::default();
        for it in &items {
            mvcc.observe(it).unwrap();
        }
        assert_eq!(mvcc.revision, store.revision().unwrap());
        assert_eq!(mvcc.revision, 51);
        assert_eq!(mvcc.keys, 20);
    }

    #[tokio::test]
    async fn an_export_aborted_part_way_cuts_the_body_short() {
        let membership = Membership::resolve(&NodeConfig::new("n1")).unwrap();
        let cluster_id = membership.cluster_id.clone();
        let fake = fake_node::<()>(membership, Mode::Leader, Duration::from_secs(5));
        let app = crate::server::router(AppState::new(fake.handle.clone()));
        let tmp = tempfile::tempdir().unwrap();
        // About 4 MiB of records: many more pieces than the export reads
        // ahead of its consumer.
        let mut store = SledStore::open(tmp.path().join("a"), "n1", &cluster_id).unwrap();
        let entries: Vec<Entry> = (0..2000u64)
            .map(|i| Entry {
                index: i + 1,
                term: 1,
                payload: EntryPayload::Command(
                    Command::Put(PutRequest {
                        key: format!("k{i:05}").into_bytes(),
                        value: vec![b'v'; 2000],
                        ..Default::default()
                    })
                    .encode(),
                ),
            })
            .collect();
        store.apply(&entries).unwrap();
        let exporter = Arc::new(StoreExporter(store.clone()));
        assert!(fake.handle.shared.exporter.set(exporter).is_ok());
        // An image to install over it, as a leader's snapshot would be.
        let other = SledStore::open(tmp.path().join("b"), "n1", &cluster_id).unwrap();
        let (_, image) = other.snapshot().unwrap();

        let resp = get(&app, "/snapshot").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(crate::storage::snapshot_file::FILE_MAGIC));
        let mut writer = store.stage_snapshot().unwrap();
        writer.write(&image).unwrap();
        let staged = writer
            .finish(&crate::storage::ImageTrailer {
                total_len: image.len() as u64,
                crc32: crc32fast::hash(&image),
            })
            .unwrap();
        store.install_staged(staged).unwrap();
        let mut received = first.to_vec();
        let mut failed = false;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(p) => received.extend_from_slice(&p),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the body ended as if complete");
        assert!(
            decode_file(&received).is_err(),
            "a cut body must not verify"
        );
    }
}
