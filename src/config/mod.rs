//! Configuration: FluxMQ's YAML keys (atom-branch dialect, spec §1) read into a validated
//! [`Config`].
//!
//! An operator moves a FluxMQ configuration to the gateway and it runs, or gets an error
//! naming the file and the key: unknown keys, bad types and bad values are all refused;
//! FluxMQ's cloud-only sections and main-branch keys are refused by name with a hint.
//!
//! - `schema.rs`, `sections.rs`: the tree, field names = YAML keys, edge defaults.
//! - `duration.rs`: Go durations and byte sizes. `tls.rs`: the TLS block's enums.
//! - `load.rs`: YAML → `Config`, file merging. `error.rs`: [`ConfigError`].
//! - `validate.rs`, `listeners.rs`: value rules. `support.rs`: what this build runs, and
//!   warnings for keys that have no effect.
//!
//! Does not own: reading certificates, opening sockets, or applying the configuration.
//! `main` calls [`load()`], then [`Config::check_supported`], then logs [`Config::warnings`].

pub mod duration;
mod error;
mod listeners;
mod load;
mod schema;
mod sections;
mod support;
pub mod tls;
mod validate;

pub use duration::ByteSize;
pub use error::ConfigError;
pub use listeners::Bind;
pub use load::{EMBEDDED_ORIGIN, load, load_embedded, load_str};
pub use schema::{
    CoapSlots, Config, Crl, Family, Listener, MqttSlots, Ocsp, SLOT_COUNT, SLOTS, Security, Server,
    SlotInfo, Slots,
};
pub use sections::{
    AUTH_PROTOCOLS, Atom, Auth, AuthProvider, Broker, Bucket, Cluster, ClusterTransport,
    ConnectionRateLimit, Log, LogFormat, LogLevel, MessageRateLimit, OfflineQueuePolicy, RateLimit,
    Session, Storage, StorageType, SubscribeRateLimit,
};
pub use tls::{CipherSuite, ClientAuth, TlsVersion};

/// The embedded default configuration: MQTT v3 on :1883, v5 on :1884, health on :8081.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/edge.yaml");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    const FULL: &str = include_str!("../../config/full.yaml");

    /// The spec's §1.12 example without its cloud-only sections (`queue_manager`,
    /// `cluster.etcd`, `cluster.raft`); otherwise verbatim, comments shortened.
    const SPEC_EXAMPLE: &str = r#"
server:
  tcp:
    v3: { addr: ":1883", max_connections: 5000, read_timeout: "30s", write_timeout: "30s", protocol: "v3" }
    v5: { addr: "", protocol: "v5" }
    tls:
      addr: ":8883"
      max_connections: 5000
      read_timeout: "30s"
      write_timeout: "30s"
      protocol: "auto"
      cert_file: "/etc/fluxmq/tls/server.crt"
      key_file: "/etc/fluxmq/tls/server.key"
      min_version: "tls1.2"
      cipher_suites:
        - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    mtls:
      addr: ":8884"
      protocol: "auto"
      cert_file: "/etc/fluxmq/tls/server.crt"
      key_file: "/etc/fluxmq/tls/server.key"
      ca_file: "/etc/fluxmq/tls/clients-ca.crt"
      client_auth: "require"
      min_version: "tls1.2"
      ocsp: { depth: 0, responder_url: "" }
      crl:  { depth: 0, offline_crl_file: "" }
  websocket:
    v3:  { addr: "", path: "/mqtt", protocol: "v3" }
    v5:  { addr: "", path: "/mqtt", protocol: "v5" }
    tls:
      addr: ":8443"
      path: "/mqtt"
      protocol: "auto"
      allowed_origins: ["https://app.example.com", "*.example.org"]
      cert_file: "/etc/fluxmq/tls/server.crt"
      key_file: "/etc/fluxmq/tls/server.key"
    mtls: { addr: "" }
  http:
    plain: { addr: ":8080" }
    tls:   { addr: "", cert_file: "", key_file: "" }
    mtls:  { addr: "" }
  coap:
    plain: { addr: ":5683" }
    dtls:  { addr: "" }
    mdtls:
      addr: ":5684"
      cert_file: "/etc/fluxmq/tls/server.crt"
      key_file: "/etc/fluxmq/tls/server.key"
      ca_file: "/etc/fluxmq/tls/clients-ca.crt"
      client_auth: "require"
  amqp:
    plain: { addr: "", max_connections: 1000 }
    tls:   { addr: "" }
    mtls:  { addr: "" }
  amqp091:
    plain: { addr: ":5682", max_connections: 1000 }
    tls:   { addr: "" }
    mtls:  { addr: "" }
  health_enabled: true
  health_addr: "127.0.0.1:8081"
  admin_api_addr: "127.0.0.1:8082"
  metrics_enabled: false
  metrics_addr: "localhost:4317"
  otel_service_name: "fluxmq"
  otel_service_version: "1.0.0"
  otel_metrics_enabled: true
  otel_traces_enabled: false
  otel_trace_sample_rate: 0.1
  shutdown_timeout: "30s"

broker:
  max_message_size: 1048576
  max_retained_messages: 10000
  retry_interval: "20s"
  max_retries: 0
  max_qos: 2
  async_fan_out: false
  fan_out_workers: 0

session:
  max_sessions: 10000
  default_expiry_interval: 300
  max_offline_queue_size: 1000
  max_inflight_messages: 256
  offline_queue_policy: "evict"
  max_send_queue_size: 0
  disconnect_on_full: false
  inflight_overflow: 0
  pending_queue_size: 1000

storage:
  type: "badger"
  badger_dir: "/var/lib/fluxmq/data"
  sync_writes: false
  recover_on_startup: false

