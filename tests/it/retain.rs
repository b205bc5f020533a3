//! Retained messages: set, replace, delete; the retain flag on delivery; MQTT 5 Retain
//! Handling, Retain As Published and No Local; the retained store cap.

use crate::common::*;

#[test]
fn retained_set_replace_and_delete_mqtt_3_3_1_5_8_9_10() {
    let b = start("");
    let mut p = Raw::v3(b.v3, "p");
    p.pub1_with(Pub::new("ret/a", b"one").retain());
    p.pub1_with(Pub::new("ret/b", b"bee").retain());
    assert_eq!(b.value("retained_messages"), 2);

    // A new subscription gets the retained message with RETAIN=1 (3.1.1 [MQTT-3.3.1-8]).
    let mut s = Raw::v3(b.v3, "s1");
    s.sub("ret/a", 1);
    let m = s.recv_publish_ack();
    assert_eq!((m.payload.as_slice(), m.retain), (&b"one"[..], true));

    // Replaced (3.1.1 [MQTT-3.3.1-5]); a live subscriber gets it with RETAIN=0 (3.1.1 [MQTT-3.3.1-9]).
    p.pub1_with(Pub::new("ret/a", b"two").retain());
    let live = s.recv_publish_ack();
    assert_eq!((live.payload.as_slice(), live.retain), (&b"two"[..], false));
    let mut s2 = Raw::v5(b.v5, "s2");
    s2.sub("ret/a", 0);
    let m = s2.recv_publish();
    assert_eq!((m.payload.as_slice(), m.retain), (&b"two"[..], true));
    assert_eq!(b.value("retained_messages"), 2, "replaced, not added");

    // Deleted by an empty retained payload (3.1.1 [MQTT-3.3.1-10]); the empty message is
    // still delivered to live subscribers.
    p.pub1_with(Pub::new("ret/a", b"").retain());
    assert_eq!(s.recv_publish_ack().payload, b"");
    assert_eq!(b.value("retained_messages"), 1);
    let mut s3 = Raw::v3(b.v3, "s3");
    s3.sub("ret/#", 1);
    let m = s3.recv_publish_ack();
    assert_eq!(m.topic, "ret/b", "only ret/b is left");
    s3.ping();
}

#[test]
fn retained_with_rumqttc_v5() {
    let b = start("");
    let p = V5::new(b.v5, "rp");
    p.c.publish("rr/t", Q5::AtLeastOnce, true, "kept").unwrap();
    p.wait(|e| match e {
        rumqttc::v5::Event::Incoming(P5::PubAck(_)) => Some(()),
        _ => None,
    });
    let s = V5::new(b.v5, "rs");
    s.subscribe("rr/+", Q5::AtLeastOnce);
    let m = s.recv_publish();
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"kept");
}

#[test]
fn retain_handling_0_1_2_mqtt_3_3_1_9_to_3_3_1_11() {
    let b = start("");
    let mut p = Raw::v5(b.v5, "p");
    p.pub1_with(Pub::new("rh/t", b"stored").retain());
    let mut s = Raw::v5(b.v5, "s");

    // Sends what arrives next: the retained message, or the live sentinel when none was sent.
    let next_is_retained = |s: &mut Raw, p: &mut Raw| -> bool {
        p.pub0("rh/t", b"live");
        let m = s.recv_publish();
        if m.payload == b"stored" {
            assert!(m.retain);
            assert_eq!(s.recv_publish().payload, b"live");
            true
        } else {
            assert_eq!(m.payload, b"live");
            false
        }
    };

    // 0: sent at every subscribe, new or not [MQTT-3.3.1-9].
    assert_eq!(
        s.subscribe_opts("rh/t", sub_opts(0, false, false, 0), &P::new()),
        vec![0]
    );
    assert!(next_is_retained(&mut s, &mut p));
    assert_eq!(
        s.subscribe_opts("rh/t", sub_opts(0, false, false, 0), &P::new()),
        vec![0]
    );
    assert!(next_is_retained(&mut s, &mut p));
    s.unsubscribe(&["rh/t"]);

    // 1: only when the subscription is new [MQTT-3.3.1-10].
    assert_eq!(
        s.subscribe_opts("rh/t", sub_opts(0, false, false, 1), &P::new()),
        vec![0]
    );
    assert!(next_is_retained(&mut s, &mut p));
    assert_eq!(
        s.subscribe_opts("rh/t", sub_opts(0, false, false, 1), &P::new()),
        vec![0]
    );
    assert!(!next_is_retained(&mut s, &mut p));
    s.unsubscribe(&["rh/t"]);

    // 2: never [MQTT-3.3.1-11].
    assert_eq!(
        s.subscribe_opts("rh/t", sub_opts(0, false, false, 2), &P::new()),
        vec![0]
    );
    assert!(!next_is_retained(&mut s, &mut p));
}

