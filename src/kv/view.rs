//! [`MvccView`]: what a store must offer for [`crate::kv::execute`] and
//! [`crate::kv::read_range`] to run over it.
//!
//! The semantics are written once, over this trait; the sled state machine
//! and the in-memory [`crate::kv::MemMvcc`] both implement it, so they
//! cannot disagree about what a command means. A store only reads records
//! here; it writes the [`crate::kv::Applied`] outcome itself.
//!
//! # History and compaction
//!
//! A store keeps, per key, its versions (puts and tombstones) by revision.
//! Compaction at `C` may physically delete versions, but must keep
//! - every version with revision ≥ `C`, and
//! - for each key, its latest version with revision < `C`, unless that
//!   version is a tombstone.
//!
//! Then the key's state at any revision `R ≥ C - 1` is still exact: the
//! latest version ≤ `R` is either ≥ `C` (kept) or the latest < `C` (kept,
//! or a tombstone, meaning "absent" — which is what dropping it says).
//! So every read at `R ≥ C`, and the `prev_kv` (state at `rev - 1`) of every
//! event at `rev ≥ C`, stays available, on every replica alike, whether
//! or not the physical deletion has happened yet.

use std::ops::ControlFlow;

use super::range::KeyRange;
use super::types::KeyValue;

/// A read-only view of an MVCC store at one moment (its current revision
/// does not move while the view is in use).
pub trait MvccView {
    /// The store's own failure (I/O, corruption). Never a request's fault:
    /// it aborts the apply instead of becoming an answer.
    type Error;

    /// The current revision: 1 for a new store, +1 per revision that
    /// changed something.
    fn revision(&self) -> i64;

    /// The compact revision: reads below it are refused. 0 if never
    /// compacted.
    fn compact_revision(&self) -> i64;

    /// The key's record at revision `rev` (its latest put with
    /// `mod_revision <= rev`, unless a later tombstone ≤ `rev` deleted it),
    /// or `None` if it did not exist then.
    ///
    /// Callers pass `compact_revision() - 1 <= rev <= revision()` (see the
    /// module doc for why that range is exact). `rev == revision()` is the
    /// hot path (every put and delete asks it), which a store should serve
    /// from its current records.
    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, Self::Error>;

    /// Calls `visit` with the record of every key of `range` that existed at
    /// revision `rev`, in ascending key order, until `visit` breaks.
    /// `rev` as in [`MvccView::get`]. An empty range visits nothing.
    fn scan(
        &self,
        range: KeyRange<'_>,
        rev: i64,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Result<(), Self::Error>;
}
