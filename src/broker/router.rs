//! The subscription trie: topic filters split on `/`, one node per level, with `+` and `#`
//! children kept apart from literal children so that matching a topic walks only the branches
//! that can match. Shared subscriptions (`$share/<group>/<filter>`) hang off the node of their
//! filter and deliver each message to one member, round-robin, preferring connected members.
//!
//! The router stores subscriptions only; options such as the subscriber's queue or its
//! connection live in `session`. Matching allocates nothing once its scratch stack has grown.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;

use slab::Slab;

use super::SessionKey;
use super::topic::SubscriptionTopic;
use crate::protocol::mqtt::QoS;

/// What a subscription asks for (MQTT 5 subscription options; 3.1.1 uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub sub_id: Option<NonZeroU32>,
}

/// One subscription that matched a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub key: SessionKey,
    pub opts: SubOpts,
    pub shared: bool,
}

#[derive(Debug)]
struct Group {
    name: Box<str>,
    members: Vec<(SessionKey, SubOpts)>,
    next: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, usize, LevelHash>,
    plus: Option<usize>,
    hash: Option<usize>,
    subs: Vec<(SessionKey, SubOpts)>,
    shared: Vec<Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subs.is_empty()
            && self.shared.is_empty()
    }
}

#[derive(Debug)]
pub struct Router {
    nodes: Slab<Node>,
    root: usize,
    count: usize,
    stack: Vec<(usize, usize)>,
}

impl Default for Router {
    fn default() -> Self {
        let mut nodes = Slab::new();
        let root = nodes.insert(Node::default());
        Router {
            nodes,
            root,
            count: 0,
            stack: Vec::new(),
        }
    }
}

