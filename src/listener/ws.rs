//! MQTT over WebSocket: the accept loop of a `server.websocket.*` listener, the opening
//! handshake under `read_timeout`, and [`WsStream`], a byte stream over any transport
//! (TCP, TLS) that the MQTT driver (`listener::mqtt::Connection`) runs on unchanged: reads
//! yield the payload bytes of binary frames, writes go out as binary frames.
//!
//! Owns: the I/O of the handshake (its request buffer, at most `handshake::MAX_REQUEST`,
//! lives only until the upgrade) and of framing (pongs, close frames, the close status on a
//! violation). Does not own: the rules (`protocol::ws`) or MQTT (`listener::mqtt`).
//!
//! Per connection, `WsStream` adds a few dozen bytes of state to the inner stream and no
//! buffer: payload is unmasked in the caller's (shared) read buffer; a control frame's
//! payload and the pong or close frame owed (at most two frames of 127 bytes) exist only
//! while one is in flight.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use smol::{Async, LocalExecutor, Timer};

use super::mqtt::{self, Connection, Handshaking};
use super::{Refused, Shared};
use crate::clock;
use crate::metrics::CloseReason;
use crate::protocol::mqtt::conn::max_frame;
use crate::protocol::ws::frame::{self, Decoder};
use crate::protocol::ws::handshake::{self, Policy, Progress, Refusal};
use crate::ratelimit;

/// One WebSocket listener slot: the MQTT settings and the upgrade rules.
#[derive(Debug)]
pub struct Spec {
    pub mqtt: Rc<mqtt::Spec>,
    /// `path`: the upgrade path.
    pub path: String,
    /// `allowed_origins` (empty: every origin).
    pub allowed_origins: Vec<String>,
}

pub async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    listener: Async<TcpListener>,
    spec: Rc<Spec>,
) {
    let serve_one = |stream, peer| {
        // Counted against max_connections from now, while it handshakes.
        let handshaking = Handshaking::new(spec.mqtt.clone());
        let task = serve(
            ex.clone(),
            shared.clone(),
            spec.clone(),
            stream,
            peer,
            handshaking,
        );
        ex.spawn(task).detach();
    };
    // Over the per-IP connection rate: HTTP 429 with Retry-After (spec §6.2), written after
    // the request is read (closing on unread input would reset the connection and lose
    // the answer). The answer holds a max_connections place; with none free, the socket
    // is just closed.
    let refuse = |stream: Async<TcpStream>, _peer, refusal: ratelimit::Refusal| {
        if let Some(place) = Handshaking::try_new(&spec.mqtt) {
            ex.spawn(too_many(stream, refusal.retry_after_secs(), place))
                .detach();
        }
    };
    mqtt::accept_limited(&shared, &listener, &spec.mqtt, serve_one, refuse).await;
}

/// Longest wait for the request before a 429 is written anyway.
const REFUSAL_READ: Duration = Duration::from_secs(1);

/// Answer a rate-limited upgrade with 429: read what the client sent (its request, bounded
/// by `MAX_REQUEST` and `REFUSAL_READ`), write the answer, close.
async fn too_many(mut io: Async<TcpStream>, retry_after: u64, _place: Handshaking) {
    let read_request = async {
        let mut buf = [0u8; 1024];
        let mut seen = Vec::new();
        while seen.len() < handshake::MAX_REQUEST {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        true
    };
    let open = future::or(read_request, async {
        Timer::after(REFUSAL_READ).await;
        true
    })
    .await;
    if open {
        let _ = io
            .write_all(&handshake::too_many_requests(retry_after))
            .await;
        let _ = io.close().await;
    }
}

/// The TLS handshake (wss slots), then the upgrade, within `read_timeout` counted from the
/// accept (it covers the CONNECT too, as on TLS). The MQTT driver then gets a task of its
/// own: this one, with the handshakes' state and the request buffer, ends.
async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    shared: Rc<Shared>,
    spec: Rc<Spec>,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    handshaking: Handshaking,
) {
    let accepted = clock::now();
    let m = spec.mqtt.clone();
    match &m.tls {
        None => {
            let up = upgrade_within(stream, &spec, &shared, peer, accepted).await;
            if let Some(ws) = up {
                drop(handshaking); // the connection counts itself from here on
                let conn = Connection::new(ws, peer, shared, m.clone(), accepted);
                ex.spawn(conn).detach();
            }
        }
        Some(acceptor) => {
            let Ok((tls, identity)) = acceptor.accept(stream, peer, m.read_timeout).await else {
                return; // counted and logged by the acceptor
            };
            let up = upgrade_within(tls, &spec, &shared, peer, accepted).await;
            if let Some(ws) = up {
                drop(handshaking);
                let mut conn = Connection::new(ws, peer, shared, m.clone(), accepted);
                conn.set_cert(identity, m.use_identity_as_username);
                ex.spawn(conn).detach();
            }
        }
    }
}

