//! The lean gRPC client: tonic-generated clients (prost messages, codegen only: no tokio
//! runtime, no tonic transport) over one hyper HTTP/2 connection per upstream, driven on the
//! broker's `smol::LocalExecutor`.
//!
//! Owns: the connection to one upstream ([`Channel`]: lazy connect, one dial shared by every
//! caller waiting for it, redial with capped exponential backoff after a failed dial, a new
//! dial when the connection drops), the local deadline of a call ([`deadline`]: a smol timer
//! raced against the call, because the `grpc-timeout` header alone is enforced by nobody on
//! this side), and the generated message and client types ([`pb`]). Does not own what the
//! RPCs mean (src/auth/).
//!
//! Pitfalls this module is shaped by (rust-stack.md §1): the generated clients need an origin
//! (`with_origin`), and hyper's `Incoming` body is not `Default`, so metadata is put on each
//! request rather than through tonic interceptors.

pub mod dial;

#[cfg(feature = "auth-grpc")]
pub use channel::*;

/// Generated code: messages and clients of proto/atom/v1 and proto/auth/v1 (build.rs).
#[cfg(feature = "auth-grpc")]
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    /// `atom.v1` (Atom).
    pub mod atom {
        include!(concat!(env!("OUT_DIR"), "/client/atom.v1.rs"));
    }
    /// `fluxmq.auth.v1` (the legacy callout).
    pub mod callout {
        include!(concat!(env!("OUT_DIR"), "/client/fluxmq.auth.v1.rs"));
    }
}

#[cfg(feature = "auth-grpc")]
mod channel {
    use std::cell::RefCell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::{Rc, Weak};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use hyper::client::conn::http2;
    use smol::LocalExecutor;
    use smol_hyper::rt::{FuturesIo, SmolTimer};
    use tonic::Status;

    use super::dial::Endpoint;
    use crate::clock;

    /// Largest response message accepted from an upstream (auth answers are tiny).
    pub const MAX_RESPONSE: usize = 64 * 1024;

    /// First redial delay after a failed dial; doubled per failure up to [`BACKOFF_MAX`].
    pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

    /// Runs hyper's connection tasks on the broker's executor (no `Send` needed). Weak:
    /// the connection task holds this, and the executor holds the task, so a strong
    /// reference would keep an executor that its owner dropped (tests) alive forever.
    #[derive(Clone)]
    pub struct LocalExec(pub Weak<LocalExecutor<'static>>);

    impl<F> hyper::rt::Executor<F> for LocalExec
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        fn execute(&self, fut: F) {
            if let Some(ex) = self.0.upgrade() {
                ex.spawn(fut).detach();
            }
        }
    }

    /// A ready HTTP/2 connection as the tower service tonic's generated clients call.
    #[derive(Clone)]
    pub struct H2Service {
        tx: http2::SendRequest<tonic::body::Body>,
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for H2Service {
        type Response = http::Response<hyper::body::Incoming>;
        type Error = hyper::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>>>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
            self.tx.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(self.tx.send_request(req))
        }
    }

    /// One upstream: at most one HTTP/2 connection, dialled when first needed.
    #[derive(Clone)]
    pub struct Channel {
        inner: Rc<Inner>,
    }

    struct Inner {
        /// For logs: `atom`, `callout`.
        name: &'static str,
        endpoint: Endpoint,
        origin: http::Uri,
        ex: Rc<LocalExecutor<'static>>,
        /// Bounds one dial (TCP + TLS + HTTP/2 handshake).
        dial_timeout: Duration,
        state: RefCell<State>,
        /// Notified when a dial ends (either way).
        dialed: event_listener::Event,
    }

    #[derive(Default)]
    struct State {
        conn: Option<http2::SendRequest<tonic::body::Body>>,
        dialing: bool,
        /// Failed dials in a row (reset by a successful one).
        failures: u32,
        /// No dial before this (backoff after a failure); callers fail fast meanwhile.
        retry_at: Option<Instant>,
        last_error: String,
        dials: u64,
    }

    /// The delay before the next dial after `failures` failed ones: exponential from
    /// [`BACKOFF_BASE`], capped at [`BACKOFF_MAX`], minus up to 20 % jitter (so that gateways
    /// that lost the same upstream do not redial in lockstep).
    pub fn redial_delay(failures: u32) -> Duration {
        let exp = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
        let d = exp.min(BACKOFF_MAX);
        d - d.mul_f64(fastrand::f64() * 0.2)
    }

    impl Channel {
        pub fn new(
            name: &'static str,
            endpoint: Endpoint,
            ex: Rc<LocalExecutor<'static>>,
            dial_timeout: Duration,
        ) -> Result<Channel, String> {
            let origin = endpoint
                .origin()
                .parse()
                .map_err(|e| format!("{endpoint:?}: {e}"))?;
            Ok(Channel {
                inner: Rc::new(Inner {
                    name,
                    endpoint,
                    origin,
                    ex,
                    dial_timeout,
                    state: RefCell::new(State::default()),
                    dialed: event_listener::Event::new(),
                }),
            })
        }

        /// The origin URI for the generated clients' `with_origin`.
        pub fn origin(&self) -> http::Uri {
            self.inner.origin.clone()
        }

        /// How many dials were started (tests, logs).
        pub fn dials(&self) -> u64 {
            self.inner.state.borrow().dials
        }

