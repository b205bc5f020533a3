//! One flat JSON object per run, written without a serde dependency: keys keep insertion order,
//! non-finite numbers become `null`.

use std::fmt::Write;

#[derive(Default)]
pub struct JsonLine {
    out: String,
}

fn escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl JsonLine {
    fn key(&mut self, k: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        escape(k, &mut self.out);
        self.out.push(':');
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        escape(v, &mut self.out);
        self
    }

    pub fn int(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        let _ = write!(self.out, "{v}");
        self
    }

    pub fn num(&mut self, k: &str, v: f64) -> &mut Self {
        self.key(k);
        if v.is_finite() {
            // Enough digits for µs/msg figures without printing float noise.
            let s = format!("{v:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            self.out
                .push_str(if s.is_empty() || s == "-" { "0" } else { s });
        } else {
            self.out.push_str("null");
        }
        self
    }

    pub fn opt_num(&mut self, k: &str, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.num(k, v),
            None => {
                self.key(k);
                self.out.push_str("null");
                self
            }
        }
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    pub fn finish(&self) -> String {
        if self.out.is_empty() {
            "{}".to_string()
        } else {
            format!("{}}}", self.out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_flat_object() {
        let mut j = JsonLine::default();
        j.str("a", "x\"y")
            .int("b", 3)
            .num("c", 1.5)
            .num("d", f64::NAN);
        j.num("e", 2.0)
            .num("f", 0.00001)
            .bool("g", true)
            .opt_num("h", None);
        assert_eq!(
            j.finish(),
            r#"{"a":"x\"y","b":3,"c":1.5,"d":null,"e":2,"f":0,"g":true,"h":null}"#
        );
        assert_eq!(JsonLine::default().finish(), "{}");
    }
}
