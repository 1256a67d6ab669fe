//! The node's durable storage on sled 0.34.7: one database per data dir,
//! implementing both [`LogStore`] and [`StateMachine`].
//!
//! # Layout
//!
//! | tree         | key                         | record (see [`super::record`]) |
//! |--------------|-----------------------------|--------------------------------|
//! | `raft_log`   | first index, big-endian `u64` | a batch: contiguous [`Entry`]s (see `log.rs`) |
//! | `raft_log`   | nine `0xFF` bytes           | durable-write sequence number (see [`watermark`]) |
//! | `hard_state` | `hard_state`                | [`HardState`]                  |
//! | `snapshot`   | `meta`                      | [`SnapshotMeta`] of the latest snapshot (the log starts after it) |
//! | `snapshot`   | `active_kv`                 | which of `kv` / `kv_alt` is the state machine (absent = `kv`) |
//! | `kv`, `kv_alt` | the user key's bytes      | mod index + value              |
//! | `kv`, `kv_alt` | `0xFF "applied"`          | applied index + its term       |
//! | `identity`   | `identity`                  | [`Identity`]: node id, cluster id, format version |
//!
//! Every record is checksummed and verified on every read; a failure is
//! [`StorageError::Corruption`] naming the tree and key. Next to sled's
//! files, `raftkv.watermark` records the last durable-write sequence number,
//! so that sled silently dropping the tail of its log (which is what it does
//! with a damaged file) is caught at open — see [`watermark`].
//!
//! # Snapshots (see [`snapshot`] for the details)
//!
//! The durable snapshot of a node *is* its active key-value tree, whose
//! applied index is stored in the tree itself: compaction only has to make
//! the tree durable and then drop the log prefix ([`LogStore::compact`]
//! syncs before it deletes anything), and a restart is the tree plus the
//! log tail. Of the two key-value trees, one is the state machine and the
//! other the *staging* area for an image received from a leader:
//!
//! * [`SledStore::begin_snapshot`] starts a consistent image of the state
//!   at the applied index without stopping `apply` (a copy-on-write undo
//!   map keeps the pre-images of the keys changed meanwhile), streamed in
//!   checksummed chunks by [`SnapshotSession::chunks`];
//! * [`SledStore::stage_snapshot`] writes an incoming image, chunk by
//!   chunk, into the inactive tree — never the live one;
//! * [`SledStore::install_staged`] switches atomically: one transaction
//!   flips `active_kv`, records the snapshot metadata and empties the log;
//!   the old tree is cleared in the background afterwards.
//!
//! # Atomicity
//!
//! * [`LogStore::save`]: the conflicting-suffix deletion, the appended
//!   entries and the hard state are written by **one sled transaction over
//!   the `raft_log` and `hard_state` trees** (a plain single-tree batch when
//!   there is no hard state), then one durable flush. sled seals the whole
//!   transaction as one batch in its log, and recovery either replays the
//!   batch completely or not at all. A transaction rather than two batches,
//!   because with two batches a crash between them could keep a new commit
//!   index over an old, conflicting log suffix; and rather than one tree with
//!   two key spaces, because the contract asks for separate trees and the
//!   transaction costs one extra in-memory lookup per written key — and a
//!   save writes one key per batch of entries (see `log.rs`), so that is
//!   invisible next to the flush it precedes.
//! * [`LogStore::compact`]: after a sync (the key-value tree is the
//!   snapshot), the snapshot meta is one small transaction over `raft_log`
//!   and `snapshot`, with no flush of its own; the log batches it covers are
//!   deleted a few at a time by the writes that follow (`log.rs`,
//!   `DEAD_KEYS_PER_WRITE`), and readers skip them meanwhile. A batch
//!   straddling the snapshot index stays until a later snapshot covers it.
//! * [`LogStore::reset_to_snapshot`]: the snapshot meta and the deletion of
//!   every log entry are one transaction over `raft_log` and `snapshot`,
//!   then a flush. [`SledStore::install_staged`]
//!   adds the `active_kv` flip to the same transaction; the staged tree
//!   (with its applied index) was made durable before it.
//! * [`StateMachine::apply`]: all key changes of the batch **and** the
//!   applied index are one `sled::Batch` on the active key-value tree (the
//!   applied index
//!   lives in the same tree under a key that no user key can have: `0xFF` is
//!   never a byte of UTF-8). Entries ≤ the applied index are skipped, so a
//!   re-apply after a crash is harmless.
//!
//! # Durability
//!
//! `save`, `reset_to_snapshot`, `restore`, `install_staged` and
//! [`StagingWriter::finish`] return only after an `fdatasync` (see
//! [`durability`] for why `sled::Db::flush` alone is not durable). `apply` does **not** flush: the entries it applies are already
//! durable in the log, the data and the applied index move together, and
//! sled recovers a prefix of its write history — so a crash can only roll
//! the state machine back to an earlier applied index, and the node then
//! re-applies the same entries from its log. The one operation that would
//! break this, deleting log entries the state machine might lose, is
//! `compact`, and it syncs the database (every earlier apply) *before* it
//! records the snapshot; the deletions come later still. ("Prefix": sled replays its log in
//! order up to the first torn or damaged message; the [`watermark`] check
//! makes sure that prefix contains every acknowledged write.)
//!
//! # Recovery
//!
//! [`SledStore::open`] verifies every record of every tree but the inactive
//! key-value tree (a damaged store never opens; the inactive tree holds no
//! state, only leftovers of a staging, which are cleared in the background)
//! and the watermark. [`SledStore::open_with`] with [`KvCheck::Background`]
//! (what a node uses) verifies the active key-value tree on a background
//! thread instead, so that a restart costs O(log tail), not O(data) — see
//! [`KvCheck`] for why that keeps corruption detection honest; [`LogStore::load`] re-reads and checks the log,
//! refuses a state machine behind the snapshot, and finishes a snapshot
//! install interrupted between `restore` and `reset_to_snapshot` (the
//! two-step path of the [`StateMachine`] trait; `install_staged` is one
//! step).
//! One process at a time: sled locks the `db` file, and `open` waits up to
//! two seconds for it before reporting the data dir as in use.
//!
//! # Sharing (for the node runtime)
//!
//! [`SledStore`] is a cheap handle (`Clone` = one `Arc` clone). Give the
//! Raft loop one handle for `save`/`apply`/`compact`/…, and clone it for
//! request handlers: [`StateMachine::get`], [`StateMachine::scan`],
//! [`SledStore::entries`], [`SledStore::last_index`] and the other `&self`
//! readers are safe to call concurrently with the loop's writes. Writers are
//! serialised internally, so even concurrent writers through different
//! clones cannot corrupt the store (but Raft needs a single writer anyway).
//! Calls are blocking (sled is synchronous): from async code, run the Raft
//! loop's storage calls on a blocking thread (`spawn_blocking` or a
//! dedicated thread); point reads are short enough to call inline, large
//! scans better on a blocking thread too. sled's database closes when the
//! last handle drops; call [`SledStore::flush`] before a clean exit.

