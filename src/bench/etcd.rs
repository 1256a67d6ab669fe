//! Requests and answers of etcd's v3 JSON gateway (grpc-gateway), as used by
//! `raftkv bench --target etcd`.
//!
//! Keys and values travel base64-encoded; 64-bit integers are JSON strings
//! (proto3 JSON mapping), though numbers are accepted too when parsing.
//!
//! | operation | request |
//! |---|---|
//! | put | `POST /v3/kv/put {"key":K,"value":V}` |
//! | linearizable read | `POST /v3/kv/range {"key":K}` |
//! | stale read | `POST /v3/kv/range {"key":K,"serializable":true}` |
//! | compare-and-swap | `POST /v3/kv/txn` comparing the key's `mod_revision`, putting on success |
//! | txn (two keys) | `POST /v3/kv/txn` comparing both keys' `mod_revision`, putting both on success, ranging both on failure |
//! | delete (`--cleanup`) | `POST /v3/kv/deleterange {"key":K}` |
//! | leader lookup | `POST /v3/maintenance/status {}` on each endpoint |

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

/// Path of the put call.
pub const PUT_PATH: &str = "/v3/kv/put";
/// Path of the range (read) call.
pub const RANGE_PATH: &str = "/v3/kv/range";
/// Path of the transaction call.
pub const TXN_PATH: &str = "/v3/kv/txn";
/// Path of the delete call.
pub const DELETE_PATH: &str = "/v3/kv/deleterange";
/// Path of the member status call (names the leader).
pub const STATUS_PATH: &str = "/v3/maintenance/status";

/// Base64 of `bytes` (standard alphabet, padded), as the gateway expects.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Appends the body of a put of `key` (raw) with `value_b64` (already
/// encoded) to `out`.
pub fn put_body(out: &mut Vec<u8>, key: &[u8], value_b64: &str) {
    out.extend_from_slice(b"{\"key\":\"");
    push_b64(out, key);
    out.extend_from_slice(b"\",\"value\":\"");
    out.extend_from_slice(value_b64.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Appends the body of a single-key range (read) to `out`.
/// `serializable` = served by the contacted member without a quorum round
/// (etcd's name for a possibly stale read).
pub fn range_body(out: &mut Vec<u8>, key: &[u8], serializable: bool) {
    out.extend_from_slice(b"{\"key\":\"");
    push_b64(out, key);
    if serializable {
        out.extend_from_slice(b"\",\"serializable\":true}");
    } else {
        out.extend_from_slice(b"\"}");
    }
}

/// Appends the body of a single-key delete to `out`.
pub fn delete_body(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"{\"key\":\"");
    push_b64(out, key);
    out.extend_from_slice(b"\"}");
}

/// Appends the body of a transaction "if `key`'s mod_revision is
/// `mod_revision` (0 = absent) then put `value`" to `out`.
pub fn cas_txn_body(out: &mut Vec<u8>, key: &[u8], value_b64: &str, mod_revision: i64) {
    use std::io::Write;
    out.extend_from_slice(b"{\"compare\":[{\"key\":\"");
    push_b64(out, key);
    let _ = write!(
        out,
        "\",\"target\":\"MOD\",\"result\":\"EQUAL\",\"mod_revision\":\"{mod_revision}\"}}],\"success\":[{{\"request_put\":{{\"key\":\""
    );
    push_b64(out, key);
    out.extend_from_slice(b"\",\"value\":\"");
    out.extend_from_slice(value_b64.as_bytes());
    out.extend_from_slice(b"\"}}]}");
}

/// Appends the body of the bench's transfer transaction to `out` (the
/// shape of RaftKV's `POST /txn` workload): if `a` and `b` still have the
/// mod revisions `ra` and `rb` (0 = absent), put `value_b64` into both,
/// otherwise range both.
pub fn transfer_txn_body(out: &mut Vec<u8>, a: &[u8], ra: i64, b: &[u8], rb: i64, value_b64: &str) {
    use std::io::Write;
    out.extend_from_slice(b"{\"compare\":[");
    for (i, (key, rev)) in [(a, ra), (b, rb)].into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":\"");
        push_b64(out, key);
        let _ = write!(
            out,
            "\",\"target\":\"MOD\",\"result\":\"EQUAL\",\"mod_revision\":\"{rev}\"}}"
        );
    }
    out.extend_from_slice(b"],\"success\":[");
    for (i, key) in [a, b].into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"request_put\":{\"key\":\"");
        push_b64(out, key);
        out.extend_from_slice(b"\",\"value\":\"");
        out.extend_from_slice(value_b64.as_bytes());
        out.extend_from_slice(b"\"}}");
    }
    out.extend_from_slice(b"],\"failure\":[");
    for (i, key) in [a, b].into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"request_range\":{\"key\":\"");
        push_b64(out, key);
        out.extend_from_slice(b"\"}}");
    }
    out.extend_from_slice(b"]}");
}

