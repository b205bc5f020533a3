//! `loadgen tls`: the cost of MQTT over TLS, measured from outside the broker. Two parts, run
//! one after the other against a broker's TLS listener:
//!
//! 1. **Serial connects**: `--connects` times, one at a time: TCP connect, a full TLS 1.3
//!    handshake (no session resumption: each connect pays the whole handshake), CONNECT,
//!    CONNACK; the time from `connect()` to the CONNACK is recorded, then DISCONNECT. Median,
//!    90th percentile and maximum are reported.
//! 2. **Idle connections**: `--conns` TLS connections opened and CONNECTed (in batches), held
//!    idle for `--settle`; the broker's RSS growth divided by the connections is the memory
//!    per idle TLS connection.
//!
//! The client is rustls (ring), blocking, with the CA of `--cafile` (and a client
//! certificate with `--cert`/`--key`, for mTLS listeners).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::mqtt::{self, Version};
use crate::procstat::{self, ProcSample};

pub struct TlsSpec {
    pub addr: SocketAddr,
    pub version: Version,
    pub server_name: String,
    pub cafile: String,
    pub cert: Option<(String, String)>,
    pub connects: usize,
    pub conns: usize,
    pub batch: usize,
    pub settle: Duration,
    pub broker_pid: Option<u32>,
    pub keepalive: u16,
}

pub struct TlsOutcome {
    /// Serial connect -> CONNACK times, microseconds, sorted.
    pub connect_us: Vec<u64>,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub broker: Option<(ProcSample, ProcSample)>,
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn config(spec: &TlsSpec) -> io::Result<Arc<ClientConfig>> {
    let bad = |what: &str, e: &dyn std::fmt::Display| io::Error::other(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&spec.cafile).map_err(|e| bad(&spec.cafile, &e))? {
        roots
            .add(cert.map_err(|e| bad(&spec.cafile, &e))?)
            .map_err(|e| bad(&spec.cafile, &e))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS 1.3", &e))?
            .with_root_certificates(roots);
    let mut config = match &spec.cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
    };
    // Every connect pays a full handshake (as a device that reboots would).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// TCP + TLS + CONNECT/CONNACK; returns the stream.
fn connect(spec: &TlsSpec, config: &Arc<ClientConfig>, id: &str) -> io::Result<Tls> {
    let sock = TcpStream::connect(spec.addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(spec.server_name.clone())
        .map_err(|e| io::Error::other(format!("--server-name: {e}")))?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    s.write_all(&mqtt::connect(spec.version, id, spec.keepalive))?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(f) = mqtt::frame(&buf).map_err(|e| io::Error::other(e.to_string()))? {
            if f.header != mqtt::CONNACK {
                return Err(io::Error::other(format!(
                    "expected CONNACK, got 0x{:02x}",
                    f.header
                )));
            }
            let ack = mqtt::parse_connack(spec.version, &buf[f.body_start..f.len])
                .map_err(|e| io::Error::other(e.to_string()))?;
            if ack.return_code != 0 {
                return Err(io::Error::other(format!(
                    "CONNACK code {}",
                    ack.return_code
                )));
            }
            return Ok(s);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before CONNACK",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn run(spec: &TlsSpec) -> io::Result<TlsOutcome> {
    let config = config(spec)?;
    let fd_limit = procstat::raise_nofile();
    if (fd_limit as usize) < spec.conns + 64 {
        return Err(io::Error::other(format!(
            "open-file limit {fd_limit} is too low for {} connections: raise `ulimit -n`",
            spec.conns
        )));
    }
    let mut first_error = None;
    let mut failed = 0;
    // 1. Serial connects.
    let mut connect_us = Vec::with_capacity(spec.connects);
    for i in 0..spec.connects {
        let t = Instant::now();
        match connect(spec, &config, &format!("tls-serial-{i}")) {
            Ok(mut s) => {
                connect_us.push(t.elapsed().as_micros() as u64);
                let _ = s.write_all(&mqtt::DISCONNECT);
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    connect_us.sort_unstable();
    // 2. Idle connections, after the serial ones have been cleaned up.
    thread::sleep(spec.settle);
    let before = spec.broker_pid.map(procstat::sample_broker).transpose()?;
    let mut held: Vec<Tls> = Vec::with_capacity(spec.conns);
    let mut i = 0;
    while i < spec.conns {
        let n = spec.batch.max(1).min(spec.conns - i);
        // Blocking handshakes, `n` threads at a time (the broker is single-threaded; this
        // only keeps the loadgen from being the bottleneck).
        let batch: Vec<io::Result<Tls>> = thread::scope(|sc| {
            let handles: Vec<_> = (i..i + n)
                .map(|k| {
                    let config = &config;
                    sc.spawn(move || connect(spec, config, &format!("tls-idle-{k}")))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("panicked")))
                })
                .collect()
        });
        for r in batch {
            match r {
                Ok(s) => held.push(s),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        i += n;
    }
    thread::sleep(spec.settle);
    let broker = match (spec.broker_pid, before) {
        (Some(p), Some(b)) => Some((b, procstat::sample_broker(p)?)),
        _ => None,
    };
    let connected = held.len();
    for s in &mut held {
        let _ = s.write_all(&mqtt::DISCONNECT);
    }
    Ok(TlsOutcome {
        connect_us,
        connected,
        failed,
        first_error,
        broker,
    })
}

/// The `q` quantile of sorted `v` (nearest rank).
pub fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
