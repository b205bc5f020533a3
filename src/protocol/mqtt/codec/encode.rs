//! Packet to bytes, for either version. One writer serves both [`encode()`] and
//! [`encoded_len`] (it writes into a [`Sink`] that either stores or counts), so the two can
//! never disagree. Encoding trusts its input: it writes what the packet holds and checks
//! nothing a peer would (a PUBLISH with QoS > 0 and no packet id gets id 0, a property set on
//! the wrong packet kind is written), with two exceptions that keep frames well-formed:
//! strings and binary fields over 65,535 bytes are cut to 65,535 (strings at a character
//! boundary), and Session Present is cleared in a refusing CONNACK [MQTT-3.2.2-4] (3.1.1),
//! [MQTT-3.2.2-6] (5.0). For 3.1.1 no properties are written, CONNACK carries
//! `ReasonCode::to_v3_connack`, SUBACK codes become 0x00/0x01/0x02/0x80, and AUTH, which
//! 3.1.1 does not have, is not written at all (0 bytes).

use std::num::NonZeroU16;

use super::super::packet::{
    Ack, ConnAck, Connect, Packet, Properties, QoS, ReasonCode, SubAck, UnsubAck, Version,
};
use super::VARINT_MAX;
use super::props::{props_body_len, write_props};

/// Where the writer puts bytes: a `Vec` stores them, a [`Count`] only counts them.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[derive(Default)]
pub(super) struct Count(pub(super) usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Append the encoding of `packet` for `version` to `out`; returns the bytes written.
pub fn encode(packet: &Packet<'_>, version: Version, out: &mut Vec<u8>) -> usize {
    let Some(first) = first_byte(packet, version) else {
        return 0;
    };
    let start = out.len();
    out.push(first);
    put_var(out, len_u32(body_len(packet, version)));
    body(out, packet, version);
    out.len() - start
}

/// Exact encoded size (fixed header included) without encoding.
pub fn encoded_len(packet: &Packet<'_>, version: Version) -> usize {
    if first_byte(packet, version).is_none() {
        return 0;
    }
    let n = body_len(packet, version);
    1 + varint_len(len_u32(n)) + n
}

/// Appends `v` as a Variable Byte Integer. Values over 268,435,455 cannot be encoded; they
/// are a caller bug (asserted in debug builds) and written as 268,435,455.
pub fn put_varint(out: &mut Vec<u8>, v: u32) {
    put_var(out, v);
}

/// The number of bytes `put_varint` writes for `v` (1 to 4).
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        _ => 4,
    }
}

pub(super) fn put_var<S: Sink>(s: &mut S, v: u32) {
    debug_assert!(
        v <= VARINT_MAX,
        "variable byte integer {v} over 268,435,455"
    );
    let mut v = v.min(VARINT_MAX);
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            s.put(&[low]);
            return;
        }
        s.put(&[low | 0x80]);
    }
}

/// A length as the u32 a Variable Byte Integer carries (saturating; see `put_varint`).
pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn put_u16<S: Sink>(s: &mut S, v: u16) {
    s.put(&v.to_be_bytes());
}

pub(super) fn put_u32<S: Sink>(s: &mut S, v: u32) {
    s.put(&v.to_be_bytes());
}

/// A UTF-8 Encoded String, cut to 65,535 bytes at a character boundary.
pub(super) fn put_str<S: Sink>(s: &mut S, v: &str) {
    let mut end = v.len().min(usize::from(u16::MAX));
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    put_bin(s, v.as_bytes().get(..end).unwrap_or_default());
}

/// Binary Data, cut to 65,535 bytes.
pub(super) fn put_bin<S: Sink>(s: &mut S, v: &[u8]) {
    let v = v.get(..usize::from(u16::MAX)).unwrap_or(v);
    put_u16(s, u16::try_from(v.len()).unwrap_or(u16::MAX));
    s.put(v);
}

/// Fixed header byte; `None` for a packet the version does not have (AUTH in 3.1.1).
fn first_byte(packet: &Packet<'_>, version: Version) -> Option<u8> {
    Some(match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => match version {
            Version::V5 => 0xF0,
            Version::V311 => return None,
        },
    })
}

fn body_len(packet: &Packet<'_>, version: Version) -> usize {
    let mut n = Count::default();
    body(&mut n, packet, version);
    n.0
}

