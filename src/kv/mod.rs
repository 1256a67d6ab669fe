//! The key-value state machine's commands and their meaning.
//!
//! Two generations live here side by side until the storage and the node
//! switch over:
//!
//! - **Today's** single-key model, used by storage, node and simulation: a
//!   write travels through Raft as a bincode-encoded [`KvCommand`] inside
//!   [`crate::raft::EntryPayload::Command`]; [`decide`] is the single place
//!   that says what a command does to a key.
//! - **etcd v3's** data model (revisions, MVCC history, ranges, range
//!   deletes, transactions, compaction, watch events), pure and not yet
//!   wired in: the types ([`types`], [`request`], [`response`], [`error`]),
//!   the log payload [`Command`] ([`command`]), range conventions
//!   ([`range`]), validation ([`validate`]), the execution semantics written
//!   once over a store view ([`exec`] over [`view::MvccView`]), and a
//!   complete in-memory store ([`model::MemMvcc`]).
//!
//! Every state machine (sled, in memory) calls the same decision code, so
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

/// A write to the key-value store.
///
/// Format (the bytes of [`crate::raft::EntryPayload::Command`]; bincode 2
/// standard, see [`crate::storage::record`]): the variant index as a
/// varint (0 `Put`, 1 `Delete`), then the key as a varint length and UTF-8
/// bytes; a `Put` then has its value the same way; both end with `cas` as
/// an option (0, or 1 and a varint). There is no version field: a command
/// that does not decode is applied as a no-op on every replica, so a
/// changed encoding must come with a data-dir and a wire version bump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`; with `cas = Some(m)` only if the key's current
    /// mod index is `m` (0 = the key must be absent).
    Put {
        /// Key.
        key: String,
        /// New value.
        value: String,
        /// Compare-and-swap precondition on the key's mod index.
        cas: Option<u64>,
    },
    /// Remove `key`; with `cas = Some(m)` only if its mod index is `m`.
    Delete {
        /// Key.
        key: String,
        /// Compare-and-swap precondition on the key's mod index.
        cas: Option<u64>,
    },
}

impl KvCommand {
    /// The key the command touches.
    pub fn key(&self) -> &str {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Delete { key, .. } => key,
        }
    }

    /// Encodes the command for a log entry.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding a KvCommand into a Vec cannot fail")
    }

    /// Decodes a command from a log entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, bincode::error::DecodeError> {
        let (cmd, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        Ok(cmd)
    }
}

/// The result of applying one log entry, handed back to the client that
/// proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    /// A no-op entry (or an undecodable command, which changes nothing).
    Noop,
    /// The key now holds the value written at `index`.
    Written {
        /// Log index of the write = the key's new mod index.
        index: u64,
    },
    /// The key was removed at `index`.
    Deleted {
        /// Log index of the delete.
        index: u64,
    },
    /// Delete of a key that does not exist; nothing changed.
    NotFound,
    /// The CAS precondition failed; `current` is the key's mod index (0 =
    /// absent). Nothing changed.
    CasMismatch {
        /// The key's current mod index.
        current: u64,
    },
}

/// What a state machine must do to its store for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Store `value` under the key with mod index `index`.
    Set {
        /// Value to store.
        value: String,
        /// Mod index to store.
        index: u64,
    },
    /// Remove the key.
    Remove,
    /// Leave the store unchanged.
    None,
}

/// Decides what `cmd`, applied at log `index` to a key whose current mod
/// index is `current` (`None` = absent), does: the effect on the store and
/// the result for the client.
pub fn decide(cmd: &KvCommand, index: u64, current: Option<u64>) -> (Effect, ApplyResult) {
    let cas_ok = |cas: &Option<u64>| match cas {
        None => true,
        Some(m) => *m == current.unwrap_or(0),
    };
    match cmd {
        KvCommand::Put { value, cas, .. } => {
            if !cas_ok(cas) {
                return (
                    Effect::None,
                    ApplyResult::CasMismatch {
                        current: current.unwrap_or(0),
                    },
                );
            }
            (
                Effect::Set {
                    value: value.clone(),
                    index,
                },
                ApplyResult::Written { index },
            )
        }
        KvCommand::Delete { cas, .. } => {
            if current.is_none() {
                return match cas {
                    Some(m) if *m != 0 => (Effect::None, ApplyResult::CasMismatch { current: 0 }),
                    _ => (Effect::None, ApplyResult::NotFound),
                };
            }
            if !cas_ok(cas) {
                return (
                    Effect::None,
                    ApplyResult::CasMismatch {
                        current: current.unwrap_or(0),
                    },
                );
            }
            (Effect::Remove, ApplyResult::Deleted { index })
        }
    }
}

/// One key with its value and mod index, as listed by a scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Log index that last modified the key.
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cas: Option<u64>) -> KvCommand {
        KvCommand::Put {
            key: "k".into(),
            value: "v".into(),
            cas,
        }
    }

    #[test]
    fn put_without_cas_always_writes() {
        let (e, r) = decide(&put(None), 7, Some(3));
        assert_eq!(
            e,
            Effect::Set {
                value: "v".into(),
                index: 7
            }
        );
        assert_eq!(r, ApplyResult::Written { index: 7 });
    }

    #[test]
    fn cas_zero_means_absent() {
        assert_eq!(
            decide(&put(Some(0)), 5, None).1,
            ApplyResult::Written { index: 5 }
        );
        assert_eq!(
            decide(&put(Some(0)), 5, Some(2)).1,
            ApplyResult::CasMismatch { current: 2 }
        );
    }

    #[test]
    fn cas_mismatch_changes_nothing() {
        let (e, r) = decide(&put(Some(4)), 9, Some(3));
        assert_eq!(e, Effect::None);
        assert_eq!(r, ApplyResult::CasMismatch { current: 3 });
    }

    #[test]
    fn delete_missing_is_not_found() {
        let del = KvCommand::Delete {
            key: "k".into(),
            cas: None,
        };
        assert_eq!(decide(&del, 2, None), (Effect::None, ApplyResult::NotFound));
        assert_eq!(
            decide(&del, 2, Some(1)),
            (Effect::Remove, ApplyResult::Deleted { index: 2 })
        );
    }

    #[test]
    fn command_roundtrips_through_bincode() {
        let c = put(Some(11));
        assert_eq!(KvCommand::decode(&c.encode()).unwrap(), c);
    }
}
