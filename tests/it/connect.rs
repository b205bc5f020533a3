//! CONNECT / CONNACK: versions per listener, client identifiers, authentication methods,
//! session takeover, keep-alive, the CONNECT read timeout, clean session / clean start,
//! session expiry and the session cap.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn connect_succeeds_on_both_versions_with_rumqttc() {
    let b = start("");
    let (c3, ack3) = V3::connect(V3::options(b.v3, "rumqttc-v3"));
    assert!(!ack3.session_present);
    let (c5, ack5) = V5::connect(V5::options(b.v5, "rumqttc-v5"));
    assert!(!ack5.session_present);
    let props = ack5.properties.expect("v5 CONNACK carries properties");
    assert_eq!(
        props.receive_max,
        Some(256),
        "session.max_inflight_messages"
    );
    assert_eq!(
        props.topic_alias_max,
        Some(10),
        "broker.topic_alias_maximum"
    );
    assert_eq!(
        props.max_qos, None,
        "QoS 2 supported: no Maximum QoS [MQTT-3.2.2-9]"
    );
    assert_eq!(props.shared_subscription_available, Some(1));
    b.wait_value("connections", |n| n == 2);
    b.wait_value("sessions_connected", |n| n == 2);
    drop((c3, c5));
}

#[test]
fn v3_listener_refuses_v5_connect_with_0x84_in_v5_encoding_mqtt_3_1_2_2() {
    let b = start("");
    let mut c = Raw::tcp(b.v3);
    c.send(&Connect::v5("v5-on-v3").bytes());
    let got = c.expect_closed();
    assert_eq!(got.len(), 1, "one CONNACK then close: {got:?}");
    // v5 CONNACK: flags 0, reason 0x84, then a property length.
    assert_eq!(got[0].first, 0x20);
    assert_eq!(&got[0].body[..2], &[0x00, 0x84]);
    let ack = got[0].connack(true);
    assert_eq!(ack.code, 0x84);
    assert_eq!(b.closed("connect_refused"), 1);
}

#[test]
fn v5_listener_refuses_v311_connect_with_return_code_1_mqtt_3_1_2_2() {
    let b = start("");
    let mut c = Raw::tcp(b.v5);
    c.send(&Connect::v3("v3-on-v5").bytes());
    let got = c.expect_closed();
    assert_eq!(
        got,
        vec![Pkt {
            first: 0x20,
            body: vec![0x00, 0x01]
        }]
    );
    assert_eq!(b.closed("connect_refused"), 1);
}

#[test]
fn unsupported_protocol_level_gets_return_code_1_and_close_mqtt_3_1_2_2() {
    let b = start("");
    // "MQTT" level 3 (3.1 is "MQIsdp") and level 6: neither is served.
    for (addr, level) in [(b.v3, 3u8), (b.v5, 6u8), (b.v3, 6u8)] {
        let mut c = Raw::tcp(addr);
        c.send(&Connect::v3("lvl").level(level).bytes());
        let got = c.expect_closed();
        assert_eq!(
            got,
            vec![Pkt {
                first: 0x20,
                body: vec![0x00, 0x01]
            }],
            "level {level} on {addr}"
        );
    }
    assert_eq!(b.closed("connect_refused"), 3);
}

#[test]
fn empty_client_id_v5_gets_an_assigned_client_identifier_mqtt_3_2_2_16() {
    let b = start("");
    let (mut c, ack) = Raw::connect_ok(b.v5, &Connect::v5(""));
    let id = ack
        .props
        .str(prop::ASSIGNED_CLIENT_ID)
        .expect("Assigned Client Identifier")
        .to_string();
    assert!(!id.is_empty());
    // The assigned id is the session's: a second client with it takes the session over.
    c.sub("assigned/t", 1);
    let (mut c2, ack2) = Raw::connect_ok(b.v5, &Connect::v5(&id).clean(false));
    assert!(ack2.session_present, "the assigned id names the session");
    let (code, _) = c.expect_disconnect();
    assert_eq!(code, 0x8E);
    let mut p = Raw::v5(b.v5, "pub");
    p.pub1("assigned/t", b"x");
    assert_eq!(c2.recv_publish_ack().payload, b"x");
    // Two empty ids get two different identifiers.
    let (_c3, ack3) = Raw::connect_ok(b.v5, &Connect::v5(""));
    assert_ne!(ack3.props.str(prop::ASSIGNED_CLIENT_ID), Some(id.as_str()));
}

