//! `beam network test connectivity | test | test-config | restart | reset | diagnose |
//! report-issue`: checking and repairing a node, and reporting on it.
//!
//! The checks that need the running node ask it through the control socket
//! ([`crate::control`]); `test-config` and the bootstrap check need none: they read the file
//! and dial the bootstrap peers from a throwaway identity ([`crate::p2p::probe`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::config;
use crate::control::{self, Request};

const ASK: Duration = Duration::from_secs(10);

/// `beam network test connectivity`: prints what the node knows; `Ok(false)` when nobody can
/// reach it (AutoNAT says private and no relay holds a reservation for it).
pub async fn connectivity(state_dir: &Path, json: bool) -> Result<bool> {
    let v = control::ask(state_dir, &Request::Connectivity, ASK).await?;
    let c = &v["connectivity"];
    let unreachable = c["reachability"] == "private" && c["reservations"].as_u64() == Some(0);
    if json {
        println!("{c}");
        return Ok(!unreachable);
    }
    let reach = match c["reachability"].as_str() {
        Some("public") => format!(
            "public: peers dialled this node back{}",
            c["public_address"]
                .as_str()
                .map_or(String::new(), |a| format!(" at {a}"))
        ),
        Some("private") => {
            "private: peers could not dial this node back (a NAT or a firewall)".into()
        }
        _ => "unknown: AutoNAT has not decided yet (it asks peers to dial back within ~10 s of \
              joining)"
            .into(),
    };
    println!("reachability:  {reach}");
    let mapping = serde_json::from_value::<crate::p2p::nat::Mapping>(c["mapping"].clone())
        .map_or("?", |m| m.explain());
    println!("NAT mapping:   {mapping}");
    for (addr, n) in c["observed"].as_object().into_iter().flatten() {
        println!(
            "seen as:       {addr} (by {n} peer{})",
            if n == 1 { "" } else { "s" }
        );
    }
    let p = &c["hole_punches"];
    let (ok, failed) = (
        p["succeeded"].as_u64().unwrap_or(0),
        p["failed"].as_u64().unwrap_or(0),
    );
    if ok + failed == 0 {
        println!(
            "hole punching: not tried yet (it is tried when a tunnel reaches a peer behind a NAT \
             through a relay)"
        );
    } else {
        let last = p["last_error"]
            .as_str()
            .map_or(String::new(), |e| format!("; last failure: {e}"));
        println!("hole punching: {ok} succeeded, {failed} failed{last}");
    }
    println!(
        "relays:        {} reservations accepted (behind a NAT, relays carry this node's tunnels)",
        c["reservations"]
    );
    if unreachable {
        println!(
            "problem:       nobody can reach this node: it is private and no relay holds a reservation for it"
        );
    }
    Ok(!unreachable)
}

/// `beam network restart` (`forget` false) and `beam network reset` (true).
pub async fn reconnect(
    state_dir: &Path,
    forget: bool,
    force: bool,
    wait: Duration,
    json: bool,
) -> Result<()> {
    let s = control::ask(state_dir, &Request::Status, ASK).await?;
    let open = s["status"]["tunnels_open"].as_u64().unwrap_or(0);
    if open > 0 && !force {
        bail!(
            "{open} tunnel connection{} open and would be cut; run again with --force to {} anyway",
            if open == 1 { " is" } else { "s are" },
            if forget { "reset" } else { "restart" }
        );
    }
    let v = control::ask(state_dir, &Request::Reconnect { forget }, ASK).await?;
    let r = &v["reconnected"];
    let bootstrap = r["bootstrap"].as_u64().unwrap_or(0);
    if !json {
        println!(
            "disconnected from {} peer{}{}; joining again from {bootstrap} bootstrap peer{}",
            r["disconnected"],
            if r["disconnected"] == 1 { "" } else { "s" },
            if forget {
                format!(
                    ", forgot {} routing-table entries, {} relays' trust and {} peer addresses \
                     (the identity is kept)",
                    r["forgotten"]["contacts"],
                    r["forgotten"]["trusted_relays"],
                    r["addresses_forgotten"]
                )
            } else {
                String::new()
            },
            if bootstrap == 1 { "" } else { "s" }
        );
    }
    // Wait for the rejoin, showing it.
    let start = Instant::now();
    let mut last = json!(null);
    let rejoined = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = control::ask(state_dir, &Request::Status, ASK).await?;
        last = s["status"]["p2p"].clone();
        let peers = last["peers_connected"].as_u64().unwrap_or(0);
        if bootstrap == 0 || (peers > 0 && last["routing_table"].as_u64().unwrap_or(0) > 0) {
            break true;
        }
        if start.elapsed() >= wait {
            break false;
        }
    };
    if json {
        println!(
            "{}",
            json!({"reconnected": r, "rejoined": rejoined, "after_s": start.elapsed().as_secs_f64(),
                   "peers_connected": last["peers_connected"], "routing_table": last["routing_table"]})
        );
    } else if rejoined {
        println!(
            "rejoined in {:.1} s: {} peers connected, {} in the routing table",
            start.elapsed().as_secs_f64(),
            last["peers_connected"],
            last["routing_table"]
        );
    } else {
        println!(
            "not rejoined after {} s (0 peers); the node keeps trying its bootstrap peers — see \
             `beam network test`",
            wait.as_secs()
        );
    }
    if rejoined {
        Ok(())
    } else {
        bail!("the node has not rejoined the network yet")
    }
}

