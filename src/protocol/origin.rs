//! The origin of a message published by a bridge (HTTP, CoAP): the properties every
//! subscriber sees, whatever its protocol. Kept in the core's canonical form (MQTT 5
//! properties in wire form, see `broker::message`): Content Type (0x03) and the FluxMQ
//! origin User Properties `protocol`, `client_id` and, once authenticated, `external_id`.

use crate::protocol::mqtt::codec;

/// User Property key of the protocol a message came in by (`http`, `coap`).
pub const PROTOCOL: &str = "protocol";
/// User Property key of the publishing client's id.
pub const CLIENT_ID: &str = "client_id";
/// User Property key of the authenticated identity (Atom entity id).
pub const EXTERNAL_ID: &str = "external_id";

/// Message properties (wire form) for a bridged publish.
pub fn message_props(
    protocol: &str,
    client_id: &str,
    external_id: Option<&str>,
    content_type: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
        codec::put_string_property(&mut out, 0x03, ct);
    }
    codec::put_user_property(&mut out, PROTOCOL, protocol);
    codec::put_user_property(&mut out, CLIENT_ID, client_id);
    if let Some(id) = external_id {
        codec::put_user_property(&mut out, EXTERNAL_ID, id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_in_wire_form() {
        let p = message_props("http", "dev", None, Some("text/plain"));
        let mut want = vec![0x03, 0, 10];
        want.extend_from_slice(b"text/plain");
        want.extend_from_slice(&[0x26, 0, 8]);
        want.extend_from_slice(b"protocol");
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(b"http");
        want.extend_from_slice(&[0x26, 0, 9]);
        want.extend_from_slice(b"client_id");
        want.extend_from_slice(&[0, 3]);
        want.extend_from_slice(b"dev");
        assert_eq!(p, want);
        let with_ext = message_props("coap", "c", Some("e1"), None);
        assert!(with_ext.ends_with(b"external_id\0\x02e1"));
        assert_eq!(
            with_ext[0], 0x26,
            "no content type property when none is given"
        );
    }
}
