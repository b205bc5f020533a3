//! SUBSCRIBE / UNSUBSCRIBE: wildcards, overlapping subscriptions, `$` topics, shared
//! subscriptions, UNSUBACK codes and invalid filters.
//!
//! Absence of a delivery is shown with a sentinel: messages from one publisher are routed in
//! order, so when a later matching message arrives first, the earlier one was not sent.

use crate::common::*;

#[test]
fn wildcards_plus_and_hash_mqtt_4_7_1() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "wild");
    s.sub("a/+/c", 0);
    s.sub("x/#", 0);
    let mut p = Raw::v5(b.v5, "p");
    for t in [
        "a/b/c", "a/b/d", "a/b/c/d", "a//c", "x", "x/y/z", "xx/y", "b/b/c", "x/end",
    ] {
        p.pub0(t, t.as_bytes());
    }
    let mut got = Vec::new();
    loop {
        let m = s.recv_publish();
        got.push(m.topic.clone());
        if m.topic == "x/end" {
            break;
        }
    }
    // `x/#` matches its parent `x` [MQTT-4.7.1-2]; `+` matches an empty level.
    assert_eq!(got, ["a/b/c", "a//c", "x", "x/y/z", "x/end"]);
}

#[test]
fn wildcards_with_rumqttc_v3() {
    let b = start("");
    let s = V3::new(b.v3, "wild3");
    s.subscribe("sensors/+/temp", rumqttc::QoS::AtLeastOnce);
    let p = V3::new(b.v3, "p3");
    p.c.publish("sensors/k1/hum", rumqttc::QoS::AtLeastOnce, false, "no")
        .unwrap();
    p.c.publish("sensors/k1/temp", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .unwrap();
    let m = s.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("sensors/k1/temp", &b"21.5"[..])
    );
}

#[test]
fn overlapping_subscriptions_one_copy_at_max_qos_with_every_subscription_id_mqtt_3_3_4_2_and_3() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "overlap");
    assert_eq!(
        s.subscribe_opts("o/+", 0, &P::new().var(prop::SUBSCRIPTION_ID, 1)),
        vec![0]
    );
    assert_eq!(
        s.subscribe_opts("o/#", 1, &P::new().var(prop::SUBSCRIPTION_ID, 2)),
        vec![1]
    );
    s.sub("o/x", 0); // a third, without an identifier
    let mut p = Raw::v5(b.v5, "p");
    p.pub2("o/x", b"once");
    let m = s.recv_publish();
    assert_eq!(m.payload, b"once");
    assert_eq!(m.qos, 1, "the maximum QoS of the matching subscriptions");
    let mut ids = m.props.ints(prop::SUBSCRIPTION_ID);
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    s.send(&puback(m.pkid));
    p.pub0("o/x/end", b"end"); // matches o/# only
    let end = s.recv_publish();
    assert_eq!(end.payload, b"end", "exactly one copy of o/x");
    assert_eq!(end.props.ints(prop::SUBSCRIPTION_ID), vec![2]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let b = start("");
    let mut wild = Raw::v5(b.v5, "wild");
    wild.sub("#", 0);
    wild.sub("+/x", 0);
    let mut sys = Raw::v5(b.v5, "sys");
    sys.sub("$SYS/#", 0);
    let mut p = Raw::v5(b.v5, "p");
    p.pub0("$SYS/x", b"dollar");
    p.pub0("s/x", b"plain");
    let m = sys.recv_publish();
    assert_eq!(m.topic, "$SYS/x");
    let m = wild.recv_publish();
    assert_eq!(m.topic, "s/x", "`#` and `+/x` skipped $SYS/x");
    wild.ping(); // and s/x came once, though both filters match it
}

#[test]
fn shared_subscriptions_round_robin_within_a_group_and_a_copy_per_group() {
    let b = start("");
    // 5.0 §4.8.2: each message goes to one member of each group.
    let mut m1 = Raw::v5(b.v5, "m1");
    let mut m2 = Raw::v5(b.v5, "m2");
    let mut h = Raw::v3(b.v3, "h");
    m1.sub("$share/g/jobs/#", 1);
    m2.sub("$share/g/jobs/#", 1);
    h.sub("$share/h/jobs/#", 1);
    let mut p = Raw::v5(b.v5, "p");
    for i in 0..6 {
        p.pub1(&format!("jobs/{i}"), format!("{i}").as_bytes());
    }
    let a: Vec<Vec<u8>> = (0..3).map(|_| m1.recv_publish_ack().payload).collect();
    let c: Vec<Vec<u8>> = (0..3).map(|_| m2.recv_publish_ack().payload).collect();
    // Alternating: one member has 0, 2, 4, the other 1, 3, 5.
    let (even, odd) = if a[0] == b"0" { (a, c) } else { (c, a) };
    assert_eq!(even, [b"0", b"2", b"4"]);
    assert_eq!(odd, [b"1", b"3", b"5"]);
    let hs: Vec<Vec<u8>> = (0..6).map(|_| h.recv_publish_ack().payload).collect();
    assert_eq!(
        hs,
        [b"0", b"1", b"2", b"3", b"4", b"5"],
        "group h gets its own copy"
    );
    m1.ping();
    m2.ping();
}

