//! The configuration tree, part one: `Config`, `server` and the one `Listener` struct every
//! listener slot uses, with the edge defaults (`Default`).
//!
//! Field names are the YAML keys of FluxMQ's atom-branch dialect (spec §1.2–1.5). Every
//! struct refuses unknown keys and fills missing keys from its `Default`. Does not own:
//! the other sections (`sections.rs`), reading files (`load.rs`), checking values
//! (`validate.rs`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::sections::{Auth, Broker, Cluster, Log, RateLimit, Session, Storage};
use super::tls::{ClientAuth, TlsVersion};

/// The whole configuration of the edge broker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub broker: Broker,
    pub session: Session,
    pub log: Log,
    pub storage: Storage,
    pub cluster: Cluster,
    pub ratelimit: RateLimit,
    pub auth: Auth,
}

/// `server`: listeners, health endpoint, telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// MQTT over TCP: `v3` and `v5` plain, `tls`, `mtls`.
    pub tcp: MqttSlots,
    /// MQTT over WebSocket: same four slots.
    pub websocket: MqttSlots,
    /// HTTP publish bridge.
    pub http: Slots,
    /// CoAP bridge over UDP (`plain`) or DTLS.
    pub coap: CoapSlots,
    /// AMQP 1.0.
    pub amqp: Slots,
    /// AMQP 0.9.1.
    pub amqp091: Slots,
    /// Serve `/health`, `/ready` (and Prometheus `/metrics`) on `health_addr`.
    pub health_enabled: bool,
    pub health_addr: String,
    /// FluxMQ's operator API; not part of the edge (must stay `""`).
    pub admin_api_addr: String,
    /// OTLP export (FluxMQ); not built at the edge.
    pub metrics_enabled: bool,
    pub metrics_addr: String,
    pub otel_service_name: String,
    pub otel_service_version: String,
    pub otel_metrics_enabled: bool,
    pub otel_traces_enabled: bool,
    pub otel_trace_sample_rate: f64,
    pub otel_insecure: bool,
    pub otel_ca_file: String,
    pub otel_cert_file: String,
    pub otel_key_file: String,
    /// How long a graceful shutdown may take before connections are dropped.
    #[serde(with = "duration::go")]
    pub shutdown_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            tcp: MqttSlots::default(),
            websocket: MqttSlots::default(),
            http: Slots::default(),
            coap: CoapSlots::default(),
            amqp: Slots::default(),
            amqp091: Slots::default(),
            health_enabled: true,
            health_addr: ":8081".to_owned(),
            admin_api_addr: String::new(),
            metrics_enabled: false,
            metrics_addr: "localhost:4317".to_owned(),
            otel_service_name: "fluxmq".to_owned(),
            otel_service_version: "1.0.0".to_owned(),
            otel_metrics_enabled: true,
            otel_traces_enabled: false,
            otel_trace_sample_rate: 0.1,
            otel_insecure: false,
            otel_ca_file: String::new(),
            otel_cert_file: String::new(),
            otel_key_file: String::new(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// The four MQTT slots of `server.tcp` and `server.websocket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSlots {
    pub v3: Listener,
    pub v5: Listener,
    pub tls: Listener,
    pub mtls: Listener,
}

impl Default for MqttSlots {
    fn default() -> Self {
        let with = |protocol: &str| Listener {
            protocol: protocol.to_owned(),
            ..Listener::default()
        };
        Self {
            v3: with("v3"),
            v5: with("v5"),
            tls: with("auto"),
            mtls: with("auto"),
        }
    }
}

/// `plain`, `tls`, `mtls` slots (HTTP, AMQP 1.0, AMQP 0.9.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slots {
    pub plain: Listener,
    pub tls: Listener,
    pub mtls: Listener,
}

/// CoAP slots: UDP `plain`, `dtls`, mutual `mdtls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapSlots {
    pub plain: Listener,
    pub dtls: Listener,
    pub mdtls: Listener,
}

