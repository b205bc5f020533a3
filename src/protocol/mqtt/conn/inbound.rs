//! What a client sends after CONNECT: PUBLISH (QoS 0/1/2, topic aliases, receive maximum),
//! the acknowledgements of our deliveries, SUBSCRIBE / UNSUBSCRIBE and DISCONNECT.

use super::*;

impl Conn {
    // ---- PUBLISH in --------------------------------------------------------------------

    /// Message-level properties of a v5 PUBLISH or will, in wire form, for the stored message.
    pub(super) fn message_props(&mut self, p: &Properties<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(f) = p.payload_format {
            codec::put_byte_property(&mut out, 0x01, f);
        }
        if let Some(ct) = p.content_type {
            codec::put_string_property(&mut out, 0x03, ct);
        }
        if let Some(rt) = p.response_topic {
            codec::put_string_property(&mut out, 0x08, rt);
        }
        if let Some(cd) = p.correlation_data {
            codec::put_binary_property(&mut out, 0x09, cd);
        }
        for (k, v) in p.user_properties() {
            codec::put_user_property(&mut out, k, v);
        }
        out
    }

    pub(super) fn handle_publish(&mut self, p: Publish<'_>, broker: &mut Broker, now: Instant) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let lim = &broker.limits;
        if p.qos > lim.max_qos {
            // [MQTT-3.2.2-11]: QoS above the Maximum QoS announced.
            broker
                .metrics
                .count_drop(DropReason::QosNotSupported, &self.client_id, p.topic, now);
            return self.fail(
                ReasonCode::QoSNotSupported,
                "PUBLISH QoS above broker.max_qos",
                broker,
                now,
            );
        }
        if p.payload.len() > lim.max_message_size {
            broker
                .metrics
                .count_drop(DropReason::TooLarge, &self.client_id, p.topic, now);
            return self.fail(
                ReasonCode::PacketTooLarge,
                "payload above broker.max_message_size",
                broker,
                now,
            );
        }
        if p.props.subscription_ids().next().is_some() {
            return self.fail(
                ReasonCode::ProtocolError,
                "Subscription Identifier in a client PUBLISH",
                broker,
                now,
            ); // [MQTT-3.3.4-6]
        }
        // Topic alias (v5, inbound) [MQTT-3.3.2-7..12].
        let alias_topic: Option<Box<str>>;
        let topic: &str = match p.props.topic_alias {
            None => p.topic,
            Some(alias) => {
                let max = broker.limits.topic_alias_maximum;
                if alias == 0 || alias > max {
                    return self.fail(
                        ReasonCode::TopicAliasInvalid,
                        "topic alias out of range",
                        broker,
                        now,
                    );
                }
                let slot = usize::from(alias - 1);
                if p.topic.is_empty() {
                    match self
                        .aliases
                        .as_ref()
                        .and_then(|a| a.inbound.get(slot))
                        .and_then(|t| t.clone())
                    {
                        Some(t) => {
                            alias_topic = Some(t);
                            alias_topic.as_deref().unwrap_or_default()
                        }
                        None => {
                            return self.fail(
                                ReasonCode::ProtocolError,
                                "unknown topic alias",
                                broker,
                                now,
                            );
                        }
                    }
                } else {
                    let table = &mut self.aliases.get_or_insert_with(Box::default).inbound;
                    if table.len() < usize::from(max) {
                        table.resize(usize::from(max), None);
                    }
                    table[slot] = Some(p.topic.into());
                    p.topic
                }
            }
        };
        let pkid = p.pkid;
        if p.qos == QoS::ExactlyOnce {
            let id = pkid.map_or(0, |p| p.get());
            let s = broker.session_mut(key);
            if s.inbound_qos2.contains(&id) {
                // A resent QoS 2 PUBLISH not yet released: acknowledge, do not deliver twice
                // [MQTT-4.3.3-10].
                return self.send(&Packet::PubRec(ack(pkid_or_one(pkid), ReasonCode::Success)));
            }
            if s.inbound_qos2.len() >= usize::from(broker.limits.max_inflight) {
                // More unacknowledged QoS 2 than the Receive Maximum we announced [MQTT-3.3.4-7].
                return self.fail(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                    broker,
                    now,
                );
            }
        }
        match self.authorize(crate::auth::Action::Publish, topic, broker, now) {
            None => return, // waiting: handled again with the answer
            Some(true) => {}
            Some(false) => return self.publish_denied(p.qos, pkid, topic, key, broker, now),
        }
        // Rate limit (`ratelimit.message`). Not the first check: a PUBLISH that sets a topic
        // alias has recorded it above even when refused here (or the client's next
        // alias-only PUBLISH would be a protocol error), a resent QoS 2 not yet released was
        // acknowledged above, and one waiting for authorization is handled again with the
        // answer: each costs one token at most, a denied one none.
        if broker
            .ratelimit
            .allow_message(&mut self.buckets, Protocol::Mqtt, &self.client_id, now)
            .is_err()
        {
            return self.publish_rate_limited(p.qos, pkid, broker, now);
        }
        if p.props.payload_format == Some(1) && std::str::from_utf8(p.payload).is_err() {
            // [MQTT-3.3.2-4] the server may refuse a payload that is not the UTF-8 it claims.
            return self.answer_publish(
                p.qos,
                pkid,
                Err(ReasonCode::PayloadFormatInvalid),
                key,
                broker,
                now,
            );
        }
        let props = if self.v5() {
            self.message_props(&p.props)
        } else {
            Vec::new()
        };
        let expires_at = p
            .props
            .message_expiry
            .map(|s| now + Duration::from_secs(u64::from(s)));
        let msg = Message::new(
            topic,
            &props,
            p.payload,
            p.qos,
            p.retain,
            expires_at,
            Some(key),
        );
        let result = broker.publish(msg, now);
        self.answer_publish(p.qos, pkid, result, key, broker, now);
    }

