//! Responses, mirroring etcd's `etcdserverpb` messages (without the
//! `ResponseHeader`, which [`crate::kv::Revisioned`] and the server provide).

use serde::{Deserialize, Serialize};

use super::types::{KeyValue, Revisioned};

/// The answer to a [`crate::kv::RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, after filters, sort and limit; empty for `count_only`.
    pub kvs: Vec<KeyValue>,
    /// More keys passed the filters than `limit` allowed.
    pub more: bool,
    /// Number of keys in the range at the read revision, before the filters
    /// and the limit (etcd's meaning).
    pub count: i64,
}

/// The answer to a [`crate::kv::PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The key's previous record, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// The answer to a [`crate::kv::DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted records in key order, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// The answer to one operation of a transaction (etcd's `ResponseOp`).
///
/// etcd fills the `ResponseHeader.revision` of each range, put and delete
/// response inside a transaction (the revision as of that operation: the
/// new one once the transaction has changed something, the old one before),
/// and leaves the header of a nested transaction's response empty. The
/// variants carry exactly that, so the gRPC layer can reproduce it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// A range's answer.
    Range(Revisioned<RangeResponse>),
    /// A put's answer.
    Put(Revisioned<PutResponse>),
    /// A delete's answer.
    DeleteRange(Revisioned<DeleteRangeResponse>),
    /// A nested transaction's answer (etcd's header revision for it is 0).
    Txn(TxnResponse),
}

/// The answer to a [`crate::kv::TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Every compare held and `success` ran (else `failure` ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran, in order.
    pub responses: Vec<ResponseOp>,
}

/// The answer to a [`crate::kv::CompactionRequest`] (empty, as etcd's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {}

/// The answer to one [`crate::kv::Command`], one variant per command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Answer to `Command::Put`.
    Put(PutResponse),
    /// Answer to `Command::DeleteRange`.
    DeleteRange(DeleteRangeResponse),
    /// Answer to `Command::Txn`.
    Txn(TxnResponse),
    /// Answer to `Command::Compact`.
    Compact(CompactionResponse),
}
