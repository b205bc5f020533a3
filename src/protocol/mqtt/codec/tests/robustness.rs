//! Round trips for every packet a client sends, and the sweeps that feed peer-controlled
//! bytes (truncations, mutations, random strings) to every entry point: a panic reachable
//! from the network is a security bug.

use super::vectors::{
    CONNECT_V3, CONNECT_V5, PUBLISH_V5_PROPS, SUBSCRIBE_V3, SUBSCRIBE_V5, UNSUBSCRIBE_V3,
    UNSUBSCRIBE_V5, connect_v3, connect_v5,
};
use super::*;

/// `p` with every property block replaced by `f` of it.
fn map_props<'a>(p: Packet<'a>, mut f: impl FnMut(Properties<'a>) -> Properties<'a>) -> Packet<'a> {
    match p {
        Packet::Connect(mut c) => {
            c.props = f(c.props);
            if let Some(w) = c.will.as_mut() {
                w.props = f(w.props);
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(mut c) => {
            c.props = f(c.props);
            Packet::ConnAck(c)
        }
        Packet::Publish(mut x) => {
            x.props = f(x.props);
            Packet::Publish(x)
        }
        Packet::PubAck(mut a) => {
            a.props = f(a.props);
            Packet::PubAck(a)
        }
        Packet::PubRec(mut a) => {
            a.props = f(a.props);
            Packet::PubRec(a)
        }
        Packet::PubRel(mut a) => {
            a.props = f(a.props);
            Packet::PubRel(a)
        }
        Packet::PubComp(mut a) => {
            a.props = f(a.props);
            Packet::PubComp(a)
        }
        Packet::Subscribe(mut s) => {
            s.props = f(s.props);
            Packet::Subscribe(s)
        }
        Packet::SubAck(mut s) => {
            s.props = f(s.props);
            Packet::SubAck(s)
        }
        Packet::Unsubscribe(mut u) => {
            u.props = f(u.props);
            Packet::Unsubscribe(u)
        }
        Packet::UnsubAck(mut u) => {
            u.props = f(u.props);
            Packet::UnsubAck(u)
        }
        Packet::PingReq | Packet::PingResp => p,
        Packet::Disconnect(mut d) => {
            d.props = f(d.props);
            Packet::Disconnect(d)
        }
        Packet::Auth(mut a) => {
            a.props = f(a.props);
            Packet::Auth(a)
        }
    }
}

fn props_of<'a>(p: Packet<'a>) -> Vec<Properties<'a>> {
    let mut all = Vec::new();
    map_props(p, |props| {
        all.push(props);
        props
    });
    all
}

type Canonical<'a> = (Properties<'a>, Vec<(&'a str, &'a str)>, Vec<u32>);

