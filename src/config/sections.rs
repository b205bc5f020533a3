//! The configuration tree, part two: `broker`, `session`, `log`, `storage`, `cluster`,
//! `ratelimit`, `auth` (spec §1.6, §1.7, §1.9, §1.10), with the edge defaults.
//!
//! Field names are the YAML keys of FluxMQ's atom-branch dialect plus a few edge keys,
//! marked "edge" below. Does not own: checking values across keys (`validate.rs`), or
//! FluxMQ's cloud-only sections (`cluster.etcd`, `cluster.raft`, `queues`, ...), which the
//! loader refuses by name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{self, ByteSize};

const MIB: u64 = 1024 * 1024;

/// `broker`: message routing limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Broker {
    /// Largest PUBLISH payload (bytes); at least 1024.
    pub max_message_size: u32,
    /// Retained messages kept at once.
    pub max_retained_messages: u32,
    /// QoS 1/2 redelivery interval; at least 1s.
    #[serde(with = "duration::go")]
    pub retry_interval: Duration,
    /// Redeliveries before giving up; 0 = unlimited.
    pub max_retries: u32,
    /// Highest QoS granted (0..=2).
    pub max_qos: u8,
    /// FluxMQ tuning; no effect at the edge.
    pub async_fan_out: bool,
    /// FluxMQ tuning; no effect at the edge.
    pub fan_out_workers: u32,
    /// Edge: bytes of all retained messages (topic + payload) at once; 0 = no byte cap.
    pub max_retained_bytes: u64,
    /// Edge: cap on the client keep-alive (seconds), announced as Server Keep Alive on
    /// MQTT 5; 0 = the client's value is used.
    pub max_keep_alive: u16,
    /// Edge: inbound topic aliases per MQTT 5 connection (announced in CONNACK).
    pub topic_alias_maximum: u16,
    /// Edge: memory budget of the whole broker; the configuration's worst case must fit
    /// in it. 0 = unlimited.
    pub memory_limit: ByteSize,
    /// Edge: CoAP observations (RFC 7641) at once, over every endpoint; each is also a
    /// subscription of its endpoint's session.
    pub coap_max_observers: u32,
    /// Edge: CoAP observations of one endpoint (ip:port) at once.
    pub coap_max_observers_per_client: u32,
}

impl Default for Broker {
    fn default() -> Self {
        Self {
            max_message_size: 1_048_576,
            max_retained_messages: 10_000,
            retry_interval: Duration::from_secs(20),
            max_retries: 0,
            max_qos: 2,
            async_fan_out: false,
            fan_out_workers: 0,
            max_retained_bytes: 16 * MIB,
            max_keep_alive: 0,
            topic_alias_maximum: 10,
            memory_limit: ByteSize(0),
            coap_max_observers: 1000,
            coap_max_observers_per_client: 8,
        }
    }
}

/// `session`: per-client state limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Session {
    /// Sessions at once (connected or not); at least 1.
    pub max_sessions: u32,
    /// Session expiry (seconds) when a client keeps its session and gives none.
    pub default_expiry_interval: u32,
    /// Messages queued for an offline client; at least 10.
    pub max_offline_queue_size: u32,
    /// What a full offline queue drops.
    pub offline_queue_policy: OfflineQueuePolicy,
    /// QoS 1/2 messages in flight per session (1..=65535).
    pub max_inflight_messages: u32,
    /// Edge: the queue cap (messages) of a connected session; 0 = `max_offline_queue_size`.
    /// (FluxMQ: 0 = synchronous writes; the edge always queues, bounded.)
    pub max_send_queue_size: u32,
    /// Edge: when a QoS>0 delivery finds a connected session's queue full, true disconnects
    /// the slow consumer (its session goes offline and keeps the message), false drops the
    /// delivery (counted `queue_full`) and keeps the connection. Edge default true (FluxMQ:
    /// false = block the publisher, which the edge never does).
    pub disconnect_on_full: bool,
    /// 0 = backpressure when the inflight window is full; 1 = per-session pending queue.
    pub inflight_overflow: u32,
    /// Size of that pending queue; at least 1 when `inflight_overflow` is 1.
    pub pending_queue_size: u32,
    /// Edge: bytes queued per session (all its queues); 0 = no byte cap.
    pub max_queue_bytes: u64,
    /// Edge: subscriptions per client; 0 = unlimited.
    pub max_subscriptions: u32,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            default_expiry_interval: 300,
            max_offline_queue_size: 1000,
            offline_queue_policy: OfflineQueuePolicy::Evict,
            max_inflight_messages: 256,
            max_send_queue_size: 0,
            disconnect_on_full: true,
            inflight_overflow: 0,
            pending_queue_size: 1000,
            max_queue_bytes: 4 * MIB,
            max_subscriptions: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflineQueuePolicy {
    /// Drop the oldest message.
    #[default]
    Evict,
    /// Drop the newest message.
    Reject,
}