pub mod durability;
pub(super) mod kv;
mod log;
pub mod snapshot;
pub mod watermark;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::transaction::TransactionError;
use sled::{Batch, Tree};

pub use self::durability::{
    sled_config, sled_config_with, CACHE_CAPACITY, FLUSH_EVERY_MS, SEGMENT_SIZE,
};
use self::durability::{Durability, SyncError};
pub use self::snapshot::{SessionItems, SnapshotSession};
pub use self::snapshot::{StagedImage, StagingWriter, IMAGE_CHUNK_BYTES, MAX_UNDO_BYTES};
use self::watermark::Watermark;
use super::identity::Identity;
use super::record;
use super::{LogStore, RecoveredLog, StateMachine, StorageError};
use crate::raft::{Entry, EntryPayload, HardState, SnapshotMeta};

/// Name of the Raft log tree.
pub const LOG_TREE: &str = "raft_log";
/// Name of the hard state tree.
pub const HARD_STATE_TREE: &str = "hard_state";
/// Name of the snapshot metadata tree.
pub const SNAPSHOT_TREE: &str = "snapshot";
/// Name of the first key-value tree (the state machine of a new store).
pub const KV_TREE: &str = "kv";
/// Name of the second key-value tree: the staging area for an incoming
/// snapshot while `kv` is active, and the other way round.
pub const KV_ALT_TREE: &str = "kv_alt";
/// The two key-value trees, by slot number (the value of `active_kv`).
pub const KV_TREES: [&str; 2] = [KV_TREE, KV_ALT_TREE];
/// Name of the identity tree.
pub const IDENTITY_TREE: &str = "identity";

/// Key of the hard state record in [`HARD_STATE_TREE`].
///
/// Format of the value: a checksummed record ([`record`]) of a
/// [`HardState`].
pub const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Key of the snapshot metadata record in [`SNAPSHOT_TREE`].
///
/// Format of the value: a checksummed record of a [`SnapshotMeta`].
pub const SNAPSHOT_META_KEY: &[u8] = b"meta";
/// Key of the active key-value tree's slot (a `u8`, index into
/// [`KV_TREES`]) in [`SNAPSHOT_TREE`].
///
/// Format of the value: a checksummed record whose payload is the slot as
/// one raw byte (0 = [`KV_TREE`], 1 = [`KV_ALT_TREE`]); absent means 0.
pub const ACTIVE_KV_KEY: &[u8] = b"active_kv";
/// Key of the identity record in [`IDENTITY_TREE`].
///
/// Format of the value: see [`Identity`].
pub const IDENTITY_KEY: &[u8] = b"identity";
/// Key of the durable-write sequence number in [`LOG_TREE`] (see
/// [`watermark`]): nine `0xFF` bytes, after every 8-byte entry key.
///
/// Format of the value: a checksummed record of the number as a varint
/// `u64`.
pub const SEQ_KEY: &[u8] = &[0xFF; 9];
/// Key of the applied-index record in a key-value tree: starts with `0xFF`,
/// which no UTF-8 key can contain, and sorts after every user key.
///
/// Format of the value: a checksummed record of a [`SnapshotMeta`] (the
/// applied index and the term of the entry at it).
pub const APPLIED_KEY: &[u8] = b"\xffapplied";

