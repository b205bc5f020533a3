//! The one protocol-agnostic core: sessions, the subscription router, the retained store and
//! the delivery policy. Plain synchronous code: it never awaits, never blocks and never
//! touches a socket. Protocol adapters call it (`connect`, `publish`, `subscribe`, ...) and
//! it answers with values; deliveries land in session queues and the owning connection is
//! woken through its `Signal`.

pub mod message;
pub mod retain;
pub mod router;
pub mod session;
pub mod topic;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::metrics::{Counter, DropReason, Gauges, Metrics};
use crate::protocol::mqtt::{QoS, ReasonCode};
use message::Message;
use router::{Match, Router, SubOpts};
use session::{Conn, Delivery, Push, QueueLimits, Session, Signal, Will};

/// How long a connected session's queue may stay over its cap while it drains a burst.
pub const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(5);

/// Index of a session in the broker. Valid until the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey(pub u32);

/// The caps and policies the core enforces, taken from configuration (`from_config`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_subscriptions: usize,
    pub queue: QueueLimits,
    pub max_inflight: u16,
    pub max_retained: usize,
    pub max_retained_bytes: usize,
    pub default_expiry: u32,
    pub max_qos: QoS,
    pub max_message_size: usize,
    pub retry_interval: Duration,
    pub max_retries: u32,
    pub max_keep_alive: u16,
    pub topic_alias_maximum: u16,
    /// A QoS>0 delivery into a connected session's full queue: disconnect the slow consumer
    /// (true) or drop the delivery (false).
    pub disconnect_on_full: bool,
    /// How long a connected session's queue may stay over its cap (a burst draining)
    /// before it is a slow consumer.
    pub slow_consumer_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 10_000,
            max_subscriptions: 100,
            queue: QueueLimits {
                online_msgs: 1000,
                offline_msgs: 1000,
                bytes: 4 << 20,
                evict_offline: true,
            },
            max_inflight: 256,
            max_retained: 10_000,
            max_retained_bytes: 16 << 20,
            default_expiry: 300,
            max_qos: QoS::ExactlyOnce,
            max_message_size: 1 << 20,
            retry_interval: Duration::from_secs(20),
            max_retries: 0,
            max_keep_alive: 0,
            topic_alias_maximum: 10,
            disconnect_on_full: true,
            slow_consumer_grace: SLOW_CONSUMER_GRACE,
        }
    }
}

/// What a connection asks of the core when its CONNECT is accepted by the adapter.
#[derive(Debug)]
pub struct ConnectReq<'a> {
    pub client_id: &'a str,
    pub clean_start: bool,
    /// Session expiry in seconds (u32::MAX = never).
    pub expiry: u32,
    pub will: Option<Will>,
    /// How the core wakes this connection (created by the driver with the connection).
    pub signal: Rc<Signal>,
}

#[derive(Debug)]
pub struct Connected {
    pub key: SessionKey,
    pub conn_id: u64,
    pub session_present: bool,
    pub signal: Rc<Signal>,
}

#[derive(Debug)]
pub struct Broker {
    pub limits: Limits,
    pub metrics: Rc<Metrics>,
    /// The auth provider and per-protocol switches, consulted by every protocol adapter
    /// (disabled until `server` installs one).
    pub auth: crate::auth::Auth,
    /// The per-client rate limits (`ratelimit.message`, `ratelimit.subscribe`), consulted by
    /// every protocol adapter with the buckets of its connection (off until `server`
    /// configures them; a reload replaces the quotas).
    pub ratelimit: crate::ratelimit::ClientLimits,
    /// Boxed: the slab's growth then copies pointers, not sessions, and an idle session
    /// costs its own size rather than a share of a doubled array.
    sessions: Slab<Box<Session>>,
    by_client: HashMap<Rc<str>, SessionKey>,
    router: Router,
    retained: retain::Retained,
    next_conn_id: u64,
    scratch: Vec<Match>,
    touched: Vec<SessionKey>,
}

impl Broker {
    pub fn new(limits: Limits, metrics: Rc<Metrics>) -> Broker {
        let retained = retain::Retained::new(limits.max_retained, limits.max_retained_bytes);
        Broker {
            limits,
            ratelimit: crate::ratelimit::ClientLimits::off(metrics.clone()),
            metrics,
            auth: crate::auth::Auth::disabled(),
            sessions: Slab::new(),
            by_client: HashMap::new(),
            router: Router::default(),
            retained,
            next_conn_id: 0,
            scratch: Vec::new(),
            touched: Vec::new(),
        }
    }

