//! CONNECT: version checks, client identifiers, wills, session expiry, keep-alive, the
//! CONNACK and its MQTT 5 properties, and the resend of in-flight messages on resume.

use super::*;

impl Conn {
    // ---- CONNECT ---------------------------------------------------------------------

    pub(super) fn connack_refuse(
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
    pub(super) fn refuse_bad_connect(
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

    pub(super) fn handle_connect(&mut self, c: Connect<'_>, broker: &mut Broker, now: Instant) {
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
        self.username = match c.username {
            Some(u) => Some(Rc::from(u)),
            None if self.identity_as_username => self
                .cert
                .as_ref()
                .and_then(|id| id.subject_cn.as_deref())
                .map(Rc::from),
            None => None,
        };
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
            // The id assigned before an auth wait, so that the client keeps it.
            let earlier = self.auth.as_mut().and_then(|a| a.assigned.take());
            Some(earlier.unwrap_or_else(|| assign_client_id(broker)))
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
                // A will is a message like any other: the same payload cap, retained or not.
                if w.payload.len() > lim.max_message_size {
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
        match self.connect_auth(&c, client_id, assigned.as_deref(), broker, now) {
            auth::Gate::Pass => {}
            auth::Gate::Wait | auth::Gate::Refused => return,
        }
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
            "client {:?} connected from {} ({v:?}, keep-alive {ka}s, session present {}, \
             username {:?}{})",
            self.client_id,
            self.peer,
            connected.session_present,
            self.username.as_deref().unwrap_or(""),
            CertShown(self.cert.as_deref()),
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
    /// At most the client's Receive Maximum of them now [MQTT-3.3.4-9]; the rest are
    /// marked and resent by `poll_deliveries` as acknowledgements free the window.
    pub(super) fn resend_inflight(&mut self, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let window = usize::from(self.receive_max.min(broker.limits.max_inflight));
        let s = broker.session_mut(key);
        for (i, inf) in s.inflight.iter_mut().enumerate() {
            inf.resend = i >= window;
        }
        self.pending_resends = s.inflight.iter().filter(|i| i.resend).count();
        let mut i = 0;
        while i < broker.session(key).inflight.len() {
            if broker.session(key).inflight[i].resend {
                i += 1;
                continue;
            }
            if self.resend_one(key, i, broker, now) {
                i += 1;
            }
        }
    }

    /// Resend in-flight messages held back at reconnect while the window has room.
    pub(super) fn resend_held_back(
        &mut self,
        key: SessionKey,
        window: usize,
        broker: &mut Broker,
        now: Instant,
    ) {
        while self.pending_resends > 0 && self.out.len() < self.high_water {
            let s = broker.session(key);
            let live = s.inflight.iter().filter(|i| !i.resend).count();
            let Some(i) = s.inflight.iter().position(|i| i.resend) else {
                self.pending_resends = 0;
                break;
            };
            if live >= window {
                break;
            }
            broker.session_mut(key).inflight[i].resend = false;
            self.pending_resends -= 1;
            self.resend_one(key, i, broker, now);
        }
    }

    /// Resend in-flight entry `i` (DUP PUBLISH or PUBREL, original packet id). Returns false
    /// when it was dropped instead (too large for the client now).
    fn resend_one(&mut self, key: SessionKey, i: usize, broker: &mut Broker, now: Instant) -> bool {
        {
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
                        return false;
                    }
                }
                OutState::Released => self.send(&Packet::PubRel(ack(
                    pkid_or_one(NonZeroU16::new(pkid)),
                    ReasonCode::Success,
                ))),
            }
        }
        broker.metrics.add(Counter::Retransmissions, 1);
        true
    }
}

/// The protocol level byte of a CONNECT frame, if it can be read: fixed header, remaining
/// length, protocol name (length-prefixed), then the level.
pub(super) fn peek_level(frame: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = usize::from(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]));
    frame.get(i + 2 + name_len).copied()
}

/// A client id for a client that sent none: unique among live sessions.
pub(super) fn assign_client_id(broker: &Broker) -> String {
    // A per-call random seed (the standard library's keyed hasher state), then an LCG
    // until the id is free among live sessions.
    use std::hash::BuildHasher;
    let mut seed = std::collections::hash_map::RandomState::new().hash_one(broker.session_count());
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

/// The client certificate in a log line: `, cert CN "x" serial s sha256 f`, or nothing.
struct CertShown<'a>(Option<&'a CertIdentity>);

impl std::fmt::Display for CertShown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => Ok(()),
            Some(id) => write!(
                f,
                ", cert CN {:?} serial {} sha256 {}",
                id.subject_cn.as_deref().unwrap_or(""),
                id.serial,
                id.fingerprint_sha256
            ),
        }
    }
}
