//! The snapshot image: a serialised copy of the key-value state as of one
//! applied index.
//!
//! The image is a plain sequence of frames, so it can be produced, sent and
//! consumed in pieces (snapshot streaming cuts it at frame boundaries):
//!
//! ```text
//! frame  = length (u32 LE) ++ record            (record: see super::record)
//! image  = Header{format, index, term} Item{key, value}* End{items}
//! ```
//!
//! Each frame is a checksummed record (see [`super::record`]) whose checksum key is
//! the frame's sequence number, so a dropped, repeated or reordered frame is
//! caught as surely as a flipped bit. An item is an opaque record of the
//! store that wrote the image (the sled store: a raw record of its MVCC
//! tree; the in-memory store: its own encoding), so the image carries the
//! revision, the history and the compaction state with the data. Items come
//! in strictly increasing key order, and `End` carries the item count, so a truncated image never
//! passes for a complete one.
//!
//! For streaming, [`ImageWriter::take_output`] hands out the bytes encoded so
//! far (a chunk), and [`ImageDecoder`] takes bytes in pieces of any size and
//! yields items as soon as their frame is complete; an [`ImageTrailer`]
//! (total length and crc32 of the whole image) closes a transfer.

use serde::{Deserialize, Serialize};

use super::record::{self, RecordError};
use super::StorageError;
use crate::raft::SnapshotMeta;

/// Version of the image layout, stored in its header. 2: items are opaque
/// byte records (1 held single-key `key, value, index` items).
pub const IMAGE_FORMAT: u32 = 2;

/// One item of an image: an opaque record of the store that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageItem {
    /// The record's key (items come in strictly increasing key order).
    pub key: Vec<u8>,
    /// The record's bytes.
    pub value: Vec<u8>,
}

/// Largest frame a decoder accepts: far above the largest item (1 KiB key,
/// 1 MiB value), low enough that a damaged length field cannot make a
/// receiver buffer gigabytes before noticing.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// What closes a streamed image: its total length and the crc32 of all its
/// bytes, checked by the receiver on top of every frame's own checksum.
///
/// Format: `total_len`, then `crc32`, as varints (sent inside the last
/// `SnapshotChunk`, never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTrailer {
    /// Length of the whole image in bytes.
    pub total_len: u64,
    /// crc32 of the whole image.
    pub crc32: u32,
}

const TREE: &str = "snapshot image";

