//! Micro-benchmarks of the broker's hot paths, in-process and without sockets: the codec
//! (decode and encode of a QoS 0 and a QoS 1 PUBLISH, MQTT 3.1.1 and 5), topic matching in
//! the subscription trie with 10,000 subscriptions, and the sans-IO state machines end to end
//! (`Conn::handle_input` -> `Broker::publish` -> `Conn::poll_deliveries`), 1 -> 1 and
//! 1 -> 1,000, and the same 1 -> 1 path with the rate limiter on but not reached beside its
//! limits-off twin (`-- ratelimit`).
//!
//! ```text
//! cargo bench --bench hotpath              # everything (~1 minute, plus the release build)
//! cargo bench --bench hotpath -- router    # only the benchmarks whose name contains "router"
//! cargo bench --bench hotpath -- --quick   # 5 batches instead of 15
//! ```
//!
//! A small harness rather than criterion, which would be compiled by every `cargo test`:
//! each benchmark is warmed up (~0.2 s, which also sizes a batch to ~20 ms), then timed over
//! 15 batches; the table gives the median batch in ns per operation, and the fastest batch.
//! It runs with the `bench` profile, which inherits `release` (opt-level "s", fat LTO), so
//! the figures are those of the shipped binary's code. On a shared machine the median moves
//! by 5-15% between runs; compare figures from the same run.

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fluxmq_edge::broker::router::{Match, Router, SubOpts};
use fluxmq_edge::broker::{Broker, Limits, SessionKey, topic};
use fluxmq_edge::metrics::Metrics;
use fluxmq_edge::protocol::mqtt::codec;
use fluxmq_edge::protocol::mqtt::conn::{Accept, Conn};
use fluxmq_edge::protocol::mqtt::{
    Ack, Connect, Packet, Properties, Publish, QoS, ReasonCode, Subscribe, Version,
};

// ---- harness -----------------------------------------------------------------------------

struct Harness {
    filters: Vec<String>,
    batches: usize,
    rows: Vec<(String, f64, f64, String)>,
}

impl Harness {
    fn from_args() -> Harness {
        let mut filters = Vec::new();
        let mut batches = 15;
        for a in std::env::args().skip(1) {
            match a.as_str() {
                "--quick" => batches = 5,
                // `cargo bench` passes --bench; libtest flags are not ours.
                s if s.starts_with("--") => {}
                s => filters.push(s.to_string()),
            }
        }
        Harness {
            filters,
            batches,
            rows: Vec::new(),
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }

    /// Time `f`, which performs `ops` operations per call; records ns per operation.
    fn run(&mut self, name: &str, ops: u64, note: &str, mut f: impl FnMut()) {
        if !self.wanted(name) {
            return;
        }
        // Warm-up, and the number of calls that makes a batch of ~20 ms.
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            f();
            calls += 1;
        }
        let per_call = start.elapsed().as_nanos() as f64 / calls as f64;
        let iters = ((20e6 / per_call) as u64).max(1);
        let mut samples: Vec<f64> = (0..self.batches)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed().as_nanos() as f64 / (iters * ops) as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let min = samples[0];
        eprintln!("{name:<52} {median:>10.1} ns/op  (min {min:.1})  {note}");
        self.rows
            .push((name.to_string(), median, min, note.to_string()));
    }

    fn print_table(&self) {
        println!();
        println!("| benchmark | median ns/op | fastest batch ns/op | note |");
        println!("|---|---:|---:|---|");
        for (name, median, min, note) in &self.rows {
            println!("| {name} | {median:.1} | {min:.1} | {note} |");
        }
    }
}

// ---- packets -----------------------------------------------------------------------------

const TOPIC: &str = "site/17/dev/042/temp";
const PAYLOAD: [u8; 16] = *b"0123456789abcdef";

fn pkid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
}

fn publish<'a>(topic: &'a str, qos: QoS, id: u16, props: Properties<'a>) -> Packet<'a> {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: (qos > QoS::AtMostOnce).then(|| pkid(id)),
        props,
        payload: &PAYLOAD,
    })
}

fn bytes(p: &Packet<'_>, v: Version) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(p, v, &mut out);
    out
}

fn connect_bytes(client_id: &str, v: Version) -> Vec<u8> {
    bytes(
        &Packet::Connect(Connect {
            version: v,
            clean_start: true,
            keep_alive: 0,
            client_id,
            will: None,
            username: None,
            password: None,
            props: Properties::default(),
        }),
        v,
    )
}

fn subscribe_bytes(filter: &str, qos: QoS, v: Version) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    payload.extend_from_slice(filter.as_bytes());
    payload.push(qos as u8);
    bytes(
        &Packet::Subscribe(Subscribe {
            pkid: pkid(1),
            props: Properties::default(),
            payload: &payload,
            version: v,
        }),
        v,
    )
}

