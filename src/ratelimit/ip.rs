//! The connection limit per source IP (`ratelimit.connection`): a map from IP to bucket
//! with a hard entry cap (`max_tracked_ips`), checked by every accept loop and per CoAP
//! datagram through `listener::Shared::admit`.
//!
//! Bounded state, and what happens at the cap:
//! * An entry whose bucket is full again is worth nothing (a new entry would be the same), so
//!   it can be dropped without changing any answer. The sweep that runs every
//!   `cleanup_interval` (from the server's housekeeping tick) drops those: an IP's entry
//!   lives at most the time its bucket takes to refill plus `cleanup_interval`.
//! * When the map is full, a new IP first triggers the same sweep (at most every
//!   [`FULL_SWEEP_GAP`], and only once some entry can have refilled, so a flood of new IPs
//!   costs no repeated scans). If every entry is still in debt, **unknown IPs share one
//!   overflow bucket** of the same quota (counted: `ratelimit_ip_overflow_total`): an
//!   attacker rotating through many addresses gets one bucket between all of them rather
//!   than fresh ones, and cannot evict the buckets of the IPs already tracked. The price:
//!   while the map is full of active IPs, a new, well-behaved IP competes for that shared
//!   bucket.
//! * IPv4-mapped IPv6 addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Gate, Limit, Refusal, Tat, since};
use crate::auth::Protocol;
use crate::config::RateLimit;
use crate::metrics::{Counter, Metrics};

/// Least time between two sweeps triggered by a full map.
pub const FULL_SWEEP_GAP: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct IpLimiter {
    epoch: Option<Instant>,
    gate: Gate,
    map: HashMap<IpAddr, Tat>,
    cap: usize,
    /// Nanoseconds between periodic sweeps (`cleanup_interval`).
    cleanup: u64,
    /// Nanoseconds since the epoch: the next periodic sweep; the earliest time a sweep of a
    /// full map can free anything (the smallest entry `Tat` seen, a lower bound); the last
    /// sweep of a full map.
    next_sweep: u64,
    earliest_full: u64,
    last_full_sweep: Option<u64>,
    /// Shared by unknown IPs while the map is full of buckets in debt.
    overflow: Tat,
    metrics: Rc<Metrics>,
}

impl IpLimiter {
    /// No limit (until [`configure`](Self::configure)).
    pub fn off(metrics: Rc<Metrics>) -> IpLimiter {
        IpLimiter {
            epoch: None,
            gate: Gate::OFF,
            map: HashMap::new(),
            cap: 0,
            cleanup: 0,
            next_sweep: 0,
            earliest_full: 0,
            last_full_sweep: None,
            overflow: Tat::FULL,
            metrics,
        }
    }

    /// Apply the `ratelimit` section (at start and on reload). Entries keep their buckets;
    /// the map is trimmed to a lowered cap (the entries closest to full go first) and
    /// emptied when the limit is off.
    pub fn configure(&mut self, cfg: &RateLimit, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let at = since(epoch, now);
        let c = &cfg.connection;
        self.gate = Gate::new(cfg.enabled && c.enabled, c.rate, c.burst);
        self.cap = c.max_tracked_ips as usize;
        self.cleanup = u64::try_from(c.cleanup_interval.as_nanos()).unwrap_or(u64::MAX);
        self.next_sweep = at.saturating_add(self.cleanup);
        if !self.gate.is_on() {
            self.map = HashMap::new();
            self.overflow = Tat::FULL;
            return;
        }
        if self.map.len() > self.cap {
            self.sweep_at(at);
        }
        if self.map.len() > self.cap {
            let mut tats: Vec<Tat> = self.map.values().copied().collect();
            tats.sort_unstable();
            let keep_above = tats[self.map.len() - self.cap - 1];
            let mut excess = self.map.len() - self.cap;
            self.map.retain(|_, t| {
                let drop = excess > 0 && *t <= keep_above;
                excess -= usize::from(drop);
                !drop
            });
            self.map.shrink_to_fit();
        }
    }

