//! `raftkv start`: the node daemon's command line.
//!
//! Every flag can also come from a `RAFTKV_<FLAG>` environment variable (the
//! docker-compose file configures nodes that way), and every value is checked
//! here, before the node touches its data dir, so that a typo is a usage error
//! (exit 2) rather than a half-started node.

use std::path::PathBuf;

use clap::Args;

use crate::node::compaction::AutoCompaction;
use crate::node::{NodeConfig, PeerSpec};

/// Flags of `raftkv start`.
#[derive(Args, Clone, Debug)]
#[command(after_help = START_EXAMPLES)]
pub struct StartArgs {
    /// This node's id, unique in the cluster (e.g. node-1).
    #[arg(long, env = "RAFTKV_NODE_ID", hide_env_values = true, value_parser = parse_node_id)]
    pub node_id: String,

    /// Port for the client API and the Raft RPCs.
    #[arg(long, env = "RAFTKV_PORT", hide_env_values = true, default_value_t = crate::node::DEFAULT_PORT)]
    pub port: u16,

    /// The other members: "node-2=127.0.0.1:8002,node-3=127.0.0.1:8003", or
    /// the bare form "localhost:8002,localhost:8003". Empty or absent: a
    /// one-node cluster that commits on its own.
    #[arg(long, env = "RAFTKV_PEERS", hide_env_values = true, value_parser = parse_peer_list)]
    pub peers: Option<PeerList>,

    /// Address to bind (0.0.0.0 to listen on every interface, as in a container).
    #[arg(
        long,
        env = "RAFTKV_HOST",
        hide_env_values = true,
        default_value = "127.0.0.1"
    )]
    pub host: String,

    /// host:port that peers and clients are told to use [default: HOST:PORT].
    #[arg(long, env = "RAFTKV_ADVERTISE", hide_env_values = true, value_parser = parse_host_port)]
    pub advertise: Option<String>,

    /// Where this node keeps its database [default: ./data/NODE_ID].
    #[arg(long, env = "RAFTKV_DATA_DIR", hide_env_values = true)]
    pub data_dir: Option<PathBuf>,

    /// Interval between leader heartbeats, in milliseconds.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", hide_env_values = true, default_value_t = crate::node::DEFAULT_HEARTBEAT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,

    /// Minimum election timeout in milliseconds; each timeout is drawn at
    /// random from [N, 2N).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", hide_env_values = true, default_value_t = crate::node::DEFAULT_ELECTION_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout_ms: u64,

    /// Entries applied since the last snapshot before a new snapshot is taken
    /// and the log is compacted (0 = never).
    #[arg(long, env = "RAFTKV_SNAPSHOT_THRESHOLD", hide_env_values = true,
          default_value_t = crate::node::DEFAULT_SNAPSHOT_THRESHOLD)]
    pub snapshot_threshold: u64,

    /// Cluster id, carried by every Raft RPC and recorded in the data dir; a
    /// node rejects RPCs from another cluster and refuses another cluster's
    /// data dir.
    #[arg(long, env = "RAFTKV_CLUSTER_ID", hide_env_values = true, value_parser = parse_cluster_id)]
    pub cluster_id: Option<String>,

    /// How long a client request may wait for its commit before the node
    /// answers 503, in milliseconds.
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", hide_env_values = true, default_value_t = crate::node::DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// sled's page cache, in MiB. The node's resident memory is a multiple
    /// of it (sled undercounts what its cache holds); lower it to bound
    /// memory, raise it when the hot data set does not fit.
    #[arg(long, env = "RAFTKV_CACHE_MB", hide_env_values = true, default_value_t = crate::node::DEFAULT_CACHE_MB,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub cache_mb: u64,

    /// Start serving before every key-value record has been verified, and
    /// verify them in the background (the node stops if one is damaged).
    /// Restart then costs O(log tail) instead of O(data); off by default,
    /// because a node should never serve on damaged state.
    #[arg(long, env = "RAFTKV_KV_CHECK_IN_BACKGROUND", hide_env_values = true)]
    pub kv_check_in_background: bool,

    /// How the leader compacts the key-value history on its own (etcd's
    /// flag): "revision" keeps the last N revisions, "periodic" keeps the
    /// history of the last DURATION. Off unless a retention is given.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_MODE", hide_env_values = true, default_value = "periodic",
          value_parser = ["revision", "periodic"])]
    pub auto_compaction_mode: String,

    /// What auto-compaction keeps: a revision count ("revision" mode) or a
    /// duration such as 30m, 1h, 90s, or a bare number of hours ("periodic"
    /// mode). 0 (the default) turns it off.
    #[arg(
        long,
        env = "RAFTKV_AUTO_COMPACTION_RETENTION",
        hide_env_values = true,
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
}

