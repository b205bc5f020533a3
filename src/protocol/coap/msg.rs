//! CoAP message helpers over `coap-lite`'s codec: building responses and notifications,
//! reading options (Uri-Path, Uri-Query, Block1/Block2, Observe), and the Content-Format
//! registry (RFC 7252 §12.3) to and from MIME content types.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// Block size of what the server sends (SZX 6 = 1024 bytes), the largest RFC 7959 allows:
/// one block plus options and header fits the 1152-byte message size RFC 7252 §4.6 advises.
pub const BLOCK_SZX: u8 = 6;

pub fn block_size(szx: u8) -> usize {
    1 << (szx.min(6) + 4)
}

/// The Uri-Path segments (UTF-8), or `None` when one is not UTF-8.
pub fn path(p: &Packet) -> Option<Vec<&str>> {
    let Some(list) = p.get_option(CoapOption::UriPath) else {
        return Some(Vec::new());
    };
    list.iter().map(|s| std::str::from_utf8(s).ok()).collect()
}

/// The value of Uri-Query `key=value` (the first one), if present and UTF-8.
pub fn query<'a>(p: &'a Packet, key: &str) -> Option<&'a str> {
    p.get_option(CoapOption::UriQuery)?
        .iter()
        .filter_map(|q| std::str::from_utf8(q).ok())
        .find_map(|q| q.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// A Block1/Block2 option value (RFC 7959 §2.2): block number (20 bits), more flag, size
/// exponent (block size = 2^(szx+4); 7 is reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    pub fn size(self) -> usize {
        block_size(self.szx)
    }

    fn value(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7)
    }
}

/// The Block option `opt`, if present; `Err` when malformed (over 3 bytes, SZX 7).
pub fn block(p: &Packet, opt: CoapOption) -> Option<Result<Block, ()>> {
    let v = match uint(p, opt)? {
        Ok(v) if v < 1 << 24 => v,
        _ => return Some(Err(())),
    };
    let b = Block {
        num: v >> 4,
        more: v & 8 != 0,
        szx: (v & 7) as u8,
    };
    Some(if b.szx == 7 { Err(()) } else { Ok(b) })
}

/// An unsigned option value (Observe, Size1, Content-Format): big-endian, at most 4 bytes.
pub fn uint(p: &Packet, opt: CoapOption) -> Option<Result<u32, ()>> {
    p.get_first_option(opt).map(|v| {
        if v.len() > 4 {
            return Err(());
        }
        Ok(v.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)))
    })
}

/// Minimal big-endian encoding of an unsigned option value (0 is the empty string).
pub fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

pub fn method(p: &Packet) -> Option<RequestType> {
    match p.header.code {
        MessageClass::Request(r) => Some(r),
        _ => None,
    }
}

/// A response to request `req`: piggybacked on the ACK of a CON (same Message ID), or a
/// NON with `mid` (RFC 7252 §5.2.1, §5.2.3). Same token.
pub fn response(req: &Packet, mid: u16, code: ResponseType, payload: &[u8]) -> Packet {
    let mut r = Packet::new();
    if req.header.get_type() == MessageType::Confirmable {
        r.header.set_type(MessageType::Acknowledgement);
        r.header.message_id = req.header.message_id;
    } else {
        r.header.set_type(MessageType::NonConfirmable);
        r.header.message_id = mid;
    }
    r.header.code = MessageClass::Response(code);
    r.set_token(req.get_token().to_vec());
    r.payload = payload.to_vec();
    r
}

/// An empty message (RST or ACK) answering `mid`.
pub fn empty(kind: MessageType, mid: u16) -> Vec<u8> {
    let mut r = Packet::new();
    r.header.set_type(kind);
    r.header.message_id = mid;
    r.header.code = MessageClass::Empty;
    encode(&r)
}

pub fn set_block(p: &mut Packet, opt: CoapOption, b: Block) {
    p.add_option(opt, uint_bytes(b.value()));
}

pub fn set_uint(p: &mut Packet, opt: CoapOption, v: u32) {
    p.add_option(opt, uint_bytes(v));
}

/// Encode a message the server built (bounded by construction: one block of payload at
/// most, or a response to a request that fit a datagram).
pub fn encode(p: &Packet) -> Vec<u8> {
    p.to_bytes_unlimited().unwrap_or_default()
}

/// Content-Format registry (RFC 7252 §12.3, RFC 8428 SenML): number <-> MIME type.
const FORMATS: &[(u16, &str)] = &[
    (0, "text/plain; charset=utf-8"),
    (40, "application/link-format"),
    (41, "application/xml"),
    (42, "application/octet-stream"),
    (47, "application/exi"),
    (50, "application/json"),
    (60, "application/cbor"),
    (110, "application/senml+json"),
    (112, "application/senml+cbor"),
];

/// The MIME type of a Content-Format number (a number not registered here becomes
/// `application/vnd.coap-cf.<n>` so that it survives a round trip).
pub fn content_type(cf: u32) -> String {
    FORMATS
        .iter()
        .find(|(n, _)| u32::from(*n) == cf)
        .map(|(_, t)| (*t).to_owned())
        .unwrap_or_else(|| format!("application/vnd.coap-cf.{cf}"))
}

/// The Content-Format of a MIME type, if it has one (`text/plain` with or without its
/// charset is 0).
pub fn content_format(ct: &str) -> Option<u32> {
    let base = ct.split(';').next().unwrap_or_default().trim();
    if base.eq_ignore_ascii_case("text/plain") {
        return Some(0);
    }
    if let Some(n) = base.strip_prefix("application/vnd.coap-cf.") {
        return n.parse().ok();
    }
    FORMATS
        .iter()
        .find(|(_, t)| t.eq_ignore_ascii_case(base))
        .map(|(n, _)| u32::from(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_formats_round_trip() {
        for (cf, ct) in [
            (0, "text/plain; charset=utf-8"),
            (50, "application/json"),
            (60, "application/cbor"),
            (65000, "application/vnd.coap-cf.65000"),
        ] {
            assert_eq!(content_type(cf), ct);
            assert_eq!(content_format(ct), Some(cf));
        }
        assert_eq!(content_format("text/plain"), Some(0));
        assert_eq!(content_format("Application/JSON"), Some(50));
        assert_eq!(content_format("image/png"), None);
    }

    #[test]
    fn block_options() {
        let mut p = Packet::new();
        let b = Block {
            num: 70_000,
            more: true,
            szx: 6,
        };
        set_block(&mut p, CoapOption::Block2, b);
        assert_eq!(block(&p, CoapOption::Block2), Some(Ok(b)));
        assert_eq!(b.size(), 1024);
        let mut bad = Packet::new();
        bad.add_option(CoapOption::Block1, vec![0x07]);
        assert_eq!(block(&bad, CoapOption::Block1), Some(Err(())));
        assert_eq!(block(&bad, CoapOption::Block2), None);
    }

    #[test]
    fn uint_options() {
        assert_eq!(uint_bytes(0), Vec::<u8>::new());
        assert_eq!(uint_bytes(1), vec![1]);
        assert_eq!(uint_bytes(0x01_0203), vec![1, 2, 3]);
        let mut p = Packet::new();
        set_uint(&mut p, CoapOption::Observe, 0x01_0203);
        assert_eq!(uint(&p, CoapOption::Observe), Some(Ok(0x01_0203)));
        p.clear_option(CoapOption::Observe);
        p.add_option(CoapOption::Observe, vec![1, 2, 3, 4, 5]);
        assert_eq!(uint(&p, CoapOption::Observe), Some(Err(())));
    }
}
