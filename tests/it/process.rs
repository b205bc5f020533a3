//! The real binary: `--version`, `--check-config`, configuration errors naming the key and
//! the file, and a clean SIGTERM shutdown.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_fluxmq-edge");

/// A configuration file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fluxmq-edge-it-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("fluxmq-edge {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let f = TempFile::new(
        "server:\n  tcp: { v3: { addr: \"127.0.0.1:18830\" } }\nsession: { max_offline_queue_size: 42 }\n",
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&f.0)
        .arg("--check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("127.0.0.1:18830"), "{stdout}");
    assert!(stdout.contains("max_offline_queue_size: 42"), "{stdout}");
    assert!(stdout.contains("broker:") && stdout.contains("session:"));
    assert!(stderr.contains("configuration OK"), "{stderr}");
    // What it prints is itself a valid configuration.
    fluxmq_edge::config::load_str(&stdout, "<printed>").expect("printed YAML loads");
}

#[test]
fn check_config_names_the_unknown_key_and_the_file() {
    let f = TempFile::new("server: {tcp: {v3: {adr: \":1\"}}}\n");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&f.0)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("server.tcp.v3.adr"), "{stderr}");
    assert!(stderr.contains(&f.0.display().to_string()), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing printed on stdout");
}

#[test]
fn a_bad_configuration_stops_start_up_with_exit_1() {
    let f = TempFile::new(
        "server: { tcp: { v3: { addr: \"127.0.0.1:0\" } } }\nbroker: { max_qos: 3 }\n",
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&f.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("broker.max_qos"), "{stderr}");
    assert!(stderr.contains(&f.0.display().to_string()), "{stderr}");
}

/// The binary started on a temp config; its listener addresses read from its log.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) v3: SocketAddr,
    pub(crate) v5: SocketAddr,
    _config: TempFile,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start() -> Process {
        Process::start_with("")
    }

    /// The binary with the test listeners and `extra` top-level YAML sections.
    pub(crate) fn start_with(extra: &str) -> Process {
        // Port 0: the OS picks free ports, and the log says which.
        let config = TempFile::new(&format!(
            "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  shutdown_timeout: 5s\nlog: {{ level: info }}\n{extra}"
        ));
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read stderr on a thread for the whole life of the process (a full pipe would
        // block it), handing the lines over.
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr_of = |line: &str, key: &str| {
            let marker = format!("{key}: MQTT listening on ");
            line.find(&marker).map(|i| {
                line[i + marker.len()..]
                    .trim()
                    .parse::<SocketAddr>()
                    .unwrap()
            })
        };
        let (mut v3, mut v5) = (None, None);
        let deadline = Instant::now() + T;
        while v3.is_none() || v5.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no listening lines within {T:?}"));
            v3 = v3.or_else(|| addr_of(&line, "server.tcp.v3"));
            v5 = v5.or_else(|| addr_of(&line, "server.tcp.v5"));
        }
        Process {
            child,
            v3: v3.unwrap(),
            v5: v5.unwrap(),
            _config: config,
            lines,
        }
    }

    /// Resident memory of the process (VmRSS), bytes.
    #[cfg_attr(not(feature = "auth-grpc"), allow(dead_code))] // used by auth_mqtt only
    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait for the exit within `within`; returns the exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(t0.elapsed() < within, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn sigterm_sends_0x8b_and_exits_0_within_shutdown_timeout() {
    let mut p = Process::start();
    let mut c5 = Raw::v5(p.v5, "term5");
    // A will is published at shutdown too, but nobody is left to see it: not asserted.
    let (mut c3, _) = Raw::connect_ok(p.v3, &Connect::v3("term3").will(WillSpec::new("w", b"bye")));
    c5.ping();
    c3.ping();
    let t0 = Instant::now();
    p.signal("TERM");
    let (code, _) = c5.expect_disconnect();
    assert_eq!(code, 0x8B, "Server shutting down");
    c3.expect_closed_silently();
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "within server.shutdown_timeout"
    );
    let log: Vec<String> = p.lines.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
}

#[test]
fn sigint_stops_the_broker_too() {
    let mut p = Process::start();
    let mut c = Raw::v5(p.v5, "int5");
    p.signal("INT");
    assert_eq!(c.expect_disconnect().0, 0x8B);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}
