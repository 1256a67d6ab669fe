//! Terms, roles and elections (Raft paper §5.1–5.2, §5.4.1; dissertation
//! §9.6 for PreVote, CheckQuorum and leader stickiness).
//!
//! Every incoming message first goes through [`RaftNode::step_checked`],
//! which settles terms before looking at the body:
//!
//! * A higher term makes the node a follower of that term, except for two
//!   PreVote cases that must not change anyone's term (a PreVote request,
//!   and a granted PreVote reply, which carries the term the pre-candidate
//!   *would* use).
//! * A (Pre)Vote request for a higher term is ignored outright while the
//!   node has heard from a live leader within the last election timeout
//!   (*leader stickiness*, with CheckQuorum on): a node coming back from a
//!   partition cannot depose a healthy leader.
//! * A lower term is stale. The node answers AppendEntries and votes with a
//!   rejection carrying its own term so that a stale leader or candidate
//!   learns it is behind, and ignores everything else.

use super::node::RaftNode;
use super::progress::Progress;
use super::quorum::VoteResult;
use super::types::*;

impl RaftNode {
    /// Draws a fresh randomized election timeout and restarts the count.
    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let spread = u64::from(self.cfg.election_ticks);
        self.randomized_timeout = self.cfg.election_ticks + self.rng.below(spread) as u32;
    }

    /// Follower/candidate tick: start an election when the timeout expires.
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_timeout {
            self.campaign(self.cfg.pre_vote);
        }
    }

    /// Leader tick: heartbeats and CheckQuorum.
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some((target, ticks)) = self.transfer {
            // The target never won (unreachable, or lost the election):
            // stay leader and accept proposals again.
            self.transfer = (ticks + 1 < self.cfg.election_ticks).then_some((target, ticks + 1));
        }
        for p in &mut self.progress {
            p.ticks_since_progress = p.ticks_since_progress.saturating_add(1);
        }
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                // Count ourselves plus every peer heard from since the last
                // check; without a majority we may be on the wrong side of
                // a partition, and must not keep acting as leader.
                let peers = self.progress.iter().filter(|p| p.recent_active);
                let active = std::iter::once(self.cfg.id).chain(peers.map(|p| p.id));
                if !self.voters.has_quorum(active) {
                    let term = self.term;
                    self.become_follower(term, NO_NODE);
                    return;
                }
                for p in &mut self.progress {
                    p.recent_active = false;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// True while this node has heard from a live leader within the minimum
    /// election timeout (leaders always are: CheckQuorum deposes them
    /// otherwise).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader != NO_NODE
            && self.election_elapsed < self.cfg.election_ticks
    }

    /// Term handling, then dispatch by message type and role.
    pub(crate) fn step_checked(&mut self, m: Message) {
        use MessageBody as B;
        if m.term > self.term {
            let vote_request = matches!(
                m.body,
                B::RequestVote {
                    transfer: false,
                    ..
                } | B::PreVote { .. }
            );
            if vote_request && self.in_lease() {
                return;
            }
            match m.body {
                // Neither changes our term: a PreVote asks about a term the
                // sender has not entered, and a granted reply echoes that
                // future term back to us.
                B::PreVote { .. } | B::PreVoteResponse { granted: true } => {}
                B::AppendEntries { .. } | B::InstallSnapshot { .. } | B::TimeoutNow => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            self.step_stale(m);
            return;
        }

        match m.body {
            B::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
            } => {
                if self.role == Role::Leader {
                    // Two leaders in one term cannot happen; ignore.
                    return;
                }
                if self.role != Role::Follower || self.leader != m.from {
                    let term = self.term;
                    self.become_follower(term, m.from);
                }
                self.election_elapsed = 0;
                self.handle_append(
                    m.from,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    read_ctx,
                );
            }
            B::AppendEntriesResponse {
                success,
                match_index,
                conflict_term,
                conflict_index,
                read_ctx,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(
                        m.from,
                        success,
                        match_index,
                        conflict_term,
                        conflict_index,
                        read_ctx,
                    );
                }
            }
            B::InstallSnapshot { meta } => {
                if self.role == Role::Leader {
                    return;
                }
                if self.role != Role::Follower || self.leader != m.from {
                    let term = self.term;
                    self.become_follower(term, m.from);
                }
                self.election_elapsed = 0;
                self.handle_install_snapshot(m.from, meta);
            }
            B::InstallSnapshotResponse {
                last_index,
                success,
            } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(m.from, last_index, success);
                }
            }
            B::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(m.from, m.term, last_log_index, last_log_term, false),
            B::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_vote_request(m.from, m.term, last_log_index, last_log_term, true),
            B::RequestVoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.tally(m.from, granted);
                }
            }
            B::PreVoteResponse { granted } => {
                // A grant carries the term we would campaign in; a rejection
                // carries the voter's own term (a higher one already made us
                // a follower above).
                let expected = if granted {
                    self.term.saturating_add(1)
                } else {
                    self.term
                };
                if self.role == Role::PreCandidate && m.term == expected {
                    self.tally(m.from, granted);
                }
            }
            B::TimeoutNow => {
                // Leadership transfer: the current leader asks us to run a
                // real election now, flagged so that voters still in the
                // leader's lease do not ignore it.
                if self.role == Role::Follower && self.leader == m.from {
                    self.campaign_with(false, true);
                }
            }
        }
    }

    /// A message from an older term.
    fn step_stale(&mut self, m: Message) {
        use MessageBody as B;
        match m.body {
            // Tell a stale leader about the newer term so it steps down.
            // (With PreVote/CheckQuorum this matters: our term may have moved
            // on without the old leader ever hearing a vote request.)
            B::AppendEntries { read_ctx, .. } => {
                let last = self.log.last_index();
                self.send(
                    m.from,
                    B::AppendEntriesResponse {
                        success: false,
                        match_index: last,
                        conflict_term: 0,
                        conflict_index: last + 1,
                        read_ctx,
                    },
                );
            }
            B::InstallSnapshot { .. } => {
                let last = self.log.last_index();
                self.send(
                    m.from,
                    B::InstallSnapshotResponse {
                        last_index: last,
                        success: false,
                    },
                );
            }
            B::PreVote { .. } => self.send(m.from, B::PreVoteResponse { granted: false }),
            B::RequestVote { .. } => self.send(m.from, B::RequestVoteResponse { granted: false }),
            // Stale replies (votes of an old election, acks to an old
            // leader) must never be counted.
            _ => {}
        }
    }

    /// RequestVote / PreVote at `msg_term` ≥ our term (§5.2, §5.4.1, §9.6).
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: u64,
        last_log_index: u64,
        last_log_term: u64,
        pre: bool,
    ) {
        // §5.4.1: only a candidate whose log is at least as up-to-date as
        // ours can hold every committed entry.
        let our_term = self.log.last_term();
        let up_to_date = last_log_term > our_term
            || (last_log_term == our_term && last_log_index >= self.log.last_index());
        // One vote per term: only for the candidate we already voted for, or
        // when we have neither voted nor seen a leader in this term. A
        // PreVote for a future term binds nothing.
        let can_vote = self.vote == from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre && msg_term > self.term);
        let granted = can_vote && up_to_date;
        if pre {
            // Grants echo the requested term; rejections carry ours, so a
            // pre-candidate behind us catches up.
            let term = if granted { msg_term } else { self.term };
            self.msgs.push(Message {
                from: self.cfg.id,
                to: from,
                term,
                body: MessageBody::PreVoteResponse { granted },
            });
        } else {
            if granted {
                // The vote goes into the next Ready's hard state, which the
                // runtime makes durable before it sends this reply.
                self.vote = from;
                self.election_elapsed = 0;
            }
            self.send(from, MessageBody::RequestVoteResponse { granted });
        }
    }

    /// Starts an election: a PreVote round first when `pre`, else a real one.
    pub(crate) fn campaign(&mut self, pre: bool) {
        self.campaign_with(pre, false);
    }

    /// [`Self::campaign`]; `transfer` marks a real election started by the
    /// leader's TimeoutNow.
    pub(crate) fn campaign_with(&mut self, pre: bool, transfer: bool) {
        if self.role == Role::Leader {
            return;
        }
        let (li, lt) = (self.log.last_index(), self.log.last_term());
        let body = if pre {
            self.become_pre_candidate();
            MessageBody::PreVote {
                last_log_index: li,
                last_log_term: lt,
            }
        } else {
            self.become_candidate();
            MessageBody::RequestVote {
                last_log_index: li,
                last_log_term: lt,
                transfer,
            }
        };
        if self.voters.is_self_majority() {
            // A one-node cluster wins on its own vote.
            self.tally(self.cfg.id, true);
            return;
        }
        let msg_term = if pre {
            self.term.saturating_add(1)
        } else {
            self.term
        };
        for i in 0..self.voters.len() {
            let to = self.voters.ids()[i];
            if to != self.cfg.id {
                self.msgs.push(Message {
                    from: self.cfg.id,
                    to,
                    term: msg_term,
                    body: body.clone(),
                });
            }
        }
    }

    /// Records one (pre)vote reply and acts once the outcome is decided.
    pub(crate) fn tally(&mut self, from: NodeId, granted: bool) {
        if !self.votes.iter().any(|&(v, _)| v == from) {
            self.votes.push((from, granted));
        }
        match self.voters.vote_result(&self.votes) {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.campaign(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, NO_NODE);
            }
            VoteResult::Pending => {}
        }
    }

    /// Becomes a follower of `leader` (or of no one) in `term`; a new term
    /// clears the vote.
    pub(crate) fn become_follower(&mut self, term: u64, leader: NodeId) {
        if term != self.term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.leave_role();
    }

    /// PreVote round: nothing persistent changes.
    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = NO_NODE;
        self.leave_role();
        self.votes.push((self.cfg.id, true));
    }

    /// Real election: new term, vote for ourselves.
    fn become_candidate(&mut self) {
        self.term += 1;
        self.vote = self.cfg.id;
        self.role = Role::Candidate;
        self.leader = NO_NODE;
        self.leave_role();
        self.votes.push((self.cfg.id, true));
    }

    /// Wins the election: fresh progress for every peer, and a no-op entry
    /// of the new term (§5.4.2: committing it commits everything before it;
    /// ReadIndex waits for it).
    pub(crate) fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = self.cfg.id;
        self.leave_role();
        let last = self.log.last_index();
        let max_inflight = self.cfg.max_inflight;
        self.progress = self
            .voters
            .ids()
            .iter()
            .filter(|&&v| v != self.cfg.id)
            .map(|&v| Progress::new(v, last, max_inflight))
            .collect();
        self.log.append(Entry {
            index: last + 1,
            term: self.term,
            payload: EntryPayload::Noop,
        });
        // A one-node cluster commits once the no-op is durable (advance).
        self.mark_all_dirty();
    }

    /// Resets everything that belongs to the role being left.
    fn leave_role(&mut self) {
        self.transfer = None;
        self.votes.clear();
        self.progress.clear();
        self.read_only.clear();
        self.heartbeat_elapsed = 0;
        self.reset_election_timer();
    }

    /// Leader: sends TimeoutNow to the transfer target once its log matches
    /// ours (called when the transfer starts and on each of its acks).
    pub(crate) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some((target, _)) = self.transfer else {
            return;
        };
        if target != from {
            return;
        }
        let last = self.log.last_index();
        let caught_up = self
            .progress
            .iter()
            .any(|p| p.id == target && p.match_index == last);
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else if let Some(p) = self.progress.iter_mut().find(|p| p.id == target) {
            // Make sure something goes out to it in the next Ready.
            p.dirty = true;
        }
    }
}
