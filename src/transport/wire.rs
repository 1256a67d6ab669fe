//! The bodies of the `/raft/*` RPCs, bincode-encoded.
//!
//! Every request is an envelope naming the cluster, the sender and the
//! receiver, so a node can reject traffic from another cluster (or from a
//! peer that was configured with a different address for it) before the
//! core ever sees a message. Replies to Raft messages do not travel in the
//! HTTP response: they come back later as messages of their own, which is
//! what lets a sender pipeline requests.

use serde::{Deserialize, Serialize};

use crate::raft::{Message, NodeId};
use crate::storage::image::ImageTrailer;

/// Wire format version; bumped when an envelope changes incompatibly.
pub const WIRE_VERSION: u32 = 3;

/// Header every envelope starts with.
///
/// Format (bincode 2 standard, see [`crate::storage::record`]): `version`
/// as a varint, then `cluster_id` (varint length and UTF-8 bytes), `from`
/// and `to` as varints, `from_name` and `from_addr` as strings. The
/// version is the first byte(s) of every body, but the receiver checks it
/// only after decoding the whole body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcHeader {
    /// [`WIRE_VERSION`] of the sender.
    pub version: u32,
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// Sender's id.
    pub from: NodeId,
    /// Receiver's id as the sender knows it.
    pub to: NodeId,
    /// Sender's name (`--node-id`), for display.
    pub from_name: String,
    /// Sender's advertised `host:port`.
    pub from_addr: String,
}

/// A batch of Raft messages for one peer (`/raft/vote`, `/raft/append`,
/// `/raft/message`).
///
/// Format: the [`RpcHeader`], then the messages as a varint count and each
/// [`Message`]; the HTTP body is exactly that, with no trailing bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// Who, from which cluster, to whom.
    pub header: RpcHeader,
    /// The messages, in the order the core produced them.
    pub messages: Vec<Message>,
}

/// One chunk of a streamed snapshot image (`/raft/snapshot`). A transfer
/// is a sequence of these, posted one after the other: `seq` 0 at offset 0
/// starts it, each next chunk continues at the byte where the previous one
/// ended, and the last carries the [`ImageTrailer`]. The receiver answers
/// each chunk only once it is staged, which bounds the memory on both
/// sides to about one chunk.
///
/// Format: the fields in declaration order: [`RpcHeader`], [`Message`],
/// `transfer_id`, `seq`, `offset` and `crc32` as varints, `trailer` as an
/// option of an [`ImageTrailer`], then `data` as a varint length and the
/// raw bytes (whole frames of the [image](crate::storage::image)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Who, from which cluster, to whom.
    pub header: RpcHeader,
    /// The leader's InstallSnapshot message: its term, and the snapshot
    /// the image holds (the receiver steps it into its core once the whole
    /// image is staged).
    pub message: Message,
    /// Random id of this transfer; chunks of another transfer do not mix.
    pub transfer_id: u64,
    /// Position of the chunk in the transfer, from 0.
    pub seq: u32,
    /// Byte offset of `data` in the image.
    pub offset: u64,
    /// crc32 of `data`.
    pub crc32: u32,
    /// On the last chunk: length and crc32 of the whole image.
    pub trailer: Option<ImageTrailer>,
    /// The bytes of the image (whole frames), encoded as one byte string
    /// (same layout as a byte sequence, far cheaper for a 1 MiB chunk).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Encodes an RPC body.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding into a Vec cannot fail")
}

/// Why an RPC body did not decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a valid encoding of the expected body.
    #[error(transparent)]
    Undecodable(#[from] bincode::error::DecodeError),
    /// A valid body followed by more bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Decodes an RPC body; trailing bytes are an error.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryPayload, MessageBody};

    #[test]
    fn batch_roundtrip_and_trailing_garbage() {
        let batch = MessageBatch {
            header: RpcHeader {
                version: WIRE_VERSION,
                cluster_id: "c".into(),
                from: 1,
                to: 2,
                from_name: "n1".into(),
                from_addr: "127.0.0.1:1".into(),
            },
            messages: vec![Message {
                from: 1,
                to: 2,
                term: 3,
                body: MessageBody::AppendEntries {
                    prev_log_index: 1,
                    prev_log_term: 1,
                    entries: vec![Entry {
                        index: 2,
                        term: 3,
                        payload: EntryPayload::Command(vec![1, 2, 3]),
                    }],
                    leader_commit: 1,
                    read_ctx: 0,
                },
            }],
        };
        let mut bytes = encode(&batch);
        assert_eq!(decode::<MessageBatch>(&bytes).unwrap(), batch);
        bytes.push(0);
        assert!(decode::<MessageBatch>(&bytes).is_err());
        assert!(decode::<MessageBatch>(&[0xff, 0xff]).is_err());
    }
}

