//! Requests, mirroring etcd's `etcdserverpb` messages field by field.
//!
//! Numbers are `i64` as in etcd's protobuf, so negative inputs reach
//! [`crate::kv::validate`] and are refused there explicitly. Enum variants
//! are declared in the order of etcd's enum values. Field and variant order
//! is part of the bincode layout of log entries ([`crate::kv::Command`]):
//! never reorder, only append variants at the end.

use serde::{Deserialize, Serialize};

use super::error::KvError;

/// Order of a range's results (etcd's `RangeRequest.SortOrder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    /// No explicit order: key order, unless `sort_target` is not `Key`, in
    /// which case etcd sorts ascending by that target.
    #[default]
    None,
    /// Lowest first.
    Ascend,
    /// Highest first.
    Descend,
}

impl TryFrom<i32> for SortOrder {
    type Error = KvError;

    /// Maps etcd's wire value (0, 1, 2); anything else is etcd's
    /// "invalid sort option".
    fn try_from(v: i32) -> Result<Self, KvError> {
        match v {
            0 => Ok(SortOrder::None),
            1 => Ok(SortOrder::Ascend),
            2 => Ok(SortOrder::Descend),
            _ => Err(KvError::InvalidSortOption),
        }
    }
}

/// What a range's results are sorted by (etcd's `RangeRequest.SortTarget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value (bytewise).
    Value,
}

impl TryFrom<i32> for SortTarget {
    type Error = KvError;

    /// Maps etcd's wire value (0..=4); anything else is etcd's
    /// "invalid sort option".
    fn try_from(v: i32) -> Result<Self, KvError> {
        match v {
            0 => Ok(SortTarget::Key),
            1 => Ok(SortTarget::Version),
            2 => Ok(SortTarget::Create),
            3 => Ok(SortTarget::Mod),
            4 => Ok(SortTarget::Value),
            _ => Err(KvError::InvalidSortOption),
        }
    }
}

/// Read the keys of a range (etcd's `RangeRequest`).
///
/// `key` and `range_end` follow etcd's conventions (see
/// [`crate::kv::KeyRange::new`]): empty `range_end` = the single key `key`,
/// `range_end == [0]` = every key ≥ `key`, otherwise `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key of the range (or the only key).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; see the type's doc for the conventions.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Most keys to return; 0 = no limit.
    pub limit: i64,
    /// Revision to read at; 0 = the current one.
    pub revision: i64,
    /// Order of the results.
    pub sort_order: SortOrder,
    /// What the results are sorted by.
    pub sort_target: SortTarget,
    /// Serve from the local copy without a linearizable check (used by the
    /// server; the semantics ignore it).
    pub serializable: bool,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep only keys with `mod_revision >= min_mod_revision`; 0 = no bound.
    pub min_mod_revision: i64,
    /// Keep only keys with `mod_revision <= max_mod_revision`; 0 = no bound.
    pub max_mod_revision: i64,
    /// Keep only keys with `create_revision >= min_create_revision`; 0 = no
    /// bound.
    pub min_create_revision: i64,
    /// Keep only keys with `create_revision <= max_create_revision`; 0 = no
    /// bound.
    pub max_create_revision: i64,
}

/// Set one key (etcd's `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The new value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease to attach the key to; 0 = none.
    pub lease: i64,
    /// Return the key's previous record.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, `lease` must be 0).
    pub ignore_lease: bool,
}

/// Delete the keys of a range (etcd's `DeleteRangeRequest`); `key` and
/// `range_end` as in [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key of the range (or the only key).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range, exclusive; conventions as in [`RangeRequest`].
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted records.
    pub prev_kv: bool,
}

/// How a [`Compare`] relates the stored field to the target (etcd's
/// `Compare.CompareResult`): "stored field `result` target value".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareResult {
    /// Stored == target.
    Equal,
    /// Stored > target.
    Greater,
    /// Stored < target.
    Less,
    /// Stored != target.
    NotEqual,
}

/// The field a [`Compare`] looks at, with the value to compare it to
/// (etcd's `Compare.target` + `target_union`, which always agree).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    CreateRevision(i64),
    /// The key's mod revision.
    ModRevision(i64),
    /// The key's value (bytewise).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's lease id.
    Lease(i64),
}

/// One condition of a transaction (etcd's `Compare`). With a `range_end`
/// (conventions as in [`RangeRequest`]) every key in the range must satisfy
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key (or first key of the range).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range; empty = just `key`.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// The relation that must hold.
    pub result: CompareResult,
    /// The field and the value to compare it to.
    pub target: CompareTarget,
}

/// One operation of a transaction branch (etcd's `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// Read a range (sees the transaction's earlier writes).
    Range(RangeRequest),
    /// Set a key.
    Put(PutRequest),
    /// Delete a range.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// A transaction (etcd's `TxnRequest`): if every compare holds, run
/// `success`, else `failure`; atomically, as one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Conditions, all evaluated against the state before the transaction.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

/// Discard history before a revision (etcd's `CompactionRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// The new compact revision: reads below it fail from now on.
    pub revision: i64,
    /// etcd: answer only once the history is physically removed. The
    /// semantics ignore it (the node may wait for its storage).
    pub physical: bool,
}
