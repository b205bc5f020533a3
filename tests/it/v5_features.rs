//! MQTT 5 features: Receive Maximum both ways, topic aliases both ways, Server Keep Alive,
//! Maximum Packet Size, message expiry, message properties passed through, Subscription
//! Identifiers, Request Problem Information, AUTH.

use std::time::Duration;

use crate::common::*;

#[test]
fn client_receive_maximum_limits_unacknowledged_deliveries_mqtt_3_3_4_9() {
    let b = start("");
    let (mut s, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("rm").props(P::new().u16(prop::RECEIVE_MAXIMUM, 2)),
    );
    s.sub("rm/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    for i in 1..=5 {
        p.pub1("rm/t", format!("{i}").as_bytes());
    }
    let m1 = s.recv_publish();
    let m2 = s.recv_publish();
    assert_eq!(
        (m1.payload.as_slice(), m2.payload.as_slice()),
        (&b"1"[..], &b"2"[..])
    );
    // The other three wait in the session queue, not on the wire.
    b.wait_value("queued_messages", |n| n == 3);
    s.expect_nothing(Duration::from_millis(100));
    s.send(&puback(m1.pkid));
    let m3 = s.recv_publish();
    assert_eq!(m3.payload, b"3");
    b.wait_value("queued_messages", |n| n == 2);
    s.expect_nothing(Duration::from_millis(50));
    s.send(&puback(m2.pkid));
    s.send(&puback(m3.pkid));
    let rest: Vec<Vec<u8>> = (0..2).map(|_| s.recv_publish_ack().payload).collect();
    assert_eq!(rest, [b"4", b"5"]);
}

#[test]
fn broker_receive_maximum_exceeded_gets_0x93_mqtt_3_3_4_7() {
    let b = start("session: { max_inflight_messages: 2 }");
    let (mut c, ack) = Raw::connect_ok(b.v5, &Connect::v5("rmx"));
    assert_eq!(ack.props.int(prop::RECEIVE_MAXIMUM), Some(2));
    for id in 1..=2 {
        c.send(&Pub::new("rmx/t", b"x").qos(2, id).bytes(true));
        assert_eq!(c.expect(kind::PUBREC).ack(), (id, 0x10));
    }
    // Releasing one makes room.
    c.send(&pubrel(1));
    assert_eq!(c.expect(kind::PUBCOMP).ack(), (1, 0));
    c.send(&Pub::new("rmx/t", b"x").qos(2, 3).bytes(true));
    assert_eq!(c.expect(kind::PUBREC).ack(), (3, 0x10));
    // Ids 2 and 3 unreleased: a third is one too many.
    c.send(&Pub::new("rmx/t", b"x").qos(2, 4).bytes(true));
    let (code, _) = c.expect_disconnect();
    assert_eq!(code, 0x93, "Receive Maximum exceeded");
    assert_eq!(b.closed("receive_maximum_exceeded"), 1);
}

#[test]
fn topic_alias_inbound_set_then_used() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "tas");
    s.sub("ta/#", 0);
    let (mut p, ack) = Raw::connect_ok(b.v5, &Connect::v5("tap"));
    assert_eq!(ack.props.int(prop::TOPIC_ALIAS_MAXIMUM), Some(10));
    // 5.0 §3.3.2.3.4: a topic with an alias sets the mapping, an empty topic uses it.
    let alias = |n| P::new().u16(prop::TOPIC_ALIAS, n);
    p.send(
        &Pub::new("ta/long/topic/name", b"1")
            .props(alias(3))
            .bytes(true),
    );
    p.send(&Pub::new("", b"2").props(alias(3)).bytes(true));
    // Re-mapped to another topic.
    p.send(&Pub::new("ta/other", b"3").props(alias(3)).bytes(true));
    p.send(&Pub::new("", b"4").props(alias(3)).bytes(true));
    let got: Vec<(String, Vec<u8>)> = (0..4)
        .map(|_| {
            let m = s.recv_publish();
            assert!(
                !m.props.has(prop::TOPIC_ALIAS),
                "no alias towards a client without any"
            );
            (m.topic, m.payload)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ta/long/topic/name".into(), b"1".to_vec()),
            ("ta/long/topic/name".into(), b"2".to_vec()),
            ("ta/other".into(), b"3".to_vec()),
            ("ta/other".into(), b"4".to_vec()),
        ]
    );
}