    pub fn session(&self, key: SessionKey) -> &Session {
        &self.sessions[key.0 as usize]
    }

    pub fn session_mut(&mut self, key: SessionKey) -> &mut Session {
        &mut self.sessions[key.0 as usize]
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn session_by_client(&self, client_id: &str) -> Option<SessionKey> {
        self.by_client.get(client_id).copied()
    }

    /// Is `conn_id` still the live connection of session `key`?
    pub fn is_current(&self, key: SessionKey, conn_id: u64) -> bool {
        self.sessions
            .get(key.0 as usize)
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| c.conn_id == conn_id)
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.len(),
            sessions_connected: self
                .sessions
                .iter()
                .filter(|(_, s)| s.is_connected())
                .count(),
            subscriptions: self.router.len(),
            retained_messages: self.retained.len(),
            retained_bytes: self.retained.bytes(),
            queued_messages: self.sessions.iter().map(|(_, s)| s.queue.len()).sum(),
            ratelimit_tracked_ips: 0, // the listener layer's, filled in by `listener::health`
        }
    }

    /// Attach a new connection to the session of `req.client_id`: resume it, or start a new
    /// one. A session that already has a connection is taken over: the old connection is
    /// kicked with 0x8E [MQTT-3.1.4-3] and its will is published unless it has a delay and
    /// the session continues [MQTT-3.1.3-9].
    pub fn connect(&mut self, req: ConnectReq<'_>, now: Instant) -> Result<Connected, ReasonCode> {
        let existing = self.by_client.get(req.client_id).copied();
        if let Some(key) = existing {
            let s = &mut self.sessions[key.0 as usize];
            if let Some(old) = s.conn.take() {
                old.signal.kick(ReasonCode::SessionTakenOver);
                let will = s.will.take();
                if let Some(w) = will
                    && (w.delay == 0 || req.clean_start)
                {
                    self.publish_will(key, w, now);
                }
            } else if self.sessions[key.0 as usize].will_at.is_some() {
                // Reconnected before the will delay passed: the will is not sent.
                let s = &mut self.sessions[key.0 as usize];
                s.will = None;
                s.will_at = None;
            }
            if req.clean_start {
                self.end_session(key, now);
            }
        } else if self.sessions.len() >= self.limits.max_sessions {
            log::warn!(
                "session refused for client {:?}: session.max_sessions ({}) reached",
                req.client_id,
                self.limits.max_sessions
            );
            return Err(ReasonCode::QuotaExceeded);
        }
        let (key, present) = match self.by_client.get(req.client_id) {
            Some(&k) => (k, true),
            None => {
                let id: Rc<str> = req.client_id.into();
                let k = SessionKey(self.sessions.insert(Box::new(Session::new(id.clone()))) as u32);
                self.by_client.insert(id, k);
                (k, false)
            }
        };
        self.next_conn_id += 1;
        let conn_id = self.next_conn_id;
        let signal = req.signal;
        let s = &mut self.sessions[key.0 as usize];
        s.conn = Some(Conn {
            conn_id,
            signal: signal.clone(),
        });
        s.expiry_secs = req.expiry;
        s.expires_at = None;
        s.will = req.will;
        s.will_at = None;
        Ok(Connected {
            key,
            conn_id,
            session_present: present,
            signal,
        })
    }

    /// The connection `conn_id` of session `key` ended. `publish_will` is false after a normal
    /// DISCONNECT (reason 0x00) [MQTT-3.14.4-3]. No-op if the connection was taken over.
    pub fn disconnect(&mut self, key: SessionKey, conn_id: u64, publish_will: bool, now: Instant) {
        if !self.is_current(key, conn_id) {
            return;
        }
        let s = &mut self.sessions[key.0 as usize];
        s.conn = None;
        let qos0 = s.drop_queued_qos0();
        let expiry = s.expiry_secs;
        let will = s.will.take();
        let client = s.client_id.clone();
        for _ in 0..qos0 {
            self.metrics
                .count_drop(DropReason::OfflineQos0, &client, "", now);
        }
        if let Some(w) = will.filter(|_| publish_will) {
            if w.delay == 0 || expiry == 0 {
                self.publish_will(key, w, now);
            } else {
                let s = &mut self.sessions[key.0 as usize];
                let delay = w.delay.min(expiry);
                s.will_at = Some(now + Duration::from_secs(u64::from(delay)));
                s.will = Some(w);
            }
        }
        let s = &mut self.sessions[key.0 as usize];
        if expiry == 0 {
            self.end_session(key, now);
        } else if expiry != u32::MAX {
            s.expires_at = Some(now + Duration::from_secs(u64::from(expiry)));
        }
    }

    /// Change the session expiry at DISCONNECT (v5) [MQTT-3.14.2-2 is checked by the adapter].
    pub fn set_expiry(&mut self, key: SessionKey, expiry: u32) {
        self.sessions[key.0 as usize].expiry_secs = expiry;
    }

    fn publish_will(&mut self, key: SessionKey, w: Will, now: Instant) {
        self.metrics.add(Counter::WillsPublished, 1);
        let msg = match w.expiry {
            // The will's Message Expiry Interval is its lifetime from now (5.0 §3.1.3.2.4).
            Some(secs) => {
                let m = &w.msg;
                let at = now + Duration::from_secs(u64::from(secs));
                let (topic, props, payload) = (m.topic(), m.props(), m.payload());
                Message::new(topic, props, payload, m.qos, m.retain, Some(at), m.origin)
            }
            None => w.msg,
        };
        let _ = key;
        if let Err(code) = self.publish(msg, now) {
            log::warn!("will message refused: {code:?}");
        }
    }

    fn end_session(&mut self, key: SessionKey, now: Instant) {
        let s = self.sessions.remove(key.0 as usize);
        self.by_client.remove(&s.client_id);
        for (raw, _) in &s.subs {
            if let Ok(t) = topic::parse_subscription(raw) {
                self.router.remove(key, t);
            }
        }
        let lost = s.queue.len() + s.inflight.len();
        for _ in 0..lost {
            self.metrics
                .count_drop(DropReason::SessionEnded, &s.client_id, "", now);
        }
        if let Some(w) = s.will {
            // A session that ends with a pending delayed will publishes it [MQTT-3.1.2-8].
            if s.will_at.is_some() {
                self.publish_will(key, w, now);
            }
        }
    }

    /// Route a message to every matching subscription and store it if retained. Returns the
    /// number of sessions it was queued for (0 lets v5 answer 0x10 No matching subscribers).
    /// Refused with 0x97 when it is retained and the retained store is full.
    pub fn publish(&mut self, msg: Rc<Message>, now: Instant) -> Result<usize, ReasonCode> {
        self.metrics.add(Counter::MessagesReceived, 1);
        if msg.retain && self.retained.set(&msg).is_err() {
            self.metrics
                .count_drop(DropReason::RetainedFull, "", msg.topic(), now);
            return Err(ReasonCode::QuotaExceeded);
        }
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        let sessions = &self.sessions;
        self.router.matches(msg.topic(), &mut matches, |k| {
            sessions.get(k.0 as usize).is_some_and(|s| s.is_connected())
        });
        // Overlapping subscriptions of one session: one delivery at the highest QoS,
        // carrying every subscription identifier [MQTT-3.3.4-2/3/5].
        matches.sort_unstable_by_key(|m| (m.key, m.shared));
        let mut delivered = 0;
        let mut i = 0;
        while i < matches.len() {
            let first = matches[i];
            let mut j = i + 1;
            while j < matches.len()
                && matches[j].key == first.key
                && !matches[j].shared
                && !first.shared
            {
                j += 1;
            }
            let group = &matches[i..j];
            i = j;
            let from_self = msg.origin == Some(first.key);
            // No Local: a subscription asking for it takes no part in the publisher's own
            // messages (neither its QoS nor its identifier); skip when none is left
            // [MQTT-3.8.3-3].
            let takes_part = |m: &Match| !(from_self && m.opts.no_local);
            if !group.iter().any(takes_part) {
                continue;
            }
            let sub_qos = group
                .iter()
                .filter(|m| takes_part(m))
                .map(|m| m.opts.qos)
                .max()
                .unwrap_or(QoS::AtMostOnce);
            let rap = group
                .iter()
                .filter(|m| takes_part(m))
                .any(|m| m.opts.retain_as_published);
            let sub_ids: Box<[u32]> = group
                .iter()
                .filter(|m| takes_part(m))
                .filter_map(|m| m.opts.sub_id.map(|n| n.get()))
                .collect();
            let d = Delivery {
                qos: msg.qos.min(sub_qos),
                // Retain As Published, else 0 for routed messages [MQTT-3.3.1-12/13].
                retain: msg.retain && rap && !first.shared,
                msg: msg.clone(),
                sub_ids,
            };
            if self.offer(first.key, d, now) {
                delivered += 1;
            }
        }
        self.scratch = matches;
        self.flush_notifications();
        Ok(delivered)
    }

    /// Queue `d` for session `key` under the queue policy; counts what is dropped.
    fn offer(&mut self, key: SessionKey, d: Delivery, now: Instant) -> bool {
        let lim = self.limits.queue;
        // A matched session can end while its message is being routed: a slow consumer
        // disconnected earlier in the same routing publishes its will, which can disconnect
        // (and end) this one. Its losses were counted when it ended.
        let Some(s) = self.sessions.get_mut(key.0 as usize) else {
            return false;
        };
        let topic_for_log = || d.msg.topic().to_owned();
        match s.push(d.clone(), &lim) {
            Push::Queued => {}
            Push::Evicted(reason) => {
                self.metrics
                    .count_drop(reason, &s.client_id, &topic_for_log(), now);
            }
            Push::Refused(reason) => {
                self.metrics
                    .count_drop(reason, &s.client_id, &topic_for_log(), now);
                return false;
            }
            Push::Overflow => {
                s.overflow_since.get_or_insert(now);
            }
            Push::SlowConsumer if !self.limits.disconnect_on_full => {
                self.metrics
                    .count_drop(DropReason::QueueFull, &s.client_id, &topic_for_log(), now);
                return false;
            }
            Push::SlowConsumer => {
                log::warn!(
                    "client {:?} cannot keep up (QoS>0 queue at twice its cap, {} messages): disconnecting",
                    s.client_id,
                    s.queue.len()
                );
                // The connection is gone as far as routing is concerned: the session goes
                // offline now, and the message takes the offline path.
                self.drop_slow_consumer(key, now);
                if self.sessions.get(key.0 as usize).is_none() {
                    self.metrics
                        .count_drop(DropReason::QueueFull, "", &topic_for_log(), now);
                    return false;
                }
                return self.offer(key, d, now);
            }
        }
        if self.sessions[key.0 as usize].is_connected() {
            self.touched.push(key);
        }
        true
    }

    /// Disconnect a connected session that cannot keep up (v5 DISCONNECT 0x97): it goes
    /// offline, its queue is trimmed to the offline caps (counted), its will is published.
    fn drop_slow_consumer(&mut self, key: SessionKey, now: Instant) {
        let s = &mut self.sessions[key.0 as usize];
        let Some(c) = &s.conn else { return };
        c.signal.kick(ReasonCode::QuotaExceeded);
        let conn_id = c.conn_id;
        s.overflow_since = None;
        self.disconnect(key, conn_id, true, now);
        let lim = self.limits.queue;
        if let Some(s) = self.sessions.get_mut(key.0 as usize) {
            let n = s.trim_offline(&lim);
            let reason = if lim.evict_offline {
                DropReason::OfflineEvicted
            } else {
                DropReason::OfflineRejected
            };
            let client = s.client_id.clone();
            for _ in 0..n {
                self.metrics.count_drop(reason, &client, "", now);
            }
        }
    }

    fn flush_notifications(&mut self) {
        for key in self.touched.drain(..) {
            if let Some(s) = self.sessions.get(key.0 as usize) {
                s.notify();
            }
        }
    }

    /// Add or replace a subscription; queues the retained messages it asks for
    /// (Retain Handling 0: always, 1: only if new, 2: never [MQTT-3.3.1-9/10/11]).
    /// Returns the granted QoS.
    pub fn subscribe(
        &mut self,
        key: SessionKey,
        raw: &str,
        mut opts: SubOpts,
        retain_handling: u8,
        now: Instant,
    ) -> Result<QoS, ReasonCode> {
        let t = topic::parse_subscription(raw).map_err(|_| ReasonCode::TopicFilterInvalid)?;
        if t.group.is_some() && opts.no_local {
            return Err(ReasonCode::ProtocolError); // [MQTT-3.8.3-4]
        }
        opts.qos = opts.qos.min(self.limits.max_qos);
        let s = &self.sessions[key.0 as usize];
        let exists = s.sub_index(raw).is_some();
        if !exists
            && self.limits.max_subscriptions > 0
            && s.subs.len() >= self.limits.max_subscriptions
        {
            log::warn!(
                "subscription {raw:?} refused for client {:?}: session.max_subscriptions ({}) reached",
                s.client_id,
                self.limits.max_subscriptions
            );
            self.metrics.add(Counter::SubscribeRefused, 1);
            return Err(ReasonCode::QuotaExceeded);
        }
        self.router.insert(key, t, opts);
        let s = &mut self.sessions[key.0 as usize];
        match s.sub_index(raw) {
            Some(i) => s.subs[i].1 = opts,
            None => s.subs.push((raw.into(), opts)),
        }
        // Retained messages are not sent for shared subscriptions [MQTT-4.8.2-?]: FluxMQ and
        // the spec's intent; a shared group is a work queue.
        if t.group.is_none() && (retain_handling == 0 || (retain_handling == 1 && !exists)) {
            let found: Vec<Rc<Message>> = self.retained.matching(t.filter, now).cloned().collect();
            for msg in found {
                let d = Delivery {
                    qos: msg.qos.min(opts.qos),
                    retain: true, // [MQTT-3.3.1-8]
                    sub_ids: opts.sub_id.map(|n| n.get()).into_iter().collect(),
                    msg,
                };
                // Every matching retained message is sent [MQTT-3.3.1-6 (3.1.1)]: the queue's
                // message cap does not apply (the retained store's caps bound them), so a
                // subscriber is never a slow consumer for subscribing; the byte cap does.
                let s = &mut self.sessions[key.0 as usize];
                if let Push::Refused(reason) = s.push_retained(d, &self.limits.queue) {
                    self.metrics
                        .count_drop(reason, &s.client_id, "(retained)", now);
                }
                if s.is_connected() {
                    self.touched.push(key);
                }
            }
            self.flush_notifications();
        }
        Ok(opts.qos)
    }

    /// Remove a subscription; false if there was none.
    pub fn unsubscribe(&mut self, key: SessionKey, raw: &str) -> bool {
        let Ok(t) = topic::parse_subscription(raw) else {
            return false;
        };
        let s = &mut self.sessions[key.0 as usize];
        match s.sub_index(raw) {
            Some(i) => {
                s.subs.swap_remove(i);
            }
            None => return false,
        }
        self.router.remove(key, t)
    }

    /// Housekeeping, called about once a second: delayed wills that are due, sessions whose
    /// expiry passed, expired retained messages.
    pub fn tick(&mut self, now: Instant) {
        let mut due_wills = Vec::new();
        let mut expired = Vec::new();
        let mut slow = Vec::new();
        let lim = self.limits.queue;
        for (k, s) in self.sessions.iter_mut() {
            if let Some(since) = s.overflow_since {
                if !s.is_connected() || !s.over_cap(&lim) {
                    s.overflow_since = None;
                } else if now.saturating_duration_since(since) >= self.limits.slow_consumer_grace {
                    slow.push(SessionKey(k as u32));
                }
            }
            if s.will_at.is_some_and(|t| t <= now) {
                due_wills.push(SessionKey(k as u32));
            }
            if s.expires_at.is_some_and(|t| t <= now) {
                expired.push(SessionKey(k as u32));
            }
        }
        for key in slow {
            if !self.limits.disconnect_on_full {
                continue; // its queue stays bounded at twice the cap; new deliveries are dropped
            }
            log::warn!(
                "client {:?} cannot keep up (queue over its cap for {:?}): disconnecting",
                self.sessions[key.0 as usize].client_id,
                self.limits.slow_consumer_grace
            );
            self.drop_slow_consumer(key, now);
        }
        for key in due_wills {
            let s = &mut self.sessions[key.0 as usize];
            s.will_at = None;
            if let Some(w) = s.will.take() {
                self.publish_will(key, w, now);
            }
        }
        for key in expired {
            self.metrics.add(Counter::SessionsExpired, 1);
            log::info!(
                "session {:?} expired",
                self.sessions[key.0 as usize].client_id
            );
            self.end_session(key, now);
        }
        let n = self.retained.purge_expired(now);
        for _ in 0..n {
            self.metrics
                .count_drop(DropReason::Expired, "", "(retained)", now);
        }
    }

    /// Kick every connected session with `reason` (server shutdown).
    pub fn kick_all(&mut self, reason: ReasonCode) {
        for (_, s) in self.sessions.iter() {
            if let Some(c) = &s.conn {
                c.signal.kick(reason);
            }
        }
    }

    /// Publish every will that is pending (delayed) at shutdown: the sessions end with the
    /// process, and a will is published when its session ends [MQTT-3.1.2-8].
    pub fn publish_pending_wills(&mut self, now: Instant) {
        let keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.will.is_some() && !s.is_connected())
            .map(|(k, _)| SessionKey(k as u32))
            .collect();
        for key in keys {
            if let Some(w) = self.sessions[key.0 as usize].will.take() {
                self.publish_will(key, w, now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
