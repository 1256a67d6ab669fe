//! Pure conversions between the generated etcd types ([`super::pb`]) and
//! the data model ([`crate::kv`]), both ways.
//!
//! The data model mirrors etcd's messages field by field, so most of this is
//! a plain copy. The parts that are not:
//!
//! - **Enums** arrive as `i32`s. Sort options outside etcd's enums are
//!   refused with [`KvError::InvalidSortOption`]; compare results and
//!   targets and event types outside theirs with
//!   [`EtcdError::InvalidEnum`] (etcd would quietly treat them as a default;
//!   RaftKV says so instead).
//! - **Compare operands**: etcd reads the `target_union` member that
//!   `target` names and uses zero (or the empty value) when another member
//!   or none is set; [`Compare`] holds just that operand.
//! - **Empty transaction operations** (a `RequestOp` with nothing set) are
//!   refused with etcd's "key not found", as etcd's `checkRequestOp` does.
//! - **Headers**: a top-level answer gets the full [`rpc::ResponseHeader`]
//!   from [`HeaderInfo`] and the answer's revision. Inside a transaction,
//!   etcd sets only the `revision` of each range/put/delete answer and
//!   leaves a nested transaction's header present but zero; so do these
//!   conversions.
//! - `range_end` is passed through untouched: the data model decodes
//!   etcd's conventions itself ([`crate::kv::KeyRange`]).

use super::error::EtcdError;
use super::pb::{etcdserverpb as rpc, mvccpb};
use crate::kv::{
    self, CommandResponse, Compare, CompareResult, CompareTarget, KvError, Revisioned,
};

/// Who answers: the parts of etcd's `ResponseHeader` that are not the
/// revision. The revision comes with each answer
/// ([`crate::kv::Revisioned`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The cluster's id (etcd's `cluster_id`).
    pub cluster_id: u64,
    /// The answering member's id.
    pub member_id: u64,
    /// The member's current Raft term.
    pub raft_term: u64,
}

impl HeaderInfo {
    /// etcd's full response header at `revision`.
    pub fn header(&self, revision: i64) -> rpc::ResponseHeader {
        rpc::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        }
    }
}

