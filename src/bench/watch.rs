//! Watch fan-out: `raftkv bench --watchers W [--idle-watchers M]` holds SSE
//! watches (`GET /watch`, docs/api.md) open while the put workload runs and
//! measures, for every event at every watcher, the time from the put to its
//! delivery, and whether every watcher received every event exactly once.
//!
//! How it is measured:
//! - Before the load, the store's current revision `R0` is read and every
//!   active watcher watches the bench's key prefix from `R0 + 1`, so a
//!   watcher whose registration races the first puts still sees them (from
//!   history) and the expected set is exact.
//! - Each put records its revision (the answer's `index`), when it was sent
//!   and when its answer arrived ([`PutRecord`]); each watcher records the
//!   revision of every message and when the read that completed it
//!   returned ([`Delivery`]). All times are microseconds from one `Instant`
//!   in this process.
//! - After the load, the watchers are given a bounded time to receive up to
//!   the last acknowledged revision, then closed, and the two logs are
//!   matched offline ([`match_deliveries`]): matching after the run means
//!   no race between a put's answer and its event (the event may arrive
//!   first) and no locking on the hot paths.
//!
//! Idle watchers watch single keys under `--idle-watch-prefix` that nobody
//! writes: they cost the server a registration and a connection each, and
//! should receive nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::parse_head;
use super::report::Latency;
use super::sse::{parse_batch, ChunkedDecoder, SseMessage, SseParser};

/// One acknowledged put of the load (revision and times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutRecord {
    /// The revision the put created (its answer's `index`).
    pub revision: i64,
    /// When it was sent, µs since the run's epoch.
    pub sent_us: u64,
    /// When its answer arrived, µs since the run's epoch.
    pub acked_us: u64,
}

/// One `events` message received by a watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message's revision.
    pub revision: i64,
    /// Events in it.
    pub events: u32,
    /// When the read that completed it returned, µs since the run's epoch.
    pub at_us: u64,
}

/// Most deliveries one watcher records (16 bytes each); beyond that they
/// are counted but not matched, so memory stays bounded on long runs.
pub const MAX_DELIVERIES_PER_WATCHER: usize = 4_000_000;

/// How the deliveries of every watcher matched the acknowledged puts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fanout {
    /// Acknowledged puts (each one event at its own revision).
    pub acked_puts: u64,
    /// Watchers whose deliveries were matched.
    pub watchers: u64,
    /// `acked_puts × watchers`: every watcher must get every event once.
    pub expected_events: u64,
    /// Events received in total (including unexpected ones).
    pub received_events: u64,
    /// Expected events that a watcher never received.
    pub missing: u64,
    /// Expected events a watcher received more than once (extra copies).
    pub duplicates: u64,
    /// Messages whose revision was not above the watcher's previous one.
    pub out_of_order: u64,
    /// Events at revisions no acknowledged put created (e.g. a put whose
    /// answer was lost to a timeout); not counted as mismatches.
    pub unexpected_events: u64,
    /// Messages at an acknowledged put's revision holding other than one
    /// event.
    pub wrong_batch_size: u64,
    /// Deliveries not recorded (over [`MAX_DELIVERIES_PER_WATCHER`]).
    pub unrecorded: u64,
    /// Watchers that received every expected event exactly once, in order.
    pub complete_watchers: u64,
    /// Deliveries that came before the put's answer reached the bench
    /// (counted as 0 in `latency_from_ack_ms`).
    pub delivered_before_ack: u64,
    /// Put acknowledged → event delivered, first copy of each expected
    /// event at each watcher.
    pub latency_from_ack_ms: Latency,
    /// Put sent → event delivered, same deliveries.
    pub latency_from_send_ms: Latency,
}

