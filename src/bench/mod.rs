//! `raftkv bench`: a load generator that measures throughput, latency and
//! CPU cost of RaftKV — and, with `--target etcd`, of an etcd cluster through
//! its v3 JSON gateway, with the same workloads, so one tool measures both.
//!
//! How a run goes:
//! 1. find where to send requests (the leader, or every node);
//! 2. pre-populate the key space for workloads that read (bounded in keys
//!    and time);
//! 3. open `--connections` kept-alive connections, one task each;
//! 4. an optional warm-up, then the measured run, which ends at
//!    `--duration` or after `--ops` operations, whichever comes first (both
//!    always apply);
//! 5. report throughput, latency percentiles from an HDR histogram, errors
//!    by kind and — with `--pids` — the servers' CPU time per operation,
//!    read from `/proc/PID/stat` before and after;
//! 6. with `--cleanup`, delete every key of the key space (bounded by
//!    `--cleanup-timeout`). Without it the keys stay, under `--key-prefix`
//!    (`bench/` by default), and the report says so.
//!
//! `--protocol grpc` speaks etcd v3's gRPC API instead, to either system
//! ([`grpc`]): the like-for-like comparison, one client stack for both.
//! It is the default with `--target etcd`; RaftKV's default stays JSON.
//!
//! The hot loop uses a lean HTTP/1.1 connection per task ([`http`]) instead
//! of the shared [`crate::client::Client`]: no retries hide failures, and the
//! load generator takes as little CPU as possible from the nodes it measures.
//! The shared client is used where its leader discovery and retries fit: to
//! find RaftKV's leader.

pub mod cpu;
pub mod etcd;
pub mod grpc;
pub mod http;
pub mod machine;
pub mod report;
pub mod runner;
pub mod sse;
pub mod target;
pub mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use rand::{Rng, SeedableRng};

pub use report::Report;
use target::{Keys, Session, System};

/// Time cap when only `--ops` is given.
pub const DEFAULT_TIME_CAP_SECS: f64 = 600.0;
/// Duration when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Operation cap when only `--duration` is given.
pub const DEFAULT_OPS_CAP: u64 = 100_000_000;
/// Most keys that are pre-populated.
pub const MAX_POPULATE_KEYS: u64 = 1_000_000;
/// Most keys of the txn workload (its mod-revision cache is 8 bytes a key).
pub const MAX_TXN_KEYS: u64 = 10_000_000;

const EXAMPLES: &str = "\
Examples:
  raftkv bench                                   # 10 s of puts, 16 connections, to the leader
  raftkv bench -w get -c 64 --duration 30        # linearizable reads
  raftkv bench -w get --consistency stale --target-nodes all
  raftkv bench -w mixed --read-ratio 0.9 --ops 100000
  raftkv bench -w cas --keys 100 -c 8            # read-modify-write with ?cas=
  raftkv bench --pids 1234,1235,1236 --json      # + server CPU-ms per operation
  raftkv bench -w txn -c 16                      # two-key transactions (POST /txn)
  raftkv bench -w put --watchers 100 --idle-watchers 1000 --watch-node leader \
      --rss-pids 1234                            # watch fan-out latency, exactly-once check, RSS
  raftkv bench --target etcd --endpoints http://127.0.0.1:2379,http://127.0.0.1:22379
  raftkv bench --protocol grpc -w txn -c 64 --grpc-conns 8   # RaftKV through etcd's gRPC API
  raftkv bench --target etcd --protocol json -w get          # etcd through its JSON gateway
  raftkv bench --target etcd -w put --watchers 100 --watch-streams 10   # gRPC watch fan-out

Keys: every key is --key-prefix (default \"bench/\") followed by a zero-padded
number, so a run touches no other key. The keys it wrote stay in the cluster
(the report says how many and where) unless --cleanup deletes them after the
run (at most --cleanup-timeout seconds).

Every run is bounded: it stops at --duration (default 10 s; 600 s when only
--ops is given) or after --ops operations (default 100000000), whichever comes
first (an operation in flight at the time cap is waited for, at most
--timeout-ms). Workloads that read (get, mixed, cas) first write every key once
(at most 1000000 keys; --no-populate skips that).

Latency is measured per operation from send to complete answer, for
operations that completed (successes and CAS conflicts); failures are counted
by kind (http_<status>, timeout, connect, connection_error, not_found,
invalid_response). With --pids, the CPU time (user + system, from
/proc/PID/stat) the listed processes used during the measured run is divided
by the operations counted: CPU-ms per operation summed over those processes.

txn: each operation is one transaction (RaftKV POST /txn, etcd's gateway
POST /v3/kv/txn, gRPC KV.Txn) on two distinct random keys: if both
still have the mod_revision this bench last saw (0 = absent), put both,
else read both (the failure branch, counted as a conflict). Its latency is
that one request.

--protocol: json (RaftKV's HTTP API, etcd's JSON gateway; the default for
--target raftkv) or grpc (etcd v3's gRPC API on either system; the default
for --target etcd). With grpc, --connections C are C concurrent clients
sharing --grpc-conns N HTTP/2 connections per node (client i on connection
i mod N; default min(C, 8)), and pre-population and --cleanup use gRPC too.
Failures of gRPC calls count as grpc_<status> (grpc_unavailable, ...).

--watchers W (put workload; RaftKV, or either system over gRPC): W watches
of --key-prefix from the current revision + 1 are opened before the load
(JSON: one SSE stream GET /watch each; gRPC: spread over --watch-streams
Watch streams), and --idle-watchers M more on single keys under
--idle-watch-prefix nobody writes. Every put records its revision; every watcher every message. After
the load (and up to --watch-drain seconds for the watchers to catch up) each
watcher's events are matched with the acknowledged puts: latency from the
put's answer to delivery, and from the put being sent to delivery (p50/p99),
and events expected vs received, missing, duplicated and out of order.";

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A RaftKV cluster (`--nodes`).
    Raftkv,
    /// An etcd v3 cluster through its JSON gateway (`--endpoints`).
    Etcd,
}

