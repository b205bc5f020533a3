//! The "magistrala" topic format the Atom provider authorizes (spec §2.4):
//! `m/<tenant>/c/<channel>[/<subtopic>...]`, tenant and channel each a UUID or an alias.
//!
//! Owns: topic normalisation before a check (AMQP `.`/`*` translation, `$share/<group>/`
//! unwrapping, trimming), the parser with FluxMQ's rules in FluxMQ's order, and UUID
//! recognition as Go's `uuid.Parse` does it (dashed, 32 hex digits, `urn:uuid:`, `{...}`).
//! Pure functions on strings; does not own alias resolution or the check (src/auth/atom.rs).

use crate::auth::{Action, Protocol};

/// Why a topic is refused locally (no Atom call): `unsupported_topic_policy: deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Not of the `m/<tenant>/c/<channel>` shape (e.g. `#`, `sensors/x`, `$queue/...`).
    Unsupported,
    /// The shape, but not a usable route (an empty tenant/channel, wildcards in a publish).
    InvalidRoute,
    /// A subscribe filter with wildcards where they are not allowed.
    UnsupportedFilter,
    /// An alias tenant with a UUID channel.
    UnsupportedAliasRoute,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Unsupported => "unsupported topic",
            TopicError::InvalidRoute => "invalid topic route",
            TopicError::UnsupportedFilter => "unsupported topic filter",
            TopicError::UnsupportedAliasRoute => "unsupported alias route",
        })
    }
}

/// A parsed route, borrowing from the normalised topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The normalised topic (context `topic`).
    pub topic: &'a str,
    /// Tenant level as written (context `route_tenant`).
    pub tenant: &'a str,
    pub tenant_is_uuid: bool,
    /// Channel level as written (context `route_channel`).
    pub channel: &'a str,
    pub channel_is_uuid: bool,
    /// Levels after the channel joined by `/`, `""` if none (context `subtopic`/`filter`).
    pub tail: &'a str,
}

/// The topic as the parser sees it: AMQP addresses translated (`amqp`, `amqp091`: `.` to
/// `/`, and for subscribe `*` to `+`), then for subscribe `$share/<group>/` removed.
pub fn normalise(protocol: Protocol, action: Action, raw: &str) -> String {
    let mut t = if matches!(protocol, Protocol::Amqp | Protocol::Amqp091) {
        let mut s = raw.replace('.', "/");
        if action == Action::Subscribe {
            s = s.replace('*', "+");
        }
        s
    } else {
        raw.to_owned()
    };
    if action == Action::Subscribe
        && let Some(rest) = t.strip_prefix("$share/")
        && let Some((_group, filter)) = rest.split_once('/')
    {
        t = filter.to_owned();
    }
    t
}

/// Parses a normalised topic (see [`normalise`]) for `action`.
pub fn parse(topic: &str, action: Action) -> Result<Route<'_>, TopicError> {
    let topic = topic.trim().trim_matches('/');
    if topic.is_empty() {
        return Err(TopicError::Unsupported);
    }
    if action == Action::Publish && topic.contains(['+', '#']) {
        return Err(TopicError::InvalidRoute);
    }
    let mut levels = topic.splitn(5, '/');
    let (Some(m), Some(tenant), Some(c), Some(channel)) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return Err(TopicError::Unsupported);
    };
    if m != "m" || c != "c" {
        return Err(TopicError::Unsupported);
    }
    if tenant.is_empty() || channel.is_empty() {
        return Err(TopicError::InvalidRoute);
    }
    if tenant.contains(['+', '#']) || channel.contains(['+', '#']) {
        return Err(TopicError::UnsupportedFilter);
    }
    let tail = levels.next().unwrap_or("");
    if action == Action::Subscribe {
        let n = tail.split('/').count();
        for (i, level) in tail.split('/').enumerate() {
            let wild = level.contains(['+', '#']);
            let ok = !wild || level == "+" || (level == "#" && i + 1 == n);
            if !ok {
                return Err(TopicError::UnsupportedFilter);
            }
        }
    }
    let tenant_is_uuid = is_uuid(tenant);
    let channel_is_uuid = is_uuid(channel);
    if !tenant_is_uuid && channel_is_uuid {
        return Err(TopicError::UnsupportedAliasRoute);
    }
    Ok(Route {
        topic,
        tenant,
        tenant_is_uuid,
        channel,
        channel_is_uuid,
        tail,
    })
}

