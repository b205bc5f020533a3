//! Rate limiting (`ratelimit.*`, spec §1.9 and §5): token buckets on governor's GCRA, one
//! module consulted by every protocol. Owns the buckets and their bounded state: the
//! per-source-IP connection buckets ([`IpLimiter`], in `listener::Shared`), the per-client
//! message and subscribe buckets ([`ClientBuckets`], 16 bytes inside each connection, freed
//! with it) and the settings they are checked against ([`ClientLimits`], `Broker::ratelimit`).
//! Does not decide what a client sees: the caller turns a [`Refusal`] into its protocol's
//! answer. Every refusal is counted (`fluxmq_edge_ratelimit_refused_total{limit,protocol}`)
//! and logged here, one line per limit per second.
//!
//! # Buckets
//! `rate` tokens per second (fractional: 0.5 = one every 2 s) refill a bucket of `burst`;
//! each connection, PUBLISH or subscription entry takes one token, and is refused when none
//! is left. `rate: 0` never refills (`burst` requests in the bucket's life, then none);
//! `rate: 0, burst: 0` refuses everything. A bucket holds at most ~146 years of tokens (a
//! larger `burst` at a tiny `rate` is capped there). A bucket is one number, governor's GCRA
//! "theoretical arrival time" ([`Tat`]); one governor `RateLimiter` per limit kind holds the
//! quota, over a [`governor::clock::Clock`] that reads the `now` the caller passes in (the
//! state machines are sans-IO; tests drive a manual clock) and a one-slot state store the
//! bucket is swapped into for the check.
//!
//! # Reload
//! A reload (SIGHUP) rebuilds the quotas; **buckets keep their state**: a bucket's time debt
//! (how far its [`Tat`] is ahead of now) carries over, capped at an empty bucket of the new
//! quota. A client throttled under an old, lower limit is thus held back no longer than an
//! empty bucket of the new quota would be; after a limit is lowered, a client can get at
//! most one burst of the new quota before the new rate applies. The IP map is trimmed to a
//! lowered `max_tracked_ips` and cleared when the connection limit is switched off.
//!
//! # The calls each protocol makes (one line per call site)
//! * **Every TCP listener** (MQTT, TLS, WebSocket, HTTP; AMQP 0.9.1 and 1.0 when they land)
//!   accepts through `listener::accept_until_shutdown`, which calls
//!   `shared.admit(peer, gate.protocol)` right after `accept`, before TLS and before the
//!   connection counts against `max_connections`: a new TCP listener passes its `Gate`.
//!   (`listener::Shared::admit`; dropping the stream closes it, nothing is written).
//! * **WebSocket**: the same `shared.admit(peer, Protocol::Mqtt)` at accept, but answer a
//!   refusal with HTTP 429 before the upgrade (FluxMQ's behaviour; `Retry-After` from
//!   [`Refusal::retry_after_secs`]).
//! * **CoAP** (no connection; `listener::coap`): `shared.admit(src, Protocol::Coap)` for
//!   every request datagram; refused: 4.29 Too Many Requests (RFC 8516) with Max-Age =
//!   `retry_after_secs()`.
//! * **Publish paths**, where the message is about to be routed (after decoding, before the
//!   core): `broker.ratelimit.allow_message(&mut buckets, Protocol::X, client_id, now)`.
//!   MQTT: `protocol::mqtt::conn` (v5 QoS 1 PUBACK 0x97, QoS 2 PUBREC 0x97, QoS 0 dropped; v3
//!   QoS 0 dropped, QoS>0 disconnect). HTTP publish (`listener::http`, bucket per
//!   keep-alive connection): 429 with `Retry-After`. CoAP publish
//!   (`protocol::coap::Server::complete`, buckets per source endpoint): 4.29 with Max-Age. AMQP 1.0 transfer: rejected disposition `amqp:resource-limit-exceeded`.
//!   AMQP 0.9.1 basic.publish: `channel.close` 406 (PRECONDITION_FAILED; the protocol has no
//!   per-message refusal, and connection.blocked would stop every publisher on the
//!   connection, not the one over its rate).
//! * **Subscribe paths**, once per subscription entry:
//!   `broker.ratelimit.allow_subscribe(&mut buckets, Protocol::X, client_id, now)`. MQTT:
//!   SUBACK 0x97 (v5) / 0x80 (v3) for that entry. CoAP Observe registration: 4.29 with
//!   Max-Age.
//!
//! `buckets` is a [`ClientBuckets`] owned by the connection (MQTT `Conn`, an HTTP keep-alive
//! connection, an AMQP connection). CoAP has no connection: its buckets are kept per source
//! endpoint (ip:port) in a map capped at the slot's `max_connections`, holding only buckets
//! in debt, unknown endpoints sharing one overflow pair when it is full
//! (`protocol::coap::buckets`, [`ClientLimits::is_full`] decides what can be forgotten).

