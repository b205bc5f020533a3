//! The legacy callout provider (spec §2.6): `AuthService.Authenticate` / `Authorize` of
//! `fluxmq.auth.v1` over gRPC (`auth.transport: grpc`, HTTP/2 through src/grpc/; h2c for
//! an `http://` URL, TLS for `https://`), or JSON `POST {url}/auth/authenticate` and
//! `POST {url}/auth/authorize` over HTTP/1.1 (`transport: http`, a small keep-alive pool).
//!
//! Owns: the requests and their protocol tagging, the resilience of FluxMQ's callout (one
//! retry after a jittered backoff, a circuit breaker shared by every protocol: 5
//! consecutive failures open it for 10 s, then 3 probes are admitted; a "no" is not a
//! failure), and the counting of outcomes. No caching (FluxMQ caches nothing here either).
//! Fails closed: an error, a timeout or an open breaker rejects or denies.
//!
//! Time: the breaker runs on the `now` the caller passes, advanced by the time the call
//! has taken, so tests drive it with a manual clock.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use serde::{Deserialize, Serialize};
use smol::LocalExecutor;
use smol_hyper::rt::FuturesIo;

use super::{Action, Answer, Authn, Credentials, LogLimit, Protocol, Provider, Secret};
use crate::clock;
use crate::config;
use crate::grpc::dial::{self, Endpoint, TlsFiles};
use crate::metrics::{AuthProvider, AuthResult, AuthRpc, Metrics};

const P: AuthProvider = AuthProvider::Callout;

/// Attempts per operation (FluxMQ: one retry).
pub const ATTEMPTS: u32 = 2;
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Largest HTTP response body read from the callout.
const MAX_BODY: usize = 64 * 1024;
/// Idle HTTP/1.1 connections kept for reuse.
const HTTP_POOL: usize = 4;

/// The wait before retry `attempt` (0-based): full jitter over `min(max, base * 2^attempt)`.
pub fn retry_delay(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(fastrand::f64())
}

// ---- circuit breaker ---------------------------------------------------------------------

/// Consecutive failures that open the breaker.
pub const BREAKER_FAILURES: u32 = 5;
/// How long it stays open.
pub const BREAKER_OPEN: Duration = Duration::from_secs(10);
/// Requests admitted while half-open; that many successes in a row close it.
pub const BREAKER_PROBES: u32 = 3;

/// The breaker's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `admitted` probes in flight or done, `successes` of them succeeded.
    HalfOpen {
        admitted: u32,
        successes: u32,
    },
}

/// sony/gobreaker's state machine with FluxMQ's settings, on time passed in. Every state
/// change starts a new generation: the outcome of a request admitted in an earlier
/// generation is ignored (a late answer cannot close or reopen the breaker), and a
/// request given up by its caller (the client went away) is released, not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    pub state: BreakerState,
    generation: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            generation: 0,
        }
    }
}

impl Breaker {
    fn set(&mut self, state: BreakerState) {
        self.state = state;
        self.generation += 1;
    }

    /// Whether a request would be refused at `now` (no state change).
    pub fn is_open(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } => now < until,
            BreakerState::HalfOpen { admitted, .. } => admitted >= BREAKER_PROBES,
        }
    }

    /// Admits a request at `now` (counting it while half-open): its generation, to report
    /// its outcome with. `None`: refused.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match &mut self.state {
            BreakerState::Closed { .. } => {}
            BreakerState::Open { until } if now < *until => return None,
            BreakerState::Open { .. } => self.set(BreakerState::HalfOpen {
                admitted: 1,
                successes: 0,
            }),
            BreakerState::HalfOpen { admitted, .. } if *admitted >= BREAKER_PROBES => {
                return None;
            }
            BreakerState::HalfOpen { admitted, .. } => *admitted += 1,
        }
        Some(self.generation)
    }

    pub fn success(&mut self, generation: u64) {
        if generation != self.generation {
            return;
        }
        match &mut self.state {
            BreakerState::Closed { failures } => *failures = 0,
            BreakerState::HalfOpen { successes, .. } => {
                *successes += 1;
                if *successes >= BREAKER_PROBES {
                    self.set(BreakerState::Closed { failures: 0 });
                }
            }
            BreakerState::Open { .. } => {}
        }
    }

    pub fn failure(&mut self, generation: u64, now: Instant) {
        if generation != self.generation {
            return;
        }
        match &mut self.state {
            BreakerState::Closed { failures } => {
                *failures += 1;
                if *failures >= BREAKER_FAILURES {
                    self.set(BreakerState::Open {
                        until: now + BREAKER_OPEN,
                    });
                }
            }
            BreakerState::HalfOpen { .. } => self.set(BreakerState::Open {
                until: now + BREAKER_OPEN,
            }),
            BreakerState::Open { .. } => {}
        }
    }

    /// The caller gave the request up (neither success nor failure): a half-open probe
    /// slot is freed for another request.
    pub fn cancel(&mut self, generation: u64) {
        if generation != self.generation {
            return;
        }
        if let BreakerState::HalfOpen { admitted, .. } = &mut self.state {
            *admitted = admitted.saturating_sub(1);
        }
    }
}