fn puback_bytes(id: u16, v: Version) -> Vec<u8> {
    bytes(
        &Packet::PubAck(Ack {
            pkid: pkid(id),
            code: ReasonCode::Success,
            props: Properties::default(),
        }),
        v,
    )
}

// ---- in-process broker -------------------------------------------------------------------

struct World {
    broker: Broker,
    now: Instant,
}

impl World {
    fn new() -> World {
        let limits = Limits {
            max_sessions: 100_000,
            ..Limits::default()
        };
        World {
            broker: Broker::new(limits, Rc::new(Metrics::default())),
            now: Instant::now(),
        }
    }

    fn client(&mut self, id: &str, v: Version) -> Conn {
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let accept = match v {
            Version::V311 => Accept::V3,
            Version::V5 => Accept::V5,
        };
        let mut c = Conn::new(
            accept,
            peer,
            Rc::default(),
            Duration::from_secs(10),
            1 << 20,
            self.now,
        );
        c.handle_input(&connect_bytes(id, v), &mut self.broker, self.now);
        assert!(!c.is_closed() && c.out().get(3) == Some(&0), "CONNACK 0");
        c.out().clear();
        c
    }

    fn subscriber(&mut self, id: &str, filter: &str, qos: QoS, v: Version) -> Conn {
        let mut c = self.client(id, v);
        c.handle_input(&subscribe_bytes(filter, qos, v), &mut self.broker, self.now);
        assert!(!c.out().is_empty(), "SUBACK");
        c.out().clear();
        c
    }
}

/// Packet id of the PUBLISH at the start of `out` (QoS > 0, 3.1.1 or 5, remaining length
/// under 128).
fn delivered_pkid(out: &[u8]) -> u16 {
    let tlen = usize::from(u16::from_be_bytes([out[2], out[3]]));
    u16::from_be_bytes([out[4 + tlen], out[5 + tlen]])
}

// ---- benchmarks --------------------------------------------------------------------------

