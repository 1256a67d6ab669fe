//! The peer transport: everything between this node's Raft loop and the
//! other members, over HTTP with bincode bodies.
//!
//! ```text
//!   Raft loop ── PeerTransport ──▶ HttpTransport (sender.rs)
//!                                   per-peer queue → sender task → POST /raft/{vote,append,message}
//!                                   snapshot source → chunks → POST /raft/snapshot   (snapshot.rs)
//!   Raft loop ◀── Inbox ────────── PeerReceiver (receive.rs)
//!                                   envelope check → messages; chunks → staged image (snapshot.rs)
//!   wire.rs: the RPC bodies and their encoding
//! ```
//!
//! * [`HttpTransport`] implements the loop's [`crate::node::PeerTransport`]:
//!   it never blocks the loop (messages go into per-peer queues, one
//!   sender task per peer posts whatever is queued as one batch, snapshots
//!   stream from a blocking thread) and reports back through the loop's
//!   [`crate::node::Inbox`] (unreachable peers, finished transfers).
//! * [`PeerReceiver`] and [`routes`] are the receiving side: the server
//!   mounts the routes next to its own.
//! * [`PeerState`] is what both sides learn about the peers (reachability,
//!   names they report, the transfer being received), shown by
//!   `/cluster/status` through [`crate::node::PeerInfo`].
//!
//! The transport depends on the node (the loop's traits, the handle, the
//! inbox) and the storage (snapshot sources and staging), never the other
//! way round.

mod receive;
mod sender;
mod snapshot;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::node::{Membership, PeerInfo, ReceiveProgress};
use crate::raft::NodeId;

pub use receive::{
    routes, PeerReceiver, RpcReject, MAX_BATCH_BODY_BYTES, MAX_SNAPSHOT_CHUNK_BYTES,
};
pub use sender::{HttpTransport, TransportTiming};
pub use snapshot::ChunkReject;

/// Reachability of a peer as seen by its sender task.
#[derive(Default, Debug)]
pub(crate) struct PeerHealth {
    /// 0 = not contacted yet, 1 = reachable, 2 = unreachable.
    state: AtomicU8,
}

impl PeerHealth {
    /// Records the latest outcome; true when it changed.
    pub(crate) fn set(&self, reachable: bool) -> bool {
        let new = if reachable { 1 } else { 2 };
        self.state.swap(new, Ordering::Relaxed) != new
    }

    pub(crate) fn get(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// What the transport knows about the peers. Shared by the sending and
/// receiving sides, read by the node's handle (as [`PeerInfo`]).
#[derive(Debug, Default)]
pub struct PeerState {
    health: HashMap<NodeId, Arc<PeerHealth>>,
    /// Display names learned from RPC envelopes (bare `--peers` form).
    learned_names: RwLock<HashMap<NodeId, String>>,
    receiving: Mutex<Option<ReceiveProgress>>,
}

impl PeerState {
    /// State for the peers of `membership`.
    pub fn new(membership: &Membership) -> Arc<Self> {
        Arc::new(PeerState {
            health: membership
                .peers()
                .map(|p| (p.id, Arc::new(PeerHealth::default())))
                .collect(),
            ..PeerState::default()
        })
    }

    pub(crate) fn health(&self, id: NodeId) -> Arc<PeerHealth> {
        self.health.get(&id).cloned().unwrap_or_default()
    }

    pub(crate) fn learn_name(&self, id: NodeId, name: &str) {
        let known = self
            .learned_names
            .read()
            .map(|n| n.get(&id).is_some_and(|k| k == name))
            .unwrap_or(true);
        if !known {
            if let Ok(mut names) = self.learned_names.write() {
                names.insert(id, name.to_string());
            }
        }
    }

    pub(crate) fn set_receiving(&self, p: Option<ReceiveProgress>) {
        *self.receiving.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

impl PeerInfo for PeerState {
    fn peer_reachable(&self, id: NodeId) -> Option<bool> {
        self.health.get(&id).and_then(|h| h.get())
    }

    fn learned_name(&self, id: NodeId) -> Option<String> {
        self.learned_names
            .read()
            .ok()
            .and_then(|n| n.get(&id).cloned())
    }

    fn snapshot_receiving(&self) -> Option<ReceiveProgress> {
        self.receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests;
