//! The MQTT connection state machine: bytes in (`handle_input`), bytes out (`out`), time
//! passed in (`handle_timeout`), broker deliveries pulled in (`poll_deliveries`). Sans-IO:
//! the driver in `listener::mqtt` owns the socket and calls these; nothing here awaits.
//!
//! It owns what is per connection (keep-alive, topic aliases, the client's limits, the
//! partial-packet buffer); what outlives the connection (queues, in-flight window,
//! subscriptions) is the session's, in the broker core.

mod auth;
mod connect;
mod deliver;
mod inbound;

pub use auth::Verdict;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::codec::{self, DecodeError};
use super::packet::*;
use crate::auth::CertIdentity;
use crate::auth::Protocol;
use crate::broker::message::Message;
use crate::broker::router::SubOpts;
use crate::broker::session::{Delivery, Inflight, OutState, Signal, Will as SessionWill};
use crate::broker::{Broker, ConnectReq, SessionKey, topic};
use crate::metrics::{CloseReason, Counter, DropReason, Metrics};
use crate::ratelimit::ClientBuckets;

/// Which protocol versions a listener accepts (`protocol` of the listener slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V3,
    V5,
    Auto,
}

/// Most bytes of MQTT framing (topic, properties) allowed on top of
/// `broker.max_message_size` in one packet: 64 KiB, as FluxMQ does.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// The largest packet accepted (checked from the fixed header, announced as Maximum Packet
/// Size): `max_message_size` plus a framing allowance of `max_message_size` itself, at
/// least 1 KiB and at most `FRAME_OVERHEAD`. The default 1 MiB messages get FluxMQ's
/// 64 KiB; a small board's 4 KiB messages get 4 KiB of topic and properties rather than
/// 64 KiB, which is what every per-connection and per-message worst case scales with.
pub fn max_frame(max_message_size: usize) -> usize {
    max_message_size + max_message_size.clamp(1024, FRAME_OVERHEAD)
}
/// Stop pulling deliveries and reading input while this much output is unwritten.
pub const OUT_HIGH_WATER: usize = 64 * 1024;

/// The output high-water mark for a configuration: twice the largest packet, at least
/// 16 KiB (enough to batch hundreds of small deliveries per write), at most
/// `OUT_HIGH_WATER`. Small boards with small messages keep small output buffers.
pub fn out_high_water(max_message_size: usize) -> usize {
    (2 * max_frame(max_message_size)).clamp(16 * 1024, OUT_HIGH_WATER)
}

#[derive(Debug)]
struct Attached {
    key: SessionKey,
    conn_id: u64,
}

#[derive(Debug)]
pub struct Conn {
    accept: Accept,
    peer: SocketAddr,
    /// Shared with the core (deliveries, kicks) and the server's deadline sweep.
    signal: Rc<Signal>,
    version: Option<Version>,
    session: Option<Attached>,
    client_id: Rc<str>,
    /// Bytes of a packet not yet complete (empty, and unallocated, between packets).
    partial: Vec<u8>,
    /// Size of the frame whose start is in `partial`, when its header has been read.
    partial_need: usize,
    out: Vec<u8>,
    max_frame: usize,
    /// Stop pulling deliveries and reading input at this much unwritten output.
    high_water: usize,
    /// CONNECT must arrive by then (`read_timeout`; `None` when it is 0 = no limit).
    connect_deadline: Option<Instant>,
    /// Keep-alive in seconds (0 = none).
    keep_alive: u16,
    last_rx: Instant,
    /// Client limits from CONNECT (v5).
    receive_max: u16,
    max_packet_out: usize,
    alias_max_out: u16,
    problem_info: bool,
    /// Topic alias tables, allocated on first use (most connections never alias).
    aliases: Option<Box<Aliases>>,
    connect_expiry: u32,
    /// In-flight messages held back at reconnect by the client's Receive Maximum.
    pending_resends: usize,
    closed: Option<CloseReason>,
    /// Publish the will when this connection ends (false after a normal DISCONNECT).
    will_on_close: bool,
    /// Auth state, when the listener's clients are authenticated (boxed: connections
    /// without auth pay one pointer).
    auth: Option<Box<auth::AuthState>>,
    /// The verified client certificate (TLS listeners that verify clients).
    cert: Option<Rc<CertIdentity>>,
    /// The certificate's CN becomes the username when CONNECT carries none
    /// (`use_identity_as_username`).
    identity_as_username: bool,
    /// The effective username: CONNECT's, or the certificate CN (see above).
    username: Option<Rc<str>>,
    /// This connection's message and subscribe rate-limit buckets (`Broker::ratelimit`).
    buckets: ClientBuckets,
}

