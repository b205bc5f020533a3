//! `loadgen`: MQTT load generator that measures a broker from the outside. Modes: `run`
//! (publishers/subscribers in a pattern, the default), `idle-conns`, `stalled-sub`. Prints one
//! JSON line on stdout (load-side and, with `--broker-pid`, broker-side figures) and one human
//! line on stderr. See bench/README.md for what each figure means.

mod args;
mod client;
mod engine;
mod hist;
mod json;
mod mqtt;
mod procstat;
mod scenarios;
mod syscount;
mod tls;

use args::Args;
use engine::{Outcome, Pattern, RunSpec};
use json::JsonLine;
use mqtt::Version;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

const USAGE: &str = "\
usage: loadgen [run|idle-conns|stalled-sub|tls] [options]

common:   --host 127.0.0.1 (loopback only)  --port 1883  --mqtt 3|5  --broker-pid PID
          --label TEXT  --keepalive 60  --connect-timeout 10
run:      --pattern 1to1|fanin|fanout|distinct|shared  --pubs N  --subs M  --qos 0|1|2
          --payload 16  --duration SECS (default 5) | --count TOTAL  --rate MSGS_PER_S
          --window 500  --inflight 100  --window-timeout 1  --drain-idle 1  --drain-max 10
          --max-time 600  --syscalls perf|proc  --coalesce-us 20  --coalesce-max-us 2000
idle-conns:  --conns 5000  --batch 50  --settle 2
stalled-sub: --messages 2000000  --payload 256  --qos 0  --healthy 1  --rate R  --window 500
             --stalled-drain 30
tls:      --cafile CA.pem  [--cert C.pem --key K.pem]  --server-name localhost
          --connects 200 (serial full TLS 1.3 connect -> CONNACK)  --conns 1000 (idle)
          --batch 50  --settle 2
";