/// One listener slot. Every slot has every key; keys that mean nothing for a slot's
/// protocol are accepted (and reported by `Config::warnings` when set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listener {
    /// `host:port` or `:port`; `""` = slot off.
    pub addr: String,
    /// Accepted connections at once; over it a new socket is closed at once. 0 = unlimited.
    pub max_connections: u32,
    /// Bounds the TLS handshake and the CONNECT; afterwards keep-alive governs. 0 = none.
    #[serde(with = "duration::go")]
    pub read_timeout: Duration,
    /// Per socket write. 0 = none.
    #[serde(with = "duration::go")]
    pub write_timeout: Duration,
    /// MQTT slots: `v3`, `v5` or `auto` (sniffed). Fixed on the `v3`/`v5` slots; `""` takes
    /// the slot's own value. Normalised to lower case when loaded.
    pub protocol: String,
    /// WebSocket upgrade path.
    pub path: String,
    /// WebSocket `Origin` allow list: `scheme://host` or `*.domain`; empty = allow all.
    pub allowed_origins: Vec<String>,
    /// AMQP: transport + TLS + SASL + open must finish within this. 0 = none.
    #[serde(with = "duration::go")]
    pub handshake_timeout: Duration,
    /// Edge extension, TLS slots that verify client certificates: the certificate's CN
    /// becomes the MQTT username when the client sends none.
    pub use_identity_as_username: bool,
    /// Server certificate chain (PEM).
    pub cert_file: String,
    /// Server private key (PEM).
    pub key_file: String,
    /// Client CA bundle: verifies client certificates.
    pub ca_file: String,
    /// Extra root CAs (outbound verification only).
    pub server_ca_file: String,
    /// See [`ClientAuth`]; `""` = verify if `ca_file` is set, else don't ask.
    pub client_auth: String,
    /// `tls1.2` or `tls1.3`; `""` = TLS 1.2.
    pub min_version: String,
    /// TLS 1.2 suite names (Go/IANA); empty = the library's defaults.
    pub cipher_suites: Vec<String>,
    /// Accepted for FluxMQ compatibility; no effect.
    pub prefer_server_cipher_suites: bool,
    pub ocsp: Ocsp,
    pub crl: Crl,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            addr: String::new(),
            max_connections: 10_000,
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            protocol: String::new(),
            path: "/mqtt".to_owned(),
            allowed_origins: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            use_identity_as_username: false,
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            server_ca_file: String::new(),
            client_auth: String::new(),
            min_version: String::new(),
            cipher_suites: Vec::new(),
            prefer_server_cipher_suites: false,
            ocsp: Ocsp::default(),
            crl: Crl::default(),
        }
    }
}

/// OCSP peer check: on when `depth > 0` or `responder_url` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ocsp {
    pub depth: u32,
    pub responder_url: String,
}

/// CRL peer check: on when any key is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crl {
    pub depth: u32,
    pub offline_crl_file: String,
    pub offline_crl_issuer_cert_file: String,
    /// CRL URL used when a certificate names no distribution point.
    pub distribution_points: String,
    pub distribution_points_issuer_cert_file: String,
}

impl Listener {
    /// The slot is on (it has an address).
    pub fn enabled(&self) -> bool {
        !self.addr.is_empty()
    }

    /// Any key of the TLS block is set.
    pub fn has_tls_fields(&self) -> bool {
        !self.tls_fields_set().is_empty()
    }

    /// Names of the TLS-block keys that are set, in schema order.
    pub fn tls_fields_set(&self) -> Vec<&'static str> {
        let strings = [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
            ("server_ca_file", &self.server_ca_file),
            ("client_auth", &self.client_auth),
            ("min_version", &self.min_version),
        ];
        let mut set: Vec<&'static str> = strings
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if !self.cipher_suites.is_empty() {
            set.push("cipher_suites");
        }
        if self.prefer_server_cipher_suites {
            set.push("prefer_server_cipher_suites");
        }
        if self.ocsp.enabled() {
            set.push("ocsp");
        }
        if self.crl.enabled() {
            set.push("crl");
        }
        set
    }

    /// `client_auth` with the "unset" rule applied (`ca_file` set ⇒ full verification).
    pub fn client_auth_mode(&self) -> Result<ClientAuth, String> {
        Ok(ClientAuth::parse(&self.client_auth)?.effective(!self.ca_file.is_empty()))
    }

    /// `min_version`; `None` = TLS 1.2.
    pub fn min_tls_version(&self) -> Result<Option<TlsVersion>, String> {
        TlsVersion::parse(&self.min_version)
    }
}

