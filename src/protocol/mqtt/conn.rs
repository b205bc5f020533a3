//! The MQTT connection state machine: bytes in (`handle_input`), bytes out (`out`), time
//! passed in (`handle_timeout`), broker deliveries pulled in (`poll_deliveries`). Sans-IO:
//! the driver in `listener::mqtt` owns the socket and calls these; nothing here awaits.
//!
//! It owns what is per connection (keep-alive, topic aliases, the client's limits, the
//! partial-packet buffer); what outlives the connection (queues, in-flight window,
//! subscriptions) is the session's, in the broker core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::codec::{self, DecodeError};
use super::packet::*;
use crate::broker::message::Message;
use crate::broker::router::SubOpts;
use crate::broker::session::{Delivery, Inflight, OutState, Signal, Will as SessionWill};
use crate::broker::{Broker, ConnectReq, SessionKey, topic};
use crate::metrics::{CloseReason, Counter, DropReason, Metrics};

/// Which protocol versions a listener accepts (`protocol` of the listener slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V3,
    V5,
    Auto,
}

/// Bytes of MQTT framing (topic, properties) allowed on top of `broker.max_message_size`
/// in one packet, as FluxMQ does: the packet cap is checked from the fixed header.
pub const FRAME_OVERHEAD: usize = 64 * 1024;
/// Stop pulling deliveries and reading input while this much output is unwritten.
const OUT_HIGH_WATER: usize = 64 * 1024;

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
    connect_deadline: Instant,
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
    closed: Option<CloseReason>,
    /// Publish the will when this connection ends (false after a normal DISCONNECT).
    will_on_close: bool,
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
            max_frame: max_message_size + FRAME_OVERHEAD,
            connect_deadline: now + read_timeout,
            keep_alive: 0,
            last_rx: now,
            receive_max: u16::MAX,
            max_packet_out: usize::MAX,
            alias_max_out: 0,
            problem_info: true,
            aliases: None,
            connect_expiry: 0,
            closed: None,
            will_on_close: true,
        }
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

    /// The driver reads more input only while output drains.
    pub fn wants_read(&self) -> bool {
        self.closed.is_none() && self.out.len() < OUT_HIGH_WATER
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
                self.partial = buf; // keep the allocation while a packet is still partial
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
                Ok(p) => self.handle_packet(p, broker, now),
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

    // ---- CONNECT ---------------------------------------------------------------------

    fn connack_refuse(
        &mut self,
        version: Version,
        code: ReasonCode,
        why: &str,
        broker: &mut Broker,
    ) {
        log::info!("connection from {} refused: {why} ({code:?})", self.peer);
        let p = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            props: Properties::default(),
        });
        codec::encode(&p, version, &mut self.out);
        self.close(CloseReason::ConnectRefused, broker, None);
    }

    /// A CONNECT that does not decode: answer in the version its header names when that can
    /// be read (0x84 / return code 1 for an unknown level [MQTT-3.1.2-2]), else just close.
    fn refuse_bad_connect(
        &mut self,
        frame: &[u8],
        e: DecodeError,
        broker: &mut Broker,
        now: Instant,
    ) {
        match (e.reason(), peek_level(frame)) {
            (ReasonCode::UnsupportedProtocolVersion, _) => {
                // 3.1.1 servers answer unknown levels with return code 1.
                let v = if peek_level(frame) == Some(5) {
                    Version::V5
                } else {
                    Version::V311
                };
                self.connack_refuse(
                    v,
                    ReasonCode::UnsupportedProtocolVersion,
                    "unsupported protocol level",
                    broker,
                );
            }
            (code, Some(5)) => {
                self.connack_refuse(Version::V5, code, &format!("bad CONNECT: {e}"), broker);
            }
            _ => {
                log::info!(
                    "connection from {} closed: bad first packet: {e}",
                    self.peer
                );
                let _ = now;
                self.close(close_reason_for(e.reason()), broker, None);
            }
        }
    }

    fn handle_connect(&mut self, c: Connect<'_>, broker: &mut Broker, now: Instant) {
        let v = c.version;
        let allowed = match self.accept {
            Accept::V3 => v == Version::V311,
            Accept::V5 => v == Version::V5,
            Accept::Auto => true,
        };
        if !allowed {
            return self.connack_refuse(
                v,
                ReasonCode::UnsupportedProtocolVersion,
                "protocol version not served on this listener",
                broker,
            );
        }
        if v == Version::V5 && c.props.auth_method.is_some() {
            // [MQTT-4.12.0-1]: no enhanced authentication method is configured.
            return self.connack_refuse(
                v,
                ReasonCode::BadAuthenticationMethod,
                "unsupported authentication method",
                broker,
            );
        }
        // Client identifier: empty ones get an assigned id, except 3.1.1 with
        // clean session 0 [MQTT-3.1.3-7/8].
        let assigned: Option<String> = if c.client_id.is_empty() {
            if v == Version::V311 && !c.clean_start {
                return self.connack_refuse(
                    v,
                    ReasonCode::ClientIdentifierNotValid,
                    "empty client id with clean session 0",
                    broker,
                );
            }
            Some(assign_client_id(broker, now))
        } else {
            None
        };
        let client_id = assigned.as_deref().unwrap_or(c.client_id);
        let lim = broker.limits.clone();
        // Will: a valid topic name, and a QoS the server supports [MQTT-3.2.2-12].
        let will = match &c.will {
            None => None,
            Some(w) => {
                if topic::validate_name(w.topic).is_err() {
                    return self.connack_refuse(
                        v,
                        ReasonCode::TopicNameInvalid,
                        "invalid will topic",
                        broker,
                    );
                }
                if w.qos > lim.max_qos {
                    return self.connack_refuse(
                        v,
                        ReasonCode::QoSNotSupported,
                        "will QoS above broker.max_qos",
                        broker,
                    );
                }
                if w.retain && w.payload.len() > lim.max_message_size {
                    return self.connack_refuse(
                        v,
                        ReasonCode::PacketTooLarge,
                        "will payload above broker.max_message_size",
                        broker,
                    );
                }
                let delay = w.props.will_delay.unwrap_or(0);
                let props = self.message_props(&w.props);
                // Its expiry counts from publication: the core sets the deadline then.
                let msg = Message::new(w.topic, &props, w.payload, w.qos, w.retain, None, None);
                Some(SessionWill {
                    msg,
                    delay,
                    expiry: w.props.message_expiry,
                })
            }
        };
        // Session expiry: v5 property; absent with clean start 0 (and always for 3.1.1
        // persistent sessions) falls back to session.default_expiry_interval (FluxMQ).
        let expiry = match (v, c.props.session_expiry) {
            (Version::V5, Some(e)) => e,
            (_, None) if !c.clean_start => lim.default_expiry,
            _ => 0,
        };
        let req = ConnectReq {
            client_id,
            clean_start: c.clean_start,
            expiry,
            will,
            signal: self.signal.clone(),
        };
        let connected = match broker.connect(req, now) {
            Ok(c) => c,
            Err(code) => return self.connack_refuse(v, code, "session refused", broker),
        };
        self.version = Some(v);
        self.client_id = broker.session(connected.key).client_id.clone();
        self.connect_expiry = expiry;
        // Keep-alive, capped by broker.max_keep_alive when set (announced as Server Keep
        // Alive in v5 [MQTT-3.2.2-21]).
        let mut ka = c.keep_alive;
        let mut server_ka = None;
        if lim.max_keep_alive > 0 && (ka == 0 || ka > lim.max_keep_alive) && v == Version::V5 {
            ka = lim.max_keep_alive;
            server_ka = Some(ka);
        }
        self.keep_alive = ka;
        self.receive_max = c.props.receive_maximum.unwrap_or(u16::MAX);
        self.max_packet_out = c
            .props
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize);
        self.alias_max_out = c
            .props
            .topic_alias_maximum
            .unwrap_or(0)
            .min(lim.topic_alias_maximum);
        self.problem_info = c.props.request_problem_info != Some(0);
        let mut props = Properties::default();
        if v == Version::V5 {
            props.receive_maximum = Some(lim.max_inflight);
            props.topic_alias_maximum =
                (lim.topic_alias_maximum > 0).then_some(lim.topic_alias_maximum);
            props.maximum_qos = (lim.max_qos < QoS::ExactlyOnce).then_some(lim.max_qos as u8);
            props.maximum_packet_size = u32::try_from(self.max_frame).ok();
            props.wildcard_sub_available = Some(1);
            props.sub_id_available = Some(1);
            props.shared_sub_available = Some(1);
            props.retain_available = Some(1);
            props.assigned_client_id = assigned.as_deref();
            props.server_keep_alive = server_ka;
        }
        let ack = Packet::ConnAck(ConnAck {
            session_present: connected.session_present,
            code: ReasonCode::Success,
            props,
        });
        codec::encode(&ack, v, &mut self.out);
        log::debug!(
            "client {:?} connected from {} ({v:?}, keep-alive {ka}s, session present {})",
            self.client_id,
            self.peer,
            connected.session_present
        );
        self.session = Some(Attached {
            key: connected.key,
            conn_id: connected.conn_id,
        });
        if connected.session_present {
            self.resend_inflight(broker, now);
        }
    }

    /// Resend unacknowledged PUBLISH (DUP=1) and PUBREL packets with their original ids, in
    /// order, when a session resumes [MQTT-4.4.0-1].
    fn resend_inflight(&mut self, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let mut i = 0;
        while i < broker.session(key).inflight.len() {
            let s = broker.session_mut(key);
            let inf = &mut s.inflight[i];
            inf.sent_at = now;
            let (pkid, state, d) = (inf.pkid, inf.state, inf.delivery.clone());
            match state {
                OutState::Published => {
                    let id = NonZeroU16::new(pkid);
                    if !self.encode_fitting(&d, id, true, &broker.metrics, now) {
                        // Too large for the limit the client announced this time: dropped
                        // as if sent [MQTT-3.1.2-25].
                        broker.session_mut(key).inflight.remove(i);
                        continue;
                    }
                }
                OutState::Released => self.send(&Packet::PubRel(ack(
                    pkid_or_one(NonZeroU16::new(pkid)),
                    ReasonCode::Success,
                ))),
            }
            broker.metrics.add(Counter::Retransmissions, 1);
            i += 1;
        }
    }

    // ---- PUBLISH in --------------------------------------------------------------------

    /// Message-level properties of a v5 PUBLISH or will, in wire form, for the stored message.
    fn message_props(&mut self, p: &Properties<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(f) = p.payload_format {
            codec::put_byte_property(&mut out, 0x01, f);
        }
        if let Some(ct) = p.content_type {
            codec::put_string_property(&mut out, 0x03, ct);
        }
        if let Some(rt) = p.response_topic {
            codec::put_string_property(&mut out, 0x08, rt);
        }
        if let Some(cd) = p.correlation_data {
            codec::put_binary_property(&mut out, 0x09, cd);
        }
        for (k, v) in p.user_properties() {
            codec::put_user_property(&mut out, k, v);
        }
        out
    }

    fn handle_publish(&mut self, p: Publish<'_>, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let lim = &broker.limits;
        if p.qos > lim.max_qos {
            // [MQTT-3.2.2-11]: QoS above the Maximum QoS announced.
            broker
                .metrics
                .count_drop(DropReason::QosNotSupported, &self.client_id, p.topic, now);
            return self.fail(
                ReasonCode::QoSNotSupported,
                "PUBLISH QoS above broker.max_qos",
                broker,
                now,
            );
        }
        if p.payload.len() > lim.max_message_size {
            broker
                .metrics
                .count_drop(DropReason::TooLarge, &self.client_id, p.topic, now);
            return self.fail(
                ReasonCode::PacketTooLarge,
                "payload above broker.max_message_size",
                broker,
                now,
            );
        }
        if p.props.subscription_ids().next().is_some() {
            return self.fail(
                ReasonCode::ProtocolError,
                "Subscription Identifier in a client PUBLISH",
                broker,
                now,
            ); // [MQTT-3.3.4-6]
        }
        // Topic alias (v5, inbound) [MQTT-3.3.2-7..12].
        let alias_topic: Option<Box<str>>;
        let topic: &str = match p.props.topic_alias {
            None => p.topic,
            Some(alias) => {
                let max = broker.limits.topic_alias_maximum;
                if alias == 0 || alias > max {
                    return self.fail(
                        ReasonCode::TopicAliasInvalid,
                        "topic alias out of range",
                        broker,
                        now,
                    );
                }
                let slot = usize::from(alias - 1);
                if p.topic.is_empty() {
                    match self
                        .aliases
                        .as_ref()
                        .and_then(|a| a.inbound.get(slot))
                        .and_then(|t| t.clone())
                    {
                        Some(t) => {
                            alias_topic = Some(t);
                            alias_topic.as_deref().unwrap_or_default()
                        }
                        None => {
                            return self.fail(
                                ReasonCode::ProtocolError,
                                "unknown topic alias",
                                broker,
                                now,
                            );
                        }
                    }
                } else {
                    let table = &mut self.aliases.get_or_insert_with(Box::default).inbound;
                    if table.len() < usize::from(max) {
                        table.resize(usize::from(max), None);
                    }
                    table[slot] = Some(p.topic.into());
                    p.topic
                }
            }
        };
        let pkid = p.pkid;
        if p.qos == QoS::ExactlyOnce {
            let id = pkid.map_or(0, |p| p.get());
            let s = broker.session_mut(key);
            if s.inbound_qos2.contains(&id) {
                // A resent QoS 2 PUBLISH not yet released: acknowledge, do not deliver twice
                // [MQTT-4.3.3-10].
                return self.send(&Packet::PubRec(ack(pkid_or_one(pkid), ReasonCode::Success)));
            }
            if s.inbound_qos2.len() >= usize::from(broker.limits.max_inflight) {
                // More unacknowledged QoS 2 than the Receive Maximum we announced [MQTT-3.3.4-7].
                return self.fail(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                    broker,
                    now,
                );
            }
        }
        if p.props.payload_format == Some(1) && std::str::from_utf8(p.payload).is_err() {
            // [MQTT-3.3.2-4] the server may refuse a payload that is not the UTF-8 it claims.
            return self.answer_publish(
                p.qos,
                pkid,
                Err(ReasonCode::PayloadFormatInvalid),
                key,
                broker,
                now,
            );
        }
        let props = if self.v5() {
            self.message_props(&p.props)
        } else {
            Vec::new()
        };
        let expires_at = p
            .props
            .message_expiry
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let msg = Message::new(
            topic,
            &props,
            p.payload,
            p.qos,
            p.retain,
            expires_at,
            Some(key),
        );
        let result = broker.publish(msg, now);
        self.answer_publish(p.qos, pkid, result, key, broker, now);
    }

    fn answer_publish(
        &mut self,
        qos: QoS,
        pkid: Option<PacketId>,
        result: Result<usize, ReasonCode>,
        key: SessionKey,
        broker: &mut Broker,
        now: Instant,
    ) {
        let code = match result {
            Ok(0) if self.v5() => ReasonCode::NoMatchingSubscribers,
            Ok(_) => ReasonCode::Success,
            Err(code) => {
                if !self.v5() && qos > QoS::AtMostOnce {
                    // 3.1.1 has no way to refuse a QoS>0 PUBLISH: close (counted, logged).
                    return self.fail(code, "publish refused", broker, now);
                }
                code
            }
        };
        let id = pkid_or_one(pkid);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack(id, code))),
            QoS::ExactlyOnce => {
                // The publish may have ended this connection's session (its own subscription
                // made it a slow consumer): record the id only while the session is ours.
                let live = self
                    .session
                    .as_ref()
                    .is_some_and(|a| broker.is_current(a.key, a.conn_id));
                if !code.is_error() && live {
                    broker.session_mut(key).inbound_qos2.push(id.get());
                }
                self.send(&Packet::PubRec(ack(id, code)));
            }
        }
    }

    fn handle_pubrel(&mut self, a: Ack<'_>, broker: &mut Broker) {
        let Some(s) = &self.session else { return };
        let q = &mut broker.session_mut(s.key).inbound_qos2;
        let code = match q.iter().position(|&id| id == a.pkid.get()) {
            Some(i) => {
                q.swap_remove(i);
                ReasonCode::Success
            }
            None => ReasonCode::PacketIdentifierNotFound,
        };
        self.send(&Packet::PubComp(ack(a.pkid, code)));
    }

    // ---- acknowledgements of our deliveries -----------------------------------------

    fn handle_puback(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        self.finish_inflight(a.pkid, QoS::AtLeastOnce, OutState::Published, broker, now);
    }

    fn handle_pubcomp(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        self.finish_inflight(a.pkid, QoS::ExactlyOnce, OutState::Released, broker, now);
    }

    fn finish_inflight(
        &mut self,
        pkid: PacketId,
        qos: QoS,
        state: OutState,
        broker: &mut Broker,
        now: Instant,
    ) {
        let Some(a) = &self.session else { return };
        let s = broker.session_mut(a.key);
        match s.inflight_index(pkid.get()) {
            Some(i) if s.inflight[i].state == state && s.inflight[i].delivery.qos == qos => {
                s.inflight.remove(i);
                broker.metrics.add(Counter::MessagesDelivered, 1);
                self.poll_deliveries(broker, now);
            }
            _ => log::debug!(
                "client {:?}: acknowledgement for unknown packet id {pkid}",
                self.client_id
            ),
        }
    }

    fn handle_pubrec(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        let Some(at) = &self.session else { return };
        let s = broker.session_mut(at.key);
        match s.inflight_index(a.pkid.get()) {
            Some(i) if s.inflight[i].delivery.qos == QoS::ExactlyOnce => {
                if a.code.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-4].
                    s.inflight.remove(i);
                    self.poll_deliveries(broker, now);
                    return;
                }
                s.inflight[i].state = OutState::Released;
                s.inflight[i].sent_at = now;
                self.send(&Packet::PubRel(ack(a.pkid, ReasonCode::Success)));
            }
            _ => self.send(&Packet::PubRel(ack(
                a.pkid,
                ReasonCode::PacketIdentifierNotFound,
            ))),
        }
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------------------

    fn handle_subscribe(&mut self, sub: Subscribe<'_>, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let mut ids = sub.props.subscription_ids();
        let sub_id = ids.next().and_then(NonZeroU32::new);
        if ids.next().is_some() {
            return self.fail(
                ReasonCode::ProtocolError,
                "several Subscription Identifiers",
                broker,
                now,
            );
        }
        let mut codes = Vec::new();
        for (filter, o) in sub.filters() {
            let opts = SubOpts {
                qos: o.qos,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                sub_id,
            };
            let code = match broker.subscribe(key, filter, opts, o.retain_handling, now) {
                Ok(QoS::AtMostOnce) => ReasonCode::Success,
                Ok(QoS::AtLeastOnce) => ReasonCode::GrantedQoS1,
                Ok(QoS::ExactlyOnce) => ReasonCode::GrantedQoS2,
                Err(code) => {
                    log::info!(
                        "client {:?}: subscription {filter:?} refused ({code:?})",
                        self.client_id
                    );
                    code
                }
            };
            codes.push(code);
        }
        self.send(&Packet::SubAck(SubAck {
            pkid: sub.pkid,
            props: Properties::default(),
            codes: &codes,
        }));
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe<'_>, broker: &mut Broker) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let codes: Vec<ReasonCode> = u
            .filters()
            .map(|f| {
                if broker.unsubscribe(key, f) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            props: Properties::default(),
            codes: &codes,
        }));
    }

    fn handle_disconnect(&mut self, d: Disconnect<'_>, broker: &mut Broker, now: Instant) {
        if let Some(e) = d.props.session_expiry {
            if self.connect_expiry == 0 && e != 0 {
                // [MQTT-3.14.2-2]
                return self.fail(
                    ReasonCode::ProtocolError,
                    "session expiry set at DISCONNECT after 0 at CONNECT",
                    broker,
                    now,
                );
            }
            if let Some(a) = &self.session {
                broker.set_expiry(a.key, e);
            }
        }
        // Disconnect with Will Message (0x04) keeps the will; any other reason discards it
        // [MQTT-3.1.2-10].
        self.will_on_close = d.code == ReasonCode::DisconnectWithWill;
        self.close(CloseReason::ClientDisconnect, broker, Some(now));
    }

    // ---- deliveries out ----------------------------------------------------------------

    /// Move queued deliveries into the output buffer, within the client's Receive Maximum
    /// (and `session.max_inflight_messages`) for QoS>0, and while output is below the high
    /// water mark. Also reacts to a kick from the core.
    pub fn poll_deliveries(&mut self, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        if let Some(reason) = self.signal.kicked() {
            return self.kicked(reason, broker, now);
        }
        self.signal.take_ready();
        let key = a.key;
        let window = usize::from(self.receive_max.min(broker.limits.max_inflight));
        let mut sent = 0u64;
        loop {
            if self.out.len() >= OUT_HIGH_WATER {
                break;
            }
            let s = broker.session_mut(key);
            let Some(front) = s.queue.front() else { break };
            if front.qos > QoS::AtMostOnce && s.inflight.len() >= window {
                break;
            }
            let Some(d) = s.pop() else { break };
            if d.msg.is_expired(now) {
                broker
                    .metrics
                    .count_drop(DropReason::Expired, &self.client_id, d.msg.topic(), now);
                continue;
            }
            let pkid = if d.qos > QoS::AtMostOnce {
                Some(s.next_pkid())
            } else {
                None
            };
            if !self.encode_fitting(
                &d,
                pkid.and_then(NonZeroU16::new),
                false,
                &broker.metrics,
                now,
            ) {
                continue;
            }
            sent += 1;
            if let Some(id) = pkid {
                broker.session_mut(key).inflight.push_back(Inflight {
                    pkid: id,
                    delivery: d,
                    state: OutState::Published,
                    sent_at: now,
                    retries: 0,
                });
            } else {
                broker.metrics.add(Counter::MessagesDelivered, 1);
            }
        }
        let _ = sent;
    }

    /// Encode a delivery unless it is larger than the client's Maximum Packet Size: then it
    /// is taken back and counted (not sent [MQTT-3.1.2-24/25]), with the topic alias it set
    /// up, which the client never saw. Returns whether it was encoded.
    fn encode_fitting(
        &mut self,
        d: &Delivery,
        pkid: Option<PacketId>,
        dup: bool,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let before = self.out.len();
        let had_alias = self
            .aliases
            .as_ref()
            .is_some_and(|a| a.outbound.contains_key(d.msg.topic()));
        self.encode_delivery(d, pkid, dup, now);
        if self.out.len() - before <= self.max_packet_out {
            return true;
        }
        self.out.truncate(before);
        if !had_alias && let Some(a) = self.aliases.as_mut() {
            a.outbound.remove(d.msg.topic());
        }
        let reason = DropReason::PacketTooLargeForClient;
        metrics.count_drop(reason, &self.client_id, d.msg.topic(), now);
        false
    }

    fn encode_delivery(&mut self, d: &Delivery, pkid: Option<PacketId>, dup: bool, now: Instant) {
        let v5 = self.v5();
        let mut props = Properties::default();
        let mut topic = d.msg.topic();
        if v5 {
            props.message_expiry = d.msg.remaining_expiry(now);
            props.subscription_ids_out = &d.sub_ids;
            props.raw = d.msg.props();
            if self.alias_max_out > 0 {
                let table = &mut self.aliases.get_or_insert_with(Box::default).outbound;
                match table.get(topic) {
                    Some(&alias) => {
                        props.topic_alias = Some(alias);
                        topic = "";
                    }
                    None if table.len() < usize::from(self.alias_max_out) => {
                        let alias = table.len() as u16 + 1;
                        table.insert(topic.into(), alias);
                        props.topic_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let p = Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            pkid,
            props,
            payload: d.msg.payload(),
        });
        self.send(&p);
    }

    // ---- time ------------------------------------------------------------------------

    /// The next instant `handle_timeout` must be called at.
    pub fn next_deadline(&self, broker: &Broker) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let Some(a) = &self.session else {
            return Some(self.connect_deadline);
        };
        let mut next = None;
        if self.keep_alive > 0 {
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
            if now >= self.connect_deadline {
                log::info!(
                    "connection from {} closed: no CONNECT within read_timeout",
                    self.peer
                );
                self.close(CloseReason::ConnectTimeout, broker, Some(now));
            }
            return;
        };
        let key = a.key;
        if self.keep_alive > 0 && now >= self.last_rx + keep_alive_limit(self.keep_alive) {
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

/// The protocol level byte of a CONNECT frame, if it can be read: fixed header, remaining
/// length, protocol name (length-prefixed), then the level.
fn peek_level(frame: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]));
    frame.get(i + 2 + name_len).copied()
}

/// A client id for a client that sent none: unique among live sessions.
fn assign_client_id(broker: &Broker, now: Instant) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut n = std::collections::hash_map::RandomState::new().build_hasher();
    n.write_u64(now.elapsed().as_nanos() as u64);
    let mut seed = n.finish();
    loop {
        let id = format!("fluxmq-edge-{seed:016x}");
        if broker.session_by_client(&id).is_none() {
            return id;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
}