fn codec_benches(h: &mut Harness) {
    // A typical delivered v5 message: remaining expiry and one user property.
    let mut user = Vec::new();
    codec::put_user_property(&mut user, "unit", "celsius");
    let rich = Properties {
        message_expiry: Some(300),
        raw: &user,
        ..Properties::default()
    };
    let cases: [(&str, QoS, Version, Properties<'_>); 5] = [
        (
            "QoS 0, v3.1.1",
            QoS::AtMostOnce,
            Version::V311,
            Properties::default(),
        ),
        (
            "QoS 1, v3.1.1",
            QoS::AtLeastOnce,
            Version::V311,
            Properties::default(),
        ),
        (
            "QoS 0, v5",
            QoS::AtMostOnce,
            Version::V5,
            Properties::default(),
        ),
        (
            "QoS 1, v5",
            QoS::AtLeastOnce,
            Version::V5,
            Properties::default(),
        ),
        (
            "QoS 1, v5, expiry + user property",
            QoS::AtLeastOnce,
            Version::V5,
            rich,
        ),
    ];
    for (label, qos, v, props) in cases {
        let p = publish(TOPIC, qos, 7, props);
        let frame = bytes(&p, v);
        let note = format!("{} B frame, 16 B payload", frame.len());
        h.run(&format!("codec: decode PUBLISH {label}"), 1, &note, || {
            let f = black_box(frame.as_slice());
            let len = codec::frame_len(f, 1 << 21);
            let n = matches!(len, Ok(Some(n)) if n == f.len());
            let d = codec::decode(f, Some(v));
            black_box((n, &d));
        });
        let mut out = Vec::with_capacity(256);
        h.run(&format!("codec: encode PUBLISH {label}"), 1, &note, || {
            out.clear();
            codec::encode(black_box(&p), v, &mut out);
            black_box(&out);
        });
    }
}

/// 10,000 subscriptions shaped like a gateway's: per-device exact filters, per-site `+`
/// and `#` filters, a few cross-site wildcards, `$SYS` and unrelated trees.
fn router_table() -> (Router, usize) {
    let mut r = Router::default();
    let mut n = 0u32;
    let mut add = |r: &mut Router, f: &str| {
        let t = topic::parse_subscription(f).expect("valid filter");
        let opts = SubOpts {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            sub_id: None,
        };
        r.insert(SessionKey(n), t, opts);
        n += 1;
    };
    let metrics = ["temp", "hum", "pres", "volt"];
    for s in 0..100 {
        for d in 0..20 {
            for m in metrics {
                add(&mut r, &format!("site/{s}/dev/{d:03}/{m}")); // 8,000
            }
        }
        for m in metrics {
            add(&mut r, &format!("site/{s}/dev/+/{m}")); // 400
        }
        for d in 0..10 {
            add(&mut r, &format!("site/{s}/dev/{d:03}/#")); // 1,000
        }
        add(&mut r, &format!("site/{s}/#")); // 100
    }
    for d in 0..20 {
        add(&mut r, &format!("site/+/dev/{d:03}/temp")); // 20
    }
    for i in 0..100 {
        add(&mut r, &format!("$SYS/broker/stat/{i}")); // 100
    }
    for i in 0..380 {
        add(&mut r, &format!("fleet/{i}/status")); // 380
    }
    let len = r.len();
    (r, len)
}

fn router_benches(h: &mut Harness) {
    let (mut r, len) = router_table();
    assert_eq!(len, 10_000);
    // 1,024 published topics spread over the table (a fixed pseudo-random sequence).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let metrics = ["temp", "hum", "pres", "volt"];
    let topics: Vec<String> = (0..1024)
        .map(|_| {
            let (s, d, m) = (next() % 100, next() % 20, next() % 4);
            format!("site/{s}/dev/{d:03}/{}", metrics[m as usize])
        })
        .collect();
    let mut out: Vec<Match> = Vec::with_capacity(64);
    let mut total = 0usize;
    for t in &topics {
        out.clear();
        r.matches(t, &mut out, |_| true);
        total += out.len();
    }
    let note = format!(
        "10,000 subscriptions; 1,024 device topics, {:.1} matches each on average",
        total as f64 / topics.len() as f64
    );
    let mut i = 0;
    h.run("router: match a device topic", 1, &note, || {
        out.clear();
        r.matches(black_box(&topics[i & 1023]), &mut out, |_| true);
        black_box(&out);
        i += 1;
    });
    h.run(
        "router: match a topic with no subscriber",
        1,
        "`site/5/gateway/uptime`: walks `site/5`, meets `site/5/#`",
        || {
            out.clear();
            r.matches(black_box("site/5/gateway/uptime"), &mut out, |_| true);
            black_box(&out);
        },
    );
    h.run(
        "router: match outside every tree",
        1,
        "`other/x/y`: root lookup misses",
        || {
            out.clear();
            r.matches(black_box("other/x/y"), &mut out, |_| true);
            black_box(&out);
        },
    );
}

/// One publisher, one subscriber: PUBLISH bytes in, delivery bytes out.
fn one_to_one_benches(h: &mut Harness) {
    for (label, v) in [("v3.1.1", Version::V311), ("v5", Version::V5)] {
        let mut w = World::new();
        let mut publisher = w.client("pub", v);
        let mut sub = w.subscriber("sub", TOPIC, QoS::AtMostOnce, v);
        let frame = bytes(
            &publish(TOPIC, QoS::AtMostOnce, 0, Properties::default()),
            v,
        );
        h.run(
            &format!("state machines: QoS 0 1->1, one PUBLISH per read, {label}"),
            1,
            "handle_input (decode, Message, route, queue) + poll_deliveries (encode)",
            || {
                publisher.handle_input(black_box(&frame), &mut w.broker, w.now);
                sub.poll_deliveries(&mut w.broker, w.now);
                black_box(sub.out().len());
                sub.out().clear();
            },
        );
        // 64 frames per read, as when the publisher's socket holds a batch.
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 64)
            .collect();
        h.run(
            &format!("state machines: QoS 0 1->1, 64 PUBLISH per read, {label}"),
            64,
            "per message",
            || {
                publisher.handle_input(black_box(&batch), &mut w.broker, w.now);
                sub.poll_deliveries(&mut w.broker, w.now);
                black_box(sub.out().len());
                sub.out().clear();
            },
        );
        // QoS 1 both ways: PUBLISH -> PUBACK to the publisher, delivery -> PUBACK back.
        let mut w = World::new();
        let mut publisher = w.client("pub", v);
        let mut sub = w.subscriber("sub", TOPIC, QoS::AtLeastOnce, v);
        let frames: Vec<Vec<u8>> = (1..=u16::MAX)
            .map(|id| {
                bytes(
                    &publish(TOPIC, QoS::AtLeastOnce, id, Properties::default()),
                    v,
                )
            })
            .collect();
        let acks: Vec<Vec<u8>> = (0..=u16::MAX)
            .map(|id| puback_bytes(id.max(1), v))
            .collect();
        let mut i = 0usize;
        h.run(
            &format!("state machines: QoS 1 1->1, PUBACK both ways, {label}"),
            1,
            "PUBLISH in, PUBACK out, delivery out, subscriber's PUBACK in",
            || {
                publisher.handle_input(black_box(&frames[i % frames.len()]), &mut w.broker, w.now);
                publisher.out().clear();
                sub.poll_deliveries(&mut w.broker, w.now);
                let id = delivered_pkid(sub.out());
                sub.out().clear();
                sub.handle_input(&acks[usize::from(id)], &mut w.broker, w.now);
                i += 1;
            },
        );
    }
}

