//! The HTTP publish bridge (spec §6.3) with a real HTTP client (ureq): routes, every status
//! code, the bounds (body, header, connections, read timeout), and a publish reaching an
//! MQTT subscriber with its content type and origin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::*;

/// A broker with the test listeners plus `server.http.plain` (`http` = extra keys of that
/// slot) and `extra` top-level sections.
pub fn start_http(http: &str, extra: &str) -> (Broker, SocketAddr) {
    let b = start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  http: {{ plain: {{ addr: \"127.0.0.1:0\" {http} }} }}\n{extra}\n"
    ));
    let addr = b.addr("server.http.plain");
    (b, addr)
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(T))
        .build()
        .new_agent()
}

/// POST `body` to `path` with `headers`: (status, body).
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut req = agent().post(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().expect("body"))
}

fn status_count(b: &Broker, status: &str) -> u64 {
    b.metric(&format!(
        "fluxmq_edge_http_responses_total{{status=\"{status}\"}}"
    ))
}

#[test]
fn json_publish_reaches_an_mqtt_subscriber_with_content_type_and_origin() {
    let (b, http) = start_http("", "");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("sensors/#", 1);
    let (status, body) = post(
        http,
        "/publish",
        &[
            ("Content-Type", "application/json"),
            ("X-FluxMQ-Client-ID", "dev-1"),
        ],
        br#"{"topic":"sensors/t1","payload":"MjEuNQ==","qos":1,"retain":false}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let m = sub.recv_publish();
    assert_eq!(m.topic, "sensors/t1");
    assert_eq!(m.payload, b"21.5");
    assert_eq!(m.qos, 1);
    // The request's Content-Type is the message's (0x03); origin as User Properties.
    assert_eq!(m.props.str(0x03), Some("application/json"));
    let pairs = m.props.pairs();
    assert!(
        pairs.contains(&("protocol".into(), "http".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("client_id".into(), "dev-1".into())),
        "{pairs:?}"
    );
    sub.ack_msg(&m);
    assert_eq!(status_count(&b, "200"), 1);
}

#[test]
fn legacy_route_publishes_the_raw_body_with_qos_and_retain() {
    let (b, http) = start_http("", "");
    let (status, _) = post(
        http,
        "/m/dom/c/ch/temp?qos=1&retain=true",
        &[("Content-Type", "text/plain")],
        b"22",
    );
    assert_eq!(status, 200);
    // Retained: a subscriber arriving later gets it, with the client id of the peer.
    let mut sub = Raw::v5(b.v5, "late");
    sub.sub("m/dom/c/#", 1);
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.retain),
        ("m/dom/c/ch/temp", &b"22"[..], true)
    );
    assert_eq!(m.props.str(0x03), Some("text/plain"));
    let client = m
        .props
        .pairs()
        .into_iter()
        .find(|(k, _)| k == "client_id")
        .map(|(_, v)| v)
        .expect("client_id");
    assert!(client.starts_with("http:127.0.0.1:"), "{client}");
}

#[test]
fn v3_subscriber_gets_http_publishes_too() {
    let (b, http) = start_http("", "");
    let mut sub = Raw::v3(b.v3, "v3sub");
    sub.sub("a/b", 0);
    let (status, _) = post(
        http,
        "/publish",
        &[],
        br#"{"topic":"a/b","payload":"aGk="}"#,
    );
    assert_eq!(status, 200);
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("a/b", &b"hi"[..])
    );
}

#[test]
fn health_route_answers_any_method() {
    let (_b, http) = start_http("", "");
    let mut r = agent()
        .get(format!("http://{http}/health"))
        .call()
        .expect("GET /health");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.body_mut().read_to_string().expect("body"),
        r#"{"status":"healthy"}"#
    );
    assert_eq!(post(http, "/health", &[], b"").0, 200);
}

