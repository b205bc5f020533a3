//! A client session: what outlives a connection. Subscriptions (mirrored in the router),
//! the bounded queue of deliveries waiting to be sent, the outbound in-flight window
//! (QoS 1/2 messages sent and not yet acknowledged, resent with DUP on reconnect), the
//! inbound QoS 2 packet ids awaiting PUBREL, the will, and expiry.
//!
//! The session does not know the wire protocol: packet ids are plain `u16` window keys that
//! the MQTT adapter uses as packet identifiers.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use super::message::Message;
use super::router::SubOpts;
use crate::protocol::mqtt::{QoS, ReasonCode};

/// How the core wakes the connection task of a session: new deliveries, or "you are done"
/// (taken over, shut down, too slow).
#[derive(Default)]
pub struct Signal {
    waker: Cell<Option<Waker>>,
    ready: Cell<bool>,
    kick: Cell<Option<ReasonCode>>,
    /// When the connection wants to be woken for a timeout (keep-alive, CONNECT deadline,
    /// retry, write timeout). The server's once-a-second sweep wakes connections whose
    /// deadline passed, so a connection needs no timer of its own.
    deadline: Cell<Option<Instant>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("ready", &self.ready.get())
            .field("kick", &self.kick.get())
            .finish()
    }
}

impl Signal {
    pub fn notify(&self) {
        self.ready.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Ask the connection to close with `reason` (sent as DISCONNECT in v5).
    pub fn kick(&self, reason: ReasonCode) {
        if self.kick.get().is_none() {
            self.kick.set(Some(reason));
        }
        self.notify();
    }

    pub fn kicked(&self) -> Option<ReasonCode> {
        self.kick.get()
    }

    pub fn set_deadline(&self, at: Option<Instant>) {
        self.deadline.set(at);
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get()
    }

    /// Wake the connection if its deadline has passed (the sweep).
    pub fn wake_if_due(&self, now: Instant) {
        if self.deadline.get().is_some_and(|d| d <= now) {
            self.notify();
        }
    }

    /// Is there something for the connection to look at?
    pub fn is_pending(&self) -> bool {
        self.ready.get() || self.kick.get().is_some()
    }

    /// Consume a pending notification.
    pub fn take_ready(&self) -> bool {
        self.ready.replace(false)
    }

    pub fn register(&self, waker: &Waker) {
        let mut w = self.waker.take();
        match &mut w {
            Some(old) if old.will_wake(waker) => {}
            _ => w = Some(waker.clone()),
        }
        self.waker.set(w);
    }
}

/// A message queued for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Rc<Message>,
    /// min(published QoS, subscription QoS) [MQTT-3.8.4-8].
    pub qos: QoS,
    pub retain: bool,
    /// Subscription identifiers of every matching subscription [MQTT-3.3.4-3].
    pub sub_ids: Box<[u32]>,
}

impl Delivery {
    pub fn heap_size(&self) -> usize {
        // The message is shared; count its full size per queue so that a byte cap bounds
        // what this session alone could keep alive.
        self.msg.heap_size() + self.sub_ids.len() * 4
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub state: OutState,
    pub sent_at: Instant,
    pub retries: u32,
    /// Held back at reconnect: to be resent (DUP, same packet id) once the client's
    /// Receive Maximum leaves room.
    pub resend: bool,
}

#[derive(Debug)]
pub struct Will {
    pub msg: Rc<Message>,
    pub delay: u32,
    /// Message Expiry Interval in seconds: the will's lifetime once it is published
    /// (5.0 §3.1.3.2.4), so its deadline is set then, not at CONNECT.
    pub expiry: Option<u32>,
}

/// Result of offering a delivery to a session queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued after evicting the oldest queued delivery (counted under this reason).
    Evicted(crate::metrics::DropReason),
    /// Not queued (counted under this reason).
    Refused(crate::metrics::DropReason),
    /// Connected subscriber whose QoS>0 queue is full: it is disconnected (slow consumer)
    /// and the message is then offered to its offline queue.
    SlowConsumer,
    /// Queued past the soft cap of a connected session (a burst): allowed up to twice the
    /// cap; the session is a slow consumer only if it stays over the cap
    /// (`Limits::slow_consumer_grace`).
    Overflow,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub online_msgs: usize,
    pub offline_msgs: usize,
    pub bytes: usize,
    pub evict_offline: bool,
}

#[derive(Debug)]
pub struct Conn {
    pub conn_id: u64,
    pub signal: Rc<Signal>,
}

