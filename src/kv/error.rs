//! [`KvError`]: why a key-value request was refused.
//!
//! Where etcd has an error for the case, the text is etcd's, without the
//! `etcdserver: ` prefix that etcd's gRPC errors carry (the gRPC layer adds
//! it): Go clients map errors back by their text. The other texts are
//! RaftKV's own (limits and negative numbers, which etcd does not check in
//! the same way).

use serde::{Deserialize, Serialize};

/// Why a key-value request was refused. Refusals are deterministic: every
/// replica applying the same command at the same state refuses it the same
/// way, and nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    /// A read below the compact revision, or a compaction at or below it.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The store's compact revision when the request was refused.
        compact_revision: i64,
    },
    /// A read or compaction above the store's current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// An empty key (put, range, delete, compare).
    #[error("key is not provided")]
    EmptyKey,
    /// A put's key is longer than [`crate::kv::MAX_KEY_BYTES`].
    #[error("key is too long: {len} bytes, at most {max} allowed")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A put's value is larger than [`crate::kv::MAX_VALUE_BYTES`].
    #[error("value is too large: {len} bytes, at most {max} allowed")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ignore_value` together with a non-empty value.
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a non-zero lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A transaction (or a nested one) with more compares or operations per
    /// branch than [`crate::kv::validate::MAX_TXN_OPS`] allows.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A transaction that writes a key twice (see
    /// [`crate::kv::validate`] for etcd's exact rule).
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A sort order or target outside etcd's enums (wire values only).
    #[error("invalid sort option")]
    InvalidSortOption,
    /// A numeric field that must not be negative was.
    #[error("{field} must not be negative, got {value}")]
    NegativeField {
        /// The field's name, as in the request type.
        field: String,
        /// The value given.
        value: i64,
    },
    /// A put names a lease that does not exist (used once leases exist).
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A log entry's command did not decode (written by an incompatible
    /// build); it is applied as a no-op on every replica alike.
    #[error("malformed command: {0}")]
    MalformedCommand(String),
}

impl KvError {
    /// Whether the text is one of etcd's errors (so the gRPC layer sends it
    /// with etcd's `etcdserver: ` prefix and status code) rather than one of
    /// RaftKV's own.
    pub fn is_etcd_error(&self) -> bool {
        !matches!(
            self,
            KvError::KeyTooLong { .. }
                | KvError::ValueTooLarge { .. }
                | KvError::NegativeField { .. }
                | KvError::MalformedCommand(_)
        )
    }

    pub(crate) fn negative(field: &str, value: i64) -> KvError {
        KvError::NegativeField {
            field: field.to_string(),
            value,
        }
    }
}
