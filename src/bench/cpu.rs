//! CPU time of processes, from `/proc/PID/stat` (Linux).
//!
//! `raftkv bench --pids` reads user + system time of the server processes
//! before and after the measured run, so that the cost of an operation can be
//! given in CPU-milliseconds summed over the cluster's members, whatever the
//! machine's core count or the other load on it.

use std::io;

/// User + system CPU time of `pid` so far, in milliseconds (all threads).
pub fn cpu_ms(pid: u32) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })?;
    Ok(ticks as f64 * 1000.0 / ticks_per_second() as f64)
}

/// CPU time of this process so far, in milliseconds.
pub fn self_cpu_ms() -> io::Result<f64> {
    cpu_ms(std::process::id())
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/PID/stat`.
/// The command name (field 2) may contain spaces and parentheses, so the
/// fields are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // `after` starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t
    } else {
        100
    }
}

/// CPU time of a set of processes at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// `(pid, CPU ms)`, or the error reading it.
    pub per_pid: Vec<(u32, Result<f64, String>)>,
}

impl Snapshot {
    /// Reads the CPU time of every process in `pids`.
    pub fn take(pids: &[u32]) -> Snapshot {
        Snapshot {
            per_pid: pids
                .iter()
                .map(|&p| (p, cpu_ms(p).map_err(|e| format!("PID {p}: {e}"))))
                .collect(),
        }
    }

    /// CPU ms used by each process between `self` (earlier) and `later`;
    /// an error for a process that could not be read either time (e.g. it
    /// exited).
    pub fn delta(&self, later: &Snapshot) -> Vec<(u32, Result<f64, String>)> {
        self.per_pid
            .iter()
            .zip(&later.per_pid)
            .map(|((pid, before), (_, after))| {
                let d = match (before, after) {
                    (Ok(b), Ok(a)) => Ok((a - b).max(0.0)),
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                (*pid, d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_command_names() {
        let line = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 4 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = Snapshot::take(&[std::process::id()]);
        // Burn a little CPU (bounded), enough for a few clock ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = Snapshot::take(&[std::process::id()]);
        let d = before.delta(&after);
        let used = d[0].1.as_ref().copied().unwrap();
        assert!(used > 0.0, "used {used} ms");
    }

    #[test]
    fn a_missing_process_is_an_error_not_a_zero() {
        // PIDs are below 2^22 on Linux.
        let snap = Snapshot::take(&[u32::MAX - 1]);
        assert!(snap.per_pid[0].1.is_err());
        assert!(snap.delta(&snap)[0].1.is_err());
    }
}