    /// Source IPs tracked (the `ratelimit_tracked_ips` gauge).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A new connection (or CoAP request) from `ip`. Refusals are counted and logged here.
    pub fn allow_connection(
        &mut self,
        ip: IpAddr,
        protocol: Protocol,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !self.gate.is_on() {
            return Ok(());
        }
        let at = self.epoch.map_or(0, |e| since(e, now));
        let ip = ip.to_canonical();
        let checked = match self.map.get_mut(&ip) {
            Some(tat) => self.gate.check(tat, at),
            None => {
                if self.map.len() >= self.cap
                    && at >= self.earliest_full
                    && self
                        .last_full_sweep
                        .is_none_or(|t| at.saturating_sub(t) >= FULL_SWEEP_GAP.as_nanos() as u64)
                {
                    self.last_full_sweep = Some(at);
                    self.sweep_at(at);
                }
                if self.map.len() < self.cap {
                    let mut tat = Tat::FULL;
                    let r = self.gate.check(&mut tat, at);
                    if !self.gate.is_full(tat, at) {
                        self.earliest_full = self.earliest_full.min(tat.0);
                        self.map.insert(ip, tat);
                    }
                    r
                } else {
                    self.metrics.add(Counter::RateLimitOverflow, 1);
                    self.gate.check(&mut self.overflow, at)
                }
            }
        };
        checked.map_err(|retry_after| {
            self.metrics
                .count_rate_limited(Limit::Connection, protocol, &ip, now);
            Refusal {
                limit: Limit::Connection,
                retry_after,
            }
        })
    }

    /// Housekeeping (once a second): every `cleanup_interval`, drop the entries whose bucket
    /// is full again.
    pub fn tick(&mut self, now: Instant) {
        let Some(epoch) = self.epoch else { return };
        let at = since(epoch, now);
        if self.gate.is_on() && at >= self.next_sweep {
            self.next_sweep = at.saturating_add(self.cleanup);
            self.sweep_at(at);
        }
    }

