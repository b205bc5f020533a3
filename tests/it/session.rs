//! Persistent sessions: subscriptions kept across reconnects, the offline queue bounded by
//! `session.max_offline_queue_size` under both `offline_queue_policy` values, and QoS 0
//! not queued for offline sessions.

use crate::common::*;

#[test]
fn subscriptions_kept_across_reconnect_with_rumqttc_v5() {
    let b = start("");
    let opts = || {
        let mut o = V5::options(b.v5, "keeper");
        o.set_clean_start(false);
        o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(300),
            ..Default::default()
        });
        o
    };
    let (c, ack) = V5::connect(opts());
    assert!(!ack.session_present);
    c.subscribe("keep/#", Q5::AtLeastOnce);
    c.c.disconnect().unwrap();
    b.wait_value("sessions_connected", |n| n == 0);
    drop(c);
    let (c, ack) = V5::connect(opts());
    assert!(ack.session_present);
    let p = V5::new(b.v5, "kp");
    p.c.publish("keep/x", Q5::AtLeastOnce, false, "still subscribed")
        .unwrap();
    let m = c.recv_publish();
    assert_eq!(&m.payload[..], b"still subscribed");
}

#[test]
fn subscriptions_kept_across_reconnect_with_rumqttc_v3() {
    let b = start("");
    let opts = || {
        let mut o = V3::options(b.v3, "keeper3");
        o.set_clean_session(false);
        o
    };
    let (c, _) = V3::connect(opts());
    c.subscribe("keep/#", rumqttc::QoS::AtLeastOnce);
    c.c.disconnect().unwrap();
    b.wait_value("sessions_connected", |n| n == 0);
    drop(c);
    // Published while away: queued (QoS 1).
    let mut p = Raw::v3(b.v3, "kp3");
    p.pub1("keep/x", b"queued");
    let (c, ack) = V3::connect(opts());
    assert!(ack.session_present);
    assert_eq!(&c.recv_publish().payload[..], b"queued");
    p.pub1("keep/x", b"live");
    assert_eq!(&c.recv_publish().payload[..], b"live");
}

/// A persistent v5 subscriber on `oq/#` at QoS 1 that has gone away.
fn offline_subscriber(b: &Broker) -> Connect {
    let c = Connect::v5("offline")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 300));
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    s.sub("oq/#", 1);
    s.disconnect();
    c
}

fn publish_12(b: &Broker) {
    let mut p = Raw::v5(b.v5, "p");
    for i in 1..=12 {
        p.pub1("oq/t", format!("m{i}").as_bytes());
    }
}

/// Reconnect and take every queued message (acking each), up to the sentinel.
fn drain(b: &Broker, c: &Connect) -> Vec<String> {
    let (mut s, ack) = Raw::connect_ok(b.v5, c);
    assert!(ack.session_present);
    let mut p = Raw::v5(b.v5, "sentinel");
    p.pub1("oq/end", b"end");
    let mut got = Vec::new();
    loop {
        let m = s.recv_publish_ack();
        if m.payload == b"end" {
            return got;
        }
        got.push(String::from_utf8(m.payload).unwrap());
    }
}

#[test]
fn offline_queue_evict_policy_drops_the_oldest() {
    let b = start("session: { max_offline_queue_size: 10, offline_queue_policy: evict }");
    let c = offline_subscriber(&b);
    publish_12(&b);
    assert_eq!(b.value("queued_messages"), 10);
    assert_eq!(b.dropped("offline_queue_evicted"), 2);
    assert_eq!(b.dropped("offline_queue_rejected"), 0);
    let got = drain(&b, &c);
    let want: Vec<String> = (3..=12).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "m1 and m2 evicted, the newest kept");
}

#[test]
fn offline_queue_reject_policy_drops_the_newest() {
    let b = start("session: { max_offline_queue_size: 10, offline_queue_policy: reject }");
    let c = offline_subscriber(&b);
    publish_12(&b);
    assert_eq!(b.value("queued_messages"), 10);
    assert_eq!(b.dropped("offline_queue_rejected"), 2);
    assert_eq!(b.dropped("offline_queue_evicted"), 0);
    let got = drain(&b, &c);
    let want: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "m11 and m12 refused, the oldest kept");
}

#[test]
fn qos0_is_not_queued_for_an_offline_session() {
    let b = start("");
    let c = offline_subscriber(&b);
    let mut p = Raw::v5(b.v5, "p");
    p.pub0("oq/zero", b"qos0");
    p.pub1("oq/one", b"qos1");
    // QoS 1 published to a QoS 0 subscription is delivered at QoS 0: not queued either.
    let (mut s0, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("offline0")
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 300)),
    );
    s0.sub("oq/#", 0);
    s0.disconnect();
    p.pub1("oq/one", b"downgraded");
    assert_eq!(b.dropped("offline_qos0"), 2);
    let got = drain(&b, &c);
    assert_eq!(got, ["qos1", "downgraded"]);
    let (mut s0, ack) = Raw::connect_ok(
        b.v5,
        &Connect::v5("offline0")
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 300)),
    );
    assert!(ack.session_present);
    p.pub1("oq/end", b"end");
    assert_eq!(s0.recv_publish().payload, b"end");
}