#[test]
fn empty_client_id_v3_clean_1_is_accepted_mqtt_3_1_3_6() {
    let b = start("");
    let (mut c, ack) = Raw::connect_ok(b.v3, &Connect::v3(""));
    assert!(!ack.session_present);
    c.sub("anon/t", 1);
    c.pub1("anon/t", b"hello");
    assert_eq!(c.recv_publish_ack().payload, b"hello");
    // And a second anonymous client is a different session (no takeover).
    let (mut c2, _) = Raw::connect_ok(b.v3, &Connect::v3(""));
    c2.ping();
    c.ping();
    assert_eq!(b.closed("session_taken_over"), 0);
}

#[test]
fn empty_client_id_v3_clean_0_gets_return_code_2_mqtt_3_1_3_8() {
    let b = start("");
    let (mut c, ack) = Raw::connect(b.v3, &Connect::v3("").clean(false));
    assert_eq!(ack.code, 2, "identifier rejected");
    assert!(!ack.session_present);
    c.expect_closed_silently();
    assert_eq!(b.closed("connect_refused"), 1);
}

#[test]
fn connect_with_an_authentication_method_gets_0x8c_mqtt_4_12_0_1() {
    let b = start("");
    let c = Connect::v5("auth").props(P::new().str(prop::AUTH_METHOD, "SCRAM-SHA-1"));
    let (mut c, ack) = Raw::connect(b.v5, &c);
    assert_eq!(ack.code, 0x8C, "Bad authentication method");
    c.expect_closed_silently();
    assert_eq!(b.value("sessions"), 0, "no session was created");
}

#[test]
fn session_takeover_v5_old_connection_gets_0x8e_mqtt_3_1_4_3() {
    let b = start("");
    let (mut old, _) = Raw::connect_ok(
        b.v5,
        &Connect::v5("twin")
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 60)),
    );
    old.sub("twin/t", 1);
    let (mut new, ack) = Raw::connect_ok(
        b.v5,
        &Connect::v5("twin")
            .clean(false)
            .props(P::new().u32(prop::SESSION_EXPIRY, 60)),
    );
    assert!(ack.session_present);
    let (code, _) = old.expect_disconnect();
    assert_eq!(code, 0x8E, "Session taken over");
    // The new connection works, with the session's subscription.
    let mut p = Raw::v5(b.v5, "pub");
    p.pub1("twin/t", b"after");
    assert_eq!(new.recv_publish_ack().payload, b"after");
    new.ping();
    assert_eq!(b.closed("session_taken_over"), 1);
}

#[test]
fn session_takeover_v3_old_connection_is_closed_mqtt_3_1_4_3() {
    let b = start("");
    let mut old = Raw::v3(b.v3, "twin3");
    old.sub("twin3/t", 0);
    let mut new = Raw::v3(b.v3, "twin3");
    old.expect_closed_silently();
    new.sub("twin3/t", 0);
    let mut p = Raw::v3(b.v3, "pub");
    p.pub0("twin3/t", b"after");
    assert_eq!(new.recv_publish().payload, b"after");
    assert_eq!(b.closed("session_taken_over"), 1);
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times_mqtt_3_1_2_24() {
    let b = start("");
    let t0 = Instant::now();
    let (mut v5, _) = Raw::connect_ok(b.v5, &Connect::v5("ka5").keep_alive(1));
    let (mut v3, _) = Raw::connect_ok(b.v3, &Connect::v3("ka3").keep_alive(1));
    let (mut pinger, _) = Raw::connect_ok(b.v5, &Connect::v5("ka-ping").keep_alive(1));
    // The pinger keeps its connection alive across the same span.
    let mut next_ping = t0 + Duration::from_millis(600);
    let mut closed5 = None;
    let mut closed3 = None;
    while closed5.is_none() || closed3.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "keep-alive not enforced"
        );
        if Instant::now() >= next_ping {
            pinger.ping();
            next_ping += Duration::from_millis(600);
        }
        if closed5.is_none() {
            match v5.recv(Duration::from_millis(20)) {
                Recv::Packet(p) => {
                    assert_eq!(p.disconnect().0, 0x8D, "Keep Alive timeout");
                    assert!(matches!(v5.recv(T), Recv::Closed));
                    closed5 = Some(t0.elapsed());
                }
                Recv::Closed => panic!("v5 closed without DISCONNECT 0x8D"),
                Recv::Timeout => {}
            }
        }
        if closed3.is_none() {
            match v3.recv(Duration::from_millis(20)) {
                Recv::Packet(p) => panic!("v3 got {p:?}"),
                Recv::Closed => closed3 = Some(t0.elapsed()),
                Recv::Timeout => {}
            }
        }
    }
    // Deadlines are checked by a once-a-second sweep: 1.5 s, plus at most 1 s (and a little
    // scheduling slack).
    for (name, at) in [("v5", closed5.unwrap()), ("v3", closed3.unwrap())] {
        assert!(
            at >= Duration::from_millis(1500) && at < Duration::from_millis(2700),
            "{name} closed after {at:?}, expected 1.5 s to 2.5 s"
        );
    }
    pinger.ping();
    assert_eq!(b.closed("keep_alive_timeout"), 2);
}

