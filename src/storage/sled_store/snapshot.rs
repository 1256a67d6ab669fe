//! Snapshots of the key-value state: consistent images generated while
//! `apply` keeps running (leader side), and images received in pieces,
//! staged and installed atomically (follower side).
//!
//! # A consistent image without stopping the writer
//!
//! sled 0.34's iterators are not snapshot-isolated: a scan that runs while
//! `apply` writes sees some of the new values and misses some deleted keys.
//! [`SledStore::begin_snapshot`] therefore captures the applied index `N`
//! under the apply lock and registers a copy-on-write **undo map**. From
//! then on, `apply` records for every key it is about to change *for the
//! first time since `N`* its pre-image — `Some(record)` or `None` when the
//! key did not exist — in the map, **before** writing the batch to sled.
//! The scan ([`SessionItems`]) reads a key from sled and only then looks
//! the key up in the map:
//!
//! * in the map → the pre-image is the value at `N` (`None`: the key was
//!   created after `N` and is skipped);
//! * not in the map → nobody changed the key since `N` before our read
//!   (a change would have put it in the map first), so what we read is
//!   the value at `N`.
//!
//! Keys that existed at `N` and were deleted before the scan reached them
//! are in the map with a `Some` pre-image; each time the scan advances
//! from key `a` to key `b` it emits the map's entries strictly between
//! `a` and `b` (and, at the end, those after the last key), which keeps the
//! image in strictly increasing key order. Such a deletion happened before
//! the scan looked at that part of the tree, hence before the map lookup
//! that follows the read of `b`.
//!
//! The map costs memory only for keys written during the transfer; past
//! [`MAX_UNDO_BYTES`] the session is aborted (the leader retries later).
//! Installing a snapshot (which switches and then clears trees) aborts
//! every session, and the scan checks for that after every read, so an
//! image read from a tree being cleared is never completed.
//!
//! # Staging and the atomic switch
//!
//! The store has two key-value trees (`kv`, `kv_alt`); `snapshot/active_kv`
//! says which one is the state machine. An incoming image is written by a
//! [`StagingWriter`] into the *inactive* tree (never the live one), checked
//! frame by frame, then as a whole (length, crc32, end marker), gets its
//! applied index written into it and is made durable: a [`StagedImage`].
//! [`SledStore::install_staged`] then flips `active_kv` in one sled
//! transaction with the snapshot metadata and the deletion of the log, and
//! syncs. A crash before the flip leaves the old tree active (the
//! half-written staging tree is garbage, cleared in the background after
//! the next open); a crash after it leaves the new one.
//!
//! Whoever holds the staging guard owns the inactive tree: a staging
//! writer, a staged image waiting to be installed, or the background
//! clearer. Without the guard, the inactive tree's content is garbage.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use sled::transaction::Transactional;
use sled::{Batch, IVec, Tree};

use super::kv::raw_item;
use super::{
    describe_key, lock, read, read_lock, write, write_lock, Inner, SledStore, ACTIVE_KV_KEY,
    APPLIED_KEY, KV_TREES, LOG_TREE, SEQ_KEY, SNAPSHOT_META_KEY, SNAPSHOT_TREE,
};
use crate::raft::SnapshotMeta;
use crate::storage::image::ImageItem;
use crate::storage::image::{ImageChunks, ImageDecoder, ImageTrailer};
use crate::storage::{record, StorageError};

/// Target size of one image chunk (a chunk holds whole frames, so one
/// holding a maximal item is a little larger).
pub const IMAGE_CHUNK_BYTES: usize = 1 << 20;

/// Most bytes (keys + pre-images) one session's undo map may hold before
/// the session is aborted.
pub const MAX_UNDO_BYTES: usize = 256 << 20;

/// How long [`SledStore::stage_snapshot`] waits for the inactive tree
/// (another staging or the background clearer).
const STAGING_WAIT: Duration = Duration::from_secs(30);

