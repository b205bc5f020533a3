//! The memory budget: the worst-case heap a configuration allows, by named contributor, and
//! the refusal of a configuration whose worst case exceeds `broker.memory_limit`.
//!
//! Worst case means every cap full at once: every listener at `max_connections`, each
//! connection holding a partial packet of the largest frame and a full output buffer, every
//! session at its queue and in-flight caps with distinct messages of the largest size, every
//! subscription, retained and cache slot used. That is what a hostile or unlucky set of
//! clients can make the broker hold; the idle footprint is far smaller.
//!
//! What is simultaneously possible, and therefore summed:
//! - Partial packets: a connection keeps the bytes of an incomplete packet, with room for the
//!   whole frame reserved once its header is known (`protocol::mqtt::conn::max_frame`:
//!   `max_message_size` + a framing allowance of up to 64 KiB). The frame cap applies before CONNECT too, so every
//!   connection, authenticated or not, can hold one at the same time (a slow sender).
//! - Output: deliveries are encoded until the buffer reaches the 64 KiB high-water mark; the
//!   last one may cross it by up to one frame, so a connection whose peer does not read holds
//!   up to 64 KiB + one frame. Partial input and full output can coexist on a connection.
//! - Not summed: the 64 KiB read buffer, one for the thread, and the transient copy while a
//!   partial packet is completed (one connection at a time: the broker is single-threaded).
//! - A message counts its topic, properties and payload (at most one frame), its `Message`
//!   header and its allocations. A message shared by several queues is counted in each:
//!   the worst case is distinct messages everywhere.
//! - Wills: every session can hold one (connected, or disconnected within its will delay),
//!   and a will is bounded only by the CONNECT frame.
//! - In-flight deliveries leave the queue's byte count when sent, so the in-flight window
//!   is counted on top of the queue cap.
//!
//! Sizes: `std::mem::size_of` of the real types where they exist and are public; documented
//! constants otherwise (async task and reactor registration, trie nodes, hash-map slack,
//! allocator headers, features not built yet). Client IDs, topic names and filters are
//! assumed [`ASSUMED_NAME_LEN`] bytes: MQTT allows 65535 and no key caps them, so that is
//! the one place where this is not a true upper bound.

use std::fmt;
use std::mem::size_of;

use crate::broker::SessionKey;
use crate::broker::message::Message;
use crate::broker::router::{Match, SubOpts};
use crate::broker::session::{Delivery, Inflight, Session, Signal};
use crate::config::{AuthProvider, Config, Family, Security};
use crate::listener::READ_BUF;
use crate::protocol::mqtt::conn::{Conn, max_frame as mqtt_max_frame};

