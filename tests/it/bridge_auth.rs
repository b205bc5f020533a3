//! Auth on the bridges (spec §2.2, §2.5) against the fake Atom: HTTP with Bearer and Basic
//! credentials (200 / 401 / 403), CoAP with URI-Query credentials (2.04 / 4.01 / 4.03) and
//! an Observe authorized as a subscribe; the authenticated identity travels with the
//! message as `external_id`.

use coap_lite::{CoapOption, MessageType, RequestType, ResponseType};

use crate::coap::{Client, code};
use crate::common::*;
use crate::fake_auth::{CHANNEL, FakeAtom, TENANT, token_file};
use crate::http::post;

const SERVICE_TOKEN: &str = "atom_service_key_1";
/// A channel the device may not publish to.
const OTHER: &str = "99999999-4e5f-4a6b-9c7d-8e9fa0b1c2d3";

fn start(atom: &FakeAtom) -> Broker {
    // Auth on the bridges only: the MQTT subscriber connects without credentials.
    let auth = atom.config_yaml(&token_file(SERVICE_TOKEN), "").replacen(
        "auth:\n",
        "auth:\n  protocols: { http: true, coap: true }\n",
        1,
    );
    start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  http: {{ plain: {{ addr: \"127.0.0.1:0\" }} }}\n  coap: {{ plain: {{ addr: \"127.0.0.1:0\" }} }}\n{auth}\n"
    ))
}

fn fake() -> FakeAtom {
    let atom = FakeAtom::start();
    atom.with(|s| {
        s.token("tok-1", "entity-1");
        s.allow("entity-1", "publish", CHANNEL);
        s.allow("entity-1", "subscribe", CHANNEL);
    });
    atom
}

fn topic(channel: &str) -> String {
    format!("m/{TENANT}/c/{channel}/temp")
}

#[test]
fn http_bearer_and_basic_are_authenticated_and_publishes_authorized() {
    let atom = fake();
    let b = start(&atom);
    let http = b.addr("server.http.plain");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("m/#", 0);
    let path = format!("/{}", topic(CHANNEL));
    // Bearer: the username is the topic's domain (spec §2.2).
    let (status, body) = post(http, &path, &[("Authorization", "Bearer tok-1")], b"1");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let m = sub.recv_publish();
    assert_eq!(m.payload, b"1");
    assert!(
        m.props
            .pairs()
            .contains(&("external_id".into(), "entity-1".into())),
        "{:?}",
        m.props.pairs()
    );
    // Basic: the password is the token ("dev:tok-1").
    let (status, _) = post(
        http,
        &path,
        &[("Authorization", "Basic ZGV2OnRvay0x")],
        b"2",
    );
    assert_eq!(status, 200);
    assert_eq!(sub.recv_publish().payload, b"2");
    // Client <token> on /publish with X-FluxMQ-Username.
    let json = format!(r#"{{"topic":"{}","payload":"Mw=="}}"#, topic(CHANNEL));
    let (status, _) = post(
        http,
        "/publish",
        &[
            ("Authorization", "Client tok-1"),
            ("X-FluxMQ-Username", "dev"),
        ],
        json.as_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(sub.recv_publish().payload, b"3");
    // No credentials: 401 without a call to Atom; a wrong token: 401.
    let calls = atom.calls("Authenticate");
    assert_eq!(post(http, &path, &[], b"x"), (401, "unauthorized".into()));
    assert_eq!(atom.calls("Authenticate"), calls);
    let (status, _) = post(http, &path, &[("Authorization", "Bearer nope")], b"x");
    assert_eq!(status, 401);
    // Authenticated but not allowed on that channel: 403.
    let other = format!("/{}", topic(OTHER));
    let (status, body) = post(http, &other, &[("Authorization", "Bearer tok-1")], b"x");
    assert_eq!((status, body.as_str()), (403, "forbidden"));
    sub.expect_nothing(std::time::Duration::from_millis(100));
    assert_eq!(
        b.metric("fluxmq_edge_http_responses_total{status=\"401\"}"),
        2
    );
    assert_eq!(
        b.metric("fluxmq_edge_http_responses_total{status=\"403\"}"),
        1
    );
}

#[test]
fn coap_query_credentials_publish_and_observe() {
    let atom = fake();
    let b = start(&atom);
    let coap = b.addr("server.coap.plain");
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("m/#", 0);
    let mut c = Client::new(coap);
    let path = topic(CHANNEL);
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        &path,
        &["client_id=dev-1", "authorization=Bearer tok-1"],
        b"21",
    );
    assert_eq!(code(&c.call(&p)), ResponseType::Changed);
    let m = sub.recv_publish();
    assert_eq!(m.payload, b"21");
    assert!(
        m.props
            .pairs()
            .contains(&("external_id".into(), "entity-1".into()))
    );
    // password= works the same; no token: 4.01; a wrong one: 4.01; another channel: 4.03.
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        &path,
        &["password=tok-1"],
        b"22",
    );
    assert_eq!(code(&c.call(&p)), ResponseType::Changed);
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        &path,
        &[],
        b"x",
    );
    assert_eq!(code(&c.call(&p)), ResponseType::Unauthorized);
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        &path,
        &["password=nope"],
        b"x",
    );
    assert_eq!(code(&c.call(&p)), ResponseType::Unauthorized);
    let other = topic(OTHER);
    let p = c.build(
        MessageType::Confirmable,
        RequestType::Post,
        &other,
        &["password=tok-1"],
        b"x",
    );
    assert_eq!(code(&c.call(&p)), ResponseType::Forbidden);
    // Observe is authorized as a subscribe: allowed on the channel, 4.03 elsewhere.
    let mut o = c.build(
        MessageType::Confirmable,
        RequestType::Get,
        &format!("m/{TENANT}/c/{CHANNEL}/+"),
        &["password=tok-1"],
        b"",
    );
    o.add_option(CoapOption::Observe, vec![]);
    assert_eq!(code(&c.call(&o)), ResponseType::Content);
    let mut o = c.build(
        MessageType::Confirmable,
        RequestType::Get,
        &format!("m/{TENANT}/c/{OTHER}/+"),
        &["password=tok-1"],
        b"",
    );
    o.add_option(CoapOption::Observe, vec![]);
    assert_eq!(code(&c.call(&o)), ResponseType::Forbidden);
    assert_eq!(
        b.metric("fluxmq_edge_coap_responses_total{code=\"4.03\"}"),
        2
    );
}

