//! The client commands: `put`, `get`, `delete`, `list`, `status`, `leader`
//! and `health`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::output;
use crate::client::{
    parse_nodes, Client, ClientConfig, ClientError, Consistency, NodeStatus, DEFAULT_NODES,
};

/// Options every client command takes.
#[derive(Args, Clone, Debug, Default)]
pub struct ClientOpts {
    /// Nodes to talk to, comma-separated (http://host:port or host:port). The
    /// client finds the leader itself and retries on another node when one is
    /// down. [env: RAFTKV_NODES]
    /// [default: http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003]
    #[arg(long, value_name = "URL,URL,...")]
    pub nodes: Option<String>,

    /// Give up after this many milliseconds, retries included (then exit 3).
    #[arg(long, value_name = "MS", env = "RAFTKV_TIMEOUT_MS", hide_env_values = true, default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

impl ClientOpts {
    /// The node list: `--nodes` of the subcommand, else the one given before
    /// the subcommand, else `RAFTKV_NODES`, else the default three nodes.
    pub fn node_list(&self, global: Option<&str>) -> Result<Vec<String>, String> {
        let from_env = std::env::var("RAFTKV_NODES").ok();
        let spec = self
            .nodes
            .as_deref()
            .or(global)
            .or(from_env.as_deref().filter(|s| !s.trim().is_empty()))
            .unwrap_or(DEFAULT_NODES);
        parse_nodes(spec).map_err(|e| format!("--nodes: {e}"))
    }

    fn client(&self, global: Option<&str>) -> Result<Client, String> {
        let nodes = self.node_list(global)?;
        let total = Duration::from_millis(self.timeout_ms);
        let defaults = ClientConfig::default();
        Client::new(ClientConfig {
            nodes,
            total_timeout: total,
            attempt_timeout: defaults.attempt_timeout.min(total),
            ..defaults
        })
        .map_err(|e| e.to_string())
    }
}

/// `raftkv put KEY VALUE` or `raftkv put KEY --file PATH`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  raftkv put greeting hello\n  \
    raftkv put counter 5 --cas 0      # only if counter does not exist yet\n  \
    raftkv put counter 6 --cas 17     # only if counter was last written at index 17\n  \
    raftkv put config --file app.yaml # the file's contents, byte for byte\n  \
    date | raftkv put stamp --file -  # from stdin (the trailing newline is kept)\n\n\
    Prints \"OK (index N)\" with the write's Raft log index. Exit 1 if --cas does not match,\n\
    exit 2 if the value is over 1 MiB (1048576 bytes) or is not UTF-8 text.")]
pub struct PutArgs {
    /// The key (1-1024 bytes of UTF-8).
    #[arg(allow_hyphen_values = true)]
    pub key: String,
    /// The value (up to 1 MiB of UTF-8). Give --file instead for a value
    /// that is long or comes from a file or a pipe.
    #[arg(
        allow_hyphen_values = true,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub value: Option<String>,
    /// Read the value from PATH (`-` = standard input), byte for byte.
    #[arg(long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// Compare-and-swap: write only if the key's current mod index is M
    /// (0 = only if the key is absent).
    #[arg(long, value_name = "M")]
    pub cas: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv get KEY`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  raftkv get greeting             # prints: greeting = hello\n  \
    raftkv get greeting --stale     # read the contacted node's copy, no leader round trip\n  \
    raftkv get greeting --index     # prints: greeting = hello (index 12)\n  \
    raftkv get greeting --rev 9     # the value as of revision 9\n\n\
    Exit 1 (message on stderr) if the key does not exist."
)]
pub struct GetArgs {
    /// The key.
    #[arg(allow_hyphen_values = true)]
    pub key: String,
    /// Serve the read from the contacted node's state machine (may be stale)
    /// instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
    /// Also print the key's index (its mod revision).
    #[arg(long)]
    pub index: bool,
    /// Read the key as of revision R (must not be compacted).
    #[arg(long, value_name = "R")]
    pub rev: Option<i64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv delete KEY`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  raftkv delete greeting\n  \
    raftkv delete lock --cas 17   # only if lock was last written at index 17\n  \
    raftkv delete --prefix tmp/ --prev-kv   # every key under tmp/, in one revision\n\n\
    Prints \"OK (index N)\" (a range: \"OK: D deleted (index N)\"). Exit 1 (message on stderr)\n\
    if the key does not exist or --cas does not match.")]
