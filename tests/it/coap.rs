//! The CoAP bridge (RFC 7252, spec §6.4) with a real CoAP client (coap-lite messages over a
//! std UdpSocket): CON and NON publishes reaching MQTT subscribers, duplicate detection,
//! Observe (RFC 7641) fed by MQTT publishes, block-wise transfer both ways (RFC 7959), and
//! malformed datagrams while other clients keep being served.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use crate::common::*;

pub fn start_coap(extra: &str) -> (Broker, SocketAddr) {
    let b = start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  coap: {{ plain: {{ addr: \"127.0.0.1:0\" }} }}\n{extra}\n"
    ));
    let addr = b.addr("server.coap.plain");
    (b, addr)
}

/// A CoAP client endpoint: builds messages with coap-lite, one UDP socket.
pub struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    mid: u16,
}

impl Client {
    pub fn new(server: SocketAddr) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(T)).expect("timeout");
        Client {
            sock,
            server,
            mid: 0x100,
        }
    }

    pub fn next_mid(&mut self) -> u16 {
        self.mid += 1;
        self.mid
    }

    /// A request with path, URI-Query and payload; token = the Message ID.
    pub fn build(
        &mut self,
        kind: MessageType,
        method: RequestType,
        path: &str,
        query: &[&str],
        payload: &[u8],
    ) -> Packet {
        let mid = self.next_mid();
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        p.payload = payload.to_vec();
        p
    }

    pub fn send(&self, p: &Packet) {
        self.send_raw(&p.to_bytes_unlimited().expect("encode"));
    }

    pub fn send_raw(&self, d: &[u8]) {
        self.sock.send_to(d, self.server).expect("send");
    }

    pub fn recv(&self) -> Packet {
        let mut buf = [0u8; 2048];
        let (n, _) = self
            .sock
            .recv_from(&mut buf)
            .expect("a datagram from the broker");
        Packet::from_bytes(&buf[..n]).expect("broker output decodes")
    }

    /// Nothing arrives within `d`.
    pub fn expect_nothing(&self, d: Duration) {
        self.sock.set_read_timeout(Some(d)).expect("timeout");
        let mut buf = [0u8; 2048];
        let got = self.sock.recv_from(&mut buf);
        self.sock.set_read_timeout(Some(T)).expect("timeout");
        assert!(
            got.is_err(),
            "unexpected datagram: {:?}",
            got.map(|(n, _)| Packet::from_bytes(&buf[..n]))
        );
    }

    /// Send and wait for the response.
    pub fn call(&mut self, p: &Packet) -> Packet {
        self.send(p);
        self.recv()
    }

    pub fn post(&mut self, path: &str, payload: &[u8]) -> Packet {
        let p = self.build(
            MessageType::Confirmable,
            RequestType::Post,
            path,
            &[],
            payload,
        );
        self.call(&p)
    }

    pub fn ack(&self, mid: u16) {
        let mut a = Packet::new();
        a.header.set_type(MessageType::Acknowledgement);
        a.header.message_id = mid;
        self.send(&a);
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }
}

pub fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn uint(p: &Packet, o: CoapOption) -> Option<u32> {
    p.get_first_option(o)
        .map(|v| v.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)))
}