#[derive(Deserialize)]
struct FullTxnAnswer {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    header: RevisionHeader,
    #[serde(default)]
    responses: Vec<TxnOp>,
}

#[derive(Default, Deserialize)]
struct RevisionHeader {
    #[serde(default)]
    revision: Int,
}

#[derive(Deserialize)]
struct TxnOp {
    #[serde(default)]
    response_range: Option<RangeAnswer>,
}

/// What the transfer transaction's answer says: whether it succeeded, the
/// header revision, and the mod revision each failure-branch range found
/// (0 = absent; empty on success).
#[derive(Debug, PartialEq, Eq)]
pub struct TransferAnswer {
    /// The success branch ran.
    pub succeeded: bool,
    /// The store revision after it.
    pub revision: i64,
    /// Per op of the branch that ran: the range's mod revision (0 when
    /// absent or not a range).
    pub mod_revisions: Vec<i64>,
}

/// Parses the transfer transaction's answer.
pub fn parse_transfer_txn(body: &[u8]) -> Result<TransferAnswer, String> {
    let a: FullTxnAnswer = serde_json::from_slice(body).map_err(|e| format!("txn answer: {e}"))?;
    let mut mod_revisions = Vec::with_capacity(a.responses.len());
    for op in &a.responses {
        let rev = match op.response_range.as_ref().and_then(|r| r.kvs.first()) {
            Some(kv) => kv.mod_revision.value()?,
            None => 0,
        };
        mod_revisions.push(rev);
    }
    Ok(TransferAnswer {
        succeeded: a.succeeded,
        revision: a.header.revision.value()?,
        mod_revisions,
    })
}

fn push_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let n = B64
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer was sized for the encoding");
    out.truncate(start + n);
}

/// An int64 that the gateway writes as a string (or, from other encoders, a
/// number).
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Int {
    Text(String),
    Num(i64),
    #[default]
    #[serde(skip)]
    Missing,
}

impl Int {
    fn value(&self) -> Result<i64, String> {
        match self {
            Int::Text(s) => s.parse().map_err(|_| format!("{s:?} is not an integer")),
            Int::Num(n) => Ok(*n),
            Int::Missing => Ok(0),
        }
    }

    fn text(&self) -> String {
        match self {
            Int::Text(s) => s.clone(),
            Int::Num(n) => n.to_string(),
            Int::Missing => String::new(),
        }
    }
}

#[derive(Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    mod_revision: Int,
}

/// The key's mod_revision from a range answer, or `None` if the key is
/// absent (the gateway omits `kvs` then).
pub fn parse_range(body: &[u8]) -> Result<Option<i64>, String> {
    let answer: RangeAnswer =
        serde_json::from_slice(body).map_err(|e| format!("range answer: {e}"))?;
    match answer.kvs.first() {
        Some(kv) => Ok(Some(kv.mod_revision.value()?)),
        None => Ok(None),
    }
}

#[derive(Deserialize)]
struct DeleteAnswer {
    /// proto3 JSON omits 0.
    #[serde(default)]
    deleted: Int,
}

/// How many keys a delete removed.
pub fn parse_deleted(body: &[u8]) -> Result<i64, String> {
    let answer: DeleteAnswer =
        serde_json::from_slice(body).map_err(|e| format!("deleterange answer: {e}"))?;
    answer.deleted.value()
}

#[derive(Deserialize)]
struct TxnAnswer {
    /// proto3 JSON omits `false`.
    #[serde(default)]
    succeeded: bool,
}

/// Whether a transaction's comparison held (and its success branch ran).
pub fn parse_txn(body: &[u8]) -> Result<bool, String> {
    let answer: TxnAnswer = serde_json::from_slice(body).map_err(|e| format!("txn answer: {e}"))?;
    Ok(answer.succeeded)
}

#[derive(Deserialize)]
struct StatusAnswer {
    #[serde(default)]
    header: StatusHeader,
    #[serde(default)]
    leader: Int,
}

#[derive(Default, Deserialize)]
struct StatusHeader {
    #[serde(default)]
    member_id: Int,
}

