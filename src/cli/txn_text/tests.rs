use super::*;
use crate::kv::{DeleteRangeResponse, PutResponse, RangeResponse, Revisioned};

fn put(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..PutRequest::default()
    })
}

fn del(k: &[u8], end: &[u8]) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: k.to_vec(),
        range_end: end.to_vec(),
        prev_kv: false,
    })
}

fn get(k: &[u8], end: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: k.to_vec(),
        range_end: end.to_vec(),
        ..RangeRequest::default()
    })
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        key: k.as_bytes().to_vec(),
        range_end: vec![],
        result,
        target,
    }
}

fn err(input: &str) -> String {
    parse_txn_text(input).unwrap_err().to_string()
}

#[test]
fn every_compare_form() {
    let t = parse_txn_text(
        "value(\"k\") = \"v\"\n\
         mod(\"k\") > \"5\"\n\
         create(\"k\") = \"0\"\n\
         version(\"k\") != \"2\"\n\
         lease(\"k\") < 7\n\
         value( \"a b\" )!=\"x \\\"y\\\"\"\n",
    )
    .unwrap();
    assert_eq!(
        t.compare,
        vec![
            cmp(
                "k",
                CompareResult::Equal,
                CompareTarget::Value(b"v".to_vec())
            ),
            cmp("k", CompareResult::Greater, CompareTarget::ModRevision(5)),
            cmp("k", CompareResult::Equal, CompareTarget::CreateRevision(0)),
            cmp("k", CompareResult::NotEqual, CompareTarget::Version(2)),
            cmp("k", CompareResult::Less, CompareTarget::Lease(7)),
            cmp(
                "a b",
                CompareResult::NotEqual,
                CompareTarget::Value(b"x \"y\"".to_vec())
            ),
        ]
    );
    assert!(t.success.is_empty() && t.failure.is_empty());
}

#[test]
fn every_op_form_in_both_branches() {
    let text = "mod(\"k\") > \"5\"\n\n\
        put k v\n\
        put k \"value with spaces\"\n\
        put --prev-kv k2 \"\"\n\
        del k\n\
        del a c\n\
        del --prefix p\n\
        del --prev-kv k\n\
        get k\n\
        get a \"\\0\"\n\
        get --prefix p\n\
        get --prefix \"\"\n\
        \n\
        # a comment does not end a section\n\
        delete x\n\
        get y\n";
    let t = parse_txn_text(text).unwrap();
    assert_eq!(
        t.success,
        vec![
            put("k", "v"),
            put("k", "value with spaces"),
            RequestOp::Put(PutRequest {
                key: b"k2".to_vec(),
                prev_kv: true,
                ..PutRequest::default()
            }),
            del(b"k", b""),
            del(b"a", b"c"),
            del(b"p", b"q"),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                range_end: vec![],
                prev_kv: true
            }),
            get(b"k", b""),
            get(b"a", &[0]),
            get(b"p", b"q"),
            get(&[0], &[0]),
        ]
    );
    assert_eq!(t.failure, vec![del(b"x", b""), get(b"y", b"")]);
}

#[test]
fn blank_lines_separate_sections_and_empty_sections_are_allowed() {
    let t = parse_txn_text("\n\nput a b\n").unwrap();
    assert!(t.compare.is_empty() && t.success.is_empty());
    assert_eq!(t.failure, vec![put("a", "b")]);
    assert_eq!(parse_txn_text("").unwrap(), TxnRequest::default());
    // Trailing blank lines are fine; text after a fourth section is not.
    assert!(parse_txn_text("\nput a b\n\nput c d\n\n\n").is_ok());
    assert_eq!(
        err("\n\n\nput a b\n"),
        "line 4: unexpected text after the failure ops (a transaction has three sections)"
    );
}

#[test]
fn json_form_is_accepted() {
    let t = parse_txn_text(
        "  {\"compare\":[{\"key\":\"k\",\"target\":\"mod\",\"result\":\">\",\"mod_revision\":5}],\
         \"success\":[{\"put\":{\"key\":\"k\",\"value\":\"v\"}}]}",
    )
    .unwrap();
    assert_eq!(
        t.compare,
        vec![cmp(
            "k",
            CompareResult::Greater,
            CompareTarget::ModRevision(5)
        )]
    );
    assert_eq!(t.success, vec![put("k", "v")]);
    assert_eq!(
        err("{\"success\":[{\"put\":{\"key\":\"k\"}}]}"),
        "success[0].put: `value` is required"
    );
    assert!(err("{nope").starts_with("malformed JSON: "));
}

#[test]
fn compare_errors() {
    let hint = "(expected e.g. `mod(\"key\") > \"5\"`)";
    let cases = [
        ("mod \"k\" > 5", "no `(` after the target"),
        ("mod(k) > 5", "the key must be double-quoted"),
        ("mod(\"k\" > 5", "no `)` after the key"),
        (
            "mod(\"k\") >= 5",
            "`>=` is not an operator (use one of =, !=, <, >)",
        ),
        (
            "mod(\"k\") == 5",
            "`==` is not an operator (use one of =, !=, <, >)",
        ),
        (
            "mod(\"k\") ~ 5",
            "expected one of =, !=, <, > after the key, got `~ 5`",
        ),
        ("mod(\"k\") >", "no value after the operator"),
        ("mod(\"k\") > 5 6", "unexpected `6` after the value"),
        (
            "version(\"k\") = \"two\"",
            "a `version` compare needs an integer, got `two`",
        ),
        (
            "size(\"k\") = 1",
            "unknown target `size` (expected value, version, create, mod or lease)",
        ),
        ("value(\"\") = \"x\"", "the key must not be empty"),
    ];
    for (line, reason) in cases {
        assert_eq!(
            err(line),
            format!("line 1: bad compare: {reason} {hint}"),
            "{line}"
        );
    }
    let long = "k".repeat(1025);
    assert_eq!(
        err(&format!("value(\"{long}\") = \"x\"")),
        format!("line 1: bad compare: the key is 1025 bytes long; at most 1024 are allowed {hint}")
    );
}

