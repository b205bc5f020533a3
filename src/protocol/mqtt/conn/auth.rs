//! Auth in the MQTT state machine: CONNECT authenticated (and its will topic authorized),
//! each PUBLISH and each SUBSCRIBE entry authorized, through `broker.auth` (spec §2.2).
//!
//! The state machine stays synchronous. A provider answers at once when it can (cache hit,
//! local decision); otherwise it hands back a future. The packet then stays unconsumed in
//! the partial buffer, input stops, and the driver polls the future (`take_wait`); when it
//! completes the driver calls `resume`, and the same packet is decoded and handled again,
//! this time with the answer in hand. Every other connection keeps being served meanwhile,
//! and packets of one connection keep their order.
//!
//! The external id the client authenticated as is bound to the connection for its whole
//! life: every authorization of this connection uses it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;
use crate::auth::{Action, Answer, Authn, Credentials, Pending, Protocol, Secret};

/// An auth answer fed back into the state machine.
#[derive(Debug)]
pub enum Verdict {
    Authn(Authn),
    /// Will topic or PUBLISH authorization.
    Allow(bool),
    /// One answer per SUBSCRIBE entry, in order.
    Subscribe(Vec<bool>),
}

#[derive(Default)]
pub(super) struct AuthState {
    /// The external id this connection authenticated as (bound for its whole life).
    external_id: Option<Rc<str>>,
    /// The answer for the packet being handled again.
    verdict: Option<Verdict>,
    /// An answer the driver has not taken yet.
    wait: Option<Pending<Verdict>>,
    /// A packet waits for an answer: no input is handled until `resume`.
    waiting: bool,
    /// The client id assigned while CONNECT waited, so that the same one is used after.
    pub(super) assigned: Option<String>,
    /// The will topic was authorized (CONNECT handled again after a second wait).
    will_ok: bool,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("external_id", &self.external_id)
            .field("waiting", &self.waiting)
            .finish()
    }
}

/// What the CONNECT auth step decided.
pub(super) enum Gate {
    /// Go on with the CONNECT.
    Pass,
    /// Waiting for an answer; the CONNECT is handled again afterwards.
    Wait,
    /// Refused (CONNACK sent, connection closing).
    Refused,
}