        /// A live connection: the current one, or the result of the dial in progress, or of
        /// a new dial. While backing off after a failed dial, fails at once (`Unavailable`)
        /// instead of queueing callers behind a dead upstream.
        pub async fn ready(&self) -> Result<H2Service, Status> {
            loop {
                let listener = {
                    let mut st = self.inner.state.borrow_mut();
                    if let Some(tx) = &st.conn {
                        if !tx.is_closed() {
                            return Ok(H2Service { tx: tx.clone() });
                        }
                        log::warn!(
                            "auth {}: connection to {:?} closed; redialling",
                            self.inner.name,
                            self.inner.endpoint
                        );
                        st.conn = None;
                    }
                    if !st.dialing {
                        if let Some(at) = st.retry_at
                            && clock::now() < at
                        {
                            return Err(Status::unavailable(format!(
                                "{} unreachable ({}); next dial in {} ms",
                                self.inner.name,
                                st.last_error,
                                at.saturating_duration_since(clock::now()).as_millis()
                            )));
                        }
                        st.dialing = true;
                        st.dials += 1;
                        // The dial runs as its own task: it completes (and records its
                        // outcome) even if every caller waiting for it gives up.
                        self.inner.ex.spawn(dial(self.inner.clone())).detach();
                    }
                    self.inner.dialed.listen()
                };
                listener.await;
                let st = self.inner.state.borrow();
                if st.conn.is_none() && !st.dialing {
                    return Err(Status::unavailable(format!(
                        "{} unreachable: {}",
                        self.inner.name, st.last_error
                    )));
                }
            }
        }
    }

    async fn dial(inner: Rc<Inner>) {
        let attempt = async {
            let stream = inner.endpoint.connect().await?;
            let (tx, conn) = http2::Builder::new(LocalExec(Rc::downgrade(&inner.ex)))
                .timer(SmolTimer::new())
                // Pings while idle too: calls are short (auth.timeout), so pings only while
                // a stream is open would never notice an uplink that silently died (a NAT
                // dropping the flow); this way a dead connection is closed within 30 s and
                // the next call redials.
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .initial_stream_window_size(64 * 1024)
                .initial_connection_window_size(256 * 1024)
                .max_frame_size(16 * 1024)
                .max_header_list_size(16 * 1024)
                .max_send_buf_size(64 * 1024)
                .handshake::<_, tonic::body::Body>(FuturesIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            let (name, ep) = (inner.name, format!("{:?}", inner.endpoint));
            inner
                .ex
                .spawn(async move {
                    if let Err(e) = conn.await {
                        log::warn!("auth {name}: connection to {ep} ended: {e}");
                    }
                })
                .detach();
            Ok::<_, String>(tx)
        };
        let timeout = inner.dial_timeout;
        let result = smol::future::or(attempt, async {
            smol::Timer::after(timeout).await;
            Err(format!("no connection within {timeout:?}"))
        })
        .await;
        {
            let mut st = inner.state.borrow_mut();
            st.dialing = false;
            match result {
                Ok(tx) => {
                    if st.failures > 0 {
                        log::info!(
                            "auth {}: connected to {:?} again",
                            inner.name,
                            inner.endpoint
                        );
                    }
                    st.conn = Some(tx);
                    st.failures = 0;
                    st.retry_at = None;
                }
                Err(e) => {
                    st.failures += 1;
                    let delay = redial_delay(st.failures);
                    log::warn!(
                        "auth {}: {:?}: {e} (failure {} in a row; next dial in {} ms)",
                        inner.name,
                        inner.endpoint,
                        st.failures,
                        delay.as_millis()
                    );
                    st.retry_at = Some(clock::now() + delay);
                    st.last_error = e;
                }
            }
        }
        inner.dialed.notify(usize::MAX);
    }

    /// Why a call ended without an answer from the upstream's application.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum CallError {
        /// No answer within the local deadline.
        Timeout,
        /// A gRPC status (from the upstream, or `Unavailable` for a connection failure).
        Status(tonic::Code, String),
    }

    impl std::fmt::Display for CallError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                CallError::Timeout => f.write_str("timed out"),
                CallError::Status(code, msg) => write!(f, "{code:?}: {msg}"),
            }
        }
    }

    impl From<Status> for CallError {
        fn from(s: Status) -> Self {
            CallError::Status(s.code(), s.message().to_owned())
        }
    }

    /// Runs `call` with a local deadline of `d` (a smol timer): the only deadline that holds
    /// whatever the upstream does. The request should also carry `grpc-timeout` (tonic's
    /// `Request::set_timeout`) so that the upstream can give up too.
    pub async fn deadline<T>(
        d: Duration,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        smol::future::or(call, async {
            smol::Timer::after(d).await;
            Err(CallError::Timeout)
        })
        .await
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn redial_delay_grows_capped_and_jittered() {
            for _ in 0..50 {
                let d1 = redial_delay(1);
                assert!(
                    d1 <= BACKOFF_BASE && d1 >= BACKOFF_BASE.mul_f64(0.8),
                    "{d1:?}"
                );
                let d3 = redial_delay(3);
                assert!(d3 <= BACKOFF_BASE * 4 && d3 >= (BACKOFF_BASE * 4).mul_f64(0.8));
                let d = redial_delay(40);
                assert!(d <= BACKOFF_MAX && d >= BACKOFF_MAX.mul_f64(0.8), "{d:?}");
            }
        }
    }
}
