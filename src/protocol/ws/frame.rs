//! RFC 6455 framing, server side, sans-IO: a streaming decoder of client frames that turns
//! the bytes of a read into the payload bytes of binary messages in place (no buffer of its
//! own: a data frame's payload is unmasked as it arrives, whatever its size), and the
//! encoders of the server's frames (binary, pong, close).
//!
//! Owns: the frame rules for MQTT over WebSocket (client frames masked, binary data only
//! [MQTT-6.0.0-1], control frames short and whole, continuation order) and the size bound
//! of frames and messages. Does not own: what the payload bytes mean (the MQTT codec
//! reassembles packets that span frames or share one), or the socket (`listener::ws`).

/// Close status codes used here (RFC 6455 §7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// A client broke the framing rules; each knows its close status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A client frame without a mask (RFC 6455 §5.1).
    Unmasked,
    /// RSV bits set without a negotiated extension.
    Reserved,
    /// A reserved opcode.
    Opcode(u8),
    /// A text frame: MQTT travels in binary frames only [MQTT-6.0.0-1].
    Text,
    /// A control frame over 125 bytes or fragmented (RFC 6455 §5.5).
    BadControl,
    /// A continuation with no message open, or a new message while one is open.
    Continuation,
    /// A 64-bit length with the most significant bit set.
    Length,
    /// A frame, or a fragmented message, over the listener's limit.
    TooLarge { len: u64, max: u64 },
    /// A close frame with a 1-byte payload, a status code not allowed on the wire, or a
    /// reason that is not UTF-8.
    BadClose,
}

impl Error {
    pub fn close_code(&self) -> u16 {
        match self {
            Error::Text => code::UNSUPPORTED_DATA,
            Error::TooLarge { .. } => code::TOO_BIG,
            Error::BadClose => code::INVALID_PAYLOAD,
            _ => code::PROTOCOL_ERROR,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unmasked => f.write_str("unmasked client frame"),
            Error::Reserved => f.write_str("reserved bits set"),
            Error::Opcode(op) => write!(f, "reserved opcode {op:#x}"),
            Error::Text => f.write_str("text frame (MQTT needs binary frames)"),
            Error::BadControl => f.write_str("control frame fragmented or over 125 bytes"),
            Error::Continuation => f.write_str("continuation frame out of order"),
            Error::Length => f.write_str("frame length with the top bit set"),
            Error::TooLarge { len, max } => {
                write!(f, "frame or message of {len} bytes over the limit of {max}")
            }
            Error::BadClose => f.write_str("malformed close frame"),
        }
    }
}

impl std::error::Error for Error {}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What a `decode` call found besides data.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Payload bytes of binary messages, now at the front of the buffer.
    pub data: usize,
    /// The payload of the last complete ping: answer with a pong carrying it.
    pub ping: Option<Vec<u8>>,
    /// A close frame arrived (its status code, if it had one): the rest of the input is
    /// ignored; answer with a close frame.
    pub close: Option<Option<u16>>,
}

