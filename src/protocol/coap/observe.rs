//! CoAP observers (RFC 7641): `GET /<topic-filter>` with Observe 0 makes the endpoint
//! (ip:port) an observer of that filter. Each observing endpoint is one broker session
//! (`coap:<ip:port>`, expiry 0) and each observation one subscription of it (QoS 0), so
//! observers count against `session.max_sessions` and `session.max_subscriptions` like any
//! client; every message routed to the session becomes a notification (2.05, Observe
//! sequence, Content-Format from the message's content type) to each of the endpoint's
//! observations whose filter matches, CON or NON as the registration was.
//!
//! Bounds: `broker.coap_max_observers` in total and `coap_max_observers_per_client` per
//! endpoint (5.03 with Max-Age above either); one CON notification in flight per endpoint
//! (RFC 7252 §4.7 NSTART 1): later deliveries wait in the session queue, whose caps bound
//! them. A CON notification not acknowledged after `MAX_RETRANSMIT` retransmissions
//! (RFC 7252 §4.8) cancels its observation (RFC 7641 §4.5); an RST to a notification, or
//! Observe 1, cancels too. A notification larger than one block carries the first block
//! (Block2, Size2); the client GETs the rest of that message (RFC 7959 §2.4).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

use super::Reply;
use super::msg::{self, Block};
use crate::broker::message::Message;
use crate::broker::router::SubOpts;
use crate::broker::session::Signal;
use crate::broker::{Broker, ConnectReq, SessionKey, topic};
use crate::metrics::{Counter, DropReason};
use crate::protocol::mqtt::{QoS, ReasonCode, codec};

/// RFC 7252 §4.8: initial ACK timeout (randomised up to 1.5 times) and retransmissions.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_RETRANSMIT: u32 = 4;
/// CON notifications in flight per endpoint (RFC 7252 §4.7 NSTART).
pub const CON_WINDOW: usize = 1;
/// RFC 7641 §4.5: a NON observer still gets a CON notification this often, so that an
/// endpoint that went away is noticed (and its observation cancelled).
pub const CON_EVERY: Duration = Duration::from_secs(24 * 3600);
/// NON notification Message IDs remembered per endpoint, to match an RST to its observation.
const RECENT_NON: usize = 16;
/// Deliveries turned into notifications per wake-up of an endpoint's task (fairness).
pub const BATCH: usize = 64;
/// Large notifications kept at once, over all endpoints, for their remaining blocks
/// (compile-time ceiling: each holds a message of up to `broker.max_message_size`); the
/// oldest is forgotten first and a GET for its blocks then gets 4.08.
pub const MAX_BLOCKWISE: usize = 16;

struct Observation {
    token: Vec<u8>,
    filter: String,
    con: bool,
    /// When a CON notification was last sent (registration time at first): a NON observer
    /// gets one CON at least every [`CON_EVERY`] (RFC 7641 §4.5).
    con_at: Instant,
    seq: u32,
    szx: u8,
    /// The last notification's message when it was sent block-wise: the rest of it is
    /// served from here (`GET` with Block2).
    last: Option<Rc<Message>>,
}

struct Pending {
    mid: u16,
    token: Vec<u8>,
    bytes: Vec<u8>,
    retries: u32,
    timeout: Duration,
    next_at: Instant,
}

struct Peer {
    key: SessionKey,
    conn_id: u64,
    signal: Rc<Signal>,
    obs: Vec<Observation>,
    inflight: Vec<Pending>,
    recent: VecDeque<(u16, Vec<u8>)>,
}

/// What a poll of an endpoint left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Nothing more to send now.
    Idle,
    /// The batch was full: poll again after yielding.
    More,
    /// The endpoint observes nothing any more: its task ends.
    Gone,
}

pub struct Observers {
    peers: HashMap<SocketAddr, Peer>,
    /// Observations holding a large notification (`Observation::last`), oldest first.
    blockwise: VecDeque<(SocketAddr, Vec<u8>)>,
    total: usize,
    max_total: usize,
    max_per_peer: usize,
    next_mid: u16,
}

