//! The measured run: one task per connection, started together, stopped by
//! the time cap or the shared operation count, whichever comes first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::cpu::{self, Snapshot};
use super::machine::{self, StallProbe, StallReport};
use super::report::{ErrorKind, OpKind, Outcome, Stats};
use super::target::Session;
use super::watch::PutRecord;
use super::{Plan, Workload, DEFAULT_OPS_CAP};

/// What [`run`] measured.
pub struct RunOutcome {
    /// Merged counts and histograms of every connection.
    pub stats: Stats,
    /// Wall time from the start signal to the last connection's last answer.
    pub elapsed: Duration,
    /// The run ended because the operation count was reached.
    pub hit_ops_cap: bool,
    /// `--pids` CPU times at the start.
    pub cpu_before: Snapshot,
    /// `--pids` CPU times at the end.
    pub cpu_after: Snapshot,
    /// CPU ms this process used during the run.
    pub self_cpu_ms: Option<f64>,
    /// Percent of the machine's CPU time stolen during the run.
    pub steal_pct: Option<f64>,
    /// `--stall-probe`: what the probe saw during the run.
    pub stalls: Option<StallReport>,
}

/// State the connection tasks share.
struct Shared {
    /// Everyone (tasks and the coordinator) meets here between phases.
    barrier: tokio::sync::Barrier,
    /// End of the current phase, set by the coordinator before releasing it.
    deadline: Mutex<Instant>,
    /// Operations started in the measured run (may overshoot the cap by one
    /// per task: those are not performed).
    issued: AtomicU64,
    /// Operations started during warm-up.
    warmup_issued: AtomicU64,
    /// Operations finished in the measured run (for the progress bar).
    finished: AtomicU64,
    /// Of which failed.
    failed: AtomicU64,
}

impl Shared {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().expect("deadline lock")
    }

    fn set_deadline(&self, at: Instant) {
        *self.deadline.lock().expect("deadline lock") = at;
    }
}

/// How long the coordinator waits for every task to reach a phase boundary
/// before giving up (a task that died would otherwise hang the run).
const PHASE_SLACK: Duration = Duration::from_secs(30);

/// Runs the plan on `sessions` (one task each) and measures it.
pub async fn run(
    plan: &Plan,
    sessions: Vec<Session>,
    pids: &[u32],
    progress: bool,
) -> anyhow::Result<RunOutcome> {
    let n = sessions.len();
    let shared = Arc::new(Shared {
        barrier: tokio::sync::Barrier::new(n + 1),
        deadline: Mutex::new(Instant::now()),
        issued: AtomicU64::new(0),
        warmup_issued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let plan = Arc::new(plan.clone());
    let handles: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(id, s)| tokio::spawn(task(s, id as u64, plan.clone(), shared.clone())))
        .collect();
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let abort_all = || {
        for a in &aborts {
            a.abort();
        }
    };
    let meet = |what: &'static str, within: Duration| {
        let shared = shared.clone();
        async move {
            tokio::time::timeout(within, shared.barrier.wait())
                .await
                .map(|_| ())
                .map_err(|_| anyhow::anyhow!("bench connections did not {what} in time"))
        }
    };

    // Every connection is open (or has failed to open).
    if let Err(e) = meet("connect", PHASE_SLACK).await {
        abort_all();
        return Err(e);
    }
    if !plan.warmup.is_zero() {
        shared.set_deadline(Instant::now() + plan.warmup);
        let r = async {
            meet("start the warm-up", PHASE_SLACK).await?;
            meet(
                "finish the warm-up",
                plan.warmup + plan.timeout + PHASE_SLACK,
            )
            .await
        }
        .await;
        if let Err(e) = r {
            abort_all();
            return Err(e);
        }
    }
    let probe = if plan.stall_probe {
        Some(StallProbe::start().context("starting the stall probe")?)
    } else {
        None
    };
    let machine_before = machine::cpu_times();
    let cpu_before = Snapshot::take(pids);
    let self_before = cpu::self_cpu_ms().ok();
    let start = Instant::now();
    shared.set_deadline(start + plan.time_cap);
    if let Err(e) = meet("start", PHASE_SLACK).await {
        abort_all();
        return Err(e);
    }

    let bar = progress_bar(progress, &plan);
    let ticker = tokio::spawn(tick(bar.clone(), shared.clone(), plan.clone(), start));

    let mut stats = Stats::default();
    let mut failure = None;
    for h in handles {
        match h.await {
            Ok(s) => stats.merge(&s),
            Err(e) => failure = Some(e),
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = Snapshot::take(pids);
    let self_cpu_ms = match (self_before, cpu::self_cpu_ms().ok()) {
        (Some(b), Some(a)) => Some((a - b).max(0.0)),
        _ => None,
    };
    let steal_pct = match (machine_before, machine::cpu_times()) {
        (Some(b), Some(a)) => machine::steal_pct(b, a),
        _ => None,
    };
    let stalls = probe.map(StallProbe::finish);
    ticker.abort();
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e).context("a bench connection task failed");
    }
    if stats.ops() == 0 {
        bail!("no operation was performed");
    }
    Ok(RunOutcome {
        stats,
        elapsed,
        hit_ops_cap: shared.issued.load(Ordering::Relaxed) >= plan.ops_cap,
        cpu_before,
        cpu_after,
        self_cpu_ms,
        steal_pct,
        stalls,
    })
}