/// What a property block says, whether built for encoding or decoded: the scalars, then the
/// user properties and subscription ids from the slices and from `raw`.
fn canonical(p: Properties<'_>) -> Canonical<'_> {
    let users = p.user.iter().copied().chain(p.user_properties()).collect();
    let ids = p
        .subscription_ids_out
        .iter()
        .copied()
        .chain(p.subscription_ids())
        .collect();
    let scalars = Properties {
        user: &[],
        subscription_ids_out: &[],
        raw: &[],
        ..p
    };
    (scalars, users, ids)
}

fn client_packets_v3() -> Vec<Packet<'static>> {
    let ack = Ack {
        pkid: id(7),
        code: ReasonCode::Success,
        props: Properties::default(),
    };
    let mut all = vec![connect_v3()];
    for (qos, pkid) in [
        (QoS::AtMostOnce, None),
        (QoS::AtLeastOnce, Some(id(1))),
        (QoS::ExactlyOnce, Some(id(65_535))),
    ] {
        all.push(Packet::Publish(Publish {
            dup: qos != QoS::AtMostOnce,
            qos,
            retain: true,
            topic: "x/y",
            pkid,
            props: Properties::default(),
            payload: b"\x00\xffpayload",
        }));
    }
    all.extend([
        Packet::PubAck(ack),
        Packet::PubRec(ack),
        Packet::PubRel(ack),
        Packet::PubComp(ack),
        Packet::Subscribe(Subscribe {
            pkid: id(1),
            props: Properties::default(),
            payload: &SUBSCRIBE_V3[4..],
            version: Version::V311,
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: id(3),
            props: Properties::default(),
            payload: &UNSUBSCRIBE_V3[4..],
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect {
            code: ReasonCode::Success,
            props: Properties::default(),
        }),
    ]);
    all
}

fn client_packets_v5() -> Vec<Packet<'static>> {
    let user: &[(&str, &str)] = &[("a", "1"), ("a", "2"), ("", "")];
    let ack_props = Properties {
        reason_string: Some("why"),
        user,
        ..Properties::default()
    };
    let ack = |code| Ack {
        pkid: id(9),
        code,
        props: ack_props,
    };
    let mut all = vec![connect_v5()];
    all.push(Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "",
        pkid: Some(id(2)),
        props: Properties {
            payload_format: Some(0),
            message_expiry: Some(u32::MAX),
            content_type: Some("application/json"),
            response_topic: Some("re/ply"),
            correlation_data: Some(&[0, 1, 2]),
            topic_alias: Some(u16::MAX),
            subscription_ids_out: &[1, 268_435_455],
            user,
            ..Properties::default()
        },
        payload: &[0xff; 300],
    }));
    all.extend([
        Packet::PubAck(ack(ReasonCode::QuotaExceeded)),
        Packet::PubRec(ack(ReasonCode::Success)),
        Packet::PubRel(ack(ReasonCode::PacketIdentifierNotFound)),
        Packet::PubComp(Ack {
            props: Properties::default(),
            ..ack(ReasonCode::Success)
        }),
        Packet::Subscribe(Subscribe {
            pkid: id(2),
            props: Properties {
                subscription_ids_out: &[42],
                ..Properties::default()
            },
            payload: &SUBSCRIBE_V5[14..],
            version: Version::V5,
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: id(3),
            props: Properties {
                user,
                ..Properties::default()
            },
            payload: &UNSUBSCRIBE_V5[12..],
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect {
            code: ReasonCode::DisconnectWithWill,
            props: Properties {
                session_expiry: Some(0),
                server_reference: Some("elsewhere"),
                reason_string: Some("bye"),
                user,
                ..Properties::default()
            },
        }),
        Packet::Auth(Auth {
            code: ReasonCode::ReAuthenticate,
            props: Properties {
                auth_method: Some("SCRAM-SHA-1"),
                auth_data: Some(b"n,,n=user,r=x"),
                reason_string: Some("again"),
                ..Properties::default()
            },
        }),
    ]);
    all
}

#[test]
fn round_trip_every_client_packet_both_versions() {
    let cases = client_packets_v3()
        .into_iter()
        .map(|p| (p, Version::V311))
        .chain(client_packets_v5().into_iter().map(|p| (p, Version::V5)));
    for (packet, version) in cases {
        let bytes = enc(&packet, version);
        let before_connect = matches!(packet, Packet::Connect(_));
        let decoded = ok(&bytes, if before_connect { NONE } else { Some(version) });
        // Same packet apart from the property blocks...
        let bare = |p| map_props(p, |_| Properties::default());
        assert_eq!(bare(decoded), bare(packet), "{version:?}");
        // ...which say the same thing.
        let want: Vec<_> = props_of(packet).into_iter().map(canonical).collect();
        let got: Vec<_> = props_of(decoded).into_iter().map(canonical).collect();
        assert_eq!(got, want, "{packet:?}");
        // And a decoded block, sent on as `raw` alone, reproduces the original bytes.
        let relay = map_props(decoded, |p| Properties {
            raw: p.raw,
            ..Properties::default()
        });
        assert_eq!(enc(&relay, version), bytes, "{packet:?}");
    }
}

// ---- No panic from peer bytes ------------------------------------------------------------

/// xorshift64: deterministic, good enough to spread bytes around.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).expect("fits")).expect("fits")
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.byte()).collect()
    }
}

