//! Watch over the JSON API: a Server-Sent Events stream
//! ([`Client::watch`]) and the long-poll form ([`Client::watch_poll`]).
//!
//! The stream does not reconnect by itself: what to do after a dropped
//! connection (resume at [`WatchStream::last_revision`] + 1, on the same or
//! another node; or re-list after a compaction) is the caller's decision,
//! and the server's revision ids make resuming exact.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, ACCEPT};
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{api_error, encode_bytes, invalid};
use crate::client::{parse, Answer, Client, ClientError, Kind, Op};
use crate::kv::Event;
use crate::server::json::JsonWatchBatch;

/// What to watch and from where (the parameters of `GET /watch`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// The key, or the first key of the range.
    pub key: Vec<u8>,
    /// etcd's range end: empty = just `key`, `[0]` = every key ≥ `key`.
    pub range_end: Vec<u8>,
    /// First revision to report (inclusive); 0 = from the next change.
    pub start_revision: i64,
    /// Include each event's previous record.
    pub prev_kv: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Ask for progress messages while nothing in the range changes.
    pub progress_notify: bool,
}

impl WatchOptions {
    /// Watch one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchOptions {
            key: key.into(),
            ..WatchOptions::default()
        }
    }

    /// Watch every key starting with `prefix` (every key when empty).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let prefix = prefix.into();
        let (key, range_end) = if prefix.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = crate::kv::prefix_end(&prefix);
            (prefix, end)
        };
        WatchOptions {
            key,
            range_end,
            ..WatchOptions::default()
        }
    }

    /// The query string of `GET /watch` (without `?`); `wait` is the
    /// long-poll wait.
    pub(crate) fn query(&self, wait: Option<Duration>) -> Result<String, ClientError> {
        if self.key.is_empty() && self.range_end.is_empty() {
            return Err(ClientError::BadRequest("the key must not be empty".into()));
        }
        let mut q = Vec::new();
        if self.range_end.is_empty() {
            q.push(format!("key={}", encode_bytes(&self.key)));
        } else {
            if !self.key.is_empty() {
                q.push(format!("start={}", encode_bytes(&self.key)));
            }
            q.push(format!("end={}", encode_bytes(&self.range_end)));
        }
        if self.start_revision != 0 {
            q.push(format!("start_revision={}", self.start_revision));
        }
        for (name, on) in [
            ("prev_kv", self.prev_kv),
            ("no_put", self.no_put),
            ("no_delete", self.no_delete),
            ("progress_notify", self.progress_notify),
        ] {
            if on {
                q.push(format!("{name}=true"));
            }
        }
        if let Some(w) = wait {
            q.push(format!("wait={}ms", w.as_millis()));
        }
        Ok(q.join("&"))
    }
}

/// The events of one revision (an SSE `events` message or a long-poll
/// answer; a long poll whose wait ran out answers no events and the
/// store's revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of the events (the store's when there are none).
    pub revision: i64,
    /// The events, in the order they happened.
    pub events: Vec<Event>,
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The events of one revision.
    Events(WatchBatch),
    /// Nothing in the range changed up to `revision`.
    Progress {
        /// The revision the watcher has seen up to.
        revision: i64,
    },
    /// The server ended the watch; this is the last message.
    Canceled {
        /// Why, as the server says it (e.g. `compacted`).
        reason: String,
        /// Set when the start revision had been compacted away: re-list at
        /// a revision ≥ this, then watch from there.
        compact_revision: Option<i64>,
    },
}

/// One Server-Sent Events message: its `id`, `event` name and `data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The `id` field, if any.
    pub id: Option<String>,
    /// The `event` field (`message` when absent, as the SSE spec says).
    pub event: String,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// An incremental parser of an SSE byte stream (the subset the server