impl Fanout {
    /// Missing + duplicated + out-of-order: what breaks "every watcher gets
    /// every event exactly once".
    pub fn mismatches(&self) -> u64 {
        self.missing + self.duplicates + self.out_of_order + self.wrong_batch_size
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Matches every watcher's deliveries against the acknowledged puts.
/// `unrecorded` is the number of deliveries the watchers counted but did
/// not keep.
pub fn match_deliveries(puts: &[PutRecord], watchers: &[Vec<Delivery>], unrecorded: u64) -> Fanout {
    let by_revision: HashMap<i64, usize> = puts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.revision, i))
        .collect();
    let mut from_ack = histogram();
    let mut from_send = histogram();
    let mut f = Fanout {
        acked_puts: by_revision.len() as u64,
        watchers: watchers.len() as u64,
        expected_events: by_revision.len() as u64 * watchers.len() as u64,
        unrecorded,
        ..Fanout::default()
    };
    let mut seen = vec![0u32; puts.len()];
    for deliveries in watchers {
        seen.iter_mut().for_each(|s| *s = 0);
        let mut previous = i64::MIN;
        let mut broken = false;
        for d in deliveries {
            f.received_events += u64::from(d.events);
            if d.revision <= previous {
                f.out_of_order += 1;
                broken = true;
            }
            previous = previous.max(d.revision);
            let Some(&i) = by_revision.get(&d.revision) else {
                f.unexpected_events += u64::from(d.events);
                continue;
            };
            if d.events != 1 {
                f.wrong_batch_size += 1;
                broken = true;
            }
            seen[i] += 1;
            if seen[i] > 1 {
                continue;
            }
            let p = &puts[i];
            let ack = if d.at_us >= p.acked_us {
                d.at_us - p.acked_us
            } else {
                f.delivered_before_ack += 1;
                0
            };
            from_ack.saturating_record(ack.max(1));
            from_send.saturating_record(d.at_us.saturating_sub(p.sent_us).max(1));
        }
        // Only revisions acknowledged once count (a revision twice in
        // `puts` cannot happen, but would not be double-expected).
        let mut missing = 0;
        for (i, s) in seen.iter().enumerate() {
            if by_revision.get(&puts[i].revision) != Some(&i) {
                continue;
            }
            match s {
                0 => missing += 1,
                n => f.duplicates += u64::from(n - 1),
            }
        }
        f.missing += missing;
        if missing == 0 && !broken && seen.iter().all(|&s| s <= 1) {
            f.complete_watchers += 1;
        }
    }
    f.latency_from_ack_ms = Latency::of(&from_ack);
    f.latency_from_send_ms = Latency::of(&from_send);
    f
}

/// The watch part of a bench report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchReport {
    /// Nodes the watchers were opened on.
    pub endpoints: Vec<String>,
    /// Active watchers asked for (on the bench's key prefix).
    pub active: u32,
    /// Idle watchers asked for (on keys nobody writes).
    pub idle: u32,
    /// Active watchers whose stream was open when the load started.
    pub active_open: u32,
    /// Idle watchers open when the load started.
    pub idle_open: u32,
    /// Seconds to open them all.
    pub open_s: f64,
    /// Why watchers failed to open or broke, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Watchers the server canceled (`canceled` message), by reason.
    pub canceled: BTreeMap<String, u64>,
    /// The active watchers' start revision (`R0 + 1`; 0 = from now).
    pub start_revision: i64,
    /// Messages idle watchers received (progress or events; expected 0).
    pub idle_messages: u64,
    /// Progress messages active watchers received.
    pub progress_messages: u64,
    /// Whether every open active watcher reached the last acknowledged
    /// revision before the drain time ran out.
    pub drained: bool,
    /// Seconds waited after the load for the watchers to catch up.
    pub drain_s: f64,
    /// Delivery latencies and the exactly-once check.
    pub fanout: Fanout,
    /// gRPC Watch streams the watchers were spread over; 0 = SSE, one
    /// HTTP connection per watcher.
    #[serde(default)]
    pub streams: u32,
}

/// Where the watches go and what they watch.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// Base URLs the watchers are spread over (round robin).
    pub endpoints: Vec<String>,
    /// Active watchers.
    pub active: u32,
    /// Idle watchers.
    pub idle: u32,
    /// The written prefix (raw).
    pub prefix: String,
    /// Prefix of the idle watchers' keys (raw).
    pub idle_prefix: String,
    /// Active watchers' start revision (0 = from now).
    pub start_revision: i64,
    /// Per-connection connect and response-head timeout.
    pub open_timeout: Duration,
    /// The run's epoch.
    pub epoch: Instant,
}

