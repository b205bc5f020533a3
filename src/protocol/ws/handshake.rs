//! The RFC 6455 opening handshake, server side, on bytes: the HTTP/1.1 Upgrade request in
//! (parsed with `httparse`), the `101 Switching Protocols` answer or an HTTP refusal out.
//!
//! Owns: what a request must carry to become an MQTT WebSocket (path, `GET`, `Upgrade` and
//! `Connection` tokens, `Sec-WebSocket-Version: 13`, a well-formed `Sec-WebSocket-Key`, the
//! `mqtt` subprotocol [MQTT-6.0.0-3], an allowed `Origin`), the accept key, the size cap of
//! the request. Does not own: reading the socket or its deadline (`listener::ws`).

use base64::Engine;
use ring::digest;

/// Largest upgrade request accepted (request line and headers): room for a browser's
/// cookies and a bearer token, small enough that a connection still handshaking holds
/// little. Over it: 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most header lines accepted. Over it: 431.
pub const MAX_HEADERS: usize = 32;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a listener asks of the request.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The upgrade path (`server.websocket.*.path`), compared without the query string.
    pub path: &'a str,
    /// `allowed_origins`: `scheme://host[:port]` (exact, case-insensitive) or `*.domain`
    /// (any scheme, a host under `domain`). Empty: every origin. No `Origin` header: allowed.
    pub allowed_origins: &'a [String],
}

/// Why a request was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not a WebSocket upgrade, or a malformed one (the text says which header).
    BadRequest(&'static str),
    /// 404: the request path is not the listener's `path`.
    NotFound,
    /// 405: a method other than GET.
    MethodNotAllowed,
    /// 403: `Origin` not in `allowed_origins`.
    Forbidden,
    /// 426: a WebSocket version other than 13 (the answer names 13).
    UnsupportedVersion,
    /// 431: request line and headers over `MAX_REQUEST` or `MAX_HEADERS`.
    TooLarge,
}

impl Refusal {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::NotFound => (404, "Not Found"),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed"),
            Refusal::Forbidden => (403, "Forbidden"),
            Refusal::UnsupportedVersion => (426, "Upgrade Required"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }

    /// The whole HTTP response (the connection is closed after it).
    pub fn response(&self) -> Vec<u8> {
        let (code, text) = self.status();
        let body = match self {
            Refusal::BadRequest(why) => why,
            Refusal::NotFound => "no MQTT WebSocket endpoint at this path",
            Refusal::MethodNotAllowed => "the WebSocket upgrade is a GET request",
            Refusal::Forbidden => "origin not allowed",
            Refusal::UnsupportedVersion => "WebSocket version 13 required",
            Refusal::TooLarge => "request headers too large",
        };
        let mut extra = "";
        if matches!(self, Refusal::UnsupportedVersion) {
            extra = "Sec-WebSocket-Version: 13\r\n";
        } else if matches!(self, Refusal::MethodNotAllowed) {
            extra = "Allow: GET\r\n";
        }
        format!(
            "HTTP/1.1 {code} {text}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n{extra}\r\n{body}\n",
            body.len() + 1
        )
        .into_bytes()
    }
}

/// The answer to an upgrade refused by the per-IP connection rate limit.
pub fn too_many_requests(retry_after_secs: u64) -> Vec<u8> {
    let body = "too many connections from this address\n";
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Retry-After: {retry_after_secs}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, text) = self.status();
        match self {
            Refusal::BadRequest(why) => write!(f, "{code} {text}: {why}"),
            _ => write!(f, "{code} {text}"),
        }
    }
}

/// The outcome of the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The request is not complete yet (and under the cap): read more.
    Partial,
    /// Upgrade: send `response`; the first `consumed` bytes were the request (anything
    /// after them is already WebSocket frames).
    Accept { consumed: usize, response: Vec<u8> },
    /// Send `Refusal::response` and close.
    Refuse(Refusal),
}

/// Handle the request bytes received so far.
pub fn handle(buf: &[u8], policy: &Policy<'_>) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Progress::Refuse(Refusal::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Progress::Partial,
        Err(httparse::Error::TooManyHeaders) => return Progress::Refuse(Refusal::TooLarge),
        Err(_) => return Progress::Refuse(Refusal::BadRequest("malformed HTTP request")),
    };
    if consumed > MAX_REQUEST {
        return Progress::Refuse(Refusal::TooLarge);
    }
    match check(&req, policy) {
        Ok(key) => Progress::Accept {
            consumed,
            response: format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\
                 Sec-WebSocket-Protocol: mqtt\r\n\r\n",
                accept_key(key)
            )
            .into_bytes(),
        },
        Err(r) => Progress::Refuse(r),
    }
}

