//! An async HTTP client for RaftKV's client API.
//!
//! * **Leader discovery**: with [`Routing::Leader`] (the default) the client
//!   asks any node for `GET /cluster/leader` and sends requests straight to
//!   the leader, saving the follower's forwarding hop. If the leader's URL is
//!   not reachable from here (e.g. a container name), it keeps using the node
//!   that answered, which forwards.
//! * **Failover**: a node that is down, or answers 503, is skipped and the
//!   request is retried on another node, with backoff once every node has
//!   failed, until the total deadline ([`ClientConfig::total_timeout`]): a
//!   command issued while the whole cluster restarts waits for it.
//! * **Keys byte for byte**: a key is one percent-encoded path segment, sent
//!   through [`crate::http_client`], which never rewrites a path, so `.`,
//!   `..`, `a/../b` or `%41` reach the node as the keys they are.
//! * **Safety of retries**: reads and plain puts are retried after an
//!   ambiguous failure (a timeout, a dropped connection, `"outcome":"unknown"`),
//!   because repeating them cannot change the result. Deletes and
//!   compare-and-swap writes are not: their error says
//!   [`ClientError::Unavailable`] with `outcome_unknown: true`.
//!
//! [`Client`] is `Clone` and cheap to clone (one `Arc`); clones share the
//! connection pool and the leader cache, so one client can drive many
//! concurrent requests (as `raftkv bench` does).
//!
//! ```no_run
//! use raftkv::client::{parse_nodes, Client, ClientConfig, Consistency};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = parse_nodes("127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003")?;
//! let client = Client::new(ClientConfig::with_nodes(nodes))?;
//! let written = client.put("greeting", "hello").await?;
//! let item = client.get("greeting", Consistency::Linearizable).await?;
//! assert_eq!((item.value.as_str(), item.index), ("hello", written.index));
//! // Many tasks can share the client: clones share connections and the
//! // leader cache.
//! let tasks: Vec<_> = (0..16)
//!     .map(|i| {
//!         let c = client.clone();
//!         tokio::spawn(async move { c.put(&format!("k{i}"), "v").await })
//!     })
//!     .collect();
//! for t in tasks {
//!     t.await??;
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderMap, RETRY_AFTER};
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;

use crate::http_client::{HttpClient, HttpClientConfig, HttpError};

pub mod error;
pub mod types;

pub use error::ClientError;
use types::ErrorBody;
pub use types::{
    Consistency, Health, KvItem, LeaderInfo, ListPage, NodeStatus, Routing, WriteResult,
};

/// The nodes a client talks to when none are configured.
pub const DEFAULT_NODES: &str = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003";

/// Page size used by [`Client::list_all`].
pub const LIST_PAGE_SIZE: usize = 1000;

/// Characters escaped in a key path segment or query value: everything but
/// the URL "unreserved" set, so `/`, `?`, `%`, `+`, `&` and spaces survive.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How a [`Client`] behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URLs of the nodes (`http://host:port`), see [`parse_nodes`].
    pub nodes: Vec<String>,
    /// Where requests go.
    pub routing: Routing,
    /// Timeout of one HTTP attempt. Longer than the server's request timeout
    /// (5 s by default) so that a slow commit is answered by the server's
    /// 503 rather than cut off here.
    pub attempt_timeout: Duration,
    /// TCP connect timeout (a partitioned host hangs instead of refusing).
    pub connect_timeout: Duration,
    /// Deadline for one call, all retries included.
    pub total_timeout: Duration,
    /// Attempts per call, at least 1 (1 = no retries). The default has no
    /// practical limit: [`ClientConfig::total_timeout`] is the bound.
    pub max_attempts: u32,
    /// Idle kept-alive connections per node.
    pub max_idle_per_node: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            nodes: parse_nodes(DEFAULT_NODES).expect("the default node list parses"),
            routing: Routing::Leader,
            attempt_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(15),
            max_attempts: u32::MAX,
            max_idle_per_node: 256,
        }
    }
}

