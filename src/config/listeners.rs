//! Rules for `server.*`: listener addresses, duplicate binds, the TLS block per slot.
//!
//! Owns: [`Bind`] (the `host:port` / `:port` form), what each kind of slot may carry
//! (spec §1.3, §1.4, §1.11), WebSocket path and origins, and the health/admin addresses.
//! Does not own: reading certificate files (the listeners do that when they start), or
//! whether a slot is built yet (`support.rs`).

use super::schema::{Family, Listener, Security, Server, SlotInfo, slot_protocol};
use super::tls::CipherSuite;
use super::validate::{Problem, fail};

/// A listen address: `host:port` or `:port` (all interfaces). IPv6 hosts in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Empty for all interfaces; IPv6 literals keep their brackets.
    pub host: String,
    pub port: u16,
}

impl Bind {
    pub fn parse(addr: &str) -> Result<Self, String> {
        let form = "expected host:port or :port, e.g. \":1883\" or \"127.0.0.1:1883\"";
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!("\"{addr}\" has no port ({form})"));
        };
        if host == "*" {
            return Err(format!(
                "\"{addr}\": `*` is not a host; write \":{port}\" for all interfaces"
            ));
        }
        if let Some(inner) = host.strip_prefix('[') {
            let ok = inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
            if !ok {
                return Err(format!("\"{addr}\": bad IPv6 host ({form}, or [::1]:1883)"));
            }
        } else if host.contains(':') {
            return Err(format!(
                "\"{addr}\": IPv6 hosts need brackets, e.g. [::1]:1883"
            ));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("\"{addr}\": bad host ({form})"));
        }
        // Port 0 asks the OS for a free port (tests, ad-hoc runs); the bound port is logged.
        match port.parse::<u16>() {
            Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(Self {
                host: host.to_owned(),
                port: p,
            }),
            _ => Err(format!(
                "\"{addr}\": port must be a number from 0 to 65535 ({form})"
            )),
        }
    }

    /// Two binds would collide: same port and the same host, or a wildcard covering the
    /// other (`:port` and `[::]` cover both families; `0.0.0.0` covers IPv4 and names).
    fn collides(&self, other: &Self) -> bool {
        if self.port != other.port || self.port == 0 {
            return false;
        }
        let is_v6 = |h: &str| h.starts_with('[');
        let covers = |a: &str, b: &str| match a {
            "" | "[::]" => true,
            "0.0.0.0" => !is_v6(b),
            _ => false,
        };
        self.host == other.host
            || covers(&self.host, &other.host)
            || covers(&other.host, &self.host)
    }
}

/// A dial target: `host:port` with a host.
pub(super) fn check_dial(addr: &str) -> Result<(), String> {
    let bind = Bind::parse(addr)?;
    if bind.host.is_empty() {
        return Err(format!("\"{addr}\" needs a host (host:port)"));
    }
    Ok(())
}

pub(super) fn check_http_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.split(['/', '?']).next().unwrap_or_default().is_empty() => Ok(()),
        _ => Err(format!(
            "\"{url}\" must be an http:// or https:// URL with a host"
        )),
    }
}

pub(super) fn check_server(s: &Server) -> Result<(), Problem> {
    for (slot, listener) in s.slots() {
        check_listener(&slot, listener)?;
    }
    if !s.slots().iter().any(|(_, l)| l.enabled()) {
        return fail(
            "server",
            "no messaging listener configured: set server.tcp.v3.addr (e.g. \":1883\") or \
             another listener's addr",
        );
    }
    if s.health_listening() {
        Bind::parse(&s.health_addr).or_else(|m| fail("server.health_addr", m))?;
    }
    if !s.admin_api_addr.is_empty() {
        Bind::parse(&s.admin_api_addr).or_else(|m| fail("server.admin_api_addr", m))?;
    }
    check_binds(s)?;
    if !(0.0..=1.0).contains(&s.otel_trace_sample_rate) {
        return fail("server.otel_trace_sample_rate", "must be between 0 and 1");
    }
    Ok(())
}

