//! What a bench run measures (per worker, merged at the end) and how it is
//! reported: a human summary or one JSON object.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::machine::StallReport;

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An HTTP status the operation does not expect (e.g. 503).
    Status(u16),
    /// A read of a key that does not exist (RaftKV's 404, or etcd's empty
    /// range): the keys were not pre-populated.
    NotFound,
    /// No answer within `--timeout-ms`.
    Timeout,
    /// The TCP connection could not be opened.
    Connect,
    /// The connection broke mid-request.
    Io,
    /// An answer that could not be understood.
    InvalidResponse,
    /// A gRPC status other than OK (`--protocol grpc`), by code.
    Grpc(i32),
}

impl ErrorKind {
    /// A short, stable name for counting (`http_503`, `timeout`, ...).
    pub fn name(&self) -> String {
        match self {
            ErrorKind::Status(code) => format!("http_{code}"),
            ErrorKind::NotFound => "not_found".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Io => "connection_error".into(),
            ErrorKind::InvalidResponse => "invalid_response".into(),
            ErrorKind::Grpc(code) => format!("grpc_{}", super::grpc::code_name(*code)),
        }
    }
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// A compare-and-swap whose precondition did not hold: a complete,
    /// correct answer (another connection wrote the key in between), counted
    /// apart from both successes and errors.
    Conflict,
    /// Failed.
    Error(ErrorKind),
}

/// Whether an operation reads or writes (a compare-and-swap is a write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A read.
    Read,
    /// A write (put, or a read-modify-write).
    Write,
}

/// Latency histograms are in microseconds, from 1 µs to 10 minutes.
const HIST_MAX_US: u64 = 600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Counters and latency histograms of one worker (or, merged, of a run).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of every completed operation (successes and conflicts).
    pub all: Histogram<u64>,
    /// Latency of completed reads.
    pub reads: Histogram<u64>,
    /// Latency of completed writes.
    pub writes: Histogram<u64>,
    /// Operations that succeeded.
    pub successes: u64,
    /// Compare-and-swaps that lost the race.
    pub conflicts: u64,
    /// Failures by kind.
    pub errors: HashMap<ErrorKind, u64>,
    /// Read operations attempted.
    pub read_ops: u64,
    /// Write operations attempted.
    pub write_ops: u64,
    /// With watchers: every acknowledged put's revision and times.
    pub puts: Vec<super::watch::PutRecord>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            all: new_histogram(),
            reads: new_histogram(),
            writes: new_histogram(),
            successes: 0,
            conflicts: 0,
            errors: HashMap::new(),
            read_ops: 0,
            write_ops: 0,
            puts: Vec::new(),
        }
    }
}

