//! Byte-literal vectors for every packet kind, both versions, both directions (a server-only
//! packet is checked against its bytes on encode only), plus the per-packet rules.

use super::*;

// ---- CONNECT -----------------------------------------------------------------------------

/// 3.1.1 CONNECT: clean session, will (QoS 1, retained), user name and password.
pub(super) const CONNECT_V3: &[u8] = &[
    0x10, 0x1f, // CONNECT, remaining length 31
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name, level 4
    0xee, // flags: user name, password, will retain, will QoS 1, will, clean start
    0x00, 0x3c, // keep alive 60
    0x00, 0x03, b'c', b'i', b'd', // client id
    0x00, 0x03, b'w', b'/', b't', // will topic
    0x00, 0x02, b'b', b'y', // will payload
    0x00, 0x01, b'u', // user name
    0x00, 0x02, b'p', b'w', // password
];

/// 5.0 CONNECT: properties, will (QoS 2) with properties, empty client id, user, password.
pub(super) const CONNECT_V5: &[u8] = &[
    0x10, 0x3b, // CONNECT, remaining length 59
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // protocol name, level 5
    0xd6, // flags: user name, password, will QoS 2, will, clean start
    0x00, 0x1e, // keep alive 30
    0x0f, // properties (15 bytes):
    0x11, 0, 0, 0, 0x78, // session expiry 120
    0x21, 0x00, 0x0a, // receive maximum 10
    0x26, 0, 1, b'k', 0, 1, b'v', // user property k=v
    0x00, 0x00, // empty client id
    0x0e, // will properties (14 bytes):
    0x01, 0x01, // payload format: UTF-8
    0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type "text"
    0x18, 0, 0, 0, 5, // will delay 5
    0x00, 0x03, b'w', b'/', b't', // will topic
    0x00, 0x02, b'h', b'i', // will payload
    0x00, 0x01, b'u', // user name
    0x00, 0x02, b'p', b'w', // password
];

pub(super) fn connect_v3() -> Packet<'static> {
    Packet::Connect(Connect {
        version: Version::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "cid",
        will: Some(Will {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "w/t",
            payload: b"by",
            props: Properties::default(),
        }),
        username: Some("u"),
        password: Some(b"pw"),
        props: Properties::default(),
    })
}

/// The CONNECT of `CONNECT_V5`, with `props` and the will's properties given.
fn connect_v5_parts<'a>(props: Properties<'a>, will_props: Properties<'a>) -> Packet<'a> {
    Packet::Connect(Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "",
        will: Some(Will {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "w/t",
            payload: b"hi",
            props: will_props,
        }),
        username: Some("u"),
        password: Some(b"pw"),
        props,
    })
}

pub(super) fn connect_v5() -> Packet<'static> {
    connect_v5_parts(
        Properties {
            session_expiry: Some(120),
            receive_maximum: Some(10),
            user: &[("k", "v")],
            ..Properties::default()
        },
        Properties {
            payload_format: Some(1),
            content_type: Some("text"),
            will_delay: Some(5),
            ..Properties::default()
        },
    )
}

#[test]
fn connect_v3_with_will_user_name_and_password() {
    assert_eq!(enc(&connect_v3(), Version::V311), CONNECT_V3);
    assert_eq!(ok(CONNECT_V3, NONE), connect_v3());
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    assert_eq!(enc(&connect_v5(), Version::V5), CONNECT_V5);
    // Decoded, `raw` holds each whole property block.
    let expected = connect_v5_parts(
        Properties {
            session_expiry: Some(120),
            receive_maximum: Some(10),
            raw: &[
                0x11, 0, 0, 0, 0x78, 0x21, 0, 0x0a, 0x26, 0, 1, b'k', 0, 1, b'v',
            ],
            ..Properties::default()
        },
        Properties {
            payload_format: Some(1),
            content_type: Some("text"),
            will_delay: Some(5),
            raw: &[
                0x01, 1, 0x03, 0, 4, b't', b'e', b'x', b't', 0x18, 0, 0, 0, 5,
            ],
            ..Properties::default()
        },
    );
    let decoded = ok(CONNECT_V5, NONE);
    assert_eq!(decoded, expected);
    let Packet::Connect(c) = decoded else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.props.user_properties().collect::<Vec<_>>(), [("k", "v")]);
}

#[test]
fn connect_minimal_with_empty_client_id() {
    let bytes = [
        0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 0, 0, 0,
    ];
    let Packet::Connect(c) = ok(&bytes, NONE) else {
        panic!("not a CONNECT")
    };
    assert_eq!((c.client_id, c.clean_start, c.keep_alive), ("", false, 0));
    assert_eq!((c.will, c.username, c.password), (None, None, None));
}

