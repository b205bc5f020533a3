//! Counts every system call a process makes during the measured phase, from the outside, by
//! running `perf stat -e raw_syscalls:sys_enter -p PID` (kernel tracepoint counting, no
//! sampling). `/proc/PID/io` only counts read/write-family calls, so it misses send/recv,
//! epoll_wait, epoll_ctl and the rest; this is the figure to compare across brokers.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub struct SyscallCounter {
    child: Child,
    out: PathBuf,
}

fn perf_attached(perf_pid: u32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{perf_pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("perf_event")))
}

impl SyscallCounter {
    /// Starts counting `pid`'s syscalls; `Err` says why it could not (no perf, no permission).
    #[allow(unsafe_code)]
    pub fn start(pid: u32) -> Result<SyscallCounter, String> {
        let out = std::env::temp_dir().join(format!(
            "fluxmq-bench-perf-{}-{pid}.csv",
            std::process::id()
        ));
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        // If the load generator dies (timeout, ^C), perf is told to stop as well.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run perf: {e}"))?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if perf_attached(child.id()) {
                return Ok(SyscallCounter { child, out });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let msg = fs::read_to_string(&out).unwrap_or_default();
                let _ = fs::remove_file(&out);
                return Err(format!("perf exited ({status}): {}", msg.trim()));
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("perf did not attach within 5 s".into())
    }

    /// Stops perf (SIGINT makes it print its counts) and returns the syscall count.
    #[allow(unsafe_code)]
    pub fn stop(mut self) -> Result<u64, String> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if t.elapsed() < Duration::from_secs(5) => {
                    thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let text = fs::read_to_string(&self.out).map_err(|e| format!("perf output: {e}"))?;
        let _ = fs::remove_file(&self.out);
        parse_perf_csv(&text).ok_or_else(|| format!("unparsable perf output: {}", text.trim()))
    }
}

/// The count from `perf stat -x ,` output: first field of the `raw_syscalls:sys_enter` line.
pub fn parse_perf_csv(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv() {
        let t = "# started on Sat Nov 29 02:50:00 2026\n\n1752528,,raw_syscalls:sys_enter,2001432407,100.00,,\n";
        assert_eq!(parse_perf_csv(t), Some(1_752_528));
        assert_eq!(
            parse_perf_csv("<not counted>,,raw_syscalls:sys_enter,0,0.00,,"),
            None
        );
    }
}
