//! The CoAP bridge (RFC 7252 over UDP, spec §6.4), sans-IO: a datagram and `now` in,
//! datagrams and requests to authorize out. The driver (`listener/coap.rs`) owns the
//! socket, the awaits on auth and the observer tasks.
//!
//! Owns: message-layer rules (CON/NON, piggybacked ACKs, RST for what cannot be processed,
//! ping), duplicate detection by Message ID with a bounded exchange cache (RFC 7252 §4.5,
//! `EXCHANGE_LIFETIME`), routing (`/<topic>`, `/mqtt/publish/<topic>`, `/health`), Block1
//! uploads (RFC 7959) bounded by `broker.max_message_size`, and the observers (RFC 7641,
//! `observe.rs`). Publishes go into the core with the origin properties (`protocol::origin`).
//!
//! A request that passes the message layer becomes a [`Request`]; the driver authenticates
//! and authorizes it (or not, when auth is off for CoAP) and hands it back with a
//! [`Verdict`] to [`Server::complete`], which publishes or registers the observer and
//! builds the response. The response is cached under the request's Message ID so that a
//! retransmitted CON gets the same answer without a second publish.

pub mod buckets;
pub mod msg;
pub mod observe;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use crate::auth::{Action, Protocol};
use crate::broker::Broker;
use crate::broker::message::Message;
use crate::broker::session::Signal;
use crate::broker::topic;
use crate::metrics::{CoapCode, Counter, Metrics};
use crate::protocol::mqtt::QoS;
use crate::protocol::origin;
use msg::Block;

/// RFC 7252 §4.8.2: how long a Message ID of a CON is remembered (and its response).
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 §4.8.2: the same for a NON.
pub const NON_LIFETIME: Duration = Duration::from_secs(145);
/// Largest datagram read: an Ethernet MTU. A larger request is refused with 4.13 and the
/// block size to use (RFC 7959 §2.9.3).
pub const MAX_DATAGRAM: usize = 1500;
/// Block-wise uploads being assembled at once, over all endpoints (each at most
/// `broker.max_message_size`): a compile-time ceiling, uploads are rare on a gateway.
pub const MAX_UPLOADS: usize = 32;
/// How long the server waits for the next block of an upload.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// Max-Age (seconds) on a 5.03 that asks the client to come back later.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Caps from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `broker.max_message_size`: the largest payload published or notified.
    pub max_message_size: usize,
    /// Exchanges remembered for duplicate detection (the CoAP slot's `max_connections`).
    pub max_exchanges: usize,
    /// `broker.coap_max_observers`.
    pub max_observers: usize,
    /// `broker.coap_max_observers_per_client`.
    pub max_observers_per_peer: usize,
}

/// The requests the message layer lets through.
#[derive(Debug)]
pub enum Kind {
    Publish {
        topic: String,
        payload: Vec<u8>,
        /// The Content-Format as a MIME type.
        content_type: Option<String>,
    },
    /// GET with Observe 0: register an observer on a topic filter.
    Observe { filter: String },
}

/// Credentials from the URI-Query (spec §2.2): `client_id`, `username`, and the token in
/// `password` or `authorization` (a `Bearer ` prefix removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `client_id`, else `coap:<ip:port>`.
    pub client_id: String,
    pub username: String,
    pub token: String,
}

/// A request to authorize, then [`Server::complete`].
#[derive(Debug)]
pub struct Request {
    pub peer: SocketAddr,
    pub kind: Kind,
    pub identity: Identity,
    /// The request as received (header, token, options; the payload moved into `kind`).
    packet: Packet,
    /// The final Block1 of an upload, echoed in the response.
    block1: Option<Block>,
    /// Block2 the client asked for on an Observe registration (early negotiation).
    szx: u8,
}

impl Request {
    /// What auth is asked: publish to the topic, or subscribe to the filter.
    pub fn action(&self) -> (Action, &str) {
        match &self.kind {
            Kind::Publish { topic, .. } => (Action::Publish, topic),
            Kind::Observe { filter } => (Action::Subscribe, filter),
        }
    }
}

/// What auth (and the rate limiter) said about a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the external id when authenticated.
    Allowed(Option<Rc<str>>),
    Unauthorized,
    Forbidden,
    /// 4.29 with this Max-Age (seconds).
    RateLimited(u32),
    /// 5.03 with Max-Age: the server cannot take it now (too many requests waiting for auth).
    Busy,
}

