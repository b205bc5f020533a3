//! Blocking connection setup, done before any measurement starts: TCP connect, CONNECT/CONNACK,
//! SUBSCRIBE/SUBACK. The sockets are then handed to the event loop (or held idle).

use crate::mqtt::{self, ConnAck, Version};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An MQTT connection after CONNACK, with any bytes read past the last packet consumed.
pub struct Session {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
    pub connack: ConnAck,
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one whole packet (header byte, body), keeping extra bytes in `buf`.
pub fn read_packet(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u8, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = mqtt::frame(buf).map_err(|e| protocol_error(e.to_string()))? {
            let body = buf[f.body_start..f.len].to_vec();
            buf.drain(..f.len);
            return Ok((f.header, body));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// TCP connect and send CONNECT, without waiting for the CONNACK (for pipelined setup).
pub fn start_connect(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
    keepalive: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&mqtt::connect(version, client_id, keepalive))?;
    Ok(stream)
}

/// Waits for the CONNACK of a connection started with [`start_connect`].
pub fn finish_connect(stream: TcpStream, version: Version) -> io::Result<Session> {
    let mut stream = stream;
    let mut buf = Vec::new();
    let (header, body) = read_packet(&mut stream, &mut buf)?;
    if header & 0xF0 != mqtt::CONNACK {
        return Err(protocol_error(format!(
            "expected CONNACK, got packet type {:#04x}",
            header
        )));
    }
    let connack = mqtt::parse_connack(version, &body).map_err(|e| protocol_error(e.to_string()))?;
    if connack.return_code != 0 {
        return Err(protocol_error(format!(
            "CONNACK refused with code {:#04x}",
            connack.return_code
        )));
    }
    Ok(Session {
        stream,
        leftover: buf,
        connack,
    })
}

pub fn connect(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
    keepalive: u16,
    timeout: Duration,
) -> io::Result<Session> {
    finish_connect(
        start_connect(addr, version, client_id, keepalive, timeout)?,
        version,
    )
}

/// Subscribes to one filter and waits for a successful SUBACK.
pub fn subscribe(session: &mut Session, version: Version, filter: &str, qos: u8) -> io::Result<()> {
    session
        .stream
        .write_all(&mqtt::subscribe(version, 1, filter, qos))?;
    let (header, body) = read_packet(&mut session.stream, &mut session.leftover)?;
    if header != mqtt::SUBACK {
        return Err(protocol_error(format!(
            "expected SUBACK, got packet type {header:#04x}"
        )));
    }
    let (_, codes) =
        mqtt::parse_suback(version, &body).map_err(|e| protocol_error(e.to_string()))?;
    match codes.first() {
        Some(&c) if c < 0x80 => Ok(()),
        other => Err(protocol_error(format!(
            "subscription to {filter:?} refused: {other:?}"
        ))),
    }
}
