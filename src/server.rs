//! Start-up and shutdown: turns a validated `Config` into a running broker on one
//! `smol::LocalExecutor` (listeners, housekeeping tick, signal handling), and stops it
//! cleanly: listeners close, clients get DISCONNECT 0x8B, wills are published, and the
//! process exits within `server.shutdown_timeout`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{StreamExt, future};
use smol::{LocalExecutor, Timer};

use crate::broker::session::QueueLimits;
use crate::broker::{Broker, Limits};
use crate::clock;
use crate::config::{Config, OfflineQueuePolicy};
use crate::listener::{self, Shared, mqtt};
use crate::metrics::Metrics;
use crate::protocol::mqtt::QoS;
use crate::protocol::mqtt::ReasonCode;
use crate::protocol::mqtt::conn::Accept;

impl Limits {
    pub fn from_config(cfg: &Config) -> Limits {
        let b = &cfg.broker;
        let s = &cfg.session;
        let offline = s.max_offline_queue_size as usize;
        Limits {
            max_sessions: s.max_sessions as usize,
            max_subscriptions: s.max_subscriptions as usize,
            queue: QueueLimits {
                online_msgs: if s.max_send_queue_size > 0 {
                    s.max_send_queue_size as usize
                } else {
                    offline
                },
                offline_msgs: offline,
                bytes: if s.max_queue_bytes == 0 {
                    usize::MAX
                } else {
                    s.max_queue_bytes as usize
                },
                evict_offline: s.offline_queue_policy == OfflineQueuePolicy::Evict,
            },
            max_inflight: u16::try_from(s.max_inflight_messages).unwrap_or(u16::MAX),
            max_retained: b.max_retained_messages as usize,
            max_retained_bytes: if b.max_retained_bytes == 0 {
                usize::MAX
            } else {
                b.max_retained_bytes as usize
            },
            default_expiry: s.default_expiry_interval,
            max_qos: QoS::from_u8(b.max_qos).unwrap_or(QoS::ExactlyOnce),
            max_message_size: b.max_message_size as usize,
            retry_interval: b.retry_interval,
            max_retries: b.max_retries,
            max_keep_alive: b.max_keep_alive,
            topic_alias_maximum: b.topic_alias_maximum,
            disconnect_on_full: s.disconnect_on_full,
            slow_consumer_grace: crate::broker::SLOW_CONSUMER_GRACE,
        }
    }
}

