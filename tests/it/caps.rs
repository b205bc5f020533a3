//! Caps driven past their limits: the client-visible outcome and the counter, each time.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn listener_max_connections_closes_the_extra_socket_without_connack() {
    let b = start_yaml(
        r#"
server:
  tcp:
    v3: { addr: "127.0.0.1:0", max_connections: 2 }
    v5: { addr: "127.0.0.1:0" }
  health_addr: "127.0.0.1:0"
"#,
    );
    let c1 = Raw::v3(b.v3, "c1");
    let _c2 = Raw::v3(b.v3, "c2");
    let mut c3 = Raw::tcp(b.v3);
    let _ = c3.try_send(&Connect::v3("c3").bytes()); // may already be closed
    c3.expect_closed_silently();
    assert_eq!(b.closed("listener_full"), 1);
    // The other listener is not affected.
    let _v5 = Raw::v5(b.v5, "v5");
    // A slot frees up when a connection ends.
    c1.disconnect();
    b.wait_value("connections", |n| n == 2);
    let mut c4 = Raw::v3(b.v3, "c4");
    c4.ping();
    assert_eq!(b.closed("listener_full"), 1);
}

#[test]
fn max_subscriptions_refuses_the_third_filter_with_0x97() {
    let b = start("session: { max_subscriptions: 2 }");
    let mut s = Raw::v5(b.v5, "subs");
    assert_eq!(
        s.subscribe_many(&[("a", 1), ("b", 1), ("c", 1)], &P::new()),
        vec![0x01, 0x01, 0x97]
    );
    assert_eq!(b.value("subscribe_refused_total"), 1);
    // Replacing an existing one is not a new subscription.
    assert_eq!(s.subscribe_opts("a", 0, &P::new()), vec![0x00]);
    // 3.1.1: the failure code 0x80.
    let mut s3 = Raw::v3(b.v3, "subs3");
    assert_eq!(
        s3.subscribe_many(&[("a", 0), ("b", 1), ("c", 2)], &P::new()),
        vec![0x00, 0x01, 0x80]
    );
    assert_eq!(b.value("subscribe_refused_total"), 2);
    assert_eq!(b.value("subscriptions"), 4);
    // Unsubscribing makes room.
    s.unsubscribe(&["b"]);
    assert_eq!(s.subscribe_opts("c", 1, &P::new()), vec![0x01]);
}

/// Publish 1 KiB messages in batches to `topic` until `done()` says so (bounded). Each
/// payload starts with its sequence number (8 bytes, big endian). Returns how many.
fn flood(p: &mut Raw, topic: &str, qos: u8, mut done: impl FnMut() -> bool) -> u64 {
    let mut payload = vec![b'x'; 1024];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(20) && sent < 200_000,
            "cap not reached after {sent} messages"
        );
        let mut batch = Vec::new();
        for _ in 0..200 {
            let id = if qos > 0 { p.id() } else { 0 };
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            batch.extend_from_slice(&Pub::new(topic, &payload).qos(qos, id).bytes(p.v5));
            sent += 1;
        }
        p.send(&batch);
        // Drain the publisher's own acks so that it never blocks.
        while let Recv::Packet(_) = p.recv(Duration::from_millis(1)) {}
    }
    sent
}