/// The operation mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Unconditional writes of random keys.
    Put,
    /// Reads of random (pre-populated) keys.
    Get,
    /// Reads (`--read-ratio`) and writes.
    Mixed,
    /// Read-modify-write: read a key's mod index, then write it
    /// conditionally on it (RaftKV `?cas=`, etcd txn on mod_revision).
    Cas,
    /// Two-key transactions (RaftKV `POST /txn`, etcd `KV.Txn` or its
    /// gateway's `/v3/kv/txn`): compare both keys' mod_revision, put both
    /// on success, read both on failure.
    Txn,
}

/// The wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// RaftKV's HTTP/1.1 JSON API, or etcd's v3 JSON gateway.
    Json,
    /// etcd v3's gRPC API (HTTP/2), on either system.
    Grpc,
}

impl Protocol {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Where requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetNodes {
    /// Every connection to the current leader.
    Leader,
    /// Connections spread over all nodes (followers forward writes).
    All,
}

/// Read consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadConsistency {
    /// Linearizable reads (RaftKV's default; etcd's default range).
    Linearizable,
    /// Served by the contacted node, possibly stale (RaftKV
    /// `?consistency=stale`, etcd `serializable`).
    Stale,
}

/// `raftkv bench` options.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// System to measure.
    #[arg(long, value_enum, default_value_t = TargetKind::Raftkv)]
    pub target: TargetKind,

    /// RaftKV nodes, comma-separated (http://host:port or host:port).
    /// [env: RAFTKV_NODES]
    /// [default: http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003]
    #[arg(long, value_name = "URL,URL,...")]
    pub nodes: Option<String>,

    /// etcd client URLs (JSON gateway), comma-separated, for --target etcd.
    #[arg(
        long,
        value_name = "URL,URL,...",
        env = "ETCDCTL_ENDPOINTS",
        hide_env_values = true,
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,

    /// Wire protocol: json or grpc (etcd v3's gRPC API, on either
    /// system). [default: json for raftkv, grpc for etcd]
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,

    /// --protocol grpc: HTTP/2 connections per node, shared by the
    /// --connections clients (client i uses connection i mod N).
    /// [default: min(connections, 8)]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub grpc_conns: Option<u32>,

    /// --protocol grpc: Watch streams the --watchers and --idle-watchers
    /// are spread over (round robin; stream s on connection s of its node).
    /// [default: min(watchers + idle watchers, 10)]
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watch_streams: Option<u32>,

    /// Operation mix.
    #[arg(long, short = 'w', value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,

    /// Concurrent connections (one request in flight on each).
    #[arg(long, short = 'c', default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Seconds to run (the time cap). [default: 10, or 600 with --ops]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Operations to run (the count cap). [default: 100000000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,

    /// Seconds of unmeasured load before the measured run.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub warmup: f64,

    /// Fraction of reads in the mixed workload (0.0-1.0).
    #[arg(long, value_name = "R", default_value_t = 0.5)]
    pub read_ratio: f64,

    /// Number of distinct keys.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// Key length in bytes (prefix + zero-padded number).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub key_size: usize,

    /// Value length in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,

    /// Prefix of every key (so a bench does not touch other keys).
    #[arg(long, value_name = "P", default_value = "bench/")]
    pub key_prefix: String,

    /// After the run, delete every key of the key space (--keys keys under
    /// --key-prefix), so the bench leaves nothing behind.
    #[arg(long)]
    pub cleanup: bool,

    /// Give up cleaning up after this many seconds (the keys not deleted by
    /// then are reported, and the command fails).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub cleanup_timeout: f64,

    /// Send requests to the leader, or spread them over all nodes.
    #[arg(long, value_enum, default_value_t = TargetNodes::Leader)]
    pub target_nodes: TargetNodes,

    /// Consistency of the get and mixed workloads' reads.
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    pub consistency: ReadConsistency,

    /// Do not write the keys before a workload that reads them.
    #[arg(long)]
    pub no_populate: bool,

    /// Give up pre-populating after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub populate_timeout: f64,

    /// Per-request timeout in milliseconds (counted as a "timeout" error).
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// Server processes whose CPU time to measure (comma-separated PIDs).
    #[arg(long, value_name = "PID,PID,...", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Pace the load: send at most this many operations per second in
    /// total (spread evenly over the connections) instead of each
    /// connection sending its next request as soon as the last one is
    /// answered. A request that is sent late because the previous one on
    /// its connection was still in flight counts its latency from when it
    /// was due, so a server that falls behind is charged for the wait.
    /// Timers have a resolution of about 1 ms: keep each connection's
    /// interval (connections / rate) well above the latency plus 1 ms.
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,

    /// Run a probe thread that sleeps 1 ms at a time and reports how often,
    /// and for how long, it woke up more than 2 ms late: stalls of the whole
    /// machine, which every request in flight sees.
    #[arg(long)]
    pub stall_probe: bool,

    /// Print one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Seed of the key choice (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Active watchers: SSE watches of --key-prefix held open during a put
    /// run, measuring delivery latency and exactly-once delivery.
    #[arg(long, value_name = "W", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub watchers: u32,

    /// Idle watchers: SSE watches of single keys nobody writes (under
    /// --idle-watch-prefix), held open during the run.
    #[arg(long, value_name = "M", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub idle_watchers: u32,

    /// Where the watchers go: leader, follower (the first one), all (spread
    /// over --nodes), or a node's URL.
    #[arg(long, value_name = "WHERE", default_value = "leader")]
    pub watch_node: String,

    /// Prefix of the idle watchers' keys (must not overlap --key-prefix).
    #[arg(long, value_name = "P", default_value = "bench-idle/")]
    pub idle_watch_prefix: String,

    /// After the load, wait at most this many seconds for the watchers to
    /// receive the last acknowledged revision.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub watch_drain: f64,

    /// Processes whose resident memory (VmRSS) to report before the run,
    /// with the watchers open, and at the end of the load.
    #[arg(long, value_name = "PID,PID,...", value_delimiter = ',')]
    pub rss_pids: Vec<u32>,

    /// Instead of running: print a Markdown table comparing the etcd and
    /// raftkv runs in FILE (one `--json` object per line), paired by
    /// workload and connection count, with raftkv/etcd ratios.
    #[arg(long, value_name = "FILE")]
    pub summarize: Option<PathBuf>,
}

