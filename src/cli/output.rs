//! Text formatting of the client commands' results (kept apart from the I/O
//! so it can be tested).

use crate::client::{ClientError, KvItem, LeaderInfo, NodeStatus, Reply, WriteResult};
use crate::kv::{DeleteRangeResponse, Event, EventKind, KeyValue, RangeResponse, TxnResponse};
use crate::server::json::{JsonEvent, JsonTxnReply};

/// `put` / `delete`: `OK (index N)`.
pub fn write_ok(result: &WriteResult) -> String {
    format!("OK (index {})", result.index)
}

/// `get` and each line of `list`: `KEY = VALUE`.
pub fn item_line(item: &KvItem) -> String {
    format!("{} = {}", item.key, item.value)
}

/// Bytes as text; bytes that are not UTF-8 become U+FFFD (keys and values
/// written through the CLI are always text).
fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A record as `KEY = VALUE` (the same line as [`item_line`]).
pub fn kv_line(kv: &KeyValue) -> String {
    format!("{} = {}", text(&kv.key), text(&kv.value))
}

/// `list` with range options: the count alone (`count_only`), one key
/// per line (`keys_only`), or one `KEY = VALUE` line per key.
pub fn range_output(r: &RangeResponse, keys_only: bool, count_only: bool) -> String {
    if count_only {
        return format!("{}\n", r.count);
    }
    let mut out = String::new();
    for kv in &r.kvs {
        if keys_only {
            out.push_str(&text(&kv.key));
        } else {
            out.push_str(&kv_line(kv));
        }
        out.push('\n');
    }
    out
}

/// A delete through `DELETE /kv`: for one key (`single`) the old
/// `OK (index R)`, for a range `deleted N (index R)`; then each deleted
/// record as `KEY = VALUE` (when asked for).
pub fn delete_output(d: &DeleteRangeResponse, revision: i64, single: bool) -> String {
    let mut out = if single {
        format!("OK (index {revision})\n")
    } else {
        format!("deleted {} (index {revision})\n", d.deleted)
    };
    for kv in &d.prev_kvs {
        out.push_str(&kv_line(kv));
        out.push('\n');
    }
    out
}