fn block(num: u32, more: bool, szx: u8) -> Vec<u8> {
    let v = (num << 4) | (u32::from(more) << 3) | u32::from(szx);
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

fn coap_count(b: &Broker, code: &str) -> u64 {
    b.metric(&format!(
        "fluxmq_edge_coap_responses_total{{code=\"{code}\"}}"
    ))
}

#[test]
fn con_and_non_publish_reach_an_mqtt_subscriber_with_content_type_and_origin() {
    let (b, coap) = start_coap("");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("sensors/#", 0);
    let mut c = Client::new(coap);
    // CON to /<topic>, JSON Content-Format, client_id in the query: piggybacked 2.04.
    let mut p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        "sensors/t1",
        &["client_id=dev-9"],
        b"{\"t\":21.5}",
    );
    p.add_option(CoapOption::ContentFormat, vec![50]);
    let r = c.call(&p);
    assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(r.header.message_id, p.header.message_id);
    assert_eq!(r.get_token(), p.get_token());
    assert_eq!(
        (code(&r), r.payload.as_slice()),
        (ResponseType::Changed, &b"ok"[..])
    );
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos),
        ("sensors/t1", &b"{\"t\":21.5}"[..], 0)
    );
    assert_eq!(m.props.str(0x03), Some("application/json"));
    let pairs = m.props.pairs();
    assert!(
        pairs.contains(&("protocol".into(), "coap".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("client_id".into(), "dev-9".into())),
        "{pairs:?}"
    );
    // NON to the legacy path: a NON 2.04; client id defaults to coap:<ip:port>.
    let p = c.build(
        MessageType::NonConfirmable,
        RequestType::Put,
        "mqtt/publish/sensors/t2",
        &[],
        b"7",
    );
    let r = c.call(&p);
    assert_eq!(
        (r.header.get_type(), code(&r)),
        (MessageType::NonConfirmable, ResponseType::Changed)
    );
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("sensors/t2", &b"7"[..])
    );
    let client = format!("coap:{}", c.local());
    assert!(m.props.pairs().contains(&("client_id".into(), client)));
    assert_eq!(coap_count(&b, "2.04"), 2);
}

#[test]
fn duplicate_con_is_answered_from_the_cache_without_a_second_publish() {
    let (b, coap) = start_coap("");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("d", 0);
    let mut c = Client::new(coap);
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        "d",
        &[],
        b"once",
    );
    let first = c.call(&p);
    let again = c.call(&p);
    assert_eq!(first, again, "the same ACK");
    assert_eq!(sub.recv_publish().payload, b"once");
    b.wait_metric(
        "fluxmq_edge_coap_responses_total{code=\"duplicate\"}",
        |n| n == 1,
    );
    assert_eq!(b.value("messages_received_total"), 1);
    sub.expect_nothing(Duration::from_millis(200));
}

#[test]
fn refusals_are_coded_and_counted() {
    let (b, coap) = start_coap("broker: { max_message_size: 1024 }");
    let mut c = Client::new(coap);
    let cases: &[(RequestType, &str, usize, ResponseType)] = &[
        (RequestType::Post, "mqtt", 1, ResponseType::BadRequest),
        (RequestType::Post, "", 1, ResponseType::BadRequest),
        (RequestType::Post, "a/#", 1, ResponseType::BadRequest),
        (RequestType::Delete, "a", 1, ResponseType::MethodNotAllowed),
        (
            RequestType::Post,
            "a",
            1025,
            ResponseType::RequestEntityTooLarge,
        ),
        (RequestType::Get, "health", 0, ResponseType::Content),
    ];
    for (method, path, len, want) in cases {
        let p = c.build(
            MessageType::Confirmable,
            *method,
            path,
            &[],
            &vec![b'x'; *len],
        );
        assert_eq!(code(&c.call(&p)), *want, "{method:?} /{path}");
    }
    assert_eq!(coap_count(&b, "4.00"), 3);
    assert_eq!(coap_count(&b, "4.05"), 1);
    assert_eq!(coap_count(&b, "4.13"), 1);
}

#[test]
fn malformed_datagrams_are_ignored_or_reset_counted_and_others_are_served() {
    let (b, coap) = start_coap("");
    let bad = Client::new(coap);
    bad.send_raw(&[0x40]); // too short: ignored
    bad.send_raw(&[0xC0, 0x02, 0, 1]); // version 3: ignored
    bad.send_raw(&[0x59, 0x02, 0, 2, 1, 2]); // NON, token length 9: ignored
    bad.send_raw(&[0x49, 0x02, 0x12, 0x34, 1, 2]); // CON, token length 9: RST
    let r = bad.recv();
    assert_eq!(
        (r.header.get_type(), r.header.message_id),
        (MessageType::Reset, 0x1234)
    );
    bad.expect_nothing(Duration::from_millis(100));
    b.wait_metric(
        "fluxmq_edge_coap_responses_total{code=\"malformed\"}",
        |n| n == 4,
    );
    // Another client is served as before.
    let mut good = Client::new(coap);
    assert_eq!(
        code(&good.post("still/serving", b"1")),
        ResponseType::Changed
    );
}