/// The key of log entry `index` (of the batch starting at it): the index
/// as 8 big-endian bytes, so keys sort in index order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// A key printed for an error message.
fn describe_key(tree: &str, key: &[u8]) -> String {
    if key == APPLIED_KEY {
        return "applied index (0xFF \"applied\")".into();
    }
    if KV_TREES.contains(&tree) {
        if let Some(d) = describe_mvcc_key(key) {
            return d;
        }
    }
    if tree == LOG_TREE && key.len() == 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(key);
        return format!("index {}", u64::from_be_bytes(b));
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().count() <= 80 => format!("{s:?}"),
        Ok(s) => format!(
            "{:?}… ({} bytes)",
            s.chars().take(80).collect::<String>(),
            key.len()
        ),
        Err(_) => {
            let hex: String = key.iter().take(40).map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{}", if key.len() > 40 { "…" } else { "" })
        }
    }
}

/// A key of the MVCC tree (`mvcc_tree`'s layout) printed for an error
/// message: which record it is and of which user key.
fn describe_mvcc_key(key: &[u8]) -> Option<String> {
    use crate::storage::mvcc_tree::keys;
    let user = |k: &[u8]| describe_key("", k);
    match *key.first()? {
        keys::CURRENT => Some(format!("current record of {}", user(&key[1..]))),
        keys::HISTORY => {
            let h = keys::parse_history_key(key)?;
            Some(format!(
                "version of {} at revision {}.{}",
                user(&h.key),
                h.rev,
                h.sub
            ))
        }
        keys::BY_REVISION => {
            let (rev, sub) = keys::parse_change(&key[1..])?;
            Some(format!("change at revision {rev}.{sub}"))
        }
        keys::META => Some(format!("MVCC meta record 0x{:02x}", key.get(1)?)),
        _ => None,
    }
}

/// Log bookkeeping kept in memory (under the writer mutex).
#[derive(Clone, Copy, Debug)]
struct LogState {
    snapshot: SnapshotMeta,
    last_index: u64,
    /// Sequence number of the last durable log-store change.
    seq: u64,
}

/// The two key-value trees and which one is the state machine.
struct KvSlots {
    trees: [Tree; 2],
    active: usize,
}

impl KvSlots {
    fn active(&self) -> &Tree {
        &self.trees[self.active]
    }
    fn active_name(&self) -> &'static str {
        KV_TREES[self.active]
    }
    fn inactive(&self) -> usize {
        1 - self.active
    }
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    log: Tree,
    hard: Tree,
    snap: Tree,
    /// Readers hold the read lock for the length of one `get`/`scan`, so a
    /// snapshot install (write lock) never pulls a tree from under them.
    kv: RwLock<KvSlots>,
    durability: Durability,
    watermark: Watermark,
    /// Serialises log writers; holds the log bookkeeping.
    log_state: Mutex<LogState>,
    /// Keys of log batches wholly at or below the snapshot, still to be
    /// deleted (a few per write: see `log::DEAD_KEYS_PER_WRITE`). Changed
    /// only with `log_state` held.
    dead_log_keys: Mutex<Vec<sled::IVec>>,
    /// Mirrors of `log_state` for lock-free readers.
    last_index: AtomicU64,
    snapshot_index: AtomicU64,
    /// Applied index and its term (written under `apply_lock`).
    applied_index: AtomicU64,
    applied_term: AtomicU64,
    /// `apply` and installs hold it for writing, `begin_snapshot` for
    /// reading, so a snapshot session starts exactly at an applied index.
    apply_lock: RwLock<()>,
    /// Snapshot sessions whose undo maps `apply` must feed.
    sessions: Mutex<Vec<Arc<snapshot::SessionShared>>>,
    /// Ownership of the inactive key-value tree (staging, clearing).
    staging: snapshot::StagingState,
    /// Weak self-reference, for the background clearing thread.
    this: Weak<Inner>,
    /// Set by the first failed write or sync: after a failed fsync the
    /// page cache and the disk may disagree (and retrying an fsync can
    /// report success for data that was dropped), and the in-memory
    /// bookkeeping may no longer match sled, so every later write is
    /// refused. Reads keep working; the node should stop and restart.
    failed: Mutex<Option<Arc<StorageError>>>,
    /// Progress of the verification of the active key-value tree.
    kv_check: Mutex<KvCheckStatus>,
}

/// How [`SledStore::open_with`] opens a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache capacity in bytes (`raftkv start --cache-mb`).
    /// Resident memory is a multiple of it: see [`CACHE_CAPACITY`].
    pub cache_bytes: u64,
    /// When the records of the key-value tree are verified.
    pub kv_check: KvCheck,
}

impl Default for StoreOptions {
    /// What [`SledStore::open`] uses: the default cache, and every record
    /// verified before `open` returns.
    fn default() -> Self {
        StoreOptions {
            cache_bytes: CACHE_CAPACITY,
            kv_check: KvCheck::AtOpen,
        }
    }
}