fn body<S: Sink>(s: &mut S, packet: &Packet<'_>, version: Version) {
    let v5 = version == Version::V5;
    match packet {
        Packet::Connect(c) => connect(s, c, version),
        Packet::ConnAck(c) => connack(s, c, version),
        Packet::Publish(p) => {
            put_str(s, p.topic);
            if p.qos != QoS::AtMostOnce {
                debug_assert!(p.pkid.is_some(), "PUBLISH with QoS > 0 needs a packet id");
                put_u16(s, p.pkid.map_or(0, NonZeroU16::get));
            }
            if v5 {
                write_props(s, &p.props);
            }
            s.put(p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack(s, a, version);
        }
        Packet::Subscribe(sub) => {
            put_u16(s, sub.pkid.get());
            if v5 {
                write_props(s, &sub.props);
            }
            s.put(sub.payload);
        }
        Packet::SubAck(a) => suback(s, a, version),
        Packet::Unsubscribe(u) => {
            put_u16(s, u.pkid.get());
            if v5 {
                write_props(s, &u.props);
            }
            s.put(u.payload);
        }
        Packet::UnsubAck(a) => unsuback(s, a, version),
        Packet::PingReq | Packet::PingResp => {}
        // 3.1.1 DISCONNECT has no variable header; AUTH never reaches here for 3.1.1.
        Packet::Disconnect(d) if v5 => reason_and_props(s, d.code, &d.props, true),
        Packet::Auth(a) if v5 => reason_and_props(s, a.code, &a.props, false),
        Packet::Disconnect(_) | Packet::Auth(_) => {}
    }
}

/// CONNECT for `version` (its protocol level and whether properties are written), whatever
/// `Connect::version` says.
fn connect<S: Sink>(s: &mut S, c: &Connect<'_>, version: Version) {
    let v5 = version == Version::V5;
    put_str(s, "MQTT");
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.put(&[version.level(), flags]);
    put_u16(s, c.keep_alive);
    if v5 {
        write_props(s, &c.props);
    }
    put_str(s, c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            write_props(s, &w.props);
        }
        put_str(s, w.topic);
        put_bin(s, w.payload);
    }
    if let Some(u) = c.username {
        put_str(s, u);
    }
    if let Some(p) = c.password {
        put_bin(s, p);
    }
}

fn connack<S: Sink>(s: &mut S, c: &ConnAck<'_>, version: Version) {
    let (code, accepted) = match version {
        Version::V311 => {
            let rc = c.code.to_v3_connack();
            (rc, rc == 0)
        }
        Version::V5 => (c.code as u8, !c.code.is_error()),
    };
    // Session Present is 0 when the connection is refused [MQTT-3.2.2-4] / [MQTT-3.2.2-6].
    s.put(&[u8::from(c.session_present && accepted), code]);
    if version == Version::V5 {
        write_props(s, &c.props);
    }
}

fn ack<S: Sink>(s: &mut S, a: &Ack<'_>, version: Version) {
    put_u16(s, a.pkid.get());
    if version == Version::V5 {
        reason_and_props(s, a.code, &a.props, true);
    }
}

fn suback<S: Sink>(s: &mut S, a: &SubAck<'_>, version: Version) {
    put_u16(s, a.pkid.get());
    match version {
        Version::V5 => {
            write_props(s, &a.props);
            for &code in a.codes {
                s.put(&[code as u8]);
            }
        }
        Version::V311 => {
            for &code in a.codes {
                s.put(&[match code {
                    ReasonCode::Success => 0x00,
                    ReasonCode::GrantedQoS1 => 0x01,
                    ReasonCode::GrantedQoS2 => 0x02,
                    _ => 0x80,
                }]);
            }
        }
    }
}

fn unsuback<S: Sink>(s: &mut S, a: &UnsubAck<'_>, version: Version) {
    put_u16(s, a.pkid.get());
    if version == Version::V5 {
        write_props(s, &a.props);
        for &code in a.codes {
            s.put(&[code as u8]);
        }
    }
}

/// The v5 reason code and properties in their shortest valid form: both omitted for Success
/// without properties; the properties omitted alone if `props_optional` (acks, DISCONNECT;
/// AUTH may only omit both).
fn reason_and_props<S: Sink>(
    s: &mut S,
    code: ReasonCode,
    props: &Properties<'_>,
    props_optional: bool,
) {
    let no_props = props_body_len(props) == 0;
    if code == ReasonCode::Success && no_props {
        return;
    }
    s.put(&[code as u8]);
    if !(no_props && props_optional) {
        write_props(s, props);
    }
}
