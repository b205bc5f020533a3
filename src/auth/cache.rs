//! Bounded TTL caches for auth answers (beyond FluxMQ, whose caches have no size bound).
//!
//! Owns: [`TtlCache`] (fixed capacity, one TTL, keys stored as SHA-256 digests truncated to
//! 128 bits, so that no secret, token or topic is kept in clear and every key costs 16
//! bytes; a collision needs ~2^64 keys) and [`Caches`] (the
//! three caches of a provider and how `auth.identity_cache_size` is split between them).
//! Does not own what is cached when (the providers decide; denials go only to the decision
//! cache, as in FluxMQ).
//!
//! Eviction: an expired entry is dropped when it is read. When a full cache takes a new
//! key, the oldest entry goes (entries share one TTL, so the oldest is also the first to
//! expire: expired entries are always evicted before live ones). Evicting a live entry is
//! counted (`fluxmq_edge_auth_cache_evictions_total`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::metrics::{AuthCache, Metrics};

/// A cache key: the first 128 bits of the SHA-256 of the key's parts (each part followed
/// by a NUL byte).
pub type Key = [u8; 16];

/// Hashes `parts` into a [`Key`]. Parts are separated by NUL so that ("ab","c") and
/// ("a","bc") differ.
pub fn key(parts: &[&[u8]]) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
        ctx.update(&[0]);
    }
    let mut k = [0; 16];
    k.copy_from_slice(&ctx.finish().as_ref()[..16]);
    k
}

struct Entry<V> {
    value: V,
    expires: Instant,
    /// Insertion number: this entry's place in `by_age`.
    seq: u64,
}