#[test]
fn retain_as_published_mqtt_3_3_1_12_and_13() {
    let b = start("");
    let mut rap = Raw::v5(b.v5, "rap");
    let mut plain = Raw::v5(b.v5, "plain");
    rap.subscribe_opts("rap/#", sub_opts(1, false, true, 0), &P::new());
    plain.subscribe_opts("rap/#", sub_opts(1, false, false, 0), &P::new());
    let mut p = Raw::v5(b.v5, "p");
    p.pub1_with(Pub::new("rap/x", b"r").retain());
    p.pub1("rap/x", b"n");
    let (r1, r2) = (rap.recv_publish_ack(), rap.recv_publish_ack());
    assert_eq!(
        (r1.retain, r2.retain),
        (true, false),
        "as published [MQTT-3.3.1-13]"
    );
    let (n1, n2) = (plain.recv_publish_ack(), plain.recv_publish_ack());
    assert_eq!(
        (n1.retain, n2.retain),
        (false, false),
        "cleared [MQTT-3.3.1-12]"
    );
}

#[test]
fn no_local_skips_the_publishers_own_messages_mqtt_3_8_3_3() {
    let b = start("");
    let mut me = Raw::v5(b.v5, "me");
    me.subscribe_opts("nl/#", sub_opts(1, true, false, 0), &P::new());
    assert_eq!(
        me.pub1("nl/own", b"mine"),
        0x10,
        "nobody else: no matching subscribers"
    );
    let mut other = Raw::v5(b.v5, "other");
    other.pub1("nl/theirs", b"theirs");
    let m = me.recv_publish_ack();
    assert_eq!(m.payload, b"theirs", "own message skipped");
    // Without No Local the own message comes back.
    me.subscribe_opts("local/#", sub_opts(1, false, false, 0), &P::new());
    me.send(&Pub::new("local/x", b"echo").qos(1, 77).bytes(true));
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(me.next().kind());
    }
    got.sort();
    assert_eq!(got, vec![kind::PUBLISH, kind::PUBACK]);
}

#[test]
fn retained_store_cap_refuses_a_new_topic_with_0x97() {
    let b = start("broker: { max_retained_messages: 2 }");
    let mut p = Raw::v5(b.v5, "p");
    assert_eq!(p.pub1_with(Pub::new("cap/1", b"1").retain()), 0x10);
    assert_eq!(p.pub1_with(Pub::new("cap/2", b"2").retain()), 0x10);
    assert_eq!(b.dropped("retained_store_full"), 0);
    assert_eq!(
        p.pub1_with(Pub::new("cap/3", b"3").retain()),
        0x97,
        "Quota exceeded"
    );
    assert_eq!(b.dropped("retained_store_full"), 1);
    // Replacing and deleting still work at the cap.
    assert_eq!(p.pub1_with(Pub::new("cap/1", b"1b").retain()), 0x10);
    assert_eq!(p.pub1_with(Pub::new("cap/2", b"").retain()), 0x10);
    assert_eq!(
        p.pub1_with(Pub::new("cap/3", b"3").retain()),
        0x10,
        "room again"
    );
    assert_eq!(b.value("retained_messages"), 2);
    let mut s = Raw::v5(b.v5, "s");
    s.sub("cap/#", 0);
    let mut got: Vec<(String, Vec<u8>)> = (0..2)
        .map(|_| {
            let m = s.recv_publish();
            (m.topic, m.payload)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("cap/1".into(), b"1b".to_vec()),
            ("cap/3".into(), b"3".to_vec())
        ]
    );
    // 3.1.1 cannot refuse a QoS 1 PUBLISH with a code: the connection is closed.
    assert_eq!(p.pub1_with(Pub::new("cap/2", b"2").retain()), 0x97);
    let mut p3 = Raw::v3(b.v3, "p3");
    p3.send(&Pub::new("cap/4", b"4").qos(1, 1).retain().bytes(false));
    p3.expect_closed_silently();
    assert_eq!(b.dropped("retained_store_full"), 3);
}

