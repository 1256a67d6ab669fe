//! Helpers for process tests of the etcd v3 JSON API (`docs/api.md`):
//! records and events as plain structs, paged range reads pinned to one
//! revision, an SSE watch client, writes retried across nodes, and the
//! oracle that derives each revision's change set from range reads.
//!
//! Everything goes through HTTP only. Waiting is bounded: every read of a
//! stream takes a timeout, every retry loop a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::encode_key;

/// One key's record as the API shows it (the fields the tests compare).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    /// The key (the tests only use UTF-8 keys).
    pub key: String,
    /// The value (UTF-8 in these tests).
    pub value: String,
    /// Revision that created the key's current life.
    pub create_revision: i64,
    /// Revision of the key's latest change.
    pub mod_revision: i64,
    /// Puts in the key's current life.
    pub version: i64,
}

impl Rec {
    /// Reads a record object; `Err` names what is missing.
    pub fn from_json(v: &Value) -> Result<Rec, String> {
        let num = |f: &str| {
            v[f].as_i64()
                .ok_or_else(|| format!("record without `{f}`: {v}"))
        };
        let rec = Rec {
            key: v["key"]
                .as_str()
                .ok_or_else(|| format!("record without `key`: {v}"))?
                .to_string(),
            value: v["value"].as_str().unwrap_or_default().to_string(),
            create_revision: num("create_revision")?,
            mod_revision: num("mod_revision")?,
            version: num("version")?,
        };
        if v["index"].as_i64() != Some(rec.mod_revision) {
            return Err(format!("record whose `index` is not its mod_revision: {v}"));
        }
        Ok(rec)
    }
}

/// Put or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A put: the record is the key's new record.
    Put,
    /// A delete: only key and mod_revision (the deleting revision) are set.
    Delete,
}

/// One event, as a watch reports it or as the range oracle derives it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ev {
    /// Put or delete.
    pub kind: Kind,
    /// The record (see [`Kind`]).
    pub kv: Rec,
}

impl Ev {
    /// Reads an event object of a watch message.
    pub fn from_json(v: &Value) -> Result<Ev, String> {
        let kind = match v["type"].as_str() {
            Some("put") => Kind::Put,
            Some("delete") => Kind::Delete,
            _ => return Err(format!("event without a valid `type`: {v}")),
        };
        Ok(Ev {
            kind,
            kv: Rec::from_json(&v["kv"])?,
        })
    }
}

/// An answer that was not the expected success: status and body.
#[derive(Clone, Debug)]
pub struct Refused {
    /// HTTP status (0 when the request did not get an answer).
    pub status: u16,
    /// The body (or the transport error as a string).
    pub body: Value,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// Sends a request; `Ok((status, body))`, or `Err` for a transport error.
pub async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// A client for long-lived streams: no overall timeout (the SSE body never
/// ends by itself), only a connect timeout; reads are bounded by
/// [`Sse::next`]'s timeout.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("build a reqwest client")
}

/// The header's revision of an answer.
pub fn header_revision(v: &Value) -> Result<i64, String> {
    v["header"]["revision"]
        .as_i64()
        .ok_or_else(|| format!("answer without header.revision: {v}"))
}

/// `GET base/kv?<selector>[&revision=R][&consistency=stale]`, every page,
/// pinned to the revision of the first page. `selector` is a ready query
/// fragment such as `prefix=w/`. Returns the read revision and the records
/// by key; `Err` carries a refusal (for instance 410 compacted).
pub async fn range_all(
    client: &reqwest::Client,
    base: &str,
    selector: &str,
    revision: i64,
    stale: bool,
) -> Result<(i64, BTreeMap<String, Rec>), Refused> {
    let mut out = BTreeMap::new();
    let mut rev = revision;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/kv?{selector}&limit=1000");
        if rev != 0 {
            url.push_str(&format!("&revision={rev}"));
        }
        if stale {
            url.push_str("&consistency=stale");
        }
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", encode_key(a)));
        }
        let (status, body) = send(client.get(url)).await.map_err(|e| Refused {
            status: 0,
            body: Value::String(e),
        })?;
        if status != 200 {
            return Err(Refused { status, body });
        }
        let header_rev = header_revision(&body).map_err(|e| Refused {
            status,
            body: Value::String(e),
        })?;
        if rev == 0 {
            rev = header_rev;
        }
        let items = body["items"].as_array().cloned().unwrap_or_default();
        for it in &items {
            let r = Rec::from_json(it).map_err(|e| Refused {
                status,
                body: Value::String(e),
            })?;
            after = Some(r.key.clone());
            out.insert(r.key.clone(), r);
        }
        if body["more"] != Value::Bool(true) || items.is_empty() {
            return Ok((rev, out));
        }
    }
}

