//! The HTTP publish bridge listener (`server.http.*`): accept loop with the connection cap,
//! one hyper HTTP/1.1 connection per client on the executor, and the await points of a
//! request: reading the body (bounded by size and `read_timeout`), authentication and
//! authorization (`auth::Provider`), then one publish into the core. What a request means
//! is decided by the sans-IO `protocol::http`.
//!
//! Bounds: `max_connections` per listener; request headers at most [`MAX_HEADER_BYTES`]
//! and 100 fields (hyper's default count; 431 above either); the body at most what
//! `broker.max_message_size` allows (413, refused from `Content-Length` before reading);
//! `read_timeout` for the request head, which also bounds how long an idle keep-alive
//! connection is kept (hyper starts the head timer as soon as it waits for the next
//! request), and again for the body (408).
//!
//! Rate limits (`crate::ratelimit`): the connection limit per source IP at accept (closed
//! before anything is read); the message limit per keep-alive connection, after
//! authorization: 429 with `Retry-After`. A client opening a connection per request gets a
//! fresh message bucket each time and is bounded by the connection limit instead.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, future};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use smol::{Async, LocalExecutor, Timer};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use super::{Shared, tls};
use crate::auth::{Answer, Authn, CertIdentity, Credentials, Protocol, Secret};
use crate::broker::message::Message;
use crate::clock;
use crate::metrics::{CloseReason, Counter, HttpStatus};
use crate::protocol::http::{self, Refused, Route};
use crate::protocol::origin;
use crate::ratelimit::ClientBuckets;

/// Request head (start line and header fields) cap.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// One HTTP listener slot, from configuration.
#[derive(Debug)]
pub struct Spec {
    /// Config key of the slot, for logs (e.g. `server.http.plain`).
    pub name: String,
    /// 0 = unlimited.
    pub max_connections: usize,
    /// Request head, body and keep-alive idle timeout; zero = none.
    pub read_timeout: Duration,
    pub active: Cell<usize>,
    /// The TLS layer of `server.http.tls` / `mtls` (`listener::tls`, shared with MQTT).
    pub tls: Option<Rc<tls::Acceptor>>,
}

pub async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    listener: Async<TcpListener>,
    spec: Rc<Spec>,
) {
    let gate = super::Gate {
        name: &spec.name,
        protocol: Protocol::Http,
        max_connections: spec.max_connections,
        active: &spec.active,
    };
    let serve = |stream, peer| {
        // Counted against max_connections from now (while a TLS handshake runs too).
        let slot = Slot::take(&spec);
        match spec.tls.clone() {
            None => ex.spawn(serve_conn(stream, peer, None, shared.clone(), slot)),
            // The handshake runs in the connection's own task: a slow peer delays no accept.
            Some(acceptor) => {
                let shared = shared.clone();
                ex.spawn(async move {
                    let timeout = slot.0.read_timeout;
                    if let Ok((stream, cert)) = acceptor.accept(stream, peer, timeout).await {
                        serve_conn(stream, peer, cert, shared, slot).await;
                    } // else counted and logged by the acceptor; dropping it closes the socket
                })
            }
        }
        .detach();
    };
    // Over the connection rate limit: dropping the stream closes it.
    super::accept_until_shutdown(&shared, &listener, gate, serve, |_, _, _| {}).await;
}

/// Serve one connection (plain or TLS) until it closes, its idle timeout passes, or the
/// server shuts down (then the request in progress is finished first). `cert`: the client
/// certificate verified by an mTLS slot, given to auth with each request.
async fn serve_conn<S>(
    io: S,
    peer: SocketAddr,
    cert: Option<Rc<CertIdentity>>,
    shared: Rc<Shared>,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let spec = slot.0.clone();
    // This connection's message rate-limit bucket, shared by its requests.
    let buckets = Rc::new(Cell::new(ClientBuckets::default()));
    let svc = {
        let (shared, spec) = (shared.clone(), spec.clone());
        hyper::service::service_fn(move |req| {
            let (shared, spec, buckets) = (shared.clone(), spec.clone(), buckets.clone());
            let cert = cert.clone();
            async move {
                let r = handle(&shared, &spec, peer, cert, req, &buckets).await;
                Ok::<_, Infallible>(r)
            }
        })
    };
    let timeout = (!spec.read_timeout.is_zero()).then_some(spec.read_timeout);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES + 8 * 1024)
        .keep_alive(true)
        .serve_connection(FuturesIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let stop = shared.shutdown.listen();
    let result = if shared.shutting_down.get() {
        Ok(())
    } else {
        let served = future::or(async { Some(conn.as_mut().await) }, async {
            stop.await;
            None
        })
        .await;
        match served {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                future::or(conn.as_mut(), async {
                    Timer::after(timeout.unwrap_or(Duration::from_secs(5))).await;
                    Ok(())
                })
                .await
            }
        }
    };
    if let Err(e) = result {
        // What hyper answers or closes by itself: an oversized head (431), a malformed one
        // (400), a head not complete within read_timeout (closed; also an idle keep-alive).
        let m = &shared.metrics;
        if e.is_parse_too_large() {
            m.http(HttpStatus::HeaderTooLarge);
        } else if e.is_parse() {
            m.http(HttpStatus::BadRequest);
        } else if e.is_timeout() {
            m.closed(CloseReason::KeepAliveTimeout);
        }
        log::debug!("{}: connection from {peer}: {e}", spec.name);
    }
}

