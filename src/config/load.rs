//! Reading configuration: YAML text and files to a validated [`Config`].
//!
//! Owns: the single-document rule, the key check (unknown keys, FluxMQ cloud-only sections
//! and main-branch keys refused by name with a hint), typed deserialization with key paths,
//! merging several files, and naming the file an error comes from. Does not own: the value
//! rules (`validate.rs`) or what this build can run (`support.rs`, called by `main`).

use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::error::ConfigError;
use super::schema::{Config, slot_protocol};

/// Origin shown for the embedded default configuration.
pub const EMBEDDED_ORIGIN: &str = "<embedded edge.yaml>";

/// Why a key FluxMQ knows is refused at the edge.
enum Foreign {
    /// A FluxMQ cloud feature the edge does not have.
    CloudOnly,
    /// A key of FluxMQ's main-branch layout; the hint names the atom-dialect way.
    MainBranch(&'static str),
    /// A slot that exists in neither dialect (but appears in FluxMQ docs).
    NoSuchSlot(&'static str),
}

/// Keys FluxMQ knows (or documents) that the edge refuses by name.
const FOREIGN_KEYS: &[(&str, Foreign)] = &[
    ("queues", Foreign::CloudOnly),
    ("queue_manager", Foreign::CloudOnly),
    ("webhook", Foreign::CloudOnly),
    ("hooks", Foreign::CloudOnly),
    ("cluster.etcd", Foreign::CloudOnly),
    ("cluster.raft", Foreign::CloudOnly),
    (
        "server.mqtt",
        Foreign::MainBranch("use server.tcp / server.websocket"),
    ),
    (
        "auth.external",
        Foreign::MainBranch("use auth.provider: callout + auth.url"),
    ),
    (
        "auth.local_principals",
        Foreign::MainBranch("AMQP local principals are not supported"),
    ),
    (
        "storage.badger_sync_writes",
        Foreign::MainBranch("use storage.sync_writes"),
    ),
    (
        "storage.queue_ack_durability",
        Foreign::MainBranch("durable queues are cloud-only"),
    ),
    (
        "storage.queue_sync_interval",
        Foreign::MainBranch("durable queues are cloud-only"),
    ),
    (
        "server.amqp091.local",
        Foreign::MainBranch("AMQP 0.9.1 slots are plain, tls, mtls"),
    ),
    (
        "server.amqp091.internal",
        Foreign::MainBranch("AMQP 0.9.1 slots are plain, tls, mtls"),
    ),
    (
        "server.amqp091.service",
        Foreign::MainBranch("AMQP 0.9.1 slots are plain, tls, mtls"),
    ),
    (
        "server.tcp.plain",
        Foreign::NoSuchSlot("server.tcp.v3 and server.tcp.v5"),
    ),
    (
        "server.websocket.plain",
        Foreign::NoSuchSlot("server.websocket.v3 and server.websocket.v5"),
    ),
];

impl Foreign {
    fn message(&self) -> String {
        match self {
            Self::CloudOnly => {
                "FluxMQ cloud-only section, not part of the edge broker; remove it".to_owned()
            }
            Self::MainBranch(hint) => format!(
                "this is the FluxMQ main-branch layout; the edge reads the atom dialect: {hint}"
            ),
            Self::NoSuchSlot(instead) => format!("no such slot: plain listeners are {instead}"),
        }
    }
}

/// The embedded default configuration (see `config/edge.yaml`).
pub fn load_embedded() -> Result<Config, ConfigError> {
    load_str(super::EMBEDDED_DEFAULT, EMBEDDED_ORIGIN)
}

/// No paths: the embedded default. Several paths: merged in order (later keys override
/// earlier ones, maps merged recursively, lists and scalars replaced), so a site config
/// layers over a board profile. Each file is first checked on its own so that an unknown
/// key or bad type names the file it is in; then the merge is deserialized and validated.
///
/// Files overlay the built-in defaults (`Config::default()`), not the embedded edge.yaml.
/// A `null` value in a later file (`server:` with nothing under it) overrides nothing.
pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
    if paths.is_empty() {
        return load_embedded();
    }
    let mut layers: Vec<(String, Value)> = Vec::with_capacity(paths.len());
    for path in paths {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&origin, "", format!("cannot read file: {e}")))?;
        let (value, _) = parse_checked(&text, &origin)?;
        layers.push((origin, value));
    }
    let mut merged = Value::Null;
    for (_, layer) in &layers {
        merge(&mut merged, layer.clone());
    }
    let names: Vec<&str> = layers.iter().map(|(o, _)| o.as_str()).collect();
    let joined = names.join(" + ");
    let mut config = if merged.is_null() {
        Config::default()
    } else {
        serde_path_to_error::deserialize(merged)
            .map_err(|e| ConfigError::from_serde(&joined, &e))?
    };
    config.normalize();
    config.validate(&joined).map_err(|e| {
        let origin = blame(e.path(), &layers).unwrap_or(joined.clone());
        e.with_origin(origin)
    })?;
    Ok(config)
}

