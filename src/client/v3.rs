//! The etcd v3 data model over the JSON API (docs/api.md): ranges at a
//! revision, range deletes, transactions, compaction and watch.
//!
//! Requests are built from the data model's own types ([`crate::kv`]), so a
//! caller writes the same [`RangeRequest`] or [`TxnRequest`] it would hand
//! to the state machine; answers come back as the data model's types too,
//! parsed with the server's serde types ([`crate::server::json`]) so the
//! client reads exactly what the server writes. Every answer carries the
//! [`Header`].
//!
//! Retry rules are those of the single-key calls: reads are retried
//! anywhere; a range delete, a transaction that writes, and a compaction
//! are not retried after an ambiguous failure (a second compaction at the
//! same revision would fail, and a second transaction could see its own
//! first effect). A transaction with no put or delete at any depth is a
//! read.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use percent_encoding::percent_encode;

use super::types::{Header, Reply};
use super::{parse, snippet, unexpected, Answer, Client, ClientError, Consistency, Kind, Op};
use crate::kv::{
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, KvError, RangeRequest, RangeResponse,
    RequestOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use crate::server::json::{
    JsonCompactReply, JsonCompactRequest, JsonDeleteReply, JsonGetReply, JsonHeader,
    JsonRangeReply, JsonTxnReply, JsonTxnRequest,
};

pub mod watch;

/// Percent-encodes bytes for a query string value: everything but the URL
/// "unreserved" characters, so any byte (`\0`, `&`, `+`, non-UTF-8) arrives
/// as itself.
pub fn encode_bytes(b: &[u8]) -> String {
    percent_encode(b, super::COMPONENT).to_string()
}

/// Percent-encodes a binary key as one path segment (see
/// [`super::encode_key`] for why dot segments are escaped).
pub fn encode_key_bytes(key: &[u8]) -> String {
    match key {
        b"." => "%2E".to_string(),
        b".." => "%2E%2E".to_string(),
        _ => encode_bytes(key),
    }
}

/// The query parameters selecting etcd's `(key, range_end)`.
///
/// - empty `range_end`: the single key, sent as `start=K&end=K\0` (the
///   only keys in that range), because `GET /kv` has no `key` parameter;
/// - otherwise `start=key&end=range_end`, with `end=%00` meaning "no end"
///   as in etcd; an empty `key` leaves `start` out (from the first key).
pub(crate) fn range_selector(key: &[u8], range_end: &[u8]) -> Result<Vec<String>, ClientError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(ClientError::BadRequest(
            "the key must not be empty".to_string(),
        ));
    }
    let mut q = Vec::new();
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        q.push(format!("start={}", encode_bytes(key)));
        q.push(format!("end={}", encode_bytes(&end)));
    } else {
        if !key.is_empty() {
            q.push(format!("start={}", encode_bytes(key)));
        }
        q.push(format!("end={}", encode_bytes(range_end)));
    }
    Ok(q)
}

fn sort_order_param(o: SortOrder) -> Option<&'static str> {
    match o {
        SortOrder::None => None,
        SortOrder::Ascend => Some("ascend"),
        SortOrder::Descend => Some("descend"),
    }
}

fn sort_target_param(t: SortTarget) -> Option<&'static str> {
    match t {
        SortTarget::Key => None,
        SortTarget::Version => Some("version"),
        SortTarget::Create => Some("create"),
        SortTarget::Mod => Some("mod"),
        SortTarget::Value => Some("value"),
    }
}

/// The path and query of `GET /kv` for `r`, continuing after `after`.
///
/// `limit` 0 (etcd's "no limit") is sent as no `limit` parameter, which
/// the server reads as its default page size: `GET /kv` pages, and
/// [`Client::range_all`] follows the pages.
pub(crate) fn range_path(r: &RangeRequest, after: Option<&[u8]>) -> Result<String, ClientError> {
    let mut q = range_selector(&r.key, &r.range_end)?;
    if r.limit < 0 {
        return Err(ClientError::BadRequest(format!(
            "limit must not be negative (got {})",
            r.limit
        )));
    }
    if r.limit > 0 {
        q.push(format!("limit={}", r.limit));
    }
    if let Some(a) = after {
        q.push(format!("after={}", encode_bytes(a)));
    }
    let nums = [
        ("revision", r.revision),
        ("min_create_revision", r.min_create_revision),
        ("max_create_revision", r.max_create_revision),
        ("min_mod_revision", r.min_mod_revision),
        ("max_mod_revision", r.max_mod_revision),
    ];
    for (name, v) in nums {
        if v != 0 {
            q.push(format!("{name}={v}"));
        }
    }
    if r.keys_only {
        q.push("keys_only=true".into());
    }
    if r.count_only {
        q.push("count_only=true".into());
    }
    if let Some(o) = sort_order_param(r.sort_order) {
        q.push(format!("sort_order={o}"));
    }
    if let Some(t) = sort_target_param(r.sort_target) {
        q.push(format!("sort_target={t}"));
    }
    if r.serializable {
        q.push("consistency=stale".into());
    }
    Ok(format!("/kv?{}", q.join("&")))
}

