//! The CoAP listener (`server.coap.plain`): one UDP socket, one receive loop, and one task
//! per observing endpoint. The receive loop feeds each datagram to the sans-IO
//! `protocol::coap::Server`, sends what it answers, and performs auth for the requests it
//! lets through: an answer that needs the network is awaited in a task of its own (at most
//! [`MAX_PENDING_AUTH`] at once, 5.03 beyond), so one slow auth call never stalls the
//! socket. An observing endpoint's task waits on its session's signal, turns deliveries
//! into notifications and retransmits unacknowledged CON notifications (woken by the
//! server's once-a-second deadline sweep).
//!
//! Rate limit: every request that passes the message layer (publish, observe) takes a
//! token of its source IP's `ratelimit.connection` bucket here; refused: 4.29 with Max-Age.
//! The per-client message and subscribe limits are the state machine's (per source
//! endpoint, `protocol::coap::buckets`).

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use smol::{Async, LocalExecutor, Timer};

use super::Shared;
use crate::auth::{Answer, Authn, Credentials, Protocol, Secret};
use crate::broker::session::Signal;
use crate::clock;
use crate::protocol::coap::observe::Poll;
use crate::protocol::coap::{self, Request, Server, Step, Verdict};

/// Requests waiting for an auth answer at once, per listener.
pub const MAX_PENDING_AUTH: usize = 64;

/// One CoAP listener slot, from configuration.
#[derive(Debug)]
pub struct Spec {
    pub name: String,
    pub limits: coap::Limits,
}

struct Ctx {
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    socket: Rc<Async<UdpSocket>>,
    server: RefCell<Server>,
    pending_auth: Cell<usize>,
}

pub async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    socket: Async<UdpSocket>,
    spec: Rc<Spec>,
) {
    // Message IDs start at a random point (RFC 7252 §4.4), from the keyed hasher state.
    let seed = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0u8) as u16
    };
    let ctx = Rc::new(Ctx {
        ex,
        server: RefCell::new(Server::new(spec.limits, shared.metrics.clone(), seed)),
        shared,
        socket: Rc::new(socket),
        pending_auth: Cell::new(0),
    });
    // One byte over the largest datagram handled, to see that one was larger.
    let mut buf = vec![0u8; coap::MAX_DATAGRAM + 1];
    loop {
        let stop = ctx.shared.shutdown.listen();
        if ctx.shared.shutting_down.get() {
            break;
        }
        let got = future::or(
            async { Some(ctx.socket.recv_from(&mut buf).await) },
            future::or(
                async {
                    stop.await;
                    None
                },
                async {
                    Timer::after(Duration::from_secs(1)).await;
                    Some(Err(std::io::ErrorKind::TimedOut.into()))
                },
            ),
        )
        .await;
        let now = clock::now();
        let (n, peer) = match got {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                if e.kind() != std::io::ErrorKind::TimedOut {
                    log::debug!("{}: recv: {e}", spec.name);
                }
                let broker = ctx.shared.broker.borrow();
                ctx.server.borrow_mut().tick(&broker, now);
                continue;
            }
        };
        ctx.shared
            .metrics
            .add(crate::metrics::Counter::BytesReceived, n as u64);
        let step = {
            let mut broker = ctx.shared.broker.borrow_mut();
            ctx.server
                .borrow_mut()
                .handle(peer, &buf[..n], &mut broker, now)
        };
        match step {
            Step::Nothing => {}
            Step::Send(d) => send(&ctx, &d, peer).await,
            Step::Authorize(req) => authorize(&ctx, *req).await,
        }
    }
    log::debug!("{}: stopped", spec.name);
}

async fn send(ctx: &Ctx, d: &[u8], peer: SocketAddr) {
    match ctx.socket.send_to(d, peer).await {
        Ok(n) => ctx
            .shared
            .metrics
            .add(crate::metrics::Counter::BytesSent, n as u64),
        Err(e) => log::debug!("coap: send to {peer}: {e}"),
    }
}

