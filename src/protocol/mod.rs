//! Wire protocols. One folder per protocol, each a sans-IO codec (bytes in, values out)
//! plus a connection state machine that talks to the broker core. Nothing here touches a
//! socket: the drivers in `listener/` own the I/O.

#[cfg(feature = "coap")]
pub mod coap;
#[cfg(feature = "http")]
pub mod http;
pub mod mqtt;
pub mod origin;
pub mod ws;
