//! Deliveries out: queued messages pulled from the session within the in-flight window
//! and encoded as PUBLISH (packet id, remaining expiry, outbound topic alias).

use super::*;

impl Conn {
    // ---- deliveries out ----------------------------------------------------------------

    /// Move queued deliveries into the output buffer, within the client's Receive Maximum
    /// (and `session.max_inflight_messages`) for QoS>0, and while output is below the high
    /// water mark. Also reacts to a kick from the core.
    pub fn poll_deliveries(&mut self, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        if let Some(reason) = self.signal.kicked() {
            return self.kicked(reason, broker, now);
        }
        self.signal.take_ready();
        let key = a.key;
        let window = usize::from(self.receive_max.min(broker.limits.max_inflight));
        if self.pending_resends > 0 {
            self.resend_held_back(key, window, broker, now);
        }
        loop {
            if self.out.len() >= self.high_water {
                break;
            }
            let s = broker.session_mut(key);
            let Some(front) = s.queue.front() else { break };
            if front.qos > QoS::AtMostOnce && s.inflight.len() >= window {
                break;
            }
            let Some(d) = s.pop() else { break };
            if d.msg.is_expired(now) {
                broker
                    .metrics
                    .count_drop(DropReason::Expired, &self.client_id, d.msg.topic(), now);
                continue;
            }
            let pkid = if d.qos > QoS::AtMostOnce {
                Some(s.next_pkid())
            } else {
                None
            };
            if !self.encode_fitting(
                &d,
                pkid.and_then(NonZeroU16::new),
                false,
                &broker.metrics,
                now,
            ) {
                continue;
            }
            if let Some(id) = pkid {
                broker.session_mut(key).inflight.push_back(Inflight {
                    pkid: id,
                    delivery: d,
                    state: OutState::Published,
                    sent_at: now,
                    retries: 0,
                    resend: false,
                });
            } else {
                broker.metrics.add(Counter::MessagesDelivered, 1);
            }
        }
    }

    /// Encode a delivery unless it is larger than the client's Maximum Packet Size: then it
    /// is taken back and counted (not sent [MQTT-3.1.2-24/25]), with the topic alias it set
    /// up, which the client never saw. Returns whether it was encoded.
    pub(super) fn encode_fitting(
        &mut self,
        d: &Delivery,
        pkid: Option<PacketId>,
        dup: bool,
        metrics: &Metrics,
        now: Instant,
    ) -> bool {
        let before = self.out.len();
        let had_alias = self
            .aliases
            .as_ref()
            .is_some_and(|a| a.outbound.contains_key(d.msg.topic()));
        self.encode_delivery(d, pkid, dup, now);
        if self.out.len() - before <= self.max_packet_out {
            return true;
        }
        self.out.truncate(before);
        if !had_alias && let Some(a) = self.aliases.as_mut() {
            a.outbound.remove(d.msg.topic());
        }
        let reason = DropReason::PacketTooLargeForClient;
        metrics.count_drop(reason, &self.client_id, d.msg.topic(), now);
        false
    }

    pub(super) fn encode_delivery(
        &mut self,
        d: &Delivery,
        pkid: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) {
        let v5 = self.v5();
        let mut props = Properties::default();
        let mut topic = d.msg.topic();
        if v5 {
            props.message_expiry = d.msg.remaining_expiry(now);
            props.subscription_ids_out = &d.sub_ids;
            props.raw = d.msg.props();
            if self.alias_max_out > 0 {
                let table = &mut self.aliases.get_or_insert_with(Box::default).outbound;
                match table.get(topic) {
                    Some(&alias) => {
                        props.topic_alias = Some(alias);
                        topic = "";
                    }
                    None if table.len() < usize::from(self.alias_max_out) => {
                        let alias = table.len() as u16 + 1;
                        table.insert(topic.into(), alias);
                        props.topic_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let p = Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            pkid,
            props,
            payload: d.msg.payload(),
        });
        self.send(&p);
    }
}
