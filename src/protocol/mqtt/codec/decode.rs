//! Frame to packet, for the packets a client sends, with the readers over the SUBSCRIBE and
//! UNSUBSCRIBE payloads the model keeps raw. Every read goes through [`Cursor`]; every packet
//! ends with its trailing-bytes check.

use std::num::NonZeroU16;

use super::super::packet::{
    Ack, Auth, Connect, Disconnect, Packet, PacketId, Properties, Publish, QoS, ReasonCode,
    SubOptions, Subscribe, Unsubscribe, Version, Will,
};
use super::DecodeError::{self, Malformed, Protocol};
use super::cursor::Cursor;
use super::props::{self, read_props};

const CONNECT: u8 = 1;

/// Reason codes a PUBACK or PUBREC may carry (5.0 §3.4.2.1, §3.5.2.1).
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// Reason codes a PUBREL or PUBCOMP may carry (5.0 §3.6.2.1, §3.7.2.1).
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
/// Reason codes a DISCONNECT may carry (5.0 §3.14.2.1).
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// Reason codes an AUTH may carry (5.0 §3.15.2.1).
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

/// Decode one complete frame (exactly the bytes `frame_len` reported). `version` is `None`
/// before CONNECT (then only CONNECT is valid) and `Some` after (then CONNECT is not).
/// Borrows from `frame`; allocates nothing.
pub fn decode(frame: &[u8], version: Option<Version>) -> Result<Packet<'_>, DecodeError> {
    let mut c = Cursor::new(frame);
    let first = c.u8()?;
    let remaining = c.varint()?;
    let body = c.rest();
    if body.len() != remaining as usize {
        return Err(Malformed("frame length differs from its remaining length"));
    }
    let (kind, flags) = (first >> 4, first & 0x0f);
    let Some(version) = version else {
        return match kind {
            CONNECT => connect(flags, body),
            _ => Err(Protocol("first packet is not CONNECT [MQTT-3.1.0-1]")),
        };
    };
    match kind {
        CONNECT => Err(Protocol("second CONNECT [MQTT-3.1.0-2]")),
        3 => publish(flags, body, version),
        4 => ack(flags, 0b0000, body, version, PUBACK_CODES).map(Packet::PubAck),
        5 => ack(flags, 0b0000, body, version, PUBACK_CODES).map(Packet::PubRec),
        6 => ack(flags, 0b0010, body, version, PUBREL_CODES).map(Packet::PubRel),
        7 => ack(flags, 0b0000, body, version, PUBREL_CODES).map(Packet::PubComp),
        8 => subscribe(flags, body, version),
        10 => unsubscribe(flags, body, version),
        12 => {
            fixed_flags(flags, 0b0000)?;
            Cursor::new(body).finish()?;
            Ok(Packet::PingReq)
        }
        14 => disconnect(flags, body, version),
        15 => match version {
            Version::V5 => auth(flags, body),
            Version::V311 => Err(Protocol("AUTH is a reserved packet type in MQTT 3.1.1")),
        },
        2 | 9 | 11 | 13 => Err(Protocol("packet kind only a server sends")),
        _ => Err(Malformed("reserved packet type 0")),
    }
}

/// The flag bits of the fixed header, fixed per packet kind [MQTT-2.2.2-2].
fn fixed_flags(flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags != expected {
        return Err(Malformed("invalid fixed header flags [MQTT-2.2.2-2]"));
    }
    Ok(())
}

/// A non-zero packet identifier [MQTT-2.2.1-3].
fn packet_id(c: &mut Cursor<'_>) -> Result<PacketId, DecodeError> {
    NonZeroU16::new(c.u16()?).ok_or(Protocol("packet identifier 0 [MQTT-2.2.1-3]"))
}

fn reason(byte: u8, valid: &[u8]) -> Result<ReasonCode, DecodeError> {
    const INVALID: DecodeError = Malformed("reason code not defined for this packet kind");
    if !valid.contains(&byte) {
        return Err(INVALID);
    }
    ReasonCode::from_u8(byte).ok_or(INVALID)
}

/// A topic name as PUBLISH and the Will carry it: no wildcards [MQTT-3.3.2-2]. Emptiness is
/// checked by the caller (a v5 PUBLISH may use a Topic Alias instead).
fn topic_name(topic: &str) -> Result<&str, DecodeError> {
    // A byte scan: `str::contains` with a char set is several times slower on short topics.
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicName(
            "wildcard in topic name [MQTT-3.3.2-2]",
        ));
    }
    Ok(topic)
}

/// A payload marked UTF-8 must be UTF-8 (5.0 §3.3.2.3.2; the check itself is optional).
fn payload_format(props: &Properties<'_>, payload: &[u8]) -> Result<(), DecodeError> {
    if props.payload_format == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(DecodeError::PayloadFormat);
    }
    Ok(())
}

