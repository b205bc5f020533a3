//! Fake auth upstreams for tests, speaking the real protocols: a fake Atom (`atom.v1`) and a
//! fake gRPC callout (`fluxmq.auth.v1`), both real tonic servers on their own tokio thread,
//! and a fake HTTP JSON callout (axum). Each starts on 127.0.0.1:0 and is configured per
//! test through its shared state: the answers (per credential, token, alias, decision), an
//! artificial delay, a gRPC status (or HTTP status) to return instead, and a record of
//! every call received with its metadata (to assert the service token).
//!
//! Also: [`Pki`], a test CA with a server certificate for 127.0.0.1 and a client
//! certificate, written as PEM files (rcgen), for TLS to the fake Atom.
//!
//! Usage (the MQTT, HTTP and CoAP tests reuse these):
//! ```ignore
//! let atom = FakeAtom::start();
//! atom.with(|s| { s.credential("dev1", "pw", "entity-1"); s.allow("entity-1", "publish", CHAN); });
//! let yaml = atom.config_yaml("");   // an `auth:` section pointing at it
//! ...
//! assert_eq!(atom.calls("AuthenticateCredential"), 1);
//! ```

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::rc::Rc;
use std::time::Instant;

use fluxmq_edge::auth::{Action, Answer, Auth, Authn, Credentials, Protocol, Provider, Secret};
use fluxmq_edge::metrics::{AuthProvider, AuthResult, AuthRpc, Metrics};
use smol::LocalExecutor;
use tonic::{Code, Request, Response, Status};

pub mod pb_atom {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/server/atom.v1.rs"));
}
pub mod pb_callout {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/server/fluxmq.auth.v1.rs"));
}

/// A channel UUID and a tenant UUID for magistrala topics.
pub const TENANT: &str = "6f1e2a4c-1b2d-4c3e-8f00-0123456789ab";
pub const CHANNEL: &str = "0a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3";

/// One call an upstream received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The RPC (`Authenticate`, `AuthenticateCredential`, `Check`, `ResolveAlias`,
    /// `ResolveCertificate`, `Authorize`) or HTTP path (`/auth/authenticate`).
    pub rpc: &'static str,
    /// The `authorization` metadata / header, if any.
    pub authorization: Option<String>,
    /// The `grpc-timeout` metadata, if any.
    pub grpc_timeout: Option<String>,
    /// The request, as `Debug` (gRPC) or the JSON body (HTTP).
    pub request: String,
    pub check: Option<pb_atom::CheckRequest>,
    pub alias: Option<pb_atom::ResolveAliasRequest>,
}

/// What the fake Atom answers. Unknown credentials/tokens: `Unauthenticated`; unknown
/// aliases: `NotFound`; decisions not in `allow`: `allowed: false`.
#[derive(Default)]
pub struct AtomState {
    /// (identifier, secret) -> entity id.
    pub credentials: HashMap<(String, String), String>,
    /// token -> entity id.
    pub tokens: HashMap<String, String>,
    /// certificate SHA-256 fingerprint -> entity id.
    pub certs: HashMap<String, String>,
    /// (tenant id or alias, object alias) -> object id.
    pub aliases: HashMap<(String, String), String>,
    /// (subject, action, object id) allowed.
    pub allow: HashSet<(String, String, String)>,
    /// Returned by every RPC instead of an answer, when set.
    pub status: Option<(Code, String)>,
    /// Waited before every answer.
    pub delay: Duration,
    pub calls: Vec<Call>,
}

impl AtomState {
    pub fn credential(&mut self, id: &str, secret: &str, entity: &str) {
        self.credentials
            .insert((id.into(), secret.into()), entity.into());
    }
    pub fn token(&mut self, token: &str, entity: &str) {
        self.tokens.insert(token.into(), entity.into());
    }
    pub fn alias(&mut self, tenant: &str, alias: &str, object: &str) {
        self.aliases
            .insert((tenant.into(), alias.into()), object.into());
    }
    pub fn allow(&mut self, subject: &str, action: &str, object: &str) {
        self.allow
            .insert((subject.into(), action.into(), object.into()));
    }
}

type Shared<S> = Arc<Mutex<S>>;

