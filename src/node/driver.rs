//! The production driver of the Raft loop: a thread of its own with a
//! single-threaded tokio runtime, selecting over the loop's channels and
//! its tick interval. It only calls the loop's entry points
//! ([`RaftLoop`]); everything that decides anything lives there, so the
//! simulation, which calls the same entry points in virtual time, checks
//! the code that runs here.
//!
//! The loop's fsyncs and sled calls block, so it must run where they block
//! nothing else: hence the thread.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::storage::{NodeStore, StorageError};

use super::env::{LoopInput, PeerTransport, SystemClock};
use super::handle::{Control, Inbound, Proposal, ReadRequest};
use super::raft_loop::RaftLoop;

/// The receiving ends of everything that feeds the loop.
pub(crate) struct LoopChannels<I> {
    pub proposals: mpsc::Receiver<Proposal>,
    pub reads: mpsc::Receiver<ReadRequest>,
    pub inbound: mpsc::Receiver<Inbound<I>>,
    pub control: mpsc::Receiver<Control>,
}

impl<I> LoopInput<I> for LoopChannels<I> {
    fn next_inbound(&mut self) -> Option<Inbound<I>> {
        self.inbound.try_recv().ok()
    }
    fn next_proposal(&mut self) -> Option<Proposal> {
        self.proposals.try_recv().ok()
    }
    fn next_read(&mut self) -> Option<ReadRequest> {
        self.reads.try_recv().ok()
    }
}

/// Drives `core` until `stop` turns true (or its sender goes away), or
/// storage fails; then answers everyone still waiting.
pub(crate) async fn drive<S, T>(
    core: &mut RaftLoop<S, T, SystemClock>,
    ch: &mut LoopChannels<S::Staged>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StorageError>
where
    S: NodeStore,
    T: PeerTransport<S::Source>,
{
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break Ok(());
                }
            }
            _ = ticker.tick() => core.on_tick(),
            Some(c) = ch.control.recv() => core.on_control(c),
            Some(ev) = ch.inbound.recv() => core.on_inbound(ev),
            Some(p) = ch.proposals.recv() => core.on_proposal(p),
            Some(r) = ch.reads.recv() => core.on_read(r),
        }
        if let Some(deadline) = core.hold_proposals_until(!ch.proposals.is_empty()) {
            let sleep = tokio::time::sleep_until(deadline);
            tokio::pin!(sleep);
            while core.waiting_for_acks(!ch.proposals.is_empty()) {
                tokio::select! {
                    biased;
                    Some(ev) = ch.inbound.recv() => core.on_inbound(ev),
                    _ = &mut sleep => break,
                }
            }
        }
        core.collect(ch);
        if let Err(e) = core.round() {
            break Err(e);
        }
    };
    ch.proposals.close();
    ch.reads.close();
    while let Ok(p) = ch.proposals.try_recv() {
        core.on_proposal(p);
    }
    while let Ok(r) = ch.reads.try_recv() {
        core.on_read(r);
    }
    core.shutdown(&result);
    result
}

/// Why the loop's thread ended badly.
#[derive(Debug, thiserror::Error)]
pub enum LoopFailure {
    /// Storage failed (the loop stopped, the node must stop too).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The thread's runtime could not be built.
    #[error("cannot start the Raft loop's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Starts `core` on a thread named `raft-loop`; the result (after the final
/// flush of the store) arrives on the returned channel, which closes
/// without a value if the loop panicked.
pub(crate) fn spawn<S, T>(
    mut core: RaftLoop<S, T, SystemClock>,
    mut ch: LoopChannels<S::Staged>,
    tick: Duration,
    stop: watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<Result<(), LoopFailure>>>
where
    S: NodeStore + Send + 'static,
    S::Staged: Send,
    T: PeerTransport<S::Source> + Send + 'static,
{
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("raft-loop".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = done_tx.send(Err(LoopFailure::Runtime(e)));
                    return;
                }
            };
            let mut result = rt.block_on(drive(&mut core, &mut ch, tick, stop));
            // The transport's tasks end with it.
            let (store, transport) = core.into_parts();
            drop(transport);
            if let Err(e) = store.flush() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            drop(store);
            let _ = done_tx.send(result.map_err(LoopFailure::from));
        })?;
    Ok(done_rx)
}
