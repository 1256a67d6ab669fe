//! The simulated network: loss, delay (and so reordering), duplication,
//! late replays, and partitions (symmetric, one-way, aimed at the leader)
//! that change over time.

use rand::Rng;

use super::cluster::{Event, Sim, Transfer};
use super::TICK;
use crate::node::Inbound;
use crate::raft::{Message, MessageBody};
use crate::storage::mem::MemSnapshot;

impl Sim {
    /// Sends `m`, which node `from` sent at time `at`, through the faulty
    /// network.
    pub(super) fn send(&mut self, from: usize, m: Message, at: u64) {
        let to = (m.to - 1) as usize;
        let n = self.nodes.len();
        if self.sc.replay > 0.0 && self.chaos {
            // Keep every election message and a sample of the rest.
            let election = matches!(
                m.body,
                MessageBody::RequestVote { .. }
                    | MessageBody::RequestVoteResponse { .. }
                    | MessageBody::PreVote { .. }
                    | MessageBody::PreVoteResponse { .. }
            );
            if election || self.rng.gen_bool(0.05) {
                if self.history.len() >= 64 {
                    let k = self.rng.gen_range(0..self.history.len());
                    self.history.swap_remove(k);
                }
                self.history.push(m.clone());
            }
        }
        let lost = self.blocked[from * n + to] || (self.loss > 0.0 && self.rng.gen_bool(self.loss));
        if lost {
            self.stats().dropped += 1;
            if self.shared.trace.borrow().enabled() {
                let s = summarize(&m);
                self.record(|| format!("DROP {s}"));
            }
            return;
        }
        let mut delay = self.rng.gen_range(1..=self.sc.max_delay);
        if self.long_delay > 0.0 && self.rng.gen_bool(self.long_delay) {
            delay += self.rng.gen_range(1..=self.sc.long_delay_ticks * TICK);
        }
        if self.duplicate > 0.0 && self.rng.gen_bool(self.duplicate) {
            // A duplicate is often a late retransmission: replayed long
            // after the original, into a later term.
            let d2 = if self.rng.gen_bool(0.5) {
                self.rng.gen_range(1..=self.sc.max_delay)
            } else {
                self.rng.gen_range(1..=self.sc.long_delay_ticks * TICK)
            };
            self.schedule_at(at + d2, Event::Deliver(m.clone()));
        }
        self.schedule_at(at + delay, Event::Deliver(m));
    }

    /// Starts a snapshot transfer node `from` began at time `at`: the image
    /// arrives whole after a network delay, or the transfer fails.
    pub(super) fn send_snapshot(
        &mut self,
        from: usize,
        message: Message,
        source: MemSnapshot,
        at: u64,
    ) {
        let to = (message.to - 1) as usize;
        let n = self.nodes.len();
        let incarnation = self.nodes[from].incarnation;
        let lost = self.blocked[from * n + to] || (self.loss > 0.0 && self.rng.gen_bool(self.loss));
        let delay = self.rng.gen_range(1..=self.sc.max_delay);
        if lost {
            self.stats().dropped += 1;
            let peer = message.to;
            self.schedule_at(
                at + 2 * delay + 1,
                Event::SnapshotReport {
                    node: from,
                    incarnation,
                    peer,
                    success: false,
                },
            );
            return;
        }
        self.schedule_at(
            at + delay,
            Event::SnapshotArrive(Box::new(Transfer {
                from,
                incarnation,
                message,
                source,
            })),
        );
    }

    /// A message arrives at its destination (unless cut off or down).
    pub(super) fn deliver(&mut self, m: Message) -> Result<(), String> {
        let (from, to) = ((m.from - 1) as usize, (m.to - 1) as usize);
        let n = self.nodes.len();
        if self.blocked[from * n + to] || self.nodes[to].rl.is_none() {
            self.stats().dropped += 1;
            return Ok(());
        }
        self.stats().delivered += 1;
        if self.shared.trace.borrow().enabled() {
            let s = summarize(&m);
            self.record(|| format!("recv {s}"));
        }
        // Messages queued behind a busy node share a batch, as the real
        // transport batches whatever is queued for a peer.
        let inbound = &mut self.nodes[to].inbox.inbound;
        match inbound.back_mut() {
            Some(Inbound::Messages(batch)) => batch.push(m),
            _ => inbound.push_back(Inbound::Messages(vec![m])),
        }
        self.run_node(to)
    }