impl Conn {
    pub(super) fn is_waiting(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.waiting)
    }

    /// The auth answer to wait for, once per wait: the driver polls it and passes its
    /// output to [`Conn::resume`].
    pub fn take_wait(&mut self) -> Option<Pending<Verdict>> {
        self.auth.as_mut().and_then(|a| a.wait.take())
    }

    /// The external id this connection authenticated as, when auth is on.
    pub fn external_id(&self) -> Option<&Rc<str>> {
        self.auth.as_ref().and_then(|a| a.external_id.as_ref())
    }

    /// Continue with an auth answer: the waiting packet is handled again with it, then
    /// whatever input followed it.
    pub fn resume(&mut self, verdict: Verdict, broker: &mut Broker, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if let Some(a) = self.auth.as_mut() {
            a.verdict = Some(verdict);
            a.waiting = false;
        }
        // The wait was the broker's, not a silence of the client: keep-alive counts anew.
        self.last_rx = now;
        self.consume(&[], broker, now);
        // An answer meant for a packet that did not ask again is stale: never reuse it.
        if let Some(a) = self.auth.as_mut() {
            a.verdict = None;
        }
    }

    fn wait_for(&mut self, fut: Pending<Verdict>) {
        let a = self.auth.get_or_insert_with(Box::default);
        a.wait = Some(fut);
        a.waiting = true;
    }

    /// Authenticate a CONNECT and authorize its will topic (spec §2.2, §2.5: bad or
    /// missing credentials and provider errors answer 0x86 / 3.1.1 code 4, a will topic
    /// not allowed 0x87 / code 5).
    pub(super) fn connect_auth(
        &mut self,
        c: &Connect<'_>,
        client_id: &str,
        assigned: Option<&str>,
        broker: &mut Broker,
        now: Instant,
    ) -> Gate {
        let Some(provider) = broker.auth.for_protocol(Protocol::Mqtt).cloned() else {
            return Gate::Pass;
        };
        let v = c.version;
        let st = self.auth.get_or_insert_with(Box::default);
        let id = match st.external_id.clone() {
            Some(id) => id,
            None => {
                let outcome = match st.verdict.take() {
                    Some(Verdict::Authn(a)) => a,
                    Some(_) => Authn::Failed("unexpected answer".into()),
                    None => {
                        let Some(creds) = self.credentials(c, client_id) else {
                            self.connack_refuse(
                                v,
                                ReasonCode::BadUserNameOrPassword,
                                "password is not UTF-8",
                                broker,
                            );
                            return Gate::Refused;
                        };
                        match provider.authenticate(Protocol::Mqtt, creds, now) {
                            Answer::Now(a) => a,
                            Answer::Later(f) => {
                                let st = self.auth.get_or_insert_with(Box::default);
                                st.assigned = assigned.map(str::to_string);
                                self.wait_for(Box::pin(async move { Verdict::Authn(f.await) }));
                                return Gate::Wait;
                            }
                        }
                    }
                };
                match outcome {
                    Authn::Allowed(id) => {
                        self.auth.get_or_insert_with(Box::default).external_id = Some(id.clone());
                        id
                    }
                    Authn::Denied => {
                        self.connack_refuse(
                            v,
                            ReasonCode::BadUserNameOrPassword,
                            "not authenticated",
                            broker,
                        );
                        return Gate::Refused;
                    }
                    Authn::Failed(why) => {
                        log::warn!(
                            "client {client_id:?} from {}: {} could not authenticate: {why}",
                            self.peer,
                            provider.name()
                        );
                        self.connack_refuse(
                            v,
                            ReasonCode::BadUserNameOrPassword,
                            "authentication failed",
                            broker,
                        );
                        return Gate::Refused;
                    }
                }
            }
        };
        if let Some(w) = &c.will {
            let st = self.auth.get_or_insert_with(Box::default);
            if !st.will_ok {
                let allowed = match st.verdict.take() {
                    Some(Verdict::Allow(b)) => b,
                    Some(_) => false,
                    None => {
                        match provider.authorize(Protocol::Mqtt, &id, Action::Publish, w.topic, now)
                        {
                            Answer::Now(b) => b,
                            Answer::Later(f) => {
                                st.assigned = assigned.map(str::to_string);
                                self.wait_for(Box::pin(async move { Verdict::Allow(f.await) }));
                                return Gate::Wait;
                            }
                        }
                    }
                };
                if !allowed {
                    self.connack_refuse(
                        v,
                        ReasonCode::NotAuthorized,
                        "will topic not authorized",
                        broker,
                    );
                    return Gate::Refused;
                }
                st.will_ok = true;
            }
        }
        Gate::Pass
    }

    /// The CONNECT's credentials: username (trimmed) -> identifier, password -> secret, and
    /// the verified client certificate. `None` when the password is not UTF-8 (no provider
    /// can match it).
    fn credentials(&self, c: &Connect<'_>, client_id: &str) -> Option<Credentials> {
        let secret = match c.password {
            None | Some([]) => Secret::None,
            Some(p) => Secret::Password(std::str::from_utf8(p).ok()?.to_string()),
        };
        // The username: the CONNECT's, else (use_identity_as_username) the verified
        // certificate's CN, as set by `handle_connect` in `self.username`.
        let username = match c.username {
            Some(u) => u,
            None => self.username.as_deref().unwrap_or_default(),
        };
        Some(Credentials {
            client_id: client_id.to_string(),
            username: username.trim().to_string(),
            secret,
            cert: self.cert.clone(),
        })
    }

    /// May this connection publish to / subscribe to `topic`? `Some(answer)` now, or `None`
    /// when waiting (the packet is handled again on `resume`). Always `Some(true)` when the
    /// listener's clients are not authenticated.
    pub(super) fn authorize(
        &mut self,
        action: Action,
        topic: &str,
        broker: &Broker,
        now: Instant,
    ) -> Option<bool> {
        let Some(provider) = broker.auth.for_protocol(Protocol::Mqtt) else {
            return Some(true);
        };
        let st = self.auth.get_or_insert_with(Box::default);
        match st.verdict.take() {
            Some(Verdict::Allow(b)) => return Some(b),
            Some(_) => return Some(false),
            None => {}
        }
        // Fail closed: a connection of an authenticated protocol has an external id.
        let subject = st.external_id.clone()?;
        match provider.authorize(Protocol::Mqtt, &subject, action, topic, now) {
            Answer::Now(b) => Some(b),
            Answer::Later(f) => {
                self.wait_for(Box::pin(async move { Verdict::Allow(f.await) }));
                None
            }
        }
    }

    /// One answer per SUBSCRIBE filter, or `None` while waiting. Every filter's RPC runs
    /// concurrently.
    pub(super) fn authorize_filters<'f>(
        &mut self,
        filters: impl Iterator<Item = &'f str>,
        broker: &Broker,
        now: Instant,
    ) -> Option<Vec<bool>> {
        let provider = broker.auth.for_protocol(Protocol::Mqtt)?.clone();
        let st = self.auth.get_or_insert_with(Box::default);
        match st.verdict.take() {
            Some(Verdict::Subscribe(v)) => return Some(v),
            Some(_) => return Some(Vec::new()), // every entry denied (missing answers)
            None => {}
        }
        let Some(subject) = st.external_id.clone() else {
            return Some(Vec::new());
        };
        let mut answers = Vec::new();
        let mut later = Vec::new();
        for (i, f) in filters.enumerate() {
            match provider.authorize(Protocol::Mqtt, &subject, Action::Subscribe, f, now) {
                Answer::Now(b) => answers.push(b),
                Answer::Later(p) => {
                    answers.push(false);
                    later.push((i, Some(p), false));
                }
            }
        }
        if later.is_empty() {
            return Some(answers);
        }
        self.wait_for(Box::pin(async move {
            for (i, b) in JoinAll(later).await {
                answers[i] = b;
            }
            Verdict::Subscribe(answers)
        }));
        None
    }
}