mod ip;

use std::cell::Cell;
use std::num::{NonZeroU32, NonZeroU64};
use std::rc::Rc;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::auth::Protocol;
use crate::config::{Bucket, RateLimit};
pub use crate::metrics::LimitKind as Limit;
use crate::metrics::Metrics;
pub use ip::IpLimiter;

/// A bucket's state: governor's GCRA theoretical arrival time, in nanoseconds since the
/// limiter's epoch (0 = never used, i.e. full). The bucket is full again once `now` reaches
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tat(u64);

impl Tat {
    pub const FULL: Tat = Tat(0);
}

/// Why a request was refused, and when the same request would pass again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    /// `None`: never under the current configuration (`rate: 0`, bucket used up).
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// Whole seconds for `Retry-After` (HTTP) and Max-Age (CoAP): at least 1, rounded up,
    /// one day when the bucket never refills.
    pub fn retry_after_secs(&self) -> u64 {
        const DAY: u64 = 86_400;
        match self.retry_after {
            Some(d) => (d.as_nanos().div_ceil(1_000_000_000) as u64).clamp(1, DAY),
            None => DAY,
        }
    }
}

// ---- governor adapters -------------------------------------------------------------------

/// governor's clock over time passed in: the caller sets it to its `now` before each check.
#[derive(Debug, Default)]
struct PassedIn(Cell<u64>);

impl Clock for PassedIn {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.get())
    }
}

/// governor's state store with one slot: a bucket's [`Tat`] is put in, checked, taken out.
/// One limiter (quota + clock) thus serves every bucket of a kind, and a bucket costs 8
/// bytes.
#[derive(Debug, Default)]
struct Slot(Rc<Cell<u64>>);

impl StateStore for Slot {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (out, next) = f(NonZeroU64::new(self.0.get()).map(|n| Nanos::new(n.get())))?;
        self.0.set(next.as_u64());
        Ok(out)
    }
}

type Governor = RateLimiter<NotKeyed, Slot, PassedIn, NoOpMiddleware<Nanos>>;

/// The longest a bucket can be in debt, in nanoseconds (about 146 years): `period x burst`
/// stays below this, and time since the epoch stays below as much again.
const MAX_DEBT: u64 = u64::MAX / 4;

/// One limit kind's quota: off, refusing everything, or a token bucket.
#[derive(Debug)]
pub struct Gate(GateKind);

#[derive(Debug)]
enum GateKind {
    Off,
    DenyAll,
    /// `rate: 0` (or one token in more than [`MAX_DEBT`]): `burst` tokens, never refilled.
    /// The bucket's [`Tat`] counts the tokens taken.
    NoRefill {
        burst: u32,
    },
    On {
        limiter: Governor,
        slot: Rc<Cell<u64>>,
        /// The debt of an empty bucket (`period x burst`): a bucket's [`Tat`] is never
        /// further than this ahead of `now` (the cap applied after a reload).
        empty: u64,
    },
}

impl Gate {
    pub const OFF: Gate = Gate(GateKind::Off);

