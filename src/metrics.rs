//! Counters and gauges, rendered as Prometheus text on the health listener. Every refusal,
//! drop and connection close is counted here by a named reason, and logged (rate-limited to
//! one line per reason per second, carrying the count since the previous line, so that a
//! flood of drops cannot flood the log).
//!
//! Single-threaded: plain `Cell`s, shared by `Rc`.

use std::cell::Cell;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::auth::Protocol;

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            pub fn label(self) -> &'static str { match self { $($name::$v => $s),* } }
        }
    };
}

reasons!(
    /// Why a message was not delivered to (one of) its destinations.
    DropReason {
        SlowSubscriberQos0 => "slow_subscriber_qos0",
        QueueFull => "queue_full",
        OfflineEvicted => "offline_queue_evicted",
        OfflineRejected => "offline_queue_rejected",
        OfflineQos0 => "offline_qos0",
        Expired => "expired",
        RetriesExhausted => "retries_exhausted",
        RetainedFull => "retained_store_full",
        TooLarge => "too_large",
        QosNotSupported => "qos_not_supported",
        NotAuthorized => "not_authorized",
        PacketTooLargeForClient => "client_max_packet_size",
        SessionEnded => "session_ended",
        RateLimited => "rate_limited",
    }
);

reasons!(
    /// Why a connection ended (logged once per connection, counted here).
    CloseReason {
        ClientDisconnect => "client_disconnect",
        PeerClosed => "peer_closed",
        IoError => "io_error",
        ConnectTimeout => "connect_timeout",
        KeepAliveTimeout => "keep_alive_timeout",
        WriteTimeout => "write_timeout",
        MalformedPacket => "malformed_packet",
        ProtocolError => "protocol_error",
        PacketTooLarge => "packet_too_large",
        ReceiveMaximumExceeded => "receive_maximum_exceeded",
        TopicAliasInvalid => "topic_alias_invalid",
        QosNotSupported => "qos_not_supported",
        ConnectRefused => "connect_refused",
        TakenOver => "session_taken_over",
        SlowConsumer => "slow_consumer",
        ServerShutdown => "server_shutdown",
        ListenerFull => "listener_full",
        TlsHandshakeTimeout => "tls_handshake_timeout",
        TlsHandshakeFailed => "tls_handshake_failed",
        RateLimited => "rate_limited",
        WsHandshakeTimeout => "ws_handshake_timeout",
        WsBadRequest => "ws_bad_request",
        WsRequestTooLarge => "ws_request_too_large",
        WsPathNotFound => "ws_path_not_found",
        WsOriginForbidden => "ws_origin_forbidden",
        WsProtocolError => "ws_protocol_error",
        WsTextFrame => "ws_text_frame",
        WsFrameTooLarge => "ws_frame_too_large",
    }
);

reasons!(
    /// Plain event counters.
    Counter {
        ConnectionsAccepted => "connections_accepted_total",
        MessagesReceived => "messages_received_total",
        MessagesDelivered => "messages_delivered_total",
        BytesReceived => "bytes_received_total",
        BytesSent => "bytes_sent_total",
        SubscribeRefused => "subscribe_refused_total",
        SessionsExpired => "sessions_expired_total",
        WillsPublished => "wills_published_total",
        Retransmissions => "retransmissions_total",
        Reloads => "reloads_total",
        TlsReloads => "tls_reloads_total",
        TlsReloadFailures => "tls_reload_failures_total",
        RateLimitOverflow => "ratelimit_ip_overflow_total",
        CoapExchangesEvicted => "coap_exchanges_evicted_total",
        CoapBucketsOverflow => "coap_ratelimit_overflow_total",
        CoapObserversRegistered => "coap_observers_registered_total",
        CoapObserversCancelled => "coap_observers_cancelled_total",
    }
);

reasons!(
    /// HTTP bridge answers, by status (spec §6.3): every refusal is counted here.
    HttpStatus {
        Ok => "200",
        BadRequest => "400",
        Unauthorized => "401",
        Forbidden => "403",
        NotFound => "404",
        MethodNotAllowed => "405",
        RequestTimeout => "408",
        TooLarge => "413",
        HeaderTooLarge => "431",
        TooManyRequests => "429",
        InternalError => "500",
    }
);