/// One frame, as decoded.
///
/// Format: a frame is a little-endian `u32` length, then a checksummed
/// record ([`super::record`]) whose key is the frame's sequence number as
/// 8 big-endian bytes (0 for the header) and whose payload is this enum:
/// the variant index as a varint (0 `Header`, 1 `Item`, 2 `End`), then the
/// fields in order — integers as varints, byte strings as a varint length
/// and the bytes. `Header.format` is [`IMAGE_FORMAT`].
#[derive(Debug, Deserialize)]
enum Frame {
    Header {
        format: u32,
        index: u64,
        term: u64,
    },
    Item {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    End {
        items: u64,
    },
}

/// One frame, as encoded from borrowed data (same serde shape, hence the
/// same format, as [`Frame`]).
#[derive(Serialize)]
enum FrameRef<'a> {
    Header {
        format: u32,
        index: u64,
        term: u64,
    },
    Item {
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        #[serde(with = "serde_bytes")]
        value: &'a [u8],
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
            .map_err(|e| frame_err(self.seq, e.to_string()))?;
        let len = u32::try_from(self.scratch.len())
            .map_err(|_| frame_err(self.seq, "frame larger than 4 GiB"))?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&self.scratch);
        self.seq += 1;
        Ok(())
    }

    /// Appends one item. Keys must be pushed in strictly increasing order.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.push_frame(&FrameRef::Item { key, value })?;
        self.items += 1;
        Ok(())
    }

    /// Bytes encoded and not yet taken.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Items pushed so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Takes the bytes encoded so far (always whole frames), for streaming
    /// the image in chunks.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Closes the image and returns its bytes (those not taken yet).
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
    last_key: Option<Vec<u8>>,
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
            .map_err(|e: RecordError| frame_err(seq, e.to_string()))?;
        self.pos += 4 + len;
        self.seq += 1;
        Ok(frame)
    }

    /// The next key, or `None` once the end marker has been read and
    /// verified (item count, nothing after it).
    pub fn next_item(&mut self) -> Result<Option<ImageItem>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let seq = self.seq;
        match self.next_frame()? {
            Frame::Item { key, value } => {
                if let Some(prev) = &self.last_key {
                    if *prev >= key {
                        return Err(frame_err(seq, "keys are not in strictly increasing order"));
                    }
                }
                self.last_key = Some(key.clone());
                self.items += 1;
                Ok(Some(ImageItem { key, value }))
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

/// Decodes an image that arrives in pieces of any size (chunks need not
/// end on frame boundaries), verifying every frame, the key order, the end
/// marker's item count and that nothing follows it. Memory use is bounded
/// by one frame.
#[derive(Debug, Default)]
pub struct ImageDecoder {
    /// Bytes of an incomplete frame carried over from the previous piece.
    partial: Vec<u8>,
    seq: u64,
    items: u64,
    meta: Option<SnapshotMeta>,
    last_key: Option<Vec<u8>>,
    done: bool,
    bytes: u64,
}

impl ImageDecoder {
    /// A decoder expecting the image's header first.
    pub fn new() -> Self {
        ImageDecoder::default()
    }

    /// The snapshot the image describes, once its header was decoded.
    pub fn meta(&self) -> Option<SnapshotMeta> {
        self.meta
    }

    /// Items decoded so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True once the end marker was decoded and verified.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Feeds the next piece of the image; `on_item` gets every item whose
    /// frame completes in it, in order.
    pub fn push(
        &mut self,
        piece: &[u8],
        mut on_item: impl FnMut(ImageItem) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.bytes += piece.len() as u64;
        if self.done {
            if piece.is_empty() {
                return Ok(());
            }
            return Err(frame_err(
                self.seq,
                format!("{} bytes after the end marker", piece.len()),
            ));
        }
        let mut data: &[u8] = piece;
        let carried;
        if !self.partial.is_empty() {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(piece);
            carried = joined;
            data = &carried;
        }
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            if self.done {
                return Err(frame_err(
                    self.seq,
                    format!("{} bytes after the end marker", rest.len()),
                ));
            }
            if rest.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(frame_err(
                    self.seq,
                    format!("frame length {len} exceeds the limit of {MAX_FRAME_BYTES} bytes"),
                ));
            }
            let Some(body) = rest.get(4..4 + len) else {
                break;
            };
            let seq = self.seq;
            let frame: Frame = record::decode(&seq.to_be_bytes(), body)
                .map_err(|e: RecordError| frame_err(seq, e.to_string()))?;
            self.seq += 1;
            pos += 4 + len;
            match (frame, self.meta.is_some()) {
                (
                    Frame::Header {
                        format,
                        index,
                        term,
                    },
                    false,
                ) => {
                    if format != IMAGE_FORMAT {
                        return Err(frame_err(
                            seq,
                            format!("unknown image format {format} (expected {IMAGE_FORMAT})"),
                        ));
                    }
                    self.meta = Some(SnapshotMeta { index, term });
                }
                (_, false) => return Err(frame_err(seq, "image does not start with a header")),
                (Frame::Header { .. }, true) => {
                    return Err(frame_err(seq, "second header inside the image"))
                }
                (Frame::Item { key, value }, true) => {
                    if let Some(prev) = &self.last_key {
                        if *prev >= key {
                            return Err(frame_err(
                                seq,
                                "keys are not in strictly increasing order",
                            ));
                        }
                    }
                    self.last_key = Some(key.clone());
                    self.items += 1;
                    on_item(ImageItem { key, value })?;
                }
                (Frame::End { items }, true) => {
                    if items != self.items {
                        return Err(frame_err(
                            seq,
                            format!(
                                "end marker counts {items} items, image holds {}",
                                self.items
                            ),
                        ));
                    }
                    self.done = true;
                }
            }
        }
        if pos < data.len() {
            if self.done {
                return Err(frame_err(
                    self.seq,
                    format!("{} bytes after the end marker", data.len() - pos),
                ));
            }
            self.partial = data[pos..].to_vec();
        }
        Ok(())
    }

    /// Checks that the whole image was fed: returns its snapshot and item
    /// count.
    pub fn finish(&self) -> Result<(SnapshotMeta, u64), StorageError> {
        match self.meta {
            Some(meta) if self.done => Ok((meta, self.items)),
            _ => Err(frame_err(
                self.seq,
                "image ends before its end marker (truncated)",
            )),
        }
    }
}

