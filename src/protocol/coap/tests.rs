//! The CoAP state machine on bytes, with the real core and a manual clock.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use super::observe::Poll;
use super::*;
use crate::broker::{Broker, Limits as CoreLimits};
use crate::metrics::{CoapCode, Counter, Metrics};

const MAX: usize = 64;

fn setup(lim: impl FnOnce(&mut Limits)) -> (Server, Broker, Rc<Metrics>) {
    let metrics = Rc::new(Metrics::default());
    let mut l = Limits {
        max_message_size: MAX,
        max_exchanges: 100,
        max_observers: 10,
        max_observers_per_peer: 4,
    };
    lim(&mut l);
    let broker = Broker::new(
        CoreLimits {
            max_message_size: MAX,
            ..CoreLimits::default()
        },
        metrics.clone(),
    );
    (Server::new(l, metrics.clone(), 100), broker, metrics)
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn req(kind: MessageType, method: RequestType, mid: u16, path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(vec![0xAB, (mid & 0xFF) as u8]);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p
}

fn bytes(p: &Packet) -> Vec<u8> {
    p.to_bytes_unlimited().expect("encodes")
}

fn decode(b: &[u8]) -> Packet {
    Packet::from_bytes(b).expect("server output decodes")
}

fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

/// Handle a datagram; complete an authorization with `Allowed`; the reply decoded.
fn roundtrip(
    s: &mut Server,
    b: &mut Broker,
    from: SocketAddr,
    data: &[u8],
    now: Instant,
) -> Option<Packet> {
    match s.handle(from, data, b, now) {
        Step::Nothing => None,
        Step::Send(d) => Some(decode(&d)),
        Step::Authorize(r) => {
            let done = s.complete(*r, Verdict::Allowed(None), b, now);
            done.reply.map(|d| decode(&d))
        }
    }
}

#[test]
fn con_publish_is_acked_piggybacked_and_a_duplicate_is_answered_from_the_cache() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    let mut p = req(MessageType::Confirmable, RequestType::Post, 7, "a/b");
    p.payload = b"21.5".to_vec();
    let data = bytes(&p);
    let r = roundtrip(&mut s, &mut b, peer(1), &data, now).expect("reply");
    assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(r.header.message_id, 7);
    assert_eq!(r.get_token(), p.get_token());
    assert_eq!(
        (code(&r), r.payload.as_slice()),
        (ResponseType::Changed, &b"ok"[..])
    );
    assert_eq!(m.get(Counter::MessagesReceived), 1);
    // RFC 7252 §4.5: the retransmission gets the same ACK, without a second publish.
    match s.handle(peer(1), &data, &mut b, now) {
        Step::Send(d) => assert_eq!(decode(&d), r),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.get(Counter::MessagesReceived), 1);
    assert_eq!(m.coap_count(CoapCode::Duplicate), 1);
    // The same Message ID from another endpoint is another exchange.
    assert!(roundtrip(&mut s, &mut b, peer(2), &data, now).is_some());
    assert_eq!(m.get(Counter::MessagesReceived), 2);
    // After EXCHANGE_LIFETIME it is new again.
    let later = now + EXCHANGE_LIFETIME + Duration::from_secs(1);
    assert!(roundtrip(&mut s, &mut b, peer(1), &data, later).is_some());
    assert_eq!(m.get(Counter::MessagesReceived), 3);
}

