//! The RaftKV snapshot file: what `raftkv snapshot save` (and etcd's
//! `Maintenance.Snapshot` stream, which is the same bytes cut in chunks)
//! hands out for backups, and what `raftkv snapshot restore` reads.
//!
//! Format:
//!
//! ```text
//! file    = magic ++ version ++ cluster ++ image ++ padding ++ sha256
//! magic   = the 8 bytes "RKVSNAP\n"
//! version = u32 little-endian, FILE_VERSION (1)
//! cluster = u16 little-endian length, then that many UTF-8 bytes: the id
//!           of the cluster the snapshot was taken from (at most 1024 bytes)
//! image   = a snapshot image exactly as `super::image` defines it
//!           (Header{format, index, term} Item{key, value}* End{items},
//!           every frame checksummed), the items being the records of the
//!           node's MVCC tree (`super::mvcc_tree`), so the file carries the
//!           revision, the compact revision and the history
//! padding = 0 to 511 zero bytes, so that everything before the hash is a
//!           multiple of 512 bytes long
//! sha256  = 32 bytes: SHA-256 of every byte before it
//! ```
//!
//! Like etcd's snapshot file, it ends with a SHA-256 of its content, so a
//! copy can be checked without understanding it. The padding is etcd's
//! rule too: `etcdctl snapshot save` refuses a download whose length is not
//! 32 more than a multiple of 512 ("sha256 checksum not found"), since an
//! etcd database is whole pages; with it, etcdctl saves RaftKV's stream as
//! it is. The image's own frame
//! checksums, key order and end marker catch damage a second way, and say
//! where. The file is written and read in one pass with bounded memory
//! ([`SnapshotFileEncoder`], [`SnapshotFileDecoder`]), so neither a node
//! exporting a large state nor a restore holds it whole.

use sha2::{Digest, Sha256};

use super::image::{ImageDecoder, ImageItem, MAX_FRAME_BYTES};
use super::mvcc_tree::keys::{describe, CURRENT, META_COMPACT, META_REVISION};
use super::{record, StorageError};
use crate::raft::SnapshotMeta;

/// The file's first 8 bytes.
pub const FILE_MAGIC: &[u8; 8] = b"RKVSNAP\n";
/// Version of the file layout written after the magic.
pub const FILE_VERSION: u32 = 1;
/// Longest cluster id the header may carry.
pub const MAX_CLUSTER_ID_BYTES: usize = 1024;
/// Length of the SHA-256 at the end of the file.
pub const HASH_BYTES: usize = 32;
/// What the length of everything before the hash is a multiple of.
pub const ALIGN_BYTES: u64 = 512;

/// Length of the fixed part of the header (magic, version, id length).
const FIXED_HEADER: usize = 8 + 4 + 2;

/// Why a snapshot file was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file does not start with the magic bytes.
    #[error("not a RaftKV snapshot file (it does not start with the RaftKV snapshot magic)")]
    NotASnapshot,
    /// A layout this build does not read.
    #[error(
        "snapshot file version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The header's cluster id is malformed.
    #[error("snapshot file header is damaged: {0}")]
    BadHeader(String),
    /// The file ends before its image and hash are complete.
    #[error("snapshot file is truncated: {bytes} bytes read, {reason}")]
    Truncated {
        /// Bytes the file holds.
        bytes: u64,
        /// What is missing.
        reason: String,
    },
    /// A frame of the image is damaged (checksum, order, end marker).
    #[error("snapshot file is damaged: {0}")]
    Image(#[source] StorageError),
    /// The bytes between the image and the hash are not the padding.
    #[error("snapshot file is damaged: {0}")]
    BadPadding(String),
    /// The SHA-256 at the end does not match the content.
    #[error("snapshot file is damaged: its SHA-256 is {computed}, the file records {stored}")]
    HashMismatch {
        /// The hash the file carries (hex).
        stored: String,
        /// The hash of its content (hex).
        computed: String,
    },
    /// The cluster id cannot be written into a header.
    #[error(
        "cluster id of {0} bytes is longer than the {MAX_CLUSTER_ID_BYTES} a snapshot file allows"
    )]
    ClusterIdTooLong(usize),
}

/// What a verified file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    /// The cluster the snapshot was taken from.
    pub cluster_id: String,
    /// The applied index (and its term) the image shows.
    pub meta: SnapshotMeta,
    /// Records in the image.
    pub items: u64,
    /// Length of the image.
    pub image_bytes: u64,
    /// Length of the whole file.
    pub file_bytes: u64,
    /// The file's SHA-256 (its last 32 bytes).
    pub sha256: [u8; HASH_BYTES],
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file around an image streamed in pieces: [`Self::new`] gives
/// the header, [`Self::image`] passes each image piece through the hash,
/// [`Self::finish`] gives the padding and the trailing hash.
#[derive(Clone, Debug)]
pub struct SnapshotFileEncoder {
    hasher: Sha256,
    /// Bytes of header and image so far.
    written: u64,
}

