//! Test helpers: an in-process broker on free ports, a metrics reader, wait-for helpers, a
//! raw-bytes MQTT client (hand-written packets, a frame reader) and thin wrappers over the
//! rumqttc v3.1.1 and v5 clients.
//!
//! Nothing here mocks the broker: every helper talks to a real broker over loopback sockets.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fluxmq_edge::server::Running;

/// How long any wait-for waits before the test fails.
pub const T: Duration = Duration::from_secs(5);

// ---- broker ------------------------------------------------------------------------------

/// A broker running in-process on its own thread, on free ports.
pub struct Broker {
    running: Option<Running>,
    pub v3: SocketAddr,
    pub v5: SocketAddr,
    pub health: SocketAddr,
}

/// Start a broker with the test listeners (v3, v5 and health on 127.0.0.1:0) and `extra`
/// top-level YAML sections (`broker:`, `session:`; not `server:`).
pub fn start(extra: &str) -> Broker {
    start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n{extra}\n"
    ))
}

/// Start a broker from a complete YAML configuration (its listeners on `127.0.0.1:0`).
pub fn start_yaml(yaml: &str) -> Broker {
    let cfg = fluxmq_edge::config::load_str(yaml, "<test>").expect("test config is valid");
    let running = fluxmq_edge::server::spawn(cfg).expect("broker starts");
    Broker {
        v3: running.addr("server.tcp.v3"),
        v5: running.addr("server.tcp.v5"),
        health: running.addr("server.health_addr"),
        running: Some(running),
    }
}

/// Start a broker from configuration files, as the binary does: `reload` re-reads them.
/// The files must put v3, v5 and health listeners on `127.0.0.1:0`.
pub fn start_files(paths: &[PathBuf]) -> Broker {
    let running = fluxmq_edge::server::spawn_from(paths).expect("broker starts");
    Broker {
        v3: running.addr("server.tcp.v3"),
        v5: running.addr("server.tcp.v5"),
        health: running.addr("server.health_addr"),
        running: Some(running),
    }
}

impl Broker {
    /// Bound address of a listener by config key (`server.http.plain`, `server.coap.plain`).
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.running.as_ref().expect("broker running").addr(key)
    }

    /// Reload as on SIGHUP, and wait until it has run (`reloads_total` went up).
    pub fn reload(&self) {
        let before = self.value("reloads_total");
        self.running.as_ref().expect("running").reload();
        self.wait_value("reloads_total", |n| n > before);
    }

    /// Shut down as on SIGTERM and wait for the broker thread.
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().expect("broker stops cleanly");
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(self.health, "/metrics");
        assert_eq!(status, 200, "/metrics status");
        body
    }

    /// Every series of `/metrics` with its value.
    pub fn metrics(&self) -> Vec<(String, u64)> {
        parse_metrics(&self.metrics_text())
    }

    /// The value of one series, e.g. `fluxmq_edge_connections` or
    /// `fluxmq_edge_messages_dropped_total{reason="queue_full"}`.
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .into_iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
            .1
    }

    /// `fluxmq_edge_messages_dropped_total{reason=...}`
    pub fn dropped(&self, reason: &str) -> u64 {
        self.metric(&dropped_series(reason))
    }

    /// `fluxmq_edge_connections_closed_total{reason=...}`
    pub fn closed(&self, reason: &str) -> u64 {
        self.metric(&closed_series(reason))
    }

    /// A plain counter or gauge by its short name (`wills_published_total`, `sessions`).
    pub fn value(&self, name: &str) -> u64 {
        self.metric(&format!("fluxmq_edge_{name}"))
    }

    /// Wait until `series` satisfies `ok`; returns its value.
    pub fn wait_metric(&self, series: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let mut last = 0;
        wait_for(&format!("metric {series}"), T, || {
            last = self.metric(series);
            ok(last).then_some(last)
        })
    }

    pub fn wait_dropped(&self, reason: &str, at_least: u64) -> u64 {
        self.wait_metric(&dropped_series(reason), |v| v >= at_least)
    }

    pub fn wait_closed(&self, reason: &str, at_least: u64) -> u64 {
        self.wait_metric(&closed_series(reason), |v| v >= at_least)
    }

    pub fn wait_value(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        self.wait_metric(&format!("fluxmq_edge_{name}"), ok)
    }
}