/// HTTPS on an mTLS slot: without a token, the verified client certificate is the
/// credential (Atom `ResolveCertificate`); the publish is then authorized as usual.
#[test]
fn https_client_certificate_is_the_credential_without_a_token() {
    use crate::tls::{BOTH, Pki, client_config, tls_open};
    use std::io::{Read, Write};
    let pki = Pki::new("bridge-auth");
    let atom = FakeAtom::start();
    atom.with(|s| {
        s.certs.insert(pki.good.sha256(), "entity-cert".into());
        s.allow("entity-cert", "publish", CHANNEL);
    });
    let auth = atom.config_yaml(&token_file(SERVICE_TOKEN), "").replacen(
        "auth:\n",
        "auth:\n  protocols: { http: true }\n",
        1,
    );
    let b = start_yaml(&format!(
        "server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }}, v5: {{ addr: \"127.0.0.1:0\" }} }}\n  health_addr: \"127.0.0.1:0\"\n  http: {{ mtls: {{ {} }} }}\n{auth}\n",
        pki.slot(", client_auth: require"),
    ));
    let mut sub = Raw::v5(b.v5, "sub");
    sub.sub("m/#", 0);
    let config = client_config(&pki.ca.der(), Some(pki.good.client_auth()), BOTH);
    let send = |path: &str| {
        let (mut tls, _) = tls_open(b.addr("server.http.mtls"), config.clone()).expect("mTLS");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        tls.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out);
        out
    };
    let out = send(&format!("/{}", topic(CHANNEL)));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let m = sub.recv_publish();
    assert!(
        m.props
            .pairs()
            .contains(&("external_id".into(), "entity-cert".into()))
    );
    assert_eq!(atom.calls("ResolveCertificate"), 1);
    // The certificate's device may not publish elsewhere.
    let out = send(&format!("/{}", topic(OTHER)));
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}