/// Valid frames of every kind a client sends, in both versions.
fn corpus() -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = [
        CONNECT_V3,
        CONNECT_V5,
        PUBLISH_V5_PROPS,
        SUBSCRIBE_V3,
        SUBSCRIBE_V5,
        UNSUBSCRIBE_V3,
        UNSUBSCRIBE_V5,
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    all.extend(client_packets_v3().iter().map(|p| enc(p, Version::V311)));
    all.extend(client_packets_v5().iter().map(|p| enc(p, Version::V5)));
    all
}

/// Runs every entry point on `bytes`, and everything that reads a decoded packet.
fn exercise(bytes: &[u8]) {
    let _ = frame_len(bytes, MAX);
    let _ = frame_len(bytes, 4);
    for version in [NONE, V3, V5] {
        if let Ok(p) = decode(bytes, version) {
            read_everything(p);
        }
    }
}

fn read_everything(p: Packet<'_>) {
    for props in props_of(p) {
        let _ = props.user_properties().count();
        let _ = props.subscription_ids().count();
    }
    match p {
        Packet::Subscribe(s) => assert!(s.filters().count() > 0),
        Packet::Unsubscribe(u) => assert!(u.filters().count() > 0),
        _ => {}
    }
    for version in [Version::V311, Version::V5] {
        let mut out = Vec::new();
        assert_eq!(encode(&p, version, &mut out), encoded_len(&p, version));
    }
}

#[test]
fn every_truncation_fails_without_panic() {
    for bytes in corpus() {
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            exercise(prefix);
            for version in [NONE, V3, V5] {
                assert!(decode(prefix, version).is_err(), "{prefix:02x?}");
            }
        }
        // The body cut short under a fixed header that agrees with the cut, so decoding
        // runs into the missing fields rather than the length check.
        let (_, len_bytes) = cursor::read_varint(&bytes[1..])
            .expect("valid frame")
            .expect("whole header");
        let body = &bytes[1 + len_bytes..];
        for cut in 0..body.len() {
            exercise(&frame(bytes[0], &body[..cut]));
        }
    }
}

#[test]
fn mutated_frames_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for bytes in corpus() {
        for _ in 0..400 {
            let mut m = bytes.clone();
            for _ in 0..=rng.below(3) {
                // Mostly after the fixed header, so the length still agrees.
                let at = match m.len() - 2 {
                    0 => rng.below(2),
                    body if rng.below(8) > 0 => 2 + rng.below(body),
                    _ => rng.below(m.len()),
                };
                m[at] = rng.byte();
            }
            exercise(&m);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..4000 {
        exercise(&rng.bytes(64));
        // Well framed, so decoding gets past the length check.
        let first = rng.byte();
        exercise(&frame(first, &rng.bytes(48)));
        // A known packet type with valid flags, a known protocol level for CONNECT.
        let first = [0x10, 0x30, 0x32, 0x40, 0x62, 0x82, 0xa2, 0xe0, 0xf0][rng.below(9)];
        let mut body = rng.bytes(40);
        if first == 0x10 {
            let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4 + (rng.byte() & 1)];
            connect.append(&mut body);
            body = connect;
        }
        exercise(&frame(first, &body));
    }
}

#[test]
fn readers_of_raw_data_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..3000 {
        let data = rng.bytes(40);
        let props = Properties {
            raw: &data,
            ..Properties::default()
        };
        let _ = props.user_properties().count();
        let _ = props.subscription_ids().count();
        for version in [Version::V311, Version::V5] {
            let sub = Subscribe {
                pkid: id(1),
                props,
                payload: &data,
                version,
            };
            let _ = sub.filters().count();
        }
        let unsub = Unsubscribe {
            pkid: id(1),
            props,
            payload: &data,
        };
        let _ = unsub.filters().count();
    }
    // A valid entry followed by garbage: the first is read, then the iterator stops.
    let payload = [0, 1, b'a', 0x01, 0, 9, b'b'];
    let sub = Subscribe {
        pkid: id(1),
        props: Properties::default(),
        payload: &payload,
        version: Version::V311,
    };
    let mut it = sub.filters();
    assert_eq!(
        it.next().map(|(f, o)| (f, o.qos)),
        Some(("a", QoS::AtLeastOnce))
    );
    assert_eq!(it.next(), None);
    assert_eq!(it.next(), None);
}