    /// Delivers a copy of an old message (the network may duplicate and
    /// delay anything, arbitrarily long).
    pub(super) fn replay(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        self.schedule(TICK, Event::Replay);
        if self.history.is_empty() || !self.rng.gen_bool(self.sc.replay) {
            return Ok(());
        }
        let m = self.history[self.rng.gen_range(0..self.history.len())].clone();
        if self.shared.trace.borrow().enabled() {
            let s = summarize(&m);
            self.record(|| format!("REPLAY {s}"));
        }
        self.deliver(m)
    }

    /// Switches to a new random partition layout.
    pub(super) fn change_partition(&mut self) {
        if !self.chaos {
            return;
        }
        let n = self.nodes.len();
        self.blocked.iter_mut().for_each(|b| *b = false);
        let kind = self.rng.gen_range(0..8);
        // Faults aimed at the leader cause the most elections, and the
        // interesting histories (Figure 8) need many of them.
        let leader = self.current_leader();
        let target = match leader {
            Some(l) if kind >= 4 => l,
            _ => self.rng.gen_range(0..n),
        };
        match kind {
            0 => {} // heal
            1 | 4 | 5 => {
                // Isolate one node (often the leader).
                for y in 0..n {
                    if y != target {
                        self.blocked[target * n + y] = true;
                        self.blocked[y * n + target] = true;
                    }
                }
            }
            2 => {
                // Split into two sides.
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for x in 0..n {
                    for y in 0..n {
                        if side[x] != side[y] {
                            self.blocked[x * n + y] = true;
                        }
                    }
                }
            }
            6 => {
                // The leader hears nobody, but is still heard.
                for y in (0..n).filter(|&y| y != target) {
                    self.blocked[y * n + target] = true;
                }
            }
            7 => {
                // The leader hears everybody, but nobody hears it.
                for y in (0..n).filter(|&y| y != target) {
                    self.blocked[target * n + y] = true;
                }
            }
            _ => {
                // A few one-way cuts.
                for _ in 0..self.rng.gen_range(1..=n) {
                    let (x, y) = (self.rng.gen_range(0..n), self.rng.gen_range(0..n));
                    if x != y {
                        self.blocked[x * n + y] = true;
                    }
                }
            }
        }
        self.stats().partitions += 1;
        if self.shared.trace.borrow().enabled() {
            let cuts: Vec<String> = (0..n * n)
                .filter(|&k| self.blocked[k])
                .map(|k| format!("{}->{}", k / n + 1, k % n + 1))
                .collect();
            self.record(|| format!("PARTITION kind={kind} cut=[{}]", cuts.join(" ")));
        }
        // Mostly short-lived layouts, sometimes one that lasts long enough
        // for the other side to elect a leader and move on.
        let next = if self.rng.gen_bool(0.25) {
            self.rng.gen_range(15..=50)
        } else {
            self.rng.gen_range(1..=2 * self.sc.partition_every_ticks)
        };
        self.schedule(next * TICK, Event::Partition);
    }
}

/// A one-line description of a message for the trace.
pub(super) fn summarize(m: &Message) -> String {
    use MessageBody as B;
    let body = match &m.body {
        B::PreVote {
            last_log_index,
            last_log_term,
        } => format!("PreVote(last {last_log_index}@{last_log_term})"),
        B::PreVoteResponse { granted } => format!("PreVoteResp({granted})"),
        B::RequestVote {
            last_log_index,
            last_log_term,
            transfer,
        } => format!(
            "Vote(last {last_log_index}@{last_log_term}{})",
            if *transfer { ", transfer" } else { "" }
        ),
        B::RequestVoteResponse { granted } => format!("VoteResp({granted})"),
        B::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            read_ctx,
        } => format!(
            "Append(prev {prev_log_index}@{prev_log_term}, {} entries{}, commit {leader_commit}, rctx {read_ctx})",
            entries.len(),
            entries
                .last()
                .map(|e| format!(" to {}@{}", e.index, e.term))
                .unwrap_or_default()
        ),
        B::AppendEntriesResponse {
            success,
            match_index,
            conflict_term,
            conflict_index,
            read_ctx,
        } => format!(
            "AppendResp({success}, match {match_index}, conflict {conflict_index}@{conflict_term}, rctx {read_ctx})"
        ),
        B::InstallSnapshot { meta } => format!("InstallSnapshot({}@{})", meta.index, meta.term),
        B::InstallSnapshotResponse {
            last_index,
            success,
        } => format!("InstallSnapshotResp({success}, last {last_index})"),
        B::TimeoutNow => "TimeoutNow".into(),
    };
    format!("n{}->n{} t{} {body}", m.from, m.to, m.term)
}
