//! Topic names and filters: validation (MQTT 4.7 rules, used for every protocol, since the
//! core routes MQTT-style topics), shared-subscription parsing and single-filter matching.
//! The subscription trie lives in `router`; this file knows nothing about sessions.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    /// `+` or `#` in a topic name [MQTT-3.3.2-2].
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level [MQTT-4.7.1-1/2].
    BadWildcard,
    /// `$share/` without a group, with `+`/`#` in the group, or without a filter
    /// [MQTT-4.8.2-1/2].
    BadShare,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "empty topic",
            TopicError::TooLong => "topic longer than 65535 bytes",
            TopicError::WildcardInName => "wildcard in a topic name",
            TopicError::BadWildcard => "misplaced wildcard in a topic filter",
            TopicError::BadShare => "malformed $share/<group>/<filter>",
        })
    }
}

/// A topic name a message is published to.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty); // [MQTT-4.7.3-1]
    }
    if name.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName); // [MQTT-3.3.2-2]
    }
    Ok(())
}

/// A topic filter (without any `$share/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty); // [MQTT-4.7.3-1]
    }
    if filter.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadWildcard); // [MQTT-4.7.1-1]
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadWildcard); // [MQTT-4.7.1-2]
        }
    }
    Ok(())
}

/// A subscription as the client wrote it: a plain filter or `$share/<group>/<filter>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionTopic<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Split and validate a subscription topic.
pub fn parse_subscription(raw: &str) -> Result<SubscriptionTopic<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare); // [MQTT-4.8.2-1]
        }
        if filter.is_empty() {
            return Err(TopicError::BadShare); // [MQTT-4.8.2-2]
        }
        validate_filter(filter)?;
        Ok(SubscriptionTopic {
            group: Some(group),
            filter,
        })
    } else {
        validate_filter(raw)?;
        Ok(SubscriptionTopic {
            group: None,
            filter: raw,
        })
    }
}

/// Does `filter` match `name`? Leading wildcards do not match `$`-topics [MQTT-4.7.2-1].
/// Used for the retained store; routing uses the trie.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true, // `#` also matches the parent level
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rules_mqtt_4_7_1() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "//", "$SYS/#",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a/#/b", "a#", "#/", "a+", "+a/b", "a/b+"] {
            assert_eq!(validate_filter(bad), Err(TopicError::BadWildcard), "{bad}");
        }
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn names_refuse_wildcards_mqtt_3_3_2_2() {
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/b"), Ok(()));
    }

    #[test]
    fn shared_subscriptions_mqtt_4_8_2() {
        assert_eq!(
            parse_subscription("$share/g/a/+"),
            Ok(SubscriptionTopic {
                group: Some("g"),
                filter: "a/+"
            })
        );
        assert_eq!(parse_subscription("$share/g"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("$share/g+/a"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("$share/g/"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("a/b").map(|s| s.group), Ok(None));
    }

    #[test]
    fn matching_mqtt_4_7() {
        assert!(matches("sport/#", "sport")); // [MQTT-4.7.1-2] parent level
        assert!(matches("sport/#", "sport/tennis/player1"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(!matches("sport/+", "sport/tennis/player1"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x")); // [MQTT-4.7.2-1]
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
