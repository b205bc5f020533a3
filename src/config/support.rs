//! What this build of the edge can actually run, and which accepted keys do nothing.
//!
//! Owns: the one table of features a configuration can ask for that are not built yet
//! (`Config::check_supported`, called by `main` after loading), and the warnings for keys
//! accepted for FluxMQ compatibility that have no effect (`Config::warnings`). Does not own:
//! whether values are well-formed (`validate.rs`). When a feature lands, delete its row.

use super::schema::{Config, Family, Listener, Security, Server, SlotInfo};
use super::sections::{AuthProvider, StorageType};
use super::{Atom, Auth, ConfigError, Storage};

/// Listener slots this build serves. Add a slot when its listener lands.
const BUILT_SLOTS: &[&str] = &[
    "server.tcp.v3",
    "server.tcp.v5",
    "server.tcp.tls",
    "server.tcp.mtls",
    "server.http.plain",
    "server.http.tls",
    "server.http.mtls",
    "server.coap.plain",
    "server.websocket.v3",
    "server.websocket.v5",
    "server.websocket.tls",
    "server.websocket.mtls",
];

/// Why the DTLS slots are refused (issue 6's evaluation, measured; README "CoAP over DTLS").
/// `dimpl` (sans-IO, pure Rust) targets WebRTC: ECDSA keys only, no certificate chain
/// verification, one PSK suite, an API moving between minor versions. `rtc-dtls` 0.21.1
/// (webrtc-rs, sans-IO DTLS 1.2 on ring) was built and driven over UDP in a probe (branch
/// `dtls-probe`): its API fits a per-peer state machine (`Endpoint::read` / `poll_transmit`
/// / `handle_timeout` with `now`), and OpenSSL 3 `s_client -dtls1_2` completed a handshake
/// with an ECDSA certificate and a client certificate verified against `ca_file`; no client
/// certificate or one from another CA was refused. But it adds 404,672 bytes (+13.6%) to
/// the stripped aarch64-musl binary with every feature (2,979,192 -> 3,383,864 bytes, over
/// the 3.0 MiB = 3,145,728-byte budget of cross/build-all.sh by 238,136 bytes) and 94 crates
/// (121 -> 215 in the dependency tree: RustCrypto AES/CCM/ChaCha beside ring, x509-parser,
/// rkyv, nix, url/idna/ICU); PSK beside certificates found no shared suite with OpenSSL's
/// PSK clients; its per-peer map is unbounded and takes a session per unknown source
/// before the cookie exchange. It cross-builds for armv7-unknown-linux-gnueabihf (stripped
/// 2,805,292 -> 3,227,224 bytes, +421,932) and did the same mTLS handshake there under
/// qemu-arm; an RSA-2048 server certificate worked too. An established session costs about
/// 10 KiB (probe RSS, 100 sessions).
const DTLS_NOT_BUILT: &str = "CoAP over DTLS is not built yet in this version of fluxmq-edge \
     (measured: the candidate DTLS library, rtc-dtls 0.21, works but adds 395 KiB to the \
     gateway binary, past its 3.0 MiB budget; see README \"CoAP over DTLS\"); use \
     server.coap.plain on a trusted network or the HTTPS bridge; set it to \"\"";

/// A feature the configuration can ask for that this build does not have.
struct NotBuilt {
    key: &'static str,
    asked: fn(&Config) -> bool,
    why: &'static str,
}

/// Not built yet, one row per feature (listener slots: see [`BUILT_SLOTS`]).
const NOT_BUILT: &[NotBuilt] = &[
    NotBuilt {
        key: "server.admin_api_addr",
        asked: |c| !c.server.admin_api_addr.is_empty(),
        why: "the FluxMQ admin API is not part of the edge; remove it or set it to \"\"",
    },
    NotBuilt {
        key: "server.metrics_enabled",
        asked: |c| c.server.metrics_enabled,
        why: "OTLP metrics export is not built yet in this version of fluxmq-edge (the edge \
              serves Prometheus /metrics on server.health_addr); set it to false",
    },
    NotBuilt {
        key: "cluster.enabled",
        asked: |c| c.cluster.enabled,
        why: "the cloud cluster link is not built yet in this version of fluxmq-edge; set it \
              to false",
    },
    NotBuilt {
        key: "storage.type",
        asked: |c| c.storage.r#type == StorageType::Badger,
        why: "the on-disk store (badger) is not built yet in this version of fluxmq-edge; use \
              memory",
    },
];

