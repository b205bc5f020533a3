//! Codec tests: shared helpers, framing, errors and properties here; byte-literal vectors
//! per packet kind in `vectors`; round trips and the no-panic sweeps in `robustness`.
//! Tests that check a normative statement carry its id in their name.

mod robustness;
mod vectors;

use super::super::packet::*;
use super::*;

const MAX: usize = 1 << 20;
const NONE: Option<Version> = None;
const V3: Option<Version> = Some(Version::V311);
const V5: Option<Version> = Some(Version::V5);

fn id(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

/// A fixed header byte and a body, framed (for building error cases).
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, u32::try_from(body.len()).expect("small body"));
    out.extend_from_slice(body);
    out
}

/// Encodes, checking that `encode` and `encoded_len` agree.
fn enc(packet: &Packet<'_>, version: Version) -> Vec<u8> {
    let mut out = vec![0xAA];
    let n = encode(packet, version, &mut out);
    assert_eq!(n, out.len() - 1, "encode returns the bytes it appended");
    assert_eq!(
        encoded_len(packet, version),
        n,
        "encoded_len matches encode"
    );
    out.split_off(1)
}

/// Decodes `bytes`, first checking that `frame_len` sees exactly one whole frame.
fn dec(bytes: &[u8], version: Option<Version>) -> Result<Packet<'_>, DecodeError> {
    assert_eq!(frame_len(bytes, MAX), Ok(Some(bytes.len())));
    decode(bytes, version)
}

fn err(bytes: &[u8], version: Option<Version>) -> DecodeError {
    dec(bytes, version).expect_err("must not decode")
}

fn ok(bytes: &[u8], version: Option<Version>) -> Packet<'_> {
    dec(bytes, version).expect("must decode")
}

fn malformed(e: DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_))
}

fn protocol(e: DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_))
}

/// A CONNECT body up to and including the keep alive, for flag tests.
fn connect_head(level: u8, flags: u8) -> Vec<u8> {
    vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60]
}

/// A v5 PUBLISH (QoS 0, topic "t", payload "x") with the given property block.
fn publish_v5_with(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b't'];
    put_varint(&mut body, u32::try_from(props.len()).expect("small"));
    body.extend_from_slice(props);
    body.push(b'x');
    frame(0x30, &body)
}

/// A v5 CONNECT (no will, empty client id) with the given property block.
fn connect_v5_with(props: &[u8]) -> Vec<u8> {
    let mut body = connect_head(5, 0x02);
    put_varint(&mut body, u32::try_from(props.len()).expect("small"));
    body.extend_from_slice(props);
    body.extend_from_slice(&[0, 0]);
    frame(0x10, &body)
}

// ---- Variable Byte Integers and framing -------------------------------------------------

#[test]
fn varint_boundaries_encode_and_read_back() {
    let cases: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xff, 0xff, 0x7f]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
    ];
    for &(v, bytes) in cases {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out, bytes, "{v}");
        assert_eq!(varint_len(v), bytes.len(), "{v}");
        assert_eq!(
            cursor::read_varint(bytes),
            Ok(Some((v, bytes.len()))),
            "{v}"
        );
    }
}

#[test]
fn varint_over_four_bytes_is_malformed_mqtt_1_5_5_1() {
    assert!(malformed(
        frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MAX).expect_err("must fail")
    ));
    // Known as soon as the fourth byte still has its continuation bit.
    assert!(malformed(
        frame_len(&[0x30, 0x80, 0x80, 0x80, 0x80], MAX).expect_err("must fail")
    ));
}

#[test]
fn varint_not_in_shortest_form_is_malformed_mqtt_1_5_5_1() {
    assert!(malformed(
        frame_len(&[0x30, 0x80, 0x00], MAX).expect_err("must fail")
    ));
    assert!(malformed(
        frame_len(&[0x30, 0xff, 0x80, 0x00], MAX).expect_err("must fail")
    ));
}

#[test]
fn frame_len_waits_for_the_fixed_header_only() {
    assert_eq!(frame_len(&[], MAX), Ok(None));
    assert_eq!(frame_len(&[0x30], MAX), Ok(None));
    assert_eq!(frame_len(&[0x30, 0x80], MAX), Ok(None));
    assert_eq!(frame_len(&[0x30, 0xff, 0xff, 0xff], MAX), Ok(None));
    assert_eq!(frame_len(&[0x30, 0x05, 1, 2], MAX), Ok(Some(7)));
    assert_eq!(frame_len(&[0xc0, 0x00, 0xc0, 0x00], MAX), Ok(Some(2)));
    assert_eq!(frame_len(&[0x30, 0x80, 0x01], MAX), Ok(Some(131)));
}