pub fn dropped_series(reason: &str) -> String {
    format!("fluxmq_edge_messages_dropped_total{{reason=\"{reason}\"}}")
}

pub fn closed_series(reason: &str) -> String {
    format!("fluxmq_edge_connections_closed_total{{reason=\"{reason}\"}}")
}

pub fn parse_metrics(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Poll `f` every 10 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<R>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_full(addr, path);
    (status, body)
}

/// (status, headers, body).
pub fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the health listener");
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the HTTP response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    // The health listener answers with Content-Length (no chunking) for these bodies.
    (status, head.to_string(), body.to_string())
}

// ---- packet building -----------------------------------------------------------------------

pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A complete frame: fixed header byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// MQTT 5 property identifiers used by the tests.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
    pub const SUB_ID_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2A;
}

/// An MQTT 5 property list being built (without its length prefix).
#[derive(Debug, Clone, Default)]
pub struct P(Vec<u8>);

impl P {
    pub fn new() -> P {
        P(Vec::new())
    }
    pub fn byte(mut self, id: u8, v: u8) -> P {
        self.0.extend_from_slice(&[id, v]);
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> P {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> P {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn var(mut self, id: u8, v: u32) -> P {
        self.0.push(id);
        put_varint(&mut self.0, v);
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> P {
        self.0.push(id);
        put_str(&mut self.0, v);
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> P {
        self.0.push(id);
        put_bin(&mut self.0, v);
        self
    }
    pub fn pair(mut self, k: &str, v: &str) -> P {
        self.0.push(prop::USER_PROPERTY);
        put_str(&mut self.0, k);
        put_str(&mut self.0, v);
        self
    }
    /// Length-prefixed, as the packet carries it.
    pub fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0.len() as u32);
        out.extend_from_slice(&self.0);
    }
}

#[derive(Debug, Clone)]
pub struct WillSpec {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: P,
}

impl WillSpec {
    pub fn new(topic: &str, payload: &[u8]) -> WillSpec {
        WillSpec {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
            props: P::new(),
        }
    }
    pub fn props(mut self, p: P) -> WillSpec {
        self.props = p;
        self
    }
}

/// A CONNECT packet.
#[derive(Debug, Clone)]
pub struct Connect {
    pub v5: bool,
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: P,
    pub will: Option<WillSpec>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    pub fn v3(client_id: &str) -> Connect {
        Connect {
            v5: false,
            level: 4,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            props: P::new(),
            will: None,
            username: None,
            password: None,
        }
    }
    pub fn v5(client_id: &str) -> Connect {
        Connect {
            v5: true,
            level: 5,
            ..Connect::v3(client_id)
        }
    }
    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Connect {
        self.keep_alive = secs;
        self
    }
    pub fn props(mut self, p: P) -> Connect {
        self.props = p;
        self
    }
    pub fn will(mut self, w: WillSpec) -> Connect {
        self.will = Some(w);
        self
    }
    /// Username and password (either may be empty: the flag is still set).
    pub fn user(mut self, username: &str, password: &str) -> Connect {
        self.username = Some(username.into());
        self.password = Some(password.as_bytes().to_vec());
        self
    }
    /// Only the level byte changes (the body keeps the layout of `v5`).
    pub fn level(mut self, level: u8) -> Connect {
        self.level = level;
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, "MQTT");
        b.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        b.push(flags);
        b.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.v5 {
            self.props.write(&mut b);
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if self.v5 {
                w.props.write(&mut b);
            }
            put_str(&mut b, &w.topic);
            put_bin(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_bin(&mut b, p);
        }
        frame(0x10, &b)
    }
}

/// A PUBLISH packet.
#[derive(Debug, Clone)]
pub struct Pub {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    pub dup: bool,
    pub props: P,
}

impl Pub {
    pub fn new(topic: &str, payload: &[u8]) -> Pub {
        Pub {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos: 0,
            pkid: 0,
            retain: false,
            dup: false,
            props: P::new(),
        }
    }
    pub fn qos(mut self, qos: u8, pkid: u16) -> Pub {
        self.qos = qos;
        self.pkid = pkid;
        self
    }
    pub fn retain(mut self) -> Pub {
        self.retain = true;
        self
    }
    pub fn dup(mut self) -> Pub {
        self.dup = true;
        self
    }
    pub fn props(mut self, p: P) -> Pub {
        self.props = p;
        self
    }
    pub fn raw_topic(mut self, t: &[u8]) -> Pub {
        self.topic = t.to_vec();
        self
    }
    pub fn bytes(&self, v5: bool) -> Vec<u8> {
        let mut b = Vec::new();
        put_bin(&mut b, &self.topic);
        if self.qos > 0 {
            b.extend_from_slice(&self.pkid.to_be_bytes());
        }
        if v5 {
            self.props.write(&mut b);
        }
        b.extend_from_slice(&self.payload);
        let first = 0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        frame(first, &b)
    }
}

/// SUBSCRIBE with (filter, options byte) entries.
pub fn subscribe(v5: bool, pkid: u16, props: &P, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v5 {
        props.write(&mut b);
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(*o);
    }
    frame(0x82, &b)
}

pub fn unsubscribe(v5: bool, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v5 {
        P::new().write(&mut b);
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(0xA2, &b)
}

pub fn puback(pkid: u16) -> Vec<u8> {
    frame(0x40, &pkid.to_be_bytes())
}
pub fn pubrec(pkid: u16) -> Vec<u8> {
    frame(0x50, &pkid.to_be_bytes())
}
pub fn pubrel(pkid: u16) -> Vec<u8> {
    frame(0x62, &pkid.to_be_bytes())
}
pub fn pubcomp(pkid: u16) -> Vec<u8> {
    frame(0x70, &pkid.to_be_bytes())
}
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const DISCONNECT_V3: [u8; 2] = [0xE0, 0x00];

pub fn disconnect_v5(code: u8, props: &P) -> Vec<u8> {
    let mut b = vec![code];
    props.write(&mut b);
    frame(0xE0, &b)
}

/// Subscription options byte (v5): QoS, No Local, Retain As Published, Retain Handling.
pub fn sub_opts(qos: u8, no_local: bool, rap: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(rap) << 3) | (retain_handling << 4)
}

// ---- packet reading ------------------------------------------------------------------------

/// Packet types.
pub mod kind {
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBACK: u8 = 9;
    pub const UNSUBACK: u8 = 11;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// One packet as read: fixed header byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub first: u8,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PVal {
    Int(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// A decoded MQTT 5 property list, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PVal)>);

impl Props {
    pub fn int(&self, id: u8) -> Option<u32> {
        self.0.iter().find_map(|(i, v)| match v {
            PVal::Int(n) if *i == id => Some(*n),
            _ => None,
        })
    }
    pub fn ints(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|(i, v)| match v {
                PVal::Int(n) if *i == id => Some(*n),
                _ => None,
            })
            .collect()
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        self.0.iter().find_map(|(i, v)| match v {
            PVal::Str(s) if *i == id => Some(s.as_str()),
            _ => None,
        })
    }
    pub fn bin(&self, id: u8) -> Option<&[u8]> {
        self.0.iter().find_map(|(i, v)| match v {
            PVal::Bin(b) if *i == id => Some(b.as_slice()),
            _ => None,
        })
    }
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PVal::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn has(&self, id: u8) -> bool {
        self.0.iter().any(|(i, _)| *i == id)
    }
}

/// A cursor over a packet body.
pub struct Rd<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    pub fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, pos: 0 }
    }
    pub fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    pub fn u8(&mut self) -> u8 {
        let v = self.b[self.pos];
        self.pos += 1;
        v
    }
    pub fn u16(&mut self) -> u16 {
        let v = u16::from_be_bytes([self.b[self.pos], self.b[self.pos + 1]]);
        self.pos += 2;
        v
    }
    pub fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes(self.b[self.pos..self.pos + 4].try_into().unwrap());
        self.pos += 4;
        v
    }
    pub fn varint(&mut self) -> u32 {
        let mut v = 0u32;
        for i in 0..4 {
            let b = self.u8();
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("variable byte integer over 4 bytes from the broker");
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let v = &self.b[self.pos..self.pos + n];
        self.pos += n;
        v
    }
    pub fn bin(&mut self) -> Vec<u8> {
        let n = usize::from(self.u16());
        self.bytes(n).to_vec()
    }
    pub fn string(&mut self) -> String {
        String::from_utf8(self.bin()).expect("UTF-8 string from the broker")
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let v = &self.b[self.pos..];
        self.pos = self.b.len();
        v
    }
    pub fn props(&mut self) -> Props {
        let len = self.varint() as usize;
        let end = self.pos + len;
        let mut out = Vec::new();
        while self.pos < end {
            let id = self.u8();
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    PVal::Int(self.u8().into())
                }
                0x13 | 0x21 | 0x22 | 0x23 => PVal::Int(self.u16().into()),
                0x02 | 0x11 | 0x18 | 0x27 => PVal::Int(self.u32()),
                0x0B => PVal::Int(self.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PVal::Str(self.string()),
                0x09 | 0x16 => PVal::Bin(self.bin()),
                0x26 => {
                    let k = self.string();
                    PVal::Pair(k, self.string())
                }
                other => panic!("unknown property 0x{other:02x} from the broker"),
            };
            out.push((id, v));
        }
        assert_eq!(self.pos, end, "property length");
        Props(out)
    }
}

