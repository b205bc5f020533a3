//! Authentication and authorization: one protocol-neutral interface ([`Provider`]) used by
//! every protocol adapter, implemented by the Atom provider and the legacy callout.
//!
//! The state machines stay sans-IO: a provider answers at once when it can (a cache hit, a
//! topic refused locally, empty credentials) and otherwise hands back a future that the
//! connection's driver polls on the executor, so that while one client waits for Atom every
//! other client keeps being served. The answer is then fed back into the state machine.
//!
//! The identity a connection authenticated with is bound to that connection (its external
//! id travels with it), never looked up again by a client-chosen id.
//!
//! Modules: `atom` (the Atom provider), `callout` (the legacy callout, gRPC or HTTP JSON),
//! `topic` (the magistrala topic parser), `cache` (bounded TTL caches). [`from_config`]
//! builds the [`Auth`] the broker holds.

#[cfg(feature = "auth-grpc")]
pub mod atom;
pub mod cache;
pub mod callout;
pub mod topic;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smol::LocalExecutor;

use crate::clock;
use crate::config::{AuthProvider, Config};
use crate::metrics::Metrics;

/// The protocols `auth.protocols` switches, by their config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Mqtt,
    Http,
    Coap,
    /// AMQP 1.0.
    Amqp,
    /// AMQP 0.9.1.
    Amqp091,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Mqtt,
        Protocol::Http,
        Protocol::Coap,
        Protocol::Amqp,
        Protocol::Amqp091,
    ];

    /// The key in `auth.protocols` and the `protocol` value sent to Atom.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Http => "http",
            Protocol::Coap => "coap",
            Protocol::Amqp => "amqp",
            Protocol::Amqp091 => "amqp091",
        }
    }
}

/// The verified client certificate of a TLS connection: its transport identity, shown in
/// logs and available to auth (`CertificateService.ResolveCertificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
    /// Serial number, lowercase hex, as the certificate encodes it (no sign byte).
    pub serial: String,
    /// Subject common name, when the certificate has one.
    pub subject_cn: Option<String>,
}

/// What a client presents to be authenticated.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The protocol's client id (MQTT client id, `X-FluxMQ-Client-ID`, ...), for the
    /// callout and for logs; never a cache key.
    pub client_id: String,
    pub username: String,
    pub secret: Secret,
    /// The verified client certificate, on mTLS listeners.
    pub cert: Option<Rc<CertIdentity>>,
}

/// The secret part of [`Credentials`].
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Secret {
    #[default]
    None,
    /// MQTT CONNECT password (identifier = username): `AuthenticateCredential`.
    Password(String),
    /// A bearer token (HTTP, CoAP, AMQP): `Authenticate`.
    Token(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            Secret::None => "None",
            Secret::Password(_) => "Password(..)",
            Secret::Token(_) => "Token(..)",
        })
    }
}

/// The outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// Authenticated as this external id (Atom `entity_id`, callout `id`).
    Allowed(Rc<str>),
    /// Missing or wrong credentials (a definite "no" from the provider, or refused locally).
    Denied,
    /// The provider could not answer (timeout, unreachable, breaker open, malformed
    /// answer): fail closed, like `Denied`, but counted and logged apart.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub fn key(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// A provider's answer that needs the network; polled by the connection's driver.
pub type Pending<T> = Pin<Box<dyn Future<Output = T>>>;

/// An answer now (cache hit, local decision) or later (an RPC in flight).
pub enum Answer<T> {
    Now(T),
    Later(Pending<T>),
}

/// One auth backend (Atom, callout). Implementations keep their own bounded caches and
/// count their outcomes in metrics; errors are answered as denials (fail closed).
pub trait Provider {
    /// `atom` or `callout`, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Authenticate a connection (MQTT CONNECT, AMQP SASL) or a request (HTTP, CoAP).
    fn authenticate(&self, protocol: Protocol, creds: Credentials, now: Instant) -> Answer<Authn>;

    /// May `subject` (the external id bound to the connection or request) publish to /
    /// subscribe to `topic` (as received, before any normalisation)? `false` on any error.
    fn authorize(
        &self,
        protocol: Protocol,
        subject: &Rc<str>,
        action: Action,
        topic: &str,
        now: Instant,
    ) -> Answer<bool>;

    /// SIGHUP with the newly loaded configuration: re-read what can change live (the Atom
    /// service token); log what needs a restart. Default: nothing.
    fn reload(&self, _cfg: &Config) {}
}

/// The configured provider and the per-protocol switches (`auth.protocols`).
#[derive(Clone, Default)]
pub struct Auth {
    provider: Option<Rc<dyn Provider>>,
    /// Indexed by `Protocol as usize`: whether that protocol's clients are authenticated.
    required: [bool; 5],
}

impl Auth {
    /// No provider: every client of every protocol is allowed.
    pub fn disabled() -> Auth {
        Auth::default()
    }

    /// `provider` for the protocols `required` says.
    pub fn new(provider: Rc<dyn Provider>, required: impl Fn(Protocol) -> bool) -> Auth {
        Auth {
            provider: Some(provider),
            required: Protocol::ALL.map(required),
        }
    }

    /// The configured provider, whatever the protocol switches say.
    pub fn provider(&self) -> Option<&Rc<dyn Provider>> {
        self.provider.as_ref()
    }

    /// The provider that clients of `protocol` must pass, if any.
    pub fn for_protocol(&self, protocol: Protocol) -> Option<&Rc<dyn Provider>> {
        self.provider
            .as_ref()
            .filter(|_| self.required[protocol as usize])
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("provider", &self.provider.as_ref().map(|p| p.name()))
            .field("required", &self.required)
            .finish()
    }
}

/// Builds the configured provider and switches from `auth` (spec §1.7): provider `atom` or
/// `callout` (`""` with a `url` = callout; both empty = auth disabled), `auth.protocols`
/// (empty = every protocol authenticates; otherwise only the keys set `true`). Reads the
/// service token and TLS files now; connects to the upstream only when a client needs it.
/// Errors name the key.
pub fn from_config(
    cfg: &Config,
    ex: Rc<LocalExecutor<'static>>,
    metrics: Rc<Metrics>,
) -> Result<Auth, String> {
    let a = &cfg.auth;
    let provider: Rc<dyn Provider> = match a
        .provider_kind()
        .map_err(|e| format!("auth.provider: {e}"))?
    {
        AuthProvider::Disabled => return Ok(Auth::disabled()),
        #[cfg(feature = "auth-grpc")]
        AuthProvider::Atom => Rc::new(atom::Atom::new(a, ex, metrics)?),
        #[cfg(not(feature = "auth-grpc"))]
        AuthProvider::Atom => {
            let _ = (ex, metrics);
            return Err(
                "auth.provider: atom needs the gRPC client, which this build left out \
                        (cargo feature auth-grpc)"
                    .into(),
            );
        }
        AuthProvider::Callout => Rc::new(callout::Callout::new(a, ex, metrics)?),
    };
    log::info!(
        "auth: provider {} for {}",
        provider.name(),
        Protocol::ALL
            .iter()
            .filter(|p| a.covers(p.key()))
            .map(|p| p.key())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Auth::new(provider, |p| a.covers(p.key())))
}

/// At most one log line per second for a kind of failure (an upstream outage must not flood
/// the log), carrying how many were not logged since the previous line.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimit {
    pub(crate) fn warn(&self, msg: impl FnOnce() -> String) {
        let now = clock::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.last.set(Some(now));
        match self.suppressed.replace(0) {
            0 => log::warn!("{}", msg()),
            n => log::warn!("{} ({n} more like it not logged)", msg()),
        }
    }
}