/// A listener feature that is not built yet: `(field, asked, why)`.
type NotBuiltOnListener = (&'static str, fn(&Listener) -> bool, &'static str);

/// Not built yet on any listener.
const NOT_BUILT_PER_LISTENER: &[NotBuiltOnListener] = &[
    (
        "ocsp",
        |l| l.ocsp.enabled(),
        "OCSP peer checks are not built yet in this version of fluxmq-edge",
    ),
    (
        "crl",
        |l| l.crl.enabled(),
        "CRL peer checks are not built yet in this version of fluxmq-edge",
    ),
];

/// The cargo feature a slot family needs, when this binary was built without it.
fn left_out(family: Family) -> Option<&'static str> {
    match family {
        Family::Http if !cfg!(feature = "http") => Some("http"),
        Family::Coap if !cfg!(feature = "coap") => Some("coap"),
        _ => None,
    }
}

fn slot_name(slot: &SlotInfo) -> &'static str {
    match (slot.family, slot.security) {
        (Family::MqttTcp, Security::Plain) => "plain MQTT",
        (Family::MqttTcp, Security::Tls) => "MQTT over TLS",
        (Family::MqttTcp, Security::MutualTls) => "MQTT over mutual TLS",
        (Family::MqttWebSocket, _) => "MQTT over WebSocket",
        (Family::Http, _) => "the HTTP publish bridge",
        (Family::Coap, _) => "the CoAP bridge",
        (Family::Amqp, _) => "AMQP 1.0",
        (Family::Amqp091, _) => "AMQP 0.9.1",
    }
}

impl Config {
    /// Refuses, naming the key, anything this build cannot do yet. `load` does not call it;
    /// `main` does, so `--check-config` can still show a configuration meant for later.
    pub fn check_supported(&self, origin: &str) -> Result<(), ConfigError> {
        for (slot, listener) in self.server.slots() {
            if !listener.enabled() {
                continue;
            }
            if slot.family == Family::Coap && slot.security != Security::Plain {
                return Err(ConfigError::new(
                    origin,
                    format!("{}.addr", slot.key),
                    DTLS_NOT_BUILT,
                ));
            }
            if let Some(feature) = left_out(slot.family) {
                return Err(ConfigError::new(
                    origin,
                    format!("{}.addr", slot.key),
                    format!(
                        "{} is not in this build of fluxmq-edge (built without the cargo \
                         feature `{feature}`); set it to \"\"",
                        slot_name(&slot)
                    ),
                ));
            }
            if !BUILT_SLOTS.contains(&slot.key) {
                return Err(ConfigError::new(
                    origin,
                    format!("{}.addr", slot.key),
                    format!(
                        "{} is not built yet in this version of fluxmq-edge; set it to \"\"",
                        slot_name(&slot)
                    ),
                ));
            }
            for (field, asked, why) in NOT_BUILT_PER_LISTENER {
                if asked(listener) {
                    return Err(ConfigError::new(
                        origin,
                        format!("{}.{field}", slot.key),
                        *why,
                    ));
                }
            }
        }
        match NOT_BUILT.iter().find(|row| (row.asked)(self)) {
            Some(row) => Err(ConfigError::new(origin, row.key, row.why)),
            None => Ok(()),
        }
    }