/// Keys removed per batch when clearing the inactive tree.
const CLEAR_BATCH: usize = 4096;

/// Reads `snapshot/active_kv` (0 when absent).
pub(super) fn read_active_slot(dir: &std::path::Path, snap: &Tree) -> Result<usize, StorageError> {
    let desc = "\"active_kv\"";
    match snap
        .get(ACTIVE_KV_KEY)
        .map_err(|e| super::sled_error(dir, SNAPSHOT_TREE, desc, e))?
    {
        None => Ok(0),
        Some(b) => {
            let slot: u8 = record::decode(ACTIVE_KV_KEY, &b)
                .map_err(|e| e.into_storage(SNAPSHOT_TREE, desc))?;
            if usize::from(slot) >= KV_TREES.len() {
                return Err(StorageError::Corruption {
                    tree: SNAPSHOT_TREE.into(),
                    key: desc.into(),
                    reason: format!("names key-value tree slot {slot}, only 0 and 1 exist"),
                });
            }
            Ok(usize::from(slot))
        }
    }
}

// ------------------------------------------------------------ sessions --

/// Pre-images of the keys changed since a session began.
#[derive(Default)]
struct UndoMap {
    /// Key → its record at the session's index (`None`: absent then).
    entries: BTreeMap<Vec<u8>, Option<IVec>>,
    /// Approximate memory held.
    bytes: usize,
}

/// The part of a session that `apply` shares.
#[derive(Default)]
pub(crate) struct SessionShared {
    undo: Mutex<UndoMap>,
    aborted: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl SessionShared {
    pub(super) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    fn abort(&self, reason: String) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
        let mut undo = lock(&self.undo);
        undo.entries = BTreeMap::new();
        undo.bytes = 0;
    }

    fn abort_error(&self) -> StorageError {
        let reason = lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "aborted".into());
        StorageError::SessionAborted { reason }
    }
}

/// Called by `apply`, under the apply lock, before `key` is changed in
/// `tree`: records its current record in every session that has not seen
/// the key change yet.
pub(super) fn record_pre_images(
    inner: &Inner,
    sessions: &[Arc<SessionShared>],
    tree: &Tree,
    name: &str,
    key: &[u8],
) -> Result<(), StorageError> {
    let mut pre: Option<Option<IVec>> = None;
    for s in sessions {
        let mut undo = lock(&s.undo);
        if s.is_aborted() || undo.entries.contains_key(key) {
            continue;
        }
        let value = match &pre {
            Some(v) => v.clone(),
            None => {
                let v = tree
                    .get(key)
                    .map_err(|e| inner.sled_err(name, &describe_key(name, key), e))?;
                pre = Some(v.clone());
                v
            }
        };
        undo.bytes += 64 + key.len() + value.as_ref().map_or(0, |v| v.len());
        undo.entries.insert(key.to_vec(), value);
        if undo.bytes > MAX_UNDO_BYTES {
            drop(undo);
            s.abort(format!(
                "more than {MAX_UNDO_BYTES} bytes of keys were overwritten while it was read"
            ));
        }
    }
    Ok(())
}

/// A consistent view of the state machine at one applied index, readable
/// while `apply` goes on. Dropping it ends the session.
pub struct SnapshotSession {
    inner: Arc<Inner>,
    shared: Arc<SessionShared>,
    tree: Tree,
    name: &'static str,
    meta: SnapshotMeta,
}

impl std::fmt::Debug for SnapshotSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSession")
            .field("meta", &self.meta)
            .field("tree", &self.name)
            .field("aborted", &self.shared.is_aborted())
            .finish()
    }
}

impl Drop for SnapshotSession {
    fn drop(&mut self) {
        lock(&self.inner.sessions).retain(|s| !Arc::ptr_eq(s, &self.shared));
    }
}

impl SnapshotSession {
    /// The applied index (and its term) the view shows.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Keys currently held in the undo map (for diagnostics and tests).
    pub fn undo_len(&self) -> usize {
        lock(&self.shared.undo).entries.len()
    }