/// Assumed length of a client ID, topic name or topic filter (bytes).
pub const ASSUMED_NAME_LEN: u64 = 128;
/// Assumed topic levels of a subscription filter, each a trie node when nobody shares it.
pub const ASSUMED_FILTER_LEVELS: u64 = 4;
/// Output kept before the driver stops pulling deliveries and reading input.
/// (At most; `protocol::mqtt::conn::out_high_water` scales it with the message size.)
pub const OUT_HIGH_WATER: u64 = crate::protocol::mqtt::conn::OUT_HIGH_WATER as u64;
/// Connections the health endpoint serves at once.
pub const HEALTH_MAX_CONNECTIONS: u64 = crate::listener::health::MAX_CONNECTIONS as u64;
/// One health/metrics HTTP connection: hyper's read buffer (capped at 16 KiB), its write
/// buffer and a `/metrics` body.
pub const HEALTH_CONNECTION: u64 = 32 * 1024;
/// One spawned connection driver: the `listener::mqtt::serve` future, the wrapper that
/// counts active connections, and the executor's task header. The test
/// `task_constant_covers_the_driver_future` measures the real future against it.
pub const DRIVER_TASK: u64 = 1024;
/// A TLS connection's task: the handshake, then the MQTT driver with the rustls connection
/// (its 1.2 KiB struct) inline. It replaces [`DRIVER_TASK`] for TLS connections;
/// `task_constant_covers_the_driver_future` measures it (3.2 KiB on x86_64).
pub const TLS_TASK: u64 = 4 * 1024;
/// Heap of one idle TLS connection: rustls' record-layer keys, the 4 KiB read buffer it
/// keeps between records, the client's certificate chain on mTLS, and the certificate
/// identity. `tests/tls_memory.rs` measures it (mTLS, TLS 1.3, P-256: 7.4 KiB).
pub const TLS_HEAP_IDLE: u64 = 8 * 1024;
/// What a busy TLS connection adds: ciphertext queued for a peer that does not read (up to
/// `listener::tls::SEND_BUFFER_LIMIT`, one record: 16.3 KiB measured), rustls' read buffer
/// grown for full-size records (its capacity doubles to 32 KiB), and the records decrypted
/// from one read not yet handed to the driver (at most that buffer's content).
/// `tests/tls_memory.rs` checks the measured parts against it.
pub const TLS_BUFFERS: u64 = 17 * 1024 + 32 * 1024 + 32 * 1024;
/// What an idle TLS connection costs on top of a plain one.
pub const TLS_CONNECTION_IDLE: u64 = TLS_TASK - DRIVER_TASK + TLS_HEAP_IDLE;
/// What a busy TLS connection costs on top of a plain one (the worst case).
pub const TLS_CONNECTION_BUSY: u64 = TLS_CONNECTION_IDLE + TLS_BUFFERS;
/// Per TLS listener: its `ServerConfig` (certificates, keys, verifier roots) and rustls'
/// session-resumption cache of 256 entries (each with the client's certificate chain on
/// mTLS); twice during a reload.
pub const TLS_LISTENER: u64 = 2 * (256 * 2048 + 32 * 1024);
/// Per socket in the async-io reactor: the `Arc<Source>` with its waker slots, plus a
/// timer entry.
pub const REACTOR_ENTRY: u64 = 384;
/// A subscription-trie node (`broker::router::Node`, private there): its child map, its
/// subscriber and shared-group vectors, its slab slot, the parent's map entry and the level
/// string.
pub const TRIE_NODE: u64 = 256;
/// One `ratelimit.connection` entry in the IP map: the address and its bucket (one `u64`).
/// The per-client buckets (`ratelimit.message`, `ratelimit.subscribe`) are 16 bytes inside
/// each connection's state machine, counted with the connection.
pub const RATELIMIT_IP_ENTRY: u64 = size_of::<(std::net::IpAddr, crate::ratelimit::Tat)>() as u64;
/// One auth cache entry (src/auth/cache.rs): a 16-byte key (truncated SHA-256) in the map
/// and in the age index, the value (an id behind an `Rc`, or a bool), its expiry and
/// insertion number: 238 B measured with the caches full (tests/alloc.rs checks the
/// figure stays under this one).
pub const AUTH_CACHE_ENTRY: u64 = 2 * ASSUMED_NAME_LEN + 64;
/// `auth.identity_cache_size` when 0.
pub const AUTH_CACHE_DEFAULT: u64 = 10_000;
/// Executor, reactor, metrics, logger, the configuration tree: fixed, whatever the caps.
pub const RUNTIME_BASE: u64 = 256 * 1024;
/// Header and rounding of one heap allocation (glibc and musl malloc).
pub const ALLOC: u64 = 16;
/// What a WebSocket adds to a connection: `WsStream`'s own fields (measured by
/// `ws_constant_covers_the_stream`), two control frames owed (a pong behind one partly
/// written, each at most 127 bytes) and one control frame's payload being read (125 bytes).
pub const WS_CONNECTION: u64 = 192 + 2 * (127 + ALLOC) + 125 + ALLOC;
/// One HTTP bridge connection besides its request: the connection task with hyper's
/// state, its read buffer (`listener::http::MAX_HEADER_BYTES` + 8 KiB), the response and
/// the reactor entry.
pub const HTTP_CONNECTION: u64 = 4 * 1024 + HTTP_HEAD + 8 * 1024 + 1024 + REACTOR_ENTRY;
/// The bridges' compile-time ceilings, repeated here so that the budget is computed in a
/// binary built without them too (the tests check they match): the HTTP head cap
/// (`listener::http::MAX_HEADER_BYTES`), and per CoAP listener the uploads being assembled
/// (`protocol::coap::MAX_UPLOADS`), requests awaiting auth (`listener::coap::MAX_PENDING_AUTH`),
/// large notifications kept (`protocol::coap::observe::MAX_BLOCKWISE`), the receive buffer
/// (`protocol::coap::MAX_DATAGRAM`).
pub const HTTP_HEAD: u64 = 16 * 1024;
pub const COAP_UPLOADS: u64 = 32;
pub const COAP_PENDING_AUTH: u64 = 64;
pub const COAP_BLOCKWISE: u64 = 16;
pub const COAP_DATAGRAM: u64 = 1500;
/// One remembered CoAP exchange: its map entry and order entry, and the cached response
/// (at most one block of 1 KiB with its header and options); plus one endpoint's
/// rate-limit buckets (`protocol::coap::buckets`: as many entries at most, 48 B + map slot).
pub const COAP_EXCHANGE: u64 = 64 + 32 + 1152 + ALLOC + 64;
/// One CoAP observation beyond its session and subscription (counted with the sessions):
/// the endpoint entry, the notifier task, the observation, a CON notification in flight
/// and the NON Message IDs remembered for RSTs. `bench/bridges.sh` measures 1.5 KiB per
/// observer including the session.
pub const COAP_OBSERVER: u64 = 4 * 1024;
/// `Rc` strong and weak counts.
const RC_HEADER: u64 = 2 * size_of::<usize>() as u64;

/// One named part of the worst case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contributor {
    /// What it is, e.g. "session queues".
    pub name: &'static str,
    /// Bytes, or `None` when no cap bounds it.
    pub bytes: Option<u64>,
    /// How it is computed, with the numbers.
    pub formula: String,
    /// The keys that lower it.
    pub lower: String,
}

/// The worst case of a configuration, contributor by contributor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub contributors: Vec<Contributor>,
    /// `broker.memory_limit` in bytes; 0 = unlimited.
    pub limit: u64,
}

impl Budget {
    /// The sum, or `None` when something is unbounded.
    pub fn total(&self) -> Option<u64> {
        self.contributors
            .iter()
            .try_fold(0u64, |sum, c| Some(sum.saturating_add(c.bytes?)))
    }

    /// Contributors, largest first (unbounded ones first of all).
    pub fn largest(&self) -> Vec<&Contributor> {
        let mut v: Vec<&Contributor> = self.contributors.iter().collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.bytes.unwrap_or(u64::MAX)));
        v
    }

    pub fn get(&self, name: &str) -> Option<&Contributor> {
        self.contributors.iter().find(|c| c.name == name)
    }

    /// Whether the worst case fits in `broker.memory_limit`; the error names the three
    /// largest contributors and what to lower.
    pub fn check(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Ok(());
        }
        let over = match self.total() {
            Some(t) if t <= self.limit => return Ok(()),
            Some(t) => format!("is {}", human(t)),
            None => "is unbounded".to_owned(),
        };
        let top: Vec<String> = self
            .largest()
            .into_iter()
            .filter(|c| c.bytes != Some(0))
            .take(3)
            .map(|c| {
                format!(
                    "  {} {}: {}; lower {}",
                    c.name,
                    c.bytes.map_or_else(|| "unbounded".to_owned(), human),
                    c.formula,
                    c.lower
                )
            })
            .collect();
        Err(format!(
            "broker.memory_limit: the worst-case memory this configuration allows {over}, more \
             than broker.memory_limit ({}). Largest contributors:\n{}\nLower those keys (a \
             board profile in boards/ is a starting point), or raise broker.memory_limit if \
             the machine has the RAM.",
            human(self.limit),
            top.join("\n")
        ))
    }
}

