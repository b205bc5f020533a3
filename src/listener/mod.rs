//! The I/O edge: accept loops with their caps, the per-connection drivers that move bytes
//! between sockets and the sans-IO protocol state machines, and the health/metrics HTTP
//! endpoint. This is the only layer (with `main`) that awaits.

pub mod health;
pub mod http;
pub mod mqtt;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::broker::Broker;
use crate::broker::session::Signal;
use crate::config::Config;
use crate::metrics::Metrics;

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
}

/// A subsystem's reaction to a reload; it logs (and keeps its old state) when what it
/// re-reads is bad.
pub type ReloadHook = Box<dyn Fn(&Config)>;

/// Size of the shared read buffer: large enough to drain a busy socket in one syscall.
pub const READ_BUF: usize = 64 * 1024;

impl Shared {
    pub fn new(broker: Broker, metrics: Rc<Metrics>, config: Rc<Config>) -> Rc<Shared> {
        Rc::new(Shared {
            broker: RefCell::new(broker),
            metrics,
            read_buf: RefCell::new(vec![0; READ_BUF].into_boxed_slice()),
            conns: RefCell::new(slab::Slab::new()),
            shutting_down: Cell::new(false),
            shutdown: event_listener::Event::new(),
            config: RefCell::new(config),
            reload_hooks: RefCell::new(Vec::new()),
        })
    }
}

impl Shared {
    /// Wake every connection whose deadline passed. Called once a second by the server's
    /// housekeeping task: timeouts (keep-alive, CONNECT, write, v3 retry) have one-second
    /// granularity, and an idle connection costs no timer.
    pub fn sweep(&self, now: std::time::Instant) {
        for (_, s) in self.conns.borrow().iter() {
            s.wake_if_due(now);
        }
    }
}