#[test]
fn frame_len_reports_too_large_from_the_header() {
    // 1 + 2 + 16,383 bytes announced, nothing of the body buffered yet.
    let e = frame_len(&[0x30, 0xff, 0x7f], 100).expect_err("must fail");
    assert_eq!(
        e,
        DecodeError::TooLarge {
            len: 16_386,
            max: 100
        }
    );
    assert_eq!(e.reason(), ReasonCode::PacketTooLarge);
    assert_eq!(frame_len(&[0x30, 0x62], 100), Ok(Some(100)));
    assert!(frame_len(&[0x30, 0x63], 100).is_err());
}

#[test]
fn decode_wants_exactly_one_frame() {
    assert!(malformed(
        decode(&[0xc0, 0x00, 0x00], V3).expect_err("must fail")
    ));
    assert!(malformed(decode(&[0xc0, 0x01], V3).expect_err("must fail")));
    assert!(malformed(decode(&[], V3).expect_err("must fail")));
    assert!(malformed(decode(&[0xc0], V3).expect_err("must fail")));
}

#[test]
fn decode_error_reasons_and_texts() {
    let cases = [
        (DecodeError::Malformed("x"), ReasonCode::MalformedPacket),
        (DecodeError::Protocol("x"), ReasonCode::ProtocolError),
        (
            DecodeError::TooLarge { len: 9, max: 8 },
            ReasonCode::PacketTooLarge,
        ),
        (
            DecodeError::BadVersion(3),
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (DecodeError::TopicName("x"), ReasonCode::TopicNameInvalid),
        (DecodeError::TopicAlias, ReasonCode::TopicAliasInvalid),
        (DecodeError::PayloadFormat, ReasonCode::PayloadFormatInvalid),
    ];
    for (e, reason) in cases {
        assert_eq!(e.reason(), reason);
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(
        DecodeError::TooLarge { len: 9, max: 8 }.to_string(),
        "packet of 9 bytes is over the 8 byte limit"
    );
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    assert!(protocol(err(&[0xc0, 0x00], NONE)));
    assert!(protocol(err(&[0x30, 0x03, 0, 1, b't'], NONE)));
}

#[test]
fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let connect = frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]);
    assert!(matches!(ok(&connect, NONE), Packet::Connect(_)));
    assert!(protocol(err(&connect, V3)));
    assert!(protocol(err(&connect, V5)));
}

#[test]
fn reserved_packet_type_0_is_malformed() {
    assert!(malformed(err(&[0x00, 0x00], V3)));
    assert!(malformed(err(&[0x00, 0x00], V5)));
}

#[test]
fn packets_only_a_server_sends_are_protocol_errors() {
    for bytes in [
        &[0x20, 0x02, 0x00, 0x00][..],
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        &[0xb0, 0x02, 0x00, 0x01],
        &[0xd0, 0x00],
    ] {
        assert!(protocol(err(bytes, V3)), "{bytes:02x?}");
        assert!(protocol(err(bytes, V5)), "{bytes:02x?}");
    }
}

// ---- UTF-8 strings -----------------------------------------------------------------------

#[test]
fn invalid_utf8_is_malformed_mqtt_1_5_4_1() {
    // A lone continuation byte, and U+D800 encoded (surrogates are not UTF-8).
    for topic in [&[0x80][..], &[0xed, 0xa0, 0x80]] {
        let mut body = vec![0, u8::try_from(topic.len()).expect("small")];
        body.extend_from_slice(topic);
        assert!(malformed(err(&frame(0x30, &body), V3)));
    }
    let mut connect = connect_head(4, 0x02);
    connect.extend_from_slice(&[0, 2, 0xc3, 0x28]);
    assert!(malformed(err(&frame(0x10, &connect), NONE)));
}

#[test]
fn null_character_is_malformed_mqtt_1_5_4_2() {
    assert!(malformed(err(&[0x30, 0x05, 0, 3, b'a', 0, b'b'], V3)));
    // In a user property too.
    let e = err(&publish_v5_with(&[0x26, 0, 1, 0, 0, 1, b'v']), V5);
    assert_eq!(e.reason(), ReasonCode::MalformedPacket);
}

// ---- MQTT 5 properties -------------------------------------------------------------------

#[test]
fn unknown_property_identifier_is_malformed() {
    assert!(malformed(err(&publish_v5_with(&[0x05, 0x00]), V5)));
    assert!(malformed(err(&publish_v5_with(&[0x80, 0x01, 0x00]), V5)));
}

#[test]
fn property_not_valid_for_the_packet_kind_is_malformed() {
    // Topic Alias in CONNECT, Session Expiry in PUBLISH, Receive Maximum in a PUBACK.
    assert!(malformed(err(&connect_v5_with(&[0x23, 0, 1]), NONE)));
    assert!(malformed(err(&publish_v5_with(&[0x11, 0, 0, 0, 1]), V5)));
    assert!(malformed(err(&frame(0x40, &[0, 1, 0, 3, 0x21, 0, 1]), V5)));
}