/// An invalid combination of options (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// The validated plan of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What is measured.
    pub system: System,
    /// Operation mix.
    pub workload: Workload,
    /// Fraction of reads.
    pub read_ratio: f64,
    /// Connections.
    pub connections: u32,
    /// Time cap of the measured run.
    pub time_cap: Duration,
    /// Count cap of the measured run.
    pub ops_cap: u64,
    /// Unmeasured load before it.
    pub warmup: Duration,
    /// The key space.
    pub keys: Arc<Keys>,
    /// Stale reads.
    pub stale: bool,
    /// Request timeout.
    pub timeout: Duration,
    /// Seed of the key choice.
    pub seed: u64,
    /// `--rate`: time between two requests of one connection.
    pub pace: Option<Duration>,
    /// Run the stall probe.
    pub stall_probe: bool,
    /// Record every acknowledged put's revision and times (for watchers).
    pub record_puts: bool,
    /// Time zero of the recorded put and delivery times.
    pub epoch: Instant,
    /// Wire protocol.
    pub protocol: Protocol,
    /// `--protocol grpc`: HTTP/2 connections per node.
    pub grpc_conns: u32,
    /// `--protocol grpc`: Watch streams.
    pub watch_streams: u32,
}

/// Runs `raftkv bench`, printing the report (human or JSON) on stdout.
/// Fails on bad options, an unreachable cluster, or a run in which no
/// operation succeeded (after printing its report).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.summarize {
        let table = summarize_file(path)?;
        print!("{table}");
        return Ok(());
    }
    let json = args.json;
    let report = execute(args).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    if let Some(c) = report.cleanup.as_ref().filter(|c| !c.complete()) {
        bail!(
            "--cleanup did not finish: {} key(s) under {:?} may be left{}",
            c.failed,
            report.key_prefix,
            c.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    if report.successes + report.conflicts == 0 {
        bail!(
            "no operation succeeded ({} errors: {:?})",
            report.errors,
            report.errors_by_kind
        );
    }
    Ok(())
}

/// [`run`] for the command line: `global_nodes` is a `--nodes` given before
/// the subcommand; errors are printed; exit code 2 for usage errors, 3 when
/// the cluster cannot be reached or nothing succeeded.
pub async fn run_cli(mut args: BenchArgs, global_nodes: Option<&str>) -> ExitCode {
    if args.nodes.is_none() {
        args.nodes = global_nodes.map(str::to_string);
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

/// Reads `--json` reports, one per line, and builds the comparison table.
pub fn summarize_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reports = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Report = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a bench report", path.display(), n + 1))?;
        reports.push(r);
    }
    if reports.is_empty() {
        bail!("{}: no reports", path.display());
    }
    Ok(report::summary(&reports))
}

/// Validates the options into a plan.
pub fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    let secs = |name: &str, v: f64, max: f64| -> anyhow::Result<Duration> {
        if !v.is_finite() || v < 0.0 || v > max {
            return Err(usage(format!("{name} must be between 0 and {max} seconds")));
        }
        Ok(Duration::from_secs_f64(v))
    };
    let time_cap = match (args.duration, args.ops) {
        (Some(d), _) => secs("--duration", d, 86_400.0)?,
        (None, Some(_)) => Duration::from_secs_f64(DEFAULT_TIME_CAP_SECS),
        (None, None) => Duration::from_secs_f64(DEFAULT_DURATION_SECS),
    };
    if time_cap.is_zero() {
        return Err(usage("--duration must be more than 0"));
    }
    let warmup = secs("--warmup", args.warmup, 3_600.0)?;
    secs("--populate-timeout", args.populate_timeout, 86_400.0)?;
    secs("--cleanup-timeout", args.cleanup_timeout, 86_400.0)?;
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err(usage("--read-ratio must be between 0 and 1"));
    }
    if args.value_size > crate::kv::MAX_VALUE_BYTES {
        return Err(usage(format!(
            "--value-size is over the {}-byte value limit",
            crate::kv::MAX_VALUE_BYTES
        )));
    }
    let keys = Keys::new(&args.key_prefix, args.key_size, args.keys).map_err(usage)?;
    let reads = matches!(
        args.workload,
        Workload::Get | Workload::Mixed | Workload::Cas
    );
    let protocol = args.protocol.unwrap_or(match args.target {
        TargetKind::Raftkv => Protocol::Json,
        TargetKind::Etcd => Protocol::Grpc,
    });
    let grpc = protocol == Protocol::Grpc;
    if !grpc && (args.grpc_conns.is_some() || args.watch_streams.is_some()) {
        return Err(usage(
            "--grpc-conns and --watch-streams need --protocol grpc",
        ));
    }
    if args.workload == Workload::Txn && !(2..=MAX_TXN_KEYS).contains(&args.keys) {
        return Err(usage(format!(
            "--workload txn needs between 2 and {MAX_TXN_KEYS} --keys"
        )));
    }
    let watching = args.watchers > 0 || args.idle_watchers > 0;
    if watching {
        if (args.target != TargetKind::Raftkv && !grpc) || args.workload != Workload::Put {
            return Err(usage(
                "--watchers and --idle-watchers need --workload put, and --target raftkv or --protocol grpc",
            ));
        }
        if args.idle_watchers > 0
            && (args.idle_watch_prefix.is_empty()
                || args.idle_watch_prefix.starts_with(&args.key_prefix)
                || args.key_prefix.starts_with(&args.idle_watch_prefix))
        {
            return Err(usage(
                "--idle-watch-prefix must be non-empty and not overlap --key-prefix",
            ));
        }
        secs("--watch-drain", args.watch_drain, 3_600.0)?;
    }
    if reads && !args.no_populate && args.keys > MAX_POPULATE_KEYS {
        return Err(usage(format!(
            "pre-populating is limited to {MAX_POPULATE_KEYS} keys; use fewer --keys or --no-populate"
        )));
    }
    let pace = match args.rate {
        None => None,
        Some(r) if r.is_finite() && (0.001..=10_000_000.0).contains(&r) => {
            Some(Duration::from_secs_f64(args.connections as f64 / r))
        }
        Some(_) => return Err(usage("--rate must be between 0.001 and 10000000 ops/s")),
    };
    let read_ratio = match args.workload {
        Workload::Put | Workload::Cas | Workload::Txn => 0.0,
        Workload::Get => 1.0,
        Workload::Mixed => args.read_ratio,
    };
    Ok(Plan {
        system: match args.target {
            TargetKind::Raftkv => System::RaftKv,
            TargetKind::Etcd => System::Etcd,
        },
        workload: args.workload,
        read_ratio,
        connections: args.connections,
        time_cap,
        ops_cap: args.ops.unwrap_or(DEFAULT_OPS_CAP),
        warmup,
        keys: Arc::new(keys),
        stale: args.consistency == ReadConsistency::Stale,
        timeout: Duration::from_millis(args.timeout_ms),
        seed: args.seed.unwrap_or_else(rand::random),
        pace,
        stall_probe: args.stall_probe,
        record_puts: args.watchers > 0,
        epoch: Instant::now(),
        protocol,
        grpc_conns: args
            .grpc_conns
            .unwrap_or(args.connections.min(grpc::DEFAULT_MAX_GRPC_CONNS)),
        watch_streams: args.watch_streams.unwrap_or(
            (args.watchers + args.idle_watchers).clamp(1, grpc::DEFAULT_MAX_WATCH_STREAMS),
        ),
    })
}

