//! MQTT 5 properties (5.0 §2.2.2): the identifier table, which properties each packet a
//! client sends may carry, reading a property block into [`Properties`] with the range checks
//! the specification names, writing one back, and the public helpers that write a single
//! property (used by the broker to build `EncodedProps` once per message).

use super::super::packet::Properties;
use super::DecodeError;
use super::cursor::Cursor;
use super::encode::{Count, Sink, len_u32, put_bin, put_str, put_u16, put_u32, put_var};

const PAYLOAD_FORMAT: u8 = 0x01;
const MESSAGE_EXPIRY: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_ID: u8 = 0x0B;
const SESSION_EXPIRY: u8 = 0x11;
const ASSIGNED_CLIENT_ID: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTH_METHOD: u8 = 0x15;
const AUTH_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFO: u8 = 0x17;
const WILL_DELAY: u8 = 0x18;
const REQUEST_RESPONSE_INFO: u8 = 0x19;
const RESPONSE_INFO: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
const SUB_ID_AVAILABLE: u8 = 0x29;
const SHARED_SUB_AVAILABLE: u8 = 0x2A;

/// One property value, typed by its identifier (5.0 table 2-4).
#[derive(Clone, Copy)]
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Var(u32),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

/// Reads one property. Identifiers are Variable Byte Integers, but every defined one is a
/// single byte below 0x80, so any other first byte is an unknown identifier.
fn read_prop<'a>(c: &mut Cursor<'a>) -> Result<(u8, Value<'a>), DecodeError> {
    let id = c.u8()?;
    let value = match id {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUB_AVAILABLE
        | SUB_ID_AVAILABLE
        | SHARED_SUB_AVAILABLE => Value::Byte(c.u8()?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Value::U16(c.u16()?)
        }
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAXIMUM_PACKET_SIZE => Value::U32(c.u32()?),
        SUBSCRIPTION_ID => Value::Var(c.varint()?),
        CONTENT_TYPE | RESPONSE_TOPIC | ASSIGNED_CLIENT_ID | AUTH_METHOD | RESPONSE_INFO
        | SERVER_REFERENCE | REASON_STRING => Value::Str(c.string()?),
        CORRELATION_DATA | AUTH_DATA => Value::Bin(c.binary()?),
        USER_PROPERTY => Value::Pair(c.string()?, c.string()?),
        _ => return Err(DecodeError::Malformed("unknown property identifier")),
    };
    Ok((id, value))
}

/// Walks a property block, stopping for good at its end or at the first property it cannot
/// read (a decoded block never has one; any other byte string must not panic).
struct Walk<'a> {
    cur: Cursor<'a>,
}

impl<'a> Iterator for Walk<'a> {
    type Item = (u8, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur.is_empty() {
            return None;
        }
        let prop = read_prop(&mut self.cur);
        if prop.is_err() {
            self.cur.clear();
        }
        prop.ok()
    }
}

impl<'a> Properties<'a> {
    /// The User Properties (0x26) in `raw`, in wire order. Reads `raw` only: on a value
    /// built for encoding, the `user` slice is not included.
    pub fn user_properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let cur = Cursor::new(self.raw);
        Walk { cur }.filter_map(|(_, value)| match value {
            Value::Pair(name, value) => Some((name, value)),
            _ => None,
        })
    }

    /// The Subscription Identifiers (0x0B) in `raw`, in wire order.
    pub fn subscription_ids(&self) -> impl Iterator<Item = u32> + use<'a> {
        let cur = Cursor::new(self.raw);
        Walk { cur }.filter_map(|(id, value)| match (id, value) {
            (SUBSCRIPTION_ID, Value::Var(v)) => Some(v),
            _ => None,
        })
    }
}

/// Which properties a packet kind may carry, and which of those may repeat.
#[derive(Clone, Copy)]
pub(super) struct Rules {
    allowed: u64,
    repeatable: u64,
}

const fn bit(id: u8) -> u64 {
    match 1u64.checked_shl(id as u32) {
        Some(b) => b,
        None => 0,
    }
}

const USER: u64 = bit(USER_PROPERTY);

