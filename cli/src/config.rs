//! `beam config`: the configuration file — TOML in the platform's config directory
//! (`$BEAM_CONFIG` or `--config` to choose another) — its keys, and the settings the other
//! commands take from it. Flags override the file; the file overrides the defaults.
//!
//! The defaults live twice, on purpose: in [`Settings::default`] (what the code uses) and in
//! `cli/config.example.toml` (what users read, with a comment per key); a test checks that they
//! agree. `set` checks the value and the whole file before it writes, and writes by rename, so a
//! refused value leaves the file byte for byte as it was.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use beam_node::record::Participation;
use beam_node::routing::Strategy;
use libp2p::Multiaddr;
use toml_edit::{DocumentMut, Item, Value};

/// The commented example file: every key with its default.
pub const EXAMPLE: &str = include_str!("../config.example.toml");

/// What a key takes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// true or false.
    Bool,
    /// A whole number in `min..=max`.
    Int { min: i64, max: i64 },
    /// A number in `min..=max`.
    Float { min: f64, max: f64 },
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A list of multiaddrs.
    Multiaddrs,
    /// A place: `LAT,LON` in decimal degrees or a city of the built-in table; empty: none.
    Location,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Bool => write!(f, "true or false"),
            Kind::Int { min, max } => write!(f, "a whole number from {min} to {max}"),
            Kind::Float { min, max } => write!(f, "a number from {min} to {max}"),
            Kind::Choice(c) => write!(f, "one of {}", c.join(", ")),
            Kind::Multiaddrs => write!(
                f,
                "multiaddrs separated by commas, e.g. /ip4/203.0.113.5/tcp/4001 (empty: none)"
            ),
            Kind::Location => write!(
                f,
                "LAT,LON in decimal degrees (e.g. 50.11,8.68) or a city (e.g. Frankfurt); empty: \
                 not declared"
            ),
        }
    }
}

/// A key of the file: `table.name`.
#[derive(Debug)]
pub struct Spec {
    /// The table.
    pub table: &'static str,
    /// The key within it.
    pub name: &'static str,
    /// What it takes.
    pub kind: Kind,
}

impl Spec {
    /// `table.name`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }
}

const PARTICIPATION: &[&str] = &["auto", "light", "routing", "full"];
const STRATEGIES: &[&str] = &["direct", "multi-hop", "geographic"];
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Every key, in the order `list` shows them.
pub const KEYS: &[Spec] = &[
    Spec {
        table: "p2p",
        name: "maxPeers",
        kind: Kind::Int {
            min: 1,
            max: 10_000,
        },
    },
    Spec {
        table: "p2p",
        name: "participation",
        kind: Kind::Choice(PARTICIPATION),
    },
    Spec {
        table: "p2p",
        name: "relayRate",
        kind: Kind::Float {
            min: 0.0,
            max: 100_000.0,
        },
    },
    Spec {
        table: "p2p",
        name: "mdns",
        kind: Kind::Bool,
    },
    Spec {
        table: "p2p",
        name: "caching",
        kind: Kind::Bool,
    },
    Spec {
        table: "p2p",
        name: "bootstrap",
        kind: Kind::Multiaddrs,
    },
    Spec {
        table: "p2p",
        name: "location",
        kind: Kind::Location,
    },
    Spec {
        table: "limits",
        name: "connectionsPerPeer",
        kind: Kind::Int { min: 1, max: 64 },
    },
    Spec {
        table: "limits",
        name: "connectionsPerAddress",
        kind: Kind::Int {
            min: 1,
            max: 10_000,
        },
    },
    Spec {
        table: "limits",
        name: "handshakesPerAddress",
        kind: Kind::Int {
            min: 1,
            max: 10_000,
        },
    },
    Spec {
        table: "limits",
        name: "handshakesTotal",
        kind: Kind::Int {
            min: 1,
            max: 10_000,
        },
    },
    Spec {
        table: "limits",
        name: "streamsPerPeer",
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
    },
    Spec {
        table: "limits",
        name: "streamsTotal",
        kind: Kind::Int {
            min: 1,
            max: 100_000,
        },
    },
    Spec {
        table: "limits",
        name: "idleTimeout",
        kind: Kind::Int {
            min: 0,
            max: 86_400,
        },
    },
    Spec {
        table: "routing",
        name: "strategy",
        kind: Kind::Choice(STRATEGIES),
    },
    Spec {
        table: "tor",
        name: "enabled",
        kind: Kind::Bool,
    },
    Spec {
        table: "history",
        name: "sampleSeconds",
        kind: Kind::Int { min: 1, max: 3_600 },
    },
    Spec {
        table: "history",
        name: "maxSamples",
        kind: Kind::Int {
            min: 10,
            max: 1_000_000,
        },
    },
    Spec {
        table: "logging",
        name: "level",
        kind: Kind::Choice(LEVELS),
    },
];