reasons!(
    /// CoAP bridge answers, by response code (spec §6.4), and the datagrams refused
    /// without one.
    CoapCode {
        Changed => "2.04",
        Content => "2.05",
        Continue => "2.31",
        BadRequest => "4.00",
        Unauthorized => "4.01",
        Forbidden => "4.03",
        NotFound => "4.04",
        MethodNotAllowed => "4.05",
        RequestEntityIncomplete => "4.08",
        TooLarge => "4.13",
        TooManyRequests => "4.29",
        InternalError => "5.00",
        ServiceUnavailable => "5.03",
        Reset => "rst",
        Malformed => "malformed",
        Duplicate => "duplicate",
    }
);

reasons!(
    /// Which rate limit refused something (`ratelimit.*`, see `crate::ratelimit`).
    LimitKind {
        Connection => "connection",
        Message => "message",
        Subscribe => "subscribe",
    }
);

reasons!(
    /// An auth provider (`auth.provider`).
    AuthProvider {
        Atom => "atom",
        Callout => "callout",
    }
);

reasons!(
    /// What an auth outcome is about: the upstream RPC it needed (or a cache served), or
    /// `local` for a decision made without one (missing credentials, a topic the provider
    /// refuses by its shape).
    AuthRpc {
        Authenticate => "authenticate",
        AuthenticateCredential => "authenticate_credential",
        ResolveCertificate => "resolve_certificate",
        ResolveAlias => "resolve_alias",
        Check => "check",
        Authorize => "authorize",
        Local => "local",
    }
);

reasons!(
    /// The outcome of one auth step.
    AuthResult {
        /// The upstream said yes (authenticated, allowed, alias resolved).
        Success => "ok",
        /// A definite no (from the upstream, or locally).
        Denied => "denied",
        /// The upstream could not answer (unreachable, error status, malformed answer).
        Error => "error",
        /// No answer within `auth.timeout`.
        Timeout => "timeout",
        /// Refused without a call: the callout's circuit breaker is open.
        BreakerOpen => "breaker_open",
        /// Answered from a cache (no RPC).
        Cached => "cached",
    }
);

reasons!(
    /// The auth caches (src/auth/cache.rs).
    AuthCache {
        Authn => "authn",
        Alias => "alias",
        Decision => "decision",
    }
);

impl AuthProvider {
    /// The steps this provider reports.
    pub fn rpcs(self) -> &'static [AuthRpc] {
        match self {
            AuthProvider::Atom => &[
                AuthRpc::Authenticate,
                AuthRpc::AuthenticateCredential,
                AuthRpc::ResolveCertificate,
                AuthRpc::ResolveAlias,
                AuthRpc::Check,
                AuthRpc::Local,
            ],
            AuthProvider::Callout => &[AuthRpc::Authenticate, AuthRpc::Authorize, AuthRpc::Local],
        }
    }
}

/// Upper bounds (seconds) of the auth RPC latency histogram buckets (plus `+Inf`).
pub const AUTH_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

const NAUTHP: usize = AuthProvider::ALL.len();
const NRPC: usize = AuthRpc::ALL.len();
const NRES: usize = AuthResult::ALL.len();
const NCACHE: usize = AuthCache::ALL.len();
const NBUCKET: usize = AUTH_LATENCY_BUCKETS.len();

/// A fixed-bucket latency histogram (non-cumulative counts; rendered cumulative).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [Cell<u64>; NBUCKET],
    count: Cell<u64>,
    sum_us: Cell<u64>,
}

/// Auth outcomes, RPC latencies and cache sizes.
#[derive(Debug)]
pub struct AuthMetrics {
    /// The provider in use (its series are rendered, zero or not); `None`: auth disabled.
    pub provider: Cell<Option<AuthProvider>>,
    outcomes: [[[Cell<u64>; NRES]; NRPC]; NAUTHP],
    latency: [[Histogram; NRPC]; NAUTHP],
    cache_entries: [Cell<u64>; NCACHE],
    cache_capacity: [Cell<u64>; NCACHE],
    cache_evictions: [Cell<u64>; NCACHE],
}

impl Default for AuthMetrics {
    fn default() -> Self {
        AuthMetrics {
            provider: Cell::new(None),
            outcomes: Default::default(),
            latency: Default::default(),
            cache_entries: Default::default(),
            cache_capacity: Default::default(),
            cache_evictions: Default::default(),
        }
    }
}

impl AuthMetrics {
    /// Count one outcome.
    pub fn outcome(&self, p: AuthProvider, rpc: AuthRpc, r: AuthResult) {
        let c = &self.outcomes[p as usize][rpc as usize][r as usize];
        c.set(c.get() + 1);
    }