/// What handling a datagram asks of the driver.
#[derive(Debug)]
pub enum Step {
    Nothing,
    Send(Vec<u8>),
    Authorize(Box<Request>),
}

/// What completing a request asks of the driver.
#[derive(Debug, Default)]
pub struct Done {
    pub reply: Option<Vec<u8>>,
    /// A new observing endpoint: drive its notifications (its session's signal).
    pub watch: Option<Rc<Signal>>,
}

struct Exchange {
    /// The response, once there is one (a duplicate arriving before gets nothing: the
    /// client retransmits).
    reply: Option<Rc<[u8]>>,
    con: bool,
}

struct Upload {
    path: String,
    next: u32,
    szx: u8,
    data: Vec<u8>,
    last: Instant,
}

/// The CoAP server of one listener.
pub struct Server {
    lim: Limits,
    metrics: Rc<Metrics>,
    exchanges: HashMap<(SocketAddr, u16), Exchange>,
    /// Exchanges in arrival order with their expiry, for expiry and eviction.
    order: VecDeque<(Instant, SocketAddr, u16)>,
    uploads: HashMap<SocketAddr, Upload>,
    pub observers: observe::Observers,
    /// Per-endpoint `ratelimit.message` / `ratelimit.subscribe` buckets, capped like the
    /// exchanges.
    buckets: buckets::EndpointBuckets,
    next_mid: u16,
}

impl Server {
    pub fn new(lim: Limits, metrics: Rc<Metrics>, seed: u16) -> Server {
        Server {
            lim,
            metrics,
            exchanges: HashMap::new(),
            order: VecDeque::new(),
            uploads: HashMap::new(),
            observers: observe::Observers::new(lim.max_observers, lim.max_observers_per_peer),
            buckets: buckets::EndpointBuckets::default(),
            next_mid: seed,
        }
    }

    pub fn limits(&self) -> Limits {
        self.lim
    }

    pub fn exchanges(&self) -> usize {
        self.exchanges.len()
    }

