//! Value rules: spec §1.11 and §1.7 as FluxMQ applies them, plus the edge's own rules.
//!
//! Owns: `Config::validate`, numeric ranges, rate-limit buckets, auth and cluster
//! consistency; the `server.*` rules live in `listeners.rs`. Does not own: key names and
//! types (serde + `load.rs`), or refusing features this build lacks (`support.rs`).
//! Nothing here touches the filesystem or the network.

use std::time::Duration;

use super::error::ConfigError;
use super::listeners::{Bind, check_dial, check_http_url, check_server};
use super::schema::Config;
use super::sections::{AUTH_PROTOCOLS, Auth, AuthProvider, Broker, Cluster, RateLimit, Session};

/// Largest MQTT packet (variable byte integer limit).
const MQTT_MAX_PACKET: u32 = 268_435_455;

/// A problem: key path and message; the origin is added by `validate`.
pub(super) type Problem = (String, String);

pub(super) fn fail<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, Problem> {
    Err((path.into(), message.into()))
}

impl Config {
    /// All validation of spec §1.11 and §1.7 plus the edge's own rules (this file and
    /// `listeners.rs`); errors name the key and `origin`.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(path, message)| ConfigError::new(origin, path, message))
    }

    fn check(&self) -> Result<(), Problem> {
        check_server(&self.server)?;
        check_broker(&self.broker)?;
        check_session(&self.session)?;
        check_ratelimit(&self.ratelimit)?;
        check_auth(&self.auth)?;
        check_cluster(&self.cluster)?;
        if self.storage.r#type == super::StorageType::Badger && self.storage.badger_dir.is_empty() {
            return fail("storage.badger_dir", "required for storage.type badger");
        }
        Ok(())
    }
}

fn check_broker(b: &Broker) -> Result<(), Problem> {
    if b.max_message_size < 1024 {
        return fail("broker.max_message_size", "must be at least 1024");
    }
    if b.max_message_size > MQTT_MAX_PACKET {
        return fail(
            "broker.max_message_size",
            format!("must be at most {MQTT_MAX_PACKET} (the largest MQTT packet)"),
        );
    }
    if b.retry_interval < Duration::from_secs(1) {
        return fail("broker.retry_interval", "must be at least 1s");
    }
    if b.max_qos > 2 {
        return fail("broker.max_qos", "must be 0, 1 or 2");
    }
    Ok(())
}

fn check_session(s: &Session) -> Result<(), Problem> {
    if s.max_sessions < 1 {
        return fail("session.max_sessions", "must be at least 1");
    }
    if s.max_offline_queue_size < 10 {
        return fail("session.max_offline_queue_size", "must be at least 10");
    }
    if !(1..=65_535).contains(&s.max_inflight_messages) {
        return fail("session.max_inflight_messages", "must be from 1 to 65535");
    }
    if s.inflight_overflow > 1 {
        return fail(
            "session.inflight_overflow",
            "must be 0 (backpressure) or 1 (per-session pending queue)",
        );
    }
    if s.inflight_overflow == 1 && s.pending_queue_size < 1 {
        return fail(
            "session.pending_queue_size",
            "must be at least 1 when inflight_overflow is 1",
        );
    }
    Ok(())
}

fn check_ratelimit(r: &RateLimit) -> Result<(), Problem> {
    for (path, bucket) in r.buckets() {
        if !bucket.rate.is_finite() || bucket.rate < 0.0 {
            return fail(
                format!("{path}.rate"),
                "must be a finite number >= 0 (tokens per second)",
            );
        }
        if bucket.burst == 0 && bucket.rate > 0.0 {
            return fail(
                format!("{path}.burst"),
                "must be at least 1 when rate > 0: a bucket of 0 tokens admits nothing",
            );
        }
    }
    let c = &r.connection;
    if r.enabled && c.enabled && c.cleanup_interval.is_zero() {
        return fail(
            "ratelimit.connection.cleanup_interval",
            "must be greater than 0",
        );
    }
    if c.max_tracked_ips == 0 {
        return fail("ratelimit.connection.max_tracked_ips", "must be at least 1");
    }
    Ok(())
}

