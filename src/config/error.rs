//! `ConfigError`: what went wrong, at which key, in which file.
//!
//! Owns: the error type, its rendering, and turning a serde/YAML error into one (path
//! from `serde_path_to_error`, message tidied for operators). Does not own: deciding what
//! is an error (`load.rs`, `validate.rs`, `support.rs`).

use std::fmt;

/// A configuration problem, rendered as
/// `config error in <file>: <key.path>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    path: String,
    message: String,
}

impl ConfigError {
    pub(super) fn new(
        origin: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    /// The file (or `<embedded edge.yaml>`) the problem is in.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Dotted key path (`server.tcp.v3.addr`); empty for file-level problems.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// From a typed deserialization error; `path` comes from `serde_path_to_error`.
    pub(super) fn from_serde(
        origin: &str,
        err: &serde_path_to_error::Error<serde_yaml::Error>,
    ) -> Self {
        let mut path = err.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = err.inner();
        let mut message = inner.to_string();
        if let Some(loc) = inner.location() {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        // serde_yaml prefixes its own path (that of the node being read); drop it.
        let mut prefix = path.as_str();
        loop {
            if let Some(rest) = message
                .strip_prefix(prefix)
                .and_then(|m| m.strip_prefix(": "))
            {
                message = rest.to_owned();
                break;
            }
            match prefix.rfind(['.', '[']) {
                Some(i) => prefix = &prefix[..i],
                None => break,
            }
        }
        if let Some(field) = unknown_field(&message) {
            if path.rsplit('.').next() != Some(field) {
                path = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
            }
            message = message
                .replacen("unknown field", "unknown key", 1)
                .replace('`', "");
        } else {
            message = tidy_type_error(&message);
        }
        if let Some(loc) = inner.location() {
            message = format!("{message} (line {}, column {})", loc.line(), loc.column());
        }
        Self::new(origin, path, message)
    }
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// Rewrites serde's integer type errors in operator terms.
fn tidy_type_error(message: &str) -> String {
    if let Some((head, _)) = message.split_once(", expected struct ") {
        return format!("{head}, expected a mapping of keys");
    }
    const BOUNDS: &[(&str, &str)] = &[
        ("u8", "255"),
        ("u16", "65535"),
        ("u32", "4294967295"),
        ("u64", "18446744073709551615"),
    ];
    for (ty, max) in BOUNDS {
        let Some(head) = message.strip_suffix(&format!(", expected {ty}")) else {
            continue;
        };
        if let Some(value) = head.split('`').nth(1).filter(|v| v.starts_with('-')) {
            return format!("must not be negative (got {value})");
        }
        return format!("{head}, expected a whole number from 0 to {max}").replace('`', "");
    }
    message.to_owned()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error in {}: ", self.origin)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_origin_path_message() {
        let e = ConfigError::new(
            "/etc/fluxmq/edge.yaml",
            "broker.retry_interval",
            "must be at least 1s",
        );
        assert_eq!(
            e.to_string(),
            "config error in /etc/fluxmq/edge.yaml: broker.retry_interval: must be at least 1s"
        );
        let e = ConfigError::new("a.yaml", "", "cannot read file");
        assert_eq!(e.to_string(), "config error in a.yaml: cannot read file");
    }

    #[test]
    fn tidies_integer_errors() {
        assert_eq!(
            tidy_type_error("invalid type: integer `-5`, expected u32"),
            "must not be negative (got -5)"
        );
        assert_eq!(
            tidy_type_error("invalid value: integer `70000`, expected u16"),
            "invalid value: integer 70000, expected a whole number from 0 to 65535"
        );
        assert_eq!(
            tidy_type_error("invalid type: sequence, expected struct Broker"),
            "invalid type: sequence, expected a mapping of keys"
        );
        assert_eq!(tidy_type_error("something else"), "something else");
    }

    #[test]
    fn unknown_field_names() {
        assert_eq!(
            unknown_field("unknown field `adr`, expected `addr`"),
            Some("adr")
        );
        assert_eq!(unknown_field("invalid type"), None);
    }
}