#[test]
fn every_matching_retained_message_reaches_a_new_subscription_mqtt_3_3_1_6_and_3_3_1_9() {
    // More retained messages than a connected session's send queue holds: all of them are
    // sent (3.1.1 [MQTT-3.3.1-6], 5.0 [MQTT-3.3.1-9]); the subscriber is not a slow consumer
    // for asking, and nothing is dropped.
    let b = start("session: { max_send_queue_size: 10 }");
    let mut p = Raw::v5(b.v5, "p");
    let mut want: Vec<String> = (0..30).map(|i| format!("many/{i}")).collect();
    for t in &want {
        p.pub1_with(Pub::new(t, t.as_bytes()).retain());
    }
    want.sort();
    for (addr, v5) in [(b.v5, true), (b.v3, false)] {
        let mut s = if v5 {
            Raw::v5(addr, "dashboard5")
        } else {
            Raw::v3(addr, "dashboard3")
        };
        s.sub("many/#", 1);
        let mut got: Vec<String> = (0..30)
            .map(|_| {
                let m = s.recv_publish_ack();
                assert!(m.retain);
                m.topic
            })
            .collect();
        got.sort();
        assert_eq!(got, want);
        s.ping();
    }
    assert_eq!(b.closed("slow_consumer"), 0);
    assert_eq!(b.dropped("queue_full"), 0);
}

#[test]
fn no_local_subscription_takes_no_part_in_an_overlapping_own_message_mqtt_3_8_3_3() {
    // Own messages matching both a No Local subscription (QoS 2, id 1) and a plain one
    // (QoS 0, id 2): delivered as the plain subscription asks only.
    let b = start("");
    let mut me = Raw::v5(b.v5, "me");
    me.subscribe_opts(
        "nl/#",
        sub_opts(2, true, false, 0),
        &P::new().var(prop::SUBSCRIPTION_ID, 1),
    );
    me.subscribe_opts(
        "nl/+",
        sub_opts(0, false, false, 0),
        &P::new().var(prop::SUBSCRIPTION_ID, 2),
    );
    me.send(&Pub::new("nl/x", b"own").qos(2, 5).bytes(true));
    let mut publish = None;
    while publish.is_none() {
        let p = me.next();
        match p.kind() {
            kind::PUBREC => me.send(&pubrel(5)),
            kind::PUBCOMP => {}
            kind::PUBLISH => publish = Some(p.publish(true)),
            _ => panic!("{p:?}"),
        }
    }
    let m = publish.unwrap();
    assert_eq!(m.qos, 0, "the No Local subscription's QoS 2 does not count");
    assert_eq!(m.props.ints(prop::SUBSCRIPTION_ID), vec![2]);
    // Another client's message gets both.
    let mut other = Raw::v5(b.v5, "other");
    other.pub2("nl/x", b"theirs");
    let m = loop {
        let p = me.next();
        if p.kind() == kind::PUBLISH {
            break p.publish(true);
        }
    };
    assert_eq!((m.payload.as_slice(), m.qos), (&b"theirs"[..], 2));
    let mut ids = m.props.ints(prop::SUBSCRIPTION_ID);
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn retained_message_expiry_mqtt_3_3_2_5_and_6() {
    let b = start("");
    let mut p = Raw::v5(b.v5, "p");
    let expiring = |secs| P::new().u32(prop::MESSAGE_EXPIRY, secs);
    p.pub1_with(Pub::new("rx/short", b"short").retain().props(expiring(1)));
    p.pub1_with(Pub::new("rx/long", b"long").retain().props(expiring(30)));
    let mut early = Raw::v5(b.v5, "early");
    early.sub("rx/short", 1);
    let m = early.recv_publish_ack();
    assert_eq!(m.props.int(prop::MESSAGE_EXPIRY), Some(1));
    // Once expired it is no longer sent to new subscriptions, and the store lets it go.
    b.wait_dropped("expired", 1);
    assert_eq!(b.value("retained_messages"), 1);
    let mut late = Raw::v5(b.v5, "late");
    late.sub("rx/#", 1);
    let m = late.recv_publish_ack();
    assert_eq!(m.payload, b"long");
    let left = m.props.int(prop::MESSAGE_EXPIRY).unwrap();
    assert!(
        (28..=29).contains(&left),
        "decremented while stored: {left}"
    );
    late.ping();
}
