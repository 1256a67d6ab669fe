//! Simulated clients: writes (plain, CAS, deletes, several at once) and
//! linearizable reads against random nodes, through the Raft loop's own
//! entry points ([`Proposal`], [`ReadRequest`] with their reply channels),
//! so the loop's bookkeeping of waiting writes and ReadIndex rounds is what
//! gets checked.
//!
//! What a client is told must be true:
//! * a write acknowledged as applied at index `N` with result `R` is the
//!   canonical entry at `N`, and the reference state machine gives `R`
//!   there;
//! * a write refused as [`WriteError::NotApplied`] never appears in the
//!   canonical sequence;
//! * a read observes every write that completed before it began (in fact
//!   every entry any replica had applied by then), and returns exactly the
//!   reference state at the index the node has applied when it answers.
//!
//! And nothing is left hanging that the loop could have answered:
//! * a read the loop took is answered once the node is no longer leader;
//! * a write the loop took is answered once the node applied (or a
//!   snapshot covered) the index where its command was committed;
//! * a node stopping cleanly answers everything it took.

use rand::Rng;
use tokio::sync::oneshot::{self, error::TryRecvError};

use super::checker::digest;
use super::cluster::{Event, Sim};
use super::TICK;
use crate::kv::{
    Command, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvError,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::node::{Applied, Proposal, ReadError, ReadRequest, WriteError};
use crate::raft::{EntryPayload, Role};
use crate::storage::StateMachine;

/// Keys the clients fight over (few, so CAS and reads meet writes).
const KEYS: &[&str] = &["a", "b", "c", "d", "e"];
/// The end of a range over every key of [`KEYS`].
const KEYS_END: &str = "f";

/// Ticks before a client gives up on an operation.
const OP_TIMEOUT_TICKS: u64 = 40;

/// One write of an operation.
#[derive(Debug)]
struct PendingWrite {
    op: u64,
    digest: u64,
    /// The command is a put of a value no other write carries, so its
    /// digest identifies it in the canonical sequence (a delete may repeat
    /// another's bytes).
    unique: bool,
    reply: Option<oneshot::Receiver<Result<Applied, WriteError>>>,
}

/// What a client is waiting for.
#[derive(Debug)]
enum Op {
    Idle,
    Write {
        node: usize,
        incarnation: u64,
        writes: Vec<PendingWrite>,
    },
    Read {
        node: usize,
        incarnation: u64,
        op: u64,
        req: RangeRequest,
        /// Highest index applied anywhere when the read started.
        min_index: u64,
        reply: oneshot::Receiver<Result<(), ReadError>>,
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

/// What became of one reply.
enum Outcome<T> {
    Pending,
    /// The loop dropped it without answering (node down).
    Dropped,
    Answered(T),
}

fn outcome<T>(rx: &mut oneshot::Receiver<T>) -> Outcome<T> {
    match rx.try_recv() {
        Ok(v) => Outcome::Answered(v),
        Err(TryRecvError::Empty) => Outcome::Pending,
        Err(TryRecvError::Closed) => Outcome::Dropped,
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
            // The operation timed out: its outcome is unknown. Dropping the
            // replies tells the loop (a proposal not yet made is skipped).
            self.stats().abandoned += 1;
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
        if !self.nodes[node].serving() {
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

    fn redirected(&mut self, c: usize, leader: Option<u64>) {
        self.stats().redirects += 1;
        // Follow a leader hint at once; without one an election is probably
        // under way, so back off a little.
        let d = if let Some(l) = leader {
            self.clients[c].hint = Some((l - 1) as usize);
            self.rng.gen_range(1..=TICK / 2)
        } else {
            self.rng.gen_range(TICK..=3 * TICK)
        };
        self.client_idle(c, d);
    }

    /// A read of one key or of every key, now or (sometimes) at a past
    /// revision, sometimes with a limit.
    fn random_read(&mut self) -> RangeRequest {
        let key = KEYS[self.rng.gen_range(0..KEYS.len())];
        let mut req = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        if self.rng.gen_bool(0.3) {
            req.key = KEYS[0].as_bytes().to_vec();
            req.range_end = KEYS_END.as_bytes().to_vec();
            if self.rng.gen_bool(0.3) {
                req.limit = self.rng.gen_range(1..=3);
            }
        }
        if self.rng.gen_bool(0.3) {
            let now = {
                let checker = self.shared.checker.borrow();
                checker.revision_at(checker.applied_len())
            };
            req.revision = self.rng.gen_range(1..=now);
        }
        req
    }

    fn start_read(&mut self, c: usize, node: usize) -> Result<(), String> {
        let req = self.random_read();
        let op = self.next_op;
        self.next_op += 1;
        let (tx, rx) = oneshot::channel();
        self.nodes[node]
            .inbox
            .reads
            .push_back((op, ReadRequest { reply: tx }));
        // Stronger than "every write acknowledged before the read began":
        // every entry any replica had applied. Still sound for ReadIndex:
        // the leader that made it committed has a commit index at least that
        // high, any later leader's no-op commits after it, and an earlier
        // (deposed) leader cannot get a majority to confirm a round that
        // starts after the newer leader was elected.
        let min_index = self
            .shared
            .checker
            .borrow()
            .applied_len()
            .max(self.completed_max);
        let id = self.clients[c].id;
        let nid = self.nodes[node].id;
        self.record(|| {
            let key = String::from_utf8_lossy(&req.key);
            let rev = req.revision;
            format!("client{id} read {key} (rev {rev}) at n{nid} op {op} (must see ≥ {min_index})")
        });
        let cl = &mut self.clients[c];
        cl.op = Op::Read {
            node,
            incarnation: self.nodes[node].incarnation,
            op,
            req,
            min_index,
            reply: rx,
        };
        cl.op_seq += 1;
        let seq = cl.op_seq;
        self.schedule(OP_TIMEOUT_TICKS * TICK, Event::Client(c, seq));
        self.run_node(node)
    }

    /// A random write: puts (plain, CAS as a txn, create-only, with
    /// prev_kv), single-key and range deletes, multi-key transactions, and
    /// compactions (valid or already compacted or in the future). Returns
    /// the command and whether its bytes are unique in the run (it carries
    /// a value no other write carries).
    fn random_command(&mut self, c: usize) -> (Command, bool) {
        let key = KEYS[self.rng.gen_range(0..KEYS.len())].as_bytes().to_vec();
        let other = KEYS[self.rng.gen_range(0..KEYS.len())].as_bytes().to_vec();
        let cl = &mut self.clients[c];
        cl.writes += 1;
        let value = format!("c{}-{}", cl.id, cl.writes).into_bytes();
        let roll: f64 = self.rng.gen();
        // CAS against the newest known state of the key, sometimes a stale
        // or absent-only one: every outcome must replicate alike.
        let (known, now) = {
            let checker = self.shared.checker.borrow();
            (
                checker.mod_revision_now(&key),
                checker.revision_at(checker.applied_len()),
            )
        };
        let put = |key: Vec<u8>, value: Vec<u8>, prev_kv: bool| {
            RequestOp::Put(PutRequest {
                key,
                value,
                prev_kv,
                ..Default::default()
            })
        };
        let compare = |key: Vec<u8>, target: CompareTarget| Compare {
            key,
            range_end: Vec::new(),
            result: CompareResult::Equal,
            target,
        };
        if roll < 0.4 {
            let prev_kv = self.rng.gen_bool(0.2);
            (
                Command::Put(PutRequest {
                    key,
                    value,
                    prev_kv,
                    ..Default::default()
                }),
                true,
            )
        } else if roll < 0.55 {
            (
                Command::Txn(TxnRequest {
                    compare: vec![compare(key.clone(), CompareTarget::ModRevision(known))],
                    success: vec![put(key.clone(), value, false)],
                    failure: vec![RequestOp::Range(RangeRequest {
                        key,
                        ..Default::default()
                    })],
                }),
                true,
            )
        } else if roll < 0.62 {
            (
                Command::Txn(TxnRequest {
                    compare: vec![compare(key.clone(), CompareTarget::CreateRevision(0))],
                    success: vec![put(key, value, false)],
                    failure: Vec::new(),
                }),
                true,
            )
        } else if roll < 0.72 {
            // Two keys at once: both or neither.
            (
                Command::Txn(TxnRequest {
                    compare: vec![compare(key.clone(), CompareTarget::ModRevision(known))],
                    success: vec![
                        put(key.clone(), value.clone(), true),
                        put(other.clone(), value, false),
                    ],
                    failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                        key: other,
                        range_end: Vec::new(),
                        prev_kv: true,
                    })],
                }),
                true,
            )
        } else if roll < 0.85 {
            (
                Command::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: self.rng.gen_bool(0.5),
                }),
                false,
            )
        } else if roll < 0.92 {
            let (a, b) = if key <= other {
                (key, other)
            } else {
                (other, key)
            };
            let mut end = b;
            end.push(0);
            (
                Command::DeleteRange(DeleteRangeRequest {
                    key: a,
                    range_end: end,
                    prev_kv: self.rng.gen_bool(0.5),
                }),
                false,
            )
        } else {
            // Mostly below the current revision (a real compaction, or one
            // already done: refused), sometimes above it (refused).
            let revision = self.rng.gen_range(1..=now + 1);
            (
                Command::Compact(CompactionRequest {
                    revision,
                    physical: false,
                }),
                false,
            )
        }
    }

    fn start_write(&mut self, c: usize, node: usize) -> Result<(), String> {
        // Several at once exercise the loop's batching into one proposal.
        let count = if self.rng.gen_bool(0.7) {
            1
        } else {
            self.rng.gen_range(2..=5)
        };
        let mut writes = Vec::with_capacity(count);
        for _ in 0..count {
            let (cmd, unique) = self.random_command(c);
            let cmd = cmd.encode();
            let op = self.next_op;
            self.next_op += 1;
            let (tx, rx) = oneshot::channel();
            writes.push(PendingWrite {
                op,
                digest: digest(&EntryPayload::Command(cmd.clone())),
                unique,
                reply: Some(rx),
            });
            self.nodes[node]
                .inbox
                .proposals
                .push_back((op, Proposal { cmd, reply: tx }));
        }
        let id = self.clients[c].id;
        let nid = self.nodes[node].id;
        self.record(|| format!("client{id} proposes {count} at n{nid}"));
        let cl = &mut self.clients[c];
        cl.op = Op::Write {
            node,
            incarnation: self.nodes[node].incarnation,
            writes,
        };
        cl.op_seq += 1;
        let seq = cl.op_seq;
        self.schedule(OP_TIMEOUT_TICKS * TICK, Event::Client(c, seq));
        self.run_node(node)
    }

    /// Takes in every answer the loop of `node` (all nodes: `None`) has
    /// given, checking each.
    pub(super) fn poll_clients(&mut self, node: Option<usize>) -> Result<(), String> {
        for c in 0..self.clients.len() {
            let at = match &self.clients[c].op {
                Op::Idle => continue,
                Op::Read { node, .. } | Op::Write { node, .. } => *node,
            };
            if node.is_some_and(|n| n != at) {
                continue;
            }
            let op = std::mem::replace(&mut self.clients[c].op, Op::Idle);
            let op = match op {
                Op::Idle => Op::Idle,
                Op::Read { .. } => self.poll_read(c, op)?,
                Op::Write { .. } => self.poll_write(c, op)?,
            };
            // An operation that finished was replaced by `client_idle`.
            if !matches!(op, Op::Idle) {
                self.clients[c].op = op;
            }
        }
        Ok(())
    }

    fn poll_read(&mut self, c: usize, op: Op) -> Result<Op, String> {
        let Op::Read {
            node,
            incarnation,
            op: op_id,
            req,
            min_index,
            mut reply,
        } = op
        else {
            unreachable!("a read")
        };
        match outcome(&mut reply) {
            Outcome::Pending => Ok(Op::Read {
                node,
                incarnation,
                op: op_id,
                req,
                min_index,
                reply,
            }),
            Outcome::Dropped => {
                self.stats().abandoned += 1;
                let d = self.think();
                self.client_idle(c, d);
                Ok(Op::Idle)
            }
            Outcome::Answered(Err(ReadError::NotLeader { leader })) => {
                self.redirected(c, leader);
                Ok(Op::Idle)
            }
            Outcome::Answered(Err(ReadError::Unavailable(_))) => {
                let d = self.rng.gen_range(TICK..=3 * TICK);
                self.client_idle(c, d);
                Ok(Op::Idle)
            }
            Outcome::Answered(Ok(())) => {
                let nid = self.nodes[node].id;
                let rl = self.nodes[node]
                    .rl
                    .as_ref()
                    .filter(|_| self.nodes[node].incarnation == incarnation)
                    .ok_or_else(|| format!("n{nid} answered a read while down"))?;
                let store = rl.store();
                let applied = store.applied_index();
                if applied < min_index {
                    return Err(format!(
                        "stale read: n{nid} answered read op {op_id} with {applied} applied, \
                         but index {min_index} had been applied (and a write there may have \
                         completed) before the read began"
                    ));
                }
                let got = match store.range(&req) {
                    Ok(r) => Ok(r),
                    Err(crate::kv::ExecError::Kv(e)) => Err(e),
                    Err(crate::kv::ExecError::Store(e)) => return Err(e.to_string()),
                };
                let compacted = store.compact_revision().map_err(|e| e.to_string())?;
                let want = self.shared.checker.borrow().read_at(&req, applied);
                // The reference never compacts; a replica refuses exactly
                // the reads below its compact revision.
                let ok = match (&got, &want) {
                    (Err(KvError::Compacted { compact_revision }), _) => {
                        *compact_revision == compacted && req.revision < compacted
                    }
                    _ => got == want && (req.revision == 0 || req.revision >= compacted),
                };
                if !ok {
                    return Err(format!(
                        "read {req:?} at n{nid} (applied {applied}, compacted {compacted}) \
                         returned {got:?}, reference has {want:?}"
                    ));
                }
                self.stats().reads_ok += 1;
                let id = self.clients[c].id;
                self.record(|| format!("client{id} read ok at applied {applied}: {got:?}"));
                let d = self.think();
                self.client_idle(c, d);
                Ok(Op::Idle)
            }
        }
    }

    fn poll_write(&mut self, c: usize, op: Op) -> Result<Op, String> {
        let Op::Write {
            node,
            incarnation,
            mut writes,
        } = op
        else {
            unreachable!("a write")
        };
        let mut redirect = None;
        let mut backoff = false;
        for w in &mut writes {
            let Some(rx) = w.reply.as_mut() else {
                continue;
            };
            match outcome(rx) {
                Outcome::Pending => continue,
                Outcome::Dropped => {
                    self.stats().abandoned += 1;
                }
                Outcome::Answered(Ok(applied)) => {
                    self.shared.checker.borrow().check_acknowledged(
                        w.digest,
                        applied.index,
                        &applied.answer,
                    )?;
                    self.completed_max = self.completed_max.max(applied.index);
                    self.stats().writes_ok += 1;
                    let id = self.clients[c].id;
                    let index = applied.index;
                    self.record(|| format!("client{id} write ok at {index}"));
                }
                Outcome::Answered(Err(WriteError::NotApplied)) => {
                    if w.unique {
                        self.shared
                            .checker
                            .borrow_mut()
                            .check_not_applied(w.digest)?;
                    }
                    self.stats().writes_failed += 1;
                }
                Outcome::Answered(Err(WriteError::NotLeader { leader })) => {
                    redirect = Some(leader);
                }
                Outcome::Answered(Err(WriteError::Unknown(_))) => {
                    self.stats().abandoned += 1;
                }
                Outcome::Answered(Err(WriteError::Unavailable(_))) => {
                    backoff = true;
                }
            }
            w.reply = None;
        }
        if writes.iter().any(|w| w.reply.is_some()) {
            return Ok(Op::Write {
                node,
                incarnation,
                writes,
            });
        }
        match redirect {
            Some(leader) => self.redirected(c, leader),
            None if backoff => {
                let d = self.rng.gen_range(TICK..=3 * TICK);
                self.client_idle(c, d);
            }
            None => {
                let d = self.think();
                self.client_idle(c, d);
            }
        }
        Ok(Op::Idle)
    }

    /// After a round of node `i` (and [`Sim::poll_clients`]): nothing its
    /// loop took may be left hanging when it could have been answered.
    pub(super) fn check_stranded(&mut self, i: usize) -> Result<(), String> {
        let Some(rl) = self.nodes[i].rl.as_ref() else {
            return Ok(());
        };
        let inc = self.nodes[i].incarnation;
        let nid = self.nodes[i].id;
        let leader = rl.node().role() == Role::Leader;
        let applied = rl.store().applied_index();
        let inbox = &self.nodes[i].inbox;
        let queued = |op: u64| {
            inbox.reads.iter().any(|(o, _)| *o == op)
                || inbox.proposals.iter().any(|(o, _)| *o == op)
        };
        for cl in &self.clients {
            match &cl.op {
                Op::Read {
                    node,
                    incarnation,
                    op,
                    ..
                } if *node == i && *incarnation == inc && !leader && !queued(*op) => {
                    return Err(format!(
                        "n{nid} is no longer leader but left read op {op} (client{}) unanswered",
                        cl.id
                    ));
                }
                Op::Write {
                    node,
                    incarnation,
                    writes,
                } if *node == i && *incarnation == inc => {
                    let checker = self.shared.checker.borrow();
                    for w in writes.iter().filter(|w| w.reply.is_some() && w.unique) {
                        if queued(w.op) {
                            continue;
                        }
                        if let Some(at) = checker.applied_at(w.digest) {
                            if at <= applied {
                                return Err(format!(
                                    "n{nid} has applied {applied} but left the write committed \
                                     at {at} (op {}, client{}) unanswered",
                                    w.op, cl.id
                                ));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Node `i` (incarnation `inc`) stopped cleanly: every operation it had
    /// must have been answered, none dropped (its loop is gone, so a reply
    /// without a value was dropped).
    pub(super) fn check_answered_on_stop(&mut self, i: usize, inc: u64) -> Result<(), String> {
        let nid = self.nodes[i].id;
        for cl in &self.clients {
            let dropped = match &cl.op {
                Op::Read {
                    node,
                    incarnation,
                    reply,
                    ..
                } if *node == i && *incarnation == inc => reply.is_empty(),
                Op::Write {
                    node,
                    incarnation,
                    writes,
                } if *node == i && *incarnation == inc => writes
                    .iter()
                    .filter_map(|w| w.reply.as_ref())
                    .any(|rx| rx.is_empty()),
                _ => false,
            };
            if dropped {
                return Err(format!(
                    "n{nid} stopped cleanly without answering an operation of client{}",
                    cl.id
                ));
            }
        }
        self.poll_clients(Some(i))
    }
}