#[test]
fn connect_other_protocol_or_level_is_bad_version_mqtt_3_1_2_2() {
    let mqisdp = [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0];
    assert_eq!(err(&frame(0x10, &mqisdp), NONE), DecodeError::BadVersion(3));
    for (name, level) in [(b"MQTT", 3), (b"MQTT", 6), (b"MQTX", 4)] {
        let mut body = vec![0, 4];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 2, 0, 60, 0, 0]);
        let e = err(&frame(0x10, &body), NONE);
        assert_eq!(e, DecodeError::BadVersion(level));
        assert_eq!(e.reason(), ReasonCode::UnsupportedProtocolVersion);
    }
}

#[test]
fn connect_reserved_flag_is_malformed_mqtt_3_1_2_3() {
    let mut body = connect_head(4, 0x03);
    body.extend_from_slice(&[0, 0]);
    assert!(malformed(err(&frame(0x10, &body), NONE)));
}

#[test]
fn connect_fixed_header_flags_are_malformed_mqtt_2_2_2_2() {
    let mut body = connect_head(4, 0x02);
    body.extend_from_slice(&[0, 0]);
    assert!(malformed(err(&frame(0x11, &body), NONE)));
}

#[test]
fn connect_will_qos_or_retain_without_will_flag_is_malformed_mqtt_3_1_2_11_and_13() {
    // 5.0 numbering; in 3.1.1 these are [MQTT-3.1.2-13] and [MQTT-3.1.2-15].
    for (level, flags) in [(4, 0x0a), (4, 0x22), (5, 0x12), (5, 0x22)] {
        let mut body = connect_head(level, flags);
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(&[0, 0]);
        assert!(
            malformed(err(&frame(0x10, &body), NONE)),
            "{level} {flags:02x}"
        );
    }
}

#[test]
fn connect_will_qos_3_is_malformed() {
    let mut body = connect_head(4, 0x1e);
    body.extend_from_slice(&[0, 0, 0, 1, b't', 0, 0]);
    assert!(malformed(err(&frame(0x10, &body), NONE)));
}

#[test]
fn connect_v3_password_without_user_name_is_malformed_mqtt_3_1_2_22() {
    let mut body = connect_head(4, 0x42);
    body.extend_from_slice(&[0, 0, 0, 1, b'p']);
    assert!(malformed(err(&frame(0x10, &body), NONE)));
    // 5.0 allows it.
    let mut body = connect_head(5, 0x42);
    body.extend_from_slice(&[0, 0, 0, 0, 1, b'p']);
    let bytes = frame(0x10, &body);
    let Packet::Connect(c) = ok(&bytes, NONE) else {
        panic!("not a CONNECT")
    };
    assert_eq!((c.username, c.password), (None, Some(&b"p"[..])));
}

#[test]
fn connect_will_topic_must_be_a_topic_name() {
    for topic in [&b"a/+"[..], b"#", b""] {
        let mut body = connect_head(4, 0x06);
        body.extend_from_slice(&[0, 0, 0, u8::try_from(topic.len()).expect("small")]);
        body.extend_from_slice(topic);
        body.extend_from_slice(&[0, 0]);
        let e = err(&frame(0x10, &body), NONE);
        assert!(matches!(e, DecodeError::TopicName(_)), "{topic:?}");
        assert_eq!(e.reason(), ReasonCode::TopicNameInvalid);
    }
}

#[test]
fn connect_will_payload_marked_utf8_is_checked() {
    let mut body = connect_head(5, 0x06);
    body.extend_from_slice(&[0, 0, 0, 2, 0x01, 0x01, 0, 1, b't', 0, 1, 0xff]);
    assert_eq!(err(&frame(0x10, &body), NONE), DecodeError::PayloadFormat);
}

#[test]
fn connect_with_trailing_bytes_is_malformed() {
    let mut bytes = CONNECT_V3.to_vec();
    bytes.push(0);
    bytes[1] += 1;
    assert!(malformed(err(&bytes, NONE)));
}

// ---- CONNACK (server to client: encode only) ---------------------------------------------

fn connack(session_present: bool, code: ReasonCode, props: Properties<'_>) -> Packet<'_> {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        props,
    })
}

#[test]
fn connack_v3_return_codes_and_session_present_mqtt_3_2_2_4() {
    let none = Properties::default();
    let cases = [
        (true, ReasonCode::Success, [0x01, 0x00]),
        (false, ReasonCode::Success, [0x00, 0x00]),
        (true, ReasonCode::UnsupportedProtocolVersion, [0x00, 0x01]),
        (false, ReasonCode::ClientIdentifierNotValid, [0x00, 0x02]),
        (false, ReasonCode::ServerBusy, [0x00, 0x03]),
        (false, ReasonCode::BadUserNameOrPassword, [0x00, 0x04]),
        (true, ReasonCode::NotAuthorized, [0x00, 0x05]),
    ];
    for (sp, code, tail) in cases {
        // Properties are never written for 3.1.1.
        let props = Properties {
            reason_string: Some("no"),
            ..none
        };
        assert_eq!(
            enc(&connack(sp, code, props), Version::V311),
            [0x20, 0x02, tail[0], tail[1]]
        );
    }
}

