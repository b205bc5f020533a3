//! MQTT over WebSocket (RFC 6455, server side), sans-IO: the opening handshake
//! (`handshake`) and the framing (`frame`). The MQTT bytes inside binary frames go to the
//! same MQTT codec and state machine as TCP; the stream adapter that joins them is
//! `listener::ws`.

pub mod frame;
pub mod handshake;
