//! The Atom provider (spec §2.2–§2.4): authentication by `AuthService.Authenticate` (tokens:
//! HTTP, CoAP, AMQP), `AuthService.AuthenticateCredential` (MQTT username/password) or,
//! beyond FluxMQ, `CertificateService.ResolveCertificate` (a verified client certificate and
//! no secret); authorization of `m/<tenant>/c/<channel>/...` topics by
//! `AliasService.ResolveAlias` (alias tenants/channels) and `AuthzService.Check`.
//!
//! Owns: the request each step sends (fields, service token, `grpc-timeout`), the mapping of
//! answers and gRPC statuses to outcomes, the authn/alias/decision caches, and the counting
//! of every outcome. Fails closed: any error is a rejection or a denial. Does not own the
//! connection to Atom (src/grpc/) nor the topic grammar (topic.rs).
//!
//! Differences from FluxMQ's provider, on purpose: one connection to Atom for every protocol
//! (FluxMQ dials one per protocol), dialled lazily and redialled with backoff (FluxMQ dials
//! at start-up and exits if Atom is down: a gateway must boot while its uplink is away), and
//! bounded caches.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::LocalExecutor;
use tonic::metadata::{Ascii, MetadataValue};

use super::cache::{self, Caches, Key};
use super::topic::{self, Route};
use super::{Action, Answer, Authn, Credentials, LogLimit, Protocol, Provider, Secret};
use crate::clock;
use crate::config;
use crate::grpc::dial::{self, Endpoint, TlsFiles};
use crate::grpc::pb::atom as pb;
use crate::grpc::{CallError, Channel, MAX_RESPONSE, deadline};
use crate::metrics::{AuthProvider, AuthResult, AuthRpc, Metrics};

use pb::alias_service_client::AliasServiceClient;
use pb::auth_service_client::AuthServiceClient;
use pb::authz_service_client::AuthzServiceClient;
use pb::certificate_service_client::CertificateServiceClient;

const P: AuthProvider = AuthProvider::Atom;

/// The Atom provider; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Atom {
    inner: Rc<Inner>,
}

struct Inner {
    chan: Channel,
    /// `Bearer <service token>`, sent on every RPC but `Authenticate`; re-read on reload.
    bearer: RefCell<MetadataValue<Ascii>>,
    /// The `auth` section it was built from (a reload that changes it needs a restart).
    cfg: config::Auth,
    /// Per operation: an authentication, or the alias resolution and check of one topic.
    timeout: Duration,
    caches: RefCell<Caches>,
    metrics: Rc<Metrics>,
    log: LogLimit,
}

/// Reads the service token: `service_token_env` first (trimmed), then `service_token_file`
/// (trimmed, non-empty). Errors name the key.
pub fn service_token(a: &config::Atom) -> Result<String, String> {
    if !a.service_token_env.is_empty() {
        match std::env::var(&a.service_token_env) {
            Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_owned()),
            _ if a.service_token_file.is_empty() => {
                return Err(format!(
                    "auth.atom.service_token_env: environment variable {} is not set or empty \
                     (it must hold the Atom service key)",
                    a.service_token_env
                ));
            }
            _ => {}
        }
    }
    let text = std::fs::read_to_string(&a.service_token_file).map_err(|e| {
        format!(
            "auth.atom.service_token_file: cannot read {}: {e}",
            a.service_token_file
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "auth.atom.service_token_file: {} is empty (it must hold the Atom service key)",
            a.service_token_file
        ));
    }
    Ok(token.to_owned())
}

impl Atom {
    /// From `auth` (provider atom); errors name the key. Reads the service token and the
    /// TLS files now; connects to Atom only when the first request needs it.
    pub fn new(
        a: &config::Auth,
        ex: Rc<LocalExecutor<'static>>,
        metrics: Rc<Metrics>,
    ) -> Result<Atom, String> {
        let atom = &a.atom;
        let (host, port) = Endpoint::parse_host_port(&atom.grpc_addr)
            .map_err(|e| format!("auth.atom.grpc_addr: {e}"))?;
        let tls = if atom.insecure {
            None
        } else {
            let files = TlsFiles {
                ca_file: atom.ca_file.clone(),
                cert_file: atom.cert_file.clone(),
                key_file: atom.key_file.clone(),
            };
            Some(dial::client_config(&files, b"h2").map_err(|e| {
                let key = if e.starts_with(&files.key_file) && !files.key_file.is_empty() {
                    "key_file"
                } else if e.starts_with(&files.cert_file) && !files.cert_file.is_empty() {
                    "cert_file"
                } else {
                    "ca_file"
                };
                format!("auth.atom.{key}: {e}")
            })?)
        };
        let bearer = bearer(atom)?;
        let timeout = a.effective_timeout();
        let chan = Channel::new("atom", Endpoint { host, port, tls }, ex, timeout)
            .map_err(|e| format!("auth.atom.grpc_addr: {e}"))?;
        let caches = Caches::new(
            a.effective_identity_cache_size() as usize,
            atom.authn_cache_ttl,
            atom.alias_cache_ttl,
            atom.decision_cache_ttl,
        );
        metrics.auth.provider.set(Some(P));
        caches.report(&metrics);
        Ok(Atom {
            inner: Rc::new(Inner {
                chan,
                bearer: RefCell::new(bearer),
                cfg: a.clone(),
                timeout,
                caches: RefCell::new(caches),
                metrics,
                log: LogLimit::default(),
            }),
        })
    }