#[test]
fn non_publish_gets_a_non_response_and_duplicates_are_ignored() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    let mut p = req(
        MessageType::NonConfirmable,
        RequestType::Put,
        9,
        "mqtt/publish/x/y",
    );
    p.add_option(CoapOption::ContentFormat, vec![50]);
    p.payload = b"{}".to_vec();
    let data = bytes(&p);
    let Step::Authorize(r) = s.handle(peer(1), &data, &mut b, now) else {
        panic!("a publish to authorize");
    };
    assert_eq!(r.action(), (Action::Publish, "x/y"));
    match &r.kind {
        Kind::Publish { content_type, .. } => {
            assert_eq!(content_type.as_deref(), Some("application/json"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.identity.client_id, "coap:10.0.0.1:1");
    let done = s.complete(*r, Verdict::Allowed(None), &mut b, now);
    let reply = decode(&done.reply.expect("reply"));
    assert_eq!(reply.header.get_type(), MessageType::NonConfirmable);
    assert_ne!(reply.header.message_id, 9);
    assert_eq!(code(&reply), ResponseType::Changed);
    assert!(matches!(
        s.handle(peer(1), &data, &mut b, now),
        Step::Nothing
    ));
    assert_eq!(m.get(Counter::MessagesReceived), 1);
}

#[test]
fn routes_and_refusals_per_spec_6_4() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    let cases: &[(RequestType, &str, ResponseType)] = &[
        (RequestType::Get, "health", ResponseType::Content),
        (RequestType::Post, "mqtt", ResponseType::BadRequest),
        (RequestType::Post, "mqtt/other/x", ResponseType::BadRequest),
        (RequestType::Post, "mqtt/publish", ResponseType::BadRequest),
        (RequestType::Post, "", ResponseType::BadRequest),
        (RequestType::Post, "a/+/b", ResponseType::BadRequest),
        (RequestType::Delete, "a/b", ResponseType::MethodNotAllowed),
        (RequestType::Get, "a/b", ResponseType::MethodNotAllowed),
    ];
    for (i, (method, path, want)) in cases.iter().enumerate() {
        let p = req(MessageType::Confirmable, *method, 100 + i as u16, path);
        let r = roundtrip(&mut s, &mut b, peer(1), &bytes(&p), now).expect("reply");
        assert_eq!(code(&r), *want, "{method:?} /{path}");
    }
    assert_eq!(m.coap_count(CoapCode::BadRequest), 5);
    assert_eq!(m.coap_count(CoapCode::MethodNotAllowed), 2);
    // Over broker.max_message_size: 4.13 with Size1.
    let mut big = req(MessageType::Confirmable, RequestType::Post, 200, "a");
    big.payload = vec![1; MAX + 1];
    let r = roundtrip(&mut s, &mut b, peer(1), &bytes(&big), now).expect("reply");
    assert_eq!(code(&r), ResponseType::RequestEntityTooLarge);
    assert_eq!(msg::uint(&r, CoapOption::Size1), Some(Ok(MAX as u32)));
}

#[test]
fn verdicts_become_4_01_4_03_4_29_5_03() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    for (i, (v, want)) in [
        (Verdict::Unauthorized, ResponseType::Unauthorized),
        (Verdict::Forbidden, ResponseType::Forbidden),
        (Verdict::RateLimited(3), ResponseType::TooManyRequests),
        (Verdict::Busy, ResponseType::ServiceUnavailable),
    ]
    .into_iter()
    .enumerate()
    {
        let p = req(MessageType::Confirmable, RequestType::Post, i as u16, "t");
        let Step::Authorize(r) = s.handle(peer(1), &bytes(&p), &mut b, now) else {
            panic!()
        };
        let reply = decode(&s.complete(*r, v.clone(), &mut b, now).reply.expect("reply"));
        assert_eq!(code(&reply), want);
        if let Verdict::RateLimited(secs) = v {
            assert_eq!(msg::uint(&reply, CoapOption::MaxAge), Some(Ok(secs)));
        }
    }
    assert_eq!(m.get(Counter::MessagesReceived), 0);
}

#[test]
fn query_credentials() {
    let (mut s, mut b, _) = setup(|_| {});
    let mut p = req(MessageType::Confirmable, RequestType::Post, 1, "t");
    for q in ["client_id=dev7", "username=u", "authorization=Bearer tok"] {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    let Step::Authorize(r) = s.handle(peer(1), &bytes(&p), &mut b, Instant::now()) else {
        panic!()
    };
    assert_eq!(
        r.identity,
        Identity {
            client_id: "dev7".into(),
            username: "u".into(),
            token: "tok".into()
        }
    );
}

#[test]
fn malformed_datagrams_are_ignored_or_reset_and_counted() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    // Too short, wrong version: ignored.
    assert!(matches!(
        s.handle(peer(1), &[0x40, 1], &mut b, now),
        Step::Nothing
    ));
    assert!(matches!(
        s.handle(peer(1), &[0x80, 1, 0, 1], &mut b, now),
        Step::Nothing
    ));
    // A CON whose token length is 9: RST with its Message ID.
    match s.handle(peer(1), &[0x49, 0x02, 0x12, 0x34, 1, 2], &mut b, now) {
        Step::Send(d) => {
            let r = decode(&d);
            assert_eq!(
                (r.header.get_type(), r.header.message_id),
                (MessageType::Reset, 0x1234)
            );
        }
        other => panic!("{other:?}"),
    }
    // The same as a NON: ignored.
    assert!(matches!(
        s.handle(peer(1), &[0x59, 0x02, 0x12, 0x35, 1, 2], &mut b, now),
        Step::Nothing
    ));
    // Truncated option: RST.
    assert!(matches!(
        s.handle(peer(1), &[0x40, 0x02, 0, 9, 0xBD], &mut b, now),
        Step::Send(_)
    ));
    assert_eq!(m.coap_count(CoapCode::Malformed), 5);
    // CoAP ping: RST.
    match s.handle(peer(1), &[0x40, 0x00, 0xAA, 0xBB], &mut b, now) {
        Step::Send(d) => assert_eq!(decode(&d).header.get_type(), MessageType::Reset),
        other => panic!("{other:?}"),
    }
    // Still serving.
    let p = req(MessageType::Confirmable, RequestType::Post, 3, "ok");
    let r = roundtrip(&mut s, &mut b, peer(1), &bytes(&p), now).expect("reply");
    assert_eq!(code(&r), ResponseType::Changed);
}

