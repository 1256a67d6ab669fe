//! The sending side: Raft messages to other nodes over HTTP with bincode
//! bodies, and [`HttpTransport`], the loop's [`PeerTransport`].
//!
//! The Raft loop never waits on the network. It drops each peer's messages
//! into that peer's queue and moves on; one sender task per peer takes
//! *everything* queued, posts it as one batch over a kept-alive connection,
//! and goes back for more. The receiver only enqueues the batch before
//! answering `204`, and the Raft replies come back later as messages of
//! their own, so replication is pipelined: the next batch leaves as soon as
//! the previous one was handed over, never waiting for the follower's disk.
//!
//! A peer that cannot be reached is reported to the core
//! (`report_unreachable`) and retried with exponential backoff; a queue
//! that outgrows its bound drops new messages (Raft tolerates loss) rather
//! than letting a dead peer eat memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{debug, info};

use crate::node::{error_chain, Inbound, Inbox, Membership, PeerTransport};
use crate::raft::{Message, MessageBody, NodeId};
use crate::storage::SnapshotSource;

use super::snapshot::{send_snapshot, Outgoing};
use super::wire::{self, MessageBatch, RpcHeader, WIRE_VERSION};
use super::{PeerHealth, PeerState};

/// Most messages queued for one peer before new ones are dropped.
const MAX_QUEUED_MESSAGES: usize = 8192;
/// Most bytes (approximate) queued for one peer before new ones are dropped.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// First retry delay after a failed send.
const MIN_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Queue {
    messages: Vec<Message>,
    bytes: usize,
}

/// The outgoing side of one peer.
pub(crate) struct PeerLink {
    id: NodeId,
    name: String,
    base_url: String,
    queue: Mutex<Queue>,
    notify: Notify,
    health: Arc<PeerHealth>,
    /// A snapshot transfer is under way (at most one per peer).
    snapshot_busy: AtomicBool,
}

fn message_size(m: &Message) -> usize {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => {
            64 + entries.iter().map(|e| e.approx_size()).sum::<usize>()
        }
        _ => 64,
    }
}

impl PeerLink {
    /// Queues messages; returns false if some had to be dropped.
    fn push(&self, msgs: Vec<Message>) -> bool {
        let mut all_queued = true;
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            for m in msgs {
                let size = message_size(&m);
                if q.messages.len() >= MAX_QUEUED_MESSAGES || q.bytes + size > MAX_QUEUED_BYTES {
                    all_queued = false;
                    continue;
                }
                q.bytes += size;
                q.messages.push(m);
            }
        }
        self.notify.notify_one();
        all_queued
    }

    fn take(&self) -> Vec<Message> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.bytes = 0;
        std::mem::take(&mut q.messages)
    }
}

/// Which route a batch goes to: the contract names `/raft/vote` and
/// `/raft/append`; mixed batches use `/raft/message`. All three accept any
/// message, the split only makes traffic readable in logs and tools.
fn route_for(batch: &[Message]) -> &'static str {
    let vote = |m: &Message| {
        matches!(
            m.body,
            MessageBody::PreVote { .. }
                | MessageBody::PreVoteResponse { .. }
                | MessageBody::RequestVote { .. }
                | MessageBody::RequestVoteResponse { .. }
        )
    };
    let append = |m: &Message| {
        matches!(
            m.body,
            MessageBody::AppendEntries { .. } | MessageBody::AppendEntriesResponse { .. }
        )
    };
    if batch.iter().all(vote) {
        "/raft/vote"
    } else if batch.iter().all(append) {
        "/raft/append"
    } else {
        "/raft/message"
    }
}

/// Timing of the transport.
#[derive(Clone, Copy, Debug)]
pub struct TransportTiming {
    /// Deadline of one message batch.
    pub rpc_timeout: Duration,
    /// Deadline of one snapshot chunk (a transfer has no overall deadline:
    /// it lasts as long as chunks keep being accepted).
    pub snapshot_chunk_timeout: Duration,
    /// Longest wait between retries to a dead peer.
    pub max_backoff: Duration,
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
enum SendFailure {
    /// The peer answered with an error status.
    #[error("rejected with {status}: {body}")]
    Rejected {
        status: reqwest::StatusCode,
        body: String,
    },
    /// The request failed (connect, timeout, reset).
    #[error("{}", error_chain(.0))]
    Http(#[from] reqwest::Error),
}

/// All peer links: the Raft loop's [`PeerTransport`] in production. Its
/// sender tasks stop when it is dropped (with the loop).
pub struct HttpTransport<I> {
    links: HashMap<NodeId, Arc<PeerLink>>,
    client: reqwest::Client,
    header: RpcHeader,
    inbox: Inbox<I>,
    runtime: tokio::runtime::Handle,
    timing: TransportTiming,
    stop: watch::Sender<bool>,
}

impl<I> Drop for HttpTransport<I> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl<I: Send + 'static> HttpTransport<I> {
    /// Creates the links and spawns one sender task per peer on `runtime`;
    /// reports go to `inbox`.
    pub fn start(
        membership: &Membership,
        peers: &PeerState,
        inbox: Inbox<I>,
        runtime: tokio::runtime::Handle,
        timing: TransportTiming,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500).min(timing.rpc_timeout))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        let header = RpcHeader {
            version: WIRE_VERSION,
            cluster_id: membership.cluster_id.clone(),
            from: membership.self_id,
            to: 0,
            from_name: membership.self_name.clone(),
            from_addr: membership.self_addr().to_string(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut links = HashMap::new();
        for peer in membership.peers() {
            let link = Arc::new(PeerLink {
                id: peer.id,
                name: peer.name.clone().unwrap_or_else(|| peer.addr.clone()),
                base_url: peer.url(),
                queue: Mutex::new(Queue::default()),
                notify: Notify::new(),
                health: peers.health(peer.id),
                snapshot_busy: AtomicBool::new(false),
            });
            let mut h = header.clone();
            h.to = peer.id;
            runtime.spawn(sender_loop(
                link.clone(),
                client.clone(),
                h,
                inbox.clone(),
                timing,
                stop_rx.clone(),
            ));
            links.insert(peer.id, link);
        }
        HttpTransport {
            links,
            client,
            header,
            inbox,
            runtime,
            timing,
            stop,
        }
    }
}

impl<I: Send + 'static, Src: SnapshotSource> PeerTransport<Src> for HttpTransport<I> {
    /// Queues messages for their peers; the peers whose queue was full
    /// (their messages were dropped) go to `dropped`.
    fn send(&mut self, messages: Vec<Message>, dropped: &mut Vec<NodeId>) {
        let mut by_peer: HashMap<NodeId, Vec<Message>> = HashMap::new();
        for m in messages {
            by_peer.entry(m.to).or_default().push(m);
        }
        for (peer, msgs) in by_peer {
            match self.links.get(&peer) {
                Some(link) => {
                    if !link.push(msgs) {
                        dropped.push(peer);
                    }
                }
                None => debug!(
                    peer = format!("{peer:016x}"),
                    "message for unknown peer dropped"
                ),
            }
        }
    }