/// Streaming decoder of client frames. Between frames it holds at most a partial header
/// (14 bytes inline) and the partial payload of a control frame (at most 125 bytes, only
/// while one is split across reads).
#[derive(Debug)]
pub struct Decoder {
    /// Largest frame payload, and largest binary message, accepted.
    max: u64,
    hdr: [u8; 14],
    hdr_len: u8,
    /// The frame being read: its opcode, payload bytes still to come, mask and mask phase.
    op: u8,
    left: u64,
    mask: [u8; 4],
    phase: u8,
    /// In a payload (the header is complete).
    in_payload: bool,
    /// A fragmented binary message is open (its first frame had FIN clear).
    fragmented: bool,
    /// Payload bytes of the current binary message so far.
    msg_len: u64,
    /// The payload of a control frame being read.
    control: Vec<u8>,
    /// A close frame arrived: nothing more is decoded.
    closed: bool,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max: max as u64,
            hdr: [0; 14],
            hdr_len: 0,
            op: 0,
            left: 0,
            mask: [0; 4],
            phase: 0,
            in_payload: false,
            fragmented: false,
            msg_len: 0,
            control: Vec::new(),
            closed: false,
        }
    }

    /// A close frame was received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decode the bytes of one read in place: the unmasked payload of binary frames is
    /// moved to `buf[..data]`; headers and control frames are consumed. State carries over
    /// to the next call, so frames may be split anywhere.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, Error> {
        let mut out = Decoded::default();
        let mut r = 0;
        while r < buf.len() && !self.closed {
            if !self.in_payload {
                let b = buf[r];
                r += 1;
                self.push_header_byte(b)?;
                if self.in_payload && self.left == 0 {
                    self.end_frame(&mut out)?;
                }
                continue;
            }
            let k = (buf.len() - r).min(usize::try_from(self.left).unwrap_or(usize::MAX));
            if self.op == OP_BINARY {
                let w = out.data;
                buf.copy_within(r..r + k, w);
                unmask(&mut buf[w..w + k], self.mask, self.phase);
                out.data += k;
            } else {
                let start = self.control.len();
                self.control.extend_from_slice(&buf[r..r + k]);
                unmask(&mut self.control[start..], self.mask, self.phase);
            }
            r += k;
            self.phase = ((usize::from(self.phase) + k) % 4) as u8;
            self.left -= k as u64;
            if self.left == 0 {
                self.end_frame(&mut out)?;
            }
        }
        Ok(out)
    }

    /// Take one header byte; rules are checked as soon as the byte that breaks them is in.
    fn push_header_byte(&mut self, b: u8) -> Result<(), Error> {
        self.hdr[usize::from(self.hdr_len)] = b;
        self.hdr_len += 1;
        let (b0, n) = (self.hdr[0], usize::from(self.hdr_len));
        let (fin, op) = (b0 & 0x80 != 0, b0 & 0x0f);
        if n == 1 {
            if b0 & 0x70 != 0 {
                return Err(Error::Reserved);
            }
            return match op {
                OP_TEXT => Err(Error::Text),
                OP_CONTINUATION if !self.fragmented => Err(Error::Continuation),
                OP_BINARY if self.fragmented => Err(Error::Continuation),
                OP_CONTINUATION | OP_BINARY => Ok(()),
                OP_CLOSE | OP_PING | OP_PONG if fin => Ok(()),
                OP_CLOSE | OP_PING | OP_PONG => Err(Error::BadControl),
                _ => Err(Error::Opcode(op)),
            };
        }
        let b1 = self.hdr[1];
        if b1 & 0x80 == 0 {
            return Err(Error::Unmasked);
        }
        let len7 = b1 & 0x7f;
        if op >= OP_CLOSE && len7 > 125 {
            return Err(Error::BadControl);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if n < 2 + ext {
            return Ok(());
        }
        let len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
            _ => {
                let mut l = [0; 8];
                l.copy_from_slice(&self.hdr[2..10]);
                u64::from_be_bytes(l)
            }
        };
        let msg = if op == OP_BINARY { 0 } else { self.msg_len };
        if n == 2 + ext {
            // The length is in: check it before the mask, let alone the payload, is read.
            if len >> 63 != 0 {
                return Err(Error::Length);
            }
            // A frame, and the message so far, within the bound.
            if op < OP_CLOSE && (len > self.max || msg + len > self.max) {
                return Err(Error::TooLarge {
                    len: msg + len,
                    max: self.max,
                });
            }
        }
        if n < 2 + ext + 4 {
            return Ok(());
        }
        if op < OP_CLOSE {
            self.msg_len = msg + len;
            self.fragmented = !fin;
            self.op = OP_BINARY;
        } else {
            self.op = op;
            self.control = Vec::with_capacity(len as usize);
        }
        self.mask.copy_from_slice(&self.hdr[2 + ext..2 + ext + 4]);
        self.phase = 0;
        self.left = len;
        self.hdr_len = 0;
        self.in_payload = true;
        Ok(())
    }

    /// A frame's payload is complete.
    fn end_frame(&mut self, out: &mut Decoded) -> Result<(), Error> {
        self.in_payload = false;
        let payload = std::mem::take(&mut self.control);
        match self.op {
            OP_PING => out.ping = Some(payload),
            OP_CLOSE => {
                self.closed = true;
                out.close = Some(close_code(&payload)?);
            }
            _ => {} // binary data went out as it came; a pong needs nothing
        }
        Ok(())
    }
}