    /// Drop every entry whose bucket is full at `at`; note when the next one can be.
    fn sweep_at(&mut self, at: u64) {
        let mut earliest = u64::MAX;
        let gate = &self.gate;
        self.map.retain(|_, t| {
            let keep = !gate.is_full(*t, at);
            if keep {
                earliest = earliest.min(t.0);
            }
            keep
        });
        self.earliest_full = earliest;
        if self.map.capacity() > 64 && self.map.capacity() > 4 * self.map.len() {
            self.map.shrink_to(2 * self.map.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn limiter(yaml: &str) -> (IpLimiter, Rc<Metrics>, Instant) {
        let metrics = Rc::new(Metrics::default());
        let mut l = IpLimiter::off(metrics.clone());
        let cfg: RateLimit = serde_yaml::from_str(yaml).unwrap();
        let t0 = Instant::now();
        l.configure(&cfg, t0);
        (l, metrics, t0)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
    }

    fn ok(l: &mut IpLimiter, ip: IpAddr, now: Instant) -> bool {
        l.allow_connection(ip, Protocol::Mqtt, now).is_ok()
    }

    #[test]
    fn per_ip_buckets_are_independent() {
        // FluxMQ's TestIPRateLimiter_DifferentIPs, at rate 5/s burst 2.
        let (mut l, m, t0) = limiter("{ enabled: true, connection: { rate: 5, burst: 2 } }");
        assert!(ok(&mut l, ip(1), t0) && ok(&mut l, ip(1), t0));
        let r = l.allow_connection(ip(1), Protocol::Mqtt, t0).unwrap_err();
        assert_eq!(r.limit, Limit::Connection);
        assert_eq!(r.retry_after, Some(Duration::from_millis(200)));
        assert!(ok(&mut l, ip(2), t0) && ok(&mut l, ip(2), t0));
        assert!(!ok(&mut l, ip(2), t0));
        assert!(ok(&mut l, ip(1), t0 + Duration::from_millis(250)));
        assert_eq!(m.rate_limited(Limit::Connection, Protocol::Mqtt), 2);
        // The same host as an IPv4-mapped IPv6 address shares the bucket.
        let mapped = IpAddr::V6(Ipv4Addr::from(0x7f00_0002).to_ipv6_mapped());
        assert!(!ok(&mut l, mapped, t0));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn disabled_tracks_nothing() {
        let (mut l, _, t0) = limiter("{ enabled: false, connection: { rate: 0, burst: 0 } }");
        for n in 0..100 {
            assert!(ok(&mut l, ip(n), t0));
        }
        assert!(l.is_empty());
        let (mut l, _, t0) = limiter("{ enabled: true, connection: { enabled: false } }");
        assert!(ok(&mut l, ip(1), t0));
        assert!(l.is_empty());
    }

    #[test]
    fn full_map_shares_one_overflow_bucket() {
        // Cap 3, burst 2, one token every 10 s: entries stay in debt for the whole test.
        let (mut l, m, t0) =
            limiter("{ enabled: true, connection: { rate: 0.1, burst: 2, max_tracked_ips: 3 } }");
        for n in 1..=3 {
            assert!(ok(&mut l, ip(n), t0));
        }
        assert_eq!(l.len(), 3);
        // IPs 4..: one shared bucket of 2.
        assert!(ok(&mut l, ip(4), t0));
        assert!(ok(&mut l, ip(5), t0));
        for n in 6..50 {
            assert!(!ok(&mut l, ip(n), t0), "ip {n}");
        }
        assert_eq!(l.len(), 3, "the map never grows past its cap");
        assert_eq!(m.get(Counter::RateLimitOverflow), 46);
        // The tracked IPs keep their own buckets: one token left each.
        for n in 1..=3 {
            assert!(ok(&mut l, ip(n), t0));
            assert!(!ok(&mut l, ip(n), t0));
        }
        // Once a tracked IP's bucket is full again (20 s), a new IP takes its place.
        let t = t0 + Duration::from_secs(20);
        assert!(ok(&mut l, ip(1), t), "ip 1 refilled");
        let t = t0 + Duration::from_secs(21);
        // ip 1 is in debt again; 2 and 3 have been full since 20 s: swept for 60 and 61.
        assert!(ok(&mut l, ip(60), t) && ok(&mut l, ip(61), t));
        assert_eq!(l.len(), 3);
        assert!(l.map.contains_key(&ip(1)));
        assert!(l.map.contains_key(&ip(60)) && l.map.contains_key(&ip(61)));
    }

    #[test]
    fn full_map_sweeps_are_spaced() {
        let (mut l, m, t0) =
            limiter("{ enabled: true, connection: { rate: 1000, burst: 1, max_tracked_ips: 2 } }");
        assert!(ok(&mut l, ip(1), t0) && ok(&mut l, ip(2), t0));
        // 1 ms later both are full again: the first full-map sweep runs at once, frees both.
        let t1 = t0 + Duration::from_millis(1);
        assert!(ok(&mut l, ip(3), t1) && ok(&mut l, ip(4), t1));
        assert_eq!(l.len(), 2);
        // Within FULL_SWEEP_GAP no new sweep: ip 5 uses the overflow bucket.
        let t2 = t1 + Duration::from_millis(2);
        assert!(ok(&mut l, ip(5), t2));
        assert_eq!(m.get(Counter::RateLimitOverflow), 1);
        assert!(!l.map.contains_key(&ip(5)));
        let t3 = t1 + FULL_SWEEP_GAP;
        assert!(ok(&mut l, ip(6), t3));
        assert!(l.map.contains_key(&ip(6)));
    }

    #[test]
    fn entries_expire_every_cleanup_interval_once_full() {
        let (mut l, _, t0) =
            limiter("{ enabled: true, connection: { rate: 1, burst: 5, cleanup_interval: 30s } }");
        for n in 0..10 {
            assert!(ok(&mut l, ip(n), t0));
        }
        // ip 0 keeps connecting: its bucket is in debt at every sweep.
        for _ in 0..4 {
            assert!(ok(&mut l, ip(0), t0));
        }
        l.tick(t0 + Duration::from_secs(29));
        assert_eq!(l.len(), 10, "no sweep before cleanup_interval");
        assert!(ok(&mut l, ip(0), t0 + Duration::from_millis(29_500)));
        l.tick(t0 + Duration::from_secs(30));
        assert_eq!(l.len(), 1, "full buckets dropped, the one in debt kept");
        assert!(l.map.contains_key(&ip(0)));
        l.tick(t0 + Duration::from_secs(45));
        assert_eq!(l.len(), 1, "next sweep at 60 s");
        l.tick(t0 + Duration::from_secs(60));
        assert!(l.is_empty());
    }

    #[test]
    fn reload_keeps_buckets_and_trims_to_a_lower_cap() {
        let (mut l, _, t0) = limiter("{ enabled: true, connection: { rate: 0.01, burst: 2 } }");
        assert!(ok(&mut l, ip(1), t0) && ok(&mut l, ip(1), t0));
        for n in 2..=5 {
            assert!(ok(&mut l, ip(n), t0));
        }
        // A higher burst: ip 1's debt is kept (capped at an empty bucket of the new quota).
        let cfg: RateLimit = serde_yaml::from_str(
            "{ enabled: true, connection: { rate: 0.01, burst: 3, max_tracked_ips: 2 } }",
        )
        .unwrap();
        l.configure(&cfg, t0);
        assert_eq!(l.len(), 2, "trimmed to the new cap");
        assert!(l.map.contains_key(&ip(1)), "the most indebted IP is kept");
        assert!(ok(&mut l, ip(1), t0));
        assert!(!ok(&mut l, ip(1), t0));
        // Off: everything passes and nothing is kept.
        l.configure(&RateLimit::default(), t0);
        assert!(l.is_empty());
        assert!(ok(&mut l, ip(1), t0));
        // IPv6 works the same.
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        l.configure(&cfg, t0);
        assert!(ok(&mut l, v6, t0) && ok(&mut l, v6, t0) && ok(&mut l, v6, t0));
        assert!(!ok(&mut l, v6, t0));
    }
}
