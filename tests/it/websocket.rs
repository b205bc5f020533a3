//! MQTT over WebSocket (`server.websocket.*`): rumqttc's WebSocket transport for publish and
//! subscribe (v3.1.1 and v5), tungstenite as a raw frame-level client (packets split across
//! frames or sharing one, oversize and text frames, ping, close), and raw HTTP for the
//! upgrade rules (path 404, origin 403, non-upgrade 400). Every refusal is counted.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{Message, WebSocket};

use crate::common::*;

const V3: &str = "server.websocket.v3";
const V5: &str = "server.websocket.v5";

/// A broker with TCP v3/v5 and WebSocket v3/v5 listeners; `ws_v3` is the extra YAML of the
/// v3 WebSocket slot (e.g. `allowed_origins`), `extra` more top-level sections.
fn broker(ws_v3: &str, extra: &str) -> Broker {
    start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  \
         websocket:\n    v3: {{ addr: \"127.0.0.1:0\" {ws_v3} }}\n    v5: {{ addr: \"127.0.0.1:0\" }}\n  \
         health_addr: \"127.0.0.1:0\"\n{extra}\n"
    ))
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/mqtt")
}

// ---- rumqttc over WebSocket --------------------------------------------------------------

#[test]
fn rumqttc_v3_over_websocket_publishes_and_subscribes_with_tcp_clients() {
    let b = broker("", "");
    let ws = b.addr(V3);
    let mut o = rumqttc::MqttOptions::new("ws-sub", url(ws), ws.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(200_000, 200_000);
    let (sub, _) = V3::connect(o);
    assert_eq!(
        sub.subscribe("ws/#", rumqttc::QoS::AtLeastOnce),
        [rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    // TCP -> WebSocket.
    let mut tcp = Raw::v3(b.v3, "tcp-pub");
    assert_eq!(tcp.pub1("ws/a", b"from tcp"), 0);
    let p = sub.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("ws/a", &b"from tcp"[..])
    );
    // WebSocket -> TCP, a payload larger than one TCP segment.
    tcp.sub("up/#", 1);
    let big = vec![0x5a; 100_000];
    sub.c
        .publish("up/big", rumqttc::QoS::AtLeastOnce, false, big.clone())
        .unwrap();
    let m = tcp.recv_publish_ack();
    assert_eq!(m.topic, "up/big");
    assert!(m.payload == big, "payload intact");
    assert_eq!(b.value("connections"), 2);
}

#[test]
fn rumqttc_v5_over_websocket_publishes_and_subscribes() {
    let b = broker("", "");
    let ws = b.addr(V5);
    let mut o = rumqttc::v5::MqttOptions::new("ws5-sub", url(ws), ws.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_keep_alive(Duration::from_secs(30));
    let (sub, ack) = V5::connect(o);
    assert!(ack.properties.is_some(), "a v5 CONNACK with properties");
    sub.subscribe("v5/#", Q5::ExactlyOnce);
    let mut o = rumqttc::v5::MqttOptions::new("ws5-pub", url(ws), ws.port());
    o.set_transport(rumqttc::Transport::Ws);
    let (publ, _) = V5::connect(o);
    publ.c
        .publish("v5/x", Q5::ExactlyOnce, false, b"over ws".to_vec())
        .unwrap();
    let p = sub.recv_publish();
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"v5/x"[..], &b"over ws"[..])
    );
    assert_eq!(p.qos, Q5::ExactlyOnce);
}

#[test]
fn the_v5_slot_refuses_a_3_1_1_connect_mqtt_3_1_2_2() {
    let b = broker("", "");
    let mut c = WsRaw::connect(b.addr(V5), &[]);
    c.send(&Connect::v3("wrong-version").bytes());
    // Unsupported protocol level: CONNACK 0x01, then the WebSocket closes.
    let ack = c.next_packet();
    assert_eq!(ack.kind(), kind::CONNACK);
    assert_eq!(ack.connack(false).code, 1);
    assert_eq!(c.expect_close().unwrap().code, CloseCode::Normal);
    assert_eq!(b.closed("connect_refused"), 1);
}

// ---- the upgrade ---------------------------------------------------------------------------

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// Send an HTTP request for `path` with `headers`; returns the status and the response head.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the upgrade response: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

fn upgrade_headers<'a>(more: &[&'a str]) -> Vec<&'a str> {
    let mut h = vec![
        "Upgrade: websocket",
        "Connection: Upgrade",
        KEY,
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: mqtt",
    ];
    h.extend_from_slice(more);
    h
}

