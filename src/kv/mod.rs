//! The key-value state machine's commands and their meaning: etcd v3's
//! data model (revisions, MVCC history, ranges, range deletes,
//! transactions, compaction, watch events).
//!
//! - the types ([`types`], [`request`], [`response`], [`error`]);
//! - the log payload [`Command`] ([`command`]), carried in
//!   [`crate::raft::EntryPayload::Command`];
//! - range conventions ([`range`]) and validation ([`validate`]);
//! - the execution semantics, written once over a store view ([`exec`]
//!   over [`view::MvccView`]);
//! - a complete in-memory store ([`model::MemMvcc`]), the reference model.
//!
//! Every state machine (sled, in memory) runs the same execution code, so
//! they cannot disagree.

use serde::{Deserialize, Serialize};

pub mod command;
mod compare;
pub mod error;
pub mod exec;
mod interval;
pub mod model;
pub mod range;
mod read;
pub mod request;
pub mod response;
pub mod types;
pub mod validate;
pub mod view;

#[cfg(test)]
mod conformance;

pub use command::{Command, CommandDecodeError, COMMAND_FORMAT};
pub use error::KvError;
pub use exec::{execute, read_range, Applied, ExecError};
pub use model::MemMvcc;
pub use range::{prefix_end, KeyRange};
pub use request::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, SortOrder, SortTarget, TxnRequest,
};
pub use response::{
    CommandResponse, CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse,
    ResponseOp, TxnResponse,
};
pub use types::{Event, EventKind, KeyValue, Revisioned};
pub use validate::validate_command;
pub use view::MvccView;

/// Largest key, in bytes (contract: 1–1024 bytes of UTF-8).
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes (contract: up to 1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// One key with its value and mod revision, as the single-key contract
/// lists it (`GET /kv` items carry more fields, which this ignores).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// The key's mod revision (the contract's name for it).
    pub index: u64,
}
