//! One node process: the composition of storage, node, peer transport and
//! HTTP server, and its clean shutdown. `raftkv start` runs [`run`].
//!
//! ```text
//!   open sled (SledStore) ─▶ PreparedNode (core recovered, NodeHandle, Inbox)
//!        │                          │ handle          │ inbox
//!        │                          ▼                 ▼
//!        │                 server::router_with ◀── transport::routes (PeerReceiver)
//!        │                                      HttpTransport ──▶ PreparedNode::start
//!        ▼
//!   axum on the listener; on shutdown: hand leadership over, stop accepting,
//!   fail what still waits, stop the loop, flush
//! ```
//!
//! This is the only module that knows all of them; the node knows neither
//! server nor transport, the server does not know the transport.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::node::{
    KvReader, Membership, NodeConfig, NodeError, PreparedNode, RunningNode, StoreReader, Timing,
};
use crate::storage::sled_store::{KvCheck, KvCheckStatus, StoreOptions};
use crate::storage::{SledStore, StorageError};
use crate::transport::{HttpTransport, PeerReceiver, PeerState, TransportTiming};

/// Runs a node until `shutdown` resolves (SIGTERM/SIGINT in the binary), then
/// stops accepting, fails in-flight requests, flushes and returns.
///
/// Errors that stop the node before it serves (bad configuration, a data
/// dir that is damaged or belongs to another node or cluster, a port in
/// use) come back as typed [`NodeError`]s whose messages name the file or
/// tree and the problem.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let membership = Membership::resolve(&config)?;
    let timing = Timing::from_config(&config)?;
    // Bind before touching the data dir: a port in use must not leave a
    // freshly initialised data dir behind.
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|problem| NodeError::Bind {
            addr: format!("{}:{}", config.host, config.port),
            problem,
        })?;
    // By default every key-value record is verified before serving (the
    // contract: never serve on damaged state). With the opt-in background
    // check, the node stops if that check finds a damaged record.
    let options = StoreOptions {
        cache_bytes: config.cache_mb.saturating_mul(1 << 20),
        kv_check: if config.kv_check_in_background {
            KvCheck::Background
        } else {
            KvCheck::AtOpen
        },
    };
    let store = SledStore::open_with(
        &config.data_dir,
        &membership.self_name,
        &membership.cluster_id,
        options,
    )
    .map_err(|e| data_dir_error(&config.data_dir, e))?;
    serve(config, membership, timing, listener, store, shutdown).await
}

/// Resolves only if the background check of the key-value tree finds a
/// damaged record (the store already refuses writes then): the node stops
/// with that error, as when the Raft loop meets a damaged record. Polls
/// the store's status every 100 ms and stops polling once the check passed.
async fn kv_check_failure(store: SledStore, data_dir: String) -> NodeError {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        match store.kv_check_status() {
            KvCheckStatus::Running => {}
            KvCheckStatus::Passed => {
                drop(store);
                return std::future::pending().await;
            }
            KvCheckStatus::Failed(e) => {
                return NodeError::DataDir {
                    path: data_dir,
                    problem: (*e).clone(),
                }
            }
        }
    }
}

/// Adds the data dir to storage errors that do not name it already.
fn data_dir_error(dir: &std::path::Path, e: StorageError) -> NodeError {
    match e {
        StorageError::IdentityMismatch { .. } => NodeError::Storage(e),
        other => NodeError::DataDir {
            path: dir.display().to_string(),
            problem: other,
        },
    }
}

