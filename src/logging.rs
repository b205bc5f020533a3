//! A small `log` backend: one line per record on stderr, `text` or `json` per `log.format`,
//! level from `log.level` (`RUST_LOG` is not consulted: the config file is the one source).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct Logger {
    json: bool,
}

static TEXT: Logger = Logger { json: false };
static JSON: Logger = Logger { json: true };

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, ms) = (t.as_secs(), t.subsec_millis());
        let line = if self.json {
            let msg = r
                .args()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            format!(
                "{{\"ts\":{secs}.{ms:03},\"level\":\"{}\",\"target\":\"{}\",\"msg\":\"{msg}\"}}\n",
                r.level().as_str().to_lowercase(),
                r.target()
            )
        } else {
            format!("{secs}.{ms:03} {:5} {}\n", r.level(), r.args())
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger (once; later calls only change the level).
pub fn init(level: log::LevelFilter, json: bool) {
    let _ = log::set_logger(if json { &JSON } else { &TEXT });
    log::set_max_level(level);
}