#[derive(Debug, Default)]
struct Aliases {
    inbound: Vec<Option<Box<str>>>,
    outbound: HashMap<Box<str>, u16>,
}

impl Conn {
    pub fn new(
        accept: Accept,
        peer: SocketAddr,
        signal: Rc<Signal>,
        read_timeout: Duration,
        max_message_size: usize,
        now: Instant,
    ) -> Conn {
        Conn {
            accept,
            peer,
            signal,
            version: None,
            session: None,
            client_id: Rc::from(""),
            partial: Vec::new(),
            partial_need: 0,
            out: Vec::new(),
            max_frame: max_frame(max_message_size),
            high_water: out_high_water(max_message_size),
            connect_deadline: (!read_timeout.is_zero()).then(|| now + read_timeout),
            keep_alive: 0,
            last_rx: now,
            receive_max: u16::MAX,
            max_packet_out: usize::MAX,
            alias_max_out: 0,
            problem_info: true,
            aliases: None,
            connect_expiry: 0,
            pending_resends: 0,
            closed: None,
            will_on_close: true,
            auth: None,
            cert: None,
            identity_as_username: false,
            username: None,
            buckets: ClientBuckets::default(),
        }
    }

    /// Attach the transport identity (the verified client certificate of a TLS
    /// connection), before any input. With `identity_as_username`, its CN becomes the
    /// username of a CONNECT that carries none.
    pub fn set_cert(&mut self, cert: Option<Rc<CertIdentity>>, identity_as_username: bool) {
        self.cert = cert;
        self.identity_as_username = identity_as_username;
    }

    /// The verified client certificate, if any.
    pub fn cert(&self) -> Option<&Rc<CertIdentity>> {
        self.cert.as_ref()
    }

    /// The effective username once CONNECT is handled: the CONNECT's, else (with
    /// `use_identity_as_username`) the certificate CN.
    pub fn username(&self) -> Option<&Rc<str>> {
        self.username.as_ref()
    }