fn check_listener(slot: &SlotInfo, l: &Listener) -> Result<(), Problem> {
    let at = |field: &str| format!("{}.{field}", slot.key);
    if l.enabled() {
        Bind::parse(&l.addr).or_else(|m| fail(at("addr"), m))?;
    }
    slot_protocol(slot, &l.protocol).or_else(|m| fail(at("protocol"), m))?;
    if slot.security == Security::Plain {
        if let Some(field) = l.tls_fields_set().first() {
            return fail(
                at(field),
                format!(
                    "TLS settings are not allowed on the plain slot {}; configure a tls or mtls \
                     slot instead",
                    slot.key
                ),
            );
        }
        if l.use_identity_as_username {
            return fail(
                at("use_identity_as_username"),
                "needs client certificates: use it on an mtls slot",
            );
        }
    } else {
        let mode = l
            .client_auth_mode()
            .or_else(|m| fail(at("client_auth"), m))?;
        l.min_tls_version()
            .or_else(|m| fail(at("min_version"), m))?;
        CipherSuite::parse_list(&l.cipher_suites).or_else(|m| fail(at("cipher_suites"), m))?;
        if l.enabled() {
            let required = [
                ("cert_file", &l.cert_file, "the server certificate (PEM)"),
                ("key_file", &l.key_file, "the server private key (PEM)"),
            ];
            for (field, value, what) in required {
                if value.is_empty() {
                    return fail(
                        at(field),
                        format!("required when {} is set: {what}", at("addr")),
                    );
                }
            }
            if slot.security == Security::MutualTls && l.ca_file.is_empty() {
                return fail(
                    at("ca_file"),
                    format!(
                        "required on the mutual-TLS slot {}: the CA that verifies client \
                         certificates",
                        slot.key
                    ),
                );
            }
        }
        if mode.verifies() && l.ca_file.is_empty() {
            return fail(
                at("ca_file"),
                format!(
                    "required for client_auth {}: the CA that verifies client certificates",
                    l.client_auth.trim()
                ),
            );
        }
        if l.use_identity_as_username && !mode.verifies() {
            return fail(
                at("use_identity_as_username"),
                "needs verified client certificates: set ca_file and leave client_auth unset \
                 or set it to require",
            );
        }
        if !l.ocsp.responder_url.is_empty() {
            check_http_url(&l.ocsp.responder_url).or_else(|m| fail(at("ocsp.responder_url"), m))?;
        }
        if !l.crl.distribution_points.is_empty() {
            check_http_url(&l.crl.distribution_points)
                .or_else(|m| fail(at("crl.distribution_points"), m))?;
        }
    }
    if slot.family == Family::MqttWebSocket && l.enabled() && !l.path.starts_with('/') {
        return fail(at("path"), format!("\"{}\" must start with /", l.path));
    }
    for origin in &l.allowed_origins {
        let ok = match origin.strip_prefix("*.") {
            Some(domain) => !domain.is_empty() && !domain.contains('/'),
            None => origin
                .split_once("://")
                .is_some_and(|(s, h)| !s.is_empty() && !h.is_empty()),
        };
        if !ok {
            return fail(
                at("allowed_origins"),
                format!(
                    "invalid origin \"{origin}\" (expected scheme://host or *.domain; an empty \
                     list allows every origin)"
                ),
            );
        }
    }
    Ok(())
}

