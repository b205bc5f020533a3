//! The MQTT packet model shared by both protocol versions. Decoded packets borrow from the
//! frame they were read from (`'a`), so decoding allocates nothing. This file owns the types
//! only; `codec` turns bytes into these values and back.

use std::num::NonZeroU16;

/// Protocol level byte of CONNECT. MQTT 3.1 (level 3, "MQIsdp") is refused with
/// CONNACK 0x01 by the state machine, so it is not a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier is never zero [MQTT-2.2.1-3].
pub type PacketId = NonZeroU16;

/// MQTT 5 properties, one struct for every packet kind. The codec checks which
/// properties each packet kind may carry and rejects duplicates of single-valued ones
/// (reason 0x82 / 0x81). Scalar properties are plain options; the two repeatable ones
/// (User Property 0x26 and Subscription Identifier 0x0B) are read by iterating `raw`.
///
/// - On **decode**, `raw` is the whole validated property block of the packet (without its
///   length prefix); `user_properties()` and `subscription_ids()` walk it. `user` and
///   `subscription_ids_out` stay empty.
/// - On **encode**, `raw` holds property bytes already in wire form (for example the user
///   properties of a stored message, encoded once at ingest) and is copied verbatim after the
///   scalar properties; `user` and `subscription_ids_out` are encoded from the slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Properties<'a> {
    pub payload_format: Option<u8>,          // 0x01
    pub message_expiry: Option<u32>,         // 0x02
    pub content_type: Option<&'a str>,       // 0x03
    pub response_topic: Option<&'a str>,     // 0x08
    pub correlation_data: Option<&'a [u8]>,  // 0x09
    pub session_expiry: Option<u32>,         // 0x11
    pub assigned_client_id: Option<&'a str>, // 0x12
    pub server_keep_alive: Option<u16>,      // 0x13
    pub auth_method: Option<&'a str>,        // 0x15
    pub auth_data: Option<&'a [u8]>,         // 0x16
    pub request_problem_info: Option<u8>,    // 0x17
    pub will_delay: Option<u32>,             // 0x18
    pub request_response_info: Option<u8>,   // 0x19
    pub response_info: Option<&'a str>,      // 0x1A
    pub server_reference: Option<&'a str>,   // 0x1C
    pub reason_string: Option<&'a str>,      // 0x1F
    pub receive_maximum: Option<u16>,        // 0x21
    pub topic_alias_maximum: Option<u16>,    // 0x22
    pub topic_alias: Option<u16>,            // 0x23
    pub maximum_qos: Option<u8>,             // 0x24
    pub retain_available: Option<u8>,        // 0x25
    pub maximum_packet_size: Option<u32>,    // 0x27
    pub wildcard_sub_available: Option<u8>,  // 0x28
    pub sub_id_available: Option<u8>,        // 0x29
    pub shared_sub_available: Option<u8>,    // 0x2A
    /// Encode only: User Properties (0x26) to write.
    pub user: &'a [(&'a str, &'a str)],
    /// Encode only: Subscription Identifiers (0x0B) to write (a PUBLISH to a client may carry
    /// several).
    pub subscription_ids_out: &'a [u32],
    /// See the type doc: the decoded block, or pre-encoded bytes to append on encode.
    pub raw: &'a [u8],
}

/// A message-level property block as stored with a message: MQTT 5 properties that travel
/// from publisher to subscriber unchanged (payload format, content type, response topic,
/// correlation data, user properties), in wire form. Message expiry is not in it: it is
/// rewritten per delivery with the remaining time [MQTT-3.3.2-6].
pub type EncodedProps = Box<[u8]>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Will<'a> {
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Will properties (v5): will delay, payload format, message expiry, content type,
    /// response topic, correlation data, user properties.
    pub props: Properties<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub props: Properties<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck<'a> {
    pub session_present: bool,
    /// v5 reason code; for v3.1.1 the codec maps it to the 3.1.1 return code
    /// (see `ReasonCode::to_v3_connack`).
    pub code: ReasonCode,
    pub props: Properties<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a Topic Alias is used.
    pub topic: &'a str,
    /// Present iff qos > 0.
    pub pkid: Option<PacketId>,
    pub props: Properties<'a>,
    pub payload: &'a [u8],
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP share one layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    pub pkid: PacketId,
    pub code: ReasonCode,
    pub props: Properties<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    /// v5 only (always false in 3.1.1).
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send at subscribe, 1 only if new, 2 never.
    pub retain_handling: u8,
}

/// SUBSCRIBE: the topic filters are read by iterating (`Subscribe::filters`), so decoding a
/// SUBSCRIBE with many filters allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub pkid: PacketId,
    pub props: Properties<'a>,
    /// The validated payload: (filter, options) entries in wire form. Iterate with
    /// `codec::SubscribeIter`.
    pub payload: &'a [u8],
    pub version: Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub pkid: PacketId,
    pub props: Properties<'a>,
    /// One per filter, v5 reason codes; for 3.1.1 the codec writes 0x00/0x01/0x02/0x80.
    pub codes: &'a [ReasonCode],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub pkid: PacketId,
    pub props: Properties<'a>,
    /// The validated payload: topic filters in wire form. Iterate with
    /// `codec::UnsubscribeIter`.
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    pub pkid: PacketId,
    pub props: Properties<'a>,
    /// v5 only: one reason per filter. Ignored when encoding for 3.1.1.
    pub codes: &'a [ReasonCode],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect<'a> {
    pub code: ReasonCode,
    pub props: Properties<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auth<'a> {
    pub code: ReasonCode,
    pub props: Properties<'a>,
}

// `Properties` makes the variants that carry it large (Connect ~600 bytes). A `Packet` is a
// short-lived borrowed view; boxing would allocate per packet, which decoding must not.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck<'a>),
    Publish(Publish<'a>),
    PubAck(Ack<'a>),
    PubRec(Ack<'a>),
    PubRel(Ack<'a>),
    PubComp(Ack<'a>),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(UnsubAck<'a>),
    PingReq,
    PingResp,
    Disconnect(Disconnect<'a>),
    Auth(Auth<'a>),
}

/// MQTT 5 reason codes (section 2.4). 3.1.1 packets are mapped onto these by the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00, // also Normal Disconnection, Granted QoS 0
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match v {
            0x00 => Success,
            0x01 => GrantedQoS1,
            0x02 => GrantedQoS2,
            0x04 => DisconnectWithWill,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QoSNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }

    pub fn is_error(self) -> bool {
        (self as u8) >= 0x80
    }

    /// The MQTT 3.1.1 CONNACK return code for a v5 reason (3.1.1 §3.2.2.3):
    /// 0 accepted, 1 unacceptable protocol version, 2 identifier rejected, 3 server
    /// unavailable, 4 bad user name or password, 5 not authorized.
    pub fn to_v3_connack(self) -> u8 {
        use ReasonCode::*;
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            NotAuthorized | Banned => 5,
            _ => 3,
        }
    }
}
