//! How the sled store makes a write durable, and how sled is configured.
//!
//! # What `sled::Db::flush()` really does (sled 0.34.7, read from its source)
//!
//! `Db::flush()` → `PageCache::flush()` → `iobuf::flush()` →
//! `make_stable(max_reserved_lsn)`: it seals the current IO buffer and writes
//! every buffer up to the highest reserved LSN with `pwrite`, followed on
//! Linux by
//! `sync_file_range(fd, off, len, WAIT_BEFORE | WRITE | WAIT_AFTER)`
//! (`pagecache/iobuf.rs`, `write_to_log`; `fsync` only when that syscall
//! returns `ENOSYS`, or on other OSes). It does **not** call `fsync` or
//! `fdatasync`, despite its doc comment. `sync_file_range` only starts and
//! waits for write-back of the dirty pages of that range: it does not
//! flush the drive's volatile write cache and does not persist file
//! metadata — and sled's log file grows as it is appended, so the new file
//! size and block allocation are exactly the metadata that matters. After a
//! power loss or kernel crash, a flushed write can therefore be lost (the
//! problem reported as sled#1452). Against a *process* crash (kill -9) the
//! `pwrite` alone is enough: the data is in the page cache.
//!
//! Two more gaps, also from the source:
//! * values larger than about a quarter of a segment are written as separate
//!   *blob* files under `blobs/` (`pagecache/blob_io.rs`, `write_blob`),
//!   created and written but never fsync'd, and their directory entries
//!   are not fsync'd either; the main log only holds a pointer to them;
//! * the `conf` file is written without fsync.
//!
//! (sled's own `fsync`s are in the periodic flusher thread — `sync_all`
//! every `flush_every_ms` — when it frees segments, and for its `snap.*`
//! page-table snapshots.)
//!
//! So a durable write here is [`Durability::sync`]: `db.flush()` (gets
//! everything into the file), then `fdatasync` on our own descriptor of the
//! same `db` file (fsync applies to the file, not to the descriptor: it
//! flushes the drive cache and the size metadata), then an `fdatasync` of
//! every blob file that appeared since the last sync plus an `fsync` of the
//! `blobs/` directory when there was one. The segment size is chosen so that
//! a single maximal KV write (1 MiB value + 1 KiB key) stays inline and the
//! blob path is rare. At creation, the `conf` file, the data dir and its
//! parent are fsync'd once.
//!
//! The price: one `sync_file_range` round trip *plus* one `fdatasync`
//! round trip per durable write, where one `fdatasync` would do if sled
//! exposed it, and the `fdatasync` also has to commit the growing file's
//! size. On the (shared, noisy) development VM: sled's flush alone ≈ 0.4
//! ms, with the `fdatasync` ≈ 2.9 ms, against ≈ 1.1 ms for appending the
//! same bytes to a preallocated plain file + `fdatasync`
//! (`cargo bench --bench storage -- flush_parts`).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// sled's segment size: 8 MiB, so the blob threshold (about a quarter of a
/// segment) is ~2 MiB and a maximal single write stays inline in the log.
/// Fixed at creation (sled refuses to reopen with another value).
pub const SEGMENT_SIZE: usize = 8 << 20;

/// Default sled page cache: 64 MiB (`raftkv start --cache-mb`, see
/// [`super::StoreOptions`]). sled's own default (1 GiB) is far more than a
/// node should take, and sled's accounting undercounts what the cache
/// really holds (it counts serialized page sizes, not the in-memory
/// nodes, their allocator overhead or the page table), so the resident
/// memory of a node is a multiple of this figure. Measured with 1M keys
/// of 100-byte values applied in-process (`tests/storage_scale.rs`; RSS
/// after writing, reopening and reading every record once): 161 MB with
/// a 32 MiB cache, 221 MB with 64 MiB, 336 MB with 128 MiB — about
/// 2.5 × the cache plus 60 MB. A node adds its runtime, connections and
/// snapshot buffers on top, so 128 MiB would leave no margin under the
/// 400 MB-per-node target; 64 MiB does. The hot set (log tail, recently
/// written keys, the upper levels of the tree) fits in it; colder keys
/// cost a page read from the OS page cache.
pub const CACHE_CAPACITY: u64 = 64 << 20;

