//! The JSON API of the etcd v3 data model: serde types and pure conversions
//! between HTTP inputs/outputs and [`crate::kv`]'s requests and responses.
//!
//! Nothing here does I/O or touches the node: the handlers
//! ([`super::kv`], [`super::watch`]) parse the query or body with these
//! functions, run the [`crate::kv`] request, and serialize the answer with
//! the `Json*` types. docs/api.md describes
//! every endpoint with examples; this is the summary.
//!
//! # Conventions
//!
//! - Every answer has `"header": {"cluster_id","member_id","revision",
//!   "raft_term"}` ([`JsonHeader`]).
//! - A record ([`JsonRecord`]) is `{"key","value","index","create_revision",
//!   "mod_revision","version","lease"}` with `index == mod_revision` (the
//!   old contract's name, kept so existing clients keep working). Keys and
//!   values are JSON strings when they are UTF-8; otherwise the field is
//!   `"key_base64"` / `"value_base64"` (standard alphabet, padded) instead.
//! - In request bodies every byte field (`key`, `range_end`, `prefix`,
//!   `start`, `end`, `after`, `value`) may likewise be given as
//!   `<field>_base64`; giving both forms is an error. Query strings carry
//!   bytes percent-encoded, so they need no base64 form.
//! - Ranges follow etcd: `prefix=P` is `[P, prefix_end(P))`; `start=S&end=E`
//!   is `[S, E)`; `end` = `"\0"` (`%00`) means every key ≥ `S`; `start`
//!   alone means every key ≥ `S`; `end` alone starts at the first key.
//! - Bad input is a [`JsonError`] (HTTP 400 through [`ApiError`]);
//!   refusals of the data model are [`KvError`]s, mapped by [`kv_error`]
//!   (compacted → 410 with `compact_revision`, future revision and
//!   validation → 400). A transaction whose compares fail is not an error:
//!   it answers 200 with `"succeeded": false`.
//!
//! # Endpoints
//!
//! | request | parsed by | answer |
//! |---|---|---|
//! | `GET /kv?prefix=…` or `?start=…&end=…` | [`RangeQuery::from_query`] | [`JsonRangeReply`] |
//! | `GET /kv/{key}?revision=R` | [`key_read_request`] | [`JsonGetReply`] |
//! | `DELETE /kv?prefix=…` or `?start=…&end=…` | [`delete_query`] | [`JsonDeleteReply`] |
//! | `POST /txn` | [`parse_txn_body`] | [`JsonTxnReply`] |
//! | `POST /compact` | [`parse_compact_body`] | [`JsonCompactReply`] |
//! | `GET /watch?…` | [`WatchQuery::from_query`] | SSE ([`sse_events`], [`sse_progress`], [`sse_canceled`]) or long-poll [`JsonWatchBatch`] |

// The client-side halves (answers back to `kv` types, requests to JSON)
// are used by tests and the CLI only, not by the server.
#![allow(dead_code)]

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kv::{
    prefix_end, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyRange, KeyValue, KvError, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, Revisioned, SortOrder, SortTarget,
    TxnRequest, TxnResponse, MAX_KEY_BYTES,
};

use super::error::ApiError;
use super::input::{check_key, percent_decode_strict, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// Default time a long-poll `GET /watch` waits for an event.
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(30);
/// Longest accepted `?wait=`: longer polls outlive common proxy timeouts.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(60);

/// Why an HTTP input is not a valid request. Every variant is a client
/// error (400); the text says which field was wrong and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// A query parameter this endpoint does not know.
    #[error("unknown query parameter `{name}` (allowed here: {allowed})")]
    UnknownParam {
        /// The parameter given.
        name: String,
        /// The endpoint's parameters, comma-separated.
        allowed: String,
    },
    /// A query parameter given twice.
    #[error("query parameter `{0}` given more than once")]
    RepeatedParam(String),
    /// A malformed percent-escape or non-UTF-8 text where text is needed.
    #[error("{0}")]
    Encoding(String),
    /// A number that is not a non-negative integer (or exceeds i64).
    #[error("`{field}` must be a non-negative integer, got `{value}`")]
    BadNumber {
        /// The field.
        field: String,
        /// The text given.
        value: String,
    },
    /// A boolean that is not `true`/`false`/`1`/`0`/empty.
    #[error("`{field}` must be `true` or `false`, got `{value}`")]
    BadBool {
        /// The field.
        field: String,
        /// The text given.
        value: String,
    },
    /// A value outside an enumeration.
    #[error("`{field}` must be one of {expected}, got `{value}`")]
    BadChoice {
        /// The field.
        field: String,
        /// The text given.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// `limit=0` on `GET /kv` (the contract pages at least one key).
    #[error("`limit` must be at least 1")]
    ZeroLimit,
    /// Two fields that exclude each other.
    #[error("`{0}` and `{1}` cannot be combined")]
    Conflict(String, String),
    /// A required field is absent.
    #[error("`{0}` is required")]
    Missing(String),
    /// None of the fields that select keys was given.
    #[error("one of {0} is required")]
    NoSelector(&'static str),
    /// `after` with an order other than ascending by key.
    #[error("`after` needs ascending key order (sort_target=key, sort_order=ascend or none)")]
    AfterNeedsKeyOrder,
    /// `<field>` and `<field>_base64` both given.
    #[error("`{0}` and `{0}_base64` cannot both be given")]
    BothForms(String),
    /// `<field>_base64` is not valid base64.
    #[error("`{field}_base64` is not valid base64: {reason}")]
    BadBase64 {
        /// The field, without `_base64`.
        field: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// A key field that is empty or too long.
    #[error("`{field}`: {reason}")]
    BadKey {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `DELETE /kv?prefix=` with an empty prefix.
    #[error(
        "`prefix` must not be empty when deleting (to delete every key, give start=%00&end=%00)"
    )]
    EmptyDeletePrefix,
    /// A compare whose value field does not match its target.
    #[error("a `{target}` compare needs `{needs}` and no other value field (found {found})")]
    CompareValue {
        /// The target.
        target: &'static str,
        /// The field it needs.
        needs: &'static str,
        /// The value fields present.
        found: String,
    },
    /// `?wait=` is not a duration.
    #[error("`wait` must be a duration like `30s`, `500ms` or `2m`, got `{0}`")]
    BadDuration(String),
    /// `?wait=` is longer than [`MAX_WATCH_WAIT`].
    #[error("`wait` is {given:?}, longer than the maximum of {max:?}")]
    WaitTooLong {
        /// The duration given.
        given: Duration,
        /// The limit.
        max: Duration,
    },
    /// A body that is not JSON of the expected shape.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// An error inside a nested element, with its path (`success[1].put`).
    #[error("{path}: {source}")]
    At {
        /// Where in the body.
        path: String,
        /// What is wrong there.
        source: Box<JsonError>,
    },
}

impl JsonError {
    fn at(self, path: impl Into<String>) -> JsonError {
        JsonError::At {
            path: path.into(),
            source: Box::new(self),
        }
    }
}

impl From<JsonError> for ApiError {
    fn from(e: JsonError) -> ApiError {
        ApiError::bad_request(e.to_string()).with("code", "invalid_request")
    }
}

impl From<ApiError> for JsonError {
    /// Keeps the message of an [`ApiError`] from [`super::input`]'s helpers.
    fn from(e: ApiError) -> JsonError {
        let msg = e
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("invalid input");
        JsonError::Encoding(msg.to_string())
    }
}

// ---------------------------------------------------------------- bytes ---

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Splits bytes into the JSON text form (UTF-8) or the base64 form.
fn encode_bytes(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(b64().encode(b))),
    }
}