/// Every rule of a complete request, in the order a client's mistake is most usefully
/// reported (path first, as a router would). Returns the `Sec-WebSocket-Key`.
fn check<'b>(req: &httparse::Request<'_, 'b>, policy: &Policy<'_>) -> Result<&'b [u8], Refusal> {
    let target = req.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != policy.path {
        return Err(Refusal::NotFound);
    }
    if req.method != Some("GET") {
        return Err(Refusal::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(Refusal::BadRequest("the WebSocket upgrade needs HTTP/1.1"));
    }
    let header = |name: &'static str| values(req.headers, name);
    let has_token = |name: &'static str, token: &str| {
        values(req.headers, name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") {
        return Err(Refusal::BadRequest(
            "not a WebSocket upgrade request (no \"Upgrade: websocket\")",
        ));
    }
    if !has_token("connection", "upgrade") {
        return Err(Refusal::BadRequest(
            "not a WebSocket upgrade request (no \"Connection: Upgrade\")",
        ));
    }
    if header("host").next().is_none() {
        return Err(Refusal::BadRequest("missing Host header"));
    }
    if !header("sec-websocket-version").any(|v| v.trim_ascii() == b"13") {
        return Err(Refusal::UnsupportedVersion);
    }
    if let Some(origin) = header("origin").next()
        && !origin_allowed(origin, policy.allowed_origins)
    {
        return Err(Refusal::Forbidden);
    }
    let mut keys = header("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if valid_key(k.trim_ascii()) => k.trim_ascii(),
        _ => {
            return Err(Refusal::BadRequest(
                "missing or malformed Sec-WebSocket-Key",
            ));
        }
    };
    // [MQTT-6.0.0-3]: the client offers "mqtt"; [MQTT-6.0.0-4]: the server selects it.
    if !has_token("sec-websocket-protocol", "mqtt") {
        return Err(Refusal::BadRequest(
            "the subprotocol \"mqtt\" must be offered (Sec-WebSocket-Protocol: mqtt)",
        ));
    }
    Ok(key)
}