/// `log`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Debug => log::LevelFilter::Debug,
            Self::Info => log::LevelFilter::Info,
            Self::Warn => log::LevelFilter::Warn,
            Self::Error => log::LevelFilter::Error,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub r#type: StorageType,
    /// Data directory of the on-disk store. The edge default is not under `/tmp`, which
    /// is RAM on most gateways.
    pub badger_dir: String,
    /// fsync every write of sessions and retained messages.
    pub sync_writes: bool,
    /// Drop corrupted records at start-up instead of refusing to start.
    pub recover_on_startup: bool,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            r#type: StorageType::Memory,
            badger_dir: "/var/lib/fluxmq-edge/data".to_owned(),
            sync_writes: false,
            recover_on_startup: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    #[default]
    Memory,
    /// The on-disk store (FluxMQ's name for it).
    Badger,
}

/// `cluster`: the link to the FluxMQ cloud cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Edge default: off.
    pub enabled: bool,
    pub node_id: String,
    pub transport: ClusterTransport,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: "broker-1".to_owned(),
            transport: ClusterTransport::default(),
        }
    }
}

/// `cluster.transport`: the inter-broker HTTP/2 transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTransport {
    pub bind_addr: String,
    /// node_id → `host:port` of that peer's transport.
    pub peers: BTreeMap<String, String>,
    pub route_batch_max_size: u32,
    #[serde(with = "duration::go")]
    pub route_batch_max_delay: Duration,
    /// Concurrent sends per remote node; 0 = 1.
    pub route_batch_flush_workers: u32,
    /// Bound on routing one publish across nodes; 0 = 15s.
    #[serde(with = "duration::go")]
    pub route_publish_timeout: Duration,
    /// mTLS between brokers; all three files required when on.
    pub tls_enabled: bool,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_ca_file: String,
}

impl Default for ClusterTransport {
    fn default() -> Self {
        Self {
            bind_addr: "0.0.0.0:7948".to_owned(),
            peers: BTreeMap::new(),
            route_batch_max_size: 256,
            route_batch_max_delay: Duration::from_millis(5),
            route_batch_flush_workers: 4,
            route_publish_timeout: Duration::from_secs(15),
            tls_enabled: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
        }
    }
}

/// `ratelimit` (spec §1.9, §5).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Master switch.
    pub enabled: bool,
    /// New connections per source IP.
    pub connection: ConnectionRateLimit,
    /// PUBLISH per client ID.
    pub message: MessageRateLimit,
    /// Subscription entries per client ID.
    pub subscribe: SubscribeRateLimit,
}

/// A token bucket's settings: `rate` tokens per second refill a bucket of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub enabled: bool,
    pub rate: f64,
    pub burst: u32,
}

/// `ratelimit.connection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionRateLimit {
    pub enabled: bool,
    /// Tokens per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
    /// Idle IP entries are dropped after twice this.
    #[serde(with = "duration::go")]
    pub cleanup_interval: Duration,
    /// Edge: IP entries kept at once.
    pub max_tracked_ips: u32,
}

impl Default for ConnectionRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 100.0 / 60.0,
            burst: 20,
            cleanup_interval: Duration::from_secs(300),
            max_tracked_ips: 10_000,
        }
    }
}

/// `ratelimit.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageRateLimit {
    pub enabled: bool,
    /// Tokens per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
}

impl Default for MessageRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 1000.0,
            burst: 100,
        }
    }
}

/// `ratelimit.subscribe` (same keys as `message`, other defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscribeRateLimit {
    pub enabled: bool,
    /// Tokens per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
}

impl Default for SubscribeRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 100.0,
            burst: 10,
        }
    }
}

impl RateLimit {
    /// The three buckets with their key paths, for code that treats them alike.
    pub fn buckets(&self) -> [(&'static str, Bucket); 3] {
        let c = &self.connection;
        let (m, s) = (&self.message, &self.subscribe);
        [
            (
                "ratelimit.connection",
                Bucket {
                    enabled: c.enabled,
                    rate: c.rate,
                    burst: c.burst,
                },
            ),
            (
                "ratelimit.message",
                Bucket {
                    enabled: m.enabled,
                    rate: m.rate,
                    burst: m.burst,
                },
            ),
            (
                "ratelimit.subscribe",
                Bucket {
                    enabled: s.enabled,
                    rate: s.rate,
                    burst: s.burst,
                },
            ),
        ]
    }
}

/// `auth` (atom-branch schema, spec §1.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// `callout` or `atom` (any case); `""` with a `url` = callout; both empty = no auth.
    pub provider: String,
    /// Callout base URL with scheme.
    pub url: String,
    /// Callout transport: `grpc` or `http`.
    pub transport: String,
    /// Per call; 0 = 2s.
    #[serde(with = "duration::go")]
    pub timeout: Duration,
    /// Keys `mqtt`, `amqp`, `amqp091`, `http`, `coap`. Empty = auth on every protocol;
    /// otherwise only the keys set to `true` are authenticated.
    pub protocols: BTreeMap<String, bool>,
    /// clientID → external ID cache entries; 0 = 10000.
    pub identity_cache_size: u32,
    /// TTL of that cache; 0 = 24h.
    #[serde(with = "duration::go")]
    pub identity_cache_ttl: Duration,
    pub atom: Atom,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            provider: String::new(),
            url: String::new(),
            transport: "grpc".to_owned(),
            timeout: Duration::ZERO,
            protocols: BTreeMap::new(),
            identity_cache_size: 0,
            identity_cache_ttl: Duration::ZERO,
            atom: Atom::default(),
        }
    }
}