impl Observers {
    pub fn new(max_total: usize, max_per_peer: usize) -> Observers {
        Observers {
            peers: HashMap::new(),
            blockwise: VecDeque::new(),
            total: 0,
            max_total,
            max_per_peer,
            next_mid: 0x8000,
        }
    }

    /// Observations at once, over every endpoint.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Register (or refresh, same token) an observation. Returns the Observe value of the
    /// registration response, and the session signal of an endpoint that is new.
    pub fn register(
        &mut self,
        peer: SocketAddr,
        token: Vec<u8>,
        filter: &str,
        con: bool,
        szx: u8,
        broker: &mut Broker,
        now: Instant,
    ) -> Result<(u32, Option<Rc<Signal>>), Reply> {
        if let Some(p) = self.peers.get_mut(&peer)
            && let Some(o) = p.obs.iter_mut().find(|o| o.token == token)
            && o.filter == filter
        {
            o.con = con;
            o.szx = szx;
            o.seq = next_seq(o.seq);
            return Ok((o.seq, None));
        }
        // A token re-used for another filter replaces its observation.
        self.cancel(peer, &token, broker, now);
        let busy = |why: &str| {
            let mut r = Reply::error(ResponseType::ServiceUnavailable, why);
            r.max_age = Some(super::RETRY_AFTER_SECS);
            r
        };
        if self.total >= self.max_total {
            return Err(busy("broker.coap_max_observers reached"));
        }
        let mut watch = None;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.peers.entry(peer) {
            let signal = Rc::new(Signal::default());
            let client_id = format!("coap:{peer}");
            let req = ConnectReq {
                client_id: &client_id,
                clean_start: true,
                expiry: 0,
                will: None,
                signal: signal.clone(),
            };
            let c = broker
                .connect(req, now)
                .map_err(|_| busy("session.max_sessions reached"))?;
            slot.insert(Peer {
                key: c.key,
                conn_id: c.conn_id,
                signal: signal.clone(),
                obs: Vec::new(),
                inflight: Vec::new(),
                recent: VecDeque::new(),
            });
            watch = Some(signal);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(busy("observer state lost"));
        };
        if p.obs.len() >= self.max_per_peer {
            return Err(busy("broker.coap_max_observers_per_client reached"));
        }
        if !p.obs.iter().any(|o| o.filter == filter) {
            let opts = SubOpts {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                sub_id: None,
            };
            if let Err(code) = broker.subscribe(p.key, filter, opts, 0, now) {
                let r = if code == ReasonCode::QuotaExceeded {
                    busy("session.max_subscriptions reached")
                } else {
                    Reply::error(ResponseType::BadRequest, "invalid topic filter")
                };
                if p.obs.is_empty() {
                    let p = self.peers.remove(&peer);
                    if let Some(p) = p {
                        broker.disconnect(p.key, p.conn_id, false, now);
                    }
                }
                return Err(r);
            }
        }
        p.obs.push(Observation {
            token,
            filter: filter.to_owned(),
            con,
            con_at: now,
            seq: 1,
            szx,
            last: None,
        });
        self.total += 1;
        broker.metrics.add(Counter::CoapObserversRegistered, 1);
        Ok((1, watch))
    }

    /// Cancel the observation of `peer` with `token` (Observe 1, RST, or retransmissions
    /// exhausted); the endpoint's session ends with its last observation.
    pub fn cancel(&mut self, peer: SocketAddr, token: &[u8], broker: &mut Broker, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(i) = p.obs.iter().position(|o| o.token == token) else {
            return;
        };
        let o = p.obs.swap_remove(i);
        self.total -= 1;
        broker.metrics.add(Counter::CoapObserversCancelled, 1);
        p.inflight.retain(|x| x.token != token);
        if !p.obs.iter().any(|x| x.filter == o.filter) && broker.is_current(p.key, p.conn_id) {
            broker.unsubscribe(p.key, &o.filter);
        }
        if p.obs.is_empty() {
            self.end(peer, broker, now);
        }
    }