#[test]
fn topic_alias_0_or_above_the_maximum_gets_0x94_mqtt_3_3_2_8_and_3_3_2_9() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "echo");
    for bad in [0u16, 11] {
        let mut c = Raw::v5(b.v5, &format!("alias{bad}"));
        c.send(
            &Pub::new("ta/x", b"x")
                .props(P::new().u16(prop::TOPIC_ALIAS, bad))
                .bytes(true),
        );
        let (code, _) = c.expect_disconnect();
        assert_eq!(code, 0x94, "Topic Alias invalid for alias {bad}");
        echo.roundtrip();
    }
    assert_eq!(b.closed("topic_alias_invalid"), 2);
    // An alias never set: Protocol Error (5.0 §3.3.2.3.4).
    let mut c = Raw::v5(b.v5, "unset");
    c.send(
        &Pub::new("", b"x")
            .props(P::new().u16(prop::TOPIC_ALIAS, 2))
            .bytes(true),
    );
    assert_eq!(c.expect_disconnect().0, 0x82);
}

#[test]
fn topic_alias_outbound_second_message_uses_the_alias_mqtt_3_3_2_11() {
    let b = start("");
    let (mut s, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("tao").props(P::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 5)),
    );
    s.sub("out/#", 0);
    let mut p = Raw::v5(b.v5, "p");
    p.pub0("out/a", b"1");
    p.pub0("out/a", b"2");
    p.pub0("out/b", b"3");
    p.pub0("out/b", b"4");
    let m1 = s.recv_publish();
    let a = m1
        .props
        .int(prop::TOPIC_ALIAS)
        .expect("alias set with the topic") as u16;
    assert!(
        (1..=5).contains(&a),
        "within the client's maximum [MQTT-3.3.2-9]"
    );
    assert_eq!(m1.topic, "out/a");
    let m2 = s.recv_publish();
    assert_eq!((m2.topic.as_str(), m2.payload.as_slice()), ("", &b"2"[..]));
    assert_eq!(m2.props.int(prop::TOPIC_ALIAS), Some(a.into()));
    let m3 = s.recv_publish();
    let b3 = m3.props.int(prop::TOPIC_ALIAS).expect("second alias");
    assert_ne!(b3, u32::from(a));
    assert_eq!(m3.topic, "out/b");
    let m4 = s.recv_publish();
    assert_eq!(
        (m4.topic.as_str(), m4.props.int(prop::TOPIC_ALIAS)),
        ("", Some(b3))
    );
}

#[test]
fn topic_alias_outbound_with_rumqttc_v5() {
    let b = start("");
    let mut o = V5::options(b.v5, "rtao");
    o.set_topic_alias_max(Some(5));
    let (s, _) = V5::connect(o);
    s.subscribe("ro/#", Q5::AtMostOnce);
    let p = V5::new(b.v5, "rp");
    p.c.publish("ro/t", Q5::AtMostOnce, false, "1").unwrap();
    p.c.publish("ro/t", Q5::AtMostOnce, false, "2").unwrap();
    let m1 = s.recv_publish();
    let m2 = s.recv_publish();
    assert_eq!(&m1.topic[..], b"ro/t");
    let alias = m1.properties.as_ref().and_then(|p| p.topic_alias);
    assert!(alias.is_some());
    // rumqttc resolves the alias it was sent back to the topic.
    assert_eq!((&m2.topic[..], &m2.payload[..]), (&b"ro/t"[..], &b"2"[..]));
    assert_eq!(m2.properties.as_ref().and_then(|p| p.topic_alias), alias);
}

