//! The execution semantics of every command, written once over
//! [`MvccView`]: [`execute`] for log commands, [`read_range`] for reads.
//!
//! [`execute`] decides everything and changes nothing: it returns the
//! client's answer and the list of changes ([`Applied::events`]), which the
//! store then persists as one new revision. How a command runs:
//!
//! - It is validated first ([`crate::kv::validate`]); a refusal changes
//!   nothing.
//! - Writes go to an overlay over the view. Reads of the current state
//!   (range ops of a transaction, the previous record of a put, the keys a
//!   delete finds) see the overlay, so a transaction's later operations see
//!   its earlier writes, with `mod_revision` = the new revision. Reads at an
//!   explicit revision see the store's history only.
//! - All compares, nested ones included, are evaluated against the state
//!   before the command (etcd computes the whole branch path first).
//! - State-dependent checks (a range's revision against the revision
//!   *before* the command, `ignore_value`/`ignore_lease` on a missing key,
//!   later unknown leases) are made when the operation is reached, in
//!   execution order; a failure drops the overlay, so a transaction is
//!   all or nothing.
//! - Every change gets the next sub-revision (its index in `events`);
//!   the command creates a revision iff it changed at least one key.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::command::Command;
use super::compare;
use super::error::KvError;
use super::range::KeyRange;
use super::read;
use super::request::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use super::response::{
    CommandResponse, CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse,
    ResponseOp, TxnResponse,
};
use super::types::{Event, EventKind, KeyValue, Revisioned};
use super::validate::{validate_command, validate_range};
use super::view::MvccView;

/// The outcome of one command: what to answer, and what the store must
/// persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The client's answer.
    pub answer: Result<Revisioned<CommandResponse>, KvError>,
    /// The changes, in execution order: `events[i]` is the change with
    /// sub-revision `i` of the new revision ([`Applied::new_revision`]).
    /// A put event carries the key's full new record, a delete event the
    /// key (see [`Event`]); `prev_kv` is filled, for the watchers. Empty if
    /// nothing changed (then the revision stays).
    pub events: Vec<Event>,
    /// Set by a successful compaction: the store's new compact revision.
    pub compact_revision: Option<i64>,
}

impl Applied {
    /// The revision the store moves to, if the command changed anything.
    pub fn new_revision(&self) -> Option<i64> {
        self.events.first().map(|e| e.kv.mod_revision)
    }

    fn refused(e: KvError) -> Applied {
        Applied {
            answer: Err(e),
            events: Vec::new(),
            compact_revision: None,
        }
    }
}

/// Why a read or an execution stopped: the request's fault (an answer) or
/// the store's (a failure of the node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError<E> {
    /// The request was refused.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The store failed to read.
    #[error("store read failed: {0}")]
    Store(E),
}

/// Executes `cmd` against `view` without changing it (see the module doc).
/// `Err` only when the store failed; a refused command is an `Ok` whose
/// answer is the error.
pub fn execute<V: MvccView>(view: &V, cmd: &Command) -> Result<Applied, V::Error> {
    if let Err(e) = validate_command(cmd) {
        return Ok(Applied::refused(e));
    }
    let mut ex = Exec::new(view);
    let mut compact_revision = None;
    let result = match cmd {
        Command::Put(p) => ex.put(p).map(|r| r.map(CommandResponse::Put)),
        Command::DeleteRange(d) => ex
            .delete_range(d)
            .map(|r| r.map(CommandResponse::DeleteRange)),
        Command::Txn(t) => ex.txn(t).map(|body| Revisioned {
            revision: ex.revision_now(),
            body: CommandResponse::Txn(body),
        }),
        Command::Compact(c) => ex.compact(c).map(|new| {
            compact_revision = Some(new);
            Revisioned {
                revision: ex.base,
                body: CommandResponse::Compact(CompactionResponse {}),
            }
        }),
    };
    match result {
        Ok(answer) => Ok(Applied {
            answer: Ok(answer),
            events: ex.events,
            compact_revision,
        }),
        Err(ExecError::Kv(e)) => Ok(Applied::refused(e)),
        Err(ExecError::Store(e)) => Err(e),
    }
}

/// Serves a range read from `view` (validation included). The answer's
/// revision is the store's current one, also for a read at a past revision
/// (as etcd's header).
pub fn read_range<V: MvccView>(
    view: &V,
    req: &RangeRequest,
) -> Result<Revisioned<RangeResponse>, ExecError<V::Error>> {
    validate_range(req)?;
    Exec::new(view).range(req)
}