    /// Dials started so far (tests: lazy connect, redial).
    pub fn dials(&self) -> u64 {
        self.inner.chan.dials()
    }
}

/// `Bearer <service token>` as gRPC metadata.
fn bearer(a: &config::Atom) -> Result<MetadataValue<Ascii>, String> {
    let token = service_token(a)?;
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        "auth.atom.service_token_env: the service token has characters not allowed in a gRPC \
         header"
            .to_string()
    })
}

/// Strips a leading case-insensitive `bearer ` and trims (FluxMQ's token handling).
fn strip_bearer(t: &str) -> &str {
    let t = t.trim();
    match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t[7..].trim(),
        _ => t,
    }
}

impl Provider for Atom {
    fn name(&self) -> &'static str {
        "atom"
    }

    fn reload(&self, cfg: &config::Config) {
        let inner = &self.inner;
        let mut unchanged = cfg.auth.clone();
        unchanged.atom.service_token_env = inner.cfg.atom.service_token_env.clone();
        unchanged.atom.service_token_file = inner.cfg.atom.service_token_file.clone();
        if unchanged != inner.cfg {
            log::warn!(
                "auth: the auth section changed; only the Atom service token is applied live, \
                 restart for the rest"
            );
        }
        match bearer(&cfg.auth.atom) {
            Ok(b) => *inner.bearer.borrow_mut() = b,
            Err(e) => log::error!("auth: service token not reloaded, the old one stays: {e}"),
        }
    }

    fn authenticate(&self, _protocol: Protocol, creds: Credentials, now: Instant) -> Answer<Authn> {
        let inner = &self.inner;
        let (rpc, key) = match &creds.secret {
            Secret::Password(pw) => {
                let id = creds.username.trim();
                if id.is_empty() || pw.is_empty() {
                    return inner.local_deny();
                }
                (
                    AuthRpc::AuthenticateCredential,
                    cache::key(&[b"credential", id.as_bytes(), pw.as_bytes()]),
                )
            }
            Secret::Token(t) => {
                let t = strip_bearer(t);
                if t.is_empty() {
                    return inner.local_deny();
                }
                (AuthRpc::Authenticate, cache::key(&[b"token", t.as_bytes()]))
            }
            Secret::None => match &creds.cert {
                Some(c) => (
                    AuthRpc::ResolveCertificate,
                    cache::key(&[
                        b"certificate",
                        c.fingerprint_sha256.as_bytes(),
                        c.serial.as_bytes(),
                    ]),
                ),
                None => return inner.local_deny(),
            },
        };
        if let Some(id) = inner.caches.borrow_mut().authn.get(&key, now) {
            inner.count(rpc, AuthResult::Cached);
            return Answer::Now(Authn::Allowed(id));
        }
        let inner = self.inner.clone();
        Answer::Later(Box::pin(async move {
            let r = inner.timed(rpc, inner.authn_rpc(rpc, creds)).await;
            inner.authn_outcome(rpc, key, r)
        }))
    }

    fn authorize(
        &self,
        protocol: Protocol,
        subject: &Rc<str>,
        action: Action,
        raw: &str,
        now: Instant,
    ) -> Answer<bool> {
        let inner = &self.inner;
        if subject.is_empty() {
            inner.count(AuthRpc::Local, AuthResult::Denied);
            return Answer::Now(false);
        }
        let norm = topic::normalise(protocol, action, raw);
        let route = match topic::parse(&norm, action) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("atom: {} {raw:?} denied: {e}", action.key());
                inner.count(AuthRpc::Local, AuthResult::Denied);
                return Answer::Now(false);
            }
        };
        let check = Check::new(protocol, subject.clone(), action, raw, &route);
        let resource = if route.channel_is_uuid {
            Some(Rc::from(route.channel))
        } else {
            let hit = inner.caches.borrow_mut().alias.get(&check.alias_key, now);
            if hit.is_some() {
                inner.count(AuthRpc::ResolveAlias, AuthResult::Cached);
            }
            hit
        };
        if let Some(res) = &resource
            && let Some(allowed) = inner
                .caches
                .borrow_mut()
                .decision
                .get(&check.decision_key(res), now)
        {
            inner.count(AuthRpc::Check, AuthResult::Cached);
            return Answer::Now(allowed);
        }
        let inner = self.inner.clone();
        Answer::Later(Box::pin(async move {
            // One deadline covers the alias resolution and the check (spec §2.3 step 4).
            let stage = Cell::new((AuthRpc::ResolveAlias, clock::now()));
            let work = inner.resolve_and_check(check, resource, &stage);
            let r = smol::future::or(work, async {
                smol::Timer::after(inner.timeout).await;
                Err(CallError::Timeout)
            })
            .await;
            match r {
                Ok(allowed) => allowed,
                Err(e) => {
                    // Only a timeout ends here with its RPC still uncounted.
                    let (rpc, started) = stage.get();
                    inner.timed_out(rpc, started);
                    inner
                        .log
                        .warn(|| format!("atom: {}: {e}; denied", rpc.label()));
                    false
                }
            }
        }))
    }
}