/// The settings the commands use.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `p2p.maxPeers`.
    pub max_peers: u32,
    /// `p2p.participation` (`None`: auto).
    pub participation: Option<Participation>,
    /// `p2p.relayRate`, MiB/s.
    pub relay_rate: f64,
    /// `p2p.mdns`.
    pub mdns: bool,
    /// `p2p.caching`.
    pub caching: bool,
    /// `p2p.bootstrap`.
    pub bootstrap: Vec<Multiaddr>,
    /// `p2p.location`: latitude and longitude (`None`: not declared).
    pub location: Option<(f64, f64)>,
    /// `limits.connectionsPerPeer`.
    pub connections_per_peer: u32,
    /// `limits.connectionsPerAddress`.
    pub connections_per_address: u32,
    /// `limits.handshakesPerAddress`.
    pub handshakes_per_address: u32,
    /// `limits.handshakesTotal`.
    pub handshakes_total: u32,
    /// `limits.streamsPerPeer`.
    pub streams_per_peer: u32,
    /// `limits.streamsTotal`.
    pub streams_total: u32,
    /// `limits.idleTimeout`, seconds (0: never).
    pub idle_timeout_s: u32,
    /// `routing.strategy`.
    pub strategy: Strategy,
    /// `tor.enabled`.
    pub tor: bool,
    /// `history.sampleSeconds`.
    pub history_interval_s: u32,
    /// `history.maxSamples`.
    pub history_max_samples: u32,
    /// `logging.level`.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_peers: 256,
            participation: None,
            relay_rate: 16.0,
            mdns: true,
            caching: false,
            bootstrap: vec![],
            location: None,
            connections_per_peer: 8,
            connections_per_address: 64,
            handshakes_per_address: 16,
            handshakes_total: 128,
            streams_per_peer: 64,
            streams_total: 512,
            idle_timeout_s: 600,
            strategy: Strategy::Direct,
            tor: false,
            history_interval_s: 60,
            history_max_samples: 10_080,
            log_level: "warn".into(),
        }
    }
}

impl Settings {
    /// The `history.*` keys as the sampler takes them.
    pub fn history(&self) -> crate::history::Settings {
        crate::history::Settings {
            interval: std::time::Duration::from_secs(u64::from(self.history_interval_s)),
            max_samples: u64::from(self.history_max_samples),
        }
    }

    /// The `limits.*` keys as the node takes them.
    pub fn limits(&self) -> crate::p2p::Limits {
        crate::p2p::Limits {
            connections_per_peer: self.connections_per_peer,
            by_address: crate::p2p::by_address::Bounds {
                handshakes_per_address: self.handshakes_per_address as usize,
                handshakes_total: self.handshakes_total as usize,
                connections_per_address: self.connections_per_address as usize,
            },
            streams_per_peer: self.streams_per_peer as usize,
            streams_total: self.streams_total as usize,
            idle_timeout: (self.idle_timeout_s > 0)
                .then(|| std::time::Duration::from_secs(u64::from(self.idle_timeout_s))),
        }
    }
}

/// Where the file is when neither `--config` nor `$BEAM_CONFIG` says: `beam/config.toml` in
/// the platform's config directory (`$XDG_CONFIG_HOME` or `~/.config` on Linux).
pub fn default_path() -> Result<PathBuf> {
    let dir = dirs::config_dir()
        .context("cannot tell this platform's config directory: give --config FILE")?;
    Ok(dir.join("beam").join("config.toml"))
}

fn spec(key: &str) -> Result<&'static Spec> {
    KEYS.iter().find(|s| s.key() == key).with_context(|| {
        let keys: Vec<String> = KEYS.iter().map(Spec::key).collect();
        format!("unknown key `{key}`; the keys are: {}", keys.join(", "))
    })
}

