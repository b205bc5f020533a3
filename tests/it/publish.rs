//! PUBLISH at QoS 0/1/2 in both directions and both versions, the acknowledgement flows
//! byte by byte, redelivery on reconnect, `broker.max_qos` and `broker.max_message_size`.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as SubCode5;

use crate::common::*;

#[test]
fn qos_0_1_2_from_v5_to_v3_with_rumqttc() {
    let b = start("");
    let sub = V3::new(b.v3, "r-sub3");
    let codes = sub.subscribe("flow/#", rumqttc::QoS::ExactlyOnce);
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::ExactlyOnce
        )]
    );
    let publisher = V5::new(b.v5, "r-pub5");
    for (i, qos) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .c
            .publish(format!("flow/{i}"), qos, false, format!("m{i}"))
            .unwrap();
        // The publisher's flow completes: PUBACK for 1, PUBCOMP for 2.
        match qos {
            Q5::AtMostOnce => {}
            Q5::AtLeastOnce => publisher.wait(|e| match e {
                rumqttc::v5::Event::Incoming(P5::PubAck(_)) => Some(()),
                _ => None,
            }),
            Q5::ExactlyOnce => publisher.wait(|e| match e {
                rumqttc::v5::Event::Incoming(P5::PubComp(_)) => Some(()),
                _ => None,
            }),
        }
        let m = sub.recv_publish();
        assert_eq!(m.topic, format!("flow/{i}"));
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        assert_eq!(m.qos as u8, i as u8, "delivered at the published QoS");
    }
}

#[test]
fn qos_0_1_2_from_v3_to_v5_with_rumqttc() {
    let b = start("");
    let sub = V5::new(b.v5, "r-sub5");
    assert_eq!(
        sub.subscribe("flow/#", Q5::ExactlyOnce),
        vec![SubCode5::Success(Q5::ExactlyOnce)]
    );
    let publisher = V3::new(b.v3, "r-pub3");
    for (i, qos) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .c
            .publish(format!("flow/{i}"), qos, false, format!("m{i}"))
            .unwrap();
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => publisher.wait(|e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => Some(()),
                _ => None,
            }),
            rumqttc::QoS::ExactlyOnce => publisher.wait(|e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)) => Some(()),
                _ => None,
            }),
        }
        let m = sub.recv_publish();
        assert_eq!(&m.topic[..], format!("flow/{i}").as_bytes());
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        assert_eq!(m.qos as u8, i as u8);
    }
}

/// Every ack of both QoS flows, as bytes, for one version.
fn ack_flows(v5: bool) {
    let b = start("");
    let addr = if v5 { b.v5 } else { b.v3 };
    let mk = |id: &str| {
        if v5 {
            Raw::v5(addr, id)
        } else {
            Raw::v3(addr, id)
        }
    };
    let mut sub = mk("sub");
    sub.sub("acks/#", 2);
    let mut p = mk("pub");

    // QoS 1: PUBLISH -> PUBACK with the same packet id (5.0 [MQTT-4.3.2-4], 3.1.1 [MQTT-4.3.2-2]).
    p.send(&Pub::new("acks/1", b"one").qos(1, 0x1234).bytes(v5));
    let ack = p.expect(kind::PUBACK);
    assert_eq!(ack.first, 0x40);
    assert_eq!(ack.ack(), (0x1234, 0x00));
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.qos, m.dup, m.retain),
        ("acks/1", 1, false, false)
    );
    assert_eq!(m.payload, b"one");
    assert_ne!(m.pkid, 0, "[MQTT-2.2.1-3]");
    sub.send(&puback(m.pkid));

    // QoS 2 in: PUBLISH -> PUBREC, PUBREL -> PUBCOMP (5.0 [MQTT-4.3.3-8], [MQTT-4.3.3-11];
    // 3.1.1 [MQTT-4.3.3-2]).
    p.send(&Pub::new("acks/2", b"two").qos(2, 0x0BCD).bytes(v5));
    let rec = p.expect(kind::PUBREC);
    assert_eq!(rec.first, 0x50);
    assert_eq!(rec.ack(), (0x0BCD, 0x00));
    // The message goes out when it is received (method B is not used): the subscriber
    // already has it before PUBREL.
    let m = sub.recv_publish();
    assert_eq!((m.topic.as_str(), m.qos), ("acks/2", 2));
    // A resent PUBLISH with DUP before PUBREL is acknowledged again but not delivered
    // twice (5.0 [MQTT-4.3.3-10], 3.1.1 [MQTT-4.3.3-2]).
    p.send(&Pub::new("acks/2", b"two").qos(2, 0x0BCD).dup().bytes(v5));
    assert_eq!(p.expect(kind::PUBREC).ack(), (0x0BCD, 0x00));
    p.send(&pubrel(0x0BCD));
    let comp = p.expect(kind::PUBCOMP);
    assert_eq!(comp.first, 0x70);
    assert_eq!(comp.ack(), (0x0BCD, 0x00));

    // QoS 2 out: PUBLISH -> (PUBREC) -> PUBREL with flags 0b0010 -> (PUBCOMP).
    sub.send(&pubrec(m.pkid));
    let rel = sub.expect(kind::PUBREL);
    assert_eq!(rel.first, 0x62, "[MQTT-3.6.1-1]");
    assert_eq!(rel.ack(), (m.pkid, 0x00));
    sub.send(&pubcomp(m.pkid));

    // QoS 0: nothing comes back to the publisher.
    p.send(&Pub::new("acks/0", b"zero").bytes(v5));
    let m0 = sub.recv_publish();
    assert_eq!((m0.topic.as_str(), m0.qos), ("acks/0", 0));
    // Only one copy of the QoS 2 message was delivered.
    sub.ping();
    p.ping();
    assert_eq!(b.value("messages_delivered_total"), 3);
    assert_eq!(b.value("messages_received_total"), 3);
}

