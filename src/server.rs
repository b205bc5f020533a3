//! Start-up and shutdown: turns a validated `Config` into a running broker on one
//! `smol::LocalExecutor` (listeners, housekeeping tick, signal handling), and stops it
//! cleanly: listeners close, clients get DISCONNECT 0x8B, wills are published, and the
//! process exits within `server.shutdown_timeout`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{StreamExt, future};
use smol::{LocalExecutor, Timer};

use crate::broker::session::QueueLimits;
use crate::broker::{Broker, Limits};
use crate::clock;
use crate::config::{Config, OfflineQueuePolicy};
#[cfg(feature = "coap")]
use crate::listener::coap;
#[cfg(feature = "http")]
use crate::listener::http;
use crate::listener::{self, Shared, mqtt, tls, ws};
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

/// What the embedding thread (or a signal) asks of a running broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Shut down as on SIGTERM.
    Stop,
    /// Re-read the configuration files and apply what can change live, as on SIGHUP.
    Reload,
}

/// A broker running on its own thread (tests, embedding). Dropping it stops the broker.
pub struct Running {
    /// Bound address of every listener, by config key (`server.tcp.v3`, `server.health_addr`).
    pub addrs: BTreeMap<String, SocketAddr>,
    stop: smol::channel::Sender<Control>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs[key]
    }

    /// Reload as on SIGHUP (re-read the configuration files given to [`spawn_from`], then
    /// every reload hook). Returns once the request is queued; the reload itself runs on
    /// the broker thread (wait for its effect, e.g. the `reloads` metric).
    pub fn reload(&self) {
        let _ = self.stop.try_send(Control::Reload);
    }

    /// Shut down as on SIGTERM and wait for the thread.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let _ = self.stop.try_send(Control::Stop);
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

/// Start the broker on a new thread; returns once every listener is bound. A reload
/// re-applies `cfg` itself (certificates are still re-read from disk).
pub fn spawn(cfg: Config) -> Result<Running, String> {
    spawn_with(cfg, Vec::new())
}

/// Start the broker from configuration files (as the binary does); a reload re-reads them.
pub fn spawn_from(paths: &[PathBuf]) -> Result<Running, String> {
    let cfg = crate::config::load(paths).map_err(|e| e.to_string())?;
    spawn_with(cfg, paths.to_vec())
}

