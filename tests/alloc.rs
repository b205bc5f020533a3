//! Allocations per message on the steady-state QoS 0 path, publish -> route -> deliver,
//! counted by a `#[global_allocator]` that wraps `System`.
//!
//! Its own test binary, so that the counting allocator sees nothing but this test (and
//! counts per thread, so the test harness's threads do not count either).
//!
//! The path is driven in-process through the sans-IO state machines, as the driver does:
//! one publisher `Conn`, one subscriber `Conn`, one `Broker`; PUBLISH frames go into
//! `handle_input`, the subscriber's `poll_deliveries` encodes the deliveries, outputs are
//! cleared (their capacity kept). After a warm-up (queues, scratch vectors and output buffers
//! at their working size), every allocation is per message.
//!
//! What remains, and why it is not zero (BENCHMARKS.md, "Allocations per message"): each
//! message outlives the read buffer it came from (it waits in session queues, shared by
//! every subscriber), so it is copied into its own `Rc<Message>`: one allocation for the
//! `Rc`, which also holds properties + payload up to `INLINE_BODY` bytes, and one for the
//! topic; a larger body is a third. The codec, the router, the queues, the in-flight window
//! and the encoder allocate nothing once warm.

// A `GlobalAlloc` impl is `unsafe impl`: the counting allocator below is the only unsafe
// code of the crate (`unsafe_code = "deny"` in Cargo.toml), and it only forwards to `System`.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fluxmq_edge::broker::{Broker, Limits};
use fluxmq_edge::metrics::{Counter, Metrics};
use fluxmq_edge::protocol::mqtt::codec;
use fluxmq_edge::protocol::mqtt::conn::{Accept, Conn};
use fluxmq_edge::protocol::mqtt::{
    Ack, Connect, Packet, Properties, Publish, QoS, ReasonCode, Subscribe, Version,
};

/// Counts allocations (and reallocations) made by the current thread, so the test
/// harness's own threads do not disturb the figure.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated and not freed by this thread (requested sizes, no malloc overhead).
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn live(delta: i64) {
    let _ = LIVE.try_with(|n| n.set(n.get() + delta));
}

