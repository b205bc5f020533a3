//! The I/O edge: accept loops with their caps, the per-connection drivers that move bytes
//! between sockets and the sans-IO protocol state machines, the transports layered under
//! them (WebSocket), and the health/metrics HTTP endpoint. This is the only layer (with
//! `main`) that awaits.

#[cfg(feature = "coap")]
pub mod coap;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod mqtt;
pub mod tls;
pub mod ws;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::{Rc, Weak};
use std::time::Duration;

use futures_lite::future;
use smol::{Async, Timer};

use crate::auth::Protocol;
use crate::broker::Broker;
use crate::broker::session::Signal;
use crate::clock;
use crate::config::Config;
use crate::metrics::{CloseReason, Counter, Metrics};
use crate::ratelimit::{IpLimiter, Refusal};

/// What every listener task shares: the core, the metrics, the shared read buffer, and the
/// shutdown flag.
pub struct Shared {
    pub broker: RefCell<Broker>,
    pub metrics: Rc<Metrics>,
    /// One read buffer for every connection of the thread: a connection keeps bytes of its
    /// own only while a packet is partial, so an idle connection holds no buffer.
    pub read_buf: RefCell<Box<[u8]>>,
    /// Every live connection's signal, for the deadline sweep (`sweep`).
    pub conns: RefCell<slab::Slab<Rc<Signal>>>,
    pub shutting_down: Cell<bool>,
    pub shutdown: event_listener::Event,
    /// The configuration in force (replaced by a reload).
    pub config: RefCell<Rc<Config>>,
    /// Run on SIGHUP with the newly loaded configuration, in registration order: each
    /// subsystem that can change live (TLS certificates, rate limits) registers one.
    pub reload_hooks: RefCell<Vec<ReloadHook>>,
    /// The connection rate limit per source IP (`ratelimit.connection`): see [`Shared::admit`].
    pub conn_limit: RefCell<IpLimiter>,
}

/// A subsystem's reaction to a reload; it logs (and keeps its old state) when what it
/// re-reads is bad.
pub type ReloadHook = Box<dyn Fn(&Config)>;

/// Size of the shared read buffer: large enough to drain a busy socket in one syscall.
pub const READ_BUF: usize = 64 * 1024;

impl Shared {
    /// The shared state of a broker configured by `config`; registers the reload hook of the
    /// rate limits (the first hook).
    pub fn new(mut broker: Broker, metrics: Rc<Metrics>, config: Rc<Config>) -> Rc<Shared> {
        let now = clock::now();
        broker.ratelimit.configure(&config.ratelimit, now);
        let mut conn_limit = IpLimiter::off(metrics.clone());
        conn_limit.configure(&config.ratelimit, now);
        Rc::new_cyclic(|me: &Weak<Shared>| {
            let me = me.clone();
            let hook: ReloadHook = Box::new(move |cfg: &Config| {
                if let Some(shared) = me.upgrade() {
                    shared.reload_ratelimit(cfg);
                }
            });
            Shared {
                broker: RefCell::new(broker),
                read_buf: RefCell::new(vec![0; READ_BUF].into_boxed_slice()),
                conns: RefCell::new(slab::Slab::new()),
                shutting_down: Cell::new(false),
                shutdown: event_listener::Event::new(),
                config: RefCell::new(config),
                reload_hooks: RefCell::new(vec![hook]),
                conn_limit: RefCell::new(conn_limit),
                metrics,
            }
        })
    }

    /// Reload: the `ratelimit` section's new quotas, caps and switches apply at once to
    /// every connection; buckets keep their state (see `crate::ratelimit`).
    fn reload_ratelimit(&self, cfg: &Config) {
        let now = clock::now();
        self.broker
            .borrow_mut()
            .ratelimit
            .configure(&cfg.ratelimit, now);
        self.conn_limit.borrow_mut().configure(&cfg.ratelimit, now);
        log::info!(
            "reload: rate limits {}",
            if cfg.ratelimit.enabled {
                "applied"
            } else {
                "off"
            }
        );
    }
}