/// Golden bytes of every wire message: each test encodes a fixed value,
/// compares with the checked-in hex and decodes the hex back. A failure
/// means peers running the previous build could no longer talk to this
/// one: change an encoding only on purpose, bump [`WIRE_VERSION`] (and
/// `wire_version_is_pinned`), run `cargo test --lib golden`, paste the new
/// bytes each failure prints, and review the diff. See
/// `src/storage/golden_tests.rs` for the on-disk formats, including the
/// snapshot image carried in [`SnapshotChunk::data`].
#[cfg(test)]
mod golden {
    use super::*;
    use crate::raft::SnapshotMeta;
    use crate::raft::{Entry, EntryPayload, MessageBody};
    use crate::storage::golden_tests::{assert_golden, from_hex};
    use crate::storage::image::ImageTrailer;

    fn header() -> RpcHeader {
        RpcHeader {
            version: WIRE_VERSION,
            cluster_id: "cluster-a".into(),
            from: 1,
            to: 2,
            from_name: "node-1".into(),
            from_addr: "127.0.0.1:8001".into(),
        }
    }

    fn message(body: MessageBody) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 300,
            body,
        }
    }

    /// One body of every variant.
    fn bodies() -> Vec<MessageBody> {
        vec![
            MessageBody::PreVote {
                last_log_index: 300,
                last_log_term: 7,
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::RequestVote {
                last_log_index: 300,
                last_log_term: 7,
                transfer: true,
            },
            MessageBody::RequestVoteResponse { granted: false },
            MessageBody::AppendEntries {
                prev_log_index: 299,
                prev_log_term: 7,
                entries: vec![
                    Entry {
                        index: 300,
                        term: 7,
                        payload: EntryPayload::Noop,
                    },
                    Entry {
                        index: 301,
                        term: 7,
                        payload: EntryPayload::Command(vec![1, 2, 3]),
                    },
                ],
                leader_commit: 298,
                read_ctx: 5,
            },
            MessageBody::AppendEntriesResponse {
                success: false,
                match_index: 250,
                conflict_term: 6,
                conflict_index: 240,
                read_ctx: 5,
            },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 1000,
                    term: 6,
                },
            },
            MessageBody::InstallSnapshotResponse {
                last_index: 1000,
                success: true,
            },
            MessageBody::TimeoutNow,
        ]
    }

    /// Golden bytes of a [`Message`] with `body` (exhaustive: a new variant
    /// does not compile until it is pinned here).
    fn golden_message(body: &MessageBody) -> (&'static str, &'static str) {
        match body {
            MessageBody::PreVote { .. } => ("PreVote", PRE_VOTE),
            MessageBody::PreVoteResponse { .. } => ("PreVoteResponse", PRE_VOTE_RESPONSE),
            MessageBody::RequestVote { .. } => ("RequestVote", REQUEST_VOTE),
            MessageBody::RequestVoteResponse { .. } => {
                ("RequestVoteResponse", REQUEST_VOTE_RESPONSE)
            }
            MessageBody::AppendEntries { .. } => ("AppendEntries", APPEND_ENTRIES),
            MessageBody::AppendEntriesResponse { .. } => {
                ("AppendEntriesResponse", APPEND_ENTRIES_RESPONSE)
            }
            MessageBody::InstallSnapshot { .. } => ("InstallSnapshot", INSTALL_SNAPSHOT),
            MessageBody::InstallSnapshotResponse { .. } => {
                ("InstallSnapshotResponse", INSTALL_SNAPSHOT_RESPONSE)
            }
            MessageBody::TimeoutNow => ("TimeoutNow", TIMEOUT_NOW),
        }
    }

    fn first_chunk() -> SnapshotChunk {
        SnapshotChunk {
            header: header(),
            message: message(bodies()[6].clone()),
            transfer_id: 0x0123_4567_89ab_cdef,
            seq: 0,
            offset: 0,
            crc32: 0xdead_beef,
            trailer: None,
            data: vec![9, 0, 0, 0, 1],
        }
    }

    fn last_chunk() -> SnapshotChunk {
        SnapshotChunk {
            seq: 2,
            offset: 2_000_000,
            trailer: Some(ImageTrailer {
                total_len: 2_000_005,
                crc32: 0x0102_0304,
            }),
            ..first_chunk()
        }
    }

    fn check<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
        what: &str,
        value: &T,
        golden: &str,
    ) {
        assert_golden(what, &encode(value), golden);
        let back: T = decode(&from_hex(golden))
            .unwrap_or_else(|e| panic!("golden {what} does not decode: {e}"));
        assert_eq!(&back, value, "golden {what} decodes to another value");
    }

    // version 03 | 09 "cluster-a" | from 01 | to 02 | 06 "node-1" | 0e "127.0.0.1:8001"
    const RPC_HEADER: &str = "\
    0309636c75737465722d610102066e6f64652d310e3132372e302e302e313a38 \
    303031";
    // from 01 | to 02 | term fb2c01 | variant 00 | fields as varints
    const PRE_VOTE: &str = "\
    0102fb2c0100fb2c0107";
    const PRE_VOTE_RESPONSE: &str = "\
    0102fb2c010101";
    const REQUEST_VOTE: &str = "\
    0102fb2c0102fb2c010701";
    const REQUEST_VOTE_RESPONSE: &str = "\
    0102fb2c010300";
    // ... | variant 04 | prev fb2b01 07 | 02 entries | commit fb2a01 | read_ctx 05
    const APPEND_ENTRIES: &str = "\
    0102fb2c0104fb2b010702fb2c010700fb2d01070103010203fb2a0105";
    const APPEND_ENTRIES_RESPONSE: &str = "\
    0102fb2c010500fa06f005";
    const INSTALL_SNAPSHOT: &str = "\
    0102fb2c0106fbe80306";
    const INSTALL_SNAPSHOT_RESPONSE: &str = "\
    0102fb2c0107fbe80301";
    // ... | variant 08, no fields
    const TIMEOUT_NOW: &str = "\
    0102fb2c0108";
    // RPC_HEADER | 02 messages | APPEND_ENTRIES | TIMEOUT_NOW
    const MESSAGE_BATCH: &str = "\
    0309636c75737465722d610102066e6f64652d310e3132372e302e302e313a38 \
    303031020102fb2c0104fb2b010702fb2c010700fb2d01070103010203fb2a01 \
    050102fb2c0108";
    // RPC_HEADER | INSTALL_SNAPSHOT | transfer fd+u64 | seq 00 | offset 00 | crc32 fc+u32 | trailer 00 None | data 05 bytes
    const SNAPSHOT_CHUNK_FIRST: &str = "\
    0309636c75737465722d610102066e6f64652d310e3132372e302e302e313a38 \
    3030310102fb2c0106fbe80306fdefcdab89674523010000fcefbeadde000509 \
    00000001";
    // ... | trailer 01 Some: total_len fc+u32, crc32 fc+u32 | data
    const SNAPSHOT_CHUNK_LAST: &str = "\
    0309636c75737465722d610102066e6f64652d310e3132372e302e302e313a38 \
    3030310102fb2c0106fbe80306fdefcdab896745230102fc80841e00fcefbead \
    de01fc85841e00fc04030201050900000001";

    #[test]
    fn wire_version_is_pinned() {
        assert_eq!(WIRE_VERSION, 3, "the golden bytes are for wire version 3");
    }

    #[test]
    fn rpc_header() {
        check("RpcHeader", &header(), RPC_HEADER);
    }

    #[test]
    fn message_of_every_body() {
        let bodies = bodies();
        let mut names: Vec<&str> = Vec::new();
        for body in bodies {
            let (name, golden) = golden_message(&body);
            names.push(name);
            check(&format!("Message {name}"), &message(body), golden);
        }
        names.dedup();
        assert_eq!(names.len(), 9, "one body of each variant");
    }

    #[test]
    fn message_batch() {
        let bodies = bodies();
        let batch = MessageBatch {
            header: header(),
            messages: vec![message(bodies[4].clone()), message(bodies[8].clone())],
        };
        check("MessageBatch", &batch, MESSAGE_BATCH);
    }

    #[test]
    fn snapshot_chunks() {
        check("first SnapshotChunk", &first_chunk(), SNAPSHOT_CHUNK_FIRST);
        check("last SnapshotChunk", &last_chunk(), SNAPSHOT_CHUNK_LAST);
    }
}