    /// Warnings for keys that are accepted for compatibility but have no effect at the edge
    /// (e.g. broker.async_fan_out, fan_out_workers, otel_* when metrics are off,
    /// prefer_server_cipher_suites): each a line "key: why". The caller logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut warn = |key: &str, why: &str| out.push(format!("{key}: {why}"));
        let compat = "accepted for FluxMQ compatibility; no effect at the edge";
        if self.broker.async_fan_out {
            warn(
                "broker.async_fan_out",
                &format!("{compat} (the core fans out in one pass)"),
            );
        }
        if self.broker.fan_out_workers != 0 {
            warn(
                "broker.fan_out_workers",
                &format!("{compat} (the core is single-threaded)"),
            );
        }
        let d = Self::default();
        if self.session.inflight_overflow != d.session.inflight_overflow
            || self.session.pending_queue_size != d.session.pending_queue_size
        {
            warn(
                "session.inflight_overflow",
                &format!(
                    "{compat} (deliveries past the in-flight window wait in the session queue, \
                     capped by session.max_send_queue_size and session.max_queue_bytes)"
                ),
            );
        }
        server_warnings(&self.server, &mut warn);
        auth_warnings(&self.auth, &mut warn);
        storage_warnings(&self.storage, &mut warn);
        if self.ratelimit.enabled {
            for (path, bucket) in self.ratelimit.buckets() {
                if bucket.enabled && bucket.rate == 0.0 && bucket.burst == 0 {
                    warn(path, "rate 0 and burst 0: every request is refused");
                } else if bucket.enabled && bucket.rate == 0.0 {
                    warn(
                        path,
                        "rate 0: the bucket never refills (burst requests per bucket, then none)",
                    );
                }
            }
        }
        out
    }
}

fn server_warnings(s: &Server, warn: &mut impl FnMut(&str, &str)) {
    let d = Server::default();
    if !s.metrics_enabled {
        let changed = [
            ("server.metrics_addr", s.metrics_addr != d.metrics_addr),
            (
                "server.otel_service_name",
                s.otel_service_name != d.otel_service_name,
            ),
            (
                "server.otel_service_version",
                s.otel_service_version != d.otel_service_version,
            ),
            (
                "server.otel_metrics_enabled",
                s.otel_metrics_enabled != d.otel_metrics_enabled,
            ),
            (
                "server.otel_traces_enabled",
                s.otel_traces_enabled != d.otel_traces_enabled,
            ),
            (
                "server.otel_trace_sample_rate",
                s.otel_trace_sample_rate != d.otel_trace_sample_rate,
            ),
            ("server.otel_insecure", s.otel_insecure != d.otel_insecure),
            ("server.otel_ca_file", s.otel_ca_file != d.otel_ca_file),
            (
                "server.otel_cert_file",
                s.otel_cert_file != d.otel_cert_file,
            ),
            ("server.otel_key_file", s.otel_key_file != d.otel_key_file),
        ];
        for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
            warn(
                key,
                "no effect while server.metrics_enabled is false (no OTLP export)",
            );
        }
    }
    if s.health_enabled && s.health_addr.is_empty() {
        warn(
            "server.health_addr",
            "empty: no health listener although health_enabled is true",
        );
    }
    for (slot, l) in s.slots() {
        for field in inapplicable_fields(&slot, l) {
            warn(
                &format!("{}.{field}", slot.key),
                "has no effect on this slot",
            );
        }
        if l.prefer_server_cipher_suites {
            warn(
                &format!("{}.prefer_server_cipher_suites", slot.key),
                "accepted for FluxMQ compatibility; no effect (the TLS library orders suites)",
            );
        }
        if slot.family == Family::Coap && !l.min_version.is_empty() {
            warn(
                &format!("{}.min_version", slot.key),
                "ignored for DTLS (as in FluxMQ)",
            );
        }
    }
}

/// Listener keys set away from their default on a slot whose protocol does not use them.
fn inapplicable_fields(slot: &SlotInfo, l: &Listener) -> Vec<&'static str> {
    use Family::*;
    let d = Listener::default();
    let f = slot.family;
    let rows = [
        (
            "max_connections",
            l.max_connections != d.max_connections,
            true,
        ),
        (
            "read_timeout",
            l.read_timeout != d.read_timeout,
            matches!(f, MqttTcp | MqttWebSocket | Http),
        ),
        (
            "write_timeout",
            l.write_timeout != d.write_timeout,
            matches!(f, MqttTcp | MqttWebSocket),
        ),
        (
            "protocol",
            slot.protocol.is_none() && !l.protocol.is_empty(),
            false,
        ),
        ("path", l.path != d.path, f == MqttWebSocket),
        (
            "allowed_origins",
            !l.allowed_origins.is_empty(),
            f == MqttWebSocket,
        ),
        (
            "handshake_timeout",
            l.handshake_timeout != d.handshake_timeout,
            matches!(f, Amqp | Amqp091),
        ),
    ];
    rows.iter()
        .filter(|(_, set, applies)| *set && !applies)
        .map(|(k, _, _)| *k)
        .collect()
}

