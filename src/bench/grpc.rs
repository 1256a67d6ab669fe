//! `raftkv bench --protocol grpc`: the same workloads spoken in etcd v3's
//! own gRPC protocol (the tonic clients generated in [`crate::etcd::pb`]),
//! to etcd or to RaftKV's etcd-compatible port, so both systems are
//! measured through one client stack, like for like.
//!
//! Connections: `--connections C` are C concurrent *clients* (one request
//! in flight each, as with JSON); `--grpc-conns N` are the HTTP/2
//! connections they share (one tonic [`Channel`] each, requests multiplexed
//! as HTTP/2 streams). Client `i` uses connection `i mod N` of its node, as
//! etcd's own benchmark tool spreads its clients over its connections.
//! With `--target-nodes all` every node gets its own N connections.
//!
//! | operation | RPC |
//! |---|---|
//! | put | `KV.Put {key, value}` |
//! | linearizable / serializable get | `KV.Range {key, serializable}` |
//! | compare-and-swap | `KV.Range`, then `KV.Txn` comparing the key's `mod_revision` |
//! | txn | `KV.Txn`: both keys' `mod_revision` equal to the last seen → put both, else range both |
//! | delete (`--cleanup`) | `KV.DeleteRange {key}` |
//! | leader lookup (etcd) | `Maintenance.Status` on each endpoint |
//! | watch fan-out | `Watch.Watch` streams, `--watch-streams` of them, watchers spread round robin |

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::report::{ErrorKind, Outcome};
use super::target::{Keys, ModCache};
use super::watch::MAX_DELIVERIES_PER_WATCHER;
use super::watch::{match_deliveries, Delivery, PutRecord, WatchReport, WatchSpec};
use crate::etcd::pb::etcdserverpb as rpc;
use crate::etcd::pb::mvccpb;
use rpc::compare::{CompareResult, CompareTarget, TargetUnion};
use rpc::kv_client::KvClient;
use rpc::maintenance_client::MaintenanceClient;
use rpc::request_op::Request;
use rpc::response_op::Response;
use rpc::watch_client::WatchClient;

/// Most HTTP/2 connections per node by default (`--grpc-conns`).
pub const DEFAULT_MAX_GRPC_CONNS: u32 = 8;
/// Most Watch streams by default (`--watch-streams`), as etcd's benchmark.
pub const DEFAULT_MAX_WATCH_STREAMS: u32 = 10;

/// The run's HTTP/2 connections: `per_node` lazily connected channels to
/// every node (a channel connects on its first request, so the channels
/// of nodes nobody talks to cost nothing).
#[derive(Clone, Debug)]
pub struct Pool {
    endpoints: Arc<Vec<String>>,
    /// `channels[e][k]`: connection `k` to node `e`.
    channels: Arc<Vec<Vec<Channel>>>,
}

impl Pool {
    /// `per_node` connections to each of `endpoints` (base URLs). Must be
    /// called inside a tokio runtime (a channel spawns its worker).
    pub fn new(
        endpoints: Arc<Vec<String>>,
        per_node: u32,
        connect_timeout: Duration,
    ) -> Result<Pool, String> {
        if endpoints.is_empty() {
            return Err("no endpoints".into());
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for e in endpoints.iter() {
            let endpoint = Endpoint::from_shared(e.clone())
                .map_err(|err| format!("{e}: not a gRPC endpoint: {err}"))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true);
            channels.push(
                (0..per_node.max(1))
                    .map(|_| endpoint.connect_lazy())
                    .collect(),
            );
        }
        Ok(Pool {
            endpoints,
            channels: Arc::new(channels),
        })
    }

    /// Connections per node.
    pub fn per_node(&self) -> usize {
        self.channels[0].len()
    }

    /// Nodes.
    pub fn nodes(&self) -> usize {
        self.endpoints.len()
    }

    /// Connection `slot` (mod the count) to node `node` (mod the count).
    pub fn channel(&self, node: usize, slot: usize) -> Channel {
        let row = &self.channels[node % self.channels.len()];
        row[slot % row.len()].clone()
    }

