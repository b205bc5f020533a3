//! MQTT 3.1.1 and 5.0: the packet model (`packet`), the sans-IO codec (`codec`) and the
//! per-connection state machine (`conn`) that drives the broker core.

pub mod codec;
pub mod conn;
pub mod packet;

pub use packet::*;
