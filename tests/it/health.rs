//! The health listener: `/health`, `/ready`, `/metrics`, 404 for anything else.

use crate::common::*;

#[test]
fn health_is_200_healthy() {
    let b = start("");
    let (status, head, body) = http_get_full(b.health, "/health");
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"status":"healthy"}"#);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
}

#[test]
fn ready_is_200_ready() {
    let b = start("");
    let (status, body) = http_get(b.health, "/ready");
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ready""#), "{body}");
}

#[test]
fn metrics_has_the_gauges_and_counters_and_they_move() {
    let b = start("");
    let (status, head, text) = http_get_full(b.health, "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"), "{head}");
    for gauge in [
        "connections",
        "sessions",
        "sessions_connected",
        "subscriptions",
        "retained_messages",
        "retained_bytes",
        "queued_messages",
    ] {
        assert!(
            text.contains(&format!(
                "# TYPE fluxmq_edge_{gauge} gauge\nfluxmq_edge_{gauge} 0\n"
            )),
            "gauge {gauge} in:\n{text}"
        );
    }
    for counter in [
        "connections_accepted_total",
        "messages_received_total",
        "messages_delivered_total",
        "bytes_received_total",
        "bytes_sent_total",
        "subscribe_refused_total",
        "sessions_expired_total",
        "wills_published_total",
        "retransmissions_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE fluxmq_edge_{counter} counter\n")),
            "counter {counter}"
        );
    }
    for reason in [
        "queue_full",
        "slow_subscriber_qos0",
        "expired",
        "client_max_packet_size",
    ] {
        assert!(
            text.contains(&format!("{} 0\n", dropped_series(reason))),
            "{reason}"
        );
    }
    for reason in [
        "listener_full",
        "keep_alive_timeout",
        "slow_consumer",
        "server_shutdown",
    ] {
        assert!(
            text.contains(&format!("{} 0\n", closed_series(reason))),
            "{reason}"
        );
    }
    // Traffic moves them.
    let mut s = Raw::v5(b.v5, "m-sub");
    s.sub("m/#", 1);
    let mut p = Raw::v3(b.v3, "m-pub");
    p.pub1_with(Pub::new("m/t", b"12345").retain());
    s.recv_publish_ack();
    s.ping();
    let m = b.metrics();
    let get = |name: &str| {
        m.iter()
            .find(|(s, _)| s == &format!("fluxmq_edge_{name}"))
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(get("connections"), 2);
    assert_eq!(get("sessions"), 2);
    assert_eq!(get("sessions_connected"), 2);
    assert_eq!(get("subscriptions"), 1);
    assert_eq!(get("retained_messages"), 1);
    assert!(get("retained_bytes") >= 5 + 3);
    assert_eq!(get("connections_accepted_total"), 2);
    assert_eq!(get("messages_received_total"), 1);
    assert_eq!(get("messages_delivered_total"), 1);
    assert!(get("bytes_received_total") > 0 && get("bytes_sent_total") > 0);
}

#[test]
fn unknown_path_is_404() {
    let b = start("");
    let (status, _) = http_get(b.health, "/nope");
    assert_eq!(status, 404);
    let (status, _) = http_get(b.health, "/health/extra");
    assert_eq!(status, 404);
}

#[test]
fn stop_sends_0x8b_and_closes_every_client() {
    // The in-process twin of the SIGTERM test in `process.rs`.
    let b = start("");
    let mut c5 = Raw::v5(b.v5, "stop5");
    let mut c3 = Raw::v3(b.v3, "stop3");
    c5.ping();
    c3.ping();
    b.stop();
    let (code, _) = c5.expect_disconnect();
    assert_eq!(code, 0x8B, "Server shutting down");
    c3.expect_closed_silently();
}
