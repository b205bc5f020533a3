//! The health listener (`server.health_addr`): `GET /health`, `GET /ready` with
//! FluxMQ-compatible bodies, and `GET /metrics` in the Prometheus text format. HTTP/1.1 by
//! hyper on the same executor; bounded like any listener (connection cap, header timeout).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use smol::{Async, LocalExecutor};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use super::Shared;

/// Health checks are tiny; a handful of concurrent scrapers is plenty.
pub const MAX_CONNECTIONS: usize = 64;

pub async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    listener: Async<TcpListener>,
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
        let Some(Ok((stream, _peer))) = accepted else {
            if accepted.is_none() {
                break;
            }
            continue;
        };
        if active.get() >= MAX_CONNECTIONS {
            continue;
        }
        active.set(active.get() + 1);
        let (shared, active) = (shared.clone(), active.clone());
        ex.spawn(async move {
            let svc = hyper::service::service_fn(|req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(SmolTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .serve_connection(FuturesIo::new(stream), svc);
            if let Err(e) = conn.await {
                log::debug!("health connection: {e}");
            }
            active.set(active.get() - 1);
        })
        .detach();
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"method not allowed"}"#.into(),
        );
    }
    match req.uri().path() {
        "/health" => reply(
            StatusCode::OK,
            "application/json",
            r#"{"status":"healthy"}"#.into(),
        ),
        "/ready" => {
            if shared.shutting_down.get() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    r#"{"status":"not_ready","reason":"shutting down"}"#.into(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "application/json",
                    r#"{"status":"ready","mode":"nominal"}"#.into(),
                )
            }
        }
        "/metrics" => {
            let mut gauges = shared.broker.borrow().gauges();
            gauges.ratelimit_tracked_ips = shared.conn_limit.borrow().len();
            let text = shared.metrics.render(&gauges);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found"}"#.into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