    fn snapshot_in_progress(&self, peer: NodeId) -> bool {
        self.links
            .get(&peer)
            .is_some_and(|l| l.snapshot_busy.load(Ordering::Acquire))
    }

    /// Streams the image on a blocking thread and the network (see
    /// `snapshot.rs` of this module).
    fn send_snapshot(&mut self, message: Message, source: Src) -> bool {
        let Some(link) = self.links.get(&message.to).cloned() else {
            return false;
        };
        if link.snapshot_busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut header = self.header.clone();
        header.to = link.id;
        let out = Outgoing {
            peer_name: link.name.clone(),
            base_url: link.base_url.clone(),
            header,
            message,
            chunk_timeout: self.timing.snapshot_chunk_timeout,
        };
        let client = self.client.clone();
        let inbox = self.inbox.clone();
        self.runtime.spawn(async move {
            let peer = link.id;
            let success = send_snapshot(client, out, source).await;
            link.snapshot_busy.store(false, Ordering::Release);
            let _ = inbox.deliver(Inbound::SnapshotSent { peer, success }).await;
        });
        true
    }
}

async fn sender_loop<I>(
    link: Arc<PeerLink>,
    client: reqwest::Client,
    header: RpcHeader,
    inbox: Inbox<I>,
    timing: TransportTiming,
    mut stop: watch::Receiver<bool>,
) {
    let url_base = link.base_url.clone();
    let mut backoff = Duration::ZERO;
    loop {
        // Wait for work.
        let batch = loop {
            if *stop.borrow() {
                return;
            }
            let batch = link.take();
            if !batch.is_empty() {
                break batch;
            }
            tokio::select! {
                _ = link.notify.notified() => {}
                _ = stop.changed() => {}
            }
        };
        let url = format!("{url_base}{}", route_for(&batch));
        let body = wire::encode(&MessageBatch {
            header: header.clone(),
            messages: batch,
        });
        let result = client
            .post(url)
            .header("content-type", "application/octet-stream")
            .timeout(timing.rpc_timeout)
            .body(body)
            .send()
            .await;
        let failure = match result {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                Some(SendFailure::Rejected { status, body })
            }
            Err(e) => Some(SendFailure::Http(e)),
        };
        match failure {
            None => {
                backoff = Duration::ZERO;
                if link.health.set(true) {
                    info!(peer = %link.name, url = %url_base, "peer reachable");
                }
            }
            Some(why) => {
                if link.health.set(false) {
                    info!(peer = %link.name, url = %url_base, error = %why, "peer unreachable");
                } else {
                    debug!(peer = %link.name, error = %why, "send failed");
                }
                let _ = inbox.deliver(Inbound::Unreachable(link.id)).await;
                backoff = (backoff * 2).clamp(MIN_BACKOFF, timing.max_backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: MessageBody) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 1,
            body,
        }
    }

    #[test]
    fn routes_follow_message_kinds() {
        let vote = msg(MessageBody::RequestVote {
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        });
        let append = msg(MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        });
        assert_eq!(route_for(std::slice::from_ref(&vote)), "/raft/vote");
        assert_eq!(route_for(std::slice::from_ref(&append)), "/raft/append");
        assert_eq!(route_for(&[vote, append]), "/raft/message");
    }

    #[test]
    fn queue_is_bounded() {
        let link = PeerLink {
            id: 2,
            name: "n2".into(),
            base_url: "http://127.0.0.1:1".into(),
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            health: Default::default(),
            snapshot_busy: AtomicBool::new(false),
        };
        let hb = || msg(MessageBody::TimeoutNow);
        assert!(link.push((0..MAX_QUEUED_MESSAGES).map(|_| hb()).collect()));
        assert!(!link.push(vec![hb()]));
        assert_eq!(link.take().len(), MAX_QUEUED_MESSAGES);
        assert!(link.push(vec![hb()]));
    }
}