/// Every future of the list, polled together; their outputs with their indexes.
struct JoinAll(Vec<(usize, Option<Pending<bool>>, bool)>);

impl Future for JoinAll {
    type Output = Vec<(usize, bool)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (_, slot, out) in this.0.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(b) => {
                        *out = b;
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.0.iter().map(|(i, _, b)| (*i, *b)).collect())
    }
}

#[cfg(test)]
mod tests {
    //! The wait/resume contract of the state machine with a provider, on bytes: a scripted
    //! provider that answers now or hands back a future the test completes by hand. (The
    //! real providers against fake Atom/callout servers are tested in tests/it.)

    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use super::*;
    use crate::auth::{Auth, Provider};
    use crate::broker::Limits;

    /// Answers in script order; `None` in the script = answer later (the test resolves it
    /// with `Conn::resume`).
    #[derive(Default)]
    struct Scripted {
        authn: RefCell<VecDeque<Option<Authn>>>,
        authz: RefCell<VecDeque<Option<bool>>>,
        asked: RefCell<Vec<String>>,
        /// The certificate identity of each authentication request.
        certs: RefCell<Vec<Option<Rc<crate::auth::CertIdentity>>>>,
    }

    impl Provider for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn authenticate(&self, _: Protocol, c: Credentials, _: Instant) -> Answer<Authn> {
            self.asked
                .borrow_mut()
                .push(format!("authn {} {}", c.client_id, c.username));
            self.certs.borrow_mut().push(c.cert.clone());
            match self.authn.borrow_mut().pop_front().flatten() {
                Some(a) => Answer::Now(a),
                None => Answer::Later(Box::pin(std::future::pending())),
            }
        }
        fn authorize(
            &self,
            _: Protocol,
            subject: &Rc<str>,
            action: Action,
            topic: &str,
            _: Instant,
        ) -> Answer<bool> {
            self.asked
                .borrow_mut()
                .push(format!("{} {subject} {topic}", action.key()));
            match self.authz.borrow_mut().pop_front().flatten() {
                Some(b) => Answer::Now(b),
                None => Answer::Later(Box::pin(std::future::pending())),
            }
        }
    }

    struct T {
        broker: Broker,
        conn: Conn,
        p: Rc<Scripted>,
        now: Instant,
        v: Version,
    }

    fn setup(v: Version) -> T {
        let p = Rc::new(Scripted::default());
        let mut broker = Broker::new(Limits::default(), Rc::default());
        broker.auth = Auth::new(p.clone(), |_| true);
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = Conn::new(
            Accept::Auto,
            peer,
            Rc::default(),
            Duration::from_secs(10),
            1 << 16,
            now,
        );
        T {
            broker,
            conn,
            p,
            now,
            v,
        }
    }

    impl T {
        fn send(&mut self, packets: &[Packet<'_>]) {
            let mut bytes = Vec::new();
            for p in packets {
                codec::encode(p, self.v, &mut bytes);
            }
            self.conn.handle_input(&bytes, &mut self.broker, self.now);
        }
        /// Decoded output since the last call.
        fn out(&mut self) -> Vec<String> {
            let bytes = std::mem::take(self.conn.out());
            let mut pos = 0;
            let mut got = Vec::new();
            while pos < bytes.len() {
                let len = codec::frame_len(&bytes[pos..], usize::MAX)
                    .unwrap()
                    .unwrap();
                got.push(summary(&bytes[pos..pos + len], self.v));
                pos += len;
            }
            got
        }
        fn resume(&mut self, v: Verdict) {
            assert!(self.conn.take_wait().is_some(), "nothing was waited for");
            self.conn.resume(v, &mut self.broker, self.now);
        }
    }

    /// A server packet in a few words (the decoder only reads client packets). 3.1.1
    /// return codes are shown as the v5 reasons they stand for.
    fn summary(f: &[u8], v: Version) -> String {
        let mut i = 1;
        while f[i] & 0x80 != 0 {
            i += 1;
        }
        let body = &f[i + 1..];
        let code = |b: u8| format!("{:?}", ReasonCode::from_u8(b).unwrap());
        let v3_connack = |b: u8| match b {
            0 => "Success".to_string(),
            4 => "BadUserNameOrPassword".to_string(),
            5 => "NotAuthorized".to_string(),
            n => format!("v3 code {n}"),
        };
        match f[0] >> 4 {
            2 if v == Version::V5 => format!("CONNACK {}", code(body[1])),
            2 => format!("CONNACK {}", v3_connack(body[1])),
            4 => {
                let id = u16::from_be_bytes([body[0], body[1]]);
                format!("PUBACK {id} {}", code(*body.get(2).unwrap_or(&0)))
            }
            9 => {
                let id = u16::from_be_bytes([body[0], body[1]]);
                let skip = if v == Version::V5 { 3 } else { 2 };
                let codes: Vec<String> = body[skip..].iter().map(|&c| code(c)).collect();
                format!("SUBACK {id} [{}]", codes.join(", "))
            }
            13 => "PINGRESP".to_string(),
            n => format!("packet type {n}"),
        }
    }

    fn connect(id: &str) -> Packet<'_> {
        Packet::Connect(Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: id,
            will: None,
            username: Some("dev"),
            password: Some(b"pw"),
            props: Properties::default(),
        })
    }

    fn publish(pkid: u16, topic: &str) -> Packet<'_> {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            pkid: NonZeroU16::new(pkid),
            props: Properties::default(),
            payload: b"x",
        })
    }

    fn connected(v: Version) -> T {
        let mut t = setup(v);
        t.p.authn
            .borrow_mut()
            .push_back(Some(Authn::Allowed("ext-1".into())));
        let mut c = connect("c1");
        if let Packet::Connect(c) = &mut c {
            c.version = v;
        }
        t.send(&[c]);
        assert_eq!(t.out(), ["CONNACK Success"]);
        t
    }

    /// The verified client certificate reaches the provider; with
    /// `use_identity_as_username` its CN is the username of a CONNECT without one, and a
    /// CONNECT's own username wins.
    #[test]
    fn certificate_identity_and_username_reach_the_provider() {
        let id = Rc::new(crate::auth::CertIdentity {
            fingerprint_sha256: "ab".repeat(32),
            serial: "1234".into(),
            subject_cn: Some("device-1".into()),
        });
        for (as_username, sent, want) in [
            (true, None, "device-1"),
            (true, Some("alice"), "alice"),
            (false, None, ""),
        ] {
            let mut t = setup(Version::V5);
            t.conn.set_cert(Some(id.clone()), as_username);
            t.p.authn
                .borrow_mut()
                .push_back(Some(Authn::Allowed("ext-1".into())));
            let mut c = connect("c1");
            if let Packet::Connect(c) = &mut c {
                c.username = sent;
            }
            t.send(&[c]);
            assert_eq!(t.out(), ["CONNACK Success"]);
            assert_eq!(*t.p.asked.borrow(), [format!("authn c1 {want}")]);
            assert_eq!(*t.p.certs.borrow(), [Some(id.clone())]);
            assert_eq!(
                t.conn.username().map(|u| &**u),
                sent.or(as_username.then_some("device-1"))
            );
            assert_eq!(t.conn.cert(), Some(&id));
        }
    }

    #[test]
    fn connect_waits_for_authentication_then_connacks() {
        let mut t = setup(Version::V5);
        t.p.authn.borrow_mut().push_back(None);
        t.send(&[connect("")]);
        assert!(t.out().is_empty(), "no CONNACK before the answer");
        assert!(!t.conn.wants_read(), "no input while waiting");
        t.resume(Verdict::Authn(Authn::Allowed("ext-9".into())));
        let out = t.out();
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("CONNACK Success"), "{out:?}");
        assert_eq!(t.conn.external_id().map(|s| &**s), Some("ext-9"));
        // The client id assigned before the wait is the one the client gets.
        let asked = t.p.asked.borrow()[0].clone();
        assert_eq!(asked, format!("authn {} dev", t.conn.client_id()));
        assert!(t.conn.wants_read());
    }

    #[test]
    fn connect_refused_on_denial_and_provider_error() {
        for (v, outcome, code) in [
            (Version::V5, Authn::Denied, "CONNACK BadUserNameOrPassword"),
            (
                Version::V5,
                Authn::Failed("down".into()),
                "CONNACK BadUserNameOrPassword",
            ),
            (
                Version::V311,
                Authn::Denied,
                "CONNACK BadUserNameOrPassword",
            ),
        ] {
            let mut t = setup(v);
            t.p.authn.borrow_mut().push_back(None);
            let mut c = connect("c1");
            if let Packet::Connect(c) = &mut c {
                c.version = v;
            }
            t.send(&[c]);
            t.resume(Verdict::Authn(outcome));
            assert_eq!(t.out(), [code]);
            assert!(t.conn.is_closed());
        }
    }

    #[test]
    fn will_topic_denied_refuses_connect() {
        let mut t = setup(Version::V5);
        t.p.authn
            .borrow_mut()
            .push_back(Some(Authn::Allowed("e".into())));
        t.p.authz.borrow_mut().push_back(None);
        let mut c = connect("c1");
        if let Packet::Connect(c) = &mut c {
            c.will = Some(Will {
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "m/t/c/ch/will",
                payload: b"bye",
                props: Properties::default(),
            });
        }
        t.send(&[c]);
        assert!(t.out().is_empty());
        t.resume(Verdict::Allow(false));
        assert_eq!(t.out(), ["CONNACK NotAuthorized"]);
        assert_eq!(
            *t.p.asked.borrow(),
            ["authn c1 dev", "publish e m/t/c/ch/will"],
            "authenticated once, will authorized with the external id"
        );
    }

    #[test]
    fn packets_behind_a_waiting_publish_keep_their_order() {
        let mut t = connected(Version::V5);
        t.p.authz.borrow_mut().extend([None, Some(false), None]);
        // Three PUBLISHes and a PINGREQ in one read.
        t.send(&[
            publish(1, "a"),
            publish(2, "b"),
            publish(3, "c"),
            Packet::PingReq,
        ]);
        assert!(t.out().is_empty(), "nothing answered while the first waits");
        t.resume(Verdict::Allow(true));
        // 1 allowed (no subscriber: 0x10), 2 denied at once (0x87), 3 waits again.
        assert_eq!(
            t.out(),
            ["PUBACK 1 NoMatchingSubscribers", "PUBACK 2 NotAuthorized"]
        );
        t.resume(Verdict::Allow(true));
        assert_eq!(t.out(), ["PUBACK 3 NoMatchingSubscribers", "PINGRESP"]);
        assert_eq!(
            *t.p.asked.borrow(),
            [
                "authn c1 dev",
                "publish ext-1 a",
                "publish ext-1 b",
                "publish ext-1 c"
            ],
            "each PUBLISH asked once, with the connection's external id"
        );
        assert!(!t.conn.is_closed());
    }

    #[test]
    fn keep_alive_does_not_expire_while_a_packet_waits_for_auth() {
        let mut t = setup(Version::V5);
        t.p.authn
            .borrow_mut()
            .push_back(Some(Authn::Allowed("e".into())));
        let mut c = connect("ka");
        if let Packet::Connect(c) = &mut c {
            c.keep_alive = 1;
        }
        t.send(&[c]);
        assert_eq!(t.out(), ["CONNACK Success"]);
        t.p.authz.borrow_mut().push_back(None);
        t.send(&[publish(1, "a")]);
        // 5 s later (keep-alive limit 1.5 s) the answer is still awaited: not a timeout.
        let later = t.now + Duration::from_secs(5);
        assert_eq!(t.conn.next_deadline(&t.broker), None);
        t.conn.handle_timeout(&mut t.broker, later);
        assert!(!t.conn.is_closed());
        t.now = later;
        t.resume(Verdict::Allow(true));
        assert_eq!(t.out(), ["PUBACK 1 NoMatchingSubscribers"]);
        // Keep-alive counts again from the answer (the wait was not the client's silence).
        assert!(t.conn.next_deadline(&t.broker).is_some());
        t.conn
            .handle_timeout(&mut t.broker, later + Duration::from_secs(1));
        assert!(!t.conn.is_closed());
        t.conn
            .handle_timeout(&mut t.broker, later + Duration::from_secs(2));
        assert!(t.conn.is_closed(), "keep-alive applies again once answered");
    }

    #[test]
    fn v3_publish_denied_closes() {
        let mut t = connected(Version::V311);
        t.p.authz.borrow_mut().push_back(Some(false));
        t.send(&[publish(1, "a")]);
        assert!(t.out().is_empty());
        assert!(t.conn.is_closed());
    }

    #[test]
    fn subscribe_entries_authorized_together() {
        let mut t = connected(Version::V5);
        t.p.authz.borrow_mut().extend([Some(true), None, None]);
        let mut payload = Vec::new();
        for f in ["a/#", "b", "c/+"] {
            payload.extend_from_slice(&(f.len() as u16).to_be_bytes());
            payload.extend_from_slice(f.as_bytes());
            payload.push(1);
        }
        t.send(&[Packet::Subscribe(Subscribe {
            pkid: NonZeroU16::new(7).unwrap(),
            props: Properties::default(),
            payload: &payload,
            version: Version::V5,
        })]);
        assert!(t.out().is_empty());
        t.resume(Verdict::Subscribe(vec![true, false, true]));
        assert_eq!(
            t.out(),
            ["SUBACK 7 [GrantedQoS1, NotAuthorized, GrantedQoS1]"]
        );
        assert_eq!(t.p.asked.borrow().len(), 4, "no second round of RPCs");
    }
}