#[test]
fn server_keep_alive_caps_the_client_keep_alive_mqtt_3_2_2_21() {
    let b = start("broker: { max_keep_alive: 30 }");
    let (_c, ack) = Raw::connect_ok(b.v5, &Connect::v5("ka60").keep_alive(60));
    assert_eq!(ack.props.int(prop::SERVER_KEEP_ALIVE), Some(30));
    let (_c, ack) = Raw::connect_ok(b.v5, &Connect::v5("ka0").keep_alive(0));
    assert_eq!(
        ack.props.int(prop::SERVER_KEEP_ALIVE),
        Some(30),
        "0 (none) is capped too"
    );
    let (_c, ack) = Raw::connect_ok(b.v5, &Connect::v5("ka10").keep_alive(10));
    assert_eq!(
        ack.props.int(prop::SERVER_KEEP_ALIVE),
        None,
        "within the cap: not sent"
    );
}

#[test]
fn server_keep_alive_is_enforced() {
    let b = start("broker: { max_keep_alive: 1 }");
    let (mut c, ack) = Raw::connect_ok(b.v5, &Connect::v5("ska").keep_alive(0));
    assert_eq!(ack.props.int(prop::SERVER_KEEP_ALIVE), Some(1));
    let (code, _) = c.expect_disconnect();
    assert_eq!(code, 0x8D);
}

#[test]
fn client_maximum_packet_size_drops_larger_messages_mqtt_3_1_2_24_and_25() {
    let b = start("");
    let (mut s, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("mps").props(P::new().u32(prop::MAXIMUM_PACKET_SIZE, 100)),
    );
    s.sub("mps/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    p.pub1("mps/t", &[b'x'; 500]);
    p.pub1("mps/t", &[b'y'; 20]);
    let m = s.recv_publish_ack();
    assert_eq!(
        m.payload,
        vec![b'y'; 20],
        "the 500-byte message was not sent"
    );
    assert_eq!(b.dropped("client_max_packet_size"), 1);
    // Exactly at the limit is sent: 100 bytes of frame.
    let overhead = Pub::new("mps/t", b"").qos(1, 1).bytes(true).len();
    let payload = vec![b'z'; 100 - overhead];
    assert_eq!(Pub::new("mps/t", &payload).qos(1, 1).bytes(true).len(), 100);
    p.pub1("mps/t", &payload);
    assert_eq!(s.recv_publish_ack().payload, payload);
    p.pub1("mps/t", &[b'z'; 101]);
    p.pub1("mps/t", b"end");
    assert_eq!(s.recv_publish_ack().payload, b"end");
    assert_eq!(b.dropped("client_max_packet_size"), 2);
}

#[test]
fn message_expiry_offline_expired_dropped_and_remaining_decremented_mqtt_3_3_2_5_and_6() {
    let b = start("");
    let c = Connect::v5("mx")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    s.sub("mx/#", 1);
    // Live delivery keeps the interval (rounded up, never more than published).
    let mut p = Raw::v5(b.v5, "p");
    let expiring = |secs| P::new().u32(prop::MESSAGE_EXPIRY, secs);
    p.pub1_with(Pub::new("mx/live", b"live").props(expiring(30)));
    let m = s.recv_publish_ack();
    assert!(matches!(m.props.int(prop::MESSAGE_EXPIRY), Some(29..=30)));
    s.disconnect();

    p.pub1_with(Pub::new("mx/short", b"short").props(expiring(1)));
    p.pub1_with(Pub::new("mx/long", b"long").props(expiring(10)));
    p.pub1("mx/none", b"none");
    b.wait_value("queued_messages", |n| n == 3);
    std::thread::sleep(Duration::from_millis(1100)); // let the 1 s expiry pass
    let (mut s, ack) = Raw::connect_ok(b.v5, &c);
    assert!(ack.session_present);
    let m = s.recv_publish_ack();
    assert_eq!(
        m.payload, b"long",
        "the expired message is not delivered [MQTT-3.3.2-5]"
    );
    let left = m.props.int(prop::MESSAGE_EXPIRY).expect("expiry sent on");
    assert!(
        (1..=9).contains(&left),
        "decremented by the time queued [MQTT-3.3.2-6]: {left}"
    );
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, b"none");
    assert!(!m.props.has(prop::MESSAGE_EXPIRY));
    assert_eq!(b.dropped("expired"), 1);
}