#[test]
fn exchange_cache_is_bounded() {
    let (mut s, mut b, m) = setup(|l| l.max_exchanges = 2);
    let now = Instant::now();
    for mid in 0..5u16 {
        let p = req(MessageType::Confirmable, RequestType::Post, mid, "t");
        roundtrip(&mut s, &mut b, peer(1), &bytes(&p), now);
    }
    assert_eq!(s.exchanges(), 2);
    assert_eq!(m.get(Counter::CoapExchangesEvicted), 3);
}

fn block1(mid: u16, num: u32, more: bool, szx: u8, part: &[u8]) -> Vec<u8> {
    let mut p = req(MessageType::Confirmable, RequestType::Post, mid, "up/load");
    msg::set_block(&mut p, CoapOption::Block1, Block { num, more, szx });
    p.payload = part.to_vec();
    bytes(&p)
}

#[test]
fn block1_upload_is_assembled_bounded_and_in_order() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    let body: Vec<u8> = (0..40u8).collect();
    // 16-byte blocks (SZX 0): 2.31 Continue twice, then the whole body is published.
    for (i, chunk) in body.chunks(16).enumerate() {
        let more = (i + 1) * 16 < body.len();
        let d = block1(10 + i as u16, i as u32, more, 0, chunk);
        if more {
            let r = roundtrip(&mut s, &mut b, peer(1), &d, now).expect("continue");
            assert_eq!(code(&r), ResponseType::Continue);
            assert_eq!(
                msg::block(&r, CoapOption::Block1),
                Some(Ok(Block {
                    num: i as u32,
                    more: true,
                    szx: 0
                }))
            );
        } else {
            let Step::Authorize(r) = s.handle(peer(1), &d, &mut b, now) else {
                panic!("last block: the request")
            };
            match &r.kind {
                Kind::Publish { payload, .. } => assert_eq!(payload, &body),
                other => panic!("{other:?}"),
            }
            let reply = decode(
                &s.complete(*r, Verdict::Allowed(None), &mut b, now)
                    .reply
                    .expect("r"),
            );
            assert_eq!(code(&reply), ResponseType::Changed);
            assert_eq!(
                msg::block(&reply, CoapOption::Block1).map(|b| b.map(|b| b.more)),
                Some(Ok(false))
            );
        }
    }
    assert_eq!(m.get(Counter::MessagesReceived), 1);
    // Out of order: 4.08.
    let r = roundtrip(
        &mut s,
        &mut b,
        peer(1),
        &block1(20, 1, true, 0, &[0; 16]),
        now,
    )
    .expect("r");
    assert_eq!(code(&r), ResponseType::RequestEntityIncomplete);
    // Over broker.max_message_size (64): 4.13 at the block that crosses it.
    let mut last = None;
    for i in 0..5u32 {
        last = roundtrip(
            &mut s,
            &mut b,
            peer(1),
            &block1(30 + i as u16, i, true, 0, &[1; 16]),
            now,
        );
    }
    assert_eq!(
        last.map(|r| code(&r)),
        Some(ResponseType::RequestEntityTooLarge)
    );
}

fn observe(mid: u16, token: u8, kind: MessageType, path: &str, value: u8) -> Vec<u8> {
    let mut p = req(kind, RequestType::Get, mid, path);
    p.set_token(vec![token]);
    p.add_option(
        CoapOption::Observe,
        if value == 0 { vec![] } else { vec![value] },
    );
    bytes(&p)
}

fn publish(b: &mut Broker, topic: &str, payload: &[u8], ct: Option<&str>, now: Instant) {
    let props = crate::protocol::origin::message_props("mqtt", "pub", None, ct);
    let m = Message::new(topic, &props, payload, QoS::AtMostOnce, false, None, None);
    b.publish(m, now).expect("published");
}