/// One piece of a streamed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageChunk {
    /// Position in the stream, from 0.
    pub seq: u32,
    /// Byte offset of `data` in the image.
    pub offset: u64,
    /// Whole frames of the image.
    pub data: Vec<u8>,
    /// crc32 of `data`.
    pub crc32: u32,
    /// On the last chunk: length and crc32 of the whole image.
    pub trailer: Option<ImageTrailer>,
}

/// An image built from a stream of items (sorted by key), cut into
/// checksummed chunks of about `chunk_bytes`; the last chunk carries the
/// [`ImageTrailer`]. Memory use is bounded by one chunk. Every store's
/// snapshot source streams its image through this, so the sled store and
/// the in-memory one produce the same bytes for the same state.
pub struct ImageChunks<I> {
    items: I,
    meta: SnapshotMeta,
    writer: Option<ImageWriter>,
    chunk_bytes: usize,
    offset: u64,
    seq: u32,
    crc: crc32fast::Hasher,
    done: bool,
}

impl<I: Iterator<Item = Result<ImageItem, StorageError>>> ImageChunks<I> {
    /// The image of `items` (the state at `meta`), in chunks.
    pub fn new(meta: SnapshotMeta, items: I, chunk_bytes: usize) -> Self {
        ImageChunks {
            items,
            meta,
            writer: None,
            chunk_bytes: chunk_bytes.max(1),
            offset: 0,
            seq: 0,
            crc: crc32fast::Hasher::new(),
            done: false,
        }
    }

    /// The snapshot the image describes.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn cut(&mut self, data: Vec<u8>, last: bool) -> ImageChunk {
        self.crc.update(&data);
        let chunk = ImageChunk {
            seq: self.seq,
            offset: self.offset,
            crc32: crc32fast::hash(&data),
            trailer: None,
            data,
        };
        self.offset += chunk.data.len() as u64;
        self.seq += 1;
        if last {
            ImageChunk {
                trailer: Some(ImageTrailer {
                    total_len: self.offset,
                    crc32: self.crc.clone().finalize(),
                }),
                ..chunk
            }
        } else {
            chunk
        }
    }

    fn step(&mut self) -> Result<(ImageChunk, bool), StorageError> {
        if self.writer.is_none() {
            self.writer = Some(ImageWriter::new(self.meta)?);
        }
        loop {
            let w = self.writer.as_mut().expect("writer was just created");
            if w.output_len() >= self.chunk_bytes {
                let data = w.take_output();
                return Ok((self.cut(data, false), false));
            }
            match self.items.next() {
                Some(Ok(it)) => w.push(&it.key, &it.value)?,
                Some(Err(e)) => return Err(e),
                None => {
                    let tail = self.writer.take().expect("writer exists").finish()?;
                    return Ok((self.cut(tail, true), true));
                }
            }
        }
    }
}