fn spawn_with(cfg: Config, sources: Vec<PathBuf>) -> Result<Running, String> {
    let (stop_tx, stop_rx) = smol::channel::bounded(4);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fluxmq-edge".into())
        .spawn(move || run_with(cfg, sources, Some(stop_rx), ready_tx, false))
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

/// Run on the current thread until SIGTERM/SIGINT (the binary's entry point); SIGHUP
/// re-reads `sources` (the `--config` files; none = the embedded default) and reloads.
pub fn run(cfg: Config, sources: Vec<PathBuf>) -> Result<(), String> {
    let (ready_tx, _ready_rx) = std::sync::mpsc::channel();
    run_with(cfg, sources, None, ready_tx, true)
}

fn run_with(
    cfg: Config,
    sources: Vec<PathBuf>,
    stop: Option<smol::channel::Receiver<Control>>,
    ready: std::sync::mpsc::Sender<BTreeMap<String, SocketAddr>>,
    signals: bool,
) -> Result<(), String> {
    let ex = Rc::new(LocalExecutor::new());
    // `smol::block_on` drives the async-io reactor on this thread while idle (the
    // futures-lite one would leave it to the helper thread: a wake-up hop per event).
    smol::block_on(ex.run(serve(ex.clone(), cfg, sources, stop, ready, signals)))
}

async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    cfg: Config,
    sources: Vec<PathBuf>,
    stop: Option<smol::channel::Receiver<Control>>,
    ready: std::sync::mpsc::Sender<BTreeMap<String, SocketAddr>>,
    signals: bool,
) -> Result<(), String> {
    let metrics = Rc::new(Metrics::default());
    let mut broker = Broker::new(Limits::from_config(&cfg), metrics.clone());
    broker.auth = crate::auth::from_config(&cfg, ex.clone(), metrics.clone())?;
    let auth = broker.auth.provider().cloned();
    let shared = Shared::new(broker, metrics, Rc::new(cfg.clone()));
    if let Some(p) = auth {
        shared
            .reload_hooks
            .borrow_mut()
            .push(Box::new(move |cfg: &Config| p.reload(cfg)));
    }
    let mut addrs = BTreeMap::new();
    // Bind everything first, so that a bad address fails start-up before anything serves.
    let mut mqtt_listeners = Vec::new();
    let mut ws_listeners = Vec::new();
    let (tcp, websocket) = (&cfg.server.tcp, &cfg.server.websocket);
    for (name, slot, secure, is_ws) in [
        ("server.tcp.v3", &tcp.v3, false, false),
        ("server.tcp.v5", &tcp.v5, false, false),
        ("server.tcp.tls", &tcp.tls, true, false),
        ("server.tcp.mtls", &tcp.mtls, true, false),
        ("server.websocket.v3", &websocket.v3, false, true),
        ("server.websocket.v5", &websocket.v5, false, true),
        ("server.websocket.tls", &websocket.tls, true, true),
        ("server.websocket.mtls", &websocket.mtls, true, true),
    ] {
        if slot.addr.is_empty() {
            continue;
        }
        // `protocol` is normalised when loaded: v3, v5 or auto (the tls/mtls default).
        let accept = match slot.protocol.as_str() {
            "v3" => Accept::V3,
            "v5" => Accept::V5,
            _ => Accept::Auto,
        };
        let tls = if secure {
            let acceptor = tls::Acceptor::new(name, slot, shared.metrics.clone())?;
            acceptor.register_reload(&shared, &ex);
            Some(acceptor)
        } else {
            None
        };
        let l = mqtt::bind(name, &slot.addr)?;
        let local = l
            .get_ref()
            .local_addr()
            .map_err(|e| format!("{name}.addr: {e}"))?;
        log::info!("{name}: MQTT listening on {local}");
        if is_ws {
            let scheme = if secure { "wss" } else { "ws" };
            log::info!(
                "{name}: WebSocket upgrade at {scheme}://{local}{}",
                slot.path
            );
        }
        if secure {
            log::info!(
                "{name}: TLS, client_auth {:?}, protocol {}",
                slot.client_auth_mode()
                    .unwrap_or(crate::config::ClientAuth::None),
                slot.protocol
            );
        }
        addrs.insert(name.to_string(), local);
        let spec = mqtt::Spec {
            name: name.to_string(),
            accept,
            max_connections: slot.max_connections as usize,
            read_timeout: slot.read_timeout,
            write_timeout: slot.write_timeout,
            active: Default::default(),
            tls,
            use_identity_as_username: slot.use_identity_as_username,
        };
        if is_ws {
            let spec = ws::Spec {
                mqtt: Rc::new(spec),
                path: slot.path.clone(),
                allowed_origins: slot.allowed_origins.clone(),
            };
            ws_listeners.push((l, Rc::new(spec)));
        } else {
            mqtt_listeners.push((l, Rc::new(spec)));
        }
    }
    #[cfg(feature = "http")]
    let http_listeners = bind_http(&cfg, &shared, &ex, &mut addrs)?;
    #[cfg(feature = "coap")]
    let coap_listeners = bind_coap(&cfg, &mut addrs)?;
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
    for (l, spec) in ws_listeners {
        tasks.push(ex.spawn(ws::accept_loop(ex.clone(), shared.clone(), l, spec)));
    }
    #[cfg(feature = "http")]
    for (l, spec) in http_listeners {
        tasks.push(ex.spawn(http::accept_loop(ex.clone(), shared.clone(), l, spec)));
    }
    #[cfg(feature = "coap")]
    for (s, spec) in coap_listeners {
        tasks.push(ex.spawn(coap::serve(ex.clone(), shared.clone(), s, spec)));
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

    // Serve until a stop request: a signal (binary) or the handle (embedded). SIGHUP and
    // `Running::reload` reload in between.
    let mut signals = if signals {
        match async_signal::Signals::new([
            async_signal::Signal::Term,
            async_signal::Signal::Int,
            async_signal::Signal::Hup,
        ]) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot install signal handlers: {e}");
                None
            }
        }
    } else {
        None
    };
    let why = loop {
        let by_signal = async {
            match signals.as_mut() {
                Some(s) => match s.next().await {
                    Some(Ok(async_signal::Signal::Hup)) => ("SIGHUP", Control::Reload),
                    Some(Ok(async_signal::Signal::Int)) => ("SIGINT", Control::Stop),
                    _ => ("SIGTERM", Control::Stop),
                },
                None => future::pending().await,
            }
        };
        let by_handle = async {
            match &stop {
                Some(rx) => match rx.recv().await {
                    Ok(Control::Reload) => ("reload request", Control::Reload),
                    Ok(Control::Stop) | Err(_) => ("stop request", Control::Stop),
                },
                None => future::pending().await,
            }
        };
        match future::or(by_signal, by_handle).await {
            (why, Control::Reload) => reload(&shared, &sources, why),
            (why, Control::Stop) => break why,
        }
    };
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