/// Runs a node on an already opened store.
async fn serve(
    config: NodeConfig,
    membership: Membership,
    timing: Timing,
    listener: tokio::net::TcpListener,
    store: SledStore,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let data_dir = config.data_dir.display().to_string();
    let kv_check = kv_check_failure(store.clone(), data_dir.clone());
    let peers = PeerState::new(&membership);
    let reader: Arc<dyn KvReader> = Arc::new(StoreReader(store.clone()));
    let staging = store.clone();
    let prepared = PreparedNode::prepare(
        &config,
        membership.clone(),
        timing,
        store,
        reader,
        peers.clone(),
    )
    .map_err(|e| match e {
        NodeError::Storage(problem) => NodeError::DataDir {
            path: data_dir.clone(),
            problem,
        },
        other => other,
    })?;
    let handle = prepared.handle();

    let bind_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("{}:{}", config.host, config.port));
    let unspecified = matches!(config.host.as_str(), "0.0.0.0" | "::" | "[::]");
    if unspecified && config.advertise.is_none() {
        warn!(
            advertise = membership.self_addr(),
            "listening on all interfaces without --advertise: peers and clients will be \
             told an address they cannot reach"
        );
    }
    info!(
        node = %membership.self_name,
        listen = %bind_addr,
        advertise = %membership.self_addr(),
        cluster = %membership.cluster_id,
        members = membership.members.len(),
        data_dir = %data_dir,
        "node starting"
    );

    let transport = HttpTransport::start(
        &membership,
        &peers,
        prepared.inbox(),
        tokio::runtime::Handle::current(),
        TransportTiming {
            rpc_timeout: (timing.tick * timing.election_ticks)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
            // Generous: the first chunk may wait for the receiver to clear
            // the leftovers of an earlier transfer.
            snapshot_chunk_timeout: Duration::from_secs(60),
            max_backoff: (timing.tick * timing.election_ticks / 2)
                .clamp(Duration::from_millis(50), Duration::from_secs(1)),
        },
    );
    let receiver = Arc::new(PeerReceiver::new(
        handle.clone(),
        prepared.inbox(),
        peers,
        Some(staging),
    ));
    let mut node: RunningNode = prepared.start(transport)?;

    let (trigger_tx, mut trigger_rx) = watch::channel(false);
    let app = crate::server::router_with(
        crate::server::AppState::new(handle.clone()).with_data_dir(&config.data_dir),
        crate::transport::routes(receiver),
    );
    // TCP_NODELAY on every accepted connection (axum leaves Nagle on): a
    // response written while the previous one on the same connection is
    // still unacknowledged (pipelined Raft RPCs) would otherwise wait for
    // the peer's delayed ACK, up to 40 ms.
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = trigger_rx.wait_for(|v| *v).await;
    });
    let mut serve_task = tokio::spawn(server.into_future());

    tokio::pin!(shutdown);
    let early: Option<Result<(), NodeError>> = tokio::select! {
        _ = &mut shutdown => {
            info!("shutdown requested: no longer accepting requests");
            None
        }
        r = node.stopped() => Some(r),
        e = kv_check => Some(Err(e)),
        r = &mut serve_task => Some(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Io(e)),
            Err(e) => Err(NodeError::ServerTask(e)),
        }),
    };
    if let Some(Err(e)) = &early {
        error!(error = %e, "node stopping");
    }
    if early.is_none() {
        // A leader that is asked to stop hands over first (while it still
        // answers RPCs), so the cluster is not left waiting an election
        // timeout for a new one. Bounded: the core gives up after one.
        let within = Duration::from_millis(config.election_timeout_ms + 200);
        let started = std::time::Instant::now();
        if handle.hand_over_leadership(within).await {
            info!(
                ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            );
        }
    }
    handle.set_stopping();
    let _ = trigger_tx.send(true);

    // Let requests already in flight finish for a moment, then fail
    // whatever still waits and stop the loop.
    let request_timeout = handle.request_timeout();
    let drain = Duration::from_millis(1000).min(request_timeout);
    let server_done = tokio::time::timeout(drain, &mut serve_task).await.is_ok();
    let stopped = node.stop().await;
    let loop_result = match early {
        Some(r) => r,
        None => stopped,
    };
    if !server_done {
        let grace = request_timeout + Duration::from_secs(2);
        if tokio::time::timeout(grace, &mut serve_task).await.is_err() {
            warn!("in-flight requests did not finish in time; closing their connections");
            serve_task.abort();
        }
    }
    if loop_result.is_ok() {
        info!("node stopped cleanly");
    }
    loop_result
}