#[derive(Debug)]
pub struct Session {
    /// Shared with the broker's index and the connection (one allocation).
    pub client_id: Rc<str>,
    /// Raw subscription topic (with any `$share/g/` prefix) and its options. A short list
    /// (capped by `session.max_subscriptions`): a vector costs an idle session less than a
    /// map.
    pub subs: Vec<(Box<str>, SubOpts)>,
    pub queue: VecDeque<Delivery>,
    pub queue_bytes: usize,
    pub inflight: VecDeque<Inflight>,
    next_pkid: u16,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL.
    pub inbound_qos2: Vec<u16>,
    pub conn: Option<Conn>,
    pub expiry_secs: u32,
    pub expires_at: Option<Instant>,
    pub will: Option<Will>,
    pub will_at: Option<Instant>,
    /// Since when a connected session's queue has been over its cap (see `Push::Overflow`).
    pub overflow_since: Option<Instant>,
}

impl Session {
    pub fn new(client_id: Rc<str>) -> Session {
        Session {
            client_id,
            subs: Vec::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            inflight: VecDeque::new(),
            next_pkid: 0,
            inbound_qos2: Vec::new(),
            conn: None,
            expiry_secs: 0,
            expires_at: None,
            will: None,
            will_at: None,
            overflow_since: None,
        }
    }

    pub fn sub_index(&self, raw: &str) -> Option<usize> {
        self.subs.iter().position(|(t, _)| &**t == raw)
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    pub fn notify(&self) {
        if let Some(c) = &self.conn {
            c.signal.notify();
        }
    }

    /// Offer a delivery. Policy (design.md §6): a connected subscriber that cannot keep up
    /// loses its oldest QoS 0 messages; a QoS>0 message finding the queue full is still
    /// queued up to twice the cap (a burst from a publisher arrives before the subscriber's
    /// connection could drain anything), and the subscriber is disconnected when its queue
    /// stays over the cap or reaches twice it. An offline session queues QoS>0 only,
    /// evicting the oldest or rejecting the newest per `session.offline_queue_policy`.
    pub fn push(&mut self, d: Delivery, lim: &QueueLimits) -> Push {
        use crate::metrics::DropReason;
        let size = d.heap_size();
        let online = self.is_connected();
        if !online && d.qos == QoS::AtMostOnce {
            return Push::Refused(DropReason::OfflineQos0);
        }
        let max = if online {
            lim.online_msgs
        } else {
            lim.offline_msgs
        };
        let fits = |s: &Session| s.queue.len() < max && s.queue_bytes + size <= lim.bytes;
        if size > lim.bytes {
            return Push::Refused(DropReason::QueueFull);
        }
        if fits(self) {
            self.enqueue(d, size);
            return Push::Queued;
        }
        if online {
            if d.qos == QoS::AtMostOnce {
                // Make room by dropping the oldest QoS 0 deliveries.
                while !fits(self) {
                    match self.queue.iter().position(|q| q.qos == QoS::AtMostOnce) {
                        Some(i) => {
                            let old = self.queue.remove(i).map_or(0, |q| q.heap_size());
                            self.queue_bytes -= old;
                        }
                        None => return Push::Refused(DropReason::QueueFull),
                    }
                }
                self.enqueue(d, size);
                return Push::Evicted(DropReason::SlowSubscriberQos0);
            }
            if self.queue.len() < 2 * max && self.queue_bytes + size <= lim.bytes.saturating_mul(2)
            {
                self.enqueue(d, size);
                return Push::Overflow;
            }
            return Push::SlowConsumer;
        }
        if lim.evict_offline {
            while !fits(self) {
                match self.queue.pop_front() {
                    Some(old) => self.queue_bytes -= old.heap_size(),
                    None => return Push::Refused(DropReason::OfflineRejected),
                }
            }
            self.enqueue(d, size);
            Push::Evicted(DropReason::OfflineEvicted)
        } else {
            Push::Refused(DropReason::OfflineRejected)
        }
    }

    /// Offer a retained message for a new subscription: queued whatever the message count
    /// (the retained store's caps bound them); refused only by the byte cap. Never
    /// `SlowConsumer`, never evicts.
    pub fn push_retained(&mut self, d: Delivery, lim: &QueueLimits) -> Push {
        use crate::metrics::DropReason;
        if !self.is_connected() && d.qos == QoS::AtMostOnce {
            return Push::Refused(DropReason::OfflineQos0);
        }
        let size = d.heap_size();
        if self.queue_bytes + size > lim.bytes {
            return Push::Refused(DropReason::QueueFull);
        }
        self.enqueue(d, size);
        Push::Queued
    }

    fn enqueue(&mut self, d: Delivery, size: usize) {
        self.queue_bytes += size;
        self.queue.push_back(d);
    }

    /// Is the queue over the cap for a connected session (a burst not yet drained)?
    pub fn over_cap(&self, lim: &QueueLimits) -> bool {
        self.queue.len() > lim.online_msgs || self.queue_bytes > lim.bytes
    }

    /// After the session went offline, bring its queue back under the offline caps (oldest
    /// first with `evict`, newest first with `reject`). Returns how many were dropped.
    pub fn trim_offline(&mut self, lim: &QueueLimits) -> usize {
        let mut dropped = 0;
        while self.queue.len() > lim.offline_msgs || self.queue_bytes > lim.bytes {
            let gone = if lim.evict_offline {
                self.queue.pop_front()
            } else {
                self.queue.pop_back()
            };
            match gone {
                Some(d) => self.queue_bytes -= d.heap_size(),
                None => break,
            }
            dropped += 1;
        }
        dropped
    }

    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queue_bytes -= d.heap_size();
        Some(d)
    }

