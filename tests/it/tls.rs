//! MQTT over TLS and mutual TLS (`server.tcp.tls` / `server.tcp.mtls`): a test PKI made at
//! run time with rcgen (CA, server, client certificates: good, from another CA, expired),
//! written to a temporary directory; a real rustls client (ring) carrying our raw MQTT
//! packets. Covers every `client_auth` mode, `min_version`, certificate reload, the
//! handshake deadline, the certificate identity and `use_identity_as_username`, and
//! `protocol: auto` over TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::common::*;

// ---- the test PKI ------------------------------------------------------------------------

/// A certificate with its key, as PEM (for files) and DER (for the client).
pub(crate) struct Leaf {
    der: CertificateDer<'static>,
    key: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    pub(crate) fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
        )
    }

    pub(crate) fn sha256(&self) -> String {
        sha256_hex(&self.der)
    }
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(p, key).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf: the server's (SAN localhost, 127.0.0.1) or a client's (`cn`).
    fn leaf(&self, cn: &str, server: bool, serial: u16, expired: bool) -> Leaf {
        let sans = if server {
            vec!["localhost".to_owned()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(sans).unwrap();
        if server {
            p.subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        // Minimal DER: no leading zero byte.
        let bytes = serial.to_be_bytes();
        let minimal = if bytes[0] == 0 {
            &bytes[1..]
        } else {
            &bytes[..]
        };
        p.serial_number = Some(SerialNumber::from_slice(minimal));
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            key: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The CA, its server certificate and client certificates, in a fresh temporary directory.
pub(crate) struct Pki {
    dir: PathBuf,
    pub(crate) ca: Ca,
    server: Leaf,
    pub(crate) good: Leaf,
    other_ca: Leaf,
    expired: Leaf,
}

impl Pki {
    pub(crate) fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "fluxmq-edge-tls-{test}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Edge Test CA");
        let other = Ca::new("Some Other CA");
        let pki = Pki {
            server: ca.leaf("localhost", true, 1, false),
            good: ca.leaf("device-1", false, 0x1234, false),
            other_ca: other.leaf("device-1", false, 0x1234, false),
            expired: ca.leaf("device-old", false, 7, true),
            dir,
            ca,
        };
        pki.write("ca.pem", &pki.ca.pem());
        pki.write_server(&pki.server);
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn write(&self, name: &str, text: &str) {
        // Write then rename: a reload never reads a half-written file.
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }

    fn write_server(&self, leaf: &Leaf) {
        self.write("server.pem", &leaf.cert_pem);
        self.write("server.key", &leaf.key_pem);
    }

    /// The TLS keys of a listener slot (YAML flow mapping entries).
    pub(crate) fn slot(&self, extra: &str) -> String {
        format!(
            "addr: \"127.0.0.1:0\", cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\"{extra}",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- the client --------------------------------------------------------------------------

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

pub(crate) fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A rustls client stream as a [`Transport`] for [`Raw`].
pub(crate) struct Tls(StreamOwned<ClientConnection, TcpStream>);

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Transport for Tls {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.0.sock.set_read_timeout(d)
    }

    fn shutdown(&self) {
        let _ = self.0.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Open TLS to `addr` and finish the client side of the handshake. Returns the stream and
/// the server's certificate, or the handshake error. (In TLS 1.3 the server checks a client
/// certificate after the client's side is done: a refusal shows at the first read.)
pub(crate) fn tls_open(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<(Tls, CertificateDer<'static>), String> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    let served = s.conn.peer_certificates().unwrap()[0].clone().into_owned();
    Ok((Tls(s), served))
}

/// MQTT CONNECT over TLS: the client and its CONNACK, or why the broker refused.
pub(crate) fn mqtt_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    c: &Connect,
) -> Result<Raw, String> {
    mqtt_connect_bytes(addr, config, c.v5, &c.bytes())
}

fn mqtt_connect_bytes(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    v5: bool,
    connect: &[u8],
) -> Result<Raw, String> {
    let (tls, _) = tls_open(addr, config)?;
    let mut r = Raw::over(Box::new(tls));
    r.v5 = v5;
    r.try_send(connect).map_err(|e| e.to_string())?;
    match r.recv(T) {
        Recv::Packet(p) => {
            let ack = p.connack(v5);
            if ack.code == 0 {
                Ok(r)
            } else {
                Err(format!("CONNACK code {}", ack.code))
            }
        }
        other => Err(format!("no CONNACK: {other:?}")),
    }
}

/// A v3.1.1 CONNECT carrying a username.
fn connect_v3_with_username(client_id: &str, username: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, "MQTT");
    b.push(4);
    b.push(0x80 | 0x02); // username, clean session
    b.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut b, client_id);
    put_str(&mut b, username);
    frame(0x10, &b)
}

// ---- the broker --------------------------------------------------------------------------

fn start(tls: &str, mtls: &str) -> fluxmq_edge::server::Running {
    let yaml = format!(
        "server:\n  health_addr: \"127.0.0.1:0\"\n  tcp:\n    v3: {{ addr: \"\" }}\n    v5: {{ addr: \"\" }}\n    tls: {{ {tls} }}\n    mtls: {{ {mtls} }}\n",
    );
    let cfg = fluxmq_edge::config::load_str(&yaml, "<tls test>").expect("test config is valid");
    cfg.check_supported("<tls test>")
        .expect("TLS slots are built");
    fluxmq_edge::server::spawn(cfg).expect("broker starts")
}

fn metric(running: &fluxmq_edge::server::Running, series: &str) -> u64 {
    let (status, body) = http_get(running.addr("server.health_addr"), "/metrics");
    assert_eq!(status, 200);
    parse_metrics(&body)
        .into_iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no series {series}"))
        .1
}

fn wait_metric(running: &fluxmq_edge::server::Running, series: &str, at_least: u64) {
    wait_for(series, T, || {
        (metric(running, series) >= at_least).then_some(())
    });
}

pub(crate) const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// ---- tests -------------------------------------------------------------------------------

/// TLS and mTLS slots with the default `protocol: auto`: a 3.1.1 subscriber on one, an MQTT 5
/// publisher on the other (with a client certificate); the message crosses.
#[test]
fn publish_subscribe_over_tls_and_mtls_with_protocol_auto() {
    let pki = Pki::new("pubsub");
    let running = start(&pki.slot(", client_auth: none"), &pki.slot(""));
    let plain_tls = client_config(&pki.ca.der(), None, BOTH);
    let mutual = client_config(&pki.ca.der(), Some(pki.good.client_auth()), BOTH);

    let mut sub = mqtt_connect(
        running.addr("server.tcp.tls"),
        plain_tls.clone(),
        &Connect::v3("sub-v3"),
    )
    .expect("v3 over TLS");
    sub.sub("tls/+", 1);
    let mut sub5 = mqtt_connect(
        running.addr("server.tcp.tls"),
        plain_tls,
        &Connect::v5("sub-v5"),
    )
    .expect("v5 over TLS");
    sub5.sub("tls/#", 0);
    let mut publ = mqtt_connect(
        running.addr("server.tcp.mtls"),
        mutual.clone(),
        &Connect::v5("pub"),
    )
    .expect("v5 over mTLS");
    publ.send(&Pub::new("tls/a", b"over tls").qos(1, 1).bytes(true));
    assert_eq!(publ.expect(kind::PUBACK).ack(), (1, 0));
    let m = sub.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("tls/a", &b"over tls"[..])
    );
    assert_eq!(sub5.recv_publish().payload, b"over tls");
    // And back: v3 over mTLS.
    let mut pub3 = mqtt_connect(
        running.addr("server.tcp.mtls"),
        mutual,
        &Connect::v3("pub3"),
    )
    .expect("v3 over mTLS");
    pub3.send(&Pub::new("tls/b", b"3.1.1").bytes(false));
    assert_eq!(sub.recv_publish().payload, b"3.1.1");
    assert_eq!(metric(&running, &closed_series("tls_handshake_failed")), 0);
}

/// A tls slot pinned to `protocol: v5` refuses a 3.1.1 CONNECT (return code 1).
#[test]
fn protocol_pinned_on_a_tls_slot() {
    let pki = Pki::new("pinned");
    let running = start(&pki.slot(", client_auth: none, protocol: v5"), "addr: \"\"");
    let cfg = client_config(&pki.ca.der(), None, BOTH);
    let addr = running.addr("server.tcp.tls");
    assert!(mqtt_connect(addr, cfg.clone(), &Connect::v5("v5")).is_ok());
    assert_eq!(
        mqtt_connect(addr, cfg, &Connect::v3("v3")).err().as_deref(),
        Some("CONNACK code 1")
    );
}

/// Every `client_auth` mode against no certificate, a good one, one from another CA and an
/// expired one (Go tls.ClientAuthType semantics).
#[test]
fn client_auth_modes() {
    let pki = Pki::new("modes");
    // (mode, accepts: [none, good, other CA, expired])
    let table: &[(&str, [bool; 4])] = &[
        ("none", [true, true, true, true]),
        ("request", [true, true, true, true]),
        ("require_any", [false, true, true, true]),
        ("verify_if_given", [true, true, false, false]),
        ("require", [false, true, false, false]),
    ];
    let clients: [(&str, Option<&Leaf>); 4] = [
        ("no certificate", None),
        ("good certificate", Some(&pki.good)),
        ("certificate from another CA", Some(&pki.other_ca)),
        ("expired certificate", Some(&pki.expired)),
    ];
    for &(mode, accepts) in table {
        let running = start(&pki.slot(&format!(", client_auth: {mode}")), "addr: \"\"");
        let addr = running.addr("server.tcp.tls");
        let mut refused = 0;
        for (i, (what, leaf)) in clients.iter().enumerate() {
            let cfg = client_config(&pki.ca.der(), leaf.map(Leaf::client_auth), BOTH);
            let got = mqtt_connect(addr, cfg, &Connect::v5(&format!("c{i}")));
            assert_eq!(
                got.is_ok(),
                accepts[i],
                "client_auth {mode}, {what}: {:?}",
                got.err()
            );
            refused += u64::from(!accepts[i]);
        }
        wait_metric(&running, &closed_series("tls_handshake_failed"), refused);
        assert_eq!(
            metric(&running, &closed_series("tls_handshake_failed")),
            refused,
            "client_auth {mode}"
        );
        running.stop().unwrap();
    }
}

/// `min_version: tls1.3` refuses a client that speaks only TLS 1.2; the TLS 1.2 listener
/// default serves it.
#[test]
fn min_version_tls13_refuses_a_tls12_only_client() {
    let pki = Pki::new("minver");
    let running = start(
        &pki.slot(", client_auth: none, min_version: tls1.3"),
        &pki.slot(", client_auth: none"),
    );
    let tls12 = client_config(&pki.ca.der(), None, &[&rustls::version::TLS12]);
    let tls13 = client_config(&pki.ca.der(), None, &[&rustls::version::TLS13]);
    let strict = running.addr("server.tcp.tls");
    let e = tls_open(strict, tls12.clone())
        .err()
        .expect("TLS 1.2 refused");
    assert!(e.contains("ProtocolVersion") || e.contains("alert"), "{e}");
    assert!(mqtt_connect(strict, tls13, &Connect::v5("t13")).is_ok());
    assert!(mqtt_connect(running.addr("server.tcp.mtls"), tls12, &Connect::v3("t12")).is_ok());
    wait_metric(&running, &closed_series("tls_handshake_failed"), 1);
}

/// Reload (as on SIGHUP): new handshakes get the new certificate while an established
/// connection keeps working; a reload with a key that does not match keeps the old pair.
#[test]
fn reload_switches_the_served_certificate() {
    let pki = Pki::new("reload");
    let yaml = format!(
        "server:\n  health_addr: \"127.0.0.1:0\"\n  tcp:\n    v3: {{ addr: \"\" }}\n    v5: {{ addr: \"\" }}\n    tls: {{ {} }}\n",
        pki.slot(", client_auth: none")
    );
    let cfg_path = pki.dir.join("edge.yaml");
    std::fs::write(&cfg_path, yaml).unwrap();
    let running = fluxmq_edge::server::spawn_from(&[cfg_path]).expect("broker starts");
    let addr = running.addr("server.tcp.tls");
    let cfg = client_config(&pki.ca.der(), None, BOTH);
    let served = |cfg: &Arc<ClientConfig>| sha256_hex(&tls_open(addr, cfg.clone()).unwrap().1);
    assert_eq!(served(&cfg), pki.server.sha256());

    let mut old = mqtt_connect(addr, cfg.clone(), &Connect::v5("old")).unwrap();
    old.sub("keep/#", 1);

    let renewed = pki.ca.leaf("localhost", true, 2, false);
    pki.write_server(&renewed);
    running.reload();
    wait_for("tls_reloads_total 1", T, || {
        (metric(&running, "fluxmq_edge_tls_reloads_total") >= 1).then_some(())
    });
    assert_eq!(served(&cfg), renewed.sha256());
    assert_ne!(renewed.sha256(), pki.server.sha256());

    // The connection made before the reload still works.
    let mut fresh = mqtt_connect(addr, cfg.clone(), &Connect::v5("fresh")).unwrap();
    fresh.send(&Pub::new("keep/1", b"after reload").bytes(true));
    assert_eq!(old.recv_publish_ack().payload, b"after reload");

    // A key that does not go with the certificate: refused, the renewed pair stays.
    let stray = pki.ca.leaf("localhost", true, 3, false);
    pki.write("server.key", &stray.key_pem);
    running.reload();
    wait_for("tls_reload_failures_total 1", T, || {
        (metric(&running, "fluxmq_edge_tls_reload_failures_total") >= 1).then_some(())
    });
    // Garbage PEM likewise.
    pki.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    running.reload();
    wait_for("tls_reload_failures_total 2", T, || {
        (metric(&running, "fluxmq_edge_tls_reload_failures_total") >= 2).then_some(())
    });
    assert_eq!(metric(&running, "fluxmq_edge_tls_reloads_total"), 1);
    assert_eq!(served(&cfg), renewed.sha256());
    assert!(mqtt_connect(addr, cfg, &Connect::v3("still")).is_ok());
}

/// A peer that opens TCP and never sends a ClientHello is closed when `read_timeout`
/// expires, and counted; while it waits it holds a `max_connections` place.
#[test]
fn silent_peer_is_closed_after_read_timeout() {
    let pki = Pki::new("silent");
    let running = start(
        &pki.slot(", client_auth: none, read_timeout: 1s, max_connections: 1"),
        "addr: \"\"",
    );
    let addr = running.addr("server.tcp.tls");
    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    wait_for("the handshake holds the listener's only place", T, || {
        // A second connection is refused at once while the first is handshaking.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0) | Err(_)).then_some(())
    });
    assert!(metric(&running, &closed_series("listener_full")) >= 1);
    silent.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 16];
    let n = silent.read(&mut b);
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed before read_timeout: {:?}",
        opened.elapsed()
    );
    wait_metric(&running, &closed_series("tls_handshake_timeout"), 1);
    // The place is free again.
    let cfg = client_config(&pki.ca.der(), None, BOTH);
    assert!(mqtt_connect(addr, cfg, &Connect::v5("after")).is_ok());
}

/// The handshake runs in the connection's own task: a peer that never sends its
/// ClientHello delays no other client (with a 30 s read_timeout, a blocked accept loop would
/// make the second client miss the 5 s wait).
#[test]
fn a_silent_peer_does_not_delay_other_handshakes() {
    let pki = Pki::new("nodelay");
    let running = start(
        &pki.slot(", client_auth: none, read_timeout: 30s"),
        "addr: \"\"",
    );
    let addr = running.addr("server.tcp.tls");
    let _silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let cfg = client_config(&pki.ca.der(), None, BOTH);
    let mut a = mqtt_connect(addr, cfg.clone(), &Connect::v5("a")).expect("served at once");
    let mut b = mqtt_connect(addr, cfg, &Connect::v3("b")).expect("served at once");
    b.sub("nodelay/#", 0);
    a.send(&Pub::new("nodelay/x", b"1").bytes(true));
    assert_eq!(b.recv_publish().payload, b"1");
    assert_eq!(metric(&running, &closed_series("tls_handshake_timeout")), 0);
}

// ---- identity: seen in the connection's log line -------------------------------------------

/// Collects the broker's connection log lines (the `conn` module at debug level).
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("fluxmq_edge::protocol::mqtt::conn")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn connected_line(client_id: &str) -> String {
    let needle = format!("client {client_id:?} connected");
    wait_for(&needle, T, || {
        CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with(&needle))
            .cloned()
    })
}

/// A verified client certificate is the connection's identity (fingerprint, serial, CN in
/// the connection log line); with `use_identity_as_username` its CN is the username of a
/// CONNECT without one, and a CONNECT's own username wins. Unverified modes attach none.
#[test]
fn certificate_identity_and_use_identity_as_username() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    let pki = Pki::new("identity");
    let running = start(
        &pki.slot(", client_auth: require_any"),
        &pki.slot(", use_identity_as_username: true"),
    );
    let mutual = client_config(&pki.ca.der(), Some(pki.good.client_auth()), BOTH);
    let mtls = running.addr("server.tcp.mtls");
    let _a = mqtt_connect(mtls, mutual.clone(), &Connect::v5("id-cn")).unwrap();
    let line = connected_line("id-cn");
    assert!(line.contains("username \"device-1\""), "{line}");
    assert!(
        line.contains(&format!(
            "cert CN \"device-1\" serial 1234 sha256 {}",
            pki.good.sha256()
        )),
        "{line}"
    );
    let _b = mqtt_connect_bytes(
        mtls,
        mutual.clone(),
        false,
        &connect_v3_with_username("id-own", "alice"),
    )
    .unwrap();
    let line = connected_line("id-own");
    assert!(line.contains("username \"alice\""), "{line}");
    assert!(line.contains(&pki.good.sha256()), "{line}");
    // require_any accepts the certificate without verifying it: no identity.
    let _c = mqtt_connect(
        running.addr("server.tcp.tls"),
        mutual,
        &Connect::v5("id-none"),
    )
    .unwrap();
    let line = connected_line("id-none");
    assert!(
        line.contains("username \"\"") && !line.contains("cert"),
        "{line}"
    );
}

