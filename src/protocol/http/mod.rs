//! The HTTP publish bridge (spec §6.3), sans-IO: a request's method, path, query, headers
//! and body in, a publish (or the refusal that answers it) out. The listener
//! (`listener/http.rs`) owns the sockets, hyper, the timeouts and the awaits on auth.
//!
//! Routes: `POST /publish` with JSON `{"topic", "payload" (base64), "qos", "retain"}`;
//! legacy `POST /<topic>` (a Magistrala `m/<domain>/c/<channel>/...` topic) with the raw
//! body as payload and `?qos=&retain=`; `GET /health`. Credentials per spec §2.2: the token
//! is the Basic password or the `Authorization` value (`Bearer x` / `Client x` / raw), the
//! username the Basic user, `X-FluxMQ-Username` or the topic's domain, the client id
//! `X-FluxMQ-Client-ID` or `http:<ip:port>`.

use std::net::SocketAddr;

use base64::Engine;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use hyper::{Method, StatusCode};

use crate::broker::topic;
use crate::metrics::HttpStatus;
use crate::protocol::mqtt::QoS;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    /// `POST /publish` (JSON body).
    Json,
    /// `POST /<topic>` (raw body); the topic, percent-decoded.
    Raw(String),
}

/// Every way a request is refused, with its status and plain-text body (spec §6.3, §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    BadJson,
    NoTopic,
    BadTopic,
    BadQos,
    BadRetain,
    BadPayload,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    /// Over `ratelimit.*`; the seconds for `Retry-After`.
    RateLimited(u64),
    Timeout,
    PublishFailed,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self.metric() {
            HttpStatus::BadRequest => StatusCode::BAD_REQUEST,
            HttpStatus::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpStatus::Forbidden => StatusCode::FORBIDDEN,
            HttpStatus::NotFound => StatusCode::NOT_FOUND,
            HttpStatus::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            HttpStatus::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            HttpStatus::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpStatus::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HttpStatus::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            HttpStatus::Ok => StatusCode::OK,
            HttpStatus::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric the refusal is counted under (by status).
    pub fn metric(self) -> HttpStatus {
        use Refused::*;
        match self {
            BadJson | NoTopic | BadTopic | BadQos | BadRetain | BadPayload => {
                HttpStatus::BadRequest
            }
            Unauthorized => HttpStatus::Unauthorized,
            Forbidden => HttpStatus::Forbidden,
            NotFound => HttpStatus::NotFound,
            MethodNotAllowed => HttpStatus::MethodNotAllowed,
            TooLarge => HttpStatus::TooLarge,
            RateLimited(_) => HttpStatus::TooManyRequests,
            Timeout => HttpStatus::RequestTimeout,
            PublishFailed => HttpStatus::InternalError,
        }
    }

    pub fn body(self) -> &'static str {
        use Refused::*;
        match self {
            BadJson => "invalid JSON body",
            NoTopic => "topic is required",
            BadTopic => "invalid topic (wildcards are not allowed in a topic name)",
            BadQos => "qos must be 0, 1 or 2",
            BadRetain => "retain must be true or false",
            BadPayload => "payload must be base64",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not found",
            MethodNotAllowed => "method not allowed",
            TooLarge => "payload too large (broker.max_message_size)",
            RateLimited(_) => "rate limit exceeded",
            Timeout => "request timeout",
            PublishFailed => "publish failed",
        }
    }
}

/// A publish the request asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// Route a request by method and path. `/health` answers any method; the publish routes
/// only POST (405); `/` and a legacy path that is not a Magistrala topic are 404.
pub fn route(method: &Method, path: &str) -> Result<Route, Refused> {
    let post = |r: Route| {
        if method == Method::POST {
            Ok(r)
        } else {
            Err(Refused::MethodNotAllowed)
        }
    };
    match path {
        "/health" => Ok(Route::Health),
        "/publish" => post(Route::Json),
        _ => {
            let raw = path.strip_prefix('/').unwrap_or(path);
            let topic = percent_decode(raw).ok_or(Refused::NotFound)?;
            if !topic.starts_with("m/") || !topic.contains("/c/") {
                return Err(Refused::NotFound);
            }
            post(Route::Raw(topic))
        }
    }
}

/// The largest body a route may carry: the payload cap, and for JSON its base64 form
/// (4/3 of it) plus room for the other fields.
pub fn body_limit(route: &Route, max_message_size: usize) -> usize {
    match route {
        Route::Health => 0,
        Route::Raw(_) => max_message_size,
        Route::Json => max_message_size / 3 * 4 + 4 + 64 * 1024,
    }
}

#[derive(serde::Deserialize)]
struct JsonPublish {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    qos: Option<u64>,
    #[serde(default)]
    retain: Option<bool>,
}

