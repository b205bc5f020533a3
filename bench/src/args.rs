//! Tiny `--key value` / `--flag` command-line parser (no dependency): typed getters with
//! defaults, and an error for any option that no getter asked for, so typos never pass silently.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

pub struct Args {
    values: BTreeMap<String, Option<String>>,
    used: RefCell<BTreeSet<String>>,
}

impl Args {
    /// Parses `--key value`, `--key=value` and bare `--flag` (a flag is followed by another
    /// `--option` or nothing).
    pub fn parse(raw: &[String]) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut i = 0;
        while i < raw.len() {
            let Some(key) = raw[i].strip_prefix("--") else {
                return Err(format!("unexpected argument {:?}", raw[i]));
            };
            if let Some((k, v)) = key.split_once('=') {
                values.insert(k.to_string(), Some(v.to_string()));
                i += 1;
            } else if raw.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
                values.insert(key.to_string(), Some(raw[i + 1].clone()));
                i += 2;
            } else {
                values.insert(key.to_string(), None);
                i += 1;
            }
        }
        Ok(Args {
            values,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.used.borrow_mut().insert(key.to_string());
        match self.values.get(key) {
            None => Ok(None),
            Some(None) => Err(format!("--{key} needs a value")),
            Some(Some(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{key}: cannot parse {v:?}")),
        }
    }

    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// Fails on options no getter consumed.
    pub fn finish(&self) -> Result<(), String> {
        let used = self.used.borrow();
        let unknown: Vec<_> = self
            .values
            .keys()
            .filter(|k| !used.contains(*k))
            .map(|k| format!("--{k}"))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown option(s): {}", unknown.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        let raw: Vec<String> = s.split_whitespace().map(String::from).collect();
        Args::parse(&raw).expect("parses")
    }

    #[test]
    fn values_flags_and_unknowns() {
        let a = args("--qos 1 --rate=500.5 --verbose --port 1883");
        assert_eq!(
            a.opt::<u8>("verbose"),
            Err("--verbose needs a value".to_string())
        );
        assert_eq!(a.get("qos", 0u8), Ok(1));
        assert_eq!(a.opt::<f64>("rate"), Ok(Some(500.5)));
        assert!(a.finish().is_err());
        assert_eq!(a.get("port", 0u16), Ok(1883));
        assert_eq!(a.finish(), Ok(()));
        assert!(args("--qos x").get("qos", 0u8).is_err());
        assert!(Args::parse(&["stray".to_string()]).is_err());
    }
}