#[test]
fn ack_flows_v5_bytes_mqtt_4_3() {
    ack_flows(true);
}

#[test]
fn ack_flows_v3_bytes_mqtt_4_3() {
    ack_flows(false);
}

#[test]
fn v5_puback_says_no_matching_subscribers() {
    let b = start("");
    let mut p = Raw::v5(b.v5, "lonely");
    assert_eq!(p.pub1("nobody/here", b"x"), 0x10);
    let mut s = Raw::v5(b.v5, "s");
    s.sub("nobody/here", 0);
    assert_eq!(p.pub1("nobody/here", b"x"), 0x00);
}

/// A QoS 1 message sent and not acknowledged is sent again on reconnect, with DUP and the
/// same packet id; a PUBREL not completed is sent again too.
fn redelivery_on_reconnect(v5: bool) {
    let b = start("");
    let addr = if v5 { b.v5 } else { b.v3 };
    let c = if v5 {
        Connect::v5("redeliver").props(P::new().u32(prop::SESSION_EXPIRY, 300))
    } else {
        Connect::v3("redeliver")
    }
    .clean(false);
    let (mut s, _) = Raw::connect_ok(addr, &c);
    s.sub("rd/#", 2);
    let mut p = if v5 {
        Raw::v5(addr, "p")
    } else {
        Raw::v3(addr, "p")
    };
    p.pub1("rd/1", b"first");
    let m1 = s.recv_publish();
    assert!(!m1.dup);
    p.pub2("rd/2", b"second");
    let m2 = s.recv_publish();
    assert_eq!(m2.qos, 2);
    s.send(&pubrec(m2.pkid));
    assert_eq!(s.expect(kind::PUBREL).ack().0, m2.pkid);
    // Neither PUBACK nor PUBCOMP: the connection drops.
    s.drop_connection();
    b.wait_value("sessions_connected", |n| n == 1);

    let (mut s, ack) = Raw::connect_ok(addr, &c);
    assert!(ack.session_present);
    let again = s.recv_publish();
    assert!(again.dup, "DUP=1 on redelivery [MQTT-3.3.1-1]");
    assert_eq!(again.pkid, m1.pkid, "same packet id [MQTT-4.4.0-1]");
    assert_eq!(
        (again.topic.as_str(), again.payload.as_slice()),
        ("rd/1", &b"first"[..])
    );
    let rel = s.expect(kind::PUBREL);
    assert_eq!(rel.ack().0, m2.pkid, "PUBREL resent [MQTT-4.4.0-1]");
    s.send(&puback(m1.pkid));
    s.send(&pubcomp(m2.pkid));
    s.ping();
    assert_eq!(b.value("retransmissions_total"), 2);
    // Acknowledged now: a further reconnect has nothing to resend.
    s.disconnect();
    let (mut s, ack) = Raw::connect_ok(addr, &c);
    assert!(ack.session_present);
    s.ping();
    assert_eq!(b.value("retransmissions_total"), 2);
}

#[test]
fn redelivery_on_reconnect_v5_dup_and_same_packet_id_mqtt_4_4_0_1() {
    redelivery_on_reconnect(true);
}

#[test]
fn redelivery_on_reconnect_v3_dup_and_same_packet_id_mqtt_4_4_0_1() {
    redelivery_on_reconnect(false);
}