#[test]
fn read_timeout_bounds_the_wait_for_connect() {
    let b = start_yaml(
        r#"
server:
  tcp:
    v3: { addr: "127.0.0.1:0", read_timeout: "1s" }
    v5: { addr: "127.0.0.1:0", read_timeout: "1s" }
  health_addr: "127.0.0.1:0"
"#,
    );
    let t0 = Instant::now();
    // A client that sends CONNECT in time is not affected by read_timeout afterwards.
    let (mut in_time, _) = Raw::connect_ok(b.v3, &Connect::v3("in-time").keep_alive(0));
    let mut silent = Raw::tcp(b.v3);
    let mut partial = Raw::tcp(b.v5);
    partial.send(&[0x10, 0x10, 0x00]); // the start of a CONNECT, never finished
    silent.expect_closed_silently();
    // read_timeout, plus at most the 1 s granularity of the deadline sweep.
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_millis(1000) && at < Duration::from_millis(2200),
        "closed after {at:?}"
    );
    partial.expect_closed_silently();
    assert_eq!(b.closed("connect_timeout"), 2);
    // Past the point where a read_timeout applied to it would have closed it.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(t0.elapsed()));
    in_time.ping();
    assert_eq!(b.closed("connect_timeout"), 2);
}

/// `read_timeout: 0s` means no limit (full.yaml): a connection may wait for its CONNECT.
#[test]
fn read_timeout_zero_means_no_connect_deadline() {
    let b = start_yaml(
        r#"
server:
  tcp:
    v3: { addr: "127.0.0.1:0", read_timeout: 0s }
    v5: { addr: "127.0.0.1:0" }
  health_addr: "127.0.0.1:0"
"#,
    );
    let mut late = Raw::tcp(b.v3);
    // Longer than the deadline sweep's period: a deadline of "now" would have closed it.
    late.expect_nothing(Duration::from_millis(1300));
    late.send(&Connect::v3("late").bytes());
    assert_eq!(late.next().connack(false).code, 0);
    assert_eq!(b.closed("connect_timeout"), 0);
}

#[test]
fn clean_session_v3_keeps_or_discards_the_session_mqtt_3_1_2_4_and_3_1_2_6() {
    let b = start("");
    let (mut c, ack) = Raw::connect_ok(b.v3, &Connect::v3("cs").clean(false));
    assert!(!ack.session_present, "no session yet [MQTT-3.2.2-3]");
    c.sub("cs/t", 1);
    c.disconnect();
    let mut p = Raw::v3(b.v3, "cs-pub");
    p.pub1("cs/t", b"while away");
    // Resumed: session present, the subscription and the queued message are there.
    let (mut c, ack) = Raw::connect_ok(b.v3, &Connect::v3("cs").clean(false));
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    assert_eq!(c.recv_publish_ack().payload, b"while away");
    c.disconnect();
    // Clean session 1 discards it: no session present, no subscription left.
    let (mut c, ack) = Raw::connect_ok(b.v3, &Connect::v3("cs").clean(true));
    assert!(!ack.session_present, "[MQTT-3.2.2-1]");
    p.pub1("cs/t", b"nobody");
    c.sub("cs/other", 1);
    p.pub1("cs/other", b"sentinel");
    assert_eq!(c.recv_publish_ack().payload, b"sentinel");
    c.disconnect();
    // And a clean-session session does not outlive its connection [MQTT-3.1.2-6].
    let (_c, ack) = Raw::connect_ok(b.v3, &Connect::v3("cs").clean(false));
    assert!(!ack.session_present);
}

#[test]
fn clean_start_v5_discards_an_existing_session_mqtt_3_1_2_4() {
    let b = start("");
    let expiry = P::new().u32(prop::SESSION_EXPIRY, 60);
    let (mut c, _) = Raw::connect_ok(b.v5, &Connect::v5("cst").clean(false).props(expiry.clone()));
    c.sub("cst/t", 1);
    c.disconnect();
    let (c, ack) = Raw::connect_ok(b.v5, &Connect::v5("cst").clean(false).props(expiry.clone()));
    assert!(ack.session_present, "5.0 [MQTT-3.2.2-3]");
    c.disconnect();
    let (mut c, ack) = Raw::connect_ok(b.v5, &Connect::v5("cst").clean(true).props(expiry));
    assert!(!ack.session_present, "5.0 [MQTT-3.2.2-2]");
    let mut p = Raw::v5(b.v5, "cst-pub");
    assert_eq!(
        p.pub1("cst/t", b"x"),
        0x10,
        "no subscription left: No matching subscribers"
    );
    c.ping();
}