#[derive(Debug, Clone)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub pkid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    pub fn connack(&self, v5: bool) -> ConnAck {
        assert_eq!(self.kind(), kind::CONNACK, "expected CONNACK, got {self:?}");
        let mut r = Rd::new(&self.body);
        let flags = r.u8();
        let code = r.u8();
        let props = if v5 && r.left() > 0 {
            r.props()
        } else {
            Props::default()
        };
        assert_eq!(r.left(), 0, "CONNACK length");
        ConnAck {
            session_present: flags & 1 == 1,
            code,
            props,
        }
    }

    pub fn publish(&self, v5: bool) -> Msg {
        assert_eq!(self.kind(), kind::PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.first >> 1) & 3;
        let mut r = Rd::new(&self.body);
        let topic = r.string();
        let pkid = if qos > 0 { r.u16() } else { 0 };
        let props = if v5 { r.props() } else { Props::default() };
        Msg {
            topic,
            qos,
            dup: self.first & 0x08 != 0,
            retain: self.first & 1 == 1,
            pkid,
            props,
            payload: r.rest().to_vec(),
        }
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP: (packet id, reason code; 0 when left out).
    pub fn ack(&self) -> (u16, u8) {
        let mut r = Rd::new(&self.body);
        let id = r.u16();
        let code = if r.left() > 0 { r.u8() } else { 0 };
        (id, code)
    }

    /// SUBACK/UNSUBACK: (packet id, reason codes). For v3 UNSUBACK the list is empty.
    pub fn sub_codes(&self, v5: bool) -> (u16, Vec<u8>) {
        let mut r = Rd::new(&self.body);
        let id = r.u16();
        if v5 {
            r.props();
        }
        (id, r.rest().to_vec())
    }

    /// DISCONNECT (v5): (reason code, properties).
    pub fn disconnect(&self) -> (u8, Props) {
        assert_eq!(
            self.kind(),
            kind::DISCONNECT,
            "expected DISCONNECT, got {self:?}"
        );
        let mut r = Rd::new(&self.body);
        if r.left() == 0 {
            return (0, Props::default());
        }
        let code = r.u8();
        let props = if r.left() > 0 {
            r.props()
        } else {
            Props::default()
        };
        (code, props)
    }
}