impl fmt::Display for Budget {
    /// A table, largest first, then the total against the limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = if self.limit == 0 {
            "broker.memory_limit 0 = unlimited".to_owned()
        } else {
            format!("broker.memory_limit {}", human(self.limit))
        };
        let total = self.total().map_or_else(|| "unbounded".to_owned(), human);
        writeln!(f, "memory budget, worst case: {total} ({limit})")?;
        for c in self.largest() {
            let bytes = c.bytes.map_or_else(|| "unbounded".to_owned(), human);
            writeln!(f, "  {:>10}  {:<26} {}", bytes, c.name, c.formula)?;
        }
        Ok(())
    }
}

/// Bytes for people: `512 B`, `64.0 KiB`, `1.5 MiB`, `2.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

fn sz<T>() -> u64 {
    size_of::<T>() as u64
}

/// Hash-map memory for `n` entries of `entry` bytes: hashbrown keeps at most 7/8 of its
/// power-of-two buckets full, one control byte each.
fn map_bytes(n: u64, entry: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let buckets = (n.saturating_mul(8).div_ceil(7)).max(4).next_power_of_two();
    buckets.saturating_mul(entry + 1)
}

/// One entry's share of a hash map that grows with the number of sessions or subscriptions:
/// right after the table doubles, 16/7 buckets per entry.
fn map_slot(entry: u64) -> u64 {
    (entry + 1) * 16 / 7
}

/// `VecDeque`/`Vec` memory for `n` elements: capacity grows to a power of two.
fn deque_bytes(n: u64, elem: u64) -> u64 {
    n.next_power_of_two().saturating_mul(elem)
}

fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