/// One check of `beam network test` / `test-config`.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// `beam network test-config`: the file, and each bootstrap peer dialled. `Ok(checks)`; the
/// caller exits non-zero when one failed.
pub async fn test_config(
    path: &Path,
    bootstrap: &[libp2p::Multiaddr],
    allow_private: bool,
) -> Vec<Check> {
    let mut checks = vec![];
    let settings = match config::load(path) {
        Ok(s) => {
            checks.push(Check {
                check: "config file".into(),
                ok: true,
                detail: if path.exists() {
                    format!("{} reads and every value is in range", path.display())
                } else {
                    format!("{} does not exist: the defaults apply", path.display())
                },
            });
            Some(s)
        }
        Err(e) => {
            checks.push(Check {
                check: "config file".into(),
                ok: false,
                detail: format!("{e:#}"),
            });
            None
        }
    };
    let addrs: Vec<libp2p::Multiaddr> = if bootstrap.is_empty() {
        settings.map(|s| s.bootstrap).unwrap_or_default()
    } else {
        bootstrap.to_vec()
    };
    if addrs.is_empty() {
        checks.push(Check {
            check: "bootstrap peers".into(),
            ok: true,
            detail: "none configured: this node starts a network of its own (or finds peers on \
                     the LAN with mDNS)"
                .into(),
        });
    }
    for (addr, result) in
        crate::p2p::probe::dial_all(&addrs, Duration::from_secs(5), allow_private).await
    {
        checks.push(Check {
            check: format!("bootstrap {addr}"),
            ok: result.is_ok(),
            detail: match result {
                Ok(p) => format!(
                    "answered in {:.0} ms as {}",
                    p.handshake.as_secs_f64() * 1e3,
                    p.peer
                ),
                Err(e) => e,
            },
        });
    }
    checks
}

/// `beam network test`: `test-config`'s checks, then the running node's health and
/// reachability (a node that is not running is a failed check).
pub async fn test_all(
    state_dir: &Path,
    path: &Path,
    bootstrap: &[libp2p::Multiaddr],
    allow_private: bool,
) -> Vec<Check> {
    let mut checks = test_config(path, bootstrap, allow_private).await;
    match control::ask(state_dir, &Request::Status, ASK).await {
        Err(e) => checks.push(Check {
            check: "running node".into(),
            ok: false,
            detail: format!("{e:#}"),
        }),
        Ok(v) => {
            let p = &v["status"]["p2p"];
            let peers = p["peers_connected"].as_u64().unwrap_or(0);
            checks.push(Check {
                check: "running node".into(),
                ok: true,
                detail: format!(
                    "{}, up {} s",
                    p["peer_id"].as_str().unwrap_or("?"),
                    v["status"]["uptime_s"]
                ),
            });
            let known = p["bootstrap_known"].as_u64().unwrap_or(0);
            checks.push(Check {
                check: "peers".into(),
                ok: peers > 0 || known == 0,
                detail: format!(
                    "{peers} connected, {} in the routing table; {} of {known} bootstrap peers connected",
                    p["routing_table"], p["bootstrap_connected"]
                ),
            });
            let health = p["dht_health"].as_f64();
            checks.push(Check {
                check: "DHT".into(),
                ok: health.is_none_or(|h| h >= 0.5),
                detail: health.map_or("no operation yet".into(), |h| {
                    format!(
                        "{:.0} % of the last {} operations reached their goal",
                        h * 1e2,
                        p["dht_operations"]
                    )
                }),
            });
            if let Ok(c) = control::ask(state_dir, &Request::Connectivity, ASK).await {
                let c = &c["connectivity"];
                let unreachable =
                    c["reachability"] == "private" && c["reservations"].as_u64() == Some(0);
                checks.push(Check {
                    check: "reachability".into(),
                    ok: !unreachable,
                    detail: format!(
                        "{}; NAT mapping {}; {} relay reservations",
                        c["reachability"].as_str().unwrap_or("?"),
                        c["mapping"].as_str().unwrap_or("?"),
                        c["reservations"]
                    ),
                });
            }
        }
    }
    checks
}

