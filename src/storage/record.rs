//! The checksummed record format every value in the sled store uses.
//!
//! ```text
//! +---------+-------------------+------------------------------+
//! | version | crc32 (LE, 4 B)   | payload: bincode 2, standard |
//! | 1 byte  | over version, key | config, serde                |
//! |         | and payload       |                              |
//! +---------+-------------------+------------------------------+
//! ```
//!
//! The checksum also covers the record's *key* (which is not stored in the
//! record): a record that ends up under the wrong key — a misdirected write,
//! a damaged index page — fails verification just like a flipped bit in the
//! payload. The version byte lets a later format coexist with this one.
//!
//! Decoding verifies the checksum first and then requires the payload to be
//! consumed exactly, so trailing garbage is an error too.
//!
//! Format: byte 0 is [`RECORD_VERSION`]; bytes 1..5 are the crc32 (IEEE,
//! as computed by `crc32fast`) of the version byte, the record's key and
//! the payload, little-endian; the payload follows to the end of the value
//! (no length field: the sled value's own length bounds it).
//!
//! # The bincode encoding the `Format:` comments refer to
//!
//! Payloads here, and the `/raft/*` bodies, use bincode 2 with its
//! `standard()` configuration through serde:
//!
//! * unsigned integers wider than a byte (`u16`, `u32`, `u64`) are
//!   varints: a value below 251 is one byte; otherwise a marker byte
//!   (`0xfb`, `0xfc`, `0xfd`) then the value as a little-endian `u16`,
//!   `u32` or `u64` (300 is `fb 2c 01`);
//! * a `u8` is one raw byte, a `bool` one byte 0 or 1;
//! * strings, byte strings and sequences are a varint length, then the
//!   bytes (UTF-8 for strings) or the elements;
//! * `Option` is one byte 0 (`None`) or 1 followed by the value;
//! * an enum is its variant's index (from 0, in declaration order) as a
//!   varint, then the variant's fields;
//! * a struct is its fields in declaration order, with no names, tags or
//!   lengths — so reordering, adding or removing a field changes the
//!   format.
//!
//! The golden tests (`src/storage/golden_tests.rs`, and the `golden` module
//! of `src/transport/wire.rs`) pin the bytes of every stored and sent type.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte of the current record format.
pub const RECORD_VERSION: u8 = 1;

/// Bytes before the payload: version + crc32.
pub const HEADER_LEN: usize = 5;

/// Why a record did not verify, decode or encode. The caller adds the tree
/// and key (see [`RecordError::into_storage`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header.
    #[error("record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort {
        /// The record's length.
        len: usize,
    },
    /// A version byte this build does not know.
    #[error("unknown record version {found} (expected {RECORD_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The stored crc32.
        stored: u32,
        /// The crc32 of what is there.
        computed: u32,
    },
    /// The checksum matched but the payload is not a valid encoding.
    #[error("checksum ok but payload does not decode: {detail}")]
    Undecodable {
        /// bincode's message.
        detail: String,
    },
    /// A valid payload followed by more bytes.
    #[error("payload has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The value could not be encoded.
    #[error("cannot encode record: {detail}")]
    Unencodable {
        /// bincode's message.
        detail: String,
    },
}

impl RecordError {
    /// Turns the error into [`super::StorageError::Corruption`] naming the
    /// tree and the (readable) key.
    pub fn into_storage(self, tree: &str, key: impl Into<String>) -> super::StorageError {
        super::StorageError::Corruption {
            tree: tree.to_string(),
            key: key.into(),
            reason: self.to_string(),
        }
    }
}

fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[RECORD_VERSION]);
    h.update(key);
    h.update(payload);
    h.finalize()
}

/// Encodes `value` as a record stored under `key`, replacing the contents of
/// `out` (reusing its allocation).
pub fn encode_into<T: Serialize + ?Sized>(
    key: &[u8],
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    out.clear();
    out.extend_from_slice(&[RECORD_VERSION, 0, 0, 0, 0]);
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard()).map_err(
        |e| RecordError::Unencodable {
            detail: e.to_string(),
        },
    )?;
    let crc = checksum(key, &out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `value` as a record stored under `key`.
pub fn encode<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    encode_into(key, value, &mut out)?;
    Ok(out)
}

