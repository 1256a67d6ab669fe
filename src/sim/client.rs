//! Simulated clients: writes (plain, CAS, deletes, batches) and ReadIndex
//! reads against random nodes, with the read check.
//!
//! A write *completes* when the node it was proposed to applies the entry
//! at the returned index with the returned term. A read must observe every
//! write that completed before it began (in fact every entry any replica
//! had applied by then): its ReadIndex must be at least that index, and
//! the value it reads must be exactly the reference state at the index the
//! node has applied when it answers.

use rand::Rng;

use super::cluster::{Event, Sim};
use super::TICK;
use crate::kv::KvCommand;
use crate::raft::{Entry, RaftError, ReadState};
use crate::storage::StateMachine;

/// Keys the clients fight over (few, so CAS and reads meet writes).
const KEYS: &[&str] = &["a", "b", "c", "d", "e"];

/// Ticks before a client gives up on an operation.
const OP_TIMEOUT_TICKS: u64 = 40;

/// What a client is waiting for.
#[derive(Debug)]
enum Op {
    Idle,
    Write {
        node: usize,
        incarnation: u64,
        last: u64,
        term: u64,
    },
    Read {
        node: usize,
        incarnation: u64,
        ctx: u64,
        key: String,
        /// Highest index applied anywhere when the read started.
        min_index: u64,
    },
}

/// One simulated client.
#[derive(Debug)]
pub(super) struct Client {
    op: Op,
    /// Bumped whenever `op` changes, so stale timers are recognised.
    op_seq: u64,
    /// Leader hint from the last redirect.
    hint: Option<usize>,
    /// Counter making written values unique.
    writes: u64,
    id: usize,
}

impl Client {
    pub(super) fn new(id: usize) -> Self {
        Client {
            op: Op::Idle,
            op_seq: 0,
            hint: None,
            writes: 0,
            id,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        matches!(self.op, Op::Idle)
    }
}

impl Sim {
    /// Moves client `c` to idle and schedules its next operation.
    fn client_idle(&mut self, c: usize, delay: u64) {
        let cl = &mut self.clients[c];
        cl.op = Op::Idle;
        cl.op_seq += 1;
        let seq = cl.op_seq;
        self.schedule(delay.max(1), Event::Client(c, seq));
    }

    fn think(&mut self) -> u64 {
        self.rng.gen_range(0..=self.sc.think_ticks * TICK) + 1
    }

    /// A client timer fired.
    pub(super) fn client_act(&mut self, c: usize, seq: u64) -> Result<(), String> {
        if self.clients[c].op_seq != seq {
            return Ok(()); // stale timer
        }
        if !self.clients[c].is_idle() {
            // The operation timed out: its outcome is unknown.
            self.stats.abandoned += 1;
            let id = self.clients[c].id;
            self.record(|| format!("client{id} gives up"));
            let d = self.think();
            self.client_idle(c, d);
            return Ok(());
        }
        if !self.clients_active() {
            return Ok(());
        }
        let n = self.nodes.len();
        let node = match self.clients[c].hint.take() {
            Some(h) if self.rng.gen_bool(0.8) => h,
            _ => self.rng.gen_range(0..n),
        };
        if self.nodes[node].core.is_none() {
            let d = self.rng.gen_range(1..=TICK);
            self.client_idle(c, d);
            return Ok(());
        }
        if self.rng.gen_bool(self.sc.read_ratio) {
            self.start_read(c, node)
        } else {
            self.start_write(c, node)
        }
    }

    fn redirected(&mut self, c: usize, e: RaftError) {
        self.stats.redirects += 1;
        // Follow a leader hint at once; without one an election is probably
        // under way, so back off a little.
        let d = if let RaftError::NotLeader { leader: Some(l) } = e {
            self.clients[c].hint = Some((l - 1) as usize);
            self.rng.gen_range(1..=TICK / 2)
        } else {
            self.rng.gen_range(TICK..=3 * TICK)
        };
        self.client_idle(c, d);
    }

    fn start_read(&mut self, c: usize, node: usize) -> Result<(), String> {
        let key = KEYS[self.rng.gen_range(0..KEYS.len())].to_string();
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let core = self.nodes[node].core.as_mut().expect("checked up");
        if let Err(e) = core.read_index(ctx) {
            self.redirected(c, e);
            return Ok(());
        }
        // Stronger than "every write acknowledged before the read began":
        // every entry any replica had applied. Still sound for ReadIndex:
        // the leader that made it committed has a commit index at least that
        // high, any later leader's no-op commits after it, and an earlier
        // (deposed) leader cannot get a majority to confirm a round that
        // starts after the newer leader was elected.
        let min_index = self.checker.applied_len().max(self.completed_max);
        let id = self.clients[c].id;
        let nid = self.nodes[node].id;
        self.record(|| {
            format!("client{id} read {key} at n{nid} ctx {ctx} (must see ≥ {min_index})")
        });
        let cl = &mut self.clients[c];
        cl.op = Op::Read {
            node,
            incarnation: self.nodes[node].incarnation,
            ctx,
            key,
            min_index,
        };
        cl.op_seq += 1;
        let seq = cl.op_seq;
        self.schedule(OP_TIMEOUT_TICKS * TICK, Event::Client(c, seq));
        self.pump(node)
    }

