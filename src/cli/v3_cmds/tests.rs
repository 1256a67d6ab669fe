//! Argument parsing of the v3 commands and their output formats.

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};
use crate::client::{Header, Reply};
use crate::kv::{
    DeleteRangeResponse, Event, EventKind, KeyValue, PutResponse, RangeResponse, ResponseOp,
    Revisioned, TxnResponse,
};

fn parse(args: &[&str]) -> Command {
    let mut argv = vec!["raftkv"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command
}

fn refused(args: &[&str]) -> String {
    let mut argv = vec!["raftkv"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv) {
        Ok(c) => panic!("{args:?} parsed: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn list(args: &[&str]) -> ListArgs {
    let mut v = vec!["list"];
    v.extend_from_slice(args);
    match parse(&v) {
        Command::List(a) => a,
        other => panic!("{other:?}"),
    }
}

fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: 0,
    }
}

#[test]
fn plain_list_keeps_the_original_path() {
    assert!(list(&[]).is_plain());
    assert!(list(&["--prefix", "user/", "--stale"]).is_plain());
    for extra in [
        &["--rev", "3"][..],
        &["--limit", "2"],
        &["--keys-only"],
        &["--count-only"],
        &["--sort-by", "mod"],
        &["--order", "descend"],
        &["--from", "a"],
        &["--to", "b"],
        &["--min-mod-rev", "2"],
        &["--max-create-rev", "2"],
    ] {
        assert!(!list(extra).is_plain(), "{extra:?}");
    }
}

#[test]
fn list_options_become_the_range_request() {
    let r = list(&[
        "--prefix",
        "user/",
        "--rev",
        "7",
        "--limit",
        "5",
        "--keys-only",
        "--sort-by",
        "create",
        "--order",
        "descend",
        "--min-create-rev",
        "2",
        "--max-create-rev",
        "6",
        "--min-mod-rev",
        "3",
        "--max-mod-rev",
        "9",
        "--stale",
    ])
    .to_request();
    assert_eq!(
        r,
        RangeRequest {
            key: b"user/".to_vec(),
            range_end: b"user0".to_vec(),
            limit: 5,
            revision: 7,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            serializable: true,
            keys_only: true,
            count_only: false,
            min_mod_revision: 3,
            max_mod_revision: 9,
            min_create_revision: 2,
            max_create_revision: 6,
        }
    );
    let all = list(&["--rev", "2"]).to_request();
    assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
    let from = list(&["--from", "b", "--to", "d"]).to_request();
    assert_eq!((from.key, from.range_end), (b"b".to_vec(), b"d".to_vec()));
    let open = list(&["--from", "b"]).to_request();
    assert_eq!((open.key, open.range_end), (b"b".to_vec(), vec![0]));
    let below = list(&["--to", "d"]).to_request();
    assert_eq!((below.key, below.range_end), (vec![0], b"d".to_vec()));
}

#[test]
fn conflicting_or_bad_options_are_usage_errors() {
    assert!(refused(&["list", "--prefix", "a", "--from", "b"]).contains("cannot be used"));
    assert!(refused(&["list", "--keys-only", "--count-only"]).contains("cannot be used"));
    assert!(refused(&["list", "--limit", "0"]).contains("--limit"));
    assert!(refused(&["list", "--sort-by", "size"]).contains("possible values"));
    assert!(refused(&["get", "k", "--rev=-1"]).contains("--rev"));
    assert!(refused(&["delete"]).contains("required"));
    assert!(refused(&["delete", "k", "--prefix", "p"]).contains("cannot be used"));
    assert!(refused(&["delete", "--prefix", "p", "--cas", "3"]).contains("cannot be used"));
    assert!(refused(&["compact"]).contains("required"));
    assert!(refused(&["compact", "0"]).contains("REV"));
    assert!(refused(&["watch"]).contains("required"));
    assert!(refused(&["watch", "k", "--prefix", "p"]).contains("cannot be used"));
    assert!(refused(&["watch", "--prefix", "p", "--count", "0"]).contains("--count"));
}

#[test]
fn get_delete_and_watch_arguments() {
    match parse(&["get", "k", "--rev", "4", "--index"]) {
        Command::Get(a) => assert_eq!((a.rev, a.index), (Some(4), true)),
        other => panic!("{other:?}"),
    }
    match parse(&["delete", "--prefix", "tmp/", "--prev-kv"]) {
        Command::Delete(a) => {
            assert_eq!(
                (a.key, a.prefix.as_deref(), a.prev_kv),
                (None, Some("tmp/"), true)
            )
        }
        other => panic!("{other:?}"),
    }
    match parse(&[
        "watch",
        "--prefix",
        "u/",
        "--rev",
        "3",
        "--prev-kv",
        "--count",
        "2",
    ]) {
        Command::Watch(a) => {
            let o = a.to_options();
            assert_eq!(o.key, b"u/".to_vec());
            assert_eq!(o.range_end, b"u0".to_vec());
            assert_eq!(o.start_revision, 3);
            assert!(o.prev_kv && !o.no_put && !o.no_delete && !o.progress_notify);
            assert_eq!(a.count, Some(2));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["watch", "-dash-key", "--no-put", "--progress"]) {
        Command::Watch(a) => {
            let o = a.to_options();
            assert_eq!((o.key, o.range_end), (b"-dash-key".to_vec(), vec![]));
            assert!(o.no_put && o.progress_notify);
        }
        other => panic!("{other:?}"),
    }
    match parse(&["watch", "--prefix", ""]) {
        Command::Watch(a) => {
            let o = a.to_options();
            assert_eq!((o.key, o.range_end), (vec![0], vec![0]));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["txn", "--json"]) {
        Command::Txn(a) => assert!(a.json),
        other => panic!("{other:?}"),
    }
    match parse(&["compact", "40", "--physical"]) {
        Command::Compact(a) => assert_eq!((a.rev, a.physical), (40, true)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn range_output_forms() {
    let r = RangeResponse {
        kvs: vec![kv("a", "1", 2), kv("b", "x y", 3)],
        more: false,
        count: 5,
    };
    assert_eq!(output::range_output(&r, false, false), "a = 1\nb = x y\n");
    assert_eq!(output::range_output(&r, true, false), "a\nb\n");
    assert_eq!(output::range_output(&r, false, true), "5\n");
    let empty = RangeResponse::default();
    assert_eq!(output::range_output(&empty, false, false), "");
    assert_eq!(
        output::kv_line(&KeyValue {
            key: vec![b'k', 0xff],
            ..kv("", "v", 1)
        }),
        "k\u{fffd} = v"
    );
}

#[test]
fn delete_output_forms() {
    let d = DeleteRangeResponse {
        deleted: 2,
        prev_kvs: vec![kv("t/1", "a", 2), kv("t/2", "b", 3)],
    };
    assert_eq!(
        output::delete_output(&d, 9, false),
        "deleted 2 (index 9)\nt/1 = a\nt/2 = b\n"
    );
    let one = DeleteRangeResponse {
        deleted: 1,
        prev_kvs: vec![kv("k", "old", 4)],
    };
    assert_eq!(
        output::delete_output(&one, 5, true),
        "OK (index 5)\nk = old\n"
    );
    assert_eq!(
        output::delete_output(&DeleteRangeResponse::default(), 5, false),
        "deleted 0 (index 5)\n"
    );
}

#[test]
fn event_lines() {
    let put = Event {
        kind: EventKind::Put,
        kv: kv("a", "2", 12),
        prev_kv: Some(kv("a", "1", 11)),
    };
    assert_eq!(output::event_line(&put, false), "PUT a = 2 (rev 12)");
    assert_eq!(
        output::event_line(&put, true),
        "PUT a = 2 (rev 12, prev: 1)"
    );
    let del = Event {
        kind: EventKind::Delete,
        kv: Event::delete_marker(b"a".to_vec(), 13),
        prev_kv: None,
    };
    assert_eq!(output::event_line(&del, true), "DELETE a (rev 13)");
    let v: serde_json::Value = serde_json::from_str(&output::event_json(&put)).unwrap();
    assert_eq!(v["type"], "put");
    assert_eq!(v["kv"]["key"], "a");
    assert_eq!(v["kv"]["mod_revision"], 12);
    assert_eq!(v["prev_kv"]["value"], "1");
    assert!(!output::event_json(&put).contains('\n'));
}

#[test]
fn txn_json_is_the_servers_answer_shape() {
    let reply = Reply {
        header: Header {
            cluster_id: 1,
            member_id: 2,
            revision: 11,
            raft_term: 3,
        },
        body: TxnResponse {
            succeeded: true,
            responses: vec![ResponseOp::Put(Revisioned {
                revision: 11,
                body: PutResponse {
                    prev_kv: Some(kv("counter", "7", 7)),
                },
            })],
        },
    };
    let v: serde_json::Value = serde_json::from_str(&output::txn_json(&reply)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "succeeded": true,
            "responses": [{"put": {"prev_kv": {"key": "counter", "value": "7", "index": 7,
                "create_revision": 7, "mod_revision": 7, "version": 1, "lease": 0}}}],
            "index": 11,
            "header": {"cluster_id": 1, "member_id": 2, "revision": 11, "raft_term": 3}
        })
    );
}

#[test]
fn selections() {
    assert_eq!(
        selection(Some("p/"), None, None),
        (b"p/".to_vec(), b"p0".to_vec())
    );
    assert_eq!(selection(Some(""), None, None), (vec![0], vec![0]));
    assert_eq!(selection(None, Some(""), None), (vec![0], vec![0]));
    assert_eq!(
        selection(None, Some("a"), Some("c")),
        (b"a".to_vec(), b"c".to_vec())
    );
}

#[test]
fn compacted_refusals_exit_2_and_missing_keys_1() {
    use crate::client::ClientError;
    assert_eq!(
        output::exit_code(&ClientError::Kv(KvError::Compacted {
            compact_revision: 4
        })),
        crate::cli::EXIT_USAGE
    );
    assert_eq!(
        output::exit_code(&ClientError::Kv(KvError::KeyNotFound)),
        crate::cli::EXIT_NOT_FOUND
    );
    let text = ClientError::Kv(KvError::Compacted {
        compact_revision: 4,
    })
    .to_string();
    assert_eq!(
        text,
        "mvcc: required revision has been compacted (compact revision 4)"
    );
}