fn secs(a: &Args, key: &str, default: f64) -> Result<Duration, String> {
    let v: f64 = a.get(key, default)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("--{key} must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

struct Common {
    addr: SocketAddr,
    version: Version,
    broker_pid: Option<u32>,
    label: String,
    keepalive: u16,
    connect_timeout: Duration,
}

fn common(a: &Args) -> Result<Common, String> {
    let host: IpAddr = a.get("host", IpAddr::from([127, 0, 0, 1]))?;
    if !host.is_loopback() {
        return Err(format!(
            "--host {host}: the bench only targets loopback addresses"
        ));
    }
    let version = match a.get("mqtt", "3".to_string())?.as_str() {
        "3" | "4" | "311" | "3.1.1" => Version::V311,
        "5" | "5.0" => Version::V5,
        other => return Err(format!("--mqtt {other}: use 3 (3.1.1) or 5")),
    };
    let broker_pid = a.opt("broker-pid")?;
    if let Some(pid) = broker_pid
        && procstat::sample(Some(pid)).is_err()
    {
        return Err(format!("--broker-pid {pid}: cannot read /proc/{pid}"));
    }
    Ok(Common {
        addr: SocketAddr::new(host, a.get("port", 1883u16)?),
        version,
        broker_pid,
        label: a.get("label", String::new())?,
        keepalive: a.get("keepalive", 60u16)?,
        connect_timeout: secs(a, "connect-timeout", 10.0)?,
    })
}

fn per(x: f64, n: u64) -> f64 {
    if n == 0 { f64::NAN } else { x / n as f64 }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn header(j: &mut JsonLine, mode: &str, c: &Common) {
    j.str("mode", mode).str("label", &c.label);
    j.int(
        "mqtt",
        match c.version {
            Version::V311 => 3,
            Version::V5 => 5,
        },
    );
    j.int("port", u64::from(c.addr.port()));
}

/// Run-mode figures (shared by `stalled-sub` for its healthy side). Returns the human summary.
fn report_run(j: &mut JsonLine, spec: &RunSpec, o: &Outcome) -> String {
    let c = &o.cost;
    let delivered_per_s = c.received as f64 / c.secs.max(1e-9);
    j.str("pattern", spec.pattern.name())
        .int("pubs", spec.pubs as u64)
        .int("subs", spec.subs as u64)
        .int("qos", u64::from(spec.qos))
        .int("payload", spec.payload as u64)
        .opt_num("rate", spec.rate)
        .int("window", spec.window)
        .int("sent", o.sent)
        .int("expected", o.expected)
        .int("received", o.received)
        .int("lost", o.lost)
        .num("loss_pct", 100.0 * per(o.lost as f64, o.expected).max(0.0))
        .int("duplicates", o.duplicates)
        .int("window_writeoffs", o.write_offs)
        .int("written_off_msgs", o.written_off_msgs)
        .int("disconnects", o.disconnects)
        .int("pub_errors", o.pub_errors)
        .int("unacked", o.unacked)
        .bool("timed_out", o.timed_out)
        .num("wall_s", o.wall_s)
        .num("publish_s", o.publish_s)
        .num("first_send_to_last_delivery_s", o.measured_s)
        .num("pub_msgs_per_s", o.sent as f64 / o.publish_s.max(1e-9))
        .num("cost_s", c.secs)
        .int("cost_received", c.received)
        .num("msgs_per_s", delivered_per_s);
    if spec.pattern == Pattern::Shared && !o.per_sub_received.is_empty() {
        j.int(
            "member_min",
            o.per_sub_received.iter().copied().min().unwrap_or(0),
        );
        j.int(
            "member_max",
            o.per_sub_received.iter().copied().max().unwrap_or(0),
        );
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p99, p999) = (
        o.latency.quantile(0.5),
        o.latency.quantile(0.99),
        o.latency.quantile(0.999),
    );
    j.num("lat_p50_us", us(p50))
        .num("lat_p99_us", us(p99))
        .num("lat_p999_us", us(p999))
        .num("lat_max_us", us(o.latency.max()))
        .int("lat_samples", o.latency.count());

    let own_cpu_s = c.own_cpu_us as f64 / 1e6;
    let own_per_msg = per(c.own_cpu_us as f64, c.received);
    j.num("loadgen_cpu_s", own_cpu_s)
        .num("loadgen_cpu_us_per_msg", own_per_msg)
        .num("loadgen_cpu_pct", 100.0 * own_cpu_s / c.secs.max(1e-9))
        .int("loadgen_rss_kib", c.own.1.rss_kib);
    // Syscalls: every syscall from the perf stretch, else read/write-family from /proc io.
    let counted = o
        .counted
        .filter(|k| k.broker_syscalls.is_some() || k.own_syscalls.is_some());
    let own_sys = counted.and_then(|k| k.own_syscalls.map(|v| per(v as f64, k.received)));
    j.str(
        "syscalls_source",
        if counted.is_some() { "perf" } else { "proc-io" },
    )
    .str("perf_error", o.perf_error.as_deref().unwrap_or(""))
    .opt_num("loadgen_syscalls_per_msg", own_sys);
    if let Some(k) = counted {
        j.num("counted_s", k.secs)
            .int("counted_received", k.received);
    }
    let mut broker_txt = String::from("broker: not sampled (no --broker-pid)");
    if let (Some((b0, b1)), Some((w0, w1))) = (&c.broker, &o.broker) {
        let d = b0.delta(b1);
        let whole = w0.delta(w1);
        let cpu_us = per(d.cpu_s * 1e6, c.received);
        let rw = d.syscalls.map(|s| per(s as f64, c.received));
        let sys = match counted {
            Some(k) => k.broker_syscalls.map(|v| per(v as f64, k.received)),
            None => rw,
        };
        j.num("broker_cpu_s", d.cpu_s)
            .num("broker_cpu_us_per_msg", cpu_us)
            .num("broker_cpu_us_per_pub", per(d.cpu_s * 1e6, c.sent))
            .num("broker_cpu_pct", 100.0 * d.cpu_s / c.secs.max(1e-9))
            .opt_num("broker_syscalls_per_msg", sys)
            .opt_num("broker_rw_syscalls_per_msg", rw)
            .num("broker_ctxt_per_msg", per(d.ctxt as f64, c.received));
        if let Some((k0, k1)) = counted.and_then(|k| k.broker) {
            let kd = k0.delta(&k1);
            let n = counted.map_or(0, |k| k.received);
            j.num("broker_cpu_us_per_msg_under_perf", per(kd.cpu_s * 1e6, n));
        }
        j.int("broker_rss_before_kib", whole.rss_before_kib)
            .int("broker_rss_after_kib", whole.rss_after_kib)
            .int("broker_rss_max_kib", o.broker_rss_max_kib)
            .int("broker_hwm_kib", whole.hwm_kib)
            .int("broker_threads", w1.threads);
        broker_txt = format!(
            "broker {:.2} µs/msg, {} syscalls/msg ({}), RSS {:.1} MiB (peak {:.1}) | loadgen {:.2} µs/msg ({:.0}% of broker), {} syscalls/msg",
            cpu_us,
            sys.map_or("?".to_string(), |s| format!("{s:.2}")),
            if counted.is_some() {
                "perf"
            } else {
                "read/write only"
            },
            mib(whole.rss_after_kib),
            mib(whole.hwm_kib),
            own_per_msg,
            100.0 * own_cpu_s / d.cpu_s.max(1e-9),
            own_sys.map_or("?".to_string(), |s| format!("{s:.2}")),
        );
    }
    format!(
        "{} qos{} {}B {}->{}: {:.0} msg/s delivered, lost {} of {} ({:.3}%), latency p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs | {}",
        spec.pattern.name(),
        spec.qos,
        spec.payload,
        spec.pubs,
        spec.subs,
        delivered_per_s,
        o.lost,
        o.expected,
        100.0 * per(o.lost as f64, o.expected).max(0.0),
        us(p50),
        us(p99),
        us(p999),
        broker_txt,
    )
}

fn run_spec(
    a: &Args,
    c: &Common,
    pattern: Pattern,
    payload_default: usize,
) -> Result<RunSpec, String> {
    let (dp, ds) = pattern.default_counts();
    let qos: u8 = a.get("qos", 0)?;
    if qos > 2 {
        return Err("--qos must be 0, 1 or 2".into());
    }
    let count: Option<u64> = a.opt("count")?;
    let duration = match (a.opt::<f64>("duration")?, count) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(5)),
    };
    let rate: Option<f64> = a.opt("rate")?;
    if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    Ok(RunSpec {
        addr: c.addr,
        version: c.version,
        qos,
        payload: a.get("payload", payload_default)?,
        pattern,
        pubs: a.get("pubs", dp)?,
        subs: a.get("subs", ds)?,
        stalled: 0,
        duration,
        count,
        rate,
        window: a.get("window", 500)?,
        inflight: a.get("inflight", 100)?,
        keepalive: c.keepalive,
        window_timeout: secs(a, "window-timeout", 1.0)?,
        drain_idle: secs(a, "drain-idle", 1.0)?,
        drain_max: secs(a, "drain-max", 10.0)?,
        max_time: secs(a, "max-time", 600.0)?,
        broker_pid: c.broker_pid,
        connect_timeout: c.connect_timeout,
        coalesce: Duration::from_micros(a.get("coalesce-us", 20)?),
        coalesce_max: Duration::from_micros(a.get("coalesce-max-us", 2000)?),
        perf_syscalls: match a.get("syscalls", "perf".to_string())?.as_str() {
            "perf" => true,
            "proc" => false,
            other => return Err(format!("--syscalls {other}: use perf or proc")),
        },
    })
}

fn mode_run(a: &Args, j: &mut JsonLine) -> Result<String, String> {
    let c = common(a)?;
    let pattern_name = a.get("pattern", "1to1".to_string())?;
    let pattern = Pattern::parse(&pattern_name).ok_or_else(|| {
        format!("--pattern {pattern_name}: use 1to1|fanin|fanout|distinct|shared")
    })?;
    let spec = run_spec(a, &c, pattern, 16)?;
    a.finish()?;
    header(j, "run", &c);
    let o = engine::run(&spec).map_err(|e| format!("run failed: {e}"))?;
    Ok(report_run(j, &spec, &o))
}

fn mode_idle(a: &Args, j: &mut JsonLine) -> Result<String, String> {
    let c = common(a)?;
    let spec = scenarios::IdleSpec {
        addr: c.addr,
        version: c.version,
        conns: a.get("conns", 5000)?,
        batch: a.get("batch", 50)?,
        keepalive: c.keepalive,
        settle: secs(a, "settle", 2.0)?,
        broker_pid: c.broker_pid,
        connect_timeout: c.connect_timeout,
    };
    a.finish()?;
    header(j, "idle-conns", &c);
    let o = scenarios::idle_conns(&spec).map_err(|e| format!("idle-conns failed: {e}"))?;
    let n = o.connected as u64;
    j.int("conns", spec.conns as u64)
        .int("connected", n)
        .int("failed", o.failed as u64)
        .str("first_error", o.first_error.as_deref().unwrap_or(""))
        .int("still_open", o.still_open as u64)
        .num("connect_s", o.connect_s)
        .num("connects_per_s", per(n as f64, 1) / o.connect_s.max(1e-9))
        .num("loadgen_cpu_us_per_conn", per(o.own_cpu_us as f64, n))
        .int("fd_limit", o.fd_limit);
    let mut txt = format!(
        "idle-conns: {n} of {} connected ({} failed, {} still open after settle) in {:.2} s",
        spec.conns, o.failed, o.still_open, o.connect_s
    );
    if let Some((b0, b1)) = &o.broker {
        let d = b0.delta(b1);
        let grown = d.rss_after_kib as f64 - d.rss_before_kib as f64;
        let bpc = per(grown * 1024.0, n);
        j.int("broker_rss_before_kib", d.rss_before_kib)
            .int("broker_rss_after_kib", d.rss_after_kib)
            .int("broker_hwm_kib", d.hwm_kib)
            .num("broker_bytes_per_conn", bpc)
            .num("broker_cpu_us_per_conn", per(d.cpu_s * 1e6, n))
            .opt_num(
                "broker_syscalls_per_conn",
                d.syscalls.map(|s| per(s as f64, n)),
            );
        txt += &format!(
            " | broker RSS {:.1} -> {:.1} MiB = {:.0} bytes/conn, {:.1} µs CPU/connect",
            mib(d.rss_before_kib),
            mib(d.rss_after_kib),
            bpc,
            per(d.cpu_s * 1e6, n)
        );
    }
    if let Some(e) = &o.first_error {
        txt += &format!(" | first error: {e}");
    }
    Ok(txt)
}

fn mode_stalled(a: &Args, j: &mut JsonLine) -> Result<String, String> {
    let c = common(a)?;
    let mut spec = run_spec(a, &c, Pattern::FanOut, 256)?;
    spec.pubs = 1;
    spec.subs = a.get("healthy", 1)?;
    spec.stalled = 1;
    spec.count = Some(a.get("messages", 2_000_000)?);
    spec.duration = None;
    let stalled_drain = secs(a, "stalled-drain", 30.0)?;
    a.finish()?;
    header(j, "stalled-sub", &c);
    let mut o = engine::run(&spec).map_err(|e| format!("stalled-sub failed: {e}"))?;
    // Let the broker settle on what it kept for the stalled client, then measure it.
    thread::sleep(Duration::from_secs(1));
    let settled = c.broker_pid.and_then(|p| procstat::sample(Some(p)).ok());
    let mut txt = report_run(j, &spec, &o);
    let mut stalled = o.stalled.pop().ok_or("no stalled subscriber")?;
    let drain = scenarios::drain_stalled(
        &mut stalled,
        c.version,
        Duration::from_secs(2),
        stalled_drain,
    )
    .map_err(|e| format!("draining the stalled subscriber failed: {e}"))?;
    j.bool("stalled_disconnected", drain.disconnected)
        .int("stalled_received", drain.received)
        .int("stalled_bytes", drain.bytes)
        .num("stalled_drain_s", drain.drain_s);
    let mut stalled_txt = format!(
        "stalled subscriber {} by the broker; it still got {} of {} msgs when it read again",
        if drain.disconnected {
            "DISCONNECTED"
        } else {
            "kept"
        },
        drain.received,
        o.sent
    );
    if let (Some((b0, _)), Some(s)) = (&o.broker, settled) {
        let peak = o.broker_rss_max_kib.max(s.hwm_kib).max(s.rss_kib);
        let growth = s.rss_kib as f64 - b0.rss_kib as f64;
        let peak_growth = peak as f64 - b0.rss_kib as f64;
        j.int("broker_rss_settled_kib", s.rss_kib)
            .num("broker_rss_growth_mib", growth / 1024.0)
            .num("broker_peak_growth_mib", peak_growth / 1024.0);
        stalled_txt += &format!(
            "; broker RSS grew {:.1} MiB (peak +{:.1} MiB)",
            growth / 1024.0,
            peak_growth / 1024.0
        );
    }
    txt = format!("stalled-sub: {stalled_txt} | healthy side: {txt}");
    Ok(txt)
}

fn mode_tls(a: &Args, j: &mut JsonLine) -> Result<String, String> {
    let c = common(a)?;
    let cert = match (a.opt::<String>("cert")?, a.opt::<String>("key")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    let spec = tls::TlsSpec {
        addr: c.addr,
        version: c.version,
        server_name: a.get("server-name", "localhost".to_string())?,
        cafile: a.opt("cafile")?.ok_or("--cafile is required")?,
        cert,
        connects: a.get("connects", 200)?,
        conns: a.get("conns", 1000)?,
        batch: a.get("batch", 50)?,
        settle: secs(a, "settle", 2.0)?,
        broker_pid: c.broker_pid,
        keepalive: c.keepalive,
    };
    a.finish()?;
    header(j, "tls", &c);
    let o = tls::run(&spec).map_err(|e| format!("tls failed: {e}"))?;
    let q = |p| tls::quantile(&o.connect_us, p);
    let (median, p90, max) = (q(0.5), q(0.9), q(1.0));
    j.bool("mtls", spec.cert.is_some())
        .int("connects", o.connect_us.len() as u64)
        .int("connect_median_us", median)
        .int("connect_p90_us", p90)
        .int("connect_max_us", max)
        .int("conns", spec.conns as u64)
        .int("connected", o.connected as u64)
        .int("failed", o.failed as u64)
        .str("first_error", o.first_error.as_deref().unwrap_or(""));
    let mut txt = format!(
        "tls: {} serial TLS 1.3 connects -> CONNACK: median {:.2} ms, p90 {:.2} ms, max {:.2} ms; \
         {} of {} idle TLS connections",
        o.connect_us.len(),
        median as f64 / 1000.0,
        p90 as f64 / 1000.0,
        max as f64 / 1000.0,
        o.connected,
        spec.conns
    );
    if let Some((b0, b1)) = &o.broker {
        let grown = b1.rss_kib as f64 - b0.rss_kib as f64;
        let bpc = per(grown * 1024.0, o.connected as u64);
        j.int("broker_rss_before_kib", b0.rss_kib)
            .int("broker_rss_after_kib", b1.rss_kib)
            .num("broker_bytes_per_tls_conn", bpc);
        txt += &format!(
            " | broker RSS {:.1} -> {:.1} MiB = {:.0} bytes/idle TLS conn",
            mib(b0.rss_kib),
            mib(b1.rss_kib),
            bpc
        );
    }
    if let Some(e) = &o.first_error {
        txt += &format!(" | first error: {e}");
    }
    Ok(txt)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (mode, rest) = match raw.first() {
        Some(m) if !m.starts_with("--") => (m.as_str(), &raw[1..]),
        _ => ("run", &raw[..]),
    };
    let mut j = JsonLine::default();
    let result = Args::parse(rest).and_then(|a| match mode {
        "run" => mode_run(&a, &mut j),
        "idle-conns" => mode_idle(&a, &mut j),
        "stalled-sub" => mode_stalled(&a, &mut j),
        "tls" => mode_tls(&a, &mut j),
        other => Err(format!("unknown mode {other:?}\n{USAGE}")),
    });
    match result {
        Ok(human) => {
            println!("{}", j.finish());
            eprintln!("{human}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut err = JsonLine::default();
            err.str("mode", mode).str("error", &e);
            println!("{}", err.finish());
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