impl Stats {
    /// Counts one operation that took `micros`. The latency of failed
    /// operations is not recorded: a timeout would otherwise show up as a
    /// fast or slow "answer".
    pub fn record(&mut self, kind: OpKind, outcome: Outcome, micros: u64) {
        match kind {
            OpKind::Read => self.read_ops += 1,
            OpKind::Write => self.write_ops += 1,
        }
        let micros = micros.clamp(1, HIST_MAX_US);
        match outcome {
            Outcome::Ok | Outcome::Conflict => {
                if outcome == Outcome::Ok {
                    self.successes += 1;
                } else {
                    self.conflicts += 1;
                }
                self.all.saturating_record(micros);
                match kind {
                    OpKind::Read => self.reads.saturating_record(micros),
                    OpKind::Write => self.writes.saturating_record(micros),
                }
            }
            Outcome::Error(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    /// Adds `other`'s counts and histograms to `self`.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.all.add(&other.all);
        let _ = self.reads.add(&other.reads);
        let _ = self.writes.add(&other.writes);
        self.successes += other.successes;
        self.conflicts += other.conflicts;
        for (k, n) in &other.errors {
            *self.errors.entry(*k).or_default() += n;
        }
        self.read_ops += other.read_ops;
        self.write_ops += other.write_ops;
        self.puts.extend_from_slice(&other.puts);
    }

    /// Operations counted (every outcome).
    pub fn ops(&self) -> u64 {
        self.read_ops + self.write_ops
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a microsecond histogram, in ms (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// CPU time used by the `--pids` processes during the measured run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// CPU ms summed over the processes that could be read.
    pub cpu_ms: f64,
    /// `cpu_ms` divided by the operations counted.
    pub cpu_ms_per_op: f64,
    /// Average cores busy: `cpu_ms` over the run's wall time.
    pub cores_busy: f64,
    /// CPU ms per process.
    pub per_pid: BTreeMap<u32, f64>,
    /// Processes that could not be read (e.g. they exited).
    pub errors: Vec<String>,
}

/// The result of one run: printed by `--json` as one object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `raftkv` or `etcd`.
    pub target: String,
    /// `json` (RaftKV's HTTP API or etcd's JSON gateway) or `grpc` (etcd
    /// v3's gRPC API, on either system). Empty in reports from before
    /// `--protocol`: those were JSON.
    #[serde(default)]
    pub protocol: String,
    /// `--protocol grpc`: HTTP/2 connections per node the clients shared.
    #[serde(default)]
    pub grpc_conns: Option<u32>,
    /// `put`, `get`, `mixed` or `cas`.
    pub workload: String,
    /// Concurrent connections.
    pub connections: u32,
    /// `leader` or `all`.
    pub target_nodes: String,
    /// Read consistency: `linearizable` or `stale`.
    pub consistency: String,
    /// Fraction of reads (mixed workload; 1 for get, 0 for put, cas).
    pub read_ratio: f64,
    /// Where the connections went (base URLs, in connection order, deduplicated).
    pub endpoints: Vec<String>,
    /// Key space size.
    pub keys: u64,
    /// Key length in bytes.
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
    /// Seconds of the measured run (warm-up excluded).
    pub duration_s: f64,
    /// Why the run ended: `time` or `ops`.
    pub stopped_by: String,
    /// Operations counted: `successes + conflicts + errors`.
    pub ops: u64,
    /// Operations that succeeded.
    pub successes: u64,
    /// Compare-and-swaps whose precondition did not hold.
    pub conflicts: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Failures by kind (`http_503`, `timeout`, `connect`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Read operations counted.
    pub reads: u64,
    /// Write operations counted.
    pub writes: u64,
    /// Completed operations (successes + conflicts) per second.
    pub throughput_ops_s: f64,
    /// Latency of completed operations.
    pub latency_ms: Latency,
    /// Latency of completed reads.
    pub read_latency_ms: Latency,
    /// Latency of completed writes.
    pub write_latency_ms: Latency,
    /// Server CPU (with `--pids`).
    pub cpu: Option<CpuReport>,
    /// CPU ms per operation spent by the bench process itself.
    pub client_cpu_ms_per_op: Option<f64>,
    /// `--rate`: the operations per second offered.
    #[serde(default)]
    pub offered_rate_ops_s: Option<f64>,
    /// Percent of the machine's CPU time stolen by the hypervisor during
    /// the run (Linux `/proc/stat`).
    #[serde(default)]
    pub steal_pct: Option<f64>,
    /// `--stall-probe`: stalls of the whole machine during the run.
    #[serde(default)]
    pub stalls: Option<StallReport>,
    /// The prefix of every key the run used (`--key-prefix`).
    #[serde(default)]
    pub key_prefix: String,
    /// Whether the run wrote keys (pre-population or a workload that
    /// writes): they stay in the cluster unless `cleanup` deleted them.
    #[serde(default)]
    pub wrote_keys: bool,
    /// `--cleanup`: what deleting the key space after the run did.
    #[serde(default)]
    pub cleanup: Option<CleanupReport>,
    /// `--watchers`/`--idle-watchers`: fan-out latency and delivery check.
    #[serde(default)]
    pub watch: Option<super::watch::WatchReport>,
    /// `--rss-pids`: resident memory before, with watchers, at the end.
    #[serde(default)]
    pub rss: Vec<super::machine::RssReport>,
}

/// What `--cleanup` did: every key of the run's key space deleted once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Keys that existed and were deleted.
    pub deleted: u64,
    /// Keys that did not exist (never written by this run).
    pub absent: u64,
    /// Keys that could not be deleted (errors, or the time limit).
    pub failed: u64,
    /// Seconds the cleanup took.
    pub seconds: f64,
    /// The first error, if any.
    pub error: Option<String>,
}

impl CleanupReport {
    /// True when every key of the key space is gone.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }
}

impl Report {
    /// A human-readable summary, several lines.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let l = &self.latency_ms;
        let reads = match self.workload.as_str() {
            "put" => String::new(),
            "mixed" => format!(
                ", {:.0}% {} reads",
                self.read_ratio * 100.0,
                self.consistency
            ),
            _ => format!(", {} reads", self.consistency),
        };
        let over = match self.grpc_conns {
            Some(n) if self.protocol == "grpc" => {
                format!(" over gRPC, sharing {n} HTTP/2 connection(s) per node")
            }
            _ if self.protocol == "grpc" => " over gRPC".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "bench: {} on {} ({}: {}), {} connection(s){over}",
            self.workload,
            self.target,
            self.target_nodes,
            self.endpoints.join(","),
            self.connections,
        );
        let _ = writeln!(
            s,
            "  keys         {} keys of {} bytes, {}-byte values{reads}",
            self.keys, self.key_size, self.value_size,
        );
        let _ = writeln!(
            s,
            "  duration     {:.2} s (stopped by {})",
            self.duration_s, self.stopped_by
        );
        let _ = writeln!(
            s,
            "  operations   {} ({} ok, {} conflicts, {} errors; {} reads, {} writes)",
            self.ops, self.successes, self.conflicts, self.errors, self.reads, self.writes
        );
        match self.offered_rate_ops_s {
            Some(rate) => {
                let _ = writeln!(
                    s,
                    "  throughput   {:.1} ops/s (offered {rate:.1} ops/s; latency from when each request was due)",
                    self.throughput_ops_s
                );
            }
            None => {
                let _ = writeln!(s, "  throughput   {:.1} ops/s", self.throughput_ops_s);
            }
        }
        let _ = writeln!(
            s,
            "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if self.workload == "mixed" {
            for (name, l) in [
                ("reads", &self.read_latency_ms),
                ("writes", &self.write_latency_ms),
            ] {
                let _ = writeln!(
                    s,
                    "    {name:<10} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
        }
        if self.workload == "txn" {
            let done = (self.successes + self.conflicts).max(1);
            let _ = writeln!(
                s,
                "  txn          {} succeeded, {} took the failure branch ({:.1}%)",
                self.successes,
                self.conflicts,
                self.conflicts as f64 * 100.0 / done as f64
            );
        }
        if let Some(w) = &self.watch {
            let f = &w.fanout;
            let _ = writeln!(
                s,
                "  watchers     {}/{} active, {}/{} idle open on {}{} (in {:.1} s), from revision {}",
                w.active_open,
                w.active,
                w.idle_open,
                w.idle,
                w.endpoints.join(","),
                if w.streams > 0 {
                    format!(" over {} gRPC Watch stream(s)", w.streams)
                } else {
                    String::new()
                },
                w.open_s,
                w.start_revision
            );
            let _ = writeln!(
                s,
                "  fan-out      {} acked puts x {} watchers: expected {} events, received {}; \
                 missing {}, duplicated {}, out of order {}, wrong batch {}, unexpected {}; \
                 {} watcher(s) exactly once{}",
                f.acked_puts,
                f.watchers,
                f.expected_events,
                f.received_events,
                f.missing,
                f.duplicates,
                f.out_of_order,
                f.wrong_batch_size,
                f.unexpected_events,
                f.complete_watchers,
                if w.drained { "" } else { " (drain timed out)" }
            );
            for (name, l) in [
                ("from ack", &f.latency_from_ack_ms),
                ("from send", &f.latency_from_send_ms),
            ] {
                let _ = writeln!(
                    s,
                    "    {name:<10} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
            if f.delivered_before_ack > 0 {
                let _ = writeln!(
                    s,
                    "               {} deliveries came before the put's answer (0 ms from ack)",
                    f.delivered_before_ack
                );
            }
            if !w.errors.is_empty() || !w.canceled.is_empty() || w.idle_messages > 0 {
                let _ = writeln!(
                    s,
                    "               watcher errors {:?}, canceled {:?}, idle watchers got {} message(s)",
                    w.errors, w.canceled, w.idle_messages
                );
            }
        }
        for r in &self.rss {
            let mb =
                |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
            let _ = writeln!(
                s,
                "  RSS MB       pid {}: before {}, watching {}, end {}{}",
                r.pid,
                mb(r.before_kib),
                mb(r.watching_kib),
                mb(r.end_kib),
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        if !self.errors_by_kind.is_empty() {
            let list: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(s, "  errors       {}", list.join(", "));
        }
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(
                s,
                "  server CPU   {:.0} ms over {} process(es) = {:.4} CPU-ms/op ({:.2} cores busy)",
                cpu.cpu_ms,
                cpu.per_pid.len(),
                cpu.cpu_ms_per_op,
                cpu.cores_busy
            );
            for e in &cpu.errors {
                let _ = writeln!(s, "               not measured: {e}");
            }
        }
        if let Some(c) = self.client_cpu_ms_per_op {
            let _ = writeln!(s, "  bench CPU    {c:.4} CPU-ms/op (this process)");
        }
        if let Some(steal) = self.steal_pct {
            let _ = writeln!(
                s,
                "  machine      {steal:.1}% of CPU time stolen by the hypervisor"
            );
        }
        if let Some(st) = &self.stalls {
            let _ = writeln!(
                s,
                "  stalls       {:.1}/s, mean {:.1} ms, max {:.1} ms ({:.1}% of the run; probe woke {} times)",
                st.per_s, st.mean_ms, st.max_ms, st.stalled_pct, st.wakeups
            );
        }
        let _ = writeln!(s, "  {}", self.keys_note());
        s
    }

    /// One line on the keys the run left behind (or deleted).
    pub fn keys_note(&self) -> String {
        let span = if self.keys <= 1 {
            format!("{} key", self.keys)
        } else {
            format!("up to {} keys", self.keys)
        };
        match (&self.cleanup, self.wrote_keys) {
            (Some(c), _) if c.complete() => format!(
                "keys         cleaned up: deleted {} key(s) under the prefix {:?} ({} were absent) in {:.1} s",
                c.deleted, self.key_prefix, c.absent, c.seconds
            ),
            (Some(c), _) => format!(
                "keys         cleanup incomplete: deleted {}, {} absent, {} left under the prefix {:?}{}",
                c.deleted,
                c.absent,
                c.failed,
                self.key_prefix,
                c.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            (None, true) => format!(
                "keys         {span} written under the prefix {:?} are left in the cluster; \
                 --cleanup deletes them after a run",
                self.key_prefix
            ),
            (None, false) => "keys         this run wrote nothing".to_string(),
        }
    }
}

/// The protocol of a report (reports from before `--protocol` were JSON).
fn protocol_of(r: &Report) -> &str {
    if r.protocol.is_empty() {
        "json"
    } else {
        &r.protocol
    }
}

/// What `--summarize` prints for a file of reports: one comparison table
/// per protocol (gRPC, then JSON; each pairs etcd and RaftKV runs spoken in
/// that protocol), then, when there are watch runs, the fan-out table. A
/// file with one protocol and no watch run gives just its table.
pub fn summary(reports: &[Report]) -> String {
    use std::fmt::Write;
    let loads: Vec<&Report> = reports.iter().filter(|r| r.watch.is_none()).collect();
    let watches: Vec<&Report> = reports.iter().filter(|r| r.watch.is_some()).collect();
    let protocols: Vec<&str> = ["grpc", "json"]
        .into_iter()
        .filter(|p| loads.iter().any(|r| protocol_of(r) == *p))
        .collect();
    if protocols.len() == 1 && watches.is_empty() {
        return comparison_table(reports);
    }
    let mut s = String::new();
    for p in protocols {
        let mine: Vec<Report> = loads
            .iter()
            .filter(|r| protocol_of(r) == p)
            .map(|r| (*r).clone())
            .collect();
        let title = match p {
            "grpc" => "gRPC: etcd v3's gRPC API on both (RaftKV's client port vs etcd)",
            _ => "JSON: RaftKV's HTTP API vs etcd's v3 JSON gateway",
        };
        let _ = writeln!(s, "### {title}\n");
        s.push_str(&comparison_table(&mine));
        s.push('\n');
    }
    if !watches.is_empty() {
        let _ = writeln!(s, "### Watch fan-out\n");
        s.push_str(&fanout_table(&watches));
    }
    s
}

/// A side-by-side Markdown table of watch runs (`--watchers`): put
/// throughput with the watchers open, delivery latency from the put being
/// sent, and how many watchers got every event exactly once, etcd vs RaftKV
/// per protocol, connection count and watcher count.
pub fn fanout_table(reports: &[&Report]) -> String {
    use std::fmt::Write;
    // Protocol, connections, active, idle, streams, offered rate.
    type Group = (String, u32, u32, u32, u32, Option<u64>);
    let mut order: Vec<Group> = Vec::new();
    let mut by: BTreeMap<Group, (Option<&Report>, Option<&Report>)> = BTreeMap::new();
    for r in reports {
        let Some(w) = &r.watch else { continue };
        let g = (
            protocol_of(r).to_string(),
            r.connections,
            w.active,
            w.idle,
            w.streams,
            r.offered_rate_ops_s.map(|x| x.round() as u64),
        );
        if !order.contains(&g) {
            order.push(g.clone());
        }
        let slot = by.entry(g).or_default();
        if r.target == "etcd" {
            slot.0 = Some(r);
        } else {
            slot.1 = Some(r);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| protocol | conns | watchers | etcd put ops/s | raftkv put ops/s | ratio | etcd delivery p50 ms | raftkv delivery p50 ms | ratio | etcd delivery p99 ms | raftkv delivery p99 ms | ratio | exactly once etcd | exactly once raftkv |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for g in &order {
        let (e, r) = by[g];
        let cell = |x: Option<f64>, digits: usize| match x {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(etcd), Some(raft)) if etcd > 0.0 => format!("{:.2}×", raft / etcd),
            _ => "-".into(),
        };
        let ops = |x: Option<&Report>| x.map(|r| r.throughput_ops_s);
        let lat = |x: Option<&Report>, q: fn(&Latency) -> f64| {
            x.and_then(|r| r.watch.as_ref())
                .map(|w| q(&w.fanout.latency_from_send_ms))
        };
        let p50 = |x| lat(x, |l| l.p50);
        let p99 = |x| lat(x, |l| l.p99);
        let once = |x: Option<&Report>| match x.and_then(|r| r.watch.as_ref()) {
            Some(w) => format!(
                "{}/{} ({} missing, {} dup)",
                w.fanout.complete_watchers,
                w.fanout.watchers,
                w.fanout.missing,
                w.fanout.duplicates
            ),
            None => "-".into(),
        };
        let mut watchers = format!("{} active", g.2);
        if g.3 > 0 {
            let _ = write!(watchers, " + {} idle", g.3);
        }
        if g.4 > 0 {
            let _ = write!(watchers, " on {} stream(s)", g.4);
        }
        if let Some(rate) = g.5 {
            let _ = write!(watchers, ", {rate} puts/s offered");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {watchers} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.0,
            g.1,
            cell(ops(e), 0),
            cell(ops(r), 0),
            ratio(ops(e), ops(r)),
            cell(p50(e), 2),
            cell(p50(r), 2),
            ratio(p50(e), p50(r)),
            cell(p99(e), 2),
            cell(p99(r), 2),
            ratio(p99(e), p99(r)),
            once(e),
            once(r),
        );
    }
    s
}

/// A side-by-side Markdown table of etcd and RaftKV runs with the same
/// workload and connection count, with raftkv/etcd ratios. Runs without a
/// partner are listed with `-` on the other side.
pub fn comparison_table(reports: &[Report]) -> String {
    use std::fmt::Write;
    // Workload, consistency, connections, offered rate (`--rate`).
    type Group = (String, String, u32, Option<u64>);
    let mut order: Vec<Group> = Vec::new();
    let mut by: BTreeMap<Group, (Option<&Report>, Option<&Report>)> = BTreeMap::new();
    for r in reports {
        let rate = r.offered_rate_ops_s.map(|x| x.round() as u64);
        let g = (
            r.workload.clone(),
            r.consistency.clone(),
            r.connections,
            rate,
        );
        if !order.contains(&g) {
            order.push(g.clone());
        }
        let slot = by.entry(g).or_default();
        if r.target == "etcd" {
            slot.0 = Some(r);
        } else {
            slot.1 = Some(r);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | conns | etcd ops/s | raftkv ops/s | ratio | etcd p50 ms | raftkv p50 ms | ratio | etcd p99 ms | raftkv p99 ms | ratio | etcd CPU-ms/op | raftkv CPU-ms/op | ratio | errors etcd/raftkv | steal % etcd/raftkv | stalls/s etcd/raftkv |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in &order {
        let (e, r) = by[g];
        let mut workload = match g.0.as_str() {
            "put" => "put".to_string(),
            w => format!("{w} ({})", g.1),
        };
        if let Some(rate) = g.3 {
            let _ = write!(workload, " at {rate} ops/s offered");
        }
        let cell = |x: Option<f64>, digits: usize| match x {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(etcd), Some(raft)) if etcd > 0.0 => format!("{:.2}×", raft / etcd),
            _ => "-".into(),
        };
        let ops = |x: Option<&Report>| x.map(|r| r.throughput_ops_s);
        let p50 = |x: Option<&Report>| x.map(|r| r.latency_ms.p50);
        let p99 = |x: Option<&Report>| x.map(|r| r.latency_ms.p99);
        let cpu = |x: Option<&Report>| x.and_then(|r| r.cpu.as_ref().map(|c| c.cpu_ms_per_op));
        let errs = |x: Option<&Report>| x.map_or("-".to_string(), |r| r.errors.to_string());
        let steal = |x: Option<&Report>| x.and_then(|r| r.steal_pct);
        let stalls = |x: Option<&Report>| x.and_then(|r| r.stalls.as_ref().map(|s| s.per_s));
        let _ = writeln!(
            s,
            "| {workload} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{} | {}/{} |",
            g.2,
            cell(ops(e), 0),
            cell(ops(r), 0),
            ratio(ops(e), ops(r)),
            cell(p50(e), 2),
            cell(p50(r), 2),
            ratio(p50(e), p50(r)),
            cell(p99(e), 2),
            cell(p99(r), 2),
            ratio(p99(e), p99(r)),
            cell(cpu(e), 3),
            cell(cpu(r), 3),
            ratio(cpu(e), cpu(r)),
            errs(e),
            errs(r),
            cell(steal(e), 1),
            cell(steal(r), 1),
            cell(stalls(e), 1),
            cell(stalls(r), 1),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_every_outcome_and_merge() {
        let mut a = Stats::default();
        a.record(OpKind::Write, Outcome::Ok, 1000);
        a.record(OpKind::Write, Outcome::Conflict, 3000);
        a.record(OpKind::Read, Outcome::Error(ErrorKind::Status(503)), 5);
        let mut b = Stats::default();
        b.record(OpKind::Read, Outcome::Ok, 2000);
        b.record(OpKind::Read, Outcome::Error(ErrorKind::Status(503)), 5);
        b.record(OpKind::Read, Outcome::Error(ErrorKind::Timeout), 5);
        a.merge(&b);
        assert_eq!(a.ops(), 6);
        assert_eq!((a.successes, a.conflicts, a.error_count()), (2, 1, 3));
        assert_eq!(a.errors[&ErrorKind::Status(503)], 2);
        assert_eq!(a.errors[&ErrorKind::Timeout], 1);
        assert_eq!((a.read_ops, a.write_ops), (4, 2));
        // Failed operations carry no latency.
        assert_eq!(a.all.len(), 3);
        assert_eq!(a.reads.len(), 1);
        assert_eq!(a.writes.len(), 2);
        let l = Latency::of(&a.all);
        assert!((l.p50 - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 3.0).abs() < 0.01, "{l:?}");
        assert!((l.min - 1.0).abs() < 0.01, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
        assert_eq!(ErrorKind::Status(503).name(), "http_503");
    }

    fn report(target: &str, workload: &str, conns: u32, ops_s: f64, cpu: f64) -> Report {
        Report {
            target: target.into(),
            workload: workload.into(),
            consistency: "linearizable".into(),
            connections: conns,
            throughput_ops_s: ops_s,
            latency_ms: Latency {
                p50: 2.0,
                p99: 8.0,
                ..Latency::default()
            },
            cpu: Some(CpuReport {
                cpu_ms_per_op: cpu,
                ..CpuReport::default()
            }),
            ..Report::default()
        }
    }

    #[test]
    fn comparison_table_pairs_runs_and_computes_ratios() {
        let t = comparison_table(&[
            report("etcd", "put", 16, 1000.0, 0.4),
            report("raftkv", "put", 16, 3000.0, 0.1),
            report("etcd", "get", 64, 2000.0, 0.2),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].starts_with("| put | 16 | 1000 | 3000 | 3.00× |"),
            "{t}"
        );
        assert!(lines[2].contains("| 0.400 | 0.100 | 0.25× |"), "{t}");
        assert!(
            lines[3].starts_with("| get (linearizable) | 64 | 2000 | - | - |"),
            "{t}"
        );
        assert!(lines[2].ends_with("| 0/0 | -/- | -/- |"), "{t}");
    }

    #[test]
    fn the_summary_has_a_table_per_protocol_and_a_fanout_table() {
        let mut grpc_etcd = report("etcd", "put", 16, 1000.0, 0.4);
        grpc_etcd.protocol = "grpc".into();
        let mut grpc_raft = report("raftkv", "put", 16, 4000.0, 0.1);
        grpc_raft.protocol = "grpc".into();
        // An old report (no protocol field) is JSON.
        let json_etcd = report("etcd", "put", 16, 800.0, 0.5);
        let mut json_raft = report("raftkv", "put", 16, 3200.0, 0.1);
        json_raft.protocol = "json".into();
        let watched = |target: &str, ops: f64, p50: f64, complete: u64| {
            let mut r = report(target, "put", 16, ops, 0.1);
            r.protocol = "grpc".into();
            r.watch = Some(super::super::watch::WatchReport {
                active: 10,
                streams: 2,
                fanout: super::super::watch::Fanout {
                    watchers: 10,
                    complete_watchers: complete,
                    latency_from_send_ms: Latency {
                        p50,
                        p99: p50 * 4.0,
                        ..Latency::default()
                    },
                    ..Default::default()
                },
                ..Default::default()
            });
            r
        };
        let all = [
            grpc_etcd.clone(),
            json_etcd.clone(),
            grpc_raft,
            json_raft,
            watched("etcd", 500.0, 4.0, 10),
            watched("raftkv", 1500.0, 1.0, 9),
        ];
        let s = summary(&all);
        let grpc_at = s.find("### gRPC").expect("a gRPC table");
        let json_at = s.find("### JSON").expect("a JSON table");
        let fan_at = s.find("### Watch fan-out").expect("a fan-out table");
        assert!(grpc_at < json_at && json_at < fan_at, "{s}");
        assert!(
            s[grpc_at..json_at].contains("| put | 16 | 1000 | 4000 | 4.00× |"),
            "{s}"
        );
        assert!(
            s[json_at..fan_at].contains("| put | 16 | 800 | 3200 | 4.00× |"),
            "{s}"
        );
        let fan = &s[fan_at..];
        assert!(
            fan.contains("| grpc | 16 | 10 active on 2 stream(s) | 500 | 1500 | 3.00× | 4.00 | 1.00 | 0.25× | 16.00 | 4.00 | 0.25× | 10/10 (0 missing, 0 dup) | 9/10 (0 missing, 0 dup) |"),
            "{s}"
        );
        // The watch runs stay out of the load tables.
        assert_eq!(s.matches("| put | 16 |").count(), 2, "{s}");
        // One protocol and no watch run: just the table, as before.
        assert_eq!(
            summary(&[grpc_etcd.clone()]),
            comparison_table(&[grpc_etcd])
        );
    }

    #[test]
    fn paced_runs_pair_only_with_runs_at_the_same_rate() {
        let mut paced_etcd = report("etcd", "put", 16, 1000.0, 0.4);
        paced_etcd.offered_rate_ops_s = Some(1000.0);
        paced_etcd.steal_pct = Some(2.5);
        let mut paced_raft = report("raftkv", "put", 16, 999.0, 0.1);
        paced_raft.offered_rate_ops_s = Some(1000.0);
        paced_raft.stalls = Some(StallReport {
            per_s: 6.25,
            ..StallReport::default()
        });
        let t = comparison_table(&[
            report("etcd", "put", 16, 2000.0, 0.4),
            paced_etcd,
            report("raftkv", "put", 16, 5000.0, 0.1),
            paced_raft,
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].starts_with("| put | 16 | 2000 | 5000 | 2.50× |"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("| put at 1000 ops/s offered | 16 | 1000 | 999 | 1.00× |"),
            "{t}"
        );
        assert!(lines[3].ends_with("| 2.5/- | -/6.2 |"), "{t}");
    }
}