    /// The items of the state at [`SnapshotSession::meta`], in key order.
    pub fn items(self) -> SessionItems {
        SessionItems {
            iter: self.tree.iter(),
            session: self,
            last: None,
            ready: std::collections::VecDeque::new(),
            finished: false,
        }
    }

    /// The state at [`SnapshotSession::meta`] as an
    /// [image](crate::storage::image), cut into checksummed chunks of about
    /// `chunk_bytes`; the last chunk carries the [`ImageTrailer`].
    pub fn chunks(self, chunk_bytes: usize) -> ImageChunks<SessionItems> {
        let meta = self.meta;
        ImageChunks::new(meta, self.items(), chunk_bytes)
    }
}

/// The items of a session's view, in strictly increasing key order (see
/// the [module docs](self) for why they are consistent).
pub struct SessionItems {
    session: SnapshotSession,
    iter: sled::Iter,
    /// Last key read from sled.
    last: Option<Vec<u8>>,
    /// Items decided but not yet handed out.
    ready: std::collections::VecDeque<ImageItem>,
    finished: bool,
}

impl SessionItems {
    fn check_aborted(&self) -> Result<(), StorageError> {
        if self.session.shared.is_aborted() {
            return Err(self.session.shared.abort_error());
        }
        Ok(())
    }

    /// Emits the undo map's `Some` pre-images of keys in `(last, upto)`:
    /// keys deleted after the session began that the scan can no longer see.
    fn take_deleted(&mut self, upto: Bound<&[u8]>) -> Result<(), StorageError> {
        let name = self.session.name;
        let lower = match &self.last {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Unbounded,
        };
        let undo = lock(&self.session.shared.undo);
        for (k, pre) in undo.entries.range::<[u8], _>((lower, upto)) {
            if let Some(pre) = pre {
                self.ready.push_back(raw_item(name, k, pre)?);
            }
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<(), StorageError> {
        let name = self.session.name;
        match self.iter.next() {
            Some(Ok((k, v))) if k.first() != Some(&0xFF) => {
                self.take_deleted(Bound::Excluded(&k))?;
                let pre = lock(&self.session.shared.undo).entries.get(&*k).cloned();
                match pre {
                    Some(Some(pre)) => self.ready.push_back(raw_item(name, &k, &pre)?),
                    Some(None) => {}
                    None => self.ready.push_back(raw_item(name, &k, &v)?),
                }
                // After the read: a tree switched and cleared under us shows
                // up here, before anything read from it is trusted.
                self.check_aborted()?;
                self.last = Some(k.to_vec());
            }
            Some(Err(e)) => {
                return Err(self.session.inner.sled_err(name, "snapshot scan", e));
            }
            // The end, or the reserved keys after every user key.
            _ => {
                self.take_deleted(Bound::Unbounded)?;
                self.check_aborted()?;
                self.finished = true;
            }
        }
        Ok(())
    }
}

impl Iterator for SessionItems {
    type Item = Result<ImageItem, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.advance() {
                self.finished = true;
                self.ready.clear();
                return Some(Err(e));
            }
        }
    }
}

// ------------------------------------------------------------- staging --

/// Who owns the inactive key-value tree.
#[derive(Default)]
pub(crate) struct StagingState {
    busy: Mutex<bool>,
    freed: Condvar,
    /// The inactive tree may hold garbage.
    dirty: AtomicBool,
    /// A background clearing thread is running.
    clear_pending: AtomicBool,
}