/// The upgrade, until `read_timeout` after `accepted` (zero: no limit); a failure is
/// counted and logged, and the socket closed.
async fn upgrade_within<S>(
    io: S,
    spec: &Spec,
    shared: &Shared,
    peer: SocketAddr,
    accepted: Instant,
) -> Option<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = max_frame(shared.broker.borrow().limits.max_message_size);
    let timeout = spec.mqtt.read_timeout;
    let upgraded = future::or(upgrade(io, spec, max), async {
        match accepted.checked_add(timeout) {
            Some(at) if !timeout.is_zero() => Timer::at(at).await,
            _ => future::pending::<Instant>().await, // 0 (or beyond the clock): no limit
        };
        Err((
            CloseReason::WsHandshakeTimeout,
            format!("no WebSocket upgrade within read_timeout ({timeout:?})"),
        ))
    })
    .await;
    match upgraded {
        Ok(ws) => Some(ws),
        Err((reason, why)) => {
            shared.metrics.closed(reason);
            log::info!("{}: connection from {peer} refused: {why}", spec.mqtt.name);
            None
        }
    }
}

/// The opening handshake: read the request (growing a buffer 1 KiB at a time up to the
/// cap), answer 101 or refuse with an HTTP status and close.
async fn upgrade<S>(
    mut io: S,
    spec: &Spec,
    max: usize,
) -> Result<WsStream<S>, (CloseReason, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let policy = Policy {
        path: &spec.path,
        allowed_origins: &spec.allowed_origins,
    };
    let io_err = |e: io::Error| (CloseReason::IoError, format!("handshake: {e}"));
    let mut buf = Vec::new();
    loop {
        let filled = buf.len();
        buf.resize((filled + 1024).min(handshake::MAX_REQUEST), 0);
        let n = io.read(&mut buf[filled..]).await.map_err(io_err)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err((
                CloseReason::PeerClosed,
                "closed during the WebSocket handshake".into(),
            ));
        }
        match handshake::handle(&buf, &policy) {
            Progress::Partial => {}
            Progress::Accept { consumed, response } => {
                io.write_all(&response).await.map_err(io_err)?;
                io.flush().await.map_err(io_err)?;
                let early = (consumed < buf.len()).then(|| buf[consumed..].into());
                return Ok(WsStream::new(io, max, early));
            }
            Progress::Refuse(refusal) => {
                // Best effort: the peer may be gone already.
                let _ = io.write_all(&refusal.response()).await;
                let _ = io.close().await;
                let reason = match refusal {
                    Refusal::NotFound => CloseReason::WsPathNotFound,
                    Refusal::Forbidden => CloseReason::WsOriginForbidden,
                    Refusal::TooLarge => CloseReason::WsRequestTooLarge,
                    _ => CloseReason::WsBadRequest,
                };
                return Err((reason, format!("WebSocket upgrade refused: {refusal}")));
            }
        }
    }
}

/// Reads per `poll_read` that yield no data (headers, control frames) before it yields to
/// other tasks: a peer sending only pings cannot hold the executor.
const EMPTY_READS: usize = 4;

/// How the read side ended.
#[derive(Debug)]
enum End {
    /// The peer's close frame: end of stream once our echo is out.
    Closed,
    /// A framing violation: our close frame carries its status, then the error.
    Failed(frame::Error),
}

/// MQTT bytes over WebSocket frames, over any byte stream `S`.
pub struct WsStream<S> {
    io: S,
    dec: Decoder,
    /// Bytes that arrived behind the upgrade request (frames sent without waiting for the
    /// 101): decoded before the socket is read.
    early: Option<Box<[u8]>>,
    /// The binary frame being written: its header, how much of the header is out, and how
    /// many payload bytes it still owes.
    hdr: [u8; frame::MAX_HEADER],
    hdr_len: u8,
    hdr_sent: u8,
    body_left: usize,
    /// Control frames owed (pong, close), written between data frames; freed once out.
    ctrl: Vec<u8>,
    ctrl_sent: usize,
    /// A close frame is queued or sent: no data frame may follow.
    close_queued: bool,
    end: Option<End>,
}