#[test]
fn message_properties_pass_through_to_a_v5_subscriber_mqtt_3_3_2_4_15_16_17_18_20() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "s");
    s.sub("props/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    let props = P::new()
        .byte(prop::PAYLOAD_FORMAT, 1)
        .str(prop::CONTENT_TYPE, "application/json")
        .str(prop::RESPONSE_TOPIC, "props/reply")
        .bin(prop::CORRELATION_DATA, &[0, 1, 2, 0xFF])
        .pair("a", "1")
        .pair("b", "2")
        .pair("a", "3");
    p.pub1_with(Pub::new("props/t", br#"{"v":1}"#).props(props));
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, br#"{"v":1}"#);
    assert_eq!(m.props.int(prop::PAYLOAD_FORMAT), Some(1));
    assert_eq!(m.props.str(prop::CONTENT_TYPE), Some("application/json"));
    assert_eq!(m.props.str(prop::RESPONSE_TOPIC), Some("props/reply"));
    assert_eq!(
        m.props.bin(prop::CORRELATION_DATA),
        Some(&[0, 1, 2, 0xFF][..])
    );
    // User properties in order, repeats kept [MQTT-3.3.2-17/18].
    assert_eq!(
        m.props.pairs(),
        vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "3".to_string())
        ]
    );
    // A 3.1.1 subscriber gets the same message without properties.
    let mut s3 = Raw::v3(b.v3, "s3");
    s3.sub("props/#", 0);
    p.pub1_with(Pub::new("props/t", b"v3").props(P::new().pair("x", "y")));
    assert_eq!(s.recv_publish_ack().payload, b"v3");
    assert_eq!(s3.recv_publish().payload, b"v3");
}