/// Auth for a request, then complete it. An answer that needs the network is awaited in
/// a task of its own.
async fn authorize(ctx: &Rc<Ctx>, req: Request) {
    // The per-source rate limit (`ratelimit.connection`, per request: UDP has no
    // connection): 4.29 with Max-Age (RFC 8516).
    if let Err(r) = ctx.shared.admit(req.peer, Protocol::Coap) {
        let secs = u32::try_from(r.retry_after_secs()).unwrap_or(u32::MAX);
        return finish(ctx, req, Verdict::RateLimited(secs)).await;
    }
    let provider = ctx
        .shared
        .broker
        .borrow()
        .auth
        .for_protocol(Protocol::Coap)
        .cloned();
    let Some(provider) = provider else {
        return finish(ctx, req, Verdict::Allowed(None)).await;
    };
    let who = &req.identity;
    if who.token.is_empty() {
        return finish(ctx, req, Verdict::Unauthorized).await;
    }
    let creds = Credentials {
        client_id: who.client_id.clone(),
        username: who.username.clone(),
        secret: Secret::Token(who.token.clone()),
        cert: None,
    };
    let (action, topic) = req.action();
    let topic = topic.to_owned();
    let authn = provider.authenticate(Protocol::Coap, creds, clock::now());
    // Everything answered locally: complete now, in order.
    if let Answer::Now(a) = &authn {
        let subject = match a {
            Authn::Allowed(id) => id.clone(),
            _ => return finish(ctx, req, Verdict::Unauthorized).await,
        };
        if let Answer::Now(ok) =
            provider.authorize(Protocol::Coap, &subject, action, &topic, clock::now())
        {
            let v = if ok {
                Verdict::Allowed(Some(subject))
            } else {
                Verdict::Forbidden
            };
            return finish(ctx, req, v).await;
        }
    }
    if ctx.pending_auth.get() >= MAX_PENDING_AUTH {
        return finish(ctx, req, Verdict::Busy).await;
    }
    ctx.pending_auth.set(ctx.pending_auth.get() + 1);
    let task_ctx = ctx.clone();
    ctx.ex
        .spawn(async move {
            let ctx = task_ctx;
            let authn = match authn {
                Answer::Now(a) => a,
                Answer::Later(f) => f.await,
            };
            let verdict = match authn {
                Authn::Allowed(subject) => {
                    let ok = match provider.authorize(
                        Protocol::Coap,
                        &subject,
                        action,
                        &topic,
                        clock::now(),
                    ) {
                        Answer::Now(b) => b,
                        Answer::Later(f) => f.await,
                    };
                    if ok {
                        Verdict::Allowed(Some(subject))
                    } else {
                        Verdict::Forbidden
                    }
                }
                Authn::Denied => Verdict::Unauthorized,
                Authn::Failed(why) => {
                    log::warn!("coap: authentication of {} failed: {why}", req.peer);
                    Verdict::Unauthorized
                }
            };
            ctx.pending_auth.set(ctx.pending_auth.get() - 1);
            finish(&ctx, req, verdict).await;
        })
        .detach();
}

async fn finish(ctx: &Rc<Ctx>, req: Request, verdict: Verdict) {
    let peer = req.peer;
    let done = {
        let mut broker = ctx.shared.broker.borrow_mut();
        ctx.server
            .borrow_mut()
            .complete(req, verdict, &mut broker, clock::now())
    };
    if let Some(signal) = done.watch {
        ctx.ex.spawn(notifier(ctx.clone(), peer, signal)).detach();
    }
    if let Some(d) = done.reply {
        send(ctx, &d, peer).await;
    }
}

/// The notifications of one observing endpoint, until it observes nothing.
async fn notifier(ctx: Rc<Ctx>, peer: SocketAddr, signal: Rc<Signal>) {
    let slot = ctx.shared.conns.borrow_mut().insert(signal.clone());
    let mut out = Vec::new();
    loop {
        // Let the registration response go first.
        future::yield_now().await;
        let state = {
            let mut broker = ctx.shared.broker.borrow_mut();
            ctx.server.borrow_mut().observers.poll(
                peer,
                &signal,
                &mut broker,
                clock::now(),
                &mut out,
            )
        };
        for d in out.drain(..) {
            send(&ctx, &d, peer).await;
        }
        match state {
            Poll::Gone => break,
            Poll::More => continue,
            Poll::Idle => {
                future::poll_fn(|cx| {
                    if signal.is_pending() {
                        std::task::Poll::Ready(())
                    } else {
                        signal.register(cx.waker());
                        std::task::Poll::Pending
                    }
                })
                .await
            }
        }
    }
    ctx.shared.conns.borrow_mut().remove(slot);
}

/// Bind a UDP socket; the error names the config key and the address.
pub fn bind(name: &str, addr: &str) -> Result<Async<UdpSocket>, String> {
    let sock = super::mqtt::parse_addr(addr).map_err(|e| format!("{name}.addr: {e}"))?;
    Async::<UdpSocket>::bind(sock).map_err(|e| format!("{name}.addr: cannot listen on {addr}: {e}"))
}