#[test]
fn upgrade_answers_101_with_the_rfc6455_accept_key_and_mqtt() {
    let b = broker("", "");
    let (status, head) = request(b.addr(V3), "GET", "/mqtt", &upgrade_headers(&[]));
    assert_eq!(status, 101, "{head}");
    // RFC 6455 §1.3: the example key's accept value.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt"), "{head}");
}

#[test]
fn wrong_path_404_non_upgrade_400_bad_origin_403_counted() {
    let b = broker(", allowed_origins: [\"https://app.example\"]", "");
    let ws = b.addr(V3);
    let (s, head) = request(ws, "GET", "/other", &upgrade_headers(&[]));
    assert_eq!(s, 404, "{head}");
    b.wait_closed("ws_path_not_found", 1);
    let (s, head) = request(ws, "GET", "/mqtt", &["Accept: text/html"]);
    assert_eq!(s, 400, "{head}");
    let (s, _) = request(
        ws,
        "GET",
        "/mqtt",
        &upgrade_headers(&["Origin: https://evil.example"]),
    );
    assert_eq!(s, 403);
    b.wait_closed("ws_origin_forbidden", 1);
    // No "mqtt" subprotocol offered [MQTT-6.0.0-3].
    let no_mqtt: Vec<&str> = upgrade_headers(&[])
        .into_iter()
        .filter(|h| !h.starts_with("Sec-WebSocket-Protocol"))
        .collect();
    assert_eq!(request(ws, "GET", "/mqtt", &no_mqtt).0, 400);
    let (s, head) = request(
        ws,
        "GET",
        "/mqtt",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            KEY,
            "Sec-WebSocket-Version: 8",
        ],
    );
    assert_eq!(s, 426, "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    b.wait_closed("ws_bad_request", 3);
    let huge = format!("X-Pad: {}", "a".repeat(9000));
    assert_eq!(request(ws, "GET", "/mqtt", &[huge.as_str()]).0, 431);
    b.wait_closed("ws_request_too_large", 1);
    // None of them became a connection, and the listener still serves.
    assert_eq!(b.value("connections"), 0);
    WsRaw::connect(ws, &["https://app.example"]);
}

#[test]
fn origins_exact_wildcard_and_none() {
    let b = broker(
        ", allowed_origins: [\"https://App.Example\", \"*.devices.example\"]",
        "",
    );
    let ws = b.addr(V3);
    let status = |origin: Option<&str>| {
        let o = origin.map(|o| format!("Origin: {o}"));
        let more: Vec<&str> = o.iter().map(String::as_str).collect();
        request(ws, "GET", "/mqtt", &upgrade_headers(&more)).0
    };
    assert_eq!(status(None), 101, "no Origin header: allowed");
    assert_eq!(status(Some("https://app.example")), 101, "case-insensitive");
    assert_eq!(status(Some("http://app.example")), 403, "scheme counts");
    assert_eq!(status(Some("https://gw7.devices.example:8443")), 101);
    assert_eq!(
        status(Some("https://devices.example")),
        403,
        "strictly under"
    );
    assert_eq!(status(Some("https://evil-devices.example")), 403);
    assert_eq!(b.closed("ws_origin_forbidden"), 3);
    // A listener without allowed_origins takes any origin.
    let (s, _) = request(
        b.addr(V5),
        "GET",
        "/mqtt",
        &upgrade_headers(&["Origin: https://anything.example"]),
    );
    assert_eq!(s, 101);
}

#[test]
fn handshake_counts_against_read_timeout() {
    let b = broker(", read_timeout: 1s", "");
    let mut s = TcpStream::connect(b.addr(V3)).unwrap();
    s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finished
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the broker to close, got {other:?}"),
    }
    assert_eq!(b.closed("ws_handshake_timeout"), 1);
}