    /// The gate for one `ratelimit.<kind>` section (`on`: that section and the master switch).
    pub fn new(on: bool, rate: f64, burst: u32) -> Gate {
        if !on {
            return Gate(GateKind::Off);
        }
        let Some(burst) = NonZeroU32::new(burst) else {
            // Validation allows burst 0 only with rate 0: nothing passes.
            return Gate(GateKind::DenyAll);
        };
        let period = 1e9 / rate;
        if !(rate > 0.0 && period <= MAX_DEBT as f64) {
            return Gate(GateKind::NoRefill { burst: burst.get() });
        }
        let period = (period.round() as u64).max(1);
        // A bucket holds at most MAX_DEBT of time (~146 years): nothing in GCRA's
        // arithmetic (which does not saturate) can overflow.
        let burst = burst.min(
            NonZeroU32::new((MAX_DEBT / period).min(u64::from(u32::MAX)) as u32)
                .unwrap_or(NonZeroU32::MIN),
        );
        let slot = Rc::new(Cell::new(0));
        let quota = Quota::with_period(Duration::from_nanos(period))
            .unwrap_or(Quota::per_second(burst))
            .allow_burst(burst);
        // Built at clock 0: governor's start point is then the epoch for every bucket.
        let limiter = RateLimiter::new(quota, Slot(slot.clone()), PassedIn::default());
        Gate(GateKind::On {
            limiter,
            slot,
            empty: period * u64::from(burst.get()),
        })
    }

    pub fn from_bucket(master: bool, b: &Bucket) -> Gate {
        Gate::new(master && b.enabled, b.rate, b.burst)
    }

    pub fn is_on(&self) -> bool {
        !matches!(self.0, GateKind::Off)
    }

    /// `tat`'s bucket is full at `now`: forgetting it would change no answer.
    pub fn is_full(&self, tat: Tat, now: u64) -> bool {
        match self.0 {
            GateKind::NoRefill { .. } => tat == Tat::FULL,
            _ => tat.0 <= now,
        }
    }

    /// Take one token from `tat`'s bucket at `now` (nanoseconds since the epoch). Refused:
    /// how long until a token is back (`None`: never).
    pub fn check(&self, tat: &mut Tat, now: u64) -> Result<(), Option<Duration>> {
        match &self.0 {
            GateKind::Off => Ok(()),
            GateKind::DenyAll => Err(None),
            GateKind::NoRefill { burst } => {
                if tat.0 < u64::from(*burst) {
                    tat.0 += 1;
                    Ok(())
                } else {
                    Err(None)
                }
            }
            GateKind::On {
                limiter,
                slot,
                empty,
            } => {
                limiter.clock().0.set(now);
                slot.set(tat.0.min(now.saturating_add(*empty)));
                let r = limiter.check();
                tat.0 = slot.get();
                r.map_err(|not_until| Some(not_until.wait_time_from(Nanos::new(now))))
            }
        }
    }
}

/// Nanoseconds from `epoch` to `now` (0 before it).
fn since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

// ---- per-client buckets -------------------------------------------------------------------

/// A connection's message and subscribe buckets: 16 bytes in the connection, no allocation,
/// gone when the connection ends (FluxMQ keeps one per client ID forever). A client that
/// reconnects starts with full buckets; the connection limit bounds how often it can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientBuckets {
    message: Tat,
    subscribe: Tat,
}

/// The per-client limits in force (`Broker::ratelimit`): the message and subscribe quotas,
/// read by every protocol's state machine through `&mut Broker`, and replaced by a reload.
#[derive(Debug)]
pub struct ClientLimits {
    epoch: Option<Instant>,
    message: Gate,
    subscribe: Gate,
    metrics: Rc<Metrics>,
}

impl ClientLimits {
    /// No limits (until [`configure`](Self::configure)).
    pub fn off(metrics: Rc<Metrics>) -> ClientLimits {
        ClientLimits {
            epoch: None,
            message: Gate::OFF,
            subscribe: Gate::OFF,
            metrics,
        }
    }

