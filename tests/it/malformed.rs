//! Malformed and forbidden input. Each test keeps a well-behaved client (`Echo`) publishing
//! and receiving on the same broker before and after every bad packet: one bad client
//! never takes the broker down.

use crate::common::*;

/// A connected raw client of either version.
fn client(b: &Broker, v5: bool, id: &str) -> Raw {
    if v5 {
        Raw::v5(b.v5, id)
    } else {
        Raw::v3(b.v3, id)
    }
}

/// Send `bytes` after CONNECT: v5 gets DISCONNECT `code` then close, v3 just a close.
fn refused(b: &Broker, echo: &mut Echo, v5: bool, bytes: &[u8], code: u8) {
    echo.roundtrip();
    let mut c = client(b, v5, if v5 { "bad5" } else { "bad3" });
    c.send(bytes);
    if v5 {
        let (got, _) = c.expect_disconnect();
        assert_eq!(got, code, "DISCONNECT reason for {bytes:02x?}");
    } else {
        c.expect_closed_silently();
    }
    echo.roundtrip();
}

#[test]
fn remaining_length_of_five_bytes_or_not_minimal_is_malformed_mqtt_1_5_5_1() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    refused(&b, &mut echo, true, &bad, 0x81);
    refused(&b, &mut echo, false, &bad, 0x81);
    // Before CONNECT as well.
    let mut c = Raw::tcp(b.v5);
    c.send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    c.expect_closed_silently();
    // And a length not in its shortest form [MQTT-1.5.5-1].
    refused(&b, &mut echo, true, &[0xC0, 0x80, 0x00], 0x81);
    assert_eq!(b.closed("malformed_packet"), 4);
}

#[test]
fn invalid_utf8_in_a_topic_is_malformed_mqtt_1_5_4_1() {
    let b = start("");
    let mut echo = Echo::new(b.v3, false, "e");
    for (v5, code) in [(true, 0x81), (false, 0)] {
        refused(
            &b,
            &mut echo,
            v5,
            &Pub::new("", b"x").raw_topic(&[b'a', 0xC3, 0x28]).bytes(v5),
            code,
        );
        // A UTF-16 surrogate encoded in UTF-8 is not allowed either.
        refused(
            &b,
            &mut echo,
            v5,
            &Pub::new("", b"x").raw_topic(&[0xED, 0xA0, 0x80]).bytes(v5),
            code,
        );
        // Nor U+0000 [MQTT-1.5.4-2].
        refused(
            &b,
            &mut echo,
            v5,
            &Pub::new("", b"x").raw_topic(b"a\0b").bytes(v5),
            code,
        );
    }
    // In a SUBSCRIBE filter too.
    let mut sub = Vec::new();
    sub.extend_from_slice(&1u16.to_be_bytes());
    sub.push(0); // no properties
    put_bin(&mut sub, &[0xFF, 0xFE]);
    sub.push(0);
    refused(&b, &mut echo, true, &frame(0x82, &sub), 0x81);
    assert_eq!(b.closed("malformed_packet"), 7);
}

#[test]
fn wildcard_in_a_publish_topic_mqtt_3_3_2_2() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    let mut s = Raw::v5(b.v5, "wild-sub");
    s.sub("#", 0);
    for topic in ["a/+", "a/#", "+"] {
        refused(
            &b,
            &mut echo,
            true,
            &Pub::new(topic, b"x").bytes(true),
            0x90,
        );
        refused(&b, &mut echo, false, &Pub::new(topic, b"x").bytes(false), 0);
    }
    assert_eq!(b.closed("protocol_error"), 6);
    // None of them was routed: the first thing `#` sees is the echo traffic.
    let m = s.recv_publish();
    assert!(m.topic.starts_with("echo/"), "{m:?}");
}

#[test]
fn packet_over_the_announced_maximum_packet_size() {
    let b = start("broker: { max_message_size: 1024 }");
    let mut echo = Echo::new(b.v5, true, "e");
    // 70,000 bytes > 1024 + 1024: refused from the header, the body never sent.
    let header = [0x30, 0xF0, 0xA2, 0x04];
    refused(&b, &mut echo, true, &header, 0x95);
    refused(&b, &mut echo, false, &header, 0);
    assert_eq!(b.closed("packet_too_large"), 2);
}