pub(super) const CONNECT: Rules = Rules {
    allowed: bit(SESSION_EXPIRY)
        | bit(RECEIVE_MAXIMUM)
        | bit(MAXIMUM_PACKET_SIZE)
        | bit(TOPIC_ALIAS_MAXIMUM)
        | bit(REQUEST_RESPONSE_INFO)
        | bit(REQUEST_PROBLEM_INFO)
        | bit(AUTH_METHOD)
        | bit(AUTH_DATA)
        | USER,
    repeatable: USER,
};
pub(super) const WILL: Rules = Rules {
    allowed: bit(WILL_DELAY)
        | bit(PAYLOAD_FORMAT)
        | bit(MESSAGE_EXPIRY)
        | bit(CONTENT_TYPE)
        | bit(RESPONSE_TOPIC)
        | bit(CORRELATION_DATA)
        | USER,
    repeatable: USER,
};
/// A client may not send a Subscription Identifier [MQTT-3.3.4-6], but that is the state
/// machine's call; here it is read (repeatable, as in a server's PUBLISH).
pub(super) const PUBLISH: Rules = Rules {
    allowed: bit(PAYLOAD_FORMAT)
        | bit(MESSAGE_EXPIRY)
        | bit(TOPIC_ALIAS)
        | bit(RESPONSE_TOPIC)
        | bit(CORRELATION_DATA)
        | bit(SUBSCRIPTION_ID)
        | bit(CONTENT_TYPE)
        | USER,
    repeatable: USER | bit(SUBSCRIPTION_ID),
};
/// PUBACK, PUBREC, PUBREL, PUBCOMP.
pub(super) const ACK: Rules = Rules {
    allowed: bit(REASON_STRING) | USER,
    repeatable: USER,
};
pub(super) const SUBSCRIBE: Rules = Rules {
    allowed: bit(SUBSCRIPTION_ID) | USER,
    repeatable: USER,
};
pub(super) const UNSUBSCRIBE: Rules = Rules {
    allowed: USER,
    repeatable: USER,
};
pub(super) const DISCONNECT: Rules = Rules {
    allowed: bit(SESSION_EXPIRY) | bit(REASON_STRING) | bit(SERVER_REFERENCE) | USER,
    repeatable: USER,
};
pub(super) const AUTH: Rules = Rules {
    allowed: bit(AUTH_METHOD) | bit(AUTH_DATA) | bit(REASON_STRING) | USER,
    repeatable: USER,
};

/// Reads a Property Length and the block it covers, checked against `rules`. The result has
/// `raw` set to the block (without its length) and the scalar fields filled in.
pub(super) fn read_props<'a>(
    c: &mut Cursor<'a>,
    rules: Rules,
) -> Result<Properties<'a>, DecodeError> {
    let len = c.varint()?;
    let raw = c
        .take(len as usize)
        .map_err(|_| DecodeError::Malformed("property length runs past the packet"))?;
    let mut props = Properties {
        raw,
        ..Properties::default()
    };
    let mut block = Cursor::new(raw);
    let mut seen = 0u64;
    while !block.is_empty() {
        let (id, value) = read_prop(&mut block)?;
        let b = bit(id);
        if rules.allowed & b == 0 {
            // 5.0 §2.2.2.2: an identifier not valid for its packet type is Malformed.
            return Err(DecodeError::Malformed(
                "property not valid on this packet kind",
            ));
        }
        if seen & b != 0 && rules.repeatable & b == 0 {
            return Err(DecodeError::Protocol("property included more than once"));
        }
        seen |= b;
        set(&mut props, id, value)?;
    }
    Ok(props)
}

