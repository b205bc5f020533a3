//! The per-client rate-limit buckets of CoAP (`ratelimit.message`, `ratelimit.subscribe`):
//! UDP has no connection to hold them, so they are kept per source endpoint (IP and port),
//! in a map capped at the slot's `max_connections` (the same cap as the exchange cache).
//!
//! Bounded state, and what happens at the cap (the policy of the IP map,
//! `ratelimit::IpLimiter`):
//! * An entry whose buckets are full again is worth nothing (a fresh one would answer the
//!   same), so it can be dropped: the once-a-second [`tick`](EndpointBuckets::tick) drops
//!   those, and nothing is kept while both limits are off.
//! * When the map is full, a new endpoint first triggers the same sweep (at most every
//!   [`FULL_SWEEP_GAP`]). If every entry is still in debt, **unknown endpoints share one
//!   overflow bucket pair** (counted: `coap_ratelimit_overflow_total`): a client rotating
//!   source ports gets one bucket between all of them rather than fresh ones, and cannot
//!   evict the buckets of the endpoints already tracked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::metrics::{Counter, Metrics};
use crate::ratelimit::{ClientBuckets, ClientLimits};

/// Least time between two sweeps triggered by a full map.
pub const FULL_SWEEP_GAP: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct EndpointBuckets {
    map: HashMap<SocketAddr, ClientBuckets>,
    /// Shared by unknown endpoints while the map is full of buckets in debt.
    overflow: ClientBuckets,
    last_full_sweep: Option<Instant>,
}

impl EndpointBuckets {
    /// Endpoints tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Run `check` on `peer`'s buckets (at most `cap` endpoints tracked).
    pub fn with<R>(
        &mut self,
        peer: SocketAddr,
        cap: usize,
        limits: &ClientLimits,
        metrics: &Metrics,
        now: Instant,
        check: impl FnOnce(&mut ClientBuckets) -> R,
    ) -> R {
        if !limits.is_on() {
            return check(&mut ClientBuckets::default());
        }
        let cap = cap.max(1);
        if !self.map.contains_key(&peer) && self.map.len() >= cap {
            let due = self
                .last_full_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= FULL_SWEEP_GAP);
            if due {
                self.last_full_sweep = Some(now);
                self.sweep(limits, now);
            }
            if self.map.len() >= cap {
                metrics.add(Counter::CoapBucketsOverflow, 1);
                return check(&mut self.overflow);
            }
        }
        check(self.map.entry(peer).or_default())
    }

    /// Drop the entries that are full again (and everything when both limits are off).
    pub fn sweep(&mut self, limits: &ClientLimits, now: Instant) {
        if !limits.is_on() {
            self.map = HashMap::new();
            self.overflow = ClientBuckets::default();
            return;
        }
        self.map.retain(|_, b| !limits.is_full(b, now));
        if limits.is_full(&self.overflow, now) {
            self.overflow = ClientBuckets::default();
        }
    }
}