fn metadata<T>(req: &Request<T>, key: &str) -> Option<String> {
    req.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A server thread; dropping it stops the server (and closes its connections).
struct ServerThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `serve(listener, shutdown)` on a new current-thread tokio runtime, listening on
/// `addr` (port 0 for a free one).
fn spawn_server<F, Fut>(addr: SocketAddr, serve: F) -> ServerThread
where
    F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(addr).await.unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            let (_never_tx, never) = tokio::sync::oneshot::channel::<()>();
            tokio::select! {
                _ = serve(l, never) => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime drops every connection task: clients see their connection
        // close at once (an upstream that goes away), no graceful drain.
        drop(rt);
    });
    let addr = addr_rx.recv().expect("fake server binds");
    ServerThread {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

// ---- fake Atom ---------------------------------------------------------------------------

#[derive(Clone)]
struct AtomSvc(Shared<AtomState>);

impl AtomSvc {
    /// Records the call, waits the delay, returns the configured status if any.
    async fn enter<T: std::fmt::Debug>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
        f: impl FnOnce(&mut Call),
    ) -> Result<(), Status> {
        let (delay, status) = {
            let mut s = self.0.lock().unwrap();
            let mut call = Call {
                rpc,
                authorization: metadata(req, "authorization"),
                grpc_timeout: metadata(req, "grpc-timeout"),
                request: format!("{:?}", req.get_ref()),
                check: None,
                alias: None,
            };
            f(&mut call);
            s.calls.push(call);
            (s.delay, s.status.clone())
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match status {
            Some((code, msg)) => Err(Status::new(code, msg)),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb_atom::auth_service_server::AuthService for AtomSvc {
    async fn authenticate(
        &self,
        req: Request<pb_atom::AuthenticateRequest>,
    ) -> Result<Response<pb_atom::AuthenticateResponse>, Status> {
        self.enter("Authenticate", &req, |_| {}).await?;
        let s = self.0.lock().unwrap();
        match s.tokens.get(&req.get_ref().token) {
            Some(id) => Ok(Response::new(pb_atom::AuthenticateResponse {
                entity_id: id.clone(),
                tenant_id: TENANT.into(),
                session_id: String::new(),
            })),
            None => Err(Status::unauthenticated("invalid token")),
        }
    }

    async fn authenticate_credential(
        &self,
        req: Request<pb_atom::AuthenticateCredentialRequest>,
    ) -> Result<Response<pb_atom::AuthenticateCredentialResponse>, Status> {
        self.enter("AuthenticateCredential", &req, |_| {}).await?;
        let r = req.get_ref();
        let s = self.0.lock().unwrap();
        if r.kind != "password" {
            return Err(Status::invalid_argument("kind must be password"));
        }
        match s.credentials.get(&(r.identifier.clone(), r.secret.clone())) {
            Some(id) => Ok(Response::new(pb_atom::AuthenticateCredentialResponse {
                entity_id: id.clone(),
                tenant_id: TENANT.into(),
                credential_id: "cred-1".into(),
            })),
            None => Err(Status::unauthenticated("invalid credentials")),
        }
    }
}

#[tonic::async_trait]
impl pb_atom::authz_service_server::AuthzService for AtomSvc {
    async fn check(
        &self,
        req: Request<pb_atom::CheckRequest>,
    ) -> Result<Response<pb_atom::CheckResponse>, Status> {
        let c = req.get_ref().clone();
        self.enter("Check", &req, |call| call.check = Some(c))
            .await?;
        let r = req.get_ref();
        let s = self.0.lock().unwrap();
        let allowed =
            s.allow
                .contains(&(r.subject_id.clone(), r.action.clone(), r.object_id.clone()));
        Ok(Response::new(pb_atom::CheckResponse {
            allowed,
            reason: if allowed { "" } else { "no policy" }.into(),
        }))
    }
}

#[tonic::async_trait]
impl pb_atom::alias_service_server::AliasService for AtomSvc {
    async fn resolve_alias(
        &self,
        req: Request<pb_atom::ResolveAliasRequest>,
    ) -> Result<Response<pb_atom::ResolveAliasResponse>, Status> {
        let a = req.get_ref().clone();
        self.enter("ResolveAlias", &req, |call| call.alias = Some(a))
            .await?;
        let r = req.get_ref();
        let tenant = if r.tenant_id.is_empty() {
            &r.tenant_alias
        } else {
            &r.tenant_id
        };
        let s = self.0.lock().unwrap();
        match s.aliases.get(&(tenant.clone(), r.object_alias.clone())) {
            Some(id) => Ok(Response::new(pb_atom::ResolveAliasResponse {
                tenant_id: TENANT.into(),
                object_id: id.clone(),
            })),
            None => Err(Status::not_found("no such alias")),
        }
    }
}

#[tonic::async_trait]
impl pb_atom::certificate_service_server::CertificateService for AtomSvc {
    async fn resolve_certificate(
        &self,
        req: Request<pb_atom::ResolveCertificateRequest>,
    ) -> Result<Response<pb_atom::ResolveCertificateResponse>, Status> {
        self.enter("ResolveCertificate", &req, |_| {}).await?;
        let s = self.0.lock().unwrap();
        match s.certs.get(&req.get_ref().fingerprint_sha256) {
            Some(id) => Ok(Response::new(pb_atom::ResolveCertificateResponse {
                entity_id: id.clone(),
                tenant_id: TENANT.into(),
                credential_id: "cert-1".into(),
                expires_at: String::new(),
            })),
            None => Err(Status::not_found("unknown certificate")),
        }
    }

    async fn revoke_entity_certificates(
        &self,
        _req: Request<pb_atom::RevokeEntityCertificatesRequest>,
    ) -> Result<Response<pb_atom::RevokeEntityCertificatesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// TLS for a fake server: its certificate and key, and (mutual TLS) the CA its clients'
/// certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

/// A fake Atom on 127.0.0.1.
pub struct FakeAtom {
    pub state: Shared<AtomState>,
    server: ServerThread,
    tls: Option<ServerTls>,
}

impl FakeAtom {
    /// Plaintext gRPC (`auth.atom.insecure: true`).
    pub fn start() -> FakeAtom {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None, Default::default())
    }

    /// gRPC over TLS.
    pub fn start_tls(tls: ServerTls) -> FakeAtom {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            Some(tls),
            Default::default(),
        )
    }

    fn start_on(addr: SocketAddr, tls: Option<ServerTls>, state: Shared<AtomState>) -> FakeAtom {
        let svc = AtomSvc(state.clone());
        let tls2 = tls.clone();
        let server = spawn_server(addr, move |l, stop| async move {
            let mut b = tonic::transport::Server::builder();
            if let Some(t) = tls2 {
                let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem),
                );
                if let Some(ca) = &t.client_ca_pem {
                    cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
                }
                b = b.tls_config(cfg).unwrap();
            }
            b.add_service(pb_atom::auth_service_server::AuthServiceServer::new(
                svc.clone(),
            ))
            .add_service(pb_atom::authz_service_server::AuthzServiceServer::new(
                svc.clone(),
            ))
            .add_service(pb_atom::alias_service_server::AliasServiceServer::new(
                svc.clone(),
            ))
            .add_service(pb_atom::certificate_service_server::CertificateServiceServer::new(svc))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(l), async {
                let _ = stop.await;
            })
            .await
            .unwrap();
        });
        FakeAtom { state, server, tls }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Edit the state (answers, delay, status).
    pub fn with<R>(&self, f: impl FnOnce(&mut AtomState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Every call received so far.
    pub fn all_calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    /// Calls of one RPC received so far.
    pub fn calls_of(&self, rpc: &str) -> Vec<Call> {
        self.with(|s| s.calls.iter().filter(|c| c.rpc == rpc).cloned().collect())
    }

    pub fn calls(&self, rpc: &str) -> usize {
        self.calls_of(rpc).len()
    }

    /// Stops the server (connections close); [`FakeAtom::restart`] brings it back on the
    /// same port with the same state.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    pub fn restart(self) -> FakeAtom {
        let FakeAtom {
            state,
            mut server,
            tls,
        } = self;
        server.stop();
        Self::start_on(server.addr, tls, state)
    }

    /// An `auth:` YAML section for this Atom (plaintext unless started with TLS), the
    /// service token read from `token_file`, plus `extra` lines under `atom:` (indented by
    /// the caller with 4 spaces, e.g. `"    authn_cache_ttl: 30s\n"`).
    pub fn config_yaml(&self, token_file: &std::path::Path, extra_atom: &str) -> String {
        format!(
            "auth:\n  provider: atom\n  timeout: 500ms\n  atom:\n    grpc_addr: \"{}\"\n    \
             insecure: {}\n    service_token_file: \"{}\"\n{extra_atom}",
            self.addr(),
            self.tls.is_none(),
            token_file.display()
        )
    }
}

// ---- fake gRPC callout -------------------------------------------------------------------

/// What the fake callouts answer: `authenticated` for known (username, password) pairs
/// with their id; `authorized` for (external id, topic, action) in `allow` (action
/// `publish`/`subscribe`). `fail_next` makes the next N calls fail (gRPC `Unavailable` /
/// HTTP 503) before answering normally.
#[derive(Default)]
pub struct CalloutState {
    pub users: HashMap<(String, String), String>,
    pub allow: HashSet<(String, String, String)>,
    pub status: Option<(Code, String)>,
    /// HTTP status to answer instead of 200 (HTTP callout).
    pub http_status: Option<u16>,
    /// Answer with a body that is not the expected JSON (HTTP callout).
    pub garbage: bool,
    pub fail_next: u32,
    pub delay: Duration,
    pub calls: Vec<Call>,
}

impl CalloutState {
    pub fn user(&mut self, username: &str, password: &str, id: &str) {
        self.users
            .insert((username.into(), password.into()), id.into());
    }
    pub fn allow(&mut self, id: &str, topic: &str, action: &str) {
        self.allow.insert((id.into(), topic.into(), action.into()));
    }

    /// Records a call; returns the delay and whether to fail it.
    fn enter(&mut self, call: Call) -> (Duration, bool) {
        self.calls.push(call);
        let fail = self.fail_next > 0;
        if fail {
            self.fail_next -= 1;
        }
        (self.delay, fail)
    }
}

#[derive(Clone)]
struct CalloutSvc(Shared<CalloutState>);

fn callout_call<T: std::fmt::Debug>(rpc: &'static str, req: &Request<T>) -> Call {
    Call {
        rpc,
        authorization: metadata(req, "authorization"),
        grpc_timeout: metadata(req, "grpc-timeout"),
        request: format!("{:?}", req.get_ref()),
        check: None,
        alias: None,
    }
}

#[tonic::async_trait]
impl pb_callout::auth_service_server::AuthService for CalloutSvc {
    async fn authenticate(
        &self,
        req: Request<pb_callout::AuthnReq>,
    ) -> Result<Response<pb_callout::AuthnRes>, Status> {
        let (delay, fail, status) = {
            let mut s = self.0.lock().unwrap();
            let (d, f) = s.enter(callout_call("Authenticate", &req));
            (d, f, s.status.clone())
        };
        tokio::time::sleep(delay).await;
        if fail {
            return Err(Status::unavailable("transient"));
        }
        if let Some((code, msg)) = status {
            return Err(Status::new(code, msg));
        }
        let r = req.get_ref();
        let s = self.0.lock().unwrap();
        let id = s.users.get(&(r.username.clone(), r.password.clone()));
        Ok(Response::new(pb_callout::AuthnRes {
            authenticated: id.is_some(),
            id: id.cloned().unwrap_or_default(),
            reason_code: 0,
            reason: String::new(),
        }))
    }

    async fn authorize(
        &self,
        req: Request<pb_callout::AuthzReq>,
    ) -> Result<Response<pb_callout::AuthzRes>, Status> {
        let (delay, fail, status) = {
            let mut s = self.0.lock().unwrap();
            let (d, f) = s.enter(callout_call("Authorize", &req));
            (d, f, s.status.clone())
        };
        tokio::time::sleep(delay).await;
        if fail {
            return Err(Status::unavailable("transient"));
        }
        if let Some((code, msg)) = status {
            return Err(Status::new(code, msg));
        }
        let r = req.get_ref();
        let action = match pb_callout::Action::try_from(r.action) {
            Ok(pb_callout::Action::Publish) => "publish",
            Ok(pb_callout::Action::Subscribe) => "subscribe",
            _ => "none",
        };
        let s = self.0.lock().unwrap();
        let authorized =
            s.allow
                .contains(&(r.external_id.clone(), r.topic.clone(), action.to_owned()));
        Ok(Response::new(pb_callout::AuthzRes {
            authorized,
            reason_code: 0,
            reason: String::new(),
        }))
    }
}

/// A fake callout (`transport: grpc` over h2c, or `transport: http` JSON) on 127.0.0.1.
pub struct FakeCallout {
    pub state: Shared<CalloutState>,
    server: ServerThread,
    http: bool,
}

impl FakeCallout {
    /// The gRPC callout (`fluxmq.auth.v1`), plaintext HTTP/2.
    pub fn start_grpc() -> FakeCallout {
        Self::start(false, "127.0.0.1:0".parse().unwrap(), Default::default())
    }

    /// The HTTP JSON callout (`POST /auth/authenticate`, `POST /auth/authorize`).
    pub fn start_http() -> FakeCallout {
        Self::start(true, "127.0.0.1:0".parse().unwrap(), Default::default())
    }

    fn start(http: bool, addr: SocketAddr, state: Shared<CalloutState>) -> FakeCallout {
        let st = state.clone();
        let server = if http {
            spawn_server(addr, move |l, stop| async move {
                let app = axum::Router::new()
                    .route("/auth/authenticate", axum::routing::post(http_authenticate))
                    .route("/auth/authorize", axum::routing::post(http_authorize))
                    .with_state(st);
                axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await
                    .unwrap();
            })
        } else {
            let svc = CalloutSvc(st);
            spawn_server(addr, move |l, stop| async move {
                tonic::transport::Server::builder()
                    .add_service(pb_callout::auth_service_server::AuthServiceServer::new(svc))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(l),
                        async {
                            let _ = stop.await;
                        },
                    )
                    .await
                    .unwrap();
            })
        };
        FakeCallout {
            state,
            server,
            http,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut CalloutState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn calls_of(&self, rpc: &str) -> Vec<Call> {
        self.with(|s| s.calls.iter().filter(|c| c.rpc == rpc).cloned().collect())
    }

    /// Calls of `Authenticate`/`Authorize` (gRPC) or `/auth/authenticate`,
    /// `/auth/authorize` (HTTP).
    pub fn calls(&self, rpc: &str) -> usize {
        self.calls_of(rpc).len()
    }

    /// Total calls received.
    pub fn total_calls(&self) -> usize {
        self.with(|s| s.calls.len())
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    pub fn restart(self) -> FakeCallout {
        let FakeCallout {
            state,
            mut server,
            http,
        } = self;
        server.stop();
        Self::start(http, server.addr, state)
    }

    /// An `auth:` YAML section for this callout.
    pub fn config_yaml(&self) -> String {
        format!(
            "auth:\n  provider: callout\n  url: \"http://{}\"\n  transport: {}\n  timeout: 500ms\n",
            self.addr(),
            if self.http { "http" } else { "grpc" }
        )
    }
}

type CalloutShared = axum::extract::State<Shared<CalloutState>>;

fn http_call(path: &'static str, headers: &axum::http::HeaderMap, body: &str) -> Call {
    Call {
        rpc: path,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        grpc_timeout: None,
        request: body.to_owned(),
        check: None,
        alias: None,
    }
}

/// Common prologue of the HTTP handlers: record, delay, injected failures.
async fn http_enter(
    st: &Shared<CalloutState>,
    call: Call,
) -> Result<(), (axum::http::StatusCode, String)> {
    let (delay, fail, status, garbage) = {
        let mut s = st.lock().unwrap();
        let (d, f) = s.enter(call);
        (d, f, s.http_status, s.garbage)
    };
    tokio::time::sleep(delay).await;
    if fail {
        return Err((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "transient".into(),
        ));
    }
    if let Some(code) = status {
        return Err((
            axum::http::StatusCode::from_u16(code).unwrap(),
            "injected".into(),
        ));
    }
    if garbage {
        return Err((axum::http::StatusCode::OK, "{not json".into()));
    }
    Ok(())
}

async fn http_authenticate(
    axum::extract::State(st): CalloutShared,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    http_enter(&st, http_call("/auth/authenticate", &headers, &body)).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let key = (
        v["username"].as_str().unwrap_or_default().to_owned(),
        v["password"].as_str().unwrap_or_default().to_owned(),
    );
    let s = st.lock().unwrap();
    let id = s.users.get(&key);
    Ok(axum::Json(serde_json::json!({
        "authenticated": id.is_some(),
        "id": id.cloned().unwrap_or_default(),
        "reason_code": 0,
        "reason": if id.is_some() { "" } else { "bad credentials" },
    })))
}

async fn http_authorize(
    axum::extract::State(st): CalloutShared,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    http_enter(&st, http_call("/auth/authorize", &headers, &body)).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| (axum::http::StatusCode::BAD_REQUEST, e.to_string()))?;
    let key = (
        v["external_id"].as_str().unwrap_or_default().to_owned(),
        v["topic"].as_str().unwrap_or_default().to_owned(),
        v["action"].as_str().unwrap_or_default().to_owned(),
    );
    let authorized = st.lock().unwrap().allow.contains(&key);
    Ok(axum::Json(serde_json::json!({
        "authorized": authorized,
        "reason_code": 0,
        "reason": "",
    })))
}

// ---- test PKI ----------------------------------------------------------------------------

/// A test CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// strings and files in a fresh temporary directory (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server: ServerTls,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fluxmq-edge test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["gateway-1".into()]);
        let dir = temp_dir("pki");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = ca.pem();
        Pki {
            ca_file: write("ca.pem", &ca_pem),
            client_cert_file: write("client.pem", &client_cert),
            client_key_file: write("client.key", &client_key),
            server: ServerTls {
                cert_pem: server_cert,
                key_pem: server_key,
                client_ca_pem: None,
            },
            ca_pem,
            dir,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, empty temporary directory.
pub fn temp_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fluxmq-edge-it-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file holding `token` (for `auth.atom.service_token_file`), in a fresh directory.
pub fn token_file(token: &str) -> PathBuf {
    let p = temp_dir("token").join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

// ---- driving a provider ------------------------------------------------------------------

/// A provider built from configuration, on an executor of the test thread.
pub struct Harness {
    pub ex: Rc<LocalExecutor<'static>>,
    pub auth: Auth,
    pub metrics: Rc<Metrics>,
}

impl Harness {
    pub fn new(yaml: &str) -> Harness {
        Self::try_new(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(yaml: &str) -> Result<Harness, String> {
        // A listener (never bound here) keeps the configuration valid.
        let yaml = format!("server:\n  tcp: {{ v3: {{ addr: \"127.0.0.1:0\" }} }}\n{yaml}");
        let cfg = fluxmq_edge::config::load_str(&yaml, "<test>").map_err(|e| e.to_string())?;
        let ex = Rc::new(LocalExecutor::new());
        let metrics = Rc::new(Metrics::default());
        let auth = fluxmq_edge::auth::from_config(&cfg, ex.clone(), metrics.clone())?;
        Ok(Harness { ex, auth, metrics })
    }

    pub fn provider(&self, p: Protocol) -> Rc<dyn Provider> {
        self.auth
            .for_protocol(p)
            .unwrap_or_else(|| panic!("{p:?} requires auth"))
            .clone()
    }

    /// The answer, and whether it came at once (no RPC).
    pub fn wait<T>(&self, a: Answer<T>) -> (T, bool) {
        match a {
            Answer::Now(v) => (v, true),
            Answer::Later(f) => (smol::block_on(self.ex.run(f)), false),
        }
    }

    pub fn authn(&self, p: Protocol, creds: Credentials) -> (Authn, bool) {
        self.wait(self.provider(p).authenticate(p, creds, Instant::now()))
    }

    pub fn authn_at(&self, p: Protocol, creds: Credentials, now: Instant) -> (Authn, bool) {
        self.wait(self.provider(p).authenticate(p, creds, now))
    }

    pub fn authz(&self, p: Protocol, subject: &str, action: Action, topic: &str) -> (bool, bool) {
        self.wait(
            self.provider(p)
                .authorize(p, &Rc::from(subject), action, topic, Instant::now()),
        )
    }

    pub fn outcomes(&self, p: AuthProvider, rpc: AuthRpc, r: AuthResult) -> u64 {
        self.metrics.auth.outcomes(p, rpc, r)
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.render(&Default::default())
    }
}

pub fn password(user: &str, pw: &str) -> Credentials {
    Credentials {
        client_id: "client-1".into(),
        username: user.into(),
        secret: Secret::Password(pw.into()),
        cert: None,
    }
}

pub fn token(t: &str) -> Credentials {
    Credentials {
        client_id: "http:127.0.0.1:1".into(),
        username: "domain".into(),
        secret: Secret::Token(t.into()),
        cert: None,
    }
}