    /// The endpoint observes nothing any more: its session ends, its task is woken to stop.
    fn end(&mut self, peer: SocketAddr, broker: &mut Broker, now: Instant) {
        if let Some(p) = self.peers.remove(&peer) {
            self.total -= p.obs.len();
            broker.disconnect(p.key, p.conn_id, false, now);
            p.signal.notify();
        }
    }

    pub fn on_ack(&mut self, peer: SocketAddr, mid: u16) {
        if let Some(p) = self.peers.get_mut(&peer) {
            let before = p.inflight.len();
            p.inflight.retain(|x| x.mid != mid);
            if p.inflight.len() != before {
                p.signal.notify(); // room in the window: pull more
            }
        }
    }

    /// An RST answering a notification: the client no longer wants it (RFC 7641 §3.6).
    pub fn on_reset(&mut self, peer: SocketAddr, mid: u16, broker: &mut Broker, now: Instant) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let token = p
            .inflight
            .iter()
            .find(|x| x.mid == mid)
            .map(|x| x.token.clone())
            .or_else(|| {
                p.recent
                    .iter()
                    .find(|(m, _)| *m == mid)
                    .map(|(_, t)| t.clone())
            });
        if let Some(t) = token {
            self.cancel(peer, &t, broker, now);
        }
    }

    /// The rest of a notification sent block-wise: `GET <filter>` with Block2 `b`.
    pub fn block2(&self, peer: SocketAddr, path: &str, b: Block, _now: Instant) -> Option<Reply> {
        let p = self.peers.get(&peer)?;
        let o = p.obs.iter().find(|o| o.filter == path)?;
        let Some(m) = o.last.as_ref() else {
            return Some(Reply::error(
                ResponseType::RequestEntityIncomplete,
                "no block-wise notification kept for this observation",
            ));
        };
        let payload = m.payload();
        let size = b.size();
        let start = (b.num as usize).checked_mul(size)?;
        if start >= payload.len() {
            return Some(Reply::error(ResponseType::BadOption, "no such block"));
        }
        let end = (start + size).min(payload.len());
        let mut r = Reply::new(ResponseType::Content, payload[start..end].to_vec());
        r.block2 = Some(Block {
            num: b.num,
            more: end < payload.len(),
            szx: b.szx,
        });
        r.size2 = u32::try_from(payload.len()).ok();
        r.content_format = codec::content_type_of(m.props()).and_then(msg::content_format);
        Some(r)
    }

    /// Turn what the endpoint's session has queued into notifications (appended to `out`),
    /// retransmit what is due, and arm the session's deadline for the next retransmission.
    pub fn poll(
        &mut self,
        peer: SocketAddr,
        signal: &Rc<Signal>,
        broker: &mut Broker,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> Poll {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Poll::Gone;
        };
        if !Rc::ptr_eq(&p.signal, signal) {
            return Poll::Gone; // a task of an endpoint that ended and came back
        }
        if signal.kicked().is_some() || !broker.is_current(p.key, p.conn_id) {
            // Shutdown, or the core dropped the session (slow consumer).
            self.end(peer, broker, now);
            return Poll::Gone;
        }
        signal.take_ready();
        // Retransmissions (RFC 7252 §4.2): doubling timeout; given up after MAX_RETRANSMIT.
        let mut give_up = Vec::new();
        for x in p.inflight.iter_mut().filter(|x| x.next_at <= now) {
            if x.retries >= MAX_RETRANSMIT {
                give_up.push(x.token.clone());
                continue;
            }
            x.retries += 1;
            x.timeout *= 2;
            x.next_at = now + x.timeout;
            out.push(x.bytes.clone());
            broker.metrics.add(Counter::Retransmissions, 1);
        }
        if !give_up.is_empty() {
            for t in give_up {
                log::info!("coap: observer {peer} did not acknowledge a notification: cancelled");
                self.cancel(peer, &t, broker, now);
            }
            if !self.peers.contains_key(&peer) {
                return Poll::Gone;
            }
            return self.poll(peer, signal, broker, now, out);
        }
        let mids = &mut self.next_mid;
        let held = &mut self.blockwise;
        let mut sent = 0;
        let result = loop {
            if sent >= BATCH {
                break Poll::More;
            }
            let s = broker.session_mut(p.key);
            let Some(front) = s.queue.front() else {
                break Poll::Idle;
            };
            let cons = p
                .obs
                .iter()
                .filter(|o| o.as_con(now) && topic::matches(&o.filter, front.msg.topic()))
                .count();
            if cons > 0 && !p.inflight.is_empty() && p.inflight.len() + cons > CON_WINDOW {
                break Poll::Idle; // woken by the ACK
            }
            let Some(d) = s.pop() else {
                break Poll::Idle;
            };
            if d.msg.is_expired(now) {
                let client = s.client_id.clone();
                broker
                    .metrics
                    .count_drop(DropReason::Expired, &client, d.msg.topic(), now);
                continue;
            }
            let t = d.msg.topic();
            for o in p.obs.iter_mut().filter(|o| topic::matches(&o.filter, t)) {
                *mids = mids.wrapping_add(1);
                let mid = *mids;
                let con = o.as_con(now);
                if con {
                    o.con_at = now;
                }
                let bytes = notification(o, con, &d.msg, mid);
                if o.last.is_some() {
                    held.retain(|(a, t)| !(*a == peer && *t == o.token));
                    held.push_back((peer, o.token.clone()));
                }
                if con {
                    let jitter = Duration::from_millis(u64::from(mid) * 7919 % 1000);
                    let timeout = ACK_TIMEOUT + jitter;
                    p.inflight.push(Pending {
                        mid,
                        token: o.token.clone(),
                        bytes: bytes.clone(),
                        retries: 0,
                        timeout,
                        next_at: now + timeout,
                    });
                } else {
                    if p.recent.len() >= RECENT_NON {
                        p.recent.pop_front();
                    }
                    p.recent.push_back((mid, o.token.clone()));
                }
                out.push(bytes);
            }
            broker.metrics.add(Counter::MessagesDelivered, 1);
            sent += 1;
        };
        signal.set_deadline(p.inflight.iter().map(|x| x.next_at).min());
        while self.blockwise.len() > MAX_BLOCKWISE {
            let Some((a, t)) = self.blockwise.pop_front() else {
                break;
            };
            if let Some(o) = self
                .peers
                .get_mut(&a)
                .and_then(|p| p.obs.iter_mut().find(|o| o.token == t))
            {
                o.last = None;
            }
        }
        result
    }
}