fn auth_warnings(a: &Auth, warn: &mut impl FnMut(&str, &str)) {
    let kind = a.provider_kind();
    if kind == Ok(AuthProvider::Atom) {
        if !a.url.is_empty() {
            warn("auth.url", "ignored by the atom provider");
        }
        if a.transport != Auth::default().transport {
            warn(
                "auth.transport",
                "callout only; ignored by the atom provider",
            );
        }
        let atom = &a.atom;
        if atom.insecure && !(atom.ca_file.is_empty() && atom.cert_file.is_empty()) {
            warn(
                "auth.atom.insecure",
                "plaintext gRPC: ca_file, cert_file and key_file are unused",
            );
        }
    } else if a.atom != Atom::default() {
        warn("auth.atom", "no effect unless auth.provider is atom");
    }
    if !a.identity_cache_ttl.is_zero() {
        warn(
            "auth.identity_cache_ttl",
            "accepted for FluxMQ compatibility; no effect (an identity is bound to its \
             connection or request, never looked up again by client id; the atom caches \
             have their own auth.atom.*_cache_ttl)",
        );
    }
    if kind == Ok(AuthProvider::Disabled) && !a.protocols.is_empty() {
        warn(
            "auth.protocols",
            "no effect: no auth provider is configured",
        );
    }
}

