//! The transport identity of a verified client certificate: SHA-256 fingerprint of the DER
//! (ring), serial number and subject common name.
//!
//! Serial and CN come from a small bounds-checked DER walk of the certificate's
//! `tbsCertificate` (version, serial, signature algorithm, issuer, validity, subject) rather
//! than a general X.509 parser: those are the only fields needed, the certificate has
//! already been parsed and verified by webpki when this runs, and `x509-parser` would add
//! about 150 KB to a gateway binary (rust-stack.md §2) for them. Every read goes through
//! [`tlv`], which returns `None` on anything short or malformed: no index can panic.

use crate::auth::CertIdentity;

/// The identity of the DER certificate `der`, or `None` when its serial or subject cannot
/// be read.
pub fn identity_from_der(der: &[u8]) -> Option<CertIdentity> {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let (serial, subject_cn) = serial_and_cn(der)?;
    Some(CertIdentity {
        fingerprint_sha256: hex(digest.as_ref()),
        serial,
        subject_cn,
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` of the TBSCertificate.
const VERSION_TAG: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// Split one DER TLV off `buf`: (tag, value, rest). Single-byte tags, definite lengths of
/// at most 4 bytes (DER forbids the indefinite form).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers: none in the fields read here
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// The TLV of the expected `tag`, or `None`.
fn expect(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(buf)? {
        (t, value, rest) if t == tag => Some((value, rest)),
        _ => None,
    }
}

/// (serial in lowercase hex without the sign byte, first subject CN).
fn serial_and_cn(der: &[u8]) -> Option<(String, Option<String>)> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION_TAG, _, after)) = tlv(rest) {
        rest = after;
    }
    let (serial, rest) = expect(rest, INTEGER)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (_validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, _) = expect(rest, SEQUENCE)?;
    let serial = match serial {
        [0, tail @ ..] if !tail.is_empty() => tail, // the sign byte of a "negative-looking" serial
        s => s,
    };
    if serial.is_empty() {
        return None;
    }
    Some((hex(serial), common_name(subject)?))
}

/// The first common name in an RDN sequence; `Some(None)` when there is none, `None` when
/// the sequence is malformed.
fn common_name(mut rdns: &[u8]) -> Option<Option<String>> {
    while !rdns.is_empty() {
        let (set, after) = expect(rdns, SET)?;
        rdns = after;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, after) = expect(atvs, SEQUENCE)?;
            atvs = after;
            let (oid, value) = expect(atv, OID)?;
            if oid == OID_CN {
                let (tag, text, _) = tlv(value)?;
                return Some(Some(directory_string(tag, text)?));
            }
        }
    }
    Some(None)
}

/// A DirectoryString value as UTF-8: UTF8String, PrintableString, IA5String, T61String
/// (read as Latin-1) or BMPString (UTF-16BE).
fn directory_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        0x1e if bytes.len().is_multiple_of(2) => {
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

    fn cert(cn: Option<&str>, serial: &[u8]) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Edge Test");
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.distinguished_name.push(DnType::CountryName, "DE");
        p.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_of_an_rcgen_certificate() {
        let der = cert(Some("device-42"), &[0x01, 0x02, 0xab, 0xcd]);
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.subject_cn.as_deref(), Some("device-42"));
        assert_eq!(id.serial, "0102abcd");
        // The fingerprint is the SHA-256 of the whole DER, lowercase hex.
        let want = ring::digest::digest(&ring::digest::SHA256, &der);
        assert_eq!(id.fingerprint_sha256, hex(want.as_ref()));
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert!(
            id.fingerprint_sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn serial_sign_byte_and_missing_cn() {
        // A serial with the top bit set is encoded with a leading 0x00 sign byte.
        let der = cert(None, &[0x80, 0x01]);
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.serial, "8001");
        assert_eq!(id.subject_cn, None);
        let der = cert(Some("ü-sensor"), &[0x7f]);
        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.serial, "7f");
        assert_eq!(id.subject_cn.as_deref(), Some("ü-sensor"));
    }

    #[test]
    fn malformed_input_never_panics() {
        let der = cert(Some("x"), &[1]);
        assert!(identity_from_der(&der).is_some());
        // Every truncation and every single-byte corruption: an answer or None, no panic.
        for n in 0..der.len() {
            let _ = identity_from_der(&der[..n]);
        }
        for i in 0..der.len().min(400) {
            let mut bad = der.clone();
            bad[i] ^= 0xff;
            let _ = identity_from_der(&bad);
        }
        assert!(identity_from_der(&[]).is_none());
        assert!(identity_from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(identity_from_der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn directory_strings() {
        assert_eq!(directory_string(0x13, b"abc").as_deref(), Some("abc"));
        assert_eq!(directory_string(0x14, &[0x61, 0xe9]).as_deref(), Some("aé"));
        assert_eq!(
            directory_string(0x1e, &[0x00, 0x61, 0x00, 0xfc]).as_deref(),
            Some("aü")
        );
        assert_eq!(directory_string(0x1e, &[0x00]), None);
        assert_eq!(directory_string(0x0c, &[0xff]), None);
        assert_eq!(directory_string(0x04, b"abc"), None);
    }
}