impl StagingState {
    fn acquire(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut busy = lock(&self.busy);
        while *busy {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            busy = self
                .freed
                .wait_timeout(busy, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *busy = true;
        true
    }

    fn release(&self) {
        *lock(&self.busy) = false;
        self.freed.notify_all();
    }
}

/// Ownership of the inactive tree; released on drop.
struct StagingGuard {
    inner: Arc<Inner>,
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        self.inner.staging.release();
    }
}

impl Inner {
    /// Removes up to `n` keys of the inactive tree; true once it is empty.
    /// Only for the holder of the staging guard.
    fn clear_inactive_step(&self, n: usize) -> Result<bool, StorageError> {
        let (tree, name) = {
            let slots = read(&self.kv);
            let i = slots.inactive();
            (slots.trees[i].clone(), KV_TREES[i])
        };
        let mut batch = Batch::default();
        let mut count = 0;
        for k in tree.iter().keys().take(n) {
            batch.remove(k.map_err(|e| self.sled_err(name, "clear", e))?);
            count += 1;
        }
        if count > 0 {
            tree.apply_batch(batch)
                .map_err(|e| self.sled_err(name, "clear", e))?;
        }
        if count < n {
            self.staging.dirty.store(false, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    /// Marks the inactive tree as garbage and clears it on a background
    /// thread (one at a time), batch by batch, holding the store only
    /// while a batch runs so that dropping the last handle still closes
    /// the database promptly.
    pub(super) fn clear_inactive_later(&self) {
        self.staging.dirty.store(true, Ordering::SeqCst);
        if self.staging.clear_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.this.clone();
        let spawned = std::thread::Builder::new()
            .name("raftkv-kv-clear".into())
            .spawn(move || clear_in_background(this));
        if spawned.is_err() {
            // The next staging clears it synchronously.
            self.staging.clear_pending.store(false, Ordering::SeqCst);
        }
    }

    /// At open: leftovers in the inactive tree are cleared in the
    /// background.
    pub(super) fn clear_inactive_later_if_needed(&self) -> Result<(), StorageError> {
        let (tree, _) = {
            let slots = read(&self.kv);
            let i = slots.inactive();
            (slots.trees[i].clone(), KV_TREES[i])
        };
        if !tree.is_empty() {
            self.clear_inactive_later();
        }
        Ok(())
    }

    /// Ends every snapshot session (the trees are about to change).
    fn abort_sessions(&self, why: &str) {
        for s in lock(&self.sessions).iter() {
            s.abort(why.to_string());
        }
    }
}

fn clear_in_background(this: Weak<Inner>) {
    loop {
        let Some(inner) = this.upgrade() else {
            return;
        };
        if !inner.staging.dirty.load(Ordering::SeqCst) {
            inner.staging.clear_pending.store(false, Ordering::SeqCst);
            // A request that came in while we were finishing saw
            // `clear_pending` set and left the work to us.
            if inner.staging.dirty.load(Ordering::SeqCst)
                && !inner.staging.clear_pending.swap(true, Ordering::SeqCst)
            {
                continue;
            }
            return;
        }
        if !inner.staging.acquire(Duration::from_millis(200)) {
            continue;
        }
        let step = inner.clear_inactive_step(CLEAR_BATCH);
        inner.staging.release();
        if let Err(e) = step {
            tracing::warn!(error = %e, "clearing the inactive key-value tree failed");
            inner.staging.clear_pending.store(false, Ordering::SeqCst);
            return;
        }
    }
}

/// Writes an incoming image into the inactive key-value tree, piece by
/// piece, verifying every frame. Dropping it unfinished discards the
/// staged data (cleared in the background).
pub struct StagingWriter {
    guard: Option<StagingGuard>,
    tree: Tree,
    name: &'static str,
    slot: usize,
    decoder: ImageDecoder,
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
}

impl std::fmt::Debug for StagingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingWriter")
            .field("tree", &self.name)
            .field("meta", &self.decoder.meta())
            .field("bytes", &self.decoder.bytes())
            .finish()
    }
}

impl Drop for StagingWriter {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            let inner = g.inner.clone();
            drop(g);
            inner.clear_inactive_later();
        }
    }
}

impl StagingWriter {
    fn inner(&self) -> &Arc<Inner> {
        &self.guard.as_ref().expect("writer not finished").inner
    }

    /// The snapshot the image describes, once its header arrived.
    pub fn meta(&self) -> Option<SnapshotMeta> {
        self.decoder.meta()
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.decoder.bytes()
    }