impl SnapshotFileEncoder {
    /// Starts a file of a snapshot of cluster `cluster_id`; returns the
    /// encoder and the header bytes (to be written first).
    pub fn new(cluster_id: &str) -> Result<(Self, Vec<u8>), SnapshotFileError> {
        let id = cluster_id.as_bytes();
        let len = u16::try_from(id.len())
            .ok()
            .filter(|_| id.len() <= MAX_CLUSTER_ID_BYTES)
            .ok_or(SnapshotFileError::ClusterIdTooLong(id.len()))?;
        let mut header = Vec::with_capacity(FIXED_HEADER + id.len());
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&FILE_VERSION.to_le_bytes());
        header.extend_from_slice(&len.to_le_bytes());
        header.extend_from_slice(id);
        let mut hasher = Sha256::new();
        hasher.update(&header);
        let written = header.len() as u64;
        Ok((SnapshotFileEncoder { hasher, written }, header))
    }

    /// Adds the next piece of the image to the hash (the caller writes the
    /// piece itself, unchanged).
    pub fn image(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.written += piece.len() as u64;
    }

    /// The bytes that close the file: the padding, then the SHA-256.
    pub fn finish(mut self) -> Vec<u8> {
        let pad = padding_for(self.written);
        let mut out = vec![0u8; pad];
        self.hasher.update(&out);
        out.extend_from_slice(&self.hasher.finalize());
        out
    }
}

/// Zero bytes that bring `len` to a multiple of [`ALIGN_BYTES`].
fn padding_for(len: u64) -> usize {
    // Below 512, so the cast cannot truncate.
    ((ALIGN_BYTES - len % ALIGN_BYTES) % ALIGN_BYTES) as usize
}

/// Encodes a whole file around a whole image.
pub fn encode_file(cluster_id: &str, image: &[u8]) -> Result<Vec<u8>, SnapshotFileError> {
    let (mut enc, mut out) = SnapshotFileEncoder::new(cluster_id)?;
    enc.image(image);
    out.extend_from_slice(image);
    out.extend(enc.finish());
    Ok(out)
}

/// Verifies a file fed in pieces of any size: the header, every frame of
/// the image as it completes, the padding, and at [`Self::finish`] the end
/// marker, the alignment and the SHA-256. Memory use is bounded by one
/// image frame.
#[derive(Debug)]
pub struct SnapshotFileDecoder {
    /// Header bytes, until the header is complete.
    head: Vec<u8>,
    cluster_id: Option<String>,
    hasher: Sha256,
    /// The last bytes seen: the hash, if the file ends here.
    tail: Vec<u8>,
    image: ImageDecoder,
    /// An image frame not yet complete (frames go to `image` whole, so
    /// the end of the image is found exactly where the padding starts).
    frame: Vec<u8>,
    image_bytes: u64,
    padding: u64,
    file_bytes: u64,
}

impl Default for SnapshotFileDecoder {
    fn default() -> Self {
        SnapshotFileDecoder {
            head: Vec::new(),
            cluster_id: None,
            hasher: Sha256::new(),
            tail: Vec::with_capacity(2 * HASH_BYTES),
            image: ImageDecoder::new(),
            frame: Vec::new(),
            image_bytes: 0,
            padding: 0,
            file_bytes: 0,
        }
    }
}

impl SnapshotFileDecoder {
    /// A decoder expecting the file's first byte.
    pub fn new() -> Self {
        SnapshotFileDecoder::default()
    }

    /// The source cluster's id, once the header was read.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The snapshot the image describes, once its header frame was read.
    pub fn meta(&self) -> Option<SnapshotMeta> {
        self.image.meta()
    }

