//! Integration tests: a real broker in-process (or the real binary) on loopback sockets,
//! driven by real MQTT clients (rumqttc v3.1.1 and v5) and by a raw-bytes client for exact
//! packets, reason codes and malformed input. Every test starts its own broker on port 0.
//!
//! MQTT normative statements are cited by id (`[MQTT-x.y.z-n]`) in test names or comments.

#![allow(clippy::unwrap_used)]

mod common;
mod fake_auth;

#[cfg(feature = "auth-grpc")]
mod auth_atom;
mod auth_callout;
#[cfg(feature = "auth-grpc")]
mod auth_mqtt;

#[cfg(all(feature = "http", feature = "coap"))]
mod bridge_auth;
mod caps;
#[cfg(feature = "coap")]
mod coap;
mod connect;
mod health;
#[cfg(feature = "http")]
mod http;
mod malformed;
mod process;
mod publish;
mod ratelimit;
mod retain;
mod session;
mod subscribe;
mod tls;
mod v5_features;
mod websocket;
mod will;
