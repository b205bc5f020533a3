//! A routed message: immutable once built, shared by `Rc` between every session queue it is
//! delivered to (one copy of the payload however wide the fan-out).
//!
//! Message-level properties are kept in MQTT 5 property wire form (`props`): that is the
//! richest property model of the protocols served, so it is the core's canonical encoding;
//! the MQTT adapter copies it verbatim into deliveries, other adapters translate. Message
//! expiry is kept as a deadline and rewritten per delivery [MQTT-3.3.2-6].

use std::rc::Rc;
use std::time::Instant;

use crate::protocol::mqtt::QoS;

use super::SessionKey;

#[derive(Debug)]
pub struct Message {
    topic: Box<str>,
    /// Properties (wire form) followed by the payload, one allocation.
    body: Box<[u8]>,
    props_len: usize,
    pub qos: QoS,
    pub retain: bool,
    pub expires_at: Option<Instant>,
    /// The publishing session, for No Local [MQTT-3.8.3-3]. `None` for messages that did
    /// not come from a session (wills are published on behalf of their session).
    pub origin: Option<SessionKey>,
}

impl Message {
    pub fn new(
        topic: &str,
        props: &[u8],
        payload: &[u8],
        qos: QoS,
        retain: bool,
        expires_at: Option<Instant>,
        origin: Option<SessionKey>,
    ) -> Rc<Message> {
        let mut body = Vec::with_capacity(props.len() + payload.len());
        body.extend_from_slice(props);
        body.extend_from_slice(payload);
        Rc::new(Message {
            topic: topic.into(),
            body: body.into_boxed_slice(),
            props_len: props.len(),
            qos,
            retain,
            expires_at,
            origin,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn props(&self) -> &[u8] {
        &self.body[..self.props_len]
    }

    pub fn payload(&self) -> &[u8] {
        &self.body[self.props_len..]
    }

    /// Bytes this message holds on the heap (what queue byte caps count).
    pub fn heap_size(&self) -> usize {
        self.topic.len() + self.body.len() + std::mem::size_of::<Message>()
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left before expiry, rounded up, for the Message Expiry Interval of a delivery.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// The same message re-published with a different retain flag (a retained copy keeps
    /// retain=1; the routed copy may differ), sharing nothing but the bytes' content.
    pub fn with_retain(&self, retain: bool) -> Rc<Message> {
        Rc::new(Message {
            topic: self.topic.clone(),
            body: self.body.clone(),
            props_len: self.props_len,
            qos: self.qos,
            retain,
            expires_at: self.expires_at,
            origin: self.origin,
        })
    }
}