/// Verifies the version and checksum of a record stored under `key` and
/// returns its payload.
pub fn verify<'a>(key: &[u8], bytes: &'a [u8]) -> Result<&'a [u8], RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::TooShort { len: bytes.len() });
    }
    if bytes[0] != RECORD_VERSION {
        return Err(RecordError::UnknownVersion { found: bytes[0] });
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    let actual = checksum(key, payload);
    if stored != actual {
        return Err(RecordError::Checksum {
            stored,
            computed: actual,
        });
    }
    Ok(payload)
}

/// Decodes a bincode payload that must be consumed exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RecordError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| RecordError::Undecodable {
            detail: e.to_string(),
        })?;
    if used != payload.len() {
        return Err(RecordError::TrailingBytes(payload.len() - used));
    }
    Ok(value)
}

/// Verifies and decodes a record stored under `key`.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, RecordError> {
    decode_payload(verify(key, bytes)?)
}

/// Verifies a record and decodes only a leading `u64` of its payload (the
/// first field of a struct encoded with bincode), e.g. a key's mod index
/// without copying its value out.
pub fn decode_leading_u64(key: &[u8], bytes: &[u8]) -> Result<u64, RecordError> {
    let payload = verify(key, bytes)?;
    let (v, _): (u64, usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard()).map_err(|e| {
            RecordError::Undecodable {
                detail: e.to_string(),
            }
        })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        index: u64,
        text: String,
    }

    fn sample() -> Sample {
        Sample {
            index: 300,
            text: "hello".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let bytes = encode(b"k", &sample()).unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<Sample>(b"k", &bytes).unwrap(), sample());
        assert_eq!(decode_leading_u64(b"k", &bytes).unwrap(), 300);
    }

    #[test]
    fn encode_into_reuses_and_replaces_buffer() {
        let mut buf = vec![9u8; 100];
        encode_into(b"k", &sample(), &mut buf).unwrap();
        assert_eq!(buf, encode(b"k", &sample()).unwrap());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(b"key", &sample()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode::<Sample>(b"key", &damaged).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn record_under_another_key_is_rejected() {
        let bytes = encode(b"a", &sample()).unwrap();
        let err = decode::<Sample>(b"b", &bytes).unwrap_err();
        assert!(matches!(err, RecordError::Checksum { .. }), "{err}");
    }

    #[test]
    fn truncated_and_empty_records_are_rejected() {
        let bytes = encode(b"k", &sample()).unwrap();
        assert!(decode::<Sample>(b"k", &[]).is_err());
        assert!(decode::<Sample>(b"k", &bytes[..3]).is_err());
        assert!(decode::<Sample>(b"k", &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn trailing_bytes_with_valid_checksum_are_rejected() {
        // A record whose checksum is right but whose payload is longer than
        // the value: only possible through a bug, still must not be accepted.
        let mut payload =
            bincode::serde::encode_to_vec(sample(), bincode::config::standard()).unwrap();
        payload.push(0);
        let mut bytes = vec![RECORD_VERSION];
        bytes.extend_from_slice(&checksum(b"k", &payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let err = decode::<Sample>(b"k", &bytes).unwrap_err();
        assert!(matches!(err, RecordError::TrailingBytes(_)), "{err}");
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bytes = encode(b"k", &sample()).unwrap();
        bytes[0] = 2;
        let err = decode::<Sample>(b"k", &bytes).unwrap_err();
        assert!(
            matches!(err, RecordError::UnknownVersion { found: 2 }),
            "{err}"
        );
    }

    #[test]
    fn error_names_tree_and_key() {
        let err = RecordError::TrailingBytes(3).into_storage("log", "index 7");
        let msg = err.to_string();
        assert!(msg.contains("`log`") && msg.contains("index 7") && msg.contains("3 trailing"));
    }
}