/// The change set that turns `before` into `after` at revision `rev`:
/// a put for every key whose record has `mod_revision == rev`, a delete
/// for every key that disappeared. Sorted, for comparing with a watch's
/// events of one revision (sorted too).
pub fn derive_changes(
    before: &BTreeMap<String, Rec>,
    after: &BTreeMap<String, Rec>,
    rev: i64,
) -> Vec<Ev> {
    let mut out = Vec::new();
    for r in after.values() {
        if r.mod_revision == rev {
            out.push(Ev {
                kind: Kind::Put,
                kv: r.clone(),
            });
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            out.push(Ev {
                kind: Kind::Delete,
                kv: Rec {
                    key: k.clone(),
                    value: String::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
            });
        }
    }
    out.sort();
    out
}

/// The range `selector` at every revision in `from - 1 ..= to`, read from
/// `base` (the state before revision 1 is empty). The reads must not be
/// compacted away.
pub async fn states_by_ranges(
    client: &reqwest::Client,
    base: &str,
    selector: &str,
    from: i64,
    to: i64,
    stale: bool,
) -> Result<BTreeMap<i64, BTreeMap<String, Rec>>, String> {
    let mut out = BTreeMap::new();
    for rev in from - 1..=to {
        let state = if rev < 1 {
            BTreeMap::new()
        } else {
            range_all(client, base, selector, rev, stale)
                .await
                .map_err(|e| format!("range at {rev}: {e}"))?
                .1
        };
        out.insert(rev, state);
    }
    Ok(out)
}

/// The oracle: for every revision in `from..=to`, the sorted change set in
/// the range, derived from consecutive `states` (see [`states_by_ranges`];
/// revisions with no change in the range are left out).
pub fn history_from_states(
    states: &BTreeMap<i64, BTreeMap<String, Rec>>,
) -> BTreeMap<i64, Vec<Ev>> {
    let mut out = BTreeMap::new();
    let mut it = states.iter();
    let Some((_, mut prev)) = it.next() else {
        return out;
    };
    for (rev, cur) in it {
        let changes = derive_changes(prev, cur, *rev);
        if !changes.is_empty() {
            out.insert(*rev, changes);
        }
        prev = cur;
    }
    out
}

/// [`history_from_states`] of [`states_by_ranges`].
pub async fn history_by_ranges(
    client: &reqwest::Client,
    base: &str,
    selector: &str,
    from: i64,
    to: i64,
    stale: bool,
) -> Result<BTreeMap<i64, Vec<Ev>>, String> {
    let states = states_by_ranges(client, base, selector, from, to, stale).await?;
    Ok(history_from_states(&states))
}

/// Checks the `prev_kv` of every event of a message of revision `rev`
/// against the state before it: the key's record there, or no `prev_kv`
/// when the key did not exist.
pub fn check_prev_kv(
    rev: i64,
    events: &[Value],
    before: &BTreeMap<String, Rec>,
) -> Result<(), String> {
    for e in events {
        let key = e["kv"]["key"].as_str().unwrap_or_default();
        let got = if e["prev_kv"].is_null() {
            None
        } else {
            Some(Rec::from_json(&e["prev_kv"])?)
        };
        if got.as_ref() != before.get(key) {
            return Err(format!(
                "revision {rev}: prev_kv of {key} is {got:?}, the range at {} says {:?}",
                rev - 1,
                before.get(key)
            ));
        }
    }
    Ok(())
}

/// One SSE message of `GET /watch`.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchMsg {
    /// The events of one revision (raw JSON objects, in the server's order).
    Events {
        /// The `id` and `revision`.
        revision: i64,
        /// The events.
        events: Vec<Value>,
    },
    /// Nothing changed in the range up to `revision`.
    Progress {
        /// The revision.
        revision: i64,
    },
    /// The watch ended; the data (`reason`, maybe `compact_revision`).
    Canceled(Value),
}