fn next_seq(seq: u32) -> u32 {
    (seq + 1) & 0x00FF_FFFF
}

impl Observation {
    /// Is the next notification confirmable: a CON observation, or a NON one due its
    /// periodic CON.
    fn as_con(&self, now: Instant) -> bool {
        self.con || now.saturating_duration_since(self.con_at) >= CON_EVERY
    }
}

/// A notification (2.05 Content, CON or NON) of `m` for observation `o`.
fn notification(o: &mut Observation, con: bool, m: &Rc<Message>, mid: u16) -> Vec<u8> {
    o.seq = next_seq(o.seq);
    let mut p = Packet::new();
    p.header.set_type(if con {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Response(ResponseType::Content);
    p.header.message_id = mid;
    p.set_token(o.token.clone());
    msg::set_uint(&mut p, CoapOption::Observe, o.seq);
    if let Some(cf) = codec::content_type_of(m.props()).and_then(msg::content_format) {
        msg::set_uint(&mut p, CoapOption::ContentFormat, cf);
    }
    let payload = m.payload();
    let size = msg::block_size(o.szx);
    if payload.len() > size {
        let b = Block {
            num: 0,
            more: true,
            szx: o.szx,
        };
        msg::set_block(&mut p, CoapOption::Block2, b);
        msg::set_uint(
            &mut p,
            CoapOption::Size2,
            u32::try_from(payload.len()).unwrap_or(u32::MAX),
        );
        p.payload = payload[..size].to_vec();
        o.last = Some(m.clone());
    } else {
        p.payload = payload.to_vec();
        o.last = None;
    }
    msg::encode(&p)
}
