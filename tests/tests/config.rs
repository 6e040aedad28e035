//! `beam config`, `beam completions` and `beam man` as a user runs them: the real binary, a
//! config file in a temporary directory.

use std::process::{Command, Output};

use beam_e2e::{TempDir, beam_bin};

fn beam(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(beam_bin())
        .args(args)
        .env("BEAM_CONFIG", config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run beam")
}

#[test]
fn a_bad_value_is_refused_with_the_range_and_the_file_stays_byte_identical() {
    let dir = TempDir::new("config");
    let file = dir.0.join("config.toml");
    let set = beam(&file, &["config", "set", "p2p.maxPeers", "64"]);
    assert!(set.status.success(), "{set:?}");
    let before = std::fs::read(&file).expect("the file was created");
    let bad = beam(&file, &["config", "set", "p2p.maxPeers", "banana"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("p2p.maxPeers") && err.contains("1 to 10000") && err.contains("banana"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).expect("still there"), before);
    let unknown = beam(&file, &["config", "set", "p2p.maxpeers", "5"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("p2p.maxPeers"));
    assert_eq!(std::fs::read(&file).expect("still there"), before);
    let get = beam(&file, &["config", "get", "p2p.maxPeers"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "64");
    let list = beam(&file, &["config", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let row = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"] == "p2p.maxPeers")
        .expect("listed");
    assert_eq!(
        (row["value"].as_str(), row["source"].as_str()),
        (Some("64"), Some("file"))
    );
}

#[test]
fn a_broken_config_file_stops_a_command_with_its_name_and_the_keys() {
    let dir = TempDir::new("config-broken");
    let file = dir.0.join("config.toml");
    std::fs::write(&file, "[p2p]\nmaxpeers = 5\n").expect("write");
    let out = beam(&file, &["id"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("p2p.maxPeers"),
        "{err}"
    );
}

#[test]
fn completions_and_a_man_page_come_from_the_command_definitions() {
    let dir = TempDir::new("completions");
    let file = dir.0.join("config.toml");
    let bash = beam(&file, &["completions", "bash"]);
    let text = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.status.success() && text.contains("_beam") && text.contains("connect"));
    let man = beam(&file, &["man"]);
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success() && text.contains(".TH beam 1") && text.contains("config"));
}
