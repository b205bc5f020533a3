//! The one TLS layer of every TCP listener kind (MQTT now; WebSocket, HTTP and AMQP wrap the
//! same [`Acceptor`]): builds a rustls `ServerConfig` (ring provider) from a listener slot's
//! TLS block, runs the server handshake within the slot's `read_timeout`, extracts the
//! verified client certificate's identity, and swaps in re-read certificates on reload.
//!
//! `client_auth` follows Go's `tls.ClientAuthType`, as FluxMQ does; each mode maps to one
//! rustls client-certificate verifier:
//!
//! | `client_auth`      | Go mode                      | rustls verifier                                         |
//! |--------------------|------------------------------|---------------------------------------------------------|
//! | `none`             | `NoClientCert`               | none (`with_no_client_auth`): no certificate asked for   |
//! | `request`          | `RequestClientCert`          | [`AnyCert`] optional: asked, any certificate accepted unverified |
//! | `require_any`      | `RequireAnyClientCert`       | [`AnyCert`] mandatory: required, accepted unverified     |
//! | `verify_if_given`  | `VerifyClientCertIfGiven`    | `WebPkiClientVerifier` + `allow_unauthenticated()`       |
//! | `require`          | `RequireAndVerifyClientCert` | `WebPkiClientVerifier` (mandatory)                       |
//! | unset              | `require` if `ca_file` is set, else `none`                            ||
//!
//! [`AnyCert`] still checks the handshake signature (the client proves it holds the key of
//! the certificate it sent), like Go; it does not check the chain, dates or usage. Only a
//! certificate verified against `ca_file` becomes the connection's identity
//! ([`CertIdentity`]): the unverified modes attach none.
//!
//! Owns: certificate and key loading (PEM, through `rustls-pki-types`), the verifiers, the
//! handshake deadline and its metrics (`tls_handshake_timeout`, `tls_handshake_failed`),
//! and reload (`tls_reloads_total`, `tls_reload_failures_total`). Does not own: which slots
//! may carry TLS keys and their syntax (`config::listeners`), nor what the protocol does
//! with the stream and the identity.

mod identity;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, future};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use smol::Timer;

pub use futures_rustls::server::TlsStream;
pub use identity::identity_from_der;

use super::Shared;
use crate::auth::CertIdentity;
use crate::clock;
use crate::config::tls::{CipherSuite, ClientAuth, TlsVersion};
use crate::config::{Config, Listener};
use crate::metrics::{CloseReason, Counter, Metrics};

/// Most TLS output (ciphertext) a connection queues in rustls when its peer does not read:
/// one full record and its overhead. Plaintext waits in the driver's output buffer instead
/// (capped by its high-water mark), so this adds one record, not a second copy of it.
pub const SEND_BUFFER_LIMIT: usize = 16 * 1024 + 256;

/// The PEM files of a slot, read from disk (off the executor thread).
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

/// Read `cert_file`, `key_file` and (when set) `ca_file` of slot `key`; errors name the
/// key and the file.
fn read_files(key: &str, l: &Listener) -> Result<Files, String> {
    let read = |field: &str, path: &str| {
        std::fs::read(path).map_err(|e| format!("{key}.{field}: cannot read {path}: {e}"))
    };
    Ok(Files {
        cert: read("cert_file", &l.cert_file)?,
        key: read("key_file", &l.key_file)?,
        ca: if l.ca_file.is_empty() {
            None
        } else {
            Some(read("ca_file", &l.ca_file)?)
        },
    })
}

/// The rustls provider: ring, with the TLS 1.2 suites narrowed to `cipher_suites` when the
/// slot lists some (TLS 1.3 suites are always on).
fn provider(l: &Listener) -> Result<Arc<CryptoProvider>, String> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    let wanted = CipherSuite::parse_list(&l.cipher_suites)?;
    if !wanted.is_empty() {
        let tls12 = |s: CipherSuite| match s {
            CipherSuite::EcdheEcdsaAes128Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheEcdsaAes256Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheEcdsaChacha20 => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            CipherSuite::EcdheRsaAes128Gcm => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheRsaAes256Gcm => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheRsaChacha20 => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        };
        p.cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13);
        for s in wanted {
            let suite = tls12(s);
            if !p.cipher_suites.contains(&suite) {
                p.cipher_suites.push(suite);
            }
        }
    }
    Ok(Arc::new(p))
}

