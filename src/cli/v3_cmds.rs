//! The client commands of the etcd v3 data model: `txn`, `compact` and
//! `watch`, and the range forms of `list` and `delete` and `get --rev`
//! (their runners live here; their arguments are in
//! [`super::client_cmds`]).

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::client_cmds::{
    client_or_usage, fail, print_line, ClientOpts, DeleteArgs, GetArgs, ListArgs,
};
use super::output;
use crate::client::{ClientError, Consistency, WatchMessage, WatchOptions};
use crate::kv::{prefix_end, DeleteRangeRequest, KvError, RangeRequest, SortOrder, SortTarget};

/// `--sort-by` of `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// The key (bytewise).
    Key,
    /// The version (puts in the key's current life).
    Version,
    /// The create revision.
    Create,
    /// The mod revision (= the `index`).
    Mod,
    /// The value (bytewise).
    Value,
}

impl From<SortBy> for SortTarget {
    fn from(s: SortBy) -> SortTarget {
        match s {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Mod => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        }
    }
}

/// `--order` of `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Lowest first.
    Ascend,
    /// Highest first.
    Descend,
}

/// etcd's `(key, range_end)` of a `--prefix P` / `--from K [--to E]`
/// selection. `--from ""` (or no `--from` with `--to`) starts at the first
/// key; no `--to` means no end; an empty prefix is every key.
pub fn selection(prefix: Option<&str>, from: Option<&str>, to: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    match (prefix, from, to) {
        (Some(p), _, _) if !p.is_empty() => (p.as_bytes().to_vec(), prefix_end(p.as_bytes())),
        (Some(_), _, _) | (None, None, None) => (vec![0], vec![0]),
        (None, from, to) => {
            let key = match from {
                Some(f) if !f.is_empty() => f.as_bytes().to_vec(),
                _ => vec![0],
            };
            let end = match to {
                Some(t) if !t.is_empty() => t.as_bytes().to_vec(),
                _ => vec![0],
            };
            (key, end)
        }
    }
}

impl ListArgs {
    /// True when only the options of the original `list` are given, so the
    /// original paging (`GET /kv?prefix=`) serves it unchanged.
    pub fn is_plain(&self) -> bool {
        self.from.is_none()
            && self.to.is_none()
            && self.rev.is_none()
            && self.limit.is_none()
            && !self.keys_only
            && !self.count_only
            && self.sort_by.is_none()
            && self.order.is_none()
            && self.min_create_rev.is_none()
            && self.max_create_rev.is_none()
            && self.min_mod_rev.is_none()
            && self.max_mod_rev.is_none()
    }

    /// The range request these options ask for (`limit` 0 = all keys).
    pub fn to_request(&self) -> RangeRequest {
        let (key, range_end) = selection(
            (!self.prefix.is_empty() || (self.from.is_none() && self.to.is_none()))
                .then_some(self.prefix.as_str()),
            self.from.as_deref(),
            self.to.as_deref(),
        );
        RangeRequest {
            key,
            range_end,
            limit: self.limit.unwrap_or(0),
            revision: self.rev.unwrap_or(0),
            sort_order: match self.order {
                None => SortOrder::None,
                Some(Order::Ascend) => SortOrder::Ascend,
                Some(Order::Descend) => SortOrder::Descend,
            },
            sort_target: self.sort_by.map_or(SortTarget::Key, SortTarget::from),
            serializable: self.stale,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_rev.unwrap_or(0),
            max_mod_revision: self.max_mod_rev.unwrap_or(0),
            min_create_revision: self.min_create_rev.unwrap_or(0),
            max_create_revision: self.max_create_rev.unwrap_or(0),
        }
    }
}

/// The largest page `GET /kv` serves: a listing sorted by something else
/// than the key cannot be paged, so it gets one page of this size.
const MAX_ONE_PAGE: i64 = 10_000;

/// `list` with the range options.
pub async fn list_range(args: &ListArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "list") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut req = args.to_request();
    let key_order = req.sort_target == SortTarget::Key
        && matches!(req.sort_order, SortOrder::None | SortOrder::Ascend);
    let result = if req.limit == 0 && key_order && !req.count_only {
        client.range_all(&req).await
    } else {
        if req.limit == 0 && !req.count_only {
            req.limit = MAX_ONE_PAGE;
        }
        client.range(&req).await
    };
    let reply = match result {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let text = output::range_output(&reply.body, args.keys_only, args.count_only);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if reply.body.more && args.limit.is_none() {
        eprintln!(
            "warning: only the first {} keys are shown (a listing sorted by another \
             field than the key is one page); narrow the range or give --limit",
            reply.body.kvs.len()
        );
    }
    ExitCode::SUCCESS
}

