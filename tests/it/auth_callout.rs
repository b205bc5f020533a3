//! The callout provider against fake callouts speaking the real protocols: `fluxmq.auth.v1`
//! over gRPC (h2c) and the HTTP JSON endpoints. Every callout case of spec §7 at the
//! provider level (success / denied / server error for authenticate and authorize, action
//! and protocol strings, retries, retry budget, breaker opening and recovering on a manual
//! clock, "no" is not a failure), plus timeouts and a callout that is down.

use std::rc::Rc;
use std::time::{Duration, Instant};

use fluxmq_edge::auth::{Action, Answer, Authn, Credentials, Protocol, Secret};
use fluxmq_edge::metrics::{AuthProvider, AuthResult, AuthRpc};
use tonic::Code;

use crate::fake_auth::{FakeCallout, Harness, password, token};

const C: AuthProvider = AuthProvider::Callout;

/// Runs `f` against both transports (gRPC only when built with it).
fn both(f: impl Fn(FakeCallout, Harness)) {
    #[cfg(feature = "auth-grpc")]
    {
        let fake = FakeCallout::start_grpc();
        let h = Harness::new(&fake.config_yaml());
        f(fake, h);
    }
    let fake = FakeCallout::start_http();
    let h = Harness::new(&fake.config_yaml());
    f(fake, h);
}

/// The calls of the authenticate (or authorize) endpoint, whichever the transport.
fn authn_calls(fake: &FakeCallout) -> usize {
    fake.calls("Authenticate") + fake.calls("/auth/authenticate")
}

fn authz_calls(fake: &FakeCallout) -> usize {
    fake.calls("Authorize") + fake.calls("/auth/authorize")
}

/// Makes every call of `fake` fail (gRPC Internal / HTTP 500).
fn fail_all(fake: &FakeCallout) {
    fake.with(|s| {
        s.status = Some((Code::Internal, "boom".into()));
        s.http_status = Some(500);
    });
}

#[test]
fn authenticate_success_denied_and_server_error() {
    // TestGRPCClient_Authenticate_*, TestHTTPClient_Authenticate_*
    both(|fake, h| {
        fake.with(|s| s.user("dev", "pw", "ext-1"));
        let (r, now) = h.authn(Protocol::Mqtt, password("dev", "pw"));
        assert_eq!(r, Authn::Allowed(Rc::from("ext-1")));
        assert!(!now);
        assert_eq!(
            h.authn(Protocol::Mqtt, password("dev", "bad")).0,
            Authn::Denied
        );
        fail_all(&fake);
        let (r, _) = h.authn(Protocol::Mqtt, password("dev", "pw"));
        assert!(matches!(r, Authn::Failed(_)), "{r:?}");
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Success), 1);
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Denied), 1);
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Error), 1);
        // No caching in the callout path.
        assert_eq!(authn_calls(&fake), 2 + 2, "the error was retried once");
    });
}

#[test]
fn authenticate_sends_the_request_fields() {
    both(|fake, h| {
        fake.with(|s| s.user("dev", "tok-9", "ext-1"));
        let creds = Credentials {
            client_id: "client-7".into(),
            username: "dev".into(),
            secret: Secret::Token("tok-9".into()),
            cert: None,
        };
        assert!(matches!(
            h.authn(Protocol::Amqp, creds).0,
            Authn::Allowed(_)
        ));
        let call = fake.with(|s| s.calls[0].clone());
        assert!(
            call.request.contains("client-7") && call.request.contains("tok-9"),
            "{}",
            call.request
        );
        assert_eq!(call.authorization, None);
    });
}

#[test]
fn authenticated_without_id_is_bound_to_the_client_id() {
    both(|fake, h| {
        fake.with(|s| s.user("dev", "pw", ""));
        assert_eq!(
            h.authn(Protocol::Mqtt, password("dev", "pw")).0,
            Authn::Allowed(Rc::from("client-1"))
        );
    });
}

