//! Minimal client-side MQTT 3.1.1 / 5.0 codec: just what the load generator sends (CONNECT,
//! SUBSCRIBE, PUBLISH templates, PUBACK/PUBREC/PUBREL/PUBCOMP, PINGREQ, DISCONNECT) and parses
//! (CONNACK, SUBACK, PUBLISH, the acks, PINGRESP, DISCONNECT). Written here on purpose so that the
//! bench never shares code, and so never shares bugs, with the broker it measures.

use std::fmt;

pub const CONNECT: u8 = 0x10;
pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;
pub const SUBSCRIBE: u8 = 0x82;
pub const SUBACK: u8 = 0x90;
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: u8 = 0xD0;
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];
pub const DISCONNECT_TYPE: u8 = 0xE0;

/// Largest remaining length a 4-byte variable integer can express.
const MAX_REMAINING: usize = 268_435_455;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed MQTT packet: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    assert!(n <= MAX_REMAINING, "MQTT variable integer out of range");
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Decodes a variable byte integer: `Ok(None)` when more bytes are needed, else (value, length).
pub fn get_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(Malformed("variable integer longer than 4 bytes"))
}

/// A complete packet at the front of a buffer: first header byte, body range, total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub header: u8,
    pub body_start: usize,
    pub len: usize,
}

/// Finds the packet at the start of `buf`; `Ok(None)` if it is not complete yet.
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let Some((remaining, n)) = get_varint(&buf[1..])? else {
        return Ok(None);
    };
    let len = 1 + n + remaining;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        header: buf[0],
        body_start: 1 + n,
        len,
    }))
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).expect("MQTT string longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(header);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session / clean start, no will, no credentials.
pub fn connect(version: Version, client_id: &str, keepalive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(version.level());
    body.push(0x02); // clean session (3.1.1) / clean start (5)
    body.extend_from_slice(&keepalive.to_be_bytes());
    if version == Version::V5 {
        body.push(0); // no properties
    }
    put_str(&mut body, client_id.as_bytes());
    packet(CONNECT, &body)
}

/// SUBSCRIBE to one filter at `qos`.
pub fn subscribe(version: Version, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    if version == Version::V5 {
        body.push(0);
    }
    put_str(&mut body, filter.as_bytes());
    body.push(qos & 0x03);
    packet(SUBSCRIBE, &body)
}

/// A PUBLISH encoded once; the sender copies it and patches the packet id and payload stamp.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    pub bytes: Vec<u8>,
    /// Offset of the 2-byte packet identifier (QoS 1 and 2 only).
    pub packet_id_at: Option<usize>,
    pub payload_at: usize,
}

