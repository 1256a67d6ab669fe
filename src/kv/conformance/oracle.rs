//! A deliberately naive model of the etcd v3 semantics, written
//! independently of [`crate::kv::exec`], to check it against.
//!
//! It keeps a full copy of the key-value map for every revision, and runs a
//! command by cloning the latest map and mutating the clone. Compares look
//! at the map before the command, reads at revision 0 at the clone, reads
//! at revision R at map R; an event's `prev_kv` is the key in the map
//! before the command. Nothing is shared with the implementation except the
//! request/response types and the shape checks of validation (op counts,
//! limits, negative numbers); the duplicate-key rule is re-implemented
//! here with plain lists and compared with the real one on every txn.

use std::collections::BTreeMap;

use super::super::validate::validate_range;
use super::super::*;

type Map = BTreeMap<Vec<u8>, KeyValue>;

/// One change ever made: (revision, sub, key, new record or None).
pub(super) type Change = (i64, i64, Vec<u8>, Option<KeyValue>);

/// A stored version: (key, (revision, sub), record or None).
pub(super) type Version = (Vec<u8>, (i64, i64), Option<KeyValue>);

/// The naive model.
pub(super) struct Oracle {
    /// `states[r]` is the map at revision `r` (`states[0]` is unused).
    states: Vec<Map>,
    compact: i64,
    changes: Vec<Change>,
}

/// What one command did in the oracle.
pub(super) struct Outcome {
    pub answer: Result<Revisioned<CommandResponse>, KvError>,
    pub events: Vec<Event>,
}

/// A command in progress: the map before it, the working copy, the events.
struct Run<'o> {
    oracle: &'o Oracle,
    base: i64,
    work: Map,
    events: Vec<Event>,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        start <= key && key < end
    }
}

impl Oracle {
    pub(super) fn new() -> Oracle {
        Oracle {
            states: vec![Map::new(), Map::new()],
            compact: 0,
            changes: Vec::new(),
        }
    }

    pub(super) fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    pub(super) fn compact_revision(&self) -> i64 {
        self.compact
    }

    /// The map at `rev`.
    pub(super) fn state(&self, rev: i64) -> &Map {
        &self.states[rev as usize]
    }

    pub(super) fn apply(&mut self, cmd: &Command) -> Outcome {
        let validated = validate_command(cmd);
        if let Command::Txn(t) = cmd {
            let naive_dup = naive_duplicates(&t.success) || naive_duplicates(&t.failure);
            if naive_dup {
                assert!(validated.is_err(), "missed duplicate keys in {t:?}");
            } else {
                assert_ne!(validated, Err(KvError::DuplicateKey), "{t:?}");
            }
        }
        if let Err(e) = validated {
            return Outcome {
                answer: Err(e),
                events: Vec::new(),
            };
        }
        let base = self.revision();
        if let Command::Compact(c) = cmd {
            let answer = if c.revision <= self.compact {
                Err(KvError::Compacted {
                    compact_revision: self.compact,
                })
            } else if c.revision > base {
                Err(KvError::FutureRevision)
            } else {
                self.compact = c.revision;
                Ok(Revisioned {
                    revision: base,
                    body: CommandResponse::Compact(CompactionResponse {}),
                })
            };
            return Outcome {
                answer,
                events: Vec::new(),
            };
        }
        let mut run = Run {
            oracle: self,
            base,
            work: self.state(base).clone(),
            events: Vec::new(),
        };
        let result = match cmd {
            Command::Put(p) => run.put(p).map(|r| r.map(CommandResponse::Put)),
            Command::DeleteRange(d) => run.delete(d).map(|r| r.map(CommandResponse::DeleteRange)),
            Command::Txn(t) => run.txn(t).map(|t| Revisioned {
                revision: run.revision_now(),
                body: CommandResponse::Txn(t),
            }),
            Command::Compact(_) => unreachable!("handled above"),
        };
        match result {
            Err(e) => Outcome {
                answer: Err(e),
                events: Vec::new(),
            },
            Ok(answer) => {
                let (work, events) = (run.work, run.events);
                if !events.is_empty() {
                    let rev = base + 1;
                    for (sub, e) in events.iter().enumerate() {
                        let record = match e.kind {
                            EventKind::Put => Some(e.kv.clone()),
                            EventKind::Delete => None,
                        };
                        self.changes
                            .push((rev, sub as i64, e.kv.key.clone(), record));
                    }
                    self.states.push(work);
                }
                Outcome {
                    answer: Ok(answer),
                    events,
                }
            }
        }
    }