/// One PUBLISH to 1,000 subscribers: route once, queue 1,000 deliveries, and each
/// subscriber's connection encodes its PUBLISH.
fn fanout_benches(h: &mut Harness) {
    for (label, v) in [("v3.1.1", Version::V311), ("v5", Version::V5)] {
        let mut w = World::new();
        let mut publisher = w.client("pub", v);
        let mut subs: Vec<Conn> = (0..1000)
            .map(|i| w.subscriber(&format!("sub-{i}"), "fan/+/temp", QoS::AtMostOnce, v))
            .collect();
        let frame = bytes(
            &publish("fan/1/temp", QoS::AtMostOnce, 0, Properties::default()),
            v,
        );
        let mut delivered = 0usize;
        let mut round = || {
            publisher.handle_input(black_box(&frame), &mut w.broker, w.now);
            for s in subs.iter_mut() {
                s.poll_deliveries(&mut w.broker, w.now);
                delivered += usize::from(!s.out().is_empty());
                s.out().clear();
            }
        };
        round();
        h.run(
            &format!("fan-out: 1 PUBLISH -> 1,000 subscribers, {label}"),
            1000,
            "per delivery: Broker::publish + 1,000 x (poll_deliveries + encode)",
            &mut round,
        );
        assert!(delivered >= 1000, "every subscriber got its delivery");
    }
}

/// The cost of the rate limiter on the publish path: the same 1->1 rows with
/// `ratelimit.message` on but never reached (burst 2^32-1 at 10^6/s), each beside its
/// limits-off twin in the same run, and one bucket check alone.
fn ratelimit_benches(h: &mut Harness) {
    let on: fluxmq_edge::config::RateLimit = serde_yaml::from_str(
        "{ enabled: true, message: { rate: 1000000, burst: 4294967295 }, \
         subscribe: { rate: 1000000, burst: 4294967295 } }",
    )
    .expect("rate-limit section");
    // Off and on alternate three times: on a shared machine the drift between rows run
    // seconds apart is larger than what is measured.
    for (round, label, v, qos) in [1, 2, 3].into_iter().flat_map(|r| {
        [
            (r, "QoS 0, v3.1.1", Version::V311, QoS::AtMostOnce),
            (r, "QoS 1, v5", Version::V5, QoS::AtLeastOnce),
        ]
    }) {
        for limited in [false, true] {
            let mut w = World::new();
            if limited {
                w.broker.ratelimit.configure(&on, w.now);
            }
            let mut publisher = w.client("pub", v);
            let mut sub = w.subscriber("sub", TOPIC, qos, v);
            let frames: Vec<Vec<u8>> = (1..=u16::MAX)
                .map(|id| bytes(&publish(TOPIC, qos, id, Properties::default()), v))
                .collect();
            let acks: Vec<Vec<u8>> = (0..=u16::MAX)
                .map(|id| puback_bytes(id.max(1), v))
                .collect();
            let mut i = 0usize;
            let name = format!(
                "ratelimit: {label} 1->1, limits {} (#{round})",
                if limited { "on, not reached" } else { "off" }
            );
            h.run(
                &name,
                1,
                "PUBLISH in (and PUBACK), delivery out (and PUBACK in)",
                || {
                    publisher.handle_input(
                        black_box(&frames[i % frames.len()]),
                        &mut w.broker,
                        w.now,
                    );
                    publisher.out().clear();
                    sub.poll_deliveries(&mut w.broker, w.now);
                    if qos == QoS::AtLeastOnce {
                        let id = delivered_pkid(sub.out());
                        sub.out().clear();
                        sub.handle_input(&acks[usize::from(id)], &mut w.broker, w.now);
                    } else {
                        sub.out().clear();
                    }
                    i += 1;
                },
            );
            assert!(!publisher.is_closed() && !sub.is_closed());
            let refused: u64 = w.broker.metrics.rate_limited(
                fluxmq_edge::ratelimit::Limit::Message,
                fluxmq_edge::auth::Protocol::Mqtt,
            );
            assert_eq!(refused, 0, "the limit is never reached");
        }
    }
    let gate = fluxmq_edge::ratelimit::Gate::new(true, 1e6, u32::MAX);
    let mut tat = fluxmq_edge::ratelimit::Tat::FULL;
    let mut t = 0u64;
    h.run(
        "ratelimit: one bucket check (Gate::check)",
        1,
        "governor GCRA over time passed in",
        || {
            t += 1;
            black_box(gate.check(&mut tat, black_box(t)).is_ok());
        },
    );
}

fn main() {
    let mut h = Harness::from_args();
    ratelimit_benches(&mut h);
    codec_benches(&mut h);
    router_benches(&mut h);
    one_to_one_benches(&mut h);
    fanout_benches(&mut h);
    h.print_table();
}