#[test]
fn authorize_allowed_denied_and_server_error() {
    // TestGRPCClient_CanPublish_*, CanSubscribe_*; TestHTTPClient_CanPublish_*, ...
    both(|fake, h| {
        fake.with(|s| {
            s.allow("ext-1", "sensors/t1", "publish");
            s.allow("ext-1", "sensors/#", "subscribe");
        });
        let a = |action, topic| h.authz(Protocol::Mqtt, "ext-1", action, topic).0;
        assert!(a(Action::Publish, "sensors/t1"));
        assert!(!a(Action::Publish, "sensors/t2"));
        assert!(a(Action::Subscribe, "sensors/#"));
        assert!(
            !a(Action::Subscribe, "sensors/t1"),
            "action and topic both match"
        );
        assert!(!a(Action::Publish, "sensors/#"));
        // The topic is sent raw (no $share unwrapping, no translation).
        fake.with(|s| s.allow("ext-1", "$share/g/sensors/#", "subscribe"));
        assert!(a(Action::Subscribe, "$share/g/sensors/#"));
        // An empty subject is denied without a call.
        let before = authz_calls(&fake);
        assert_eq!(
            h.authz(Protocol::Mqtt, "", Action::Publish, "x"),
            (false, true)
        );
        assert_eq!(authz_calls(&fake), before);
        fail_all(&fake);
        assert!(
            !a(Action::Subscribe, "sensors/#"),
            "server error: fail closed"
        );
        assert_eq!(h.outcomes(C, AuthRpc::Authorize, AuthResult::Error), 1);
    });
}

#[test]
fn http_protocol_and_action_strings() {
    // TestHTTPClient_ProtocolStrings
    let fake = FakeCallout::start_http();
    let h = Harness::new(&fake.config_yaml());
    for p in [
        Protocol::Mqtt,
        Protocol::Amqp,
        Protocol::Amqp091,
        Protocol::Http,
        Protocol::Coap,
    ] {
        h.authn(p, password("u", "p"));
    }
    let bodies: Vec<serde_json::Value> = fake
        .calls_of("/auth/authenticate")
        .iter()
        .map(|c| serde_json::from_str(&c.request).unwrap())
        .collect();
    let protocols: Vec<&str> = bodies
        .iter()
        .map(|b| b["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["mqtt", "amqp_1_0", "amqp_0_9_1", "", ""]);
    assert_eq!(
        bodies[0],
        serde_json::json!({"client_id": "client-1", "username": "u", "password": "p", "protocol": "mqtt"})
    );
    h.authz(Protocol::Mqtt, "ext", Action::Publish, "a/b");
    h.authz(Protocol::Mqtt, "ext", Action::Subscribe, "a/#");
    let authz: Vec<serde_json::Value> = fake
        .calls_of("/auth/authorize")
        .iter()
        .map(|c| serde_json::from_str(&c.request).unwrap())
        .collect();
    assert_eq!(
        authz,
        [
            serde_json::json!({"external_id": "ext", "topic": "a/b", "action": "publish"}),
            serde_json::json!({"external_id": "ext", "topic": "a/#", "action": "subscribe"}),
        ]
    );
}

#[cfg(feature = "auth-grpc")]
#[test]
fn grpc_protocol_and_action_enums() {
    let fake = FakeCallout::start_grpc();
    let h = Harness::new(&fake.config_yaml());
    for p in [
        Protocol::Mqtt,
        Protocol::Amqp,
        Protocol::Amqp091,
        Protocol::Coap,
    ] {
        h.authn(p, password("u", "p"));
    }
    let reqs: Vec<String> = fake
        .calls_of("Authenticate")
        .into_iter()
        .map(|c| c.request)
        .collect();
    for (r, want) in reqs.iter().zip([
        "protocol: Mqtt",
        "protocol: Amqp10",
        "protocol: Amqp091",
        "protocol: Unspecified",
    ]) {
        assert!(r.contains(want), "{r} should contain {want}");
    }
    h.authz(Protocol::Mqtt, "ext", Action::Subscribe, "a/#");
    let r = &fake.calls_of("Authorize")[0].request;
    assert!(
        r.contains("action: Subscribe") && r.contains("external_id: \"ext\""),
        "{r}"
    );
    assert!(fake.calls_of("Authorize")[0].grpc_timeout.is_some());
}

#[test]
fn http_non_200_and_garbage_are_errors() {
    // TestHTTPClient_*_ServerError: non-200 is an error, as is undecodable JSON.
    let fake = FakeCallout::start_http();
    let h = Harness::new(&fake.config_yaml());
    fake.with(|s| s.http_status = Some(403));
    assert!(
        matches!(h.authn(Protocol::Mqtt, password("u", "p")).0, Authn::Failed(ref m) if m.contains("403"))
    );
    fake.with(|s| {
        s.http_status = None;
        s.garbage = true;
    });
    let (r, _) = h.authn(Protocol::Mqtt, password("u", "p"));
    assert!(
        matches!(r, Authn::Failed(ref m) if m.contains("undecodable")),
        "{r:?}"
    );
}

#[test]
fn transient_error_is_retried_then_succeeds() {
    // TestGRPCClient_RetriesTransientErrors
    both(|fake, h| {
        fake.with(|s| {
            s.user("dev", "pw", "ext-1");
            s.fail_next = 1;
        });
        assert_eq!(
            h.authn(Protocol::Mqtt, password("dev", "pw")).0,
            Authn::Allowed(Rc::from("ext-1"))
        );
        assert_eq!(authn_calls(&fake), 2);
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Success), 1);
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Error), 0);
    });
}