/// The path and query of `DELETE /kv` for `d`.
pub(crate) fn delete_path(d: &DeleteRangeRequest) -> Result<String, ClientError> {
    let mut q = range_selector(&d.key, &d.range_end)?;
    if d.prev_kv {
        q.push("prev_kv=true".into());
    }
    Ok(format!("/kv?{}", q.join("&")))
}

/// True when the transaction writes nothing at any depth (so it may be
/// retried like a read).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| match op {
        RequestOp::Range(_) => true,
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        RequestOp::Txn(inner) => txn_is_read_only(inner),
    })
}

impl From<JsonHeader> for Header {
    fn from(h: JsonHeader) -> Header {
        Header {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        }
    }
}

impl From<Header> for JsonHeader {
    fn from(h: Header) -> JsonHeader {
        JsonHeader {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        }
    }
}

/// The error an answer other than 200 stands for: the data model's refusal
/// ([`ClientError::Kv`], from the body's `code`) when it is one, else the
/// generic mapping.
pub(super) fn api_error(answer: &Answer) -> ClientError {
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&answer.body) {
        if let Some(e) = crate::server::json::kv_error_from_body(&body) {
            return ClientError::Kv(e);
        }
    }
    unexpected(answer)
}

/// A body the client parsed but could not turn into the data model's
/// types (bad base64, say).
fn invalid(answer: &Answer, what: impl std::fmt::Display) -> ClientError {
    ClientError::InvalidResponse {
        url: answer.url.clone(),
        message: format!("{what} in {}", snippet(&answer.body)),
    }
}

impl Client {
    /// `GET /kv` for `req`: one page of a range (`limit` 0 = the server's
    /// default page of 1000; larger limits are clamped to 10000), at
    /// `req.revision` (0 = current), with etcd's filters, sort and
    /// `keys_only` / `count_only`. `req.serializable` makes it a stale read
    /// from any node. `after` continues strictly after that key (key order
    /// only).
    pub async fn range_page(
        &self,
        req: &RangeRequest,
        after: Option<&[u8]>,
    ) -> Result<Reply<RangeResponse>, ClientError> {
        let op = Op {
            method: Method::GET,
            path: range_path(req, after)?,
            body: None,
            kind: Kind::Read,
            any_node: req.serializable,
        };
        let answer = self.execute(&op).await?;
        if answer.status != StatusCode::OK {
            return Err(api_error(&answer));
        }
        let reply: JsonRangeReply = parse(&answer)?;
        let body = RangeResponse::try_from(&reply.range).map_err(|e| invalid(&answer, e))?;
        Ok(Reply {
            header: reply.header.into(),
            body,
        })
    }

    /// One `GET /kv` for `req` (see [`Client::range_page`]).
    pub async fn range(&self, req: &RangeRequest) -> Result<Reply<RangeResponse>, ClientError> {
        self.range_page(req, None).await
    }

    /// Every key of `req`'s range, fetched page by page (`req.limit` is the
    /// page size, 0 = the server's default), all pages read at one revision:
    /// `req.revision`, or the revision of the first page when 0, so the
    /// listing is one snapshot. Needs key order (the default sort); the
    /// answer's `count` is the first page's and `more` is false.
    pub async fn range_all(&self, req: &RangeRequest) -> Result<Reply<RangeResponse>, ClientError> {
        if !(req.sort_target == SortTarget::Key
            && matches!(req.sort_order, SortOrder::None | SortOrder::Ascend))
        {
            return Err(ClientError::BadRequest(
                "a paged listing needs key order; give a limit to sort by another field".into(),
            ));
        }
        let mut req = req.clone();
        let first = self.range_page(&req, None).await?;
        let header = first.header;
        let count = first.body.count;
        let mut more = first.body.more;
        let mut kvs = first.body.kvs;
        if req.revision == 0 {
            req.revision = header.revision;
        }
        while more && !req.count_only {
            let after = kvs.last().map(|kv| kv.key.clone());
            let Some(after) = after else {
                return Err(ClientError::InvalidResponse {
                    url: self.nodes().join(","),
                    message: "a range said more=true but returned no keys".into(),
                });
            };
            let page = self.range_page(&req, Some(&after)).await?;
            if page.body.kvs.first().is_some_and(|kv| kv.key <= after) {
                return Err(ClientError::InvalidResponse {
                    url: self.nodes().join(","),
                    message: "a range page did not advance past the previous one".into(),
                });
            }
            more = page.body.more;
            kvs.extend(page.body.kvs);
        }
        Ok(Reply {
            header,
            body: RangeResponse {
                kvs,
                more: false,
                count,
            },
        })
    }