/// What a read produced.
#[derive(Debug)]
pub enum Recv {
    Packet(Pkt),
    Closed,
    Timeout,
}

/// The byte stream under a [`Raw`] client: TCP, or TLS over TCP (tests/it/tls.rs).
pub trait Transport: Read + Write + Send {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
    /// Drop the underlying TCP connection (no TLS close_notify, no DISCONNECT).
    fn shutdown(&self);
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }

    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }
}

/// A TCP connection from source address `src` (any of 127.0.0.0/8 on loopback): std cannot
/// bind before connecting, tokio's `TcpSocket` can.
pub fn tcp_from(src: IpAddr, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src, 0))?;
            sock.connect(addr).await?.into_std()
        })
        .expect("connect to the broker from a chosen source address");
    s.set_nonblocking(false).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The first complete MQTT packet of `buf`, removed from it.
pub fn take_packet(buf: &mut Vec<u8>) -> Option<Pkt> {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        assert!(i <= 4, "remaining length over 4 bytes from the broker");
    }
    if buf.len() < i + len {
        return None;
    }
    let first = buf[0];
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Some(Pkt { first, body })
}

/// A raw MQTT client: bytes in, frames out.
pub struct Raw {
    s: Box<dyn Transport>,
    buf: Vec<u8>,
    pub v5: bool,
    next_id: u16,
}

