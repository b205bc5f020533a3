//! `bridges`: throughput of the HTTP and CoAP publish bridges against one MQTT subscriber,
//! in the same run, and the broker's RSS with many CoAP observers. Std only (threads,
//! blocking sockets, hand-encoded HTTP/1.1, CoAP and MQTT 3.1.1); the broker is measured
//! from the outside (`/proc/PID/status` VmRSS).
//!
//!   bridges --pid PID --mqtt HOST:PORT --http HOST:PORT --coap HOST:PORT
//!           [--secs 5] [--http-conns 4] [--coap-window 32] [--observers 1000]
//!
//! Phases: (1) HTTP: `--http-conns` keep-alive connections each POST `/publish`-style raw
//! bodies (`/m/bench/c/http/t`) back to back for `--secs`; (2) CoAP: one UDP socket keeps
//! `--coap-window` NON publishes (`/bench/coap`) outstanding, a new one per response, for
//! `--secs`; the subscriber (`m/#`, `bench/#`, QoS 0) counts what arrives in each phase.
//! (3) Observers: `--observers` UDP sockets each register Observe on `obs/t`; one MQTT
//! publish must reach every one; RSS before and after.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---- MQTT 3.1.1 subscriber ---------------------------------------------------------------

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn mqtt_frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn mqtt_connect(addr: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("MQTT connect");
    s.set_nodelay(true).ok();
    let mut b = Vec::new();
    mqtt_str(&mut b, "MQTT");
    b.extend_from_slice(&[4, 0x02, 0, 60]);
    mqtt_str(&mut b, id);
    s.write_all(&mqtt_frame(0x10, &b)).expect("CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("CONNACK");
    assert_eq!(ack[3], 0, "CONNACK refused");
    s
}

/// Read MQTT packets forever, counting PUBLISHes.
fn mqtt_count(mut s: TcpStream, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0usize;
    loop {
        let n = match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut at = 0;
        loop {
            let rest = &buf[at..have];
            if rest.len() < 2 {
                break;
            }
            let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
            let mut complete = false;
            while i < rest.len() && i <= 4 {
                len += usize::from(rest[i] & 0x7F) * mul;
                mul *= 128;
                i += 1;
                if rest[i - 1] & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || rest.len() < i + len {
                break;
            }
            if rest[0] >> 4 == 3 {
                count.fetch_add(1, Ordering::Relaxed);
            }
            at += i + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
    }
}

// ---- CoAP ------------------------------------------------------------------------------

/// A CoAP request: `kind` 0 CON / 1 NON, `code` 0.02 POST / 0.01 GET, Uri-Path options,
/// optional Observe 0, a 2-byte token, payload.
fn coap(
    kind: u8,
    code: u8,
    mid: u16,
    token: u16,
    path: &[&str],
    observe: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0x40 | (kind << 4) | 2, code];
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(&token.to_be_bytes());
    let mut last = 0u16;
    let mut opt = |out: &mut Vec<u8>, num: u16, val: &[u8]| {
        let delta = num - last;
        last = num;
        assert!(delta < 13 && val.len() < 13, "short options only");
        out.push(((delta as u8) << 4) | val.len() as u8);
        out.extend_from_slice(val);
    };
    if observe {
        opt(&mut out, 6, &[]);
    }
    for seg in path {
        opt(&mut out, 11, seg.as_bytes());
    }
    if !payload.is_empty() {
        out.push(0xFF);
        out.extend_from_slice(payload);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).unwrap_or_else(|| panic!("{n} is required"));
    let pid: u32 = need("--pid").parse().expect("--pid");
    let mqtt: SocketAddr = need("--mqtt").parse().expect("--mqtt");
    let http: SocketAddr = need("--http").parse().expect("--http");
    let coap_addr: SocketAddr = need("--coap").parse().expect("--coap");
    let secs: u64 = arg(&args, "--secs").map_or(5, |v| v.parse().expect("--secs"));
    let conns: usize = arg(&args, "--http-conns").map_or(4, |v| v.parse().expect("--http-conns"));
    let window: usize =
        arg(&args, "--coap-window").map_or(32, |v| v.parse().expect("--coap-window"));
    let observers: usize =
        arg(&args, "--observers").map_or(1000, |v| v.parse().expect("--observers"));
    let dur = Duration::from_secs(secs);

    // The one MQTT subscriber.
    let mut sub = mqtt_connect(mqtt, "bench-sub");
    let mut b = Vec::new();
    b.extend_from_slice(&1u16.to_be_bytes());
    mqtt_str(&mut b, "m/#");
    b.push(0);
    mqtt_str(&mut b, "bench/#");
    b.push(0);
    sub.write_all(&mqtt_frame(0x82, &b)).expect("SUBSCRIBE");
    let mut suback = [0u8; 6];
    sub.read_exact(&mut suback).expect("SUBACK");
    let received = Arc::new(AtomicU64::new(0));
    {
        let (s, r) = (sub.try_clone().expect("clone"), received.clone());
        std::thread::spawn(move || mqtt_count(s, r));
    }
    let rss0 = rss_kib(pid);

    // Phase 1: HTTP.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let before = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let s = TcpStream::connect(http).expect("HTTP connect");
                s.set_nodelay(true).ok();
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let req = b"POST /m/bench/c/http/t HTTP/1.1\r\nHost: b\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n21.5";
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    w.write_all(req).expect("HTTP write");
                    let mut len = 0usize;
                    line.clear();
                    r.read_line(&mut line).expect("status line");
                    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
                    loop {
                        line.clear();
                        r.read_line(&mut line).expect("header");
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().expect("length");
                        }
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).expect("body");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("HTTP worker");
    }
    let http_s = t0.elapsed().as_secs_f64();
    let http_n = done.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let http_rx = received.load(Ordering::Relaxed) - before;

    // Phase 2: CoAP NON publishes, a window outstanding.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.connect(coap_addr).expect("udp connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let before = received.load(Ordering::Relaxed);
    let mut mid = 0u16;
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut lost = 0u64;
    let t0 = Instant::now();
    for _ in 0..window {
        mid = mid.wrapping_add(1);
        sock.send(&coap(1, 0x02, mid, mid, &["bench", "coap"], false, b"21.5"))
            .expect("send");
        sent += 1;
    }
    let mut buf = [0u8; 1500];
    while t0.elapsed() < dur {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 4 && buf[1] == 0x44 => answered += 1,
            Ok(_) => continue,
            Err(_) => lost += 1, // a lost datagram: put another in flight
        }
        mid = mid.wrapping_add(1);
        sock.send(&coap(1, 0x02, mid, mid, &["bench", "coap"], false, b"21.5"))
            .expect("send");
        sent += 1;
    }
    let coap_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let coap_rx = received.load(Ordering::Relaxed) - before;
    let rss1 = rss_kib(pid);

    // Phase 3: observers, one per UDP endpoint.
    let socks: Vec<UdpSocket> = (0..observers)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
            s.connect(coap_addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.send(&coap(0, 0x01, i as u16, i as u16, &["obs", "t"], true, b""))
                .expect("register");
            s
        })
        .collect();
    let mut registered = 0;
    for s in &socks {
        if let Ok(n) = s.recv(&mut buf)
            && n >= 4
            && buf[1] == 0x45
        {
            registered += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss2 = rss_kib(pid);
    let mut p = Vec::new();
    mqtt_str(&mut p, "obs/t");
    p.extend_from_slice(b"22.0");
    sub.write_all(&mqtt_frame(0x30, &p)).expect("PUBLISH");
    let mut notified = 0;
    for s in &socks {
        if let Ok(n) = s.recv(&mut buf)
            && n >= 4
            && buf[1] == 0x45
        {
            notified += 1;
        }
    }
    let rss3 = rss_kib(pid);

    println!(
        "HTTP publish (POST /<topic>, {conns} keep-alive connections): {http_n} requests in {http_s:.1} s = {:.0} req/s; subscriber got {http_rx}",
        http_n as f64 / http_s
    );
    println!(
        "CoAP NON publish (window {window}): {answered} answered of {sent} sent ({lost} timeouts) in {coap_s:.1} s = {:.0} publishes/s; subscriber got {coap_rx}",
        answered as f64 / coap_s
    );
    println!("RSS: {rss0} KiB at start, {rss1} KiB after the publish phases");
    println!(
        "observers: {registered}/{observers} registered, {notified}/{observers} notified of one MQTT publish"
    );
    println!(
        "RSS with {registered} observers: {rss2} KiB ({:+} KiB, {:.2} KiB per observer); after the notification round {rss3} KiB",
        rss2 as i64 - rss1 as i64,
        (rss2 as f64 - rss1 as f64) / registered.max(1) as f64
    );
}