/// Protocol Name and Protocol Level: "MQTT" 4 or 5 [MQTT-3.1.2-1], [MQTT-3.1.2-2].
fn protocol_version(c: &mut Cursor<'_>) -> Result<Version, DecodeError> {
    let name = c.binary()?;
    let level = c.u8()?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        _ => Err(DecodeError::BadVersion(level)),
    }
}

fn connect(flags: u8, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    fixed_flags(flags, 0b0000)?;
    let mut c = Cursor::new(body);
    let version = protocol_version(&mut c)?;
    let v5 = version == Version::V5;
    let f = c.u8()?;
    if f & 0x01 != 0 {
        return Err(Malformed("CONNECT reserved flag set [MQTT-3.1.2-3]"));
    }
    let will_flag = f & 0x04 != 0;
    let will_retain = f & 0x20 != 0;
    let will_qos_bits = (f >> 3) & 0x03;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // 3.1.1: [MQTT-3.1.2-13], [MQTT-3.1.2-15]; 5.0: [MQTT-3.1.2-11], [MQTT-3.1.2-13].
        return Err(Malformed("will QoS or retain set without the will flag"));
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(Malformed("will QoS 3"))?;
    let has_password = f & 0x40 != 0;
    let has_username = f & 0x80 != 0;
    if !v5 && has_password && !has_username {
        return Err(Malformed("password without user name [MQTT-3.1.2-22]"));
    }
    let keep_alive = c.u16()?;
    let props = if v5 {
        read_props(&mut c, props::CONNECT)?
    } else {
        Properties::default()
    };
    if props.auth_data.is_some() && props.auth_method.is_none() {
        return Err(Protocol(
            "authentication data without authentication method",
        ));
    }
    let client_id = c.string()?;
    let will = if will_flag {
        let props = if v5 {
            read_props(&mut c, props::WILL)?
        } else {
            Properties::default()
        };
        let topic = topic_name(c.string()?)?;
        if topic.is_empty() {
            return Err(DecodeError::TopicName("empty will topic [MQTT-4.7.3-1]"));
        }
        let payload = c.binary()?;
        payload_format(&props, payload)?;
        Some(Will {
            qos: will_qos,
            retain: will_retain,
            topic,
            payload,
            props,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(c.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(c.binary()?)
    } else {
        None
    };
    c.finish()?;
    Ok(Packet::Connect(Connect {
        version,
        clean_start: f & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        props,
    }))
}

fn publish(flags: u8, body: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(Malformed("PUBLISH QoS 3 [MQTT-3.3.1-4]"))?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Malformed("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"));
    }
    let mut c = Cursor::new(body);
    let topic = topic_name(c.string()?)?;
    let pkid = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(packet_id(&mut c)?),
    };
    let props = match version {
        Version::V5 => read_props(&mut c, props::PUBLISH)?,
        Version::V311 => Properties::default(),
    };
    if topic.is_empty() {
        match version {
            Version::V311 => {
                return Err(DecodeError::TopicName("empty topic name [MQTT-4.7.3-1]"));
            }
            // 5.0 §3.3.2.3.4: "It is a Protocol Error if the Topic Name is zero length and
            // there is no Topic Alias."
            Version::V5 if props.topic_alias.is_none() => {
                return Err(Protocol("empty topic name without a topic alias"));
            }
            Version::V5 => {}
        }
    }
    let payload = c.rest();
    payload_format(&props, payload)?;
    Ok(Packet::Publish(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        pkid,
        props,
        payload,
    }))
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In 5.0 the reason code and then the properties may be
/// left out (Success, none).
fn ack<'a>(
    flags: u8,
    expected_flags: u8,
    body: &'a [u8],
    version: Version,
    codes: &[u8],
) -> Result<Ack<'a>, DecodeError> {
    fixed_flags(flags, expected_flags)?;
    let mut c = Cursor::new(body);
    let pkid = packet_id(&mut c)?;
    let (code, props) = optional_reason(&mut c, version, codes, props::ACK)?;
    c.finish()?;
    Ok(Ack { pkid, code, props })
}

/// The 5.0 tail of acks, DISCONNECT and AUTH: a reason code if any bytes are left, then
/// properties if any are still left. Nothing in 3.1.1.
fn optional_reason<'a>(
    c: &mut Cursor<'a>,
    version: Version,
    codes: &[u8],
    rules: props::Rules,
) -> Result<(ReasonCode, Properties<'a>), DecodeError> {
    if version == Version::V311 || c.is_empty() {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let code = reason(c.u8()?, codes)?;
    let props = if c.is_empty() {
        Properties::default()
    } else {
        read_props(c, rules)?
    };
    Ok((code, props))
}

fn subscribe(flags: u8, body: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    fixed_flags(flags, 0b0010)?;
    let mut c = Cursor::new(body);
    let pkid = packet_id(&mut c)?;
    let props = match version {
        Version::V5 => read_props(&mut c, props::SUBSCRIBE)?,
        Version::V311 => Properties::default(),
    };
    let payload = c.rest();
    let mut entries = Cursor::new(payload);
    if entries.is_empty() {
        // 3.1.1 [MQTT-3.8.3-3], 5.0 [MQTT-3.8.3-2].
        return Err(Protocol("SUBSCRIBE without a topic filter"));
    }
    while !entries.is_empty() {
        subscribe_entry(&mut entries, version)?;
    }
    Ok(Packet::Subscribe(Subscribe {
        pkid,
        props,
        payload,
        version,
    }))
}

fn unsubscribe(flags: u8, body: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    fixed_flags(flags, 0b0010)?;
    let mut c = Cursor::new(body);
    let pkid = packet_id(&mut c)?;
    let props = match version {
        Version::V5 => read_props(&mut c, props::UNSUBSCRIBE)?,
        Version::V311 => Properties::default(),
    };
    let payload = c.rest();
    let mut entries = Cursor::new(payload);
    if entries.is_empty() {
        return Err(Protocol(
            "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
        ));
    }
    while !entries.is_empty() {
        topic_filter(&mut entries)?;
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        pkid,
        props,
        payload,
    }))
}