auth:
  provider: "atom"
  timeout: "2s"
  protocols: { mqtt: true, http: true, coap: true, amqp: true, amqp091: true }
  identity_cache_size: 50000
  identity_cache_ttl: "1h"
  atom:
    grpc_addr: "atom:8081"
    insecure: false
    ca_file: "/etc/fluxmq/tls/atom-ca.crt"
    cert_file: ""
    key_file: ""
    service_token_env: "FLUXMQ_ATOM_SERVICE_TOKEN"
    service_token_file: "/run/secrets/atom_service_token"
    topic_format: "magistrala"
    authn_cache_ttl: "30s"
    alias_cache_ttl: "5m"
    decision_cache_ttl: "0s"
    unsupported_topic_policy: "deny"

ratelimit:
  enabled: true
  connection: { enabled: true, rate: 1.6667, burst: 20, cleanup_interval: "5m" }
  message:    { enabled: true, rate: 1000, burst: 100 }
  subscribe:  { enabled: true, rate: 100, burst: 10 }

cluster:
  enabled: false
  node_id: "edge-1"
  transport:
    bind_addr: "0.0.0.0:7948"
    peers: { cloud-1: "cloud-1.example.net:7948" }
    route_batch_max_size: 256
    route_batch_max_delay: "5ms"
    route_batch_flush_workers: 4
    route_publish_timeout: "15s"
    tls_enabled: true
    tls_cert_file: "/etc/fluxmq/tls/transport.crt"
    tls_key_file: "/etc/fluxmq/tls/transport.key"
    tls_ca_file: "/etc/fluxmq/tls/transport-ca.crt"

log:
  level: "info"
  format: "json"
"#;

    #[test]
    fn embedded_default_is_the_edge_profile() {
        let c = load_str(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN).expect("edge.yaml");
        let on: Vec<(&str, &str)> = c
            .server
            .slots()
            .into_iter()
            .filter(|(_, l)| l.enabled())
            .map(|(s, l)| (s.key, l.addr.as_str()))
            .collect();
        assert_eq!(on, [("server.tcp.v3", ":1883"), ("server.tcp.v5", ":1884")]);
        assert!(c.server.health_listening() && c.server.health_addr == ":8081");
        assert!(c.server.admin_api_addr.is_empty() && !c.server.metrics_enabled);
        assert!(!c.cluster.enabled);
        assert_eq!(c.storage.r#type, StorageType::Memory);
        assert_eq!(
            (c.log.level, c.log.format),
            (LogLevel::Info, LogFormat::Text)
        );
        c.check_supported(EMBEDDED_ORIGIN)
            .expect("edge.yaml runs on this build");
        assert_eq!(c.warnings(), Vec::<String>::new());
    }

    #[test]
    fn full_yaml_documents_the_defaults() {
        let full = load_str(FULL, "full.yaml").expect("full.yaml loads");
        let edge = load_str(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN).expect("edge.yaml");
        assert_eq!(full, edge, "full.yaml must equal the defaults + edge.yaml");
        full.check_supported("full.yaml")
            .expect("full.yaml runs on this build");
        assert_eq!(full.warnings(), Vec::<String>::new());
    }

    /// Every key path of the serialized tree (mappings with keys are descended).
    fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
        let Some(map) = value.as_mapping().filter(|m| !m.is_empty()) else {
            return;
        };
        for (key, child) in map {
            let key = key.as_str().unwrap_or_default();
            let path = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            key_paths(child, &path, out);
            out.push(path);
        }
    }

    #[test]
    fn full_yaml_covers_every_key() {
        let defaults = serde_yaml::to_value(Config::default()).expect("serialize");
        let full: Value = serde_yaml::from_str(FULL).expect("full.yaml parses");
        let mut paths = Vec::new();
        key_paths(&defaults, "", &mut paths);
        assert!(
            paths.len() > 600,
            "expected the whole tree, got {}",
            paths.len()
        );
        let missing: Vec<&String> = paths
            .iter()
            .filter(|path| {
                let mut node = Some(&full);
                for part in path.split('.') {
                    node = node.and_then(|n| n.get(part));
                }
                node.is_none()
            })
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from config/full.yaml: {missing:?}"
        );
    }

    #[test]
    fn spec_example_loads_without_cloud_sections() {
        let c = load_str(SPEC_EXAMPLE, "spec-1.12.yaml").expect("spec example");
        assert_eq!(c.server.tcp.tls.cipher_suites.len(), 2);
        assert_eq!(c.server.tcp.v5.protocol, "v5");
        assert_eq!(c.server.websocket.mtls.protocol, "auto");
        assert_eq!(c.auth.provider_kind(), Ok(AuthProvider::Atom));
        assert_eq!(
            c.auth.identity_cache_ttl,
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(c.cluster.transport.peers.len(), 1);
        assert_eq!(c.log.format, LogFormat::Json);
        // MQTT over TCP, TLS and mTLS are built; a later listener of the example is not.
        let e = c
            .check_supported("spec-1.12.yaml")
            .expect_err("not every listener is built");
        assert!(
            e.path().ends_with(".addr") && !e.path().starts_with("server.tcp."),
            "{e}"
        );
        // The original, with its cloud-only sections, is refused by name.
        let with_cloud = format!("{SPEC_EXAMPLE}queue_manager:\n  auto_commit_interval: \"5s\"\n");
        let e = load_str(&with_cloud, "spec.yaml")
            .expect_err("cloud-only")
            .to_string();
        assert!(
            e.contains("queue_manager: FluxMQ cloud-only section"),
            "{e}"
        );
    }
}