impl Raw {
    /// A TCP connection, nothing sent.
    pub fn tcp(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect to the broker");
        s.set_nodelay(true).unwrap();
        Raw::over(Box::new(s))
    }

    /// A client over an established transport, nothing sent.
    pub fn over(s: Box<dyn Transport>) -> Raw {
        Raw {
            s,
            buf: Vec::new(),
            v5: false,
            next_id: 0,
        }
    }

    /// A TCP connection from source address `src` (any of 127.0.0.0/8), nothing sent.
    pub fn tcp_from(src: IpAddr, addr: SocketAddr) -> Raw {
        Raw::over(Box::new(tcp_from(src, addr)))
    }

    /// Send CONNECT from `src`; returns the client and the CONNACK, or `None` when the
    /// broker closed the connection without a packet.
    pub fn connect_from(src: IpAddr, addr: SocketAddr, c: &Connect) -> Option<(Raw, ConnAck)> {
        let mut r = Raw::tcp_from(src, addr);
        r.v5 = c.v5;
        // The broker may have closed the socket already: the write can fail.
        let _ = r.try_send(&c.bytes());
        match r.recv(T) {
            Recv::Packet(p) => {
                let ack = p.connack(c.v5);
                Some((r, ack))
            }
            Recv::Closed => None,
            Recv::Timeout => panic!("no CONNACK and no close within {T:?}"),
        }
    }

    /// Send CONNECT; returns the client and the CONNACK (whatever its code).
    pub fn connect(addr: SocketAddr, c: &Connect) -> (Raw, ConnAck) {
        let mut r = Raw::tcp(addr);
        r.v5 = c.v5;
        r.send(&c.bytes());
        let ack = r.next().connack(c.v5);
        (r, ack)
    }

    /// Connect and require CONNACK success.
    pub fn connect_ok(addr: SocketAddr, c: &Connect) -> (Raw, ConnAck) {
        let (r, ack) = Raw::connect(addr, c);
        assert_eq!(ack.code, 0, "CONNACK code for {:?}", c.client_id);
        (r, ack)
    }

    /// A clean MQTT 5 client.
    pub fn v5(addr: SocketAddr, client_id: &str) -> Raw {
        Raw::connect_ok(addr, &Connect::v5(client_id)).0
    }

