//! Memory scenarios: `idle-conns` (broker bytes per idle MQTT connection) and the tail of
//! `stalled-sub` (after the publish run: did the broker drop the subscriber that stopped reading,
//! and how much did it still hold for it).

use crate::client::{self, Session};
use crate::engine::client_id;
use crate::mqtt::{self, Version};
use crate::procstat::{self, ProcSample};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

pub struct IdleSpec {
    pub addr: SocketAddr,
    pub version: Version,
    pub conns: usize,
    /// Connections opened (CONNECT sent) before their CONNACKs are awaited.
    pub batch: usize,
    pub keepalive: u16,
    /// Pause after the last CONNACK before reading broker memory.
    pub settle: Duration,
    pub broker_pid: Option<u32>,
    pub connect_timeout: Duration,
}

pub struct IdleOutcome {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub still_open: usize,
    pub connect_s: f64,
    pub broker: Option<(ProcSample, ProcSample)>,
    pub own_cpu_us: u64,
    pub fd_limit: u64,
}

/// True while the peer has not closed the socket (peeks, never consumes).
fn is_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = match s.peek(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    open
}

pub fn idle_conns(spec: &IdleSpec) -> io::Result<IdleOutcome> {
    let fd_limit = procstat::raise_nofile();
    if (fd_limit as usize) < spec.conns + 64 {
        return Err(io::Error::other(format!(
            "open-file limit {fd_limit} is too low for {} connections: raise `ulimit -n`",
            spec.conns
        )));
    }
    let before = spec.broker_pid.map(procstat::sample_broker).transpose()?;
    let cpu0 = procstat::self_cpu_us();
    let t = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(spec.conns);
    let mut failed = 0;
    let mut first_error = None;
    let mut i = 0;
    while i < spec.conns {
        let n = spec.batch.max(1).min(spec.conns - i);
        let mut pending = Vec::with_capacity(n);
        for k in i..i + n {
            let id = client_id("i", k);
            match client::start_connect(
                spec.addr,
                spec.version,
                &id,
                spec.keepalive,
                spec.connect_timeout,
            ) {
                Ok(s) => pending.push(s),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        for s in pending {
            match client::finish_connect(s, spec.version) {
                Ok(sess) => held.push(sess.stream),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        i += n;
    }
    let connect_s = t.elapsed().as_secs_f64();
    let own_cpu_us = procstat::self_cpu_us().saturating_sub(cpu0);
    thread::sleep(spec.settle);
    let broker = match (spec.broker_pid, before) {
        (Some(p), Some(b)) => Some((b, procstat::sample_broker(p)?)),
        _ => None,
    };
    let still_open = held.iter().filter(|s| is_open(s)).count();
    for s in &mut held {
        let _ = s.write_all(&mqtt::DISCONNECT);
    }
    Ok(IdleOutcome {
        connected: held.len(),
        failed,
        first_error,
        still_open,
        connect_s,
        broker,
        own_cpu_us,
        fd_limit,
    })
}

pub struct StalledDrain {
    /// The broker closed the stalled subscriber's connection (EOF or reset seen).
    pub disconnected: bool,
    /// PUBLISH packets the broker still delivered once the subscriber read again.
    pub received: u64,
    pub bytes: u64,
    pub drain_s: f64,
}

/// Reads a stalled subscriber until EOF, `idle` without data, or `max` in all, acknowledging
/// QoS 1/2 deliveries so the broker can release what it queued.
pub fn drain_stalled(
    session: &mut Session,
    version: Version,
    idle: Duration,
    max: Duration,
) -> io::Result<StalledDrain> {
    let t = Instant::now();
    let stream = &mut session.stream;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = std::mem::take(&mut session.leftover);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut out = Vec::new();
    let mut r = StalledDrain {
        disconnected: false,
        received: 0,
        bytes: buf.len() as u64,
        drain_s: 0.0,
    };
    let mut last_data = Instant::now();
    loop {
        // Consume every complete packet.
        let mut at = 0;
        while let Some(f) = mqtt::frame(&buf[at..]).map_err(io::Error::other)? {
            let header = buf[at];
            let body = &buf[at + f.body_start..at + f.len];
            match header & 0xF0 {
                mqtt::PUBLISH => {
                    r.received += 1;
                    let p = mqtt::parse_publish(version, header, body).map_err(io::Error::other)?;
                    match p.qos {
                        1 => out.extend_from_slice(&mqtt::ack(mqtt::PUBACK, p.packet_id)),
                        2 => out.extend_from_slice(&mqtt::ack(mqtt::PUBREC, p.packet_id)),
                        _ => {}
                    }
                }
                0x60 => {
                    let (id, _) = mqtt::parse_ack(body).map_err(io::Error::other)?;
                    out.extend_from_slice(&mqtt::ack(mqtt::PUBCOMP, id));
                }
                mqtt::DISCONNECT_TYPE => r.disconnected = true,
                _ => {}
            }
            at += f.len;
        }
        buf.drain(..at);
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                r.disconnected = true;
            }
            out.clear();
        }
        if r.disconnected || last_data.elapsed() >= idle || t.elapsed() >= max {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                r.disconnected = true;
                break;
            }
            Ok(n) => {
                r.bytes += n as u64;
                buf.extend_from_slice(&chunk[..n]);
                last_data = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                r.disconnected = true;
                break;
            }
        }
    }
    r.drain_s = t.elapsed().as_secs_f64();
    Ok(r)
}