    /// Parses the header out of `piece` (with what came before); returns
    /// what of `piece` follows the header.
    fn take_header<'a>(&mut self, piece: &'a [u8]) -> Result<&'a [u8], SnapshotFileError> {
        let need = |head: &[u8]| {
            if head.len() < FIXED_HEADER {
                FIXED_HEADER
            } else {
                FIXED_HEADER + usize::from(u16::from_le_bytes([head[12], head[13]]))
            }
        };
        let mut rest = piece;
        loop {
            let want = need(&self.head);
            if self.head.len() >= want {
                break;
            }
            let take = (want - self.head.len()).min(rest.len());
            self.head.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            // Check what is already there, so a foreign file fails at once.
            let got = self.head.len();
            let magic_len = got.min(FILE_MAGIC.len());
            if self.head[..magic_len] != FILE_MAGIC[..magic_len] {
                return Err(SnapshotFileError::NotASnapshot);
            }
            if got >= 12 {
                let version =
                    u32::from_le_bytes([self.head[8], self.head[9], self.head[10], self.head[11]]);
                if version != FILE_VERSION {
                    return Err(SnapshotFileError::UnsupportedVersion {
                        found: version,
                        supported: FILE_VERSION,
                    });
                }
            }
            if got >= FIXED_HEADER {
                let len = usize::from(u16::from_le_bytes([self.head[12], self.head[13]]));
                if len > MAX_CLUSTER_ID_BYTES {
                    return Err(SnapshotFileError::BadHeader(format!(
                        "cluster id length {len} exceeds {MAX_CLUSTER_ID_BYTES}"
                    )));
                }
            }
            if take == 0 {
                return Ok(rest);
            }
        }
        let id = std::str::from_utf8(&self.head[FIXED_HEADER..])
            .map_err(|_| SnapshotFileError::BadHeader("cluster id is not UTF-8".into()))?;
        self.cluster_id = Some(id.to_string());
        self.hasher.update(&self.head);
        Ok(rest)
    }

    /// Feeds the next piece of the file. `on_item` gets every image record
    /// whose frame completes in it, verified. Returns the image bytes this
    /// piece completed (whole frames; not the header, padding or hash).
    pub fn push(
        &mut self,
        piece: &[u8],
        mut on_item: impl FnMut(ImageItem) -> Result<(), StorageError>,
    ) -> Result<Vec<u8>, SnapshotFileError> {
        self.file_bytes += piece.len() as u64;
        let rest = if self.cluster_id.is_none() {
            self.take_header(piece)?
        } else {
            piece
        };
        if rest.is_empty() {
            return Ok(Vec::new());
        }
        // The last 32 bytes seen are held back: they are the hash if the
        // file ends here.
        self.tail.extend_from_slice(rest);
        if self.tail.len() <= HASH_BYTES {
            return Ok(Vec::new());
        }
        let keep_from = self.tail.len() - HASH_BYTES;
        let released: Vec<u8> = self.tail.drain(..keep_from).collect();
        self.hasher.update(&released);
        let mut image = Vec::with_capacity(released.len());
        self.body(&released, &mut on_item, &mut image)?;
        Ok(image)
    }

    /// Splits body bytes into whole image frames (decoded, and appended to
    /// `out`) and, after the end marker, padding.
    fn body(
        &mut self,
        mut rest: &[u8],
        on_item: &mut impl FnMut(ImageItem) -> Result<(), StorageError>,
        out: &mut Vec<u8>,
    ) -> Result<(), SnapshotFileError> {
        let frame_len = |f: &[u8]| u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize;
        while !rest.is_empty() {
            if self.image.is_complete() {
                if let Some(at) = rest.iter().position(|b| *b != 0) {
                    return Err(SnapshotFileError::BadPadding(format!(
                        "byte {} after the image is not zero padding",
                        self.padding + at as u64
                    )));
                }
                self.padding += rest.len() as u64;
                if self.padding >= ALIGN_BYTES {
                    return Err(SnapshotFileError::BadPadding(format!(
                        "{} bytes follow the image, more than the padding's {}",
                        self.padding,
                        ALIGN_BYTES - 1
                    )));
                }
                return Ok(());
            }
            let want = if self.frame.len() < 4 {
                4
            } else {
                4 + frame_len(&self.frame)
            };
            let take = (want - self.frame.len()).min(rest.len());
            self.frame.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.frame.len() < 4 {
                continue;
            }
            let len = frame_len(&self.frame);
            if len > MAX_FRAME_BYTES {
                return Err(SnapshotFileError::Image(StorageError::Corruption {
                    tree: "snapshot image".into(),
                    key: format!("byte {}", self.image_bytes),
                    reason: format!(
                        "frame length {len} exceeds the limit of {MAX_FRAME_BYTES} bytes"
                    ),
                }));
            }
            if self.frame.len() == 4 + len {
                self.image
                    .push(&self.frame, &mut *on_item)
                    .map_err(SnapshotFileError::Image)?;
                self.image_bytes += self.frame.len() as u64;
                out.extend_from_slice(&self.frame);
                self.frame.clear();
            }
        }
        Ok(())
    }

    /// Checks that the whole file was fed: a complete image, the padding,
    /// then a SHA-256 that matches everything before it.
    pub fn finish(&self) -> Result<FileSummary, SnapshotFileError> {
        let truncated = |reason: &str| SnapshotFileError::Truncated {
            bytes: self.file_bytes,
            reason: reason.to_string(),
        };
        let Some(cluster_id) = self.cluster_id.clone() else {
            return Err(truncated("the header is incomplete"));
        };
        if !self.image.is_complete() {
            return Err(truncated("the image ends before its end marker"));
        }
        if self.tail.len() != HASH_BYTES {
            return Err(truncated("the SHA-256 at the end is incomplete"));
        }
        let before_hash = self.head.len() as u64 + self.image_bytes + self.padding;
        if !before_hash.is_multiple_of(ALIGN_BYTES) {
            return Err(truncated(
                "the padding after the image is incomplete (the length is not 32 more than a \
                 multiple of 512)",
            ));
        }
        let (meta, items) = self.image.finish().map_err(SnapshotFileError::Image)?;
        let computed: [u8; HASH_BYTES] = self.hasher.clone().finalize().into();
        if computed[..] != self.tail[..] {
            return Err(SnapshotFileError::HashMismatch {
                stored: hex(&self.tail),
                computed: hex(&computed),
            });
        }
        Ok(FileSummary {
            cluster_id,
            meta,
            items,
            image_bytes: self.image_bytes,
            file_bytes: self.file_bytes,
            sha256: computed,
        })
    }
}