#[test]
fn every_client_error_status_and_its_metric() {
    let (b, http) = start_http("", "broker: { max_message_size: 1024 }");
    let cases: &[(&str, &[u8], u16, &str)] = &[
        ("/publish", b"{not json", 400, "invalid JSON"),
        ("/publish", br#"{"topic":""}"#, 400, "topic is required"),
        (
            "/publish",
            br#"{"topic":"a","qos":3}"#,
            400,
            "qos must be 0, 1 or 2",
        ),
        ("/publish", br#"{"topic":"a/+"}"#, 400, "invalid topic"),
        (
            "/publish",
            br#"{"topic":"a","payload":"%%%"}"#,
            400,
            "base64",
        ),
        ("/m/d/c/x?qos=7", b"v", 400, "qos must be"),
        ("/", b"", 404, "not found"),
        ("/not/magistrala", b"x", 404, "not found"),
    ];
    for (path, body, want, text) in cases {
        let (status, got) = post(http, path, &[], body);
        assert_eq!(status, *want, "{path} {}", String::from_utf8_lossy(body));
        assert!(got.contains(text), "{path}: {got}");
    }
    // 405: a publish route with another method.
    let r = agent()
        .get(format!("http://{http}/publish"))
        .call()
        .expect("GET");
    assert_eq!(r.status().as_u16(), 405);
    let r = agent()
        .put(format!("http://{http}/m/d/c/x"))
        .send(&b"v"[..])
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 405);
    // 413: over broker.max_message_size, raw or base64.
    let (status, _) = post(http, "/m/d/c/x", &[], &[b'x'; 1025]);
    assert_eq!(status, 413);
    let big = format!(r#"{{"topic":"a","payload":"{}"}}"#, "QUFB".repeat(400));
    assert_eq!(post(http, "/publish", &[], big.as_bytes()).0, 413);
    // Exactly the cap is fine.
    assert_eq!(post(http, "/m/d/c/x", &[], &[b'x'; 1024]).0, 200);
    assert_eq!(status_count(&b, "400"), 6);
    assert_eq!(status_count(&b, "404"), 2);
    assert_eq!(status_count(&b, "405"), 2);
    assert_eq!(status_count(&b, "413"), 2);
    assert_eq!(status_count(&b, "200"), 1);
}

#[test]
fn core_refusal_is_500_publish_failed() {
    // The retained store holds one message: a second retained topic is refused by the core.
    let (b, http) = start_http("", "broker: { max_retained_messages: 1 }");
    assert_eq!(post(http, "/m/d/c/one?retain=true", &[], b"1").0, 200);
    let (status, body) = post(http, "/m/d/c/two?retain=true", &[], b"2");
    assert_eq!((status, body.as_str()), (500, "publish failed"));
    assert_eq!(status_count(&b, "500"), 1);
}

#[test]
fn oversized_request_head_is_refused_431() {
    let (b, http) = start_http("", "");
    let big = "v".repeat(20 * 1024);
    let mut s = TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let req =
        format!("POST /publish HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    b.wait_metric("fluxmq_edge_http_responses_total{status=\"431\"}", |n| {
        n == 1
    });
}

#[test]
fn connections_over_max_connections_are_closed() {
    let (b, http) = start_http(", max_connections: 1", "");
    let mut first = TcpStream::connect(http).expect("first");
    first.set_read_timeout(Some(T)).expect("timeout");
    // The first connection is served (keep-alive)...
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // ...the second is closed at once, counted.
    let mut second = TcpStream::connect(http).expect("second");
    second.set_read_timeout(Some(T)).expect("timeout");
    let _ = second.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let n = second.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "second connection closed without a response");
    b.wait_closed("listener_full", 1);
    drop(first);
    // Its slot is freed when it closes.
    wait_for("a slot after the first closed", T, || {
        let r = agent().get(format!("http://{http}/health")).call().ok()?;
        (r.status().as_u16() == 200).then_some(())
    });
}

#[test]
fn idle_and_slow_requests_are_closed_after_read_timeout() {
    let (b, http) = start_http(", read_timeout: 1s", "");
    // A request head that never completes.
    let mut slow = TcpStream::connect(http).expect("connect");
    slow.set_read_timeout(Some(T)).expect("timeout");
    slow.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut buf = [0u8; 256];
    let start = std::time::Instant::now();
    let _ = slow.read(&mut buf);
    assert!(start.elapsed() < T, "closed by the head timeout");
    b.wait_closed("keep_alive_timeout", 1);
    // A body that never completes: 408.
    let mut body = TcpStream::connect(http).expect("connect");
    body.set_read_timeout(Some(T)).expect("timeout");
    body.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"topic\"")
        .expect("write");
    let mut out = String::new();
    let _ = body.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(http).expect("connect");
    idle.set_read_timeout(Some(T)).expect("timeout");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let n = idle.read(&mut buf).expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let start = std::time::Instant::now();
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0, "closed when idle");
    assert!(start.elapsed() < T);
}

/// HTTPS on `server.http.tls` and `server.http.mtls` through the one TLS layer: a rustls
/// client (ring) sends the request; mTLS refuses a client without a certificate.
#[test]
fn publish_over_https_and_mutual_tls() {
    use crate::tls::{BOTH, Pki, client_config, tls_open};
    let pki = Pki::new("http");
    let b = start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  http:\n    tls: {{ {} }}\n    mtls: {{ {} }}\n",
        pki.slot(", client_auth: none"),
        pki.slot(", client_auth: require"),
    ));
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("secure/#", 0);
    let request = |body: &str| {
        format!(
            "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let exchange = |addr, config, body: &str| -> Result<String, String> {
        let (mut tls, _) = tls_open(addr, config)?;
        tls.write_all(request(body).as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    };
    let anon = client_config(&pki.ca.der(), None, BOTH);
    let out = exchange(
        b.addr("server.http.tls"),
        anon.clone(),
        r#"{"topic":"secure/tls","payload":"MQ=="}"#,
    )
    .expect("HTTPS request");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(sub.recv_publish().topic, "secure/tls");
    let with_cert = client_config(&pki.ca.der(), Some(pki.good.client_auth()), BOTH);
    let out = exchange(
        b.addr("server.http.mtls"),
        with_cert,
        r#"{"topic":"secure/mtls","payload":"Mg=="}"#,
    )
    .expect("mTLS request");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(sub.recv_publish().topic, "secure/mtls");
    // No client certificate on the mTLS slot: the handshake (or the first read) fails.
    let refused = exchange(b.addr("server.http.mtls"), anon, r#"{"topic":"secure/x"}"#);
    assert!(
        refused.as_ref().map_or(true, |o| o.is_empty()),
        "{refused:?}"
    );
    sub.expect_nothing(Duration::from_millis(100));
}