    /// Endpoints whose rate-limit buckets are tracked.
    pub fn tracked_buckets(&self) -> usize {
        self.buckets.len()
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// One datagram from `peer`.
    pub fn handle(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        broker: &mut Broker,
        now: Instant,
    ) -> Step {
        // RFC 7252 §3: version 1; a datagram too short for the header is not CoAP.
        if data.len() < 4 || data[0] >> 6 != 1 {
            self.metrics.coap(CoapCode::Malformed);
            return Step::Nothing;
        }
        let mid = u16::from_be_bytes([data[2], data[3]]);
        let con = (data[0] >> 4) & 3 == 0;
        if data.len() > MAX_DATAGRAM {
            // Not read whole: answer a CON request with 4.13 and the block size to use.
            self.metrics.coap(CoapCode::TooLarge);
            if !con {
                return Step::Nothing;
            }
            let tkl = usize::from(data[0] & 0x0F).min(8);
            let mut req = Packet::new();
            req.header.set_type(MessageType::Confirmable);
            req.header.message_id = mid;
            req.set_token(data[4..4 + tkl].to_vec());
            let mut r = msg::response(&req, mid, ResponseType::RequestEntityTooLarge, b"");
            let szx = msg::BLOCK_SZX;
            msg::set_block(
                &mut r,
                CoapOption::Block1,
                Block {
                    num: 0,
                    more: false,
                    szx,
                },
            );
            return Step::Send(msg::encode(&r));
        }
        let packet = match Packet::from_bytes(data) {
            Ok(p) => p,
            Err(e) => {
                // RFC 7252 §4.2/§4.3: a CON that cannot be parsed is rejected with RST; a
                // NON is ignored.
                self.metrics.coap(CoapCode::Malformed);
                self.metrics
                    .refusal("coap", &format!("malformed datagram: {e}"), &peer, now);
                if con {
                    self.metrics.coap(CoapCode::Reset);
                    return Step::Send(msg::empty(MessageType::Reset, mid));
                }
                return Step::Nothing;
            }
        };
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Acknowledgement, _) => {
                self.observers.on_ack(peer, mid);
                Step::Nothing
            }
            (MessageType::Reset, _) => {
                self.metrics.coap(CoapCode::Reset);
                self.observers.on_reset(peer, mid, broker, now);
                Step::Nothing
            }
            // CoAP ping (an empty CON) is answered with RST (RFC 7252 §4.3).
            (MessageType::Confirmable, MessageClass::Empty) => {
                Step::Send(msg::empty(MessageType::Reset, mid))
            }
            (_, MessageClass::Request(_)) => self.request(peer, packet, broker, now),
            (MessageType::Confirmable, _) => {
                self.metrics.coap(CoapCode::Reset);
                Step::Send(msg::empty(MessageType::Reset, mid))
            }
            _ => Step::Nothing,
        }
    }

    fn request(
        &mut self,
        peer: SocketAddr,
        mut packet: Packet,
        broker: &mut Broker,
        now: Instant,
    ) -> Step {
        let mid = packet.header.message_id;
        let con = packet.header.get_type() == MessageType::Confirmable;
        self.expire(now);
        if let Some(x) = self.exchanges.get(&(peer, mid)) {
            // A duplicate (RFC 7252 §4.5): the same response again for a CON, never a
            // second publish; a NON duplicate is ignored.
            self.metrics.coap(CoapCode::Duplicate);
            return match (&x.reply, x.con) {
                (Some(r), true) => Step::Send(r.to_vec()),
                _ => Step::Nothing,
            };
        }
        if self.exchanges.len() >= self.lim.max_exchanges.max(1) {
            // Full: forget the oldest exchange (a late duplicate of it would be handled
            // again), counted.
            if let Some((_, p, m)) = self.order.pop_front() {
                self.exchanges.remove(&(p, m));
                self.metrics.add(Counter::CoapExchangesEvicted, 1);
            }
        }
        let life = if con { EXCHANGE_LIFETIME } else { NON_LIFETIME };
        self.exchanges
            .insert((peer, mid), Exchange { reply: None, con });
        self.order.push_back((now + life, peer, mid));
        match self.route(peer, &mut packet, broker, now) {
            Ok(Some(req)) => Step::Authorize(Box::new(req)),
            Ok(None) => Step::Nothing,
            Err(reply) => Step::Send(self.answer(peer, &packet, reply)),
        }
    }

    /// Route a request: a response now (`Err`), or a request to authorize.
    fn route(
        &mut self,
        peer: SocketAddr,
        packet: &mut Packet,
        broker: &mut Broker,
        now: Instant,
    ) -> Result<Option<Request>, Reply> {
        let Some(segments) = msg::path(packet) else {
            return Err(Reply::error(
                ResponseType::BadRequest,
                "Uri-Path is not UTF-8",
            ));
        };
        let method = msg::method(packet).unwrap_or(RequestType::UnKnown);
        if segments == ["health"] {
            return Err(Reply::new(ResponseType::Content, b"healthy".to_vec()));
        }
        let identity = identity(packet, peer);
        if method == RequestType::Get {
            let path = segments.join("/");
            match msg::uint(packet, CoapOption::Observe) {
                Some(Ok(0)) => {
                    if path.is_empty() {
                        return Err(Reply::error(
                            ResponseType::BadRequest,
                            "topic filter missing",
                        ));
                    }
                    let filter = path;
                    match topic::parse_subscription(&filter) {
                        Ok(t) if t.group.is_none() => {}
                        _ => {
                            return Err(Reply::error(
                                ResponseType::BadRequest,
                                "invalid topic filter (shared subscriptions cannot be observed)",
                            ));
                        }
                    }
                    let szx = match msg::block(packet, CoapOption::Block2) {
                        Some(Ok(b)) => b.szx.min(msg::BLOCK_SZX),
                        _ => msg::BLOCK_SZX,
                    };
                    return Ok(Some(Request {
                        peer,
                        kind: Kind::Observe { filter },
                        identity,
                        packet: std::mem::take(packet),
                        block1: None,
                        szx,
                    }));
                }
                Some(Ok(1)) => {
                    // Deregistration (RFC 7641 §3.6): by token.
                    self.observers.cancel(peer, packet.get_token(), broker, now);
                    return Err(Reply::new(ResponseType::Content, Vec::new()));
                }
                Some(_) => return Err(Reply::error(ResponseType::BadOption, "bad Observe")),
                None => {}
            }
            // The rest of a large notification (RFC 7959 §2.4, RFC 7641 §3.4 + block).
            if let Some(Ok(b)) = msg::block(packet, CoapOption::Block2)
                && let Some(reply) = self.observers.block2(peer, &path, b, now)
            {
                return Err(reply);
            }
            return Err(Reply::error(
                ResponseType::MethodNotAllowed,
                "GET observes (Observe: 0); publish with POST or PUT",
            ));
        }
        if method != RequestType::Post && method != RequestType::Put {
            return Err(Reply::error(
                ResponseType::MethodNotAllowed,
                "publish with POST or PUT",
            ));
        }
        // FluxMQ paths: `/<topic>` or `/mqtt/publish/<topic>`; any other `/mqtt...` is 4.00.
        let topic = match segments.as_slice() {
            ["mqtt", "publish", rest @ ..] => rest.join("/"),
            ["mqtt", ..] => {
                return Err(Reply::error(
                    ResponseType::BadRequest,
                    "use /mqtt/publish/<topic> or /<topic>",
                ));
            }
            all => all.join("/"),
        };
        if topic.is_empty() {
            return Err(Reply::error(ResponseType::BadRequest, "topic missing"));
        }
        if topic::validate_name(&topic).is_err() {
            return Err(Reply::error(ResponseType::BadRequest, "invalid topic"));
        }
        let max = self.lim.max_message_size;
        let content_type = match msg::uint(packet, CoapOption::ContentFormat) {
            Some(Ok(cf)) => Some(msg::content_type(cf)),
            Some(Err(())) => {
                return Err(Reply::error(ResponseType::BadOption, "bad Content-Format"));
            }
            None => None,
        };
        let (payload, block1) = match msg::block(packet, CoapOption::Block1) {
            None => {
                if packet.payload.len() > max {
                    return Err(Reply::too_large(max));
                }
                (std::mem::take(&mut packet.payload), None)
            }
            Some(Err(())) => return Err(Reply::error(ResponseType::BadOption, "bad Block1")),
            Some(Ok(b)) => (self.upload(peer, &topic, b, packet, now)?, Some(b)),
        };
        Ok(Some(Request {
            peer,
            kind: Kind::Publish {
                topic,
                payload,
                content_type,
            },
            identity,
            packet: std::mem::take(packet),
            block1,
            szx: msg::BLOCK_SZX,
        }))
    }

    /// One block of an upload (RFC 7959 §2.5): `Err(2.31 Continue)` while more is to come,
    /// the whole body with the last block. Bounded by `max_message_size` (4.13) and
    /// [`MAX_UPLOADS`] (5.03); a block out of order is 4.08.
    fn upload(
        &mut self,
        peer: SocketAddr,
        path: &str,
        b: Block,
        packet: &mut Packet,
        now: Instant,
    ) -> Result<Vec<u8>, Reply> {
        let max = self.lim.max_message_size;
        self.uploads
            .retain(|_, u| now.saturating_duration_since(u.last) < UPLOAD_IDLE);
        let part = std::mem::take(&mut packet.payload);
        if b.more && part.len() != b.size() {
            return Err(Reply::error(
                ResponseType::BadRequest,
                "block size mismatch",
            ));
        }
        if b.num == 0 {
            if let Some(Ok(size1)) = msg::uint(packet, CoapOption::Size1)
                && size1 as usize > max
            {
                return Err(Reply::too_large(max));
            }
            if !self.uploads.contains_key(&peer) && self.uploads.len() >= MAX_UPLOADS {
                return Err(Reply::busy("too many block-wise uploads in progress"));
            }
            self.uploads.insert(
                peer,
                Upload {
                    path: path.to_owned(),
                    next: 0,
                    szx: b.szx,
                    data: Vec::new(),
                    last: now,
                },
            );
        }
        let Some(u) = self.uploads.get_mut(&peer) else {
            return Err(Reply::incomplete());
        };
        if u.path != path || u.next != b.num || u.szx != b.szx {
            self.uploads.remove(&peer);
            return Err(Reply::incomplete());
        }
        if u.data.len() + part.len() > max {
            self.uploads.remove(&peer);
            return Err(Reply::too_large(max));
        }
        u.data.extend_from_slice(&part);
        u.next += 1;
        u.last = now;
        if b.more {
            let mut r = Reply::new(ResponseType::Continue, Vec::new());
            r.block1 = Some(b);
            return Err(r);
        }
        self.uploads
            .remove(&peer)
            .map(|u| u.data)
            .ok_or_else(Reply::incomplete)
    }

    /// Finish a request with what auth said: publish, or register the observer.
    pub fn complete(
        &mut self,
        req: Request,
        verdict: Verdict,
        broker: &mut Broker,
        now: Instant,
    ) -> Done {
        let Request {
            peer,
            kind,
            identity,
            packet,
            block1,
            szx,
        } = req;
        let mut done = Done::default();
        let external_id = match verdict {
            Verdict::Allowed(id) => id,
            Verdict::Unauthorized => {
                let r = Reply::error(ResponseType::Unauthorized, "unauthorized");
                done.reply = Some(self.answer(peer, &packet, r));
                return done;
            }
            Verdict::Forbidden => {
                let r = Reply::error(ResponseType::Forbidden, "forbidden");
                done.reply = Some(self.answer(peer, &packet, r));
                return done;
            }
            Verdict::RateLimited(secs) => {
                let mut r = Reply::error(ResponseType::TooManyRequests, "rate limit exceeded");
                r.max_age = Some(secs);
                done.reply = Some(self.answer(peer, &packet, r));
                return done;
            }
            Verdict::Busy => {
                let r = Reply::busy("too many requests waiting for auth");
                done.reply = Some(self.answer(peer, &packet, r));
                return done;
            }
        };
        // The per-client limits (`ratelimit.message` for a publish, `ratelimit.subscribe` for
        // an Observe registration), on the endpoint's buckets: 4.29 with Max-Age (RFC 8516).
        let who = identity.client_id.as_str();
        let limits = &broker.ratelimit;
        let allowed = self.buckets.with(
            peer,
            self.lim.max_exchanges,
            limits,
            &self.metrics,
            now,
            |b| match &kind {
                Kind::Publish { .. } => limits.allow_message(b, Protocol::Coap, who, now),
                Kind::Observe { .. } => limits.allow_subscribe(b, Protocol::Coap, who, now),
            },
        );
        if let Err(refusal) = allowed {
            let mut r = Reply::error(ResponseType::TooManyRequests, "rate limit exceeded");
            r.max_age = Some(u32::try_from(refusal.retry_after_secs()).unwrap_or(u32::MAX));
            done.reply = Some(self.answer(peer, &packet, r));
            return done;
        }
        let reply = match kind {
            Kind::Publish {
                topic,
                payload,
                content_type,
            } => {
                let props = origin::message_props(
                    "coap",
                    &identity.client_id,
                    external_id.as_deref(),
                    content_type.as_deref(),
                );
                // Published as QoS 0, not retained (spec §6.4).
                let m = Message::new(&topic, &props, &payload, QoS::AtMostOnce, false, None, None);
                match broker.publish(m, now) {
                    Ok(_) => {
                        let mut r = Reply::new(ResponseType::Changed, b"ok".to_vec());
                        r.block1 = block1;
                        r
                    }
                    Err(code) => {
                        log::warn!("coap: publish from {peer} to {topic:?} refused: {code:?}");
                        Reply::error(ResponseType::InternalServerError, "publish failed")
                    }
                }
            }
            Kind::Observe { filter } => {
                let con = packet.header.get_type() == MessageType::Confirmable;
                let token = packet.get_token().to_vec();
                match self
                    .observers
                    .register(peer, token, &filter, con, szx, broker, now)
                {
                    Ok((seq, watch)) => {
                        done.watch = watch;
                        let mut r = Reply::new(ResponseType::Content, Vec::new());
                        r.observe = Some(seq);
                        r
                    }
                    Err(e) => e,
                }
            }
        };
        done.reply = Some(self.answer(peer, &packet, reply));
        done
    }

    /// Encode `r` as the response to `req`, count it, and remember it for duplicates.
    fn answer(&mut self, peer: SocketAddr, req: &Packet, r: Reply) -> Vec<u8> {
        let mid = self.mid();
        let mut p = msg::response(req, mid, r.code, &r.payload);
        if let Some(seq) = r.observe {
            msg::set_uint(&mut p, CoapOption::Observe, seq);
        }
        if let Some(b) = r.block1 {
            msg::set_block(&mut p, CoapOption::Block1, b);
        }
        if let Some(b) = r.block2 {
            msg::set_block(&mut p, CoapOption::Block2, b);
        }
        if let Some(n) = r.size1 {
            msg::set_uint(&mut p, CoapOption::Size1, n);
        }
        if let Some(n) = r.size2 {
            msg::set_uint(&mut p, CoapOption::Size2, n);
        }
        if let Some(cf) = r.content_format {
            msg::set_uint(&mut p, CoapOption::ContentFormat, cf);
        }
        if let Some(secs) = r.max_age {
            msg::set_uint(&mut p, CoapOption::MaxAge, secs);
        }
        self.metrics.coap(code_metric(r.code));
        if r.code.is_error() {
            let why = String::from_utf8_lossy(&r.payload);
            self.metrics.refusal(
                "coap",
                &format!("{} {why}", code_metric(r.code).label()),
                &peer,
                crate::clock::now(),
            );
        }
        let bytes = msg::encode(&p);
        if let Some(x) = self.exchanges.get_mut(&(peer, req.header.message_id)) {
            x.reply = Some(bytes.as_slice().into());
        }
        bytes
    }

    /// Forget exchanges past their lifetime.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, p, m)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            self.exchanges.remove(&(p, m));
        }
    }

    /// Housekeeping (about once a second): expired exchanges, stale uploads, and rate-limit
    /// buckets that are full again.
    pub fn tick(&mut self, broker: &Broker, now: Instant) {
        self.expire(now);
        self.buckets.sweep(&broker.ratelimit, now);
        self.uploads
            .retain(|_, u| now.saturating_duration_since(u.last) < UPLOAD_IDLE);
    }
}