/// writes, plus the spec's CRLF line ends and comment lines).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if the buffer holds one. Messages with
    /// no field at all (e.g. only comments, used as keep-alives) are
    /// skipped.
    pub fn next_message(&mut self) -> Option<SseMessage> {
        loop {
            let (end, sep) = find_blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            let text = String::from_utf8_lossy(&block);
            let mut msg = SseMessage::default();
            let mut data: Vec<&str> = Vec::new();
            let mut any = false;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                any = true;
                match field {
                    "id" => msg.id = Some(value.to_string()),
                    "event" => msg.event = value.to_string(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if !any {
                continue;
            }
            if msg.event.is_empty() {
                msg.event = "message".into();
            }
            msg.data = data.join("\n");
            return Some(msg);
        }
    }
}

/// Where the first blank line ends a message: (length of the message,
/// length of the separator).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.first() == Some(&b'\n') {
                return Some((i, 2));
            }
            if rest.starts_with(b"\r\n") {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

#[derive(Deserialize)]
struct ProgressData {
    revision: i64,
}

#[derive(Deserialize)]
struct CanceledData {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    compact_revision: Option<i64>,
}

/// Converts the server's batch to the data model's events.
fn batch_from_json(b: &JsonWatchBatch) -> Result<WatchBatch, String> {
    let events = b
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| Event::try_from(e).map_err(|e| format!("events[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WatchBatch {
        revision: b.revision,
        events,
    })
}

/// The watch message an SSE message stands for; `Ok(None)` for event
/// names this client does not know (skipped, so that a newer server can
/// add some).
pub fn parse_sse_message(m: &SseMessage) -> Result<Option<WatchMessage>, String> {
    let bad = |e: serde_json::Error| format!("{} message: {e}: {}", m.event, m.data);
    Ok(Some(match m.event.as_str() {
        "events" => {
            let b: JsonWatchBatch = serde_json::from_str(&m.data).map_err(bad)?;
            WatchMessage::Events(batch_from_json(&b)?)
        }
        "progress" => {
            let p: ProgressData = serde_json::from_str(&m.data).map_err(bad)?;
            WatchMessage::Progress {
                revision: p.revision,
            }
        }
        "canceled" => {
            let c: CanceledData = serde_json::from_str(&m.data).map_err(bad)?;
            WatchMessage::Canceled {
                reason: c.reason,
                compact_revision: c.compact_revision.filter(|r| *r != 0),
            }
        }
        _ => return Ok(None),
    }))
}

/// An open watch: the messages of one SSE response, in order.
pub struct WatchStream {
    url: String,
    body: hyper::body::Incoming,
    parser: SseParser,
    last_revision: i64,
    done: bool,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("url", &self.url)
            .field("last_revision", &self.last_revision)
            .field("done", &self.done)
            .finish()
    }
}

impl WatchStream {
    /// The node serving this watch.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The highest revision reported so far (events or progress); resume
    /// with `start_revision = last_revision() + 1`. 0 before any.
    pub fn last_revision(&self) -> i64 {
        self.last_revision
    }

    /// The next message; `None` once the watch is over (after
    /// [`WatchMessage::Canceled`] or an error). A connection that ends
    /// without a `canceled` message is an [`ClientError::Unavailable`]
    /// error: the caller may resume from [`WatchStream::last_revision`].
    pub async fn next(&mut self) -> Option<Result<WatchMessage, ClientError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(m) = self.parser.next_message() {
                match parse_sse_message(&m) {
                    Ok(None) => continue,
                    Ok(Some(msg)) => {
                        match &msg {
                            WatchMessage::Events(b) => {
                                self.last_revision = self.last_revision.max(b.revision)
                            }
                            WatchMessage::Progress { revision } => {
                                self.last_revision = self.last_revision.max(*revision)
                            }
                            WatchMessage::Canceled { .. } => self.done = true,
                        }
                        return Some(Ok(msg));
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(ClientError::InvalidResponse {
                            url: self.url.clone(),
                            message: e,
                        }));
                    }
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ClientError::Unavailable {
                        outcome_unknown: false,
                        message: format!("{}: watch stream failed: {e}", self.url),
                    }));
                }
                None => {
                    self.done = true;
                    return Some(Err(ClientError::Unavailable {
                        outcome_unknown: false,
                        message: format!(
                            "{}: the watch stream ended without a cancel message \
                             (resume with start revision {})",
                            self.url,
                            self.last_revision + 1
                        ),
                    }));
                }
            }
        }
    }
}