fn bump(c: &'static std::thread::LocalKey<Cell<u64>>) {
    // `try_with`: the allocator runs during thread teardown too.
    let _ = c.try_with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        live(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        live(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        live(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        live(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counts() -> (u64, u64) {
    (ALLOCS.with(Cell::get), FREES.with(Cell::get))
}

// ---- packets and clients -------------------------------------------------------------

const TOPIC: &str = "site/17/dev/042/temp";

fn bytes(p: &Packet<'_>, v: Version) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(p, v, &mut out);
    out
}

fn publish_frame(qos: QoS, id: u16, v: Version, payload: &[u8]) -> Vec<u8> {
    bytes(
        &Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: TOPIC,
            pkid: (qos > QoS::AtMostOnce).then(|| NonZeroU16::new(id.max(1)).unwrap()),
            props: Properties::default(),
            payload,
        }),
        v,
    )
}

fn client(b: &mut Broker, id: &str, v: Version, now: Instant) -> Conn {
    let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
    let accept = if v == Version::V5 {
        Accept::V5
    } else {
        Accept::V3
    };
    let mut c = Conn::new(
        accept,
        peer,
        Rc::default(),
        Duration::from_secs(10),
        1 << 20,
        now,
    );
    let connect = Packet::Connect(Connect {
        version: v,
        clean_start: true,
        keep_alive: 0,
        client_id: id,
        will: None,
        username: None,
        password: None,
        props: Properties::default(),
    });
    c.handle_input(&bytes(&connect, v), b, now);
    assert!(!c.is_closed() && c.out().get(3) == Some(&0), "CONNACK 0");
    c.out().clear();
    c
}

fn subscribe(b: &mut Broker, c: &mut Conn, qos: QoS, v: Version, now: Instant) {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(TOPIC.len() as u16).to_be_bytes());
    payload.extend_from_slice(TOPIC.as_bytes());
    payload.push(qos as u8);
    let sub = Packet::Subscribe(Subscribe {
        pkid: NonZeroU16::MIN,
        props: Properties::default(),
        payload: &payload,
        version: v,
    });
    c.handle_input(&bytes(&sub, v), b, now);
    assert!(!c.out().is_empty(), "SUBACK");
    c.out().clear();
}

/// Drive `messages` PUBLISH frames, `per_read` per `handle_input` call, publisher ->
/// broker -> subscriber, after `warmup` of the same; returns (allocations, frees) per
/// message over the measured part.
fn measure(
    v: Version,
    qos: QoS,
    payload: usize,
    per_read: usize,
    warmup: usize,
    messages: usize,
) -> (f64, f64) {
    let now = Instant::now();
    let mut b = Broker::new(Limits::default(), Rc::new(Metrics::default()));
    let mut publisher = client(&mut b, "pub", v, now);
    let mut sub = client(&mut b, "sub", v, now);
    subscribe(&mut b, &mut sub, qos, v, now);
    let frames: Vec<Vec<u8>> = (0..per_read)
        .map(|i| publish_frame(qos, i as u16 + 1, v, &vec![b'x'; payload]))
        .collect();
    let input: Vec<u8> = frames.concat();
    let acks: Vec<Vec<u8>> = (0..=u16::MAX)
        .map(|id| {
            let ack = Packet::PubAck(Ack {
                pkid: NonZeroU16::new(id.max(1)).unwrap(),
                code: ReasonCode::Success,
                props: Properties::default(),
            });
            bytes(&ack, v)
        })
        .collect();
    let mut ack_in: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut round = |publisher: &mut Conn, sub: &mut Conn, b: &mut Broker| {
        publisher.handle_input(&input, b, now);
        publisher.out().clear(); // PUBACKs to the publisher (QoS 1)
        sub.poll_deliveries(b, now);
        if qos > QoS::AtMostOnce {
            // Acknowledge every delivery, in one read, as a client would.
            ack_in.clear();
            let mut out = &sub.out()[..];
            while !out.is_empty() {
                let len = codec::frame_len(out, usize::MAX).unwrap().unwrap();
                let tlen = usize::from(u16::from_be_bytes([out[2], out[3]]));
                let id = u16::from_be_bytes([out[4 + tlen], out[5 + tlen]]);
                ack_in.extend_from_slice(&acks[usize::from(id)]);
                out = &out[len..];
            }
            sub.out().clear();
            sub.handle_input(&ack_in, b, now);
        }
        sub.out().clear();
    };
    let rounds = |n: usize| n.div_ceil(per_read);
    for _ in 0..rounds(warmup) {
        round(&mut publisher, &mut sub, &mut b);
    }
    let delivered_before = b.metrics.get(Counter::MessagesDelivered);
    let (a0, f0) = counts();
    let n = rounds(messages);
    for _ in 0..n {
        round(&mut publisher, &mut sub, &mut b);
    }
    let (a1, f1) = counts();
    let sent = (n * per_read) as u64;
    let delivered = b.metrics.get(Counter::MessagesDelivered) - delivered_before;
    assert_eq!(delivered, sent, "every message delivered ({v:?}, {qos:?})");
    (
        (a1 - a0) as f64 / sent as f64,
        (f1 - f0) as f64 / sent as f64,
    )
}

/// The measured figures: a 16-byte payload fits in the `Rc<Message>` (its allocation and
/// the topic's), a 256-byte one takes a third allocation. A change that adds an allocation
/// per message fails here; lower them when the design allows fewer (see the module doc).
const SMALL_ALLOCS_PER_MESSAGE: f64 = 2.0;
const LARGE_ALLOCS_PER_MESSAGE: f64 = 3.0;

fn check(v: Version, qos: QoS, payload: usize, per_read: usize, max: f64) {
    let (allocs, frees) = measure(v, qos, payload, per_read, 2_000, 20_000);
    eprintln!(
        "{qos:?} {v:?}, {payload} B payload, {per_read} PUBLISH per read: \
         {allocs:.3} allocations, {frees:.3} frees per message"
    );
    assert!(
        allocs <= max,
        "{qos:?} {v:?}, {payload} B, {per_read} per read: {allocs:.3} allocations per message, \
         expected at most {max}"
    );
    assert!(
        (allocs - frees).abs() < 0.01,
        "{qos:?} {v:?}: {allocs:.3} allocations but {frees:.3} frees per message: something is kept"
    );
}

#[test]
fn qos0_publish_route_deliver_allocations_per_message() {
    for v in [Version::V311, Version::V5] {
        for per_read in [1, 64] {
            check(v, QoS::AtMostOnce, 16, per_read, SMALL_ALLOCS_PER_MESSAGE);
        }
        check(v, QoS::AtMostOnce, 256, 64, LARGE_ALLOCS_PER_MESSAGE);
    }
}

/// QoS 1 both ways (PUBACK to the publisher, the subscriber's PUBACK back) allocates what
/// QoS 0 does: the in-flight window and the acknowledgements reuse their storage.
#[test]
fn qos1_publish_route_deliver_ack_allocations_per_message() {
    for v in [Version::V311, Version::V5] {
        check(v, QoS::AtLeastOnce, 16, 64, SMALL_ALLOCS_PER_MESSAGE);
    }
}

/// The auth caches at their cap (`auth.identity_cache_size` 10000, all three on) after
/// 100,000 distinct credentials and topics: what they hold stays within the budget's
/// per-entry figure (`budget::AUTH_CACHE_ENTRY`, which `--check-config` multiplies by the
/// cap), and does not grow with the number of distinct keys seen.
#[test]
fn auth_caches_at_their_cap_stay_within_the_budget() {
    use fluxmq_edge::auth::cache::{Caches, key};
    let ttl = Duration::from_secs(60);
    let now = Instant::now();
    let before = LIVE.with(Cell::get);
    let mut c = Caches::new(10_000, ttl, ttl, ttl);
    let id: Rc<str> = Rc::from("6f1e2a4c-1b2d-4c3e-8f00-0123456789ab");
    let mut at_cap = 0;
    for i in 0u32..100_000 {
        let n = i.to_le_bytes();
        // A distinct entity id per credential, as Atom would answer.
        c.authn.insert(
            key(&[b"credential", &n]),
            Rc::from(format!("{id}-{i}")),
            now,
        );
        c.alias.insert(key(&[b"alias", &n]), id.clone(), now);
        c.decision.insert(key(&[b"decision", &n]), i % 2 == 0, now);
        if i == 20_000 {
            at_cap = LIVE.with(Cell::get) - before;
        }
    }
    let held = LIVE.with(Cell::get) - before;
    let entries = (c.authn.len() + c.alias.len() + c.decision.len()) as i64;
    assert_eq!(entries, 10_000);
    let per_entry = held / entries;
    println!("auth caches: {held} bytes for {entries} entries ({per_entry} B/entry)");
    assert!(
        per_entry as u64 <= fluxmq_edge::budget::AUTH_CACHE_ENTRY,
        "{per_entry} B/entry over the budget's {}",
        fluxmq_edge::budget::AUTH_CACHE_ENTRY
    );
    // Full since 10,000 inserts: 80,000 more distinct keys cost nothing more (within the
    // hash table's and the B-tree's own slack).
    assert!(held <= at_cap + at_cap / 4, "{held} vs {at_cap} at the cap");
}