    /// Items staged so far.
    pub fn items(&self) -> u64 {
        self.decoder.items()
    }

    /// Verifies and stages the next piece of the image (any size; frames
    /// may span pieces). Not durable until [`StagingWriter::finish`].
    pub fn write(&mut self, piece: &[u8]) -> Result<(), StorageError> {
        let inner = self.inner().clone();
        inner.healthy()?;
        self.crc.update(piece);
        let mut batch = Batch::default();
        let name = self.name;
        self.decoder.push(piece, |item| {
            // Records are copied as they are: their checksums cover their
            // tree keys, so a damaged or misplaced one fails here.
            raw_item(name, &item.key, &item.value)?;
            inner.durability.note_record(item.value.len());
            batch.insert(item.key, item.value);
            Ok(())
        })?;
        let written = self
            .tree
            .apply_batch(batch)
            .map_err(|e| inner.sled_err(self.name, "staging batch", e));
        inner.fail(written)
    }

    /// Checks that the whole image arrived intact (end marker, `trailer`'s
    /// length and crc32), records its applied index in the staged tree
    /// and makes the tree durable.
    pub fn finish(mut self, trailer: &ImageTrailer) -> Result<StagedImage, StorageError> {
        let (meta, items) = self.decoder.finish()?;
        let bad = |reason: String| StorageError::Corruption {
            tree: "snapshot image".into(),
            key: "whole image".into(),
            reason,
        };
        if self.decoder.bytes() != trailer.total_len {
            return Err(bad(format!(
                "received {} bytes, the sender announced {}",
                self.decoder.bytes(),
                trailer.total_len
            )));
        }
        let crc = self.crc.clone().finalize();
        if crc != trailer.crc32 {
            return Err(bad(format!(
                "crc32 of the image is {crc:#010x}, the sender announced {:#010x}",
                trailer.crc32
            )));
        }
        let inner = self.inner().clone();
        record::encode_into(APPLIED_KEY, &meta, &mut self.buf).map_err(StorageError::Encode)?;
        let written = self
            .tree
            .insert(APPLIED_KEY, self.buf.as_slice())
            .map(|_| ())
            .map_err(|e| inner.sled_err(self.name, "staged applied index", e));
        inner.fail(written)?;
        inner.sync()?;
        Ok(StagedImage {
            guard: self.guard.take(),
            slot: self.slot,
            meta,
            items,
            bytes: trailer.total_len,
        })
    }
}

/// A complete, verified, durable image in the inactive tree, waiting for
/// [`SledStore::install_staged`]. Dropping it discards the image.
pub struct StagedImage {
    guard: Option<StagingGuard>,
    slot: usize,
    meta: SnapshotMeta,
    items: u64,
    bytes: u64,
}

impl std::fmt::Debug for StagedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedImage")
            .field("meta", &self.meta)
            .field("tree", &KV_TREES[self.slot])
            .field("items", &self.items)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Drop for StagedImage {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            let inner = g.inner.clone();
            drop(g);
            inner.clear_inactive_later();
        }
    }
}

impl StagedImage {
    /// The snapshot the image holds.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Keys in the image.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Size of the image in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn check_owner(&self, inner: &Arc<Inner>) -> Result<(), StorageError> {
        match &self.guard {
            Some(g) if Arc::ptr_eq(&g.inner, inner) => Ok(()),
            _ => Err(StorageError::Inconsistent(
                "staged image belongs to another store".into(),
            )),
        }
    }
}

impl SledStore {
    /// Starts a consistent view of the state machine at the current applied
    /// index (see the [module docs](self)). Cheap: takes the apply lock for
    /// a moment; the reading happens on whatever thread consumes the
    /// session.
    pub fn begin_snapshot(&self) -> Result<SnapshotSession, StorageError> {
        let inner = &self.inner;
        let _g = read_lock(&inner.apply_lock);
        let (tree, name) = inner.active_kv();
        let meta = inner.applied_meta();
        let shared = Arc::new(SessionShared::default());
        lock(&inner.sessions).push(shared.clone());
        Ok(SnapshotSession {
            inner: inner.clone(),
            shared,
            tree,
            name,
            meta,
        })
    }

