//! The snapshot image: a serialised copy of the key-value state as of one
//! applied index.
//!
//! The image is a plain sequence of frames, so it can be produced, sent and
//! consumed in pieces (snapshot streaming cuts it at frame boundaries):
//!
//! ```text
//! frame  = length (u32 LE) ++ record            (record: see super::record)
//! image  = Header{format, index, term} Item{key, value, index}* End{items}
//! ```
//!
//! Each frame is a checksummed record (see [`super::record`]) whose checksum key is
//! the frame's sequence number, so a dropped, repeated or reordered frame is
//! caught as surely as a flipped bit. Items come in strictly increasing key
//! order, and `End` carries the item count, so a truncated image never
//! passes for a complete one.

use serde::{Deserialize, Serialize};

use super::record::{self, RecordError};
use super::StorageError;
use crate::kv::KvItem;
use crate::raft::SnapshotMeta;

/// Version of the image layout, stored in its header.
pub const IMAGE_FORMAT: u32 = 1;

const TREE: &str = "snapshot image";

/// One frame, as decoded.
#[derive(Debug, Deserialize)]
enum Frame {
    Header {
        format: u32,
        index: u64,
        term: u64,
    },
    Item {
        key: String,
        value: String,
        index: u64,
    },
    End {
        items: u64,
    },
}

/// One frame, as encoded from borrowed data (same serde shape as [`Frame`]).
#[derive(Serialize)]
enum FrameRef<'a> {
    Header {
        format: u32,
        index: u64,
        term: u64,
    },
    Item {
        key: &'a str,
        value: &'a str,
        index: u64,
    },
    End {
        items: u64,
    },
}

fn frame_err(seq: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corruption {
        tree: TREE.into(),
        key: format!("frame {seq}"),
        reason: reason.into(),
    }
}

/// Builds an image frame by frame.
pub struct ImageWriter {
    out: Vec<u8>,
    scratch: Vec<u8>,
    seq: u64,
    items: u64,
}

impl ImageWriter {
    /// Starts an image of the state as of `meta`.
    pub fn new(meta: SnapshotMeta) -> Result<Self, StorageError> {
        let mut w = ImageWriter {
            out: Vec::new(),
            scratch: Vec::new(),
            seq: 0,
            items: 0,
        };
        w.push_frame(&FrameRef::Header {
            format: IMAGE_FORMAT,
            index: meta.index,
            term: meta.term,
        })?;
        Ok(w)
    }

    fn push_frame(&mut self, frame: &FrameRef<'_>) -> Result<(), StorageError> {
        record::encode_into(&self.seq.to_be_bytes(), frame, &mut self.scratch)
            .map_err(|e| frame_err(self.seq, e.0))?;
        let len = u32::try_from(self.scratch.len())
            .map_err(|_| frame_err(self.seq, "frame larger than 4 GiB"))?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&self.scratch);
        self.seq += 1;
        Ok(())
    }

    /// Appends one key. Keys must be pushed in strictly increasing order.
    pub fn push(&mut self, key: &str, value: &str, index: u64) -> Result<(), StorageError> {
        self.push_frame(&FrameRef::Item { key, value, index })?;
        self.items += 1;
        Ok(())
    }

    /// Closes the image and returns its bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, StorageError> {
        let items = self.items;
        self.push_frame(&FrameRef::End { items })?;
        Ok(self.out)
    }
}

/// Reads an image frame by frame, verifying every frame.
pub struct ImageReader<'a> {
    data: &'a [u8],
    pos: usize,
    seq: u64,
    items: u64,
    last_key: Option<String>,
    done: bool,
}

impl<'a> ImageReader<'a> {
    /// Opens an image and returns the snapshot it describes.
    pub fn new(data: &'a [u8]) -> Result<(Self, SnapshotMeta), StorageError> {
        let mut r = ImageReader {
            data,
            pos: 0,
            seq: 0,
            items: 0,
            last_key: None,
            done: false,
        };
        match r.next_frame()? {
            Frame::Header {
                format,
                index,
                term,
            } => {
                if format != IMAGE_FORMAT {
                    return Err(frame_err(
                        0,
                        format!("unknown image format {format} (expected {IMAGE_FORMAT})"),
                    ));
                }
                Ok((r, SnapshotMeta { index, term }))
            }
            _ => Err(frame_err(0, "image does not start with a header")),
        }
    }