impl<S> WsStream<S> {
    /// A stream after a completed handshake; frames (and messages) over `max` payload bytes
    /// are refused with status 1009.
    pub fn new(io: S, max: usize, early: Option<Box<[u8]>>) -> WsStream<S> {
        WsStream {
            io,
            dec: Decoder::new(max),
            early,
            hdr: [0; frame::MAX_HEADER],
            hdr_len: 0,
            hdr_sent: 0,
            body_left: 0,
            ctrl: Vec::new(),
            ctrl_sent: 0,
            close_queued: false,
            end: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Inside a binary frame: control frames must wait for its end.
    fn mid_frame(&self) -> bool {
        self.body_left > 0 || self.hdr_sent < self.hdr_len
    }

    /// Queue a control frame. A frame partly written stays first; anything queued behind it
    /// is replaced (only the latest ping needs its pong, RFC 6455 §5.5.3), so at most two
    /// frames wait. Nothing follows a close.
    fn queue_control(&mut self, f: Vec<u8>, is_close: bool) {
        if self.close_queued {
            return;
        }
        if self.ctrl_sent > 0 {
            // Server control frames have a 2-byte header and at most 125 bytes.
            let first = 2 + usize::from(self.ctrl[1] & 0x7f);
            self.ctrl.truncate(first);
            self.ctrl.extend_from_slice(&f);
        } else {
            self.ctrl = f;
        }
        self.close_queued = is_close;
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Write the control frames owed, unless a binary frame is in progress (then they wait
    /// for it, and this is ready at once).
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.mid_frame() {
            return Poll::Ready(Ok(()));
        }
        while self.ctrl_sent < self.ctrl.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.ctrl[self.ctrl_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.ctrl_sent += n;
        }
        if !self.ctrl.is_empty() {
            self.ctrl = Vec::new();
            self.ctrl_sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        for _ in 0..EMPTY_READS {
            // Pongs and close frames first; a pong waiting for the socket does not stop
            // reading (the write side's wake-up brings us back).
            let flushed = this.poll_control(cx)?;
            if let Some(end) = &this.end {
                if flushed.is_pending() {
                    return Poll::Pending; // the close frame goes out before the end
                }
                return Poll::Ready(match end {
                    End::Closed => Ok(0),
                    End::Failed(e) => Err(Refused::io(reason_for(e), format!("WebSocket: {e}"))),
                });
            }
            let n = match this.early.take() {
                Some(mut early) => {
                    let n = early.len().min(buf.len());
                    buf[..n].copy_from_slice(&early[..n]);
                    if n < early.len() {
                        early = early[n..].into();
                        this.early = Some(early);
                    }
                    n
                }
                None => ready!(Pin::new(&mut this.io).poll_read(cx, buf))?,
            };
            if n == 0 {
                return Poll::Ready(Ok(0)); // the transport closed without a close frame
            }
            match this.dec.decode(&mut buf[..n]) {
                Ok(got) => {
                    if let Some(payload) = got.ping {
                        this.queue_control(frame::pong(&payload), false);
                    }
                    if let Some(status) = got.close {
                        this.queue_control(frame::close(status), true);
                        this.end = Some(End::Closed);
                    }
                    if got.data > 0 {
                        let _ = this.poll_control(cx)?;
                        return Poll::Ready(Ok(got.data));
                    }
                }
                Err(e) => {
                    this.queue_control(frame::close(Some(e.close_code())), true);
                    this.end = Some(End::Failed(e));
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn reason_for(e: &frame::Error) -> CloseReason {
    match e {
        frame::Error::TooLarge { .. } => CloseReason::WsFrameTooLarge,
        frame::Error::Text => CloseReason::WsTextFrame,
        _ => CloseReason::WsProtocolError,
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Each call starting a frame makes one binary frame of all of `buf`; its header and
    /// payload go out in one vectored write. A frame written in part is completed by the
    /// next calls (with the next bytes of the stream, as `AsyncWrite` callers supply).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_queued && !this.mid_frame() {
            // After a close frame nothing may be sent: what the driver still writes (its
            // last packets) is dropped, as it would be on a closed socket.
            return Poll::Ready(Ok(buf.len()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.mid_frame() {
            ready!(this.poll_control(cx))?;
            this.hdr_len = frame::binary_header(buf.len(), &mut this.hdr) as u8;
            this.hdr_sent = 0;
            this.body_left = buf.len();
        }
        let body = &buf[..this.body_left.min(buf.len())];
        loop {
            let (hs, hl) = (usize::from(this.hdr_sent), usize::from(this.hdr_len));
            let n = if hs < hl {
                let parts = [IoSlice::new(&this.hdr[hs..hl]), IoSlice::new(body)];
                ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &parts))?
            } else {
                ready!(Pin::new(&mut this.io).poll_write(cx, body))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let h = n.min(hl - hs);
            this.hdr_sent += h as u8;
            let b = n - h;
            if b > 0 {
                this.body_left -= b;
                if this.body_left == 0 {
                    let _ = this.poll_control(cx)?; // a pong waiting behind this frame
                }
                return Poll::Ready(Ok(b));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Send a close frame (1000, unless one is owed already) when no frame is half
    /// written, then close the transport.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.mid_frame() {
            this.queue_control(frame::close(Some(frame::code::NORMAL)), true);
            ready!(this.poll_control(cx))?;
        }
        Pin::new(&mut this.io).poll_close(cx)
    }
}