    /// A clean MQTT 3.1.1 client.
    pub fn v3(addr: SocketAddr, client_id: &str) -> Raw {
        Raw::connect_ok(addr, &Connect::v3(client_id)).0
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to the broker");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// A fresh packet identifier.
    pub fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    fn take_frame(&mut self) -> Option<Pkt> {
        take_packet(&mut self.buf)
    }

    /// The next packet, `Closed` on EOF or reset, `Timeout` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if let Some(p) = self.take_frame() {
                return Recv::Packet(p);
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            self.s
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .unwrap();
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed inside a packet: {:?}",
                        self.buf
                    );
                    return Recv::Closed;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Recv::Timeout;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Recv::Closed, // reset
            }
        }
    }

    /// The next packet within `T`.
    pub fn next(&mut self) -> Pkt {
        match self.recv(T) {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next packet, which must be of `kind`.
    pub fn expect(&mut self, k: u8) -> Pkt {
        let p = self.next();
        assert_eq!(p.kind(), k, "expected packet type {k}, got {p:?}");
        p
    }

    pub fn recv_publish(&mut self) -> Msg {
        let v5 = self.v5;
        self.expect(kind::PUBLISH).publish(v5)
    }

    /// Receive a PUBLISH and acknowledge it (PUBACK, or the PUBREC/PUBREL/PUBCOMP flow).
    pub fn recv_publish_ack(&mut self) -> Msg {
        let m = self.recv_publish();
        self.ack_msg(&m);
        m
    }

    pub fn ack_msg(&mut self, m: &Msg) {
        match m.qos {
            1 => self.send(&puback(m.pkid)),
            2 => {
                self.send(&pubrec(m.pkid));
                let rel = self.expect(kind::PUBREL);
                assert_eq!(rel.first, 0x62, "PUBREL flags");
                assert_eq!(rel.ack().0, m.pkid);
                self.send(&pubcomp(m.pkid));
            }
            _ => {}
        }
    }

    /// The connection must end within `T`; returns the packets that came before.
    pub fn expect_closed(&mut self) -> Vec<Pkt> {
        self.expect_closed_within(T)
    }

    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<Pkt> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) => got.push(p),
                Recv::Closed => return got,
                Recv::Timeout => panic!("connection still open after {timeout:?}; got {got:?}"),
            }
        }
    }

    /// The server closes the connection after sending exactly one v5 DISCONNECT; returns
    /// its reason code and properties.
    pub fn expect_disconnect(&mut self) -> (u8, Props) {
        let got = self.expect_closed();
        assert_eq!(got.len(), 1, "expected only a DISCONNECT, got {got:?}");
        got[0].disconnect()
    }

    /// The server closes the connection without sending anything (3.1.1 refusals).
    pub fn expect_closed_silently(&mut self) {
        let got = self.expect_closed();
        assert!(
            got.is_empty(),
            "expected no packet before close, got {got:?}"
        );
    }

    /// Nothing arrives for `d` and the connection stays open.
    pub fn expect_nothing(&mut self, d: Duration) {
        match self.recv(d) {
            Recv::Timeout => {}
            other => panic!("expected nothing for {d:?}, got {other:?}"),
        }
    }

    /// SUBSCRIBE one filter with an options byte; returns the SUBACK codes.
    pub fn subscribe_opts(&mut self, filter: &str, opts: u8, props: &P) -> Vec<u8> {
        self.subscribe_many(&[(filter, opts)], props)
    }

    pub fn subscribe_many(&mut self, filters: &[(&str, u8)], props: &P) -> Vec<u8> {
        let id = self.id();
        let v5 = self.v5;
        self.send(&subscribe(v5, id, props, filters));
        let ack = self.expect(kind::SUBACK);
        assert_eq!(ack.first, 0x90, "SUBACK flags");
        let (got, codes) = ack.sub_codes(v5);
        assert_eq!(got, id, "SUBACK packet id");
        codes
    }

    /// SUBSCRIBE at `qos`; asserts it is granted as asked.
    pub fn sub(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe_opts(filter, qos, &P::new());
        assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    }

    pub fn unsubscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let id = self.id();
        let v5 = self.v5;
        self.send(&unsubscribe(v5, id, filters));
        let ack = self.expect(kind::UNSUBACK);
        let (got, codes) = ack.sub_codes(v5);
        assert_eq!(got, id, "UNSUBACK packet id");
        codes
    }

    /// Publish at QoS 0.
    pub fn pub0(&mut self, topic: &str, payload: &[u8]) {
        let v5 = self.v5;
        self.send(&Pub::new(topic, payload).bytes(v5));
    }

    /// Publish at QoS 1 and wait for the PUBACK; returns its reason code.
    pub fn pub1(&mut self, topic: &str, payload: &[u8]) -> u8 {
        self.pub1_with(Pub::new(topic, payload))
    }

    pub fn pub1_with(&mut self, p: Pub) -> u8 {
        let id = self.id();
        let v5 = self.v5;
        self.send(&p.qos(1, id).bytes(v5));
        let ack = self.expect(kind::PUBACK);
        let (got, code) = ack.ack();
        assert_eq!(got, id, "PUBACK packet id");
        code
    }

    /// Publish at QoS 2 through PUBREC/PUBREL/PUBCOMP; returns the PUBREC reason code.
    pub fn pub2(&mut self, topic: &str, payload: &[u8]) -> u8 {
        let id = self.id();
        let v5 = self.v5;
        self.send(&Pub::new(topic, payload).qos(2, id).bytes(v5));
        let (got, code) = self.expect(kind::PUBREC).ack();
        assert_eq!(got, id, "PUBREC packet id");
        self.send(&pubrel(id));
        let (got, comp) = self.expect(kind::PUBCOMP).ack();
        assert_eq!((got, comp), (id, 0), "PUBCOMP");
        code
    }

    /// PINGREQ -> PINGRESP: proves every packet sent before was handled.
    pub fn ping(&mut self) {
        self.send(&PINGREQ);
        let p = self.expect(kind::PINGRESP);
        assert_eq!(p.body, Vec::<u8>::new());
    }

    /// Normal DISCONNECT, then wait for the broker to close the socket.
    pub fn disconnect(mut self) {
        let bytes = if self.v5 {
            disconnect_v5(0, &P::new())
        } else {
            DISCONNECT_V3.to_vec()
        };
        self.send(&bytes);
        self.expect_closed_silently();
    }

    /// Drop the TCP connection without DISCONNECT (abnormal close).
    pub fn drop_connection(self) {
        self.s.shutdown();
    }
}