/// A map from [`Key`] to `V` holding at most `capacity` entries for `ttl` each.
/// Capacity 0 or TTL 0: the cache is off (stores nothing).
pub struct TtlCache<V> {
    ttl: Duration,
    capacity: usize,
    map: HashMap<Key, Entry<V>>,
    /// Insertion order: the first entry is the oldest.
    by_age: BTreeMap<u64, Key>,
    next_seq: u64,
    evictions: u64,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<V> {
        TtlCache {
            ttl,
            capacity: if ttl.is_zero() { 0 } else { capacity },
            map: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            evictions: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Live entries evicted because the cache was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The value for `k` if present and not expired at `now` (an expired one is dropped).
    pub fn get(&mut self, k: &Key, now: Instant) -> Option<V> {
        let e = self.map.get(k)?;
        if now < e.expires {
            return Some(e.value.clone());
        }
        self.remove(k);
        None
    }

    /// Stores `value` for `k` until `now + ttl`, evicting the oldest entries to make room.
    pub fn insert(&mut self, k: Key, value: V, now: Instant) {
        if !self.enabled() {
            return;
        }
        self.remove(&k);
        while self.map.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest)
                && now < e.expires
            {
                self.evictions += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_age.insert(seq, k);
        self.map.insert(
            k,
            Entry {
                value,
                expires: now + self.ttl,
                seq,
            },
        );
    }

    pub fn remove(&mut self, k: &Key) {
        if let Some(e) = self.map.remove(k) {
            self.by_age.remove(&e.seq);
        }
    }
}

/// The caches of one provider. `auth.identity_cache_size` (default 10000) bounds their
/// total: it is split between the caches that are on (TTL > 0) with weights authn 1,
/// alias 1, decision 2 (a decision is per subject and topic, so there are more of them);
/// e.g. all three on with 10000: authn 2500, alias 2500, decision 5000.
pub struct Caches {
    pub authn: TtlCache<std::rc::Rc<str>>,
    pub alias: TtlCache<std::rc::Rc<str>>,
    pub decision: TtlCache<bool>,
}

impl Caches {
    pub fn new(
        total: usize,
        authn_ttl: Duration,
        alias_ttl: Duration,
        decision_ttl: Duration,
    ) -> Caches {
        let weights = [(authn_ttl, 1), (alias_ttl, 1), (decision_ttl, 2)];
        let sum: usize = weights
            .iter()
            .filter(|(ttl, _)| !ttl.is_zero())
            .map(|(_, w)| w)
            .sum();
        let share = |ttl: Duration, w: usize| {
            if ttl.is_zero() || sum == 0 {
                0
            } else {
                (total * w / sum).max(1)
            }
        };
        Caches {
            authn: TtlCache::new(authn_ttl, share(authn_ttl, 1)),
            alias: TtlCache::new(alias_ttl, share(alias_ttl, 1)),
            decision: TtlCache::new(decision_ttl, share(decision_ttl, 2)),
        }
    }

    /// Publish the sizes as gauges.
    pub fn report(&self, m: &Metrics) {
        m.auth.cache(
            AuthCache::Authn,
            self.authn.len(),
            self.authn.capacity(),
            self.authn.evictions(),
        );
        m.auth.cache(
            AuthCache::Alias,
            self.alias.len(),
            self.alias.capacity(),
            self.alias.evictions(),
        );
        m.auth.cache(
            AuthCache::Decision,
            self.decision.len(),
            self.decision.capacity(),
            self.decision.evictions(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn get_insert_expire() {
        let now = t0();
        let mut c = TtlCache::new(Duration::from_secs(10), 4);
        let k = key(&[b"a"]);
        assert_eq!(c.get(&k, now), None);
        c.insert(k, 1, now);
        assert_eq!(c.get(&k, now + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&k, now + Duration::from_secs(10)), None);
        assert!(c.is_empty(), "an expired entry is dropped when read");
    }

    #[test]
    fn ttl_zero_or_capacity_zero_is_off() {
        let now = t0();
        let mut c = TtlCache::new(Duration::ZERO, 4);
        c.insert(key(&[b"a"]), 1, now);
        assert_eq!(c.len(), 0);
        assert!(!c.enabled());
        let mut c = TtlCache::new(Duration::from_secs(1), 0);
        c.insert(key(&[b"a"]), 1, now);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn full_cache_evicts_expired_then_oldest() {
        let now = t0();
        let mut c = TtlCache::new(Duration::from_secs(10), 3);
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            c.insert(key(&[*k]), i, now + Duration::from_secs(i as u64));
        }
        // At +10.5 s "a" (inserted at 0) has expired: it goes first, no live eviction.
        let later = now + Duration::from_millis(10_500);
        c.insert(key(&[b"d"]), 3, later);
        assert_eq!(c.evictions(), 0);
        assert_eq!(c.get(&key(&[b"a"]), later), None);
        // Full again: the oldest live entry ("b") goes, counted.
        c.insert(key(&[b"e"]), 4, later);
        assert_eq!(c.evictions(), 1);
        assert_eq!(c.get(&key(&[b"b"]), later), None);
        assert_eq!(c.get(&key(&[b"c"]), later), Some(2));
        assert_eq!(c.get(&key(&[b"e"]), later), Some(4));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn overwrite_keeps_one_entry() {
        let now = t0();
        let mut c = TtlCache::new(Duration::from_secs(10), 2);
        let k = key(&[b"a"]);
        for i in 0..10 {
            c.insert(k, i, now);
        }
        assert_eq!(c.len(), 1);
        assert_eq!(c.by_age.len(), 1);
        assert_eq!(c.get(&k, now), Some(9));
    }

    #[test]
    fn never_grows_past_its_cap_under_100k_distinct_credentials() {
        let now = t0();
        let mut caches = Caches::new(
            1000,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        for i in 0u32..100_000 {
            let k = key(&[b"credential", format!("user{i}").as_bytes(), b"secret"]);
            caches.authn.insert(k, "id".into(), now);
            caches.decision.insert(k, i % 2 == 0, now);
            assert!(caches.authn.len() <= 250 && caches.authn.by_age.len() <= 250);
            assert!(caches.decision.len() <= 500 && caches.decision.by_age.len() <= 500);
        }
        assert_eq!(caches.authn.len(), 250);
        assert_eq!(caches.authn.evictions(), 100_000 - 250);
        assert_eq!(caches.decision.len(), 500);
    }

    #[test]
    fn split_of_identity_cache_size() {
        let s = Duration::from_secs(1);
        let z = Duration::ZERO;
        let c = Caches::new(10_000, s, s, s);
        assert_eq!(
            (
                c.authn.capacity(),
                c.alias.capacity(),
                c.decision.capacity()
            ),
            (2500, 2500, 5000)
        );
        let c = Caches::new(10_000, s, z, z);
        assert_eq!(
            (
                c.authn.capacity(),
                c.alias.capacity(),
                c.decision.capacity()
            ),
            (10_000, 0, 0)
        );
        let c = Caches::new(3, z, s, s);
        assert_eq!((c.alias.capacity(), c.decision.capacity()), (1, 2));
    }

    #[test]
    fn keys_separate_parts_and_hide_secrets() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        let k = key(&[b"credential", b"user", b"hunter2"]);
        assert!(!k.windows(7).any(|w| w == b"hunter2"));
        // The first 128 bits of SHA-256("credential\0user\0hunter2\0").
        let full = ring::digest::digest(&ring::digest::SHA256, b"credential\0user\0hunter2\0");
        assert_eq!(&k[..], &full.as_ref()[..16]);
    }
}
