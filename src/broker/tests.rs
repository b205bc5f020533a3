//! Core tests on a manual clock: sessions, takeover, wills, routing policy, retained.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;

fn broker(limits: Limits) -> Broker {
    Broker::new(limits, Rc::new(Metrics::default()))
}

fn connect(b: &mut Broker, id: &str, clean: bool, expiry: u32, now: Instant) -> Connected {
    b.connect(
        ConnectReq {
            client_id: id,
            clean_start: clean,
            expiry,
            will: None,
            signal: Rc::default(),
        },
        now,
    )
    .unwrap()
}

fn msg(topic: &str, qos: QoS, retain: bool) -> Rc<Message> {
    Message::new(topic, &[], b"payload", qos, retain, None, None)
}

/// Limits with a tiny queue (`online` messages connected, `offline` offline), evict policy.
fn small_queues(online: usize, offline: usize) -> Limits {
    Limits {
        queue: QueueLimits {
            online_msgs: online,
            offline_msgs: offline,
            bytes: 1 << 20,
            evict_offline: true,
        },
        ..Limits::default()
    }
}

fn opts(qos: QoS) -> SubOpts {
    SubOpts {
        qos,
        no_local: false,
        retain_as_published: false,
        sub_id: None,
    }
}

#[test]
fn takeover_kicks_old_connection_mqtt_3_1_4_3() {
    let now = Instant::now();
    let mut b = broker(Limits::default());
    let a = connect(&mut b, "c", false, 60, now);
    let a2 = connect(&mut b, "c", false, 60, now);
    assert_eq!(a.signal.kicked(), Some(ReasonCode::SessionTakenOver));
    assert!(a2.session_present);
    assert!(!b.is_current(a.key, a.conn_id));
    b.disconnect(a.key, a.conn_id, true, now); // the old connection's late close is a no-op
    assert!(b.is_current(a2.key, a2.conn_id));
}

#[test]
fn overlapping_subscriptions_deliver_once_at_max_qos_mqtt_3_3_4_2() {
    let now = Instant::now();
    let mut b = broker(Limits::default());
    let s = connect(&mut b, "s", true, 0, now);
    b.subscribe(s.key, "a/+", opts(QoS::AtMostOnce), 0, now)
        .unwrap();
    let mut o = opts(QoS::AtLeastOnce);
    o.sub_id = std::num::NonZeroU32::new(7);
    b.subscribe(s.key, "a/#", o, 0, now).unwrap();
    assert_eq!(b.publish(msg("a/b", QoS::ExactlyOnce, false), now), Ok(1));
    let q = &b.session(s.key).queue;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].qos, QoS::AtLeastOnce);
    assert_eq!(&*q[0].sub_ids, &[7]);
}

#[test]
fn no_local_mqtt_3_8_3_3() {
    let now = Instant::now();
    let mut b = broker(Limits::default());
    let s = connect(&mut b, "s", true, 0, now);
    let mut o = opts(QoS::AtMostOnce);
    o.no_local = true;
    b.subscribe(s.key, "t", o, 0, now).unwrap();
    let m = Message::new("t", &[], b"x", QoS::AtMostOnce, false, None, Some(s.key));
    assert_eq!(b.publish(m, now), Ok(0));
}