#[test]
fn qos0_queued_while_connected_is_dropped_when_the_connection_ends() {
    // A receive maximum of 1 keeps QoS 1 messages queued behind an unacked one; the QoS 0
    // message queued behind them is dropped when the connection ends (counted), the QoS 1
    // ones are kept for the session.
    let b = start("");
    let c = Connect::v5("q0").clean(false).props(
        P::new()
            .u32(prop::SESSION_EXPIRY, 300)
            .u16(prop::RECEIVE_MAXIMUM, 1),
    );
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    s.sub("q0/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    p.pub1("q0/t", b"a");
    p.pub1("q0/t", b"b");
    p.pub0("q0/t", b"c");
    let first = s.recv_publish();
    assert_eq!(first.payload, b"a");
    b.wait_value("queued_messages", |n| n == 2);
    s.drop_connection();
    b.wait_dropped("offline_qos0", 1);
    let (mut s, ack) = Raw::connect_ok(b.v5, &c);
    assert!(ack.session_present);
    let again = s.recv_publish_ack();
    assert_eq!((again.payload.as_slice(), again.dup), (&b"a"[..], true));
    assert_eq!(s.recv_publish_ack().payload, b"b");
    p.pub1("q0/t", b"end");
    assert_eq!(s.recv_publish_ack().payload, b"end", "c was dropped");
}

#[test]
fn disconnect_can_change_the_session_expiry_mqtt_3_14_2_2() {
    let b = start("");
    // 60 at CONNECT, 0 at DISCONNECT: the session ends with this connection.
    let c = Connect::v5("chg")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    s.sub("chg/#", 1);
    s.send(&disconnect_v5(0, &P::new().u32(prop::SESSION_EXPIRY, 0)));
    s.expect_closed_silently();
    assert_eq!(b.value("sessions"), 0);
    let (s, ack) = Raw::connect_ok(b.v5, &c);
    assert!(!ack.session_present);
    s.disconnect();
    // 0 at CONNECT, then non-zero at DISCONNECT: a Protocol Error [MQTT-3.14.2-2].
    let zero = Connect::v5("chg0").clean(false);
    let (mut s, _) = Raw::connect_ok(
        b.v5,
        &zero.clone().props(P::new().u32(prop::SESSION_EXPIRY, 0)),
    );
    s.send(&disconnect_v5(0, &P::new().u32(prop::SESSION_EXPIRY, 60)));
    assert_eq!(s.expect_disconnect().0, 0x82);
    let (_s, ack) = Raw::connect_ok(b.v5, &zero.props(P::new().u32(prop::SESSION_EXPIRY, 0)));
    assert!(
        !ack.session_present,
        "the session did not outlive the connection"
    );
}

#[test]
fn inbound_qos2_is_not_delivered_twice_across_a_reconnect_mqtt_4_3_3_10() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "watch");
    s.sub("q2/#", 2);
    let c = Connect::v5("q2pub")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut p, _) = Raw::connect_ok(b.v5, &c);
    p.send(&Pub::new("q2/t", b"once").qos(2, 42).bytes(true));
    assert_eq!(p.expect(kind::PUBREC).ack(), (42, 0));
    p.drop_connection(); // PUBREC lost, as far as the client knows
    assert_eq!(s.recv_publish_ack().payload, b"once");
    let (mut p, ack) = Raw::connect_ok(b.v5, &c);
    assert!(ack.session_present);
    p.send(&Pub::new("q2/t", b"once").qos(2, 42).dup().bytes(true));
    assert_eq!(p.expect(kind::PUBREC).ack(), (42, 0));
    p.send(&pubrel(42));
    assert_eq!(p.expect(kind::PUBCOMP).ack(), (42, 0));
    // An unknown id is answered 0x92 Packet Identifier not found.
    p.send(&pubrel(43));
    assert_eq!(p.expect(kind::PUBCOMP).ack(), (43, 0x92));
    p.pub0("q2/t", b"end");
    assert_eq!(
        s.recv_publish().payload,
        b"end",
        "the resent PUBLISH was not routed again"
    );
}

#[test]
fn v3_unacked_messages_are_retried_then_given_up_after_max_retries() {
    let b = start("broker: { retry_interval: 1s, max_retries: 2 }");
    let mut s = Raw::v3(b.v3, "retry3");
    s.sub("rt/#", 1);
    let mut p = Raw::v3(b.v3, "p");
    p.pub1("rt/t", b"again");
    let first = s.recv_publish();
    assert!(!first.dup);
    for _ in 0..2 {
        let again = s.recv_publish();
        assert!(again.dup, "DUP=1 on a resend [MQTT-3.3.1-1]");
        assert_eq!(
            (again.pkid, again.payload.as_slice()),
            (first.pkid, &b"again"[..])
        );
    }
    b.wait_dropped("retries_exhausted", 1);
    assert_eq!(b.value("retransmissions_total"), 2);
    // Nothing more is resent; the connection is fine.
    p.pub1("rt/t", b"next");
    let next = s.recv_publish_ack();
    assert_eq!(next.payload, b"next");
    assert!(!next.dup);
}