/// A client that keeps working while another misbehaves: it is subscribed to its own topic
/// and each `roundtrip` publishes at QoS 1 and receives the message back.
pub struct Echo {
    pub c: Raw,
    n: u32,
    topic: String,
}

impl Echo {
    pub fn new(addr: SocketAddr, v5: bool, name: &str) -> Echo {
        let mut c = if v5 {
            Raw::v5(addr, name)
        } else {
            Raw::v3(addr, name)
        };
        let topic = format!("echo/{name}");
        c.sub(&topic, 1);
        let mut e = Echo { c, n: 0, topic };
        e.roundtrip();
        e
    }

    pub fn roundtrip(&mut self) {
        self.n += 1;
        let payload = format!("echo {}", self.n);
        let topic = self.topic.clone();
        let id = self.c.id();
        let v5 = self.c.v5;
        self.c
            .send(&Pub::new(&topic, payload.as_bytes()).qos(1, id).bytes(v5));
        // The PUBACK and the delivery may come in either order.
        let mut acked = false;
        let mut got = None;
        while !acked || got.is_none() {
            let p = self.c.next();
            match p.kind() {
                kind::PUBACK => {
                    assert_eq!(p.ack().0, id);
                    acked = true;
                }
                kind::PUBLISH => {
                    let m = p.publish(v5);
                    self.c.send(&puback(m.pkid));
                    got = Some(m);
                }
                _ => panic!("echo client got {p:?}"),
            }
        }
        let m = got.unwrap();
        assert_eq!(
            (m.topic.as_str(), m.payload),
            (topic.as_str(), payload.into_bytes())
        );
    }
}