    /// Bytes to write. The driver writes them and clears the buffer.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    pub fn signal(&self) -> &Rc<Signal> {
        &self.signal
    }

    /// The driver reads more input only while output drains, and not while a packet waits
    /// for an auth answer.
    pub fn wants_read(&self) -> bool {
        self.closed.is_none() && self.out.len() < self.high_water && !self.is_waiting()
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Feed bytes read from the peer. Complete packets are handled at once; a trailing
    /// partial packet is kept (allocated only then) until the rest arrives.
    pub fn handle_input(&mut self, data: &[u8], broker: &mut Broker, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        broker
            .metrics
            .add(Counter::BytesReceived, data.len() as u64);
        self.last_rx = now;
        self.consume(data, broker, now);
    }

    /// Handle what is complete in the kept partial bytes followed by `data`; keep the rest
    /// (an incomplete packet, or every packet from the one waiting for an auth answer on).
    fn consume(&mut self, data: &[u8], broker: &mut Broker, now: Instant) {
        if self.partial.is_empty() {
            let used = self.handle_frames(data, broker, now);
            if self.closed.is_none() && used < data.len() {
                self.partial
                    .reserve_exact(self.partial_need.max(data.len() - used));
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            self.partial_need = 0;
            let used = self.handle_frames(&buf, broker, now);
            buf.drain(..used);
            if self.closed.is_none() && !buf.is_empty() {
                // Keep the allocation while a packet is still partial, but no more than the
                // frame needs (appending a whole read could have doubled it).
                buf.shrink_to(self.partial_need.max(buf.len()));
                self.partial = buf;
            }
        }
        if self.closed.is_none() {
            self.poll_deliveries(broker, now);
        }
    }

    fn handle_frames(&mut self, buf: &[u8], broker: &mut Broker, now: Instant) -> usize {
        let mut pos = 0;
        self.partial_need = 0;
        while self.closed.is_none() {
            // Kicked by the core while this input was being handled (a PUBLISH of its own
            // found its own send queue full: slow consumer): stop before the next packet,
            // whose handling could need the session that ended with the kick.
            if self.session.is_some()
                && let Some(reason) = self.signal.kicked()
            {
                self.kicked(reason, broker, now);
                break;
            }
            let len = match codec::frame_len(&buf[pos..], self.max_frame) {
                // The header is known but the body is not all here yet: keep it partial,
                // with room for exactly this frame (at most `max_frame`).
                Ok(Some(len)) if pos + len > buf.len() => {
                    self.partial_need = len;
                    break;
                }
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_failure(e, broker, now);
                    break;
                }
            };
            let frame = &buf[pos..pos + len];
            pos += len;
            match codec::decode(frame, self.version) {
                Ok(p) => {
                    self.handle_packet(p, broker, now);
                    if self.is_waiting() {
                        // The packet waits for an auth answer: keep it (and what follows)
                        // unconsumed; `resume` handles it again with the answer.
                        pos -= len;
                        break;
                    }
                }
                Err(e) => {
                    if self.version.is_none() {
                        self.refuse_bad_connect(frame, e, broker, now);
                    } else {
                        self.protocol_failure(e, broker, now);
                    }
                }
            }
        }
        pos
    }

    fn handle_packet(&mut self, p: Packet<'_>, broker: &mut Broker, now: Instant) {
        match p {
            Packet::Connect(c) if self.version.is_none() => self.handle_connect(c, broker, now),
            // A second CONNECT is a protocol error [MQTT-3.1.0-2].
            Packet::Connect(_) => {
                self.fail(ReasonCode::ProtocolError, "second CONNECT", broker, now)
            }
            Packet::Publish(p) => self.handle_publish(p, broker, now),
            Packet::PubAck(a) => self.handle_puback(a, broker, now),
            Packet::PubRec(a) => self.handle_pubrec(a, broker, now),
            Packet::PubRel(a) => self.handle_pubrel(a, broker),
            Packet::PubComp(a) => self.handle_pubcomp(a, broker, now),
            Packet::Subscribe(s) => self.handle_subscribe(s, broker, now),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(u, broker),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(d, broker, now),
            // No enhanced authentication method is configured, so CONNECT with one was refused
            // (0x8C); any AUTH is then a protocol error [MQTT-4.12.0-1].
            Packet::Auth(_) => self.fail(
                ReasonCode::ProtocolError,
                "AUTH without an authentication method",
                broker,
                now,
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => self
                .fail(
                    ReasonCode::ProtocolError,
                    "server-only packet from a client",
                    broker,
                    now,
                ),
        }
    }

    fn send(&mut self, p: &Packet<'_>) {
        if let Some(v) = self.version {
            codec::encode(p, v, &mut self.out);
        }
    }

    fn v5(&self) -> bool {
        self.version == Some(Version::V5)
    }

    // ---- time ------------------------------------------------------------------------

    /// The next instant `handle_timeout` must be called at.
    pub fn next_deadline(&self, broker: &Broker) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let Some(a) = &self.session else {
            return self.connect_deadline;
        };
        let mut next = None;
        // While a packet waits for an auth answer the client is not silent, the broker is:
        // no keep-alive deadline then (the provider's own deadline ends the wait).
        if self.keep_alive > 0 && !self.is_waiting() {
            next = Some(self.last_rx + keep_alive_limit(self.keep_alive));
        }
        if self.version == Some(Version::V311)
            && let Some(first) = broker.session(a.key).inflight.front()
        {
            let t = first.sent_at + broker.limits.retry_interval;
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        }
        next
    }

    pub fn handle_timeout(&mut self, broker: &mut Broker, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let Some(a) = &self.session else {
            if self.connect_deadline.is_some_and(|d| now >= d) {
                log::info!(
                    "connection from {} closed: no CONNECT within read_timeout",
                    self.peer
                );
                self.close(CloseReason::ConnectTimeout, broker, Some(now));
            }
            return;
        };
        let key = a.key;
        if self.keep_alive > 0
            && !self.is_waiting()
            && now >= self.last_rx + keep_alive_limit(self.keep_alive)
        {
            // [MQTT-3.1.2-24]: nothing received within 1.5 x keep-alive.
            log::info!("client {:?}: keep-alive timeout", self.client_id);
            self.disconnect_with(ReasonCode::KeepAliveTimeout, None);
            return self.close(CloseReason::KeepAliveTimeout, broker, Some(now));
        }
        if self.version == Some(Version::V311) {
            self.retry_v3(key, broker, now);
        }
    }

    /// 3.1.1 allows resending unacknowledged messages on a live connection: every
    /// `broker.retry_interval`, at most `broker.max_retries` times (0 = unlimited). MQTT 5
    /// forbids it [MQTT-4.4.0-1], so v5 resends only on reconnect.
    fn retry_v3(&mut self, key: SessionKey, broker: &mut Broker, now: Instant) {
        let interval = broker.limits.retry_interval;
        let max = broker.limits.max_retries;
        let mut i = 0;
        while i < broker.session(key).inflight.len() {
            let s = broker.session_mut(key);
            let inf = &mut s.inflight[i];
            if inf.sent_at + interval > now {
                i += 1;
                continue;
            }
            if max > 0 && inf.retries >= max {
                let gone = s.inflight.remove(i);
                if let Some(g) = gone {
                    broker.metrics.count_drop(
                        DropReason::RetriesExhausted,
                        &self.client_id,
                        g.delivery.msg.topic(),
                        now,
                    );
                }
                continue;
            }
            inf.retries += 1;
            inf.sent_at = now;
            let (pkid, state, d) = (inf.pkid, inf.state, inf.delivery.clone());
            broker.metrics.add(Counter::Retransmissions, 1);
            match state {
                OutState::Published => self.encode_delivery(&d, NonZeroU16::new(pkid), true, now),
                OutState::Released => self.send(&Packet::PubRel(ack(
                    pkid_or_one(NonZeroU16::new(pkid)),
                    ReasonCode::Success,
                ))),
            }
            i += 1;
        }
    }

    // ---- ending ----------------------------------------------------------------------

    fn kicked(&mut self, reason: ReasonCode, broker: &mut Broker, now: Instant) {
        let why = match reason {
            ReasonCode::SessionTakenOver => CloseReason::TakenOver,
            ReasonCode::ServerShuttingDown => CloseReason::ServerShutdown,
            _ => CloseReason::SlowConsumer,
        };
        log::info!("client {:?}: closing ({})", self.client_id, why.label());
        self.disconnect_with(reason, None);
        self.close(why, broker, Some(now));
    }

    /// v5: a server DISCONNECT with `code` [MQTT-3.14.1]; 3.1.1 has none (the socket closes).
    fn disconnect_with(&mut self, code: ReasonCode, why: Option<&str>) {
        if self.v5() {
            let mut props = Properties::default();
            if self.problem_info {
                props.reason_string = why;
            }
            self.send(&Packet::Disconnect(Disconnect { code, props }));
        }
    }

    fn fail(&mut self, code: ReasonCode, why: &str, broker: &mut Broker, now: Instant) {
        log::info!(
            "client {:?} from {}: {why} ({code:?}); closing",
            self.client_id,
            self.peer
        );
        self.disconnect_with(code, Some(why));
        self.close(close_reason_for(code), broker, Some(now));
    }

    fn protocol_failure(&mut self, e: DecodeError, broker: &mut Broker, now: Instant) {
        let why = e.to_string();
        self.fail(e.reason(), &why, broker, now);
    }

    /// End the connection: detach from the session (publishing the will unless a normal
    /// DISCONNECT said otherwise), count the reason. Output already queued is still written.
    pub fn close(&mut self, why: CloseReason, broker: &mut Broker, now: Option<Instant>) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(why);
        self.partial = Vec::new();
        broker.metrics.closed(why);
        if let Some(a) = self.session.take() {
            let now = now.unwrap_or(self.last_rx);
            broker.disconnect(a.key, a.conn_id, self.will_on_close, now);
        }
    }
}

/// A client is dropped after 1.5 x its keep-alive without a packet [MQTT-3.1.2-24].
fn keep_alive_limit(secs: u16) -> Duration {
    Duration::from_millis(u64::from(secs) * 1500)
}

fn ack(pkid: PacketId, code: ReasonCode) -> Ack<'static> {
    Ack {
        pkid,
        code,
        props: Properties::default(),
    }
}

fn pkid_or_one(p: Option<PacketId>) -> PacketId {
    p.unwrap_or(NonZeroU16::MIN)
}

fn close_reason_for(code: ReasonCode) -> CloseReason {
    match code {
        ReasonCode::MalformedPacket => CloseReason::MalformedPacket,
        ReasonCode::PacketTooLarge => CloseReason::PacketTooLarge,
        ReasonCode::ReceiveMaximumExceeded => CloseReason::ReceiveMaximumExceeded,
        ReasonCode::TopicAliasInvalid => CloseReason::TopicAliasInvalid,
        ReasonCode::QoSNotSupported => CloseReason::QosNotSupported,
        _ => CloseReason::ProtocolError,
    }
}