type Res<T, E> = Result<T, ExecError<E>>;

/// One command's execution: the view, the revision before the command, and
/// the overlay of its writes so far.
struct Exec<'v, V> {
    view: &'v V,
    /// The store's revision before the command.
    base: i64,
    /// The store's compact revision.
    compact: i64,
    /// Keys written so far → index of their put event in `events`, or
    /// `None` if deleted.
    writes: BTreeMap<Vec<u8>, Option<usize>>,
    /// Changes so far, in sub-revision order.
    events: Vec<Event>,
}

impl<'v, V: MvccView> Exec<'v, V> {
    fn new(view: &'v V) -> Self {
        Exec {
            view,
            base: view.revision(),
            compact: view.compact_revision(),
            writes: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The revision this command creates if it changes anything.
    fn new_revision(&self) -> i64 {
        self.base + 1
    }

    /// The revision as of now: the new one once something changed (etcd's
    /// header revision of each operation inside a transaction).
    fn revision_now(&self) -> i64 {
        if self.events.is_empty() {
            self.base
        } else {
            self.new_revision()
        }
    }

    fn put(&mut self, p: &PutRequest) -> Res<Revisioned<PutResponse>, V::Error> {
        self.check_lease(p.lease)?;
        let prev = self.get_now(&p.key)?;
        let old = match (&prev, p.ignore_value || p.ignore_lease) {
            (None, true) => return Err(KvError::KeyNotFound.into()),
            (old, _) => old.as_ref(),
        };
        let rev = self.new_revision();
        let value = match old {
            Some(old) if p.ignore_value => old.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match old {
            Some(old) if p.ignore_lease => old.lease,
            _ => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            // A put continues the key's life, or starts a new one.
            create_revision: old.map_or(rev, |o| o.create_revision),
            mod_revision: rev,
            version: old.map_or(1, |o| o.version + 1),
            value,
            lease,
        };
        let prev_kv = self.before_command(&p.key, prev.as_ref())?;
        self.record(
            p.key.clone(),
            Event {
                kind: EventKind::Put,
                kv,
                prev_kv,
            },
        );
        let body = PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        };
        Ok(Revisioned {
            revision: rev,
            body,
        })
    }

    fn delete_range(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Res<Revisioned<DeleteRangeResponse>, V::Error> {
        let mut doomed = Vec::new();
        self.scan_now(KeyRange::new(&d.key, &d.range_end), &mut |kv| {
            doomed.push(kv);
            ControlFlow::Continue(())
        })?;
        let rev = self.new_revision();
        for kv in &doomed {
            let prev_kv = self.before_command(&kv.key, Some(kv))?;
            self.record(
                kv.key.clone(),
                Event {
                    kind: EventKind::Delete,
                    kv: Event::delete_marker(kv.key.clone(), rev),
                    prev_kv,
                },
            );
        }
        let body = DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
        };
        // A delete that found nothing creates no revision (unless an
        // earlier operation of the transaction did).
        Ok(Revisioned {
            revision: self.revision_now(),
            body,
        })
    }

    fn range(&self, r: &RangeRequest) -> Res<Revisioned<RangeResponse>, V::Error> {
        // etcd checks a transaction's ranges against the revision before
        // the transaction, even once the transaction has written.
        if r.revision > self.base {
            return Err(KvError::FutureRevision.into());
        }
        if r.revision > 0 && r.revision < self.compact {
            return Err(KvError::Compacted {
                compact_revision: self.compact,
            }
            .into());
        }
        let fetch = read::fetch_limit(r);
        let mut kvs = Vec::new();
        let mut count: i64 = 0;
        let mut visit = |kv: KeyValue| {
            count += 1;
            if kvs.len() < fetch {
                kvs.push(kv);
            }
            ControlFlow::Continue(())
        };
        let range = KeyRange::new(&r.key, &r.range_end);
        if r.revision > 0 {
            self.view
                .scan(range, r.revision, &mut visit)
                .map_err(ExecError::Store)?;
        } else {
            self.scan_now(range, &mut visit)?;
        }
        Ok(Revisioned {
            revision: self.revision_now(),
            body: read::shape(r, kvs, count),
        })
    }

    fn txn(&mut self, t: &TxnRequest) -> Res<TxnResponse, V::Error> {
        let succeeded = self.compares_hold(&t.compare)?;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    /// Checks a compaction to `c.revision`; returns the new compact revision.
    fn compact(&self, c: &CompactionRequest) -> Res<i64, V::Error> {
        if c.revision <= self.compact {
            return Err(KvError::Compacted {
                compact_revision: self.compact,
            }
            .into());
        }
        if c.revision > self.base {
            return Err(KvError::FutureRevision.into());
        }
        Ok(c.revision)
    }

    /// HOOK(leases, issue 17): a put naming a non-zero lease must fail with
    /// [`KvError::LeaseNotFound`] when no such lease exists, before any
    /// other check of the put (etcd's order). Lease ids are opaque numbers
    /// until the lease table exists; then this asks it (through the view).
    fn check_lease(&self, lease: i64) -> Res<(), V::Error> {
        let _ = lease;
        Ok(())
    }

    /// Whether every compare holds, against the state before the command.
    fn compares_hold(&self, compares: &[Compare]) -> Res<bool, V::Error> {
        for c in compares {
            if !self.compare(c).map_err(ExecError::Store)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One compare, against the state before the command: every key of the
    /// range must satisfy it; no key at all counts as an absent key.
    fn compare(&self, c: &Compare) -> Result<bool, V::Error> {
        let range = KeyRange::new(&c.key, &c.range_end);
        if let KeyRange::Single(key) = range {
            return Ok(match self.view.get(key, self.base)? {
                Some(kv) => compare::holds(c, &kv),
                None => compare::holds_when_absent(c),
            });
        }
        let (mut seen, mut all_hold) = (false, true);
        self.view.scan(range, self.base, &mut |kv| {
            seen = true;
            if compare::holds(c, &kv) {
                ControlFlow::Continue(())
            } else {
                all_hold = false;
                ControlFlow::Break(())
            }
        })?;
        Ok(if seen {
            all_hold
        } else {
            compare::holds_when_absent(c)
        })
    }

    /// Appends a change and makes it visible to the command's later reads.
    fn record(&mut self, key: Vec<u8>, event: Event) {
        let slot = match event.kind {
            EventKind::Put => Some(self.events.len()),
            EventKind::Delete => None,
        };
        self.events.push(event);
        self.writes.insert(key, slot);
    }

    /// The key's record as of now (the command's own writes included).
    fn get_now(&self, key: &[u8]) -> Res<Option<KeyValue>, V::Error> {
        match self.writes.get(key) {
            Some(slot) => Ok(slot.map(|i| self.events[i].kv.clone())),
            None => self.view.get(key, self.base).map_err(ExecError::Store),
        }
    }

    /// The key's record before the command, given its record `now`: an
    /// event's `prev_kv` (etcd's watch reads it at `mod_revision - 1`).
    fn before_command(
        &self,
        key: &[u8],
        now: Option<&KeyValue>,
    ) -> Res<Option<KeyValue>, V::Error> {
        if self.writes.contains_key(key) {
            self.view.get(key, self.base).map_err(ExecError::Store)
        } else {
            Ok(now.cloned())
        }
    }

    /// Visits the records of `range` as of now, in key order: the store's
    /// records at `base`, merged with the command's writes.
    fn scan_now(
        &self,
        range: KeyRange<'_>,
        visit: &mut dyn FnMut(KeyValue) -> ControlFlow<()>,
    ) -> Res<(), V::Error> {
        let Some(bounds) = range.bounds() else {
            return Ok(());
        };
        let mut pending = self.writes.range::<[u8], _>(bounds).peekable();
        let written = |slot: &Option<usize>| slot.map(|i| self.events[i].kv.clone());
        let mut stopped = false;
        self.view
            .scan(range, self.base, &mut |stored| {
                // The command's writes to keys before this one come first.
                while let Some((_, slot)) =
                    pending.next_if(|(key, _)| key.as_slice() < stored.key.as_slice())
                {
                    if let Some(kv) = written(slot) {
                        if visit(kv).is_break() {
                            stopped = true;
                            return ControlFlow::Break(());
                        }
                    }
                }
                // A write to this very key replaces the stored record.
                let current = match pending.next_if(|(key, _)| **key == stored.key) {
                    Some((_, slot)) => written(slot),
                    None => Some(stored),
                };
                if let Some(kv) = current {
                    if visit(kv).is_break() {
                        stopped = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .map_err(ExecError::Store)?;
        if !stopped {
            for (_, slot) in pending {
                if let Some(kv) = written(slot) {
                    if visit(kv).is_break() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