impl Ocsp {
    pub fn enabled(&self) -> bool {
        self.depth > 0 || !self.responder_url.is_empty()
    }
}

impl Crl {
    pub fn enabled(&self) -> bool {
        *self != Self::default()
    }
}

/// What a slot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    MqttTcp,
    MqttWebSocket,
    Http,
    /// UDP, not TCP.
    Coap,
    Amqp,
    Amqp091,
}

/// How a slot is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    /// TLS (DTLS for CoAP); certificate and key required.
    Tls,
    /// TLS with a client CA (`ca_file`) required as well.
    MutualTls,
}

/// The fixed facts of one listener slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// Full key path, e.g. `server.tcp.v3`.
    pub key: &'static str,
    pub family: Family,
    pub security: Security,
    /// The MQTT protocol a slot is pinned to (`v3`/`v5`), or its default (`auto`) for the
    /// other MQTT slots; `None` for non-MQTT slots.
    pub protocol: Option<&'static str>,
    /// The `protocol` value is fixed on this slot.
    pub protocol_fixed: bool,
}

/// Number of listener slots under `server`.
pub const SLOT_COUNT: usize = 20;

macro_rules! slot_table {
    ($($key:literal => $group:ident . $slot:ident, $family:ident, $security:ident,
       $protocol:expr, $fixed:literal;)*) => {
        /// Every listener slot, in schema order.
        pub const SLOTS: [SlotInfo; SLOT_COUNT] = [$(slot_table!(@info $key, $family,
            $security, $protocol, $fixed)),*];

        impl Server {
            /// Every listener slot with its facts, in schema order.
            pub fn slots(&self) -> [(SlotInfo, &Listener); SLOT_COUNT] {
                [$((slot_table!(@info $key, $family, $security, $protocol, $fixed),
                    &self.$group.$slot)),*]
            }

            /// As [`Server::slots`], mutably.
            pub fn slots_mut(&mut self) -> [(SlotInfo, &mut Listener); SLOT_COUNT] {
                [$((slot_table!(@info $key, $family, $security, $protocol, $fixed),
                    &mut self.$group.$slot)),*]
            }
        }
    };
    (@info $key:literal, $family:ident, $security:ident, $protocol:expr, $fixed:literal) => {
        SlotInfo {
            key: $key,
            family: Family::$family,
            security: Security::$security,
            protocol: $protocol,
            protocol_fixed: $fixed,
        }
    };
}

slot_table! {
    "server.tcp.v3" => tcp.v3, MqttTcp, Plain, Some("v3"), true;
    "server.tcp.v5" => tcp.v5, MqttTcp, Plain, Some("v5"), true;
    "server.tcp.tls" => tcp.tls, MqttTcp, Tls, Some("auto"), false;
    "server.tcp.mtls" => tcp.mtls, MqttTcp, MutualTls, Some("auto"), false;
    "server.websocket.v3" => websocket.v3, MqttWebSocket, Plain, Some("v3"), true;
    "server.websocket.v5" => websocket.v5, MqttWebSocket, Plain, Some("v5"), true;
    "server.websocket.tls" => websocket.tls, MqttWebSocket, Tls, Some("auto"), false;
    "server.websocket.mtls" => websocket.mtls, MqttWebSocket, MutualTls, Some("auto"), false;
    "server.http.plain" => http.plain, Http, Plain, None, false;
    "server.http.tls" => http.tls, Http, Tls, None, false;
    "server.http.mtls" => http.mtls, Http, MutualTls, None, false;
    "server.coap.plain" => coap.plain, Coap, Plain, None, false;
    "server.coap.dtls" => coap.dtls, Coap, Tls, None, false;
    "server.coap.mdtls" => coap.mdtls, Coap, MutualTls, None, false;
    "server.amqp.plain" => amqp.plain, Amqp, Plain, None, false;
    "server.amqp.tls" => amqp.tls, Amqp, Tls, None, false;
    "server.amqp.mtls" => amqp.mtls, Amqp, MutualTls, None, false;
    "server.amqp091.plain" => amqp091.plain, Amqp091, Plain, None, false;
    "server.amqp091.tls" => amqp091.tls, Amqp091, Tls, None, false;
    "server.amqp091.mtls" => amqp091.mtls, Amqp091, MutualTls, None, false;
}

