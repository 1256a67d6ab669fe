//! A guard file outside sled that catches sled silently dropping the tail
//! of its log.
//!
//! # Why
//!
//! On recovery, sled 0.34.7 reads its log from its last page-table snapshot
//! and stops at the first message whose checksum fails, treating it as a
//! torn write: everything after it is dropped and the segment tail is
//! overwritten (`pagecache/iterator.rs`, `pagecache/snapshot.rs`). That is
//! right for a write torn by a crash, but a flipped byte anywhere in the
//! file's tail looks the same — and in experiments (see
//! `tests/storage_corruption.rs`) every single flipped byte in `db` opened
//! "successfully" with the log, hard state and key-value data rolled back,
//! often to an empty store. A rolled-back term or vote can make a node vote
//! twice; a rolled-back log loses acknowledged writes. Our record checksums
//! cannot see records that are no longer there, so a witness outside sled
//! is needed.
//!
//! # How
//!
//! Every durable change to the log store (`save`, `compact`,
//! `reset_to_snapshot`) also writes a sequence number `seq + 1` into sled
//! in the same atomic batch; once the change is durable, this file is
//! updated to the same number. On open, sled's recovered number must be at
//! least the file's: if it is lower, sled lost durable writes and the store
//! is refused as corrupt.
//!
//! Writing this file costs one small `pwrite` per durable change and **no
//! extra fsync**: it is fsync'd at creation and on [`Watermark::sync`]
//! (clean close), and otherwise reaches the disk with the kernel's normal
//! write-back. That keeps the check free of false alarms — the file is only
//! written after sled's copy is durable, so it never claims more than sled
//! holds — and complete for every case but a power loss within a few
//! seconds of the damage, where the file may lag. Damage at rest (bit rot,
//! a bad sector, a stray write — what the check is for) is always caught.
//!
//! # Format
//!
//! Two 64-byte slots at offsets 0 and 4096 (separate sectors and pages),
//! written alternately, each a checksummed record (see [`crate::storage::record`])
//! of the sequence number. A torn slot write leaves the other slot intact;
//! the highest valid slot wins. No valid slot at all is corruption.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::storage::record;
use crate::storage::StorageError;

/// File name of the watermark inside the data dir.
pub const FILE_NAME: &str = "raftkv.watermark";

const SLOT_OFFSETS: [u64; 2] = [0, 4096];
const SLOT_LEN: usize = 64;
const SLOT_KEYS: [&[u8]; 2] = [b"watermark slot 0", b"watermark slot 1"];

/// The open guard file.
///
/// Format: 4160 bytes; slot 0 at offset 0 and slot 1 at offset 4096, 64
/// bytes each, zero elsewhere. A slot is one length byte `n`, then a
/// checksummed record (see [`crate::storage::record`]) of `n` bytes whose
/// key is `watermark slot 0` or `watermark slot 1` and whose payload is
/// the sequence number as a varint `u64`, then zeros. Number `s` goes to
/// slot `s % 2`. No header of its own: the data dir's format version (in
/// its identity record) covers it.
pub struct Watermark {
    file: File,
    path: PathBuf,
}

fn corrupt(path: &Path, reason: String) -> StorageError {
    StorageError::Corruption {
        tree: format!("watermark file {}", path.display()),
        key: "durable-write seq".into(),
        reason,
    }
}

impl Watermark {
    /// Opens the guard file of `dir` and returns it with the recorded
    /// sequence number; `None` when the file does not exist.
    pub fn open(dir: &Path) -> Result<Option<(Watermark, u64)>, StorageError> {
        let path = dir.join(FILE_NAME);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(path.display().to_string(), e)),
        };
        let mut best: Option<u64> = None;
        let mut errors = Vec::new();
        for (slot, off) in SLOT_OFFSETS.iter().enumerate() {
            let mut buf = [0u8; SLOT_LEN];
            if let Err(e) = file.read_exact_at(&mut buf, *off) {
                errors.push(format!("slot {slot}: {e}"));
                continue;
            }
            let len = buf[0] as usize;
            if len == 0 || len > SLOT_LEN - 1 {
                errors.push(format!("slot {slot}: bad length {len}"));
                continue;
            }
            match record::decode::<u64>(SLOT_KEYS[slot], &buf[1..1 + len]) {
                Ok(seq) => best = Some(best.map_or(seq, |b| b.max(seq))),
                Err(e) => errors.push(format!("slot {slot}: {e}")),
            }
        }
        match best {
            Some(seq) => Ok(Some((Watermark { file, path }, seq))),
            None => Err(corrupt(
                &path,
                format!("no valid slot ({})", errors.join("; ")),
            )),
        }
    }

    /// Creates the guard file of `dir` with sequence number `seq` and makes
    /// it durable.
    pub fn create(dir: &Path, seq: u64) -> Result<Watermark, StorageError> {
        let path = dir.join(FILE_NAME);
        let io_err = |e: io::Error| StorageError::io(path.display().to_string(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err)?;
        let w = Watermark {
            file,
            path: path.clone(),
        };
        w.write_slot(0, seq)?;
        w.write_slot(1, seq)?;
        w.file.sync_all().map_err(io_err)?;
        super::durability::sync_dir(dir).map_err(io_err)?;
        Ok(w)
    }

    fn write_slot(&self, slot: usize, seq: u64) -> Result<(), StorageError> {
        let rec = record::encode(SLOT_KEYS[slot], &seq).map_err(StorageError::Encode)?;
        let mut buf = [0u8; SLOT_LEN];
        buf[0] = rec.len() as u8;
        buf[1..1 + rec.len()].copy_from_slice(&rec);
        self.file
            .write_all_at(&buf, SLOT_OFFSETS[slot])
            .map_err(|e| StorageError::io(self.path.display().to_string(), e))
    }

    /// Records `seq` (already durable in sled). No fsync: see the module
    /// docs.
    pub fn record(&self, seq: u64) -> Result<(), StorageError> {
        self.write_slot((seq % 2) as usize, seq)
    }

    /// Makes the recorded number durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io(self.path.display().to_string(), e))
    }

    /// The error for a sled store that recovered only up to `sled_seq`.
    pub fn rollback_error(&self, sled_seq: u64, recorded: u64, db: &Path) -> StorageError {
        StorageError::Corruption {
            tree: format!("{} (sled file {})", super::LOG_TREE, db.display()),
            key: "durable-write seq".into(),
            reason: format!(
                "sled recovered only up to durable write #{sled_seq}, but {} records that \
                 write #{recorded} was made durable: the sled file is damaged and sled \
                 silently dropped the rest of its log",
                self.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_record_reopen() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watermark::open(dir.path()).unwrap().is_none());
        let w = Watermark::create(dir.path(), 0).unwrap();
        w.record(1).unwrap();
        w.record(2).unwrap();
        w.record(3).unwrap();
        drop(w);
        let (_, seq) = Watermark::open(dir.path()).unwrap().unwrap();
        assert_eq!(seq, 3);
    }

    #[test]
    fn one_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watermark::create(dir.path(), 0).unwrap();
        w.record(7).unwrap(); // slot 1
        w.record(8).unwrap(); // slot 0
        drop(w);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xFF; // damage slot 0
        std::fs::write(&path, &bytes).unwrap();
        let (_, seq) = Watermark::open(dir.path()).unwrap().unwrap();
        assert_eq!(seq, 7);
        bytes[4096 + 3] ^= 0xFF; // and slot 1
        std::fs::write(&path, &bytes).unwrap();
        let err = Watermark::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(FILE_NAME) && err.contains("no valid slot"),
            "{err}"
        );
    }
}