/// Bind the HTTP bridge slots (`server.http.*`), with their TLS layer.
#[cfg(feature = "http")]
type HttpListeners = Vec<(smol::Async<std::net::TcpListener>, Rc<http::Spec>)>;

#[cfg(feature = "http")]
fn bind_http(
    cfg: &Config,
    shared: &Rc<Shared>,
    ex: &Rc<LocalExecutor<'static>>,
    addrs: &mut BTreeMap<String, SocketAddr>,
) -> Result<HttpListeners, String> {
    let mut http_listeners = Vec::new();
    let http_slots = &cfg.server.http;
    for (name, slot, secure) in [
        ("server.http.plain", &http_slots.plain, false),
        ("server.http.tls", &http_slots.tls, true),
        ("server.http.mtls", &http_slots.mtls, true),
    ] {
        if slot.addr.is_empty() {
            continue;
        }
        let tls = if secure {
            let acceptor = tls::Acceptor::new(name, slot, shared.metrics.clone())?;
            acceptor.register_reload(shared, ex);
            Some(acceptor)
        } else {
            None
        };
        let l = mqtt::bind(name, &slot.addr)?;
        let local = l
            .get_ref()
            .local_addr()
            .map_err(|e| format!("{name}.addr: {e}"))?;
        let scheme = if secure { "https" } else { "http" };
        log::info!("{name}: HTTP publish bridge on {scheme}://{local}");
        addrs.insert(name.to_string(), local);
        let spec = http::Spec {
            name: name.to_string(),
            max_connections: slot.max_connections as usize,
            read_timeout: slot.read_timeout,
            active: Default::default(),
            tls,
        };
        http_listeners.push((l, Rc::new(spec)));
    }
    Ok(http_listeners)
}

/// Bind the CoAP bridge slot (`server.coap.plain`).
#[cfg(feature = "coap")]
type CoapListeners = Vec<(smol::Async<std::net::UdpSocket>, Rc<coap::Spec>)>;

#[cfg(feature = "coap")]
fn bind_coap(
    cfg: &Config,
    addrs: &mut BTreeMap<String, SocketAddr>,
) -> Result<CoapListeners, String> {
    let mut coap_listeners = Vec::new();
    for (name, slot) in [("server.coap.plain", &cfg.server.coap.plain)] {
        if slot.addr.is_empty() {
            continue;
        }
        let s = coap::bind(name, &slot.addr)?;
        let local = s
            .get_ref()
            .local_addr()
            .map_err(|e| format!("{name}.addr: {e}"))?;
        log::info!("{name}: CoAP bridge on coap://{local}");
        addrs.insert(name.to_string(), local);
        let limits = crate::protocol::coap::Limits {
            max_message_size: cfg.broker.max_message_size as usize,
            // Exchanges remembered: max_connections (0 = the default, never unbounded).
            max_exchanges: match slot.max_connections {
                0 => 10_000,
                n => n as usize,
            },
            max_observers: cfg.broker.coap_max_observers as usize,
            max_observers_per_peer: cfg.broker.coap_max_observers_per_client as usize,
        };
        let spec = coap::Spec {
            name: name.to_string(),
            limits,
        };
        coap_listeners.push((s, Rc::new(spec)));
    }
    Ok(coap_listeners)
}

/// SIGHUP: re-read the configuration (the current one when it came from no file), then run
/// every reload hook with it. A configuration that does not load changes nothing.
fn reload(shared: &Shared, sources: &[PathBuf], why: &str) {
    let cfg = if sources.is_empty() {
        shared.config.borrow().clone()
    } else {
        match crate::config::load(sources) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                log::error!("{why}: configuration not reloaded, nothing changed: {e}");
                return;
            }
        }
    };
    log::info!("{why}: reloading");
    *shared.config.borrow_mut() = cfg.clone();
    for hook in shared.reload_hooks.borrow().iter() {
        hook(&cfg);
    }
    shared.metrics.add(crate::metrics::Counter::Reloads, 1);
}