/// A broker running on its own thread (tests, embedding). Dropping it stops the broker.
pub struct Running {
    /// Bound address of every listener, by config key (`server.tcp.v3`, `server.health_addr`).
    pub addrs: BTreeMap<String, SocketAddr>,
    stop: smol::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs[key]
    }

    /// Shut down as on SIGTERM and wait for the thread.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let _ = self.stop.try_send(());
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "broker thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Start the broker on a new thread; returns once every listener is bound.
pub fn spawn(cfg: Config) -> Result<Running, String> {
    let (stop_tx, stop_rx) = smol::channel::bounded(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fluxmq-edge".into())
        .spawn(move || run_with(cfg, Some(stop_rx), ready_tx, false))
        .map_err(|e| e.to_string())?;
    match ready_rx.recv() {
        Ok(addrs) => Ok(Running {
            addrs,
            stop: stop_tx,
            thread: Some(thread),
        }),
        Err(_) => Err(thread
            .join()
            .map_err(|_| "broker thread panicked".to_string())?
            .err()
            .unwrap_or_else(|| "broker stopped".into())),
    }
}

/// Run on the current thread until SIGTERM/SIGINT (the binary's entry point).
pub fn run(cfg: Config) -> Result<(), String> {
    let (ready_tx, _ready_rx) = std::sync::mpsc::channel();
    run_with(cfg, None, ready_tx, true)
}

fn run_with(
    cfg: Config,
    stop: Option<smol::channel::Receiver<()>>,
    ready: std::sync::mpsc::Sender<BTreeMap<String, SocketAddr>>,
    signals: bool,
) -> Result<(), String> {
    let ex = Rc::new(LocalExecutor::new());
    // `smol::block_on` drives the async-io reactor on this thread while idle (the
    // futures-lite one would leave it to the helper thread: a wake-up hop per event).
    smol::block_on(ex.run(serve(ex.clone(), cfg, stop, ready, signals)))
}

async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    cfg: Config,
    stop: Option<smol::channel::Receiver<()>>,
    ready: std::sync::mpsc::Sender<BTreeMap<String, SocketAddr>>,
    signals: bool,
) -> Result<(), String> {
    let metrics = Rc::new(Metrics::default());
    let broker = Broker::new(Limits::from_config(&cfg), metrics.clone());
    let shared = Shared::new(broker, metrics);
    let mut addrs = BTreeMap::new();
    // Bind everything first, so that a bad address fails start-up before anything serves.
    let mut mqtt_listeners = Vec::new();
    for (name, slot, accept) in [
        ("server.tcp.v3", &cfg.server.tcp.v3, Accept::V3),
        ("server.tcp.v5", &cfg.server.tcp.v5, Accept::V5),
    ] {
        if slot.addr.is_empty() {
            continue;
        }
        let l = mqtt::bind(name, &slot.addr)?;
        let local = l
            .get_ref()
            .local_addr()
            .map_err(|e| format!("{name}.addr: {e}"))?;
        log::info!("{name}: MQTT listening on {local}");
        addrs.insert(name.to_string(), local);
        let spec = mqtt::Spec {
            name: name.to_string(),
            accept,
            max_connections: slot.max_connections as usize,
            read_timeout: slot.read_timeout,
            write_timeout: slot.write_timeout,
            active: Default::default(),
        };
        mqtt_listeners.push((l, Rc::new(spec)));
    }
    let health = if cfg.server.health_enabled && !cfg.server.health_addr.is_empty() {
        let l = mqtt::bind("server.health_addr", &cfg.server.health_addr)?;
        let local = l
            .get_ref()
            .local_addr()
            .map_err(|e| format!("server.health_addr: {e}"))?;
        log::info!("server.health_addr: health and metrics on http://{local}");
        addrs.insert("server.health_addr".to_string(), local);
        Some(l)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for (l, spec) in mqtt_listeners {
        tasks.push(ex.spawn(mqtt::accept_loop(ex.clone(), shared.clone(), l, spec)));
    }
    if let Some(l) = health {
        tasks.push(ex.spawn(listener::health::serve(ex.clone(), shared.clone(), l)));
    }
    let tick_shared = shared.clone();
    let housekeeping = ex.spawn(async move {
        loop {
            Timer::after(Duration::from_secs(1)).await;
            let now = clock::now();
            tick_shared.broker.borrow_mut().tick(now);
            tick_shared.sweep(now);
        }
    });
    let _ = ready.send(addrs);

    // Wait for a stop request: a signal (binary) or the handle (embedded).
    let by_signal = async {
        if !signals {
            return future::pending::<&'static str>().await;
        }
        match async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int]) {
            Ok(mut s) => match s.next().await {
                Some(Ok(async_signal::Signal::Int)) => "SIGINT",
                _ => "SIGTERM",
            },
            Err(e) => {
                log::warn!("cannot install signal handlers: {e}");
                future::pending().await
            }
        }
    };
    let by_handle = async {
        match &stop {
            Some(rx) => {
                let _ = rx.recv().await;
                "stop request"
            }
            None => future::pending().await,
        }
    };
    let why = future::or(by_signal, by_handle).await;
    log::info!(
        "{why}: shutting down (at most {:?})",
        cfg.server.shutdown_timeout
    );

    shared.shutting_down.set(true);
    shared.shutdown.notify(usize::MAX);
    drop(housekeeping);
    shared
        .broker
        .borrow_mut()
        .kick_all(ReasonCode::ServerShuttingDown);
    let deadline = Timer::after(cfg.server.shutdown_timeout);
    let drained = async {
        while shared.metrics.connections.get() > 0 {
            Timer::after(Duration::from_millis(10)).await;
        }
        true
    };
    let clean = future::or(drained, async {
        deadline.await;
        false
    })
    .await;
    shared
        .broker
        .borrow_mut()
        .publish_pending_wills(clock::now());
    if !clean {
        log::warn!(
            "shutdown_timeout passed with {} connection(s) still open",
            shared.metrics.connections.get()
        );
    }
    for t in tasks {
        drop(t);
    }
    log::info!("stopped");
    Ok(())
}
