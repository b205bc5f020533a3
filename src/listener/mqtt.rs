//! MQTT over a byte stream: the accept loop of an MQTT TCP listener (connection cap,
//! `TCP_NODELAY`) and the per-connection driver that moves bytes between the socket and the
//! sans-IO `protocol::mqtt::conn::Conn`. The driver is generic over the stream so that TLS
//! and WebSocket transports feed the same state machine.
//!
//! Per wake-up the driver reads what the socket has (into the shared buffer), lets the
//! state machine handle every complete packet, pulls every queued delivery that fits, and
//! writes all output with as few `write` calls as the socket allows. One future per
//! connection, one timer, no per-connection buffer while idle.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use smol::{Async, LocalExecutor};

use super::{Shared, tls};
use crate::auth::{CertIdentity, Pending, Protocol};
use crate::broker::session::Signal;
use crate::clock;
use crate::metrics::{CloseReason, Counter};
use crate::protocol::mqtt::conn::{Accept, Conn, Verdict};

/// One MQTT listener slot, from configuration.
#[derive(Debug)]
pub struct Spec {
    /// Config key of the slot, for logs (e.g. `server.tcp.v3`).
    pub name: String,
    pub accept: Accept,
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Open connections on this listener (for `max_connections`), TLS handshakes included.
    pub active: Cell<usize>,
    /// TLS slots: the handshake layer (shared with reload).
    pub tls: Option<Rc<tls::Acceptor>>,
    /// The verified certificate's CN becomes the username when CONNECT has none.
    pub use_identity_as_username: bool,
}

/// Output capacity an idle connection keeps; a larger buffer is freed once the connection
/// has been idle for `IDLE_SHRINK`, so that an idle connection holds almost nothing.
const KEEP_OUT_CAPACITY: usize = 512;
const IDLE_SHRINK: Duration = Duration::from_secs(1);

pub async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    listener: Async<TcpListener>,
    spec: Rc<Spec>,
) {
    accept_each(&shared, &listener, &spec, |stream, peer| match &spec.tls {
        None => ex
            .spawn(Connection::new(
                stream,
                peer,
                shared.clone(),
                spec.clone(),
                clock::now(),
            ))
            .detach(),
        // The handshake runs in the connection's own task: a slow peer delays no accept.
        // Counted against max_connections from now, while it handshakes.
        Some(acceptor) => ex
            .spawn(serve_tls(
                acceptor.clone(),
                stream,
                peer,
                shared.clone(),
                Handshaking::new(spec.clone()),
            ))
            .detach(),
    })
    .await;
}

/// Accept until shutdown; each connection under the cap (with `TCP_NODELAY` set) goes to
/// `serve`, which spawns its task. Shared by the MQTT and WebSocket listeners.
pub async fn accept_each(
    shared: &Shared,
    listener: &Async<TcpListener>,
    spec: &Spec,
    serve: impl FnMut(Async<TcpStream>, SocketAddr),
) {
    accept_limited(shared, listener, spec, serve, |_, _, _| {}).await;
}

/// [`accept_each`], with a connection over the per-IP rate limit (already counted and
/// logged) handed to `limited` instead of dropped (WebSocket answers it with HTTP 429).
pub async fn accept_limited(
    shared: &Shared,
    listener: &Async<TcpListener>,
    spec: &Spec,
    serve: impl FnMut(Async<TcpStream>, SocketAddr),
    limited: impl FnMut(Async<TcpStream>, SocketAddr, crate::ratelimit::Refusal),
) {
    let gate = super::Gate {
        name: &spec.name,
        protocol: Protocol::Mqtt,
        max_connections: spec.max_connections,
        active: &spec.active,
    };
    super::accept_until_shutdown(shared, listener, gate, serve, limited).await;
}

/// A TLS connection: the handshake (within `read_timeout`, counted in `max_connections`),
/// then the same driver as plain TCP over the TLS stream, with the client certificate's
/// identity attached. `read_timeout` covers handshake and CONNECT together.
async fn serve_tls(
    acceptor: Rc<tls::Acceptor>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    shared: Rc<Shared>,
    handshaking: Handshaking,
) {
    let started = clock::now();
    let spec = handshaking.0.clone();
    let Ok((stream, identity)) = acceptor.accept(stream, peer, spec.read_timeout).await else {
        return; // counted and logged by the acceptor; dropping the socket closes it
    };
    drop(handshaking); // the connection counts itself from here on
    let mut conn = Connection::new(stream, peer, shared, spec.clone(), started);
    conn.conn.set_cert(identity, spec.use_identity_as_username);
    conn.await
}

