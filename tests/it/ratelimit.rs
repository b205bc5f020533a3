//! Rate limiting (`ratelimit.*`, spec §5 extended) over real sockets: connections per source
//! IP (refused before CONNACK, other IPs served, the IP map capped), messages and
//! subscriptions per client (what MQTT 3.1.1 and 5 clients see), and a live reload that
//! changes the limit of a connected client. Rates are tiny (one token per 100 s) wherever a
//! refill during the test would change the outcome, so nothing depends on timing.

use std::net::{IpAddr, Ipv4Addr};

use crate::common::*;

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

const REFUSED_CONN: &str =
    "fluxmq_edge_ratelimit_refused_total{limit=\"connection\",protocol=\"mqtt\"}";
const REFUSED_MSG: &str =
    "fluxmq_edge_ratelimit_refused_total{limit=\"message\",protocol=\"mqtt\"}";
const REFUSED_SUB: &str =
    "fluxmq_edge_ratelimit_refused_total{limit=\"subscribe\",protocol=\"mqtt\"}";

#[test]
fn connection_burst_from_one_ip_is_closed_before_connack_while_another_ip_is_served() {
    let b = start(
        "ratelimit: { enabled: true, connection: { rate: 0.01, burst: 3 }, \
         message: { enabled: false }, subscribe: { enabled: false } }",
    );
    let a = ip(0, 0, 2);
    let mut kept = Vec::new();
    for n in 0..3 {
        let (c, ack) = Raw::connect_from(a, b.v5, &Connect::v5(&format!("a{n}")))
            .expect("within the burst: served");
        assert_eq!(ack.code, 0);
        kept.push(c);
    }
    // The fourth connection from the same IP is closed with nothing written, on both
    // listeners (one bucket per IP, not per listener).
    assert!(Raw::connect_from(a, b.v5, &Connect::v5("a3")).is_none());
    assert!(Raw::connect_from(a, b.v3, &Connect::v3("a4")).is_none());
    // Another IP is served meanwhile, and the clients of the first keep working.
    let (mut other, ack) =
        Raw::connect_from(ip(0, 0, 3), b.v5, &Connect::v5("b0")).expect("another IP");
    assert_eq!(ack.code, 0);
    other.ping();
    for c in &mut kept {
        c.ping();
    }
    assert_eq!(b.metric(REFUSED_CONN), 2);
    // Refused before the connection is counted or takes a listener slot.
    assert_eq!(b.value("connections_accepted_total"), 4);
    assert_eq!(b.value("connections"), 4);
    assert_eq!(b.closed("listener_full"), 0);
    assert_eq!(b.value("ratelimit_tracked_ips"), 2);
}

#[test]
fn v5_publisher_over_its_rate_gets_0x97_and_stays_connected() {
    let b = start(
        "ratelimit: { enabled: true, connection: { enabled: false }, \
         message: { rate: 0.01, burst: 3 } }",
    );
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("t/#", 1);
    let mut p = Raw::v5(b.v5, "pub");
    for i in 0..3 {
        assert_eq!(p.pub1(&format!("t/{i}"), b"in"), 0, "within the burst");
    }
    // QoS 1: PUBACK 0x97 (Quota exceeded).
    assert_eq!(p.pub1("t/x1", b"over"), 0x97);
    // QoS 2: PUBREC 0x97; the flow ends there (a PUBREL finds no such packet id).
    let id = p.id();
    p.send(&Pub::new("t/x2", b"over").qos(2, id).bytes(true));
    assert_eq!(p.expect(kind::PUBREC).ack(), (id, 0x97));
    p.send(&pubrel(id));
    assert_eq!(p.expect(kind::PUBCOMP).ack(), (id, 0x92));
    // QoS 0: dropped and counted; the connection stays.
    p.pub0("t/x0", b"over");
    p.ping();
    assert_eq!(b.metric(REFUSED_MSG), 3);
    assert_eq!(b.dropped("rate_limited"), 3);
    // The subscriber got the three within the burst and nothing else.
    for i in 0..3 {
        assert_eq!(sub.recv_publish_ack().topic, format!("t/{i}"));
    }
    sub.expect_nothing(std::time::Duration::from_millis(200));
    assert_eq!(b.closed("rate_limited"), 0);
    assert_eq!(b.value("connections"), 2);
}

