//! One Watch stream: many watches over one bidirectional gRPC stream, as
//! etcd's `serverWatchStream` serves them.
//!
//! A task per stream reads the client's requests and the watches' feeds
//! ([`WatchFeed`]) and writes responses, in order:
//!
//! - **create** → a `created` response (header = current revision), before
//!   any event of that watch. The watch id is the client's (`watch_id != 0`)
//!   or the lowest free one from 0 up. Refusals are etcd's: a negative
//!   start revision (the compacted text), an empty interval ("mvcc: watcher
//!   range is empty"), a client id in use ("mvcc: duplicate watch ID
//!   provided on the WatchStream"), or an error of the backend: `created`
//!   and `canceled` with watch id -1 and the text as `cancel_reason`.
//! - **events** → one response per feed item with the watch's filters
//!   applied and `prev_kv` dropped unless asked for; a batch the filters
//!   empty is not sent.
//! - **compaction** → `canceled` with `compact_revision`; the id stays taken
//!   until the client cancels it (etcd keeps the watcher until then).
//! - **cancel** → `canceled` for a live or compacted watch; an unknown id
//!   gets no answer (etcd's behaviour).
//! - **progress request** → one response with watch id -1 once every
//!   watch of the stream has reported its progress (at the lowest revision
//!   reported), at once if there is none.
//! - **progress_notify** → every interval, a watch that sent no event
//!   during the last one asks its feed for progress and gets an empty
//!   response at that revision.
//!
//! - **fragment** → an event response larger than
//!   [`EtcdConfig::watch_fragment_bytes`] goes out as several responses
//!   with whole events, all but the last marked `fragment` (etcd's
//!   `sendFragments`); without it a response is never split.
//!
//! The client closing its side of the stream does not end
//! the watches (as etcd); the client dropping the stream does.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;
use tonic::Status;

use super::backend::{EtcdBackend, WatchCancel, WatchFeed, WatchSpec, WatchUpdate};
use super::error::EtcdError;
use super::pb::etcdserverpb as rpc;
use super::pb::mvccpb;
use super::service::EtcdConfig;
use crate::kv::{EventKind, KvError};

/// etcd's watch id for responses that concern no single watch.
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's texts for refused watches (mvcc errors, sent as `cancel_reason`).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A feed that reports its own end: `Some(update)` per item, then one
/// `None` when the feed ends (a [`StreamMap`] drops ended streams
/// silently).
struct Tracked<F> {
    feed: F,
    ended: bool,
}

impl<F: WatchFeed> Stream for Tracked<F> {
    type Item = Option<WatchUpdate>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.feed.poll_next_unpin(cx) {
            Poll::Ready(Some(u)) => Poll::Ready(Some(Some(u))),
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(None))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the stream remembers about one watch.
struct Watcher {
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The client accepts fragmented event responses.
    fragment: bool,
    /// Events were sent since the last progress tick.
    sent_since_tick: bool,
    /// A periodic progress notification was asked of the feed.
    notify_pending: bool,
    /// False once the server canceled it (compaction, error); the id stays
    /// taken until the client cancels.
    live: bool,
}

/// A stream-wide progress request waiting for its watches.
struct ProgressAll {
    waiting: HashSet<i64>,
    lowest: i64,
}

/// The state of one Watch stream (see the module doc).
pub(crate) struct WatchSession<B: EtcdBackend> {
    backend: Arc<B>,
    config: EtcdConfig,
    out: mpsc::Sender<Result<rpc::WatchResponse, Status>>,
    watchers: HashMap<i64, Watcher>,
    feeds: StreamMap<i64, Tracked<B::Feed>>,
    next_id: i64,
    progress_all: Option<ProgressAll>,
}

/// The client went away: stop the session.
struct Gone;

impl<B: EtcdBackend> WatchSession<B> {
    /// Serves one Watch stream on a new task; returns the responses.
    pub(crate) fn spawn<S>(
        backend: Arc<B>,
        config: EtcdConfig,
        requests: S,
    ) -> ReceiverStream<Result<rpc::WatchResponse, Status>>
    where
        S: Stream<Item = Result<rpc::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (out, rx) = mpsc::channel(config.watch_send_buffer.max(1));
        let session = WatchSession {
            backend,
            config,
            out,
            watchers: HashMap::new(),
            feeds: StreamMap::new(),
            next_id: 0,
            progress_all: None,
        };
        tokio::spawn(session.run(requests));
        ReceiverStream::new(rx)
    }

