//! The client commands of the etcd data model: `txn`, `compact`, `watch`,
//! and the revision and range options of `get`, `list` and `delete`. They
//! speak the JSON API of `docs/api.md` through [`Client::read_json`] and
//! [`Client::write_json`], and read its answers with the server's own
//! serde types (`crate::server::json`), so both sides parse the same shapes.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Args;
use hyper::Method;

use super::client_cmds::ClientOpts;
use super::output;
use super::txn_text::{format_txn_response, parse_txn_text};
use crate::client::{encode_component, encode_key, Client, ClientError};
use crate::server::json::{
    JsonEvent, JsonEventType, JsonGetReply, JsonRangeReply, JsonRecord, JsonTxnReply,
    JsonTxnRequest, JsonWatchBatch,
};

/// How long one long poll of `raftkv watch` waits on the node before it
/// asks again (well inside the client's per-attempt timeout).
const WATCH_POLL: &str = "2s";

/// Which keys a command works on: one key, a prefix, or `[from, to)`.
#[derive(Args, Clone, Debug, Default)]
pub struct KeySelection {
    /// Every key starting with P (`""` = every key).
    #[arg(long, value_name = "P", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// First key of a range (inclusive).
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of a range (exclusive; absent = to the last key).
    #[arg(
        long,
        value_name = "KEY",
        allow_hyphen_values = true,
        requires = "from"
    )]
    pub to: Option<String>,
}

impl KeySelection {
    /// The selection as query parameters (`prefix=` or `start=&end=`), or
    /// `None` when nothing was selected.
    fn query(&self) -> Option<String> {
        match (&self.prefix, &self.from) {
            (Some(p), _) => Some(format!("prefix={}", encode_component(p))),
            (None, Some(f)) => {
                let mut q = format!("start={}", encode_component(f));
                if let Some(t) = &self.to {
                    q.push_str(&format!("&end={}", encode_component(t)));
                }
                Some(q)
            }
            (None, None) => None,
        }
    }
}

/// Prints a line; a closed stdout is not worth a panic.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

fn fail(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(output::exit_code(err))
}

fn bad_answer(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: the node's answer to {what} does not parse: {e}");
    ExitCode::from(super::EXIT_UNAVAILABLE)
}

/// A record's key and value as text (non-UTF-8 bytes as base64, marked).
fn record_text(r: &JsonRecord) -> (String, String) {
    let key = r
        .key
        .clone()
        .or_else(|| r.key_base64.as_ref().map(|b| format!("base64:{b}")))
        .unwrap_or_default();
    let value = r
        .value
        .clone()
        .or_else(|| r.value_base64.as_ref().map(|b| format!("base64:{b}")))
        .unwrap_or_default();
    (key, value)
}

/// `get KEY --rev R`: the key as of revision `rev`.
pub async fn get_at(
    client: &Client,
    key: &str,
    rev: i64,
    stale: bool,
    with_index: bool,
) -> ExitCode {
    let mut path = format!("/kv/{}?revision={rev}", encode_key(key));
    if stale {
        path.push_str("&consistency=stale");
    }
    match client.read_json(path, stale, key).await {
        Ok(v) => match serde_json::from_value::<JsonGetReply>(v) {
            Ok(r) => {
                let (k, value) = record_text(&r.record);
                let mut line = format!("{k} = {value}");
                if with_index {
                    line.push_str(&format!(" (index {})", r.record.index));
                }
                print_line(&line);
                ExitCode::SUCCESS
            }
            Err(e) => bad_answer("get", e),
        },
        Err(e) => fail(&e),
    }
}

/// The range options of `list`.
#[derive(Args, Clone, Debug, Default)]
pub struct RangeOpts {
    /// Read as of revision R (0 = now).
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub rev: i64,
    /// At most N keys (then "more" is reported on stderr).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print only the number of keys.
    #[arg(long, conflicts_with = "keys_only")]
    pub count_only: bool,
    /// Sort by key, version, create, mod or value.
    #[arg(long, value_name = "TARGET", value_parser = ["key", "version", "create", "mod", "value"])]
    pub sort_by: Option<String>,
    /// Sort order: ascend or descend (default ascend with --sort-by).
    #[arg(long, value_name = "ORDER", value_parser = ["ascend", "descend"])]
    pub order: Option<String>,
    /// Print the revisions of each key: `KEY = VALUE (create C, mod M, version V)`.
    #[arg(long)]
    pub revisions: bool,
}