/// Reads a byte field given as text or as `<field>_base64`.
fn decode_bytes(
    field: &str,
    text: &Option<String>,
    base64: &Option<String>,
) -> Result<Option<Vec<u8>>, JsonError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(JsonError::BothForms(field.to_string())),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => b64().decode(b).map(Some).map_err(|e| JsonError::BadBase64 {
            field: field.to_string(),
            reason: e.to_string(),
        }),
        (None, None) => Ok(None),
    }
}

/// Checks a key field with the contract's rules ([`check_key`]); binary
/// keys (which `check_key`, taking text, cannot see) get the same length
/// bound.
fn check_key_bytes(field: &str, key: &[u8]) -> Result<(), JsonError> {
    let bad = |reason: String| JsonError::BadKey {
        field: field.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("the key must not be empty".into()));
    }
    match std::str::from_utf8(key) {
        Ok(s) => check_key(s).map_err(|e| bad(JsonError::from(e).to_string())),
        Err(_) if key.len() > MAX_KEY_BYTES => Err(bad(format!(
            "the key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ))),
        Err(_) => Ok(()),
    }
}

fn to_i64(field: &str, v: u64) -> Result<i64, JsonError> {
    i64::try_from(v).map_err(|_| JsonError::BadNumber {
        field: field.to_string(),
        value: v.to_string(),
    })
}

fn to_u64_lossless(v: i64) -> u64 {
    // Requests built by RaftKV never carry negative numbers where the JSON
    // form is unsigned; validation refuses them anyway.
    u64::try_from(v).unwrap_or(0)
}

// --------------------------------------------------------------- header ---

/// The header of every answer (etcd's `ResponseHeader`).
///
/// Ids are JSON numbers; JavaScript clients should parse them as big
/// integers (they are random 64-bit values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonHeader {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The answering member's id.
    pub member_id: u64,
    /// The store revision the answer was served at or created.
    pub revision: i64,
    /// The member's Raft term.
    pub raft_term: u64,
}

// --------------------------------------------------------------- record ---

/// One record as the API shows it (see the module's Conventions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord {
    /// The key, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key in base64, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The value, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in base64, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// = `mod_revision` (the old contract's name).
    pub index: i64,
    /// Revision that created the key's current life.
    pub create_revision: i64,
    /// Revision of the key's latest put.
    pub mod_revision: i64,
    /// Puts in the key's current life.
    pub version: i64,
    /// The key's lease, 0 for none.
    pub lease: i64,
}

impl From<&KeyValue> for JsonRecord {
    fn from(kv: &KeyValue) -> JsonRecord {
        let (key, key_base64) = encode_bytes(&kv.key);
        let (value, value_base64) = encode_bytes(&kv.value);
        JsonRecord {
            key,
            key_base64,
            value,
            value_base64,
            index: kv.mod_revision,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

impl TryFrom<&JsonRecord> for KeyValue {
    type Error = JsonError;

    /// For clients: the record back as the data model's.
    fn try_from(r: &JsonRecord) -> Result<KeyValue, JsonError> {
        Ok(KeyValue {
            key: decode_bytes("key", &r.key, &r.key_base64)?
                .ok_or_else(|| JsonError::Missing("key".into()))?,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
            value: decode_bytes("value", &r.value, &r.value_base64)?.unwrap_or_default(),
            lease: r.lease,
        })
    }
}

fn records(kvs: &[KeyValue]) -> Vec<JsonRecord> {
    kvs.iter().map(JsonRecord::from).collect()
}

fn kvs_from(records: &[JsonRecord]) -> Result<Vec<KeyValue>, JsonError> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| KeyValue::try_from(r).map_err(|e| e.at(format!("[{i}]"))))
        .collect()
}

// --------------------------------------------------------- query string ---

/// A query string, decoded; unknown names and repeats are errors. Values
/// are bytes (keys may be binary, percent-encoded); `+` is a space.
struct Query {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Query {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, JsonError> {
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        for part in query.unwrap_or_default().split('&') {
            if part.is_empty() {
                continue;
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = String::from_utf8(percent_decode_strict(
                &name.replace('+', " "),
                "a query parameter name",
            )?)
            .map_err(|_| JsonError::Encoding("a query parameter name is not UTF-8".into()))?;
            let value = percent_decode_strict(
                &value.replace('+', " "),
                &format!("query parameter `{name}`"),
            )?;
            if !allowed.contains(&name.as_str()) {
                return Err(JsonError::UnknownParam {
                    name,
                    allowed: allowed.join(", "),
                });
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(JsonError::RepeatedParam(name));
            }
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.bytes(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn num(&self, name: &str) -> Result<Option<u64>, JsonError> {
        self.text(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| JsonError::BadNumber {
                    field: name.to_string(),
                    value: v,
                })
            })
            .transpose()
    }

    fn rev(&self, name: &str) -> Result<i64, JsonError> {
        self.num(name)?.map_or(Ok(0), |v| to_i64(name, v))
    }

    fn flag(&self, name: &str) -> Result<bool, JsonError> {
        match self.text(name).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(other) => Err(JsonError::BadBool {
                field: name.to_string(),
                value: other.to_string(),
            }),
        }
    }
}

fn parse_sort_order(v: &str) -> Result<SortOrder, JsonError> {
    match v {
        "none" => Ok(SortOrder::None),
        "ascend" => Ok(SortOrder::Ascend),
        "descend" => Ok(SortOrder::Descend),
        _ => Err(JsonError::BadChoice {
            field: "sort_order".into(),
            value: v.to_string(),
            expected: "ascend, descend, none",
        }),
    }
}

fn parse_sort_target(v: &str) -> Result<SortTarget, JsonError> {
    match v {
        "key" => Ok(SortTarget::Key),
        "version" => Ok(SortTarget::Version),
        "create" => Ok(SortTarget::Create),
        "mod" => Ok(SortTarget::Mod),
        "value" => Ok(SortTarget::Value),
        _ => Err(JsonError::BadChoice {
            field: "sort_target".into(),
            value: v.to_string(),
            expected: "key, version, create, mod, value",
        }),
    }
}

fn sort_order_name(o: SortOrder) -> &'static str {
    match o {
        SortOrder::None => "none",
        SortOrder::Ascend => "ascend",
        SortOrder::Descend => "descend",
    }
}

fn sort_target_name(t: SortTarget) -> &'static str {
    match t {
        SortTarget::Key => "key",
        SortTarget::Version => "version",
        SortTarget::Create => "create",
        SortTarget::Mod => "mod",
        SortTarget::Value => "value",
    }
}

// ---------------------------------------------------------------- range ---

/// Where a [`RangeQuery`] comes from; the defaults differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeContext {
    /// `GET /kv`: no selector = every key; `limit` defaults to
    /// [`DEFAULT_LIST_LIMIT`], is clamped to [`MAX_LIST_LIMIT`], and 0 is
    /// refused (the old contract's paging).
    List,
    /// A `range` op of `POST /txn`: a selector is required; `limit` absent
    /// or 0 = no limit, as in etcd.
    Txn,
}