/// `auth.atom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Atom {
    /// gRPC target without scheme, e.g. `atom:8081`.
    pub grpc_addr: String,
    /// Plaintext gRPC.
    pub insecure: bool,
    pub ca_file: String,
    /// Client certificate for mTLS to Atom (with `key_file`).
    pub cert_file: String,
    pub key_file: String,
    /// Environment variable holding the service key (read first).
    pub service_token_env: String,
    /// File holding the service key.
    pub service_token_file: String,
    /// Only `magistrala` (or `""`).
    pub topic_format: String,
    #[serde(with = "duration::go")]
    pub authn_cache_ttl: Duration,
    #[serde(with = "duration::go")]
    pub alias_cache_ttl: Duration,
    #[serde(with = "duration::go")]
    pub decision_cache_ttl: Duration,
    /// Only `deny` (or `""`).
    pub unsupported_topic_policy: String,
}

/// Which auth provider `auth` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProvider {
    Disabled,
    Callout,
    Atom,
}

/// The protocols `auth.protocols` may name.
pub const AUTH_PROTOCOLS: [&str; 5] = ["mqtt", "amqp", "amqp091", "http", "coap"];

impl Auth {
    /// The provider in force (`""` + `url` = callout).
    pub fn provider_kind(&self) -> Result<AuthProvider, String> {
        match self.provider.trim().to_ascii_lowercase().as_str() {
            "" if self.url.is_empty() => Ok(AuthProvider::Disabled),
            "" | "callout" => Ok(AuthProvider::Callout),
            "atom" => Ok(AuthProvider::Atom),
            _ => Err(format!(
                "unknown provider \"{}\" (expected callout or atom; \"\" with no url disables \
                 auth)",
                self.provider
            )),
        }
    }

    /// Whether clients of `protocol` (one of [`AUTH_PROTOCOLS`]) are authenticated, given
    /// that a provider is configured.
    pub fn covers(&self, protocol: &str) -> bool {
        self.protocols.is_empty() || self.protocols.get(protocol).copied().unwrap_or(false)
    }

    /// `timeout` with its default applied.
    pub fn effective_timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            Duration::from_secs(2)
        } else {
            self.timeout
        }
    }

    /// `identity_cache_size` with its default applied.
    pub fn effective_identity_cache_size(&self) -> u32 {
        if self.identity_cache_size == 0 {
            10_000
        } else {
            self.identity_cache_size
        }
    }

    /// `identity_cache_ttl` with its default applied.
    pub fn effective_identity_cache_ttl(&self) -> Duration {
        if self.identity_cache_ttl.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            self.identity_cache_ttl
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluxmq_defaults() {
        let b = Broker::default();
        assert_eq!(
            (b.max_message_size, b.max_retained_messages, b.max_qos),
            (1_048_576, 10_000, 2)
        );
        assert_eq!(b.retry_interval, Duration::from_secs(20));
        let s = Session::default();
        assert_eq!(
            (
                s.max_sessions,
                s.default_expiry_interval,
                s.max_inflight_messages
            ),
            (10_000, 300, 256)
        );
        let r = RateLimit::default();
        assert!(!r.enabled && r.connection.enabled);
        assert_eq!(
            (r.connection.burst, r.message.rate, r.message.burst),
            (20, 1000.0, 100)
        );
        assert_eq!((r.subscribe.rate, r.subscribe.burst), (100.0, 10));
        let partial: RateLimit =
            serde_yaml::from_str("subscribe: { enabled: false }").expect("partial section");
        assert_eq!(
            (partial.subscribe.rate, partial.subscribe.burst),
            (100.0, 10)
        );
        let c = Cluster::default();
        assert!(!c.enabled);
        assert_eq!(c.transport.route_batch_max_delay, Duration::from_millis(5));
    }

    #[test]
    fn auth_provider_selection() {
        let mut a = Auth::default();
        assert_eq!(a.provider_kind(), Ok(AuthProvider::Disabled));
        a.url = "https://auth:7016".to_owned();
        assert_eq!(a.provider_kind(), Ok(AuthProvider::Callout));
        a.provider = "ATOM".to_owned();
        assert_eq!(a.provider_kind(), Ok(AuthProvider::Atom));
        a.provider = "ldap".to_owned();
        assert!(a.provider_kind().is_err_and(|e| e.contains("\"ldap\"")));
        assert!(a.covers("coap"));
        a.protocols.insert("mqtt".to_owned(), true);
        a.protocols.insert("http".to_owned(), false);
        assert!(a.covers("mqtt") && !a.covers("http") && !a.covers("coap"));
        assert_eq!(a.effective_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn log_level_filter() {
        assert_eq!(LogLevel::Warn.filter(), log::LevelFilter::Warn);
    }
}
