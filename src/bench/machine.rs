//! What the machine itself did during a run, independent of the system
//! measured: CPU time the hypervisor took away from this virtual machine
//! (`steal` in `/proc/stat`) and — with `--stall-probe` — the stalls a
//! sleeping probe thread saw.
//!
//! Why: on a small virtual machine, every process can stop for several
//! milliseconds at once (e.g. when the VM's CPU quota at the host runs out
//! before the end of the quota period). Such stalls land in every request in
//! flight and set the tail latency of both systems a comparison runs; with
//! these figures beside the percentiles, a reader can tell a slow server
//! from a stalled machine.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long the probe thread sleeps between looks at the clock.
pub const PROBE_PERIOD: Duration = Duration::from_millis(1);
/// Oversleeping by more than this counts as a stall.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(2);

/// Aggregate CPU times of the whole machine, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time stolen by the hypervisor.
    pub steal: u64,
    /// All time: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 8 {
        return None;
    }
    Some(CpuTimes {
        steal: fields[7],
        total: fields.iter().sum(),
    })
}

/// The machine's CPU times now (`None` where `/proc/stat` is unreadable).
pub fn cpu_times() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Percent of all CPU time stolen between two readings.
pub fn steal_pct(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let steal = after.steal.checked_sub(before.steal)?;
    (total > 0).then(|| steal as f64 * 100.0 / total as f64)
}

/// Parses `VmRSS` (kB) out of a `/proc/PID/status` text.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib)
}

/// The resident memory of process `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_vm_rss_kib(&text).ok_or_else(|| format!("{path}: no VmRSS line"))
}

/// Resident memory of one `--rss-pids` process at the points of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RssReport {
    /// The process.
    pub pid: u32,
    /// Before the run (before any watcher was opened).
    pub before_kib: Option<u64>,
    /// With the watchers open, before the load.
    pub watching_kib: Option<u64>,
    /// At the end of the load (watchers still open).
    pub end_kib: Option<u64>,
    /// The first error reading it, if any.
    pub error: Option<String>,
}

impl RssReport {
    /// Reads `pid`'s RSS into the slot `at` picks, keeping the first error.
    pub fn sample(&mut self, at: fn(&mut RssReport) -> &mut Option<u64>) {
        match rss_kib(self.pid) {
            Ok(kib) => *at(self) = Some(kib),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// Stalls seen by the probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StallTally {
    /// Times the probe woke up.
    pub wakeups: u64,
    /// Wake-ups later than [`STALL_THRESHOLD`].
    pub stalls: u64,
    /// Sum of those lateness figures.
    pub stalled: Duration,
    /// Longest lateness.
    pub max: Duration,
}

impl StallTally {
    /// Records one wake-up that came `late` after its due time.
    pub fn observe(&mut self, late: Duration) {
        self.wakeups += 1;
        if late > STALL_THRESHOLD {
            self.stalls += 1;
            self.stalled += late;
            self.max = self.max.max(late);
        }
    }

    /// The tally as a report over `elapsed` wall time.
    pub fn report(&self, elapsed: Duration) -> StallReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        StallReport {
            wakeups: self.wakeups,
            per_s: self.stalls as f64 / secs,
            mean_ms: if self.stalls == 0 {
                0.0
            } else {
                ms(self.stalled) / self.stalls as f64
            },
            max_ms: ms(self.max),
            stalled_pct: ms(self.stalled) / 10.0 / secs,
        }
    }
}

/// Stalls per second and their length, as reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StallReport {
    /// Times the probe woke up.
    pub wakeups: u64,
    /// Stalls per second.
    pub per_s: f64,
    /// Mean lateness of a stall, ms.
    pub mean_ms: f64,
    /// Longest stall, ms.
    pub max_ms: f64,
    /// Percent of the run the probe spent stalled.
    pub stalled_pct: f64,
}

/// A thread that sleeps [`PROBE_PERIOD`] at a time and tallies how late it
/// wakes up. It costs about a thousand wake-ups a second, so it is opt-in.
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    started: Instant,
    handle: JoinHandle<StallTally>,
}

impl StallProbe {
    /// Starts the probe thread.
    pub fn start() -> io::Result<StallProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("stall-probe".into())
            .spawn(move || {
                let mut tally = StallTally::default();
                while !flag.load(Ordering::Relaxed) {
                    let before = Instant::now();
                    std::thread::sleep(PROBE_PERIOD);
                    tally.observe(before.elapsed().saturating_sub(PROBE_PERIOD));
                }
                tally
            })?;
        Ok(StallProbe {
            stop,
            started: Instant::now(),
            handle,
        })
    }

    /// Stops the probe and reports what it saw.
    pub fn finish(self) -> StallReport {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let tally = self.handle.join().unwrap_or_default();
        tally.report(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\traftkv\nVmPeak:\t  999 kB\nVmRSS:\t   123456 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss_kib(status), Some(123_456));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: lots kB\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: 12 MB\n"), None, "unit must be kB");
        // This process has a resident set.
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(rss_kib(u32::MAX).is_err());
    }

    #[test]
    fn proc_stat_gives_steal_and_total() {
        let stat = "cpu  100 5 50 800 20 1 4 20 0 0\ncpu0 50 2 25 400 10 0 2 10 0 0\n";
        let t = parse_proc_stat(stat).unwrap();
        assert_eq!(t.steal, 20);
        assert_eq!(t.total, 100 + 5 + 50 + 800 + 20 + 1 + 4 + 20);
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4 5 6 7 8\n"), None);
        let later = CpuTimes {
            steal: 30,
            total: t.total + 200,
        };
        assert_eq!(steal_pct(t, later), Some(5.0));
        assert_eq!(steal_pct(later, t), None);
        assert_eq!(steal_pct(t, t), None);
    }

    #[test]
    fn only_late_wakeups_count_as_stalls() {
        let mut t = StallTally::default();
        t.observe(Duration::from_micros(100));
        t.observe(Duration::from_millis(2));
        t.observe(Duration::from_millis(5));
        t.observe(Duration::from_millis(7));
        assert_eq!((t.wakeups, t.stalls), (4, 2));
        let r = t.report(Duration::from_secs(2));
        assert_eq!(r.per_s, 1.0);
        assert!((r.mean_ms - 6.0).abs() < 1e-9, "{r:?}");
        assert!((r.max_ms - 7.0).abs() < 1e-9, "{r:?}");
        assert!((r.stalled_pct - 0.6).abs() < 1e-9, "{r:?}");
        assert_eq!(StallTally::default().report(Duration::ZERO).mean_ms, 0.0);
    }

    #[test]
    fn the_probe_runs_and_stops() {
        let probe = StallProbe::start().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let r = probe.finish();
        assert!(r.wakeups >= 1, "{r:?}");
        assert!(r.stalled_pct <= 100.0, "{r:?}");
    }
}