#[test]
fn message_properties_with_rumqttc_v5() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let b = start("");
    let s = V5::new(b.v5, "rs");
    s.subscribe("rprops/#", Q5::AtLeastOnce);
    let p = V5::new(b.v5, "rp");
    let props = PublishProperties {
        content_type: Some("text/plain".into()),
        response_topic: Some("rprops/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    p.c.publish_with_properties("rprops/t", Q5::AtLeastOnce, false, "body", props)
        .unwrap();
    let m = s.recv_publish();
    let got = m.properties.expect("properties");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("rprops/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
}

#[test]
fn subscription_identifiers_are_attached_mqtt_3_3_4_3() {
    let b = start("");
    let (_, ack) = Raw::connect_ok(b.v5, &Connect::v5("probe"));
    assert_eq!(ack.props.int(prop::SUB_ID_AVAILABLE), Some(1));
    let mut s = Raw::v5(b.v5, "sid");
    s.subscribe_opts("sid/a", 1, &P::new().var(prop::SUBSCRIPTION_ID, 7));
    s.subscribe_opts(
        "sid/b",
        1,
        &P::new().var(prop::SUBSCRIPTION_ID, 268_435_455),
    );
    s.sub("sid/c", 1);
    let mut p = Raw::v5(b.v5, "p");
    for t in ["sid/a", "sid/b", "sid/c"] {
        p.pub1(t, t.as_bytes());
    }
    assert_eq!(
        s.recv_publish_ack().props.ints(prop::SUBSCRIPTION_ID),
        vec![7]
    );
    assert_eq!(
        s.recv_publish_ack().props.ints(prop::SUBSCRIPTION_ID),
        vec![268_435_455]
    );
    assert_eq!(
        s.recv_publish_ack().props.ints(prop::SUBSCRIPTION_ID),
        Vec::<u32>::new()
    );
    // Retained messages carry the identifier too.
    p.pub1_with(Pub::new("sid/r", b"r").retain());
    s.subscribe_opts("sid/r", 0, &P::new().var(prop::SUBSCRIPTION_ID, 9));
    assert_eq!(s.recv_publish().props.ints(prop::SUBSCRIPTION_ID), vec![9]);
}

#[test]
fn request_problem_information_0_means_no_reason_string_and_auth_gets_0x82_mqtt_3_1_2_29() {
    let b = start("");
    // An AUTH packet without an authentication method in CONNECT: Protocol Error.
    let auth = [0xF0, 0x00];
    let mut talkative = Raw::v5(b.v5, "rpi1");
    talkative.send(&auth);
    let (code, props) = talkative.expect_disconnect();
    assert_eq!(code, 0x82);
    assert!(
        props.str(prop::REASON_STRING).is_some(),
        "reason string by default"
    );
    let (mut quiet, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("rpi0").props(P::new().byte(prop::REQUEST_PROBLEM_INFO, 0)),
    );
    quiet.send(&auth);
    // [MQTT-3.1.2-29] allows a Reason String on DISCONNECT even then; the broker's choice
    // is to leave it out when the client asked for no problem information.
    let (code, props) = quiet.expect_disconnect();
    assert_eq!(code, 0x82);
    assert!(
        !props.has(prop::REASON_STRING),
        "[MQTT-3.1.2-29]: {props:?}"
    );
    assert_eq!(b.closed("protocol_error"), 2);
}

#[test]
fn a_message_too_large_for_the_client_does_not_use_up_a_topic_alias_mqtt_3_1_2_25() {
    // The dropped message must leave no trace [MQTT-3.1.2-25]: had it set up a topic alias
    // the client never saw, the next message would use that alias with an empty topic.
    let b = start("");
    let (mut s, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("alias-mps").props(
            P::new()
                .u16(prop::TOPIC_ALIAS_MAXIMUM, 5)
                .u32(prop::MAXIMUM_PACKET_SIZE, 100),
        ),
    );
    s.sub("am/#", 0);
    let mut p = Raw::v5(b.v5, "p");
    p.pub0("am/t", &[b'x'; 500]);
    p.pub0("am/t", b"small");
    p.pub0("am/t", b"again");
    let m = s.recv_publish();
    assert_eq!(m.payload, b"small");
    assert_eq!(
        m.topic, "am/t",
        "the first message the client sees names its topic"
    );
    let alias = m.props.int(prop::TOPIC_ALIAS).expect("alias set up now");
    let m = s.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.props.int(prop::TOPIC_ALIAS)),
        ("", Some(alias))
    );
    assert_eq!(b.dropped("client_max_packet_size"), 1);
}

#[test]
fn redelivery_respects_a_smaller_maximum_packet_size_after_reconnect_mqtt_3_1_2_24() {
    let b = start("");
    let connect = |max: u32| {
        Connect::v5("shrink").clean(false).props(
            P::new()
                .u32(prop::SESSION_EXPIRY, 60)
                .u32(prop::MAXIMUM_PACKET_SIZE, max),
        )
    };
    let (mut s, _) = Raw::connect_ok(b.v5, &connect(10_000));
    s.sub("shrink/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    p.pub1("shrink/t", &[b'x'; 500]);
    let big = s.recv_publish(); // not acknowledged
    assert_eq!(big.payload.len(), 500);
    s.drop_connection();
    b.wait_value("sessions_connected", |n| n == 1);
    // Back with a 100-byte limit: the unacknowledged 500-byte message cannot be resent.
    let (mut s, ack) = Raw::connect_ok(b.v5, &connect(100));
    assert!(ack.session_present);
    p.pub1("shrink/t", b"small");
    let m = s.recv_publish_ack();
    assert_eq!((m.payload.as_slice(), m.dup), (&b"small"[..], false));
    assert_eq!(b.dropped("client_max_packet_size"), 1);
}