/// Parse one YAML text; `origin` is the file name to show in errors (`"<embedded edge.yaml>"`).
pub fn load_str(yaml: &str, origin: &str) -> Result<Config, ConfigError> {
    let (_, mut config) = parse_checked(yaml, origin)?;
    config.normalize();
    config.validate(origin)?;
    Ok(config)
}

/// One document, its keys checked, its types checked: the tree and the typed config
/// (not yet normalised or validated).
fn parse_checked(yaml: &str, origin: &str) -> Result<(Value, Config), ConfigError> {
    let value: Value = serde_yaml::from_str(yaml).map_err(|e| {
        // A second document that parses on its own means the text is multi-document.
        let documents = serde_yaml::Deserializer::from_str(yaml).take(2);
        if documents
            .map(Value::deserialize)
            .filter(Result::is_ok)
            .count()
            == 2
        {
            return ConfigError::new(
                origin,
                "",
                "found more than one YAML document; a configuration file holds exactly one \
                 (remove the `---` separators)",
            );
        }
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()));
        ConfigError::new(
            origin,
            "",
            format!("invalid YAML: {e}{}", at.unwrap_or_default()),
        )
    })?;
    check_keys(&value, origin)?;
    if value.is_null() {
        return Ok((value, Config::default()));
    }
    let config = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(yaml))
        .map_err(|e| ConfigError::from_serde(origin, &e))?;
    Ok((value, config))
}

/// Refuses keys the schema does not have, naming the full key path. The schema's shape is
/// read from the serialized defaults: a non-empty mapping there is a struct whose keys are
/// checked; an empty one (`auth.protocols`, `cluster.transport.peers`) is a free map.
fn check_keys(doc: &Value, origin: &str) -> Result<(), ConfigError> {
    let template = serde_yaml::to_value(Config::default())
        .map_err(|e| ConfigError::new(origin, "", format!("internal: {e}")))?;
    match doc {
        Value::Null => Ok(()),
        Value::Mapping(map) => check_mapping(map, &template, "", origin),
        _ => Err(ConfigError::new(
            origin,
            "",
            "the top level must be a mapping of sections (server, broker, session, log, \
             storage, cluster, ratelimit, auth)",
        )),
    }
}

fn check_mapping(
    map: &Mapping,
    template: &Value,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let Some(known) = template.as_mapping() else {
        return Ok(());
    };
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            let shown = serde_yaml::to_string(key).unwrap_or_default();
            return Err(ConfigError::new(
                origin,
                prefix,
                format!("keys must be strings (found {})", shown.trim()),
            ));
        };
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some((_, why)) = FOREIGN_KEYS.iter().find(|(k, _)| *k == path) {
            return Err(ConfigError::new(origin, path, why.message()));
        }
        let Some(expected) = known.get(name) else {
            let message = if name == "<<" {
                "YAML merge keys (<<) are not supported; write the keys out".to_owned()
            } else {
                let names: Vec<&str> = known.keys().filter_map(Value::as_str).collect();
                format!("unknown key (expected one of {})", names.join(", "))
            };
            return Err(ConfigError::new(origin, path, message));
        };
        if let (Value::Mapping(inner), Value::Mapping(shape)) = (value, expected)
            && !shape.is_empty()
        {
            check_mapping(inner, expected, &path, origin)?;
        }
    }
    Ok(())
}