/// Register an observation; returns the signal of a new endpoint.
fn register(
    s: &mut Server,
    b: &mut Broker,
    from: SocketAddr,
    data: &[u8],
    now: Instant,
) -> (Packet, Option<Rc<Signal>>) {
    let Step::Authorize(r) = s.handle(from, data, b, now) else {
        panic!("observe: a request to authorize")
    };
    assert_eq!(r.action().0, Action::Subscribe);
    let done = s.complete(*r, Verdict::Allowed(None), b, now);
    (decode(&done.reply.expect("reply")), done.watch)
}

#[test]
fn observe_register_notify_cancel() {
    let (mut s, mut b, m) = setup(|_| {});
    let now = Instant::now();
    let (r, watch) = register(
        &mut s,
        &mut b,
        peer(1),
        &observe(1, 0x11, MessageType::NonConfirmable, "s/+/t", 0),
        now,
    );
    assert_eq!(code(&r), ResponseType::Content);
    assert_eq!(msg::uint(&r, CoapOption::Observe), Some(Ok(1)));
    let sig = watch.expect("a new observing endpoint");
    assert_eq!(b.gauges().subscriptions, 1, "an observer is a subscription");
    publish(&mut b, "s/1/t", b"22", Some("application/json"), now);
    publish(&mut b, "other", b"x", None, now);
    assert!(sig.is_pending(), "the session was woken");
    let mut out = Vec::new();
    assert_eq!(
        s.observers.poll(peer(1), &sig, &mut b, now, &mut out),
        Poll::Idle
    );
    assert_eq!(out.len(), 1);
    let n = decode(&out[0]);
    assert_eq!(n.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(n.get_token(), &[0x11]);
    assert_eq!(code(&n), ResponseType::Content);
    assert_eq!(msg::uint(&n, CoapOption::Observe), Some(Ok(2)));
    assert_eq!(msg::uint(&n, CoapOption::ContentFormat), Some(Ok(50)));
    assert_eq!(n.payload, b"22");
    // Observe 1 cancels; the endpoint's session ends with its last observation.
    let r = roundtrip(
        &mut s,
        &mut b,
        peer(1),
        &observe(2, 0x11, MessageType::Confirmable, "s/+/t", 1),
        now,
    )
    .expect("r");
    assert_eq!(code(&r), ResponseType::Content);
    assert_eq!(b.gauges().subscriptions, 0);
    assert_eq!(b.session_count(), 0);
    assert_eq!(
        s.observers
            .poll(peer(1), &sig, &mut b, now, &mut Vec::new()),
        Poll::Gone
    );
    assert_eq!(m.get(Counter::CoapObserversCancelled), 1);
}

#[test]
fn rst_to_a_notification_cancels_its_observation() {
    let (mut s, mut b, _) = setup(|_| {});
    let now = Instant::now();
    let (_, watch) = register(
        &mut s,
        &mut b,
        peer(1),
        &observe(1, 0x22, MessageType::NonConfirmable, "t", 0),
        now,
    );
    let sig = watch.expect("signal");
    publish(&mut b, "t", b"1", None, now);
    let mut out = Vec::new();
    s.observers.poll(peer(1), &sig, &mut b, now, &mut out);
    let mid = decode(&out[0]).header.message_id;
    let rst = msg::empty(MessageType::Reset, mid);
    assert!(matches!(
        s.handle(peer(1), &rst, &mut b, now),
        Step::Nothing
    ));
    assert!(s.observers.is_empty());
    assert_eq!(b.session_count(), 0);
}

#[test]
fn con_notifications_wait_for_the_ack_and_are_given_up_after_max_retransmit() {
    let (mut s, mut b, m) = setup(|_| {});
    let mut now = Instant::now();
    let (_, watch) = register(
        &mut s,
        &mut b,
        peer(1),
        &observe(1, 0x33, MessageType::Confirmable, "t", 0),
        now,
    );
    let sig = watch.expect("signal");
    publish(&mut b, "t", b"1", None, now);
    publish(&mut b, "t", b"2", None, now);
    let mut out = Vec::new();
    s.observers.poll(peer(1), &sig, &mut b, now, &mut out);
    assert_eq!(out.len(), 1, "one CON notification in flight (NSTART 1)");
    let first = decode(&out[0]);
    assert_eq!(first.header.get_type(), MessageType::Confirmable);
    // The ACK lets the next one go.
    s.handle(
        peer(1),
        &msg::empty(MessageType::Acknowledgement, first.header.message_id),
        &mut b,
        now,
    );
    out.clear();
    s.observers.poll(peer(1), &sig, &mut b, now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(decode(&out[0]).payload, b"2");
    // Not acknowledged: retransmitted MAX_RETRANSMIT times with a doubling timeout, then
    // the observation is cancelled (RFC 7641 §4.5).
    let mut resent = 0;
    for _ in 0..200 {
        now += Duration::from_secs(1);
        out.clear();
        if s.observers.poll(peer(1), &sig, &mut b, now, &mut out) == Poll::Gone {
            break;
        }
        resent += out.len();
    }
    assert_eq!(resent, observe::MAX_RETRANSMIT as usize);
    assert!(s.observers.is_empty());
    assert_eq!(b.session_count(), 0);
    assert_eq!(
        m.get(Counter::Retransmissions),
        u64::from(observe::MAX_RETRANSMIT)
    );
}

#[test]
fn large_notifications_go_block_wise() {
    let (mut s, mut b, _) = setup(|_| {});
    let now = Instant::now();
    // The client asks for 16-byte blocks in its registration (early negotiation).
    let mut p = decode(&observe(1, 0x44, MessageType::NonConfirmable, "big", 0));
    msg::set_block(
        &mut p,
        CoapOption::Block2,
        Block {
            num: 0,
            more: false,
            szx: 0,
        },
    );
    let (_, watch) = register(&mut s, &mut b, peer(1), &bytes(&p), now);
    let sig = watch.expect("signal");
    let body: Vec<u8> = (0..40u8).collect();
    publish(&mut b, "big", &body, None, now);
    let mut out = Vec::new();
    s.observers.poll(peer(1), &sig, &mut b, now, &mut out);
    let n = decode(&out[0]);
    assert_eq!(n.payload, &body[..16]);
    assert_eq!(
        msg::block(&n, CoapOption::Block2),
        Some(Ok(Block {
            num: 0,
            more: true,
            szx: 0
        }))
    );
    assert_eq!(msg::uint(&n, CoapOption::Size2), Some(Ok(40)));
    let mut got = n.payload.clone();
    for num in 1..3u32 {
        let mut g = req(
            MessageType::Confirmable,
            RequestType::Get,
            50 + num as u16,
            "big",
        );
        msg::set_block(
            &mut g,
            CoapOption::Block2,
            Block {
                num,
                more: false,
                szx: 0,
            },
        );
        let r = roundtrip(&mut s, &mut b, peer(1), &bytes(&g), now).expect("block");
        assert_eq!(code(&r), ResponseType::Content);
        let blk = msg::block(&r, CoapOption::Block2)
            .expect("Block2")
            .expect("valid");
        assert_eq!((blk.num, blk.more), (num, num < 2));
        got.extend_from_slice(&r.payload);
    }
    assert_eq!(got, body);
}

#[test]
fn observer_caps() {
    let (mut s, mut b, _) = setup(|l| {
        l.max_observers = 3;
        l.max_observers_per_peer = 2;
    });
    let now = Instant::now();
    let mut codes = Vec::new();
    for (i, (port, filter)) in [(1, "a"), (1, "b"), (1, "c"), (2, "d"), (3, "e")]
        .iter()
        .enumerate()
    {
        let (r, _) = register(
            &mut s,
            &mut b,
            peer(*port),
            &observe(i as u16, i as u8, MessageType::Confirmable, filter, 0),
            now,
        );
        codes.push(code(&r));
    }
    use ResponseType::*;
    assert_eq!(
        codes,
        [
            Content,
            Content,
            ServiceUnavailable,
            Content,
            ServiceUnavailable
        ]
    );
    assert_eq!(s.observers.len(), 3);
    assert_eq!(b.gauges().subscriptions, 3);
}

#[test]
fn large_notifications_kept_for_their_blocks_are_bounded() {
    let n = observe::MAX_BLOCKWISE + 1;
    let (mut s, mut b, _) = setup(|l| {
        l.max_observers = 100;
    });
    let now = Instant::now();
    let mut sigs = Vec::new();
    for i in 0..n {
        let mut p = decode(&observe(1, 0x50, MessageType::NonConfirmable, "big", 0));
        msg::set_block(
            &mut p,
            CoapOption::Block2,
            Block {
                num: 0,
                more: false,
                szx: 0,
            },
        );
        let (_, watch) = register(&mut s, &mut b, peer(1000 + i as u16), &bytes(&p), now);
        sigs.push(watch.expect("signal"));
    }
    publish(&mut b, "big", &[7; 40], None, now);
    for (i, sig) in sigs.iter().enumerate() {
        let mut out = Vec::new();
        s.observers
            .poll(peer(1000 + i as u16), sig, &mut b, now, &mut out);
        assert_eq!(out.len(), 1);
    }
    let get = |s: &mut Server, b: &mut Broker, port: u16| {
        let mut g = req(MessageType::Confirmable, RequestType::Get, 900, "big");
        msg::set_block(
            &mut g,
            CoapOption::Block2,
            Block {
                num: 1,
                more: false,
                szx: 0,
            },
        );
        code(&roundtrip(s, b, peer(port), &bytes(&g), now).expect("reply"))
    };
    // The oldest was forgotten; the newest still has its blocks.
    assert_eq!(
        get(&mut s, &mut b, 1000),
        ResponseType::RequestEntityIncomplete
    );
    assert_eq!(
        get(&mut s, &mut b, 1000 + n as u16 - 1),
        ResponseType::Content
    );
}

#[test]
fn a_non_observer_gets_a_con_notification_every_24_hours() {
    let (mut s, mut b, _) = setup(|_| {});
    let start = Instant::now();
    let (_, watch) = register(
        &mut s,
        &mut b,
        peer(1),
        &observe(1, 0x66, MessageType::NonConfirmable, "t", 0),
        start,
    );
    let sig = watch.expect("signal");
    let mut kinds = Vec::new();
    for at in [
        start,
        start + observe::CON_EVERY,
        start + observe::CON_EVERY + Duration::from_secs(1),
    ] {
        publish(&mut b, "t", b"v", None, at);
        let mut out = Vec::new();
        s.observers.poll(peer(1), &sig, &mut b, at, &mut out);
        let n = decode(&out[0]);
        kinds.push(n.header.get_type());
        if n.header.get_type() == MessageType::Confirmable {
            s.handle(
                peer(1),
                &msg::empty(MessageType::Acknowledgement, n.header.message_id),
                &mut b,
                at,
            );
        }
    }
    use MessageType::*;
    assert_eq!(kinds, [NonConfirmable, Confirmable, NonConfirmable]);
}

#[test]
fn message_buckets_per_endpoint_are_freed_once_full_again() {
    let (mut s, mut b, m) = setup(|l| l.max_exchanges = 2);
    let t0 = Instant::now();
    let cfg: crate::config::RateLimit = serde_yaml::from_str(
        "{ enabled: true, connection: { enabled: false }, message: { rate: 1, burst: 1 } }",
    )
    .unwrap();
    b.ratelimit.configure(&cfg, t0);
    let post = |s: &mut Server, b: &mut Broker, port: u16, mid: u16, now: Instant| {
        let p = req(MessageType::Confirmable, RequestType::Post, mid, "t");
        code(&roundtrip(s, b, peer(port), &bytes(&p), now).expect("a response"))
    };
    assert_eq!(post(&mut s, &mut b, 1, 1, t0), ResponseType::Changed);
    assert_eq!(
        post(&mut s, &mut b, 1, 2, t0),
        ResponseType::TooManyRequests
    );
    assert_eq!(post(&mut s, &mut b, 2, 3, t0), ResponseType::Changed);
    assert_eq!(s.tracked_buckets(), 2);
    // Still in debt: the sweep keeps them.
    s.tick(&b, t0 + Duration::from_millis(500));
    assert_eq!(s.tracked_buckets(), 2);
    // Full again after 1 s: forgotten (a fresh bucket would answer the same).
    let t1 = t0 + Duration::from_secs(1);
    s.tick(&b, t1);
    assert_eq!(s.tracked_buckets(), 0);
    assert_eq!(post(&mut s, &mut b, 1, 4, t1), ResponseType::Changed);
    assert_eq!(s.tracked_buckets(), 1);
    assert_eq!(
        m.rate_limited(
            crate::ratelimit::Limit::Message,
            crate::auth::Protocol::Coap
        ),
        1
    );
    // The limits switched off: nothing is kept.
    b.ratelimit
        .configure(&crate::config::RateLimit::default(), t1);
    s.tick(&b, t1);
    assert_eq!(s.tracked_buckets(), 0);
    assert_eq!(post(&mut s, &mut b, 3, 5, t1), ResponseType::Changed);
    assert_eq!(s.tracked_buckets(), 0);
}