/// Size of a TLS connection's task future (`serve_tls`), for the memory budget's test.
#[cfg(test)]
pub fn tls_task_size() -> usize {
    fn size_of_future<F: Future>(_: &dyn Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }
    size_of_future(&|| {
        serve_tls(
            unreachable_acceptor(),
            unreachable_stream(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            unreachable_shared(),
            unreachable_handshaking(),
        )
    })
}

#[cfg(test)]
fn unreachable_acceptor() -> Rc<tls::Acceptor> {
    unreachable!("only the type is used")
}
#[cfg(test)]
fn unreachable_stream() -> Async<TcpStream> {
    unreachable!("only the type is used")
}
#[cfg(test)]
fn unreachable_shared() -> Rc<Shared> {
    unreachable!("only the type is used")
}
#[cfg(test)]
fn unreachable_handshaking() -> Handshaking {
    unreachable!("only the type is used")
}

/// Counts a connection still in its handshake (TLS, WebSocket upgrade) against the
/// listener's `max_connections`.
pub struct Handshaking(Rc<Spec>);

impl Handshaking {
    /// A place under `max_connections`, if one is free.
    pub fn try_new(spec: &Rc<Spec>) -> Option<Handshaking> {
        let full = spec.max_connections > 0 && spec.active.get() >= spec.max_connections;
        (!full).then(|| Handshaking::new(spec.clone()))
    }

    pub fn new(spec: Rc<Spec>) -> Handshaking {
        spec.active.set(spec.active.get() + 1);
        Handshaking(spec)
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

/// Reads handled per poll before the driver yields to other tasks (fairness: one busy
/// publisher cannot starve the executor).
const READS_PER_POLL: usize = 4;

/// One MQTT connection, driven until it closes: a hand-written future (an `async fn` would
/// store its arguments twice and add its own state), so an idle connection costs exactly
/// these fields. Each poll writes pending output, reacts to the core's signal, reads and
/// handles input, and handles its deadline (keep-alive, CONNECT deadline, v3 retry, or the
/// write timeout while output is stuck), for which the server's once-a-second sweep wakes
/// it: no timer per connection.
pub struct Connection<S> {
    io: S,
    conn: Conn,
    shared: Rc<Shared>,
    spec: Rc<Spec>,
    /// Index of this connection's signal in `Shared::conns` (the deadline sweep).
    slot: usize,
    /// Bytes of `conn.out()` already written, and since when the rest has been waiting.
    written: usize,
    stuck_since: Option<Instant>,
    /// The state machine is done and its output written: closing the transport.
    closing: bool,
    /// An auth answer the state machine waits for (an RPC in flight), polled here.
    wait: Option<Pending<Verdict>>,
}

impl<S> Connection<S> {
    /// `accepted`: when the socket was accepted; `read_timeout` (the CONNECT deadline)
    /// counts from then, so that a TLS handshake uses up part of it.
    pub fn new(
        io: S,
        peer: SocketAddr,
        shared: Rc<Shared>,
        spec: Rc<Spec>,
        accepted: Instant,
    ) -> Self {
        let metrics = &shared.metrics;
        metrics.connections.set(metrics.connections.get() + 1);
        spec.active.set(spec.active.get() + 1);
        let max_msg = shared.broker.borrow().limits.max_message_size;
        let signal = Rc::new(Signal::default());
        let slot = shared.conns.borrow_mut().insert(signal.clone());
        let conn = Conn::new(
            spec.accept,
            peer,
            signal,
            spec.read_timeout,
            max_msg,
            accepted,
        );
        Connection {
            io,
            conn,
            shared,
            spec,
            slot,
            written: 0,
            stuck_since: None,
            closing: false,
            wait: None,
        }
    }
}

impl<S> Connection<S> {
    /// Attach the verified client certificate's identity (TLS transports).
    pub fn set_cert(&mut self, identity: Option<Rc<CertIdentity>>, as_username: bool) {
        self.conn.set_cert(identity, as_username);
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        if !self.conn.is_closed() {
            // Dropped while live (executor shutdown): detach from the session all the same.
            if let Ok(mut broker) = self.shared.broker.try_borrow_mut() {
                self.conn
                    .close(CloseReason::ServerShutdown, &mut broker, Some(clock::now()));
            }
        }
        self.shared.conns.borrow_mut().remove(self.slot);
        let metrics = &self.shared.metrics;
        metrics.connections.set(metrics.connections.get() - 1);
        self.spec.active.set(self.spec.active.get() - 1);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.closing && this.drive(cx).is_ready() {
            this.closing = true;
        }
        if this.closing {
            // Best effort (a TLS close_notify, a TCP FIN); the socket closes on drop anyway.
            return Pin::new(&mut this.io).poll_close(cx).map(|_| ());
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Ready when the connection is finished (closed and its last output written).
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Connection {
            io,
            conn,
            shared,
            spec,
            written,
            stuck_since,
            wait,
            ..
        } = self;
        let metrics = &shared.metrics;
        let peer = conn.peer();
        let mut reads = 0;
        loop {
            // 1. Write what is pending, in as few syscalls as the socket allows.
            while *written < conn.out().len() {
                match Pin::new(&mut *io).poll_write(cx, &conn.out()[*written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        *written += n;
                        metrics.add(Counter::BytesSent, n as u64);
                    }
                    Poll::Ready(result) => {
                        let mut why = CloseReason::IoError;
                        if let Err(e) = result {
                            log::debug!(
                                "client {:?} from {peer}: write failed: {e}",
                                conn.client_id()
                            );
                            why = super::close_reason(&e);
                        }
                        conn.close(why, &mut shared.broker.borrow_mut(), Some(clock::now()));
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        stuck_since.get_or_insert_with(clock::now);
                        break;
                    }
                }
            }
            if *written > 0 && *written == conn.out().len() {
                // Keep the capacity while the connection is busy (freeing a large buffer
                // after every flush costs the allocator more than the write); it is freed
                // once the connection has been idle for a second (see the deadline below).
                conn.out().clear();
                *written = 0;
                *stuck_since = None;
            }
            if conn.is_closed() {
                if conn.out().is_empty() {
                    return Poll::Ready(());
                }
            } else {
                let now = clock::now();
                let mut broker = shared.broker.borrow_mut();
                // 2. Deliveries from the core (and kicks).
                if conn.signal().is_pending() || (*written == 0 && conn.out().is_empty()) {
                    let before = conn.out().len();
                    conn.poll_deliveries(&mut broker, now);
                    if conn.out().len() > before || conn.is_closed() {
                        continue; // write it
                    }
                }
                conn.signal().register(cx.waker());
                // 3. An auth answer: the waiting packet is handled again with it.
                if let Some(w) = conn.take_wait() {
                    *wait = Some(w);
                }
                if let Some(w) = wait.as_mut()
                    && let Poll::Ready(v) = w.as_mut().poll(cx)
                {
                    *wait = None;
                    conn.resume(v, &mut broker, now);
                    continue;
                }
                // 4. Input.
                if conn.wants_read() && reads < READS_PER_POLL {
                    let mut buf = shared.read_buf.borrow_mut();
                    match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(0)) => {
                            log::debug!(
                                "client {:?} from {peer}: closed by peer",
                                conn.client_id()
                            );
                            conn.close(CloseReason::PeerClosed, &mut broker, Some(now));
                        }
                        Poll::Ready(Ok(n)) => conn.handle_input(&buf[..n], &mut broker, now),
                        Poll::Ready(Err(e)) => {
                            let why = super::close_reason(&e);
                            if why == CloseReason::IoError {
                                log::debug!(
                                    "client {:?} from {peer}: read failed: {e}",
                                    conn.client_id()
                                );
                            } else {
                                log::info!("client {:?} from {peer}: {e}", conn.client_id());
                            }
                            conn.close(why, &mut broker, Some(now));
                        }
                        Poll::Pending => reads = READS_PER_POLL + 1,
                    }
                    if reads <= READS_PER_POLL {
                        reads += 1;
                        continue; // handle what was read, write what it produced
                    }
                } else if conn.wants_read() {
                    // Fairness: more input may be waiting; let other tasks run first.
                    cx.waker().wake_by_ref();
                }
                // 5. Time: the state machine's deadline, or the write timeout.
                if conn.signal().deadline().is_some_and(|t| t <= now) {
                    conn.signal().set_deadline(None);
                    if conn.out().is_empty() && conn.out().capacity() > KEEP_OUT_CAPACITY {
                        *conn.out() = Vec::new(); // idle: an idle connection holds no buffer
                    }
                    conn.handle_timeout(&mut broker, now);
                    continue;
                }
            }
            if let Some(since) = *stuck_since
                && clock::now() >= since + spec.write_timeout
            {
                log::info!("client {:?} from {peer}: write timeout", conn.client_id());
                conn.close(
                    CloseReason::WriteTimeout,
                    &mut shared.broker.borrow_mut(),
                    Some(clock::now()),
                );
                return Poll::Ready(());
            }
            // The server's sweep wakes this connection once its deadline passes.
            let shrink = (conn.out().is_empty() && conn.out().capacity() > KEEP_OUT_CAPACITY)
                .then(|| clock::now() + IDLE_SHRINK);
            let deadline = [
                conn.next_deadline(&shared.broker.borrow()),
                stuck_since.map(|s| s + spec.write_timeout),
                shrink,
            ]
            .into_iter()
            .flatten()
            .min();
            conn.signal().set_deadline(deadline);
            return Poll::Pending;
        }
    }
}

/// Bind a TCP listener; the error names the config key and the address.
pub fn bind(name: &str, addr: &str) -> Result<Async<TcpListener>, String> {
    let sock: SocketAddr = parse_addr(addr).map_err(|e| format!("{name}.addr: {e}"))?;
    Async::<TcpListener>::bind(sock)
        .map_err(|e| format!("{name}.addr: cannot listen on {addr}: {e}"))
}

/// `host:port` or `:port` (all interfaces, as in Go).
pub fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {addr:?} resolves to nothing"))
}