/// The key-selection and read options shared by `GET /kv` and a txn's
/// `range` op, decoded (bytes, typed enums) but not yet a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    /// A single key (txn ops only; `GET /kv/{key}` has it in the path).
    pub key: Option<Vec<u8>>,
    /// Every key starting with this.
    pub prefix: Option<Vec<u8>>,
    /// First key of `[start, end)`.
    pub start: Option<Vec<u8>>,
    /// End of `[start, end)`; `"\0"` = no end.
    pub end: Option<Vec<u8>>,
    /// Continue strictly after this key (paging).
    pub after: Option<Vec<u8>>,
    /// Most keys to return (see [`RangeContext`]).
    pub limit: Option<u64>,
    /// Revision to read at; 0 = current.
    pub revision: i64,
    /// Return no values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Order.
    pub sort_order: SortOrder,
    /// Order by.
    pub sort_target: SortTarget,
    /// Bound on create revision; 0 = none.
    pub min_create_revision: i64,
    /// Bound on create revision; 0 = none.
    pub max_create_revision: i64,
    /// Bound on mod revision; 0 = none.
    pub min_mod_revision: i64,
    /// Bound on mod revision; 0 = none.
    pub max_mod_revision: i64,
    /// `consistency=stale` (`GET /kv` only): serve from the local copy.
    pub serializable: bool,
}

const RANGE_PARAMS: &[&str] = &[
    "prefix",
    "start",
    "end",
    "limit",
    "after",
    "revision",
    "keys_only",
    "count_only",
    "sort_order",
    "sort_target",
    "min_create_revision",
    "max_create_revision",
    "min_mod_revision",
    "max_mod_revision",
    "consistency",
];

fn consistency(q: &Query) -> Result<bool, JsonError> {
    match q.text("consistency").as_deref() {
        None | Some("linearizable") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(JsonError::BadChoice {
            field: "consistency".into(),
            value: other.to_string(),
            expected: "linearizable, stale",
        }),
    }
}

impl RangeQuery {
    /// Parses the query string of `GET /kv`.
    pub fn from_query(query: Option<&str>) -> Result<RangeQuery, JsonError> {
        let q = Query::parse(query, RANGE_PARAMS)?;
        Ok(RangeQuery {
            key: None,
            prefix: q.bytes("prefix"),
            start: q.bytes("start"),
            end: q.bytes("end"),
            after: q.bytes("after"),
            limit: q.num("limit")?,
            revision: q.rev("revision")?,
            keys_only: q.flag("keys_only")?,
            count_only: q.flag("count_only")?,
            sort_order: q
                .text("sort_order")
                .map_or(Ok(SortOrder::None), |v| parse_sort_order(&v))?,
            sort_target: q
                .text("sort_target")
                .map_or(Ok(SortTarget::Key), |v| parse_sort_target(&v))?,
            min_create_revision: q.rev("min_create_revision")?,
            max_create_revision: q.rev("max_create_revision")?,
            min_mod_revision: q.rev("min_mod_revision")?,
            max_mod_revision: q.rev("max_mod_revision")?,
            serializable: consistency(&q)?,
        })
    }

    /// The [`RangeRequest`] this query asks for.
    pub fn to_request(&self, ctx: RangeContext) -> Result<RangeRequest, JsonError> {
        let (mut key, range_end) = select_keys(
            &self.key,
            &self.prefix,
            &self.start,
            &self.end,
            ctx == RangeContext::List,
        )?;
        if let Some(after) = &self.after {
            let key_order = self.sort_target == SortTarget::Key
                && matches!(self.sort_order, SortOrder::None | SortOrder::Ascend);
            if !key_order {
                return Err(JsonError::AfterNeedsKeyOrder);
            }
            if range_end.is_empty() {
                return Err(JsonError::Conflict("after".into(), "key".into()));
            }
            // The smallest key strictly after `after`.
            let mut next = after.clone();
            next.push(0);
            if next > key {
                key = next;
            }
        }
        let limit = match (ctx, self.limit) {
            (RangeContext::List, None) => DEFAULT_LIST_LIMIT as u64,
            (RangeContext::List, Some(0)) => return Err(JsonError::ZeroLimit),
            (RangeContext::List, Some(n)) => n.min(MAX_LIST_LIMIT as u64),
            (RangeContext::Txn, n) => n.unwrap_or(0),
        };
        Ok(RangeRequest {
            key,
            range_end,
            limit: to_i64("limit", limit)?,
            revision: self.revision,
            sort_order: self.sort_order,
            sort_target: self.sort_target,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        })
    }

    /// The query that gives back `r` under [`RangeContext::Txn`] (for
    /// clients that build requests as [`RangeRequest`]s).
    pub fn from_request(r: &RangeRequest) -> RangeQuery {
        let (key, start, end) = if r.range_end.is_empty() {
            (Some(r.key.clone()), None, None)
        } else {
            (None, Some(r.key.clone()), Some(r.range_end.clone()))
        };
        RangeQuery {
            key,
            prefix: None,
            start,
            end,
            after: None,
            limit: (r.limit != 0).then(|| to_u64_lossless(r.limit)),
            revision: r.revision,
            keys_only: r.keys_only,
            count_only: r.count_only,
            sort_order: r.sort_order,
            sort_target: r.sort_target,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            serializable: r.serializable,
        }
    }
}