    /// Drop every QoS 0 delivery still queued (the connection went away; QoS 0 is not kept
    /// for offline sessions). Returns how many.
    pub fn drop_queued_qos0(&mut self) -> usize {
        let before = self.queue.len();
        let mut freed = 0;
        self.queue.retain(|d| {
            let keep = d.qos != QoS::AtMostOnce;
            if !keep {
                freed += d.heap_size();
            }
            keep
        });
        self.queue_bytes -= freed;
        before - self.queue.len()
    }

    /// A free packet id, never zero, not used by an in-flight message [MQTT-2.2.1-3].
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                continue;
            }
            let id = self.next_pkid;
            if !self.inflight.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    pub fn inflight_index(&self, pkid: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.pkid == pkid)
    }

    pub fn clear_state(&mut self) {
        self.queue.clear();
        self.queue_bytes = 0;
        self.inflight.clear();
        self.inbound_qos2.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DropReason;

    fn d(qos: QoS) -> Delivery {
        Delivery {
            msg: Message::new("t", &[], b"x", qos, false, None, None),
            qos,
            retain: false,
            sub_ids: Box::new([]),
        }
    }

    const LIM: QueueLimits = QueueLimits {
        online_msgs: 2,
        offline_msgs: 3,
        bytes: 1 << 20,
        evict_offline: true,
    };

    fn online() -> Session {
        let mut s = Session::new("c".into());
        s.conn = Some(Conn {
            conn_id: 1,
            signal: Rc::default(),
        });
        s
    }

    #[test]
    fn online_qos0_evicts_oldest_qos0() {
        let mut s = online();
        assert_eq!(s.push(d(QoS::AtLeastOnce), &LIM), Push::Queued);
        assert_eq!(s.push(d(QoS::AtMostOnce), &LIM), Push::Queued);
        assert_eq!(
            s.push(d(QoS::AtMostOnce), &LIM),
            Push::Evicted(DropReason::SlowSubscriberQos0)
        );
        assert_eq!(s.queue.len(), 2);
        assert_eq!(s.queue[0].qos, QoS::AtLeastOnce, "QoS 1 kept");
        // QoS 1 past the cap: a burst is held up to twice the cap, then it is too much.
        assert_eq!(s.push(d(QoS::AtLeastOnce), &LIM), Push::Overflow);
        assert_eq!(s.push(d(QoS::AtLeastOnce), &LIM), Push::Overflow);
        assert!(s.over_cap(&LIM));
        assert_eq!(s.push(d(QoS::AtLeastOnce), &LIM), Push::SlowConsumer);
        assert_eq!(s.queue.len(), 4);
    }

    #[test]
    fn offline_policies() {
        let mut s = Session::new("c".into());
        assert_eq!(
            s.push(d(QoS::AtMostOnce), &LIM),
            Push::Refused(DropReason::OfflineQos0)
        );
        for _ in 0..3 {
            assert_eq!(s.push(d(QoS::AtLeastOnce), &LIM), Push::Queued);
        }
        assert_eq!(
            s.push(d(QoS::AtLeastOnce), &LIM),
            Push::Evicted(DropReason::OfflineEvicted)
        );
        let reject = QueueLimits {
            evict_offline: false,
            ..LIM
        };
        assert_eq!(
            s.push(d(QoS::AtLeastOnce), &reject),
            Push::Refused(DropReason::OfflineRejected)
        );
        assert_eq!(s.queue.len(), 3);
        let per = d(QoS::AtLeastOnce).heap_size();
        assert_eq!(s.queue_bytes, 3 * per);
        let tiny = QueueLimits {
            bytes: per * 2,
            ..LIM
        };
        let mut t = Session::new("c".into());
        t.push(d(QoS::AtLeastOnce), &tiny);
        t.push(d(QoS::AtLeastOnce), &tiny);
        assert_eq!(
            t.push(d(QoS::AtLeastOnce), &tiny),
            Push::Evicted(DropReason::OfflineEvicted)
        );
        assert_eq!(t.queue.len(), 2, "byte cap holds");
    }

    #[test]
    fn pkids_skip_zero_and_inflight() {
        let mut s = Session::new("c".into());
        s.next_pkid = u16::MAX - 1;
        assert_eq!(s.next_pkid(), u16::MAX);
        assert_eq!(s.next_pkid(), 1);
        s.inflight.push_back(Inflight {
            pkid: 2,
            delivery: d(QoS::AtLeastOnce),
            state: OutState::Published,
            sent_at: Instant::now(),
            retries: 0,
            resend: false,
        });
        assert_eq!(s.next_pkid(), 3);
    }
}
