//! A bounded ring of recent events, printed when a run fails.
//!
//! Formatting every event would dominate the run time, so tracing is off in
//! normal runs; a failing seed is simply run again with tracing on (the
//! simulation is deterministic, so it fails the same way).

use std::collections::VecDeque;

/// The last `cap` trace lines of a run (or nothing, when disabled).
#[derive(Debug)]
pub struct Trace {
    enabled: bool,
    cap: usize,
    lines: VecDeque<String>,
}

impl Trace {
    /// A trace keeping the last `cap` lines; `enabled = false` records
    /// nothing and costs nothing.
    pub fn new(enabled: bool, cap: usize) -> Self {
        Trace {
            enabled,
            cap: cap.max(1),
            lines: VecDeque::new(),
        }
    }

    /// True when lines are being recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records the line built by `f` (only called when enabled).
    pub fn record(&mut self, time: u64, f: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(format!("t={time:>6} {}", f()));
    }

    /// The recorded lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_newest_lines() {
        let mut t = Trace::new(true, 2);
        for i in 0..5 {
            t.record(i, || format!("e{i}"));
        }
        assert_eq!(t.lines(), vec!["t=     3 e3", "t=     4 e4"]);
        let mut off = Trace::new(false, 2);
        off.record(0, || unreachable!("never formatted when disabled"));
        assert!(off.lines().is_empty());
    }
}