/// A request the breaker admitted; released (not counted) if dropped without an outcome.
struct Admitted<'a> {
    breaker: &'a RefCell<Breaker>,
    generation: u64,
    done: bool,
}

impl Admitted<'_> {
    fn success(mut self) {
        self.done = true;
        self.breaker.borrow_mut().success(self.generation);
    }

    fn failure(mut self, now: Instant) {
        self.done = true;
        self.breaker.borrow_mut().failure(self.generation, now);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.borrow_mut().cancel(self.generation);
        }
    }
}

// ---- wire forms --------------------------------------------------------------------------

/// The protocol strings of the HTTP transport (atom branch: HTTP and CoAP are unspecified).
pub fn http_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Mqtt => "mqtt",
        Protocol::Amqp => "amqp_1_0",
        Protocol::Amqp091 => "amqp_0_9_1",
        Protocol::Http | Protocol::Coap => "",
    }
}

#[derive(Serialize)]
struct AuthnBody<'a> {
    client_id: &'a str,
    username: &'a str,
    password: &'a str,
    protocol: &'static str,
}

#[derive(Deserialize)]
struct AuthnAnswer {
    authenticated: bool,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct AuthzBody<'a> {
    external_id: &'a str,
    topic: &'a str,
    action: &'static str,
}

#[derive(Deserialize)]
struct AuthzAnswer {
    authorized: bool,
    #[serde(default)]
    reason: String,
}

/// Why one attempt got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fail {
    Timeout,
    Error(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Timeout => f.write_str("timed out"),
            Fail::Error(e) => f.write_str(e),
        }
    }
}

// ---- transports --------------------------------------------------------------------------

enum Transport {
    #[cfg(feature = "auth-grpc")]
    Grpc(crate::grpc::Channel),
    Http(HttpClient),
}

/// JSON over HTTP/1.1: connections dialled on demand, up to [`HTTP_POOL`] kept idle.
struct HttpClient {
    endpoint: Endpoint,
    /// `host[:port]` for the Host header.
    authority: String,
    /// The URL's path, without a trailing `/` (`""` or e.g. `/v1`).
    base: String,
    ex: Rc<LocalExecutor<'static>>,
    idle: RefCell<Vec<http1::SendRequest<Full<Bytes>>>>,
}