pub struct DeleteArgs {
    /// The key (or use --prefix / --from).
    #[arg(allow_hyphen_values = true, required_unless_present_any = ["prefix", "from"],
          conflicts_with_all = ["prefix", "from"])]
    pub key: Option<String>,
    /// Compare-and-swap: delete only if the key's current mod index is M.
    #[arg(long, value_name = "M", requires = "key")]
    pub cas: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub keys: super::data_cmds::KeySelection,
    /// With a range: print the deleted keys and values.
    #[arg(long)]
    pub prev_kv: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv list [--prefix P]`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  raftkv list\n  raftkv list --prefix user/\n  \
    raftkv list --prefix user/ --rev 40             # as of revision 40\n  \
    raftkv list --from a --to m --keys-only         # keys in [a, m)\n  \
    raftkv list --prefix job/ --sort-by create --limit 1   # the oldest job (a lock queue)\n  \
    raftkv list --prefix user/ --count-only\n\n\
    Prints one \"KEY = VALUE\" line per key, sorted by key (fetched page by page, all pages\n\
    at the revision of the first)."
)]
pub struct ListArgs {
    /// Only keys starting with P.
    #[arg(
        long,
        value_name = "P",
        default_value = "",
        allow_hyphen_values = true,
        conflicts_with = "from"
    )]
    pub prefix: String,
    /// First key of a range [KEY, --to) (instead of --prefix).
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the --from range (exclusive).
    #[arg(
        long,
        value_name = "KEY",
        allow_hyphen_values = true,
        requires = "from"
    )]
    pub to: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub range: super::data_cmds::RangeOpts,
    /// Read from the contacted node's state machine (may be stale).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv status`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  raftkv status                                 # every node of --nodes and their peers\n  \
    raftkv status --node http://127.0.0.1:8002    # start from that node; its peers are asked too\n  \
    raftkv status --json                          # raw /cluster/status of every node of --nodes\n  \
    raftkv status --json --node 127.0.0.1:8002    # raw /cluster/status of that node only\n\n\
    Exit 3 if no node answers."
)]
pub struct StatusArgs {
    /// Ask this node first, instead of the nodes of --nodes. The table still
    /// shows the whole cluster: the peers this node reports are asked too.
    /// With --json, only this node's raw status is printed.
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Print the raw JSON of /cluster/status: an array with one element per
    /// node of --nodes (unreachable nodes appear as {"url":...,"error":...}),
    /// or one object with --node.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv leader`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  raftkv leader      # prints: node-1 http://127.0.0.1:8001\n\n\
    Exit 3 if no leader is known within the timeout."
)]
pub struct LeaderArgs {
    /// Print the raw JSON of /cluster/leader.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// `raftkv health`.
#[derive(Args, Debug)]
#[command(
    after_help = "Used as the container health check (no curl needed in the image).\n\
    Exit 0 when the node answers GET /health with 200, else 1."
)]
pub struct HealthArgs {
    /// Node to check [default: http://127.0.0.1:$RAFTKV_PORT, port 8001 if unset].
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// Prints a client error on stderr and returns the contract's exit code.
fn fail(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(output::exit_code(err))
}

/// The client of a command, or the usage error its options deserve.
pub(crate) fn client_or_usage(
    opts: &ClientOpts,
    global: Option<&str>,
    cmd: &str,
) -> Result<Client, ExitCode> {
    opts.client(global).map_err(|e| super::usage_error(cmd, e))
}

fn print_line(line: &str) {
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// Reads a value for `put --file`: at most the contract's 1 MiB, UTF-8.
/// `-` is standard input.
pub fn read_value_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let limit = crate::kv::MAX_VALUE_BYTES;
    let shown = if path == std::path::Path::new("-") {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let reader: Box<dyn Read> = if path == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?)
    };
    // One byte more than the limit tells "too large" from "exactly 1 MiB"
    // without reading a huge input to its end.
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() > limit {
        return Err(format!(
            "the value in {shown} is larger than the limit of {limit} bytes (1 MiB)"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the value in {shown} is not UTF-8 text (invalid byte at offset {}); \
             values are strings",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Runs `put`.
pub async fn put(args: PutArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "put") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let value = match (&args.value, &args.file) {
        (Some(v), _) => v.clone(),
        (None, Some(path)) => match read_value_file(path) {
            Ok(v) => v,
            Err(e) => return super::usage_error("put", format!("--file: {e}")),
        },
        // clap requires one of the two.
        (None, None) => return super::usage_error("put", "give a VALUE or --file PATH"),
    };
    match client.put_cas(&args.key, &value, args.cas).await {
        Ok(w) => {
            print_line(&output::write_ok(&w));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `get`.
pub async fn get(args: GetArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "get") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    if let Some(rev) = args.rev {
        return super::data_cmds::get_at(&client, &args.key, rev, args.stale, args.index).await;
    }
    match client.get(&args.key, consistency).await {
        Ok(item) => {
            let mut line = output::item_line(&item);
            if args.index {
                line.push_str(&format!(" (index {})", item.index));
            }
            print_line(&line);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `delete`.
pub async fn delete(args: DeleteArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "delete") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(key) = &args.key else {
        return super::data_cmds::delete_range(&client, &args.keys, args.prev_kv).await;
    };
    match client.delete(key, args.cas).await {
        Ok(w) => {
            print_line(&output::write_ok(&w));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `list`.
pub async fn list(args: ListArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "list") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    if args.from.is_some() || args.range.any() {
        let keys = super::data_cmds::KeySelection {
            prefix: args.from.is_none().then(|| args.prefix.clone()),
            from: args.from.clone(),
            to: args.to.clone(),
        };
        return super::data_cmds::list_range(&client, &keys, &args.range, args.stale).await;
    }
    match client.list_all(&args.prefix, consistency).await {
        Ok(items) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for item in &items {
                if writeln!(out, "{}", output::item_line(item)).is_err() {
                    break;
                }
            }
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `leader`.
pub async fn leader(args: LeaderArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "leader") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.leader().await {
        Ok(info) => {
            if args.json {
                print_line(&serde_json::to_string(&info).unwrap_or_default());
            } else {
                print_line(&output::leader_line(&info));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs `status`: a table of every node.
///
/// The nodes of `--nodes` (or just `--node URL`) are asked first; the peers
/// they list are then asked too, at the URLs they advertise, so that one
/// reachable node is enough to see the whole cluster.
pub async fn status(args: StatusArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "status") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let entry = match args.node.as_deref().map(crate::client::normalize_url) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => return super::usage_error("status", format!("--node: {e}")),
    };
    if args.json {
        return status_json(&client, entry.as_deref()).await;
    }
    let seeds = match entry {
        Some(url) => vec![url],
        None => client.nodes().to_vec(),
    };
    let rows = cluster_status(&client, seeds).await;
    let table = output::status_table(&rows);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(table.as_bytes());
    if rows.iter().all(|r| r.status.is_err()) {
        eprintln!("error: no node answered");
        return ExitCode::from(super::EXIT_UNAVAILABLE);
    }
    ExitCode::SUCCESS
}

/// Asks `seeds`, then the peers they list that are not known yet.
pub async fn cluster_status(client: &Client, seeds: Vec<String>) -> Vec<output::StatusRow> {
    let ask = |url: String, id_hint: Option<String>| {
        let client = client.clone();
        async move {
            let result = client.status_of(&url).await;
            status_row(url, id_hint, result)
        }
    };
    let mut rows: Vec<output::StatusRow> =
        futures::future::join_all(seeds.iter().map(|u| ask(u.clone(), None))).await;
    let mut peers: Vec<(String, Option<String>)> = Vec::new();
    for row in &rows {
        if let Ok(st) = &row.status {
            for peer in peer_urls(&st.peers) {
                if !peers.iter().any(|(u, _)| *u == peer.0) {
                    peers.push(peer);
                }
            }
        }
    }
    // Name the seeds that did not answer from the peer lists.
    for row in rows.iter_mut().filter(|r| r.status.is_err()) {
        row.id_hint = peers
            .iter()
            .find(|(u, _)| *u == row.url)
            .and_then(|(_, id)| id.clone());
    }
    let known = |rows: &[output::StatusRow], id: &str| {
        rows.iter().any(|r| match &r.status {
            Ok(st) => st.node_id == id,
            Err(_) => r.id_hint.as_deref() == Some(id),
        })
    };
    let extra: Vec<(String, Option<String>)> = peers
        .into_iter()
        .filter(|(u, id)| !seeds.contains(u) && !id.as_deref().is_some_and(|id| known(&rows, id)))
        .collect();
    let extra_rows = futures::future::join_all(extra.into_iter().map(|(u, id)| ask(u, id))).await;
    // A seed that is down and unnamed may be the same node as a peer that
    // is down at its advertised URL (say, a container name): show such a
    // peer only when no seed is unaccounted for, to avoid listing it twice.
    let unnamed_down = rows
        .iter()
        .any(|r| r.status.is_err() && r.id_hint.is_none());
    for row in extra_rows {
        let show = match &row.status {
            Ok(st) => !known(&rows, &st.node_id),
            Err(_) => !unnamed_down,
        };
        if show {
            rows.push(row);
        }
    }
    rows
}

/// `status --json`: the node's raw JSON with `--node`, else an array with
/// one element per node of `--nodes` (`{"url","error"}` when unreachable).
async fn status_json(client: &Client, entry: Option<&str>) -> ExitCode {
    if let Some(url) = entry {
        return match client.status_of(url).await {
            Ok(v) => {
                print_line(&v.to_string());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    }
    let results = client.statuses().await;
    let any_up = results.iter().any(|(_, r)| r.is_ok());
    let arr: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(url, r)| match r {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "url": url, "error": e.to_string() }),
        })
        .collect();
    print_line(&serde_json::Value::Array(arr).to_string());
    if any_up {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: no node answered");
        ExitCode::from(super::EXIT_UNAVAILABLE)
    }
}

/// The `(url, id)` of each entry of a `/cluster/status` peer list that
/// gives a usable URL (`{"id","url"}` objects, or plain URL strings).
pub fn peer_urls(peers: &[serde_json::Value]) -> Vec<(String, Option<String>)> {
    peers
        .iter()
        .filter_map(|p| {
            let (url, id) = match p {
                serde_json::Value::String(s) => (s.as_str(), None),
                serde_json::Value::Object(o) => (
                    o.get("url").and_then(|u| u.as_str())?,
                    o.get("id").and_then(|i| i.as_str()).map(String::from),
                ),
                _ => return None,
            };
            let url = crate::client::normalize_url(url).ok()?;
            Some((url, id))
        })
        .collect()
}

fn status_row(
    url: String,
    id_hint: Option<String>,
    result: Result<serde_json::Value, ClientError>,
) -> output::StatusRow {
    let status = match result {
        Ok(v) => {
            serde_json::from_value::<NodeStatus>(v).map_err(|e| format!("unreadable status: {e}"))
        }
        Err(ClientError::Unavailable { message, .. }) => Err(message
            .strip_prefix(&format!("{url}: "))
            .unwrap_or(&message)
            .to_string()),
        Err(e) => Err(e.to_string()),
    };
    output::StatusRow {
        url,
        id_hint,
        status,
    }
}

/// Runs `health`: exit 0 if the node is healthy, else 1 (Docker's
/// HEALTHCHECK convention: 1 = unhealthy).
pub async fn health(args: HealthArgs) -> ExitCode {
    let node = match args.node {
        Some(n) => n,
        None => {
            let port = std::env::var("RAFTKV_PORT").unwrap_or_else(|_| "8001".into());
            format!("http://127.0.0.1:{}", port.trim())
        }
    };
    let node = match crate::client::normalize_url(&node) {
        Ok(n) => n,
        Err(e) => return super::usage_error("health", format!("--node: {e}")),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = match Client::new(ClientConfig {
        nodes: vec![node.clone()],
        attempt_timeout: timeout,
        connect_timeout: timeout,
        total_timeout: timeout,
        max_attempts: 1,
        ..ClientConfig::default()
    }) {
        Ok(c) => c,
        Err(e) => return super::usage_error("health", e),
    };
    match client.health_of(&node).await {
        Ok(h) => {
            print_line(&format!("{} {} {}", h.status, h.node_id, h.role));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
