//! Go-style durations (`300ms`, `1.5s`, `2h45m`) and byte sizes (`16MiB`), as text and
//! through serde.
//!
//! Owns: parsing and formatting both kinds of value, and the serde adapters the schema
//! uses (`#[serde(with = "duration::go")]` for `std::time::Duration`, [`ByteSize`]).
//! Does not own: which durations or sizes are acceptable for a given key (that is
//! `validate.rs`), except that a negative duration is refused where it is read, because
//! no key of the edge gives a negative duration a meaning.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NS_PER_US: u128 = 1_000;
const NS_PER_MS: u128 = 1_000_000;
const NS_PER_S: u128 = 1_000_000_000;

/// Units Go's `time.ParseDuration` knows, in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", NS_PER_US),
    ("\u{b5}s", NS_PER_US),  // micro sign, as Go prints it
    ("\u{3bc}s", NS_PER_US), // Greek mu
    ("ms", NS_PER_MS),
    ("s", NS_PER_S),
    ("m", 60 * NS_PER_S),
    ("h", 3600 * NS_PER_S),
];

const DURATION_HINT: &str = "Go durations look like \"300ms\", \"1.5s\", \"2h45m\"";

/// A parsed Go duration: its magnitude and whether it had a leading `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub negative: bool,
    pub magnitude: Duration,
}

/// Parses a duration the way Go's `time.ParseDuration` does: an optional sign, then one or
/// more `<decimal><unit>` terms (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); a bare `0` is zero.
/// Like Go, the total must fit in an `i64` of nanoseconds (about 292 years).
pub fn parse(text: &str) -> Result<Parsed, String> {
    let invalid = |why: &str| format!("invalid duration \"{text}\": {why} ({DURATION_HINT})");
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if body == "0" {
        return Ok(Parsed {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if body.is_empty() {
        return Err(invalid("empty"));
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_num) = match after_int.strip_prefix('.') {
            Some(tail) => {
                let n = tail.bytes().take_while(u8::is_ascii_digit).count();
                tail.split_at(n)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid("expected a number"));
        }
        let unit_len = after_num
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, tail) = after_num.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid("missing unit"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(invalid(&format!("unknown unit \"{unit}\"")));
        };
        let too_long = || invalid("out of range");
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_long())?
        };
        let mut term = int.checked_mul(scale).ok_or_else(too_long)?;
        if !frac_digits.is_empty() {
            // Digits past the 20th cannot change a whole nanosecond count of this size.
            let digits = &frac_digits[..frac_digits.len().min(20)];
            let frac: u128 = digits.parse().map_err(|_| too_long())?;
            let denom = 10u128.pow(digits.len() as u32);
            term = term
                .checked_add(frac * scale / denom)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(term).ok_or_else(too_long)?;
        if total > i64::MAX as u128 {
            return Err(too_long());
        }
        rest = tail;
    }
    let secs = (total / NS_PER_S) as u64;
    let nanos = (total % NS_PER_S) as u32;
    Ok(Parsed {
        negative,
        magnitude: Duration::new(secs, nanos),
    })
}

/// Formats a duration exactly as Go's `time.Duration.String` does: `0s`, `1ns`, `1.5µs`,
/// `300ms`, `1.5s`, `5m0s`, `2h45m0s`.
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < NS_PER_S {
        let (unit, scale) = if ns < NS_PER_US {
            ("ns", 1)
        } else if ns < NS_PER_MS {
            ("\u{b5}s", NS_PER_US)
        } else {
            ("ms", NS_PER_MS)
        };
        return format!("{}{unit}", decimal(ns, scale));
    }
    let secs = ns / NS_PER_S;
    let (hours, minutes) = (secs / 3600, secs / 60 % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&decimal(secs % 60 * NS_PER_S + ns % NS_PER_S, NS_PER_S));
    out.push('s');
    out
}

/// `value / scale` as a decimal with trailing zeros (and a bare point) removed.
fn decimal(value: u128, scale: u128) -> String {
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

/// Serde adapter for `std::time::Duration` fields written as Go duration strings.
///
/// Reading: a string in Go form; a plain `0` is accepted as zero; any other number is
/// refused (Go would read it as nanoseconds, which is never what was meant); a negative
/// duration is refused. Writing: Go's canonical form ([`format()`]).
pub mod go {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(GoDurationVisitor)
    }

    struct GoDurationVisitor;

    fn number_hint<E: de::Error>(shown: &dyn fmt::Display) -> E {
        E::custom(format!(
            "a duration is written as a Go duration string with a unit: write \"{shown}s\" \
             (seconds) or \"{shown}ms\" rather than {shown}"
        ))
    }

    impl Visitor<'_> for GoDurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a Go duration string such as \"5s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            let parsed = parse(v).map_err(E::custom)?;
            if parsed.negative && !parsed.magnitude.is_zero() {
                return Err(E::custom(format!("must not be negative (got \"{v}\")")));
            }
            Ok(parsed.magnitude)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            if v == 0 {
                Ok(Duration::ZERO)
            } else {
                Err(number_hint(&v))
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            if v == 0 {
                Ok(Duration::ZERO)
            } else {
                Err(number_hint(&v))
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(number_hint(&v))
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A size in bytes, written as a plain integer or with a binary suffix: `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB` (all powers of 1024, case-insensitive). `KB`/`MB`/`GB` are refused
/// because they are read as powers of 1000 elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            format!(
                "invalid size \"{text}\": {why} (write a whole number of bytes, optionally \
                 with K, M, G, KiB, MiB or GiB: powers of 1024)"
            )
        };
        let trimmed = text.trim();
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        let (number, suffix) = trimmed.split_at(digits);
        if number.is_empty() {
            return Err(invalid("expected a number"));
        }
        let scale = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => GIB,
            "kb" | "mb" | "gb" => return Err(invalid("ambiguous unit; use K, M or G")),
            other => return Err(invalid(&format!("unknown unit \"{other}\""))),
        };
        let value: u64 = number.parse().map_err(|_| invalid("too large"))?;
        value
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| invalid("too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        match [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
            .into_iter()
            .find(|&(unit, _)| v != 0 && v.is_multiple_of(unit))
        {
            Some((unit, name)) => write!(f, "{}{name}", v / unit),
            None => write!(f, "{v}"),
        }
    }
}

