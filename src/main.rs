//! The `fluxmq-edge` binary: arguments -> configuration -> one executor -> run.

use std::path::PathBuf;
use std::process::ExitCode;

use fluxmq_edge::{budget, config, logging, server};

const USAGE: &str = "usage: fluxmq-edge [--config FILE]... [--check-config] [--version]

  --config FILE    YAML configuration (FluxMQ keys). Repeat to layer files: later
                   files override earlier ones (e.g. a board profile, then a site file).
                   Without --config the embedded default (config/edge.yaml) is used.
  --check-config   validate, print the effective configuration and its worst-case
                   memory budget, exit 0 (valid and within broker.memory_limit) or 1
  --version        print the version and exit";

fn main() -> ExitCode {
    let mut paths = Vec::new();
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => match args.next() {
                Some(p) => paths.push(PathBuf::from(p)),
                None => return fail("--config needs a file name"),
            },
            s if s.starts_with("--config=") => paths.push(PathBuf::from(&s["--config=".len()..])),
            "--check-config" => check = true,
            "--version" | "-V" => {
                println!("fluxmq-edge {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let cfg = match config::load(&paths) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let origin = if paths.is_empty() {
        "<embedded edge.yaml>".to_string()
    } else {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    if let Err(e) = cfg.check_supported(&origin) {
        return fail(&e.to_string());
    }
    // The worst case the caps allow, refused when above broker.memory_limit.
    let budget = budget::worst_case(&cfg);
    if check {
        print!("{}", cfg.to_yaml());
        eprint!("{budget}");
        if let Err(e) = budget.check() {
            return fail(&e);
        }
        // The certificates the TLS listeners would load at start.
        if let Err(e) = fluxmq_edge::listener::tls::check_files(&cfg) {
            return fail(&e);
        }
        eprintln!("configuration OK ({origin})");
        return ExitCode::SUCCESS;
    }
    logging::init(
        cfg.log.level.filter(),
        cfg.log.format == config::LogFormat::Json,
    );
    for line in budget.to_string().lines() {
        log::info!("{line}");
    }
    if let Err(e) = budget.check() {
        return fail(&e);
    }
    for w in cfg.warnings() {
        log::warn!("{w}");
    }
    log::info!(
        "fluxmq-edge {} starting ({origin})",
        env!("CARGO_PKG_VERSION")
    );
    match server::run(cfg, paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("fluxmq-edge: {msg}");
    ExitCode::FAILURE
}
