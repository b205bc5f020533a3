//! Outbound connections to the auth upstreams (Atom, the callout): TCP with `TCP_NODELAY`,
//! optionally TLS (rustls, ring provider, TLS 1.2+, a CA file or the system roots, an
//! optional client certificate), and the one stream type the HTTP/2 (gRPC) and HTTP/1.1
//! (JSON callout) clients run on. Does not own retries or backoff (the callers do).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smol::net::TcpStream;

/// TLS settings for an upstream (`auth.atom.ca_file`, `cert_file`, `key_file`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM CA bundle that signs the upstream's certificate; empty = the system roots.
    pub ca_file: String,
    /// PEM client certificate chain and key for mutual TLS; both or neither.
    pub cert_file: String,
    pub key_file: String,
}

/// Builds a rustls client configuration offering `alpn` (`h2` for gRPC, `http/1.1`).
/// Errors name the file and say what is wrong with it (the caller prefixes the key).
pub fn client_config(files: &TlsFiles, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if files.ca_file.is_empty() {
        // The system roots (ca-certificates on a Debian gateway, updated with the OS), read
        // once at start-up; unreadable entries are skipped.
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "no CA file set and no system root certificate found (install ca-certificates \
                 or set ca_file)"
                    .into(),
            );
        }
    } else {
        let certs = read_certs(&files.ca_file)?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", files.ca_file))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = if files.cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = read_certs(&files.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&files.key_file)
            .map_err(|e| format!("{}: no usable private key: {e}", files.key_file))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", files.cert_file))?
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// Where an upstream is and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `None`: plaintext.
    pub tls: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls.is_some() { "tls" } else { "tcp" },
            self.host,
            self.port
        )
    }
}

impl Endpoint {
    /// `host:port` (an IPv6 host in brackets), as `auth.atom.grpc_addr` writes it.
    pub fn parse_host_port(addr: &str) -> Result<(String, u16), String> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{addr}\": expected host:port, e.g. atom:8081"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("\"{addr}\": bad port \"{port}\""))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("\"{addr}\": no host"));
        }
        Ok((host.to_owned(), port))
    }

    /// The `scheme://authority` URI requests carry (hyper and tonic need an origin).
    pub fn origin(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Connects (TCP, then the TLS handshake with the upstream's name checked against its
    /// certificate). The caller bounds the time.
    pub async fn connect(&self) -> Result<Stream, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let Some(cfg) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("{}: not a TLS server name: {e}", self.host))?;
        let tls = TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}:{}: {e}", self.host, self.port))?;
        let offered = cfg.alpn_protocols.first().map(Vec::as_slice);
        if offered == Some(b"h2".as_slice()) && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!(
                "{}:{} did not negotiate HTTP/2 (ALPN h2): not a gRPC server?",
                self.host, self.port
            ));
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// A connection to an upstream, plaintext or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            Endpoint::parse_host_port("atom:8081"),
            Ok(("atom".into(), 8081))
        );
        assert_eq!(
            Endpoint::parse_host_port("[::1]:8081"),
            Ok(("::1".into(), 8081))
        );
        assert!(Endpoint::parse_host_port("atom").is_err());
        assert!(Endpoint::parse_host_port(":8081").is_err());
        assert!(Endpoint::parse_host_port("atom:x").is_err());
        let e = Endpoint {
            host: "::1".into(),
            port: 1,
            tls: None,
        };
        assert_eq!(e.origin(), "http://[::1]:1");
    }
}