/// `get KEY --rev R`.
pub async fn get_at(args: &GetArgs, rev: i64, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "get") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    match client.get_at(args.key.as_bytes(), rev, consistency).await {
        Ok(reply) => {
            let mut line = output::kv_line(&reply.body);
            if args.index {
                line.push_str(&format!(" (index {})", reply.body.mod_revision));
            }
            print_line(&line);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `delete --prefix P`, `delete --from K [--to E]`, or `delete KEY
/// --prev-kv`.
pub async fn delete_range(args: &DeleteArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "delete") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.prefix.as_deref() == Some("") {
        return super::usage_error(
            "delete",
            "--prefix must not be empty; to delete every key, say so with --from ''",
        );
    }
    let single = args.prefix.is_none() && args.from.is_none() && args.to.is_none();
    let (key, range_end) = match (&args.key, single) {
        (Some(k), true) => (k.as_bytes().to_vec(), Vec::new()),
        (None, true) => {
            return super::usage_error("delete", "give a KEY, --prefix P or --from K [--to E]")
        }
        _ => selection(
            args.prefix.as_deref(),
            args.from.as_deref(),
            args.to.as_deref(),
        ),
    };
    let req = DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    };
    match client.delete_range(&req).await {
        Ok(reply) if single && reply.body.deleted == 0 => fail(&ClientError::NotFound {
            key: args.key.clone().unwrap_or_default(),
        }),
        Ok(reply) => {
            let text = output::delete_output(&reply.body, reply.header.revision, single);
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `raftkv txn`.
#[derive(Args, Debug)]
#[command(
    after_help = "Reads the transaction from standard input, in etcdctl's text form or as the\n\
    JSON body of POST /txn (input starting with `{`). Text form: three sections separated by\n\
    blank lines: compares, success ops, failure ops.\n\n\
    Example:\n  \
    printf 'mod(\"counter\") = \"7\"\\n\\nput counter 8\\n\\nget counter\\n' | raftkv txn\n\n\
    compares: TARGET(\"KEY\") OP VALUE, TARGET = value|version|create|mod|lease, OP = = != < >\n\
    ops:      put KEY VALUE [--prev-kv] | del KEY [END] | del --prefix P [--prev-kv] |\n          \
    get KEY [END] | get --prefix P\n\n\
    Prints SUCCESS or FAILURE, then a blank line and each op's result (OK for a put, the\n\
    number of deleted keys for a delete, key and value lines for a get). A failed compare\n\
    is not an error (exit 0); exit 2 if the input does not parse."
)]
pub struct TxnArgs {
    /// Print the JSON answer of POST /txn instead of the text form.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// Longest transaction text read from stdin.
const MAX_TXN_INPUT: u64 = 16 << 20;

/// Runs `txn`.
pub async fn txn(args: TxnArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "txn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut input = String::new();
    if let Err(e) = std::io::stdin()
        .lock()
        .take(MAX_TXN_INPUT)
        .read_to_string(&mut input)
    {
        return super::usage_error("txn", format!("cannot read standard input: {e}"));
    }
    let req = match super::txn_text::parse_txn_text(&input) {
        Ok(r) => r,
        Err(e) => return super::usage_error("txn", e),
    };
    match client.txn(&req).await {
        Ok(reply) => {
            let text = if args.json {
                format!("{}\n", output::txn_json(&reply))
            } else {
                super::txn_text::format_txn_response(&reply.body)
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `raftkv compact REV`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  raftkv compact 40     # prints: compacted revision 40\n\n\
    Reads at a revision below REV fail from then on (\"required revision has been compacted\").\n\
    Exit 2 if REV is at or below the current compact revision, or above the current revision."
)]
pub struct CompactArgs {
    /// The revision to compact up to (the new compact revision).
    #[arg(value_parser = clap::value_parser!(i64).range(1..))]
    pub rev: i64,
    /// Answer only once the history is physically removed.
    #[arg(long)]
    pub physical: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// Runs `compact`.
pub async fn compact(args: CompactArgs, global: Option<&str>) -> ExitCode {
    let client = match client_or_usage(&args.client, global, "compact") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.compact(args.rev, args.physical).await {
        Ok(reply) => {
            print_line(&format!("compacted revision {}", reply.body));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `raftkv watch KEY | --prefix P | --from K [--to E]`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  raftkv watch greeting\n  \
    raftkv watch --prefix user/ --prev-kv\n  \
    raftkv watch --prefix user/ --rev 12 --count 3   # the first 3 events from revision 12 on\n  \
    raftkv watch --from a --to m --json\n\n\
    Prints one line per event until interrupted (Ctrl-C exits 0):\n  \
    PUT KEY = VALUE (rev R)          DELETE KEY (rev R)\n\
    with --prev-kv, \", prev: VALUE\" inside the parentheses; with --json, one JSON event per\n\
    line ({\"type\",\"kv\",\"prev_kv\"}). To resume after an interruption, watch again with\n\
    --rev (last printed rev + 1). Exit 2 if --rev is below the compact revision, 3 if the\n\
    connection is lost.")]
pub struct WatchArgs {
    /// The key to watch.
    #[arg(allow_hyphen_values = true, conflicts_with_all = ["prefix", "from", "to"],
          required_unless_present_any = ["prefix", "from", "to"])]
    pub key: Option<String>,
    /// Watch every key starting with P (`--prefix ''` = every key).
    #[arg(long, value_name = "P", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// Watch keys ≥ K (with --to: the range [K, E)).
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Watch keys < E.
    #[arg(long, value_name = "E", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Start at revision R (inclusive), replaying the history from there;
    /// default: from the next change.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(i64).range(1..))]
    pub rev: Option<i64>,
    /// Show each event's previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Leave out put events.
    #[arg(long)]
    pub no_put: bool,
    /// Leave out delete events.
    #[arg(long)]
    pub no_delete: bool,
    /// Also print progress notifications ("PROGRESS (rev R)").
    #[arg(long)]
    pub progress: bool,
    /// Exit 0 after N events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// One JSON event per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

impl WatchArgs {
    /// The watch these arguments ask for.
    pub fn to_options(&self) -> WatchOptions {
        let (key, range_end) = match &self.key {
            Some(k) => (k.as_bytes().to_vec(), Vec::new()),
            None => selection(
                self.prefix.as_deref(),
                self.from.as_deref(),
                self.to.as_deref(),
            ),
        };
        WatchOptions {
            key,
            range_end,
            start_revision: self.rev.unwrap_or(0),
            prev_kv: self.prev_kv,
            no_put: self.no_put,
            no_delete: self.no_delete,
            progress_notify: self.progress,
        }
    }
}

/// Runs `watch` until Ctrl-C (or SIGTERM), `--count` events, or the end of
/// the stream.
pub async fn watch(args: WatchArgs, global: Option<&str>) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let client = match client_or_usage(&args.client, global, "watch") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = watch_loop(&client, &args);
    tokio::select! {
        code = run => code,
        _ = int.recv() => ExitCode::SUCCESS,
        _ = term.recv() => ExitCode::SUCCESS,
    }
}

async fn watch_loop(client: &crate::client::Client, args: &WatchArgs) -> ExitCode {
    let mut stream = match client.watch(&args.to_options()).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut seen: u64 = 0;
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(WatchMessage::Events(batch)) => {
                let mut out = std::io::stdout().lock();
                for event in &batch.events {
                    let line = if args.json {
                        output::event_json(event)
                    } else {
                        output::event_line(event, args.prev_kv)
                    };
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        // The reader went away (`| head`): nothing more to do.
                        return ExitCode::SUCCESS;
                    }
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        return ExitCode::SUCCESS;
                    }
                }
            }
            Ok(WatchMessage::Progress { revision }) => {
                if args.progress {
                    print_line(&if args.json {
                        format!("{{\"progress_revision\":{revision}}}")
                    } else {
                        format!("PROGRESS (rev {revision})")
                    });
                }
            }
            Ok(WatchMessage::Canceled {
                reason,
                compact_revision,
            }) => {
                return match compact_revision {
                    Some(c) => fail(&ClientError::Kv(KvError::Compacted {
                        compact_revision: c,
                    })),
                    None => {
                        eprintln!("error: the server ended the watch: {reason}");
                        ExitCode::from(super::EXIT_UNAVAILABLE)
                    }
                }
            }
            Err(e) => return fail(&e),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests;