/// The path of an SSE watch of `prefix` (or of exactly `key`).
pub fn watch_path(prefix: Option<&str>, key: Option<&str>, start_revision: i64) -> String {
    let mut p = String::from("/watch?");
    if let Some(k) = key {
        p.push_str("key=");
        p.push_str(&crate::client::encode_component(k));
    } else {
        p.push_str("prefix=");
        p.push_str(&crate::client::encode_component(prefix.unwrap_or("")));
    }
    if start_revision > 0 {
        p.push_str(&format!("&start_revision={start_revision}"));
    }
    p
}

/// What one watcher task ends with.
#[derive(Debug, Default)]
struct WatcherResult {
    deliveries: Vec<Delivery>,
    unrecorded: u64,
    messages: u64,
    progress: u64,
    canceled: Option<String>,
    error: Option<String>,
    opened: bool,
}

/// State shared by a watcher task and the coordinator.
struct WatcherShared {
    /// Highest revision received (active watchers).
    last_revision: AtomicI64,
}

/// The open watchers.
pub struct WatchSet {
    spec: WatchSpec,
    stop: tokio::sync::watch::Sender<bool>,
    active: Vec<(Arc<WatcherShared>, tokio::task::JoinHandle<WatcherResult>)>,
    idle: Vec<tokio::task::JoinHandle<WatcherResult>>,
    open_s: f64,
    active_open: u32,
    idle_open: u32,
    open_errors: BTreeMap<String, u64>,
}

/// Connections opened at once (a thousand connects in one burst would
/// overflow the server's accept backlog).
const OPEN_PARALLEL: usize = 64;