/// `txn --json`: the answer exactly as `POST /txn` gives it.
pub fn txn_json(reply: &Reply<TxnResponse>) -> String {
    let j = JsonTxnReply {
        txn: (&reply.body).into(),
        index: reply.header.revision,
        header: reply.header.into(),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

/// `watch`: one event, `PUT KEY = VALUE (rev R)` or `DELETE KEY (rev R)`,
/// with `, prev: VALUE` when `prev_kv` is shown and the key existed.
pub fn event_line(e: &Event, prev_kv: bool) -> String {
    let mut line = match e.kind {
        EventKind::Put => format!("PUT {} (rev {}", kv_line(&e.kv), e.kv.mod_revision),
        EventKind::Delete => format!("DELETE {} (rev {}", text(&e.kv.key), e.kv.mod_revision),
    };
    if prev_kv {
        if let Some(p) = &e.prev_kv {
            line.push_str(&format!(", prev: {}", text(&p.value)));
        }
    }
    line.push(')');
    line
}

/// `watch --json`: one event as the API shows it, on one line.
pub fn event_json(e: &Event) -> String {
    serde_json::to_string(&JsonEvent::from(e)).unwrap_or_default()
}

/// `leader`: the leader's id and URL, separated by a space.
pub fn leader_line(info: &LeaderInfo) -> String {
    format!("{} {}", info.leader_id, info.leader_url)
}

/// One row of the status table.
#[derive(Clone, Debug)]
pub struct StatusRow {
    /// Where the node was asked.
    pub url: String,
    /// The node's id when known without its answer (from a peer list).
    pub id_hint: Option<String>,
    /// Its status, or why it could not be read.
    pub status: Result<NodeStatus, String>,
}

/// `status`: an aligned table of every node, then a one-line summary.
pub fn status_table(rows: &[StatusRow]) -> String {
    const HEADERS: [&str; 9] = [
        "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAPSHOT", "URL",
    ];
    let mut cells: Vec<Vec<String>> = vec![HEADERS.iter().map(|h| h.to_string()).collect()];
    let mut notes: Vec<Option<String>> = vec![None];
    for StatusRow {
        url,
        id_hint,
        status,
    } in rows
    {
        match status {
            Ok(s) => {
                cells.push(vec![
                    or_dash(&s.node_id),
                    or_dash(&s.role),
                    s.term.to_string(),
                    or_dash(s.leader_id.as_deref().unwrap_or("")),
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    s.last_log_index.to_string(),
                    s.snapshot_index.to_string(),
                    url.clone(),
                ]);
                notes.push(None);
            }
            Err(why) => {
                let id = id_hint.clone().unwrap_or_else(|| "?".into());
                let mut row = vec![id, "unreachable".to_string()];
                row.extend(std::iter::repeat_n("-".to_string(), 6));
                row.push(url.clone());
                cells.push(row);
                notes.push(Some(why.clone()));
            }
        }
    }
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (row, note) in cells.iter().zip(&notes) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        if let Some(note) = note {
            line.push_str("  (");
            line.push_str(note);
            line.push(')');
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&summary(rows));
    out
}

fn summary(rows: &[StatusRow]) -> String {
    let up: Vec<&NodeStatus> = rows.iter().filter_map(|r| r.status.as_ref().ok()).collect();
    let leaders: Vec<&&NodeStatus> = up.iter().filter(|s| s.role == "leader").collect();
    let max_term = leaders.iter().map(|s| s.term).max();
    let leader = leaders
        .iter()
        .find(|s| Some(s.term) == max_term)
        .map(|s| format!("leader {} (term {})", s.node_id, s.term))
        .unwrap_or_else(|| "no leader among the reachable nodes".to_string());
    format!("{}/{} nodes reachable; {leader}\n", up.len(), rows.len())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// The process exit code for a client error (see the contract).
pub fn exit_code(err: &ClientError) -> u8 {
    match err {
        ClientError::NotFound { .. } | ClientError::CasMismatch { .. } => super::EXIT_NOT_FOUND,
        ClientError::Kv(crate::kv::KvError::KeyNotFound | crate::kv::KvError::LeaseNotFound) => {
            super::EXIT_NOT_FOUND
        }
        ClientError::BadRequest(_) | ClientError::Config(_) | ClientError::Kv(_) => {
            super::EXIT_USAGE
        }
        ClientError::Unavailable { .. }
        | ClientError::Http { .. }
        | ClientError::InvalidResponse { .. } => super::EXIT_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, role: &str, term: u64, leader: &str, idx: u64) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            role: role.into(),
            term,
            leader_id: Some(leader.into()),
            leader_url: None,
            commit_index: idx,
            applied_index: idx,
            last_log_index: idx + 1,
            snapshot_index: 0,
            peers: vec![],
        }
    }

    fn row(url: &str, status: Result<NodeStatus, String>) -> StatusRow {
        StatusRow {
            url: url.into(),
            id_hint: None,
            status,
        }
    }

    #[test]
    fn simple_lines() {
        let w = WriteResult {
            key: "k".into(),
            index: 42,
        };
        assert_eq!(write_ok(&w), "OK (index 42)");
        let item = KvItem {
            key: "greeting".into(),
            value: "hello world".into(),
            index: 3,
        };
        assert_eq!(item_line(&item), "greeting = hello world");
        let l = LeaderInfo {
            leader_id: "node-2".into(),
            leader_url: "http://127.0.0.1:8002".into(),
            term: 4,
        };
        assert_eq!(leader_line(&l), "node-2 http://127.0.0.1:8002");
    }

    #[test]
    fn status_table_is_aligned_and_marks_unreachable_nodes() {
        let rows = vec![
            row(
                "http://127.0.0.1:8001",
                Ok(status("node-1", "leader", 3, "node-1", 1200)),
            ),
            row(
                "http://127.0.0.1:8002",
                Ok(status("node-2", "follower", 3, "node-1", 7)),
            ),
            row(
                "http://127.0.0.1:8003",
                Err("cannot connect (Connection refused)".to_string()),
            ),
        ];
        let table = status_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("NODE    ROLE         TERM"), "{table}");
        // Every column starts at the same offset on every row.
        let url_col = lines[0].find("URL").unwrap();
        for line in &lines[1..4] {
            assert_eq!(line.find("http://").unwrap(), url_col, "{table}");
        }
        assert!(lines[1].contains("1200"));
        assert!(lines[3].starts_with("?       unreachable"), "{table}");
        assert!(lines[3].ends_with("(cannot connect (Connection refused))"));
        assert_eq!(lines[4], "2/3 nodes reachable; leader node-1 (term 3)");
    }

    #[test]
    fn status_summary_without_leader() {
        let mut rows = vec![row("http://h:1", Ok(status("n", "candidate", 9, "", 0)))];
        rows.push(StatusRow {
            id_hint: Some("node-9".into()),
            ..row("http://h:2", Err("timed out".into()))
        });
        let table = status_table(&rows);
        assert!(table.contains("\nnode-9  unreachable"), "{table}");
        assert!(table.ends_with("1/2 nodes reachable; no leader among the reachable nodes\n"));
        assert!(table.lines().nth(1).unwrap().contains("  -  "), "{table}");
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(exit_code(&ClientError::NotFound { key: "k".into() }), 1);
        assert_eq!(
            exit_code(&ClientError::CasMismatch {
                key: "k".into(),
                expected: 2,
                current: 1
            }),
            1
        );
        assert_eq!(exit_code(&ClientError::BadRequest("x".into())), 2);
        assert_eq!(
            exit_code(&ClientError::Unavailable {
                outcome_unknown: true,
                message: "x".into()
            }),
            3
        );
    }
}
