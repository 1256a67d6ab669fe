//! A fake [`EtcdBackend`] for the tests: one in-memory [`MemMvcc`] behind a
//! mutex, applying every proposal at once, with a watch hub that meets the
//! [`WatchFeed`] contract (catch-up from history, live events published
//! under the store's lock, progress once drained).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use super::backend::{
    EtcdBackend, HashKvInfo, MemberInfo, StatusInfo, WatchCancel, WatchFeed, WatchSpec, WatchUpdate,
};
use super::convert::HeaderInfo;
use super::error::EtcdError;
use crate::kv::{
    Command, CommandResponse, Event, KeyRange, KvError, MemMvcc, RangeRequest, RangeResponse,
    Revisioned,
};

pub const CLUSTER_ID: u64 = 0xc1;
pub const MEMBER_ID: u64 = 0x11;
pub const OTHER_MEMBER: u64 = 0x22;
pub const TERM: u64 = 3;

struct Subscriber {
    key: Vec<u8>,
    range_end: Vec<u8>,
    tx: mpsc::UnboundedSender<(i64, Vec<Event>)>,
}

#[derive(Default)]
struct State {
    store: MemMvcc,
    subscribers: Vec<Subscriber>,
}

/// The fake node.
#[derive(Clone)]
pub struct MemBackend {
    state: Arc<Mutex<State>>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for MemBackend {
    fn default() -> Self {
        MemBackend {
            state: Arc::default(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The member stops ([`EtcdBackend::stopped`] resolves).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Applies a command directly (as another client would).
    pub fn apply(&self, cmd: &Command) -> Result<Revisioned<CommandResponse>, KvError> {
        let mut state = self.state.lock().unwrap();
        let applied = state.store.apply(cmd);
        if let Some(rev) = applied.new_revision() {
            let events = applied.events.clone();
            state.subscribers.retain(|s| {
                let range = KeyRange::new(&s.key, &s.range_end);
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| range.contains(&e.kv.key))
                    .cloned()
                    .collect();
                mine.is_empty() || s.tx.send((rev, mine)).is_ok()
            });
            state.subscribers.retain(|s| !s.tx.is_closed());
        }
        applied.answer
    }

    /// Number of live subscriptions (dropped feeds disappear).
    pub fn subscribers(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.subscribers.retain(|s| !s.tx.is_closed());
        state.subscribers.len()
    }
}

/// A watch of the fake: queued catch-up, then live batches.
pub struct MemFeed {
    state: Arc<Mutex<State>>,
    queue: VecDeque<WatchUpdate>,
    rx: Option<mpsc::UnboundedReceiver<(i64, Vec<Event>)>>,
    progress_wanted: bool,
}

impl Stream for MemFeed {
    type Item = WatchUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchUpdate>> {
        if let Some(u) = self.queue.pop_front() {
            return Poll::Ready(Some(u));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(batch) = rx.poll_recv(cx) {
            return Poll::Ready(
                batch.map(|(revision, events)| WatchUpdate::Events { revision, events }),
            );
        }
        if self.progress_wanted {
            // Publishing happens under the lock: with the channel empty
            // under the lock, everything up to the revision was yielded.
            let state = self.state.clone();
            let guard = state.lock().unwrap();
            if let Some(rx) = self.rx.as_mut() {
                if let Ok((revision, events)) = rx.try_recv() {
                    return Poll::Ready(Some(WatchUpdate::Events { revision, events }));
                }
            }
            self.progress_wanted = false;
            return Poll::Ready(Some(WatchUpdate::Progress {
                revision: guard.store.revision(),
            }));
        }
        Poll::Pending
    }
}

impl WatchFeed for MemFeed {
    fn request_progress(&mut self) {
        self.progress_wanted = true;
    }
}

impl EtcdBackend for MemBackend {
    type Feed = MemFeed;

    fn header_info(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            raft_term: TERM,
        }
    }

    fn revision(&self) -> i64 {
        self.state.lock().unwrap().store.revision()
    }

    async fn propose(&self, cmd: Command) -> Result<Revisioned<CommandResponse>, EtcdError> {
        Ok(self.apply(&cmd)?)
    }

    async fn range(&self, req: RangeRequest) -> Result<Revisioned<RangeResponse>, EtcdError> {
        Ok(self.state.lock().unwrap().store.range(&req)?)
    }

    fn watch(&self, spec: WatchSpec) -> Result<MemFeed, EtcdError> {
        let mut state = self.state.lock().unwrap();
        let current = state.store.revision();
        let start = if spec.start_revision == 0 {
            current + 1
        } else {
            spec.start_revision
        };
        let mut queue = VecDeque::new();
        if start <= current {
            let range = KeyRange::new(&spec.key, &spec.range_end);
            match state.store.events(start, range, usize::MAX) {
                Ok(events) if !events.is_empty() => {
                    queue.push_back(WatchUpdate::Events {
                        revision: current,
                        events,
                    });
                }
                Ok(_) => {}
                Err(KvError::Compacted { compact_revision }) => {
                    queue.push_back(WatchUpdate::Canceled(WatchCancel::Compacted {
                        compact_revision,
                    }));
                    return Ok(MemFeed {
                        state: self.state.clone(),
                        queue,
                        rx: None,
                        progress_wanted: false,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.subscribers.push(Subscriber {
            key: spec.key,
            range_end: spec.range_end,
            tx,
        });
        Ok(MemFeed {
            state: self.state.clone(),
            queue,
            rx: Some(rx),
            progress_wanted: false,
        })
    }

    async fn members(&self, _linearizable: bool) -> Result<Vec<MemberInfo>, EtcdError> {
        Ok(vec![
            MemberInfo {
                id: MEMBER_ID,
                name: "node-1".into(),
                peer_urls: vec!["http://127.0.0.1:9001".into()],
                client_urls: vec!["http://127.0.0.1:8001".into()],
                is_learner: false,
            },
            MemberInfo {
                id: OTHER_MEMBER,
                name: "node-2".into(),
                peer_urls: vec!["http://127.0.0.1:9002".into()],
                client_urls: vec!["http://127.0.0.1:8002".into()],
                is_learner: false,
            },
        ])
    }

    async fn status(&self) -> Result<StatusInfo, EtcdError> {
        Ok(StatusInfo {
            db_size: 4096,
            db_size_in_use: 2048,
            leader: MEMBER_ID,
            raft_index: 9,
            raft_term: TERM,
            raft_applied_index: 9,
            is_learner: false,
            errors: Vec::new(),
        })
    }

    async fn hash_kv(&self, revision: i64) -> Result<HashKvInfo, EtcdError> {
        let state = self.state.lock().unwrap();
        let store = &state.store;
        let at = if revision == 0 {
            store.revision()
        } else {
            revision
        };
        if at > store.revision() {
            return Err(KvError::FutureRevision.into());
        }
        let mut hasher = crc32fast::Hasher::new();
        for (key, (rev, sub), record) in store.versions() {
            if rev <= at {
                hasher.update(key);
                hasher.update(&rev.to_be_bytes());
                hasher.update(&sub.to_be_bytes());
                if let Some(kv) = record {
                    hasher.update(&kv.value);
                }
            }
        }
        Ok(HashKvInfo {
            hash: hasher.finalize(),
            compact_revision: store.compact_revision(),
            revision: store.revision(),
        })
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        if target == OTHER_MEMBER {
            Ok(())
        } else {
            Err(EtcdError::BadLeaderTransferee)
        }
    }
}