/// Reads a value as typed on the command line.
fn parse_text(spec: &Spec, text: &str) -> Result<Value> {
    let bad = || anyhow::anyhow!("{} must be {}; got `{text}`", spec.key(), spec.kind);
    let t = text.trim();
    let value = match spec.kind {
        Kind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Value::from(true),
            "false" | "off" | "no" | "0" => Value::from(false),
            _ => return Err(bad()),
        },
        Kind::Int { .. } => Value::from(t.parse::<i64>().map_err(|_| bad())?),
        Kind::Float { .. } => Value::from(t.parse::<f64>().map_err(|_| bad())?),
        Kind::Choice(_) => Value::from(t),
        Kind::Location => {
            if !t.is_empty()
                && let Err(e) = beam_node::geo::parse_location(t)
            {
                bail!("{}: {e}", spec.key());
            }
            Value::from(t)
        }
        Kind::Multiaddrs => {
            let mut a = toml_edit::Array::new();
            for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                a.push(part);
            }
            Value::Array(a)
        }
    };
    check(spec, &value).map_err(|_| bad())?;
    Ok(value)
}

/// Checks a value found in the file (or typed) against its key.
fn check(spec: &Spec, v: &Value) -> std::result::Result<(), String> {
    let ok = match (spec.kind, v) {
        (Kind::Bool, Value::Boolean(_)) => true,
        (Kind::Int { min, max }, Value::Integer(i)) => (min..=max).contains(i.value()),
        (Kind::Float { min, max }, Value::Float(f)) => {
            f.value().is_finite() && (min..=max).contains(f.value())
        }
        (Kind::Float { min, max }, Value::Integer(i)) => (min..=max).contains(&(*i.value() as f64)),
        (Kind::Choice(c), Value::String(s)) => c.contains(&s.value().as_str()),
        (Kind::Location, Value::String(s)) => {
            s.value().trim().is_empty() || beam_node::geo::parse_location(s.value()).is_ok()
        }
        (Kind::Multiaddrs, Value::Array(a)) => a
            .iter()
            .all(|x| x.as_str().is_some_and(|s| s.parse::<Multiaddr>().is_ok())),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} must be {}; the file has {}",
            spec.key(),
            spec.kind,
            v.to_string().trim()
        ))
    }
}

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file.
    File,
    /// Not in the file: the default.
    Default,
}

