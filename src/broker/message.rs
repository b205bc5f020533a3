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
    /// Properties (wire form) followed by the payload.
    body: Body,
    props_len: usize,
    pub qos: QoS,
    pub retain: bool,
    pub expires_at: Option<Instant>,
    /// The publishing session, for No Local [MQTT-3.8.3-3]. `None` for messages that did
    /// not come from a session (wills are published on behalf of their session).
    pub origin: Option<SessionKey>,
}

/// Bytes of properties + payload kept inside the message itself. On 64-bit targets this is
/// what fills the 128-byte allocator chunk that the `Rc<Message>` occupies anyway (asserted
/// in the tests): a small message (a sensor reading) then costs one allocation fewer and
/// no more memory, and a larger one 32 bytes more than a bare `Box<[u8]>` would.
pub const INLINE_BODY: usize = 46;

/// Properties + payload: inline when they fit, else one heap allocation.
#[derive(Clone)]
enum Body {
    Inline { len: u8, bytes: [u8; INLINE_BODY] },
    Heap(Box<[u8]>),
}

impl Body {
    fn new(props: &[u8], payload: &[u8]) -> Body {
        let len = props.len() + payload.len();
        match u8::try_from(len) {
            Ok(n) if len <= INLINE_BODY => {
                let mut bytes = [0u8; INLINE_BODY];
                bytes[..props.len()].copy_from_slice(props);
                bytes[props.len()..len].copy_from_slice(payload);
                Body::Inline { len: n, bytes }
            }
            _ => {
                let mut v = Vec::with_capacity(len);
                v.extend_from_slice(props);
                v.extend_from_slice(payload);
                Body::Heap(v.into_boxed_slice())
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Body::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Body::Heap(b) => b,
        }
    }

    /// Bytes held outside the message struct.
    fn heap_len(&self) -> usize {
        match self {
            Body::Inline { .. } => 0,
            Body::Heap(b) => b.len(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.bytes().len())
    }
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
        Rc::new(Message {
            topic: topic.into(),
            body: Body::new(props, payload),
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
        &self.body.bytes()[..self.props_len]
    }

    pub fn payload(&self) -> &[u8] {
        &self.body.bytes()[self.props_len..]
    }

    /// Bytes this message holds on the heap (what queue byte caps count).
    pub fn heap_size(&self) -> usize {
        self.topic.len() + self.body.heap_len() + std::mem::size_of::<Message>()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_inline_or_heap() {
        let props = [0x01, 0x01];
        for n in [0, INLINE_BODY - 2, INLINE_BODY - 1, 300] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let m = Message::new("a/b", &props, &payload, QoS::AtLeastOnce, true, None, None);
            assert_eq!(m.topic(), "a/b");
            assert_eq!(m.props(), &props);
            assert_eq!(m.payload(), &payload[..]);
            let inline = props.len() + n <= INLINE_BODY;
            assert_eq!(matches!(m.body, Body::Inline { .. }), inline, "{n}");
            let heap = if inline { 0 } else { props.len() + n };
            assert_eq!(m.heap_size(), 3 + heap + std::mem::size_of::<Message>());
        }
    }

    /// The inline body fills what the `Rc<Message>` allocation rounds up to anyway: glibc
    /// and musl serve 120 requested bytes from a 128-byte chunk.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn rc_message_fits_a_128_byte_chunk() {
        let rc_box = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Message>();
        assert!(rc_box <= 120, "Rc<Message> is {rc_box} bytes");
        assert!(
            rc_box > 112,
            "INLINE_BODY could grow: Rc<Message> is {rc_box} bytes"
        );
    }
}