#[test]
fn max_qos_1_announced_granted_and_enforced_mqtt_3_2_2_9_to_11() {
    let b = start("broker: { max_qos: 1 }");
    let (mut s, ack) = Raw::connect_ok(b.v5, &Connect::v5("mq-sub"));
    assert_eq!(
        ack.props.int(prop::MAXIMUM_QOS),
        Some(1),
        "Maximum QoS 1 [MQTT-3.2.2-9]"
    );
    // SUBSCRIBE at QoS 2 is still accepted [MQTT-3.2.2-10], granted at QoS 1.
    assert_eq!(
        s.subscribe_opts("mq/#", 2, &P::new()),
        vec![0x01],
        "granted QoS 1"
    );
    let mut p = Raw::v5(b.v5, "mq-pub");
    assert_eq!(p.pub1("mq/ok", b"qos1"), 0);
    let m = s.recv_publish_ack();
    assert_eq!((m.qos, m.payload.as_slice()), (1, &b"qos1"[..]));
    // QoS 2 beyond the announced maximum, which a client must not send [MQTT-3.2.2-11]:
    // DISCONNECT 0x9B (5.0 §3.2.2.3.4).
    p.send(&Pub::new("mq/two", b"qos2").qos(2, 9).bytes(true));
    let (code, _) = p.expect_disconnect();
    assert_eq!(code, 0x9B, "QoS not supported");
    assert_eq!(b.dropped("qos_not_supported"), 1);
    assert_eq!(b.closed("qos_not_supported"), 1);
    // 3.1.1 has no reason code for it: the connection is closed.
    let mut p3 = Raw::v3(b.v3, "mq-pub3");
    p3.send(&Pub::new("mq/two", b"qos2").qos(2, 9).bytes(false));
    p3.expect_closed_silently();
    assert_eq!(b.closed("qos_not_supported"), 2);
    // Nothing at QoS 2 reached the subscriber.
    p = Raw::v5(b.v5, "mq-pub-2");
    p.pub1("mq/end", b"end");
    assert_eq!(s.recv_publish_ack().payload, b"end");
}

#[test]
fn max_message_size_v5_publish_over_it_gets_0x95() {
    let b = start("broker: { max_message_size: 1024 }");
    let mut s = Raw::v5(b.v5, "mms-sub");
    s.sub("mms/#", 1);
    let mut p = Raw::v5(b.v5, "mms-pub");
    assert_eq!(
        p.pub1("mms/ok", &[b'a'; 1024]),
        0,
        "exactly the maximum is fine"
    );
    assert_eq!(s.recv_publish_ack().payload.len(), 1024);
    p.send(&Pub::new("mms/big", &[b'b'; 2000]).qos(1, 7).bytes(true));
    let (code, _) = p.expect_disconnect();
    assert_eq!(code, 0x95, "Packet too large");
    assert_eq!(b.dropped("too_large"), 1);
    assert_eq!(b.closed("packet_too_large"), 1);
    let mut p = Raw::v5(b.v5, "mms-pub2");
    p.pub1("mms/end", b"end");
    assert_eq!(
        s.recv_publish_ack().payload,
        b"end",
        "the big one was not routed"
    );
}

#[test]
fn frame_over_the_announced_maximum_packet_size_is_refused_from_its_fixed_header() {
    let b = start("broker: { max_message_size: 1024 }");
    // The CONNACK announces the packet limit: max_message_size + a framing allowance of
    // max_message_size (at least 1 KiB, at most 64 KiB).
    let (mut c, ack) = Raw::connect_ok(b.v5, &Connect::v5("huge"));
    assert_eq!(ack.props.int(prop::MAXIMUM_PACKET_SIZE), Some(1024 + 1024));
    // Only the fixed header of a ~256 MB PUBLISH: refused at once, body never awaited.
    let t0 = Instant::now();
    c.send(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    let (code, _) = c.expect_disconnect();
    assert_eq!(code, 0x95);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "refused from the header"
    );
    // 3.1.1: closed.
    let mut c3 = Raw::v3(b.v3, "huge3");
    c3.send(&[0x30, 0x80, 0x80, 0x05]); // 81920 bytes > 1024 + 1024
    c3.expect_closed_silently();
    // Before CONNECT too.
    let mut c0 = Raw::tcp(b.v3);
    c0.send(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]);
    c0.expect_closed_silently();
    assert_eq!(b.closed("packet_too_large"), 3);
}

#[test]
fn redelivery_on_reconnect_respects_the_new_receive_maximum_mqtt_3_3_4_9() {
    let b = start("");
    let c = |rm: u16| {
        Connect::v5("rm-resend")
            .props(
                P::new()
                    .u32(prop::SESSION_EXPIRY, 300)
                    .u16(prop::RECEIVE_MAXIMUM, rm),
            )
            .clean(false)
    };
    let (mut s, _) = Raw::connect_ok(b.v5, &c(3));
    s.sub("rm/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    for i in 0..3u8 {
        p.pub1("rm/t", &[b'a' + i]);
    }
    let first: Vec<Msg> = (0..3).map(|_| s.recv_publish()).collect();
    s.drop_connection();
    b.wait_value("sessions_connected", |n| n == 1);
    // Back with Receive Maximum 1: one resend at a time, in order, original ids, DUP set.
    let (mut s, ack) = Raw::connect_ok(b.v5, &c(1));
    assert!(ack.session_present);
    for m in &first {
        let again = s.recv_publish();
        assert!(again.dup);
        assert_eq!(
            (again.pkid, again.payload.clone()),
            (m.pkid, m.payload.clone())
        );
        s.ping(); // nothing else arrives while this one is unacknowledged
        s.send(&puback(again.pkid));
    }
    s.ping();
    assert_eq!(b.value("retransmissions_total"), 3);
}
