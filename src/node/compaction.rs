//! Automatic compaction of the MVCC history (`--auto-compaction-mode`,
//! `--auto-compaction-retention`), with etcd's two policies:
//!
//! * **revision**: keep the last `N` revisions. Every
//!   [`REVISION_CHECK_INTERVAL`], if the store is more than `N` revisions
//!   past its compact revision, compact to `revision - N`.
//! * **periodic**: keep the history of the last `T`. The leader samples
//!   its revision every `T / 10`, and every `T` (at most every hour, as
//!   etcd) compacts to the newest sample that is at least `T` old.
//!
//! Only the leader decides, and a compaction is an ordinary `Compact`
//! command through the log, so every replica compacts at the same revision.
//! A node that stops leading forgets its samples (etcd pauses its compactor
//! on followers): a new leader starts sampling afresh, so no history newer
//! than `T` is ever compacted, at the price of keeping some longer after a
//! failover.
//!
//! The policy is pure: it is fed elapsed time and revisions by the Raft
//! loop ([`super::RaftLoop`]), so the simulation runs it on virtual time.

use std::collections::VecDeque;
use std::time::Duration;

/// How often the revision policy looks at the store.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The longest period of the periodic policy (etcd's cap).
pub const MAX_PERIOD: Duration = Duration::from_secs(3600);
/// The shortest sampling step of the periodic policy.
const MIN_SAMPLE_STEP: Duration = Duration::from_millis(100);

/// Which history the leader compacts away on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never (compaction only on request).
    #[default]
    Off,
    /// Keep this many revisions (`--auto-compaction-mode revision`).
    Revisions(i64),
    /// Keep the history of this long (`--auto-compaction-mode periodic`).
    Periodic(Duration),
}

/// Why a `--auto-compaction-*` setting was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutoCompactionError {
    /// The mode is neither `revision` nor `periodic`.
    #[error("unknown auto-compaction mode {0:?} (use \"revision\" or \"periodic\")")]
    UnknownMode(String),
    /// The retention does not parse for the mode.
    #[error(
        "bad auto-compaction retention {value:?} for mode {mode}: {why} \
         (revision: a count such as 1000; periodic: a duration such as 30m, 1h, 90s, or hours as a number)"
    )]
    BadRetention {
        /// The mode.
        mode: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

impl AutoCompaction {
    /// Parses etcd's flags: `mode` is `revision` or `periodic`; `retention`
    /// is a revision count, or a duration (`90s`, `30m`, `1h`; a bare
    /// number is hours, as etcd). A retention of `0` turns compaction off.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, AutoCompactionError> {
        let bad = |mode, why| AutoCompactionError::BadRetention {
            mode,
            value: retention.to_string(),
            why,
        };
        match mode {
            "revision" => {
                let n: i64 = retention
                    .trim()
                    .parse()
                    .map_err(|_| bad("revision", "not a whole number"))?;
                match n {
                    0 => Ok(AutoCompaction::Off),
                    n if n < 0 => Err(bad("revision", "negative")),
                    n => Ok(AutoCompaction::Revisions(n)),
                }
            }
            "periodic" => {
                let d = parse_duration(retention.trim())
                    .ok_or_else(|| bad("periodic", "not a duration"))?;
                if d.is_zero() {
                    Ok(AutoCompaction::Off)
                } else {
                    Ok(AutoCompaction::Periodic(d))
                }
            }
            other => Err(AutoCompactionError::UnknownMode(other.to_string())),
        }
    }
}

/// `90s`, `30m`, `2h`, `500ms`, or a bare number of hours (etcd's
/// `--auto-compaction-retention=1` means one hour).
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    if split == 0 {
        return None;
    }
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" | "" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The leader's compaction policy (see the module doc). Fed by the loop
/// with the time since it started and the store's revisions.
#[derive(Clone, Debug)]
pub struct AutoCompactor {
    policy: AutoCompaction,
    /// When the policy last acted (checked or compacted), while leading.
    last_run: Option<Duration>,
    /// Periodic policy: `(time, revision)` samples, oldest first.
    samples: VecDeque<(Duration, i64)>,
    /// The last revision this leader asked to compact to.
    last_proposed: i64,
}

impl AutoCompactor {
    /// A compactor following `policy`.
    pub fn new(policy: AutoCompaction) -> AutoCompactor {
        AutoCompactor {
            policy,
            last_run: None,
            samples: VecDeque::new(),
            last_proposed: 0,
        }
    }