/// Build the `ServerConfig` of slot `key` from its TLS block and the PEM it names.
/// Errors name the key (and the file where one is at fault).
fn server_config(key: &str, l: &Listener, files: &Files) -> Result<ServerConfig, String> {
    let at = |field: &str| format!("{key}.{field}");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM in {}: {e}", at("cert_file"), l.cert_file))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE in {}",
            at("cert_file"),
            l.cert_file
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        format!(
            "{}: no usable private key in {}: {e}",
            at("key_file"),
            l.key_file
        )
    })?;
    let provider = provider(l).map_err(|e| format!("{}: {e}", at("cipher_suites")))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match l
        .min_tls_version()
        .map_err(|e| format!("{}: {e}", at("min_version")))?
    {
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        Some(TlsVersion::Tls12) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mode = l
        .client_auth_mode()
        .map_err(|e| format!("{}: {e}", at("client_auth")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("{}: {e}", at("min_version")))?;
    let builder = match mode {
        ClientAuth::None | ClientAuth::Unset => builder.with_no_client_auth(),
        ClientAuth::Request | ClientAuth::RequireAny => {
            builder.with_client_cert_verifier(Arc::new(AnyCert {
                mandatory: mode == ClientAuth::RequireAny,
                algorithms: provider.signature_verification_algorithms,
            }))
        }
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let Some(ca) = &files.ca else {
                return Err(format!(
                    "{}: required for client_auth {mode:?}: the CA that verifies client \
                     certificates",
                    at("ca_file")
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert =
                    cert.map_err(|e| format!("{}: bad PEM in {}: {e}", at("ca_file"), l.ca_file))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "{}: bad CA certificate in {}: {e}",
                        at("ca_file"),
                        l.ca_file
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{}: no CERTIFICATE in {}",
                    at("ca_file"),
                    l.ca_file
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", at("ca_file")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, private).map_err(|e| {
        format!(
            "{}: {} does not go with {}: {e}",
            at("key_file"),
            l.key_file,
            l.cert_file
        )
    })
}

/// `request` / `require_any`: a client certificate is asked for (required when
/// `mandatory`) and accepted without checking its chain; the handshake signature is still
/// checked, so the client holds the certificate's key.
#[derive(Debug)]
pub struct AnyCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS side of one listener: the server configuration in force (swapped by reload),
/// used for each new handshake. Established connections keep the configuration they were
/// made with.
pub struct Acceptor {
    /// The slot's config key, e.g. `server.tcp.mtls` (logs, errors, reload).
    key: Rc<str>,
    current: RefCell<Arc<ServerConfig>>,
    /// Client certificates are verified against `ca_file` (an identity is attached).
    verifies: Cell<bool>,
    metrics: Rc<Metrics>,
    /// Handshake failures not yet logged, and when the last line was written (one line
    /// per second per listener: a scanner cannot flood the log).
    failures_unlogged: Cell<u64>,
    failures_logged_at: Cell<Option<Instant>>,
}

impl Acceptor {
    /// Load the certificates of slot `key` and build its configuration (start-up: reads
    /// the files on the calling thread). Errors name the key and the file.
    pub fn new(key: &str, l: &Listener, metrics: Rc<Metrics>) -> Result<Rc<Acceptor>, String> {
        let files = read_files(key, l)?;
        let config = server_config(key, l, &files)?;
        Ok(Rc::new(Acceptor {
            key: Rc::from(key),
            current: RefCell::new(Arc::new(config)),
            verifies: Cell::new(l.client_auth_mode().is_ok_and(ClientAuth::verifies)),
            metrics,
            failures_unlogged: Cell::new(0),
            failures_logged_at: Cell::new(None),
        }))
    }

    /// The slot's config key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The server configuration new handshakes use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.borrow().clone()
    }

    /// Register a reload hook: on SIGHUP the certificate, key and CA are re-read (off the
    /// executor thread) with the slot's reloaded TLS block, and new handshakes use them. A
    /// reload that fails (unreadable file, bad PEM, key not matching the certificate)
    /// keeps the old configuration and logs why. The slot's address is not re-bound.
    pub fn register_reload(
        self: &Rc<Self>,
        shared: &Shared,
        ex: &Rc<smol::LocalExecutor<'static>>,
    ) {
        let this = Rc::downgrade(self);
        let ex_weak = Rc::downgrade(ex);
        shared
            .reload_hooks
            .borrow_mut()
            .push(Box::new(move |cfg: &Config| {
                let (Some(this), Some(ex)) = (this.upgrade(), ex_weak.upgrade()) else {
                    return;
                };
                let Some(l) = slot(cfg, &this.key).cloned() else {
                    return;
                };
                ex.spawn(async move {
                    let key = this.key.to_string();
                    let read = {
                        let (key, l) = (key.clone(), l.clone());
                        smol::unblock(move || read_files(&key, &l)).await
                    };
                    match read.and_then(|files| server_config(&key, &l, &files)) {
                        Ok(config) => this.install(config, &l),
                        Err(e) => {
                            this.metrics.add(Counter::TlsReloadFailures, 1);
                            log::error!(
                                "{key}: TLS reload failed, keeping the previous certificates: {e}"
                            );
                        }
                    }
                })
                .detach();
            }));
    }

    fn install(&self, config: ServerConfig, l: &Listener) {
        *self.current.borrow_mut() = Arc::new(config);
        self.verifies
            .set(l.client_auth_mode().is_ok_and(ClientAuth::verifies));
        self.metrics.add(Counter::TlsReloads, 1);
        log::info!(
            "{}: TLS certificates reloaded from {} (new handshakes use them)",
            self.key,
            l.cert_file
        );
    }

    /// Run the server handshake on `io` within `timeout` (the slot's `read_timeout`; zero =
    /// none). Returns the TLS stream and, when the client's certificate was verified
    /// against `ca_file`, its identity. A handshake that fails or times out is counted
    /// (`tls_handshake_failed`, `tls_handshake_timeout`), logged (rate-limited) and
    /// returned as the error; the caller just drops the socket.
    pub async fn accept<S>(
        &self,
        io: S,
        peer: SocketAddr,
        timeout: Duration,
    ) -> io::Result<(TlsStream<S>, Option<Rc<CertIdentity>>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.current.borrow().clone();
        let handshake = futures_rustls::TlsAcceptor::from(config).accept(io);
        let result = if timeout.is_zero() {
            handshake.await
        } else {
            future::or(handshake, async {
                Timer::after(timeout).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no TLS handshake within read_timeout",
                ))
            })
            .await
        };
        let mut stream = match result {
            Ok(s) => s,
            Err(e) => {
                let reason = if e.kind() == io::ErrorKind::TimedOut {
                    CloseReason::TlsHandshakeTimeout
                } else {
                    CloseReason::TlsHandshakeFailed
                };
                self.metrics.closed(reason);
                self.log_failure(peer, &e);
                return Err(e);
            }
        };
        // Bound the ciphertext waiting for a slow reader (rustls' default is 64 KiB): the
        // driver's own output buffer already holds what is not written yet.
        stream.get_mut().1.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        let identity = if self.verifies.get() {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| match identity_from_der(der) {
                    Some(id) => Some(Rc::new(id)),
                    None => {
                        log::warn!(
                            "{}: client {peer}: verified certificate without a readable \
                             serial/subject; no identity attached",
                            self.key
                        );
                        None
                    }
                })
        } else {
            None
        };
        Ok((stream, identity))
    }

    fn log_failure(&self, peer: SocketAddr, e: &io::Error) {
        let pending = self.failures_unlogged.get() + 1;
        let now = clock::now();
        if self
            .failures_logged_at
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            log::info!(
                "{}: TLS handshake with {peer} failed: {e} ({pending} handshake failure(s) since the \
                 last line)",
                self.key
            );
            self.failures_unlogged.set(0);
            self.failures_logged_at.set(Some(now));
        } else {
            self.failures_unlogged.set(pending);
        }
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").field("key", &self.key).finish()
    }
}