#[test]
fn retries_are_bounded() {
    // TestGRPCClient_StopsRetryingWhenBudgetExhausted
    both(|fake, h| {
        fake.with(|s| {
            s.user("dev", "pw", "ext-1");
            s.fail_next = 10;
        });
        assert!(matches!(
            h.authn(Protocol::Mqtt, password("dev", "pw")).0,
            Authn::Failed(_)
        ));
        assert_eq!(authn_calls(&fake), 2, "one retry, no more");
    });
}

#[test]
fn breaker_opens_after_5_failures_and_recovers() {
    both(|fake, h| {
        let p = h.provider(Protocol::Mqtt);
        fail_all(&fake);
        let t0 = Instant::now();
        // Each operation makes 2 attempts: the 5th failing attempt opens the breaker, so
        // the 3rd operation's retry is refused.
        for _ in 0..3 {
            let r = h
                .wait(p.authenticate(Protocol::Mqtt, password("dev", "pw"), t0))
                .0;
            assert!(matches!(r, Authn::Failed(_)), "{r:?}");
        }
        assert_eq!(authn_calls(&fake), 5);
        // Open: refused at once, without a call, for 10 s (of the caller's clock).
        let (r, now) = h.wait(p.authenticate(Protocol::Mqtt, password("dev", "pw"), t0));
        assert!(
            now && matches!(r, Authn::Failed(ref m) if m.contains("breaker")),
            "{r:?}"
        );
        let later = t0 + Duration::from_secs(9);
        assert!(matches!(
            p.authorize(Protocol::Mqtt, &Rc::from("x"), Action::Publish, "t", later),
            Answer::Now(false)
        ));
        assert_eq!(authn_calls(&fake) + authz_calls(&fake), 5);
        assert_eq!(
            h.outcomes(C, AuthRpc::Authenticate, AuthResult::BreakerOpen),
            2
        );
        // After 10 s it half-opens; the callout is healthy again: probes close it.
        fake.with(|s| {
            s.status = None;
            s.http_status = None;
            s.user("dev", "pw", "ext-1");
        });
        let after = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            let r = h
                .wait(p.authenticate(Protocol::Mqtt, password("dev", "pw"), after))
                .0;
            assert_eq!(r, Authn::Allowed(Rc::from("ext-1")));
        }
        // Closed again: it takes 5 new failures to open it.
        fail_all(&fake);
        let calls = authn_calls(&fake);
        for _ in 0..2 {
            h.wait(p.authenticate(Protocol::Mqtt, password("dev", "pw"), after));
        }
        assert_eq!(authn_calls(&fake), calls + 4);
    });
}

#[test]
fn no_is_not_a_failure() {
    both(|fake, h| {
        for _ in 0..8 {
            assert_eq!(
                h.authn(Protocol::Mqtt, password("dev", "bad")).0,
                Authn::Denied
            );
            assert!(!h.authz(Protocol::Mqtt, "ext", Action::Publish, "t").0);
        }
        assert_eq!(
            authn_calls(&fake),
            8,
            "breaker still closed, no retries of a no"
        );
        assert_eq!(authz_calls(&fake), 8);
    });
}

