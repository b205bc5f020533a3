//! Reads a process's cost from the outside through /proc: CPU time (`stat` utime+stime over
//! CLK_TCK), read/write syscalls (`io` syscr/syscw), memory (`status` VmRSS/VmHWM) and context
//! switches; plus the load generator's own CPU via getrusage and the fd limit it needs. The
//! only module allowed `unsafe`, for those three libc calls.

use std::fs;
use std::io;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks (all threads).
    pub cpu_ticks: u64,
    /// read-like / write-like syscalls (`/proc/PID/io`); `None` when not readable.
    pub syscr: Option<u64>,
    pub syscw: Option<u64>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub voluntary_ctxt: u64,
    pub involuntary_ctxt: u64,
    pub threads: u64,
}

/// Difference between two samples of the same process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcDelta {
    pub cpu_s: f64,
    pub syscalls: Option<u64>,
    pub ctxt: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
}

impl ProcSample {
    pub fn delta(&self, after: &ProcSample) -> ProcDelta {
        let syscalls = match (self.syscr, self.syscw, after.syscr, after.syscw) {
            (Some(r0), Some(w0), Some(r1), Some(w1)) => {
                Some(r1.saturating_sub(r0) + w1.saturating_sub(w0))
            }
            _ => None,
        };
        ProcDelta {
            cpu_s: after.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / clk_tck() as f64,
            syscalls,
            ctxt: (after.voluntary_ctxt + after.involuntary_ctxt)
                .saturating_sub(self.voluntary_ctxt + self.involuntary_ctxt),
            rss_before_kib: self.rss_kib,
            rss_after_kib: after.rss_kib,
            hwm_kib: after.hwm_kib,
        }
    }
}

/// Samples the broker, saying plainly when it has gone away (crashed or exited mid-run).
pub fn sample_broker(pid: u32) -> io::Result<ProcSample> {
    sample(Some(pid)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::other(format!(
                "broker PID {pid} is gone: it exited or crashed during the run"
            ))
        } else {
            io::Error::new(e.kind(), format!("reading /proc/{pid}: {e}"))
        }
    })
}

/// Samples `pid` (or this process for `None`).
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let io = fs::read_to_string(format!("{dir}/io")).ok();
    if matches!(parse_stat_state(&stat), Some('Z' | 'X')) {
        // Exited but not yet reaped by its parent: /proc still answers, with zeros.
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "process has exited (zombie)",
        ));
    }
    let mut s = parse_status(&status);
    s.cpu_ticks = parse_stat_cpu(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))?;
    if let Some(io) = io {
        s.syscr = field(&io, "syscr:");
        s.syscw = field(&io, "syscw:");
    }
    Ok(s)
}

/// The state letter (R, S, D, Z, ...) from a `/proc/PID/stat` line.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; `comm` may hold spaces).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // after_comm starts at field 3 (state); utime is field 14 => index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn parse_status(status: &str) -> ProcSample {
    ProcSample {
        rss_kib: field(status, "VmRSS:").unwrap_or(0),
        hwm_kib: field(status, "VmHWM:").unwrap_or(0),
        voluntary_ctxt: field(status, "voluntary_ctxt_switches:").unwrap_or(0),
        involuntary_ctxt: field(status, "nonvoluntary_ctxt_switches:").unwrap_or(0),
        threads: field(status, "Threads:").unwrap_or(0),
        ..ProcSample::default()
    }
}

#[allow(unsafe_code)]
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU time (user + system) this process has used so far, in microseconds, all threads.
#[allow(unsafe_code)]
pub fn self_cpu_us() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the right type; getrusage fills it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage returned 0 so the struct is initialised (and it was zeroed anyway).
    let ru = unsafe { ru.assume_init() };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
#[allow(unsafe_code)]
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; failure leaves the old limit in place.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every (32-bit) target
    let soft = lim.rlim_cur as u64;
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let line = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(325));
        assert_eq!(parse_stat_state(line), Some('S'));
        assert_eq!(parse_stat_state("9 (x) Z 1 9"), Some('Z'));
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tmosquitto\nThreads:\t1\nVmHWM:\t    9000 kB\nVmRSS:\t    8000 kB\n\
                 voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n";
        let p = parse_status(s);
        assert_eq!((p.rss_kib, p.hwm_kib, p.threads), (8000, 9000, 1));
        assert_eq!((p.voluntary_ctxt, p.involuntary_ctxt), (10, 2));
    }

    #[test]
    fn samples_self() {
        let a = sample(None).expect("own /proc readable");
        assert!(a.rss_kib > 0);
        let b = sample(None).expect("own /proc readable");
        let d = a.delta(&b);
        assert!(d.cpu_s >= 0.0);
        assert!(clk_tck() > 0);
    }
}