    /// `GET /kv/{key}?revision=R`: the key as of revision `revision`
    /// (0 = current). A key absent at that revision is
    /// [`ClientError::NotFound`]; a revision below the compact revision is
    /// [`ClientError::Kv`] with [`KvError::Compacted`].
    pub async fn get_at(
        &self,
        key: &[u8],
        revision: i64,
        consistency: Consistency,
    ) -> Result<Reply<KeyValue>, ClientError> {
        if key.is_empty() {
            return Err(ClientError::BadRequest("the key must not be empty".into()));
        }
        let mut q = Vec::new();
        if revision != 0 {
            q.push(format!("revision={revision}"));
        }
        if consistency == Consistency::Stale {
            q.push("consistency=stale".into());
        }
        let mut path = format!("/kv/{}", encode_key_bytes(key));
        if !q.is_empty() {
            path.push('?');
            path.push_str(&q.join("&"));
        }
        let op = Op {
            method: Method::GET,
            path,
            body: None,
            kind: Kind::Read,
            any_node: consistency == Consistency::Stale,
        };
        let answer = self.execute(&op).await?;
        match answer.status {
            StatusCode::OK => {
                let reply: JsonGetReply = parse(&answer)?;
                let kv = KeyValue::try_from(&reply.record).map_err(|e| invalid(&answer, e))?;
                Ok(Reply {
                    header: reply.header.into(),
                    body: kv,
                })
            }
            // A missing key's 404 has no `code` (the data model's codes
            // are all 400/410/413 on a read).
            StatusCode::NOT_FOUND => Err(ClientError::NotFound {
                key: String::from_utf8_lossy(key).into_owned(),
            }),
            _ => Err(api_error(&answer)),
        }
    }

    /// `DELETE /kv?start=…&end=…`: deletes `req`'s range in one revision,
    /// returning the number deleted and, with `prev_kv`, the records. An
    /// empty range is not an error (0 deleted). Not retried after an
    /// ambiguous failure.
    pub async fn delete_range(
        &self,
        req: &DeleteRangeRequest,
    ) -> Result<Reply<DeleteRangeResponse>, ClientError> {
        let op = Op {
            method: Method::DELETE,
            path: delete_path(req)?,
            body: None,
            kind: Kind::UnsafeWrite,
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        if answer.status != StatusCode::OK {
            return Err(api_error(&answer));
        }
        let reply: JsonDeleteReply = parse(&answer)?;
        let prev_kvs = reply
            .prev_kvs
            .iter()
            .map(KeyValue::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&answer, e))?;
        Ok(Reply {
            header: reply.header.into(),
            body: DeleteRangeResponse {
                deleted: reply.deleted,
                prev_kvs,
            },
        })
    }

    /// `POST /txn`: runs the transaction; a failed compare is an answer
    /// (`succeeded: false`), not an error. Every op's answer carries the
    /// transaction's revision (the JSON has no per-op revision).
    pub async fn txn(&self, req: &TxnRequest) -> Result<Reply<TxnResponse>, ClientError> {
        let body = serde_json::to_vec(&JsonTxnRequest::from_request(req))
            .map_err(|e| ClientError::BadRequest(format!("cannot encode the txn: {e}")))?;
        let op = Op {
            method: Method::POST,
            path: "/txn".into(),
            body: Some(Bytes::from(body)),
            kind: if txn_is_read_only(req) {
                Kind::Read
            } else {
                Kind::UnsafeWrite
            },
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        if answer.status != StatusCode::OK {
            return Err(api_error(&answer));
        }
        let reply: JsonTxnReply = parse(&answer)?;
        let body = reply
            .txn
            .to_response(reply.index)
            .map_err(|e| invalid(&answer, e))?;
        Ok(Reply {
            header: reply.header.into(),
            body,
        })
    }

    /// `POST /compact`: discards the history before `revision`; reads below
    /// it fail with [`KvError::Compacted`] from then on. `physical` waits
    /// until the history is physically removed. Returns the compact
    /// revision now in force.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<Reply<i64>, ClientError> {
        let revision = u64::try_from(revision).map_err(|_| {
            ClientError::Kv(KvError::NegativeField {
                field: "revision".into(),
                value: revision,
            })
        })?;
        let body = serde_json::to_vec(&JsonCompactRequest { revision, physical })
            .map_err(|e| ClientError::BadRequest(format!("cannot encode the request: {e}")))?;
        let op = Op {
            method: Method::POST,
            path: "/compact".into(),
            body: Some(Bytes::from(body)),
            kind: Kind::UnsafeWrite,
            any_node: false,
        };
        let answer = self.execute(&op).await?;
        if answer.status != StatusCode::OK {
            return Err(api_error(&answer));
        }
        let reply: JsonCompactReply = parse(&answer)?;
        Ok(Reply {
            header: reply.header.into(),
            body: reply.compact_revision,
        })
    }

    /// The time one long poll may take: the server's wait plus the usual
    /// attempt timeout for the rest of the exchange.
    pub(crate) fn poll_timeout(&self, wait: Duration) -> Duration {
        wait + self.inner.config.attempt_timeout
    }
}

#[cfg(test)]
mod tests;