// ---- rumqttc wrappers ----------------------------------------------------------------------

/// An MQTT 3.1.1 client from rumqttc, its event loop pumped on a thread.
pub struct V3 {
    pub c: rumqttc::Client,
    rx: mpsc::Receiver<Result<rumqttc::Event, String>>,
}

impl V3 {
    pub fn options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connect; returns the client and its CONNACK (success required).
    pub fn connect(o: rumqttc::MqttOptions) -> (V3, rumqttc::ConnAck) {
        let (c, mut conn) = rumqttc::Client::new(o, 64);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let stop = ev.is_err();
                if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                    break;
                }
            }
        });
        let me = V3 { c, rx };
        let ack = me.wait(|e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        });
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        (me, ack)
    }

    pub fn new(addr: SocketAddr, id: &str) -> V3 {
        V3::connect(V3::options(addr, id)).0
    }

    /// The first event for which `f` says `Some`, within `T`.
    pub fn wait<R>(&self, mut f: impl FnMut(&rumqttc::Event) -> Option<R>) -> R {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(e)) => {
                    if let Some(r) = f(&e) {
                        return r;
                    }
                }
                Ok(Err(e)) => panic!("rumqttc v3 connection error: {e}"),
                Err(e) => panic!("rumqttc v3: no expected event within {T:?}: {e}"),
            }
        }
    }

    pub fn recv_publish(&self) -> rumqttc::Publish {
        self.wait(|e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
    }

    pub fn subscribe(&self, filter: &str, qos: rumqttc::QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.c.subscribe(filter, qos).unwrap();
        self.wait(|e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
    }
}

/// An MQTT 5 client from rumqttc, its event loop pumped on a thread.
pub struct V5 {
    pub c: rumqttc::v5::Client,
    rx: mpsc::Receiver<Result<rumqttc::v5::Event, String>>,
}

pub use rumqttc::v5::mqttbytes::QoS as Q5;
pub use rumqttc::v5::mqttbytes::v5::Packet as P5;

impl V5 {
    pub fn options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub fn connect(o: rumqttc::v5::MqttOptions) -> (V5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let (c, mut conn) = rumqttc::v5::Client::new(o, 64);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let stop = ev.is_err();
                if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                    break;
                }
            }
        });
        let me = V5 { c, rx };
        let ack = me.wait(|e| match e {
            rumqttc::v5::Event::Incoming(P5::ConnAck(a)) => Some(a.clone()),
            _ => None,
        });
        assert_eq!(
            ack.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
        );
        (me, ack)
    }

    pub fn new(addr: SocketAddr, id: &str) -> V5 {
        V5::connect(V5::options(addr, id)).0
    }

    pub fn wait<R>(&self, mut f: impl FnMut(&rumqttc::v5::Event) -> Option<R>) -> R {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(e)) => {
                    if let Some(r) = f(&e) {
                        return r;
                    }
                }
                Ok(Err(e)) => panic!("rumqttc v5 connection error: {e}"),
                Err(e) => panic!("rumqttc v5: no expected event within {T:?}: {e}"),
            }
        }
    }

    pub fn recv_publish(&self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.wait(|e| match e {
            rumqttc::v5::Event::Incoming(P5::Publish(p)) => Some(p.clone()),
            _ => None,
        })
    }

    pub fn subscribe(
        &self,
        filter: &str,
        qos: Q5,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.c.subscribe(filter, qos).unwrap();
        self.wait(|e| match e {
            rumqttc::v5::Event::Incoming(P5::SubAck(a)) => Some(a.return_codes.clone()),
            _ => None,
        })
    }
}