#[test]
fn slow_callout_times_out_and_fails_closed() {
    both(|fake, h| {
        fake.with(|s| {
            s.user("dev", "pw", "ext-1");
            s.delay = Duration::from_secs(3);
        });
        let start = Instant::now();
        let (r, _) = h.authn(Protocol::Mqtt, password("dev", "pw"));
        assert!(
            matches!(r, Authn::Failed(ref m) if m.contains("timed out")),
            "{r:?}"
        );
        // Two attempts of auth.timeout (500ms) and a backoff under 100 ms; not the 3 s
        // the callout takes.
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Timeout), 1);
    });
}

#[test]
fn callout_down_fails_closed_then_recovers() {
    both(|mut fake, h| {
        fake.with(|s| s.user("dev", "pw", "ext-1"));
        fake.stop();
        assert!(matches!(
            h.authn(Protocol::Mqtt, password("dev", "pw")).0,
            Authn::Failed(_)
        ));
        assert!(!h.authz(Protocol::Mqtt, "ext-1", Action::Publish, "t").0);
        let fake = fake.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.authn(Protocol::Mqtt, password("dev", "pw")).0 != Authn::Allowed(Rc::from("ext-1"))
        {
            assert!(Instant::now() < deadline, "never recovered");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(authn_calls(&fake) >= 1);
    });
}

#[test]
fn http_keep_alive_serves_sequential_requests() {
    let fake = FakeCallout::start_http();
    let h = Harness::new(&fake.config_yaml());
    fake.with(|s| s.user("dev", "pw", "ext-1"));
    for _ in 0..5 {
        assert!(matches!(
            h.authn(Protocol::Http, token("x")).0,
            Authn::Denied
        ));
        assert!(matches!(
            h.authn(Protocol::Mqtt, password("dev", "pw")).0,
            Authn::Allowed(_)
        ));
    }
    assert_eq!(fake.calls("/auth/authenticate"), 10);
}

#[test]
fn callout_example_config_loads_without_warnings() {
    let example = include_str!("../../config/callout-example.yaml");
    let yaml = format!("server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }} }}\n{example}");
    let cfg = fluxmq_edge::config::load_str(&yaml, "callout-example.yaml").unwrap();
    assert_eq!(
        cfg.auth.provider_kind(),
        Ok(fluxmq_edge::config::AuthProvider::Callout)
    );
    assert_eq!(cfg.warnings(), Vec::<String>::new());
}

#[test]
fn metrics_render_callout_series() {
    let fake = FakeCallout::start_http();
    let h = Harness::new(&fake.config_yaml());
    fake.with(|s| s.user("dev", "pw", "ext-1"));
    h.authn(Protocol::Mqtt, password("dev", "pw"));
    let text = h.metrics_text();
    for line in [
        "fluxmq_edge_auth_requests_total{provider=\"callout\",rpc=\"authenticate\",result=\"ok\"} 1",
        "fluxmq_edge_auth_requests_total{provider=\"callout\",rpc=\"authorize\",result=\"breaker_open\"} 0",
        "fluxmq_edge_auth_rpc_duration_seconds_count{provider=\"callout\",rpc=\"authenticate\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    assert!(!text.contains("rpc=\"check\""));
}

#[test]
fn caller_cancellation_is_not_a_failure() {
    // TestExecuteWithBreakerDoesNotCountCallerCancellationAsFailure, *_HonoursCallerCancellation
    both(|fake, h| {
        fake.with(|s| {
            s.user("dev", "pw", "ext-1");
            s.delay = Duration::from_millis(300);
        });
        let p = h.provider(Protocol::Mqtt);
        for _ in 0..6 {
            // The client goes away 20 ms into its authentication: the future is dropped.
            let Answer::Later(f) =
                p.authenticate(Protocol::Mqtt, password("dev", "pw"), Instant::now())
            else {
                panic!("needs the callout");
            };
            let gone = smol::block_on(h.ex.run(smol::future::or(
                async {
                    f.await;
                    false
                },
                async {
                    smol::Timer::after(Duration::from_millis(20)).await;
                    true
                },
            )));
            assert!(gone);
        }
        fake.with(|s| s.delay = Duration::ZERO);
        // Six abandoned calls did not open the breaker: this one goes to the callout.
        let (r, now) = h.authn(Protocol::Mqtt, password("dev", "pw"));
        assert_eq!((r, now), (Authn::Allowed(Rc::from("ext-1")), false));
        assert_eq!(h.outcomes(C, AuthRpc::Authenticate, AuthResult::Error), 0);
    });
}