fn disconnect(flags: u8, body: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    fixed_flags(flags, 0b0000)?;
    let mut c = Cursor::new(body);
    let (code, props) = optional_reason(&mut c, version, DISCONNECT_CODES, props::DISCONNECT)?;
    c.finish()?;
    Ok(Packet::Disconnect(Disconnect { code, props }))
}

fn auth(flags: u8, body: &[u8]) -> Result<Packet<'_>, DecodeError> {
    fixed_flags(flags, 0b0000)?;
    let mut c = Cursor::new(body);
    let (code, props) = optional_reason(&mut c, Version::V5, AUTH_CODES, props::AUTH)?;
    c.finish()?;
    Ok(Packet::Auth(Auth { code, props }))
}

/// A topic filter: a non-empty UTF-8 string [MQTT-4.7.3-1]. Wildcard placement is the
/// broker's to check.
fn topic_filter<'a>(c: &mut Cursor<'a>) -> Result<&'a str, DecodeError> {
    let filter = c.string()?;
    if filter.is_empty() {
        return Err(Malformed("empty topic filter [MQTT-4.7.3-1]"));
    }
    Ok(filter)
}

/// One SUBSCRIBE entry: a topic filter and its options byte.
fn subscribe_entry<'a>(
    c: &mut Cursor<'a>,
    version: Version,
) -> Result<(&'a str, SubOptions), DecodeError> {
    let filter = topic_filter(c)?;
    let o = c.u8()?;
    let options = match version {
        Version::V311 => {
            if o & 0xfc != 0 {
                return Err(Malformed(
                    "reserved subscription option bits [MQTT-3.8.3-4]",
                ));
            }
            SubOptions {
                qos: QoS::from_u8(o).ok_or(Malformed("subscription QoS 3 [MQTT-3.8.3-4]"))?,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }
        }
        Version::V5 => {
            if o & 0xc0 != 0 {
                return Err(Malformed(
                    "reserved subscription option bits [MQTT-3.8.3-5]",
                ));
            }
            let qos = QoS::from_u8(o & 0x03).ok_or(Protocol("subscription maximum QoS 3"))?;
            let retain_handling = (o >> 4) & 0x03;
            if retain_handling == 3 {
                return Err(Protocol("retain handling 3"));
            }
            let no_local = o & 0x04 != 0;
            if no_local && filter.starts_with("$share/") {
                return Err(Protocol("no local on a shared subscription [MQTT-3.8.3-4]"));
            }
            SubOptions {
                qos,
                no_local,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            }
        }
    };
    Ok((filter, options))
}

/// The (filter, options) entries of a SUBSCRIBE payload. Re-reads the bytes with the same
/// checks `decode` made, and stops at the first entry that fails them (which a decoded
/// payload never has).
pub struct SubscribeIter<'a> {
    cur: Cursor<'a>,
    version: Version,
}

impl<'a> Iterator for SubscribeIter<'a> {
    type Item = (&'a str, SubOptions);

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur.is_empty() {
            return None;
        }
        let entry = subscribe_entry(&mut self.cur, self.version);
        if entry.is_err() {
            self.cur.clear();
        }
        entry.ok()
    }
}

impl<'a> Subscribe<'a> {
    pub fn filters(&self) -> SubscribeIter<'a> {
        SubscribeIter {
            cur: Cursor::new(self.payload),
            version: self.version,
        }
    }
}

/// The topic filters of an UNSUBSCRIBE payload; stops at the first one that is not a
/// non-empty UTF-8 string.
pub struct UnsubscribeIter<'a> {
    cur: Cursor<'a>,
}

impl<'a> Iterator for UnsubscribeIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur.is_empty() {
            return None;
        }
        let filter = topic_filter(&mut self.cur);
        if filter.is_err() {
            self.cur.clear();
        }
        filter.ok()
    }
}

impl<'a> Unsubscribe<'a> {
    pub fn filters(&self) -> UnsubscribeIter<'a> {
        UnsubscribeIter {
            cur: Cursor::new(self.payload),
        }
    }
}