#[test]
fn over_the_connection_rate_an_upgrade_gets_429_with_retry_after() {
    let b = broker(
        "",
        "ratelimit: { enabled: true, connection: { rate: 0.01, burst: 1 }, \
         message: { enabled: false }, subscribe: { enabled: false } }",
    );
    let ws = b.addr(V3);
    let mut kept = WsRaw::mqtt(ws, &Connect::v3("first"));
    let (status, head) = request(ws, "GET", "/mqtt", &upgrade_headers(&[]));
    assert_eq!(status, 429, "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    b.wait_metric(
        "fluxmq_edge_ratelimit_refused_total{limit=\"connection\",protocol=\"mqtt\"}",
        |v| v == 1,
    );
    // The first connection is untouched.
    kept.send(&[0xc0, 0]);
    assert_eq!(kept.next_packet().kind(), kind::PINGRESP);
}

// ---- frames ----------------------------------------------------------------------------------

/// A raw WebSocket client (tungstenite, over TCP or TLS) carrying hand-written MQTT packets.
struct WsRaw {
    ws: WebSocket<Box<dyn Transport>>,
    buf: Vec<u8>,
}

impl WsRaw {
    /// Upgrade (with `Origin: origins[0]` if given).
    fn connect(addr: SocketAddr, origins: &[&str]) -> WsRaw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        WsRaw::upgrade(Box::new(s), &url(addr), origins).expect("upgrade")
    }

    /// Upgrade over an open transport (a TLS stream for wss).
    fn upgrade(s: Box<dyn Transport>, url: &str, origins: &[&str]) -> Result<WsRaw, String> {
        use tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        if let Some(o) = origins.first() {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        let (ws, resp) = tungstenite::client::client(req, s).map_err(|e| e.to_string())?;
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..])
        );
        Ok(WsRaw {
            ws,
            buf: Vec::new(),
        })
    }

    /// Connect and complete an MQTT CONNECT.
    fn mqtt(addr: SocketAddr, c: &Connect) -> WsRaw {
        let mut me = WsRaw::connect(addr, &[]);
        me.send(&c.bytes());
        assert_eq!(me.next_packet().connack(c.v5).code, 0);
        me
    }

    /// One binary message.
    fn send(&mut self, bytes: &[u8]) {
        self.ws.send(Message::Binary(bytes.to_vec())).unwrap();
    }

    /// One frame exactly as given (fragmentation by hand).
    fn frame(&mut self, bytes: &[u8], op: Data, fin: bool) {
        let f = Frame::message(bytes.to_vec(), OpCode::Data(op), fin);
        self.ws.send(Message::Frame(f)).unwrap();
    }

    fn message(&mut self) -> Message {
        self.ws.read().expect("a WebSocket message")
    }

    fn next_packet(&mut self) -> Pkt {
        loop {
            if let Some(p) = take_packet(&mut self.buf) {
                return p;
            }
            match self.message() {
                Message::Binary(b) => self.buf.extend_from_slice(&b),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    /// The server's close frame (after any binary messages).
    fn expect_close(&mut self) -> Option<CloseFrame<'static>> {
        loop {
            match self.message() {
                Message::Close(c) => return c,
                Message::Binary(_) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_packet_split_across_frames_and_packets_sharing_one_frame() {
    let b = broker("", "");
    let ws = b.addr(V3);
    let mut sub = WsRaw::mqtt(ws, &Connect::v3("frames-sub"));
    let mut pub_ = WsRaw::connect(ws, &[]);
    // CONNECT split across two binary messages, then across a fragmented message.
    let connect = Connect::v3("frames-pub").bytes();
    let (a, rest) = connect.split_at(3);
    pub_.send(a);
    pub_.send(rest);
    assert_eq!(pub_.next_packet().connack(false).code, 0);
    // SUBSCRIBE and a PINGREQ in one frame: two answers.
    let mut two = subscribe(false, 1, &P::new(), &[("t/#", 0)]);
    two.extend_from_slice(&[0xc0, 0]);
    sub.send(&two);
    assert_eq!(sub.next_packet().kind(), kind::SUBACK);
    assert_eq!(sub.next_packet().kind(), kind::PINGRESP);
    // A PUBLISH in three fragments of one message (binary, continuation, continuation).
    let publish = Pub::new("t/x", &[7; 300]).bytes(false);
    pub_.frame(&publish[..1], Data::Binary, false);
    pub_.frame(&publish[1..200], Data::Continue, false);
    pub_.frame(&publish[200..], Data::Continue, true);
    // Three PUBLISHes in one frame.
    let mut three = Vec::new();
    for i in 0..3u8 {
        three.extend(Pub::new("t/y", &[i]).bytes(false));
    }
    pub_.send(&three);
    let m = sub.next_packet().publish(false);
    assert_eq!((m.topic.as_str(), m.payload.len()), ("t/x", 300));
    for i in 0..3u8 {
        let m = sub.next_packet().publish(false);
        assert_eq!((m.topic.as_str(), m.payload), ("t/y", vec![i]));
    }
}

#[test]
fn oversize_frame_refused_with_1009() {
    // max_message_size 1024: frames and messages up to conn::max_frame = 2048 bytes.
    let b = broker("", "broker: { max_message_size: 1024 }");
    let mut c = WsRaw::mqtt(b.addr(V3), &Connect::v3("big"));
    c.send(&vec![0; 2049]);
    let close = c.expect_close().expect("a close status");
    assert_eq!(close.code, CloseCode::Size);
    b.wait_closed("ws_frame_too_large", 1);
    // A message of 2 x 1500 bytes (PINGREQs) breaks the bound in its second fragment.
    let mut c = WsRaw::mqtt(b.addr(V3), &Connect::v3("big2"));
    let pings = [0xc0, 0x00].repeat(750);
    c.frame(&pings, Data::Binary, false);
    c.frame(&pings, Data::Continue, true);
    assert_eq!(c.expect_close().unwrap().code, CloseCode::Size);
    b.wait_closed("ws_frame_too_large", 2);
    // Within the bound is fine: a 1000-byte payload in one message.
    let mut ok = WsRaw::mqtt(b.addr(V3), &Connect::v3("fits"));
    ok.send(&subscribe(false, 1, &P::new(), &[("f", 0)]));
    assert_eq!(ok.next_packet().kind(), kind::SUBACK);
    ok.send(&Pub::new("f", &[1; 1000]).bytes(false));
    assert_eq!(ok.next_packet().publish(false).payload.len(), 1000);
}

#[test]
fn text_frame_refused_with_1003() {
    let b = broker("", "");
    let mut c = WsRaw::mqtt(b.addr(V3), &Connect::v3("texter"));
    c.ws.send(Message::Text("hello".into())).unwrap();
    // [MQTT-6.0.0-1]: MQTT travels in binary frames only.
    assert_eq!(c.expect_close().unwrap().code, CloseCode::Unsupported);
    b.wait_closed("ws_text_frame", 1);
    b.wait_value("connections", |v| v == 0);
}

#[test]
fn ping_answered_and_close_echoed() {
    let b = broker("", "");
    let mut c = WsRaw::mqtt(b.addr(V3), &Connect::v3("pinger"));
    c.ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    match c.message() {
        Message::Pong(p) => assert_eq!(p, b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // MQTT still flows after it.
    c.send(&[0xc0, 0]);
    assert_eq!(c.next_packet().kind(), kind::PINGRESP);
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(c.expect_close().unwrap().code, CloseCode::Normal);
    b.wait_value("connections", |v| v == 0);
}

#[test]
fn server_side_disconnect_sends_a_close_frame() {
    let b = broker("", "");
    let mut c = WsRaw::mqtt(b.addr(V5), &Connect::v5("kicked"));
    // A second client with the same id takes the session over: DISCONNECT 0x8E, then close.
    let _twin = WsRaw::mqtt(b.addr(V5), &Connect::v5("kicked"));
    let d = c.next_packet();
    assert_eq!(d.kind(), kind::DISCONNECT);
    assert_eq!(d.disconnect().0, 0x8e);
    assert_eq!(c.expect_close().unwrap().code, CloseCode::Normal);
}

#[test]
fn unmasked_frame_refused_with_1002() {
    let b = broker("", "");
    let mut c = WsRaw::mqtt(b.addr(V3), &Connect::v3("unmasked"));
    let s = c.ws.get_mut();
    s.write_all(&[0x82, 0x02, 0xc0, 0x00]).unwrap(); // PINGREQ, no mask
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    drop(c);
    assert_eq!(got, [0x88, 0x02, 0x03, 0xea], "close 1002, then EOF");
    b.wait_closed("ws_protocol_error", 1);
}

#[test]
fn connections_still_upgrading_count_toward_max_connections() {
    let b = broker(", max_connections: 1", "");
    let ws = b.addr(V3);
    let mut idle = TcpStream::connect(ws).unwrap(); // upgrading, never finishes
    idle.write_all(b"GET /mqtt HTTP/1.1\r\n").unwrap();
    // Once the first is accepted, a second is over the cap: closed at once, counted.
    wait_for("the second connection refused", T, || {
        let mut s = TcpStream::connect(ws).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let closed = match s.read(&mut [0; 8]) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        (closed && b.closed("listener_full") >= 1).then_some(())
    });
    drop(idle);
    // The slot is free again once the first ends.
    wait_for("a connection after the first ended", T, || {
        let mut s = TcpStream::connect(ws).unwrap();
        let req = format!(
            "GET /mqtt HTTP/1.1\r\nHost: x\r\n{}\r\n\r\n",
            upgrade_headers(&[]).join("\r\n")
        );
        s.write_all(req.as_bytes()).ok()?;
        s.set_read_timeout(Some(T)).unwrap();
        let mut head = [0; 12];
        s.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 101").then_some(())
    });
}

// ---- wss -----------------------------------------------------------------------------------

mod wss {
    use super::*;
    use crate::tls::{BOTH, Pki, client_config, tls_open};

    const TLS: &str = "server.websocket.tls";
    const MTLS: &str = "server.websocket.mtls";

    /// A broker with the wss slots of `pki` (and TCP v3 for the common helpers).
    fn broker(pki: &Pki, tls: &str, mtls: &str) -> Broker {
        start_yaml(&format!(
            "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  \
             websocket:\n    tls: {{ {} }}\n    mtls: {{ {} }}\n  health_addr: \"127.0.0.1:0\"\n",
            pki.slot(&format!(", client_auth: none{tls}")),
            pki.slot(mtls),
        ))
    }

    fn wss(addr: SocketAddr) -> String {
        format!("wss://{addr}/mqtt")
    }

    fn rumqttc_tls(pki: &Pki) -> rumqttc::Transport {
        rumqttc::Transport::wss(pki.ca.pem().into_bytes(), None, None)
    }

    /// `protocol: auto` (the tls slot's default): a 3.1.1 subscriber and an MQTT 5
    /// publisher, both rumqttc over wss, on one listener.
    #[test]
    fn rumqttc_over_wss_with_protocol_auto() {
        let pki = Pki::new("wss-auto");
        let b = broker(&pki, "", "");
        let addr = b.addr(TLS);
        let mut o = rumqttc::MqttOptions::new("wss-v3", wss(addr), addr.port());
        o.set_transport(rumqttc_tls(&pki));
        o.set_keep_alive(Duration::from_secs(30));
        let (sub, _) = V3::connect(o);
        sub.subscribe("wss/#", rumqttc::QoS::AtLeastOnce);
        let mut o = rumqttc::v5::MqttOptions::new("wss-v5", wss(addr), addr.port());
        o.set_transport(rumqttc_tls(&pki));
        let (publ, ack) = V5::connect(o);
        assert!(ack.properties.is_some(), "an MQTT 5 CONNACK: auto took v5");
        publ.c
            .publish("wss/t", Q5::AtLeastOnce, false, b"secure".to_vec())
            .unwrap();
        let p = sub.recv_publish();
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("wss/t", &b"secure"[..])
        );
    }

    /// The mtls slot: a client certificate from the CA upgrades and speaks MQTT; without one
    /// the TLS handshake fails (counted) and no upgrade happens. The upgrade rules still
    /// apply over TLS.
    #[test]
    fn wss_mtls_needs_a_client_certificate_and_keeps_the_upgrade_rules() {
        let pki = Pki::new("wss-mtls");
        let b = broker(&pki, "", ", allowed_origins: [\"https://app.example\"]");
        let addr = b.addr(MTLS);
        let with_cert = || client_config(&pki.ca.der(), Some(pki.good.client_auth()), BOTH);
        let (tls, _) = tls_open(addr, with_cert()).expect("TLS with a client certificate");
        let mut c = WsRaw::upgrade(Box::new(tls), &wss(addr), &["https://app.example"])
            .expect("upgrade over mTLS");
        c.send(&Connect::v5("wss-device").bytes());
        assert_eq!(c.next_packet().connack(true).code, 0);
        c.send(&[0xc0, 0]);
        assert_eq!(c.next_packet().kind(), kind::PINGRESP);
        // A bad origin over a good TLS connection: 403, counted.
        let (tls, _) = tls_open(addr, with_cert()).unwrap();
        let refused = WsRaw::upgrade(Box::new(tls), &wss(addr), &["https://evil.example"]);
        assert!(refused.is_err_and(|e| e.contains("403")));
        b.wait_closed("ws_origin_forbidden", 1);
        // No client certificate: the handshake (or the first read, in TLS 1.3) fails.
        let no_cert = client_config(&pki.ca.der(), None, BOTH);
        let up = tls_open(addr, no_cert)
            .and_then(|(tls, _)| WsRaw::upgrade(Box::new(tls), &wss(addr), &[]).map(|_| ()));
        assert!(up.is_err(), "no upgrade without a client certificate");
        b.wait_closed("tls_handshake_failed", 1);
    }

    /// SIGHUP reloads the wss slot's certificates too (its acceptor registered a hook).
    #[test]
    fn wss_certificates_reload() {
        let pki = Pki::new("wss-reload");
        let dir = std::env::temp_dir().join(format!("fluxmq-edge-wss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.yaml");
        let yaml = format!(
            "server:\n  health_addr: \"127.0.0.1:0\"\n  tcp: {{ v3: {{ addr: \"\" }}, v5: {{ addr: \"\" }} }}\n  \
             websocket:\n    tls: {{ {} }}\n",
            pki.slot(", client_auth: none")
        );
        std::fs::write(&path, yaml).unwrap();
        let running = fluxmq_edge::server::spawn_from(std::slice::from_ref(&path)).unwrap();
        let health = running.addr("server.health_addr");
        let reloads = || {
            let (_, body) = http_get(health, "/metrics");
            parse_metrics(&body)
                .into_iter()
                .find(|(k, _)| k == "fluxmq_edge_tls_reloads_total")
                .map_or(0, |(_, v)| v)
        };
        assert_eq!(reloads(), 0);
        running.reload();
        wait_for("tls_reloads_total 1", T, || (reloads() >= 1).then_some(()));
        let config = client_config(&pki.ca.der(), None, BOTH);
        let (tls, _) = tls_open(running.addr(TLS), config).unwrap();
        WsRaw::upgrade(Box::new(tls), &wss(running.addr(TLS)), &[]).expect("upgrade");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `read_timeout` bounds TLS handshake and upgrade together: a peer that completes TLS
    /// and then sends nothing is closed and counted.
    #[test]
    fn wss_upgrade_within_read_timeout() {
        let pki = Pki::new("wss-timeout");
        let b = broker(&pki, ", read_timeout: 1s", "");
        let config = client_config(&pki.ca.der(), None, BOTH);
        let (mut tls, _) = tls_open(b.addr(TLS), config).unwrap();
        let mut buf = [0; 16];
        let got = tls.read(&mut buf);
        assert!(matches!(got, Ok(0) | Err(_)), "closed, got {got:?}");
        assert_eq!(b.closed("ws_handshake_timeout"), 1);
    }
}