    pub(super) fn range(&self, r: &RangeRequest) -> Result<Revisioned<RangeResponse>, KvError> {
        validate_range(r)?;
        let run = Run {
            oracle: self,
            base: self.revision(),
            work: self.state(self.revision()).clone(),
            events: Vec::new(),
        };
        run.range(r)
    }

    /// The events of revisions ≥ `from` on keys of the range, rebuilt from
    /// the list of changes and the maps.
    pub(super) fn events(&self, from: i64, start: &[u8], end: &[u8]) -> Vec<Event> {
        self.changes
            .iter()
            .filter(|(rev, _, key, _)| *rev >= from && in_range(key, start, end))
            .map(|(rev, _, key, record)| Event {
                kind: if record.is_some() {
                    EventKind::Put
                } else {
                    EventKind::Delete
                },
                kv: record.clone().unwrap_or_else(|| KeyValue {
                    key: key.clone(),
                    mod_revision: *rev,
                    ..KeyValue::default()
                }),
                prev_kv: self.state(rev - 1).get(key).cloned(),
            })
            .collect()
    }

    /// The versions the compaction rule keeps at the current compact
    /// revision: every change at or above it, and per key the latest change
    /// below it if that is a put. Sorted by key, then (revision, sub).
    pub(super) fn kept_versions(&self) -> Vec<Version> {
        let c = self.compact;
        let mut latest_below: BTreeMap<&[u8], &Change> = BTreeMap::new();
        for change in &self.changes {
            if change.0 < c {
                latest_below.insert(&change.2, change);
            }
        }
        let mut kept: Vec<_> = self
            .changes
            .iter()
            .filter(|ch| ch.0 >= c)
            .chain(latest_below.values().copied().filter(|ch| ch.3.is_some()))
            .map(|(rev, sub, key, record)| (key.clone(), (*rev, *sub), record.clone()))
            .collect();
        kept.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        kept
    }
}