    pub fn outcomes(&self, p: AuthProvider, rpc: AuthRpc, r: AuthResult) -> u64 {
        self.outcomes[p as usize][rpc as usize][r as usize].get()
    }

    /// Record the duration of one RPC attempt (answered, failed or timed out).
    pub fn latency(&self, p: AuthProvider, rpc: AuthRpc, d: Duration) {
        let h = &self.latency[p as usize][rpc as usize];
        let secs = d.as_secs_f64();
        if let Some(i) = AUTH_LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            h.buckets[i].set(h.buckets[i].get() + 1);
        }
        h.count.set(h.count.get() + 1);
        h.sum_us
            .set(h.sum_us.get() + u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// RPC attempts timed for `(p, rpc)`.
    pub fn latency_count(&self, p: AuthProvider, rpc: AuthRpc) -> u64 {
        self.latency[p as usize][rpc as usize].count.get()
    }

    /// A cache's current size, capacity and evictions so far.
    pub fn cache(&self, c: AuthCache, entries: usize, capacity: usize, evictions: u64) {
        self.cache_entries[c as usize].set(entries as u64);
        self.cache_capacity[c as usize].set(capacity as u64);
        self.cache_evictions[c as usize].set(evictions);
    }

    pub fn cache_entries(&self, c: AuthCache) -> u64 {
        self.cache_entries[c as usize].get()
    }

    fn render(&self, s: &mut String) {
        let Some(p) = self.provider.get() else {
            return;
        };
        s.push_str(
            "# HELP fluxmq_edge_auth_requests_total Auth outcomes, by provider, RPC and result.\n\
             # TYPE fluxmq_edge_auth_requests_total counter\n",
        );
        for &rpc in p.rpcs() {
            for &r in AuthResult::ALL {
                let _ = writeln!(
                    s,
                    "fluxmq_edge_auth_requests_total{{provider=\"{}\",rpc=\"{}\",result=\"{}\"}} {}",
                    p.label(),
                    rpc.label(),
                    r.label(),
                    self.outcomes(p, rpc, r)
                );
            }
        }
        s.push_str(
            "# HELP fluxmq_edge_auth_rpc_duration_seconds Auth RPC latency (each attempt).\n\
             # TYPE fluxmq_edge_auth_rpc_duration_seconds histogram\n",
        );
        for &rpc in p.rpcs().iter().filter(|&&r| r != AuthRpc::Local) {
            let h = &self.latency[p as usize][rpc as usize];
            let labels = format!("provider=\"{}\",rpc=\"{}\"", p.label(), rpc.label());
            let mut cum = 0;
            for (b, n) in AUTH_LATENCY_BUCKETS.iter().zip(&h.buckets) {
                cum += n.get();
                let _ = writeln!(
                    s,
                    "fluxmq_edge_auth_rpc_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cum}"
                );
            }
            let _ = writeln!(
                s,
                "fluxmq_edge_auth_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 fluxmq_edge_auth_rpc_duration_seconds_sum{{{labels}}} {}\n\
                 fluxmq_edge_auth_rpc_duration_seconds_count{{{labels}}} {}",
                h.count.get(),
                h.sum_us.get() as f64 / 1e6,
                h.count.get()
            );
        }
        for (name, help, kind, cells) in [
            (
                "auth_cache_entries",
                "Entries in each auth cache.",
                "gauge",
                &self.cache_entries,
            ),
            (
                "auth_cache_capacity",
                "Entry cap of each auth cache (its share of auth.identity_cache_size; 0 = off).",
                "gauge",
                &self.cache_capacity,
            ),
            (
                "auth_cache_evictions_total",
                "Live entries evicted from an auth cache because it was full.",
                "counter",
                &self.cache_evictions,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP fluxmq_edge_{name} {help}\n# TYPE fluxmq_edge_{name} {kind}"
            );
            for &c in AuthCache::ALL {
                let _ = writeln!(
                    s,
                    "fluxmq_edge_{name}{{cache=\"{}\"}} {}",
                    c.label(),
                    cells[c as usize].get()
                );
            }
        }
    }
}

const NDROP: usize = DropReason::ALL.len();
const NCLOSE: usize = CloseReason::ALL.len();
const NCOUNT: usize = Counter::ALL.len();
const NHTTP: usize = HttpStatus::ALL.len();
const NCOAP: usize = CoapCode::ALL.len();
const NLIMIT: usize = LimitKind::ALL.len();
const NPROTO: usize = Protocol::ALL.len();

/// Point-in-time gauges, read from the core at render time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub sessions: usize,
    pub sessions_connected: usize,
    pub subscriptions: usize,
    pub retained_messages: usize,
    pub retained_bytes: usize,
    pub queued_messages: usize,
    /// Source IPs with a connection rate-limit bucket (`ratelimit.connection`).
    pub ratelimit_tracked_ips: usize,
}

