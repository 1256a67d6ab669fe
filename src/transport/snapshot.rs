//! InstallSnapshot over HTTP: streaming a consistent image to a follower in
//! checksummed chunks, and receiving one into the staging tree.
//!
//! ```text
//!  leader                                   follower
//!  Raft loop: begin_snapshot() (instant)
//!  blocking thread: image chunks ──bounded──▶ sender task
//!      channel (4 × ~1 MiB)                  POST /raft/snapshot {chunk k}
//!                                            ─────────────────────────────▶ verify crc32,
//!                                                                           stage (blocking
//!                                            ◀──────────── 204 ──────────── thread), answer
//!  ... next chunk only after the answer ...
//!  last chunk + trailer (length, crc32)  ──▶ verify whole image, make the
//!                                            staged tree durable, step
//!                                            InstallSnapshot into the core;
//!                                            the loop switches trees when
//!                                            the core hands out the snapshot
//! ```
//!
//! Memory stays bounded on both sides: the generator is at most a few
//! chunks ahead of the network, and the receiver holds one chunk at a time
//! (plus one incomplete frame).

use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::node::{error_chain, Inbound, Inbox, IncomingSnapshot, ReceiveProgress};
use crate::raft::{Message, MessageBody, NodeId, SnapshotMeta};
use crate::storage::sled_store::IMAGE_CHUNK_BYTES;
use crate::storage::{
    ImageChunk, SnapshotSource, SnapshotStore, SnapshotWriter, StagedSnapshot, StorageError,
};

use super::wire::{self, RpcHeader, SnapshotChunk};
use super::PeerState;

/// Chunks the image generator may run ahead of the network.
const QUEUED_CHUNKS: usize = 4;

/// A receiving transfer that saw no chunk for this long may be replaced by
/// any new transfer (its leader is probably gone).
const STALE_TRANSFER: Duration = Duration::from_secs(60);