    /// Starts staging an incoming image in the inactive key-value tree.
    /// Blocks (up to 30 s) while another image is being staged or waits to
    /// be installed, or while the tree is being cleared; clears leftovers
    /// first. Run it off any latency-sensitive thread.
    pub fn stage_snapshot(&self) -> Result<StagingWriter, StorageError> {
        let inner = &self.inner;
        inner.healthy()?;
        if !inner.staging.acquire(STAGING_WAIT) {
            return Err(StorageError::StagingBusy {
                path: inner.path.display().to_string(),
            });
        }
        let guard = StagingGuard {
            inner: inner.clone(),
        };
        while !inner.clear_inactive_step(CLEAR_BATCH)? {}
        // From here on the tree holds (partial) staging data.
        inner.staging.dirty.store(true, Ordering::SeqCst);
        let (slot, tree) = {
            let slots = read(&inner.kv);
            let i = slots.inactive();
            (i, slots.trees[i].clone())
        };
        Ok(StagingWriter {
            guard: Some(guard),
            tree,
            name: KV_TREES[slot],
            slot,
            decoder: ImageDecoder::new(),
            crc: crc32fast::Hasher::new(),
            buf: Vec::with_capacity(256),
        })
    }

    /// Stages a whole image held in memory, expecting it to be of `meta`.
    pub(super) fn stage_whole_image(
        &self,
        meta: SnapshotMeta,
        data: &[u8],
    ) -> Result<StagedImage, StorageError> {
        let mut w = self.stage_snapshot()?;
        w.write(data)?;
        if let Some(got) = w.meta() {
            if got != meta {
                return Err(StorageError::Inconsistent(format!(
                    "snapshot image is of index {} term {}, expected index {} term {}",
                    got.index, got.term, meta.index, meta.term
                )));
            }
        }
        w.finish(&ImageTrailer {
            total_len: data.len() as u64,
            crc32: crc32fast::hash(data),
        })
    }

    /// Installs a staged image as the leader's snapshot: in one sled
    /// transaction the staged tree becomes the state machine, the snapshot
    /// metadata becomes the image's and every log entry is deleted; then a
    /// sync. The applied index moves to the image's (it is recorded in the
    /// staged tree). The old tree is cleared in the background.
    pub fn install_staged(&mut self, mut staged: StagedImage) -> Result<(), StorageError> {
        let inner = &self.inner;
        staged.check_owner(inner)?;
        let meta = staged.meta;
        let mut st = lock(&inner.log_state);
        let _g = write_lock(&inner.apply_lock);
        inner.healthy()?;
        check_still_inactive(inner, staged.slot)?;
        let mut batch = Batch::default();
        // One key per stored batch of entries (see `log.rs`), not per entry.
        for kv in inner.log.range(..SEQ_KEY) {
            let (k, _) = kv.map_err(|e| inner.sled_err(LOG_TREE, "scan", e))?;
            batch.remove(k);
        }
        let seq = inner.push_seq(&st, &mut batch)?;
        let meta_rec = record::encode(SNAPSHOT_META_KEY, &meta).map_err(StorageError::Encode)?;
        let slot_rec =
            record::encode(ACTIVE_KV_KEY, &(staged.slot as u8)).map_err(StorageError::Encode)?;
        let written = (&inner.log, &inner.snap)
            .transaction(|(log, snap)| {
                log.apply_batch(&batch)?;
                snap.insert(SNAPSHOT_META_KEY, meta_rec.as_slice())?;
                snap.insert(ACTIVE_KV_KEY, slot_rec.as_slice())?;
                Ok(())
            })
            .map_err(|e| inner.tx_err(SNAPSHOT_TREE, e));
        inner.fail(written)?;
        inner.sync()?;
        inner.durable(&mut st, seq)?;
        lock(&inner.dead_log_keys).clear();
        st.snapshot = meta;
        st.last_index = meta.index;
        inner.snapshot_index.store(meta.index, Ordering::Release);
        inner.last_index.store(meta.index, Ordering::Release);
        switch_in_memory(inner, &mut staged);
        Ok(())
    }