    async fn run<S>(mut self, mut requests: S)
    where
        S: Stream<Item = Result<rpc::WatchRequest, Status>> + Unpin,
    {
        let period = self.config.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut requests_open = true;
        let stopped = self.backend.stopped();
        tokio::pin!(stopped);
        loop {
            let step = tokio::select! {
                () = &mut stopped => {
                    // The member stops: end the stream (etcd's "server
                    // stopped") rather than keep the connection open.
                    let _ = self.out.send(Err(EtcdError::Stopped.into())).await;
                    return;
                }
                req = requests.next(), if requests_open => match req {
                    Some(Ok(req)) => self.on_request(req).await,
                    // The client closed its side: the watches go on.
                    None => {
                        requests_open = false;
                        Ok(())
                    }
                    // The stream broke (client reset, bad message).
                    Some(Err(_)) => Err(Gone),
                },
                Some((id, update)) = self.feeds.next(), if !self.feeds.is_empty() => {
                    self.on_update(id, update).await
                }
                _ = ticker.tick() => {
                    self.on_tick();
                    Ok(())
                }
                _ = self.out.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&mut self, resp: rpc::WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn header(&self, revision: i64) -> Option<rpc::ResponseHeader> {
        Some(self.backend.header_info().header(revision))
    }

    fn current_header(&self) -> Option<rpc::ResponseHeader> {
        self.header(self.backend.revision())
    }

    async fn on_request(&mut self, req: rpc::WatchRequest) -> Result<(), Gone> {
        use rpc::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let resp = self.create(c);
                self.send(resp).await
            }
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => self.progress_all().await,
            // etcd ignores a request with nothing set.
            None => Ok(()),
        }
    }

    /// A `created` (and, when refused, `canceled`) response for a create
    /// request; registers the watch when accepted.
    fn create(&mut self, c: rpc::WatchCreateRequest) -> rpc::WatchResponse {
        let refused = |header, reason: String| rpc::WatchResponse {
            header,
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if c.start_revision < 0 {
            let reason = EtcdError::from(KvError::Compacted {
                compact_revision: 0,
            })
            .to_string();
            return refused(self.current_header(), reason);
        }
        // etcd: an empty key is the smallest key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let from_key = c.range_end == [0];
        if !c.range_end.is_empty() && !from_key && key >= c.range_end {
            return refused(self.current_header(), EMPTY_RANGE.into());
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return refused(self.current_header(), DUPLICATE_ID.into());
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        use rpc::watch_create_request::FilterType;
        let has = |f: FilterType| c.filters.contains(&(f as i32));
        let spec = WatchSpec {
            key,
            range_end: c.range_end,
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
        };
        let watcher = Watcher {
            prev_kv: spec.prev_kv,
            no_put: spec.no_put,
            no_delete: spec.no_delete,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            sent_since_tick: false,
            notify_pending: false,
            live: true,
        };
        let feed = match self.backend.watch(spec) {
            Ok(feed) => feed,
            Err(e) => return refused(self.current_header(), e.to_string()),
        };
        self.watchers.insert(id, watcher);
        self.feeds.insert(id, Tracked { feed, ended: false });
        rpc::WatchResponse {
            header: self.current_header(),
            watch_id: id,
            created: true,
            ..Default::default()
        }
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        if self.watchers.remove(&id).is_none() {
            return Ok(());
        }
        self.feeds.remove(&id);
        self.send(rpc::WatchResponse {
            header: self.current_header(),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await?;
        self.progress_settled(id, None).await
    }

    async fn progress_all(&mut self) -> Result<(), Gone> {
        if self.progress_all.is_some() {
            return Ok(()); // one answer covers both requests
        }
        let live: HashSet<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.live)
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return self
                .send(rpc::WatchResponse {
                    header: self.current_header(),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                })
                .await;
        }
        for (id, feed) in self.feeds.iter_mut() {
            if live.contains(id) {
                feed.feed.request_progress();
            }
        }
        self.progress_all = Some(ProgressAll {
            waiting: live,
            lowest: i64::MAX,
        });
        Ok(())
    }

    /// Watch `id` has reported progress at `revision` (or left, `None`):
    /// answers a stream-wide progress request once every watch has.
    async fn progress_settled(&mut self, id: i64, revision: Option<i64>) -> Result<(), Gone> {
        let Some(all) = self.progress_all.as_mut() else {
            return Ok(());
        };
        if !all.waiting.remove(&id) {
            return Ok(());
        }
        if let Some(rev) = revision {
            all.lowest = all.lowest.min(rev);
        }
        if !all.waiting.is_empty() {
            return Ok(());
        }
        let lowest = all.lowest;
        self.progress_all = None;
        let header = if lowest == i64::MAX {
            self.current_header()
        } else {
            self.header(lowest)
        };
        self.send(rpc::WatchResponse {
            header,
            watch_id: INVALID_WATCH_ID,
            ..Default::default()
        })
        .await
    }

    fn on_tick(&mut self) {
        for (id, feed) in self.feeds.iter_mut() {
            let Some(w) = self.watchers.get_mut(id) else {
                continue;
            };
            if w.live && w.progress_notify && !w.sent_since_tick && !w.notify_pending {
                w.notify_pending = true;
                feed.feed.request_progress();
            }
            w.sent_since_tick = false;
        }
    }

    async fn on_update(&mut self, id: i64, update: Option<WatchUpdate>) -> Result<(), Gone> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        match update {
            Some(WatchUpdate::Events { revision, events }) => {
                let events: Vec<mvccpb::Event> = events
                    .into_iter()
                    .filter(|e| match e.kind {
                        EventKind::Put => !w.no_put,
                        EventKind::Delete => !w.no_delete,
                    })
                    .map(|mut e| {
                        if !w.prev_kv {
                            e.prev_kv = None;
                        }
                        e.into()
                    })
                    .collect();
                if events.is_empty() {
                    return Ok(());
                }
                w.sent_since_tick = true;
                let fragment = w.fragment;
                let header = self.header(revision);
                let whole = rpc::WatchResponse {
                    header,
                    watch_id: id,
                    events,
                    ..Default::default()
                };
                if !fragment {
                    return self.send(whole).await;
                }
                for piece in fragments(whole, self.config.watch_fragment_bytes) {
                    self.send(piece).await?;
                }
                Ok(())
            }
            Some(WatchUpdate::Progress { revision }) => {
                if w.notify_pending {
                    w.notify_pending = false;
                    let header = self.header(revision);
                    self.send(rpc::WatchResponse {
                        header,
                        watch_id: id,
                        ..Default::default()
                    })
                    .await?;
                }
                self.progress_settled(id, Some(revision)).await
            }
            Some(WatchUpdate::Canceled(why)) => self.server_cancel(id, why).await,
            None => {
                self.server_cancel(id, WatchCancel::Error(EtcdError::Stopped))
                    .await
            }
        }
    }

    /// The feed ended the watch: tell the client, keep the id taken.
    async fn server_cancel(&mut self, id: i64, why: WatchCancel) -> Result<(), Gone> {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.live = false;
        }
        self.feeds.remove(&id);
        let mut resp = rpc::WatchResponse {
            header: self.current_header(),
            watch_id: id,
            canceled: true,
            ..Default::default()
        };
        match why {
            WatchCancel::Compacted { compact_revision } => resp.compact_revision = compact_revision,
            WatchCancel::Error(e) => resp.cancel_reason = e.to_string(),
        }
        self.send(resp).await?;
        self.progress_settled(id, None).await
    }
}

/// `resp` split into responses of at most about `limit` encoded bytes,
/// whole events each (a single larger event goes alone), every one but the
/// last marked `fragment`; `resp` itself when it fits.
fn fragments(resp: rpc::WatchResponse, limit: usize) -> Vec<rpc::WatchResponse> {
    use prost::Message;
    if resp.encoded_len() <= limit {
        return vec![resp];
    }
    let rpc::WatchResponse {
        header,
        watch_id,
        events,
        ..
    } = resp;
    let mut out: Vec<rpc::WatchResponse> = Vec::new();
    let mut current: Vec<mvccpb::Event> = Vec::new();
    let mut size = 0;
    for e in events {
        // Field tag, length prefix and the event itself.
        let len = e.encoded_len() + 8;
        if !current.is_empty() && size + len > limit {
            out.push(rpc::WatchResponse {
                header,
                watch_id,
                fragment: true,
                events: std::mem::take(&mut current),
                ..Default::default()
            });
            size = 0;
        }
        size += len;
        current.push(e);
    }
    out.push(rpc::WatchResponse {
        header,
        watch_id,
        events: current,
        ..Default::default()
    });
    out
}

#[cfg(test)]
mod fragment_tests {
    use super::*;