#[test]
fn a_well_behaved_client_is_served_while_another_floods() {
    let b = start(
        "ratelimit: { enabled: true, connection: { enabled: false }, \
         message: { rate: 0.01, burst: 50 } }",
    );
    // A raw MQTT 5 client floods: 200 QoS 1 PUBLISH in one write.
    let mut flood = Raw::v5(b.v5, "flood");
    let mut burst = Vec::new();
    for i in 1..=200u16 {
        burst.extend(Pub::new("flood/x", b"x").qos(1, i).bytes(true));
    }
    flood.send(&burst);
    // A well-behaved client (rumqttc, MQTT 5) on the same broker: each of its round trips
    // (QoS 1 publish to its own subscription, delivered back) succeeds while the flood is
    // refused; it has a bucket of its own (50; it uses 30).
    let calm = V5::new(b.v5, "calm");
    assert_eq!(calm.subscribe("calm/t", Q5::AtLeastOnce).len(), 1);
    for i in 0..30 {
        let payload = format!("m{i}");
        calm.c
            .publish("calm/t", Q5::AtLeastOnce, false, payload.clone())
            .unwrap();
        let got = calm.recv_publish();
        assert_eq!(got.payload, payload.as_bytes());
    }
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..200 {
        *codes.entry(flood.expect(kind::PUBACK).ack().1).or_insert(0) += 1;
    }
    assert_eq!(codes, [(0x10, 50), (0x97, 150)].into_iter().collect());
    assert_eq!(b.metric(REFUSED_MSG), 150);
    // Both still connected.
    flood.ping();
    assert_eq!(b.value("connections"), 2);
    assert_eq!(b.closed("rate_limited"), 0);
}

#[test]
fn v3_qos0_over_the_limit_is_dropped_and_qos1_closes_the_connection() {
    let b = start(
        "ratelimit: { enabled: true, connection: { enabled: false }, \
         message: { rate: 0.01, burst: 2 } }",
    );
    let mut sub = Raw::v3(b.v3, "sub");
    sub.sub("t/#", 0);
    let mut p = Raw::v3(b.v3, "pub");
    p.pub0("t/1", b"a");
    p.pub0("t/2", b"b");
    p.pub0("t/3", b"dropped");
    p.ping(); // still connected
    assert_eq!(sub.recv_publish().topic, "t/1");
    assert_eq!(sub.recv_publish().topic, "t/2");
    assert_eq!(b.dropped("rate_limited"), 1);
    // 3.1.1 cannot refuse a QoS 1 PUBLISH: the connection is closed, nothing written.
    let id = p.id();
    p.send(&Pub::new("t/4", b"over").qos(1, id).bytes(false));
    p.expect_closed_silently();
    b.wait_closed("rate_limited", 1);
    assert_eq!(b.metric(REFUSED_MSG), 2);
    sub.expect_nothing(std::time::Duration::from_millis(200));
}

#[test]
fn subscribe_over_the_limit_is_refused_per_entry_0x97_v5_0x80_v3() {
    let b = start(
        "ratelimit: { enabled: true, connection: { enabled: false }, \
         subscribe: { rate: 0.01, burst: 2 } }",
    );
    let mut c5 = Raw::v5(b.v5, "s5");
    assert_eq!(
        c5.subscribe_many(&[("a/1", 1), ("a/2", 1), ("a/3", 1)], &P::new()),
        [1, 1, 0x97]
    );
    assert_eq!(c5.subscribe_opts("a/4", 0, &P::new()), [0x97]);
    let mut c3 = Raw::v3(b.v3, "s3");
    assert_eq!(
        c3.subscribe_many(&[("b/1", 0), ("b/2", 2), ("b/3", 1)], &P::new()),
        [0, 2, 0x80]
    );
    assert_eq!(b.metric(REFUSED_SUB), 3);
    // The refused entries were not subscribed; the granted ones were.
    let mut p = Raw::v5(b.v5, "p");
    for t in ["a/3", "a/4", "b/3", "a/1", "b/1"] {
        p.pub0(t, t.as_bytes());
    }
    assert_eq!(c5.recv_publish().topic, "a/1");
    assert_eq!(c3.recv_publish().topic, "b/1");
    c5.expect_nothing(std::time::Duration::from_millis(200));
    c3.expect_nothing(std::time::Duration::from_millis(10));
    assert_eq!(b.value("subscriptions"), 4);
}

#[test]
fn the_ip_map_stays_at_its_cap_under_many_source_addresses() {
    // Cap 8. Every IP's bucket stays in debt for 100 s, so none can be forgotten: IPs
    // beyond the cap share one overflow bucket of burst 2.
    let b = start(
        "ratelimit: { enabled: true, connection: { rate: 0.01, burst: 2, max_tracked_ips: 8 }, \
         message: { enabled: false }, subscribe: { enabled: false } }",
    );
    let mut served = 0;
    for n in 1..=40u8 {
        if let Some((c, ack)) = Raw::connect_from(ip(0, 1, n), b.v3, &Connect::v3(&format!("c{n}")))
        {
            assert_eq!(ack.code, 0);
            served += 1;
            c.disconnect();
        }
        assert!(b.value("ratelimit_tracked_ips") <= 8);
    }
    assert_eq!(served, 8 + 2, "8 tracked IPs + the overflow bucket's burst");
    assert_eq!(b.value("ratelimit_tracked_ips"), 8);
    assert_eq!(b.value("ratelimit_ip_overflow_total"), 32);
    assert_eq!(b.metric(REFUSED_CONN), 30);
    // A tracked IP still has its own bucket (one token left).
    assert!(Raw::connect_from(ip(0, 1, 1), b.v3, &Connect::v3("again")).is_some());
    assert!(Raw::connect_from(ip(0, 1, 1), b.v3, &Connect::v3("again")).is_none());
}