#[derive(Debug)]
pub struct Metrics {
    counters: [Cell<u64>; NCOUNT],
    drops: [Cell<u64>; NDROP],
    closes: [Cell<u64>; NCLOSE],
    http: [Cell<u64>; NHTTP],
    coap: [Cell<u64>; NCOAP],
    /// Per drop reason: (count not yet logged, time of the last log line).
    drop_log: [(Cell<u64>, Cell<Option<Instant>>); NDROP],
    /// Refused bridge requests (HTTP, CoAP): (count not yet logged, time of the last line).
    refusal_log: (Cell<u64>, Cell<Option<Instant>>),
    /// Rate-limit refusals by limit and protocol.
    limited: [[Cell<u64>; NPROTO]; NLIMIT],
    /// Per limit: (refusals not yet logged, time of the last log line).
    limited_log: [(Cell<u64>, Cell<Option<Instant>>); NLIMIT],
    pub connections: Cell<u64>,
    pub auth: AuthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counters: std::array::from_fn(|_| Cell::new(0)),
            drops: std::array::from_fn(|_| Cell::new(0)),
            closes: std::array::from_fn(|_| Cell::new(0)),
            http: std::array::from_fn(|_| Cell::new(0)),
            coap: std::array::from_fn(|_| Cell::new(0)),
            drop_log: std::array::from_fn(|_| (Cell::new(0), Cell::new(None))),
            refusal_log: (Cell::new(0), Cell::new(None)),
            limited: std::array::from_fn(|_| std::array::from_fn(|_| Cell::new(0))),
            limited_log: std::array::from_fn(|_| (Cell::new(0), Cell::new(None))),
            connections: Cell::new(0),
            auth: AuthMetrics::default(),
        }
    }
}

const LOG_EVERY: Duration = Duration::from_secs(1);