impl Run<'_> {
    fn revision_now(&self) -> i64 {
        self.base + i64::from(!self.events.is_empty())
    }

    fn before(&self) -> &Map {
        self.oracle.state(self.base)
    }

    fn put(&mut self, p: &PutRequest) -> Result<Revisioned<PutResponse>, KvError> {
        let prev = self.work.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let rev = self.base + 1;
        let mut kv = KeyValue {
            key: p.key.clone(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: p.value.clone(),
            lease: p.lease,
        };
        if let Some(old) = &prev {
            kv.create_revision = old.create_revision;
            kv.version = old.version + 1;
            if p.ignore_value {
                kv.value = old.value.clone();
            }
            if p.ignore_lease {
                kv.lease = old.lease;
            }
        }
        self.events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev_kv: self.before().get(&p.key).cloned(),
        });
        self.work.insert(p.key.clone(), kv);
        Ok(Revisioned {
            revision: rev,
            body: PutResponse {
                prev_kv: prev.filter(|_| p.prev_kv),
            },
        })
    }

    fn delete(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<Revisioned<DeleteRangeResponse>, KvError> {
        let doomed: Vec<KeyValue> = self
            .work
            .values()
            .filter(|kv| in_range(&kv.key, &d.key, &d.range_end))
            .cloned()
            .collect();
        for kv in &doomed {
            self.work.remove(&kv.key);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: self.base + 1,
                    ..KeyValue::default()
                },
                prev_kv: self.before().get(&kv.key).cloned(),
            });
        }
        Ok(Revisioned {
            revision: self.revision_now(),
            body: DeleteRangeResponse {
                deleted: doomed.len() as i64,
                prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
            },
        })
    }

    fn holds(&self, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .before()
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return relation_holds(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| relation_holds(c, kv))
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, KvError> {
        let succeeded = t.compare.iter().all(|c| self.holds(c));
        let mut responses = Vec::new();
        for op in if succeeded { &t.success } else { &t.failure } {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn range(&self, r: &RangeRequest) -> Result<Revisioned<RangeResponse>, KvError> {
        if r.revision > self.base {
            return Err(KvError::FutureRevision);
        }
        if r.revision > 0 && r.revision < self.oracle.compact {
            return Err(KvError::Compacted {
                compact_revision: self.oracle.compact,
            });
        }
        let source = if r.revision > 0 {
            self.oracle.state(r.revision)
        } else {
            &self.work
        };
        let matching: Vec<KeyValue> = source
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .cloned()
            .collect();
        let count = matching.len() as i64;
        let revision = self.revision_now();
        if r.count_only {
            return Ok(Revisioned {
                revision,
                body: RangeResponse {
                    kvs: Vec::new(),
                    more: false,
                    count,
                },
            });
        }
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let mut kvs = matching;
        if r.sort_order == SortOrder::None && !filtered && r.limit > 0 {
            kvs.truncate(r.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let ascending = match r.sort_order {
            SortOrder::Ascend => true,
            SortOrder::Descend => false,
            SortOrder::None => true,
        };
        // Sort by (target, key) or (reversed target, key): ties in key order.
        let target = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Vec::new()),
                SortTarget::Create => (kv.create_revision, Vec::new()),
                SortTarget::Mod => (kv.mod_revision, Vec::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        if ascending {
            kvs.sort_by_key(|kv| (target(kv), kv.key.clone()));
        } else {
            kvs.sort_by_key(|kv| (std::cmp::Reverse(target(kv)), kv.key.clone()));
        }
        let more = r.limit > 0 && kvs.len() > r.limit as usize;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(Revisioned {
            revision,
            body: RangeResponse { kvs, more, count },
        })
    }
}

fn relation_holds(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering::*;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Equal,
        CompareResult::NotEqual => ord != Equal,
        CompareResult::Greater => ord == Greater,
        CompareResult::Less => ord == Less,
    }
}

/// etcd's duplicate-key rule with plain lists: returns whether `ops` (one
/// branch) break it. Intervals are `[key, end)` literally, `[key, key‖0)`
/// for a single key.
fn naive_duplicates(ops: &[RequestOp]) -> bool {
    naive_collect(ops).is_none()
}

type Interval = (Vec<u8>, Vec<u8>);

fn naive_collect(ops: &[RequestOp]) -> Option<(Vec<Vec<u8>>, Vec<Interval>)> {
    let covered = |dels: &[Interval], k: &[u8]| {
        dels.iter()
            .any(|(s, e)| s.as_slice() <= k && k < e.as_slice())
    };
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            let end = if d.range_end.is_empty() {
                [d.key.as_slice(), &[0]].concat()
            } else {
                d.range_end.clone()
            };
            dels.push((d.key.clone(), end));
        }
    }
    let mut puts: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        if let RequestOp::Txn(t) = op {
            let (then_puts, then_dels) = naive_collect(&t.success)?;
            let (else_puts, else_dels) = naive_collect(&t.failure)?;
            for k in &then_puts {
                if puts.contains(k) || covered(&dels, k) {
                    return None;
                }
            }
            puts.extend(then_puts.iter().cloned());
            for k in &else_puts {
                if (puts.contains(k) && !then_puts.contains(k)) || covered(&dels, k) {
                    return None;
                }
                // A set: a key both branches put counts once.
                if !puts.contains(k) {
                    puts.push(k.clone());
                }
            }
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
    }
    for op in ops {
        if let RequestOp::Put(p) = op {
            if puts.contains(&p.key) || covered(&dels, &p.key) {
                return None;
            }
            puts.push(p.key.clone());
        }
    }
    Some((puts, dels))
}