#[test]
fn reload_changes_the_limit_of_a_connected_client_without_reconnecting() {
    let dir = std::env::temp_dir().join(format!("fluxmq-edge-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.yaml");
    let write = |message: &str| {
        std::fs::write(
            &file,
            format!(
                "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  \
                 health_addr: \"127.0.0.1:0\"\n\
                 ratelimit: {{ enabled: true, message: {message} }}\n"
            ),
        )
        .unwrap();
    };
    write("{ rate: 0.01, burst: 2 }");
    let b = start_files(std::slice::from_ref(&file));
    let mut p = Raw::v5(b.v5, "p");
    assert_eq!(p.pub1("t", b"1"), 0x10);
    assert_eq!(p.pub1("t", b"2"), 0x10);
    assert_eq!(p.pub1("t", b"3"), 0x97);

    // A larger bucket at the same rate: the two tokens used are kept, eight are left.
    write("{ rate: 0.01, burst: 10 }");
    b.reload();
    for _ in 0..8 {
        assert_eq!(p.pub1("t", b"4"), 0x10);
    }
    assert_eq!(p.pub1("t", b"5"), 0x97);

    // A far higher rate: the debt is capped at an empty bucket of the new quota (100 ms),
    // and the same connection publishes again.
    write("{ rate: 1000, burst: 100 }");
    b.reload();
    wait_for("a publish within the new limit", T, || {
        (p.pub1("t", b"6") == 0x10).then_some(())
    });

    // Lowered again: the limit applies to the same connection (after at most one burst).
    write("{ rate: 0.01, burst: 1 }");
    b.reload();
    let codes: Vec<u8> = (0..3).map(|_| p.pub1("t", b"7")).collect();
    assert_eq!(codes[2], 0x97, "{codes:?}");

    // Switched off: everything passes.
    write("{ enabled: false }");
    b.reload();
    for _ in 0..10 {
        assert_eq!(p.pub1("t", b"7"), 0x10);
    }
    p.ping();
    assert_eq!(
        b.value("connections_accepted_total"),
        1,
        "never reconnected"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "http")]
#[test]
fn http_publish_over_the_limit_gets_429_with_retry_after_on_its_connection() {
    let (b, http) = crate::http::start_http(
        "",
        "ratelimit: { enabled: true, connection: { enabled: false }, \
         message: { rate: 0.01, burst: 2 } }",
    );
    // ureq keeps the connection alive between requests: one connection, one bucket.
    let agent = crate::http::agent();
    let post = |n: u32| {
        agent
            .post(format!("http://{http}/publish"))
            .header("Content-Type", "application/json")
            .send(format!(r#"{{"topic":"t/{n}","payload":"eA=="}}"#).as_bytes())
            .expect("HTTP request")
    };
    for n in 1..=2 {
        let mut r = post(n);
        assert_eq!(r.status().as_u16(), 200);
        // Read to the end, so that ureq can reuse the connection.
        r.body_mut().read_to_string().unwrap();
    }
    let mut refused = post(3);
    assert_eq!(refused.status().as_u16(), 429);
    // One token every 100 s: retry in 100 s.
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("100")
    );
    assert_eq!(
        refused.body_mut().read_to_string().unwrap(),
        "rate limit exceeded"
    );
    assert_eq!(
        b.metric("fluxmq_edge_ratelimit_refused_total{limit=\"message\",protocol=\"http\"}"),
        1
    );
    assert_eq!(
        b.metric("fluxmq_edge_http_responses_total{status=\"429\"}"),
        1
    );
}

#[cfg(feature = "http")]
#[test]
fn http_connections_over_the_ip_limit_are_closed_before_any_answer() {
    let (b, http) = crate::http::start_http(
        "",
        "ratelimit: { enabled: true, connection: { rate: 0.01, burst: 2 } }",
    );
    let get = |src: IpAddr| {
        use std::io::{Read, Write};
        let mut c = tcp_from(src, http);
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got); // EOF or reset
        String::from_utf8_lossy(&got).into_owned()
    };
    let a = ip(0, 2, 1);
    assert!(get(a).starts_with("HTTP/1.1 200"));
    assert!(get(a).starts_with("HTTP/1.1 200"));
    assert_eq!(get(a), "", "closed with nothing written");
    assert!(get(ip(0, 2, 2)).starts_with("HTTP/1.1 200"), "another IP");
    assert_eq!(
        b.metric("fluxmq_edge_ratelimit_refused_total{limit=\"connection\",protocol=\"http\"}"),
        1
    );
}