/// Overlays `top` on `base`: mappings merge key by key, anything else replaces, and a
/// `null` overrides nothing.
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (_, Value::Null) => {}
        (Value::Mapping(base), Value::Mapping(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, top) => *base = top,
    }
}

/// The file a merged-config problem at `path` most likely comes from: the last file that
/// sets the longest prefix of the path.
fn blame(path: &str, layers: &[(String, Value)]) -> Option<String> {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let depth_in = |doc: &Value| {
        let mut node = doc;
        let mut depth = 0;
        for part in &parts {
            match node.get(*part) {
                Some(next) => {
                    node = next;
                    depth += 1;
                }
                None => break,
            }
        }
        depth
    };
    let (best, depth) = layers
        .iter()
        .map(|(origin, doc)| (origin, depth_in(doc)))
        .fold((None, 0), |(best, d), (o, n)| {
            if n >= d && n > 0 {
                (Some(o), n)
            } else {
                (best, d)
            }
        });
    (depth > 0).then(|| best.cloned()).flatten()
}

impl Config {
    /// Rewrites values to their canonical form: MQTT slot protocols lower-cased, `""`
    /// replaced by the slot's own value. Values that cannot be normalised are left for
    /// `validate` to report.
    pub(super) fn normalize(&mut self) {
        for (slot, listener) in self.server.slots_mut() {
            if let (Some(_), Ok(protocol)) =
                (slot.protocol, slot_protocol(&slot, &listener.protocol))
            {
                listener.protocol = protocol.to_owned();
            }
        }
    }

    /// The effective configuration as YAML (durations in Go form), for --check-config.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Listeners enough for validation to pass, plus `extra`.
    fn with_listener(extra: &str) -> String {
        format!("server:\n  tcp:\n    v3: {{ addr: \":1883\" }}\n{extra}")
    }

