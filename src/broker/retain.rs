//! The retained-message store: one message per topic, capped by count
//! (`broker.max_retained_messages`) and by bytes (`broker.max_retained_bytes`). A store that
//! is full refuses a new topic (the publisher is told); replacing or deleting always works.

use std::collections::HashMap;
use std::rc::Rc;

use super::message::Message;
use super::topic;

#[derive(Debug)]
pub struct Retained {
    map: HashMap<Box<str>, Rc<Message>>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

/// The store cannot take this message without going over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Retained {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Retained {
            map: HashMap::new(),
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Store, replace or (empty payload) delete the retained message of `msg`'s topic
    /// [MQTT-3.3.1-5/6/10/11].
    pub fn set(&mut self, msg: &Rc<Message>) -> Result<(), Full> {
        let old = self.map.get(msg.topic()).map_or(0, |m| m.heap_size());
        if msg.payload().is_empty() {
            if self.map.remove(msg.topic()).is_some() {
                self.bytes -= old;
            }
            return Ok(());
        }
        let new_bytes = self.bytes - old + msg.heap_size();
        let new_count = self.map.len() + usize::from(old == 0);
        if new_count > self.max_count || new_bytes > self.max_bytes {
            return Err(Full);
        }
        self.bytes = new_bytes;
        self.map.insert(msg.topic().into(), msg.clone());
        Ok(())
    }

    /// Retained messages matching `filter`, skipping expired ones [MQTT-3.3.2-5].
    pub fn matching<'a>(
        &'a self,
        filter: &'a str,
        now: std::time::Instant,
    ) -> impl Iterator<Item = &'a Rc<Message>> + 'a {
        self.map
            .iter()
            .filter(move |(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m)
    }

    /// Drop expired retained messages.
    pub fn purge_expired(&mut self, now: std::time::Instant) -> usize {
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|_, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += m.heap_size();
            }
            keep
        });
        self.bytes -= freed;
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::mqtt::QoS;

    fn msg(t: &str, p: &[u8]) -> Rc<Message> {
        Message::new(t, &[], p, QoS::AtMostOnce, true, None, None)
    }

    #[test]
    fn set_replace_delete_and_caps() {
        let mut r = Retained::new(2, 10_000);
        r.set(&msg("a", b"1")).unwrap();
        r.set(&msg("b", b"2")).unwrap();
        assert_eq!(r.set(&msg("c", b"3")), Err(Full), "count cap");
        r.set(&msg("a", b"11")).unwrap(); // replace is always fine
        assert_eq!(r.len(), 2);
        r.set(&msg("a", b"")).unwrap(); // delete [MQTT-3.3.1-10]
        assert_eq!(r.len(), 1);
        r.set(&msg("c", b"3")).unwrap();
        let now = std::time::Instant::now();
        let mut got: Vec<_> = r
            .matching("#", now)
            .map(|m| m.topic().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["b", "c"]);
        let total: usize = ["b", "c"].iter().map(|t| r.map[*t].heap_size()).sum();
        assert_eq!(r.bytes(), total);
        let mut small = Retained::new(10, 10);
        assert_eq!(
            small.set(&msg("x", b"a payload too big")),
            Err(Full),
            "byte cap"
        );
    }
}
