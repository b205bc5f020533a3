//! MQTT over a byte stream: the accept loop of an MQTT TCP listener (connection cap,
//! `TCP_NODELAY`) and the per-connection driver that moves bytes between the socket and the
//! sans-IO `protocol::mqtt::conn::Conn`. The driver is generic over the stream so that TLS
//! and WebSocket transports feed the same state machine.
//!
//! Per wake-up the driver reads what the socket has (one read into the shared buffer),
//! lets the state machine handle every complete packet, pulls every queued delivery that
//! fits, and writes all output in one `write` call.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, future};
use smol::{Async, LocalExecutor, Timer};

use super::Shared;
use crate::clock;
use crate::metrics::{CloseReason, Counter};
use crate::protocol::mqtt::conn::{Accept, Conn};

/// One MQTT listener slot, from configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Config key of the slot, for logs (e.g. `server.tcp.v3`).
    pub name: String,
    pub accept: Accept,
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Output capacity kept between writes; larger buffers are freed once drained so that an
/// idle connection holds almost nothing.
const KEEP_OUT_CAPACITY: usize = 512;

pub async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    listener: Async<TcpListener>,
    spec: Rc<Spec>,
) {
    let active = Rc::new(Cell::new(0usize));
    loop {
        let stop = shared.shutdown.listen();
        if shared.shutting_down.get() {
            break;
        }
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            stop.await;
            None
        })
        .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                // EMFILE and friends: log, back off briefly, keep serving.
                log::warn!("{}: accept failed: {e}", spec.name);
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        if spec.max_connections > 0 && active.get() >= spec.max_connections {
            shared.metrics.closed(CloseReason::ListenerFull);
            log::warn!(
                "{}: connection from {peer} refused: max_connections ({}) reached",
                spec.name,
                spec.max_connections
            );
            continue; // dropping the stream closes it before any CONNACK
        }
        if let Err(e) = stream.get_ref().set_nodelay(true) {
            log::debug!("{}: TCP_NODELAY on {peer}: {e}", spec.name);
        }
        active.set(active.get() + 1);
        shared.metrics.add(Counter::ConnectionsAccepted, 1);
        let (shared, spec, active) = (shared.clone(), spec.clone(), active.clone());
        ex.spawn(async move {
            serve(stream, peer, &shared, &spec).await;
            active.set(active.get() - 1);
        })
        .detach();
    }
    log::debug!("{}: accept loop stopped", spec.name);
}

enum Event {
    Progress,
    Eof,
    Error(std::io::Error),
    Timer,
    Signal,
}

/// Drive one MQTT connection until it closes.
pub async fn serve<S>(mut io: S, peer: SocketAddr, shared: &Shared, spec: &Spec)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &shared.metrics;
    metrics.connections.set(metrics.connections.get() + 1);
    let max_msg = shared.broker.borrow().limits.max_message_size;
    let mut conn = Conn::new(spec.accept, peer, spec.read_timeout, max_msg, clock::now());
    let mut timer = Timer::never();
    let mut armed: Option<Instant> = None;
    loop {
        if !conn.out().is_empty() {
            let out = std::mem::take(conn.out());
            let deadline = Timer::after(spec.write_timeout);
            let written = future::or(async { io.write_all(&out).await.map(|_| true) }, async {
                deadline.await;
                Ok(false)
            })
            .await;
            let mut out = out;
            let n = out.len() as u64;
            out.clear();
            if out.capacity() > KEEP_OUT_CAPACITY {
                out = Vec::new();
            }
            *conn.out() = out;
            let mut broker = shared.broker.borrow_mut();
            match written {
                Ok(true) => {
                    metrics.add(Counter::BytesSent, n);
                    conn.poll_deliveries(&mut broker, clock::now());
                    if !conn.out().is_empty() && !conn.is_closed() {
                        continue;
                    }
                }
                Ok(false) => {
                    log::info!("client {:?} from {peer}: write timeout", conn.client_id());
                    conn.close(CloseReason::WriteTimeout, &mut broker, Some(clock::now()));
                    break;
                }
                Err(e) => {
                    log::debug!(
                        "client {:?} from {peer}: write failed: {e}",
                        conn.client_id()
                    );
                    conn.close(CloseReason::IoError, &mut broker, Some(clock::now()));
                    break;
                }
            }
        }
        if conn.is_closed() {
            break;
        }
        let deadline = conn.next_deadline(&shared.broker.borrow());
        if let Some(d) = deadline
            && armed.is_none_or(|a| d < a)
        {
            timer.set_at(d);
            armed = Some(d);
        }
        let event = future::poll_fn(|cx| {
            if let Some(sig) = conn.signal() {
                if sig.is_pending() {
                    return Poll::Ready(Event::Signal);
                }
                sig.register(cx.waker());
            }
            if conn.wants_read() {
                let mut buf = shared.read_buf.borrow_mut();
                match Pin::new(&mut io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Event::Eof),
                    Poll::Ready(Ok(n)) => {
                        let mut broker = shared.broker.borrow_mut();
                        conn.handle_input(&buf[..n], &mut broker, clock::now());
                        return Poll::Ready(Event::Progress);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::Error(e)),
                    Poll::Pending => {}
                }
            }
            if armed.is_some() && Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        let now = clock::now();
        let mut broker = shared.broker.borrow_mut();
        match event {
            Event::Progress => {}
            Event::Signal => conn.poll_deliveries(&mut broker, now),
            Event::Timer => {
                armed = None;
                conn.handle_timeout(&mut broker, now);
            }
            Event::Eof => {
                log::debug!(
                    "client {:?} from {peer}: connection closed by peer",
                    conn.client_id()
                );
                conn.close(CloseReason::PeerClosed, &mut broker, Some(now));
            }
            Event::Error(e) => {
                log::debug!(
                    "client {:?} from {peer}: read failed: {e}",
                    conn.client_id()
                );
                conn.close(CloseReason::IoError, &mut broker, Some(now));
            }
        }
    }
    let _ = io.close().await;
    metrics.connections.set(metrics.connections.get() - 1);
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

#[allow(dead_code)]
fn assert_stream(_: &Async<TcpStream>) {}