impl ClientConfig {
    /// The default configuration for the given nodes.
    pub fn with_nodes(nodes: Vec<String>) -> Self {
        ClientConfig {
            nodes,
            ..ClientConfig::default()
        }
    }
}

/// Parses a comma-separated node list. Each entry is `http://host:port` or
/// just `host:port`; a trailing `/` is dropped. Duplicates are removed.
pub fn parse_nodes(s: &str) -> Result<Vec<String>, String> {
    let mut nodes: Vec<String> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let url = normalize_url(item)?;
        if !nodes.contains(&url) {
            nodes.push(url);
        }
    }
    if nodes.is_empty() {
        return Err("the node list is empty".into());
    }
    Ok(nodes)
}

/// Turns `host:port` or `http://host:port/` into `http://host:port`.
pub fn normalize_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.starts_with("https://") {
        return Err(format!("{s}: RaftKV nodes speak plain http"));
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{s:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{s}: only http:// URLs are supported"));
    }
    let host = url.host_str().ok_or_else(|| format!("{s:?}: no host"))?;
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("{s:?}: give the node's base URL, without a path"));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(format!("http://{host}:{port}"))
}

/// Percent-encodes a query value (or a prefix) for use in a URL.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-encodes a key as one path segment (`/` included). The keys `.`
/// and `..` become `%2E` and `%2E%2E`: a bare dot segment is what URL
/// normalisers (and `curl` without `--path-as-is`) fold away first.
pub fn encode_key(key: &str) -> String {
    match key {
        "." => "%2E".to_string(),
        ".." => "%2E%2E".to_string(),
        _ => encode_component(key),
    }
}

/// What a request does, which decides when it may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Changes nothing: always retried.
    Read,
    /// A plain put: sending it again after an unknown outcome is harmless
    /// (the key ends up with the same value either way).
    IdempotentWrite,
    /// A delete or CAS write: retried only when the request surely did not
    /// reach a node that could apply it (connection refused, or a 503 that
    /// is not "outcome unknown"), since a second attempt could report a
    /// failure for a write that in fact succeeded.
    UnsafeWrite,
}

/// One logical request, possibly sent several times.
struct Op {
    method: Method,
    /// Path and query, starting with `/`.
    path: String,
    body: Option<Bytes>,
    kind: Kind,
    /// Send to any node (round robin) even in leader routing: for requests
    /// that every node answers itself (`/cluster/leader`).
    any_node: bool,
}

/// A node's answer: status, the `Retry-After` hint and the body.
struct Answer {
    url: String,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

struct Cache {
    /// The node requests go to in leader routing: the leader, or a node that
    /// forwards to it when the leader's own URL is unreachable from here.
    preferred: Option<String>,
    /// When discovery last ran, to avoid a discovery storm while no leader
    /// is known.
    last_discovery: Option<Instant>,
}

struct Inner {
    http: HttpClient,
    config: ClientConfig,
    cache: Mutex<Cache>,
    /// Serialises discovery: concurrent callers wait for one round instead of
    /// all querying every node.
    discovery: tokio::sync::Mutex<()>,
    next: AtomicUsize,
}

/// A RaftKV client: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.config.nodes)
            .field("routing", &self.inner.config.routing)
            .finish()
    }
}

/// Minimum time between two leader discoveries.
const REDISCOVER_AFTER: Duration = Duration::from_millis(200);
/// Backoff after a full round of failed nodes, doubled per round up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_millis(500);
/// Time kept for a last round of attempts when a backoff would end at the
/// deadline.
const LAST_ROUND: Duration = Duration::from_millis(20);
/// A `Retry-After` from a node is honoured up to this long.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(1);