/// Whether Go's `uuid.Parse` accepts `s`: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the same in
/// `{}` or after `urn:uuid:` (any case), or 32 hex digits. Version and variant are not
/// checked (neither does Go).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    let dashed = |b: &[u8]| {
        b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => dashed(b),
        38 => b[0] == b'{' && b[37] == b'}' && dashed(&b[1..37]),
        45 => b[..9].eq_ignore_ascii_case(b"urn:uuid:") && dashed(&b[9..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Publish, Subscribe};
    use TopicError::*;

    const T: &str = "6f1e2a4c-1b2d-4c3e-8f00-0123456789ab";
    const C: &str = "0a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3";

    fn ok(topic: &str, action: Action) -> Route<'_> {
        parse(topic, action).unwrap_or_else(|e| panic!("{topic}: {e}"))
    }

    #[test]
    fn uuid_forms_as_go_parses_them() {
        assert!(is_uuid(T));
        assert!(is_uuid(&T.to_uppercase()));
        assert!(is_uuid(&T.replace('-', "")));
        assert!(is_uuid(&format!("urn:uuid:{T}")));
        assert!(is_uuid(&format!("URN:UUID:{T}")));
        assert!(is_uuid(&format!("{{{T}}}")));
        assert!(!is_uuid("lobby"));
        assert!(!is_uuid(&T[1..]));
        assert!(!is_uuid(&T.replace('a', "g")));
        assert!(!is_uuid(&format!("({T})")));
        assert!(!is_uuid(&format!("urn:uid:{T}x")));
        assert!(!is_uuid(&T.replacen('-', "x", 1)));
        assert!(!is_uuid(&format!("{}x", &T.replace('-', "")[1..])));
    }

    // §2.4 examples and FluxMQ's TestParseMagistralaTopic cases.

    #[test]
    fn uuid_route_publish() {
        let topic = format!("m/{T}/c/{C}/temp");
        let r = ok(&topic, Publish);
        assert!(r.tenant_is_uuid && r.channel_is_uuid);
        assert_eq!((r.tenant, r.channel, r.tail), (T, C, "temp"));
    }

    #[test]
    fn alias_route_publish() {
        let r = ok("m/acme/c/lobby/temp", Publish);
        assert!(!r.tenant_is_uuid && !r.channel_is_uuid);
        assert_eq!((r.tenant, r.channel, r.tail), ("acme", "lobby", "temp"));
    }

    #[test]
    fn uuid_tenant_alias_channel_subscribe_with_wildcard_tail() {
        let topic = format!("m/{T}/c/lobby/#");
        let r = ok(&topic, Subscribe);
        assert!(r.tenant_is_uuid && !r.channel_is_uuid);
        assert_eq!(r.tail, "#");
        let r = ok("m/acme/c/lobby/+/x/#", Subscribe);
        assert_eq!(r.tail, "+/x/#");
        let r = ok("m/acme/c/lobby//x", Subscribe);
        assert_eq!(r.tail, "/x", "empty levels allowed");
    }

    #[test]
    fn shared_subscription_unwrapped() {
        let n = normalise(Protocol::Mqtt, Subscribe, "$share/g1/m/acme/c/lobby/+");
        assert_eq!(n, "m/acme/c/lobby/+");
        assert_eq!(ok(&n, Subscribe).tail, "+");
        // Only subscriptions are unwrapped.
        let n = normalise(Protocol::Mqtt, Publish, "$share/g1/m/acme/c/lobby/x");
        assert_eq!(parse(&n, Publish), Err(Unsupported));
    }

    #[test]
    fn amqp_addresses_translated() {
        let n = normalise(Protocol::Amqp, Subscribe, "m.acme.c.lobby.*");
        assert_eq!(n, "m/acme/c/lobby/+");
        assert_eq!(ok(&n, Subscribe).tail, "+");
        let n = normalise(Protocol::Amqp091, Publish, "m.acme.c.lobby.temp");
        assert_eq!(n, "m/acme/c/lobby/temp");
        // `*` is a wildcard only in a filter; in a publish it stays (and is kept as is).
        assert_eq!(
            normalise(Protocol::Amqp091, Publish, "m.a.c.b.x*"),
            "m/a/c/b/x*"
        );
        // MQTT topics keep their dots.
        assert_eq!(normalise(Protocol::Mqtt, Publish, "m.a"), "m.a");
    }

    #[test]
    fn alias_tenant_with_uuid_channel_denied() {
        let topic = format!("m/acme/c/{C}");
        assert_eq!(parse(&topic, Publish), Err(UnsupportedAliasRoute));
        assert_eq!(parse(&topic, Subscribe), Err(UnsupportedAliasRoute));
    }

    #[test]
    fn publish_with_wildcards_denied() {
        assert_eq!(parse("m/acme/c/lobby/+", Publish), Err(InvalidRoute));
        assert_eq!(parse("m/acme/c/lobby/#", Publish), Err(InvalidRoute));
        assert_eq!(parse("#", Publish), Err(InvalidRoute));
    }

    #[test]
    fn unsupported_shapes() {
        for t in [
            "",
            " ",
            "/",
            "#",
            "sensors/x",
            "$queue/q",
            "m/t/c",
            "x/t/c/ch",
            "m/t/x/ch",
        ] {
            assert_eq!(parse(t, Subscribe), Err(Unsupported), "{t:?}");
        }
        assert_eq!(parse("$SYS/broker", Publish), Err(Unsupported));
    }

    #[test]
    fn tenant_or_channel_wildcard_denied() {
        assert_eq!(parse("m/+/c/x", Subscribe), Err(UnsupportedFilter));
        assert_eq!(parse("m/t/c/#", Subscribe), Err(UnsupportedFilter));
        assert_eq!(parse("m/t/c/ch+", Subscribe), Err(UnsupportedFilter));
    }

    #[test]
    fn empty_tenant_or_channel_is_invalid() {
        assert_eq!(parse("m//c/x", Publish), Err(InvalidRoute));
        assert_eq!(parse("m/t/c//x", Subscribe), Err(InvalidRoute));
    }

    #[test]
    fn hash_not_last_or_mixed_wildcards_denied() {
        assert_eq!(parse("m/t/c/ch/#/x", Subscribe), Err(UnsupportedFilter));
        assert_eq!(parse("m/t/c/ch/a+", Subscribe), Err(UnsupportedFilter));
        assert_eq!(parse("m/t/c/ch/a#", Subscribe), Err(UnsupportedFilter));
        assert_eq!(parse("m/t/c/ch/#/#", Subscribe), Err(UnsupportedFilter));
    }

    #[test]
    fn trimmed_before_parsing() {
        let r = ok("  /m/acme/c/lobby/temp/ ", Publish);
        assert_eq!(r.topic, "m/acme/c/lobby/temp");
        assert_eq!(r.tail, "temp");
        let r = ok("m/acme/c/lobby", Publish);
        assert_eq!(r.tail, "", "no subtopic");
    }
}