    /// Makes a staged image the state machine without touching the log
    /// (the [`crate::storage::StateMachine::restore`] half of an install).
    pub(super) fn switch_state_machine(
        &mut self,
        mut staged: StagedImage,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        staged.check_owner(inner)?;
        let _g = write_lock(&inner.apply_lock);
        inner.healthy()?;
        check_still_inactive(inner, staged.slot)?;
        let slot_rec =
            record::encode(ACTIVE_KV_KEY, &(staged.slot as u8)).map_err(StorageError::Encode)?;
        let written = inner
            .snap
            .insert(ACTIVE_KV_KEY, slot_rec)
            .map(|_| ())
            .map_err(|e| inner.sled_err(SNAPSHOT_TREE, "\"active_kv\"", e));
        inner.fail(written)?;
        inner.sync()?;
        switch_in_memory(inner, &mut staged);
        Ok(())
    }
}

fn check_still_inactive(inner: &Inner, slot: usize) -> Result<(), StorageError> {
    if read(&inner.kv).inactive() != slot {
        return Err(StorageError::Inconsistent(format!(
            "staged tree `{}` became the active one before its install",
            KV_TREES[slot]
        )));
    }
    Ok(())
}

/// After the durable flip: readers and `apply` move to the staged tree,
/// sessions on the old tree end, the old tree is cleared in the background.
/// Called with the apply lock held.
fn switch_in_memory(inner: &Arc<Inner>, staged: &mut StagedImage) {
    inner.abort_sessions("a snapshot was installed, replacing the state it was reading");
    write(&inner.kv).active = staged.slot;
    inner
        .applied_term
        .store(staged.meta.term, Ordering::Release);
    inner
        .applied_index
        .store(staged.meta.index, Ordering::Release);
    drop(staged.guard.take());
    inner.clear_inactive_later();
}

impl crate::storage::SnapshotSource for SnapshotSession {
    type Chunks = ImageChunks<SessionItems>;

    fn meta(&self) -> SnapshotMeta {
        SnapshotSession::meta(self)
    }

    fn chunks(self, chunk_bytes: usize) -> Self::Chunks {
        SnapshotSession::chunks(self, chunk_bytes)
    }
}

impl crate::storage::SnapshotWriter for StagingWriter {
    type Staged = StagedImage;

    fn write(&mut self, piece: &[u8]) -> Result<(), StorageError> {
        StagingWriter::write(self, piece)
    }

    fn finish(self, trailer: &ImageTrailer) -> Result<StagedImage, StorageError> {
        StagingWriter::finish(self, trailer)
    }
}

impl crate::storage::StagedSnapshot for StagedImage {
    fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn items(&self) -> u64 {
        self.items
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl crate::storage::SnapshotStore for SledStore {
    type Source = SnapshotSession;
    type Staged = StagedImage;
    type Writer = StagingWriter;

    fn applied(&self) -> SnapshotMeta {
        SledStore::applied(self)
    }

    fn begin_snapshot(&self) -> Result<SnapshotSession, StorageError> {
        SledStore::begin_snapshot(self)
    }

    fn stage_snapshot(&self) -> Result<StagingWriter, StorageError> {
        SledStore::stage_snapshot(self)
    }

    fn install_staged(&mut self, staged: StagedImage) -> Result<(), StorageError> {
        SledStore::install_staged(self, staged)
    }
}

impl crate::storage::NodeStore for SledStore {
    fn flush(&self) -> Result<(), StorageError> {
        SledStore::flush(self)
    }
}