#[test]
fn session_expiry_v5_zero_ends_the_session_and_n_keeps_it_mqtt_3_1_2_23() {
    let b = start("");
    // Expiry 0 (explicit): the session ends with the connection.
    let zero = Connect::v5("exp0")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 0));
    let (mut c, _) = Raw::connect_ok(b.v5, &zero);
    c.sub("exp/t", 1);
    c.disconnect();
    let (c, ack) = Raw::connect_ok(b.v5, &zero);
    assert!(!ack.session_present);
    c.disconnect();
    // Expiry 60: kept.
    let n = Connect::v5("exp60")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut c, _) = Raw::connect_ok(b.v5, &n);
    c.sub("exp/t", 1);
    c.disconnect();
    assert_eq!(b.value("sessions"), 1, "only exp60 is held");
    let (mut c, ack) = Raw::connect_ok(b.v5, &n);
    assert!(ack.session_present);
    let mut p = Raw::v5(b.v5, "exp-pub");
    p.pub1("exp/t", b"kept");
    assert_eq!(c.recv_publish_ack().payload, b"kept");
}

#[test]
fn session_expiry_v5_absent_with_clean_start_0_uses_the_default() {
    let b = start("session: { default_expiry_interval: 1 }");
    let c = Connect::v5("dflt").clean(false);
    let (s, _) = Raw::connect_ok(b.v5, &c);
    s.disconnect();
    // Not 0: the session outlives the connection...
    let (s, ack) = Raw::connect_ok(b.v5, &c);
    assert!(
        ack.session_present,
        "default_expiry_interval applies, not 0"
    );
    s.disconnect();
    // ...for about default_expiry_interval (1 s), then it expires.
    b.wait_value("sessions_expired_total", |n| n == 1);
    assert_eq!(b.value("sessions"), 0);
    let (_s, ack) = Raw::connect_ok(b.v5, &c);
    assert!(!ack.session_present);
}

#[test]
fn max_sessions_refuses_v5_with_0x97_and_v3_with_return_code_3() {
    let b = start("session: { max_sessions: 2 }");
    let _a = Raw::v5(b.v5, "s1");
    let _b = Raw::v3(b.v3, "s2");
    let (mut c, ack) = Raw::connect(b.v5, &Connect::v5("s3"));
    assert_eq!(ack.code, 0x97, "Quota exceeded");
    c.expect_closed_silently();
    let (mut c, ack) = Raw::connect(b.v3, &Connect::v3("s4"));
    assert_eq!(ack.code, 3, "Server unavailable");
    c.expect_closed_silently();
    assert_eq!(b.closed("connect_refused"), 2);
    // An existing session can still be resumed (taken over) at the cap.
    let _a2 = Raw::v5(b.v5, "s1");
}

#[test]
fn will_refusals_at_connect_mqtt_3_2_2_12() {
    let b = start("broker: { max_qos: 1 }");
    // Will QoS above the server's maximum: 0x9B [MQTT-3.2.2-12].
    let w = WillSpec {
        qos: 2,
        ..WillSpec::new("will/t", b"x")
    };
    let (mut c, ack) = Raw::connect(b.v5, &Connect::v5("wq").will(w.clone()));
    assert_eq!(ack.code, 0x9B);
    c.expect_closed_silently();
    // 3.1.1 has no such code: return code 3 (server unavailable), then close.
    let (mut c, ack) = Raw::connect(b.v3, &Connect::v3("wq3").will(w));
    assert_ne!(ack.code, 0);
    c.expect_closed_silently();
    // A wildcard in the will topic: 0x90 Topic Name invalid (a will topic is a topic name [MQTT-3.3.2-2]).
    let (mut c, ack) = Raw::connect(b.v5, &Connect::v5("wt").will(WillSpec::new("will/#", b"x")));
    assert_eq!(ack.code, 0x90);
    c.expect_closed_silently();
    assert_eq!(b.value("sessions"), 0);
}

#[test]
fn a_will_over_max_message_size_is_refused_retained_or_not() {
    let b = start("broker: { max_message_size: 1024 }");
    let big = vec![b'x'; 2000];
    // Not retained: still a message over the cap, refused with 0x95 Packet too large.
    let (mut c, ack) = Raw::connect(b.v5, &Connect::v5("wb").will(WillSpec::new("will/t", &big)));
    assert_eq!(ack.code, 0x95);
    c.expect_closed_silently();
    // Within the cap: accepted.
    let (_ok, ack) = Raw::connect(
        b.v5,
        &Connect::v5("ws").will(WillSpec::new("will/t", &big[..1000])),
    );
    assert_eq!(ack.code, 0);
}