impl Client {
    /// Builds a client. Fails only on an unusable configuration.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.nodes.is_empty() {
            return Err(ClientError::Config("no nodes given".into()));
        }
        let mut nodes = Vec::with_capacity(config.nodes.len());
        for n in &config.nodes {
            nodes.push(normalize_url(n).map_err(ClientError::Config)?);
        }
        // A KV client talks to its nodes directly: no proxy variable
        // reroutes it.
        let http = HttpClient::new(HttpClientConfig {
            connect_timeout: config.connect_timeout,
            pool_idle_timeout: Duration::from_secs(60),
            max_idle_per_host: config.max_idle_per_node,
        });
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config: ClientConfig {
                    nodes,
                    max_attempts: config.max_attempts.max(1),
                    ..config
                },
                cache: Mutex::new(Cache {
                    preferred: None,
                    last_discovery: None,
                }),
                discovery: tokio::sync::Mutex::new(()),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// The nodes this client talks to (normalised base URLs).
    pub fn nodes(&self) -> &[String] {
        &self.inner.config.nodes
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `PUT /kv/{key}`: sets `key` to `value`.
    pub async fn put(&self, key: &str, value: &str) -> Result<WriteResult, ClientError> {
        self.put_cas(key, value, None).await
    }

    /// `PUT /kv/{key}?cas=M`: sets `key` only if its mod index is `cas`
    /// (0 = only if absent); `None` = unconditionally.
    pub async fn put_cas(
        &self,
        key: &str,
        value: &str,
        cas: Option<u64>,
    ) -> Result<WriteResult, ClientError> {
        check_key(key)?;
        if value.len() > crate::kv::MAX_VALUE_BYTES {
            return Err(ClientError::BadRequest(format!(
                "value is {} bytes; the limit is {} bytes",
                value.len(),
                crate::kv::MAX_VALUE_BYTES
            )));
        }
        let body = serde_json::to_vec(&serde_json::json!({ "value": value }))
            .expect("serialising a string map cannot fail");
        let op = Op {
            method: Method::PUT,
            path: with_cas(format!("/kv/{}", encode_key(key)), cas),
            body: Some(Bytes::from(body)),
            kind: if cas.is_none() {
                Kind::IdempotentWrite
            } else {
                Kind::UnsafeWrite
            },
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        write_answer(key, cas, answer)
    }

    /// `DELETE /kv/{key}` (with `?cas=M` when `cas` is given).
    pub async fn delete(&self, key: &str, cas: Option<u64>) -> Result<WriteResult, ClientError> {
        check_key(key)?;
        let op = Op {
            method: Method::DELETE,
            path: with_cas(format!("/kv/{}", encode_key(key)), cas),
            body: None,
            kind: Kind::UnsafeWrite,
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        write_answer(key, cas, answer)
    }

    /// `GET /kv/{key}`, linearizable or stale.
    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<KvItem, ClientError> {
        check_key(key)?;
        let mut path = format!("/kv/{}", encode_key(key));
        if consistency == Consistency::Stale {
            path.push_str("?consistency=stale");
        }
        let op = Op {
            method: Method::GET,
            path,
            body: None,
            kind: Kind::Read,
            any_node: consistency == Consistency::Stale,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            StatusCode::NOT_FOUND => Err(ClientError::NotFound { key: key.into() }),
            _ => Err(unexpected(&answer)),
        }
    }

    /// `GET /kv?prefix=P&limit=L&after=K`: one page of keys starting with
    /// `prefix`, after the key `after`.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<ListPage, ClientError> {
        let mut path = format!("/kv?prefix={}&limit={limit}", encode_component(prefix));
        if let Some(after) = after {
            path.push_str("&after=");
            path.push_str(&encode_component(after));
        }
        if consistency == Consistency::Stale {
            path.push_str("&consistency=stale");
        }
        let op = Op {
            method: Method::GET,
            path,
            body: None,
            kind: Kind::Read,
            any_node: consistency == Consistency::Stale,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            _ => Err(unexpected(&answer)),
        }
    }

    /// Every key starting with `prefix`, sorted, fetched page by page until
    /// the node says there is no more.
    ///
    /// Each page is read on its own, so a listing that spans pages is not
    /// one snapshot: keys written meanwhile may or may not appear.
    pub async fn list_all(
        &self,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<Vec<KvItem>, ClientError> {
        let mut items: Vec<KvItem> = Vec::new();
        loop {
            let after = items.last().map(|i| i.key.clone());
            let page = self
                .list_page(prefix, after.as_deref(), LIST_PAGE_SIZE, consistency)
                .await?;
            let progressed = match (&after, page.items.last()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(last)) => last.key > *a,
            };
            items.extend(page.items);
            if !page.more {
                return Ok(items);
            }
            if !progressed {
                // A node that says "more" but returns nothing new would make
                // this loop forever.
                return Err(ClientError::InvalidResponse {
                    url: self.nodes().join(","),
                    message: "listing says more=true but the page did not advance".into(),
                });
            }
        }
    }

    /// A read of the etcd-model JSON API (`docs/api.md`): `GET path`, e.g.
    /// `/kv?prefix=a&revision=5`, `/kv/{key}?revision=5` or a long-poll
    /// `/watch?…`; retried like every read. `any_node` serves it from the
    /// first node that answers (stale reads, watches) instead of through the
    /// leader. Returns the JSON answer of a 200; a 404 is
    /// [`ClientError::NotFound`] for `key`.
    pub async fn read_json(
        &self,
        path: String,
        any_node: bool,
        key: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let op = Op {
            method: Method::GET,
            path,
            body: None,
            kind: Kind::Read,
            any_node,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            StatusCode::NOT_FOUND if !key.is_empty() => {
                Err(ClientError::NotFound { key: key.into() })
            }
            _ => Err(unexpected(&answer)),
        }
    }

    /// A write of the etcd-model JSON API: `DELETE /kv?…`, `POST /txn`,
    /// `POST /compact`. Not sent again once its outcome is unknown (a
    /// transaction's second attempt could see its own first one).
    pub async fn write_json(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ClientError> {
        let op = Op {
            method,
            path,
            body: body.map(Bytes::from),
            kind: Kind::UnsafeWrite,
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            _ => Err(unexpected(&answer)),
        }
    }

    /// `GET /cluster/leader` on the nodes in turn, until one knows a leader
    /// (retrying through an election, within the deadline).
    pub async fn leader(&self) -> Result<LeaderInfo, ClientError> {
        let op = Op {
            method: Method::GET,
            path: "/cluster/leader".into(),
            body: None,
            kind: Kind::Read,
            any_node: true,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            _ => Err(unexpected(&answer)),
        }
    }

    /// `GET /cluster/status` of one node, raw JSON, without retries.
    pub async fn status_of(&self, node: &str) -> Result<serde_json::Value, ClientError> {
        let answer = self.send_once(node, "/cluster/status").await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            _ => Err(unexpected(&answer)),
        }
    }

    /// The status of every configured node, in order, queried concurrently.
    pub async fn statuses(&self) -> Vec<(String, Result<serde_json::Value, ClientError>)> {
        let futures = self.nodes().iter().map(|n| async move {
            let result = self.status_of(n).await;
            (n.clone(), result)
        });
        futures::future::join_all(futures).await
    }

    /// `GET /health` of one node, without retries.
    pub async fn health_of(&self, node: &str) -> Result<Health, ClientError> {
        let answer = self.send_once(node, "/health").await?;
        match answer.status {
            StatusCode::OK => parse(&answer),
            _ => Err(unexpected(&answer)),
        }
    }

    /// One GET to one node, bounded by the attempt timeout.
    async fn send_once(&self, node: &str, path: &str) -> Result<Answer, ClientError> {
        let node = normalize_url(node).map_err(ClientError::Config)?;
        let op = Op {
            method: Method::GET,
            path: path.into(),
            body: None,
            kind: Kind::Read,
            any_node: true,
        };
        let timeout = self.inner.config.attempt_timeout;
        self.send(&node, &op, timeout)
            .await
            .map_err(|e| ClientError::Unavailable {
                outcome_unknown: false,
                message: format!("{node}: {e}"),
            })
    }

    async fn send(&self, node: &str, op: &Op, timeout: Duration) -> Result<Answer, HttpError> {
        let resp = self
            .inner
            .http
            .request(
                op.method.clone(),
                &format!("{node}{}", op.path),
                HeaderMap::new(),
                op.body.clone(),
                timeout,
            )
            .await?;
        let retry_after = resp
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(Answer {
            url: node.to_string(),
            status: resp.status,
            retry_after,
            body: resp.body,
        })
    }

    /// Sends `op` until a node gives a definitive answer (anything but a
    /// connection failure or a 503), or the deadline passes.
    ///
    /// A cluster that is entirely down (every connection refused, e.g.
    /// while it restarts) is retried too, with backoff, until the deadline:
    /// the deadline is the caller's statement of how long it will wait.
    async fn execute(&self, op: &Op) -> Result<Answer, ClientError> {
        let config = &self.inner.config;
        let started = Instant::now();
        let deadline = started + config.total_timeout;
        let n = config.nodes.len();
        // Nodes that failed since the last backoff; skipped while others remain.
        let mut failed: Vec<String> = Vec::new();
        let mut round = 0u32;
        let mut maybe_applied = false;
        // What went wrong last, from a request or from leader discovery.
        let mut last_error: Option<String> = None;
        let mut hint: Option<Duration> = None;
        // Requests actually sent (discovery probes are not counted).
        let mut attempts: u32 = 0;
        while attempts < config.max_attempts {
            let (target, discovery_error) = self.pick(op, &failed, deadline).await;
            if let Some(e) = discovery_error {
                last_error = Some(e);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let attempt = attempts;
            let timeout = remaining.min(config.attempt_timeout);
            match self.send(&target, op, timeout).await {
                Ok(answer) if answer.status == StatusCode::SERVICE_UNAVAILABLE => {
                    let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
                    let unknown = body.outcome.as_deref() == Some("unknown");
                    let message = body.error.unwrap_or_else(|| "service unavailable".into());
                    let error = format!("{target}: {message}");
                    if unknown {
                        if op.kind == Kind::UnsafeWrite {
                            return Err(ClientError::Unavailable {
                                outcome_unknown: true,
                                message: error,
                            });
                        }
                        maybe_applied |= op.kind == Kind::IdempotentWrite;
                    }
                    last_error = Some(error);
                    hint = answer.retry_after.map(|d| d.min(RETRY_AFTER_CAP));
                    tracing::debug!(attempt, %target, %message, "503, retrying elsewhere");
                }
                Ok(answer) => return Ok(answer),
                Err(HttpError::InvalidUrl { url, reason }) => {
                    return Err(ClientError::Config(format!("{url}: {reason}")));
                }
                Err(e) => {
                    let error = format!("{target}: {e}");
                    if e.is_connect() {
                        tracing::debug!(attempt, %target, error = %e, "connect failed, retrying elsewhere");
                    } else {
                        // The request may have reached the node.
                        if op.kind == Kind::UnsafeWrite {
                            return Err(ClientError::Unavailable {
                                outcome_unknown: true,
                                message: error,
                            });
                        }
                        maybe_applied |= op.kind == Kind::IdempotentWrite;
                        tracing::debug!(attempt, %target, error = %e, "request failed, retrying");
                    }
                    last_error = Some(error);
                }
            }
            self.forget(&target);
            if !failed.contains(&target) {
                failed.push(target);
            }
            if failed.len() >= n {
                // Every node failed once: wait before the next round.
                let backoff = hint.take().unwrap_or_else(|| {
                    (BACKOFF_START * 2u32.saturating_pow(round)).min(BACKOFF_CAP)
                });
                round = round.saturating_add(1);
                failed.clear();
                // Sleep at most until just before the deadline, so that one
                // more round runs at the end of the caller's time budget.
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining <= LAST_ROUND {
                    break;
                }
                tokio::time::sleep(backoff.min(remaining - LAST_ROUND)).await;
            }
        }
        Err(ClientError::Unavailable {
            outcome_unknown: maybe_applied,
            message: give_up_message(
                attempts,
                started.elapsed(),
                config.total_timeout,
                last_error.as_deref(),
            ),
        })
    }

    /// Chooses the node for the next attempt, and says why leader discovery
    /// failed if it ran and found nothing.
    async fn pick(
        &self,
        op: &Op,
        failed: &[String],
        deadline: Instant,
    ) -> (String, Option<String>) {
        if op.any_node || self.inner.config.routing == Routing::RoundRobin {
            return (self.next_node(failed), None);
        }
        if let Some(p) = self.preferred() {
            if !failed.contains(&p) {
                return (p, None);
            }
        }
        match self.discover(failed, deadline).await {
            Ok(Some(p)) if !failed.contains(&p) => (p, None),
            Ok(_) => (self.next_node(failed), None),
            Err(why) => (self.next_node(failed), Some(why)),
        }
    }

    fn preferred(&self) -> Option<String> {
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .preferred
            .clone()
    }

    /// Round robin over the nodes, skipping those in `failed` if possible.
    fn next_node(&self, failed: &[String]) -> String {
        let nodes = &self.inner.config.nodes;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..nodes.len())
            .map(|i| &nodes[(start + i) % nodes.len()])
            .find(|n| !failed.contains(n))
            .unwrap_or(&nodes[start % nodes.len()])
            .clone()
    }

    /// Forgets `node` as the preferred node after it failed.
    fn forget(&self, node: &str) {
        let mut cache = self.inner.cache.lock().expect("cache lock");
        if cache.preferred.as_deref() == Some(node) {
            cache.preferred = None;
        }
    }

    /// Asks the nodes for the leader and caches where to send requests.
    /// `Ok(None)` when discovery ran very recently and found none; `Err`
    /// says why no node named a leader.
    async fn discover(
        &self,
        failed: &[String],
        deadline: Instant,
    ) -> Result<Option<String>, String> {
        let _guard = self.inner.discovery.lock().await;
        {
            // Another task may have discovered while we waited.
            let cache = self.inner.cache.lock().expect("cache lock");
            if let Some(p) = &cache.preferred {
                return Ok(Some(p.clone()));
            }
            if cache
                .last_discovery
                .is_some_and(|t| t.elapsed() < REDISCOVER_AFTER)
            {
                return Ok(None);
            }
        }
        let found = self.find_leader(failed, deadline).await;
        let mut cache = self.inner.cache.lock().expect("cache lock");
        cache.last_discovery = Some(Instant::now());
        if cache.preferred.is_none() {
            cache.preferred = found.as_ref().ok().cloned();
        }
        found.map(Some)
    }

    /// Where requests should go: the leader, or the node that named it when
    /// the leader's URL cannot be reached from here. `Err` says why no node
    /// named a leader (each probe is bounded by `deadline`).
    async fn find_leader(&self, failed: &[String], deadline: Instant) -> Result<String, String> {
        let probe = self
            .inner
            .config
            .connect_timeout
            .max(Duration::from_millis(500))
            * 2;
        let op = Op {
            method: Method::GET,
            path: "/cluster/leader".into(),
            body: None,
            kind: Kind::Read,
            any_node: true,
        };
        let mut why = String::from("every node has already failed this round");
        for node in self.nodes().iter().filter(|n| !failed.contains(n)) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                why = format!("leader discovery: the timeout ran out before {node} was asked");
                break;
            }
            let answer = match self.send(node, &op, probe.min(remaining)).await {
                Ok(a) => a,
                Err(e) => {
                    why = format!("{node}: {e}");
                    continue;
                }
            };
            if answer.status != StatusCode::OK {
                let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
                why = format!(
                    "{node}: {}",
                    body.error.unwrap_or_else(|| format!(
                        "HTTP {} to GET /cluster/leader",
                        answer.status
                    ))
                );
                continue;
            }
            let Ok(info) = serde_json::from_slice::<LeaderInfo>(&answer.body) else {
                why = format!("{node}: unreadable answer to GET /cluster/leader");
                continue;
            };
            let Ok(url) = normalize_url(&info.leader_url) else {
                return Ok(node.clone());
            };
            if self.nodes().contains(&url) {
                return Ok(url);
            }
            // Not one of ours: use it only if we can reach it (a container
            // name, say, may not resolve here); otherwise let `node` forward.
            let health = Op {
                path: "/health".into(),
                ..op
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            return match self.send(&url, &health, probe.min(remaining)).await {
                Ok(a) if a.status == StatusCode::OK => Ok(url),
                _ => Ok(node.clone()),
            };
        }
        Err(why)
    }
}