/// One connection's task.
async fn task(mut session: Session, id: u64, plan: Arc<Plan>, shared: Arc<Shared>) -> Stats {
    let mut rng = SmallRng::seed_from_u64(plan.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    session.warm_up_connection().await;
    shared.barrier.wait().await;
    let mut warmup_puts = Vec::new();
    if !plan.warmup.is_zero() {
        shared.barrier.wait().await;
        let mut discarded = Stats::default();
        ops_loop(
            &mut session,
            &mut rng,
            &plan,
            shared.deadline(),
            &shared.warmup_issued,
            &mut discarded,
            None,
        )
        .await;
        shared.barrier.wait().await;
        warmup_puts = discarded.puts;
    }
    shared.barrier.wait().await;
    // Watchers see the warm-up's puts too: keep them for the matching.
    let mut stats = Stats {
        puts: warmup_puts,
        ..Stats::default()
    };
    ops_loop(
        &mut session,
        &mut rng,
        &plan,
        shared.deadline(),
        &shared.issued,
        &mut stats,
        Some(&shared),
    )
    .await;
    stats
}

/// Performs operations until `deadline` or until `issued` reaches the cap.
async fn ops_loop(
    session: &mut Session,
    rng: &mut SmallRng,
    plan: &Plan,
    deadline: Instant,
    issued: &AtomicU64,
    stats: &mut Stats,
    live: Option<&Shared>,
) {
    let mut schedule = plan
        .pace
        .map(|every| Schedule::new(Instant::now(), every, rng.gen::<f64>()));
    loop {
        // With `--rate`, wait until the next request is due. A request sent
        // late because the previous one was still in flight counts its
        // latency from when it was due, so a server that falls behind is
        // charged for the wait. One sent after a sleep counts from when the
        // sleep ended: the timer's lateness (up to a millisecond) is the
        // load generator's, not the server's.
        let due = match &mut schedule {
            Some(s) => {
                let due = s.next_due();
                if due >= deadline {
                    break;
                }
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    Some(Instant::now())
                } else {
                    Some(due)
                }
            }
            None => None,
        };
        if Instant::now() >= deadline {
            break;
        }
        if issued.fetch_add(1, Ordering::Relaxed) >= plan.ops_cap {
            break;
        }
        let key = rng.gen_range(0..plan.keys.count);
        let read = match plan.workload {
            Workload::Get => true,
            Workload::Put | Workload::Cas | Workload::Txn => false,
            Workload::Mixed => rng.gen::<f64>() < plan.read_ratio,
        };
        let started = due.unwrap_or_else(Instant::now);
        let outcome = match (plan.workload, read) {
            (Workload::Cas, _) => session.cas(key).await,
            (Workload::Txn, _) => {
                // A second key, different from the first (plan() makes
                // sure there are at least two).
                let mut other = rng.gen_range(0..plan.keys.count.saturating_sub(1).max(1));
                if other >= key {
                    other += 1;
                }
                session.txn(key, other).await
            }
            (_, true) => session.get(key).await,
            (_, false) if plan.record_puts => {
                let sent_us = started.saturating_duration_since(plan.epoch).as_micros() as u64;
                let (outcome, revision) = session.put_revision(key).await;
                if let (Outcome::Ok, Some(revision)) = (outcome, revision) {
                    stats.puts.push(PutRecord {
                        revision,
                        sent_us,
                        acked_us: plan.epoch.elapsed().as_micros() as u64,
                    });
                }
                outcome
            }
            (_, false) => session.put(key).await,
        };
        let micros = started.elapsed().as_micros() as u64;
        let kind = if read { OpKind::Read } else { OpKind::Write };
        stats.record(kind, outcome, micros);
        if let Some(live) = live {
            live.finished.fetch_add(1, Ordering::Relaxed);
            if matches!(outcome, Outcome::Error(_)) {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome == Outcome::Error(ErrorKind::Connect) {
            // The node is down: try the next one, without spinning.
            session.next_endpoint();
            let pause = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            tokio::time::sleep(pause).await;
        }
    }
}

/// When a paced connection's requests are due: every `every`, from a
/// random offset within the first interval (so connections do not send in
/// step). A request that could not be sent when due (the previous one was
/// still in flight) is sent as soon as possible, and keeps its due time.
#[derive(Clone, Debug)]
pub struct Schedule {
    first: Instant,
    every: Duration,
    sent: u32,
}

impl Schedule {
    /// A schedule starting at `start` plus `offset` (0..1) of an interval.
    pub fn new(start: Instant, every: Duration, offset: f64) -> Schedule {
        Schedule {
            first: start + every.mul_f64(offset.clamp(0.0, 1.0)),
            every,
            sent: 0,
        }
    }

    /// The due time of the next request.
    pub fn next_due(&mut self) -> Instant {
        let due = self.first + self.every * self.sent;
        self.sent = self.sent.saturating_add(1);
        due
    }
}

fn progress_bar(enabled: bool, plan: &Plan) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(plan.time_cap.as_millis() as u64);
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Updates the progress bar with the live rate (over the last second).
async fn tick(bar: ProgressBar, shared: Arc<Shared>, plan: Arc<Plan>, start: Instant) {
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        let now = Instant::now();
        let done = shared.finished.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        window.push_back((now, done));
        while window.len() > 2 && now.duration_since(window[0].0) > Duration::from_secs(1) {
            window.pop_front();
        }
        let (t0, d0) = window[0];
        let span = now.duration_since(t0).as_secs_f64();
        let rate = if span > 0.0 {
            (done - d0) as f64 / span
        } else {
            0.0
        };
        let count = if plan.ops_cap < DEFAULT_OPS_CAP {
            format!("{done}/{} ops", plan.ops_cap)
        } else {
            format!("{done} ops")
        };
        bar.set_position(now.duration_since(start).as_millis() as u64);
        bar.set_message(format!("{count}  {rate:.0} ops/s  {failed} errors"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_evenly_spaced_from_its_offset() {
        let t0 = Instant::now();
        let every = Duration::from_millis(10);
        let mut s = Schedule::new(t0, every, 0.5);
        assert_eq!(s.next_due(), t0 + Duration::from_millis(5));
        assert_eq!(s.next_due(), t0 + Duration::from_millis(15));
        assert_eq!(s.next_due(), t0 + Duration::from_millis(25));
        let mut s = Schedule::new(t0, every, 7.0);
        assert_eq!(s.next_due(), t0 + every);
    }
}
