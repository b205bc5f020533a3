//! Heap held by one server-side TLS connection (rustls `ServerConnection`, the state inside
//! the listener's `TlsStream`), measured with a byte-counting `#[global_allocator]`, against
//! the per-connection terms of `budget.rs` (`TLS_HEAP_IDLE`, `TLS_BUFFERS`).
//!
//! Its own test binary, so that the counting allocator sees only this test (and counts per
//! thread). Client and server run in memory on this thread; only steps where the server
//! alone allocates are measured. The configuration is the broker's own
//! (`listener::tls::Acceptor` built from a listener slot, mTLS with `client_auth: require`),
//! the heaviest case: the client's certificate chain is kept by the connection.
//!
//! `cargo test --test tls_memory -- --nocapture` prints the figures.

// A `GlobalAlloc` impl is `unsafe impl`; it only forwards to `System` (as tests/alloc.rs).
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;

use fluxmq_edge::budget::{TLS_BUFFERS, TLS_HEAP_IDLE};
use fluxmq_edge::config::Listener;
use fluxmq_edge::listener::tls::{Acceptor, SEND_BUFFER_LIMIT};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// Move every pending TLS byte between the two ends until neither has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    loop {
        let mut moved = false;
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// A socket with nothing to read (the driver's read attempt on an idle connection).
struct Idle;

impl Read for Idle {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

#[test]
fn tls_connection_heap_fits_the_budget() {
    // The PKI and the broker's configuration for an mTLS slot.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Memory Test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |sans: Vec<String>, cn: &str, eku| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, &ca).unwrap(), key)
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(Vec::new(), "device-1", ExtendedKeyUsagePurpose::ClientAuth);
    let dir = std::env::temp_dir().join(format!("fluxmq-edge-tls-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let slot = Listener {
        cert_file: write("server.pem", server_cert.pem()),
        key_file: write("server.key", server_key.serialize_pem()),
        ca_file: write("ca.pem", ca.pem()),
        client_auth: "require".into(),
        ..Listener::default()
    };
    let metrics = Rc::new(fluxmq_edge::metrics::Metrics::default());
    let acceptor = Acceptor::new("server.tcp.mtls", &slot, metrics).unwrap();
    let server_config = acceptor.config();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
            )
            .unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The connection alone: without the listener's session-resumption cache (a capped cost
    // per listener, budgeted apart), whose evictions would blur the figure.
    let mut measured = (*server_config).clone();
    measured.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    measured.send_tls13_tickets = 0;
    let server_config = Arc::new(measured);
    let struct_size = std::mem::size_of::<ServerConnection>() as i64;
    let before = live();
    let mut server = ServerConnection::new(server_config).unwrap();
    // Everything the client allocates is freed when it is dropped below.
    let mut client = ClientConnection::new(
        client_config.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    pump(&mut client, &mut server);
    assert!(!server.is_handshaking() && !client.is_handshaking());
    server.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
    // One small record each way (CONNECT, CONNACK), read out as the driver does.
    use std::io::Write;
    client.writer().write_all(&[0x10; 64]).unwrap();
    pump(&mut client, &mut server);
    let mut plain = [0u8; 256];
    assert_eq!(server.reader().read(&mut plain).unwrap(), 64);
    server.writer().write_all(&[0x20, 2, 0, 0]).unwrap();
    pump(&mut client, &mut server);
    // The driver's next read finds nothing.
    let _ = server.read_tls(&mut Idle);
    let with_client = live();
    drop(client);
    let client_heap = with_client - live();
    let idle_heap = live() - before;

    // Busy: a peer that does not read while the broker writes a burst (ciphertext queued up
    // to the send limit), and a peer that sent part of a full-size record (the read buffer
    // grows to hold one wire record).
    let burst = vec![0u8; 64 * 1024];
    let body = vec![0u8; 16 * 1024];
    let mark = live();
    let taken = server.writer().write(&burst).unwrap();
    assert!(taken <= SEND_BUFFER_LIMIT, "took {taken}");
    let queued = live() - mark;
    let mark = live();
    let mut partial: &[u8] = &[0x17, 0x03, 0x03, 0x40, 0x11]; // header of a 16401-byte record
    let _ = server.read_tls(&mut partial);
    let mut body = &body[..];
    while !body.is_empty() {
        if server.read_tls(&mut body).is_err() {
            break;
        }
    }
    let read_buffer = live() - mark;
    // Decrypted records not yet taken by the driver: at most what that buffer held.
    let plaintext = read_buffer + 4096;
    let buffers = queued + read_buffer + plaintext;

    eprintln!(
        "TLS connection (mTLS, TLS 1.3, P-256): ServerConnection struct {struct_size} B \
         (inline in the task); idle heap {idle_heap} B (budget::TLS_HEAP_IDLE {TLS_HEAP_IDLE}); \
         busy: queued ciphertext {queued} B + read buffer growth {read_buffer} B + decrypted \
         records {plaintext} B = {buffers} B (budget::TLS_BUFFERS {TLS_BUFFERS}); \
         [the client side held {client_heap} B]"
    );
    assert!(
        idle_heap as u64 <= TLS_HEAP_IDLE,
        "an idle TLS connection holds {idle_heap} B of heap: raise budget::TLS_HEAP_IDLE"
    );
    assert!(
        buffers as u64 <= TLS_BUFFERS,
        "a busy TLS connection's buffers hold {buffers} B: raise budget::TLS_BUFFERS"
    );
}