#[test]
fn retain_handling_mqtt_3_3_1_9_to_11() {
    let now = Instant::now();
    let mut b = broker(Limits::default());
    b.publish(msg("r/1", QoS::AtLeastOnce, true), now).unwrap();
    let s = connect(&mut b, "s", true, 0, now);
    b.subscribe(s.key, "r/#", opts(QoS::AtLeastOnce), 1, now)
        .unwrap();
    assert_eq!(
        b.session(s.key).queue.len(),
        1,
        "rh=1 on a new subscription sends"
    );
    assert!(
        b.session(s.key).queue[0].retain,
        "[MQTT-3.3.1-8] retained copy has retain=1"
    );
    b.subscribe(s.key, "r/#", opts(QoS::AtLeastOnce), 1, now)
        .unwrap();
    assert_eq!(
        b.session(s.key).queue.len(),
        1,
        "rh=1 on an existing subscription does not"
    );
    b.subscribe(s.key, "r/+", opts(QoS::AtLeastOnce), 2, now)
        .unwrap();
    assert_eq!(b.session(s.key).queue.len(), 1, "rh=2 never sends");
    b.subscribe(s.key, "r/#", opts(QoS::AtLeastOnce), 0, now)
        .unwrap();
    assert_eq!(b.session(s.key).queue.len(), 2, "rh=0 always sends");
    // Routed copies have retain=0 unless Retain As Published [MQTT-3.3.1-12].
    b.publish(msg("r/1", QoS::AtLeastOnce, true), now).unwrap();
    assert!(!b.session(s.key).queue[2].retain);
}

#[test]
fn delayed_will_and_session_expiry() {
    let t0 = Instant::now();
    let mut b = broker(Limits::default());
    let w = connect(&mut b, "watch", false, 600, t0);
    b.subscribe(w.key, "will/#", opts(QoS::AtLeastOnce), 0, t0)
        .unwrap();
    let will = session::Will {
        msg: msg("will/x", QoS::AtLeastOnce, false),
        delay: 5,
        expiry: None,
    };
    let c = b
        .connect(
            ConnectReq {
                client_id: "c",
                clean_start: true,
                expiry: 10,
                will: Some(will),
                signal: Rc::default(),
            },
            t0,
        )
        .unwrap();
    b.disconnect(c.key, c.conn_id, true, t0);
    b.tick(t0 + Duration::from_secs(4));
    assert_eq!(b.session(w.key).queue.len(), 0, "not before the delay");
    b.tick(t0 + Duration::from_secs(5));
    assert_eq!(b.session(w.key).queue.len(), 1, "published after the delay");
    b.tick(t0 + Duration::from_secs(11));
    assert!(b.session_by_client("c").is_none(), "session expired");
    assert_eq!(b.metrics.get(Counter::SessionsExpired), 1);
}

#[test]
fn will_cancelled_by_reconnect_within_delay() {
    let t0 = Instant::now();
    let mut b = broker(Limits::default());
    let w = connect(&mut b, "watch", false, 600, t0);
    b.subscribe(w.key, "will/#", opts(QoS::AtLeastOnce), 0, t0)
        .unwrap();
    let will = session::Will {
        msg: msg("will/x", QoS::AtLeastOnce, false),
        delay: 5,
        expiry: None,
    };
    let c = b
        .connect(
            ConnectReq {
                client_id: "c",
                clean_start: false,
                expiry: 60,
                will: Some(will),
                signal: Rc::default(),
            },
            t0,
        )
        .unwrap();
    b.disconnect(c.key, c.conn_id, true, t0);
    connect(&mut b, "c", false, 60, t0 + Duration::from_secs(1));
    b.tick(t0 + Duration::from_secs(10));
    assert_eq!(b.session(w.key).queue.len(), 0);
}

#[test]
fn max_sessions_and_subscriptions_caps() {
    let now = Instant::now();
    let mut b = broker(Limits {
        max_sessions: 1,
        max_subscriptions: 1,
        ..Limits::default()
    });
    let s = connect(&mut b, "a", true, 0, now);
    let err = b.connect(
        ConnectReq {
            client_id: "b",
            clean_start: true,
            expiry: 0,
            will: None,
            signal: Rc::default(),
        },
        now,
    );
    assert_eq!(err.err(), Some(ReasonCode::QuotaExceeded));
    b.subscribe(s.key, "x", opts(QoS::AtMostOnce), 0, now)
        .unwrap();
    assert_eq!(
        b.subscribe(s.key, "y", opts(QoS::AtMostOnce), 0, now),
        Err(ReasonCode::QuotaExceeded)
    );
    assert_eq!(
        b.subscribe(s.key, "x", opts(QoS::AtLeastOnce), 0, now),
        Ok(QoS::AtLeastOnce),
        "replacing is fine"
    );
}