#[test]
fn op_errors() {
    let cases = [
        (
            "\nset k v",
            "line 2: unknown operation `set` (expected put, del or get)",
        ),
        (
            "\nput k",
            "line 2: put: expected `put KEY VALUE`, got 1 argument(s) (quote a value with spaces)",
        ),
        (
            "\nput k a b",
            "line 2: put: expected `put KEY VALUE`, got 3 argument(s) (quote a value with spaces)",
        ),
        ("\nput --prefix k v", "line 2: put: unknown flag `--prefix`"),
        ("\nget --prev-kv k", "line 2: get: unknown flag `--prev-kv`"),
        ("\ndel --force k", "line 2: del: unknown flag `--force`"),
        ("\ndel", "line 2: del: expected `del KEY [END]`"),
        ("\nget a b c", "line 2: get: expected `get KEY [END]`"),
        (
            "\nget --prefix",
            "line 2: get: expected `get --prefix PREFIX`",
        ),
        (
            "\ndel --prefix a b",
            "line 2: del: expected `del --prefix PREFIX`",
        ),
        (
            "\ndel a \"\"",
            "line 2: del: the range end must not be empty",
        ),
        ("\nput \"\" v", "line 2: put: the key must not be empty"),
        ("\n\nget \"\"", "line 3: get: the key must not be empty"),
        ("\nput k \"open", "line 2: unterminated quoted string"),
        ("\nput k \"a\\", "line 2: unterminated quoted string"),
        (
            "\nput k \"a\\qb\"",
            "line 2: unknown escape `\\q` (use \\\", \\\\, \\n, \\t or \\0)",
        ),
        (
            "value(\"k\") = \"v\\x\"",
            "line 1: unknown escape `\\x` (use \\\", \\\\, \\n, \\t or \\0)",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(err(input), want, "{input:?}");
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: 0,
    }
}

#[test]
fn response_text_is_etcdctl_like() {
    let r = TxnResponse {
        succeeded: true,
        responses: vec![
            ResponseOp::Put(Revisioned {
                revision: 3,
                body: PutResponse { prev_kv: None },
            }),
            ResponseOp::Put(Revisioned {
                revision: 3,
                body: PutResponse {
                    prev_kv: Some(kv("k", "old")),
                },
            }),
            ResponseOp::DeleteRange(Revisioned {
                revision: 3,
                body: DeleteRangeResponse {
                    deleted: 2,
                    prev_kvs: vec![kv("a", "1"), kv("b", "2")],
                },
            }),
            ResponseOp::Range(Revisioned {
                revision: 3,
                body: RangeResponse {
                    kvs: vec![kv("x", "y z"), kv("w", "")],
                    more: false,
                    count: 2,
                },
            }),
            ResponseOp::Txn(TxnResponse {
                succeeded: false,
                responses: vec![ResponseOp::DeleteRange(Revisioned {
                    revision: 3,
                    body: DeleteRangeResponse::default(),
                })],
            }),
        ],
    };
    assert_eq!(
        format_txn_response(&r),
        "SUCCESS\n\nOK\n\nOK\nk\nold\n\n2\na\n1\nb\n2\n\nx\ny z\nw\n\n\nFAILURE\n\n0\n"
    );
    assert_eq!(format_txn_response(&TxnResponse::default()), "FAILURE\n");
}

#[test]
fn docs_text_example_parses() {
    let doc = include_str!("../../../docs/api.md");
    let after = doc
        .split_once("etcdctl-like text form")
        .expect("docs/api.md shows the text form")
        .1;
    let block = after
        .split("```")
        .nth(1)
        .expect("a code block")
        .trim_start_matches('\n');
    let t = parse_txn_text(block).unwrap();
    assert_eq!(
        t.compare,
        vec![cmp(
            "counter",
            CompareResult::Equal,
            CompareTarget::ModRevision(7)
        )]
    );
    assert_eq!(
        t.success,
        vec![
            put("counter", "8"),
            del(b"tmp/", b"tmp0"),
            get(b"user/", b"user0")
        ]
    );
    assert_eq!(t.failure, vec![get(b"counter", b"")]);
}

#[test]
fn binary_keys_and_values_print_with_replacement_characters() {
    let r = TxnResponse {
        succeeded: true,
        responses: vec![ResponseOp::Range(Revisioned {
            revision: 1,
            body: RangeResponse {
                kvs: vec![KeyValue {
                    key: vec![b'k', 0xff],
                    value: vec![0xc3, 0x28],
                    ..KeyValue::default()
                }],
                more: false,
                count: 1,
            },
        })],
    };
    assert_eq!(format_txn_response(&r), "SUCCESS\n\nk\u{fffd}\n\u{fffd}(\n");
}
