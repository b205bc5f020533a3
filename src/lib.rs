//! # fluxmq-edge
//!
//! An MQTT 3.1.1/5.0 broker (with HTTP, CoAP and AMQP adapters to come) for constrained ARM
//! gateways, speaking FluxMQ's configuration language. One thread, one `smol` executor.
//!
//! ```text
//!  socket bytes -> listener -> protocol::<p>::Conn -> broker::Broker -> session queues
//!  (tcp/udp/tls)  (accept,     (decode -> state      (route, retain,   (bounded, per client)
//!                  caps, rate)  machine -> encode)    authz, limits)         |
//!         ^                                                                   |
//!         +----- write <- Conn::poll_deliveries <- Broker deliveries <-------+
//! ```
//!
//! Module map: `config` (YAML -> `Config`), `server` (start-up, shutdown), `listener`
//! (accept loops and drivers: the only code that awaits), `protocol` (sans-IO codecs and
//! connection state machines), `broker` (the protocol-agnostic core), `ratelimit` (token
//! buckets every protocol consults), `metrics`, `clock`.
//!
//! Invariants, kept everywhere:
//! 1. **Nothing is unbounded.** Every buffer, queue, table and cache has a cap from
//!    configuration; what would break a cap is refused with a reason, counted and logged.
//! 2. **The core never awaits and never blocks.** `broker` and the protocol state machines
//!    are synchronous; drivers feed them bytes and events.
//! 3. **Time is passed in.** `clock::now()` is the only call of `Instant::now()`; state
//!    machines take `now`.

// Tests unwrap freely; product code may not (`unwrap_used` in Cargo.toml).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod broker;
pub mod budget;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod server;