/// etcd's `(key, range_end)` for the selector fields (see the module's
/// Conventions). `all_by_default`: no selector means every key.
fn select_keys(
    key: &Option<Vec<u8>>,
    prefix: &Option<Vec<u8>>,
    start: &Option<Vec<u8>>,
    end: &Option<Vec<u8>>,
    all_by_default: bool,
) -> Result<(Vec<u8>, Vec<u8>), JsonError> {
    let conflict = |a: &str, b: &str| Err(JsonError::Conflict(a.into(), b.into()));
    match (key, prefix, start.is_some() || end.is_some()) {
        (Some(_), Some(_), _) => conflict("key", "prefix"),
        (Some(_), _, true) => conflict("key", "start/end"),
        (_, Some(_), true) => conflict("prefix", "start/end"),
        (Some(k), None, false) => {
            check_key_bytes("key", k)?;
            Ok((k.clone(), Vec::new()))
        }
        (None, Some(p), false) if p.is_empty() => Ok((vec![0], vec![0])),
        (None, Some(p), false) => {
            check_key_bytes("prefix", p)?;
            Ok((p.clone(), prefix_end(p)))
        }
        (None, None, true) => {
            let s = match start {
                Some(s) => {
                    check_key_bytes("start", s)?;
                    s.clone()
                }
                None => vec![0],
            };
            let e = match end {
                Some(e) if e.is_empty() => return Err(JsonError::Missing("end".into())),
                Some(e) => e.clone(),
                None => vec![0],
            };
            Ok((s, e))
        }
        (None, None, false) if all_by_default => Ok((vec![0], vec![0])),
        (None, None, false) => Err(JsonError::NoSelector("`key`, `prefix`, `start`, `end`")),
    }
}

/// The answer of a range (`GET /kv`, and a txn's `range` op).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRangeResponse {
    /// The records.
    pub items: Vec<JsonRecord>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// Keys in the range before filters and limit (etcd's meaning).
    pub count: i64,
}

impl From<&RangeResponse> for JsonRangeResponse {
    fn from(r: &RangeResponse) -> Self {
        JsonRangeResponse {
            items: records(&r.kvs),
            more: r.more,
            count: r.count,
        }
    }
}

impl TryFrom<&JsonRangeResponse> for RangeResponse {
    type Error = JsonError;
    fn try_from(r: &JsonRangeResponse) -> Result<Self, JsonError> {
        Ok(RangeResponse {
            kvs: kvs_from(&r.items).map_err(|e| e.at("items"))?,
            more: r.more,
            count: r.count,
        })
    }
}

/// The body of `GET /kv`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRangeReply {
    /// The range's answer.
    #[serde(flatten)]
    pub range: JsonRangeResponse,
    /// The header.
    pub header: JsonHeader,
}

/// Parses `GET /kv/{key}`'s query (`revision`, `consistency`) into the
/// single-key [`RangeRequest`]; `key` is [`super::input::key_from_path`]'s.
pub fn key_read_request(key: &[u8], query: Option<&str>) -> Result<RangeRequest, JsonError> {
    let q = Query::parse(query, &["revision", "consistency"])?;
    check_key_bytes("key", key)?;
    Ok(RangeRequest {
        key: key.to_vec(),
        revision: q.rev("revision")?,
        serializable: consistency(&q)?,
        ..RangeRequest::default()
    })
}

/// The body of `GET /kv/{key}`'s answer: the record and the header (a
/// missing key is a 404 [`ApiError::key_not_found`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonGetReply {
    /// The record.
    #[serde(flatten)]
    pub record: JsonRecord,
    /// The header.
    pub header: JsonHeader,
}

// --------------------------------------------------------------- delete ---

/// Parses `DELETE /kv`'s query (`prefix` or `start`/`end`, `prev_kv`). A
/// selector is required, and an empty prefix is refused: deleting every
/// key must be spelled out.
pub fn delete_query(query: Option<&str>) -> Result<DeleteRangeRequest, JsonError> {
    let q = Query::parse(query, &["prefix", "start", "end", "prev_kv"])?;
    let prefix = q.bytes("prefix");
    if prefix.as_deref() == Some(&[][..]) {
        return Err(JsonError::EmptyDeletePrefix);
    }
    let (key, range_end) = select_keys(&None, &prefix, &q.bytes("start"), &q.bytes("end"), false)
        .map_err(|e| match e {
        JsonError::NoSelector(_) => JsonError::NoSelector("`prefix`, `start`, `end`"),
        e => e,
    })?;
    Ok(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: q.flag("prev_kv")?,
    })
}

/// The body of `DELETE /kv`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonDeleteReply {
    /// Always `"committed"` (the old contract's field).
    pub status: String,
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted records, if asked for.
    pub prev_kvs: Vec<JsonRecord>,
    /// The store revision after the delete.
    pub index: i64,
    /// The header.
    pub header: JsonHeader,
}

impl JsonDeleteReply {
    /// The answer for `d` at `revision`.
    pub fn new(d: &DeleteRangeResponse, revision: i64, header: JsonHeader) -> Self {
        JsonDeleteReply {
            status: "committed".into(),
            deleted: d.deleted,
            prev_kvs: records(&d.prev_kvs),
            index: revision,
            header,
        }
    }
}

// ------------------------------------------------------------------ txn ---

/// The field a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonCompareTarget {
    /// The value.
    Value,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The lease.
    Lease,
}

/// The relation a compare checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JsonCompareResult {
    /// Stored == given.
    #[serde(rename = "=")]
    Equal,
    /// Stored != given.
    #[serde(rename = "!=")]
    NotEqual,
    /// Stored < given.
    #[serde(rename = "<")]
    Less,
    /// Stored > given.
    #[serde(rename = ">")]
    Greater,
}

/// One compare of `POST /txn`; exactly the value field that matches
/// `target` is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCompare {
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// End of a range of keys (all must satisfy the compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// The range end, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end_base64: Option<String>,
    /// Compare every key starting with `key`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// The field.
    pub target: JsonCompareTarget,
    /// The relation.
    pub result: JsonCompareResult,
    /// For `target: value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `target: value`, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// For `target: version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// For `target: create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<i64>,
    /// For `target: mod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    /// For `target: lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Key and range end of a put/delete/compare body: `key` (or base64), and
/// `range_end` (or base64) or `prefix: true`.
fn key_and_end(
    key: &Option<String>,
    key_b64: &Option<String>,
    end: &Option<String>,
    end_b64: &Option<String>,
    prefix: bool,
) -> Result<(Vec<u8>, Vec<u8>), JsonError> {
    let key = decode_bytes("key", key, key_b64)?.ok_or(JsonError::Missing("key".into()))?;
    let end = decode_bytes("range_end", end, end_b64)?;
    if prefix {
        if end.is_some() {
            return Err(JsonError::Conflict("prefix".into(), "range_end".into()));
        }
        if key.is_empty() {
            return Ok((vec![0], vec![0]));
        }
        check_key_bytes("key", &key)?;
        let end = prefix_end(&key);
        return Ok((key, end));
    }
    check_key_bytes("key", &key)?;
    Ok((key, end.unwrap_or_default()))
}

