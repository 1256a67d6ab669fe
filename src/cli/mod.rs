//! The `raftkv` command line: the node daemon (`start`), a local cluster
//! launcher (`local-cluster`) and the client commands.
//!
//! `anyhow` is used here and in `main.rs` only; the library modules return
//! typed errors.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub mod client_cmds;
pub mod local_cluster;
pub mod output;
pub mod signals;
pub mod snapshot;
pub mod start;
pub mod txn_text;
pub mod v3_cmds;

pub use start::{parse_host_port, parse_node_id, parse_peer_list, PeerList, StartArgs};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: key not found, or a compare-and-swap precondition failed.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit status: usage error (bad flags or arguments, rejected input).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the cluster could not be reached or has no leader.
pub const EXIT_UNAVAILABLE: u8 = 3;

const EXAMPLES: &str = "\
Getting started:
  raftkv local-cluster                 # three nodes on 127.0.0.1:8001-8003, data in ./data
  raftkv put greeting hello            # OK (index 2) on a fresh cluster
  raftkv get greeting                  # greeting = hello
  raftkv list --prefix gr              # greeting = hello
  raftkv put notes --file notes.txt    # a value from a file (`-` = stdin)
  raftkv delete greeting               # OK (index 4)
  raftkv get greeting --rev 2          # greeting = hello (as of revision 2)
  raftkv list --prefix user/ --rev 9 --keys-only
  raftkv delete --prefix tmp/          # deleted 3 (index 10)
  printf '\nput a 1\n' | raftkv txn    # SUCCESS (no compares; see txn --help)
  raftkv watch --prefix user/          # one line per change, until Ctrl-C
  raftkv compact 8                     # compacted revision 8
  raftkv status                        # a table of every node
  raftkv leader                        # node-1 http://127.0.0.1:8001
  raftkv snapshot save backup.snap     # a verified backup of one node's state

Client commands talk to --nodes (env RAFTKV_NODES, default
http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003), find the
leader themselves, and retry on another node when one is down, with backoff,
until --timeout-ms (env RAFTKV_TIMEOUT_MS, default 15000) has passed.

Indexes are revisions: every change to the store creates one, and a key's
index is the revision that last modified it (its mod revision).

Exit codes: 0 success, 1 key not found / precondition failed, 2 usage error
or refused request (e.g. a compacted revision), 3 cluster unavailable.

Run `raftkv <COMMAND> --help` for the options and examples of each command.";

/// The `raftkv` command line.
#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "RaftKV: a strongly consistent distributed key-value store built on Raft",
    after_help = EXAMPLES,
)]
pub struct Cli {
    /// Node list for client commands, accepted before the subcommand too
    /// (`raftkv --nodes URL,URL get k`).
    #[arg(long, value_name = "URL,URL,...", hide = true)]
    pub nodes: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (the server daemon).
    Start(StartArgs),
    /// Start a cluster of N nodes on this machine (stopped with Ctrl-C).
    LocalCluster(local_cluster::LocalClusterArgs),
    /// Set a key: prints "OK (index N)".
    Put(client_cmds::PutArgs),
    /// Read a key (linearizable): prints "KEY = VALUE".
    Get(client_cmds::GetArgs),
    /// Delete a key: prints "OK (index N)".
    Delete(client_cmds::DeleteArgs),
    /// List keys, sorted: one "KEY = VALUE" per line.
    List(client_cmds::ListArgs),
    /// Run a transaction read from stdin: prints SUCCESS or FAILURE and each op's result.
    Txn(v3_cmds::TxnArgs),
    /// Discard the history before a revision: prints "compacted revision R".
    Compact(v3_cmds::CompactArgs),
    /// Print changes to a key, a prefix or a range, one event per line.
    Watch(v3_cmds::WatchArgs),
    /// Show every node's role, term, leader and indexes as a table.
    Status(client_cmds::StatusArgs),
    /// Print the leader's id and URL.
    Leader(client_cmds::LeaderArgs),
    /// Check that one node is alive (for container health checks).
    Health(client_cmds::HealthArgs),
    /// Measure throughput and latency of RaftKV (or etcd, --target etcd).
    Bench(crate::bench::BenchArgs),
    /// Save a node's state to a file, inspect a file, or restore a new cluster from one.
    Snapshot(snapshot::SnapshotArgs),
}

/// Parses the process arguments, runs the command and returns the exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = cli.nodes.as_deref();
    if !matches!(cli.command, Command::Start(_)) {
        // Client commands and the launcher keep stderr for real problems.
        init_logging("warn");
    }
    match cli.command {
        Command::Start(args) => run_start(args).await,
        Command::LocalCluster(args) => match local_cluster::run(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Put(a) => client_cmds::put(a, global).await,
        Command::Get(a) => client_cmds::get(a, global).await,
        Command::Delete(a) => client_cmds::delete(a, global).await,
        Command::List(a) => client_cmds::list(a, global).await,
        Command::Txn(a) => v3_cmds::txn(a, global).await,
        Command::Compact(a) => v3_cmds::compact(a, global).await,
        Command::Watch(a) => v3_cmds::watch(a, global).await,
        Command::Status(a) => client_cmds::status(a, global).await,
        Command::Leader(a) => client_cmds::leader(a, global).await,
        Command::Health(a) => client_cmds::health(a).await,
        Command::Bench(a) => crate::bench::run_cli(a, global).await,
        Command::Snapshot(a) => snapshot::run(a).await,
    }
}

fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Several subcommands call this at most once per process; ignore the
    // "already set" error rather than panicking in a test harness.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: local-cluster sends logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Reports a usage error of `subcommand` the way clap does (message, usage
/// line, exit code 2).
pub(crate) fn usage_error(subcommand: &str, message: impl std::fmt::Display) -> ExitCode {
    let mut cli = Cli::command();
    cli.build();
    let err = match cli.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(clap::error::ErrorKind::ValueValidation, message),
        None => cli.error(clap::error::ErrorKind::ValueValidation, message),
    };
    let _ = err.print();
    ExitCode::from(EXIT_USAGE)
}

async fn run_start(args: StartArgs) -> ExitCode {
    let config = match args.to_node_config() {
        Ok(c) => c,
        Err(msg) => return usage_error("start", msg),
    };
    init_logging("info");
    let shutdown = match signals::shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(node_id = %config.node_id, port = config.port, data_dir = %config.data_dir.display(),
        peers = config.peers.len(), "starting node");
    match crate::daemon::run(config, shutdown).await {
        Ok(()) => {
            tracing::info!("node stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "node stopped with an error");
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap prints `[env: NAME=VALUE]`, which reads `[env: NAME=]` when the
    /// variable is not set; every flag with a variable hides the value.
    #[test]
    fn every_env_flag_hides_its_value_in_help() {
        fn check(cmd: &clap::Command, path: &str, seen: &mut usize) {
            for arg in cmd.get_arguments() {
                if arg.get_env().is_some() {
                    *seen += 1;
                    assert!(
                        arg.is_hide_env_values_set(),
                        "{path} --{}: add hide_env_values = true",
                        arg.get_id()
                    );
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut seen = 0;
        check(&Cli::command(), "raftkv", &mut seen);
        assert!(seen > 10, "only {seen} flags with an environment variable");
    }
}
