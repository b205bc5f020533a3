//! The string-valued keys of a listener's inline TLS block (spec §1.4) read into values:
//! `client_auth`, `min_version` and `cipher_suites`.
//!
//! Owns: the accepted spellings, the parsed enums, and the list of cipher suites the edge
//! (rustls) can offer. Does not own: loading certificates or building a rustls config
//! (that is the listener's job), nor which slots may carry TLS fields (`validate.rs`).

/// How a TLS listener treats client certificates (`client_auth`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_auth` unset: full verification if `ca_file` is set, else none.
    Unset,
    /// `none`, `no`: never ask.
    None,
    /// `request`: ask, do not require, do not verify.
    Request,
    /// `require_any`: require a certificate but do not verify it.
    RequireAny,
    /// `verify_if_given`: optional; verified when sent.
    VerifyIfGiven,
    /// `require` (`require_and_verify`): full mutual TLS.
    RequireAndVerify,
}

impl ClientAuth {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "" => Self::Unset,
            "none" | "no" => Self::None,
            "request" => Self::Request,
            "require_any" | "require-any" | "requireany" => Self::RequireAny,
            "verify_if_given" | "verify-if-given" | "verifyifgiven" => Self::VerifyIfGiven,
            "require" | "require_and_verify" | "require-and-verify" | "requireandverify" => {
                Self::RequireAndVerify
            }
            _ => {
                return Err(format!(
                    "unknown client_auth \"{text}\" (expected none, request, require_any, \
                     verify_if_given or require)"
                ));
            }
        })
    }

    /// The mode in force once the `Unset` rule is applied.
    pub fn effective(self, has_client_ca: bool) -> Self {
        match self {
            Self::Unset if has_client_ca => Self::RequireAndVerify,
            Self::Unset => Self::None,
            other => other,
        }
    }

    /// Whether a client certificate, when one is presented, is checked against the CA.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyIfGiven | Self::RequireAndVerify)
    }
}

/// The lowest TLS version a listener accepts. The edge does not speak TLS 1.0 or 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Reads `min_version`; `""` gives `None` (the default, TLS 1.2).
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "" => None,
            "tls1.2" | "1.2" => Some(Self::Tls12),
            "tls1.3" | "1.3" => Some(Self::Tls13),
            "tls1.0" | "1.0" | "tls1.1" | "1.1" => {
                return Err(format!(
                    "min_version \"{text}\" is not supported: the edge requires TLS 1.2 or \
                     newer (use tls1.2 or tls1.3)"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown min_version \"{text}\" (expected tls1.2 or tls1.3)"
                ));
            }
        })
    }
}

/// A TLS 1.2 cipher suite the edge can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    EcdheEcdsaAes128Gcm,
    EcdheEcdsaAes256Gcm,
    EcdheEcdsaChacha20,
    EcdheRsaAes128Gcm,
    EcdheRsaAes256Gcm,
    EcdheRsaChacha20,
}

/// Go/IANA names the edge accepts, including Go's short ChaCha20 aliases.
const SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::EcdheEcdsaAes128Gcm,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::EcdheEcdsaAes256Gcm,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::EcdheEcdsaChacha20,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::EcdheEcdsaChacha20,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::EcdheRsaAes128Gcm,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::EcdheRsaAes256Gcm,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::EcdheRsaChacha20,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::EcdheRsaChacha20,
    ),
];

/// TLS 1.3 suites: always on, never configurable (FluxMQ refuses them too).
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

impl CipherSuite {
    /// Reads one `cipher_suites` entry (surrounding blanks ignored, names case-sensitive
    /// as in Go).
    pub fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if TLS13_SUITES.contains(&name) {
            return Err(format!(
                "cipher suite {name} is a TLS 1.3 suite and is not configurable (TLS 1.3 \
                 suites are always enabled); list TLS 1.2 suites only"
            ));
        }
        SUITES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, s)| s)
            .ok_or_else(|| {
                let names: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unsupported cipher suite \"{name}\" (the edge offers only ECDHE AEAD suites: \
                 {})",
                    names.join(", ")
                )
            })
    }

    /// Reads a `cipher_suites` list; blank entries are skipped, as in FluxMQ.
    pub fn parse_list(names: &[String]) -> Result<Vec<Self>, String> {
        names
            .iter()
            .filter(|n| !n.trim().is_empty())
            .map(|n| Self::parse(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_spellings() {
        let cases: &[(&str, ClientAuth)] = &[
            ("", ClientAuth::Unset),
            ("None", ClientAuth::None),
            ("no", ClientAuth::None),
            ("REQUEST", ClientAuth::Request),
            ("require_any", ClientAuth::RequireAny),
            ("require-any", ClientAuth::RequireAny),
            ("RequireAny", ClientAuth::RequireAny),
            ("verify_if_given", ClientAuth::VerifyIfGiven),
            ("verify-if-given", ClientAuth::VerifyIfGiven),
            ("verifyifgiven", ClientAuth::VerifyIfGiven),
            (" require ", ClientAuth::RequireAndVerify),
            ("require_and_verify", ClientAuth::RequireAndVerify),
            ("require-and-verify", ClientAuth::RequireAndVerify),
            ("RequireAndVerify", ClientAuth::RequireAndVerify),
        ];
        for (text, want) in cases {
            assert_eq!(ClientAuth::parse(text), Ok(*want), "{text}");
        }
        assert!(ClientAuth::parse("mutual").is_err_and(|e| e.contains("\"mutual\"")));
        assert_eq!(
            ClientAuth::Unset.effective(true),
            ClientAuth::RequireAndVerify
        );
        assert_eq!(ClientAuth::Unset.effective(false), ClientAuth::None);
        assert!(!ClientAuth::RequireAny.effective(true).verifies());
    }

    #[test]
    fn min_versions() {
        assert_eq!(TlsVersion::parse(""), Ok(None));
        assert_eq!(TlsVersion::parse("TLS1.2"), Ok(Some(TlsVersion::Tls12)));
        assert_eq!(TlsVersion::parse("1.2"), Ok(Some(TlsVersion::Tls12)));
        assert_eq!(TlsVersion::parse("tls1.3"), Ok(Some(TlsVersion::Tls13)));
        assert_eq!(TlsVersion::parse("1.3"), Ok(Some(TlsVersion::Tls13)));
        for old in ["tls1.0", "1.0", "TLS1.1", "1.1"] {
            assert!(
                TlsVersion::parse(old).is_err_and(|e| e.contains("TLS 1.2 or newer")),
                "{old}"
            );
        }
        assert!(TlsVersion::parse("ssl3").is_err_and(|e| e.contains("unknown min_version")));
    }

    #[test]
    fn cipher_suites() {
        for (name, _) in SUITES {
            assert!(CipherSuite::parse(name).is_ok(), "{name}");
        }
        assert_eq!(
            CipherSuite::parse("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"),
            CipherSuite::parse("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
        );
        for name in TLS13_SUITES {
            assert!(CipherSuite::parse(name).is_err_and(|e| e.contains("not configurable")));
        }
        for name in [
            "TLS_RSA_WITH_AES_128_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        ] {
            assert!(
                CipherSuite::parse(name).is_err_and(|e| e.contains(name)),
                "{name}"
            );
        }
        let list = vec![
            " ".to_owned(),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned(),
        ];
        assert_eq!(
            CipherSuite::parse_list(&list),
            Ok(vec![CipherSuite::EcdheRsaAes128Gcm])
        );
    }
}