#[test]
fn slow_consumer_is_disconnected_and_message_kept_offline() {
    let now = Instant::now();
    let lim = small_queues(2, 10);
    let mut b = broker(lim);
    let s = connect(&mut b, "slow", false, 60, now);
    b.subscribe(s.key, "t", opts(QoS::AtLeastOnce), 0, now)
        .unwrap();
    // A burst of 5 into a queue capped at 2: held (up to twice the cap), the rest is too
    // much and disconnects the subscriber; the offline queue keeps what fits.
    for _ in 0..5 {
        b.publish(msg("t", QoS::AtLeastOnce, false), now).unwrap();
    }
    assert_eq!(s.signal.kicked(), Some(ReasonCode::QuotaExceeded));
    assert!(!b.session(s.key).is_connected());
    assert_eq!(
        b.session(s.key).queue.len(),
        5,
        "kept for the offline session"
    );
}

#[test]
fn burst_over_the_cap_is_held_and_drained_slow_consumer_only_if_it_stays() {
    let t0 = Instant::now();
    let lim = small_queues(2, 2);
    let mut b = broker(lim);
    let s = connect(&mut b, "c", false, 60, t0);
    b.subscribe(s.key, "t", opts(QoS::AtLeastOnce), 0, t0)
        .unwrap();
    for _ in 0..3 {
        b.publish(msg("t", QoS::AtLeastOnce, false), t0).unwrap();
    }
    assert_eq!(s.signal.kicked(), None, "a burst is not a slow consumer");
    // Drained in time: the overflow mark clears.
    b.session_mut(s.key).pop();
    b.tick(t0 + SLOW_CONSUMER_GRACE);
    assert_eq!(b.session(s.key).overflow_since, None);
    assert!(b.session(s.key).is_connected());
    // Over the cap again and it stays there past the grace: slow consumer, and the offline
    // queue keeps the newest 2 (evict policy), the oldest counted.
    b.publish(msg("t", QoS::AtLeastOnce, false), t0 + SLOW_CONSUMER_GRACE)
        .unwrap();
    b.tick(t0 + SLOW_CONSUMER_GRACE * 2);
    assert_eq!(s.signal.kicked(), Some(ReasonCode::QuotaExceeded));
    assert!(!b.session(s.key).is_connected());
    assert_eq!(b.session(s.key).queue.len(), 2);
    assert_eq!(b.metrics.dropped(DropReason::OfflineEvicted), 1);
}

#[test]
fn retained_store_full_refuses_publish() {
    let now = Instant::now();
    let mut b = broker(Limits {
        max_retained: 1,
        ..Limits::default()
    });
    b.publish(msg("a", QoS::AtMostOnce, true), now).unwrap();
    assert_eq!(
        b.publish(msg("b", QoS::AtMostOnce, true), now),
        Err(ReasonCode::QuotaExceeded)
    );
    assert_eq!(b.metrics.dropped(DropReason::RetainedFull), 1);
}

#[test]
fn full_queue_without_disconnect_on_full_drops_and_keeps_the_connection() {
    let now = Instant::now();
    let mut lim = small_queues(2, 10);
    lim.disconnect_on_full = false;
    let mut b = broker(lim);
    let s = connect(&mut b, "slow", false, 60, now);
    b.subscribe(s.key, "t", opts(QoS::AtLeastOnce), 0, now)
        .unwrap();
    for _ in 0..5 {
        b.publish(msg("t", QoS::AtLeastOnce, false), now).unwrap();
    }
    assert_eq!(s.signal.kicked(), None);
    assert!(b.session(s.key).is_connected());
    assert_eq!(b.session(s.key).queue.len(), 4, "held up to twice the cap");
    assert_eq!(b.metrics.dropped(DropReason::QueueFull), 1);
}