impl JsonCompare {
    /// The data model's compare.
    pub fn to_compare(&self) -> Result<Compare, JsonError> {
        let (key, range_end) = key_and_end(
            &self.key,
            &self.key_base64,
            &self.range_end,
            &self.range_end_base64,
            self.prefix,
        )?;
        let value = decode_bytes("value", &self.value, &self.value_base64)?;
        let mut found = Vec::new();
        for (name, present) in [
            ("value", value.is_some()),
            ("version", self.version.is_some()),
            ("create_revision", self.create_revision.is_some()),
            ("mod_revision", self.mod_revision.is_some()),
            ("lease", self.lease.is_some()),
        ] {
            if present {
                found.push(name);
            }
        }
        let (name, needs) = match self.target {
            JsonCompareTarget::Value => ("value", "value"),
            JsonCompareTarget::Version => ("version", "version"),
            JsonCompareTarget::Create => ("create", "create_revision"),
            JsonCompareTarget::Mod => ("mod", "mod_revision"),
            JsonCompareTarget::Lease => ("lease", "lease"),
        };
        if found != [needs] {
            return Err(JsonError::CompareValue {
                target: name,
                needs,
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
            });
        }
        let target = match self.target {
            JsonCompareTarget::Value => CompareTarget::Value(value.unwrap_or_default()),
            JsonCompareTarget::Version => CompareTarget::Version(self.version.unwrap_or(0)),
            JsonCompareTarget::Create => {
                CompareTarget::CreateRevision(self.create_revision.unwrap_or(0))
            }
            JsonCompareTarget::Mod => CompareTarget::ModRevision(self.mod_revision.unwrap_or(0)),
            JsonCompareTarget::Lease => CompareTarget::Lease(self.lease.unwrap_or(0)),
        };
        let result = match self.result {
            JsonCompareResult::Equal => CompareResult::Equal,
            JsonCompareResult::NotEqual => CompareResult::NotEqual,
            JsonCompareResult::Less => CompareResult::Less,
            JsonCompareResult::Greater => CompareResult::Greater,
        };
        Ok(Compare {
            key,
            range_end,
            result,
            target,
        })
    }

    /// The JSON form of `c` (range ends are given explicitly, never as
    /// `prefix`).
    pub fn from_compare(c: &Compare) -> JsonCompare {
        let (key, key_base64) = encode_bytes(&c.key);
        let (range_end, range_end_base64) = if c.range_end.is_empty() {
            (None, None)
        } else {
            encode_bytes(&c.range_end)
        };
        let mut j = JsonCompare {
            key,
            key_base64,
            range_end,
            range_end_base64,
            prefix: false,
            target: JsonCompareTarget::Value,
            result: match c.result {
                CompareResult::Equal => JsonCompareResult::Equal,
                CompareResult::NotEqual => JsonCompareResult::NotEqual,
                CompareResult::Less => JsonCompareResult::Less,
                CompareResult::Greater => JsonCompareResult::Greater,
            },
            value: None,
            value_base64: None,
            version: None,
            create_revision: None,
            mod_revision: None,
            lease: None,
        };
        match &c.target {
            CompareTarget::Value(v) => (j.value, j.value_base64) = encode_bytes(v),
            CompareTarget::Version(v) => {
                j.target = JsonCompareTarget::Version;
                j.version = Some(*v);
            }
            CompareTarget::CreateRevision(v) => {
                j.target = JsonCompareTarget::Create;
                j.create_revision = Some(*v);
            }
            CompareTarget::ModRevision(v) => {
                j.target = JsonCompareTarget::Mod;
                j.mod_revision = Some(*v);
            }
            CompareTarget::Lease(v) => {
                j.target = JsonCompareTarget::Lease;
                j.lease = Some(*v);
            }
        }
        j
    }
}

/// A txn's `put` op.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPut {
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The value (required unless `ignore_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// Return the previous record.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prev_kv: bool,
    /// Lease to attach; 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
    /// Keep the current value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_value: bool,
    /// Keep the current lease.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_lease: bool,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A txn's `delete` op.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonDelete {
    /// The key (or first key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// End of the range (`"\u0000"` = every key ≥ `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// The range end, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end_base64: Option<String>,
    /// Delete every key starting with `key`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// Return the deleted records.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prev_kv: bool,
}

/// A txn's `range` op: the fields of the `GET /kv` query, plus `key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRangeOp {
    /// A single key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Every key starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The prefix, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_base64: Option<String>,
    /// First key of `[start, end)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The start, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_base64: Option<String>,
    /// End of `[start, end)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// The end, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_base64: Option<String>,
    /// Continue strictly after this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// `after`, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_base64: Option<String>,
    /// Most keys; absent or 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Revision to read at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// No values.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keys_only: bool,
    /// Only the count.
    #[serde(default, skip_serializing_if = "is_false")]
    pub count_only: bool,
    /// `ascend`, `descend` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<String>,
    /// `key`, `version`, `create`, `mod` or `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_target: Option<String>,
    /// Bound on create revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_create_revision: Option<u64>,
    /// Bound on create revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_create_revision: Option<u64>,
    /// Bound on mod revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mod_revision: Option<u64>,
    /// Bound on mod revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mod_revision: Option<u64>,
}

impl JsonRangeOp {
    /// Decodes the op into a [`RangeQuery`].
    pub fn to_query(&self) -> Result<RangeQuery, JsonError> {
        let rev = |name: &str, v: Option<u64>| v.map_or(Ok(0), |v| to_i64(name, v));
        Ok(RangeQuery {
            key: decode_bytes("key", &self.key, &self.key_base64)?,
            prefix: decode_bytes("prefix", &self.prefix, &self.prefix_base64)?,
            start: decode_bytes("start", &self.start, &self.start_base64)?,
            end: decode_bytes("end", &self.end, &self.end_base64)?,
            after: decode_bytes("after", &self.after, &self.after_base64)?,
            limit: self.limit,
            revision: rev("revision", self.revision)?,
            keys_only: self.keys_only,
            count_only: self.count_only,
            sort_order: self
                .sort_order
                .as_deref()
                .map_or(Ok(SortOrder::None), parse_sort_order)?,
            sort_target: self
                .sort_target
                .as_deref()
                .map_or(Ok(SortTarget::Key), parse_sort_target)?,
            min_create_revision: rev("min_create_revision", self.min_create_revision)?,
            max_create_revision: rev("max_create_revision", self.max_create_revision)?,
            min_mod_revision: rev("min_mod_revision", self.min_mod_revision)?,
            max_mod_revision: rev("max_mod_revision", self.max_mod_revision)?,
            serializable: false,
        })
    }

