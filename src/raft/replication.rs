//! Log replication, commit and snapshots (Raft paper §5.3, §5.4.2, §7),
//! and the leader's side of ReadIndex (dissertation §6.4).
//!
//! Leader side: messages to peers are built lazily in
//! [`RaftNode::flush_sends`] when the next Ready is taken, from each peer's
//! [`Progress`](super::progress::Progress): everything proposed or
//! acknowledged since the last Ready shares one AppendEntries per peer
//! (within `max_entries_per_msg` / `max_bytes_per_msg` and the
//! `max_inflight` window). Heartbeats go out on ticks, straight away.
//!
//! Follower side: [`RaftNode::handle_append`] runs the consistency check,
//! stores the entries and answers; the answer leaves in the same Ready as
//! the entries, so the runtime has made them durable before the leader
//! hears about them.

use super::node::RaftNode;
use super::progress::ProgressState;
use super::types::*;

impl RaftNode {
    /// True once the leader's no-op of its term is committed (then its
    /// commit index covers everything committed by earlier leaders).
    pub(crate) fn noop_committed(&self) -> bool {
        self.log.term_at(self.log.commit) == Some(self.term)
    }

    /// Leader: recomputes the commit index from the voters' match indexes.
    /// Our own log counts only as far as it is durable. Only an entry of
    /// the current term may be committed by counting replicas (§5.4.2,
    /// Figure 8); earlier entries commit with it.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        let own = (self.cfg.id, self.log.persisted);
        let peers = self.progress.iter().map(|p| (p.id, p.match_index));
        let candidate = self
            .voters
            .quorum_index(std::iter::once(own).chain(peers), &mut scratch);
        self.scratch = scratch;
        if candidate <= self.log.commit || self.log.term_at(candidate) != Some(self.term) {
            return false;
        }
        self.log.commit_to(candidate);
        // Followers learn the new commit index with the next append.
        self.mark_all_dirty();
        if self.read_only.has_waiting_noop() && self.noop_committed() {
            for ctx in self.read_only.take_waiting_noop() {
                self.start_read(ctx);
            }
        }
        true
    }

    /// Leader: a read whose no-op condition holds enters a ReadIndex round.
    pub(crate) fn start_read(&mut self, ctx: u64) {
        let commit = self.log.commit;
        if self.voters.is_self_majority() {
            self.read_only.confirm_now(ctx, commit);
        } else {
            self.read_only.add(ctx, commit);
        }
    }

    /// Leader: confirms every ReadIndex round a majority has echoed.
    fn check_read_quorum(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        // We always agree with ourselves.
        let own = (self.cfg.id, u64::MAX);
        let peers = self.progress.iter().map(|p| (p.id, p.read_ack));
        let confirmed = self
            .voters
            .quorum_index(std::iter::once(own).chain(peers), &mut scratch);
        self.scratch = scratch;
        if confirmed > 0 {
            self.read_only.confirm_up_to(confirmed);
        }
    }

    /// Leader: a heartbeat to every peer. It checks consistency only at the
    /// peer's match index (which always holds), carries the commit index and
    /// the newest ReadIndex round, and its reply unpauses probing.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let read_ctx = self.read_only.round_to_confirm();
        self.read_only.needs_broadcast = false;
        for i in 0..self.progress.len() {
            let (to, m) = (self.progress[i].id, self.progress[i].match_index);
            let (prev, prev_term) = match self.log.term_at(m) {
                Some(t) => (m, t),
                // The match point is compacted: index 0 always matches
                // (every node treats its committed prefix as matching).
                None => (0, 0),
            };
            let leader_commit = self.log.commit;
            let known = prev.min(leader_commit);
            self.progress[i].sent_commit = self.progress[i].sent_commit.max(known);
            self.send(
                to,
                MessageBody::AppendEntries {
                    prev_log_index: prev,
                    prev_log_term: prev_term,
                    entries: Vec::new(),
                    leader_commit,
                    read_ctx,
                },
            );
        }
    }

    /// Leader: builds the messages every dirty peer is due, right before a
    /// Ready is handed out.
    pub(crate) fn flush_sends(&mut self) {
        if self.read_only.needs_broadcast {
            self.broadcast_heartbeat();
        }
        for i in 0..self.progress.len() {
            if !self.progress[i].dirty {
                continue;
            }
            self.progress[i].dirty = false;
            match self.progress[i].state {
                ProgressState::Probe => {
                    if !self.progress[i].probe_sent {
                        self.send_append(i, true);
                    }
                }
                ProgressState::Replicate => {
                    while self.progress[i].state == ProgressState::Replicate
                        && self.progress[i].next_index <= self.log.last_index()
                        && !self.progress[i].inflights.full()
                    {
                        if !self.send_append(i, false) {
                            break;
                        }
                    }
                    let pr = &self.progress[i];
                    if pr.state == ProgressState::Replicate
                        && pr.sent_commit < self.log.commit
                        && !pr.inflights.full()
                    {
                        self.send_append(i, true);
                    }
                }
                ProgressState::Snapshot => {}
            }
        }
    }

    /// Leader: sends peer `i` the entries from its `next_index` (or a
    /// snapshot when they are compacted). Returns false when nothing was
    /// sent.
    fn send_append(&mut self, i: usize, allow_empty: bool) -> bool {
        let next = self.progress[i].next_index;
        let prev = next - 1;
        let Some(prev_term) = self.log.term_at(prev) else {
            // The peer needs entries we no longer hold.
            let meta = self.log.snapshot();
            let to = self.progress[i].id;
            self.progress[i].become_snapshot(meta.index);
            self.send(to, MessageBody::InstallSnapshot { meta });
            return true;
        };
        let entries = self.log.entries_from(
            next,
            self.cfg.max_entries_per_msg,
            self.cfg.max_bytes_per_msg,
        );
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let commit = self.log.commit;
        let read_ctx = self.read_only.round_to_confirm();
        let pr = &mut self.progress[i];
        match pr.state {
            ProgressState::Replicate => {
                if let Some(last) = entries.last() {
                    // Optimistic: assume delivery; a rejection rewinds.
                    pr.next_index = last.index + 1;
                    pr.inflights.add(last.index);
                }
            }
            ProgressState::Probe => pr.probe_sent = true,
            ProgressState::Snapshot => return false,
        }
        // The follower caps the commit index at what this message vouches
        // for, so that is what the peer will know.
        pr.sent_commit = pr.sent_commit.max(commit.min(prev + entries.len() as u64));
        let to = pr.id;
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: commit,
                read_ctx,
            },
        );
        true
    }

    /// Follower: AppendEntries from the leader of our term (§5.3).
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
        read_ctx: u64,
    ) {
        // Malformed input is dropped, never trusted.
        let contiguous = entries
            .iter()
            .enumerate()
            .all(|(k, e)| prev.checked_add(1 + k as u64) == Some(e.index) && e.term <= self.term);
        if !contiguous {
            return;
        }
        match self.log.maybe_append(prev, prev_term, entries) {
            Some(last_new) => {
                // Only what this message vouches for is known to match the
                // leader; anything beyond it may be a stale suffix.
                self.log.commit_to(leader_commit.min(last_new));
                let match_index = last_new.max(self.log.commit);
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        success: true,
                        match_index,
                        conflict_term: 0,
                        conflict_index: 0,
                        read_ctx,
                    },
                );
            }
            None => {
                let (conflict_term, conflict_index) = self.log.conflict_hint(prev);
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        success: false,
                        match_index: self.log.last_index(),
                        conflict_term,
                        conflict_index,
                        read_ctx,
                    },
                );
            }
        }
    }

    /// Leader: a peer answered an AppendEntries of our term.
    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: u64,
        conflict_term: u64,
        conflict_index: u64,
        read_ctx: u64,
    ) {
        let last = self.log.last_index();
        let stall_ticks = (self.cfg.election_ticks / 2).max(1);
        let Some(i) = self.progress.iter().position(|p| p.id == from) else {
            return;
        };
        // Any reply in our term proves the peer still recognises us.
        self.progress[i].recent_active = true;
        if read_ctx > 0 {
            let pr = &mut self.progress[i];
            pr.read_ack = pr.read_ack.max(read_ctx);
            self.check_read_quorum();
        }
        if match_index > last && success {
            // The peer claims entries we never had: a corrupted or forged
            // reply. Ignore it rather than commit on it.
            return;
        }
        let pr = &mut self.progress[i];
        if success {
            if pr.maybe_update(match_index) {
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => {
                        pr.become_replicate()
                    }
                    ProgressState::Replicate | ProgressState::Snapshot => {}
                }
                pr.dirty = true;
                self.maybe_commit();
                self.maybe_send_timeout_now(from);
            } else {
                match pr.state {
                    // A heartbeat reply (or a duplicate): the peer is alive,
                    // probe again.
                    ProgressState::Probe => {
                        pr.probe_sent = false;
                        pr.dirty = true;
                    }
                    ProgressState::Replicate
                        if pr.next_index - 1 > pr.match_index
                            && pr.ticks_since_progress >= stall_ticks =>
                    {
                        // The peer answers, yet entries sent long ago are
                        // still unacknowledged: they were lost. Probe from
                        // the match point again.
                        let next = pr.match_index + 1;
                        pr.become_probe(next);
                        pr.dirty = true;
                    }
                    _ => {}
                }
            }
        } else {
            if pr.state == ProgressState::Snapshot {
                return;
            }
            if conflict_term == 0 && match_index < pr.match_index {
                // The peer's log ends before entries it once acknowledged:
                // it lost its storage (a wiped data dir restarted under the
                // same id). Forget the old match and probe from its real end;
                // the send path falls back to InstallSnapshot when that lies
                // in our compacted prefix. A stale, reordered reply can take
                // this path too; that only costs a resend, because commit
                // never moves backwards and the next ack restores the match.
                pr.match_index = match_index;
                pr.become_probe(match_index + 1);
                pr.dirty = true;
                return;
            }
            if pr.state == ProgressState::Replicate && conflict_term == 0 {
                // "My log is too short" while streaming: an earlier append
                // of the pipeline is late (reordered) or lost. Rewinding now
                // would resend the whole window for every late message; a
                // loss shows up as heartbeat replies without progress, which
                // fall back to probing (above).
                return;
            }
            // Fast backtracking (§5.3): skip a whole conflicting term per
            // round trip instead of one entry.
            let hint = if conflict_term == 0 {
                conflict_index
            } else {
                match self.log.last_index_of_term(conflict_term, last) {
                    Some(j) => j + 1,
                    None => conflict_index,
                }
            };
            let pr = &mut self.progress[i];
            let next = hint.min(last + 1).max(pr.match_index + 1);
            pr.become_probe(next);
            pr.dirty = true;
        }
    }

    /// Follower: the leader's InstallSnapshot, stepped in by the runtime
    /// once the image is staged (§7).
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if meta.index > self.log.commit {
            if self.log.term_at(meta.index) == Some(meta.term) {
                // We already hold the entry the snapshot ends at, hence
                // (log matching) everything before it: no install needed.
                self.log.commit_to(meta.index);
            } else {
                self.log.reset_to_snapshot(meta);
                self.pending_snapshot = Some(meta);
            }
        }
        // Either way our log now matches the leader's up to our commit index.
        let last_index = self.log.commit;
        self.send(
            from,
            MessageBody::InstallSnapshotResponse {
                last_index,
                success: true,
            },
        );
    }

    /// Leader: a peer answered an InstallSnapshot of our term.
    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        last_index: u64,
        success: bool,
    ) {
        let last = self.log.last_index();
        let Some(pr) = self.progress_mut(from) else {
            return;
        };
        pr.recent_active = true;
        if success && last_index <= last {
            pr.maybe_update(last_index);
            if pr.state != ProgressState::Replicate {
                pr.become_replicate();
            }
            pr.dirty = true;
            self.maybe_commit();
        } else if pr.state == ProgressState::Snapshot {
            let next = pr.match_index + 1;
            pr.become_probe(next);
            pr.probe_sent = true;
        }
    }
}