/// When the records of the active key-value tree are verified at open.
///
/// Everything else (identity, watermark, hard state, snapshot meta, the
/// whole log tail, the applied index) is always verified before `open`
/// returns: that is what recovery decides from, and its size is bounded by
/// the snapshot threshold. The key-value tree grows with the data: with 1M
/// keys of 100 bytes, `open` took 2.4–3.0 s with [`KvCheck::AtOpen`]
/// (1.8–2.9 s of it the key-value walk) and 0.15–0.25 s with
/// [`KvCheck::Background`] (`tests/storage_scale.rs`, release build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCheck {
    /// Every record is checked before `open` returns (O(data)); a damaged
    /// record fails the open.
    AtOpen,
    /// `open` returns after the O(log tail) checks, and a background thread
    /// walks the key-value tree, in chunks, while the node serves. This
    /// stays honest because no damaged record can be used meanwhile: every
    /// read (`get`, `scan`, snapshot images) and every apply verifies the
    /// checksum of each record it touches and fails with
    /// [`StorageError::Corruption`]. The background walk only shortens the
    /// time until damage in *cold* keys is found. When it finds one, the
    /// store refuses every later write (as after a failed fsync, so the
    /// Raft loop stops at its next write), and
    /// [`SledStore::kv_check_status`] reports
    /// [`KvCheckStatus::Failed`] with the error naming tree and key; the
    /// node runtime polls it and stops with that error, the same way it
    /// stops on a corrupted record met by an apply. A node with a damaged
    /// key-value tree thus exits within seconds of starting instead of
    /// refusing to start.
    Background,
}

/// Where the verification of the active key-value tree stands.
#[derive(Clone, Debug)]
pub enum KvCheckStatus {
    /// The background walk is still going.
    Running,
    /// Every record was verified (at open or in the background).
    Passed,
    /// A record is damaged (usually [`StorageError::Corruption`], naming
    /// tree and key), or sled failed while reading the tree.
    Failed(Arc<StorageError>),
}

impl KvCheckStatus {
    /// Whether the check is still running.
    pub fn is_running(&self) -> bool {
        matches!(self, KvCheckStatus::Running)
    }

    /// An owned copy of the failure, if the check failed.
    pub fn error(&self) -> Option<StorageError> {
        let KvCheckStatus::Failed(e) = self else {
            return None;
        };
        Some((**e).clone())
    }
}