#[test]
fn connack_v5_with_properties() {
    let props = Properties {
        assigned_client_id: Some("auto-1"),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(10),
        maximum_qos: Some(1),
        ..Properties::default()
    };
    let bytes = [
        0x20, 0x14, 0x01, 0x00, // session present, success
        0x11, // properties (17 bytes):
        0x12, 0, 6, b'a', b'u', b't', b'o', b'-', b'1', // assigned client id
        0x21, 0x00, 0x14, // receive maximum 20
        0x22, 0x00, 0x0a, // topic alias maximum 10
        0x24, 0x01, // maximum QoS 1
    ];
    assert_eq!(
        enc(&connack(true, ReasonCode::Success, props), Version::V5),
        bytes
    );
    // A refusal clears Session Present [MQTT-3.2.2-6].
    let refused = connack(true, ReasonCode::NotAuthorized, Properties::default());
    assert_eq!(enc(&refused, Version::V5), [0x20, 0x03, 0x00, 0x87, 0x00]);
}

// ---- PUBLISH -----------------------------------------------------------------------------

fn publish<'a>(qos: QoS, pkid: Option<u16>, props: Properties<'a>) -> Publish<'a> {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "a/b",
        pkid: pkid.map(id),
        props,
        payload: b"hi",
    }
}