/// Interval of sled's background flusher thread. Durability never depends
/// on it (every acknowledged write is flushed explicitly), but the same
/// thread is the only caller of sled's segment garbage collection
/// (`attempt_gc`, which relocates the live pages of segments that are at
/// most half live, for up to half of each interval), so turning it off
/// (`None`) would make the files grow forever, and a long interval lets
/// garbage pile up under a sustained write load: overwriting 20 000 keys
/// of 1 KiB (20.8 MB live, log compacted every 10 000 entries) at ~7 500
/// writes/s, the `db` file levelled off at 220–330 MB with 1000 ms or
/// 250 ms, at 90–135 MB with 100 ms and 55–110 MB with 50 ms. 100 ms costs
/// ten wake-ups (and a no-op `fsync` when idle) per second.
pub const FLUSH_EVERY_MS: u64 = 100;

/// The sled configuration of a node's data dir with the default cache
/// ([`CACHE_CAPACITY`]); see [`sled_config_with`].
pub fn sled_config(dir: &Path) -> sled::Config {
    sled_config_with(dir, CACHE_CAPACITY)
}

/// The sled configuration of a node's data dir, set explicitly rather than
/// relying on sled's defaults (see the constants for why each value), with
/// a page cache of `cache_bytes`.
/// `Mode::LowSpace` because sled's space amplification is its known
/// weakness (the log is compacted by snapshots, so write throughput is not
/// limited by sled's GC).
pub fn sled_config_with(dir: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(cache_bytes)
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(Some(FLUSH_EVERY_MS))
        .use_compression(false)
}

/// Records up to this size can never make sled write a blob: a tree node
/// holds at most ~20 records (sled splits leaves above 16 items and merges
/// below 4), so it can only outgrow the ~2 MiB blob threshold if one of its
/// records is larger than about 100 KiB.
pub const BLOB_SAFE_RECORD: usize = 64 << 10;

/// Makes sled's writes durable (see the module docs).
pub struct Durability {
    /// Whether sled may have written blob files: set when `blobs/` was not
    /// empty at open or a record above [`BLOB_SAFE_RECORD`] was written.
    /// While false, the per-sync directory scan is skipped (it costs about
    /// as much CPU as sled's whole flush).
    blobs_possible: AtomicBool,
    /// Our own descriptor of sled's `db` file, for `fdatasync`.
    db_file: File,
    blobs_dir: PathBuf,
    /// Blob files already synced (names of files seen in the last scan).
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl Durability {
    /// Opens the descriptors for the sled database in `dir` (which sled
    /// has already opened).
    pub fn new(dir: &Path) -> io::Result<Self> {
        let db_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))?;
        let blobs_dir = dir.join("blobs");
        let existing = blob_names(&blobs_dir)?;
        let blobs_possible = AtomicBool::new(!existing.is_empty());
        let synced_blobs = Mutex::new(existing);
        Ok(Durability {
            blobs_possible,
            db_file,
            blobs_dir,
            synced_blobs,
        })
    }

    /// Notes that a record of `len` bytes is about to be written.
    pub fn note_record(&self, len: usize) {
        if len > BLOB_SAFE_RECORD {
            self.blobs_possible.store(true, Ordering::Release);
        }
    }

    /// Flushes sled and makes everything written so far durable.
    pub fn sync(&self, db: &sled::Db) -> Result<(), SyncError> {
        db.flush().map_err(SyncError::Sled)?;
        self.db_file.sync_data().map_err(SyncError::Io)?;
        if self.blobs_possible.load(Ordering::Acquire) {
            self.sync_new_blobs().map_err(SyncError::Io)?;
        }
        Ok(())
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = blob_names(&self.blobs_dir)?;
        let mut any_new = false;
        for name in now.difference(&synced) {
            match File::open(self.blobs_dir.join(name)) {
                Ok(f) => {
                    f.sync_data()?;
                    any_new = true;
                }
                // Garbage-collected between the scan and the open: nothing
                // references it any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if any_new {
            sync_dir(&self.blobs_dir)?;
        }
        *synced = now;
        Ok(())
    }
}

/// Why a sync failed.
pub enum SyncError {
    /// sled's own flush failed.
    Sled(sled::Error),
    /// fdatasync / directory fsync failed.
    Io(io::Error),
}

fn blob_names(dir: &Path) -> io::Result<HashSet<OsString>> {
    let mut names = HashSet::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                names.insert(e?.file_name());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(names)
}

/// fsyncs a directory, making the entries created in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a freshly created data dir durable: sled's `conf` file (written
/// without fsync by sled), the dir's entries and the dir's own entry in its
/// parent.
pub fn sync_new_dir(dir: &Path) -> io::Result<()> {
    let conf = dir.join("conf");
    if conf.exists() {
        File::open(&conf)?.sync_all()?;
    }
    sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}