/// The file's text, `None` when there is no file.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Parses and checks a whole file: every table and key known, every value in range.
fn parse_doc(text: &str, path: &Path) -> Result<DocumentMut> {
    let doc: DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    for (table, item) in doc.iter() {
        let Some(t) = item.as_table_like() else {
            bail!(
                "{}: `{table}` must be a table ([{table}]); the keys are: {}",
                path.display(),
                keys_list()
            );
        };
        for (name, item) in t.iter() {
            let key = format!("{table}.{name}");
            let spec = spec(&key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let v = item
                .as_value()
                .ok_or_else(|| anyhow::anyhow!("{}: {key} must be a value", path.display()))?;
            check(spec, v).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    Ok(doc)
}

fn keys_list() -> String {
    KEYS.iter().map(Spec::key).collect::<Vec<_>>().join(", ")
}

fn lookup<'d>(doc: &'d DocumentMut, spec: &Spec) -> Option<&'d Value> {
    doc.get(spec.table)?
        .as_table_like()?
        .get(spec.name)?
        .as_value()
}

fn example() -> DocumentMut {
    EXAMPLE.parse().expect("the embedded example is valid TOML")
}

/// A key's row: its value in `doc`, else its default from `defaults` (the example file).
fn row(doc: Option<&DocumentMut>, defaults: &DocumentMut, spec: &Spec) -> Row {
    let (v, source) = match doc.and_then(|d| lookup(d, spec)) {
        Some(v) => (v.clone(), Source::File),
        None => (
            lookup(defaults, spec)
                .cloned()
                .unwrap_or_else(|| Value::from("")),
            Source::Default,
        ),
    };
    Row {
        key: spec.key(),
        value: shown(&v),
        source,
        takes: spec.kind.to_string(),
    }
}

fn shown(v: &Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    v.to_string()
}

/// The settings from the file at `path` (the defaults for what it does not set; all of them
/// when there is no file).
pub fn load(path: &Path) -> Result<Settings> {
    let Some(text) = read(path)? else {
        return Ok(Settings::default());
    };
    settings(&parse_doc(&text, path)?)
}

fn settings(doc: &DocumentMut) -> Result<Settings> {
    let mut s = Settings::default();
    for spec in KEYS {
        let Some(v) = lookup(doc, spec) else {
            continue;
        };
        match spec.key().as_str() {
            "p2p.maxPeers" => s.max_peers = v.as_integer().map_or(s.max_peers, |i| i as u32),
            "p2p.participation" => {
                s.participation = match v.as_str() {
                    Some("light") => Some(Participation::Light),
                    Some("routing") => Some(Participation::Routing),
                    Some("full") => Some(Participation::Full),
                    _ => None,
                }
            }
            "p2p.relayRate" => {
                s.relay_rate = v
                    .as_float()
                    .or(v.as_integer().map(|i| i as f64))
                    .unwrap_or(s.relay_rate)
            }
            "p2p.mdns" => s.mdns = v.as_bool().unwrap_or(s.mdns),
            "p2p.caching" => s.caching = v.as_bool().unwrap_or(s.caching),
            "history.sampleSeconds" => {
                s.history_interval_s = v.as_integer().map_or(s.history_interval_s, |i| i as u32)
            }
            "history.maxSamples" => {
                s.history_max_samples = v.as_integer().map_or(s.history_max_samples, |i| i as u32)
            }
            "p2p.location" => {
                s.location = v
                    .as_str()
                    .and_then(|t| beam_node::geo::parse_location(t).ok())
            }
            "limits.connectionsPerPeer" => {
                s.connections_per_peer = v.as_integer().map_or(s.connections_per_peer, |i| i as u32)
            }
            "limits.connectionsPerAddress" => {
                s.connections_per_address = v
                    .as_integer()
                    .map_or(s.connections_per_address, |i| i as u32)
            }
            "limits.handshakesPerAddress" => {
                s.handshakes_per_address = v
                    .as_integer()
                    .map_or(s.handshakes_per_address, |i| i as u32)
            }
            "limits.handshakesTotal" => {
                s.handshakes_total = v.as_integer().map_or(s.handshakes_total, |i| i as u32)
            }
            "limits.streamsPerPeer" => {
                s.streams_per_peer = v.as_integer().map_or(s.streams_per_peer, |i| i as u32)
            }
            "limits.streamsTotal" => {
                s.streams_total = v.as_integer().map_or(s.streams_total, |i| i as u32)
            }
            "limits.idleTimeout" => {
                s.idle_timeout_s = v.as_integer().map_or(s.idle_timeout_s, |i| i as u32)
            }
            "p2p.bootstrap" => {
                s.bootstrap = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str()?.parse().ok())
                    .collect()
            }
            "routing.strategy" => {
                s.strategy = match v.as_str() {
                    Some("multi-hop") => Strategy::MultiHop,
                    Some("geographic") => Strategy::Geographic,
                    _ => Strategy::Direct,
                }
            }
            "tor.enabled" => s.tor = v.as_bool().unwrap_or(s.tor),
            "logging.level" => s.log_level = v.as_str().unwrap_or("warn").to_owned(),
            other => bail!("no setting for {other}"),
        }
    }
    Ok(s)
}

/// One row of `beam config list`.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// `table.name`.
    pub key: String,
    /// The value, as TOML.
    pub value: String,
    /// Where it came from.
    pub source: Source,
    /// What the key takes.
    pub takes: String,
}

/// Every key, its value and where it came from.
pub fn list(path: &Path) -> Result<Vec<Row>> {
    let doc = read(path)?.map(|t| parse_doc(&t, path)).transpose()?;
    let defaults = example();
    Ok(KEYS
        .iter()
        .map(|spec| row(doc.as_ref(), &defaults, spec))
        .collect())
}

/// One key's value.
pub fn get(path: &Path, key: &str) -> Result<Row> {
    let spec = spec(key)?;
    let doc = read(path)?.map(|t| parse_doc(&t, path)).transpose()?;
    Ok(row(doc.as_ref(), &example(), spec))
}