/// A response before encoding.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: ResponseType,
    pub payload: Vec<u8>,
    pub observe: Option<u32>,
    pub block1: Option<Block>,
    pub block2: Option<Block>,
    pub size1: Option<u32>,
    pub size2: Option<u32>,
    pub content_format: Option<u32>,
    pub max_age: Option<u32>,
}

impl Reply {
    pub fn new(code: ResponseType, payload: Vec<u8>) -> Reply {
        Reply {
            code,
            payload,
            observe: None,
            block1: None,
            block2: None,
            size1: None,
            size2: None,
            content_format: None,
            max_age: None,
        }
    }

    /// An error with a diagnostic payload (RFC 7252 §5.5.2).
    pub fn error(code: ResponseType, why: &str) -> Reply {
        Reply::new(code, why.as_bytes().to_vec())
    }

    /// 4.13 with Size1 = the largest body accepted (RFC 7959 §4).
    fn too_large(max: usize) -> Reply {
        let mut r = Reply::error(ResponseType::RequestEntityTooLarge, "payload too large");
        r.size1 = Some(u32::try_from(max).unwrap_or(u32::MAX));
        r
    }

    fn incomplete() -> Reply {
        Reply::error(
            ResponseType::RequestEntityIncomplete,
            "block out of order or upload unknown",
        )
    }