impl WatchSet {
    /// Opens every watcher and waits (bounded by the open timeout per
    /// watcher) until each has its response head or has failed.
    pub async fn open(spec: WatchSpec) -> WatchSet {
        let started = Instant::now();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_PARALLEL));
        let n = spec.endpoints.len().max(1);
        let mut opened = Vec::new();
        let mut active = Vec::new();
        for i in 0..spec.active as usize {
            let shared = Arc::new(WatcherShared {
                last_revision: AtomicI64::new(0),
            });
            let (tx, rx) = tokio::sync::oneshot::channel();
            opened.push(rx);
            let path = watch_path(Some(&spec.prefix), None, spec.start_revision);
            let task = watcher(
                spec.endpoints[i % n].clone(),
                path,
                true,
                spec.epoch,
                spec.open_timeout,
                gate.clone(),
                tx,
                stop_rx.clone(),
                Some(shared.clone()),
            );
            active.push((shared, tokio::spawn(task)));
        }
        let mut idle = Vec::new();
        for i in 0..spec.idle as usize {
            let (tx, rx) = tokio::sync::oneshot::channel();
            opened.push(rx);
            let key = format!("{}{i:06}", spec.idle_prefix);
            let path = watch_path(None, Some(&key), 0);
            idle.push(tokio::spawn(watcher(
                spec.endpoints[i % n].clone(),
                path,
                false,
                spec.epoch,
                spec.open_timeout,
                gate.clone(),
                tx,
                stop_rx.clone(),
                None,
            )));
        }
        let mut open_errors = BTreeMap::new();
        let (mut active_open, mut idle_open) = (0, 0);
        for (i, rx) in opened.into_iter().enumerate() {
            // Each watcher reports within its own open timeout; the sender
            // is dropped if the task ends first.
            match rx.await {
                Ok(Ok(())) if i < spec.active as usize => active_open += 1,
                Ok(Ok(())) => idle_open += 1,
                Ok(Err(kind)) => *open_errors.entry(kind).or_default() += 1,
                Err(_) => *open_errors.entry("task_ended".to_string()).or_default() += 1,
            }
        }
        WatchSet {
            spec,
            stop,
            active,
            idle,
            open_s: started.elapsed().as_secs_f64(),
            active_open,
            idle_open,
            open_errors,
        }
    }

    /// Waits until every open active watcher has received `revision` (or
    /// ended), at most `limit`; returns whether they all got there.
    pub async fn drain(&self, revision: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let behind = self.active.iter().any(|(s, h)| {
                !h.is_finished() && s.last_revision.load(Ordering::Relaxed) < revision
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

    /// Closes every watcher and matches the deliveries against `puts`.
    pub async fn finish(self, puts: &[PutRecord], drained: bool, drain_s: f64) -> WatchReport {
        let _ = self.stop.send(true);
        let mut report = WatchReport {
            endpoints: self.spec.endpoints.clone(),
            active: self.spec.active,
            idle: self.spec.idle,
            active_open: self.active_open,
            idle_open: self.idle_open,
            open_s: self.open_s,
            errors: self.open_errors.clone(),
            start_revision: self.spec.start_revision,
            drained,
            drain_s,
            ..WatchReport::default()
        };
        let mut logs = Vec::new();
        let mut unrecorded = 0;
        let join = |h: tokio::task::JoinHandle<WatcherResult>| async move {
            let abort = h.abort_handle();
            match tokio::time::timeout(Duration::from_secs(5), h).await {
                Ok(Ok(r)) => Some(r),
                _ => {
                    abort.abort();
                    None
                }
            }
        };
        for (_, h) in self.active {
            let Some(r) = join(h).await else {
                *report.errors.entry("not_stopped".into()).or_default() += 1;
                continue;
            };
            if !r.opened {
                continue;
            }
            report.progress_messages += r.progress;
            if let Some(reason) = r.canceled {
                *report.canceled.entry(reason).or_default() += 1;
            }
            if let Some(e) = r.error {
                *report.errors.entry(e).or_default() += 1;
            }
            unrecorded += r.unrecorded;
            logs.push(r.deliveries);
        }
        for h in self.idle {
            let Some(r) = join(h).await else {
                *report.errors.entry("not_stopped".into()).or_default() += 1;
                continue;
            };
            if !r.opened {
                continue;
            }
            report.idle_messages += r.messages;
            if let Some(reason) = r.canceled {
                *report.canceled.entry(reason).or_default() += 1;
            }
            if let Some(e) = r.error {
                *report.errors.entry(e).or_default() += 1;
            }
        }
        report.fanout = match_deliveries(puts, &logs, unrecorded);
        report
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// One watcher: opens the stream (reporting on `opened`), then reads until
/// told to stop, the server ends it, or it fails.
#[allow(clippy::too_many_arguments)]
async fn watcher(
    endpoint: String,
    path: String,
    record: bool,
    epoch: Instant,
    open_timeout: Duration,
    gate: Arc<tokio::sync::Semaphore>,
    opened: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    shared: Option<Arc<WatcherShared>>,
) -> WatcherResult {
    let mut result = WatcherResult::default();
    let open = async {
        let _permit = gate.acquire().await.map_err(|_| "closed".to_string())?;
        open_stream(&endpoint, &path).await
    };
    let (mut stream, mut inbuf, chunked) = match tokio::time::timeout(open_timeout, open).await {
        Ok(Ok(s)) => s,
        Ok(Err(kind)) => {
            let _ = opened.send(Err(kind));
            return result;
        }
        Err(_) => {
            let _ = opened.send(Err("open_timeout".into()));
            return result;
        }
    };
    result.opened = true;
    let _ = opened.send(Ok(()));

    let mut chunks = chunked.then(ChunkedDecoder::default);
    let mut sse = SseParser::default();
    let mut payload = Vec::with_capacity(16 * 1024);
    let mut messages: Vec<SseMessage> = Vec::new();
    // The bytes after the head that came with it are handled first.
    let mut fresh = std::mem::take(&mut inbuf);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !fresh.is_empty() {
            let at = micros_since(epoch);
            payload.clear();
            let decoded = match &mut chunks {
                Some(d) => d.feed(&fresh, &mut payload),
                None => {
                    payload.extend_from_slice(&fresh);
                    Ok(())
                }
            };
            fresh.clear();
            if let Err(e) = decoded.and_then(|()| sse.feed(&payload, &mut messages)) {
                result.error = Some(format!("stream: {e}"));
                return result;
            }
            for m in messages.drain(..) {
                result.messages += 1;
                match m.event.as_str() {
                    "events" if record => match parse_batch(&m.data) {
                        Ok(b) => {
                            if let Some(s) = &shared {
                                s.last_revision.fetch_max(b.revision, Ordering::Relaxed);
                            }
                            if result.deliveries.len() < MAX_DELIVERIES_PER_WATCHER {
                                result.deliveries.push(Delivery {
                                    revision: b.revision,
                                    events: b.events.len() as u32,
                                    at_us: at,
                                });
                            } else {
                                result.unrecorded += 1;
                            }
                        }
                        Err(e) => {
                            result.error = Some(format!("bad_batch: {e}"));
                            return result;
                        }
                    },
                    "progress" => result.progress += 1,
                    "canceled" => {
                        let reason = serde_json::from_str::<serde_json::Value>(&m.data)
                            .ok()
                            .and_then(|v| v["reason"].as_str().map(str::to_string))
                            .unwrap_or_else(|| "unknown".into());
                        result.canceled = Some(reason);
                        return result;
                    }
                    _ => {}
                }
            }
            if chunks.as_ref().is_some_and(ChunkedDecoder::done) {
                result.error = Some("stream_ended".into());
                return result;
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return result,
            r = stream.read(&mut buf) => match r {
                Ok(0) => {
                    result.error = Some("stream_ended".into());
                    return result;
                }
                Ok(n) => fresh.extend_from_slice(&buf[..n]),
                Err(_) => {
                    result.error = Some("connection_error".into());
                    return result;
                }
            }
        }
    }
}

/// Connects, sends the SSE request and reads the response head. Returns
/// the stream, the body bytes read with the head, and whether the body is
/// chunked; or an error kind (`connect`, `http_<status>`, ...).
async fn open_stream(endpoint: &str, path: &str) -> Result<(TcpStream, Vec<u8>, bool), String> {
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|_| "connect".to_string())?;
    let _ = stream.set_nodelay(true);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| "connection_error".to_string())?;
    let mut inbuf = Vec::with_capacity(4096);
    let head = loop {
        match parse_head(&inbuf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(_) => return Err("invalid_response".into()),
        }
        inbuf.reserve(4096);
        match stream.read_buf(&mut inbuf).await {
            Ok(0) | Err(_) => return Err("connection_error".into()),
            Ok(_) => {}
        }
    };
    if head.status != 200 {
        return Err(format!("http_{}", head.status));
    }
    let rest = inbuf.split_off(head.head_len);
    Ok((stream, rest, head.chunked))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HDR histograms report values to 3 significant digits.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want.max(0.001) * 0.002
    }

    fn put(revision: i64, sent_us: u64, acked_us: u64) -> PutRecord {
        PutRecord {
            revision,
            sent_us,
            acked_us,
        }
    }

    fn got(revision: i64, at_us: u64) -> Delivery {
        Delivery {
            revision,
            events: 1,
            at_us,
        }
    }

    #[test]
    fn a_perfect_fanout_has_no_mismatch_and_right_latencies() {
        let puts = vec![put(5, 1_000, 3_000), put(6, 2_000, 4_000)];
        // Watcher A: 1 ms and 2 ms after the acks; watcher B: 3 ms and 4 ms.
        let w = vec![
            vec![got(5, 4_000), got(6, 6_000)],
            vec![got(5, 6_000), got(6, 8_000)],
        ];
        let f = match_deliveries(&puts, &w, 0);
        assert_eq!(
            (
                f.acked_puts,
                f.watchers,
                f.expected_events,
                f.received_events
            ),
            (2, 2, 4, 4)
        );
        assert_eq!(f.mismatches(), 0);
        assert_eq!(f.complete_watchers, 2);
        assert_eq!(f.latency_from_ack_ms.count, 4);
        assert!(
            close(f.latency_from_ack_ms.min, 1.0),
            "{}",
            f.latency_from_ack_ms.min
        );
        assert!(
            close(f.latency_from_ack_ms.max, 4.0),
            "{}",
            f.latency_from_ack_ms.max
        );
        // From send: 3, 4, 5, 6 ms.
        assert!(
            close(f.latency_from_send_ms.min, 3.0),
            "{}",
            f.latency_from_send_ms.min
        );
        assert!(
            close(f.latency_from_send_ms.max, 6.0),
            "{}",
            f.latency_from_send_ms.max
        );
        assert!(
            close(f.latency_from_send_ms.p50, 4.0),
            "{}",
            f.latency_from_send_ms.p50
        );
    }

    #[test]
    fn missing_duplicate_reordered_and_foreign_events_are_counted() {
        let puts = vec![put(10, 0, 100), put(11, 0, 100), put(12, 0, 100)];
        let w = vec![
            // Misses 11.
            vec![got(10, 200), got(12, 200)],
            // 10 twice (a duplicate, also not increasing).
            vec![got(10, 200), got(11, 200), got(10, 300), got(12, 300)],
            // 13 was never acknowledged (lost answer); 12 came before 11.
            vec![got(10, 200), got(12, 200), got(11, 200), got(13, 400)],
            // Perfect.
            vec![got(10, 200), got(11, 200), got(12, 200)],
        ];
        let f = match_deliveries(&puts, &w, 0);
        assert_eq!(f.expected_events, 12);
        assert_eq!(f.received_events, 2 + 4 + 4 + 3);
        assert_eq!(f.missing, 1);
        assert_eq!(f.duplicates, 1);
        assert_eq!(f.out_of_order, 2, "10 after 11, 11 after 12");
        assert_eq!(f.unexpected_events, 1);
        assert_eq!(f.complete_watchers, 1);
        assert_eq!(f.mismatches(), 4);
        // Latency counts the first copy of each expected event only.
        assert_eq!(f.latency_from_ack_ms.count, 2 + 3 + 3 + 3);
    }

    #[test]
    fn early_deliveries_and_wrong_batches_are_flagged() {
        let puts = vec![put(3, 1_000, 5_000)];
        let early = vec![vec![got(3, 4_000)]];
        let f = match_deliveries(&puts, &early, 7);
        assert_eq!(f.delivered_before_ack, 1);
        assert_eq!(f.mismatches(), 0);
        assert_eq!(f.unrecorded, 7);
        assert!(f.latency_from_ack_ms.max <= 0.001, "clamped to the floor");
        assert!(
            close(f.latency_from_send_ms.max, 3.0),
            "{}",
            f.latency_from_send_ms.max
        );

        let two = vec![vec![Delivery {
            revision: 3,
            events: 2,
            at_us: 6_000,
        }]];
        let f = match_deliveries(&puts, &two, 0);
        assert_eq!(f.wrong_batch_size, 1);
        assert_eq!(f.complete_watchers, 0);

        // No watcher, no puts: nothing expected, nothing wrong.
        let f = match_deliveries(&[], &[], 0);
        assert_eq!((f.expected_events, f.mismatches()), (0, 0));
    }

    #[test]
    fn watch_paths_encode_keys_and_start_revisions() {
        assert_eq!(
            watch_path(Some("bench/"), None, 42),
            "/watch?prefix=bench%2F&start_revision=42"
        );
        assert_eq!(
            watch_path(None, Some("idle/000001"), 0),
            "/watch?key=idle%2F000001"
        );
    }

    /// A fake SSE server: answers one watch with a chunked stream of the
    /// given messages, split into odd chunks, then holds the connection.
    async fn sse_server(body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let _ = s.read(&mut req).await.unwrap();
            let text = String::from_utf8_lossy(&req);
            assert!(text.starts_with("GET /watch?prefix=p&start_revision=5 HTTP/1.1\r\n"));
            assert!(text.contains("Accept: text/event-stream\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            for piece in body.as_bytes().chunks(7) {
                let chunk = format!("{:x}\r\n", piece.len());
                s.write_all(chunk.as_bytes()).await.unwrap();
                s.write_all(piece).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_watcher_reads_a_chunked_sse_stream_until_stopped() {
        let body = "id: 5\nevent: events\ndata: {\"revision\":5,\"events\":[{\"type\":\"put\",\"kv\":{\"key\":\"p1\",\"mod_revision\":5}}]}\n\n\
id: 6\nevent: progress\ndata: {\"revision\":6}\n\n\
id: 7\nevent: events\ndata: {\"revision\":7,\"events\":[{\"type\":\"put\",\"kv\":{\"key\":\"p2\",\"mod_revision\":7}}]}\n\n";
        let url = sse_server(body).await;
        let spec = WatchSpec {
            endpoints: vec![url],
            active: 1,
            idle: 0,
            prefix: "p".into(),
            idle_prefix: "i/".into(),
            start_revision: 5,
            open_timeout: Duration::from_secs(5),
            epoch: Instant::now(),
        };
        let set = WatchSet::open(spec).await;
        assert_eq!(set.active_open, 1);
        assert!(set.drain(7, Duration::from_secs(10)).await, "reaches 7");
        let puts = vec![put(5, 0, 0), put(7, 0, 0)];
        let r = set.finish(&puts, true, 0.0).await;
        assert_eq!(r.progress_messages, 1);
        assert_eq!(r.fanout.received_events, 2);
        assert_eq!(r.fanout.mismatches(), 0);
        assert_eq!(r.fanout.complete_watchers, 1);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
}