/// Two listeners may not bind the same address: TCP listeners (with health and admin) in
/// one set, CoAP (UDP) in another.
fn check_binds(s: &Server) -> Result<(), Problem> {
    let mut tcp: Vec<(String, Bind)> = Vec::new();
    let mut udp: Vec<(String, Bind)> = Vec::new();
    for (slot, l) in s.slots() {
        if let (true, Ok(bind)) = (l.enabled(), Bind::parse(&l.addr)) {
            let set = if slot.family == Family::Coap {
                &mut udp
            } else {
                &mut tcp
            };
            set.push((format!("{}.addr", slot.key), bind));
        }
    }
    let extra = [
        (
            "server.health_addr",
            s.health_listening().then_some(&s.health_addr),
        ),
        (
            "server.admin_api_addr",
            Some(&s.admin_api_addr).filter(|a| !a.is_empty()),
        ),
    ];
    for (key, addr) in extra {
        if let Some(Ok(bind)) = addr.map(|a| Bind::parse(a)) {
            tcp.push((key.to_owned(), bind));
        }
    }
    for set in [&tcp, &udp] {
        for (i, (key, bind)) in set.iter().enumerate() {
            if let Some((first, _)) = set[..i].iter().find(|(_, b)| b.collides(bind)) {
                return fail(
                    key.as_str(),
                    format!("same address as {first}: each listener needs its own port"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::validate::expect_cases;
    use super::*;

    /// `key | message fragment | YAML overlaid on a config with MQTT v3 on :1883`.
    const ERRORS: &str = r#"
server.tcp.v3.addr | has no port | server: { tcp: { v3: { addr: "1883" } } }
server.tcp.v3.addr | 0 to 65535 | server: { tcp: { v3: { addr: ":70000" } } }
server.tcp.v3.addr | not a host | server: { tcp: { v3: { addr: "*:1883" } } }
server.tcp.v3.addr | brackets | server: { tcp: { v3: { addr: "::1:1883" } } }
server | no messaging listener | server: { tcp: { v3: { addr: "" } } }
server.tcp.v5.protocol | always speaks MQTT v5 | server: { tcp: { v5: { protocol: v3 } } }
server.tcp.tls.protocol | unknown protocol | server: { tcp: { tls: { protocol: mqtt } } }
server.tcp.v3.cert_file | not allowed on the plain slot server.tcp.v3 | server: { tcp: { v3: { cert_file: x } } }
server.http.plain.min_version | plain slot | server: { http: { plain: { min_version: "1.2" } } }
server.coap.plain.ocsp | plain slot | server: { coap: { plain: { ocsp: { depth: 1 } } } }
server.tcp.v5.use_identity_as_username | mtls slot | server: { tcp: { v5: { use_identity_as_username: true } } }
server.tcp.tls.cert_file | required when server.tcp.tls.addr is set | server: { tcp: { tls: { addr: ":8883" } } }
server.tcp.tls.key_file | required | server: { tcp: { tls: { addr: ":8883", cert_file: c } } }
server.tcp.mtls.ca_file | mutual-TLS slot | server: { tcp: { mtls: { addr: ":8884", cert_file: c, key_file: k } } }
server.coap.mdtls.ca_file | required | server: { coap: { mdtls: { addr: ":5684", cert_file: c, key_file: k } } }
server.tcp.tls.client_auth | "sometimes" | server: { tcp: { tls: { client_auth: sometimes } } }
server.tcp.tls.min_version | requires TLS 1.2 | server: { tcp: { tls: { min_version: tls1.1 } } }
server.tcp.tls.cipher_suites | not configurable | server: { tcp: { tls: { cipher_suites: [TLS_AES_128_GCM_SHA256] } } }
server.tcp.tls.cipher_suites | TLS_RSA_WITH_RC4_128_SHA | server: { tcp: { tls: { cipher_suites: [TLS_RSA_WITH_RC4_128_SHA] } } }
server.tcp.tls.ca_file | required for client_auth require | server: { tcp: { tls: { client_auth: require } } }
server.tcp.tls.ca_file | required for client_auth verify_if_given | server: { tcp: { tls: { client_auth: verify_if_given } } }
server.tcp.tls.use_identity_as_username | verified client | server: { tcp: { tls: { use_identity_as_username: true } } }
server.tcp.mtls.use_identity_as_username | verified | server: { tcp: { mtls: { ca_file: ca, client_auth: require_any, use_identity_as_username: true } } }
server.tcp.tls.ocsp.responder_url | http:// | server: { tcp: { tls: { ocsp: { responder_url: ocsp.example } } } }
server.tcp.tls.crl.distribution_points | http:// | server: { tcp: { tls: { crl: { distribution_points: "ftp://x/c.crl" } } } }
server.websocket.v3.path | must start with / | server: { websocket: { v3: { addr: ":8083", path: mqtt } } }
server.websocket.v3.allowed_origins | invalid origin "*" | server: { websocket: { v3: { allowed_origins: ["*"] } } }
server.tcp.v5.addr | same address as server.tcp.v3.addr | server: { tcp: { v5: { addr: "0.0.0.0:1883" } } }
server.health_addr | same address as server.tcp.v3.addr | server: { health_addr: "127.0.0.1:1883" }
server.health_addr | same address as server.amqp.plain.addr | server: { amqp: { plain: { addr: ":8081" } } }
server.coap.dtls.addr | same address as server.coap.plain.addr | server: { coap: { plain: { addr: ":5683" }, dtls: { addr: ":5683", cert_file: c, key_file: k } } }
server.admin_api_addr | has no port | server: { admin_api_addr: localhost }
server.health_addr | 0 to 65535 | server: { health_addr: ":http" }
server.otel_trace_sample_rate | between 0 and 1 | server: { otel_trace_sample_rate: 1.5 }
server.otel_trace_sample_rate | between 0 and 1 | server: { otel_trace_sample_rate: .nan }
"#;

    /// Overlays that must stay valid.
    const VALID: &str = r#"
server: { tcp: { tls: { client_auth: "", min_version: "" } } }
server: { tcp: { v5: { addr: "[::1]:1884", protocol: V5 } } }
server: { tcp: { tls: { addr: ":8883", cert_file: c, key_file: k, client_auth: Verify-If-Given, ca_file: ca, use_identity_as_username: true, min_version: TLS1.3, cipher_suites: [" ", TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305] } } }
server: { tcp: { mtls: { addr: ":8884", cert_file: c, key_file: k, ca_file: ca, use_identity_as_username: true } } }
server: { websocket: { tls: { addr: "127.0.0.1:8443", cert_file: c, key_file: k, allowed_origins: ["https://a.example", "*.b.example"] } } }
server: { coap: { plain: { addr: ":1883" } } }
server: { health_addr: "[::1]:8081" }
server: { health_addr: "" }
server: { health_enabled: false, health_addr: ":1883" }
server: { amqp091: { plain: { addr: "10.0.0.1:5682" } }, amqp: { plain: { addr: "10.0.0.2:5682" } } }
"#;

    #[test]
    fn server_rules_name_key_and_file() {
        expect_cases(ERRORS, VALID);
    }

    #[test]
    fn bind_forms_and_collisions() {
        let b = |s: &str| Bind::parse(s).expect(s);
        assert_eq!(
            b("[::1]:80"),
            Bind {
                host: "[::1]".into(),
                port: 80
            }
        );
        assert_eq!(
            b(":1883"),
            Bind {
                host: String::new(),
                port: 1883
            }
        );
        for bad in ["host:+80", "[zz]:80", "a b:80", "", ":", "host:"] {
            assert!(Bind::parse(bad).is_err(), "{bad}");
        }
        assert!(b(":1883").collides(&b("127.0.0.1:1883")));
        assert!(b("0.0.0.0:1883").collides(&b("localhost:1883")));
        assert!(!b("0.0.0.0:1883").collides(&b("[::1]:1883")));
        assert!(b("[::]:1883").collides(&b("[::1]:1883")));
        assert!(!b("127.0.0.1:1883").collides(&b("127.0.0.2:1883")));
        assert!(!b(":1883").collides(&b(":1884")));
        assert!(check_dial(":7948").is_err() && check_dial("c1:7948").is_ok());
        assert!(check_http_url("HTTPS://auth:7016/x").is_ok());
        assert!(check_http_url("https:///x").is_err());
    }
}