/// Prints checks; `true` when all passed.
pub fn print_checks(checks: &[Check], json: bool) -> bool {
    let ok = checks.iter().all(|c| c.ok);
    if json {
        println!("{}", json!({"ok": ok, "checks": checks}));
    } else {
        for c in checks {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.check,
                c.detail
            );
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        if failed > 0 {
            println!("{failed} of {} checks failed", checks.len());
        } else {
            println!("all {} checks passed", checks.len());
        }
    }
    ok
}

/// `beam diagnose` / `beam network report-issue`: the report's text. Never reads a key file
/// or the access token; every address but the node's own is scrubbed.
pub async fn report(state_dir: &Path, config_path: &Path, problem: Option<&str>) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# beam diagnostic report");
    let _ = writeln!(r);
    if let Some(p) = problem {
        let _ = writeln!(r, "## The problem, as reported\n\n{p}\n");
    }
    let _ = writeln!(
        r,
        "written:         {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let _ = writeln!(
        r,
        "beam:            {} (features: {})",
        env!("CARGO_PKG_VERSION"),
        if cfg!(feature = "tor") { "tor" } else { "none" }
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        r,
        "system:          {} {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        kernel.trim()
    );
    let _ = writeln!(r, "state directory: {}", state_dir.display());
    match std::fs::read_dir(state_dir) {
        Ok(entries) => {
            let mut names: Vec<(String, u64)> = entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map_or(0, |m| m.len()),
                    )
                })
                .collect();
            names.sort();
            for (n, len) in names {
                let _ = writeln!(
                    r,
                    "                 {n} ({len} bytes; contents not included)"
                );
            }
        }
        Err(e) => {
            let _ = writeln!(r, "                 (cannot list it: {e})");
        }
    }
    let _ = writeln!(r, "config file:     {}", config_path.display());
    let _ = writeln!(r, "\n## Configuration (file and defaults)\n");
    match config::list(config_path) {
        Ok(rows) => {
            for row in rows {
                let _ = writeln!(
                    r,
                    "{} = {}{}",
                    row.key,
                    row.value,
                    match row.source {
                        config::Source::File => "",
                        config::Source::Default => "   (default)",
                    }
                );
            }
        }
        Err(e) => {
            let _ = writeln!(r, "the file does not read: {e:#}");
        }
    }
    let _ = writeln!(r, "\n## The running node\n");
    match control::ask(state_dir, &Request::Diagnose, ASK).await {
        Err(e) => {
            let _ = writeln!(r, "{e:#}");
        }
        Ok(v) => {
            let s = &v["status"];
            // The node's own addresses stay in clear; peers' are scrubbed.
            for a in s["p2p"]["listen"].as_array().into_iter().flatten() {
                if let Some(ip) = a
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .and_then(|a| crate::p2p::addr::ip_of(&a))
                {
                    crate::logs::own(ip.to_string());
                }
            }
            if let Some(o) = s["onion_address"].as_str() {
                crate::logs::own(o);
            }
            let _ = writeln!(r, "{}", serde_json::to_string_pretty(s).unwrap_or_default());
            let recent = v["recent"].as_array().cloned().unwrap_or_default();
            let _ = writeln!(
                r,
                "\n## Recent warnings and errors ({} kept, newest last)\n",
                recent.len()
            );
            if recent.is_empty() {
                let _ = writeln!(r, "none since the node started");
            }
            for e in recent {
                let t = e["t"].as_u64().unwrap_or(0);
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(t.min(1 << 40)),
                );
                let _ = writeln!(
                    r,
                    "{when} {} {}: {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["target"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or("?")
                );
            }
        }
    }
    crate::logs::scrub(&r)
}

/// Writes a report to `output` (`-`: stdout), or to `<prefix>-<time>.txt` here.
pub fn write_report(text: &str, output: Option<&Path>, prefix: &str) -> Result<Option<PathBuf>> {
    let path = match output {
        Some(p) if p == Path::new("-") => {
            print!("{text}");
            return Ok(None);
        }
        Some(p) => p.to_path_buf(),
        None => {
            let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string()
                .replace(':', "");
            PathBuf::from(format!("{prefix}-{t}.txt"))
        }
    };
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}