impl Metrics {
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let cell = &self.counters[c as usize];
        cell.set(cell.get() + n);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].get()
    }

    /// Count a dropped message and log it (rate-limited per reason).
    pub fn count_drop(&self, reason: DropReason, client: &str, topic: &str, now: Instant) {
        let cell = &self.drops[reason as usize];
        cell.set(cell.get() + 1);
        let (pending, last) = &self.drop_log[reason as usize];
        pending.set(pending.get() + 1);
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            log::warn!(
                "dropped {} message(s): {} (latest: client {client:?}, topic {topic:?})",
                pending.get(),
                reason.label()
            );
            pending.set(0);
            last.set(Some(now));
        }
    }

    /// Count a dropped message without a log line (the caller logged it another way).
    pub fn add_drop(&self, reason: DropReason) {
        let cell = &self.drops[reason as usize];
        cell.set(cell.get() + 1);
    }

    /// Count a rate-limit refusal and log it (one line per limit per second, carrying the
    /// count; `who` is the latest client or source address).
    pub fn count_rate_limited(
        &self,
        limit: LimitKind,
        protocol: Protocol,
        who: &dyn std::fmt::Display,
        now: Instant,
    ) {
        let cell = &self.limited[limit as usize][protocol as usize];
        cell.set(cell.get() + 1);
        let (pending, last) = &self.limited_log[limit as usize];
        pending.set(pending.get() + 1);
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            log::warn!(
                "rate-limited {} {} request(s) (ratelimit.{}; latest: {} {who})",
                pending.get(),
                limit.label(),
                limit.label(),
                protocol.key(),
            );
            pending.set(0);
            last.set(Some(now));
        }
    }

    pub fn rate_limited(&self, limit: LimitKind, protocol: Protocol) -> u64 {
        self.limited[limit as usize][protocol as usize].get()
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    pub fn closed(&self, reason: CloseReason) {
        let cell = &self.closes[reason as usize];
        cell.set(cell.get() + 1);
    }

    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason as usize].get()
    }

    /// Count an HTTP bridge answer.
    pub fn http(&self, status: HttpStatus) {
        let cell = &self.http[status as usize];
        cell.set(cell.get() + 1);
    }

    pub fn http_count(&self, status: HttpStatus) -> u64 {
        self.http[status as usize].get()
    }

    /// Log a refused bridge request (HTTP, CoAP), rate-limited to one line per second
    /// carrying the count; the refusal itself is counted by `http` / `coap`.
    pub fn refusal(&self, listener: &str, why: &str, peer: &dyn std::fmt::Display, now: Instant) {
        let (pending, last) = &self.refusal_log;
        pending.set(pending.get() + 1);
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            log::info!(
                "{listener}: refused {} request(s) (latest from {peer}: {why})",
                pending.get()
            );
            pending.set(0);
            last.set(Some(now));
        }
    }

    /// Count a CoAP bridge answer (or a datagram refused without one).
    pub fn coap(&self, code: CoapCode) {
        let cell = &self.coap[code as usize];
        cell.set(cell.get() + 1);
    }

    pub fn coap_count(&self, code: CoapCode) -> u64 {
        self.coap[code as usize].get()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::with_capacity(4096);
        let gauge = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(
                s,
                "# HELP fluxmq_edge_{name} {help}\n# TYPE fluxmq_edge_{name} gauge\nfluxmq_edge_{name} {v}\n"
            );
        };
        gauge(
            &mut s,
            "connections",
            "Open client connections.",
            self.connections.get(),
        );
        gauge(
            &mut s,
            "sessions",
            "Sessions held (connected and offline).",
            g.sessions as u64,
        );
        gauge(
            &mut s,
            "sessions_connected",
            "Sessions with a live connection.",
            g.sessions_connected as u64,
        );
        gauge(
            &mut s,
            "subscriptions",
            "Subscriptions in the router.",
            g.subscriptions as u64,
        );
        gauge(
            &mut s,
            "retained_messages",
            "Retained messages stored.",
            g.retained_messages as u64,
        );
        gauge(
            &mut s,
            "retained_bytes",
            "Bytes held by retained messages.",
            g.retained_bytes as u64,
        );
        gauge(
            &mut s,
            "queued_messages",
            "Messages waiting in session queues.",
            g.queued_messages as u64,
        );
        gauge(
            &mut s,
            "ratelimit_tracked_ips",
            "Source IPs with a connection rate-limit bucket (at most ratelimit.connection.max_tracked_ips).",
            g.ratelimit_tracked_ips as u64,
        );
        for &c in Counter::ALL {
            let _ = write!(
                s,
                "# TYPE fluxmq_edge_{0} counter\nfluxmq_edge_{0} {1}\n",
                c.label(),
                self.get(c)
            );
        }
        s.push_str(
            "# HELP fluxmq_edge_messages_dropped_total Messages not delivered, by reason.\n",
        );
        s.push_str("# TYPE fluxmq_edge_messages_dropped_total counter\n");
        for &d in DropReason::ALL {
            let _ = writeln!(
                s,
                "fluxmq_edge_messages_dropped_total{{reason=\"{}\"}} {}",
                d.label(),
                self.dropped(d)
            );
        }
        s.push_str(
            "# HELP fluxmq_edge_ratelimit_refused_total Requests refused by a rate limit, by limit and protocol.\n",
        );
        s.push_str("# TYPE fluxmq_edge_ratelimit_refused_total counter\n");
        for &l in LimitKind::ALL {
            for p in Protocol::ALL {
                let _ = writeln!(
                    s,
                    "fluxmq_edge_ratelimit_refused_total{{limit=\"{}\",protocol=\"{}\"}} {}",
                    l.label(),
                    p.key(),
                    self.rate_limited(l, p)
                );
            }
        }
        s.push_str("# HELP fluxmq_edge_connections_closed_total Connections ended, by reason.\n");
        s.push_str("# TYPE fluxmq_edge_connections_closed_total counter\n");
        for &c in CloseReason::ALL {
            let _ = writeln!(
                s,
                "fluxmq_edge_connections_closed_total{{reason=\"{}\"}} {}",
                c.label(),
                self.closes(c)
            );
        }
        s.push_str("# HELP fluxmq_edge_http_responses_total HTTP bridge answers, by status.\n");
        s.push_str("# TYPE fluxmq_edge_http_responses_total counter\n");
        for &h in HttpStatus::ALL {
            let _ = writeln!(
                s,
                "fluxmq_edge_http_responses_total{{status=\"{}\"}} {}",
                h.label(),
                self.http_count(h)
            );
        }
        s.push_str(
            "# HELP fluxmq_edge_coap_responses_total CoAP bridge answers by code; rst, \
             malformed and duplicate datagrams.\n",
        );
        s.push_str("# TYPE fluxmq_edge_coap_responses_total counter\n");
        for &c in CoapCode::ALL {
            let _ = writeln!(
                s,
                "fluxmq_edge_coap_responses_total{{code=\"{}\"}} {}",
                c.label(),
                self.coap_count(c)
            );
        }
        self.auth.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_reason() {
        let m = Metrics::default();
        m.add(Counter::MessagesReceived, 3);
        m.count_drop(DropReason::QueueFull, "c", "t", Instant::now());
        m.closed(CloseReason::PeerClosed);
        m.count_rate_limited(LimitKind::Message, Protocol::Mqtt, &"c", Instant::now());
        let text = m.render(&Gauges {
            sessions: 2,
            ..Default::default()
        });
        assert!(text.contains("fluxmq_edge_messages_received_total 3"));
        assert!(text.contains("fluxmq_edge_messages_dropped_total{reason=\"queue_full\"} 1"));
        assert!(text.contains("fluxmq_edge_connections_closed_total{reason=\"peer_closed\"} 1"));
        assert!(text.contains("fluxmq_edge_sessions 2"));
        assert!(text.contains(
            "fluxmq_edge_ratelimit_refused_total{limit=\"message\",protocol=\"mqtt\"} 1"
        ));
        assert!(text.contains(
            "fluxmq_edge_ratelimit_refused_total{limit=\"connection\",protocol=\"amqp091\"} 0"
        ));
        assert!(text.contains("fluxmq_edge_ratelimit_tracked_ips 0"));
        for d in DropReason::ALL {
            assert!(text.contains(d.label()));
        }
        assert!(
            !text.contains("fluxmq_edge_auth_"),
            "no auth series while auth is off"
        );
    }

    #[test]
    fn auth_series_for_the_provider_in_use() {
        let m = Metrics::default();
        m.auth.provider.set(Some(AuthProvider::Callout));
        m.auth.outcome(
            AuthProvider::Callout,
            AuthRpc::Authorize,
            AuthResult::Denied,
        );
        m.auth.latency(
            AuthProvider::Callout,
            AuthRpc::Authorize,
            Duration::from_millis(3),
        );
        m.auth.latency(
            AuthProvider::Callout,
            AuthRpc::Authorize,
            Duration::from_secs(9),
        );
        m.auth.cache(AuthCache::Decision, 5, 10, 2);
        let text = m.render(&Gauges::default());
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        has(
            r#"fluxmq_edge_auth_requests_total{provider="callout",rpc="authorize",result="denied"} 1"#,
        );
        has(r#"fluxmq_edge_auth_requests_total{provider="callout",rpc="local",result="ok"} 0"#);
        has(
            r#"fluxmq_edge_auth_rpc_duration_seconds_bucket{provider="callout",rpc="authorize",le="0.0025"} 0"#,
        );
        has(
            r#"fluxmq_edge_auth_rpc_duration_seconds_bucket{provider="callout",rpc="authorize",le="0.005"} 1"#,
        );
        has(
            r#"fluxmq_edge_auth_rpc_duration_seconds_bucket{provider="callout",rpc="authorize",le="5"} 1"#,
        );
        has(
            r#"fluxmq_edge_auth_rpc_duration_seconds_bucket{provider="callout",rpc="authorize",le="+Inf"} 2"#,
        );
        has(r#"fluxmq_edge_auth_rpc_duration_seconds_count{provider="callout",rpc="authorize"} 2"#);
        has(
            r#"fluxmq_edge_auth_rpc_duration_seconds_sum{provider="callout",rpc="authorize"} 9.003"#,
        );
        has(r#"fluxmq_edge_auth_cache_entries{cache="decision"} 5"#);
        has(r#"fluxmq_edge_auth_cache_capacity{cache="decision"} 10"#);
        has(r#"fluxmq_edge_auth_cache_evictions_total{cache="decision"} 2"#);
        assert!(
            !text.contains("rpc=\"check\""),
            "atom series not shown for callout"
        );
    }
}