/// Where a snapshot goes and how.
pub(crate) struct Outgoing {
    /// Display name of the receiver.
    pub peer_name: String,
    /// `http://host:port` of the receiver.
    pub base_url: String,
    /// Envelope of every chunk.
    pub header: RpcHeader,
    /// InstallSnapshot message carrying the session's meta.
    pub message: Message,
    /// Deadline of one chunk's POST (the first one may wait for the
    /// receiver to clear its staging tree).
    pub chunk_timeout: Duration,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    /// The image could not be read.
    #[error("cannot read the snapshot image: {0}")]
    Image(#[source] StorageError),
    /// A chunk's request failed.
    #[error("{}", error_chain(.0))]
    Http(#[from] reqwest::Error),
    /// The receiver refused a chunk.
    #[error("chunk {seq} rejected with {status}: {body}")]
    Rejected {
        seq: u32,
        status: reqwest::StatusCode,
        body: String,
    },
    /// The image generator stopped before the last chunk.
    #[error("the snapshot image ended without its trailer")]
    Truncated,
}

/// Streams `source`'s image to a peer; returns whether every chunk was
/// accepted. The image is generated on a blocking thread.
pub(crate) async fn send_snapshot<Src: SnapshotSource>(
    client: reqwest::Client,
    out: Outgoing,
    source: Src,
) -> bool {
    let meta = source.meta();
    let transfer_id: u64 = rand::random();
    let started = Instant::now();
    info!(
        peer = %out.peer_name,
        index = meta.index,
        term = meta.term,
        "sending snapshot"
    );
    let (tx, mut rx) = mpsc::channel::<Result<ImageChunk, StorageError>>(QUEUED_CHUNKS);
    let producer = tokio::task::spawn_blocking(move || {
        for chunk in source.chunks(IMAGE_CHUNK_BYTES) {
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                break;
            }
        }
    });
    let url = format!("{}/raft/snapshot", out.base_url);
    let result: Result<(u64, u32), TransferError> = async {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(TransferError::Image)?;
            let last = chunk.trailer.is_some();
            let (seq, end) = (chunk.seq, chunk.offset + chunk.data.len() as u64);
            let body = wire::encode(&SnapshotChunk {
                header: out.header.clone(),
                message: out.message.clone(),
                transfer_id,
                seq: chunk.seq,
                offset: chunk.offset,
                crc32: chunk.crc32,
                trailer: chunk.trailer,
                data: chunk.data,
            });
            let resp = client
                .post(&url)
                .header("content-type", "application/octet-stream")
                .timeout(out.chunk_timeout)
                .body(body)
                .send()
                .await?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(TransferError::Rejected { seq, status, body });
            }
            debug!(peer = %out.peer_name, seq, bytes = end, "snapshot chunk delivered");
            if last {
                return Ok((end, seq + 1));
            }
        }
        Err(TransferError::Truncated)
    }
    .await;
    // Stops the generator at its next chunk if we gave up early.
    drop(rx);
    let _ = producer.await;
    match result {
        Ok((bytes, chunks)) => {
            info!(
                peer = %out.peer_name,
                index = meta.index,
                bytes,
                chunks,
                ms = started.elapsed().as_millis() as u64,
                "snapshot delivered"
            );
            true
        }
        Err(why) => {
            warn!(peer = %out.peer_name, index = meta.index, error = %why, "snapshot transfer failed");
            false
        }
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkReject {
    /// Damaged or malformed chunk or image (400).
    Invalid(String),
    /// Not the chunk this node expects, or superseded (409).
    Conflict(String),
    /// Cannot take a snapshot now (503; the leader retries).
    Busy(String),
}

struct Receiving<W> {
    transfer_id: u64,
    from: NodeId,
    term: u64,
    meta: SnapshotMeta,
    next_offset: u64,
    next_seq: u32,
    /// Out while a chunk is being written on a blocking thread; `None`
    /// afterwards means that write was abandoned (its request was dropped).
    writer: Option<W>,
    started: Instant,
    last_activity: Instant,
}

/// The follower side: at most one transfer at a time, staged by the
/// store ([`SnapshotStore::stage_snapshot`]: for sled, into the inactive
/// key-value tree).
pub(crate) struct SnapshotReceiver<S: SnapshotStore> {
    store: Option<S>,
    state: tokio::sync::Mutex<Option<Receiving<S::Writer>>>,
    peers: Arc<PeerState>,
}

fn blocking_failed(e: tokio::task::JoinError) -> ChunkReject {
    ChunkReject::Busy(format!("staging task failed: {e}"))
}

impl<S> SnapshotReceiver<S>
where
    S: SnapshotStore + Clone + Send + Sync + 'static,
{
    /// A receiver staging into `store` (`None`: refuses every snapshot),
    /// reporting its progress to `peers`.
    pub(crate) fn new(store: Option<S>, peers: Arc<PeerState>) -> Self {
        SnapshotReceiver {
            store,
            state: tokio::sync::Mutex::new(None),
            peers,
        }
    }

    fn set_progress(&self, p: Option<ReceiveProgress>) {
        self.peers.set_receiving(p);
    }

    /// Handles one chunk (envelope already checked); after the last one,
    /// hands the staged image and its InstallSnapshot message to the loop.
    pub(crate) async fn handle(
        &self,
        chunk: SnapshotChunk,
        from_name: &str,
        inbox: &Inbox<S::Staged>,
    ) -> Result<(), ChunkReject> {
        let MessageBody::InstallSnapshot { meta } = chunk.message.body else {
            return Err(ChunkReject::Invalid(
                "a snapshot chunk must carry an InstallSnapshot message".into(),
            ));
        };
        if crc32fast::hash(&chunk.data) != chunk.crc32 {
            return Err(ChunkReject::Invalid(format!(
                "snapshot chunk {} (offset {}) failed its crc32 check",
                chunk.seq, chunk.offset
            )));
        }
        let from = chunk.message.from;
        let term = chunk.message.term;
        let mut slot = self.state.lock().await;
        if chunk.seq == 0 && chunk.offset == 0 {
            if let Some(cur) = slot.as_ref() {
                let stale = cur.last_activity.elapsed() > STALE_TRANSFER;
                if cur.transfer_id != chunk.transfer_id && cur.term > term && !stale {
                    return Err(ChunkReject::Conflict(format!(
                        "a snapshot from term {} is being received; this one is from term {term}",
                        cur.term
                    )));
                }
            }
            // Superseded (a retry, or a newer leader): its staged data is
            // discarded.
            *slot = None;
            self.set_progress(None);
            let Some(store) = self.store.clone() else {
                return Err(ChunkReject::Busy("this node cannot stage snapshots".into()));
            };
            let writer = tokio::task::spawn_blocking(move || store.stage_snapshot())
                .await
                .map_err(blocking_failed)?
                .map_err(|e| ChunkReject::Busy(format!("cannot stage the snapshot: {e}")))?;
            info!(
                from = %from_name,
                index = meta.index,
                term = meta.term,
                "receiving snapshot"
            );
            let now = Instant::now();
            *slot = Some(Receiving {
                transfer_id: chunk.transfer_id,
                from,
                term,
                meta,
                next_offset: 0,
                next_seq: 0,
                writer: Some(writer),
                started: now,
                last_activity: now,
            });
        }
        let Some(cur) = slot.as_mut() else {
            return Err(ChunkReject::Conflict(format!(
                "snapshot chunk {} of a transfer this node is not receiving (restart it)",
                chunk.seq
            )));
        };
        if cur.transfer_id != chunk.transfer_id {
            return Err(ChunkReject::Conflict(
                "snapshot chunk of another transfer than the one being received".into(),
            ));
        }
        if cur.next_offset != chunk.offset || cur.next_seq != chunk.seq || cur.meta != meta {
            return Err(ChunkReject::Conflict(format!(
                "expected snapshot chunk {} at offset {}, got chunk {} at offset {}",
                cur.next_seq, cur.next_offset, chunk.seq, chunk.offset
            )));
        }
        let Some(mut writer) = cur.writer.take() else {
            *slot = None;
            self.set_progress(None);
            return Err(ChunkReject::Conflict(
                "the transfer was interrupted; restart it".into(),
            ));
        };
        let len = chunk.data.len() as u64;
        let data = chunk.data;
        let (writer, written) = tokio::task::spawn_blocking(move || {
            let r = writer.write(&data);
            (writer, r)
        })
        .await
        .map_err(blocking_failed)?;
        if let Err(e) = written {
            *slot = None;
            self.set_progress(None);
            return Err(ChunkReject::Invalid(format!(
                "snapshot chunk {} could not be staged: {e}",
                chunk.seq
            )));
        }
        cur.writer = Some(writer);
        cur.next_offset += len;
        cur.next_seq += 1;
        cur.last_activity = Instant::now();
        self.set_progress(Some(ReceiveProgress {
            from: cur.from,
            index: cur.meta.index,
            term: cur.meta.term,
            bytes: cur.next_offset,
            chunks: cur.next_seq,
        }));
        let Some(trailer) = chunk.trailer else {
            return Ok(());
        };
        let done = slot.take().expect("a transfer is being received");
        self.set_progress(None);
        let writer = done.writer.expect("the writer was just put back");
        let staged = tokio::task::spawn_blocking(move || writer.finish(&trailer))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| ChunkReject::Invalid(format!("snapshot image rejected: {e}")))?;
        if staged.meta() != meta {
            return Err(ChunkReject::Invalid(format!(
                "the image holds index {} term {}, the message announced index {} term {}",
                staged.meta().index,
                staged.meta().term,
                meta.index,
                meta.term
            )));
        }
        info!(
            from = %from_name,
            index = meta.index,
            term = meta.term,
            bytes = staged.bytes(),
            keys = staged.items(),
            ms = done.started.elapsed().as_millis() as u64,
            "snapshot received and staged"
        );
        let message = chunk.message;
        inbox
            .deliver(Inbound::Snapshot(Box::new(IncomingSnapshot {
                message,
                staged,
            })))
            .await
            .map_err(|_| ChunkReject::Busy("the node is shutting down".into()))
    }
}