const START_EXAMPLES: &str = "\
Examples:
  # one node of a three-node cluster
  raftkv start --node-id node-1 --port 8001 \\
      --peers \"node-2=127.0.0.1:8002,node-3=127.0.0.1:8003\" --data-dir ./data/node-1

  # a single node that commits on its own
  raftkv start --node-id solo --port 9000

  # the same by environment (as in docker-compose.yml)
  RAFTKV_NODE_ID=node-1 RAFTKV_PORT=8001 RAFTKV_PEERS=node-2=node-2:8002 raftkv start

Logs go to stderr; set the level with RUST_LOG (e.g. RUST_LOG=debug).
SIGTERM or Ctrl-C stops the node cleanly.";

/// A parsed `--peers` value (a newtype so clap treats it as one value, not a
/// list of repeated flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerList(pub Vec<PeerSpec>);

impl StartArgs {
    /// Checks the flags against each other and builds the node's configuration.
    ///
    /// Errors are usage errors: the message says which flag is wrong and why.
    pub fn to_node_config(&self) -> Result<NodeConfig, String> {
        if self.heartbeat_ms >= self.election_timeout_ms {
            return Err(format!(
                "--heartbeat-ms ({}) must be smaller than --election-timeout-ms ({}); \
                 a follower would start elections between heartbeats",
                self.heartbeat_ms, self.election_timeout_ms
            ));
        }
        if self.host.trim().is_empty() {
            return Err("--host must not be empty".into());
        }
        let given = self.peers.as_ref().map(|p| p.0.as_slice()).unwrap_or(&[]);
        let mut peers = Vec::with_capacity(given.len());
        for peer in given {
            // etcd-style member lists name every member, this node included;
            // accept that and drop our own entry instead of failing.
            if peer.name.as_deref() == Some(self.node_id.as_str()) {
                continue;
            }
            peers.push(peer.clone());
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data").join(&self.node_id));
        let auto_compaction =
            AutoCompaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
                .map_err(|e| format!("--auto-compaction-retention: {e}"))?;
        Ok(NodeConfig {
            node_id: self.node_id.clone(),
            host: self.host.clone(),
            port: self.port,
            advertise: self.advertise.clone(),
            peers,
            data_dir,
            cluster_id: self.cluster_id.clone(),
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_threshold: self.snapshot_threshold,
            request_timeout_ms: self.request_timeout_ms,
            cache_mb: self.cache_mb,
            kv_check_in_background: self.kv_check_in_background,
            auto_compaction,
        })
    }
}

/// Node ids are names used in peer lists, data dirs and URLs, so keep them to
/// a safe alphabet.
pub fn parse_node_id(s: &str) -> Result<String, String> {
    check_name(s, "node id")
}

fn parse_cluster_id(s: &str) -> Result<String, String> {
    check_name(s, "cluster id")
}

fn check_name(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if s.len() > 128 {
        return Err(format!("{what} is longer than 128 bytes"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{what} {s:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(s.to_string())
}

/// Parses `host:port` (IPv6 hosts in brackets: `[::1]:8002`). An `http://`
/// prefix is tolerated and removed, since people paste URLs.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    let addr = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port (the port is missing)"))?;
    if host.is_empty() {
        return Err(format!("{s:?} is not host:port (the host is missing)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{s:?}: write IPv6 addresses in brackets, e.g. [::1]:8002"
        ));
    }
    if host.contains(['/', ',', '=', ' ']) {
        return Err(format!("{s:?} is not host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(format!("{s:?}: port {port:?} is not a number in 1..=65535")),
    }
}

/// Parses `--peers`: comma-separated `name=host:port` or bare `host:port`
/// entries (both forms may be mixed). Empty means no peers. Duplicate names
/// or addresses are rejected.
pub fn parse_peer_list(s: &str) -> Result<PeerList, String> {
    let mut peers: Vec<PeerSpec> = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            continue; // tolerate "a,b," and a blank variable
        }
        let peer = match item.split_once('=') {
            Some((name, addr)) => PeerSpec {
                name: Some(check_name(name.trim(), "peer name")?),
                addr: parse_host_port(addr)?,
            },
            None => PeerSpec {
                name: None,
                addr: parse_host_port(item)?,
            },
        };
        if let Some(dup) = peers
            .iter()
            .find(|p| p.addr == peer.addr || (p.name.is_some() && p.name == peer.name))
        {
            return Err(format!(
                "peer {item:?} repeats {}",
                dup.name.as_deref().unwrap_or(&dup.addr)
            ));
        }
        peers.push(peer);
    }
    Ok(PeerList(peers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn named(name: &str, addr: &str) -> PeerSpec {
        PeerSpec {
            name: Some(name.into()),
            addr: addr.into(),
        }
    }

    #[test]
    fn peers_named_form() {
        let p = parse_peer_list("node-2=127.0.0.1:8002,node-3=127.0.0.1:8003").unwrap();
        assert_eq!(
            p.0,
            vec![
                named("node-2", "127.0.0.1:8002"),
                named("node-3", "127.0.0.1:8003")
            ]
        );
    }

    #[test]
    fn peers_bare_form() {
        let p = parse_peer_list("localhost:8002, localhost:8003").unwrap();
        assert_eq!(p.0.len(), 2);
        assert_eq!(p.0[0].name, None);
        assert_eq!(p.0[1].addr, "localhost:8003");
    }

    #[test]
    fn peers_empty_is_single_node() {
        assert!(parse_peer_list("").unwrap().0.is_empty());
        assert!(parse_peer_list("  ").unwrap().0.is_empty());
    }

    #[test]
    fn peers_errors_are_explained() {
        for bad in [
            "node-2=127.0.0.1",
            "localhost",
            "localhost:0",
            "localhost:99999",
            "a=:8002",
            "=localhost:8002",
            "a=localhost:8002,a=localhost:8003",
            "localhost:8002,localhost:8002",
            "::1:8002",
        ] {
            assert!(parse_peer_list(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse_host_port("[::1]:8002").unwrap(), "[::1]:8002");
        assert_eq!(parse_host_port("http://h:1/").unwrap(), "h:1");
    }

    #[test]
    fn config_defaults_and_self_entry() {
        let cli = crate::cli::Cli::try_parse_from([
            "raftkv",
            "start",
            "--node-id",
            "node-1",
            "--peers",
            "node-1=127.0.0.1:8001,node-2=127.0.0.1:8002",
        ])
        .unwrap();
        let crate::cli::Command::Start(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        let cfg = args.to_node_config().unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("./data/node-1"));
        assert_eq!(cfg.peers, vec![named("node-2", "127.0.0.1:8002")]);
        assert_eq!(cfg.host, "127.0.0.1");
        assert!(cfg.heartbeat_ms <= 100);
        assert_eq!(cfg.election_timeout_ms, 1000);
        assert_eq!(cfg.snapshot_threshold, 10_000);
        assert_eq!(cfg.request_timeout_ms, 5000);
        assert_eq!(cfg.advertise, None);
    }

    #[test]
    fn heartbeat_must_be_below_election_timeout() {
        let cli = crate::cli::Cli::try_parse_from([
            "raftkv",
            "start",
            "--node-id",
            "n",
            "--heartbeat-ms",
            "500",
            "--election-timeout-ms",
            "400",
        ])
        .unwrap();
        let crate::cli::Command::Start(args) = cli.command else {
            panic!()
        };
        assert!(args
            .to_node_config()
            .unwrap_err()
            .contains("--heartbeat-ms"));
    }

    #[test]
    fn cache_mb_sets_the_store_cache_and_rejects_zero() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["raftkv", "start", "--node-id", "n"];
            argv.extend_from_slice(extra);
            crate::cli::Cli::try_parse_from(argv)
        };
        let config = |cli: crate::cli::Cli| {
            let crate::cli::Command::Start(args) = cli.command else {
                panic!("parsed {:?}", cli.command)
            };
            args.to_node_config().unwrap()
        };
        assert_eq!(config(parse(&[]).unwrap()).cache_mb, 64);
        assert_eq!(config(parse(&["--cache-mb", "32"]).unwrap()).cache_mb, 32);
        assert_eq!(parse(&["--cache-mb", "0"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--cache-mb", "lots"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn auto_compaction_flags_follow_etcd() {
        let config = |extra: &[&str]| {
            let mut argv = vec!["raftkv", "start", "--node-id", "n"];
            argv.extend_from_slice(extra);
            let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
            let crate::cli::Command::Start(args) = cli.command else {
                panic!("parsed {:?}", cli.command)
            };
            args.to_node_config().map(|c| c.auto_compaction)
        };
        assert_eq!(config(&[]), Ok(AutoCompaction::Off));
        assert_eq!(
            config(&["--auto-compaction-retention", "1"]),
            Ok(AutoCompaction::Periodic(std::time::Duration::from_secs(
                3600
            )))
        );
        assert_eq!(
            config(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000"
            ]),
            Ok(AutoCompaction::Revisions(1000))
        );
        assert!(config(&["--auto-compaction-retention", "soon"])
            .unwrap_err()
            .contains("--auto-compaction-retention"));
        assert!(config(&["--auto-compaction-mode", "hourly"]).is_err());
    }

    #[test]
    fn bad_peers_are_a_usage_error() {
        let err = crate::cli::Cli::try_parse_from([
            "raftkv",
            "start",
            "--node-id",
            "n",
            "--peers",
            "nonsense",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