/// The message of a call that ran out of time or attempts: how many
/// requests were really sent, in how long, and the last thing that went
/// wrong (a request's failure, or why leader discovery found nothing).
fn give_up_message(
    attempts: u32,
    elapsed: Duration,
    timeout: Duration,
    last_error: Option<&str>,
) -> String {
    let secs = elapsed.as_secs_f64();
    match (attempts, last_error) {
        (0, Some(e)) => format!(
            "no request could be sent within the {} ms timeout ({secs:.1}s); last error: {e}",
            timeout.as_millis()
        ),
        (0, None) => format!(
            "the {} ms timeout ran out ({secs:.1}s) before any node could be tried",
            timeout.as_millis()
        ),
        (n, Some(e)) => format!("gave up after {n} attempt(s) in {secs:.1}s; last error: {e}"),
        // Every attempt ends with an error recorded; kept for completeness.
        (n, None) => format!("gave up after {n} attempt(s) in {secs:.1}s"),
    }
}

fn with_cas(mut path: String, cas: Option<u64>) -> String {
    if let Some(m) = cas {
        path.push_str(&format!("?cas={m}"));
    }
    path
}

/// Rejects keys the contract does not allow before they cost a round trip.
fn check_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() {
        return Err(ClientError::BadRequest("the key must not be empty".into()));
    }
    if key.len() > crate::kv::MAX_KEY_BYTES {
        return Err(ClientError::BadRequest(format!(
            "the key is {} bytes; the limit is {} bytes",
            key.len(),
            crate::kv::MAX_KEY_BYTES
        )));
    }
    Ok(())
}

