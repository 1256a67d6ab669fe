//! What the Raft loop touches besides its storage: the peers and the clock,
//! and where a round's input comes from.
//!
//! The loop ([`super::RaftLoop`]) is generic over these, so the same code
//! runs in production (the HTTP transport of `crate::transport`, tokio's
//! clock, mpsc channels; see `super::driver`) and in the deterministic
//! simulation (`crate::sim`: a simulated network, virtual time, an event
//! queue). Generics, not trait objects: the calls are on the hot path.

use std::time::Duration;

use crate::raft::{Message, NodeId};

use super::handle::{Inbound, Proposal, ReadRequest};

/// The loop's link to its peers. `Src` is the store's snapshot source
/// (`crate::storage::SnapshotSource`), which the transport streams.
///
/// Every method returns at once: the loop never waits on the network.
pub trait PeerTransport<Src> {
    /// Queues `messages` for their receivers (in order per receiver).
    /// Peers whose messages had to be dropped (queue full) are appended to
    /// `dropped`; the loop reports them unreachable to the core.
    fn send(&mut self, messages: Vec<Message>, dropped: &mut Vec<NodeId>);

    /// True while a snapshot transfer to `peer` is running (at most one
    /// per peer).
    fn snapshot_in_progress(&self, peer: NodeId) -> bool;

    /// Starts streaming `source`'s image to `message.to` with the
    /// InstallSnapshot `message`; the outcome comes back to the loop as
    /// [`Inbound::SnapshotSent`]. Returns false (dropping `source`) when a
    /// transfer to that peer is already running or the peer is unknown.
    fn send_snapshot(&mut self, message: Message, source: Src) -> bool;
}

/// The loop's clock: only for deadlines it computes itself (the ack wait)
/// and for durations it logs. Ticks arrive as [`super::RaftLoop::on_tick`]
/// calls from the driver.
pub trait Clock {
    /// A point in time.
    type Instant: Copy + Ord;

    /// Now.
    fn now(&self) -> Self::Instant;

    /// `at` plus `d`.
    fn after(&self, at: Self::Instant, d: Duration) -> Self::Instant;

    /// Time since `earlier`.
    fn since(&self, earlier: Self::Instant) -> Duration;
}

/// The real clock (tokio's, so a deadline can be slept until).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    type Instant = tokio::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now()
    }

    fn after(&self, at: Self::Instant, d: Duration) -> Self::Instant {
        at + d
    }

    fn since(&self, earlier: Self::Instant) -> Duration {
        earlier.elapsed()
    }
}

/// Where a round's queued input comes from (the production driver's
/// channels, the simulation's inboxes). `None` = nothing queued.
pub trait LoopInput<I> {
    /// The next message or transport report.
    fn next_inbound(&mut self) -> Option<Inbound<I>>;
    /// The next client write.
    fn next_proposal(&mut self) -> Option<Proposal>;
    /// The next linearizable read.
    fn next_read(&mut self) -> Option<ReadRequest>;
}