    fn random_command(&mut self, c: usize) -> KvCommand {
        let key = KEYS[self.rng.gen_range(0..KEYS.len())].to_string();
        let cl = &mut self.clients[c];
        cl.writes += 1;
        let value = format!("c{}-{}", cl.id, cl.writes);
        let roll: f64 = self.rng.gen();
        // CAS against the newest known state of the key, sometimes a stale
        // or absent-only one: all three outcomes must replicate alike.
        let known = self
            .checker
            .value_at(&key, self.checker.applied_len())
            .map_or(0, |(_, i)| i);
        if roll < 0.6 {
            KvCommand::Put {
                key,
                value,
                cas: None,
            }
        } else if roll < 0.75 {
            KvCommand::Put {
                key,
                value,
                cas: Some(known),
            }
        } else if roll < 0.85 {
            KvCommand::Put {
                key,
                value,
                cas: Some(0),
            }
        } else {
            KvCommand::Delete {
                key,
                cas: if self.rng.gen_bool(0.5) {
                    None
                } else {
                    Some(known)
                },
            }
        }
    }

    fn start_write(&mut self, c: usize, node: usize) -> Result<(), String> {
        let count = if self.rng.gen_bool(0.7) {
            1
        } else {
            self.rng.gen_range(2..=5)
        };
        let cmds: Vec<Vec<u8>> = (0..count)
            .map(|_| self.random_command(c).encode())
            .collect();
        let core = self.nodes[node].core.as_mut().expect("checked up");
        let out = match core.propose(cmds) {
            Ok(out) => out,
            Err(e) => {
                self.redirected(c, e);
                return Ok(());
            }
        };
        let last = out.first_index + count - 1;
        let id = self.clients[c].id;
        let nid = self.nodes[node].id;
        self.record(|| {
            format!(
                "client{id} propose {count} at n{nid}: {}..={last} term {}",
                out.first_index, out.term
            )
        });
        let cl = &mut self.clients[c];
        cl.op = Op::Write {
            node,
            incarnation: self.nodes[node].incarnation,
            last,
            term: out.term,
        };
        cl.op_seq += 1;
        let seq = cl.op_seq;
        self.schedule(OP_TIMEOUT_TICKS * TICK, Event::Client(c, seq));
        self.pump(node)
    }

    /// Node `node` crashed: operations waiting on it have unknown outcomes.
    pub(super) fn abandon_ops_on(&mut self, node: usize) {
        for c in 0..self.clients.len() {
            let waiting_here = match self.clients[c].op {
                Op::Write { node: n, .. } | Op::Read { node: n, .. } => n == node,
                Op::Idle => false,
            };
            if waiting_here {
                self.stats.abandoned += 1;
                let d = self.think();
                self.client_idle(c, d);
            }
        }
    }

    /// Node `node` applied `entries`: completes writes waiting there.
    pub(super) fn on_applied(&mut self, node: usize, entries: &[Entry]) -> Result<(), String> {
        let (first, last_applied) = (entries[0].index, entries[entries.len() - 1].index);
        let inc = self.nodes[node].incarnation;
        for c in 0..self.clients.len() {
            let Op::Write {
                node: n,
                incarnation,
                last,
                term,
            } = self.clients[c].op
            else {
                continue;
            };
            if n != node || incarnation != inc || last > last_applied {
                continue;
            }
            if last < first {
                // Skipped (a snapshot covered it): outcome unknown here.
                self.stats.abandoned += 1;
            } else if entries[(last - first) as usize].term == term {
                // Same term at the last index ⇒ (log matching) the whole
                // batch is ours, committed and applied.
                self.completed_max = self.completed_max.max(last);
                self.stats.writes_ok += 1;
                let id = self.clients[c].id;
                self.record(|| format!("client{id} write ok up to {last}"));
            } else {
                self.stats.writes_failed += 1;
            }
            let d = self.think();
            self.client_idle(c, d);
        }
        Ok(())
    }

    /// Node `node` released a ReadIndex read: check and answer it.
    pub(super) fn on_read_state(&mut self, node: usize, rs: ReadState) -> Result<(), String> {
        let inc = self.nodes[node].incarnation;
        let Some(c) = self.clients.iter().position(|cl| {
            matches!(&cl.op, Op::Read { node: n, incarnation, ctx, .. }
                if *n == node && *incarnation == inc && *ctx == rs.ctx)
        }) else {
            return Ok(()); // the client gave up already
        };
        let Op::Read { key, min_index, .. } = &self.clients[c].op else {
            unreachable!("matched above")
        };
        let (key, min_index) = (key.clone(), *min_index);
        let sm = &self.nodes[node].sm;
        let applied = sm.applied_index();
        let nid = self.nodes[node].id;
        if applied < rs.index {
            return Err(format!(
                "n{nid} released read ctx {} at index {} with only {applied} applied",
                rs.ctx, rs.index
            ));
        }
        if rs.index < min_index {
            return Err(format!(
                "stale read: n{nid} served ctx {} at read index {} but index {min_index} had been \
                 applied (and a write there may have completed) before the read began",
                rs.ctx, rs.index
            ));
        }
        let got = sm.get(&key).map_err(|e| e.to_string())?;
        let want = self.checker.value_at(&key, applied);
        if got != want {
            return Err(format!(
                "read of {key:?} at n{nid} (applied {applied}) returned {got:?}, reference has {want:?}"
            ));
        }
        self.stats.reads_ok += 1;
        let id = self.clients[c].id;
        self.record(|| format!("client{id} read ok {key}={got:?} at index {}", rs.index));
        let d = self.think();
        self.client_idle(c, d);
        Ok(())
    }
}