/// 0 or 1, for the properties where anything else is a Protocol Error.
fn bool_byte(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

/// Stores one property read by `read_props`, with the value checks of 5.0 §3.
fn set<'a>(p: &mut Properties<'a>, id: u8, value: Value<'a>) -> Result<(), DecodeError> {
    use DecodeError::Protocol;
    match (id, value) {
        (PAYLOAD_FORMAT, Value::Byte(v)) => {
            p.payload_format = Some(bool_byte(v, "payload format indicator over 1")?);
        }
        (MESSAGE_EXPIRY, Value::U32(v)) => p.message_expiry = Some(v),
        (CONTENT_TYPE, Value::Str(v)) => p.content_type = Some(v),
        (RESPONSE_TOPIC, Value::Str(v)) => {
            if v.contains(['+', '#']) {
                return Err(Protocol("wildcard in response topic [MQTT-3.3.2-14]"));
            }
            p.response_topic = Some(v);
        }
        (CORRELATION_DATA, Value::Bin(v)) => p.correlation_data = Some(v),
        (SUBSCRIPTION_ID, Value::Var(0)) => return Err(Protocol("subscription identifier 0")),
        (SESSION_EXPIRY, Value::U32(v)) => p.session_expiry = Some(v),
        (AUTH_METHOD, Value::Str(v)) => p.auth_method = Some(v),
        (AUTH_DATA, Value::Bin(v)) => p.auth_data = Some(v),
        (REQUEST_PROBLEM_INFO, Value::Byte(v)) => {
            p.request_problem_info = Some(bool_byte(v, "request problem information over 1")?);
        }
        (WILL_DELAY, Value::U32(v)) => p.will_delay = Some(v),
        (REQUEST_RESPONSE_INFO, Value::Byte(v)) => {
            p.request_response_info = Some(bool_byte(v, "request response information over 1")?);
        }
        (SERVER_REFERENCE, Value::Str(v)) => p.server_reference = Some(v),
        (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
        (RECEIVE_MAXIMUM, Value::U16(0)) => return Err(Protocol("receive maximum 0")),
        (RECEIVE_MAXIMUM, Value::U16(v)) => p.receive_maximum = Some(v),
        (TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => p.topic_alias_maximum = Some(v),
        (TOPIC_ALIAS, Value::U16(0)) => return Err(DecodeError::TopicAlias),
        (TOPIC_ALIAS, Value::U16(v)) => p.topic_alias = Some(v),
        (MAXIMUM_PACKET_SIZE, Value::U32(0)) => return Err(Protocol("maximum packet size 0")),
        (MAXIMUM_PACKET_SIZE, Value::U32(v)) => p.maximum_packet_size = Some(v),
        // User Properties and Subscription Identifiers are read from `raw`; the properties
        // only a server sends never get past the rules of a packet a client sends.
        _ => {}
    }
    Ok(())
}

/// Writes a Property Length and the properties: the scalar fields in identifier order, then
/// `subscription_ids_out`, then `user`, then `raw` verbatim.
pub(super) fn write_props<S: Sink>(s: &mut S, p: &Properties<'_>) {
    put_var(s, len_u32(props_body_len(p)));
    write_body(s, p);
}

/// The length of the properties without their Property Length.
pub(super) fn props_body_len(p: &Properties<'_>) -> usize {
    let mut n = Count::default();
    write_body(&mut n, p);
    n.0
}

fn write_body<S: Sink>(s: &mut S, p: &Properties<'_>) {
    fn byte<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            s.put(&[id, v]);
        }
    }
    fn two<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            s.put(&[id]);
            put_u16(s, v);
        }
    }
    fn four<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            s.put(&[id]);
            put_u32(s, v);
        }
    }
    fn string<S: Sink>(s: &mut S, id: u8, v: Option<&str>) {
        if let Some(v) = v {
            string_prop(s, id, v);
        }
    }
    fn binary<S: Sink>(s: &mut S, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            binary_prop(s, id, v);
        }
    }
    byte(s, PAYLOAD_FORMAT, p.payload_format);
    four(s, MESSAGE_EXPIRY, p.message_expiry);
    string(s, CONTENT_TYPE, p.content_type);
    string(s, RESPONSE_TOPIC, p.response_topic);
    binary(s, CORRELATION_DATA, p.correlation_data);
    four(s, SESSION_EXPIRY, p.session_expiry);
    string(s, ASSIGNED_CLIENT_ID, p.assigned_client_id);
    two(s, SERVER_KEEP_ALIVE, p.server_keep_alive);
    string(s, AUTH_METHOD, p.auth_method);
    binary(s, AUTH_DATA, p.auth_data);
    byte(s, REQUEST_PROBLEM_INFO, p.request_problem_info);
    four(s, WILL_DELAY, p.will_delay);
    byte(s, REQUEST_RESPONSE_INFO, p.request_response_info);
    string(s, RESPONSE_INFO, p.response_info);
    string(s, SERVER_REFERENCE, p.server_reference);
    string(s, REASON_STRING, p.reason_string);
    two(s, RECEIVE_MAXIMUM, p.receive_maximum);
    two(s, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    two(s, TOPIC_ALIAS, p.topic_alias);
    byte(s, MAXIMUM_QOS, p.maximum_qos);
    byte(s, RETAIN_AVAILABLE, p.retain_available);
    four(s, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    byte(s, WILDCARD_SUB_AVAILABLE, p.wildcard_sub_available);
    byte(s, SUB_ID_AVAILABLE, p.sub_id_available);
    byte(s, SHARED_SUB_AVAILABLE, p.shared_sub_available);
    for &id in p.subscription_ids_out {
        s.put(&[SUBSCRIPTION_ID]);
        put_var(s, id);
    }
    for &(name, value) in p.user {
        user_prop(s, name, value);
    }
    s.put(p.raw);
}

fn user_prop<S: Sink>(s: &mut S, name: &str, value: &str) {
    s.put(&[USER_PROPERTY]);
    put_str(s, name);
    put_str(s, value);
}

fn string_prop<S: Sink>(s: &mut S, id: u8, v: &str) {
    s.put(&[id]);
    put_str(s, v);
}

fn binary_prop<S: Sink>(s: &mut S, id: u8, v: &[u8]) {
    s.put(&[id]);
    put_bin(s, v);
}

/// The Content Type (0x03) of a message property block in wire form (a stored message's
/// `props()`), for adapters that translate it (CoAP Content-Format).
pub fn content_type_of(raw: &[u8]) -> Option<&str> {
    Walk {
        cur: Cursor::new(raw),
    }
    .find_map(|(id, value)| match (id, value) {
        (CONTENT_TYPE, Value::Str(ct)) => Some(ct),
        _ => None,
    })
}

/// Appends a User Property (0x26) in wire form.
pub fn put_user_property(out: &mut Vec<u8>, k: &str, v: &str) {
    user_prop(out, k, v);
}

/// Appends a UTF-8 string property (`id`, e.g. 0x03 Content Type) in wire form.
pub fn put_string_property(out: &mut Vec<u8>, id: u8, v: &str) {
    string_prop(out, id, v);
}

/// Appends a Binary Data property (`id`, e.g. 0x09 Correlation Data) in wire form.
pub fn put_binary_property(out: &mut Vec<u8>, id: u8, v: &[u8]) {
    binary_prop(out, id, v);
}

/// Appends a byte property (`id`, e.g. 0x01 Payload Format Indicator) in wire form.
pub fn put_byte_property(out: &mut Vec<u8>, id: u8, v: u8) {
    out.extend_from_slice(&[id, v]);
}