impl Router {
    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add or replace `key`'s subscription. Returns true when it is new, false when an
    /// existing subscription of the same session and topic was replaced [MQTT-3.8.4-3].
    pub fn insert(&mut self, key: SessionKey, sub: SubscriptionTopic<'_>, opts: SubOpts) -> bool {
        let mut n = self.root;
        for level in sub.filter.split('/') {
            n = match level {
                "+" => match self.nodes[n].plus {
                    Some(c) => c,
                    None => {
                        let c = self.nodes.insert(Node::default());
                        self.nodes[n].plus = Some(c);
                        c
                    }
                },
                "#" => match self.nodes[n].hash {
                    Some(c) => c,
                    None => {
                        let c = self.nodes.insert(Node::default());
                        self.nodes[n].hash = Some(c);
                        c
                    }
                },
                lit => match self.nodes[n].children.get(lit) {
                    Some(&c) => c,
                    None => {
                        let c = self.nodes.insert(Node::default());
                        self.nodes[n].children.insert(lit.into(), c);
                        c
                    }
                },
            };
        }
        let node = &mut self.nodes[n];
        let list = match sub.group {
            None => &mut node.subs,
            Some(g) => {
                let i = match node.shared.iter().position(|x| &*x.name == g) {
                    Some(i) => i,
                    None => {
                        node.shared.push(Group {
                            name: g.into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[i].members
            }
        };
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => {
                entry.1 = opts;
                false
            }
            None => {
                list.push((key, opts));
                self.count += 1;
                true
            }
        }
    }

    /// Remove `key`'s subscription; prunes nodes left empty. Returns whether it existed.
    pub fn remove(&mut self, key: SessionKey, sub: SubscriptionTopic<'_>) -> bool {
        let mut path = Vec::new(); // (parent, level) for pruning
        let mut n = self.root;
        for level in sub.filter.split('/') {
            let node = &self.nodes[n];
            let next = match level {
                "+" => node.plus,
                "#" => node.hash,
                lit => node.children.get(lit).copied(),
            };
            let Some(c) = next else { return false };
            path.push((n, level));
            n = c;
        }
        let node = &mut self.nodes[n];
        let removed = match sub.group {
            None => remove_key(&mut node.subs, key),
            Some(g) => match node.shared.iter().position(|x| &*x.name == g) {
                Some(i) => {
                    let r = remove_key(&mut node.shared[i].members, key);
                    if node.shared[i].members.is_empty() {
                        node.shared.swap_remove(i);
                    }
                    r
                }
                None => false,
            },
        };
        if !removed {
            return false;
        }
        self.count -= 1;
        while let Some((parent, level)) = path.pop() {
            if !self.nodes[n].is_empty() {
                break;
            }
            self.nodes.remove(n);
            let p = &mut self.nodes[parent];
            match level {
                "+" => p.plus = None,
                "#" => p.hash = None,
                lit => {
                    p.children.remove(lit);
                }
            }
            n = parent;
        }
        true
    }

    /// Append every subscription matching `topic` to `out`. For each shared group one member
    /// is chosen, round-robin, skipping members for which `online` is false when any member
    /// is online. Leading wildcards do not match `$` topics [MQTT-4.7.2-1].
    pub fn matches(
        &mut self,
        topic: &str,
        out: &mut Vec<Match>,
        online: impl Fn(SessionKey) -> bool,
    ) {
        let mut stack = std::mem::take(&mut self.stack);
        let end = topic.len();
        let dollar = topic.starts_with('$');
        stack.push((self.root, 0));
        while let Some((n, pos)) = stack.pop() {
            if pos > end {
                // Every level consumed: this node's own subscribers, and `#` below it
                // (`a/#` matches `a`) [MQTT-4.7.1-2].
                self.emit(n, out, &online);
                if let Some(h) = self.nodes[n].hash {
                    self.emit(h, out, &online);
                }
                continue;
            }
            let lvl_end = topic[pos..].find('/').map_or(end, |i| pos + i);
            let level = &topic[pos..lvl_end];
            let next = lvl_end + 1;
            let node = &self.nodes[n];
            let wild_ok = !(dollar && n == self.root);
            if wild_ok {
                if let Some(p) = node.plus {
                    stack.push((p, next));
                }
                if let Some(h) = node.hash {
                    self.emit(h, out, &online);
                }
            }
            if let Some(&c) = self.nodes[n].children.get(level) {
                stack.push((c, next));
            }
        }
        self.stack = stack;
    }

    fn emit(&mut self, n: usize, out: &mut Vec<Match>, online: &impl Fn(SessionKey) -> bool) {
        let node = &mut self.nodes[n];
        out.extend(node.subs.iter().map(|&(key, opts)| Match {
            key,
            opts,
            shared: false,
        }));
        for g in &mut node.shared {
            let len = g.members.len();
            let start = g.next % len;
            let pick = (0..len)
                .map(|i| (start + i) % len)
                .find(|&i| online(g.members[i].0))
                .unwrap_or(start);
            g.next = pick + 1;
            let (key, opts) = g.members[pick];
            out.push(Match {
                key,
                opts,
                shared: true,
            });
        }
    }
}

/// Hasher of topic levels in the trie: a multiply-rotate hash over 8-byte words (several
/// times faster than SipHash on short levels), keyed per process from the standard
/// library's random state so that clients cannot precompute colliding levels.
#[derive(Debug, Clone, Copy)]
pub struct LevelHash {
    key: u64,
}

impl Default for LevelHash {
    fn default() -> Self {
        thread_local!(static KEY: u64 = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1);
        LevelHash {
            key: KEY.with(|k| *k),
        }
    }
}

impl BuildHasher for LevelHash {
    type Hasher = LevelHasher;
    fn build_hasher(&self) -> LevelHasher {
        LevelHasher(self.key)
    }
}

pub struct LevelHasher(u64);

impl Hasher for LevelHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.0 =
            (self.0.rotate_left(5) ^ u64::from_le_bytes(last) ^ bytes.len() as u64).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes its control byte from the top 7 bits.
        self.0 ^ (self.0 >> 29)
    }
}

fn remove_key(list: &mut Vec<(SessionKey, SubOpts)>, key: SessionKey) -> bool {
    match list.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::topic::parse_subscription;
    use super::*;

    fn opts(qos: QoS) -> SubOpts {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            sub_id: None,
        }
    }

