//! The sans-IO MQTT 3.1.1 / 5.0 codec: finds frames in a byte stream ([`frame_len`]), turns a
//! frame into a borrowed [`Packet`](super::packet::Packet) ([`decode()`]) and a packet into
//! bytes for either version ([`encode()`], [`encoded_len`]). It also reads the data the model
//! keeps raw: SUBSCRIBE and UNSUBSCRIBE payloads ([`SubscribeIter`], [`UnsubscribeIter`]) and
//! the repeatable MQTT 5 properties (`Properties::user_properties`,
//! `Properties::subscription_ids`).
//!
//! It checks everything the two specifications make normative on the wire, and nothing that
//! needs state: it does no I/O, keeps no session, resolves no topic aliases, checks no
//! wildcard placement in filters and no limits negotiated in CONNECT/CONNACK. A
//! [`DecodeError`] only names the reason code to answer with; the state machine decides.
//!
//! `decode` is the server's reader: it accepts the packets a client may send. CONNACK,
//! SUBACK, UNSUBACK and PINGRESP are a Protocol Error there (SUBACK/UNSUBACK could not
//! borrow their `&[ReasonCode]` from the frame anyway). `encode` writes every kind.
//!
//! A decoded `Properties` holds its scalars twice: parsed into the fields and still inside
//! `raw`. To send a decoded block on unchanged, pass `raw` alone
//! (`Properties { raw, ..Default::default() }`); encoding it as decoded would repeat them.
//!
//! Where the specifications leave the error kind open, this codec chooses (5.0 §1.2: a
//! Malformed Packet "cannot be parsed", a Protocol Error is "data that is not allowed"):
//! - A property identifier that is unknown or not valid for the packet kind is Malformed
//!   (0x81), as 5.0 §2.2.2.2 states; a single-valued property given twice is a Protocol
//!   Error (0x82), as stated for each property in 5.0 §3.
//! - A reason code byte not defined for the packet kind is Malformed.
//! - A packet identifier of 0 is a Protocol Error [MQTT-2.2.1-3].
//! - An empty PUBLISH topic without a Topic Alias is a Protocol Error in 5.0 (§3.3.2.3.4)
//!   and a topic name error in 3.1.1 [MQTT-4.7.3-1].
//! - SUBSCRIBE Maximum QoS 3 is a Protocol Error in 5.0 (§3.8.3.1) and Malformed in 3.1.1
//!   [MQTT-3.8.3-4].
//! - A payload marked UTF-8 (Payload Format Indicator 1) is validated: 0x99 if it is not.

mod cursor;
mod decode;
mod encode;
mod props;
#[cfg(test)]
mod tests;

use std::fmt;

use super::packet::ReasonCode;

pub use decode::{SubscribeIter, UnsubscribeIter, decode};
pub use encode::{encode, encoded_len, put_varint, varint_len};
pub use props::{
    content_type_of, put_binary_property, put_byte_property, put_string_property, put_user_property,
};

/// The largest value a Variable Byte Integer holds (4 bytes) [MQTT-1.5.5-1].
const VARINT_MAX: u32 = 268_435_455;

/// Everything that can be wrong with peer bytes, each knowing its wire consequence
/// ([`DecodeError::reason`]). The texts name the rule broken, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes cannot be parsed as the packet they claim to be (0x81).
    Malformed(&'static str),
    /// The packet parses but carries data the protocol does not allow (0x82).
    Protocol(&'static str),
    /// The frame (fixed header included) is longer than the limit (0x95).
    TooLarge { len: usize, max: usize },
    /// CONNECT names a protocol or level other than "MQTT" 4 or 5; holds the level byte
    /// (0x84; a 3.1.1 server answers CONNACK return code 0x01).
    BadVersion(u8),
    /// A PUBLISH or Will topic name that is empty or holds a wildcard (0x90).
    TopicName(&'static str),
    /// A Topic Alias of 0 [MQTT-3.3.2-8] (0x94).
    TopicAlias,
    /// A payload marked UTF-8 by Payload Format Indicator 1 that is not UTF-8 (0x99).
    PayloadFormat,
}

impl DecodeError {
    /// The v5 reason code to put in CONNACK or DISCONNECT.
    pub fn reason(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::BadVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::TopicName(_) => ReasonCode::TopicNameInvalid,
            DecodeError::TopicAlias => ReasonCode::TopicAliasInvalid,
            DecodeError::PayloadFormat => ReasonCode::PayloadFormatInvalid,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
            DecodeError::Protocol(why) => write!(f, "protocol error: {why}"),
            DecodeError::TooLarge { len, max } => {
                write!(f, "packet of {len} bytes is over the {max} byte limit")
            }
            DecodeError::BadVersion(level) => {
                write!(f, "unsupported protocol name or level {level}")
            }
            DecodeError::TopicName(why) => write!(f, "invalid topic name: {why}"),
            DecodeError::TopicAlias => f.write_str("topic alias 0 [MQTT-3.3.2-8]"),
            DecodeError::PayloadFormat => {
                f.write_str("payload marked as UTF-8 (payload format 1) is not UTF-8")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Length of the complete frame (fixed header + remaining length) at the start of `buf`.
///
/// `Ok(None)`: more bytes are needed. `Err(TooLarge)` as soon as the remaining-length field
/// says the frame is longer than `max`, before the body is buffered. `Err(Malformed)` for a
/// remaining length over 4 bytes or not in its shortest form [MQTT-1.5.5-1].
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(after_type) = buf.get(1..) else {
        return Ok(None);
    };
    let Some((remaining, len_bytes)) = cursor::read_varint(after_type)? else {
        return Ok(None);
    };
    let len = 1 + len_bytes + remaining as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    Ok(Some(len))
}
