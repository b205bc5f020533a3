//! Will messages: published on an abnormal close, on a keep-alive timeout, on takeover and
//! on DISCONNECT 0x04; not on a normal DISCONNECT; MQTT 5 Will Delay Interval.

use std::time::{Duration, Instant};

use crate::common::*;

/// A subscriber on `will/#` and `end` (the sentinel topic).
fn watcher(b: &Broker) -> Raw {
    let mut w = Raw::v5(b.v5, "watcher");
    w.sub("will/#", 1);
    w.sub("end", 1);
    w
}

/// The next message is the will `payload`, not the sentinel.
fn expect_will(w: &mut Raw, payload: &[u8]) {
    let m = w.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("will/x", payload)
    );
}

/// No will came: the sentinel published now is the next message.
fn expect_no_will(b: &Broker, w: &mut Raw) {
    let mut p = Raw::v5(b.v5, "sentinel");
    p.pub1("end", b"end");
    let m = w.recv_publish_ack();
    assert_eq!(m.topic, "end", "no will before the sentinel; got {m:?}");
}

fn with_will(c: Connect, payload: &[u8]) -> Connect {
    c.will(WillSpec::new("will/x", payload))
}

#[test]
fn will_published_on_abnormal_close_v3_and_v5_mqtt_3_1_2_8() {
    let b = start("");
    let mut w = watcher(&b);
    let (c, _) = Raw::connect_ok(b.v3, &with_will(Connect::v3("w3"), b"gone3"));
    c.drop_connection();
    expect_will(&mut w, b"gone3");
    let (c, _) = Raw::connect_ok(b.v5, &with_will(Connect::v5("w5"), b"gone5"));
    c.drop_connection();
    expect_will(&mut w, b"gone5");
    assert_eq!(b.value("wills_published_total"), 2);
}

#[test]
fn will_received_by_a_rumqttc_v3_subscriber() {
    let b = start("");
    let s = V3::new(b.v3, "rw3");
    s.subscribe("will/#", rumqttc::QoS::AtLeastOnce);
    let will = WillSpec {
        qos: 1,
        ..WillSpec::new("will/x", b"to rumqttc")
    };
    let (c, _) = Raw::connect_ok(b.v5, &Connect::v5("dies").will(will));
    c.drop_connection();
    let m = s.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/x", &b"to rumqttc"[..])
    );
    assert_eq!(m.qos, rumqttc::QoS::AtLeastOnce);
}

#[test]
fn will_published_on_keep_alive_timeout_mqtt_3_1_2_8() {
    let b = start("");
    let mut w = watcher(&b);
    let t0 = Instant::now();
    let (mut c, _) = Raw::connect_ok(
        b.v3,
        &with_will(Connect::v3("ka").keep_alive(1), b"timeout"),
    );
    expect_will(&mut w, b"timeout");
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    c.expect_closed_silently();
    assert_eq!(b.closed("keep_alive_timeout"), 1);
}

#[test]
fn will_suppressed_on_normal_disconnect_mqtt_3_14_4_3_and_3_1_2_10() {
    let b = start("");
    let mut w = watcher(&b);
    let (c, _) = Raw::connect_ok(b.v3, &with_will(Connect::v3("n3"), b"no3"));
    c.disconnect(); // returns once the broker has closed the socket
    let (c, _) = Raw::connect_ok(b.v5, &with_will(Connect::v5("n5"), b"no5"));
    c.disconnect();
    expect_no_will(&b, &mut w);
    assert_eq!(b.value("wills_published_total"), 0);
}

#[test]
fn will_sent_on_disconnect_with_will_message_0x04() {
    let b = start("");
    let mut w = watcher(&b);
    // 5.0 §3.14.2.1: 0x04 Disconnect with Will Message; otherwise [MQTT-3.1.2-10] drops it.
    let (mut c, _) = Raw::connect_ok(b.v5, &with_will(Connect::v5("d4"), b"asked for"));
    c.send(&disconnect_v5(0x04, &P::new()));
    c.expect_closed_silently();
    expect_will(&mut w, b"asked for");
    assert_eq!(b.closed("client_disconnect"), 1);
}