/// `POST /publish`: a JSON object; `payload` is base64 (as Go encodes `[]byte`).
pub fn parse_json(body: &[u8], max_message_size: usize) -> Result<Publish, Refused> {
    let j: JsonPublish = serde_json::from_slice(body).map_err(|_| Refused::BadJson)?;
    if j.topic.is_empty() {
        return Err(Refused::NoTopic);
    }
    let qos = qos_of(j.qos.unwrap_or(0))?;
    topic::validate_name(&j.topic).map_err(|_| Refused::BadTopic)?;
    let b64 = j.payload.unwrap_or_default();
    if b64.len() / 4 * 3 > max_message_size + 3 {
        return Err(Refused::TooLarge);
    }
    let payload = BASE64.decode(b64.trim()).map_err(|_| Refused::BadPayload)?;
    if payload.len() > max_message_size {
        return Err(Refused::TooLarge);
    }
    Ok(Publish {
        topic: j.topic,
        payload,
        qos,
        retain: j.retain.unwrap_or(false),
    })
}

/// Standard alphabet, padding optional (Go writes it; hand-made clients often do not).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn qos_of(n: u64) -> Result<QoS, Refused> {
    u8::try_from(n)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or(Refused::BadQos)
}

/// Legacy `POST /<topic>?qos=&retain=`: the raw body is the payload.
pub fn parse_raw(
    topic: String,
    query: Option<&str>,
    body: Vec<u8>,
    max_message_size: usize,
) -> Result<Publish, Refused> {
    if body.len() > max_message_size {
        return Err(Refused::TooLarge);
    }
    topic::validate_name(&topic).map_err(|_| Refused::BadTopic)?;
    let (mut qos, mut retain) = (QoS::AtMostOnce, false);
    for (k, v) in query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "qos" => qos = qos_of(v.parse().map_err(|_| Refused::BadQos)?)?,
            "retain" => {
                retain = match v {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(Refused::BadRetain),
                }
            }
            _ => {}
        }
    }
    Ok(Publish {
        topic,
        payload: body,
        qos,
        retain,
    })
}

/// What a request presents to authentication (spec §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `X-FluxMQ-Client-ID`, else `http:<ip:port>`.
    pub client_id: String,
    /// Basic user, `X-FluxMQ-Username`, or (token only) the `<domain>` of an
    /// `m/<domain>/c/...` topic.
    pub username: String,
    /// Basic password or the `Authorization` value; empty when none.
    pub token: String,
}

/// Credentials of a request to publish to `topic`.
pub fn identity(headers: &HeaderMap, peer: SocketAddr, topic: &str) -> Identity {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default()
    };
    let client_id = match header("x-fluxmq-client-id") {
        "" => format!("http:{peer}"),
        id => id.to_owned(),
    };
    let auth = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let (mut username, token) = match auth.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => basic(rest.trim()),
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("client") =>
        {
            (String::new(), rest.trim().to_owned())
        }
        _ => (String::new(), auth.to_owned()),
    };
    if username.is_empty() {
        username = header("x-fluxmq-username").to_owned();
    }
    if username.is_empty() && !token.is_empty() {
        username = magistrala_domain(topic).unwrap_or_default().to_owned();
    }
    Identity {
        client_id,
        username,
        token,
    }
}

/// `Basic base64(user:password)`: (user, password); nothing when it does not decode.
fn basic(b64: &str) -> (String, String) {
    let Some(text) = BASE64
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return (String::new(), String::new());
    };
    match text.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => (text, String::new()),
    }
}

/// The `<domain>` of `m/<domain>/c/<channel>/...`.
fn magistrala_domain(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("m/")?;
    let (domain, rest) = rest.split_once('/')?;
    (!domain.is_empty() && rest.starts_with("c/")).then_some(domain)
}

/// The request's `Content-Type`, which becomes the message's content type.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
}

