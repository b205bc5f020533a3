//! The only way the codec reads peer bytes: a cursor whose every read either yields what
//! was asked for or a Malformed error, so no byte sequence can index out of range. Also
//! the Variable Byte Integer and UTF-8 string rules (MQTT 5.0 §1.5).

use super::DecodeError;

/// A field runs past the end of the packet.
pub(super) const TRUNCATED: DecodeError = DecodeError::Malformed("packet ends inside a field");

#[derive(Clone, Copy, Debug)]
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets the unread bytes: the iterators use it to stop for good on bad input.
    pub(super) fn clear(&mut self) {
        self.buf = &[];
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(TRUNCATED)?;
        self.buf = tail;
        Ok(head)
    }

    /// Everything not read yet (a payload).
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, tail) = self.buf.split_first().ok_or(TRUNCATED)?;
        self.buf = tail;
        Ok(b)
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        let (b, tail) = self.buf.split_first_chunk::<2>().ok_or(TRUNCATED)?;
        self.buf = tail;
        Ok(u16::from_be_bytes(*b))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        let (b, tail) = self.buf.split_first_chunk::<4>().ok_or(TRUNCATED)?;
        self.buf = tail;
        Ok(u32::from_be_bytes(*b))
    }

    pub(super) fn varint(&mut self) -> Result<u32, DecodeError> {
        let (v, n) = read_varint(self.buf)?.ok_or(TRUNCATED)?;
        self.take(n)?;
        Ok(v)
    }

    /// Binary Data: a two-byte length, then that many bytes.
    pub(super) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// UTF-8 Encoded String: Binary Data that must also be well-formed UTF-8 without U+0000.
    pub(super) fn string(&mut self) -> Result<&'a str, DecodeError> {
        utf8(self.binary()?)
    }

    /// The trailing-bytes check every packet decode ends with.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("bytes left after the last field"))
        }
    }
}

/// Reads a Variable Byte Integer at the start of `buf`: `Ok(Some((value, bytes used)))`,
/// `Ok(None)` if `buf` ends first. Over 4 bytes or not in the shortest form is Malformed
/// [MQTT-1.5.5-1].
pub(super) fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not in its shortest form [MQTT-1.5.5-1]",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer over 4 bytes [MQTT-1.5.5-1]",
        ))
    } else {
        Ok(None)
    }
}

/// The UTF-8 Encoded String rules: well-formed UTF-8, which excludes the surrogates
/// [MQTT-1.5.4-1], and no U+0000 [MQTT-1.5.4-2].
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    if bytes.contains(&0) {
        return Err(DecodeError::Malformed("U+0000 in a string [MQTT-1.5.4-2]"));
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("invalid UTF-8 [MQTT-1.5.4-1]"))
}