pub fn publish_template(
    version: Version,
    topic: &str,
    qos: u8,
    payload_len: usize,
) -> PublishTemplate {
    let mut body = Vec::with_capacity(topic.len() + payload_len + 8);
    put_str(&mut body, topic.as_bytes());
    let mut packet_id_rel = None;
    if qos > 0 {
        packet_id_rel = Some(body.len());
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    if version == Version::V5 {
        body.push(0);
    }
    let payload_rel = body.len();
    body.extend((0..payload_len).map(|i| b'a' + (i % 26) as u8));
    let bytes = packet(PUBLISH | (qos & 0x03) << 1, &body);
    let header_len = bytes.len() - body.len();
    PublishTemplate {
        packet_id_at: packet_id_rel.map(|r| r + header_len),
        payload_at: payload_rel + header_len,
        bytes,
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with success (the short form, valid in both versions).
pub fn ack(kind: u8, packet_id: u16) -> [u8; 4] {
    let id = packet_id.to_be_bytes();
    [kind, 2, id[0], id[1]]
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, Malformed> {
    buf.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(Malformed("truncated"))
}

/// Splits an MQTT 5 property block at `at`: returns (properties, offset after them).
fn properties(body: &[u8], at: usize) -> Result<(&[u8], usize), Malformed> {
    let rest = body.get(at..).ok_or(Malformed("truncated properties"))?;
    let (len, n) = get_varint(rest)?.ok_or(Malformed("truncated property length"))?;
    let end = at + n + len;
    let props = body
        .get(at + n..end)
        .ok_or(Malformed("property block overruns packet"))?;
    Ok((props, end))
}

/// Walks an MQTT 5 property block, calling `f(id, integer value)` for integer properties.
fn for_each_int_property(props: &[u8], mut f: impl FnMut(u8, u32)) -> Result<(), Malformed> {
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        let take = |i: usize, n: usize| props.get(i..i + n).ok_or(Malformed("truncated property"));
        match id {
            // byte
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                f(id, u32::from(take(i, 1)?[0]));
                i += 1;
            }
            // two-byte integer
            0x13 | 0x21 | 0x22 | 0x23 => {
                let b = take(i, 2)?;
                f(id, u32::from(u16::from_be_bytes([b[0], b[1]])));
                i += 2;
            }
            // four-byte integer
            0x02 | 0x11 | 0x18 | 0x27 => {
                let b = take(i, 4)?;
                f(id, u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                i += 4;
            }
            // variable byte integer
            0x0B => {
                let (v, n) = get_varint(&props[i..])?.ok_or(Malformed("truncated property"))?;
                f(id, v as u32);
                i += n;
            }
            // UTF-8 string or binary data
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                i += 2 + usize::from(u16_at(props, i)?);
            }
            // string pair
            0x26 => {
                i += 2 + usize::from(u16_at(props, i)?);
                i += 2 + usize::from(u16_at(props, i)?);
            }
            _ => return Err(Malformed("unknown property")),
        }
    }
    if i > props.len() {
        return Err(Malformed("property overruns block"));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub return_code: u8,
    pub receive_maximum: Option<u16>,
    pub server_keepalive: Option<u16>,
    pub maximum_packet_size: Option<u32>,
}

pub fn parse_connack(version: Version, body: &[u8]) -> Result<ConnAck, Malformed> {
    if body.len() < 2 {
        return Err(Malformed("short CONNACK"));
    }
    let mut ack = ConnAck {
        return_code: body[1],
        ..ConnAck::default()
    };
    if version == Version::V5 && body.len() > 2 {
        let (props, _) = properties(body, 2)?;
        for_each_int_property(props, |id, v| match id {
            0x21 => ack.receive_maximum = Some(v as u16),
            0x13 => ack.server_keepalive = Some(v as u16),
            0x27 => ack.maximum_packet_size = Some(v),
            _ => {}
        })?;
    }
    Ok(ack)
}

/// SUBACK: packet id and the per-filter return / reason codes.
pub fn parse_suback(version: Version, body: &[u8]) -> Result<(u16, Vec<u8>), Malformed> {
    let id = u16_at(body, 0)?;
    let at = if version == Version::V5 {
        properties(body, 2)?.1
    } else {
        2
    };
    Ok((id, body.get(at..).unwrap_or_default().to_vec()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

pub fn parse_publish(version: Version, header: u8, body: &[u8]) -> Result<Publish<'_>, Malformed> {
    let qos = (header >> 1) & 0x03;
    if qos == 3 {
        return Err(Malformed("PUBLISH with QoS 3"));
    }
    let topic_len = usize::from(u16_at(body, 0)?);
    let topic = body
        .get(2..2 + topic_len)
        .ok_or(Malformed("topic overruns PUBLISH"))?;
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16_at(body, at)?;
        at += 2;
    }
    if version == Version::V5 {
        at = properties(body, at)?.1;
    }
    Ok(Publish {
        qos,
        packet_id,
        topic,
        payload: &body[at..],
    })
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP: packet id and reason code (0 when omitted).
pub fn parse_ack(body: &[u8]) -> Result<(u16, u8), Malformed> {
    Ok((u16_at(body, 0)?, body.get(2).copied().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(get_varint(&out), Ok(Some((n, out.len()))));
            assert_eq!(get_varint(&out[..out.len() - 1]), Ok(None));
        }
        assert!(get_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn connect_v311_matches_spec_bytes() {
        let p = connect(Version::V311, "c", 60);
        assert_eq!(
            p,
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c'
            ]
        );
        let p5 = connect(Version::V5, "c", 60);
        assert_eq!(p5[1], 14);
        assert_eq!(p5[8], 5);
        assert_eq!(p5[12], 0);
    }

    #[test]
    fn publish_template_parses_back() {
        for version in [Version::V311, Version::V5] {
            for qos in 0..=2 {
                let mut t = publish_template(version, "bench/1", qos, 300);
                if let Some(at) = t.packet_id_at {
                    t.bytes[at..at + 2].copy_from_slice(&777u16.to_be_bytes());
                }
                t.bytes[t.payload_at..t.payload_at + 8].copy_from_slice(&42u64.to_le_bytes());
                let f = frame(&t.bytes).expect("valid").expect("complete");
                assert_eq!(f.len, t.bytes.len());
                let p = parse_publish(version, f.header, &t.bytes[f.body_start..]).expect("ok");
                assert_eq!(p.qos, qos);
                assert_eq!(p.topic, b"bench/1");
                assert_eq!(p.payload.len(), 300);
                assert_eq!(p.payload[..8], 42u64.to_le_bytes());
                assert_eq!(p.packet_id, if qos > 0 { 777 } else { 0 });
            }
        }
    }

    #[test]
    fn frame_waits_for_whole_packet() {
        let p = subscribe(Version::V311, 1, "a/b", 1);
        assert_eq!(frame(&p[..1]), Ok(None));
        assert_eq!(frame(&p[..p.len() - 1]), Ok(None));
        assert_eq!(frame(&p).expect("ok").expect("some").len, p.len());
    }

    #[test]
    fn connack_v5_properties() {
        // flags, rc, props: receive max 20, server keepalive 30, assigned client id "x", user prop.
        let body = [
            0, 0, 19, 0x21, 0, 20, 0x13, 0, 30, 0x12, 0, 1, b'x', 0x26, 0, 1, b'k', 0, 1, b'v',
            0x24, 1,
        ];
        let ack = parse_connack(Version::V5, &body).expect("parses");
        assert_eq!(ack.return_code, 0);
        assert_eq!(ack.receive_maximum, Some(20));
        assert_eq!(ack.server_keepalive, Some(30));
        assert_eq!(
            parse_connack(Version::V311, &[0, 5])
                .expect("ok")
                .return_code,
            5
        );
    }

    #[test]
    fn suback_and_acks() {
        assert_eq!(
            parse_suback(Version::V311, &[0, 9, 1]).expect("ok"),
            (9, vec![1])
        );
        assert_eq!(
            parse_suback(Version::V5, &[0, 9, 0, 0x80]).expect("ok"),
            (9, vec![0x80])
        );
        assert_eq!(parse_ack(&ack(PUBACK, 513)[2..]).expect("ok"), (513, 0));
        assert_eq!(parse_ack(&[0, 1, 0x10, 0]).expect("ok"), (1, 0x10));
    }
}