/// The connection rate limit (`ratelimit.connection`) applies before the TLS handshake: a
/// connection over its IP's limit is closed before the server sends anything, and never
/// reaches the TLS layer.
#[test]
fn connection_rate_limit_closes_before_the_handshake() {
    let pki = Pki::new("ratelimit");
    let yaml = format!(
        "server:\n  health_addr: \"127.0.0.1:0\"\n  tcp:\n    v3: {{ addr: \"\" }}\n    v5: {{ addr: \"\" }}\n    tls: {{ {} }}\n\
         ratelimit: {{ enabled: true, connection: {{ rate: 0.01, burst: 1 }} }}\n",
        pki.slot(", client_auth: none")
    );
    let cfg = fluxmq_edge::config::load_str(&yaml, "<tls test>").expect("test config is valid");
    let running = fluxmq_edge::server::spawn(cfg).expect("broker starts");
    let addr = running.addr("server.tcp.tls");
    let client = client_config(&pki.ca.der(), None, BOTH);
    assert!(mqtt_connect(addr, client.clone(), &Connect::v5("first")).is_ok());
    // Over the limit: the ClientHello gets no answer, the socket is closed.
    assert!(tls_open(addr, client).is_err());
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 16];
    let n = raw.read(&mut b);
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    assert_eq!(
        metric(
            &running,
            "fluxmq_edge_ratelimit_refused_total{limit=\"connection\",protocol=\"mqtt\"}"
        ),
        2
    );
    assert_eq!(metric(&running, &closed_series("tls_handshake_failed")), 0);
    assert_eq!(metric(&running, &closed_series("tls_handshake_timeout")), 0);
}