impl Shared {
    /// The connection rate limit (`ratelimit.connection`), checked by **every accept loop**
    /// right after `accept`, before TLS, before the connection counts against
    /// `max_connections` and before anything is read or written, and by CoAP for every
    /// request datagram: `if shared.admit(peer, Protocol::Mqtt).is_err() { continue; }`
    /// (dropping the stream closes it). WebSocket answers a refusal with HTTP 429, CoAP with
    /// 4.29; both take the retry time from the [`Refusal`]. Counted and logged inside.
    pub fn admit(&self, peer: SocketAddr, protocol: Protocol) -> Result<(), Refusal> {
        self.conn_limit
            .borrow_mut()
            .allow_connection(peer.ip(), protocol, clock::now())
    }

    /// Wake every connection whose deadline passed, and expire idle rate-limit entries.
    /// Called once a second by the server's housekeeping task: timeouts (keep-alive,
    /// CONNECT, write, v3 retry) have one-second granularity, and an idle connection costs
    /// no timer.
    pub fn sweep(&self, now: std::time::Instant) {
        self.conn_limit.borrow_mut().tick(now);
        for (_, s) in self.conns.borrow().iter() {
            s.wake_if_due(now);
        }
    }
}

/// An I/O error raised by a transport that knows why the connection ends (a WebSocket
/// protocol violation, an oversize frame): the driver counts this reason instead of
/// `io_error`.
#[derive(Debug)]
pub struct Refused {
    pub reason: CloseReason,
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Refused {}

impl Refused {
    pub fn io(reason: CloseReason, why: impl Into<String>) -> std::io::Error {
        std::io::Error::other(Refused {
            reason,
            why: why.into(),
        })
    }
}

/// The close reason an I/O error stands for: a transport's [`Refused`] reason, else
/// `io_error`.
pub fn close_reason(e: &std::io::Error) -> CloseReason {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
        .map_or(CloseReason::IoError, |r| r.reason)
}

/// What the accept loop of a TCP listener slot needs of it.
pub struct Gate<'a> {
    /// Config key of the slot, for logs.
    pub name: &'a str,
    /// For the per-IP connection rate limit's metrics.
    pub protocol: Protocol,
    /// 0 = unlimited.
    pub max_connections: usize,
    /// Open (and handshaking) connections of the slot.
    pub active: &'a Cell<usize>,
}

/// The one accept loop of every TCP listener (MQTT, TLS, WebSocket, HTTP): accept until
/// shutdown; the per-IP connection rate limit first (before `max_connections` and before
/// anything is read or written, so before any TLS handshake: a refused connection goes to
/// `limited`, already counted and logged), then the slot's `max_connections` (counted,
/// closed), then `TCP_NODELAY` and `serve`, which spawns the connection's task.
pub async fn accept_until_shutdown(
    shared: &Shared,
    listener: &Async<TcpListener>,
    gate: Gate<'_>,
    mut serve: impl FnMut(Async<TcpStream>, SocketAddr),
    mut limited: impl FnMut(Async<TcpStream>, SocketAddr, Refusal),
) {
    let name = gate.name;
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
                log::warn!("{name}: accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(refusal) = shared.admit(peer, gate.protocol) {
            limited(stream, peer, refusal);
            continue;
        }
        if gate.max_connections > 0 && gate.active.get() >= gate.max_connections {
            shared.metrics.closed(CloseReason::ListenerFull);
            log::warn!(
                "{name}: connection from {peer} refused: max_connections ({}) reached",
                gate.max_connections
            );
            continue; // dropping the stream closes it before anything is answered
        }
        if let Err(e) = stream.get_ref().set_nodelay(true) {
            log::debug!("{name}: TCP_NODELAY on {peer}: {e}");
        }
        shared.metrics.add(Counter::ConnectionsAccepted, 1);
        serve(stream, peer);
    }
    log::debug!("{name}: accept loop stopped");
}