fn check_auth(a: &Auth) -> Result<(), Problem> {
    let kind = a.provider_kind().or_else(|m| fail("auth.provider", m))?;
    if !matches!(
        a.transport.trim().to_ascii_lowercase().as_str(),
        "grpc" | "http"
    ) {
        return fail(
            "auth.transport",
            format!(
                "unknown transport \"{}\" (expected grpc or http)",
                a.transport
            ),
        );
    }
    if let Some(key) = a
        .protocols
        .keys()
        .find(|k| !AUTH_PROTOCOLS.contains(&k.as_str()))
    {
        return fail(
            format!("auth.protocols.{key}"),
            format!(
                "unknown protocol (expected one of {})",
                AUTH_PROTOCOLS.join(", ")
            ),
        );
    }
    if kind == AuthProvider::Callout {
        if a.url.is_empty() {
            return fail(
                "auth.url",
                "required for provider callout, e.g. https://auth.internal:7016",
            );
        }
        check_http_url(&a.url).or_else(|m| fail("auth.url", m))?;
    }
    let atom = &a.atom;
    if !matches!(
        atom.topic_format.trim().to_ascii_lowercase().as_str(),
        "" | "magistrala"
    ) {
        return fail(
            "auth.atom.topic_format",
            format!(
                "unknown topic format \"{}\" (only magistrala)",
                atom.topic_format
            ),
        );
    }
    if !matches!(
        atom.unsupported_topic_policy
            .trim()
            .to_ascii_lowercase()
            .as_str(),
        "" | "deny"
    ) {
        return fail(
            "auth.atom.unsupported_topic_policy",
            format!(
                "unknown policy \"{}\" (only deny)",
                atom.unsupported_topic_policy
            ),
        );
    }
    if atom.cert_file.is_empty() != atom.key_file.is_empty() {
        let missing = if atom.cert_file.is_empty() {
            "cert_file"
        } else {
            "key_file"
        };
        return fail(
            format!("auth.atom.{missing}"),
            "cert_file and key_file must be set together",
        );
    }
    if kind == AuthProvider::Atom {
        if atom.grpc_addr.is_empty() {
            return fail(
                "auth.atom.grpc_addr",
                "required for provider atom, e.g. atom:8081",
            );
        }
        if atom.grpc_addr.contains("://") {
            return fail(
                "auth.atom.grpc_addr",
                "a gRPC target without scheme, e.g. atom:8081",
            );
        }
        if atom.service_token_env.is_empty() && atom.service_token_file.is_empty() {
            return fail(
                "auth.atom.service_token_env",
                "set service_token_env or service_token_file: where the Atom service key is read \
                 from",
            );
        }
    }
    Ok(())
}

fn check_cluster(c: &Cluster) -> Result<(), Problem> {
    if !c.enabled {
        return Ok(());
    }
    if c.node_id.trim().is_empty() {
        return fail("cluster.node_id", "required when cluster.enabled is true");
    }
    let t = &c.transport;
    Bind::parse(&t.bind_addr).or_else(|m| fail("cluster.transport.bind_addr", m))?;
    for (id, addr) in &t.peers {
        if id.trim().is_empty() {
            return fail("cluster.transport.peers", "peer node IDs must not be empty");
        }
        check_dial(addr).or_else(|m| fail(format!("cluster.transport.peers.{id}"), m))?;
    }
    if t.tls_enabled {
        for (key, value) in [
            ("tls_cert_file", &t.tls_cert_file),
            ("tls_key_file", &t.tls_key_file),
            ("tls_ca_file", &t.tls_ca_file),
        ] {
            if value.is_empty() {
                return fail(
                    format!("cluster.transport.{key}"),
                    "required when cluster.transport.tls_enabled is true",
                );
            }
        }
    }
    Ok(())
}