/// Maps the answer to a write; `cas` is the precondition it was sent with.
fn write_answer(key: &str, cas: Option<u64>, answer: Answer) -> Result<WriteResult, ClientError> {
    match answer.status {
        StatusCode::OK => parse(&answer),
        StatusCode::NOT_FOUND => Err(ClientError::NotFound { key: key.into() }),
        StatusCode::PRECONDITION_FAILED => {
            let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
            Err(ClientError::CasMismatch {
                key: key.into(),
                expected: cas.unwrap_or(0),
                current: body.index.unwrap_or(0),
            })
        }
        _ => Err(unexpected(&answer)),
    }
}

fn parse<T: DeserializeOwned>(answer: &Answer) -> Result<T, ClientError> {
    serde_json::from_slice(&answer.body).map_err(|e| ClientError::InvalidResponse {
        url: answer.url.clone(),
        message: format!("{e} in {}", snippet(&answer.body)),
    })
}

/// Maps a status the caller did not expect to an error.
fn unexpected(answer: &Answer) -> ClientError {
    let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
    let message = body.error.unwrap_or_else(|| snippet(&answer.body));
    match answer.status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => ClientError::BadRequest(message),
        status => ClientError::Http {
            status: status.as_u16(),
            url: answer.url.clone(),
            message,
        },
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests;