#[test]
fn repeated_single_valued_property_is_a_protocol_error() {
    assert!(protocol(err(&publish_v5_with(&[0x01, 0, 0x01, 0]), V5)));
    assert!(protocol(err(
        &connect_v5_with(&[0x21, 0, 1, 0x21, 0, 2]),
        NONE
    )));
    // User Properties repeat freely.
    let bytes = [0x40, 0x0e, 0, 1, 0, 10, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0];
    let Packet::PubAck(ack) = ok(&bytes, V5) else {
        panic!("not a PUBACK")
    };
    assert_eq!(ack.props.user_properties().count(), 2);
}

#[test]
fn property_value_ranges_mqtt_5_0_section_3() {
    // Receive Maximum 0, Maximum Packet Size 0, Request Problem / Response Information 2.
    assert!(protocol(err(&connect_v5_with(&[0x21, 0, 0]), NONE)));
    assert!(protocol(err(&connect_v5_with(&[0x27, 0, 0, 0, 0]), NONE)));
    assert!(protocol(err(&connect_v5_with(&[0x17, 2]), NONE)));
    assert!(protocol(err(&connect_v5_with(&[0x19, 2]), NONE)));
    // Payload Format Indicator 2.
    assert!(protocol(err(&publish_v5_with(&[0x01, 2]), V5)));
    let bytes = connect_v5_with(&[0x21, 0, 1, 0x17, 1, 0x19, 0]);
    let Packet::Connect(c) = ok(&bytes, NONE) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.props.receive_maximum, Some(1));
    assert_eq!(c.props.request_problem_info, Some(1));
    assert_eq!(c.props.request_response_info, Some(0));
}

#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    assert!(protocol(err(&connect_v5_with(&[0x16, 0, 1, 7]), NONE)));
    let ok_props = [0x15, 0, 1, b'M', 0x16, 0, 1, 7];
    let bytes = connect_v5_with(&ok_props);
    let Packet::Connect(c) = ok(&bytes, NONE) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.props.auth_method, Some("M"));
    assert_eq!(c.props.auth_data, Some(&[7][..]));
}

#[test]
fn property_length_past_the_packet_is_malformed() {
    assert!(malformed(err(&[0x30, 0x05, 0, 1, b't', 0x05, 0x01], V5)));
    // A property cut by its own block.
    assert!(malformed(err(&[0x30, 0x06, 0, 1, b't', 0x01, 0x02, 0], V5)));
}

#[test]
fn put_helpers_write_wire_form() {
    let mut out = Vec::new();
    put_user_property(&mut out, "k", "vv");
    put_string_property(&mut out, 0x03, "ct");
    put_binary_property(&mut out, 0x09, &[1, 2]);
    put_byte_property(&mut out, 0x01, 1);
    assert_eq!(
        out,
        [
            0x26, 0, 1, b'k', 0, 2, b'v', b'v', 0x03, 0, 2, b'c', b't', 0x09, 0, 2, 1, 2, 0x01, 1
        ]
    );
}

#[test]
fn repeated_properties_are_read_from_raw() {
    let raw = [
        0x26, 0, 1, b'a', 0, 1, b'1', 0x0b, 0x05, 0x01, 0, 0x26, 0, 0, 0, 1, b'2',
    ];
    let props = Properties {
        raw: &raw,
        ..Properties::default()
    };
    let users: Vec<_> = props.user_properties().collect();
    assert_eq!(users, [("a", "1"), ("", "2")]);
    assert_eq!(props.subscription_ids().collect::<Vec<_>>(), [5]);
    // The iterators outlive the `Properties` value they came from.
    let ids = {
        let copy = props;
        copy.subscription_ids()
    };
    assert_eq!(ids.count(), 1);
    // They stop at the first property they cannot read.
    let broken = [0x26, 0, 1, b'a', 0, 1, b'1', 0x7f, 0x26, 0, 0, 0, 0];
    let props = Properties {
        raw: &broken,
        ..Properties::default()
    };
    assert_eq!(props.user_properties().count(), 1);
}

#[test]
fn strings_over_65535_bytes_are_cut_to_stay_well_formed() {
    let long = "é".repeat(40_000); // 80,000 bytes
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: &long,
        pkid: None,
        props: Properties::default(),
        payload: b"",
    });
    let bytes = enc(&p, Version::V311);
    let Packet::Publish(back) = ok(&bytes, V3) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(back.topic.len(), 65_534);
    assert!(long.starts_with(back.topic));
}