/// What a check needs once the topic is parsed (owned: it outlives the call).
struct Check {
    protocol: Protocol,
    subject: Rc<str>,
    action: Action,
    tenant_is_uuid: bool,
    /// ResolveAlias arguments (lower-cased aliases).
    tenant: String,
    channel_alias: String,
    alias_key: Key,
    context: HashMap<String, String>,
    topic: String,
}

impl Check {
    fn new(protocol: Protocol, subject: Rc<str>, action: Action, raw: &str, r: &Route) -> Check {
        let tenant = if r.tenant_is_uuid {
            r.tenant.to_owned()
        } else {
            r.tenant.to_lowercase()
        };
        let channel_alias = r.channel.to_lowercase();
        let alias_key = cache::key(&[
            if r.tenant_is_uuid {
                b"tenant_id"
            } else {
                b"tenant_alias"
            },
            tenant.as_bytes(),
            channel_alias.as_bytes(),
        ]);
        let tail_key = match action {
            Action::Publish => "subtopic",
            Action::Subscribe => "filter",
        };
        let context = HashMap::from([
            ("protocol".to_owned(), protocol.key().to_owned()),
            ("raw_topic".to_owned(), raw.to_owned()),
            ("topic".to_owned(), r.topic.to_owned()),
            ("route_tenant".to_owned(), r.tenant.to_owned()),
            ("route_channel".to_owned(), r.channel.to_owned()),
            (tail_key.to_owned(), r.tail.to_owned()),
        ]);
        Check {
            protocol,
            subject,
            action,
            tenant_is_uuid: r.tenant_is_uuid,
            tenant,
            channel_alias,
            alias_key,
            context,
            topic: r.topic.to_owned(),
        }
    }

    fn decision_key(&self, resource: &str) -> Key {
        cache::key(&[
            b"decision",
            self.protocol.key().as_bytes(),
            self.action.key().as_bytes(),
            self.subject.as_bytes(),
            resource.as_bytes(),
            self.topic.as_bytes(),
        ])
    }
}

impl Inner {
    fn count(&self, rpc: AuthRpc, r: AuthResult) {
        self.metrics.auth.outcome(P, rpc, r);
    }

    fn local_deny(&self) -> Answer<Authn> {
        self.count(AuthRpc::Local, AuthResult::Denied);
        Answer::Now(Authn::Denied)
    }

    fn timed_out(&self, rpc: AuthRpc, started: Instant) {
        self.metrics
            .auth
            .latency(P, rpc, clock::now().saturating_duration_since(started));
        self.count(rpc, AuthResult::Timeout);
    }

    /// Runs one RPC with the local deadline, recording its latency.
    async fn timed<T>(
        &self,
        rpc: AuthRpc,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        let start = clock::now();
        let r = deadline(self.timeout, call).await;
        self.metrics
            .auth
            .latency(P, rpc, clock::now().saturating_duration_since(start));
        r
    }