#[test]
fn will_sent_on_takeover_mqtt_3_1_4_3() {
    let b = start("");
    let mut w = watcher(&b);
    let (mut old, _) = Raw::connect_ok(b.v3, &with_will(Connect::v3("tk3"), b"taken3"));
    let _new = Raw::v3(b.v3, "tk3");
    old.expect_closed_silently();
    expect_will(&mut w, b"taken3");
    let (mut old, _) = Raw::connect_ok(b.v5, &with_will(Connect::v5("tk5"), b"taken5"));
    let _new = Raw::v5(b.v5, "tk5");
    assert_eq!(old.expect_disconnect().0, 0x8E);
    expect_will(&mut w, b"taken5");
}

#[test]
fn will_properties_and_retain_are_kept() {
    let b = start("");
    let will = WillSpec {
        retain: true,
        qos: 1,
        ..WillSpec::new("will/x", b"props")
    }
    .props(
        P::new()
            .str(prop::CONTENT_TYPE, "text/plain")
            .pair("k", "v"),
    );
    let (c, _) = Raw::connect_ok(b.v5, &Connect::v5("wp").will(will));
    c.drop_connection();
    b.wait_value("retained_messages", |n| n == 1);
    let mut s = Raw::v5(b.v5, "late");
    s.sub("will/#", 1);
    let m = s.recv_publish_ack();
    assert!(m.retain, "a retained will is stored");
    assert_eq!(m.qos, 1);
    assert_eq!(m.props.str(prop::CONTENT_TYPE), Some("text/plain"));
    assert_eq!(m.props.pairs(), vec![("k".to_string(), "v".to_string())]);
}

#[test]
fn will_delay_interval_delays_the_will_and_a_reconnect_cancels_it_mqtt_3_1_3_9() {
    let b = start("");
    let mut w = watcher(&b);
    let delayed = |id: &str, payload: &[u8]| {
        Connect::v5(id)
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 60))
            .will(WillSpec::new("will/x", payload).props(P::new().u32(prop::WILL_DELAY, 1)))
    };
    // B goes first, then comes back within the delay: its will must never be sent.
    let (cb, _) = Raw::connect_ok(b.v5, &delayed("wd-b", b"from b"));
    cb.drop_connection();
    let t0 = Instant::now();
    let (ca, _) = Raw::connect_ok(b.v5, &delayed("wd-a", b"from a"));
    ca.drop_connection();
    b.wait_value("sessions_connected", |n| n == 1);
    let (cb, ack) = Raw::connect_ok(
        b.v5,
        &Connect::v5("wd-b")
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 60)),
    );
    assert!(ack.session_present);
    // A's will: not before the delay, soon after it.
    expect_will(&mut w, b"from a");
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_secs(1),
        "will sent after {at:?}, before its delay"
    );
    assert!(at < Duration::from_millis(2600), "will sent after {at:?}");
    // B's would have been due no later than A's.
    expect_no_will(&b, &mut w);
    assert_eq!(b.value("wills_published_total"), 1);
    cb.disconnect();
}

#[test]
fn will_published_when_the_session_ends_before_the_delay_mqtt_3_1_2_8() {
    let b = start("");
    let mut w = watcher(&b);
    // Session expiry 0: the session ends at once, and so does the wait for the will.
    let (c, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("wd0").will(
            WillSpec::new("will/x", b"session over").props(P::new().u32(prop::WILL_DELAY, 600)),
        ),
    );
    c.drop_connection();
    expect_will(&mut w, b"session over");
}

#[test]
fn will_message_expiry_counts_from_publication_not_from_connect_mqtt_3_1_3_2() {
    // 5.0 §3.1.3.2.4: the will's Message Expiry Interval is its lifetime once published
    // (sent on as the Publication Expiry Interval). A connection that lived longer than
    // that interval must still get its will out.
    let b = start("");
    let mut w = watcher(&b);
    let will = WillSpec::new("will/x", b"short-lived").props(P::new().u32(prop::MESSAGE_EXPIRY, 1));
    let (mut c, _) = Raw::connect_ok(b.v5, &Connect::v5("wexp").will(will));
    std::thread::sleep(Duration::from_millis(1200)); // longer than the will's lifetime
    c.ping();
    c.drop_connection();
    let m = w.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("will/x", &b"short-lived"[..])
    );
    assert_eq!(m.props.int(prop::MESSAGE_EXPIRY), Some(1));
    assert_eq!(b.dropped("expired"), 0);
}