#[test]
fn shared_subscriptions_with_rumqttc_v5() {
    let b = start("");
    let m1 = V5::new(b.v5, "rm1");
    let m2 = V5::new(b.v5, "rm2");
    m1.subscribe("$share/w/work", Q5::AtLeastOnce);
    m2.subscribe("$share/w/work", Q5::AtLeastOnce);
    let p = V5::new(b.v5, "rp");
    for i in 0..4 {
        p.c.publish("work", Q5::AtLeastOnce, false, format!("{i}"))
            .unwrap();
    }
    let a: Vec<u8> = (0..2).map(|_| m1.recv_publish().payload[0]).collect();
    let c: Vec<u8> = (0..2).map(|_| m2.recv_publish().payload[0]).collect();
    let mut all = [a.clone(), c.clone()].concat();
    all.sort();
    assert_eq!(all, b"0123");
    assert!(a == b"02" || a == b"13", "alternating: {a:?} / {c:?}");
}

#[test]
fn unsubscribe_v5_codes_0x00_and_0x11_for_unknown() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "unsub");
    s.sub("u/a", 1);
    // One reason code per filter; 0x11 No subscription existed (5.0 §3.11.3).
    assert_eq!(s.unsubscribe(&["u/a", "u/never"]), vec![0x00, 0x11]);
    let mut p = Raw::v5(b.v5, "p");
    assert_eq!(p.pub1("u/a", b"x"), 0x10, "no subscriber left");
    s.ping();
    assert_eq!(s.unsubscribe(&["u/a"]), vec![0x11], "already gone");
}

#[test]
fn unsubscribe_v3_unsuback_and_no_more_deliveries() {
    let b = start("");
    let mut s = Raw::v3(b.v3, "unsub3");
    s.sub("u/a", 0);
    s.sub("u/b", 0);
    let id = s.id();
    s.send(&unsubscribe(false, id, &["u/a", "u/never"]));
    let ack = s.expect(kind::UNSUBACK);
    assert_eq!(
        ack,
        Pkt {
            first: 0xB0,
            body: id.to_be_bytes().to_vec()
        }
    );
    let mut p = Raw::v3(b.v3, "p");
    p.pub0("u/a", b"gone");
    p.pub0("u/b", b"kept");
    assert_eq!(s.recv_publish().payload, b"kept");
}

#[test]
fn invalid_filter_gets_0x8f_in_v5_and_0x80_in_v3_mqtt_4_7_1_2_and_3() {
    let b = start("");
    let mut s5 = Raw::v5(b.v5, "bad5");
    assert_eq!(
        s5.subscribe_many(
            &[("a/#/b", 1), ("ok/+", 1), ("a+", 0), ("$share/g+/x", 0)],
            &P::new()
        ),
        vec![0x8F, 0x01, 0x8F, 0x8F]
    );
    let mut s3 = Raw::v3(b.v3, "bad3");
    assert_eq!(
        s3.subscribe_many(&[("a/#/b", 1), ("ok/+", 2)], &P::new()),
        vec![0x80, 0x02]
    );
    assert_eq!(
        b.value("subscriptions"),
        2,
        "only the valid filters are held"
    );
    // The valid ones work.
    let mut p = Raw::v5(b.v5, "p");
    p.pub0("ok/1", b"x");
    assert_eq!(s5.recv_publish().topic, "ok/1");
    assert_eq!(s3.recv_publish().topic, "ok/1");
}

#[test]
fn resubscribe_replaces_the_subscription_mqtt_3_8_4_3() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "resub");
    s.sub("r/t", 0);
    s.sub("r/t", 2);
    assert_eq!(b.value("subscriptions"), 1);
    let mut p = Raw::v5(b.v5, "p");
    p.pub2("r/t", b"x");
    let m = s.recv_publish();
    assert_eq!(m.qos, 2, "the new options apply");
    s.ack_msg(&m);
    p.pub0("r/t", b"end");
    assert_eq!(s.recv_publish().payload, b"end", "one copy only");
}

#[test]
fn shared_subscription_prefers_connected_members() {
    let b = start("");
    let persistent = Connect::v5("away")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut away, _) = Raw::connect_ok(b.v5, &persistent);
    away.sub("$share/g/work", 1);
    away.disconnect();
    let mut here = Raw::v5(b.v5, "here");
    here.sub("$share/g/work", 1);
    let mut p = Raw::v5(b.v5, "p");
    for i in 0..4 {
        p.pub1("work", format!("{i}").as_bytes());
    }
    let got: Vec<Vec<u8>> = (0..4).map(|_| here.recv_publish_ack().payload).collect();
    assert_eq!(got, [b"0", b"1", b"2", b"3"], "all to the connected member");
    assert_eq!(
        b.value("queued_messages"),
        0,
        "nothing queued for the absent one"
    );
}