/// Verifies a whole file held in memory; returns its summary and records.
pub fn decode_file(data: &[u8]) -> Result<(FileSummary, Vec<ImageItem>), SnapshotFileError> {
    let mut d = SnapshotFileDecoder::new();
    let mut items = Vec::new();
    d.push(data, |it| {
        items.push(it);
        Ok(())
    })?;
    Ok((d.finish()?, items))
}

/// What the records of a node's MVCC tree say about its state (for
/// `raftkv snapshot status`), gathered record by record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MvccSummary {
    /// The store's revision (1 for an empty store).
    pub revision: i64,
    /// The compact revision (0 if never compacted).
    pub compact_revision: i64,
    /// Live keys.
    pub keys: u64,
    /// Records of any kind.
    pub records: u64,
}

impl Default for MvccSummary {
    fn default() -> Self {
        MvccSummary {
            revision: 1,
            compact_revision: 0,
            keys: 0,
            records: 0,
        }
    }
}

impl MvccSummary {
    /// Takes one record of the image into account.
    pub fn observe(&mut self, item: &ImageItem) -> Result<(), StorageError> {
        self.records += 1;
        let key = item.key.as_slice();
        let meta = |k: &[u8]| -> Result<i64, StorageError> {
            record::decode::<i64>(k, &item.value)
                .map_err(|e| e.into_storage("snapshot image", describe(k)))
        };
        if key == META_REVISION {
            self.revision = meta(key)?;
        } else if key == META_COMPACT {
            self.compact_revision = meta(key)?;
        } else if key.first() == Some(&CURRENT) {
            self.keys += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::image::encode_image;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { index: 17, term: 4 }
    }

    fn image() -> Vec<u8> {
        encode_image(
            meta(),
            [
                (&b"\x01a"[..], &b"1"[..]),
                (b"\x01b", b""),
                (b"\x03c", b"xyz"),
            ],
        )
        .unwrap()
    }

    fn file() -> Vec<u8> {
        encode_file("raftkv-0123", &image()).unwrap()
    }

    fn decode_in_pieces(data: &[u8], step: usize) -> Result<FileSummary, SnapshotFileError> {
        let mut d = SnapshotFileDecoder::new();
        let mut released = Vec::new();
        for piece in data.chunks(step.max(1)) {
            released.extend(d.push(piece, |_| Ok(()))?);
        }
        let s = d.finish()?;
        assert_eq!(released, image(), "released bytes are the image");
        Ok(s)
    }

    #[test]
    fn roundtrip_whole_and_in_pieces() {
        let f = file();
        let (s, items) = decode_file(&f).unwrap();
        assert_eq!(s.cluster_id, "raftkv-0123");
        assert_eq!(s.meta, meta());
        assert_eq!(s.items, 3);
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].key, b"\x03c");
        assert_eq!(s.image_bytes, image().len() as u64);
        assert_eq!(s.file_bytes, f.len() as u64);
        // etcdctl's test for a file that ends with a SHA-256.
        assert_eq!(f.len() % 512, 32);
        assert_eq!(s.sha256[..], f[f.len() - 32..]);
        let expect: [u8; 32] = Sha256::digest(&f[..f.len() - 32]).into();
        assert_eq!(s.sha256, expect, "the trailer is the SHA-256 of the rest");
        for step in [1, 2, 3, 7, 13, 31, 32, 33, 64, f.len()] {
            assert_eq!(decode_in_pieces(&f, step).unwrap(), s, "step {step}");
        }
    }

    #[test]
    fn streamed_encoder_matches_the_whole_one() {
        let img = image();
        let (mut enc, mut out) = SnapshotFileEncoder::new("raftkv-0123").unwrap();
        for piece in img.chunks(5) {
            enc.image(piece);
            out.extend_from_slice(piece);
        }
        out.extend(enc.finish());
        assert_eq!(out, file());
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let f = file();
        for cut in 0..f.len() {
            for step in [1, 9, f.len()] {
                match decode_in_pieces(&f[..cut], step) {
                    Err(SnapshotFileError::Truncated { bytes, .. }) => {
                        assert_eq!(bytes, cut as u64)
                    }
                    // Cut inside the image, the hash holds back image bytes
                    // that the frame checks may refuse first.
                    Err(SnapshotFileError::Image(_))
                    | Err(SnapshotFileError::HashMismatch { .. }) => {}
                    other => panic!("cut at {cut} (step {step}): {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_byte_flip_is_a_typed_error() {
        let f = file();
        let img_start = FIXED_HEADER + "raftkv-0123".len();
        let img_end = img_start + image().len();
        let hash_start = f.len() - 32;
        assert!(hash_start > img_end, "the test file has padding");
        for i in 0..f.len() {
            let mut bad = f.clone();
            bad[i] ^= 0x20;
            let err = decode_in_pieces(&bad, 7).expect_err(&format!("flip at {i} accepted"));
            let in_image = (img_start..img_end).contains(&i);
            match (i, &err) {
                (0..=7, SnapshotFileError::NotASnapshot)
                | (8..=11, SnapshotFileError::UnsupportedVersion { .. }) => {}
                // A length change shifts everything: any typed error.
                (12..=13, _) => {}
                // A flipped id byte passes the frame checks; the hash catches it.
                (i, SnapshotFileError::HashMismatch { .. }) if i < img_start || i >= hash_start => {
                }
                (_, SnapshotFileError::Image(_)) if in_image => {}
                // A frame length made larger waits for bytes that never come.
                (_, SnapshotFileError::Truncated { .. }) if in_image => {}
                (i, SnapshotFileError::BadPadding(_)) if (img_end..hash_start).contains(&i) => {}
                _ => panic!("flip at {i}: unexpected {err:?}"),
            }
        }
    }

    #[test]
    fn appended_bytes_and_foreign_files_are_refused() {
        let mut f = file();
        f.push(0);
        assert!(decode_file(&f).is_err());
        let err = decode_file(b"SQLite format 3\0 and more").unwrap_err();
        assert!(matches!(err, SnapshotFileError::NotASnapshot), "{err:?}");
        let mut v2 = file();
        v2[8] = 2;
        let err = decode_file(&v2).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotFileError::UnsupportedVersion {
                    found: 2,
                    supported: 1
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            decode_file(&[]),
            Err(SnapshotFileError::Truncated { bytes: 0, .. })
        ));
    }

    #[test]
    fn overlong_cluster_ids_are_refused() {
        let long = "c".repeat(MAX_CLUSTER_ID_BYTES + 1);
        assert!(matches!(
            SnapshotFileEncoder::new(&long),
            Err(SnapshotFileError::ClusterIdTooLong(_))
        ));
    }

    #[test]
    fn mvcc_summary_reads_revision_compaction_and_keys() {
        let rev = record::encode(META_REVISION, &42i64).unwrap();
        let comp = record::encode(META_COMPACT, &7i64).unwrap();
        let mut s = MvccSummary::default();
        for (k, v) in [
            (&b"\x01a"[..], &b"x"[..]),
            (b"\x01b", b"y"),
            (b"\x02a", b"z"),
            (META_REVISION, &rev),
            (META_COMPACT, &comp),
        ] {
            s.observe(&ImageItem {
                key: k.to_vec(),
                value: v.to_vec(),
            })
            .unwrap();
        }
        assert_eq!(
            s,
            MvccSummary {
                revision: 42,
                compact_revision: 7,
                keys: 2,
                records: 5
            }
        );
        let bad = ImageItem {
            key: META_REVISION.to_vec(),
            value: comp.clone(),
        };
        assert!(
            s.observe(&bad).is_err(),
            "a record under another key is refused"
        );
    }
}