    /// Apply the `ratelimit` section (at start and on reload); buckets keep their state.
    pub fn configure(&mut self, cfg: &RateLimit, now: Instant) {
        self.epoch.get_or_insert(now);
        let [_, message, subscribe] = cfg.buckets();
        self.message = Gate::from_bucket(cfg.enabled, &message.1);
        self.subscribe = Gate::from_bucket(cfg.enabled, &subscribe.1);
    }

    /// Either per-client limit is on: buckets are worth keeping.
    pub fn is_on(&self) -> bool {
        self.message.is_on() || self.subscribe.is_on()
    }

    /// `b` is full again at `now` under the limits in force: forgetting it (a later request
    /// starting from a fresh [`ClientBuckets`]) would change no answer.
    pub fn is_full(&self, b: &ClientBuckets, now: Instant) -> bool {
        let at = self.epoch.map_or(0, |e| since(e, now));
        (!self.message.is_on() || self.message.is_full(b.message, at))
            && (!self.subscribe.is_on() || self.subscribe.is_full(b.subscribe, at))
    }

    /// One PUBLISH (HTTP publish, CoAP publish, AMQP transfer / basic.publish) of client
    /// `who` over `protocol`. Refusals are counted and logged here.
    #[inline]
    pub fn allow_message(
        &self,
        b: &mut ClientBuckets,
        protocol: Protocol,
        who: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !self.message.is_on() {
            return Ok(());
        }
        self.allow(
            &self.message,
            &mut b.message,
            Limit::Message,
            protocol,
            who,
            now,
        )
    }

    /// One subscription entry (a filter of a SUBSCRIBE, an AMQP link attach / basic.consume).
    pub fn allow_subscribe(
        &self,
        b: &mut ClientBuckets,
        protocol: Protocol,
        who: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !self.subscribe.is_on() {
            return Ok(());
        }
        self.allow(
            &self.subscribe,
            &mut b.subscribe,
            Limit::Subscribe,
            protocol,
            who,
            now,
        )
    }