/// `%XX` escapes of a path; `None` when an escape is malformed or the result not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const MAX: usize = 1024;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/health"), Ok(Route::Health));
        assert_eq!(route(&Method::DELETE, "/health"), Ok(Route::Health));
        assert_eq!(route(&Method::POST, "/publish"), Ok(Route::Json));
        assert_eq!(
            route(&Method::GET, "/publish"),
            Err(Refused::MethodNotAllowed)
        );
        assert_eq!(
            route(&Method::POST, "/m/d1/c/ch1/temp"),
            Ok(Route::Raw("m/d1/c/ch1/temp".into()))
        );
        assert_eq!(
            route(&Method::POST, "/m/d1/c/ch%201/t"),
            Ok(Route::Raw("m/d1/c/ch 1/t".into()))
        );
        assert_eq!(
            route(&Method::PUT, "/m/d1/c/ch1"),
            Err(Refused::MethodNotAllowed)
        );
        for p in ["/", "/other/topic", "/m/d1/x", "/m/%zz/c/x"] {
            assert_eq!(route(&Method::POST, p), Err(Refused::NotFound), "{p}");
        }
    }

    #[test]
    fn json_publish() {
        let p = parse_json(
            br#"{"topic":"a/b","payload":"aGVsbG8=","qos":1,"retain":true}"#,
            MAX,
        );
        assert_eq!(
            p,
            Ok(Publish {
                topic: "a/b".into(),
                payload: b"hello".to_vec(),
                qos: QoS::AtLeastOnce,
                retain: true
            })
        );
        let bare = parse_json(br#"{"topic":"a","payload":"aGVsbG8"}"#, MAX).expect("no padding");
        assert_eq!(
            (bare.payload.as_slice(), bare.qos),
            (&b"hello"[..], QoS::AtMostOnce)
        );
        let cases: &[(&[u8], Refused)] = &[
            (b"{", Refused::BadJson),
            (b"[1]", Refused::BadJson),
            (br#"{"topic":5}"#, Refused::BadJson),
            (br#"{"topic":"a","qos":-1}"#, Refused::BadJson),
            (br#"{"payload":"aGk="}"#, Refused::NoTopic),
            (br#"{"topic":""}"#, Refused::NoTopic),
            (br#"{"topic":"a","qos":3}"#, Refused::BadQos),
            (br#"{"topic":"a/#"}"#, Refused::BadTopic),
            (br#"{"topic":"a","payload":"!!"}"#, Refused::BadPayload),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_json(body, MAX),
                Err(*want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let big = BASE64.encode(vec![7u8; MAX + 1]);
        let body = format!(r#"{{"topic":"a","payload":"{big}"}}"#);
        assert_eq!(parse_json(body.as_bytes(), MAX), Err(Refused::TooLarge));
        let fits = BASE64.encode(vec![7u8; MAX]);
        let body = format!(r#"{{"topic":"a","payload":"{fits}"}}"#);
        assert!(parse_json(body.as_bytes(), MAX).is_ok());
        assert!(body.len() <= body_limit(&Route::Json, MAX));
    }

    #[test]
    fn raw_publish() {
        let p = parse_raw(
            "m/d/c/x".into(),
            Some("qos=2&retain=true"),
            b"v".to_vec(),
            MAX,
        );
        assert_eq!(
            p.map(|p| (p.qos, p.retain, p.payload)),
            Ok((QoS::ExactlyOnce, true, b"v".to_vec()))
        );
        let q = |s| parse_raw("m/d/c/x".into(), Some(s), Vec::new(), MAX).map(|p| p.qos);
        assert_eq!(q("qos=3"), Err(Refused::BadQos));
        assert_eq!(q("qos=x"), Err(Refused::BadQos));
        assert_eq!(q("retain=maybe").map(|_| ()), Err(Refused::BadRetain));
        assert_eq!(q("other=1"), Ok(QoS::AtMostOnce));
        assert_eq!(
            parse_raw("m/d/c/x".into(), None, vec![0; MAX + 1], MAX),
            Err(Refused::TooLarge)
        );
        assert_eq!(
            parse_raw("m/d/c/+".into(), None, Vec::new(), MAX),
            Err(Refused::BadTopic)
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn credentials_per_spec_2_2() {
        let peer: SocketAddr = "10.0.0.7:4000".parse().expect("addr");
        let id = |pairs: &[(&'static str, &str)], topic| identity(&headers(pairs), peer, topic);
        // Basic: user and password ("dev:s3cret").
        let b = id(&[("authorization", "Basic ZGV2OnMzY3JldA==")], "a");
        assert_eq!((b.username.as_str(), b.token.as_str()), ("dev", "s3cret"));
        assert_eq!(b.client_id, "http:10.0.0.7:4000");
        // Bearer / Client / raw token; username from the header, else the topic's domain.
        let t = id(
            &[
                ("authorization", "Bearer tok"),
                ("x-fluxmq-username", "u"),
                ("x-fluxmq-client-id", "cid"),
            ],
            "a",
        );
        assert_eq!(
            (t.username.as_str(), t.token.as_str(), t.client_id.as_str()),
            ("u", "tok", "cid")
        );
        let c = id(&[("authorization", "client tok2")], "m/dom/c/ch/x");
        assert_eq!((c.username.as_str(), c.token.as_str()), ("dom", "tok2"));
        let r = id(&[("authorization", "rawtoken")], "a/b");
        assert_eq!((r.username.as_str(), r.token.as_str()), ("", "rawtoken"));
        let none = id(&[], "m/dom/c/ch");
        assert_eq!((none.username.as_str(), none.token.as_str()), ("", ""));
        let bad = id(&[("authorization", "Basic !!!")], "a");
        assert_eq!(bad.token, "");
    }
}