    /// The JSON form of a [`RangeRequest`].
    pub fn from_request(r: &RangeRequest) -> JsonRangeOp {
        let q = RangeQuery::from_request(r);
        let enc = |b: &Option<Vec<u8>>| b.as_deref().map(encode_bytes).unwrap_or((None, None));
        let (key, key_base64) = enc(&q.key);
        let (start, start_base64) = enc(&q.start);
        let (end, end_base64) = enc(&q.end);
        let nz = |v: i64| (v != 0).then(|| to_u64_lossless(v));
        JsonRangeOp {
            key,
            key_base64,
            start,
            start_base64,
            end,
            end_base64,
            limit: q.limit,
            revision: nz(q.revision),
            keys_only: q.keys_only,
            count_only: q.count_only,
            sort_order: (q.sort_order != SortOrder::None)
                .then(|| sort_order_name(q.sort_order).to_string()),
            sort_target: (q.sort_target != SortTarget::Key)
                .then(|| sort_target_name(q.sort_target).to_string()),
            min_create_revision: nz(q.min_create_revision),
            max_create_revision: nz(q.max_create_revision),
            min_mod_revision: nz(q.min_mod_revision),
            max_mod_revision: nz(q.max_mod_revision),
            ..JsonRangeOp::default()
        }
    }
}

/// One op of a txn branch: `{"put":…}`, `{"delete":…}`, `{"range":…}` or
/// `{"txn":…}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonRequestOp {
    /// Set a key.
    Put(JsonPut),
    /// Delete a key or range.
    Delete(JsonDelete),
    /// Read a key or range (boxed: it is by far the largest variant).
    Range(Box<JsonRangeOp>),
    /// A nested transaction.
    Txn(JsonTxnRequest),
}

/// The body of `POST /txn` (and a nested `txn` op).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTxnRequest {
    /// The conditions.
    #[serde(default)]
    pub compare: Vec<JsonCompare>,
    /// Ops when every condition holds.
    #[serde(default)]
    pub success: Vec<JsonRequestOp>,
    /// Ops otherwise.
    #[serde(default)]
    pub failure: Vec<JsonRequestOp>,
}

impl JsonRequestOp {
    /// The data model's op.
    pub fn to_op(&self) -> Result<RequestOp, JsonError> {
        match self {
            JsonRequestOp::Put(p) => {
                let key = decode_bytes("key", &p.key, &p.key_base64)?
                    .ok_or(JsonError::Missing("key".into()))?;
                check_key_bytes("key", &key)?;
                let value = decode_bytes("value", &p.value, &p.value_base64)?;
                if value.is_none() && !p.ignore_value {
                    return Err(JsonError::Missing("value".into()));
                }
                Ok(RequestOp::Put(PutRequest {
                    key,
                    value: value.unwrap_or_default(),
                    lease: p.lease,
                    prev_kv: p.prev_kv,
                    ignore_value: p.ignore_value,
                    ignore_lease: p.ignore_lease,
                }))
            }
            JsonRequestOp::Delete(d) => {
                let (key, range_end) = key_and_end(
                    &d.key,
                    &d.key_base64,
                    &d.range_end,
                    &d.range_end_base64,
                    d.prefix,
                )?;
                Ok(RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: d.prev_kv,
                }))
            }
            JsonRequestOp::Range(r) => Ok(RequestOp::Range(
                r.to_query()?.to_request(RangeContext::Txn)?,
            )),
            JsonRequestOp::Txn(t) => Ok(RequestOp::Txn(t.to_request()?)),
        }
    }

    /// The JSON form of `op`.
    pub fn from_op(op: &RequestOp) -> JsonRequestOp {
        match op {
            RequestOp::Put(p) => {
                let (key, key_base64) = encode_bytes(&p.key);
                let (value, value_base64) = if p.ignore_value && p.value.is_empty() {
                    (None, None)
                } else {
                    encode_bytes(&p.value)
                };
                JsonRequestOp::Put(JsonPut {
                    key,
                    key_base64,
                    value,
                    value_base64,
                    prev_kv: p.prev_kv,
                    lease: p.lease,
                    ignore_value: p.ignore_value,
                    ignore_lease: p.ignore_lease,
                })
            }
            RequestOp::DeleteRange(d) => {
                let (key, key_base64) = encode_bytes(&d.key);
                let (range_end, range_end_base64) = if d.range_end.is_empty() {
                    (None, None)
                } else {
                    encode_bytes(&d.range_end)
                };
                JsonRequestOp::Delete(JsonDelete {
                    key,
                    key_base64,
                    range_end,
                    range_end_base64,
                    prefix: false,
                    prev_kv: d.prev_kv,
                })
            }
            RequestOp::Range(r) => JsonRequestOp::Range(Box::new(JsonRangeOp::from_request(r))),
            RequestOp::Txn(t) => JsonRequestOp::Txn(JsonTxnRequest::from_request(t)),
        }
    }
}

impl JsonTxnRequest {
    /// The data model's transaction; errors name the element
    /// (`success[1].put: …`).
    pub fn to_request(&self) -> Result<TxnRequest, JsonError> {
        let compare = self
            .compare
            .iter()
            .enumerate()
            .map(|(i, c)| c.to_compare().map_err(|e| e.at(format!("compare[{i}]"))))
            .collect::<Result<_, _>>()?;
        let ops = |branch: &str, ops: &[JsonRequestOp]| {
            ops.iter()
                .enumerate()
                .map(|(i, op)| {
                    let kind = match op {
                        JsonRequestOp::Put(_) => "put",
                        JsonRequestOp::Delete(_) => "delete",
                        JsonRequestOp::Range(_) => "range",
                        JsonRequestOp::Txn(_) => "txn",
                    };
                    op.to_op()
                        .map_err(|e| e.at(format!("{branch}[{i}].{kind}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TxnRequest {
            compare,
            success: ops("success", &self.success)?,
            failure: ops("failure", &self.failure)?,
        })
    }

    /// The JSON form of `t`.
    pub fn from_request(t: &TxnRequest) -> JsonTxnRequest {
        JsonTxnRequest {
            compare: t.compare.iter().map(JsonCompare::from_compare).collect(),
            success: t.success.iter().map(JsonRequestOp::from_op).collect(),
            failure: t.failure.iter().map(JsonRequestOp::from_op).collect(),
        }
    }
}

/// Parses the body of `POST /txn`.
pub fn parse_txn_body(body: &[u8]) -> Result<TxnRequest, JsonError> {
    let j: JsonTxnRequest =
        serde_json::from_slice(body).map_err(|e| JsonError::Malformed(e.to_string()))?;
    j.to_request()
}

/// A txn `put`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonPutResult {
    /// The previous record, if asked for and the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<JsonRecord>,
}

/// A txn `delete`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonDeleteResult {
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted records, if asked for.
    pub prev_kvs: Vec<JsonRecord>,
}

/// One op's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonResponseOp {
    /// A put's.
    Put(JsonPutResult),
    /// A delete's.
    Delete(JsonDeleteResult),
    /// A range's.
    Range(JsonRangeResponse),
    /// A nested txn's.
    Txn(JsonTxnResponse),
}

/// A transaction's answer (nested ones have no `index`/`header`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonTxnResponse {
    /// Whether `success` ran.
    pub succeeded: bool,
    /// One answer per op of the branch that ran.
    pub responses: Vec<JsonResponseOp>,
}