impl Server {
    /// The health listener is on: enabled and given an address.
    pub fn health_listening(&self) -> bool {
        self.health_enabled && !self.health_addr.is_empty()
    }
}

/// The `protocol` value a slot runs with, or why the written value is refused: `""` takes
/// the slot's value; `v3`/`v5`/`auto` in any case; a pinned slot keeps its value.
pub(super) fn slot_protocol(slot: &SlotInfo, written: &str) -> Result<&'static str, String> {
    let Some(own) = slot.protocol else {
        return Ok("");
    };
    let wanted = match written.trim().to_ascii_lowercase().as_str() {
        "" => return Ok(own),
        "v3" => "v3",
        "v5" => "v5",
        "auto" => "auto",
        _ => {
            return Err(format!(
                "unknown protocol \"{written}\" (expected v3, v5 or auto)"
            ));
        }
    };
    if slot.protocol_fixed && wanted != own {
        return Err(format!(
            "the {own} slot always speaks MQTT {own} (got \"{written}\"); use the other \
             plain slot or a tls/mtls slot (protocol auto) instead"
        ));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_table_matches_the_tree() {
        let mut config = Config::default();
        config.server.coap.mdtls.addr = ":5684".to_owned();
        config.server.tcp.v5.addr = ":1884".to_owned();
        let slots = config.server.slots();
        let on: Vec<&str> = slots
            .iter()
            .filter(|(_, l)| l.enabled())
            .map(|(s, _)| s.key)
            .collect();
        assert_eq!(on, ["server.tcp.v5", "server.coap.mdtls"]);
        // Every key in the table is a real path of the serialized tree.
        let tree = serde_yaml::to_value(&config).expect("serialize");
        for (slot, _) in slots {
            let mut node = &tree;
            for part in slot.key.split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("{} missing", slot.key));
            }
            assert!(node.get("addr").is_some(), "{}", slot.key);
        }
        for (_, l) in config.server.slots_mut() {
            l.addr.clear();
        }
        assert!(config.server.slots().iter().all(|(_, l)| !l.enabled()));
    }

    #[test]
    fn defaults_pin_mqtt_protocols() {
        let s = Server::default();
        assert_eq!(s.tcp.v3.protocol, "v3");
        assert_eq!(s.websocket.v5.protocol, "v5");
        assert_eq!(s.tcp.tls.protocol, "auto");
        assert_eq!(s.http.plain.protocol, "");
        assert!(
            s.slots()
                .iter()
                .all(|(_, l)| !l.enabled() && !l.has_tls_fields())
        );
    }

    #[test]
    fn protocol_rules() {
        let [v3, _, tls, ..] = SLOTS;
        assert_eq!(slot_protocol(&v3, ""), Ok("v3"));
        assert_eq!(slot_protocol(&v3, "V3"), Ok("v3"));
        assert!(slot_protocol(&v3, "v5").is_err_and(|e| e.contains("always speaks MQTT v3")));
        assert!(slot_protocol(&v3, "auto").is_err());
        assert_eq!(slot_protocol(&tls, ""), Ok("auto"));
        assert_eq!(slot_protocol(&tls, "V5"), Ok("v5"));
        assert!(slot_protocol(&tls, "mqtt5").is_err_and(|e| e.contains("unknown protocol")));
        assert_eq!(slot_protocol(&SLOTS[8], "anything"), Ok(""));
    }

    #[test]
    fn tls_field_detection() {
        let mut l = Listener::default();
        assert!(!l.has_tls_fields());
        l.crl.distribution_points = "http://crl.example/ca.crl".to_owned();
        l.client_auth = "require".to_owned();
        assert_eq!(l.tls_fields_set(), ["client_auth", "crl"]);
        l.ca_file = "ca.pem".to_owned();
        assert_eq!(l.client_auth_mode(), Ok(ClientAuth::RequireAndVerify));
    }
}