    /// Called on every tick: `now` is the time since the loop started,
    /// `leader` whether this node leads, `revision`/`compact_revision` the
    /// store's. Returns the revision to compact to, if it is time.
    pub fn poll(
        &mut self,
        now: Duration,
        leader: bool,
        revision: i64,
        compact_revision: i64,
    ) -> Option<i64> {
        if !leader {
            self.last_run = None;
            self.samples.clear();
            return None;
        }
        let floor = compact_revision.max(self.last_proposed);
        match self.policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revisions(keep) => {
                let last = *self.last_run.get_or_insert(now);
                if now.saturating_sub(last) < REVISION_CHECK_INTERVAL {
                    return None;
                }
                self.last_run = Some(now);
                let target = revision - keep;
                self.propose_if_new(target, floor)
            }
            AutoCompaction::Periodic(keep) => {
                let step = (keep / 10).max(MIN_SAMPLE_STEP);
                if self
                    .samples
                    .back()
                    .is_none_or(|(t, _)| now.saturating_sub(*t) >= step)
                {
                    self.samples.push_back((now, revision));
                }
                let last = *self.last_run.get_or_insert(now);
                if now.saturating_sub(last) < keep.min(MAX_PERIOD) {
                    return None;
                }
                // The newest sample at least `keep` old: everything after it
                // is younger than the retention and stays.
                let old_enough = self
                    .samples
                    .iter()
                    .rposition(|(t, _)| now.saturating_sub(*t) >= keep)?;
                let target = self.samples[old_enough].1;
                self.samples.drain(..old_enough);
                self.last_run = Some(now);
                self.propose_if_new(target, floor)
            }
        }
    }

    fn propose_if_new(&mut self, target: i64, floor: i64) -> Option<i64> {
        if target > floor {
            self.last_proposed = target;
            Some(target)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn parses_etcd_flags() {
        assert_eq!(
            AutoCompaction::parse("revision", "1000"),
            Ok(AutoCompaction::Revisions(1000))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "30m"),
            Ok(AutoCompaction::Periodic(secs(1800)))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "500ms"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(500)))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "0"),
            Ok(AutoCompaction::Off)
        );
        assert!(AutoCompaction::parse("revision", "-3").is_err());
        assert!(AutoCompaction::parse("revision", "ten").is_err());
        assert!(AutoCompaction::parse("periodic", "5 parsecs").is_err());
        assert!(matches!(
            AutoCompaction::parse("hourly", "1"),
            Err(AutoCompactionError::UnknownMode(_))
        ));
    }

    #[test]
    fn a_bare_number_of_hours_is_a_periodic_retention() {
        assert_eq!(
            AutoCompaction::parse("periodic", "2"),
            Ok(AutoCompaction::Periodic(secs(7200)))
        );
    }

    #[test]
    fn revision_policy_keeps_the_last_n_revisions() {
        let mut c = AutoCompactor::new(AutoCompaction::Revisions(100));
        assert_eq!(
            c.poll(secs(0), true, 500, 0),
            None,
            "first look only starts the clock"
        );
        assert_eq!(
            c.poll(secs(1), true, 500, 0),
            None,
            "not yet the check interval"
        );
        assert_eq!(c.poll(secs(5), true, 500, 0), Some(400));
        // The proposal is in flight: not proposed again.
        assert_eq!(c.poll(secs(10), true, 500, 0), None);
        assert_eq!(c.poll(secs(15), true, 650, 400), Some(550));
        // Too little history to compact anything.
        let mut young = AutoCompactor::new(AutoCompaction::Revisions(100));
        young.poll(secs(0), true, 50, 0);
        assert_eq!(young.poll(secs(5), true, 50, 0), None);
    }

    #[test]
    fn followers_never_compact_and_a_new_leader_starts_afresh() {
        let mut c = AutoCompactor::new(AutoCompaction::Revisions(10));
        assert_eq!(c.poll(secs(0), false, 500, 0), None);
        assert_eq!(c.poll(secs(100), false, 500, 0), None);
        assert_eq!(
            c.poll(secs(101), true, 500, 0),
            None,
            "leading starts the clock"
        );
        assert_eq!(c.poll(secs(106), true, 500, 0), Some(490));
    }

    #[test]
    fn periodic_policy_never_compacts_history_younger_than_the_retention() {
        let keep = secs(60);
        let mut c = AutoCompactor::new(AutoCompaction::Periodic(keep));
        // One revision per second; the revision at time t is 1 + t.
        let mut compactions = Vec::new();
        for t in 0..=300u64 {
            if let Some(r) = c.poll(secs(t), true, 1 + t as i64, 0) {
                compactions.push((t, r));
            }
        }
        assert!(
            !compactions.is_empty(),
            "compacted at least once in 5 periods"
        );
        for &(t, r) in &compactions {
            // Revision r was current at time r - 1, which must be ≥ keep ago.
            assert!(
                (t as i64) - (r - 1) >= keep.as_secs() as i64,
                "at {t}s compacted to {r}, which is younger than the retention"
            );
            // And not much older than needed: within one sampling step.
            assert!((t as i64) - (r - 1) <= keep.as_secs() as i64 + 6);
        }
        let targets: Vec<i64> = compactions.iter().map(|c| c.1).collect();
        assert!(targets.windows(2).all(|w| w[0] < w[1]), "{targets:?}");
    }
}