    fn request<T>(&self, msg: T, service_token: bool) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if service_token {
            req.metadata_mut()
                .insert("authorization", self.bearer.borrow().clone());
        }
        req
    }

    /// The authentication RPC for `creds`; the entity id it returned.
    async fn authn_rpc(&self, rpc: AuthRpc, creds: Credentials) -> Result<String, CallError> {
        let svc = self.chan.ready().await?;
        let origin = self.chan.origin();
        match rpc {
            AuthRpc::AuthenticateCredential => {
                let Secret::Password(secret) = creds.secret else {
                    unreachable!("checked by authenticate")
                };
                let req = self.request(
                    pb::AuthenticateCredentialRequest {
                        identifier: creds.username.trim().to_owned(),
                        secret,
                        kind: "password".to_owned(),
                        ..Default::default()
                    },
                    true,
                );
                let mut c = AuthServiceClient::with_origin(svc, origin)
                    .max_decoding_message_size(MAX_RESPONSE);
                Ok(c.authenticate_credential(req).await?.into_inner().entity_id)
            }
            AuthRpc::Authenticate => {
                let Secret::Token(t) = &creds.secret else {
                    unreachable!("checked by authenticate")
                };
                // No service token on Authenticate (as FluxMQ).
                let req = self.request(
                    pb::AuthenticateRequest {
                        token: strip_bearer(t).to_owned(),
                    },
                    false,
                );
                let mut c = AuthServiceClient::with_origin(svc, origin)
                    .max_decoding_message_size(MAX_RESPONSE);
                Ok(c.authenticate(req).await?.into_inner().entity_id)
            }
            _ => {
                let Some(cert) = creds.cert else {
                    unreachable!("checked by authenticate")
                };
                let req = self.request(
                    pb::ResolveCertificateRequest {
                        serial_number: cert.serial.clone(),
                        fingerprint_sha256: cert.fingerprint_sha256.clone(),
                    },
                    true,
                );
                let mut c = CertificateServiceClient::with_origin(svc, origin)
                    .max_decoding_message_size(MAX_RESPONSE);
                Ok(c.resolve_certificate(req).await?.into_inner().entity_id)
            }
        }
    }

    /// Spec §2.3, "Authentication result mapping".
    fn authn_outcome(&self, rpc: AuthRpc, key: Key, r: Result<String, CallError>) -> Authn {
        match r {
            Ok(id) if !id.trim().is_empty() => {
                let id: Rc<str> = Rc::from(id.trim());
                let mut caches = self.caches.borrow_mut();
                caches.authn.insert(key, id.clone(), clock::now());
                caches.report(&self.metrics);
                self.count(rpc, AuthResult::Success);
                Authn::Allowed(id)
            }
            Ok(_) => {
                self.count(rpc, AuthResult::Denied);
                Authn::Denied
            }
            // An unknown certificate is a definite no too.
            Err(CallError::Status(code, msg))
                if is_denial(code)
                    || (rpc == AuthRpc::ResolveCertificate && code == tonic::Code::NotFound) =>
            {
                log::debug!("atom: {}: {code:?} {msg}", rpc.label());
                self.count(rpc, AuthResult::Denied);
                Authn::Denied
            }
            Err(e) => {
                self.count(
                    rpc,
                    if e == CallError::Timeout {
                        AuthResult::Timeout
                    } else {
                        AuthResult::Error
                    },
                );
                self.log
                    .warn(|| format!("atom: {}: {e}; rejected", rpc.label()));
                Authn::Failed(format!("atom {}: {e}", rpc.label()))
            }
        }
    }

    /// Steps 5 and 6 of spec §2.3: the resource id (alias resolution unless known), then
    /// the decision (cache, else Check). `stage` tracks the RPC in flight for the caller's
    /// deadline. Errors come back only from a timeout; every other failure is a denial.
    async fn resolve_and_check(
        &self,
        check: Check,
        resource: Option<Rc<str>>,
        stage: &Cell<(AuthRpc, Instant)>,
    ) -> Result<bool, CallError> {
        let resource = match resource {
            Some(r) => r,
            None => {
                stage.set((AuthRpc::ResolveAlias, clock::now()));
                let r = self.resolve_alias(&check).await;
                self.metrics.auth.latency(
                    P,
                    AuthRpc::ResolveAlias,
                    clock::now().saturating_duration_since(stage.get().1),
                );
                match r {
                    Ok(id) if !id.is_empty() => {
                        self.count(AuthRpc::ResolveAlias, AuthResult::Success);
                        let id: Rc<str> = Rc::from(id);
                        let mut caches = self.caches.borrow_mut();
                        caches
                            .alias
                            .insert(check.alias_key, id.clone(), clock::now());
                        caches.report(&self.metrics);
                        id
                    }
                    Ok(_) => {
                        self.count(AuthRpc::ResolveAlias, AuthResult::Denied);
                        return Ok(false);
                    }
                    Err(CallError::Status(code, msg)) => {
                        self.count(
                            AuthRpc::ResolveAlias,
                            if is_denial(code) || code == tonic::Code::NotFound {
                                AuthResult::Denied
                            } else {
                                AuthResult::Error
                            },
                        );
                        self.log.warn(|| {
                            format!(
                                "atom: resolve_alias {}/{}: {code:?} {msg}; denied",
                                check.tenant, check.channel_alias
                            )
                        });
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let dkey = check.decision_key(&resource);
        if let Some(allowed) = self.caches.borrow_mut().decision.get(&dkey, clock::now()) {
            self.count(AuthRpc::Check, AuthResult::Cached);
            return Ok(allowed);
        }
        stage.set((AuthRpc::Check, clock::now()));
        let r = self.check(&check, &resource).await;
        self.metrics.auth.latency(
            P,
            AuthRpc::Check,
            clock::now().saturating_duration_since(stage.get().1),
        );
        match r {
            Ok(allowed) => {
                self.count(
                    AuthRpc::Check,
                    if allowed {
                        AuthResult::Success
                    } else {
                        AuthResult::Denied
                    },
                );
                let mut caches = self.caches.borrow_mut();
                caches.decision.insert(dkey, allowed, clock::now());
                caches.report(&self.metrics);
                Ok(allowed)
            }
            Err(CallError::Status(code, msg)) => {
                self.count(AuthRpc::Check, AuthResult::Error);
                self.log
                    .warn(|| format!("atom: check: {code:?} {msg}; denied"));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn resolve_alias(&self, check: &Check) -> Result<String, CallError> {
        let svc = self.chan.ready().await?;
        let mut msg = pb::ResolveAliasRequest {
            object_kind: "resource".to_owned(),
            object_alias: check.channel_alias.clone(),
            ..Default::default()
        };
        if check.tenant_is_uuid {
            msg.tenant_id = check.tenant.clone();
        } else {
            msg.tenant_alias = check.tenant.clone();
        }
        let mut c = AliasServiceClient::with_origin(svc, self.chan.origin())
            .max_decoding_message_size(MAX_RESPONSE);
        let resp = c.resolve_alias(self.request(msg, true)).await?;
        Ok(resp.into_inner().object_id.trim().to_owned())
    }

    async fn check(&self, check: &Check, resource: &str) -> Result<bool, CallError> {
        let svc = self.chan.ready().await?;
        let msg = pb::CheckRequest {
            subject_id: check.subject.to_string(),
            action: check.action.key().to_owned(),
            resource_id: String::new(),
            context: check.context.clone(),
            object_kind: "resource".to_owned(),
            object_id: resource.to_owned(),
        };
        let mut c = AuthzServiceClient::with_origin(svc, self.chan.origin())
            .max_decoding_message_size(MAX_RESPONSE);
        let resp = c.check(self.request(msg, true)).await?.into_inner();
        if !resp.allowed && !resp.reason.is_empty() {
            log::debug!("atom: check denied: {}", resp.reason);
        }
        Ok(resp.allowed)
    }
}

/// The statuses FluxMQ reads as "not authenticated" rather than as an error.
fn is_denial(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefix_stripped() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("  bEaReR   abc "), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bearer"), "Bearer");
        assert_eq!(
            strip_bearer("Bearer  "),
            "Bearer",
            "trimmed first: no prefix left"
        );
        assert_eq!(strip_bearer("Bearer  x"), "x");
        assert_eq!(strip_bearer("é"), "é");
    }

    #[test]
    fn denial_statuses() {
        assert!(is_denial(tonic::Code::Unauthenticated));
        assert!(is_denial(tonic::Code::PermissionDenied));
        assert!(is_denial(tonic::Code::InvalidArgument));
        assert!(!is_denial(tonic::Code::Unavailable));
        assert!(!is_denial(tonic::Code::NotFound));
        assert!(!is_denial(tonic::Code::DeadlineExceeded));
    }

    #[test]
    fn service_token_sources() {
        let mut a = config::Atom {
            service_token_env: "FLUXMQ_EDGE_TEST_UNSET_TOKEN_VAR".into(),
            ..Default::default()
        };
        let e = service_token(&a).unwrap_err();
        assert!(e.starts_with("auth.atom.service_token_env: "), "{e}");
        let dir = std::env::temp_dir().join(format!("fluxmq-edge-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  tok-1\n").unwrap();
        a.service_token_file = f.display().to_string();
        assert_eq!(service_token(&a).unwrap(), "tok-1");
        std::fs::write(&f, " \n").unwrap();
        let e = service_token(&a).unwrap_err();
        assert!(e.starts_with("auth.atom.service_token_file: "), "{e}");
        a.service_token_file = dir.join("missing").display().to_string();
        let e = service_token(&a).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