/// A connection's place under `max_connections`, freed however its task ends.
struct Slot(Rc<Spec>);

impl Slot {
    fn take(spec: &Rc<Spec>) -> Slot {
        spec.active.set(spec.active.get() + 1);
        Slot(spec.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

async fn handle(
    shared: &Shared,
    spec: &Spec,
    peer: SocketAddr,
    cert: Option<Rc<CertIdentity>>,
    req: Request<Incoming>,
    buckets: &Cell<ClientBuckets>,
) -> Response<Full<Bytes>> {
    match publish(shared, spec, peer, cert, req, buckets).await {
        Ok(route) => {
            shared.metrics.http(HttpStatus::Ok);
            let body = if route == Route::Health {
                r#"{"status":"healthy"}"#
            } else {
                r#"{"status":"ok"}"#
            };
            reply(hyper::StatusCode::OK, "application/json", body)
        }
        Err(refused) => {
            shared.metrics.http(refused.metric());
            shared
                .metrics
                .refusal(spec.name.as_str(), refused.body(), &peer, clock::now());
            let mut r = reply(
                refused.status(),
                "text/plain; charset=utf-8",
                refused.body(),
            );
            if let Refused::RateLimited(secs) = refused {
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
    }
}

async fn publish(
    shared: &Shared,
    spec: &Spec,
    peer: SocketAddr,
    cert: Option<Rc<CertIdentity>>,
    req: Request<Incoming>,
    buckets: &Cell<ClientBuckets>,
) -> Result<Route, Refused> {
    let route = http::route(req.method(), req.uri().path())?;
    if route == Route::Health {
        return Ok(route);
    }
    let max = shared.broker.borrow().limits.max_message_size;
    let limit = http::body_limit(&route, max);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refused::TooLarge);
    }
    let (parts, body) = req.into_parts();
    let read = async {
        match Limited::new(body, limit).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refused::TooLarge),
            Err(_) => Err(Refused::BadJson),
        }
    };
    let body = if spec.read_timeout.is_zero() {
        read.await?
    } else {
        future::or(read, async {
            Timer::after(spec.read_timeout).await;
            Err(Refused::Timeout)
        })
        .await?
    };
    shared
        .metrics
        .add(Counter::BytesReceived, body.len() as u64);
    let p = match route.clone() {
        Route::Json => http::parse_json(&body, max)?,
        Route::Raw(topic) => http::parse_raw(topic, parts.uri.query(), body.to_vec(), max)?,
        Route::Health => return Ok(route),
    };
    let who = http::identity(&parts.headers, peer, &p.topic);
    let provider = shared
        .broker
        .borrow()
        .auth
        .for_protocol(Protocol::Http)
        .cloned();
    let mut external_id = None;
    if let Some(provider) = provider {
        // A token needs a username too (spec §2.2); without a token, the client certificate
        // verified on an mTLS slot is the credential (Atom `ResolveCertificate`).
        let secret = match (who.token.is_empty(), who.username.is_empty(), &cert) {
            (false, false, _) => Secret::Token(who.token.clone()),
            (true, _, Some(_)) => Secret::None,
            _ => return Err(Refused::Unauthorized),
        };
        let creds = Credentials {
            client_id: who.client_id.clone(),
            username: who.username.clone(),
            secret,
            cert,
        };
        let authn = match provider.authenticate(Protocol::Http, creds, clock::now()) {
            Answer::Now(a) => a,
            Answer::Later(f) => f.await,
        };
        let subject = match authn {
            Authn::Allowed(id) => id,
            Authn::Denied => return Err(Refused::Unauthorized),
            Authn::Failed(why) => {
                log::warn!("{}: authentication of {peer} failed: {why}", spec.name);
                return Err(Refused::Unauthorized);
            }
        };
        let allowed = match provider.authorize(
            Protocol::Http,
            &subject,
            crate::auth::Action::Publish,
            &p.topic,
            clock::now(),
        ) {
            Answer::Now(b) => b,
            Answer::Later(f) => f.await,
        };
        if !allowed {
            return Err(Refused::Forbidden);
        }
        external_id = Some(subject);
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty());
    let props = origin::message_props("http", &who.client_id, external_id.as_deref(), content_type);
    let now = clock::now();
    // Rate limit (`ratelimit.message`), after authorization: 429 with Retry-After.
    let mut b = buckets.get();
    let limited =
        shared
            .broker
            .borrow()
            .ratelimit
            .allow_message(&mut b, Protocol::Http, &who.client_id, now);
    buckets.set(b);
    limited.map_err(|r| Refused::RateLimited(r.retry_after_secs()))?;
    let mut broker = shared.broker.borrow_mut();
    let qos = p.qos.min(broker.limits.max_qos);
    let msg = Message::new(&p.topic, &props, &p.payload, qos, p.retain, None, None);
    match broker.publish(msg, now) {
        Ok(_) => Ok(route),
        Err(code) => {
            log::warn!(
                "{}: publish from {peer} to {:?} refused by the core: {code:?}",
                spec.name,
                p.topic
            );
            Err(Refused::PublishFailed)
        }
    }
}

fn reply(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