#[test]
fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    let mut qos3 = Pub::new("a/b", b"x").qos(2, 1).bytes(true);
    qos3[0] |= 0x06;
    refused(&b, &mut echo, true, &qos3, 0x81);
    let mut qos3 = Pub::new("a/b", b"x").qos(2, 1).bytes(false);
    qos3[0] |= 0x06;
    refused(&b, &mut echo, false, &qos3, 0);
    // DUP on QoS 0 is malformed too [MQTT-3.3.1-2].
    refused(
        &b,
        &mut echo,
        true,
        &Pub::new("a/b", b"x").dup().bytes(true),
        0x81,
    );
    assert_eq!(b.closed("malformed_packet"), 3);
}

#[test]
fn a_packet_before_connect_closes_the_connection_mqtt_3_1_0_1() {
    let b = start("");
    let mut echo = Echo::new(b.v3, false, "e");
    for addr in [b.v3, b.v5] {
        for first in [
            PINGREQ.to_vec(),
            subscribe(false, 1, &P::new(), &[("a", 0)]),
        ] {
            let mut c = Raw::tcp(addr);
            c.send(&first);
            c.expect_closed_silently();
            echo.roundtrip();
        }
    }
    assert_eq!(b.closed("protocol_error"), 4);
    assert_eq!(b.value("sessions"), 1, "only the echo client's");
}

#[test]
fn a_second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    refused(&b, &mut echo, true, &Connect::v5("again").bytes(), 0x82);
    refused(&b, &mut echo, false, &Connect::v3("again").bytes(), 0);
    assert_eq!(b.closed("protocol_error"), 2);
}

#[test]
fn subscribe_with_wrong_reserved_flags_is_malformed_mqtt_3_8_1_1() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    for v5 in [true, false] {
        let mut bad = subscribe(v5, 1, &P::new(), &[("a/b", 1)]);
        bad[0] = 0x80; // 0x82 required
        refused(&b, &mut echo, v5, &bad, 0x81);
    }
    // UNSUBSCRIBE and PUBREL have the same rule [MQTT-3.10.1-1], [MQTT-3.6.1-1].
    let mut bad = unsubscribe(true, 1, &["a/b"]);
    bad[0] = 0xA0;
    refused(&b, &mut echo, true, &bad, 0x81);
    refused(&b, &mut echo, true, &frame(0x60, &1u16.to_be_bytes()), 0x81);
    assert_eq!(b.closed("malformed_packet"), 4);
}

#[test]
fn subscribe_without_filters_is_refused_mqtt_3_8_3_3() {
    let b = start("");
    let mut echo = Echo::new(b.v3, false, "e");
    // 3.1.1: packet id only.
    refused(&b, &mut echo, false, &[0x82, 0x02, 0x00, 0x01], 0);
    // 5.0: packet id and an empty property list [MQTT-3.8.3-2]: Protocol Error.
    refused(&b, &mut echo, true, &[0x82, 0x03, 0x00, 0x01, 0x00], 0x82);
    assert_eq!(b.closed("protocol_error"), 2);
}

#[test]
fn garbage_and_truncated_packets() {
    let b = start("");
    let mut echo = Echo::new(b.v5, true, "e");
    // Reserved packet type 0.
    refused(&b, &mut echo, true, &[0x00, 0x00], 0x81);
    // A PUBLISH whose topic length runs past the packet.
    refused(&b, &mut echo, true, &[0x30, 0x03, 0x00, 0x09, b'a'], 0x81);
    // A property the packet may not carry (Session Expiry in PUBLISH; 5.0 §2.2.2.2).
    refused(
        &b,
        &mut echo,
        true,
        &Pub::new("a", b"x")
            .props(P::new().u32(prop::SESSION_EXPIRY, 1))
            .bytes(true),
        0x81,
    );
    // Packet id 0 [MQTT-2.2.1-3].
    refused(
        &b,
        &mut echo,
        true,
        &Pub::new("a", b"x").qos(1, 0).bytes(true),
        0x82,
    );
    // An HTTP request line as a first packet ('G' reads as a PUBACK header): closed once
    // the frame it announces is complete.
    let mut c = Raw::tcp(b.v3);
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    http.resize(2 + usize::from(b'E'), b' ');
    c.send(&http);
    c.expect_closed_silently();
    echo.roundtrip();
}