impl Serialize for ByteSize {
    /// Whole KiB/MiB/GiB are written with the suffix, anything else as a plain integer.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 != 0 && self.0.is_multiple_of(KIB) {
            serializer.serialize_str(&self.to_string())
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, such as 1048576 or \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("must not be negative (got {v})")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "a size must be a whole number of bytes (got {v})"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn parses_go_durations() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1m30s", Duration::from_secs(90)),
            ("1us", ns(1000)),
            ("1\u{b5}s", ns(1000)),
            ("1\u{3bc}s", ns(1000)),
            ("7ns", ns(7)),
            ("1h1m1s1ms1us1ns", ns(3_661_001_001_001)),
            ("+5s", Duration::from_secs(5)),
            ("1.000000001s", ns(1_000_000_001)),
            ("0.0000000001s", Duration::ZERO),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got.magnitude, *want, "{text}");
        }
        assert!(parse("-5s").is_ok_and(|p| p.negative && p.magnitude == Duration::from_secs(5)));
    }

    #[test]
    fn refuses_malformed_durations() {
        for text in [
            "", "-", "5", "s", "5 s", "5sec", "1.5", ".s", "5d", "1h-5m", "3000000h",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("\"{text}\"")), "{text}: {err}");
        }
        assert!(parse("5d").is_err_and(|e| e.contains("unknown unit \"d\"")));
        assert!(parse("5").is_err_and(|e| e.contains("missing unit")));
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (ns(1), "1ns"),
            (ns(1500), "1.5\u{b5}s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(20), "20s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(2 * 3600 + 45 * 60), "2h45m0s"),
            (Duration::from_secs(86400), "24h0m0s"),
            (ns(3_661_001_001_001), "1h1m1.001001001s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(*d), *want);
            assert_eq!(
                parse(want).map(|p| p.magnitude),
                Ok(*d),
                "round trip of {want}"
            );
        }
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Holder {
        #[serde(with = "go")]
        d: Duration,
    }

    #[test]
    fn serde_adapter_reads_and_writes_go_form() {
        let h: Holder = serde_yaml::from_str("d: 1m30s").expect("parse");
        assert_eq!(h.d, Duration::from_secs(90));
        assert_eq!(serde_yaml::to_string(&h).expect("ser").trim(), "d: 1m30s");
        let zero: Holder = serde_yaml::from_str("d: 0").expect("bare zero");
        assert_eq!(zero.d, Duration::ZERO);
        let err = serde_yaml::from_str::<Holder>("d: 5").expect_err("integer");
        assert!(err.to_string().contains("write \"5s\""), "{err}");
        let err = serde_yaml::from_str::<Holder>("d: -5s").expect_err("negative");
        assert!(err.to_string().contains("must not be negative"), "{err}");
        let err = serde_yaml::from_str::<Holder>("d: 2.5").expect_err("float");
        assert!(err.to_string().contains("\"2.5s\""), "{err}");
    }

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1000", 1000),
            ("1K", 1024),
            ("1k", 1024),
            ("64KiB", 64 * KIB),
            ("16M", 16 * MIB),
            ("16 MiB", 16 * MIB),
            ("16mib", 16 * MIB),
            ("2G", 2 * GIB),
            ("3GiB", 3 * GIB),
            ("12B", 12),
        ];
        for (text, want) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(*want)), "{text}");
        }
        for text in ["", "M", "1.5M", "64MB", "1T", "-1", "99999999999999999999"] {
            assert!(ByteSize::parse(text).is_err(), "{text}");
        }
        assert_eq!(ByteSize(16 * MIB).to_string(), "16MiB");
        assert_eq!(ByteSize(1536).to_string(), "1536");
        assert_eq!(ByteSize(3 * KIB).to_string(), "3KiB");
        assert_eq!(ByteSize(0).to_string(), "0");
    }

    #[test]
    fn byte_size_serde() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct S {
            m: ByteSize,
        }
        for (text, want) in [
            ("m: 1048576", MIB),
            ("m: 64M", 64 * MIB),
            ("m: \"2GiB\"", 2 * GIB),
        ] {
            let s: S = serde_yaml::from_str(text).expect(text);
            assert_eq!(s.m, ByteSize(want));
            let back: S =
                serde_yaml::from_str(&serde_yaml::to_string(&s).expect("ser")).expect("reparse");
            assert_eq!(back, s);
        }
        assert_eq!(
            serde_yaml::to_string(&S { m: ByteSize(100) })
                .expect("ser")
                .trim(),
            "m: 100"
        );
        let err = serde_yaml::from_str::<S>("m: -1").expect_err("negative");
        assert!(err.to_string().contains("must not be negative"), "{err}");
    }
}
