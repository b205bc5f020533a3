//! The I/O edge: accept loops with their caps, the per-connection drivers that move bytes
//! between sockets and the sans-IO protocol state machines, and the health/metrics HTTP
//! endpoint. This is the only layer (with `main`) that awaits.

pub mod health;
pub mod mqtt;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::broker::Broker;
use crate::broker::session::Signal;
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
}

/// Size of the shared read buffer: large enough to drain a busy socket in one syscall.
pub const READ_BUF: usize = 64 * 1024;

impl Shared {
    pub fn new(broker: Broker, metrics: Rc<Metrics>) -> Rc<Shared> {
        Rc::new(Shared {
            broker: RefCell::new(broker),
            metrics,
            read_buf: RefCell::new(vec![0; READ_BUF].into_boxed_slice()),
            conns: RefCell::new(slab::Slab::new()),
            shutting_down: Cell::new(false),
            shutdown: event_listener::Event::new(),
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