impl From<&TxnResponse> for JsonTxnResponse {
    fn from(t: &TxnResponse) -> Self {
        JsonTxnResponse {
            succeeded: t.succeeded,
            responses: t
                .responses
                .iter()
                .map(|r| match r {
                    ResponseOp::Put(p) => JsonResponseOp::Put(JsonPutResult {
                        prev_kv: p.body.prev_kv.as_ref().map(JsonRecord::from),
                    }),
                    ResponseOp::DeleteRange(d) => JsonResponseOp::Delete(JsonDeleteResult {
                        deleted: d.body.deleted,
                        prev_kvs: records(&d.body.prev_kvs),
                    }),
                    ResponseOp::Range(r) => JsonResponseOp::Range((&r.body).into()),
                    ResponseOp::Txn(t) => JsonResponseOp::Txn(t.into()),
                })
                .collect(),
        }
    }
}

impl JsonTxnResponse {
    /// For clients: the data model's answer. The JSON has no per-op
    /// revision, so every op gets `revision` (the txn's `index`).
    pub fn to_response(&self, revision: i64) -> Result<TxnResponse, JsonError> {
        let responses = self
            .responses
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = |e: JsonError| e.at(format!("responses[{i}]"));
                Ok(match r {
                    JsonResponseOp::Put(p) => ResponseOp::Put(Revisioned {
                        revision,
                        body: PutResponse {
                            prev_kv: p
                                .prev_kv
                                .as_ref()
                                .map(KeyValue::try_from)
                                .transpose()
                                .map_err(at)?,
                        },
                    }),
                    JsonResponseOp::Delete(d) => ResponseOp::DeleteRange(Revisioned {
                        revision,
                        body: DeleteRangeResponse {
                            deleted: d.deleted,
                            prev_kvs: kvs_from(&d.prev_kvs).map_err(at)?,
                        },
                    }),
                    JsonResponseOp::Range(r) => ResponseOp::Range(Revisioned {
                        revision,
                        body: RangeResponse::try_from(r).map_err(at)?,
                    }),
                    JsonResponseOp::Txn(t) => ResponseOp::Txn(t.to_response(revision).map_err(at)?),
                })
            })
            .collect::<Result<_, JsonError>>()?;
        Ok(TxnResponse {
            succeeded: self.succeeded,
            responses,
        })
    }
}

/// The body of `POST /txn`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonTxnReply {
    /// The transaction's answer.
    #[serde(flatten)]
    pub txn: JsonTxnResponse,
    /// The store revision after the transaction.
    pub index: i64,
    /// The header.
    pub header: JsonHeader,
}

// -------------------------------------------------------------- compact ---

/// The body of `POST /compact`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCompactRequest {
    /// The new compact revision.
    pub revision: u64,
    /// Answer only once the history is physically removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub physical: bool,
}

/// Parses the body of `POST /compact`.
pub fn parse_compact_body(body: &[u8]) -> Result<CompactionRequest, JsonError> {
    let j: JsonCompactRequest =
        serde_json::from_slice(body).map_err(|e| JsonError::Malformed(e.to_string()))?;
    Ok(CompactionRequest {
        revision: to_i64("revision", j.revision)?,
        physical: j.physical,
    })
}

/// The body of `POST /compact`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonCompactReply {
    /// The compact revision now in force.
    pub compact_revision: i64,
    /// The header.
    pub header: JsonHeader,
}

// ---------------------------------------------------------------- watch ---

/// `GET /watch`'s parameters, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchQuery {
    /// First key (or the only key).
    pub key: Vec<u8>,
    /// etcd's range end (empty = just `key`).
    pub range_end: Vec<u8>,
    /// First revision to report; 0 = from the next change.
    pub start_revision: i64,
    /// Include each event's previous record.
    pub prev_kv: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Send progress notifications while idle.
    pub progress_notify: bool,
    /// Long-poll wait ([`DEFAULT_WATCH_WAIT`] when absent; ignored by SSE).
    pub wait: Duration,
}

impl WatchQuery {
    /// Parses `GET /watch`'s query: `key`, `prefix` or `start`/`end`, then
    /// `start_revision`, `prev_kv`, `no_put`, `no_delete`,
    /// `progress_notify`, `wait`.
    pub fn from_query(query: Option<&str>) -> Result<WatchQuery, JsonError> {
        let q = Query::parse(
            query,
            &[
                "key",
                "prefix",
                "start",
                "end",
                "start_revision",
                "prev_kv",
                "no_put",
                "no_delete",
                "progress_notify",
                "wait",
            ],
        )?;
        let (key, range_end) = select_keys(
            &q.bytes("key"),
            &q.bytes("prefix"),
            &q.bytes("start"),
            &q.bytes("end"),
            false,
        )?;
        Ok(WatchQuery {
            key,
            range_end,
            start_revision: q.rev("start_revision")?,
            prev_kv: q.flag("prev_kv")?,
            no_put: q.flag("no_put")?,
            no_delete: q.flag("no_delete")?,
            progress_notify: q.flag("progress_notify")?,
            wait: q
                .text("wait")
                .map_or(Ok(DEFAULT_WATCH_WAIT), |w| parse_wait(&w))?,
        })
    }

    /// The events of `events` this watch reports, `prev_kv` dropped unless
    /// asked for.
    pub fn select(&self, events: &[Event]) -> Vec<Event> {
        let range = KeyRange::new(&self.key, &self.range_end);
        events
            .iter()
            .filter(|e| range.contains(&e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .map(|e| Event {
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
                ..e.clone()
            })
            .collect()
    }
}

/// Parses a `?wait=` duration: `500ms`, `30s`, `2m`, or bare seconds;
/// at most [`MAX_WATCH_WAIT`].
pub fn parse_wait(s: &str) -> Result<Duration, JsonError> {
    let bad = || JsonError::BadDuration(s.to_string());
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1000)
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let given = Duration::from_millis(n.checked_mul(unit_ms).ok_or_else(bad)?);
    if given > MAX_WATCH_WAIT {
        return Err(JsonError::WaitTooLong {
            given,
            max: MAX_WATCH_WAIT,
        });
    }
    Ok(given)
}

/// Put or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonEventType {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One event as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonEvent {
    /// `"put"` or `"delete"`.
    #[serde(rename = "type")]
    pub kind: JsonEventType,
    /// The new record (put) or the key and deleting revision (delete).
    pub kv: JsonRecord,
    /// The record before the revision, when asked for and it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<JsonRecord>,
}