impl HttpClient {
    async fn post<A: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<A, String> {
        let pooled = {
            let mut idle = self.idle.borrow_mut();
            let mut found = None;
            while let Some(tx) = idle.pop() {
                if tx.is_ready() {
                    found = Some(tx);
                    break;
                }
            }
            found
        };
        let mut tx = match pooled {
            Some(tx) => tx,
            None => {
                let stream = self.endpoint.connect().await?;
                let (tx, conn) = http1::handshake(FuturesIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP handshake: {e}"))?;
                self.ex
                    .spawn(async move {
                        let _ = conn.await;
                    })
                    .detach();
                tx
            }
        };
        let req = http::Request::post(format!("{}{path}", self.base))
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        tx.ready().await.map_err(|e| e.to_string())?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("POST {path}: reading the answer: {e}"))?
            .to_bytes();
        {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < HTTP_POOL && !tx.is_closed() {
                idle.push(tx);
            }
        }
        if status != http::StatusCode::OK {
            return Err(format!("POST {path}: HTTP {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("POST {path}: undecodable answer: {e}"))
    }
}

// ---- the provider ------------------------------------------------------------------------

/// The callout provider; cheap to clone.
#[derive(Clone)]
pub struct Callout {
    inner: Rc<Inner>,
}

struct Inner {
    transport: Transport,
    timeout: Duration,
    breaker: RefCell<Breaker>,
    metrics: Rc<Metrics>,
    log: LogLimit,
}

/// `scheme://host[:port][/path]` of `auth.url`.
fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("\"{url}\": expected http:// or https://"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return Err(format!("\"{url}\": expected http:// or https://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (
            authority.trim_start_matches('[').trim_end_matches(']'),
            default_port,
        )
    } else {
        let (h, p) = authority.rsplit_once(':').unwrap_or((authority, ""));
        let port = p
            .parse::<u16>()
            .map_err(|_| format!("\"{url}\": bad port \"{p}\""))?;
        (h.trim_start_matches('[').trim_end_matches(']'), port)
    };
    if host.is_empty() {
        return Err(format!("\"{url}\": no host"));
    }
    Ok((
        tls,
        host.to_owned(),
        port,
        path.trim_end_matches('/').to_owned(),
    ))
}

impl Callout {
    /// From `auth` (provider callout, or `""` with a `url`); errors name the key.
    pub fn new(
        a: &config::Auth,
        ex: Rc<LocalExecutor<'static>>,
        metrics: Rc<Metrics>,
    ) -> Result<Callout, String> {
        let (tls, host, port, base) =
            parse_url(a.url.trim()).map_err(|e| format!("auth.url: {e}"))?;
        let grpc = a.transport.trim().eq_ignore_ascii_case("grpc");
        let tls = if tls {
            let alpn: &[u8] = if grpc { b"h2" } else { b"http/1.1" };
            Some(
                dial::client_config(&TlsFiles::default(), alpn)
                    .map_err(|e| format!("auth.url: {e}"))?,
            )
        } else {
            None
        };
        let endpoint = Endpoint { host, port, tls };
        let timeout = a.effective_timeout();
        let transport = if grpc {
            #[cfg(feature = "auth-grpc")]
            {
                let _ = &base;
                Transport::Grpc(
                    crate::grpc::Channel::new("callout", endpoint, ex, timeout)
                        .map_err(|e| format!("auth.url: {e}"))?,
                )
            }
            #[cfg(not(feature = "auth-grpc"))]
            {
                let _ = (endpoint, ex, base);
                return Err(
                    "auth.transport: grpc needs the gRPC client, which this build left \
                            out (cargo feature auth-grpc); use transport: http"
                        .into(),
                );
            }
        } else {
            let authority = if (endpoint.tls.is_some() && port == 443)
                || (endpoint.tls.is_none() && port == 80)
            {
                endpoint.host.clone()
            } else {
                format!("{}:{port}", endpoint.host)
            };
            Transport::Http(HttpClient {
                endpoint,
                authority,
                base,
                ex,
                idle: RefCell::new(Vec::new()),
            })
        };
        metrics.auth.provider.set(Some(P));
        Ok(Callout {
            inner: Rc::new(Inner {
                transport,
                timeout,
                breaker: RefCell::new(Breaker::default()),
                metrics,
                log: LogLimit::default(),
            }),
        })
    }

    /// The breaker's state (tests, logs).
    pub fn breaker(&self) -> Breaker {
        self.inner.breaker.borrow().clone()
    }
}

impl Provider for Callout {
    fn name(&self) -> &'static str {
        "callout"
    }

    fn authenticate(&self, protocol: Protocol, creds: Credentials, now: Instant) -> Answer<Authn> {
        let rpc = AuthRpc::Authenticate;
        if self.inner.breaker.borrow().is_open(now) {
            self.inner.count(rpc, AuthResult::BreakerOpen);
            return Answer::Now(Authn::Failed("auth callout: circuit breaker open".into()));
        }
        let inner = self.inner.clone();
        Answer::Later(Box::pin(async move {
            let password = match &creds.secret {
                Secret::Password(p) | Secret::Token(p) => p.as_str(),
                Secret::None => "",
            };
            let r = inner
                .run(rpc, now, || {
                    inner.authenticate_once(protocol, &creds, password)
                })
                .await;
            match r {
                Ok((true, id)) => {
                    inner.count(rpc, AuthResult::Success);
                    // Authenticated without an id: the protocol's client id stands for it,
                    // as in FluxMQ (bound to this connection, never looked up again).
                    let id = if id.trim().is_empty() {
                        creds.client_id.as_str()
                    } else {
                        id.trim()
                    };
                    Authn::Allowed(Rc::from(id))
                }
                Ok((false, _)) => {
                    inner.count(rpc, AuthResult::Denied);
                    Authn::Denied
                }
                Err(e) => Authn::Failed(format!("auth callout: {e}")),
            }
        }))
    }

    fn authorize(
        &self,
        _protocol: Protocol,
        subject: &Rc<str>,
        action: Action,
        topic: &str,
        now: Instant,
    ) -> Answer<bool> {
        let rpc = AuthRpc::Authorize;
        if subject.is_empty() {
            self.inner.count(AuthRpc::Local, AuthResult::Denied);
            return Answer::Now(false);
        }
        if self.inner.breaker.borrow().is_open(now) {
            self.inner.count(rpc, AuthResult::BreakerOpen);
            return Answer::Now(false);
        }
        let inner = self.inner.clone();
        let (subject, topic) = (subject.clone(), topic.to_owned());
        Answer::Later(Box::pin(async move {
            let r = inner
                .run(rpc, now, || inner.authorize_once(&subject, action, &topic))
                .await;
            match r {
                Ok(allowed) => {
                    inner.count(
                        rpc,
                        if allowed {
                            AuthResult::Success
                        } else {
                            AuthResult::Denied
                        },
                    );
                    allowed
                }
                Err(_) => false,
            }
        }))
    }
}

impl Inner {
    fn count(&self, rpc: AuthRpc, r: AuthResult) {
        self.metrics.auth.outcome(P, rpc, r);
    }

    /// Up to [`ATTEMPTS`] attempts through the breaker, each under the local deadline, a
    /// jittered backoff between them. The final failure is counted and logged here.
    async fn run<T, F, Fut>(&self, rpc: AuthRpc, now: Instant, attempt: F) -> Result<T, Fail>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        // The caller's clock, advanced by the time spent here.
        let started = clock::now();
        let at = || now + clock::now().saturating_duration_since(started);
        let mut last = Fail::Error("no attempt".into());
        for n in 0..ATTEMPTS {
            if n > 0 {
                smol::Timer::after(retry_delay(n - 1)).await;
            }
            let Some(generation) = self.breaker.borrow_mut().admit(at()) else {
                self.count(rpc, AuthResult::BreakerOpen);
                self.log.warn(|| {
                    format!(
                        "auth callout: {}: circuit breaker open; refused",
                        rpc.label()
                    )
                });
                return Err(Fail::Error("circuit breaker open".into()));
            };
            let admitted = Admitted {
                breaker: &self.breaker,
                generation,
                done: false,
            };
            let t0 = clock::now();
            let r = smol::future::or(attempt(), async {
                smol::Timer::after(self.timeout).await;
                Err(Fail::Timeout)
            })
            .await;
            self.metrics
                .auth
                .latency(P, rpc, clock::now().saturating_duration_since(t0));
            match r {
                Ok(v) => {
                    admitted.success();
                    return Ok(v);
                }
                Err(e) => {
                    admitted.failure(at());
                    last = e;
                }
            }
        }
        self.count(
            rpc,
            if last == Fail::Timeout {
                AuthResult::Timeout
            } else {
                AuthResult::Error
            },
        );
        self.log.warn(|| {
            format!(
                "auth callout: {}: {last} (after {ATTEMPTS} attempts); failing closed",
                rpc.label()
            )
        });
        Err(last)
    }

    async fn authenticate_once(
        &self,
        protocol: Protocol,
        creds: &Credentials,
        password: &str,
    ) -> Result<(bool, String), Fail> {
        match &self.transport {
            #[cfg(feature = "auth-grpc")]
            Transport::Grpc(chan) => {
                use crate::grpc::pb::callout as pb;
                let p = match protocol {
                    Protocol::Mqtt => pb::Protocol::Mqtt,
                    Protocol::Amqp => pb::Protocol::Amqp10,
                    Protocol::Amqp091 => pb::Protocol::Amqp091,
                    Protocol::Http | Protocol::Coap => pb::Protocol::Unspecified,
                };
                let mut req = tonic::Request::new(pb::AuthnReq {
                    client_id: creds.client_id.clone(),
                    username: creds.username.clone(),
                    password: password.to_owned(),
                    protocol: p as i32,
                });
                req.set_timeout(self.timeout);
                let svc = chan.ready().await.map_err(grpc_fail)?;
                let mut c =
                    pb::auth_service_client::AuthServiceClient::with_origin(svc, chan.origin())
                        .max_decoding_message_size(crate::grpc::MAX_RESPONSE);
                let res = c.authenticate(req).await.map_err(grpc_fail)?.into_inner();
                if !res.authenticated && !res.reason.is_empty() {
                    log::debug!("auth callout: not authenticated: {}", res.reason);
                }
                Ok((res.authenticated, res.id))
            }
            Transport::Http(h) => {
                let body = serde_json::to_vec(&AuthnBody {
                    client_id: &creds.client_id,
                    username: &creds.username,
                    password,
                    protocol: http_protocol(protocol),
                })
                .map_err(|e| Fail::Error(e.to_string()))?;
                let a: AuthnAnswer = h
                    .post("/auth/authenticate", body)
                    .await
                    .map_err(Fail::Error)?;
                if !a.authenticated && !a.reason.is_empty() {
                    log::debug!("auth callout: not authenticated: {}", a.reason);
                }
                Ok((a.authenticated, a.id))
            }
        }
    }

    async fn authorize_once(
        &self,
        subject: &str,
        action: Action,
        topic: &str,
    ) -> Result<bool, Fail> {
        match &self.transport {
            #[cfg(feature = "auth-grpc")]
            Transport::Grpc(chan) => {
                use crate::grpc::pb::callout as pb;
                let mut req = tonic::Request::new(pb::AuthzReq {
                    external_id: subject.to_owned(),
                    topic: topic.to_owned(),
                    action: match action {
                        Action::Publish => pb::Action::Publish,
                        Action::Subscribe => pb::Action::Subscribe,
                    } as i32,
                });
                req.set_timeout(self.timeout);
                let svc = chan.ready().await.map_err(grpc_fail)?;
                let mut c =
                    pb::auth_service_client::AuthServiceClient::with_origin(svc, chan.origin())
                        .max_decoding_message_size(crate::grpc::MAX_RESPONSE);
                Ok(c.authorize(req)
                    .await
                    .map_err(grpc_fail)?
                    .into_inner()
                    .authorized)
            }
            Transport::Http(h) => {
                let body = serde_json::to_vec(&AuthzBody {
                    external_id: subject,
                    topic,
                    action: action.key(),
                })
                .map_err(|e| Fail::Error(e.to_string()))?;
                let a: AuthzAnswer = h.post("/auth/authorize", body).await.map_err(Fail::Error)?;
                if !a.authorized && !a.reason.is_empty() {
                    log::debug!("auth callout: not authorized: {}", a.reason);
                }
                Ok(a.authorized)
            }
        }
    }
}

#[cfg(feature = "auth-grpc")]
fn grpc_fail(s: tonic::Status) -> Fail {
    Fail::Error(format!("{:?}: {}", s.code(), s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(until: Instant) -> Breaker {
        Breaker {
            state: BreakerState::Open { until },
            generation: 7,
        }
    }

    #[test]
    fn breaker_opens_after_5_consecutive_failures() {
        let t = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..4 {
            let g = b.admit(t).unwrap();
            b.failure(g, t);
        }
        // A success resets the count: "consecutive".
        let g = b.admit(t).unwrap();
        b.success(g);
        for _ in 0..4 {
            b.failure(g, t);
        }
        assert!(!b.is_open(t));
        b.failure(g, t);
        assert!(b.is_open(t));
        assert_eq!(b.admit(t + Duration::from_secs(9)), None);
        assert!(b.admit(t + BREAKER_OPEN).is_some(), "half-open after 10 s");
    }

    #[test]
    fn breaker_half_open_admits_3_and_closes_after_3_successes() {
        let t = Instant::now();
        let mut b = open(t);
        let g: Vec<u64> = (0..3).map(|_| b.admit(t).unwrap()).collect();
        assert_eq!(b.admit(t), None, "only 3 probes");
        assert!(b.is_open(t));
        b.success(g[0]);
        b.success(g[1]);
        assert!(matches!(b.state, BreakerState::HalfOpen { .. }));
        b.success(g[2]);
        assert_eq!(b.state, BreakerState::Closed { failures: 0 });
        assert!(b.admit(t).is_some());
    }

    #[test]
    fn breaker_half_open_failure_reopens_and_late_answers_are_ignored() {
        let t = Instant::now();
        let mut b = Breaker::default();
        let stale = b.admit(t).unwrap();
        b.state = BreakerState::Open { until: t };
        b.generation += 1;
        let g = b.admit(t).unwrap();
        // A success admitted before the breaker opened does not count as a probe.
        b.success(stale);
        assert_eq!(
            b.state,
            BreakerState::HalfOpen {
                admitted: 1,
                successes: 0
            }
        );
        b.failure(g, t);
        assert_eq!(
            b.state,
            BreakerState::Open {
                until: t + BREAKER_OPEN
            }
        );
        // A late failure changes nothing either.
        b.failure(g, t + Duration::from_secs(5));
        assert_eq!(
            b.state,
            BreakerState::Open {
                until: t + BREAKER_OPEN
            }
        );
    }

    #[test]
    fn breaker_probe_given_up_frees_its_slot() {
        let t = Instant::now();
        let cell = RefCell::new(open(t));
        for _ in 0..5 {
            // The client goes away while its probe is in flight.
            let g = cell.borrow_mut().admit(t).unwrap();
            drop(Admitted {
                breaker: &cell,
                generation: g,
                done: false,
            });
        }
        let g = cell.borrow_mut().admit(t);
        assert!(g.is_some(), "never stuck half-open: {:?}", cell.borrow());
        assert_eq!(
            cell.borrow().state,
            BreakerState::HalfOpen {
                admitted: 1,
                successes: 0
            }
        );
    }

    #[test]
    fn retry_backoff_is_jittered_and_capped() {
        for _ in 0..100 {
            assert!(retry_delay(0) <= BACKOFF_BASE);
            assert!(retry_delay(1) <= BACKOFF_BASE * 2);
            assert!(retry_delay(30) <= BACKOFF_MAX);
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| retry_delay(3)).collect();
        assert!(distinct.len() > 1, "jittered");
    }

    #[test]
    fn protocol_strings() {
        assert_eq!(http_protocol(Protocol::Mqtt), "mqtt");
        assert_eq!(http_protocol(Protocol::Amqp), "amqp_1_0");
        assert_eq!(http_protocol(Protocol::Amqp091), "amqp_0_9_1");
        assert_eq!(http_protocol(Protocol::Http), "");
        assert_eq!(http_protocol(Protocol::Coap), "");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://auth.internal:7016"),
            Ok((true, "auth.internal".into(), 7016, String::new()))
        );
        assert_eq!(
            parse_url("http://auth/base/"),
            Ok((false, "auth".into(), 80, "/base".into()))
        );
        assert_eq!(
            parse_url("HTTPS://[::1]/x"),
            Ok((true, "::1".into(), 443, "/x".into()))
        );
        assert_eq!(
            parse_url("http://[::1]:81"),
            Ok((false, "::1".into(), 81, String::new()))
        );
        assert!(parse_url("auth:7016").is_err());
        assert!(parse_url("http://:80").is_err());
        assert!(parse_url("http://a:x").is_err());
    }
}