    fn err(yaml: &str) -> String {
        load_str(yaml, "test.yaml").expect_err(yaml).to_string()
    }

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let unique = format!(
                "fluxmq-edge-config-{}-{}-{name}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            );
            let path = std::env::temp_dir().join(unique);
            std::fs::write(&path, text).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn unknown_keys_name_the_full_path() {
        let e = err("server:\n  tcp:\n    v3:\n      adrr: \":1883\"\n");
        assert!(
            e.starts_with("config error in test.yaml: server.tcp.v3.adrr: unknown key"),
            "{e}"
        );
        assert!(
            e.contains("expected one of addr, max_connections, read_timeout"),
            "{e}"
        );
        let e = err("brokr: {}\n");
        assert!(
            e.contains(": brokr: unknown key (expected one of server, broker,"),
            "{e}"
        );
        let e = err("server:\n  tcp:\n    tls:\n      ocsp: { dept: 1 }\n");
        assert!(e.contains("server.tcp.tls.ocsp.dept: unknown key"), "{e}");
        let e = err("auth:\n  atom:\n    grpc: x\n");
        assert!(
            e.contains("auth.atom.grpc: unknown key (expected one of grpc_addr,"),
            "{e}"
        );
        let e = err("<<: {}\n");
        assert!(e.contains("merge keys"), "{e}");
        let e = err("1883: x\n");
        assert!(e.contains("keys must be strings"), "{e}");
    }

    #[test]
    fn free_maps_take_any_key_but_check_types() {
        let yaml = with_listener("cluster:\n  transport:\n    peers: { cloud-1: \"c1:7948\" }\n");
        let c = load_str(&yaml, "t").expect("peers");
        assert_eq!(c.cluster.transport.peers["cloud-1"], "c1:7948");
        let e = err(&with_listener("auth:\n  protocols: { mqtt: maybe }\n"));
        assert!(e.contains("auth.protocols.mqtt: invalid type"), "{e}");
    }

    #[test]
    fn cloud_only_sections_are_refused_by_name() {
        for (yaml, path) in [
            ("queues: []\n", "queues"),
            (
                "queue_manager: { auto_commit_interval: 5s }\n",
                "queue_manager",
            ),
            ("webhook: {}\n", "webhook"),
            ("hooks:\n", "hooks"),
            ("cluster:\n  etcd: { data_dir: /x }\n", "cluster.etcd"),
            ("cluster:\n  raft: { enabled: false }\n", "cluster.raft"),
        ] {
            let e = err(yaml);
            assert_eq!(
                e,
                format!(
                    "config error in test.yaml: {path}: FluxMQ cloud-only section, not part of \
                     the edge broker; remove it"
                )
            );
        }
    }

    #[test]
    fn main_branch_keys_get_a_hint() {
        let e = err("server:\n  mqtt:\n    tcp: {}\n");
        assert!(e.contains("server.mqtt: this is the FluxMQ main-branch layout; the edge reads the atom dialect: use server.tcp / server.websocket"), "{e}");
        let e = err("auth:\n  external: { url: x }\n");
        assert!(
            e.contains("auth.external: ") && e.contains("use auth.provider: callout + auth.url"),
            "{e}"
        );
        let e = err("storage: { badger_sync_writes: true }\n");
        assert!(
            e.contains("storage.badger_sync_writes: ") && e.contains("use storage.sync_writes"),
            "{e}"
        );
        let e = err("server:\n  tcp:\n    plain: { addr: \":1883\" }\n");
        assert!(e.contains("server.tcp.plain: no such slot"), "{e}");
    }

    #[test]
    fn type_errors_name_key_line_and_file() {
        let e = err("broker:\n  max_qos: high\n");
        assert!(
            e.starts_with("config error in test.yaml: broker.max_qos: invalid type: string"),
            "{e}"
        );
        assert!(e.contains("(line 2, column 12)"), "{e}");
        let e = err("server:\n  tcp:\n    v3: { max_connections: -1 }\n");
        assert!(
            e.contains("server.tcp.v3.max_connections: must not be negative (got -1)"),
            "{e}"
        );
        let e = err("broker:\n  retry_interval: 20\n");
        assert!(
            e.contains("broker.retry_interval: ") && e.contains("write \"20s\""),
            "{e}"
        );
        let e = err("auth:\n  timeout: -2s\n");
        assert!(e.contains("auth.timeout: must not be negative"), "{e}");
        let e = err("log: { level: verbose }\n");
        assert!(e.contains("log.level: unknown variant `verbose`"), "{e}");
        let e = err("storage: { type: sqlite }\n");
        assert!(e.contains("storage.type: unknown variant `sqlite`"), "{e}");
        let e = err("broker: { memory_limit: 64MB }\n");
        assert!(
            e.contains("broker.memory_limit: invalid size \"64MB\""),
            "{e}"
        );
        let e = err("- a\n- b\n");
        assert!(e.contains("top level must be a mapping"), "{e}");
    }

    #[test]
    fn multi_document_and_bad_yaml() {
        let e = err("broker: {}\n---\nsession: {}\n");
        assert!(e.contains("found more than one YAML document"), "{e}");
        let e = err("broker: {\n");
        assert!(
            e.starts_with("config error in test.yaml: invalid YAML"),
            "{e}"
        );
        let e = err("broker: { max_qos: 1, max_qos: 2 }\n");
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn empty_text_is_the_defaults_which_need_a_listener() {
        let e = err("# nothing\n");
        assert!(e.contains("server: no messaging listener"), "{e}");
        let c = load_str(&with_listener(""), "t").expect("minimal");
        assert_eq!(c.server.tcp.v3.protocol, "v3");
        assert_eq!(c.broker, Config::default().broker);
    }

    #[test]
    fn protocol_is_normalised() {
        let yaml = "server:\n  tcp:\n    v3: { addr: \":1883\", protocol: V3 }\n    v5: { addr: \":1884\", protocol: \"\" }\n";
        let c = load_str(yaml, "t").expect("load");
        assert_eq!(
            (
                c.server.tcp.v3.protocol.as_str(),
                c.server.tcp.v5.protocol.as_str()
            ),
            ("v3", "v5")
        );
        let e = err("server:\n  tcp:\n    v3: { addr: \":1883\", protocol: v5 }\n");
        assert!(
            e.contains("server.tcp.v3.protocol: the v3 slot always speaks MQTT v3"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let path = std::env::temp_dir().join("fluxmq-edge-config-does-not-exist.yaml");
        let e = load(std::slice::from_ref(&path))
            .expect_err("missing")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config error in {}: cannot read file",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn no_paths_is_the_embedded_default() {
        let c = load(&[]).expect("embedded");
        assert_eq!(c, load_embedded().expect("embedded"));
        assert_eq!(c.server.tcp.v3.addr, ":1883");
    }

    #[test]
    fn files_merge_in_order() {
        let board = TempFile::new(
            "board.yaml",
            "server:\n  tcp:\n    v3: { addr: \":1883\", max_connections: 200 }\n    v5: { addr: \":1884\" }\n  \
             websocket:\n    tls: { allowed_origins: [\"https://a.example\", \"https://b.example\"] }\n\
             broker:\n  retry_interval: 10s\n  max_qos: 1\n",
        );
        let site = TempFile::new(
            "site.yaml",
            "server:\n  tcp:\n    v3: { max_connections: 50 }\n  websocket:\n    tls: { allowed_origins: [\"https://c.example\"] }\n\
             broker:\n  max_qos: 2\n  max_retained_messages: 5\nlog:\n",
        );
        let c = load(&[board.0.clone(), site.0.clone()]).expect("merge");
        assert_eq!(c.server.tcp.v3.addr, ":1883", "kept from the board");
        assert_eq!(
            c.server.tcp.v3.max_connections, 50,
            "overridden by the site"
        );
        assert_eq!(c.server.tcp.v5.addr, ":1884");
        assert_eq!(
            c.server.websocket.tls.allowed_origins,
            ["https://c.example"],
            "lists replace"
        );
        assert_eq!(c.broker.retry_interval, Duration::from_secs(10));
        assert_eq!((c.broker.max_qos, c.broker.max_retained_messages), (2, 5));
    }

    #[test]
    fn merge_errors_name_the_file() {
        let board = TempFile::new(
            "board.yaml",
            "server:\n  tcp:\n    v3: { addr: \":1883\" }\n",
        );
        let typo = TempFile::new("typo.yaml", "broker:\n  retry_intervall: 5s\n");
        let e = load(&[board.0.clone(), typo.0.clone()])
            .expect_err("typo")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config error in {}: broker.retry_intervall: unknown key",
                typo.0.display()
            )),
            "{e}"
        );
        let bad = TempFile::new("bad.yaml", "broker:\n  retry_interval: 100ms\n");
        let e = load(&[board.0.clone(), bad.0.clone()])
            .expect_err("value")
            .to_string();
        assert_eq!(
            e,
            format!(
                "config error in {}: broker.retry_interval: must be at least 1s",
                bad.0.display()
            )
        );
        let tls = TempFile::new(
            "tls.yaml",
            "server:\n  tcp:\n    tls: { addr: \":8883\" }\n",
        );
        let e = load(&[board.0.clone(), tls.0.clone()])
            .expect_err("no cert")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config error in {}: server.tcp.tls.cert_file",
                tls.0.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn merge_rules() {
        let mut base: Value = serde_yaml::from_str("a: { b: 1, c: [1, 2] }\nd: x\n").expect("base");
        let top: Value = serde_yaml::from_str("a: { c: [3], e: 4 }\nd:\n").expect("top");
        merge(&mut base, top);
        let want: Value = serde_yaml::from_str("a: { b: 1, c: [3], e: 4 }\nd: x\n").expect("want");
        assert_eq!(base, want);
    }

    #[test]
    fn to_yaml_round_trips() {
        let mut c = load_str(&with_listener(""), "t").expect("load");
        c.broker.retry_interval = Duration::from_millis(1500);
        c.broker.memory_limit = super::super::ByteSize(96 * 1024 * 1024);
        c.cluster
            .transport
            .peers
            .insert("cloud-1".to_owned(), "c1:7948".to_owned());
        c.auth.protocols.insert("mqtt".to_owned(), true);
        let text = c.to_yaml();
        assert!(text.contains("retry_interval: 1.5s"), "{text}");
        assert!(text.contains("memory_limit: 96MiB"), "{text}");
        assert!(text.contains("shutdown_timeout: 30s") && text.contains("cleanup_interval: 5m0s"));
        assert_eq!(load_str(&text, "round trip").expect("reload"), c);
        let embedded = load_embedded().expect("embedded");
        assert_eq!(
            load_str(&embedded.to_yaml(), "rt").expect("reload"),
            embedded
        );
    }
}