/// `(member_id, leader_member_id)` from a maintenance status answer, as
/// decimal strings (empty when absent).
pub fn parse_status(body: &[u8]) -> Result<(String, String), String> {
    let answer: StatusAnswer =
        serde_json::from_slice(body).map_err(|e| format!("status answer: {e}"))?;
    Ok((answer.header.member_id.text(), answer.leader.text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn as_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn encodes_put_range_and_txn_bodies() {
        let value = b64(b"hello world");
        assert_eq!(value, "aGVsbG8gd29ybGQ=");
        let mut out = Vec::new();
        put_body(&mut out, b"bench/01", &value);
        assert_eq!(
            as_json(&out),
            json!({"key": "YmVuY2gvMDE=", "value": "aGVsbG8gd29ybGQ="})
        );

        out.clear();
        range_body(&mut out, b"k", false);
        assert_eq!(as_json(&out), json!({"key": "aw=="}));
        out.clear();
        range_body(&mut out, b"k", true);
        assert_eq!(as_json(&out), json!({"key": "aw==", "serializable": true}));

        out.clear();
        cas_txn_body(&mut out, b"ab", "dg==", 42);
        assert_eq!(
            as_json(&out),
            json!({
                "compare": [{"key": "YWI=", "target": "MOD", "result": "EQUAL", "mod_revision": "42"}],
                "success": [{"request_put": {"key": "YWI=", "value": "dg=="}}]
            })
        );
    }

    #[test]
    fn the_transfer_txn_body_and_answers() {
        let mut out = Vec::new();
        transfer_txn_body(&mut out, b"a", 7, b"b", 0, "dg==");
        assert_eq!(
            as_json(&out),
            json!({
                "compare": [
                    {"key": "YQ==", "target": "MOD", "result": "EQUAL", "mod_revision": "7"},
                    {"key": "Yg==", "target": "MOD", "result": "EQUAL", "mod_revision": "0"}],
                "success": [
                    {"request_put": {"key": "YQ==", "value": "dg=="}},
                    {"request_put": {"key": "Yg==", "value": "dg=="}}],
                "failure": [{"request_range": {"key": "YQ=="}}, {"request_range": {"key": "Yg=="}}]
            })
        );
        let ok = br#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{}}},{"response_put":{}}]}"#;
        assert_eq!(
            parse_transfer_txn(ok).unwrap(),
            TransferAnswer {
                succeeded: true,
                revision: 12,
                mod_revisions: vec![0, 0]
            }
        );
        // proto3 JSON omits `succeeded: false` and an empty `kvs`.
        let failed = br#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{},"kvs":[{"key":"YQ==","mod_revision":"9"}],"count":"1"}},{"response_range":{"header":{}}}]}"#;
        assert_eq!(
            parse_transfer_txn(failed).unwrap(),
            TransferAnswer {
                succeeded: false,
                revision: 13,
                mod_revisions: vec![9, 0]
            }
        );
        assert!(parse_transfer_txn(b"not json").is_err());
        assert!(parse_transfer_txn(br#"{"header":{"revision":"x"}}"#).is_err());
    }

    #[test]
    fn base64_of_every_length_round_trips() {
        for len in 0..40usize {
            let key: Vec<u8> = (0..len as u8).map(|i| b'a' + i % 26).collect();
            let mut out = Vec::new();
            range_body(&mut out, &key, false);
            let v = as_json(&out);
            let decoded = B64.decode(v["key"].as_str().unwrap()).unwrap();
            assert_eq!(decoded, key);
        }
    }

    #[test]
    fn parses_answers() {
        let found = br#"{"header":{"revision":"9"},"kvs":[{"key":"aw==","create_revision":"2","mod_revision":"7","version":"3","value":"dg=="}],"count":"1"}"#;
        assert_eq!(parse_range(found).unwrap(), Some(7));
        assert_eq!(
            parse_range(br#"{"kvs":[{"mod_revision":12}]}"#).unwrap(),
            Some(12)
        );
        assert_eq!(
            parse_range(br#"{"header":{"revision":"9"}}"#).unwrap(),
            None
        );
        assert!(parse_range(b"not json").is_err());
        assert!(parse_range(br#"{"kvs":[{"mod_revision":"x"}]}"#).is_err());

        assert!(parse_txn(br#"{"header":{},"succeeded":true,"responses":[]}"#).unwrap());
        assert!(!parse_txn(br#"{"header":{}}"#).unwrap());

        let status = br#"{"header":{"cluster_id":"1","member_id":"8211f1d0f64f3269","revision":"1"},"version":"3.4.23","leader":"8211f1d0f64f3269"}"#;
        assert_eq!(
            parse_status(status).unwrap(),
            (
                "8211f1d0f64f3269".to_string(),
                "8211f1d0f64f3269".to_string()
            )
        );
    }
}