/// Sets `key` to `text` in the file at `path` (created from the commented example if there is
/// none), keeping the file's comments. Nothing is written unless the value and the resulting
/// file check out.
pub fn set(path: &Path, key: &str, text: &str) -> Result<()> {
    let spec = spec(key)?;
    let mut value = parse_text(spec, text)?;
    let original = read(path)?;
    let mut doc = parse_doc(original.as_deref().unwrap_or(EXAMPLE), path)?;
    if !doc.contains_key(spec.table) {
        doc[spec.table] = toml_edit::table();
    }
    let table = doc[spec.table]
        .as_table_like_mut()
        .with_context(|| format!("{}: `{}` is not a table", path.display(), spec.table))?;
    // Replace the value in place, so the key keeps its comments (and the value its own).
    match table.get_mut(spec.name) {
        Some(slot) => {
            if let Some(old) = slot.as_value() {
                *value.decor_mut() = old.decor().clone();
            }
            *slot = Item::Value(value);
        }
        None => {
            table.insert(spec.name, Item::Value(value));
        }
    }
    let text = doc.to_string();
    settings(&parse_doc(&text, path)?)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("beam-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("config.toml")
    }

    #[test]
    fn the_example_file_holds_every_key_at_its_default() {
        let doc = parse_doc(EXAMPLE, Path::new("config.example.toml")).expect("valid");
        for spec in KEYS {
            assert!(lookup(&doc, spec).is_some(), "{} missing", spec.key());
        }
        assert_eq!(settings(&doc).expect("settings"), Settings::default());
    }

    #[test]
    fn a_bad_value_is_refused_and_the_file_left_as_it_was() {
        let path = temp("bad");
        set(&path, "p2p.maxPeers", "64").expect("set");
        let before = std::fs::read(&path).expect("written");
        for (key, text) in [
            ("p2p.maxPeers", "banana"),
            ("p2p.maxPeers", "0"),
            ("p2p.maxPeers", "10001"),
            ("p2p.relayRate", "NaN"),
            ("p2p.relayRate", "-1"),
            ("routing.strategy", "fastest"),
            ("p2p.bootstrap", "not-a-multiaddr"),
            ("tor.enabled", "maybe"),
        ] {
            let e = set(&path, key, text).expect_err(text).to_string();
            assert!(e.contains(key) && e.contains(text), "{e}");
            assert_eq!(std::fs::read(&path).expect("still there"), before);
        }
        let e = set(&path, "p2p.maxpeer", "5")
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("p2p.maxPeers") && e.contains("logging.level"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).expect("still there"), before);
    }

    #[test]
    fn set_keeps_comments_and_get_reads_back() {
        let path = temp("set");
        assert_eq!(
            get(&path, "p2p.maxPeers").expect("get").source,
            Source::Default
        );
        set(&path, "p2p.maxPeers", "64").expect("set");
        set(&path, "routing.strategy", "geographic").expect("set");
        set(
            &path,
            "p2p.bootstrap",
            "/ip4/127.0.0.1/tcp/4001, /ip4/127.0.0.2/tcp/4001",
        )
        .expect("set");
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(text.contains("# Most connections to other peers"), "{text}");
        let row = get(&path, "p2p.maxPeers").expect("get");
        assert_eq!((row.value.as_str(), row.source), ("64", Source::File));
        let s = load(&path).expect("load");
        assert_eq!(s.max_peers, 64);
        assert_eq!(s.strategy, Strategy::Geographic);
        assert_eq!(s.bootstrap.len(), 2);
        assert_eq!(s.tor, Settings::default().tor);
    }

    #[test]
    fn a_file_with_an_unknown_key_or_a_bad_value_does_not_load() {
        let path = temp("load");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, "[p2p]\nmaxpeers = 5\n").expect("write");
        let e = load(&path).expect_err("unknown key").to_string();
        assert!(
            e.contains("p2p.maxpeers") && e.contains("p2p.maxPeers"),
            "{e}"
        );
        std::fs::write(&path, "[p2p]\nmaxPeers = -3\n").expect("write");
        assert!(load(&path).is_err());
        std::fs::write(&path, "[p2p\n").expect("write");
        assert!(load(&path).is_err());
        assert_eq!(load(&temp("none")).expect("no file"), Settings::default());
    }
}