    fn event(i: usize, value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: format!("k{i:04}").into_bytes(),
                value: vec![b'v'; value_len],
                mod_revision: 7,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn response(n: usize, value_len: usize) -> rpc::WatchResponse {
        rpc::WatchResponse {
            watch_id: 3,
            events: (0..n).map(|i| event(i, value_len)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_response_is_not_split() {
        let r = response(3, 10);
        assert_eq!(fragments(r.clone(), 1 << 20), vec![r]);
    }

    #[test]
    fn a_large_response_splits_into_bounded_fragments_in_order() {
        use prost::Message;
        let r = response(100, 1000);
        let limit = 10_000;
        let parts = fragments(r.clone(), limit);
        assert!(parts.len() >= 10, "{} parts", parts.len());
        let (last, rest) = parts.split_last().unwrap();
        assert!(rest.iter().all(|p| p.fragment && !p.events.is_empty()));
        assert!(!last.fragment);
        assert!(parts.iter().all(|p| p.watch_id == 3));
        assert!(parts.iter().all(|p| p.encoded_len() <= limit + 64));
        let joined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, r.events);
    }

    #[test]
    fn an_event_larger_than_the_limit_goes_alone() {
        let r = response(3, 5000);
        let parts = fragments(r.clone(), 1000);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().filter(|p| p.fragment).count(), 2);
    }
}