    /// A PUBLISH the provider did not allow (spec §2.5): 3.1.1 closes the connection; v5
    /// answers 0x87 (QoS 1 PUBACK, QoS 2 PUBREC) or drops a QoS 0 message, and stays.
    fn publish_denied(
        &mut self,
        qos: QoS,
        pkid: Option<PacketId>,
        topic: &str,
        key: SessionKey,
        broker: &mut Broker,
        now: Instant,
    ) {
        broker
            .metrics
            .count_drop(DropReason::NotAuthorized, &self.client_id, topic, now);
        if !self.v5() {
            return self.fail(
                ReasonCode::NotAuthorized,
                "publish not authorized",
                broker,
                now,
            );
        }
        self.answer_publish(qos, pkid, Err(ReasonCode::NotAuthorized), key, broker, now);
    }

    /// A PUBLISH over `ratelimit.message` (spec §5): MQTT 5 answers QoS 1 with PUBACK 0x97
    /// and QoS 2 with PUBREC 0x97 and keeps the connection; QoS 0 is dropped. 3.1.1 drops
    /// QoS 0 and closes the connection for QoS>0 (it has no way to refuse one). Counted as a
    /// dropped message (`rate_limited`) and a refusal (logged by the limiter).
    fn publish_rate_limited(
        &mut self,
        qos: QoS,
        pkid: Option<PacketId>,
        broker: &mut Broker,
        now: Instant,
    ) {
        broker.metrics.add_drop(DropReason::RateLimited);
        let id = pkid_or_one(pkid);
        match qos {
            QoS::AtMostOnce => {}
            _ if !self.v5() => {
                log::info!(
                    "client {:?} from {}: QoS {} PUBLISH over ratelimit.message; closing \
                     (MQTT 3.1.1 cannot refuse it)",
                    self.client_id,
                    self.peer,
                    qos as u8
                );
                self.close(CloseReason::RateLimited, broker, Some(now));
            }
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack(id, ReasonCode::QuotaExceeded))),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack(id, ReasonCode::QuotaExceeded))),
        }
    }

    pub(super) fn answer_publish(
        &mut self,
        qos: QoS,
        pkid: Option<PacketId>,
        result: Result<usize, ReasonCode>,
        key: SessionKey,
        broker: &mut Broker,
        now: Instant,
    ) {
        let code = match result {
            Ok(0) if self.v5() => ReasonCode::NoMatchingSubscribers,
            Ok(_) => ReasonCode::Success,
            Err(code) => {
                if !self.v5() && qos > QoS::AtMostOnce {
                    // 3.1.1 has no way to refuse a QoS>0 PUBLISH: close (counted, logged).
                    return self.fail(code, "publish refused", broker, now);
                }
                code
            }
        };
        let id = pkid_or_one(pkid);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack(id, code))),
            QoS::ExactlyOnce => {
                // The publish may have ended this connection's session (its own subscription
                // made it a slow consumer): record the id only while the session is ours.
                let live = self
                    .session
                    .as_ref()
                    .is_some_and(|a| broker.is_current(a.key, a.conn_id));
                if !code.is_error() && live {
                    broker.session_mut(key).inbound_qos2.push(id.get());
                }
                self.send(&Packet::PubRec(ack(id, code)));
            }
        }
    }

    pub(super) fn handle_pubrel(&mut self, a: Ack<'_>, broker: &mut Broker) {
        let Some(s) = &self.session else { return };
        let q = &mut broker.session_mut(s.key).inbound_qos2;
        let code = match q.iter().position(|&id| id == a.pkid.get()) {
            Some(i) => {
                q.swap_remove(i);
                ReasonCode::Success
            }
            None => ReasonCode::PacketIdentifierNotFound,
        };
        self.send(&Packet::PubComp(ack(a.pkid, code)));
    }

    // ---- acknowledgements of our deliveries -----------------------------------------

    pub(super) fn handle_puback(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        self.finish_inflight(a.pkid, QoS::AtLeastOnce, OutState::Published, broker, now);
    }

    pub(super) fn handle_pubcomp(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        self.finish_inflight(a.pkid, QoS::ExactlyOnce, OutState::Released, broker, now);
    }

    pub(super) fn finish_inflight(
        &mut self,
        pkid: PacketId,
        qos: QoS,
        state: OutState,
        broker: &mut Broker,
        now: Instant,
    ) {
        let Some(a) = &self.session else { return };
        let s = broker.session_mut(a.key);
        match s.inflight_index(pkid.get()) {
            Some(i) if s.inflight[i].state == state && s.inflight[i].delivery.qos == qos => {
                s.inflight.remove(i);
                broker.metrics.add(Counter::MessagesDelivered, 1);
                self.poll_deliveries(broker, now);
            }
            _ => log::debug!(
                "client {:?}: acknowledgement for unknown packet id {pkid}",
                self.client_id
            ),
        }
    }

    pub(super) fn handle_pubrec(&mut self, a: Ack<'_>, broker: &mut Broker, now: Instant) {
        let Some(at) = &self.session else { return };
        let s = broker.session_mut(at.key);
        match s.inflight_index(a.pkid.get()) {
            Some(i) if s.inflight[i].delivery.qos == QoS::ExactlyOnce => {
                if a.code.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-4].
                    s.inflight.remove(i);
                    self.poll_deliveries(broker, now);
                    return;
                }
                s.inflight[i].state = OutState::Released;
                s.inflight[i].sent_at = now;
                self.send(&Packet::PubRel(ack(a.pkid, ReasonCode::Success)));
            }
            _ => self.send(&Packet::PubRel(ack(
                a.pkid,
                ReasonCode::PacketIdentifierNotFound,
            ))),
        }
    }

    // ---- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------------------

    pub(super) fn handle_subscribe(
        &mut self,
        sub: Subscribe<'_>,
        broker: &mut Broker,
        now: Instant,
    ) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let mut ids = sub.props.subscription_ids();
        let sub_id = ids.next().and_then(NonZeroU32::new);
        if ids.next().is_some() {
            return self.fail(
                ReasonCode::ProtocolError,
                "several Subscription Identifiers",
                broker,
                now,
            );
        }
        let allowed = if broker
            .auth
            .for_protocol(crate::auth::Protocol::Mqtt)
            .is_some()
        {
            match self.authorize_filters(sub.filters().map(|(f, _)| f), broker, now) {
                None => return, // waiting: handled again with the answers
                some => some,
            }
        } else {
            None
        };
        let mut codes = Vec::new();
        for (i, (filter, o)) in sub.filters().enumerate() {
            if let Some(allowed) = &allowed
                && !allowed.get(i).copied().unwrap_or(false)
            {
                log::info!(
                    "client {:?}: subscription {filter:?} not authorized",
                    self.client_id
                );
                broker.metrics.add(Counter::SubscribeRefused, 1);
                codes.push(ReasonCode::NotAuthorized);
                continue;
            }
            // Rate limit (`ratelimit.subscribe`): one token per entry; an entry over it is
            // refused (0x97; 3.1.1: 0x80), the others are served.
            if broker
                .ratelimit
                .allow_subscribe(&mut self.buckets, Protocol::Mqtt, &self.client_id, now)
                .is_err()
            {
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let opts = SubOpts {
                qos: o.qos,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                sub_id,
            };
            let code = match broker.subscribe(key, filter, opts, o.retain_handling, now) {
                Ok(QoS::AtMostOnce) => ReasonCode::Success,
                Ok(QoS::AtLeastOnce) => ReasonCode::GrantedQoS1,
                Ok(QoS::ExactlyOnce) => ReasonCode::GrantedQoS2,
                Err(code) => {
                    log::info!(
                        "client {:?}: subscription {filter:?} refused ({code:?})",
                        self.client_id
                    );
                    code
                }
            };
            codes.push(code);
        }
        self.send(&Packet::SubAck(SubAck {
            pkid: sub.pkid,
            props: Properties::default(),
            codes: &codes,
        }));
    }

    pub(super) fn handle_unsubscribe(&mut self, u: Unsubscribe<'_>, broker: &mut Broker) {
        let Some(a) = &self.session else { return };
        let key = a.key;
        let codes: Vec<ReasonCode> = u
            .filters()
            .map(|f| {
                if broker.unsubscribe(key, f) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            props: Properties::default(),
            codes: &codes,
        }));
    }

    pub(super) fn handle_disconnect(
        &mut self,
        d: Disconnect<'_>,
        broker: &mut Broker,
        now: Instant,
    ) {
        if let Some(e) = d.props.session_expiry {
            if self.connect_expiry == 0 && e != 0 {
                // [MQTT-3.14.2-2]
                return self.fail(
                    ReasonCode::ProtocolError,
                    "session expiry set at DISCONNECT after 0 at CONNECT",
                    broker,
                    now,
                );
            }
            if let Some(a) = &self.session {
                broker.set_expiry(a.key, e);
            }
        }
        // Disconnect with Will Message (0x04) keeps the will; any other reason discards it
        // [MQTT-3.1.2-10].
        self.will_on_close = d.code == ReasonCode::DisconnectWithWill;
        self.close(CloseReason::ClientDisconnect, broker, Some(now));
    }
}