    fn busy(why: &str) -> Reply {
        let mut r = Reply::error(ResponseType::ServiceUnavailable, why);
        r.max_age = Some(RETRY_AFTER_SECS);
        r
    }
}

fn code_metric(code: ResponseType) -> CoapCode {
    use ResponseType as R;
    match code {
        R::Changed => CoapCode::Changed,
        R::Content => CoapCode::Content,
        R::Continue => CoapCode::Continue,
        R::Unauthorized => CoapCode::Unauthorized,
        R::Forbidden => CoapCode::Forbidden,
        R::NotFound => CoapCode::NotFound,
        R::MethodNotAllowed => CoapCode::MethodNotAllowed,
        R::RequestEntityIncomplete => CoapCode::RequestEntityIncomplete,
        R::RequestEntityTooLarge => CoapCode::TooLarge,
        R::TooManyRequests => CoapCode::TooManyRequests,
        R::InternalServerError => CoapCode::InternalError,
        R::ServiceUnavailable => CoapCode::ServiceUnavailable,
        _ => CoapCode::BadRequest,
    }
}

/// Credentials of a request (spec §2.2).
fn identity(p: &Packet, peer: SocketAddr) -> Identity {
    let client_id = msg::query(p, "client_id")
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("coap:{peer}"), str::to_owned);
    let raw = msg::query(p, "password")
        .filter(|s| !s.is_empty())
        .or_else(|| msg::query(p, "authorization"))
        .unwrap_or_default()
        .trim();
    let token = match raw.split_at_checked(7) {
        Some((b, rest)) if b.eq_ignore_ascii_case("bearer ") => rest.trim(),
        _ => raw,
    };
    Identity {
        client_id,
        username: msg::query(p, "username").unwrap_or_default().to_owned(),
        token: token.to_owned(),
    }
}

#[cfg(test)]
mod tests;