/// GET with Observe 0 on `filter`; asserts the registration response.
fn register(c: &mut Client, kind: MessageType, filter: &str) -> Packet {
    let mut p = c.build(kind, RequestType::Get, filter, &[], b"");
    p.add_option(CoapOption::Observe, vec![]);
    let r = c.call(&p);
    assert_eq!(code(&r), ResponseType::Content, "registration of {filter}");
    assert!(
        uint(&r, CoapOption::Observe).is_some(),
        "Observe in the registration response"
    );
    p
}

#[test]
fn observe_register_notify_cancel_fed_by_mqtt() {
    let (b, coap) = start_coap("");
    let mut obs = Client::new(coap);
    let reg = register(&mut obs, MessageType::NonConfirmable, "rooms/+/temp");
    b.wait_value("subscriptions", |n| n == 1);
    let mut mqtt = Raw::v5(b.v5, "pub");
    mqtt.pub1_with(Pub::new("rooms/k/temp", b"19.5").props(P::new().str(0x03, "text/plain")));
    let n = obs.recv();
    assert_eq!(n.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(n.get_token(), reg.get_token());
    assert_eq!(
        (code(&n), n.payload.as_slice()),
        (ResponseType::Content, &b"19.5"[..])
    );
    assert_eq!(uint(&n, CoapOption::ContentFormat), Some(0));
    let seq1 = uint(&n, CoapOption::Observe).expect("Observe");
    mqtt.pub0("rooms/k/temp", b"19.6");
    let n2 = obs.recv();
    assert!(uint(&n2, CoapOption::Observe).expect("Observe") > seq1);
    mqtt.pub0("elsewhere", b"x");
    // Cancel with Observe 1, same token.
    let mut cancel = obs.build(
        MessageType::Confirmable,
        RequestType::Get,
        "rooms/+/temp",
        &[],
        b"",
    );
    cancel.set_token(reg.get_token().to_vec());
    cancel.add_option(CoapOption::Observe, vec![1]);
    let r = obs.call(&cancel);
    assert_eq!(code(&r), ResponseType::Content);
    b.wait_value("subscriptions", |n| n == 0);
    mqtt.pub0("rooms/k/temp", b"after");
    obs.expect_nothing(Duration::from_millis(200));
}

#[test]
fn con_notifications_are_acknowledged_and_an_rst_cancels() {
    let (b, coap) = start_coap("");
    let mut obs = Client::new(coap);
    register(&mut obs, MessageType::Confirmable, "c");
    b.wait_value("subscriptions", |n| n == 1);
    let mut mqtt = Raw::v5(b.v5, "pub");
    for i in 0..3u8 {
        mqtt.pub0("c", &[b'0' + i]);
    }
    // One CON at a time: each arrives after the previous one is acknowledged.
    for i in 0..3u8 {
        let n = obs.recv();
        assert_eq!(
            (n.header.get_type(), n.payload.as_slice()),
            (MessageType::Confirmable, &[b'0' + i][..])
        );
        if i < 2 {
            obs.ack(n.header.message_id);
        } else {
            let mut rst = Packet::new();
            rst.header.set_type(MessageType::Reset);
            rst.header.message_id = n.header.message_id;
            obs.send(&rst);
        }
    }
    b.wait_value("subscriptions", |n| n == 0);
    assert_eq!(b.value("coap_observers_cancelled_total"), 1);
}

#[test]
fn block_wise_upload_and_download() {
    let (b, coap) = start_coap("");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("blob/#", 0);
    let mut c = Client::new(coap);
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    // Upload in 1024-byte blocks (Block1): 2.31 Continue, then 2.04.
    let chunks: Vec<&[u8]> = body.chunks(1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let more = i + 1 < chunks.len();
        let mut p = c.build(
            MessageType::Confirmable,
            RequestType::Post,
            "blob/up",
            &[],
            chunk,
        );
        p.add_option(CoapOption::Block1, block(i as u32, more, 6));
        let r = c.call(&p);
        let want = if more {
            ResponseType::Continue
        } else {
            ResponseType::Changed
        };
        assert_eq!(code(&r), want, "block {i}");
    }
    let m = sub.recv_publish();
    assert_eq!(m.payload, body, "the whole upload, published once");
    // Download: a notification larger than a block carries block 0; GET fetches the rest.
    let mut obs = Client::new(coap);
    register(&mut obs, MessageType::NonConfirmable, "blob/down");
    b.wait_value("subscriptions", |n| n == 2);
    let mut mqtt = Raw::v5(b.v5, "pub");
    mqtt.pub0("blob/down", &body);
    let n = obs.recv();
    assert_eq!(uint(&n, CoapOption::Size2), Some(3000));
    assert_eq!(
        uint(&n, CoapOption::Block2),
        Some(0x0E),
        "block 0, more, SZX 6"
    );
    let mut got = n.payload.clone();
    let mut num = 1;
    loop {
        let mut g = obs.build(
            MessageType::Confirmable,
            RequestType::Get,
            "blob/down",
            &[],
            b"",
        );
        g.add_option(CoapOption::Block2, block(num, false, 6));
        let r = obs.call(&g);
        assert_eq!(code(&r), ResponseType::Content);
        got.extend_from_slice(&r.payload);
        let v = uint(&r, CoapOption::Block2).expect("Block2");
        if v & 8 == 0 {
            break;
        }
        num += 1;
    }
    assert_eq!(got, body);
}

#[test]
fn over_the_rate_limit_is_4_29_with_max_age() {
    let (b, coap) = start_coap(
        "ratelimit: { enabled: true, connection: { enabled: true, rate: 0.01, burst: 2 }, message: { enabled: false }, subscribe: { enabled: false } }",
    );
    let mut c = Client::new(coap);
    assert_eq!(code(&c.post("r", b"1")), ResponseType::Changed);
    assert_eq!(code(&c.post("r", b"2")), ResponseType::Changed);
    let r = c.post("r", b"3");
    assert_eq!(code(&r), ResponseType::TooManyRequests);
    let max_age = uint(&r, CoapOption::MaxAge).expect("Max-Age");
    assert!((1..=100).contains(&max_age), "{max_age}");
    assert_eq!(coap_count(&b, "4.29"), 1);
    assert_eq!(b.value("messages_received_total"), 2);
}

const REFUSED_COAP_MSG: &str =
    "fluxmq_edge_ratelimit_refused_total{limit=\"message\",protocol=\"coap\"}";
const REFUSED_COAP_SUB: &str =
    "fluxmq_edge_ratelimit_refused_total{limit=\"subscribe\",protocol=\"coap\"}";

#[test]
fn publishes_over_the_message_limit_are_4_29_per_endpoint() {
    // One token every 100 s: no refill during the test.
    let (b, coap) = start_coap(
        "ratelimit: { enabled: true, connection: { enabled: false }, message: { rate: 0.01, burst: 2 } }",
    );
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("m/#", 0);
    let mut a = Client::new(coap);
    assert_eq!(code(&a.post("m/1", b"1")), ResponseType::Changed);
    assert_eq!(code(&a.post("m/2", b"2")), ResponseType::Changed);
    let r = a.post("m/3", b"3");
    assert_eq!(code(&r), ResponseType::TooManyRequests);
    assert_eq!(uint(&r, CoapOption::MaxAge), Some(100), "retry in 100 s");
    assert_eq!(r.payload, b"rate limit exceeded");
    // A NON publish over the limit is refused too (a NON 4.29).
    let p = a.build(
        MessageType::NonConfirmable,
        RequestType::Put,
        "m/4",
        &[],
        b"4",
    );
    let r = a.call(&p);
    assert_eq!(code(&r), ResponseType::TooManyRequests);
    assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
    // Another endpoint (same IP, another port) has its own bucket.
    let mut other = Client::new(coap);
    assert_eq!(code(&other.post("m/5", b"5")), ResponseType::Changed);
    let got: Vec<Vec<u8>> = (0..3).map(|_| sub.recv_publish().payload).collect();
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec(), b"5".to_vec()]);
    sub.expect_nothing(Duration::from_millis(200));
    assert_eq!(b.metric(REFUSED_COAP_MSG), 2);
    assert_eq!(coap_count(&b, "4.29"), 2);
    assert_eq!(b.value("messages_received_total"), 3);
}