/// What [`Sse::next`] got.
#[derive(Debug)]
pub enum Next {
    /// A message.
    Msg(WatchMsg),
    /// The stream ended (connection closed cleanly).
    Ended,
    /// Nothing within the timeout (the stream is still open).
    Idle,
    /// The connection failed or a message did not parse.
    Failed(String),
}

/// An open SSE watch.
pub struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    /// `GET base/watch?<query>` with `Accept: text/event-stream`. `Ok(Err)`
    /// is an answer other than a 200 stream (a refusal, e.g. 410 compacted).
    pub async fn open(
        client: &reqwest::Client,
        base: &str,
        query: &str,
    ) -> Result<Result<Sse, Refused>, String> {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client
                .get(format!("{base}/watch?{query}"))
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .map_err(|_| "watch request: no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        if status != 200 {
            let text = r.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok(Err(Refused { status, body }));
        }
        Ok(Ok(Sse {
            resp: r,
            buf: Vec::new(),
        }))
    }

    /// The next message, waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(block) = self.take_block() {
                match parse_block(&block) {
                    Ok(Some(m)) => return Next::Msg(m),
                    Ok(None) => continue, // a comment (keep-alive)
                    Err(e) => return Next::Failed(e),
                }
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Next::Idle,
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return Next::Ended,
                Ok(Err(e)) => return Next::Failed(e.to_string()),
            }
        }
    }

    /// Removes one complete message (up to a blank line) from the buffer.
    fn take_block(&mut self) -> Option<String> {
        // Normalise CRLF so one separator search suffices.
        if self.buf.contains(&b'\r') {
            let s = String::from_utf8_lossy(&self.buf).replace("\r\n", "\n");
            self.buf = s.into_bytes();
        }
        let pos = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
        Some(String::from_utf8_lossy(&block[..pos]).into_owned())
    }
}

fn parse_block(block: &str) -> Result<Option<WatchMsg>, String> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            _ => {}
        }
    }
    if event.is_none() && data.is_empty() {
        return Ok(None);
    }
    let data: Value = serde_json::from_str(&data.join("\n"))
        .map_err(|e| format!("SSE data is not JSON ({e}): {block:?}"))?;
    let id_rev = id.as_deref().map(|s| s.parse::<i64>());
    match event.as_deref() {
        Some("events") => {
            let revision = data["revision"]
                .as_i64()
                .ok_or_else(|| format!("events without revision: {block:?}"))?;
            if id_rev != Some(Ok(revision)) {
                return Err(format!("events whose id is not its revision: {block:?}"));
            }
            let events = data["events"]
                .as_array()
                .cloned()
                .ok_or_else(|| format!("events without events: {block:?}"))?;
            Ok(Some(WatchMsg::Events { revision, events }))
        }
        Some("progress") => Ok(Some(WatchMsg::Progress {
            revision: data["revision"]
                .as_i64()
                .ok_or_else(|| format!("progress without revision: {block:?}"))?,
        })),
        Some("canceled") => Ok(Some(WatchMsg::Canceled(data))),
        other => Err(format!("unknown SSE event {other:?}: {block:?}")),
    }
}