#[test]
fn publish_v3_qos_0_1_2() {
    let qos0 = publish(QoS::AtMostOnce, None, Properties::default());
    let qos1 = publish(QoS::AtLeastOnce, Some(10), Properties::default());
    let qos2 = Publish {
        dup: true,
        retain: true,
        ..publish(QoS::ExactlyOnce, Some(11), Properties::default())
    };
    let cases: [(Publish<'_>, &[u8]); 3] = [
        (qos0, &[0x30, 0x07, 0, 3, b'a', b'/', b'b', b'h', b'i']),
        (
            qos1,
            &[0x32, 0x09, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'],
        ),
        (
            qos2,
            &[0x3d, 0x09, 0, 3, b'a', b'/', b'b', 0, 11, b'h', b'i'],
        ),
    ];
    for (p, bytes) in cases {
        assert_eq!(enc(&Packet::Publish(p), Version::V311), bytes);
        assert_eq!(ok(bytes, V3), Packet::Publish(p));
    }
}

#[test]
fn publish_v5_without_properties() {
    let qos0 = publish(QoS::AtMostOnce, None, Properties::default());
    let qos2 = Publish {
        retain: true,
        ..publish(QoS::ExactlyOnce, Some(12), Properties::default())
    };
    let cases: [(Publish<'_>, &[u8]); 2] = [
        (qos0, &[0x30, 0x08, 0, 3, b'a', b'/', b'b', 0, b'h', b'i']),
        (
            qos2,
            &[0x35, 0x0a, 0, 3, b'a', b'/', b'b', 0, 12, 0, b'h', b'i'],
        ),
    ];
    for (p, bytes) in cases {
        assert_eq!(enc(&Packet::Publish(p), Version::V5), bytes);
        assert_eq!(ok(bytes, V5), Packet::Publish(p));
    }
}

pub(super) const PUBLISH_V5_PROPS: &[u8] = &[
    0x32, 0x23, 0, 3, b'a', b'/', b'b', 0, 10,   // QoS 1 PUBLISH "a/b", packet id 10
    0x19, // properties (25 bytes):
    0x01, 0x01, // payload format: UTF-8
    0x02, 0, 0, 0, 60, // message expiry 60
    0x08, 0, 1, b'r', // response topic "r"
    0x09, 0, 1, b'c', // correlation data "c"
    0x23, 0, 3, // topic alias 3
    0x26, 0, 1, b'k', 0, 1, b'v', // user property k=v
    b'h', b'i', // payload
];

#[test]
fn publish_v5_qos1_with_properties() {
    let scalars = Properties {
        payload_format: Some(1),
        message_expiry: Some(60),
        response_topic: Some("r"),
        correlation_data: Some(b"c"),
        topic_alias: Some(3),
        ..Properties::default()
    };
    let to_send = publish(
        QoS::AtLeastOnce,
        Some(10),
        Properties {
            user: &[("k", "v")],
            ..scalars
        },
    );
    assert_eq!(
        enc(&Packet::Publish(to_send), Version::V5),
        PUBLISH_V5_PROPS
    );
    let Packet::Publish(p) = ok(PUBLISH_V5_PROPS, V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.props.raw, &PUBLISH_V5_PROPS[10..35]);
    let raw = p.props.raw;
    assert_eq!(
        p,
        publish(QoS::AtLeastOnce, Some(10), Properties { raw, ..scalars })
    );
    assert_eq!(p.props.user_properties().collect::<Vec<_>>(), [("k", "v")]);
}

#[test]
fn publish_encodes_scalars_then_subscription_ids_then_user_then_raw() {
    let raw = [0x03, 0, 4, b'j', b's', b'o', b'n']; // content type, pre-encoded
    let p = Publish {
        topic: "t",
        payload: b"{}",
        ..publish(
            QoS::AtMostOnce,
            None,
            Properties {
                payload_format: Some(1),
                message_expiry: Some(60),
                subscription_ids_out: &[1, 200],
                user: &[("k", "v")],
                raw: &raw,
                ..Properties::default()
            },
        )
    };
    let bytes = [
        0x30, 0x20, 0, 1, b't', 0x1a, // topic "t", properties (26 bytes):
        0x01, 0x01, 0x02, 0, 0, 0, 60, // payload format, message expiry
        0x0b, 0x01, 0x0b, 0xc8, 0x01, // subscription ids 1, 200
        0x26, 0, 1, b'k', 0, 1, b'v', // user property
        0x03, 0, 4, b'j', b's', b'o', b'n', // raw
        b'{', b'}',
    ];
    assert_eq!(enc(&Packet::Publish(p), Version::V5), bytes);
    // Properties are never written for 3.1.1.
    let v3 = [0x30, 0x05, 0, 1, b't', b'{', b'}'];
    assert_eq!(enc(&Packet::Publish(p), Version::V311), v3);
    // A Subscription Identifier from a client is left to the state machine to refuse.
    let Packet::Publish(back) = ok(&bytes, V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(back.props.subscription_ids().collect::<Vec<_>>(), [1, 200]);
    assert_eq!(back.props.content_type, Some("json"));
}

#[test]
fn publish_qos3_is_malformed_mqtt_3_3_1_4() {
    let bytes = [0x36, 0x07, 0, 1, b't', 0, 1, b'h', b'i'];
    assert!(malformed(err(&bytes, V3)));
    assert!(malformed(err(&bytes, V5)));
}

#[test]
fn publish_dup_on_qos0_is_malformed_mqtt_3_3_1_2() {
    assert!(malformed(err(&[0x38, 0x03, 0, 1, b't'], V3)));
    assert!(malformed(err(&[0x38, 0x04, 0, 1, b't', 0], V5)));
}

#[test]
fn publish_topic_with_wildcards_is_invalid_mqtt_3_3_2_2() {
    for topic in [b"a/+", b"a/#"] {
        let mut body = vec![0, 3];
        body.extend_from_slice(topic);
        let e = err(&frame(0x30, &body), V3);
        assert!(matches!(e, DecodeError::TopicName(_)));
        body.push(0);
        let e = err(&frame(0x30, &body), V5);
        assert_eq!(e.reason(), ReasonCode::TopicNameInvalid);
    }
}

#[test]
fn publish_empty_topic_needs_a_topic_alias_in_v5_mqtt_4_7_3_1() {
    assert!(matches!(
        err(&[0x30, 0x03, 0, 0, b'x'], V3),
        DecodeError::TopicName(_)
    ));
    // 5.0 §3.3.2.3.4: zero length Topic Name without Topic Alias is a Protocol Error.
    assert!(protocol(err(&[0x30, 0x04, 0, 0, 0, b'x'], V5)));
    let with_alias = [0x30, 0x07, 0, 0, 3, 0x23, 0, 5, b'x'];
    let Packet::Publish(p) = ok(&with_alias, V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (p.topic, p.props.topic_alias, p.payload),
        ("", Some(5), &b"x"[..])
    );
}

#[test]
fn publish_topic_alias_0_is_invalid_mqtt_3_3_2_8() {
    let e = err(&publish_v5_with(&[0x23, 0, 0]), V5);
    assert_eq!(e, DecodeError::TopicAlias);
    assert_eq!(e.reason(), ReasonCode::TopicAliasInvalid);
}

#[test]
fn packet_identifier_0_is_a_protocol_error_mqtt_2_2_1_3() {
    assert!(protocol(err(&[0x32, 0x05, 0, 1, b't', 0, 0], V3)));
    assert!(protocol(err(&[0x40, 0x02, 0, 0], V3)));
    assert!(protocol(err(&[0x82, 0x06, 0, 0, 0, 1, b't', 0], V3)));
    assert!(protocol(err(&[0xa2, 0x06, 0, 0, 0, 0, 1, b't'], V5)));
}

#[test]
fn publish_payload_marked_utf8_is_checked() {
    let e = err(&[0x30, 0x07, 0, 1, b't', 2, 0x01, 0x01, 0xff], V5);
    assert_eq!(e.reason(), ReasonCode::PayloadFormatInvalid);
    assert!(dec(&[0x30, 0x07, 0, 1, b't', 2, 0x01, 0x00, 0xff], V5).is_ok());
    assert!(dec(&[0x30, 0x08, 0, 1, b't', 2, 0x01, 0x01, 0xc3, 0xa9], V5).is_ok());
}

#[test]
fn publish_response_topic_with_wildcards_is_a_protocol_error_mqtt_3_3_2_14() {
    assert!(protocol(err(
        &publish_v5_with(&[0x08, 0, 2, b'r', b'#']),
        V5
    )));
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ---------------------------------------------------

fn ack_packets(a: Ack<'_>) -> [(Packet<'_>, u8); 4] {
    [
        (Packet::PubAck(a), 0x40),
        (Packet::PubRec(a), 0x50),
        (Packet::PubRel(a), 0x62),
        (Packet::PubComp(a), 0x70),
    ]
}

#[test]
fn acks_v3_carry_only_the_packet_id() {
    let a = Ack {
        pkid: id(10),
        code: ReasonCode::Success,
        props: Properties::default(),
    };
    for (p, first) in ack_packets(a) {
        let bytes = [first, 0x02, 0x00, 0x0a];
        assert_eq!(enc(&p, Version::V311), bytes);
        assert_eq!(ok(&bytes, V3), p);
        // No reason code in 3.1.1, even if one is given.
        let with_code = Ack {
            code: ReasonCode::PacketIdentifierNotFound,
            ..a
        };
        let p = ack_packets(with_code)[0].0;
        assert_eq!(enc(&p, Version::V311), [0x40, 0x02, 0x00, 0x0a]);
        assert!(malformed(err(&[first, 0x03, 0x00, 0x0a, 0x00], V3)));
    }
}

#[test]
fn acks_v5_short_forms() {
    for (p, first) in ack_packets(Ack {
        pkid: id(10),
        code: ReasonCode::Success,
        props: Properties::default(),
    }) {
        // Reason and properties omitted, properties omitted, both present.
        assert_eq!(ok(&[first, 0x02, 0, 10], V5), p);
        assert_eq!(ok(&[first, 0x03, 0, 10, 0x00], V5), p);
        assert_eq!(ok(&[first, 0x04, 0, 10, 0x00, 0x00], V5), p);
        // Encode picks the shortest.
        assert_eq!(enc(&p, Version::V5), [first, 0x02, 0, 10]);
    }
    let no_match = Packet::PubAck(Ack {
        pkid: id(10),
        code: ReasonCode::NoMatchingSubscribers,
        props: Properties::default(),
    });
    assert_eq!(enc(&no_match, Version::V5), [0x40, 0x03, 0, 10, 0x10]);
    assert_eq!(ok(&[0x40, 0x03, 0, 10, 0x10], V5), no_match);
    let not_found = Packet::PubRel(Ack {
        pkid: id(10),
        code: ReasonCode::PacketIdentifierNotFound,
        props: Properties::default(),
    });
    assert_eq!(enc(&not_found, Version::V5), [0x62, 0x03, 0, 10, 0x92]);
    assert_eq!(ok(&[0x62, 0x03, 0, 10, 0x92], V5), not_found);
}

#[test]
fn ack_v5_with_reason_string() {
    let bytes = [
        0x40, 0x0b, 0, 10, 0x87, 0x07, 0x1f, 0, 4, b'n', b'o', b'p', b'e',
    ];
    let props = Properties {
        reason_string: Some("nope"),
        ..Properties::default()
    };
    let a = Ack {
        pkid: id(10),
        code: ReasonCode::NotAuthorized,
        props,
    };
    assert_eq!(enc(&Packet::PubAck(a), Version::V5), bytes);
    let raw = &bytes[6..];
    assert_eq!(
        ok(&bytes, V5),
        Packet::PubAck(Ack {
            props: Properties { raw, ..props },
            ..a
        })
    );
}

#[test]
fn ack_fixed_header_flags_mqtt_2_2_2_2_and_mqtt_3_6_1_1() {
    assert!(malformed(err(&[0x60, 0x02, 0, 1], V3)));
    assert!(malformed(err(&[0x60, 0x02, 0, 1], V5)));
    for first in [0x42, 0x51, 0x72] {
        assert!(malformed(err(&[first, 0x02, 0, 1], V5)));
    }
}

#[test]
fn ack_reason_code_not_defined_for_the_kind_is_malformed() {
    assert!(malformed(err(&[0x40, 0x03, 0, 1, 0x92], V5)));
    assert!(malformed(err(&[0x50, 0x03, 0, 1, 0x04], V5)));
    assert!(malformed(err(&[0x62, 0x03, 0, 1, 0x10], V5)));
    assert!(malformed(err(&[0x70, 0x03, 0, 1, 0x80], V5)));
}

// ---- SUBSCRIBE / SUBACK ------------------------------------------------------------------

pub(super) const SUBSCRIBE_V3: &[u8] = &[
    0x82, 0x12, 0, 1, // SUBSCRIBE, packet id 1
    0, 3, b'a', b'/', b'b', 0x00, // a/b QoS 0
    0, 3, b'c', b'/', b'#', 0x01, // c/# QoS 1
    0, 1, b'+', 0x02, // + QoS 2
];

pub(super) const SUBSCRIBE_V5: &[u8] = &[
    0x82, 0x25, 0, 2, // SUBSCRIBE, packet id 2
    0x09, 0x0b, 42, 0x26, 0, 1, b'k', 0, 1, b'v', // subscription id 42, user property
    0, 3, b'a', b'/', b'b', 0x2e, // QoS 2, no local, retain as published, retain handling 2
    0, 3, b'c', b'/', b'#', 0x11, // QoS 1, retain handling 1
    0, 10, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', 0x00,
];

fn opts(qos: QoS, no_local: bool, rap: bool, rh: u8) -> SubOptions {
    SubOptions {
        qos,
        no_local,
        retain_as_published: rap,
        retain_handling: rh,
    }
}

#[test]
fn subscribe_v3_with_several_filters() {
    let sub = Subscribe {
        pkid: id(1),
        props: Properties::default(),
        payload: &SUBSCRIBE_V3[4..],
        version: Version::V311,
    };
    assert_eq!(enc(&Packet::Subscribe(sub), Version::V311), SUBSCRIBE_V3);
    assert_eq!(ok(SUBSCRIBE_V3, V3), Packet::Subscribe(sub));
    let filters: Vec<_> = sub.filters().collect();
    assert_eq!(
        filters,
        [
            ("a/b", opts(QoS::AtMostOnce, false, false, 0)),
            ("c/#", opts(QoS::AtLeastOnce, false, false, 0)),
            ("+", opts(QoS::ExactlyOnce, false, false, 0)),
        ]
    );
}

#[test]
fn subscribe_v5_with_options_and_properties() {
    let to_send = Subscribe {
        pkid: id(2),
        props: Properties {
            subscription_ids_out: &[42],
            user: &[("k", "v")],
            ..Properties::default()
        },
        payload: &SUBSCRIBE_V5[14..],
        version: Version::V5,
    };
    assert_eq!(enc(&Packet::Subscribe(to_send), Version::V5), SUBSCRIBE_V5);
    let Packet::Subscribe(sub) = ok(SUBSCRIBE_V5, V5) else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(
        (sub.pkid, sub.version, sub.payload),
        (id(2), Version::V5, &SUBSCRIBE_V5[14..])
    );
    assert_eq!(sub.props.subscription_ids().collect::<Vec<_>>(), [42]);
    assert_eq!(
        sub.props.user_properties().collect::<Vec<_>>(),
        [("k", "v")]
    );
    let filters: Vec<_> = sub.filters().collect();
    assert_eq!(
        filters,
        [
            ("a/b", opts(QoS::ExactlyOnce, true, true, 2)),
            ("c/#", opts(QoS::AtLeastOnce, false, false, 1)),
            ("$share/g/x", opts(QoS::AtMostOnce, false, false, 0)),
        ]
    );
}

#[test]
fn subscribe_fixed_header_flags_must_be_0010_mqtt_3_8_1_1() {
    let mut bytes = SUBSCRIBE_V3.to_vec();
    bytes[0] = 0x80;
    assert!(malformed(err(&bytes, V3)));
}

#[test]
fn subscribe_without_filters_is_a_protocol_error_mqtt_3_8_3_3() {
    // 3.1.1 numbering; [MQTT-3.8.3-2] in 5.0.
    assert!(protocol(err(&[0x82, 0x02, 0, 1], V3)));
    assert!(protocol(err(&[0x82, 0x03, 0, 1, 0], V5)));
}

#[test]
fn subscribe_v3_reserved_option_bits_and_qos3_are_malformed_mqtt_3_8_3_4() {
    for o in [0x04, 0x40, 0x03] {
        assert!(
            malformed(err(&[0x82, 0x06, 0, 1, 0, 1, b't', o], V3)),
            "{o:02x}"
        );
    }
}

#[test]
fn subscribe_v5_option_rules_mqtt_3_8_3_4_and_5() {
    let entry = |filter: &[u8], o: u8| {
        let mut body = vec![0, 1, 0, 0, u8::try_from(filter.len()).expect("small")];
        body.extend_from_slice(filter);
        body.push(o);
        frame(0x82, &body)
    };
    // Reserved bits 6 and 7 [MQTT-3.8.3-5].
    assert!(malformed(err(&entry(b"t", 0x40), V5)));
    assert!(malformed(err(&entry(b"t", 0x80), V5)));
    // Maximum QoS 3 and Retain Handling 3 (5.0 §3.8.3.1).
    assert!(protocol(err(&entry(b"t", 0x03), V5)));
    assert!(protocol(err(&entry(b"t", 0x30), V5)));
    // No Local on a shared subscription [MQTT-3.8.3-4].
    assert!(protocol(err(&entry(b"$share/g/t", 0x04), V5)));
    assert!(dec(&entry(b"$share/g/t", 0x00), V5).is_ok());
}

#[test]
fn empty_topic_filter_is_malformed_mqtt_4_7_3_1() {
    assert!(malformed(err(&[0x82, 0x05, 0, 1, 0, 0, 0], V3)));
    assert!(malformed(err(&[0xa2, 0x04, 0, 1, 0, 0], V3)));
}

#[test]
fn subscribe_subscription_identifier_rules() {
    // 0 is a Protocol Error; so is a second one in a SUBSCRIBE.
    let sub = |props: &[u8]| {
        let mut body = vec![0, 1, u8::try_from(props.len()).expect("small")];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b't', 0]);
        frame(0x82, &body)
    };
    assert!(protocol(err(&sub(&[0x0b, 0]), V5)));
    assert!(protocol(err(&sub(&[0x0b, 1, 0x0b, 2]), V5)));
    assert!(dec(&sub(&[0x0b, 0xff, 0xff, 0xff, 0x7f]), V5).is_ok());
}

#[test]
fn suback_v3_maps_reason_codes() {
    let codes = [
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
        ReasonCode::NotAuthorized,
        ReasonCode::TopicFilterInvalid,
    ];
    let ack = Packet::SubAck(SubAck {
        pkid: id(1),
        props: Properties {
            reason_string: Some("ok"),
            ..Properties::default()
        },
        codes: &codes,
    });
    let v3 = [0x90, 0x07, 0, 1, 0x00, 0x01, 0x02, 0x80, 0x80];
    assert_eq!(enc(&ack, Version::V311), v3);
    let v5 = [
        0x90, 0x0d, 0, 1, 0x05, 0x1f, 0, 2, b'o', b'k', 0x00, 0x01, 0x02, 0x87, 0x8f,
    ];
    assert_eq!(enc(&ack, Version::V5), v5);
}

// ---- UNSUBSCRIBE / UNSUBACK --------------------------------------------------------------

pub(super) const UNSUBSCRIBE_V3: &[u8] = &[0xa2, 0x0a, 0, 3, 0, 3, b'a', b'/', b'b', 0, 1, b'+'];

pub(super) const UNSUBSCRIBE_V5: &[u8] = &[
    0xa2, 0x12, 0, 3, // UNSUBSCRIBE, packet id 3
    0x07, 0x26, 0, 1, b'k', 0, 1, b'v', // user property
    0, 3, b'a', b'/', b'b', 0, 1, b'+',
];

#[test]
fn unsubscribe_v3() {
    let unsub = Unsubscribe {
        pkid: id(3),
        props: Properties::default(),
        payload: &UNSUBSCRIBE_V3[4..],
    };
    assert_eq!(
        enc(&Packet::Unsubscribe(unsub), Version::V311),
        UNSUBSCRIBE_V3
    );
    assert_eq!(ok(UNSUBSCRIBE_V3, V3), Packet::Unsubscribe(unsub));
    assert_eq!(unsub.filters().collect::<Vec<_>>(), ["a/b", "+"]);
}

#[test]
fn unsubscribe_v5_with_user_property() {
    let to_send = Unsubscribe {
        pkid: id(3),
        props: Properties {
            user: &[("k", "v")],
            ..Properties::default()
        },
        payload: &UNSUBSCRIBE_V5[12..],
    };
    assert_eq!(
        enc(&Packet::Unsubscribe(to_send), Version::V5),
        UNSUBSCRIBE_V5
    );
    let Packet::Unsubscribe(u) = ok(UNSUBSCRIBE_V5, V5) else {
        panic!("not an UNSUBSCRIBE")
    };
    assert_eq!(u.filters().collect::<Vec<_>>(), ["a/b", "+"]);
    assert_eq!(u.props.user_properties().collect::<Vec<_>>(), [("k", "v")]);
}

#[test]
fn unsubscribe_without_filters_is_a_protocol_error_mqtt_3_10_3_2() {
    assert!(protocol(err(&[0xa2, 0x02, 0, 1], V3)));
    assert!(protocol(err(&[0xa2, 0x03, 0, 1, 0], V5)));
}

#[test]
fn unsubscribe_fixed_header_flags_must_be_0010_mqtt_3_10_1_1() {
    let mut bytes = UNSUBSCRIBE_V3.to_vec();
    bytes[0] = 0xa0;
    assert!(malformed(err(&bytes, V3)));
}

#[test]
fn unsuback_v3_and_v5() {
    let codes = [ReasonCode::Success, ReasonCode::NoSubscriptionExisted];
    let ack = Packet::UnsubAck(UnsubAck {
        pkid: id(3),
        props: Properties::default(),
        codes: &codes,
    });
    assert_eq!(enc(&ack, Version::V311), [0xb0, 0x02, 0, 3]);
    assert_eq!(enc(&ack, Version::V5), [0xb0, 0x05, 0, 3, 0x00, 0x00, 0x11]);
}

// ---- PINGREQ / PINGRESP ------------------------------------------------------------------

#[test]
fn pingreq_and_pingresp() {
    for v in [Version::V311, Version::V5] {
        assert_eq!(ok(&[0xc0, 0x00], Some(v)), Packet::PingReq);
        assert_eq!(enc(&Packet::PingReq, v), [0xc0, 0x00]);
        assert_eq!(enc(&Packet::PingResp, v), [0xd0, 0x00]);
        assert!(malformed(err(&[0xc0, 0x01, 0x00], Some(v))));
        assert!(malformed(err(&[0xc1, 0x00], Some(v))));
    }
}

// ---- DISCONNECT --------------------------------------------------------------------------

#[test]
fn disconnect_v3_has_no_body() {
    let d = Packet::Disconnect(Disconnect {
        code: ReasonCode::Success,
        props: Properties::default(),
    });
    assert_eq!(ok(&[0xe0, 0x00], V3), d);
    assert_eq!(enc(&d, Version::V311), [0xe0, 0x00]);
    let with_reason = Packet::Disconnect(Disconnect {
        code: ReasonCode::ServerShuttingDown,
        props: Properties::default(),
    });
    assert_eq!(enc(&with_reason, Version::V311), [0xe0, 0x00]);
    assert!(malformed(err(&[0xe0, 0x01, 0x00], V3)));
    assert!(malformed(err(&[0xe2, 0x00], V3)));
}

#[test]
fn disconnect_v5_with_reason_and_reason_string() {
    let bytes = [0xe0, 0x08, 0x82, 0x06, 0x1f, 0, 3, b'b', b'a', b'd'];
    let props = Properties {
        reason_string: Some("bad"),
        ..Properties::default()
    };
    let d = Disconnect {
        code: ReasonCode::ProtocolError,
        props,
    };
    assert_eq!(enc(&Packet::Disconnect(d), Version::V5), bytes);
    let raw = &bytes[4..];
    let decoded = Disconnect {
        props: Properties { raw, ..props },
        ..d
    };
    assert_eq!(ok(&bytes, V5), Packet::Disconnect(decoded));
}

#[test]
fn disconnect_v5_short_forms() {
    let normal = Packet::Disconnect(Disconnect {
        code: ReasonCode::Success,
        props: Properties::default(),
    });
    assert_eq!(ok(&[0xe0, 0x00], V5), normal);
    assert_eq!(ok(&[0xe0, 0x01, 0x00], V5), normal);
    assert_eq!(enc(&normal, Version::V5), [0xe0, 0x00]);
    let with_will = Packet::Disconnect(Disconnect {
        code: ReasonCode::DisconnectWithWill,
        props: Properties::default(),
    });
    assert_eq!(ok(&[0xe0, 0x01, 0x04], V5), with_will);
    assert_eq!(enc(&with_will, Version::V5), [0xe0, 0x01, 0x04]);
    // Session expiry on DISCONNECT is a DISCONNECT property.
    let expiry = [0xe0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9];
    let Packet::Disconnect(d) = ok(&expiry, V5) else {
        panic!("not a DISCONNECT")
    };
    assert_eq!(d.props.session_expiry, Some(9));
    // 0x01 is not a DISCONNECT reason code.
    assert!(malformed(err(&[0xe0, 0x01, 0x01], V5)));
}

// ---- AUTH --------------------------------------------------------------------------------

#[test]
fn auth_v5() {
    let bytes = [
        0xf0, 0x0f, 0x18, 0x0d, // continue authentication, properties (13 bytes):
        0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', // method
        0x16, 0, 2, 1, 2, // data
    ];
    let props = Properties {
        auth_method: Some("SCRAM"),
        auth_data: Some(&[1, 2]),
        ..Properties::default()
    };
    let a = Auth {
        code: ReasonCode::ContinueAuthentication,
        props,
    };
    assert_eq!(enc(&Packet::Auth(a), Version::V5), bytes);
    let raw = &bytes[4..];
    let decoded = Auth {
        props: Properties { raw, ..props },
        ..a
    };
    assert_eq!(ok(&bytes, V5), Packet::Auth(decoded));
    // Short form: Success without properties.
    let success = Packet::Auth(Auth {
        code: ReasonCode::Success,
        props: Properties::default(),
    });
    assert_eq!(ok(&[0xf0, 0x00], V5), success);
    assert_eq!(enc(&success, Version::V5), [0xf0, 0x00]);
    // A non-Success code keeps its (empty) property length.
    let reauth = Packet::Auth(Auth {
        code: ReasonCode::ReAuthenticate,
        props: Properties::default(),
    });
    assert_eq!(enc(&reauth, Version::V5), [0xf0, 0x02, 0x19, 0x00]);
    assert_eq!(ok(&[0xf0, 0x02, 0x19, 0x00], V5), reauth);
    assert!(malformed(err(&[0xf0, 0x02, 0x87, 0x00], V5)));
}

#[test]
fn auth_does_not_exist_in_v3() {
    assert!(protocol(err(&[0xf0, 0x00], V3)));
    let a = Packet::Auth(Auth {
        code: ReasonCode::Success,
        props: Properties::default(),
    });
    let mut out = Vec::new();
    assert_eq!(encode(&a, Version::V311, &mut out), 0);
    assert!(out.is_empty());
    assert_eq!(encoded_len(&a, Version::V311), 0);
}