/// Durable storage of one node on sled. See the [module docs](self) for the
/// layout, the atomicity and durability arguments, and how to share it.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("last_index", &self.last_index())
            .field("applied_index", &self.applied_index())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_lock(l: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn read_lock(l: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` for node `node_id` of cluster
    /// `cluster_id`.
    ///
    /// A new dir records the identity; an existing dir recorded for another
    /// node id, cluster id or format is refused with
    /// [`StorageError::IdentityMismatch`]. Every record of every tree is
    /// verified before this returns: a damaged store fails with
    /// [`StorageError::Corruption`] (or `Inconsistent`), never a panic —
    /// sled's own panics on damaged files are caught and reported as
    /// corruption of the sled file.
    pub fn open(
        dir: impl AsRef<Path>,
        node_id: &str,
        cluster_id: &str,
    ) -> Result<SledStore, StorageError> {
        Self::open_with(dir, node_id, cluster_id, StoreOptions::default())
    }

    /// [`SledStore::open`] with explicit options: the sled cache size, and
    /// whether the key-value tree is verified before this returns or in the
    /// background ([`KvCheck`]; the background walk also ends when the last
    /// handle drops).
    pub fn open_with(
        dir: impl AsRef<Path>,
        node_id: &str,
        cluster_id: &str,
        options: StoreOptions,
    ) -> Result<SledStore, StorageError> {
        let dir = dir.as_ref();
        let identity = Identity::current(node_id, cluster_id);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(dir, &identity, options)
        }))
        .unwrap_or_else(|p| {
            Err(StorageError::Corruption {
                tree: format!("sled database {}", dir.join("db").display()),
                key: "-".into(),
                reason: format!("sled panicked while opening it: {}", panic_message(&*p)),
            })
        })
    }

    fn open_inner(
        dir: &Path,
        identity: &Identity,
        options: StoreOptions,
    ) -> Result<SledStore, StorageError> {
        let path_str = dir.display().to_string();
        let io = |what: &str, e: std::io::Error| StorageError::io(format!("{what} {path_str}"), e);
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create data dir", e))?;
        let db = open_sled_with_retry(dir, options.cache_bytes)?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| sled_error(dir, name, "-", e))
        };
        let log = open_tree(LOG_TREE)?;
        let hard = open_tree(HARD_STATE_TREE)?;
        let snap = open_tree(SNAPSHOT_TREE)?;
        let kv_trees = [open_tree(KV_TREE)?, open_tree(KV_ALT_TREE)?];
        let ident = open_tree(IDENTITY_TREE)?;
        let durability = Durability::new(dir).map_err(|e| io("cannot open sled files in", e))?;
        let has_identity = ident
            .get(IDENTITY_KEY)
            .map_err(|e| sled_error(dir, IDENTITY_TREE, "\"identity\"", e))?
            .is_some();
        let (watermark, recorded_seq) = match Watermark::open(dir)? {
            Some(found) => found,
            None if !has_identity => (Watermark::create(dir, 0)?, 0),
            None => {
                return Err(StorageError::Corruption {
                    tree: format!(
                        "watermark file {}",
                        dir.join(watermark::FILE_NAME).display()
                    ),
                    key: "durable-write seq".into(),
                    reason: "missing, but the sled database holds a node's data: the data dir \
                             is incomplete"
                        .into(),
                })
            }
        };

        let active = snapshot::read_active_slot(dir, &snap)?;
        let inner = Arc::new_cyclic(|this| Inner {
            path: dir.to_path_buf(),
            db,
            log,
            hard,
            snap,
            kv: RwLock::new(KvSlots {
                trees: kv_trees,
                active,
            }),
            durability,
            watermark,
            log_state: Mutex::new(LogState {
                snapshot: SnapshotMeta::default(),
                last_index: 0,
                seq: 0,
            }),
            dead_log_keys: Mutex::new(Vec::new()),
            last_index: AtomicU64::new(0),
            snapshot_index: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            applied_term: AtomicU64::new(0),
            apply_lock: RwLock::new(()),
            sessions: Mutex::new(Vec::new()),
            staging: snapshot::StagingState::default(),
            this: this.clone(),
            failed: Mutex::new(None),
            kv_check: Mutex::new(KvCheckStatus::Running),
        });
        // Rollback check first: a store whose sled file lost its tail may
        // look empty, and must not be re-initialised as a fresh one.
        let sled_seq = inner.read_seq()?;
        if sled_seq < recorded_seq {
            return Err(inner
                .watermark
                .rollback_error(sled_seq, recorded_seq, &dir.join("db")));
        }
        inner.check_identity(identity, &ident)?;
        inner.verify_and_cache(sled_seq)?;
        match options.kv_check {
            KvCheck::AtOpen => {
                inner.verify_active_kv()?;
                *lock(&inner.kv_check) = KvCheckStatus::Passed;
            }
            KvCheck::Background => inner.verify_kv_in_background()?,
        }
        // Leftovers of an interrupted install or an old state machine.
        inner.clear_inactive_later_if_needed()?;
        Ok(SledStore { inner })
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Index of the last log entry (the snapshot index when the log is
    /// empty). Lock-free.
    pub fn last_index(&self) -> u64 {
        self.inner.last_index.load(Ordering::Acquire)
    }

    /// Index of the first entry still in the log (snapshot index + 1).
    pub fn first_index(&self) -> u64 {
        self.inner.snapshot_index.load(Ordering::Acquire) + 1
    }

    /// The latest snapshot's metadata.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        lock(&self.inner.log_state).snapshot
    }

    /// Applied index and the term of the entry at it.
    pub fn applied(&self) -> SnapshotMeta {
        let _g = read_lock(&self.inner.apply_lock);
        self.inner.applied_meta()
    }

    /// The stored hard state (default when none was saved yet).
    pub fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.read_hard_state()
    }

    /// Term of entry `index`: `Ok(None)` past the last index,
    /// [`StorageError::Compacted`] before the snapshot (the snapshot's own
    /// index answers with the snapshot term).
    pub fn term(&self, index: u64) -> Result<Option<u64>, StorageError> {
        let snapshot = lock(&self.inner.log_state).snapshot;
        if index == snapshot.index {
            return Ok(Some(snapshot.term));
        }
        if index < snapshot.index {
            return Err(StorageError::Compacted(index));
        }
        Ok(self.inner.read_entry(index)?.map(|e| e.term))
    }

    /// Log entries `[lo, hi)` for replication, stopping early once their
    /// total [`Entry::approx_size`] reaches `max_bytes` (at least one entry
    /// is returned when `lo < hi` and `lo` exists). Fails with
    /// [`StorageError::Compacted`] when `lo` is at or before the snapshot
    /// index; stops at the end of the log.
    ///
    /// Safe to call from another thread than the Raft loop: appends are
    /// seen whole or not at all; a concurrent suffix truncation (only ever
    /// on followers, which do not replicate) may be seen entry by entry.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        let snapshot_index = self.inner.snapshot_index.load(Ordering::Acquire);
        if lo <= snapshot_index {
            return Err(StorageError::Compacted(lo));
        }
        let out = self.inner.read_entries(lo, hi, max_bytes)?;
        if out.is_empty() && lo <= self.inner.snapshot_index.load(Ordering::Acquire) {
            // Compacted while we were reading.
            return Err(StorageError::Compacted(lo));
        }
        Ok(out)
    }

    /// Makes everything written so far durable (sled flush + fdatasync,
    /// and the [`watermark`] file). Call before a clean exit (dropping the
    /// last handle does it too, ignoring errors).
    pub fn flush(&self) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let mut st = lock(&inner.log_state);
        // A compaction's change is written without a sync of its own; once
        // this sync covers it, the watermark must say so.
        let seq = st.seq;
        inner.sync()?;
        inner.durable(&mut st, seq)?;
        inner.watermark.sync()
    }

    /// Installs a whole snapshot image received from the leader: stages it
    /// ([`SledStore::stage_snapshot`]) and switches to it with the log
    /// reset ([`SledStore::install_staged`]), atomically.
    pub fn install_snapshot(
        &mut self,
        meta: SnapshotMeta,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let staged = self.stage_whole_image(meta, data)?;
        self.install_staged(staged)
    }

    /// Verifies every record of the active key-value tree now, on the
    /// calling thread (what [`KvCheck::AtOpen`] does; for tests and tools).
    pub fn verify_kv_now(&self) -> Result<(), StorageError> {
        self.inner.verify_active_kv()
    }

    /// Where the verification of the key-value tree stands (see
    /// [`KvCheck`]). Cheap: the node runtime polls it.
    pub fn kv_check_status(&self) -> KvCheckStatus {
        lock(&self.inner.kv_check).clone()
    }

    /// Waits (polling, at most `timeout`) until the key-value check is no
    /// longer [`KvCheckStatus::Running`], and returns its status.
    pub fn wait_kv_check(&self, timeout: std::time::Duration) -> KvCheckStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.kv_check_status();
            if !status.is_running() || std::time::Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The raw sled database, for tests and diagnostics (writing through it
    /// bypasses every check).
    pub fn raw_db(&self) -> &sled::Db {
        &self.inner.db
    }
}

/// How long `open` waits for sled's lock on the `db` file. sled's worker
/// threads can hold the file for a moment after the last handle of a
/// previous open dropped (a restart within one process, e.g. in tests);
/// another live process holding it fails after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_sled_with_retry(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled_config_with(dir, cache_bytes).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StorageError::Locked {
                        path: dir.display().to_string(),
                        lock: dir.join("db").display().to_string(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(sled_error(dir, "sled database", "-", e)),
        }
    }
}

/// Converts a sled error, naming the database file, tree and key.
fn sled_error(dir: &Path, tree: &str, key: &str, e: sled::Error) -> StorageError {
    let file = dir.join("db");
    match e {
        sled::Error::Corruption { at, .. } => StorageError::Corruption {
            tree: format!("{tree} (sled file {})", file.display()),
            key: key.to_string(),
            reason: format!("sled found a damaged page at {at:?}"),
        },
        sled::Error::Io(io) => StorageError::io(format!("{} ({tree})", file.display()), io),
        other => StorageError::Sled {
            context: format!("{} ({tree})", file.display()),
            source: Arc::new(other),
        },
    }
}

impl Inner {
    fn sled_err(&self, tree: &str, key: &str, e: sled::Error) -> StorageError {
        sled_error(&self.path, tree, key, e)
    }

    fn tx_err(&self, tree: &str, e: TransactionError<()>) -> StorageError {
        match e {
            TransactionError::Storage(e) => self.sled_err(tree, "transaction", e),
            TransactionError::Abort(()) => StorageError::TransactionAborted {
                path: self.path.display().to_string(),
            },
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        let r = self.durability.sync(&self.db).map_err(|e| match e {
            SyncError::Sled(e) => self.sled_err("sled database", "flush", e),
            SyncError::Io(e) => {
                StorageError::io(format!("fdatasync in {}", self.path.display()), e)
            }
        });
        self.fail(r)
    }

    /// Refuses writes once a write has failed (see `failed`).
    fn healthy(&self) -> Result<(), StorageError> {
        match &*lock(&self.failed) {
            None => Ok(()),
            Some(first) => Err(StorageError::Halted {
                path: self.path.display().to_string(),
                first: first.clone(),
            }),
        }
    }

    /// Passes `r` through, remembering the first write failure.
    fn fail<T>(&self, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &r {
            let mut failed = lock(&self.failed);
            if failed.is_none() {
                *failed = Some(Arc::new(e.clone()));
            }
        }
        r
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        match self
            .log
            .get(SEQ_KEY)
            .map_err(|e| self.sled_err(LOG_TREE, "durable-write seq", e))?
        {
            None => Ok(0),
            Some(b) => record::decode(SEQ_KEY, &b)
                .map_err(|e| e.into_storage(LOG_TREE, "durable-write seq")),
        }
    }

    /// Adds the next sequence number to `batch` (a log-tree batch).
    fn push_seq(&self, st: &LogState, batch: &mut Batch) -> Result<u64, StorageError> {
        let seq = st.seq + 1;
        let rec = record::encode(SEQ_KEY, &seq).map_err(StorageError::Encode)?;
        batch.insert(SEQ_KEY, rec);
        Ok(seq)
    }

    /// Records a durable change `seq` (after the sync).
    fn durable(&self, st: &mut LogState, seq: u64) -> Result<(), StorageError> {
        st.seq = seq;
        self.fail(self.watermark.record(seq))
    }

    fn applied_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.applied_index.load(Ordering::Acquire),
            term: self.applied_term.load(Ordering::Acquire),
        }
    }

    fn check_identity(&self, want: &Identity, ident: &Tree) -> Result<(), StorageError> {
        let path = self.path.display().to_string();
        let stored = ident
            .get(IDENTITY_KEY)
            .map_err(|e| self.sled_err(IDENTITY_TREE, "identity", e))?;
        match stored {
            Some(bytes) => {
                let stored: Identity = record::decode(IDENTITY_KEY, &bytes)
                    .map_err(|e| e.into_storage(IDENTITY_TREE, "\"identity\""))?;
                want.check(&stored, &path)
            }
            None => {
                let kv = read(&self.kv);
                let empty = [&self.log, &self.hard, &self.snap]
                    .into_iter()
                    .chain(kv.trees.iter())
                    .all(|t| t.is_empty());
                drop(kv);
                if !empty {
                    return Err(StorageError::Corruption {
                        tree: IDENTITY_TREE.into(),
                        key: "\"identity\"".into(),
                        reason: format!("identity record missing, but {path} holds data"),
                    });
                }
                let rec = record::encode(IDENTITY_KEY, want).map_err(StorageError::Encode)?;
                ident
                    .insert(IDENTITY_KEY, rec)
                    .map_err(|e| self.sled_err(IDENTITY_TREE, "identity", e))?;
                self.sync()?;
                durability::sync_new_dir(&self.path)
                    .map_err(|e| StorageError::io(format!("fsync of {path}"), e))?;
                Ok(())
            }
        }
    }

    /// Verifies every record of every tree but the key-value trees (see
    /// [`KvCheck`]) and fills the in-memory caches.
    fn verify_and_cache(&self, seq: u64) -> Result<(), StorageError> {
        let hard_state = self.read_hard_state()?;
        let snapshot = self.read_snapshot_meta()?;
        let (entries, dead) = self.read_log_and_dead(snapshot)?;
        *lock(&self.dead_log_keys) = dead;
        let last = entries.last().map(|e| (e.index, e.term));
        if let Some((index, term)) = last {
            if term > hard_state.term {
                return Err(StorageError::Inconsistent(format!(
                    "{}: hard state term {} is below the term {term} of log entry {index}",
                    self.path.display(),
                    hard_state.term
                )));
            }
        }
        drop(entries);
        let applied = self.read_applied()?;
        let last_index = last.map_or(snapshot.index, |(i, _)| i);
        *lock(&self.log_state) = LogState {
            snapshot,
            last_index,
            seq,
        };
        self.last_index.store(last_index, Ordering::Release);
        self.snapshot_index.store(snapshot.index, Ordering::Release);
        self.applied_index.store(applied.index, Ordering::Release);
        self.applied_term.store(applied.term, Ordering::Release);
        Ok(())
    }
}

/// A key between `a` and `b` (a ≤ b), to split a walk of the keys in two:
/// both read as big-endian numbers of the longer one's length, averaged.
/// Any key would be correct (the halves are `< mid` and `≥ mid`); the
/// average only balances them when keys are spread evenly.
fn midpoint_key(a: &[u8], b: &[u8]) -> Vec<u8> {
    let len = a.len().max(b.len()).max(1);
    let digit = |k: &[u8], i: usize| u16::from(k.get(i).copied().unwrap_or(0));
    // Sum, then halve, digit by digit from the most significant.
    let mut sum = vec![0u16; len + 1];
    let mut carry = 0u16;
    for i in (0..len).rev() {
        let t = digit(a, i) + digit(b, i) + carry;
        sum[i + 1] = t & 0xFF;
        carry = t >> 8;
    }
    sum[0] = carry;
    let mut mid = Vec::with_capacity(len);
    let mut rem = 0u16;
    for (i, d) in sum.iter().enumerate() {
        let cur = (rem << 8) | d;
        if i > 0 {
            mid.push((cur / 2) as u8);
        }
        rem = cur % 2;
    }
    mid
}

/// Records verified per step of the background key-value check: one step
/// holds the store (and sled's iterator) for a few milliseconds, then lets
/// go, so the walk ends promptly when the last handle drops.
const KV_CHECK_CHUNK: usize = 4096;

impl Inner {
    /// Verifies every record of the active key-value tree (chunk by chunk),
    /// in two halves on two threads: the walk is bound by sled's iteration
    /// (about 1.4 µs a record), and at 1M keys one thread took 1.4–1.8 s.
    fn verify_active_kv(&self) -> Result<(), StorageError> {
        let (tree, name) = self.active_kv();
        // The last user key: reserved keys (the applied index) start with
        // 0xFF and sort after every user key.
        let last_user = tree.range::<&[u8], _>(..&[0xFFu8][..]).next_back();
        let mid = match (tree.first(), last_user) {
            (Ok(Some((a, _))), Some(Ok((b, _)))) if a < b => Some(midpoint_key(&a, &b)),
            _ => None,
        };
        let walk = |start: Bound<&[u8]>, until: Option<&[u8]>| -> Result<(), StorageError> {
            let mut next = self.verify_kv_range(&tree, name, start, until, KV_CHECK_CHUNK)?;
            while let Some(last) = next {
                next = self.verify_kv_range(
                    &tree,
                    name,
                    Bound::Excluded(&last),
                    until,
                    KV_CHECK_CHUNK,
                )?;
            }
            Ok(())
        };
        match mid {
            None => walk(Bound::Unbounded, None),
            Some(mid) => std::thread::scope(|scope| {
                let upper = scope.spawn(|| walk(Bound::Included(&mid), None));
                let lower = walk(Bound::Unbounded, Some(&mid));
                let upper = upper.join().unwrap_or_else(|_| {
                    Err(StorageError::Panicked {
                        task: "the key-value check",
                    })
                });
                lower.and(upper)
            }),
        }
    }

    /// Starts the background walk of [`KvCheck::Background`] (on this
    /// thread, synchronously, if no thread can be started).
    fn verify_kv_in_background(&self) -> Result<(), StorageError> {
        let this = self.this.clone();
        let spawned = std::thread::Builder::new()
            .name("raftkv-kv-check".into())
            .spawn(move || kv_check_in_background(this));
        if spawned.is_err() {
            self.verify_active_kv()?;
            *lock(&self.kv_check) = KvCheckStatus::Passed;
        }
        Ok(())
    }
}

/// The background key-value check: chunk after chunk, holding the store
/// only for one chunk at a time; ends when the store is closed. A snapshot
/// install that switches trees meanwhile restarts the walk on the new tree.
fn kv_check_in_background(this: Weak<Inner>) {
    let started = std::time::Instant::now();
    let mut after: Option<sled::IVec> = None;
    let mut walking: Option<&'static str> = None;
    let mut records = 0u64;
    loop {
        let Some(inner) = this.upgrade() else {
            return;
        };
        let (tree, name) = inner.active_kv();
        if walking.is_some_and(|w| w != name) {
            after = None;
        }
        walking = Some(name);
        match inner.verify_kv(&tree, name, after.as_deref(), KV_CHECK_CHUNK) {
            Ok(Some(last)) => {
                after = Some(last);
                records += KV_CHECK_CHUNK as u64;
            }
            Ok(None) => {
                *lock(&inner.kv_check) = KvCheckStatus::Passed;
                tracing::info!(
                    tree = name,
                    records_at_least = records,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "key-value tree verified"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "damaged key-value record found by the background check");
                // Refuse writes from now on: the Raft loop stops at its
                // next write even if nobody polls the status.
                *lock(&inner.kv_check) = KvCheckStatus::Failed(Arc::new(e.clone()));
                let _ = inner.fail::<()>(Err(e));
                return;
            }
        }
    }
}

impl Drop for Inner {
    /// Dropping the last handle is a clean close: flush sled, fdatasync, and
    /// make the watermark durable (best effort; errors cannot be reported
    /// from a destructor — call [`SledStore::flush`] to see them).
    fn drop(&mut self) {
        let _ = self.sync();
        let _ = self.watermark.sync();
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn midpoint_key_lies_between_its_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a", b"c"),
            (b"k000001", b"k999999"),
            (b"a", b"azzzz"),
            (b"\x00", b"\xfe\xff"),
            (b"same", b"same"),
        ];
        for &(a, b) in cases {
            let m = super::midpoint_key(a, b);
            assert!(a <= m.as_slice(), "{a:?} <= {m:?}");
            let b_padded = [b, &vec![0u8; m.len().saturating_sub(b.len())][..]].concat();
            assert!(m <= b_padded, "{m:?} <= {b:?}");
        }
        assert_eq!(super::midpoint_key(b"a", b"c"), b"b".to_vec());
        assert_eq!(super::midpoint_key(b"k0", b"k2"), b"k1".to_vec());
    }

    use super::*;

    fn put(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(
                crate::kv::Command::Put(crate::kv::PutRequest {
                    key: format!("k{index}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .encode(),
            ),
        }
    }

    #[test]
    fn a_failed_write_makes_the_store_refuse_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path(), "n", "c").unwrap();
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: 1,
        };
        s.save(Some(&hs), &[put(1)]).unwrap();
        s.apply(&[put(1)]).unwrap();
        // As if an fsync had failed.
        let injected: Result<(), _> = s.inner.fail(Err(StorageError::io(
            "fdatasync",
            std::io::Error::other("injected fsync failure"),
        )));
        assert!(injected.is_err());

        let err = s.save(None, &[put(2)]).unwrap_err().to_string();
        assert!(
            err.contains("injected fsync failure") && err.contains("restart"),
            "{err}"
        );
        assert!(s.apply(&[put(2)]).is_err());
        assert!(s.compact(SnapshotMeta { index: 1, term: 1 }).is_err());
        assert!(s
            .reset_to_snapshot(SnapshotMeta { index: 5, term: 1 })
            .is_err());
        let (meta, image) = s.snapshot().unwrap();
        assert!(s.restore(meta, &image).is_err());
        // Nothing changed, and reads still work.
        assert_eq!(s.last_index(), 1);
        assert_eq!(s.applied_index(), 1);
        let kv = s.get(b"k1").unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v"[..], 2));
        assert_eq!(s.load().unwrap().entries, vec![put(1)]);
    }

    #[test]
    fn keys_are_described_readably() {
        assert_eq!(describe_key(LOG_TREE, &log_key(42)), "index 42");
        assert_eq!(describe_key(KV_TREE, b"user/1"), "\"user/1\"");
        assert!(describe_key(KV_TREE, APPLIED_KEY).contains("applied"));
        assert_eq!(describe_key(KV_TREE, &[0xFE, 0x01]), "0xfe01");
        let long = "x".repeat(200);
        assert!(describe_key(KV_TREE, long.as_bytes()).contains("200 bytes"));
    }
}