/// The status code of a close payload (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::BadClose),
        [a, b, reason @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            let allowed = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed || std::str::from_utf8(reason).is_err() {
                return Err(Error::BadClose);
            }
            Ok(Some(c))
        }
    }
}

/// XOR `data` with `mask`, starting at mask byte `phase`.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: u8) {
    let mut rot = mask;
    rot.rotate_left(usize::from(phase));
    let word = u64::from_ne_bytes([
        rot[0], rot[1], rot[2], rot[3], rot[0], rot[1], rot[2], rot[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rot[i % 4];
    }
}

/// Largest server frame header: 2 bytes and a 64-bit length (server frames are unmasked).
pub const MAX_HEADER: usize = 10;

/// The header of an unmasked server frame with FIN set; returns its length.
pub fn header(op: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | op;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(l) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&l.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The header of a binary frame carrying `len` bytes.
pub fn binary_header(len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    header(OP_BINARY, len, out)
}

/// A pong answering a ping with `payload` (at most 125 bytes: the decoder checked).
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let mut h = [0; MAX_HEADER];
    let n = header(OP_PONG, payload.len(), &mut h);
    let mut f = Vec::with_capacity(n + payload.len());
    f.extend_from_slice(&h[..n]);
    f.extend_from_slice(payload);
    f
}

/// A close frame with a status code (or none, answering a close that had none).
pub fn close(status: Option<u16>) -> Vec<u8> {
    match status {
        Some(c) => {
            let [a, b] = c.to_be_bytes();
            vec![0x80 | OP_CLOSE, 2, a, b]
        }
        None => vec![0x80 | OP_CLOSE, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        f
    }

    /// Decode `input` fed in pieces of `step` bytes; returns the data and the last result.
    fn feed(d: &mut Decoder, input: &[u8], step: usize) -> Result<(Vec<u8>, Decoded), Error> {
        let mut data = Vec::new();
        let mut last = Decoded::default();
        for piece in input.chunks(step.max(1)) {
            let mut buf = piece.to_vec();
            let got = d.decode(&mut buf)?;
            data.extend_from_slice(&buf[..got.data]);
            if got.ping.is_some() {
                last.ping = got.ping;
            }
            if got.close.is_some() {
                last.close = got.close;
            }
        }
        last.data = data.len();
        Ok((data, last))
    }

    #[test]
    fn rfc6455_section_5_7_masked_hello() {
        // The spec's example is a text frame; the same bytes with the binary opcode.
        let frame = [
            0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1024);
        let (data, _) = feed(&mut d, &frame, frame.len()).unwrap();
        assert_eq!(data, b"Hello");
        let mut text = frame;
        text[0] = 0x81;
        assert_eq!(Decoder::new(1024).decode(&mut text), Err(Error::Text));
        assert_eq!(Error::Text.close_code(), 1003);
    }

    #[test]
    fn frames_split_anywhere_and_shared_reads() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut input = client(0x82, &payload[..200]); // 16-bit length
        input.extend(client(0x02, &payload[200..250])); // fragmented: first part
        input.extend(client(0x89, b"hi")); // a ping between fragments
        input.extend(client(0x80, &payload[250..])); // last fragment
        input.extend(client(0x82, &[])); // empty frame
        for step in [1, 3, 7, 64, input.len()] {
            let mut d = Decoder::new(1024);
            let (data, last) = feed(&mut d, &input, step).unwrap();
            assert_eq!(data, payload, "step {step}");
            assert_eq!(last.ping.as_deref(), Some(&b"hi"[..]));
        }
    }

    #[test]
    fn long_lengths_and_unmasking_every_phase() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let input = client(0x82, &payload);
        assert_eq!(input[1], 0x80 | 127);
        for step in [4093, 65536] {
            let mut d = Decoder::new(100_000);
            let (data, _) = feed(&mut d, &input, step).unwrap();
            assert!(data == payload, "step {step}");
        }
    }

    #[test]
    fn oversize_frame_and_message_refused_from_the_header() {
        let mut d = Decoder::new(100);
        let mut frame = client(0x82, &[0; 101]);
        assert_eq!(
            d.decode(&mut frame[..4]),
            Err(Error::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(Error::TooLarge { len: 1, max: 0 }.close_code(), 1009);
        // Fragments of 60 + 60 bytes: the second breaks the message bound.
        let mut d = Decoder::new(100);
        let mut two = client(0x02, &[1; 60]);
        two.extend(client(0x80, &[2; 60]));
        assert_eq!(
            feed(&mut d, &two, 5).unwrap_err(),
            Error::TooLarge { len: 120, max: 100 }
        );
        // The bound is per message: two whole 60-byte messages are fine.
        let mut d = Decoder::new(100);
        let mut ok = client(0x82, &[1; 60]);
        ok.extend(client(0x82, &[2; 60]));
        assert_eq!(feed(&mut d, &ok, 9).unwrap().1.data, 120);
    }

    #[test]
    fn framing_violations() {
        let cases: &[(&[u8], Error)] = &[
            (&[0x82, 0x05], Error::Unmasked),
            (&[0xc2], Error::Reserved),
            (&[0x83], Error::Opcode(3)),
            (&[0x8b], Error::Opcode(0xb)),
            (&[0x80], Error::Continuation),
            (&[0x09], Error::BadControl),
            (&[0x89, 0x80 | 126], Error::BadControl),
            (&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0], Error::Length),
        ];
        for (input, want) in cases {
            let mut buf = input.to_vec();
            assert_eq!(Decoder::new(1 << 20).decode(&mut buf).as_ref(), Err(want));
            assert_eq!(want.close_code(), 1002);
        }
        // A new binary message while a fragmented one is open.
        let mut d = Decoder::new(100);
        let mut input = client(0x02, b"a");
        input.extend(client(0x82, b"b"));
        assert_eq!(d.decode(&mut input), Err(Error::Continuation));
    }

    #[test]
    fn close_is_echoed_and_ends_decoding() {
        let mut d = Decoder::new(100);
        let mut input = client(0x88, &[0x03, 0xe8, b'b', b'y', b'e']);
        input.extend(client(0x82, b"ignored"));
        let got = d.decode(&mut input).unwrap();
        assert_eq!(got.close, Some(Some(1000)));
        assert_eq!(got.data, 0);
        assert!(d.is_closed());
        assert_eq!(close(Some(1000)), [0x88, 2, 0x03, 0xe8]);
        assert_eq!(close(None), [0x88, 0]);
        let mut empty = client(0x88, &[]);
        assert_eq!(
            Decoder::new(100).decode(&mut empty).unwrap().close,
            Some(None)
        );
        for bad in [&[0x03][..], &[0x03, 0xed], &[0x03, 0xe8, 0xff]] {
            let mut f = client(0x88, bad);
            assert_eq!(Decoder::new(100).decode(&mut f), Err(Error::BadClose));
        }
    }

    #[test]
    fn ping_payload_split_across_reads() {
        let mut d = Decoder::new(100);
        let input = client(0x89, b"0123456789");
        let (_, last) = feed(&mut d, &input, 4).unwrap();
        assert_eq!(last.ping.as_deref(), Some(&b"0123456789"[..]));
        assert_eq!(pong(b"ab"), [0x8a, 2, b'a', b'b']);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A peer controls every byte: whatever it sends ends in data, control or an error.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut d = Decoder::new(256);
            for _ in 0..8 {
                let len = (next() % 40) as usize;
                let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(b) = buf.first_mut() {
                    *b = [0x82, 0x02, 0x80, 0x89, 0x88, 0x8a][(next() % 6) as usize];
                }
                if let Some(b) = buf.get_mut(1) {
                    *b |= 0x80; // mostly masked, to get past the header
                }
                match d.decode(&mut buf) {
                    Ok(got) => assert!(got.data <= len),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn server_headers() {
        let h = |len| {
            let mut h = [0; MAX_HEADER];
            let n = binary_header(len, &mut h);
            h[..n].to_vec()
        };
        assert_eq!(h(5), [0x82, 5]);
        assert_eq!(h(126), [0x82, 126, 0, 126]);
        assert_eq!(h(70_000), [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