impl Client {
    /// Opens a watch stream (`GET /watch` with `Accept: text/event-stream`).
    ///
    /// Any node serves watches from its own applied state, so the first
    /// node that answers is used (the known leader first); nodes that
    /// refuse the connection or answer 503 are skipped. Once open, the
    /// stream is not reconnected. A start revision below the compact
    /// revision either fails here with [`crate::kv::KvError::Compacted`] or
    /// yields [`WatchMessage::Canceled`] with `compact_revision`.
    pub async fn watch(&self, opts: &WatchOptions) -> Result<WatchStream, ClientError> {
        let path = format!("/watch?{}", opts.query(None)?);
        let config = self.config();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(connector);
        let mut order: Vec<String> = Vec::new();
        if let Some(p) = self.preferred() {
            order.push(p);
        }
        for _ in 0..self.nodes().len() {
            let n = self.next_node(&order);
            if !order.contains(&n) {
                order.push(n);
            }
        }
        let mut last_error = String::from("no node to ask");
        for node in order {
            let url = format!("{node}{path}");
            let uri: Uri = url
                .parse()
                .map_err(|e| ClientError::Config(format!("{url}: {e}")))?;
            let mut req = hyper::Request::new(Empty::<Bytes>::new());
            *req.method_mut() = Method::GET;
            *req.uri_mut() = uri;
            req.headers_mut()
                .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
            let resp = match tokio::time::timeout(config.attempt_timeout, http.request(req)).await {
                Err(_) => {
                    last_error = format!("{node}: timed out");
                    continue;
                }
                Ok(Err(e)) => {
                    last_error = format!("{node}: {e}");
                    continue;
                }
                Ok(Ok(r)) => r,
            };
            let (parts, body) = resp.into_parts();
            if parts.status == StatusCode::OK {
                return Ok(WatchStream {
                    url: node,
                    body,
                    parser: SseParser::default(),
                    last_revision: 0,
                    done: false,
                });
            }
            let body = match tokio::time::timeout(config.attempt_timeout, body.collect()).await {
                Ok(Ok(b)) => b.to_bytes(),
                _ => Bytes::new(),
            };
            let answer = Answer {
                url: node.clone(),
                status: parts.status,
                retry_after: None,
                body,
            };
            if parts.status == StatusCode::SERVICE_UNAVAILABLE {
                last_error = format!("{node}: {}", api_error(&answer));
                continue;
            }
            return Err(api_error(&answer));
        }
        Err(ClientError::Unavailable {
            outcome_unknown: false,
            message: format!("no node opened the watch; last error: {last_error}"),
        })
    }

    /// One long poll of `GET /watch` (no `Accept: text/event-stream`): the
    /// first batch of events at or after `opts.start_revision`, or an empty
    /// batch when `wait` (at most 60 s) ran out. Continue with
    /// `start_revision = revision + 1`.
    pub async fn watch_poll(
        &self,
        opts: &WatchOptions,
        wait: Duration,
    ) -> Result<WatchBatch, ClientError> {
        let op = Op {
            method: Method::GET,
            path: format!("/watch?{}", opts.query(Some(wait))?),
            body: None,
            kind: Kind::Read,
            any_node: true,
        };
        let answer = self
            .execute_with_timeout(&op, Some(self.poll_timeout(wait)))
            .await?;
        if answer.status != StatusCode::OK {
            return Err(api_error(&answer));
        }
        let b: JsonWatchBatch = parse(&answer)?;
        batch_from_json(&b).map_err(|e| invalid(&answer, e))
    }
}