fn seq(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

#[test]
fn slow_subscriber_loses_its_oldest_qos0_messages() {
    let b = start("session: { max_send_queue_size: 10 }");
    let mut slow = Raw::v5(b.v5, "slow0");
    slow.sub("slow/#", 0);
    let mut p = Raw::v3(b.v3, "p0");
    let metric = dropped_series("slow_subscriber_qos0");
    let sent = flood(&mut p, "slow/t", 0, || b.metric(&metric) > 0);
    let dropped = b.dropped("slow_subscriber_qos0");
    // QoS 0 never disconnects the subscriber. Once it reads: the messages in order, the
    // newest one among them, and exactly the counted number missing (the oldest queued ones).
    p.pub1("slow/end", b"end");
    let mut got = Vec::new();
    loop {
        let m = slow.recv_publish();
        if m.topic == "slow/end" {
            break;
        }
        got.push(seq(&m.payload));
        assert!(got.len() as u64 <= sent, "more than was sent");
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert_eq!(got.last(), Some(&(sent - 1)), "the newest is kept");
    assert_eq!(sent - got.len() as u64, dropped, "every loss counted");
    slow.ping();
    assert_eq!(b.closed("slow_consumer"), 0);
}

#[test]
fn slow_subscriber_at_qos1_is_disconnected_with_0x97() {
    let b = start("session: { max_send_queue_size: 10 }");
    let mut slow = Raw::v5(b.v5, "slow1");
    slow.sub("slow/#", 1);
    // One message at a time (each PUBACK awaited), so that the subscriber's connection gets
    // every chance to take what it can: it fills its in-flight window (256, never acked),
    // then its send queue (10), and the next message finds it full.
    let mut p = Raw::v3(b.v3, "p1");
    let payload = vec![b'x'; 1024];
    let mut sent = 0;
    while b.closed("slow_consumer") == 0 {
        for _ in 0..20 {
            p.pub1("slow/t", &payload);
            sent += 1;
        }
        assert!(sent <= 1000, "not disconnected after {sent} messages");
    }
    assert!(sent > 256 + 10, "disconnected after {sent} messages only");
    // When it finally reads: the in-flight window, then DISCONNECT 0x97, then the end.
    let got = slow.expect_closed();
    let (last, publishes) = got.split_last().expect("packets before the close");
    assert_eq!(last.disconnect().0, 0x97, "Quota exceeded");
    assert_eq!(publishes.len(), 256, "session.max_inflight_messages");
    assert!(publishes.iter().all(|p| p.kind() == kind::PUBLISH));
    // The publisher was not affected.
    p.ping();
    assert_eq!(b.closed("slow_consumer"), 1);
}

#[test]
fn slow_subscriber_at_qos1_with_disconnect_on_full_false_loses_messages_counted() {
    let b = start("session: { max_send_queue_size: 10, disconnect_on_full: false }");
    let mut slow = Raw::v5(b.v5, "slow-keep");
    slow.sub("slow/#", 1);
    let mut p = Raw::v3(b.v3, "p");
    let mut sent = 0u32;
    while b.dropped("queue_full") == 0 {
        for _ in 0..20 {
            sent += 1;
            p.pub1("slow/t", sent.to_string().as_bytes());
        }
        assert!(sent <= 1000, "nothing dropped after {sent} messages");
    }
    // The in-flight window (256) plus the queue held at twice its cap of 10 (a burst).
    assert_eq!(b.dropped("queue_full"), u64::from(sent - 276));
    // Still connected: the in-flight window and the queue arrive in order...
    let got: Vec<u32> = (0..276)
        .map(|_| {
            let m = slow.recv_publish_ack();
            String::from_utf8(m.payload).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(got, (1..=276).collect::<Vec<u32>>());
    // ...and nothing else: the rest was dropped; the next message is a new one.
    p.pub1("slow/end", b"end");
    assert_eq!(slow.recv_publish_ack().topic, "slow/end");
    assert_eq!(b.closed("slow_consumer"), 0);
}

#[test]
fn a_client_overflowing_its_own_queue_in_one_burst_is_disconnected_and_the_broker_lives() {
    // The client is subscribed to what it publishes; one read carries more QoS 2 PUBLISHes
    // than its send queue holds even as a burst (twice the cap of 10). The 21st finds it
    // full and disconnects it as a slow consumer (its session, expiry 0, ends) while the rest of the burst is still being
    // handled: those packets must not touch the ended session.
    let b = start("session: { max_send_queue_size: 10 }");
    let mut echo = Echo::new(b.v3, false, "bystander");
    let mut me = Raw::v5(b.v5, "selfish");
    me.sub("self/#", 1);
    let mut burst = Vec::new();
    for id in 1..=22u16 {
        burst.extend_from_slice(&Pub::new("self/t", b"x").qos(2, id).bytes(true));
    }
    burst.extend_from_slice(&subscribe(true, 23, &P::new(), &[("more/#", 0)]));
    me.send(&burst);
    let got = me.expect_closed();
    let (last, before) = got.split_last().expect("packets before the close");
    assert_eq!(last.disconnect().0, 0x97, "slow consumer: {got:?}");
    assert!(
        before.iter().all(|p| p.kind() == kind::PUBREC),
        "{before:?}"
    );
    assert_eq!(b.closed("slow_consumer"), 1);
    echo.roundtrip();
    assert_eq!(
        b.value("sessions"),
        1,
        "only the bystander's session is left"
    );
}

#[test]
fn a_slow_consumers_will_can_disconnect_another_slow_consumer_and_the_broker_lives() {
    // A and B are subscribed to `t`, never acknowledge, and have full send queues. The next
    // message on `t` disconnects A, whose will (also on `t`) disconnects B, whose session
    // ends, all while that message is still being routed (to B next).
    let b = start("session: { max_send_queue_size: 10 }");
    let slow = |id: &str, will: bool| {
        let mut c = Connect::v5(id).props(P::new().u16(prop::RECEIVE_MAXIMUM, 1));
        if will {
            c = c.will(WillSpec {
                qos: 1,
                ..WillSpec::new("t", b"will of a")
            });
        }
        let (mut r, _) = Raw::connect_ok(b.v5, &c);
        r.sub("t", 1);
        r
    };
    let mut a = slow("a", true); // connected first: routed to first
    let mut bb = slow("b", false);
    let mut echo = Echo::new(b.v3, false, "bystander");
    let mut p = Raw::v3(b.v3, "p");
    // 1 in flight + 20 queued each (twice the cap of 10: the most a burst may hold).
    for i in 0..21 {
        p.pub1("t", format!("{i}").as_bytes());
    }
    b.wait_value("queued_messages", |n| n == 40);
    p.pub1("t", b"one too many");
    for c in [&mut a, &mut bb] {
        let got = c.expect_closed();
        assert_eq!(got.last().unwrap().disconnect().0, 0x97, "{got:?}");
    }
    echo.roundtrip();
    assert_eq!(b.closed("slow_consumer"), 2);
    assert_eq!(b.value("wills_published_total"), 1);
}

#[test]
fn write_timeout_closes_a_subscriber_whose_socket_stays_full() {
    let b = start_yaml(
        r#"
server:
  tcp:
    v3: { addr: "127.0.0.1:0" }
    v5: { addr: "127.0.0.1:0", write_timeout: "1s" }
  health_addr: "127.0.0.1:0"
"#,
    );
    let mut stuck = Raw::v5(b.v5, "stuck");
    stuck.sub("stuck/#", 0);
    let mut p = Raw::v3(b.v3, "p");
    let metric = closed_series("write_timeout");
    // Enough to fill the socket buffers both ways, then wait (bounded) for the timeout.
    flood(&mut p, "stuck/t", 0, || b.metric(&metric) > 0);
    assert_eq!(b.closed("write_timeout"), 1);
    // The publisher was not held up by it.
    p.ping();
    assert_eq!(b.value("connections"), 1);
}

#[test]
fn max_queue_bytes_bounds_an_offline_queue_by_size() {
    let b = start("session: { max_queue_bytes: 8000, offline_queue_policy: evict }");
    let c = Connect::v5("bytes")
        .clean(false)
        .props(P::new().u32(prop::SESSION_EXPIRY, 60));
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    s.sub("qb/#", 1);
    s.disconnect();
    let mut p = Raw::v5(b.v5, "p");
    for i in 0..10 {
        p.pub1("qb/t", &[b'0' + i; 1500]);
    }
    let evicted = b.dropped("offline_queue_evicted");
    assert!(
        evicted >= 5,
        "at most 5 messages of 1.5 KB fit in 8000 bytes: {evicted}"
    );
    let kept = b.value("queued_messages");
    assert_eq!(kept + evicted, 10);
    // One message larger than the whole cap is refused outright.
    p.pub1("qb/t", &[b'x'; 9000]);
    assert_eq!(b.dropped("queue_full"), 1);
    let (mut s, _) = Raw::connect_ok(b.v5, &c);
    let got: Vec<u8> = (0..kept).map(|_| s.recv_publish_ack().payload[0]).collect();
    let want: Vec<u8> = (10 - kept as u8..10).map(|i| b'0' + i).collect();
    assert_eq!(got, want, "the newest kept");
}

#[test]
// A burst is held up to twice the queue cap while the subscriber drains it: only a
// queue that stays over its cap (5 s) or reaches twice it makes a slow consumer.
fn a_burst_larger_than_the_send_queue_does_not_disconnect_a_healthy_subscriber() {
    let b = start("");
    let mut s = Raw::v5(b.v5, "healthy");
    s.sub("burst/#", 1);
    let mut p = Raw::v3(b.v3, "p");
    let mut burst = Vec::new();
    for id in 1..=1100u16 {
        burst.extend_from_slice(&Pub::new("burst/t", b"x").qos(1, id).bytes(false));
    }
    p.send(&burst);
    for _ in 0..1100 {
        s.recv_publish_ack(); // a subscriber that reads and acknowledges as fast as it can
    }
    s.ping();
    assert_eq!(b.closed("slow_consumer"), 0);
}