/// The worst-case heap `cfg` allows (see the module documentation).
pub fn worst_case(cfg: &Config) -> Budget {
    let b = &cfg.broker;
    let s = &cfg.session;
    let mut out = Vec::new();
    let mut add = |name, bytes, formula: String, lower: String| {
        out.push(Contributor {
            name,
            bytes,
            formula,
            lower,
        })
    };

    // ---- connections ---------------------------------------------------------------------
    let mut conns: Option<u64> = Some(0);
    let mut conn_keys = Vec::new();
    for (slot, l) in cfg.server.slots() {
        // HTTP and CoAP connections hold no MQTT state: they have their own terms
        // (`bridges`).
        if l.enabled() && !matches!(slot.family, Family::Http | Family::Coap) {
            conn_keys.push(format!("{}.max_connections", slot.key));
            conns = match (conns, l.max_connections) {
                (_, 0) | (None, _) => None,
                (Some(n), m) => Some(n + u64::from(m)),
            };
        }
    }
    let conn_keys = if conn_keys.is_empty() {
        "server.<listener>.max_connections".to_owned()
    } else {
        conn_keys.join(", ")
    };
    let conns_text = conns.map_or_else(
        || "unlimited connections (a listener has max_connections 0)".to_owned(),
        |n| format!("{n} connections"),
    );
    let max_frame = mqtt_max_frame(b.max_message_size as usize) as u64;
    let frame_text = format!(
        "{} (broker.max_message_size {} + {} framing)",
        human(max_frame),
        human(u64::from(b.max_message_size)),
        human(max_frame - u64::from(b.max_message_size))
    );
    let alias_max = u64::from(b.topic_alias_maximum);
    let name = ASSUMED_NAME_LEN + ALLOC;
    let conn_fixed = sz::<Conn>()
        + DRIVER_TASK
        + REACTOR_ENTRY
        + RC_HEADER
        + sz::<Signal>()
        + ALLOC
        + name // client ID
        + 256 // property scratch buffer
        // inbound aliases (a vector of names) and outbound aliases (a map name -> alias)
        + mul(alias_max, sz::<Option<Box<str>>>() + name)
        + map_bytes(alias_max, sz::<(Box<str>, u16)>())
        + mul(alias_max, name);
    let per_conn = |per: u64| conns.map(|n| mul(n, per));
    add(
        "connection state",
        per_conn(conn_fixed),
        format!(
            "{conns_text} x {} (state machine {} B, driver task, reactor, {alias_max} topic \
             aliases each way)",
            human(conn_fixed),
            sz::<Conn>()
        ),
        format!("{conn_keys} or broker.topic_alias_maximum"),
    );
    add(
        "partial-packet buffers",
        per_conn(max_frame + ALLOC),
        format!("{conns_text} x {frame_text}"),
        format!("{conn_keys} or broker.max_message_size"),
    );
    let high_water =
        crate::protocol::mqtt::conn::out_high_water(b.max_message_size as usize) as u64;
    let out_buf = high_water + max_frame + ALLOC;
    add(
        "output buffers",
        per_conn(out_buf),
        format!(
            "{conns_text} x {} (high water {} + one frame)",
            human(out_buf),
            human(high_water)
        ),
        format!("{conn_keys} or broker.max_message_size"),
    );
    // WebSocket connections are counted above like any connection; framing adds the state
    // of `listener::ws::WsStream` and the control frames it may owe. The upgrade request
    // buffer (at most `handshake::MAX_REQUEST`) is freed before the connection has an MQTT
    // partial packet or output, and is smaller than those (`ws_handshake_fits_in_the_mqtt_terms`).
    let mut ws_conns: Option<u64> = Some(0);
    let mut ws_keys = Vec::new();
    for (slot, l) in cfg.server.slots() {
        if l.enabled() && slot.family == Family::MqttWebSocket {
            ws_keys.push(format!("{}.max_connections", slot.key));
            ws_conns = match (ws_conns, l.max_connections) {
                (_, 0) | (None, _) => None,
                (Some(n), m) => Some(n + u64::from(m)),
            };
        }
    }
    if !ws_keys.is_empty() {
        add(
            "WebSocket framing",
            ws_conns.map(|n| mul(n, WS_CONNECTION)),
            match ws_conns {
                Some(n) => format!(
                    "{n} WebSocket connections x {WS_CONNECTION} B (stream state, a pong and a                      close frame owed, a control frame's payload)"
                ),
                None => "unlimited WebSocket connections (max_connections 0)".to_owned(),
            },
            ws_keys.join(", "),
        );
    }
    add(
        "read buffer",
        Some(READ_BUF as u64 + ALLOC),
        format!(
            "one {} buffer shared by every connection",
            human(READ_BUF as u64)
        ),
        "nothing (fixed)".to_owned(),
    );

    // ---- TLS -----------------------------------------------------------------------------
    // Every connection of a TLS slot (handshaking ones included: they count against the
    // same max_connections) holds rustls state and its buffers, on top of the terms above.
    let mut tls_conns: Option<u64> = Some(0);
    let mut tls_keys = Vec::new();
    for (slot, l) in cfg.server.slots() {
        if l.enabled() && slot.security != Security::Plain && slot.family != Family::Coap {
            tls_keys.push(format!("{}.max_connections", slot.key));
            tls_conns = match (tls_conns, l.max_connections) {
                (_, 0) | (None, _) => None,
                (Some(n), m) => Some(n + u64::from(m)),
            };
        }
    }
    if !tls_keys.is_empty() {
        let listeners = tls_keys.len() as u64;
        add(
            "TLS connections",
            tls_conns.map(|n| mul(n, TLS_CONNECTION_BUSY)),
            format!(
                "{} x {} (rustls state {} idle, plus one queued record, its read buffer and \
                 decrypted records)",
                tls_conns.map_or_else(
                    || "unlimited TLS connections".to_owned(),
                    |n| format!("{n} TLS connections")
                ),
                human(TLS_CONNECTION_BUSY),
                human(TLS_CONNECTION_IDLE)
            ),
            tls_keys.join(", "),
        );
        add(
            "TLS listeners",
            Some(listeners * TLS_LISTENER),
            format!(
                "{listeners} TLS listener(s) x {} (configuration and 256-entry session cache, \
                 twice during a certificate reload)",
                human(TLS_LISTENER)
            ),
            "the tls/mtls slots switched on".to_owned(),
        );
    }

    // ---- sessions ------------------------------------------------------------------------
    let sessions = u64::from(s.max_sessions);
    // A message: Rc header + `Message` + topic, properties and payload (at most one frame),
    // in three allocations.
    let msg = RC_HEADER + sz::<Message>() + max_frame + 3 * ALLOC;
    let session_fixed = sz::<Session>()
        + 8 // slab slot tag
        + name // session.client_id
        + map_slot(sz::<(Box<str>, SessionKey)>()) // the by-client index
        + name // its key
        + sz::<SessionKey>(); // the broker's `touched` scratch
    add(
        "session state",
        Some(mul(sessions, session_fixed)),
        format!(
            "session.max_sessions {sessions} x {} (Session {} B, client ID, index)",
            human(session_fixed),
            sz::<Session>()
        ),
        "session.max_sessions".to_owned(),
    );
    add(
        "wills",
        Some(mul(sessions, msg)),
        format!(
            "session.max_sessions {sessions} x one will of up to {} (bounded by the CONNECT \
             frame)",
            human(msg)
        ),
        "session.max_sessions or broker.max_message_size".to_owned(),
    );
    let online_msgs = if s.max_send_queue_size > 0 {
        s.max_send_queue_size
    } else {
        s.max_offline_queue_size
    };
    // A connected session may hold a burst of up to twice its caps while it drains
    // (broker::session::Push::Overflow); an offline one holds its offline caps.
    let queue_msgs = u64::from((2 * online_msgs).max(s.max_offline_queue_size));
    let queue_bytes = s.max_queue_bytes.saturating_mul(2);
    let by_count = mul(queue_msgs, msg);
    let (queue_payload, queue_rule) = if queue_bytes > 0 && queue_bytes < by_count {
        (
            // The byte cap counts topic + body + `Message`; add what it does not see.
            queue_bytes + mul(queue_msgs, RC_HEADER + 3 * ALLOC),
            format!("2 x session.max_queue_bytes {}", human(s.max_queue_bytes)),
        )
    } else {
        (by_count, format!("{queue_msgs} messages x {}", human(msg)))
    };
    let per_queue = queue_payload + deque_bytes(queue_msgs, sz::<Delivery>()) + ALLOC;
    add(
        "session queues",
        Some(mul(sessions, per_queue)),
        format!(
            "session.max_sessions {sessions} x {} ({queue_rule}, the lower of the byte and \
             message caps; {queue_msgs} = max of max_offline_queue_size and twice \
             max_send_queue_size, a connected session's burst allowance)",
            human(per_queue)
        ),
        "session.max_queue_bytes, session.max_offline_queue_size or session.max_sessions"
            .to_owned(),
    );
    let window = u64::from(s.max_inflight_messages.min(u32::from(u16::MAX)));
    let per_window = mul(window, msg)
        + deque_bytes(window, sz::<Inflight>())
        + deque_bytes(window, 2) // inbound QoS 2 packet ids
        + 2 * ALLOC;
    add(
        "in-flight windows",
        Some(mul(sessions, per_window)),
        format!(
            "session.max_sessions {sessions} x {window} in flight x {} (sent, not yet \
             acknowledged: outside the queue's byte cap)",
            human(msg)
        ),
        "session.max_inflight_messages or broker.max_message_size".to_owned(),
    );
    // ---- subscriptions -------------------------------------------------------------------
    let per_sub = map_slot(sz::<(Box<str>, SubOpts)>()) // the session's own map
        + name // the filter it keeps
        + 2 * sz::<(SessionKey, SubOpts)>() // router entry (vector slack)
        + sz::<Match>() // the match scratch vector
        + ASSUMED_FILTER_LEVELS * TRIE_NODE;
    let subs = match s.max_subscriptions {
        0 => None,
        n => Some(mul(sessions, u64::from(n))),
    };
    add(
        "subscriptions",
        subs.map(|n| mul(n, per_sub)),
        match subs {
            Some(n) => format!(
                "session.max_sessions {sessions} x session.max_subscriptions {} = {n} x {} \
                 ({ASSUMED_FILTER_LEVELS} trie levels each)",
                s.max_subscriptions,
                human(per_sub)
            ),
            None => "session.max_subscriptions 0 = unlimited".to_owned(),
        },
        "session.max_subscriptions or session.max_sessions".to_owned(),
    );

    // ---- retained ------------------------------------------------------------------------
    let retained = u64::from(b.max_retained_messages);
    let by_count = mul(retained, msg);
    let (retained_payload, rule) = if b.max_retained_bytes > 0 && b.max_retained_bytes < by_count {
        (
            b.max_retained_bytes + mul(retained, RC_HEADER + 3 * ALLOC),
            format!("broker.max_retained_bytes {}", human(b.max_retained_bytes)),
        )
    } else {
        (by_count, format!("{retained} x {}", human(msg)))
    };
    let retained_bytes =
        retained_payload + map_bytes(retained, sz::<(Box<str>, usize)>()) + mul(retained, name);
    add(
        "retained messages",
        Some(retained_bytes),
        format!(
            "{rule} (the lower of the byte and count caps) + index of \
             broker.max_retained_messages {retained}"
        ),
        "broker.max_retained_bytes or broker.max_retained_messages".to_owned(),
    );

    // ---- rate limits, auth caches, health, runtime ---------------------------------------
    let rl = &cfg.ratelimit;
    if rl.enabled && rl.connection.enabled {
        let ips = u64::from(rl.connection.max_tracked_ips);
        add(
            "rate-limit tables",
            Some(map_bytes(ips, RATELIMIT_IP_ENTRY)),
            format!(
                "IP map of ratelimit.connection.max_tracked_ips {ips} x {RATELIMIT_IP_ENTRY} B \
                 (per-client buckets: 16 B inside each connection)"
            ),
            "ratelimit.connection.max_tracked_ips".to_owned(),
        );
    }
    if cfg
        .auth
        .provider_kind()
        .is_ok_and(|p| p != AuthProvider::Disabled)
    {
        let n = match cfg.auth.identity_cache_size {
            0 => AUTH_CACHE_DEFAULT,
            n => u64::from(n),
        };
        add(
            "auth caches",
            Some(map_bytes(n, AUTH_CACHE_ENTRY)),
            format!("auth.identity_cache_size {n} x {AUTH_CACHE_ENTRY} B"),
            "auth.identity_cache_size".to_owned(),
        );
    }
    if cfg.server.health_listening() {
        add(
            "health endpoint",
            Some(HEALTH_MAX_CONNECTIONS * HEALTH_CONNECTION),
            format!(
                "{HEALTH_MAX_CONNECTIONS} HTTP connections x {}",
                human(HEALTH_CONNECTION)
            ),
            "server.health_enabled (false)".to_owned(),
        );
    }
    bridges(cfg, msg, &mut add);
    add(
        "runtime",
        Some(RUNTIME_BASE),
        "executor, reactor, metrics, configuration (fixed)".to_owned(),
        "nothing (fixed)".to_owned(),
    );
    Budget {
        contributors: out,
        limit: b.memory_limit.bytes(),
    }
}