impl From<&Event> for JsonEvent {
    fn from(e: &Event) -> Self {
        JsonEvent {
            kind: match e.kind {
                EventKind::Put => JsonEventType::Put,
                EventKind::Delete => JsonEventType::Delete,
            },
            kv: (&e.kv).into(),
            prev_kv: e.prev_kv.as_ref().map(JsonRecord::from),
        }
    }
}

impl TryFrom<&JsonEvent> for Event {
    type Error = JsonError;
    fn try_from(e: &JsonEvent) -> Result<Event, JsonError> {
        Ok(Event {
            kind: match e.kind {
                JsonEventType::Put => EventKind::Put,
                JsonEventType::Delete => EventKind::Delete,
            },
            kv: KeyValue::try_from(&e.kv).map_err(|e| e.at("kv"))?,
            prev_kv: e
                .prev_kv
                .as_ref()
                .map(KeyValue::try_from)
                .transpose()
                .map_err(|e| e.at("prev_kv"))?,
        })
    }
}

/// The events of one revision (an SSE `events` message, or a long-poll
/// answer; an empty long-poll answer means the wait ran out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonWatchBatch {
    /// The revision: the events' revision, or the store's when empty.
    pub revision: i64,
    /// The events.
    pub events: Vec<JsonEvent>,
}

impl JsonWatchBatch {
    /// The batch of `events` (already [`WatchQuery::select`]ed).
    pub fn new(revision: i64, events: &[Event]) -> Self {
        JsonWatchBatch {
            revision,
            events: events.iter().map(JsonEvent::from).collect(),
        }
    }
}

fn to_json_line<T: Serialize>(v: &T) -> String {
    // serde_json escapes newlines inside strings, so the text is one line as
    // SSE's `data:` field needs. Serializing these plain structs cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string())
}

/// One SSE message with the events of `revision`; the `id` lets a client
/// resume with `start_revision = id + 1`.
pub fn sse_events(revision: i64, events: &[Event]) -> String {
    format!(
        "id: {revision}\nevent: events\ndata: {}\n\n",
        to_json_line(&JsonWatchBatch::new(revision, events))
    )
}

/// An SSE progress notification: nothing in the range changed up to
/// `revision`.
pub fn sse_progress(revision: i64) -> String {
    format!(
        "id: {revision}\nevent: progress\ndata: {}\n\n",
        to_json_line(&serde_json::json!({ "revision": revision }))
    )
}

/// The last SSE message of a canceled watch; `compact_revision` is set
/// (non-zero) when the start revision was compacted away.
pub fn sse_canceled(reason: &str, compact_revision: i64) -> String {
    let mut data = serde_json::json!({ "reason": reason });
    if compact_revision != 0 {
        data["compact_revision"] = compact_revision.into();
    }
    format!("event: canceled\ndata: {}\n\n", to_json_line(&data))
}

// --------------------------------------------------------------- errors ---

/// The stable `code` of a [`KvError`] in error bodies.
pub fn kv_error_code(e: &KvError) -> &'static str {
    match e {
        KvError::Compacted { .. } => "compacted",
        KvError::FutureRevision => "future_revision",
        KvError::EmptyKey => "empty_key",
        KvError::KeyTooLong { .. } => "key_too_long",
        KvError::ValueTooLarge { .. } => "value_too_large",
        KvError::ValueProvided => "value_provided",
        KvError::LeaseProvided => "lease_provided",
        KvError::KeyNotFound => "key_not_found",
        KvError::TooManyOps => "too_many_ops",
        KvError::DuplicateKey => "duplicate_key",
        KvError::InvalidSortOption => "invalid_sort_option",
        KvError::NegativeField { .. } => "negative_field",
        KvError::LeaseNotFound => "lease_not_found",
        KvError::MalformedCommand(_) => "malformed_command",
    }
}

/// The HTTP answer to a refused request: `{"error": text, "code": …}` plus
/// the error's fields. Compacted is 410 (the history is gone for good);
/// an oversized value 413 (as the old contract's `PUT`); a missing lease
/// 404; everything else — future revision, validation, `ignore_*` on an
/// absent key — 400.
pub fn kv_error(e: &KvError) -> ApiError {
    let status = match e {
        KvError::Compacted { .. } => StatusCode::GONE,
        KvError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        KvError::LeaseNotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    let err = ApiError::new(status, e.to_string()).with("code", kv_error_code(e));
    match e {
        KvError::Compacted { compact_revision } => err.with("compact_revision", *compact_revision),
        KvError::KeyTooLong { len, max } | KvError::ValueTooLarge { len, max } => {
            err.with("len", *len).with("max", *max)
        }
        KvError::NegativeField { field, value } => {
            err.with("field", field.as_str()).with("value", *value)
        }
        KvError::MalformedCommand(why) => err.with("reason", why.as_str()),
        _ => err,
    }
}

/// For clients: the [`KvError`] an error body from [`kv_error`] stands
/// for, or `None` when it is some other error.
pub fn kv_error_from_body(body: &Value) -> Option<KvError> {
    let num = |f: &str| body.get(f).and_then(Value::as_i64);
    let size = |f: &str| body.get(f).and_then(Value::as_u64).map(|v| v as usize);
    Some(match body.get("code")?.as_str()? {
        "compacted" => KvError::Compacted {
            compact_revision: num("compact_revision")?,
        },
        "future_revision" => KvError::FutureRevision,
        "empty_key" => KvError::EmptyKey,
        "key_too_long" => KvError::KeyTooLong {
            len: size("len")?,
            max: size("max")?,
        },
        "value_too_large" => KvError::ValueTooLarge {
            len: size("len")?,
            max: size("max")?,
        },
        "value_provided" => KvError::ValueProvided,
        "lease_provided" => KvError::LeaseProvided,
        "key_not_found" => KvError::KeyNotFound,
        "too_many_ops" => KvError::TooManyOps,
        "duplicate_key" => KvError::DuplicateKey,
        "invalid_sort_option" => KvError::InvalidSortOption,
        "negative_field" => KvError::NegativeField {
            field: body.get("field")?.as_str()?.to_string(),
            value: num("value")?,
        },
        "lease_not_found" => KvError::LeaseNotFound,
        "malformed_command" => KvError::MalformedCommand(body.get("reason")?.as_str()?.to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
