//! The leader's view of each follower: how much of the log it holds and how
//! to send it more (flow control).
//!
//! Every peer is in one of three states:
//!
//! * **Probe**: the leader does not know where the peer's log ends. It sends
//!   one AppendEntries at a time and waits for the answer (or the next
//!   heartbeat reply) before sending another; rejections move `next_index`
//!   back using the conflict hints.
//! * **Replicate**: the peer is known to follow; the leader streams entries
//!   optimistically (`next_index` jumps ahead on send) with at most
//!   `max_inflight` unacknowledged messages ([`Inflights`]).
//! * **Snapshot**: the peer needs entries that were compacted; an
//!   InstallSnapshot is under way and nothing else is sent until the
//!   runtime reports the transfer's end or the peer answers.

use std::collections::VecDeque;

use super::types::NodeId;

/// How the leader currently replicates to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// One message at a time until the match point is found.
    Probe,
    /// Pipelined streaming within the inflight window.
    Replicate,
    /// Waiting for a snapshot transfer to finish.
    Snapshot,
}

/// A bounded window of in-flight AppendEntries, each remembered by the last
/// index it carried; acknowledgements free every message up to their index.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<u64>,
    cap: usize,
}

impl Inflights {
    /// An empty window of `cap` messages.
    pub(crate) fn new(cap: usize) -> Self {
        Inflights {
            last_indexes: VecDeque::with_capacity(cap.min(1024)),
            cap: cap.max(1),
        }
    }

    /// True when no more messages may be sent.
    pub(crate) fn full(&self) -> bool {
        self.last_indexes.len() >= self.cap
    }

    /// Number of messages in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.last_indexes.len()
    }

    /// Records a message whose last entry is `last`.
    pub(crate) fn add(&mut self, last: u64) {
        self.last_indexes.push_back(last);
    }

    /// Frees every message whose entries are all at or below `index`.
    pub(crate) fn free_le(&mut self, index: u64) {
        while self.last_indexes.front().is_some_and(|&l| l <= index) {
            self.last_indexes.pop_front();
        }
    }

    /// Forgets every message.
    pub(crate) fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// Replication progress of one peer.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The peer.
    pub(crate) id: NodeId,
    /// Highest index known to be durable on the peer and to match our log.
    pub(crate) match_index: u64,
    /// Next index to send.
    pub(crate) next_index: u64,
    /// Flow-control state.
    pub(crate) state: ProgressState,
    /// Probe state: a probe is outstanding; send nothing until an answer.
    pub(crate) probe_sent: bool,
    /// Snapshot state: index of the snapshot being sent.
    pub(crate) pending_snapshot: u64,
    /// Replicate state: unacknowledged messages.
    pub(crate) inflights: Inflights,
    /// Heard from the peer since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Highest ReadIndex round the peer acknowledged in this term.
    pub(crate) read_ack: u64,
    /// Highest commit index sent to the peer (to push new commit indexes
    /// without waiting for the next heartbeat).
    pub(crate) sent_commit: u64,
    /// Leader ticks since `match_index` last moved (Replicate): when the
    /// peer answers heartbeats but has not acknowledged outstanding
    /// entries for a while, they were lost.
    pub(crate) ticks_since_progress: u32,
    /// Something may be sendable to this peer; looked at when the next Ready
    /// is built, so that many proposals and acknowledgements between two
    /// Readys share one message.
    pub(crate) dirty: bool,
}

impl Progress {
    /// Fresh progress for a new leader whose log ends at `last_index`.
    pub(crate) fn new(id: NodeId, last_index: u64, max_inflight: usize) -> Self {
        Progress {
            id,
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            inflights: Inflights::new(max_inflight),
            recent_active: false,
            read_ack: 0,
            sent_commit: 0,
            ticks_since_progress: 0,
            dirty: true,
        }
    }

    /// Records that the peer holds our log up to `index`. Returns true when
    /// that is news.
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.ticks_since_progress = 0;
            // Whatever route the acknowledgement took (append reply,
            // snapshot reply), messages up to it are no longer in flight.
            self.inflights.free_le(index);
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// Back to one-at-a-time probing from `next`.
    pub(crate) fn become_probe(&mut self, next: u64) {
        self.state = ProgressState::Probe;
        self.next_index = next.max(self.match_index + 1);
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.reset();
        self.ticks_since_progress = 0;
    }

    /// Start streaming right after the match point.
    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.reset();
        self.ticks_since_progress = 0;
    }

    /// A snapshot at `index` is being sent.
    pub(crate) fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// True when the leader would send this peer something if asked now.
    pub(crate) fn wants_send(&self, last_index: u64, commit: u64) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => {
                !self.inflights.full()
                    && (self.next_index <= last_index || self.sent_commit < commit)
            }
            ProgressState::Snapshot => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_frees_up_to_acknowledged_index() {
        let mut w = Inflights::new(3);
        w.add(5);
        w.add(9);
        assert!(!w.full());
        w.add(12);
        assert!(w.full());
        w.free_le(9);
        assert_eq!(w.len(), 1);
        assert!(!w.full());
        w.free_le(100);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn probe_never_goes_below_match() {
        let mut p = Progress::new(2, 10, 4);
        assert!(p.maybe_update(7));
        assert!(!p.maybe_update(6), "stale acknowledgement is no news");
        p.become_probe(3);
        assert_eq!(p.next_index, 8);
        p.become_replicate();
        assert_eq!(p.next_index, 8);
    }
}