/// Test driver shared with `listeners.rs`: each line of `errors` is
/// `key | message fragment | YAML overlay`; each line of `valid` an overlay that must load.
/// Overlays are merged onto a valid base (MQTT v3 on :1883) and loaded through `load`, so
/// the error must also name the file.
#[cfg(test)]
pub(super) fn expect_cases(errors: &str, valid: &str) {
    let base = "server: { tcp: { v3: { addr: \":1883\" } } }\n";
    let dir = std::env::temp_dir();
    let stamp = format!("{}-{:?}", std::process::id(), std::thread::current().id());
    let base_path = dir.join(format!("fluxmq-edge-cases-{stamp}-base.yaml"));
    let site_path = dir.join(format!("fluxmq-edge-cases-{stamp}-site.yaml"));
    std::fs::write(&base_path, base).expect("write base");
    let paths = [base_path.clone(), site_path.clone()];
    let run = |overlay: &str| {
        std::fs::write(&site_path, overlay).expect("write overlay");
        super::load(&paths)
    };
    for line in errors.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, " | ");
        let (key, fragment, overlay) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(f), Some(o)) => (k, f, o),
            _ => panic!("bad case line: {line}"),
        };
        let err = run(overlay).expect_err(line).to_string();
        let head = format!("config error in {}: {key}: ", site_path.display());
        let base_head = format!("config error in {}: {key}: ", base_path.display());
        assert!(
            err.starts_with(&head) || err.starts_with(&base_head),
            "{line}\n  got {err}"
        );
        assert!(err.contains(fragment), "{line}\n  got {err}");
    }
    for overlay in valid.lines().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = run(overlay) {
            panic!("{overlay}\n  got {e}");
        }
    }
    let _ = std::fs::remove_file(&base_path);
    let _ = std::fs::remove_file(&site_path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `key | message fragment | YAML overlaid on a config with MQTT v3 on :1883`.
    const ERRORS: &str = r#"
broker.max_message_size | at least 1024 | broker: { max_message_size: 1023 }
broker.max_message_size | at most 268435455 | broker: { max_message_size: 300000000 }
broker.retry_interval | must be at least 1s | broker: { retry_interval: 999ms }
broker.max_qos | 0, 1 or 2 | broker: { max_qos: 3 }
session.max_sessions | at least 1 | session: { max_sessions: 0 }
session.max_offline_queue_size | at least 10 | session: { max_offline_queue_size: 9 }
session.max_inflight_messages | 1 to 65535 | session: { max_inflight_messages: 0 }
session.max_inflight_messages | 1 to 65535 | session: { max_inflight_messages: 65536 }
session.inflight_overflow | 0 (backpressure) or 1 | session: { inflight_overflow: 2 }
session.pending_queue_size | at least 1 | session: { inflight_overflow: 1, pending_queue_size: 0 }
session.offline_queue_policy | unknown variant | session: { offline_queue_policy: drop }
ratelimit.message.rate | >= 0 | ratelimit: { message: { rate: -1 } }
ratelimit.subscribe.rate | finite | ratelimit: { subscribe: { rate: .nan } }
ratelimit.connection.rate | finite | ratelimit: { connection: { rate: .inf } }
ratelimit.message.burst | at least 1 when rate > 0 | ratelimit: { message: { burst: 0 } }
ratelimit.connection.cleanup_interval | greater than 0 | ratelimit: { enabled: true, connection: { cleanup_interval: 0s } }
ratelimit.connection.max_tracked_ips | at least 1 | ratelimit: { connection: { max_tracked_ips: 0 } }
ratelimit.connection.burst | must not be negative (got -1) | ratelimit: { connection: { burst: -1 } }
ratelimit.subscribe.burst | expected a whole number | ratelimit: { subscribe: { burst: 1.5 } }
ratelimit.message.rate | finite | ratelimit: { message: { rate: .NaN } }
ratelimit.connection.rate | >= 0 | ratelimit: { connection: { rate: -0.5 } }
ratelimit.subscribe.burst | at least 1 when rate > 0 | ratelimit: { subscribe: { rate: 0.5, burst: 0 } }
ratelimit.connection.cleanup_interval | must not be negative | ratelimit: { connection: { cleanup_interval: -5m } }
ratelimit.connection.max_tracked_ips | must not be negative (got -1) | ratelimit: { connection: { max_tracked_ips: -1 } }
ratelimit.message.rate | expected f64 | ratelimit: { message: { rate: fast } }
ratelimit.enabled | expected a boolean | ratelimit: { enabled: maybe }
auth.provider | unknown provider "ldap" | auth: { provider: ldap }
auth.url | required for provider callout | auth: { provider: Callout }
auth.url | http:// or https:// | auth: { url: "auth.internal:7016" }
auth.url | with a host | auth: { provider: callout, url: "https://" }
auth.transport | grpc or http | auth: { transport: rest }
auth.protocols.ws | expected one of mqtt, amqp, amqp091, http, coap | auth: { protocols: { ws: true } }
auth.timeout | must not be negative | auth: { timeout: -1s }
auth.identity_cache_size | must not be negative | auth: { identity_cache_size: -1 }
auth.identity_cache_ttl | must not be negative | auth: { identity_cache_ttl: -1h }
auth.atom.authn_cache_ttl | must not be negative | auth: { atom: { authn_cache_ttl: -5s } }
auth.atom.grpc_addr | required for provider atom | auth: { provider: atom, atom: { service_token_env: T } }
auth.atom.grpc_addr | without scheme | auth: { provider: atom, atom: { grpc_addr: "grpc://atom:8081", service_token_env: T } }
auth.atom.service_token_env | service_token_file | auth: { provider: atom, atom: { grpc_addr: "atom:8081" } }
auth.atom.topic_format | only magistrala | auth: { atom: { topic_format: mainflux } }
auth.atom.unsupported_topic_policy | only deny | auth: { atom: { unsupported_topic_policy: allow } }
auth.atom.key_file | set together | auth: { atom: { cert_file: c.pem } }
auth.atom.cert_file | set together | auth: { atom: { key_file: k.pem } }
cluster.node_id | required | cluster: { enabled: true, node_id: " " }
cluster.transport.bind_addr | no port | cluster: { enabled: true, transport: { bind_addr: "7948" } }
cluster.transport.peers.c1 | needs a host | cluster: { enabled: true, transport: { peers: { c1: ":7948" } } }
cluster.transport.tls_key_file | tls_enabled | cluster: { enabled: true, transport: { tls_enabled: true, tls_cert_file: c } }
cluster.transport.tls_ca_file | tls_enabled | cluster: { enabled: true, transport: { tls_enabled: true, tls_cert_file: c, tls_key_file: k } }
storage.badger_dir | required for storage.type badger | storage: { type: badger, badger_dir: "" }
log.format | unknown variant | log: { format: xml }
"#;

    /// Overlays that must stay valid.
    const VALID: &str = r#"
broker: { max_message_size: 1024, retry_interval: 1s, max_qos: 0, memory_limit: 64MiB }
session: { max_sessions: 1, max_offline_queue_size: 10, max_inflight_messages: 65535, inflight_overflow: 1, pending_queue_size: 1 }
ratelimit: { enabled: true, message: { rate: 0, burst: 0 }, subscribe: { enabled: false, rate: 0.5, burst: 1 } }
ratelimit: { connection: { cleanup_interval: 0s } }
auth: { provider: ATOM, atom: { grpc_addr: "atom:8081", service_token_file: /run/secrets/t, topic_format: Magistrala, unsupported_topic_policy: DENY } }
auth: { url: "http://auth:7016", transport: HTTP, protocols: { mqtt: true, coap: false } }
cluster: { enabled: false, node_id: "", transport: { tls_enabled: true } }
cluster: { enabled: true, node_id: edge-1, transport: { peers: { cloud-1: "cloud-1.example:7948" }, tls_enabled: true, tls_cert_file: c, tls_key_file: k, tls_ca_file: ca } }
storage: { type: badger }
"#;

    #[test]
    fn value_rules_name_key_and_file() {
        expect_cases(ERRORS, VALID);
    }

    #[test]
    fn validate_checks_a_programmatic_config() {
        let mut c = Config::default();
        c.server.tcp.v3.addr = ":1883".to_owned();
        c.validate("built").expect("valid");
        c.broker.retry_interval = Duration::from_millis(500);
        let e = c.validate("built").expect_err("too short");
        assert_eq!(
            e.to_string(),
            "config error in built: broker.retry_interval: must be at least 1s"
        );
        assert_eq!((e.origin(), e.path()), ("built", "broker.retry_interval"));
    }
}