/// Runs the bench and returns its report without printing it.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Report> {
    let plan = plan(&args)?;
    let progress = !args.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let endpoints = Arc::new(discover(&args, plan.protocol).await?);
    let connect_timeout = Duration::from_secs(2).min(plan.timeout);
    let pool = match plan.protocol {
        Protocol::Grpc => Some(
            grpc::Pool::new(endpoints.clone(), plan.grpc_conns, connect_timeout).map_err(usage)?,
        ),
        Protocol::Json => None,
    };

    let value = random_value(args.value_size, plan.seed);
    let reads = matches!(
        plan.workload,
        Workload::Get | Workload::Mixed | Workload::Cas
    );
    let populates = reads && !args.no_populate;
    let wrote_keys = populates || plan.workload != Workload::Get;
    if populates {
        let started = Instant::now();
        populate(
            &plan,
            &endpoints,
            pool.as_ref(),
            &value,
            Duration::from_secs_f64(args.populate_timeout),
        )
        .await?;
        if !args.json {
            eprintln!(
                "pre-populated {} keys in {:.1} s",
                plan.keys.count,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let mod_cache =
        (plan.workload == Workload::Txn).then(|| Arc::new(target::ModCache::new(plan.keys.count)));
    let mut sessions = Vec::with_capacity(plan.connections as usize);
    for i in 0..plan.connections as usize {
        // Leader routing: every connection starts on the leader (listed
        // first); all: connection i on node i mod n.
        // gRPC: client i on connection i mod N of its node (all: the
        // clients of one node are every n-th).
        let (first, slot) = match args.target_nodes {
            TargetNodes::Leader => (0, i),
            TargetNodes::All => (i, i / endpoints.len()),
        };
        let session = new_session(
            &plan,
            &endpoints,
            pool.as_ref(),
            (first, slot),
            &value,
            plan.stale,
            connect_timeout,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        sessions.push(match &mod_cache {
            Some(c) => session.with_mod_cache(c.clone()),
            None => session,
        });
    }
    let mut used: Vec<String> = Vec::new();
    for s in &sessions {
        if !used.iter().any(|u| u == s.endpoint()) {
            used.push(s.endpoint().to_string());
        }
    }

    let mut rss: Vec<machine::RssReport> = args
        .rss_pids
        .iter()
        .map(|&pid| machine::RssReport {
            pid,
            ..Default::default()
        })
        .collect();
    rss.iter_mut().for_each(|r| r.sample(|r| &mut r.before_kib));
    let watchers = if args.watchers > 0 || args.idle_watchers > 0 {
        let spec = watch_spec(&args, &plan, &endpoints).await?;
        if !args.json {
            eprintln!(
                "opening {} active and {} idle watcher(s) on {}{}",
                spec.active,
                spec.idle,
                spec.endpoints.join(","),
                match plan.protocol {
                    Protocol::Grpc => format!(" over {} gRPC Watch stream(s)", plan.watch_streams),
                    Protocol::Json => String::new(),
                }
            );
        }
        let set = match plan.protocol {
            Protocol::Json => Watchers::Sse(watch::WatchSet::open(spec).await),
            Protocol::Grpc => {
                let watch_pool = grpc::Pool::new(
                    Arc::new(spec.endpoints.clone()),
                    plan.grpc_conns,
                    connect_timeout,
                )
                .map_err(usage)?;
                Watchers::Grpc(
                    grpc::GrpcWatchSet::open(spec, plan.watch_streams, &watch_pool).await,
                )
            }
        };
        rss.iter_mut()
            .for_each(|r| r.sample(|r| &mut r.watching_kib));
        Some(set)
    } else {
        None
    };

    let outcome = runner::run(&plan, sessions, &args.pids, progress).await;
    rss.iter_mut().for_each(|r| r.sample(|r| &mut r.end_kib));
    let watch = match watchers {
        Some(set) => {
            let puts = outcome
                .as_ref()
                .map(|o| o.stats.puts.as_slice())
                .unwrap_or(&[]);
            let last = puts.iter().map(|p| p.revision).max().unwrap_or(0);
            let started = Instant::now();
            let drained = set
                .drain(last, Duration::from_secs_f64(args.watch_drain))
                .await;
            let drain_s = started.elapsed().as_secs_f64();
            Some(set.finish(puts, drained, drain_s).await)
        }
        None => None,
    };
    let outcome = outcome?;
    let stats = &outcome.stats;
    let ops = stats.ops();
    let completed = stats.successes + stats.conflicts;
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let cpu = (!args.pids.is_empty()).then(|| {
        let delta = outcome.cpu_before.delta(&outcome.cpu_after);
        let mut r = report::CpuReport {
            pids: args.pids.clone(),
            ..Default::default()
        };
        for (pid, d) in delta {
            match d {
                Ok(ms) => {
                    r.cpu_ms += ms;
                    r.per_pid.insert(pid, ms);
                }
                Err(e) => r.errors.push(e),
            }
        }
        r.cpu_ms_per_op = if ops > 0 { r.cpu_ms / ops as f64 } else { 0.0 };
        r.cores_busy = r.cpu_ms / 1000.0 / secs;
        r
    });
    let client_cpu_ms_per_op = match (outcome.self_cpu_ms, ops) {
        (Some(ms), n) if n > 0 => Some(ms / n as f64),
        _ => None,
    };
    let cleanup = if args.cleanup {
        Some(
            cleanup(
                &plan,
                &endpoints,
                pool.as_ref(),
                Duration::from_secs_f64(args.cleanup_timeout),
            )
            .await,
        )
    } else {
        None
    };
    Ok(Report {
        target: match plan.system {
            System::RaftKv => "raftkv",
            System::Etcd => "etcd",
        }
        .into(),
        protocol: plan.protocol.name().into(),
        grpc_conns: pool.as_ref().map(|p| p.per_node() as u32),
        workload: format!("{:?}", plan.workload).to_lowercase(),
        connections: plan.connections,
        target_nodes: format!("{:?}", args.target_nodes).to_lowercase(),
        consistency: format!("{:?}", args.consistency).to_lowercase(),
        read_ratio: plan.read_ratio,
        endpoints: used,
        keys: plan.keys.count,
        key_size: args.key_size,
        value_size: args.value_size,
        duration_s: secs,
        stopped_by: if outcome.hit_ops_cap { "ops" } else { "time" }.into(),
        ops,
        successes: stats.successes,
        conflicts: stats.conflicts,
        errors: stats.error_count(),
        errors_by_kind: stats.errors.iter().map(|(k, n)| (k.name(), *n)).collect(),
        reads: stats.read_ops,
        writes: stats.write_ops,
        throughput_ops_s: completed as f64 / secs,
        latency_ms: report::Latency::of(&stats.all),
        read_latency_ms: report::Latency::of(&stats.reads),
        write_latency_ms: report::Latency::of(&stats.writes),
        cpu,
        client_cpu_ms_per_op,
        offered_rate_ops_s: args.rate,
        steal_pct: outcome.steal_pct,
        stalls: outcome.stalls.clone(),
        key_prefix: args.key_prefix.clone(),
        wrote_keys,
        cleanup,
        watch,
        rss,
    })
}

/// The watchers of a run: SSE streams (JSON) or gRPC Watch streams.
enum Watchers {
    Sse(watch::WatchSet),
    Grpc(grpc::GrpcWatchSet),
}

impl Watchers {
    async fn drain(&self, revision: i64, limit: Duration) -> bool {
        match self {
            Watchers::Sse(w) => w.drain(revision, limit).await,
            Watchers::Grpc(w) => w.drain(revision, limit).await,
        }
    }

    async fn finish(
        self,
        puts: &[watch::PutRecord],
        drained: bool,
        drain_s: f64,
    ) -> watch::WatchReport {
        match self {
            Watchers::Sse(w) => w.finish(puts, drained, drain_s).await,
            Watchers::Grpc(w) => w.finish(puts, drained, drain_s).await,
        }
    }
}

/// A session starting on node `at.0`: JSON, or with `pool` gRPC on the
/// pool's connection `at.1` of that node.
fn new_session(
    plan: &Plan,
    endpoints: &Arc<Vec<String>>,
    pool: Option<&grpc::Pool>,
    at: (usize, usize),
    value: &str,
    stale: bool,
    connect_timeout: Duration,
) -> Result<Session, String> {
    let (first, slot) = at;
    let session = Session::new(
        plan.system,
        endpoints.clone(),
        first,
        plan.keys.clone(),
        value,
        stale,
        plan.timeout,
        connect_timeout,
    )?;
    Ok(match pool {
        Some(p) => session.with_grpc(grpc::GrpcSession::new(
            p.clone(),
            first,
            slot,
            plan.keys.clone(),
            value,
            stale,
            plan.timeout,
        )),
        None => session,
    })
}

/// Where the watchers go and from which revision (see [`watch`]).
async fn watch_spec(
    args: &BenchArgs,
    plan: &Plan,
    endpoints: &[String],
) -> anyhow::Result<watch::WatchSpec> {
    let nodes = node_list(args)?;
    let leader = || async {
        if args.target_nodes == TargetNodes::Leader {
            return Ok::<_, anyhow::Error>(endpoints[0].clone());
        }
        if args.target == TargetKind::Etcd {
            return find_etcd_leader(&nodes, plan.protocol).await;
        }
        let client = crate::client::Client::new(crate::client::ClientConfig {
            total_timeout: Duration::from_secs(15),
            ..crate::client::ClientConfig::with_nodes(nodes.clone())
        })
        .map_err(|e| usage(e.to_string()))?;
        let info = client.leader().await.context("finding the leader")?;
        crate::client::normalize_url(&info.leader_url)
            .map_err(|e| anyhow::anyhow!("the leader's URL: {e}"))
    };
    let on =
        match args.watch_node.as_str() {
            "all" => nodes.clone(),
            "leader" => vec![leader().await?],
            "follower" => {
                let l = leader().await?;
                let f = nodes
                    .iter()
                    .find(|n| **n != l)
                    .ok_or_else(|| usage("--watch-node follower: --nodes lists only the leader"))?;
                vec![f.clone()]
            }
            url => vec![crate::client::normalize_url(url)
                .map_err(|e| usage(format!("--watch-node: {e}")))?],
        };
    // Watch from the revision after the current one, so a watcher that
    // registers while the first puts land still gets them (from history).
    let revision = match plan.protocol {
        Protocol::Json => current_revision(&on[0], &args.key_prefix, plan.timeout).await,
        Protocol::Grpc => grpc::current_revision(&on[0], &args.key_prefix, plan.timeout)
            .await
            .map_err(|e| anyhow::anyhow!(e)),
    };
    let start_revision = match revision {
        Ok(r) => r + 1,
        Err(e) => {
            if !args.json {
                eprintln!("warning: current revision unknown ({e}); watching from now");
            }
            0
        }
    };
    Ok(watch::WatchSpec {
        endpoints: on,
        active: args.watchers,
        idle: args.idle_watchers,
        prefix: args.key_prefix.clone(),
        idle_prefix: args.idle_watch_prefix.clone(),
        start_revision,
        open_timeout: Duration::from_secs(10).max(plan.timeout),
        epoch: plan.epoch,
    })
}

/// The store's current revision as `endpoint` reports it (the header of a
/// one-key, keys-only range read under `prefix`).
async fn current_revision(endpoint: &str, prefix: &str, timeout: Duration) -> anyhow::Result<i64> {
    #[derive(serde::Deserialize)]
    struct Header {
        revision: i64,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        header: Header,
    }
    let mut conn = http::Conn::new(endpoint, timeout, Duration::from_secs(2))
        .map_err(|e| anyhow::anyhow!(e))?;
    let path = format!(
        "/kv?prefix={}&limit=1&keys_only=true",
        crate::client::encode_component(prefix)
    );
    match conn.request("GET", &path, None).await? {
        200 => Ok(serde_json::from_slice::<Answer>(conn.body())
            .context("reading the header of a range answer")?
            .header
            .revision),
        code => bail!("GET /kv answered HTTP {code}"),
    }
}

/// `--cleanup`: deletes every key of the key space once, spread over up to
/// 64 connections (a missing key counts as absent), retrying a failed delete
/// a few times, within `limit`.
async fn cleanup(
    plan: &Plan,
    endpoints: &Arc<Vec<String>>,
    pool: Option<&grpc::Pool>,
    limit: Duration,
) -> report::CleanupReport {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    let started = Instant::now();
    let deleted = Arc::new(AtomicU64::new(0));
    let absent = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let tasks = (plan.connections as u64).clamp(16, 64).min(plan.keys.count);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let session = new_session(
            plan,
            endpoints,
            pool,
            (0, t as usize),
            "",
            false,
            Duration::from_secs(2),
        );
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                first_error.lock().expect("error slot").get_or_insert(e);
                break;
            }
        };
        let (keys, deleted, absent, first_error) = (
            plan.keys.clone(),
            deleted.clone(),
            absent.clone(),
            first_error.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < keys.count {
                let mut tries = 0;
                loop {
                    match session.delete(i).await {
                        Ok(true) => {
                            deleted.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(false) => {
                            absent.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if tries >= 5 => {
                            first_error
                                .lock()
                                .expect("error slot")
                                .get_or_insert(format!("deleting key {:?}: {e:?}", keys.key(i)));
                            return;
                        }
                        Err(report::ErrorKind::Connect) => session.next_endpoint(),
                        Err(_) => {}
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                i += tasks;
            }
        }));
    }
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    if tokio::time::timeout(limit, futures::future::join_all(handles))
        .await
        .is_err()
    {
        for a in aborts {
            a.abort();
        }
        first_error
            .lock()
            .expect("error slot")
            .get_or_insert(format!(
                "stopped at the --cleanup-timeout of {:.0} s",
                limit.as_secs_f64()
            ));
    }
    let deleted = deleted.load(Ordering::Relaxed);
    let absent = absent.load(Ordering::Relaxed);
    let error = first_error.lock().expect("error slot").clone();
    report::CleanupReport {
        deleted,
        absent,
        failed: plan.keys.count.saturating_sub(deleted + absent),
        seconds: started.elapsed().as_secs_f64(),
        error,
    }
}

/// A value of `size` printable bytes (alphanumeric: no JSON escaping, and
/// not trivially compressible).
fn random_value(size: usize, seed: u64) -> String {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed_da7a);
    (0..size)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

/// The nodes to send requests to: with leader routing the leader first,
/// then the others (used only if the leader cannot be reached).
async fn discover(args: &BenchArgs, protocol: Protocol) -> anyhow::Result<Vec<String>> {
    match args.target {
        TargetKind::Raftkv => {
            let nodes = node_list(args)?;
            if args.target_nodes == TargetNodes::All {
                return Ok(nodes);
            }
            let client = crate::client::Client::new(crate::client::ClientConfig {
                total_timeout: Duration::from_secs(15),
                ..crate::client::ClientConfig::with_nodes(nodes.clone())
            })
            .map_err(|e| usage(e.to_string()))?;
            let leader = client
                .leader()
                .await
                .context("finding the RaftKV leader (is the cluster running? see --nodes)")?;
            // An empty or unusable leader URL: start on the nodes in order
            // (a follower forwards to the leader).
            let url = crate::client::normalize_url(&leader.leader_url).ok();
            Ok(leader_first(nodes, url))
        }
        TargetKind::Etcd => {
            let endpoints = node_list(args)?;
            if args.target_nodes == TargetNodes::All {
                return Ok(endpoints);
            }
            let leader = find_etcd_leader(&endpoints, protocol).await?;
            Ok(leader_first(endpoints, Some(leader)))
        }
    }
}

/// The target's nodes: RaftKV's `--nodes` (or `RAFTKV_NODES`, or the
/// default), etcd's `--endpoints`.
fn node_list(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    match args.target {
        TargetKind::Raftkv => {
            let from_env = std::env::var("RAFTKV_NODES").ok();
            let spec = args
                .nodes
                .as_deref()
                .or(from_env.as_deref().filter(|s| !s.trim().is_empty()))
                .unwrap_or(crate::client::DEFAULT_NODES);
            crate::client::parse_nodes(spec).map_err(|e| usage(format!("--nodes: {e}")))
        }
        TargetKind::Etcd => crate::client::parse_nodes(&args.endpoints)
            .map_err(|e| usage(format!("--endpoints: {e}"))),
    }
}

/// etcd's leader, asked in the protocol of the run (a gRPC-only server
/// has no JSON gateway to ask).
async fn find_etcd_leader(endpoints: &[String], protocol: Protocol) -> anyhow::Result<String> {
    match protocol {
        Protocol::Json => etcd_leader(endpoints).await,
        Protocol::Grpc => grpc::leader(endpoints, Duration::from_secs(3))
            .await
            .map_err(|e| anyhow::anyhow!(e)),
    }
}

fn leader_first(mut nodes: Vec<String>, leader: Option<String>) -> Vec<String> {
    if let Some(l) = leader {
        nodes.retain(|n| *n != l);
        nodes.insert(0, l);
    }
    nodes
}

/// The endpoint of etcd's leader: the member whose own id is the leader id
/// it reports (`/v3/maintenance/status`), retried for a few seconds while an
/// election may be running.
async fn etcd_leader(endpoints: &[String]) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("no endpoint answered");
    loop {
        for e in endpoints {
            let mut conn = http::Conn::new(e, Duration::from_secs(3), Duration::from_secs(1))
                .map_err(|m| usage(format!("--endpoints: {m}")))?;
            match conn.request("POST", etcd::STATUS_PATH, Some(b"{}")).await {
                Ok(200) => match etcd::parse_status(conn.body()) {
                    Ok((member, leader)) if !member.is_empty() && member == leader => {
                        return Ok(e.clone());
                    }
                    Ok(_) => last = format!("{e}: not the leader"),
                    Err(m) => last = format!("{e}: {m}"),
                },
                Ok(code) => last = format!("{e}: HTTP {code}"),
                Err(err) => last = format!("{e}: {err}"),
            }
        }
        if Instant::now() > deadline {
            bail!("finding the etcd leader: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes every key once (bounded by the key count and `limit`), spread
/// over up to 64 connections, retrying a failed write a few times.
async fn populate(
    plan: &Plan,
    endpoints: &Arc<Vec<String>>,
    pool: Option<&grpc::Pool>,
    value: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let tasks = (plan.connections as u64).clamp(16, 64).min(plan.keys.count);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut session = new_session(
            plan,
            endpoints,
            pool,
            (0, t as usize),
            value,
            false,
            Duration::from_secs(2),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let keys = plan.keys.clone();
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < keys.count {
                let mut tries = 0;
                loop {
                    match session.put(i).await {
                        report::Outcome::Ok => break,
                        other if tries >= 5 => {
                            return Err(format!("writing key {:?}: {other:?}", keys.key(i)))
                        }
                        report::Outcome::Error(report::ErrorKind::Connect) => {
                            session.next_endpoint()
                        }
                        _ => {}
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                i += tasks;
            }
            Ok(())
        }));
    }
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let all = futures::future::join_all(handles);
    let results = match tokio::time::timeout(limit, all).await {
        Ok(r) => r,
        Err(_) => {
            for a in aborts {
                a.abort();
            }
            bail!(
                "pre-populating {} keys took over {:.0} s (see --populate-timeout, --keys)",
                plan.keys.count,
                limit.as_secs_f64()
            )
        }
    };
    for r in results {
        r.context("a populate task failed")?
            .map_err(|e| anyhow::anyhow!("pre-populating: {e}"))?;
    }
    Ok(())
}