impl<I: Iterator<Item = Result<ImageItem, StorageError>>> Iterator for ImageChunks<I> {
    type Item = Result<ImageChunk, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok((chunk, last)) => {
                self.done = last;
                Some(Ok(chunk))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Builds a whole image from items sorted by key.
pub fn encode_image<'k>(
    meta: SnapshotMeta,
    items: impl IntoIterator<Item = (&'k [u8], &'k [u8])>,
) -> Result<Vec<u8>, StorageError> {
    let mut w = ImageWriter::new(meta)?;
    for (k, v) in items {
        w.push(k, v)?;
    }
    w.finish()
}

/// Decodes and verifies a whole image.
pub fn decode_image(data: &[u8]) -> Result<(SnapshotMeta, Vec<ImageItem>), StorageError> {
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
        encode_image(
            meta(),
            [(&b"a"[..], &b"1"[..]), (b"b", b""), (b"c/d", b"xyz\xff")],
        )
        .unwrap()
    }

    #[test]
    fn roundtrip() {
        let (m, items) = decode_image(&image()).unwrap();
        assert_eq!(m, meta());
        let keys: Vec<_> = items
            .iter()
            .map(|i| (i.key.as_slice(), i.value.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![(&b"a"[..], &b"1"[..]), (b"b", b""), (b"c/d", b"xyz\xff")]
        );
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
        let img = encode_image(meta(), [(&b"b"[..], &b"1"[..]), (b"a", b"2")]).unwrap();
        let err = decode_image(&img).unwrap_err().to_string();
        assert!(err.contains("increasing"), "{err}");
    }

    /// Feeds `img` to a decoder in pieces of `step` bytes.
    fn decode_in_pieces(
        img: &[u8],
        step: usize,
    ) -> Result<(SnapshotMeta, Vec<ImageItem>), StorageError> {
        let mut d = ImageDecoder::new();
        let mut items = Vec::new();
        for piece in img.chunks(step.max(1)) {
            d.push(piece, |it| {
                items.push(it);
                Ok(())
            })?;
        }
        let (meta, n) = d.finish()?;
        assert_eq!(n, items.len() as u64);
        Ok((meta, items))
    }

    #[test]
    fn decoder_accepts_any_piece_size() {
        let img = image();
        let whole = decode_image(&img).unwrap();
        for step in [1, 2, 3, 5, 7, 16, 64, img.len()] {
            let (m, items) = decode_in_pieces(&img, step).unwrap();
            assert_eq!(m, whole.0);
            assert_eq!(items, whole.1, "step {step}");
        }
    }

    #[test]
    fn decoder_rejects_truncation_flips_and_trailing_bytes() {
        let img = image();
        for cut in 0..img.len() {
            assert!(
                decode_in_pieces(&img[..cut], 3).is_err(),
                "truncation at {cut} accepted"
            );
        }
        for i in 0..img.len() {
            let mut bad = img.clone();
            bad[i] ^= 0x10;
            assert!(decode_in_pieces(&bad, 5).is_err(), "flip at {i} accepted");
        }
        let mut long = img.clone();
        long.push(7);
        let err = decode_in_pieces(&long, 4).unwrap_err().to_string();
        assert!(err.contains("after the end marker"), "{err}");
    }

    #[test]
    fn decoder_refuses_a_huge_frame_length_at_once() {
        let mut d = ImageDecoder::new();
        let err = d.push(&u32::MAX.to_le_bytes(), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn taken_output_concatenates_to_the_whole_image() {
        let mut w = ImageWriter::new(meta()).unwrap();
        let mut streamed = w.take_output();
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b""), (b"c/d", b"xyz\xff")] {
            w.push(k, v).unwrap();
            streamed.extend(w.take_output());
        }
        assert_eq!(w.items(), 3);
        streamed.extend(w.finish().unwrap());
        assert_eq!(streamed, image());
    }
}
