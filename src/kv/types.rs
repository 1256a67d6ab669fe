//! The stored record ([`KeyValue`]), the change notification ([`Event`]) and
//! the revision every answer carries ([`Revisioned`]).
//!
//! These mirror etcd's `mvccpb.KeyValue` and `mvccpb.Event` field by field
//! (same names, same meanings, `i64` where etcd's protobuf has `int64`), so
//! that the gRPC layer is a plain mapping. Field order is part of the
//! bincode layout of log entries and stored records: never reorder fields.

use serde::{Deserialize, Serialize};

/// One key with its value and MVCC bookkeeping (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key (1..=[`crate::kv::MAX_KEY_BYTES`] bytes).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key in its current life (a
    /// delete ends a life; the next put starts a new one).
    pub create_revision: i64,
    /// Revision of the latest put of the key.
    pub mod_revision: i64,
    /// Number of puts in the key's current life: 1 on create, +1 per put.
    pub version: i64,
    /// The value (empty when a range asked for `keys_only`).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease the key is attached to, 0 for none. Opaque until leases exist.
    pub lease: i64,
}

/// Whether an [`Event`] records a put or a delete (etcd's `Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or modified.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key, as watchers see it (etcd's `mvccpb.Event`).
///
/// Every change of a revision produces one event, in sub-revision order.
/// The shapes are etcd's:
/// - a put's `kv` is the key's new record;
/// - a delete's `kv` has only `key` and `mod_revision` (= the deleting
///   revision) set, everything else zero, as etcd's watch sends it;
/// - `prev_kv` is the key's record at `mod_revision - 1`, i.e. *before the
///   whole revision* (that is how etcd's watch reads it), or `None` when the
///   key did not exist then. Watchers that did not ask for it drop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new record (put) or the key and deleting revision (delete).
    pub kv: KeyValue,
    /// The key's record before the revision, if it existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The `kv` of a delete event: the key and the deleting revision.
    pub fn delete_marker(key: Vec<u8>, revision: i64) -> KeyValue {
        KeyValue {
            key,
            mod_revision: revision,
            ..KeyValue::default()
        }
    }
}

/// An answer together with the store revision it was served at or created
/// (the `revision` of etcd's `ResponseHeader`; the server adds cluster id,
/// member id and Raft term).
///
/// For a write that changed something this is the new revision; for a read,
/// a write that changed nothing, or a compaction, it is the store's current
/// revision (also for a range at a past revision, as in etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revisioned<T> {
    /// The store revision.
    pub revision: i64,
    /// The answer itself.
    pub body: T,
}

impl<T> Revisioned<T> {
    /// Maps the body, keeping the revision.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Revisioned<U> {
        Revisioned {
            revision: self.revision,
            body: f(self.body),
        }
    }
}