/// The HTTP and CoAP bridges' own terms (their sessions, for CoAP observers, are counted
/// with the sessions; TLS state of HTTPS connections with the TLS connections).
fn bridges(
    cfg: &Config,
    msg: u64,
    add: &mut impl FnMut(&'static str, Option<u64>, String, String),
) {
    let max = u64::from(cfg.broker.max_message_size);
    let mut http_conns: Option<u64> = Some(0);
    let mut http_keys = Vec::new();
    let mut coap_exchanges = 0u64;
    let mut coap_listeners = 0u64;
    let mut coap_keys = Vec::new();
    for (slot, l) in cfg.server.slots() {
        if !l.enabled() {
            continue;
        }
        match slot.family {
            Family::Http => {
                http_keys.push(format!("{}.max_connections", slot.key));
                http_conns = match (http_conns, l.max_connections) {
                    (_, 0) | (None, _) => None,
                    (Some(n), m) => Some(n + u64::from(m)),
                };
            }
            Family::Coap => {
                coap_keys.push(format!("{}.max_connections", slot.key));
                coap_listeners += 1;
                coap_exchanges += match l.max_connections {
                    0 => 10_000,
                    n => u64::from(n),
                };
            }
            _ => {}
        }
    }
    if !http_keys.is_empty() {
        // A request holds its body (a JSON body is the payload in base64 plus the other
        // fields) and the decoded payload; the message it becomes is counted in the queues.
        let body = max / 3 * 4 + 4 + 64 * 1024;
        let per = HTTP_CONNECTION + body + max + 2 * ALLOC;
        add(
            "HTTP bridge connections",
            http_conns.map(|n| mul(n, per)),
            format!(
                "{} x {} (connection {}, a JSON body of {} and its payload)",
                http_conns.map_or_else(
                    || "unlimited HTTP connections (max_connections 0)".to_owned(),
                    |n| format!("{n} HTTP connections")
                ),
                human(per),
                human(HTTP_CONNECTION),
                human(body)
            ),
            format!("{} or broker.max_message_size", http_keys.join(", ")),
        );
    }
    if coap_listeners > 0 {
        let observers = u64::from(cfg.broker.coap_max_observers);
        let fixed = coap_listeners
            * ((COAP_UPLOADS + COAP_PENDING_AUTH) * (max + ALLOC)
                + COAP_BLOCKWISE * msg
                + COAP_DATAGRAM
                + REACTOR_ENTRY);
        add(
            "CoAP exchanges",
            Some(mul(coap_exchanges, COAP_EXCHANGE)),
            format!(
                "{coap_exchanges} exchanges remembered for duplicates x {COAP_EXCHANGE} B                  (entry, cached response, an endpoint's rate-limit buckets)"
            ),
            coap_keys.join(", "),
        );
        add(
            "CoAP observers",
            Some(mul(observers, COAP_OBSERVER)),
            format!(
                "broker.coap_max_observers {observers} x {} (endpoint, task, a CON notification in flight; their sessions are counted with the sessions)",
                human(COAP_OBSERVER)
            ),
            "broker.coap_max_observers".to_owned(),
        );
        add(
            "CoAP bodies",
            Some(fixed),
            format!(
                "{coap_listeners} listener(s) x ({COAP_UPLOADS} block-wise uploads + {COAP_PENDING_AUTH} requests awaiting auth, each up to {}; {COAP_BLOCKWISE} large notifications kept for their blocks; the receive buffer)",
                human(max)
            ),
            "broker.max_message_size".to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn merge(base: &mut serde_yaml::Value, top: serde_yaml::Value) {
        match (base, top) {
            (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(t)) => {
                for (k, v) in t {
                    match b.get_mut(&k) {
                        Some(old) => merge(old, v),
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (b, t) => *b = t,
        }
    }

    /// MQTT v3 on with 100 connections, health off, `yaml` layered over that.
    fn cfg(yaml: &str) -> Config {
        let base = "server: { tcp: { v3: { addr: \":1883\", max_connections: 100 } }, \
                    health_enabled: false }";
        let mut v: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
        if !yaml.trim().is_empty() {
            merge(&mut v, serde_yaml::from_str(yaml).unwrap());
        }
        let text = serde_yaml::to_string(&v).unwrap();
        load_str(&text, "test.yaml").expect("valid config")
    }

    fn bytes(b: &Budget, name: &str) -> u64 {
        b.get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .bytes
            .unwrap_or_else(|| panic!("{name} unbounded"))
    }

    #[test]
    fn per_connection_buffers_scale_with_connections_and_frame() {
        let b = worst_case(&cfg("broker: { max_message_size: 4096 }\n"));
        let frame = 4096 + 4096; // the framing allowance follows the message size
        assert_eq!(bytes(&b, "partial-packet buffers"), 100 * (frame + ALLOC));
        assert_eq!(
            bytes(&b, "output buffers"),
            100 * (16 * 1024 + frame + ALLOC) // high water: 2 x 8 KiB frames = 16 KiB
        );
        let conn = bytes(&b, "connection state") / 100;
        assert!(conn >= sz::<Conn>() + DRIVER_TASK, "{conn}");
        assert_eq!(bytes(&b, "read buffer"), READ_BUF as u64 + ALLOC);
        // Two listeners: their caps add up.
        let two = worst_case(&cfg(
            "server: { tcp: { v5: { addr: \":1884\", max_connections: 50 } } }\n\
             broker: { max_message_size: 4096 }\n",
        ));
        assert_eq!(bytes(&two, "partial-packet buffers"), 150 * (frame + ALLOC));
    }

    #[test]
    fn tls_slots_add_their_connection_and_listener_terms() {
        let plain = worst_case(&cfg(""));
        assert!(plain.get("TLS connections").is_none() && plain.get("TLS listeners").is_none());
        let tls = worst_case(&cfg(
            "server: { tcp: { tls: { addr: \":8883\", max_connections: 40, cert_file: c, key_file: k }, \
             mtls: { addr: \":8884\", max_connections: 10, cert_file: c, key_file: k, ca_file: ca } } }\n",
        ));
        assert_eq!(bytes(&tls, "TLS connections"), 50 * TLS_CONNECTION_BUSY);
        assert_eq!(bytes(&tls, "TLS listeners"), 2 * TLS_LISTENER);
        assert!(
            tls.get("TLS connections")
                .unwrap()
                .lower
                .contains("server.tcp.mtls.max_connections")
        );
        // The TLS connections are connections too: the per-connection terms count them.
        assert_eq!(
            bytes(&tls, "partial-packet buffers"),
            bytes(&plain, "partial-packet buffers") / 100 * 150
        );
        let unlimited = worst_case(&cfg(
            "server: { tcp: { tls: { addr: \":8883\", max_connections: 0, cert_file: c, key_file: k } } }\n",
        ));
        assert_eq!(unlimited.get("TLS connections").unwrap().bytes, None);
    }

    #[test]
    fn queues_take_the_lower_of_bytes_and_messages() {
        let msg = RC_HEADER + sz::<Message>() + mqtt_max_frame(1024) as u64 + 3 * ALLOC;
        // A connected session may hold twice its caps (a burst): 20 messages of ~2 KiB
        // frames are above 2 x 16 KiB of bytes: the byte cap binds.
        let b = worst_case(&cfg("broker: { max_message_size: 1024 }\n\
             session: { max_sessions: 3, max_offline_queue_size: 10, max_queue_bytes: 16384 }\n"));
        let slots = 32 * sz::<Delivery>();
        assert_eq!(
            bytes(&b, "session queues"),
            3 * (2 * 16384 + 20 * (RC_HEADER + 3 * ALLOC) + slots + ALLOC)
        );
        // A byte cap above what the message cap allows: the message cap binds.
        let b = worst_case(&cfg("broker: { max_message_size: 1024 }\n\
             session: { max_sessions: 3, max_offline_queue_size: 10, max_queue_bytes: 104857600 }\n"));
        assert_eq!(bytes(&b, "session queues"), 3 * (20 * msg + slots + ALLOC));
        // No byte cap: messages x size; max_send_queue_size counts when larger.
        let b = worst_case(&cfg("broker: { max_message_size: 1024 }\n\
             session: { max_sessions: 1, max_offline_queue_size: 10, max_send_queue_size: 20, \
             max_queue_bytes: 0 }\n"));
        assert_eq!(
            bytes(&b, "session queues"),
            40 * msg + 64 * sz::<Delivery>() + ALLOC
        );
        // In-flight windows and wills are per session, at full message size.
        let b = worst_case(&cfg("broker: { max_message_size: 1024 }\n\
             session: { max_sessions: 5, max_inflight_messages: 4 }\n"));
        assert_eq!(bytes(&b, "wills"), 5 * msg);
        assert!(bytes(&b, "in-flight windows") >= 5 * 4 * msg);
        assert!(bytes(&b, "in-flight windows") < 5 * 4 * msg + 5 * 1024);
    }

    #[test]
    fn retained_takes_the_lower_cap() {
        let b = worst_case(&cfg(
            "broker: { max_retained_messages: 100, max_retained_bytes: 1048576 }\n",
        ));
        let r = bytes(&b, "retained messages");
        assert!((1 << 20..(1 << 20) + 100 * 1024).contains(&r), "{r}");
        let b = worst_case(&cfg(
            "broker: { max_message_size: 1024, max_retained_messages: 2, max_retained_bytes: 0 }\n",
        ));
        assert!(bytes(&b, "retained messages") >= 2 * mqtt_max_frame(1024) as u64);
    }

    #[test]
    fn optional_parts_follow_their_switches() {
        let off = worst_case(&cfg(""));
        assert!(off.get("rate-limit tables").is_none() && off.get("auth caches").is_none());
        assert!(off.get("health endpoint").is_none());
        let on = worst_case(&cfg(
            "ratelimit: { enabled: true, connection: { max_tracked_ips: 1000 } }\n\
             auth: { provider: atom, identity_cache_size: 0, atom: { grpc_addr: \"atom:8081\", service_token_env: T } }\n\
             server: { health_enabled: true, health_addr: \":8081\" }\n",
        ));
        assert!(bytes(&on, "rate-limit tables") >= 1000 * RATELIMIT_IP_ENTRY);
        assert!(bytes(&on, "auth caches") >= AUTH_CACHE_DEFAULT * AUTH_CACHE_ENTRY);
        assert_eq!(
            bytes(&on, "health endpoint"),
            HEALTH_MAX_CONNECTIONS * HEALTH_CONNECTION
        );
        let total: u64 = on.contributors.iter().map(|c| c.bytes.unwrap_or(0)).sum();
        assert_eq!(on.total(), Some(total));
    }

    #[test]
    fn refusal_names_the_three_largest_and_the_keys() {
        let c = cfg("broker: { memory_limit: 8M, max_message_size: 65536 }\n\
             session: { max_sessions: 1000, max_inflight_messages: 16, max_queue_bytes: 65536 }\n");
        let b = worst_case(&c);
        let e = b.check().expect_err("over budget");
        assert!(e.starts_with("broker.memory_limit: "), "{e}");
        assert!(e.contains("(8.0 MiB)"), "{e}");
        let top = b.largest();
        assert_eq!(top[0].name, "in-flight windows", "{b}");
        for c in &top[..3] {
            assert!(e.contains(c.name) && e.contains(&c.lower), "{e}");
        }
        assert!(!e.contains(top[3].name), "only three: {e}");
        assert!(e.contains("session.max_inflight_messages"), "{e}");
        // The same configuration fits an unlimited or a large enough budget.
        let mut unlimited = b.clone();
        unlimited.limit = 0;
        assert!(unlimited.check().is_ok());
        let mut roomy = b.clone();
        roomy.limit = b.total().unwrap();
        assert!(roomy.check().is_ok());
        roomy.limit -= 1;
        assert!(roomy.check().is_err());
    }

    #[test]
    fn unlimited_connections_or_subscriptions_are_unbounded() {
        let c =
            cfg("server: { tcp: { v3: { max_connections: 0 } } }\nbroker: { memory_limit: 1G }\n");
        let b = worst_case(&c);
        assert_eq!(b.total(), None);
        assert_eq!(b.largest()[0].bytes, None);
        let e = b.check().expect_err("unbounded");
        assert!(
            e.contains("is unbounded") && e.contains("server.tcp.v3.max_connections"),
            "{e}"
        );
        let c = cfg("session: { max_subscriptions: 0 }\n");
        assert_eq!(worst_case(&c).get("subscriptions").unwrap().bytes, None);
        // Without a limit it is reported, not refused.
        assert!(worst_case(&c).check().is_ok());
        assert!(worst_case(&c).to_string().contains("worst case: unbounded"));
    }

    #[test]
    fn display_lists_every_contributor_largest_first() {
        let b = worst_case(&cfg("broker: { memory_limit: 1G }\n"));
        let text = b.to_string();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("memory budget, worst case: "), "{text}");
        assert!(first.contains("broker.memory_limit 1.0 GiB"), "{text}");
        assert_eq!(text.lines().count(), 1 + b.contributors.len());
        let top = b.largest()[0].name;
        assert!(text.lines().nth(1).unwrap().contains(top), "{text}");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn the_embedded_default_is_unlimited_and_reports_its_worst_case() {
        let c = crate::config::load_embedded().unwrap();
        let b = worst_case(&c);
        assert_eq!(b.limit, 0);
        assert!(b.check().is_ok());
        // 2 x 10000 connections x (1 MiB + 64 KiB) partial packets alone is about 20 GiB.
        assert!(b.total().unwrap() > 20 << 30, "{b}");
    }

    /// Every board profile, with the example site file (v3 + v5 + health), fits its own
    /// `broker.memory_limit` on the architecture the tests run on.
    #[test]
    fn every_board_fits_its_budget() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
        let site = dir.join("site-example.yaml");
        let mut boards: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml") && *p != site)
            .collect();
        boards.sort();
        assert!(boards.len() >= 4, "{boards:?}");
        for board in boards {
            let c = crate::config::load(&[board.clone(), site.clone()])
                .unwrap_or_else(|e| panic!("{}: {e}", board.display()));
            let warnings = c.warnings();
            assert!(warnings.is_empty(), "{}: {warnings:?}", board.display());
            let b = worst_case(&c);
            assert!(b.limit > 0, "{}: no broker.memory_limit", board.display());
            if let Err(e) = b.check() {
                panic!("{}:\n{b}{e}", board.display());
            }
            // A board alone turns no listener on.
            let alone = crate::config::load(std::slice::from_ref(&board));
            assert!(alone.is_err(), "{} turns a listener on", board.display());
        }
    }

    /// The driver's future (`listener::mqtt::Connection`) fits in `DRIVER_TASK` with room
    /// for the executor's wrapper and the task header.
    #[test]
    fn task_constant_covers_the_driver_future() {
        use crate::listener::mqtt;
        // The connection task is a hand-written future: its size is the struct's.
        let size = std::mem::size_of::<mqtt::Connection<smol::Async<std::net::TcpStream>>>() as u64;
        eprintln!("driver future: {size} B");
        assert!(
            size + 256 <= DRIVER_TASK,
            "the connection driver future is {size} B: raise budget::DRIVER_TASK"
        );
        // A TLS connection's task: the handshake, then the driver with the rustls
        // connection inline.
        type Tls = crate::listener::tls::TlsStream<smol::Async<std::net::TcpStream>>;
        let tls = std::mem::size_of::<mqtt::Connection<Tls>>() as u64;
        let task = crate::listener::mqtt::tls_task_size() as u64;
        eprintln!("TLS driver future: {tls} B, TLS connection task: {task} B");
        assert!(
            task + 256 <= TLS_TASK,
            "the TLS connection task is {task} B: raise budget::TLS_TASK"
        );
    }

    #[test]
    fn ws_constant_covers_the_stream() {
        use crate::listener::ws::WsStream;
        type Tcp = smol::Async<std::net::TcpStream>;
        let own = (size_of::<WsStream<Tcp>>() - size_of::<Tcp>()) as u64;
        eprintln!("WsStream adds {own} B");
        assert!(
            own <= 192,
            "WsStream adds {own} B: raise budget::WS_CONNECTION"
        );
        let task = size_of::<crate::listener::mqtt::Connection<WsStream<Tcp>>>() as u64;
        assert!(
            task + 256 <= DRIVER_TASK,
            "{task} B: raise budget::DRIVER_TASK"
        );
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_ceiling_matches_the_listener() {
        assert_eq!(HTTP_HEAD, crate::listener::http::MAX_HEADER_BYTES as u64);
    }

    #[cfg(feature = "coap")]
    #[test]
    fn coap_ceilings_match_the_bridge() {
        use crate::protocol::coap;
        assert_eq!(COAP_UPLOADS, coap::MAX_UPLOADS as u64);
        assert_eq!(
            COAP_PENDING_AUTH,
            crate::listener::coap::MAX_PENDING_AUTH as u64
        );
        assert_eq!(COAP_BLOCKWISE, coap::observe::MAX_BLOCKWISE as u64);
        assert_eq!(COAP_DATAGRAM, coap::MAX_DATAGRAM as u64);
    }

    #[test]
    fn bridges_add_their_terms() {
        let base = worst_case(&cfg(""));
        assert!(base.get("HTTP bridge connections").is_none());
        assert!(base.get("CoAP exchanges").is_none());
        let on = worst_case(&cfg(
            "server: { http: { plain: { addr: \":8080\", max_connections: 10 } }, \
             coap: { plain: { addr: \":5683\", max_connections: 100 } } }\n\
             broker: { max_message_size: 1024, coap_max_observers: 50 }",
        ));
        let http = bytes(&on, "HTTP bridge connections");
        assert!(http >= 10 * (HTTP_CONNECTION + 1024), "{http}");
        assert_eq!(bytes(&on, "CoAP exchanges"), 100 * COAP_EXCHANGE);
        assert_eq!(bytes(&on, "CoAP observers"), 50 * COAP_OBSERVER);
        assert!(bytes(&on, "CoAP bodies") > 1024 * 64);
    }

    #[test]
    fn ws_handshake_fits_in_the_mqtt_terms() {
        // The smallest partial packet + output a connection may hold, against the upgrade
        // request buffer it held before: the budget's per-connection terms cover both.
        let small = crate::protocol::mqtt::conn::max_frame(0)
            + crate::protocol::mqtt::conn::out_high_water(0);
        assert!(crate::protocol::ws::handshake::MAX_REQUEST <= small);
        let mut cfg = Config::default();
        cfg.server.websocket.v3.addr = ":8083".into();
        cfg.server.websocket.v3.max_connections = 10;
        let ws = worst_case(&cfg);
        let c = ws.get("WebSocket framing").expect("a WebSocket term");
        assert_eq!(c.bytes, Some(10 * WS_CONNECTION));
        assert!(
            worst_case(&Config::default())
                .get("WebSocket framing")
                .is_none()
        );
    }
}