    fn next_frame(&mut self) -> Result<Frame, StorageError> {
        let seq = self.seq;
        let rest = &self.data[self.pos..];
        if rest.len() < 4 {
            return Err(frame_err(
                seq,
                "image ends before its end marker (truncated)",
            ));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let body = rest.get(4..4 + len).ok_or_else(|| {
            frame_err(seq, format!("frame of {len} bytes runs past the image end"))
        })?;
        let frame: Frame = record::decode(&seq.to_be_bytes(), body)
            .map_err(|e: RecordError| frame_err(seq, e.0))?;
        self.pos += 4 + len;
        self.seq += 1;
        Ok(frame)
    }

    /// The next key, or `None` once the end marker has been read and
    /// verified (item count, nothing after it).
    pub fn next_item(&mut self) -> Result<Option<KvItem>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let seq = self.seq;
        match self.next_frame()? {
            Frame::Item { key, value, index } => {
                if let Some(prev) = &self.last_key {
                    if *prev >= key {
                        return Err(frame_err(seq, "keys are not in strictly increasing order"));
                    }
                }
                self.last_key = Some(key.clone());
                self.items += 1;
                Ok(Some(KvItem { key, value, index }))
            }
            Frame::End { items } => {
                if items != self.items {
                    return Err(frame_err(
                        seq,
                        format!(
                            "end marker counts {items} items, image holds {}",
                            self.items
                        ),
                    ));
                }
                if self.pos != self.data.len() {
                    return Err(frame_err(
                        seq,
                        format!("{} bytes after the end marker", self.data.len() - self.pos),
                    ));
                }
                self.done = true;
                Ok(None)
            }
            Frame::Header { .. } => Err(frame_err(seq, "second header inside the image")),
        }
    }
}

/// Builds a whole image from items sorted by key.
pub fn encode_image<'k>(
    meta: SnapshotMeta,
    items: impl IntoIterator<Item = (&'k str, &'k str, u64)>,
) -> Result<Vec<u8>, StorageError> {
    let mut w = ImageWriter::new(meta)?;
    for (k, v, i) in items {
        w.push(k, v, i)?;
    }
    w.finish()
}

/// Decodes and verifies a whole image.
pub fn decode_image(data: &[u8]) -> Result<(SnapshotMeta, Vec<KvItem>), StorageError> {
    let (mut r, meta) = ImageReader::new(data)?;
    let mut items = Vec::new();
    while let Some(item) = r.next_item()? {
        items.push(item);
    }
    Ok((meta, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { index: 42, term: 3 }
    }

    fn image() -> Vec<u8> {
        encode_image(meta(), [("a", "1", 5), ("b", "", 7), ("c/d", "xyz", 42)]).unwrap()
    }

    #[test]
    fn roundtrip() {
        let (m, items) = decode_image(&image()).unwrap();
        assert_eq!(m, meta());
        let keys: Vec<_> = items
            .iter()
            .map(|i| (i.key.as_str(), i.value.as_str(), i.index))
            .collect();
        assert_eq!(keys, vec![("a", "1", 5), ("b", "", 7), ("c/d", "xyz", 42)]);
    }

    #[test]
    fn empty_image_roundtrips() {
        let img = encode_image(meta(), []).unwrap();
        let (m, items) = decode_image(&img).unwrap();
        assert_eq!(m, meta());
        assert!(items.is_empty());
    }

    #[test]
    fn every_truncation_is_rejected() {
        let img = image();
        for cut in 0..img.len() {
            assert!(
                decode_image(&img[..cut]).is_err(),
                "truncation at {cut} accepted"
            );
        }
    }

    #[test]
    fn every_byte_flip_is_rejected() {
        let img = image();
        for i in 0..img.len() {
            let mut bad = img.clone();
            bad[i] ^= 0x40;
            assert!(decode_image(&bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let mut img = image();
        img.push(0);
        let err = decode_image(&img).unwrap_err().to_string();
        assert!(err.contains("after the end marker"), "{err}");
    }

    #[test]
    fn unsorted_keys_are_rejected() {
        let img = encode_image(meta(), [("b", "1", 1), ("a", "2", 2)]).unwrap();
        let err = decode_image(&img).unwrap_err().to_string();
        assert!(err.contains("increasing"), "{err}");
    }
}