/// The header etcd puts on the answers of a transaction's operations: the
/// revision only.
fn op_header(revision: i64) -> Option<rpc::ResponseHeader> {
    Some(rpc::ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn revision_of(header: &Option<rpc::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

// ------------------------------------------------------------ records

impl From<kv::KeyValue> for mvccpb::KeyValue {
    fn from(kv: kv::KeyValue) -> Self {
        mvccpb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl From<mvccpb::KeyValue> for kv::KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        kv::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl From<kv::EventKind> for mvccpb::event::EventType {
    fn from(kind: kv::EventKind) -> Self {
        match kind {
            kv::EventKind::Put => mvccpb::event::EventType::Put,
            kv::EventKind::Delete => mvccpb::event::EventType::Delete,
        }
    }
}

impl From<mvccpb::event::EventType> for kv::EventKind {
    fn from(kind: mvccpb::event::EventType) -> Self {
        match kind {
            mvccpb::event::EventType::Put => kv::EventKind::Put,
            mvccpb::event::EventType::Delete => kv::EventKind::Delete,
        }
    }
}

/// An event with its `prev_kv` (the watch drops it when not asked for).
impl From<kv::Event> for mvccpb::Event {
    fn from(e: kv::Event) -> Self {
        mvccpb::Event {
            r#type: mvccpb::event::EventType::from(e.kind) as i32,
            kv: Some(e.kv.into()),
            prev_kv: e.prev_kv.map(Into::into),
        }
    }
}

impl TryFrom<mvccpb::Event> for kv::Event {
    type Error = EtcdError;

    fn try_from(e: mvccpb::Event) -> Result<Self, EtcdError> {
        let kind =
            mvccpb::event::EventType::try_from(e.r#type).map_err(|_| EtcdError::InvalidEnum {
                field: "Event.type",
                value: e.r#type,
            })?;
        Ok(kv::Event {
            kind: kind.into(),
            kv: e.kv.map(Into::into).unwrap_or_default(),
            prev_kv: e.prev_kv.map(Into::into),
        })
    }
}

// ------------------------------------------------------------ requests in

impl TryFrom<rpc::RangeRequest> for kv::RangeRequest {
    type Error = EtcdError;

    fn try_from(r: rpc::RangeRequest) -> Result<Self, EtcdError> {
        Ok(kv::RangeRequest {
            sort_order: kv::SortOrder::try_from(r.sort_order)?,
            sort_target: kv::SortTarget::try_from(r.sort_target)?,
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            revision: r.revision,
            serializable: r.serializable,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        })
    }
}

impl From<rpc::PutRequest> for kv::PutRequest {
    fn from(p: rpc::PutRequest) -> Self {
        kv::PutRequest {
            key: p.key,
            value: p.value,
            lease: p.lease,
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

impl From<rpc::DeleteRangeRequest> for kv::DeleteRangeRequest {
    fn from(d: rpc::DeleteRangeRequest) -> Self {
        kv::DeleteRangeRequest {
            key: d.key,
            range_end: d.range_end,
            prev_kv: d.prev_kv,
        }
    }
}

impl TryFrom<rpc::Compare> for Compare {
    type Error = EtcdError;

    fn try_from(c: rpc::Compare) -> Result<Self, EtcdError> {
        use rpc::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let result = match R::try_from(c.result) {
            Ok(R::Equal) => CompareResult::Equal,
            Ok(R::Greater) => CompareResult::Greater,
            Ok(R::Less) => CompareResult::Less,
            Ok(R::NotEqual) => CompareResult::NotEqual,
            Err(_) => {
                return Err(EtcdError::InvalidEnum {
                    field: "Compare.result",
                    value: c.result,
                })
            }
        };
        // etcd reads the member `target` names; any other is as good as
        // none: zero, or the empty value.
        let union = c.target_union;
        let target = match T::try_from(c.target) {
            Ok(T::Version) => CompareTarget::Version(match union {
                Some(U::Version(v)) => v,
                _ => 0,
            }),
            Ok(T::Create) => CompareTarget::CreateRevision(match union {
                Some(U::CreateRevision(v)) => v,
                _ => 0,
            }),
            Ok(T::Mod) => CompareTarget::ModRevision(match union {
                Some(U::ModRevision(v)) => v,
                _ => 0,
            }),
            Ok(T::Value) => CompareTarget::Value(match union {
                Some(U::Value(v)) => v,
                _ => Vec::new(),
            }),
            Ok(T::Lease) => CompareTarget::Lease(match union {
                Some(U::Lease(v)) => v,
                _ => 0,
            }),
            Err(_) => {
                return Err(EtcdError::InvalidEnum {
                    field: "Compare.target",
                    value: c.target,
                })
            }
        };
        Ok(Compare {
            key: c.key,
            range_end: c.range_end,
            result,
            target,
        })
    }
}

impl TryFrom<rpc::RequestOp> for kv::RequestOp {
    type Error = EtcdError;

    fn try_from(op: rpc::RequestOp) -> Result<Self, EtcdError> {
        use rpc::request_op::Request;
        Ok(match op.request {
            Some(Request::RequestRange(r)) => kv::RequestOp::Range(r.try_into()?),
            Some(Request::RequestPut(p)) => kv::RequestOp::Put(p.into()),
            Some(Request::RequestDeleteRange(d)) => kv::RequestOp::DeleteRange(d.into()),
            Some(Request::RequestTxn(t)) => kv::RequestOp::Txn(t.try_into()?),
            // etcd's checkRequestOp: an empty operation is "key not found".
            None => return Err(KvError::KeyNotFound.into()),
        })
    }
}

impl TryFrom<rpc::TxnRequest> for kv::TxnRequest {
    type Error = EtcdError;

    fn try_from(t: rpc::TxnRequest) -> Result<Self, EtcdError> {
        let ops = |ops: Vec<rpc::RequestOp>| {
            ops.into_iter()
                .map(kv::RequestOp::try_from)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(kv::TxnRequest {
            compare: t
                .compare
                .into_iter()
                .map(Compare::try_from)
                .collect::<Result<_, _>>()?,
            success: ops(t.success)?,
            failure: ops(t.failure)?,
        })
    }
}

impl From<rpc::CompactionRequest> for kv::CompactionRequest {
    fn from(c: rpc::CompactionRequest) -> Self {
        kv::CompactionRequest {
            revision: c.revision,
            physical: c.physical,
        }
    }
}

// ------------------------------------------------------------ requests out

impl From<kv::RangeRequest> for rpc::RangeRequest {
    fn from(r: kv::RangeRequest) -> Self {
        use rpc::range_request::{SortOrder as O, SortTarget as T};
        let sort_order = match r.sort_order {
            kv::SortOrder::None => O::None,
            kv::SortOrder::Ascend => O::Ascend,
            kv::SortOrder::Descend => O::Descend,
        };
        let sort_target = match r.sort_target {
            kv::SortTarget::Key => T::Key,
            kv::SortTarget::Version => T::Version,
            kv::SortTarget::Create => T::Create,
            kv::SortTarget::Mod => T::Mod,
            kv::SortTarget::Value => T::Value,
        };
        rpc::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            revision: r.revision,
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: r.serializable,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        }
    }
}

impl From<kv::PutRequest> for rpc::PutRequest {
    fn from(p: kv::PutRequest) -> Self {
        rpc::PutRequest {
            key: p.key,
            value: p.value,
            lease: p.lease,
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

impl From<kv::DeleteRangeRequest> for rpc::DeleteRangeRequest {
    fn from(d: kv::DeleteRangeRequest) -> Self {
        rpc::DeleteRangeRequest {
            key: d.key,
            range_end: d.range_end,
            prev_kv: d.prev_kv,
        }
    }
}

impl From<Compare> for rpc::Compare {
    fn from(c: Compare) -> Self {
        use rpc::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let result = match c.result {
            CompareResult::Equal => R::Equal,
            CompareResult::Greater => R::Greater,
            CompareResult::Less => R::Less,
            CompareResult::NotEqual => R::NotEqual,
        };
        let (target, union) = match c.target {
            CompareTarget::Version(v) => (T::Version, U::Version(v)),
            CompareTarget::CreateRevision(v) => (T::Create, U::CreateRevision(v)),
            CompareTarget::ModRevision(v) => (T::Mod, U::ModRevision(v)),
            CompareTarget::Value(v) => (T::Value, U::Value(v)),
            CompareTarget::Lease(v) => (T::Lease, U::Lease(v)),
        };
        rpc::Compare {
            result: result as i32,
            target: target as i32,
            key: c.key,
            target_union: Some(union),
            range_end: c.range_end,
        }
    }
}

impl From<kv::RequestOp> for rpc::RequestOp {
    fn from(op: kv::RequestOp) -> Self {
        use rpc::request_op::Request;
        let request = match op {
            kv::RequestOp::Range(r) => Request::RequestRange(r.into()),
            kv::RequestOp::Put(p) => Request::RequestPut(p.into()),
            kv::RequestOp::DeleteRange(d) => Request::RequestDeleteRange(d.into()),
            kv::RequestOp::Txn(t) => Request::RequestTxn(t.into()),
        };
        rpc::RequestOp {
            request: Some(request),
        }
    }
}

impl From<kv::TxnRequest> for rpc::TxnRequest {
    fn from(t: kv::TxnRequest) -> Self {
        rpc::TxnRequest {
            compare: t.compare.into_iter().map(Into::into).collect(),
            success: t.success.into_iter().map(Into::into).collect(),
            failure: t.failure.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<kv::CompactionRequest> for rpc::CompactionRequest {
    fn from(c: kv::CompactionRequest) -> Self {
        rpc::CompactionRequest {
            revision: c.revision,
            physical: c.physical,
        }
    }
}

// ------------------------------------------------------------ responses out

fn kvs(records: Vec<kv::KeyValue>) -> Vec<mvccpb::KeyValue> {
    records.into_iter().map(Into::into).collect()
}

fn range_body(header: Option<rpc::ResponseHeader>, r: kv::RangeResponse) -> rpc::RangeResponse {
    rpc::RangeResponse {
        header,
        kvs: kvs(r.kvs),
        more: r.more,
        count: r.count,
    }
}

fn put_body(header: Option<rpc::ResponseHeader>, p: kv::PutResponse) -> rpc::PutResponse {
    rpc::PutResponse {
        header,
        prev_kv: p.prev_kv.map(Into::into),
    }
}

fn delete_body(
    header: Option<rpc::ResponseHeader>,
    d: kv::DeleteRangeResponse,
) -> rpc::DeleteRangeResponse {
    rpc::DeleteRangeResponse {
        header,
        deleted: d.deleted,
        prev_kvs: kvs(d.prev_kvs),
    }
}

fn txn_body(header: Option<rpc::ResponseHeader>, t: kv::TxnResponse) -> rpc::TxnResponse {
    rpc::TxnResponse {
        header,
        succeeded: t.succeeded,
        responses: t.responses.into_iter().map(Into::into).collect(),
    }
}

/// A transaction operation's answer, with the header etcd gives it there.
impl From<kv::ResponseOp> for rpc::ResponseOp {
    fn from(op: kv::ResponseOp) -> Self {
        use rpc::response_op::Response;
        let response = match op {
            kv::ResponseOp::Range(r) => {
                Response::ResponseRange(range_body(op_header(r.revision), r.body))
            }
            kv::ResponseOp::Put(p) => {
                Response::ResponsePut(put_body(op_header(p.revision), p.body))
            }
            kv::ResponseOp::DeleteRange(d) => {
                Response::ResponseDeleteRange(delete_body(op_header(d.revision), d.body))
            }
            kv::ResponseOp::Txn(t) => {
                Response::ResponseTxn(txn_body(Some(rpc::ResponseHeader::default()), t))
            }
        };
        rpc::ResponseOp {
            response: Some(response),
        }
    }
}

/// etcd's answer to a range.
pub fn range_response(h: HeaderInfo, r: Revisioned<kv::RangeResponse>) -> rpc::RangeResponse {
    range_body(Some(h.header(r.revision)), r.body)
}

/// etcd's answer to a put.
pub fn put_response(h: HeaderInfo, r: Revisioned<kv::PutResponse>) -> rpc::PutResponse {
    put_body(Some(h.header(r.revision)), r.body)
}

/// etcd's answer to a range delete.
pub fn delete_range_response(
    h: HeaderInfo,
    r: Revisioned<kv::DeleteRangeResponse>,
) -> rpc::DeleteRangeResponse {
    delete_body(Some(h.header(r.revision)), r.body)
}

/// etcd's answer to a transaction.
pub fn txn_response(h: HeaderInfo, r: Revisioned<kv::TxnResponse>) -> rpc::TxnResponse {
    txn_body(Some(h.header(r.revision)), r.body)
}

/// etcd's answer to a compaction.
pub fn compaction_response(
    h: HeaderInfo,
    r: Revisioned<kv::CompactionResponse>,
) -> rpc::CompactionResponse {
    rpc::CompactionResponse {
        header: Some(h.header(r.revision)),
    }
}

/// Takes the body a command's answer must have, or says that the store
/// answered another command (a bug of the store, never of the request).
macro_rules! expect_body {
    ($fn_name:ident, $variant:ident, $body:ty) => {
        /// The answer's body if it is of this command's kind.
        pub fn $fn_name(r: Revisioned<CommandResponse>) -> Result<Revisioned<$body>, EtcdError> {
            match r.body {
                CommandResponse::$variant(body) => Ok(Revisioned {
                    revision: r.revision,
                    body,
                }),
                other => Err(EtcdError::Internal(format!(
                    "the store answered a {} command with {other:?}",
                    stringify!($variant)
                ))),
            }
        }
    };
}

expect_body!(expect_put, Put, kv::PutResponse);
expect_body!(expect_delete_range, DeleteRange, kv::DeleteRangeResponse);
expect_body!(expect_txn, Txn, kv::TxnResponse);
expect_body!(expect_compact, Compact, kv::CompactionResponse);

// ------------------------------------------------------------ responses in

impl From<rpc::RangeResponse> for Revisioned<kv::RangeResponse> {
    fn from(r: rpc::RangeResponse) -> Self {
        Revisioned {
            revision: revision_of(&r.header),
            body: kv::RangeResponse {
                kvs: r.kvs.into_iter().map(Into::into).collect(),
                more: r.more,
                count: r.count,
            },
        }
    }
}

impl From<rpc::PutResponse> for Revisioned<kv::PutResponse> {
    fn from(p: rpc::PutResponse) -> Self {
        Revisioned {
            revision: revision_of(&p.header),
            body: kv::PutResponse {
                prev_kv: p.prev_kv.map(Into::into),
            },
        }
    }
}

impl From<rpc::DeleteRangeResponse> for Revisioned<kv::DeleteRangeResponse> {
    fn from(d: rpc::DeleteRangeResponse) -> Self {
        Revisioned {
            revision: revision_of(&d.header),
            body: kv::DeleteRangeResponse {
                deleted: d.deleted,
                prev_kvs: d.prev_kvs.into_iter().map(Into::into).collect(),
            },
        }
    }
}

impl TryFrom<rpc::TxnResponse> for Revisioned<kv::TxnResponse> {
    type Error = EtcdError;

    fn try_from(t: rpc::TxnResponse) -> Result<Self, EtcdError> {
        Ok(Revisioned {
            revision: revision_of(&t.header),
            body: txn_body_in(t)?,
        })
    }
}

fn txn_body_in(t: rpc::TxnResponse) -> Result<kv::TxnResponse, EtcdError> {
    Ok(kv::TxnResponse {
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(kv::ResponseOp::try_from)
            .collect::<Result<_, _>>()?,
    })
}

impl TryFrom<rpc::ResponseOp> for kv::ResponseOp {
    type Error = EtcdError;

    fn try_from(op: rpc::ResponseOp) -> Result<Self, EtcdError> {
        use rpc::response_op::Response;
        Ok(match op.response {
            Some(Response::ResponseRange(r)) => kv::ResponseOp::Range(r.into()),
            Some(Response::ResponsePut(p)) => kv::ResponseOp::Put(p.into()),
            Some(Response::ResponseDeleteRange(d)) => kv::ResponseOp::DeleteRange(d.into()),
            Some(Response::ResponseTxn(t)) => kv::ResponseOp::Txn(txn_body_in(t)?),
            None => {
                return Err(EtcdError::Internal(
                    "a transaction answer holds an empty ResponseOp".into(),
                ))
            }
        })
    }
}

impl From<rpc::CompactionResponse> for Revisioned<kv::CompactionResponse> {
    fn from(c: rpc::CompactionResponse) -> Self {
        Revisioned {
            revision: revision_of(&c.header),
            body: kv::CompactionResponse {},
        }
    }
}

#[cfg(test)]
mod tests;