#[test]
fn observe_registrations_over_the_subscribe_limit_are_4_29() {
    let (b, coap) = start_coap(
        "ratelimit: { enabled: true, connection: { enabled: false }, subscribe: { rate: 0.01, burst: 1 } }",
    );
    let mut obs = Client::new(coap);
    register(&mut obs, MessageType::Confirmable, "s/a");
    b.wait_value("subscriptions", |n| n == 1);
    let mut p = obs.build(MessageType::Confirmable, RequestType::Get, "s/b", &[], b"");
    p.add_option(CoapOption::Observe, vec![]);
    let r = obs.call(&p);
    assert_eq!(code(&r), ResponseType::TooManyRequests);
    assert_eq!(uint(&r, CoapOption::MaxAge), Some(100));
    assert!(uint(&r, CoapOption::Observe).is_none(), "not registered");
    assert_eq!(b.metric(REFUSED_COAP_SUB), 1);
    assert_eq!(b.value("subscriptions"), 1);
    // Publishing is another bucket (message limit off here), and the first observation
    // keeps being served.
    assert_eq!(code(&obs.post("s/a", b"x")), ResponseType::Changed);
    let n = obs.recv();
    assert_eq!(n.payload, b"x");
}

#[test]
fn endpoint_buckets_are_capped_and_unknown_endpoints_share_one_beyond() {
    // max_connections 2: two endpoints tracked; beyond, one shared overflow bucket.
    let b = start_yaml(
        "server:\n  tcp: { v3: { addr: \"127.0.0.1:0\" }, v5: { addr: \"127.0.0.1:0\" } }\n  health_addr: \"127.0.0.1:0\"\n  \
         coap: { plain: { addr: \"127.0.0.1:0\", max_connections: 2 } }\n\
         ratelimit: { enabled: true, connection: { enabled: false }, message: { rate: 0.01, burst: 1 } }\n",
    );
    let coap = b.addr("server.coap.plain");
    let mut c: Vec<Client> = (0..4).map(|_| Client::new(coap)).collect();
    assert_eq!(code(&c[0].post("o", b"a")), ResponseType::Changed);
    assert_eq!(code(&c[1].post("o", b"b")), ResponseType::Changed);
    // The map is full of buckets in debt: the third and fourth endpoints share one.
    assert_eq!(code(&c[2].post("o", b"c")), ResponseType::Changed);
    assert_eq!(code(&c[3].post("o", b"d")), ResponseType::TooManyRequests);
    // Tracked endpoints keep their own (empty) buckets: not reset by the newcomers.
    assert_eq!(code(&c[0].post("o", b"e")), ResponseType::TooManyRequests);
    assert_eq!(b.value("coap_ratelimit_overflow_total"), 2);
    assert_eq!(b.metric(REFUSED_COAP_MSG), 2);
    assert_eq!(b.value("messages_received_total"), 3);
}