fn storage_warnings(s: &Storage, warn: &mut impl FnMut(&str, &str)) {
    if s.r#type != StorageType::Memory {
        return;
    }
    let d = Storage::default();
    let changed = [
        ("storage.badger_dir", s.badger_dir != d.badger_dir),
        ("storage.sync_writes", s.sync_writes),
        ("storage.recover_on_startup", s.recover_on_startup),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        warn(key, "no effect with storage.type memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        let mut c = Config::default();
        c.server.tcp.v3.addr = ":1883".to_owned();
        c.server.tcp.v5.addr = ":1884".to_owned();
        c
    }

    #[test]
    fn built_features_pass() {
        base().check_supported("t").expect("v3 + v5 + health");
        let mut ws = base();
        ws.server.websocket.v3.addr = ":8083".to_owned();
        ws.server.websocket.v5.addr = ":8084".to_owned();
        ws.check_supported("t").expect("ws v3 + v5");
        let mut c = base();
        c.server.tcp.tls.cert_file = "kept for later".to_owned(); // disabled slot: fine
        c.check_supported("t").expect("disabled slot");
    }

    #[test]
    fn unbuilt_features_are_refused_by_key() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, &str)] = &[
            (
                |c| c.server.coap.dtls.addr = ":5684".into(),
                "server.coap.dtls.addr: CoAP over DTLS is not built yet",
            ),
            (
                |c| c.server.coap.mdtls.addr = ":5684".into(),
                "server.coap.mdtls.addr: CoAP over DTLS",
            ),
            (
                |c| c.server.amqp.plain.addr = ":5672".into(),
                "server.amqp.plain.addr: AMQP 1.0",
            ),
            (
                |c| c.server.amqp091.mtls.addr = ":5681".into(),
                "server.amqp091.mtls.addr: AMQP 0.9.1",
            ),
            (
                |c| c.server.tcp.v3.ocsp.depth = 1,
                "server.tcp.v3.ocsp: OCSP peer checks",
            ),
            (
                |c| c.server.admin_api_addr = ":8082".into(),
                "server.admin_api_addr: the FluxMQ admin API is not part of the edge; remove it or set it to \"\"",
            ),
            (
                |c| c.server.metrics_enabled = true,
                "server.metrics_enabled: OTLP metrics export is not built yet",
            ),
            (
                |c| c.cluster.enabled = true,
                "cluster.enabled: the cloud cluster link is not built yet",
            ),
            (
                |c| c.storage.r#type = StorageType::Badger,
                "storage.type: the on-disk store (badger) is not built yet",
            ),
        ];
        for (edit, want) in cases {
            let mut c = base();
            edit(&mut c);
            let e = c.check_supported("edge.yaml").expect_err(want).to_string();
            assert!(
                e.starts_with(&format!("config error in edge.yaml: {want}")),
                "{e}"
            );
            let key = want.split(':').next().unwrap_or_default();
            let admin = key == "server.admin_api_addr";
            assert!(
                admin || e.contains("not built yet in this version of fluxmq-edge"),
                "{e}"
            );
        }
    }

    /// A bridge slot in a binary built without its feature names the feature.
    #[test]
    fn bridge_slots_follow_their_features() {
        for (edit, feature, on) in [
            (
                (|c: &mut Config| c.server.http.plain.addr = ":8080".into()) as fn(&mut Config),
                "http",
                cfg!(feature = "http"),
            ),
            (
                |c: &mut Config| c.server.coap.plain.addr = ":5683".into(),
                "coap",
                cfg!(feature = "coap"),
            ),
        ] {
            let mut c = base();
            edit(&mut c);
            match c.check_supported("t") {
                Ok(()) => assert!(on, "{feature} off but accepted"),
                Err(e) => {
                    assert!(!on, "{e}");
                    assert!(
                        e.to_string().contains(&format!("feature `{feature}`")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_warnings_for_defaults() {
        assert_eq!(base().warnings(), Vec::<String>::new());
    }

    #[test]
    fn warnings_name_key_and_reason() {
        let mut c = base();
        c.broker.async_fan_out = true;
        c.broker.fan_out_workers = 4;
        c.server.otel_service_name = "edge".into();
        c.server.tcp.tls.prefer_server_cipher_suites = true;
        c.server.tcp.v3.path = "/ws".into();
        c.server.amqp.plain.read_timeout = std::time::Duration::from_secs(5);
        c.server.http.plain.protocol = "v5".into();
        c.server.coap.dtls.min_version = "1.2".into();
        c.storage.sync_writes = true;
        c.auth.atom.grpc_addr = "atom:8081".into();
        let w = c.warnings();
        let keys: Vec<&str> = w
            .iter()
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "broker.async_fan_out",
                "broker.fan_out_workers",
                "server.otel_service_name",
                "server.tcp.v3.path",
                "server.tcp.tls.prefer_server_cipher_suites",
                "server.http.plain.protocol",
                "server.coap.dtls.min_version",
                "server.amqp.plain.read_timeout",
                "auth.atom",
                "storage.sync_writes",
            ]
        );
        assert!(
            w.iter()
                .all(|l| l.split_once(": ").is_some_and(|(_, why)| !why.is_empty()))
        );
        let mut atom = base();
        atom.auth.provider = "atom".into();
        atom.auth.url = "https://x".into();
        assert_eq!(atom.warnings(), ["auth.url: ignored by the atom provider"]);
    }

    #[test]
    fn rate_limit_warnings() {
        let mut c = base();
        c.ratelimit.enabled = true;
        c.ratelimit.message.rate = 0.0;
        c.ratelimit.message.burst = 0;
        c.ratelimit.subscribe.rate = 0.0;
        c.ratelimit.connection.rate = 0.0;
        c.ratelimit.connection.enabled = false;
        assert!(c.check_supported("edge.yaml").is_ok());
        assert_eq!(
            c.warnings(),
            [
                "ratelimit.message: rate 0 and burst 0: every request is refused",
                "ratelimit.subscribe: rate 0: the bucket never refills (burst requests per \
                 bucket, then none)",
            ]
        );
        c.ratelimit.enabled = false;
        assert!(c.warnings().is_empty());
    }
}