impl RangeOpts {
    /// True when any option beyond the plain paged listing is set.
    pub fn any(&self) -> bool {
        self.rev != 0
            || self.limit.is_some()
            || self.keys_only
            || self.count_only
            || self.sort_by.is_some()
            || self.order.is_some()
            || self.revisions
    }
}

/// `list` with range options or a `[from, to)` selection: pages through
/// `GET /kv` (key order) or reads one page (other orders, `--limit`).
pub async fn list_range(
    client: &Client,
    keys: &KeySelection,
    opts: &RangeOpts,
    stale: bool,
) -> ExitCode {
    let selection = keys.query().unwrap_or_else(|| "prefix=".to_string());
    let mut base = selection;
    if opts.rev != 0 {
        base.push_str(&format!("&revision={}", opts.rev));
    }
    if opts.keys_only {
        base.push_str("&keys_only=true");
    }
    if opts.count_only {
        base.push_str("&count_only=true");
    }
    if let Some(t) = &opts.sort_by {
        base.push_str(&format!("&sort_target={t}"));
        let order = opts.order.as_deref().unwrap_or("ascend");
        base.push_str(&format!("&sort_order={order}"));
    } else if let Some(o) = &opts.order {
        base.push_str(&format!("&sort_order={o}"));
    }
    if stale {
        base.push_str("&consistency=stale");
    }
    // Paging by `after` needs key order; a pinned revision keeps the pages
    // one consistent view.
    let pages = opts.sort_by.as_deref().is_none_or(|t| t == "key")
        && opts.order.as_deref() != Some("descend")
        && opts.limit.is_none()
        && !opts.count_only;
    let mut after: Option<String> = None;
    let mut rev = opts.rev;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let mut path = format!("/kv?{base}");
        if let Some(l) = opts.limit {
            path.push_str(&format!("&limit={l}"));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_component(a)));
        }
        if rev != opts.rev && opts.rev == 0 {
            path.push_str(&format!("&revision={rev}"));
        }
        let reply = match client.read_json(path, stale, "").await {
            Ok(v) => match serde_json::from_value::<JsonRangeReply>(v) {
                Ok(r) => r,
                Err(e) => return bad_answer("list", e),
            },
            Err(e) => return fail(&e),
        };
        if opts.count_only {
            let _ = writeln!(out, "{}", reply.range.count);
            break;
        }
        for item in &reply.range.items {
            let (k, v) = record_text(item);
            let line = if opts.keys_only {
                k
            } else if opts.revisions {
                format!(
                    "{k} = {v} (create {}, mod {}, version {})",
                    item.create_revision, item.mod_revision, item.version
                )
            } else {
                format!("{k} = {v}")
            };
            if writeln!(out, "{line}").is_err() {
                return ExitCode::SUCCESS;
            }
        }
        if !reply.range.more {
            break;
        }
        if !pages {
            let _ = out.flush();
            eprintln!(
                "(more keys match: {} in the range in total)",
                reply.range.count
            );
            break;
        }
        // Later pages read the revision of the first, so the listing is
        // one snapshot.
        rev = reply.header.revision;
        match reply.range.items.last() {
            Some(last) => after = Some(record_text(last).0),
            None => break,
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// `delete --prefix P` / `delete --from A --to B`: a range delete in one
/// revision; `--prev-kv` prints what was deleted.
pub async fn delete_range(client: &Client, keys: &KeySelection, prev_kv: bool) -> ExitCode {
    let Some(mut query) = keys.query() else {
        return super::usage_error("delete", "give a KEY, --prefix P or --from A [--to B]");
    };
    if keys.prefix.as_deref() == Some("") {
        return super::usage_error(
            "delete",
            "--prefix \"\" would delete every key; name a non-empty prefix or a --from/--to range",
        );
    }
    if prev_kv {
        query.push_str("&prev_kv=true");
    }
    match client
        .write_json(Method::DELETE, format!("/kv?{query}"), None)
        .await
    {
        Ok(v) => {
            let deleted = v.get("deleted").and_then(|d| d.as_i64()).unwrap_or(0);
            let index = v.get("index").and_then(|d| d.as_i64()).unwrap_or(0);
            if let Some(prev) = v.get("prev_kvs").and_then(|p| p.as_array()) {
                for p in prev {
                    if let Ok(r) = serde_json::from_value::<JsonRecord>(p.clone()) {
                        let (k, v) = record_text(&r);
                        print_line(&format!("{k} = {v}"));
                    }
                }
            }
            print_line(&format!("OK: {deleted} deleted (index {index})"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `raftkv txn`.
#[derive(Args, Debug)]
#[command(
    after_help = "Reads a transaction from standard input, in etcdctl's text form:\n\n  \
    compares, one per line        mod(\"counter\") = \"7\"   value(\"k\") != \"x\"   version(\"a\") > \"0\"\n  \
    (blank line)\n  \
    success operations            put KEY VALUE | del KEY [--prefix] | get KEY [--prefix]\n  \
    (blank line)\n  \
    failure operations\n\n\
    or, with --json, the JSON body of POST /txn (docs/api.md). Prints SUCCESS or FAILURE,\n\
    then each operation's result; --json prints the node's JSON answer.\n\n\
    Example:\n  printf 'mod(\"lock\") = \"0\"\\n\\nput lock me\\n\\nget lock\\n' | raftkv txn"
)]
pub struct TxnArgs {
    /// Read the JSON form of POST /txn from stdin and print the JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// Runs `txn`.
pub async fn txn(args: TxnArgs, client: Client) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().lock().read_to_string(&mut input) {
        return super::usage_error("txn", format!("cannot read standard input: {e}"));
    }
    let body = if args.json {
        input.into_bytes()
    } else {
        match parse_txn_text(&input) {
            Ok(t) => match serde_json::to_vec(&JsonTxnRequest::from_request(&t)) {
                Ok(b) => b,
                Err(e) => return super::usage_error("txn", e),
            },
            Err(e) => return super::usage_error("txn", e),
        }
    };
    match client
        .write_json(Method::POST, "/txn".into(), Some(body))
        .await
    {
        Ok(v) if args.json => {
            print_line(&v.to_string());
            ExitCode::SUCCESS
        }
        Ok(v) => match serde_json::from_value::<JsonTxnReply>(v) {
            Ok(reply) => match reply.txn.to_response(reply.index) {
                Ok(t) => {
                    let text = format_txn_response(&t);
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(text.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => bad_answer("txn", e),
            },
            Err(e) => bad_answer("txn", e),
        },
        Err(e) => fail(&e),
    }
}

/// `raftkv compact REV`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  raftkv compact 1200    # reads below revision 1200 fail from now on\n\n\
    Prints \"compacted at revision REV\". Exit 1 if REV is at or below the current compact\n\
    revision (HTTP 410) or above the current revision."
)]
pub struct CompactArgs {
    /// Discard the history below this revision.
    pub rev: u64,
    /// Wait until the history is physically removed (etcd's --physical;
    /// RaftKV removes it in the background and answers at once).
    #[arg(long)]
    pub physical: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// Runs `compact`.
pub async fn compact(args: CompactArgs, client: Client) -> ExitCode {
    let body = serde_json::json!({"revision": args.rev, "physical": args.physical});
    match client
        .write_json(
            Method::POST,
            "/compact".into(),
            Some(body.to_string().into_bytes()),
        )
        .await
    {
        Ok(v) => {
            let c = v
                .get("compact_revision")
                .and_then(|c| c.as_i64())
                .unwrap_or(args.rev as i64);
            print_line(&format!("compacted at revision {c}"));
            ExitCode::SUCCESS
        }
        Err(ClientError::Http {
            status: 410,
            message,
            ..
        }) => {
            eprintln!("error: {message}");
            ExitCode::from(super::EXIT_NOT_FOUND)
        }
        Err(e) => fail(&e),
    }
}

/// `raftkv watch`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  raftkv watch config/app          # changes of one key, from now on\n  \
    raftkv watch --prefix services/   # every key under services/\n  \
    raftkv watch --prefix jobs/ --rev 1200 --prev-kv   # from revision 1200, with previous values\n\n\
    Prints one line per event until interrupted (Ctrl-C exits 0):\n  \
    PUT KEY = VALUE (rev N)      DELETE KEY (rev N)\n\
    --json prints each event as the JSON of GET /watch. Resumes by revision across node\n\
    failures; exit 1 if the start revision has been compacted."
)]
pub struct WatchArgs {
    /// The key (or use --prefix / --from).
    #[arg(allow_hyphen_values = true, required_unless_present_any = ["prefix", "from"])]
    pub key: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub keys: KeySelection,
    /// First revision to report (inclusive; 0 = from now).
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub rev: i64,
    /// Include each event's previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Leave out put events.
    #[arg(long)]
    pub no_put: bool,
    /// Leave out delete events.
    #[arg(long)]
    pub no_delete: bool,
    /// Print each event as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit (0) after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientOpts,
}

/// One event as `watch` prints it.
pub fn event_line(e: &JsonEvent, revision: i64) -> String {
    let (k, v) = record_text(&e.kv);
    let mut line = match e.kind {
        JsonEventType::Put => format!("PUT {k} = {v} (rev {revision})"),
        JsonEventType::Delete => format!("DELETE {k} (rev {revision})"),
    };
    if let Some(prev) = &e.prev_kv {
        line.push_str(&format!(" (was: {})", record_text(prev).1));
    }
    line
}

/// Runs `watch`: long polls of `GET /watch`, each resuming at the revision
/// after the last one seen, so events are printed once each, in order,
/// whichever node answers.
pub async fn watch(args: WatchArgs, client: Client) -> ExitCode {
    let selection = match (&args.key, args.keys.query()) {
        (Some(k), None) => format!("key={}", encode_component(k)),
        (None, Some(q)) => q,
        (Some(_), Some(_)) => {
            return super::usage_error("watch", "give a KEY or --prefix/--from, not both")
        }
        (None, None) => return super::usage_error("watch", "give a KEY, --prefix P or --from A"),
    };
    let mut flags = String::new();
    for (on, name) in [
        (args.prev_kv, "prev_kv"),
        (args.no_put, "no_put"),
        (args.no_delete, "no_delete"),
    ] {
        if on {
            flags.push_str(&format!("&{name}=true"));
        }
    }
    let mut next = args.rev;
    let mut seen = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let path = format!("/watch?{selection}&start_revision={next}&wait={WATCH_POLL}{flags}");
        let poll = client.read_json(path, true, "");
        let answer = tokio::select! {
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
            a = poll => a,
        };
        let batch = match answer {
            Ok(v) => match serde_json::from_value::<JsonWatchBatch>(v) {
                Ok(b) => b,
                Err(e) => return bad_answer("watch", e),
            },
            Err(ClientError::Http {
                status: 410,
                message,
                ..
            }) => {
                eprintln!("error: {message} (start again from a newer revision)");
                return ExitCode::from(super::EXIT_NOT_FOUND);
            }
            Err(e) => return fail(&e),
        };
        for e in &batch.events {
            if args.json {
                print_line(&serde_json::to_string(e).unwrap_or_default());
            } else {
                print_line(&event_line(e, batch.revision));
            }
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return ExitCode::SUCCESS;
            }
        }
        // An empty batch carries the store's revision: from now on, only
        // what comes after it (a "from now" watch must not miss changes
        // between two polls).
        if !batch.events.is_empty() || next == 0 {
            next = batch.revision + 1;
        }
        // Poll again at once: the node itself waits for changes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Event, EventKind, KeyValue};

    #[test]
    fn key_selection_builds_the_query() {
        let s = |prefix: Option<&str>, from: Option<&str>, to: Option<&str>| KeySelection {
            prefix: prefix.map(str::to_string),
            from: from.map(str::to_string),
            to: to.map(str::to_string),
        };
        assert_eq!(s(None, None, None).query(), None);
        assert_eq!(
            s(Some("a b/"), None, None).query().as_deref(),
            Some("prefix=a%20b%2F")
        );
        assert_eq!(
            s(None, Some("a"), Some("c")).query().as_deref(),
            Some("start=a&end=c")
        );
        assert_eq!(s(None, Some("a"), None).query().as_deref(), Some("start=a"));
    }

    #[test]
    fn events_print_one_line_each() {
        let put = Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                version: 2,
                lease: 0,
            },
            prev_kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: b"v1".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                lease: 0,
            }),
        };
        assert_eq!(
            event_line(&JsonEvent::from(&put), 5),
            "PUT k = v2 (rev 5) (was: v1)"
        );
        let del = Event {
            kind: EventKind::Delete,
            kv: Event::delete_marker(vec![0xff], 6),
            prev_kv: None,
        };
        assert_eq!(
            event_line(&JsonEvent::from(&del), 6),
            "DELETE base64:/w== (rev 6)"
        );
    }
}