/// Load the certificates of every TLS slot that is switched on, as start-up would
/// (`--check-config`): the first problem, naming the key and the file.
pub fn check_files(cfg: &Config) -> Result<(), String> {
    use crate::config::{Family, Security};
    for (slot, l) in cfg.server.slots() {
        if l.enabled() && slot.security != Security::Plain && slot.family != Family::Coap {
            let files = read_files(slot.key, l)?;
            server_config(slot.key, l, &files)?;
        }
    }
    Ok(())
}

/// The listener slot of `cfg` with config key `key`.
fn slot<'a>(cfg: &'a Config, key: &str) -> Option<&'a Listener> {
    cfg.server
        .slots()
        .into_iter()
        .find(|(s, _)| s.key == key)
        .map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn files(dir: &std::path::Path, cert_pem: &str, key_pem: &str) -> Listener {
        std::fs::write(dir.join("c.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("k.pem"), key_pem).unwrap();
        Listener {
            addr: "127.0.0.1:0".into(),
            cert_file: dir.join("c.pem").display().to_string(),
            key_file: dir.join("k.pem").display().to_string(),
            ..Listener::default()
        }
    }

    /// Every way the files can be wrong is an error naming the key and the file.
    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("fluxmq-edge-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = KeyPair::generate().unwrap();
        let build = |l: &Listener| {
            read_files("server.tcp.tls", l).and_then(|f| server_config("server.tcp.tls", l, &f))
        };
        let good = files(&dir, &cert.pem(), &key.serialize_pem());
        build(&good).expect("a matching pair loads");
        let mut cfg = Config::default();
        cfg.server.tcp.tls = good.clone();
        check_files(&cfg).expect("check_files loads it too");

        let (c, k, o) = (cert.pem(), key.serialize_pem(), other.serialize_pem());
        let missing = dir.join("missing.pem").display().to_string();
        // (certificate PEM, key PEM, client_auth, cert_file override, expected error start)
        let cases: &[(&str, &str, &str, Option<&str>, &str)] = &[
            (
                &c,
                &k,
                "",
                Some(&missing),
                "server.tcp.tls.cert_file: cannot read",
            ),
            (
                "no PEM here\n",
                &k,
                "",
                None,
                "server.tcp.tls.cert_file: no CERTIFICATE in",
            ),
            (
                &c,
                "-----BEGIN PRIVATE KEY-----\n!!\n",
                "",
                None,
                "server.tcp.tls.key_file: no usable private key in",
            ),
            (&c, &o, "", None, "server.tcp.tls.key_file: "),
            (
                &c,
                &k,
                "require",
                None,
                "server.tcp.tls.ca_file: required for client_auth",
            ),
        ];
        for &(cert_pem, key_pem, auth, cert_file, want) in cases {
            let mut l = files(&dir, cert_pem, key_pem);
            l.client_auth = auth.into();
            if let Some(f) = cert_file {
                l.cert_file = f.into();
            }
            let e = build(&l).expect_err(want);
            assert!(e.starts_with(want), "{e}");
        }
        // The mismatched key names both files.
        let e = build(&files(&dir, &cert.pem(), &other.serialize_pem())).unwrap_err();
        assert!(
            e.contains("k.pem") && e.contains("c.pem") && e.contains("does not go with"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cipher_suites_narrow_tls12_only() {
        let all = provider(&Listener::default()).unwrap();
        assert_eq!(all.cipher_suites.len(), 9);
        let l = Listener {
            cipher_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
            ..Listener::default()
        };
        let narrowed = provider(&l).unwrap();
        let names: Vec<String> = narrowed
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            names,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
    }
}