    /// Node `node`'s base URL.
    pub fn endpoint(&self, node: usize) -> &str {
        &self.endpoints[node % self.endpoints.len()]
    }
}

/// The gRPC status names, by code (`grpc_unavailable`, ...), as counted in
/// `errors_by_kind`.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "ok",
        1 => "cancelled",
        2 => "unknown",
        3 => "invalid_argument",
        4 => "deadline_exceeded",
        5 => "not_found",
        6 => "already_exists",
        7 => "permission_denied",
        8 => "resource_exhausted",
        9 => "failed_precondition",
        10 => "aborted",
        11 => "out_of_range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data_loss",
        16 => "unauthenticated",
        _ => "other",
    }
}

/// The error kind of a failed call. A connection that cannot be opened
/// comes back from tonic as `Unavailable` carrying the transport error as
/// its source: that is a `connect` error (the runner moves on to the next
/// node), like the JSON client's. A deadline is a `timeout`.
pub fn status_kind(s: &tonic::Status) -> ErrorKind {
    use std::error::Error as _;
    match s.code() {
        tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
        tonic::Code::Unavailable if s.source().is_some() => ErrorKind::Connect,
        code => ErrorKind::Grpc(code as i32),
    }
}

/// Awaits one unary call, at most `timeout`.
async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ErrorKind> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ErrorKind::Timeout),
        Ok(Err(s)) => Err(status_kind(&s)),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(Request::RequestPut(rpc::PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn range_op(key: Vec<u8>) -> rpc::RequestOp {
    rpc::RequestOp {
        request: Some(Request::RequestRange(rpc::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// "`key`'s mod_revision is `revision`" (0 = absent, as etcd compares a
/// missing key).
fn mod_is(key: Vec<u8>, revision: i64) -> rpc::Compare {
    rpc::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(revision)),
    }
}

/// The bench's transfer transaction over gRPC (the shape of the JSON txn
/// workload, [`super::target::transfer_txn_body`]): if `a` and `b` still
/// have the mod revisions `ra` and `rb`, put `value` into both, else read
/// both.
pub fn transfer_txn(a: &[u8], ra: i64, b: &[u8], rb: i64, value: &[u8]) -> rpc::TxnRequest {
    rpc::TxnRequest {
        compare: vec![mod_is(a.to_vec(), ra), mod_is(b.to_vec(), rb)],
        success: vec![
            put_op(a.to_vec(), value.to_vec()),
            put_op(b.to_vec(), value.to_vec()),
        ],
        failure: vec![range_op(a.to_vec()), range_op(b.to_vec())],
    }
}

/// The mod revision the range of op `n` of a txn answer found (0: absent,
/// or not a range).
pub fn txn_range_mod_revision(t: &rpc::TxnResponse, n: usize) -> i64 {
    match t.responses.get(n).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.mod_revision),
        _ => 0,
    }
}

/// One bench client over gRPC: a KV client on one of the pool's
/// connections (moving to the same slot of the next node when it cannot
/// connect).
pub struct GrpcSession {
    pool: Pool,
    current: usize,
    slot: usize,
    kv: KvClient<Channel>,
    keys: Arc<Keys>,
    value: Vec<u8>,
    stale: bool,
    timeout: Duration,
    /// Whether this client is the first on its connection (it opens it
    /// before the run).
    opens: bool,
}

impl GrpcSession {
    /// Client on connection `slot` of node `first`, writing `value`.
    pub fn new(
        pool: Pool,
        first: usize,
        slot: usize,
        keys: Arc<Keys>,
        value: &str,
        stale: bool,
        timeout: Duration,
    ) -> GrpcSession {
        let current = first % pool.nodes();
        let kv = KvClient::new(pool.channel(current, slot));
        let opens = slot < pool.per_node();
        GrpcSession {
            pool,
            current,
            slot,
            kv,
            keys,
            value: value.as_bytes().to_vec(),
            stale,
            timeout,
            opens,
        }
    }

    /// The node this client talks to.
    pub fn endpoint(&self) -> &str {
        self.pool.endpoint(self.current)
    }

    /// Moves to the next node (same connection slot).
    pub fn next_endpoint(&mut self) {
        if self.pool.nodes() > 1 {
            self.current = (self.current + 1) % self.pool.nodes();
            self.kv = KvClient::new(self.pool.channel(self.current, self.slot));
        }
    }

    /// Opens this client's connection before the run, if it is the first
    /// client on it, with a `Maintenance.Status` (not a KV request, so the
    /// servers' KV counts are the workload's). Failures are left for the
    /// first operation to count.
    pub async fn warm_up_connection(&mut self) {
        if !self.opens {
            return;
        }
        let mut m = MaintenanceClient::new(self.pool.channel(self.current, self.slot));
        if let Err(ErrorKind::Connect) = call(self.timeout, m.status(rpc::StatusRequest {})).await {
            self.next_endpoint();
        }
    }

    /// Writes key `i`; on success also the revision it created.
    pub async fn put(&mut self, i: u64) -> (Outcome, Option<i64>) {
        let req = rpc::PutRequest {
            key: self.keys.key(i).into_bytes(),
            value: self.value.clone(),
            ..Default::default()
        };
        match call(self.timeout, self.kv.put(req)).await {
            Ok(r) => (Outcome::Ok, r.header.map(|h| h.revision)),
            Err(e) => (Outcome::Error(e), None),
        }
    }

    /// Reads key `i`: `Some(mod_revision)` or `None` when absent.
    async fn read(&mut self, i: u64, serializable: bool) -> Result<Option<i64>, ErrorKind> {
        let req = rpc::RangeRequest {
            key: self.keys.key(i).into_bytes(),
            serializable,
            ..Default::default()
        };
        let r = call(self.timeout, self.kv.range(req)).await?;
        Ok(r.kvs.first().map(|kv| kv.mod_revision))
    }

    /// Reads key `i` (serializable if the session was made stale).
    pub async fn get(&mut self, i: u64) -> Outcome {
        match self.read(i, self.stale).await {
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) => Outcome::Error(ErrorKind::NotFound),
            Err(e) => Outcome::Error(e),
        }
    }

    /// Read-modify-write of key `i`: a linearizable range, then a txn
    /// putting the value if the mod revision is still the one read.
    pub async fn cas(&mut self, i: u64) -> Outcome {
        let revision = match self.read(i, false).await {
            Ok(r) => r.unwrap_or(0),
            Err(e) => return Outcome::Error(e),
        };
        let key = self.keys.key(i).into_bytes();
        let req = rpc::TxnRequest {
            compare: vec![mod_is(key.clone(), revision)],
            success: vec![put_op(key, self.value.clone())],
            failure: Vec::new(),
        };
        match call(self.timeout, self.kv.txn(req)).await {
            Ok(t) if t.succeeded => Outcome::Ok,
            Ok(_) => Outcome::Conflict,
            Err(e) => Outcome::Error(e),
        }
    }

    /// The transfer transaction on keys `a` and `b` against the shared
    /// mod-revision cache (see [`ModCache`]); the failure branch is a
    /// [`Outcome::Conflict`] and refreshes the cache from its reads.
    pub async fn txn(&mut self, a: u64, b: u64, cache: &ModCache) -> Outcome {
        let (ka, kb) = (self.keys.key(a), self.keys.key(b));
        let req = transfer_txn(
            ka.as_bytes(),
            cache.get(a),
            kb.as_bytes(),
            cache.get(b),
            &self.value,
        );
        match call(self.timeout, self.kv.txn(req)).await {
            Ok(t) if t.succeeded => {
                let revision = t.header.map_or(0, |h| h.revision);
                cache.saw(a, revision);
                cache.saw(b, revision);
                Outcome::Ok
            }
            Ok(t) => {
                cache.set(a, txn_range_mod_revision(&t, 0));
                cache.set(b, txn_range_mod_revision(&t, 1));
                Outcome::Conflict
            }
            Err(e) => Outcome::Error(e),
        }
    }

    /// Deletes key `i`: `Ok(true)` if it existed.
    pub async fn delete(&mut self, i: u64) -> Result<bool, ErrorKind> {
        let req = rpc::DeleteRangeRequest {
            key: self.keys.key(i).into_bytes(),
            ..Default::default()
        };
        call(self.timeout, self.kv.delete_range(req))
            .await
            .map(|r| r.deleted > 0)
    }
}

/// The endpoint of the leader: the member whose `Maintenance.Status`
/// names itself as leader, retried for up to 10 s (an election may be
/// running).
pub async fn leader(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("no endpoint answered");
    loop {
        for e in endpoints {
            let channel = Endpoint::from_shared(e.clone())
                .map_err(|err| format!("{e}: {err}"))?
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy();
            let mut m = MaintenanceClient::new(channel);
            match call(timeout, m.status(rpc::StatusRequest {})).await {
                Ok(s) => {
                    let me = s.header.map_or(0, |h| h.member_id);
                    if me != 0 && me == s.leader {
                        return Ok(e.clone());
                    }
                    last = format!("{e}: not the leader");
                }
                Err(kind) => last = format!("{e}: {}", kind.name()),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("finding the leader over gRPC: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The store's current revision as `endpoint` reports it: the header of
/// a one-key, keys-only range under `prefix`.
pub async fn current_revision(
    endpoint: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<i64, String> {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(timeout)
        .connect_lazy();
    let req = rpc::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: crate::kv::prefix_end(prefix.as_bytes()),
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    let r = call(timeout, KvClient::new(channel).range(req))
        .await
        .map_err(|k| format!("KV.Range: {}", k.name()))?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// The per-event deliveries of one watch response: its events grouped by
/// revision (etcd may send several revisions in one response to a watcher
/// catching up), each group a [`Delivery`] at `at_us`.
pub fn deliveries_of(events: &[mvccpb::Event], at_us: u64) -> Vec<Delivery> {
    let rev = |e: &mvccpb::Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut out: Vec<Delivery> = Vec::new();
    for e in events {
        let r = rev(e);
        match out.last_mut() {
            Some(d) if d.revision == r => d.events += 1,
            _ => out.push(Delivery {
                revision: r,
                events: 1,
                at_us,
            }),
        }
    }
    out
}

/// One watcher of a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    start_revision: i64,
    /// Active watchers share their progress with the coordinator.
    shared: Option<Arc<Progress>>,
}

/// How far an active watcher got.
#[derive(Default)]
struct Progress {
    last_revision: AtomicI64,
    live: AtomicBool,
}

/// What one watcher ends with.
#[derive(Debug, Default)]
struct WatcherLog {
    deliveries: Vec<Delivery>,
    unrecorded: u64,
    messages: u64,
    progress: u64,
    canceled: Option<String>,
    error: Option<String>,
    opened: bool,
}

/// What a stream reports once its watchers are created.
#[derive(Debug, Default)]
struct Opened {
    active: u32,
    idle: u32,
    errors: BTreeMap<String, u64>,
}

/// Watchers over gRPC Watch streams (the counterpart of
/// [`super::watch::WatchSet`]).
pub struct GrpcWatchSet {
    spec: WatchSpec,
    streams: u32,
    stop: tokio::sync::watch::Sender<bool>,
    progress: Vec<Arc<Progress>>,
    /// Per stream: whether each watcher is active, and the task.
    tasks: Vec<(Vec<bool>, tokio::task::JoinHandle<Vec<WatcherLog>>)>,
    open_s: f64,
    opened: Opened,
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

impl GrpcWatchSet {
    /// Opens `streams` Watch streams over `pool` (stream `s` on node
    /// `s mod nodes`, connection `(s / nodes) mod per_node`), spreads the
    /// active then the idle watchers over them round robin, and waits until
    /// every watcher is created or has failed (bounded by the spec's open
    /// timeout).
    pub async fn open(spec: WatchSpec, streams: u32, pool: &Pool) -> GrpcWatchSet {
        let started = Instant::now();
        let streams = streams.max(1);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut plan: Vec<Vec<Watcher>> = (0..streams).map(|_| Vec::new()).collect();
        let mut progress = Vec::new();
        let watch_end = crate::kv::prefix_end(spec.prefix.as_bytes());
        for i in 0..spec.active as usize {
            let p = Arc::new(Progress::default());
            progress.push(p.clone());
            plan[i % streams as usize].push(Watcher {
                key: spec.prefix.as_bytes().to_vec(),
                range_end: watch_end.clone(),
                start_revision: spec.start_revision,
                shared: Some(p),
            });
        }
        for i in 0..spec.idle as usize {
            let key = format!("{}{i:06}", spec.idle_prefix);
            plan[(spec.active as usize + i) % streams as usize].push(Watcher {
                key: key.into_bytes(),
                range_end: Vec::new(),
                start_revision: 0,
                shared: None,
            });
        }
        let mut tasks = Vec::new();
        let mut reports = Vec::new();
        let nodes = pool.nodes();
        for (s, watchers) in plan.into_iter().enumerate() {
            if watchers.is_empty() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            reports.push(rx);
            let active: Vec<bool> = watchers.iter().map(|w| w.shared.is_some()).collect();
            let channel = pool.channel(s % nodes, s / nodes);
            tasks.push((
                active,
                tokio::spawn(stream_task(
                    channel,
                    watchers,
                    spec.epoch,
                    spec.open_timeout,
                    tx,
                    stop_rx.clone(),
                )),
            ));
        }
        let mut opened = Opened::default();
        for rx in reports {
            match rx.await {
                Ok(o) => {
                    opened.active += o.active;
                    opened.idle += o.idle;
                    for (k, n) in o.errors {
                        *opened.errors.entry(k).or_default() += n;
                    }
                }
                Err(_) => *opened.errors.entry("task_ended".into()).or_default() += 1,
            }
        }
        GrpcWatchSet {
            spec,
            streams,
            stop,
            progress,
            tasks,
            open_s: started.elapsed().as_secs_f64(),
            opened,
        }
    }

    /// Waits until every live active watcher has received `revision`, at
    /// most `limit`; returns whether they all got there.
    pub async fn drain(&self, revision: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let behind = self.progress.iter().any(|p| {
                p.live.load(Ordering::Relaxed) && p.last_revision.load(Ordering::Relaxed) < revision
            });
            if !behind {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every stream and matches the deliveries against `puts`.
    pub async fn finish(self, puts: &[PutRecord], drained: bool, drain_s: f64) -> WatchReport {
        let _ = self.stop.send(true);
        let mut report = WatchReport {
            endpoints: self.spec.endpoints.clone(),
            active: self.spec.active,
            idle: self.spec.idle,
            active_open: self.opened.active,
            idle_open: self.opened.idle,
            open_s: self.open_s,
            errors: self.opened.errors.clone(),
            start_revision: self.spec.start_revision,
            drained,
            drain_s,
            streams: self.streams,
            ..WatchReport::default()
        };
        let mut logs = Vec::new();
        let mut unrecorded = 0;
        for (active, h) in self.tasks {
            let abort = h.abort_handle();
            let watchers = match tokio::time::timeout(Duration::from_secs(5), h).await {
                Ok(Ok(w)) => w,
                _ => {
                    abort.abort();
                    *report.errors.entry("not_stopped".into()).or_default() += 1;
                    continue;
                }
            };
            for (is_active, w) in active.into_iter().zip(watchers) {
                if !w.opened {
                    continue;
                }
                if let Some(reason) = w.canceled {
                    *report.canceled.entry(reason).or_default() += 1;
                }
                if let Some(e) = w.error {
                    *report.errors.entry(e).or_default() += 1;
                }
                if is_active {
                    report.progress_messages += w.progress;
                    unrecorded += w.unrecorded;
                    logs.push(w.deliveries);
                } else {
                    report.idle_messages += w.messages;
                }
            }
        }
        report.fanout = match_deliveries(puts, &logs, unrecorded);
        report
    }
}

fn create_request(w: &Watcher) -> rpc::WatchRequest {
    rpc::WatchRequest {
        request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
            rpc::WatchCreateRequest {
                key: w.key.clone(),
                range_end: w.range_end.clone(),
                start_revision: w.start_revision,
                ..Default::default()
            },
        )),
    }
}

/// One Watch stream: creates its watchers one at a time (each create is
/// answered by a `created` response naming the watch id, in order), tells
/// `opened`, then records every response until `stop`.
async fn stream_task(
    channel: Channel,
    watchers: Vec<Watcher>,
    epoch: Instant,
    open_timeout: Duration,
    opened: oneshot::Sender<Opened>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<WatcherLog> {
    let mut logs: Vec<WatcherLog> = watchers.iter().map(|_| WatcherLog::default()).collect();
    let mut report = Opened::default();
    let Some(first) = watchers.first() else {
        let _ = opened.send(report);
        return logs;
    };
    let (tx, rx) = mpsc::channel::<rpc::WatchRequest>(4);
    // The server may send its response headers only with its first
    // message: the first create must be queued before the call is awaited.
    let _ = tx.try_send(create_request(first));
    let deadline = tokio::time::Instant::now() + open_timeout;
    let mut client = WatchClient::new(channel);
    let call = tokio::time::timeout_at(deadline, client.watch(ReceiverStream::new(rx))).await;
    let mut inbound = match call {
        Ok(Ok(r)) => r.into_inner(),
        failed => {
            let kind = match failed {
                Ok(Err(s)) => format!("open: {}", status_kind(&s).name()),
                _ => "open_timeout".to_string(),
            };
            report.errors.insert(kind, watchers.len() as u64);
            let _ = opened.send(report);
            return logs;
        }
    };
    let mut opened = Some(opened);
    let mut next = 0usize;
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    let fail = |logs: &mut Vec<WatcherLog>, error: String| {
        for (w, log) in logs.iter_mut().enumerate() {
            if log.opened && log.canceled.is_none() {
                log.error = Some(error.clone());
            }
            if let Some(p) = &watchers[w].shared {
                p.live.store(false, Ordering::Relaxed);
            }
        }
    };
    loop {
        let message = if opened.is_some() {
            tokio::select! {
                m = inbound.message() => m,
                _ = tokio::time::sleep_until(deadline) => {
                    let left = (watchers.len() - next) as u64;
                    report.errors.insert("open_timeout".into(), left);
                    if let Some(o) = opened.take() {
                        let _ = o.send(std::mem::take(&mut report));
                    }
                    continue;
                }
            }
        } else {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                m = inbound.message() => m,
            }
        };
        let resp = match message {
            Ok(Some(r)) => r,
            Ok(None) => {
                fail(&mut logs, "stream_ended".into());
                break;
            }
            Err(s) => {
                fail(&mut logs, format!("stream: {}", status_kind(&s).name()));
                break;
            }
        };
        if resp.created && opened.is_some() && next < watchers.len() {
            let w = next;
            next += 1;
            if resp.canceled {
                let reason = format!("refused: {}", resp.cancel_reason);
                *report.errors.entry(reason).or_default() += 1;
            } else {
                logs[w].opened = true;
                by_id.insert(resp.watch_id, w);
                match &watchers[w].shared {
                    Some(p) => {
                        p.live.store(true, Ordering::Relaxed);
                        report.active += 1;
                    }
                    None => report.idle += 1,
                }
            }
            if next < watchers.len() {
                if tx.send(create_request(&watchers[next])).await.is_err() {
                    fail(&mut logs, "stream_ended".into());
                    break;
                }
            } else if let Some(o) = opened.take() {
                let _ = o.send(std::mem::take(&mut report));
            }
            continue;
        }
        let Some(&w) = by_id.get(&resp.watch_id) else {
            continue;
        };
        let log = &mut logs[w];
        if resp.canceled {
            log.canceled = Some(if resp.compact_revision > 0 {
                "compacted".to_string()
            } else if resp.cancel_reason.is_empty() {
                "unknown".to_string()
            } else {
                resp.cancel_reason.clone()
            });
            if let Some(p) = &watchers[w].shared {
                p.live.store(false, Ordering::Relaxed);
            }
            by_id.remove(&resp.watch_id);
            continue;
        }
        log.messages += 1;
        if resp.events.is_empty() {
            log.progress += 1;
            continue;
        }
        let Some(p) = &watchers[w].shared else {
            continue;
        };
        for d in deliveries_of(&resp.events, micros_since(epoch)) {
            p.last_revision.fetch_max(d.revision, Ordering::Relaxed);
            if log.deliveries.len() < MAX_DELIVERIES_PER_WATCHER {
                log.deliveries.push(d);
            } else {
                log.unrecorded += 1;
            }
        }
    }
    if let Some(o) = opened.take() {
        let _ = o.send(report);
    }
    drop(tx);
    logs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rev: i64) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_response_spanning_revisions_is_one_delivery_per_revision() {
        let d = deliveries_of(&[event(5), event(6), event(6), event(9)], 42);
        let got: Vec<(i64, u32, u64)> = d.iter().map(|d| (d.revision, d.events, d.at_us)).collect();
        assert_eq!(got, vec![(5, 1, 42), (6, 2, 42), (9, 1, 42)]);
        assert!(deliveries_of(&[], 1).is_empty());
    }

    #[test]
    fn the_transfer_txn_has_the_json_workloads_shape() {
        let t = transfer_txn(b"k/1", 7, b"k/2", 0, b"v");
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.compare[0], mod_is(b"k/1".to_vec(), 7));
        assert_eq!(
            t.compare[1].target_union,
            Some(TargetUnion::ModRevision(0)),
            "absent = 0"
        );
        assert_eq!(t.compare[1].result, CompareResult::Equal as i32);
        assert_eq!(t.compare[1].target, CompareTarget::Mod as i32);
        assert_eq!(
            t.success,
            vec![
                put_op(b"k/1".to_vec(), b"v".to_vec()),
                put_op(b"k/2".to_vec(), b"v".to_vec())
            ]
        );
        assert_eq!(
            t.failure,
            vec![range_op(b"k/1".to_vec()), range_op(b"k/2".to_vec())]
        );

        // The failure branch's answers refresh the cache.
        let answer = rpc::TxnResponse {
            succeeded: false,
            responses: vec![
                rpc::ResponseOp {
                    response: Some(Response::ResponseRange(rpc::RangeResponse {
                        kvs: vec![mvccpb::KeyValue {
                            mod_revision: 12,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                },
                rpc::ResponseOp {
                    response: Some(Response::ResponseRange(rpc::RangeResponse::default())),
                },
            ],
            ..Default::default()
        };
        assert_eq!(txn_range_mod_revision(&answer, 0), 12);
        assert_eq!(txn_range_mod_revision(&answer, 1), 0, "absent");
        assert_eq!(txn_range_mod_revision(&answer, 2), 0, "no such op");
    }

    #[test]
    fn status_codes_have_stable_names() {
        assert_eq!(
            status_kind(&tonic::Status::unavailable("leader changed")).name(),
            "grpc_unavailable"
        );
        assert_eq!(
            status_kind(&tonic::Status::deadline_exceeded("slow")),
            ErrorKind::Timeout
        );
        assert_eq!(
            status_kind(&tonic::Status::resource_exhausted("x")).name(),
            "grpc_resource_exhausted"
        );
        assert_eq!(code_name(99), "other");
    }
}