/// The values of every header line called `name` (case-insensitive).
fn values<'h, 'b>(
    headers: &'h [httparse::Header<'b>],
    name: &'static str,
) -> impl Iterator<Item = &'b [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// `allowed_origins` rule: exact `scheme://host[:port]` (case-insensitive) or `*.domain`
/// (a host strictly under `domain`, any scheme and port). An empty list allows every origin.
pub fn origin_allowed(origin: &[u8], allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(origin) = std::str::from_utf8(origin.trim_ascii()) else {
        return false;
    };
    let host = origin.split_once("://").map(|(_, rest)| {
        let authority = rest.split('/').next().unwrap_or_default();
        // Strip a port, but not the colons of a bracketed IPv6 literal.
        match authority.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    });
    allowed.iter().any(|rule| match rule.strip_prefix("*.") {
        Some(domain) => host.is_some_and(|h| {
            h.len() > domain.len() + 1
                && h[h.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && h.as_bytes()[h.len() - domain.len() - 1] == b'.'
        }),
        None => rule.trim_end_matches('/').eq_ignore_ascii_case(origin),
    })
}

/// A `Sec-WebSocket-Key` is the base64 of 16 bytes: 22 characters and `==` (RFC 6455 §4.1).
fn valid_key(k: &[u8]) -> bool {
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `Sec-WebSocket-Accept`: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy<'static> = Policy {
        path: "/mqtt",
        allowed_origins: &[],
    };

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut s = String::from("GET /mqtt HTTP/1.1\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const GOOD: &[&str] = &[
        "Host: broker.example:8083",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: mqtt",
    ];

    fn without(name: &str) -> Vec<&'static str> {
        GOOD.iter()
            .copied()
            .filter(|l| !l.starts_with(name))
            .collect()
    }

    #[test]
    fn rfc6455_section_1_3_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_answers_101_with_accept_key_and_mqtt() {
        let mut req = request(GOOD);
        let len = req.len();
        req.extend_from_slice(&[0x82, 0x80]); // a frame already behind the request
        let Progress::Accept { consumed, response } = handle(&req, &POLICY) else {
            panic!("refused");
        };
        assert_eq!(consumed, len);
        let text = String::from_utf8(response).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Protocol: mqtt\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_request_waits_then_cap_refuses_431() {
        let req = request(GOOD);
        for cut in [0, 5, req.len() - 1] {
            assert_eq!(handle(&req[..cut], &POLICY), Progress::Partial, "{cut}");
        }
        let mut big = b"GET /mqtt HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_REQUEST, b'a');
        assert_eq!(handle(&big, &POLICY), Progress::Refuse(Refusal::TooLarge));
        let many: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            handle(&request(&many), &POLICY),
            Progress::Refuse(Refusal::TooLarge)
        );
        let resp = String::from_utf8(Refusal::TooLarge.response()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    }

    #[test]
    fn refusals_by_status() {
        let refuse = |req: Vec<u8>| match handle(&req, &POLICY) {
            Progress::Refuse(r) => r.status().0,
            other => panic!("accepted: {other:?}"),
        };
        let other_path = String::from_utf8(request(GOOD))
            .unwrap()
            .replace("/mqtt", "/ws")
            .into_bytes();
        assert_eq!(refuse(other_path), 404);
        let post = String::from_utf8(request(GOOD))
            .unwrap()
            .replace("GET", "POST")
            .into_bytes();
        assert_eq!(refuse(post), 405);
        assert_eq!(refuse(request(&["Host: x"])), 400); // a plain GET
        assert_eq!(refuse(request(&without("Upgrade"))), 400);
        assert_eq!(refuse(request(&without("Connection"))), 400);
        assert_eq!(refuse(request(&without("Host"))), 400);
        assert_eq!(refuse(request(&without("Sec-WebSocket-Key"))), 400);
        assert_eq!(refuse(request(&without("Sec-WebSocket-Protocol"))), 400);
        let mut v8 = without("Sec-WebSocket-Version");
        v8.push("Sec-WebSocket-Version: 8");
        assert_eq!(refuse(request(&v8)), 426);
        let resp = String::from_utf8(Refusal::UnsupportedVersion.response()).unwrap();
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
        let mut bad_key = without("Sec-WebSocket-Key");
        bad_key.push("Sec-WebSocket-Key: not-a-key");
        assert_eq!(refuse(request(&bad_key)), 400);
        let mut other_proto = without("Sec-WebSocket-Protocol");
        other_proto.push("Sec-WebSocket-Protocol: wamp, mqttv3.1");
        assert_eq!(refuse(request(&other_proto)), 400);
        assert_eq!(refuse(b"\x16\x03\x01 not http\r\n\r\n".to_vec()), 400);
    }

    #[test]
    fn query_string_and_protocol_lists_are_accepted() {
        let mut lines = without("Sec-WebSocket-Protocol");
        lines.push("Sec-WebSocket-Protocol: wamp, MQTT");
        let req = String::from_utf8(request(&lines))
            .unwrap()
            .replace("/mqtt ", "/mqtt?token=1 ")
            .into_bytes();
        assert!(matches!(handle(&req, &POLICY), Progress::Accept { .. }));
    }

    #[test]
    fn origin_rules() {
        let rules = [
            "https://App.example.com".to_string(),
            "*.devices.example".to_string(),
        ];
        let ok = |o: &str| origin_allowed(o.as_bytes(), &rules);
        assert!(ok("https://app.EXAMPLE.com"));
        assert!(!ok("http://app.example.com")); // scheme is part of the exact rule
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("https://evil.example.com"));
        assert!(ok("https://gw1.devices.example"));
        assert!(ok("http://a.b.Devices.Example:8080"));
        assert!(!ok("https://devices.example")); // *.domain: strictly under it
        assert!(!ok("https://evildevices.example"));
        assert!(!ok("null"));
        assert!(origin_allowed(b"https://anything", &[]));
        let policy = Policy {
            path: "/mqtt",
            allowed_origins: &rules,
        };
        let mut lines = GOOD.to_vec();
        assert!(matches!(
            handle(&request(&lines), &policy),
            Progress::Accept { .. }
        ));
        lines.push("Origin: https://evil.example");
        assert_eq!(
            handle(&request(&lines), &policy),
            Progress::Refuse(Refusal::Forbidden)
        );
        lines.pop();
        lines.push("Origin: https://x.devices.example");
        assert!(matches!(
            handle(&request(&lines), &policy),
            Progress::Accept { .. }
        ));
    }
}
