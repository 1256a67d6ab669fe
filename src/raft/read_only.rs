//! Linearizable reads by ReadIndex (Ongaro's dissertation §6.4).
//!
//! A read arriving at the leader goes through four gates:
//!
//! 1. **The leader's no-op of its term must be committed**, otherwise its
//!    commit index may lag behind entries committed by earlier leaders. Reads
//!    arriving earlier wait in `waiting_noop`.
//! 2. **Remember the commit index** as the read's index, in a *round*. Reads
//!    arriving before the round's heartbeat went out join it (one heartbeat
//!    round serves many reads).
//! 3. **Confirm leadership**: every AppendEntries carries the id of the
//!    newest round (`read_ctx`); once a majority (counting the leader)
//!    echoed an id ≥ the round's, no other leader could have existed when
//!    the round started, so the index is fresh. Acknowledging a round also
//!    acknowledges every earlier one.
//! 4. **Wait for apply**: the read is handed to the runtime in
//!    [`Ready::read_states`](super::Ready) only once the entries up to its
//!    index are handed out for applying in the same or an earlier Ready.
//!
//! When the node stops being leader, every read not yet handed out is
//! dropped; the runtime fails them when it sees the role change.

use std::collections::VecDeque;

use super::types::ReadState;

/// One heartbeat round confirming leadership for a group of reads.
#[derive(Debug)]
struct ReadRound {
    /// Round id, carried as `read_ctx` and echoed by followers.
    id: u64,
    /// Commit index the reads of this round must observe.
    index: u64,
    /// The callers' read identifiers.
    ctxs: Vec<u64>,
}

/// Pending ReadIndex reads of a leader.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// Last round id handed out (ids are unique for the node's lifetime).
    last_round: u64,
    /// Rounds waiting for a majority, oldest first.
    rounds: VecDeque<ReadRound>,
    /// Reads waiting for the leader's no-op to commit.
    waiting_noop: Vec<u64>,
    /// Confirmed reads waiting for their index to be applied, in index order.
    confirmed: VecDeque<ReadState>,
    /// The newest round has not been announced to the followers yet.
    pub(crate) needs_broadcast: bool,
}

impl ReadOnly {
    /// Parks a read until the leader's no-op commits.
    pub(crate) fn wait_for_noop(&mut self, ctx: u64) {
        self.waiting_noop.push(ctx);
    }

    /// Takes the reads that waited for the no-op.
    pub(crate) fn take_waiting_noop(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.waiting_noop)
    }

    /// True when reads wait for the no-op to commit.
    pub(crate) fn has_waiting_noop(&self) -> bool {
        !self.waiting_noop.is_empty()
    }

    /// Adds a read at `commit` to the round about to be announced, opening a
    /// new round when the newest one is already on its way.
    pub(crate) fn add(&mut self, ctx: u64, commit: u64) {
        if self.needs_broadcast {
            if let Some(round) = self.rounds.back_mut() {
                // Still unannounced, so the later commit index is as good.
                round.index = round.index.max(commit);
                round.ctxs.push(ctx);
                return;
            }
        }
        self.last_round += 1;
        self.rounds.push_back(ReadRound {
            id: self.last_round,
            index: commit,
            ctxs: vec![ctx],
        });
        self.needs_broadcast = true;
    }

    /// Confirms a read without a heartbeat round (a one-voter cluster: the
    /// leader is its own majority).
    pub(crate) fn confirm_now(&mut self, ctx: u64, index: u64) {
        self.confirmed.push_back(ReadState { ctx, index });
    }

    /// The id to put into outgoing AppendEntries: the newest round still
    /// waiting for a majority, or 0 when none is.
    pub(crate) fn round_to_confirm(&self) -> u64 {
        self.rounds.back().map_or(0, |r| r.id)
    }

    /// A majority acknowledged round `id`: it and every earlier round are
    /// confirmed.
    pub(crate) fn confirm_up_to(&mut self, id: u64) {
        while self.rounds.front().is_some_and(|r| r.id <= id) {
            let round = self.rounds.pop_front().expect("front checked");
            for ctx in round.ctxs {
                self.confirmed.push_back(ReadState {
                    ctx,
                    index: round.index,
                });
            }
        }
    }

    /// True when a confirmed read could be answered once the state machine
    /// reaches `applied`.
    pub(crate) fn has_releasable(&self, applied: u64) -> bool {
        self.confirmed.front().is_some_and(|r| r.index <= applied)
    }

    /// Hands out the confirmed reads whose index is ≤ `applied`.
    pub(crate) fn release(&mut self, applied: u64) -> Vec<ReadState> {
        let mut out = Vec::new();
        while self.confirmed.front().is_some_and(|r| r.index <= applied) {
            out.push(self.confirmed.pop_front().expect("front checked"));
        }
        out
    }

    /// Drops every pending read (the node stopped being leader). Confirmed
    /// reads are dropped too: their leadership proof belongs to a term that
    /// is over, and the runtime fails them on the role change.
    pub(crate) fn clear(&mut self) {
        self.rounds.clear();
        self.waiting_noop.clear();
        self.confirmed.clear();
        self.needs_broadcast = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_join_an_unannounced_round_and_confirm_in_order() {
        let mut ro = ReadOnly::default();
        ro.add(1, 5);
        ro.add(2, 6);
        assert_eq!(ro.round_to_confirm(), 1, "both reads share round 1");
        ro.needs_broadcast = false;
        ro.add(3, 7);
        assert_eq!(ro.round_to_confirm(), 2);
        ro.confirm_up_to(1);
        assert!(
            !ro.has_releasable(5),
            "round 1 got index 6 when read 2 joined"
        );
        assert_eq!(
            ro.release(6),
            vec![
                ReadState { ctx: 1, index: 6 },
                ReadState { ctx: 2, index: 6 }
            ]
        );
        ro.confirm_up_to(2);
        assert!(ro.release(6).is_empty(), "read 3 needs index 7 applied");
        assert_eq!(ro.release(7), vec![ReadState { ctx: 3, index: 7 }]);
    }
}
