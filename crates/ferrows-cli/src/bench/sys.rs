//! What the load generator reads from the operating system: its own CPU
//! time, another process's CPU time and memory from `/proc`, and the open
//! file limit.

use std::time::Duration;

/// Raises the soft limit on open files to the hard limit, returning the
/// limit now in force (`None` where that cannot be known).
#[cfg(unix)]
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(_) => Some(soft),
    }
}

/// Raises the soft limit on open files to the hard limit, returning the
/// limit now in force (`None` where that cannot be known).
#[cfg(not(unix))]
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    None
}

/// This process's CPU time so far (user + system, all threads).
#[cfg(unix)]
pub(crate) fn own_cpu_time() -> Option<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    u64::try_from(micros).ok().map(Duration::from_micros)
}

/// This process's CPU time so far (user + system, all threads).
#[cfg(not(unix))]
pub(crate) fn own_cpu_time() -> Option<Duration> {
    None
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
#[cfg(unix)]
fn clock_ticks_per_second() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK).ok()??;
    u64::try_from(ticks).ok().filter(|&t| t > 0)
}

#[cfg(not(unix))]
fn clock_ticks_per_second() -> Option<u64> {
    None
}

/// The CPU time (user + system, all threads, children not included) that
/// process `pid` has used so far, from `/proc/PID/stat`.
pub(crate) fn process_cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat"),
        )
    })?;
    let per_second = clock_ticks_per_second().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "clock ticks per second unknown",
        )
    })?;
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(per_second);
    Ok(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// utime + stime (fields 14 and 15) from the text of `/proc/PID/stat`. The
/// command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    // Fields from 3 (state) on; utime is field 14, stime 15.
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time so far of each process in `pids` (`None` where it cannot
/// be read, e.g. the process has exited).
pub(crate) fn cpu_times(pids: &[u32]) -> Vec<Option<Duration>> {
    pids.iter().map(|&p| process_cpu_time(p).ok()).collect()
}

/// The CPU time each process spent between two [`cpu_times`] samples.
pub(crate) fn cpu_spent(
    before: &[Option<Duration>],
    after: &[Option<Duration>],
) -> Vec<Option<Duration>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.zip(*b).map(|(a, b)| a.saturating_sub(b)))
        .collect()
}

/// The sum of per-process CPU times; `None` if any is unknown or there
/// are none.
pub(crate) fn cpu_total(spent: &[Option<Duration>]) -> Option<Duration> {
    if spent.is_empty() {
        return None;
    }
    spent
        .iter()
        .try_fold(Duration::ZERO, |sum, d| d.map(|d| sum + d))
}

/// The command name of process `pid` (`/proc/PID/comm`).
pub(crate) fn process_name(pid: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim().to_owned())
}

/// Resident memory of process `pid`, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rss {
    /// `VmRSS`: resident set size now, in KiB.
    pub(crate) current_kib: u64,
    /// `VmHWM`: the peak resident set size, in KiB.
    pub(crate) peak_kib: u64,
}

/// Reads [`Rss`] of process `pid`.
pub(crate) fn process_rss(pid: u32) -> std::io::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no VmRSS/VmHWM in /proc/{pid}/status"),
        )
    })
}

fn parse_status_rss(status: &str) -> Option<Rss> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let value = line.get(name.len()..)?.trim();
        value.strip_suffix("kB")?.trim().parse().ok()
    };
    Some(Rss {
        current_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Checks that `pid` names a live process we can read, with a clear error.
pub(crate) fn check_pid(pid: u32) -> anyhow::Result<()> {
    process_cpu_time(pid)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("--server-pid {pid}: cannot read /proc/{pid}/stat: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_name() {
        let stat = "4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tferrows\nVmPeak:\t  100 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8192 kB\nThreads:\t2\n";
        assert_eq!(
            parse_status_rss(status),
            Some(Rss {
                current_kib: 8192,
                peak_kib: 9000
            })
        );
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_sums() {
        let s = Duration::from_secs;
        let spent = cpu_spent(
            &[Some(s(1)), Some(s(2)), None],
            &[Some(s(3)), Some(s(2)), Some(s(9))],
        );
        assert_eq!(spent, vec![Some(s(2)), Some(s(0)), None]);
        assert_eq!(cpu_total(&spent), None);
        assert_eq!(cpu_total(spent.get(..2).unwrap()), Some(s(2)));
        assert_eq!(cpu_total(&[]), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_cpu_time(pid).is_ok());
        assert!(process_rss(pid).unwrap().current_kib > 0);
        assert!(raise_nofile_limit().is_some());
        assert!(process_name(pid).is_some_and(|n| !n.is_empty()));
        assert_eq!(cpu_times(&[pid]).len(), 1);
    }
}
