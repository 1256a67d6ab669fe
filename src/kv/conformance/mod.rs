//! Conformance tests of the etcd v3 semantics: one test per etcd rule
//! ([`rules`]), and property tests ([`prop`]) against a deliberately naive
//! model ([`oracle`]).

mod oracle;
mod prop;
mod rules;

use super::*;

/// Key bytes from a string.
fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    }
}

fn del(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: range_end.to_vec(),
        prev_kv: false,
    }
}

fn rng(key: &str, range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: range_end.to_vec(),
        ..RangeRequest::default()
    }
}

/// Every key.
fn all() -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    }
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        key: b(key),
        range_end: Vec::new(),
        result,
        target,
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// Applies a command that must succeed; returns its answer.
fn ok(s: &mut MemMvcc, cmd: Command) -> Revisioned<CommandResponse> {
    match s.apply(&cmd).answer {
        Ok(answer) => answer,
        Err(e) => panic!("{cmd:?} refused: {e}"),
    }
}

/// Puts each `(key, value)` in its own revision.
fn store_with(pairs: &[(&str, &str)]) -> MemMvcc {
    let mut s = MemMvcc::new();
    for (k, v) in pairs {
        ok(&mut s, Command::Put(put(k, v)));
    }
    s
}

/// The key's current record.
fn current(s: &MemMvcc, key: &str) -> Option<KeyValue> {
    s.range(&rng(key, b"")).unwrap().body.kvs.pop()
}

/// The keys of a range answer, as strings.
fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}