    fn allow(
        &self,
        gate: &Gate,
        tat: &mut Tat,
        limit: Limit,
        protocol: Protocol,
        who: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        let at = self.epoch.map_or(0, |e| since(e, now));
        gate.check(tat, at).map_err(|retry_after| {
            self.metrics
                .count_rate_limited(limit, protocol, &format_args!("client {who:?}"), now);
            Refusal { limit, retry_after }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Tokens taken from one bucket at `now`, until the first refusal (at most 10,000).
    fn drain(g: &Gate, tat: &mut Tat, now: u64) -> u32 {
        let mut n = 0;
        while n < 10_000 && g.check(tat, now).is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn burst_then_rate() {
        // FluxMQ's TestIPRateLimiter_Allow: rate 5/s, burst 2.
        let g = Gate::new(true, 5.0, 2);
        let mut t = Tat::FULL;
        assert!(g.check(&mut t, 0).is_ok());
        assert!(g.check(&mut t, 0).is_ok());
        let wait = g.check(&mut t, 0).unwrap_err();
        assert_eq!(wait, Some(Duration::from_millis(200)));
        // 199 ms later still nothing, at 200 ms one token, exactly one.
        assert!(g.check(&mut t, 199_000_000).is_err());
        assert!(g.check(&mut t, 200_000_000).is_ok());
        assert!(g.check(&mut t, 200_000_000).is_err());
        // After a long pause: a full burst again, no more.
        assert_eq!(drain(&g, &mut t, 60 * S), 2);
    }

    #[test]
    fn steady_rate_over_time() {
        // 1000/s with burst 100: over 10 s of trying every millisecond, 100 + 10,000 pass.
        let g = Gate::new(true, 1000.0, 100);
        let mut t = Tat::FULL;
        let mut passed = 0;
        for ms in 0..10_000u64 {
            passed += drain(&g, &mut t, ms * 1_000_000);
        }
        assert_eq!(passed, 100 + 9_999);
    }

    #[test]
    fn fractional_rate() {
        // 0.5/s: one token every two seconds.
        let g = Gate::new(true, 0.5, 1);
        let mut t = Tat::FULL;
        assert!(g.check(&mut t, 10 * S).is_ok());
        assert_eq!(g.check(&mut t, 10 * S), Err(Some(Duration::from_secs(2))));
        assert!(g.check(&mut t, 11 * S).is_err());
        assert!(g.check(&mut t, 12 * S).is_ok());
        // 100/60 (FluxMQ's connection default): 20 at once, then one every 600 ms.
        let g = Gate::new(true, 100.0 / 60.0, 20);
        let mut t = Tat::FULL;
        assert_eq!(drain(&g, &mut t, 0), 20);
        assert_eq!(drain(&g, &mut t, 599_000_000), 0);
        assert_eq!(drain(&g, &mut t, 600_000_000), 1);
        assert_eq!(drain(&g, &mut t, 1_800_000_000), 2);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let g = Gate::new(true, 10.0, 3);
        let mut t = Tat::FULL;
        assert_eq!(drain(&g, &mut t, 0), 3);
        assert!(!g.is_full(t, 0));
        // Half refilled after 150 ms (one token and a half): one passes.
        assert_eq!(drain(&g, &mut t, 150_000_000), 1);
        // Full after 300 ms of no use: the bucket is full again and holds 3, not more.
        assert!(g.is_full(t, 500_000_000));
        assert_eq!(drain(&g, &mut t, 10 * S), 3);
    }

    #[test]
    fn off_zero_and_never_refilling() {
        let mut t = Tat::FULL;
        assert_eq!(drain(&Gate::new(false, 0.0, 0), &mut t, 0), 10_000);
        assert_eq!(drain(&Gate::OFF, &mut t, 0), 10_000);
        let deny = Gate::new(true, 0.0, 0);
        assert_eq!(deny.check(&mut t, 0), Err(None));
        // rate 0, burst 3: three in the bucket's life, then never (no retry time).
        let g = Gate::new(true, 0.0, 3);
        let mut t = Tat::FULL;
        assert_eq!(drain(&g, &mut t, 0), 3);
        assert_eq!(g.check(&mut t, 3600 * S), Err(None));
        assert_eq!(drain(&g, &mut t, u64::MAX), 0);
        assert!(
            !g.is_full(t, u64::MAX),
            "a used bucket that never refills is kept"
        );
        let mut t = Tat::FULL;
        let g = Gate::new(true, 0.0, u32::MAX);
        assert_eq!(drain(&g, &mut t, 0), 10_000);
        assert_eq!(
            drain(&g, &mut t, 1000 * S),
            10_000,
            "no refill, the burst is large"
        );
        // Extreme values do not overflow: a huge rate, a tiny one, the largest burst.
        let fast = Gate::new(true, 1e300, u32::MAX);
        let mut t = Tat::FULL;
        assert_eq!(drain(&fast, &mut t, 5), 10_000);
        let slow = Gate::new(true, 1e-300, 1);
        let mut t = Tat::FULL;
        assert_eq!(drain(&slow, &mut t, u64::MAX / 2), 1);
        assert_eq!(slow.check(&mut t, u64::MAX), Err(None));
        // One token in 1000 s, burst 2^32-1: the bucket is capped at ~146 years of debt.
        let g = Gate::new(true, 0.001, u32::MAX);
        let mut t = Tat::FULL;
        assert_eq!(drain(&g, &mut t, 0), 10_000);
        assert_eq!(drain(&g, &mut t, 1000 * S), 10_000);
    }

    #[test]
    fn reload_keeps_the_debt_capped_at_the_new_quota() {
        // Drained under 1/s burst 10: ten seconds of debt.
        let old = Gate::new(true, 1.0, 10);
        let mut t = Tat::FULL;
        assert_eq!(drain(&old, &mut t, 0), 10);
        // The new quota (100/s, burst 5) caps the debt at an empty bucket of its own: 50 ms.
        let new = Gate::new(true, 100.0, 5);
        assert!(new.check(&mut t, 0).is_err());
        assert_eq!(drain(&new, &mut t, 10_000_000), 1);
        assert_eq!(drain(&new, &mut t, 60_000_000), 5);
        // Lowering the quota: the 50 ms of debt is 0.05 token of the old quota, so at most
        // one burst passes at once, then the (lower) rate applies.
        let mut t = Tat::FULL;
        assert_eq!(drain(&new, &mut t, 0), 5);
        assert_eq!(drain(&old, &mut t, 0), 9);
        assert_eq!(drain(&old, &mut t, 49_000_000), 0);
        assert_eq!(drain(&old, &mut t, 50_000_000), 1);
        assert_eq!(drain(&old, &mut t, 1_049_000_000), 0);
        assert_eq!(drain(&old, &mut t, 1_050_000_000), 1);
    }

    #[test]
    fn refusal_seconds() {
        let r = |d| Refusal {
            limit: Limit::Message,
            retry_after: d,
        };
        assert_eq!(r(Some(Duration::from_millis(1))).retry_after_secs(), 1);
        assert_eq!(r(Some(Duration::from_millis(1500))).retry_after_secs(), 2);
        assert_eq!(r(Some(Duration::ZERO)).retry_after_secs(), 1);
        assert_eq!(r(None).retry_after_secs(), 86_400);
    }

    #[test]
    fn client_limits_count_per_kind_and_protocol() {
        let metrics = Rc::new(Metrics::default());
        let mut limits = ClientLimits::off(metrics.clone());
        let now = Instant::now();
        let mut b = ClientBuckets::default();
        assert!(
            limits
                .allow_message(&mut b, Protocol::Mqtt, "c", now)
                .is_ok()
        );
        let cfg: RateLimit = serde_yaml::from_str(
            "{ enabled: true, message: { rate: 1, burst: 2 }, subscribe: { rate: 0.5, burst: 1 } }",
        )
        .unwrap();
        limits.configure(&cfg, now);
        for _ in 0..2 {
            assert!(
                limits
                    .allow_message(&mut b, Protocol::Mqtt, "c", now)
                    .is_ok()
            );
        }
        let r = limits
            .allow_message(&mut b, Protocol::Mqtt, "c", now)
            .unwrap_err();
        assert_eq!(r.limit, Limit::Message);
        assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
        assert!(
            limits
                .allow_subscribe(&mut b, Protocol::Http, "c", now)
                .is_ok()
        );
        assert!(
            limits
                .allow_subscribe(&mut b, Protocol::Http, "c", now)
                .is_err()
        );
        // Another client has buckets of its own.
        let mut other = ClientBuckets::default();
        assert!(
            limits
                .allow_message(&mut other, Protocol::Mqtt, "d", now)
                .is_ok()
        );
        assert_eq!(metrics.rate_limited(Limit::Message, Protocol::Mqtt), 1);
        assert_eq!(metrics.rate_limited(Limit::Subscribe, Protocol::Http), 1);
        assert_eq!(metrics.rate_limited(Limit::Subscribe, Protocol::Mqtt), 0);
        // Per-kind and master switches.
        let cfg: RateLimit =
            serde_yaml::from_str("{ enabled: true, message: { enabled: false } }").unwrap();
        limits.configure(&cfg, now);
        assert!(
            limits
                .allow_message(&mut b, Protocol::Mqtt, "c", now)
                .is_ok()
        );
        limits.configure(&RateLimit::default(), now);
        assert!(
            limits
                .allow_subscribe(&mut b, Protocol::Mqtt, "c", now)
                .is_ok()
        );
        // The defaults (1000/s, burst 100): the message bucket, drained under 1/s and kept
        // through the reloads, is capped at an empty bucket of the new quota (100 ms).
        limits.configure(&serde_yaml::from_str("{ enabled: true }").unwrap(), now);
        assert!(
            limits
                .allow_message(&mut b, Protocol::Mqtt, "c", now)
                .is_err()
        );
        let later = now + Duration::from_millis(100);
        for _ in 0..100 {
            assert!(
                limits
                    .allow_message(&mut b, Protocol::Mqtt, "c", later)
                    .is_ok()
            );
        }
        assert!(
            limits
                .allow_message(&mut b, Protocol::Mqtt, "c", later)
                .is_err()
        );
    }
}