    fn keys(r: &mut Router, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        r.matches(topic, &mut out, |_| true);
        let mut k: Vec<u32> = out.iter().map(|m| m.key.0).collect();
        k.sort();
        k
    }

    fn sub(r: &mut Router, key: u32, f: &str) {
        r.insert(
            SessionKey(key),
            parse_subscription(f).unwrap(),
            opts(QoS::AtMostOnce),
        );
    }

    #[test]
    fn wildcards_and_overlaps() {
        let mut r = Router::default();
        sub(&mut r, 1, "a/b");
        sub(&mut r, 2, "a/+");
        sub(&mut r, 3, "a/#");
        sub(&mut r, 4, "#");
        sub(&mut r, 5, "+/+/c");
        sub(&mut r, 6, "a/b/#");
        assert_eq!(keys(&mut r, "a/b"), vec![1, 2, 3, 4, 6]);
        assert_eq!(keys(&mut r, "a"), vec![3, 4]);
        assert_eq!(keys(&mut r, "a/x/c"), vec![3, 4, 5]);
        assert_eq!(keys(&mut r, "b"), vec![4]);
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards_mqtt_4_7_2_1() {
        let mut r = Router::default();
        sub(&mut r, 1, "#");
        sub(&mut r, 2, "+/x");
        sub(&mut r, 3, "$SYS/#");
        sub(&mut r, 4, "$SYS/+");
        assert_eq!(keys(&mut r, "$SYS/x"), vec![3, 4]);
        assert_eq!(keys(&mut r, "s/x"), vec![1, 2]);
    }

    #[test]
    fn empty_levels() {
        let mut r = Router::default();
        sub(&mut r, 1, "/+");
        sub(&mut r, 2, "+/+");
        sub(&mut r, 3, "a/");
        assert_eq!(keys(&mut r, "/finance"), vec![1, 2]);
        assert_eq!(keys(&mut r, "a/"), vec![2, 3]);
    }

    #[test]
    fn replace_and_remove_prunes() {
        let mut r = Router::default();
        assert!(r.insert(
            SessionKey(1),
            parse_subscription("a/+/c").unwrap(),
            opts(QoS::AtMostOnce)
        ));
        assert!(!r.insert(
            SessionKey(1),
            parse_subscription("a/+/c").unwrap(),
            opts(QoS::ExactlyOnce)
        ));
        let mut out = Vec::new();
        r.matches("a/b/c", &mut out, |_| true);
        assert_eq!(out[0].opts.qos, QoS::ExactlyOnce);
        assert!(r.remove(SessionKey(1), parse_subscription("a/+/c").unwrap()));
        assert!(!r.remove(SessionKey(1), parse_subscription("a/+/c").unwrap()));
        assert_eq!(r.nodes.len(), 1, "only the root is left");
        assert!(r.is_empty());
    }

    #[test]
    fn shared_round_robin_prefers_online() {
        let mut r = Router::default();
        sub(&mut r, 1, "$share/g/t/#");
        sub(&mut r, 2, "$share/g/t/#");
        sub(&mut r, 3, "$share/h/t/#");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            r.matches("t/x", &mut out, |_| true);
            assert_eq!(out.len(), 2, "one per group");
            seen.push(out.iter().find(|m| m.key.0 != 3).unwrap().key.0);
        }
        assert_eq!(seen, vec![1, 2, 1, 2]);
        let mut out = Vec::new();
        r.matches("t/x", &mut out, |k| k.0 != 1);
        assert!(out.iter().any(|m| m.key.0 == 2) && out.iter().all(|m| m.key.0 != 1));
        assert!(r.remove(SessionKey(1), parse_subscription("$share/g/t/#").unwrap()));
        assert!(r.remove(SessionKey(2), parse_subscription("$share/g/t/#").unwrap()));
        assert_eq!(r.len(), 1);
    }
}