/// The events of one watch message as [`Ev`]s, sorted (for comparing with
/// [`derive_changes`]); every event must carry the message's revision.
pub fn sorted_events(revision: i64, events: &[Value]) -> Result<Vec<Ev>, String> {
    let mut out = events
        .iter()
        .map(Ev::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    for e in &out {
        if e.kv.mod_revision != revision {
            return Err(format!(
                "event of revision {} in the message of revision {revision}: {e:?}",
                e.kv.mod_revision
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the messages of `sse` until one has `revision >= until` (events or
/// progress), or the watch ends; returns what it read. Panics if that does
/// not happen within `within`.
pub async fn read_until(sse: &mut Sse, until: i64, within: Duration) -> Vec<WatchMsg> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "watch did not reach revision {until} within {within:?}; got {} messages, last {:?}",
            out.len(),
            out.last()
        );
        match sse.next(left).await {
            Next::Msg(m) => {
                let done = match &m {
                    WatchMsg::Events { revision, .. } | WatchMsg::Progress { revision } => {
                        *revision >= until
                    }
                    WatchMsg::Canceled(_) => true,
                };
                out.push(m);
                if done {
                    return out;
                }
            }
            Next::Idle => {}
            Next::Ended => return out,
            Next::Failed(e) => panic!("watch stream failed: {e}"),
        }
    }
}

/// True for answers whose outcome may be retried on another node: no
/// answer at all, or 503 (no leader, or outcome unknown).
pub fn retryable(r: &Result<(u16, Value), String>) -> bool {
    match r {
        Err(_) => true,
        Ok((s, _)) => *s == 503 || *s == 502 || *s == 504,
    }
}

/// Sends `make(base)` to the nodes in `bases` in turn, starting at
/// `start`, until an answer is not [`retryable`]; panics after `within`.
/// Returns the node index that answered and its answer.
pub async fn send_retry<F>(
    bases: &[String],
    start: usize,
    within: Duration,
    what: &str,
    mut make: F,
) -> (usize, u16, Value)
where
    F: FnMut(&str) -> reqwest::RequestBuilder,
{
    let deadline = Instant::now() + within;
    let mut i = start;
    loop {
        let n = i % bases.len();
        let r = send(make(&bases[n])).await;
        if !retryable(&r) {
            let (s, v) = r.expect("not retryable means answered");
            return (n, s, v);
        }
        let last = format!("{r:?}");
        i += 1;
        assert!(
            Instant::now() < deadline,
            "{what}: no node answered within {within:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST base/compact {"revision": rev, "physical": true}`.
pub async fn compact(
    client: &reqwest::Client,
    base: &str,
    rev: i64,
) -> Result<(u16, Value), String> {
    send(
        client
            .post(format!("{base}/compact"))
            .json(&json!({"revision": rev, "physical": true})),
    )
    .await
}

/// Asserts that `r` is the documented compacted refusal (410, code
/// `compacted`, the message etcd gives, `compact_revision == at`).
pub fn assert_compacted(status: u16, body: &Value, at: i64, what: &str) {
    assert_eq!(status, 410, "{what}: {body}");
    assert_eq!(body["code"], "compacted", "{what}: {body}");
    assert_eq!(body["compact_revision"], at, "{what}: {body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("required revision has been compacted"),
        "{what}: {body}"
    );
}

/// Asserts that a watch starting below the compact revision `at` is
/// refused: either an HTTP 410 compacted answer, or a stream whose first
/// message is `canceled` with `compact_revision == at`.
pub async fn assert_watch_compacted(client: &reqwest::Client, base: &str, query: &str, at: i64) {
    match Sse::open(client, base, query).await {
        Err(e) => panic!("watch {query} on {base}: {e}"),
        Ok(Err(r)) => {
            assert_eq!(r.status, 410, "watch {query}: {r}");
            assert_eq!(r.body["compact_revision"], at, "watch {query}: {r}");
        }
        Ok(Ok(mut sse)) => match sse.next(Duration::from_secs(10)).await {
            Next::Msg(WatchMsg::Canceled(d)) => {
                assert_eq!(d["compact_revision"], at, "watch {query}: {d}");
            }
            other => panic!(
                "watch {query} on {base} below the compact revision {at}: expected a cancel, got {other:?}"
            ),
        },
    }
}
