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
        // Rejoined: a bootstrap peer is connected again (not just any peer that dialled in).
        let boot = last["bootstrap_connected"].as_u64().unwrap_or(0);
        let table = last["routing_table"].as_u64().unwrap_or(0);
        if bootstrap == 0 || (boot > 0 && peers > 0 && table > 0) {
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

/// The speed of light in optical fibre, km per ms (about two thirds of c): a direct RTT is at
/// least `2 × distance ÷ this`.
const FIBRE_KM_PER_MS: f64 = 200.0;

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn lat_lon(v: &serde_json::Value) -> Option<(f64, f64)> {
    Some((v.get(0)?.as_f64()?, v.get(1)?.as_f64()?))
}

/// `beam network analyze`: what the running node's measurements add up to.
pub async fn analyze(state_dir: &Path, json: bool) -> Result<()> {
    let status = control::ask(state_dir, &Request::Status, ASK).await?;
    let peers = control::ask(state_dir, &Request::Peers, ASK).await?;
    let conns = control::ask(state_dir, &Request::Connections, ASK).await?;
    let p = &status["status"]["p2p"];
    let peers = peers["peers"].as_array().cloned().unwrap_or_default();
    let here = lat_lon(&p["location"]);

    // Where the peers are (their word).
    let placed: Vec<(f64, f64, &serde_json::Value)> = peers
        .iter()
        .filter_map(|x| lat_lon(&x["location"]).map(|(a, b)| (a, b, x)))
        .collect();
    let mut regions: std::collections::BTreeMap<String, (usize, Vec<f64>, Vec<f64>)> =
        Default::default();
    for (lat, lon, x) in &placed {
        let (region, _, _) = beam_node::geo::nearest_city(*lat, *lon);
        let e = regions.entry(region.name().to_string()).or_default();
        e.0 += 1;
        if let Some(rtt) = x["rtt_ms"].as_f64() {
            e.1.push(rtt);
            if let Some((hl, ho)) = here {
                let km = beam_node::geo::haversine_km(hl, ho, *lat, *lon);
                let floor = 2.0 * km / FIBRE_KM_PER_MS;
                // Within ~50 km the floor is under half a millisecond: processing dominates.
                if km >= 50.0 {
                    e.2.push(rtt / floor);
                }
            }
        }
    }
    let mut farthest: Option<(f64, String, String)> = None;
    for (i, a) in placed.iter().enumerate() {
        for b in &placed[i + 1..] {
            let km = beam_node::geo::haversine_km(a.0, a.1, b.0, b.1);
            if farthest.as_ref().is_none_or(|f| km > f.0) {
                let name = |x: &serde_json::Value| {
                    x["peer"]
                        .as_str()
                        .unwrap_or("?")
                        .chars()
                        .skip(7)
                        .take(8)
                        .collect::<String>()
                };
                farthest = Some((km, name(a.2), name(b.2)));
            }
        }
    }
    let mut from_here: Vec<f64> = here
        .map(|(hl, ho)| {
            placed
                .iter()
                .map(|(a, b, _)| beam_node::geo::haversine_km(hl, ho, *a, *b))
                .collect()
        })
        .unwrap_or_default();

    // Routing efficiency: route RTT ÷ predicted direct RTT, per route kind.
    let mut by_kind: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut unmeasured = 0usize;
    let mut outgoing = 0usize;
    for c in conns["connections"].as_array().into_iter().flatten() {
        if c["direction"] != "out" {
            continue;
        }
        outgoing += 1;
        match (
            c["route_rtt_ms"].as_f64(),
            c["predicted_direct_ms"].as_f64(),
        ) {
            (Some(r), Some(d)) if d > 0.0 => by_kind
                .entry(c["kind"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(r / d),
            _ => unmeasured += 1,
        }
    }
    let mut all: Vec<f64> = by_kind.values().flatten().copied().collect();
    let efficiency = json!({
        "outgoing_connections": outgoing,
        "measured": all.len(),
        "unmeasured": unmeasured,
        "median": median(&mut all),
        "by_kind": by_kind.iter_mut().map(|(k, v)| (k.clone(), json!({"n": v.len(), "median": median(v)}))).collect::<serde_json::Map<_, _>>(),
    });
    let region_rows: Vec<serde_json::Value> = regions
        .iter_mut()
        .map(|(name, (n, rtts, ratios))| {
            json!({"region": name, "peers": n, "rtt_p50_ms": median(rtts), "rtt_over_fibre_p50": median(ratios)})
        })
        .collect();
    let out = json!({
        "peers_connected": p["peers_connected"],
        "routing_table": p["routing_table"],
        "network_size_estimate": p["network_size_estimate"],
        "peer_rtt_p50_ms": p["peer_rtt_p50_ms"],
        "dht_health": p["dht_health"],
        "dht_operations": p["dht_operations"],
        "geography": {
            "declared": placed.len(),
            "undeclared": peers.len() - placed.len(),
            "here": p["location"],
            "regions": region_rows,
            "farthest_pair_km": farthest.as_ref().map(|f| f.0.round()),
            "median_distance_from_here_km": median(&mut from_here).map(f64::round),
        },
        "routing_efficiency": efficiency,
    });
    if json {
        println!("{out}");
        return Ok(());
    }
    let est = p["network_size_estimate"]
        .as_f64()
        .map_or("not measured yet".into(), |e| format!("~{e:.0} peers"));
    println!(
        "peers:               {} connected, {} in the routing table; network {est}",
        p["peers_connected"], p["routing_table"]
    );
    println!(
        "DHT health:          {}",
        p["dht_health"]
            .as_f64()
            .map_or("no operation yet".into(), |h| format!(
                "{:.0} % of the last {} operations reached their goal",
                h * 1e2,
                p["dht_operations"]
            ))
    );
    println!(
        "geographic spread:   {} of {} peers declared a place{}",
        placed.len(),
        peers.len(),
        farthest.as_ref().map_or(String::new(), |f| format!(
            "; farthest apart {:.0} km ({} – {})",
            f.0, f.1, f.2
        ))
    );
    match &out["geography"]["median_distance_from_here_km"] {
        serde_json::Value::Number(km) => {
            println!(
                "                     median {:.0} km from here",
                km.as_f64().unwrap_or(0.0)
            );
        }
        _ if here.is_none() => println!(
            "                     (declare this node's place with --location to measure distances from here)"
        ),
        _ => {}
    }
    if !region_rows.is_empty() {
        println!("latency map:         region            peers  RTT p50   RTT ÷ fibre minimum");
        for r in &region_rows {
            let rtt = r["rtt_p50_ms"]
                .as_f64()
                .map_or("   –    ".into(), |v| format!("{v:6.1} ms"));
            let ratio = r["rtt_over_fibre_p50"]
                .as_f64()
                .map_or("–".into(), |v| format!("{v:.2}×"));
            println!(
                "                     {:<17} {:>5}  {rtt}  {ratio}",
                r["region"].as_str().unwrap_or("?"),
                r["peers"]
            );
        }
        if region_rows
            .iter()
            .any(|r| r["rtt_over_fibre_p50"].as_f64().is_some_and(|v| v < 1.0))
        {
            println!(
                "                     (below 1×: faster than light in fibre allows, so those \
                 peers are nearer than they declare, or this node's --location is wrong)"
            );
        }
    }
    let e = &out["routing_efficiency"];
    match e["median"].as_f64() {
        Some(m) => {
            let kinds: Vec<String> = e["by_kind"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    format!(
                        "{k} {:.2} (n={})",
                        v["median"].as_f64().unwrap_or(f64::NAN),
                        v["n"]
                    )
                })
                .collect();
            println!(
                "routing efficiency:  {m:.2} (median route RTT ÷ predicted direct RTT over {} connections: {}){}",
                e["measured"],
                kinds.join(", "),
                if unmeasured > 0 {
                    format!("; {unmeasured} not measured (no coordinates yet)")
                } else {
                    String::new()
                }
            );
        }
        None if outgoing == 0 => println!(
            "routing efficiency:  no outgoing tunnel yet (it is measured on `beam connect` tunnels)"
        ),
        None => println!(
            "routing efficiency:  not measured: {outgoing} outgoing connections, none with network coordinates on both ends yet"
        ),
    }
    Ok(())
}

/// `beam network optimize` (`geo` false) and `optimize-geo` (true).
pub async fn optimize(state_dir: &Path, geo: bool, json: bool) -> Result<()> {
    let v = control::ask(state_dir, &Request::Optimize { geo }, ASK).await?;
    let o = &v["optimized"];
    if json {
        println!("{o}");
        return Ok(());
    }
    let by = if geo {
        "the RTT network coordinates predict"
    } else {
        "the libp2p ping RTT measured"
    };
    println!(
        "ranked {} of {} routing-table entries by {by}",
        o["ranked"], o["entries"]
    );
    let swaps = o["swaps"].as_array().cloned().unwrap_or_default();
    if swaps.is_empty() {
        println!(
            "routing table: unchanged (no replacement is more than 10 % nearer than an entry of its bucket)"
        );
    }
    let short = |v: &serde_json::Value| {
        v.as_str()
            .unwrap_or("?")
            .chars()
            .skip(7)
            .take(8)
            .collect::<String>()
    };
    for s in &swaps {
        println!(
            "swapped:       {} ({:.1} ms) out, {} ({:.1} ms) in",
            short(&s["out"]),
            s["out_ms"].as_f64().unwrap_or(f64::NAN),
            short(&s["into"]),
            s["into_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "refreshing:    {} bucket lookups started (fresh peers for the table)",
        o["refreshing"]
    );
    let before: Vec<String> = o["relays_before"]
        .as_array()
        .into_iter()
        .flatten()
        .map(short)
        .collect();
    let after: Vec<String> = o["relays_after"]
        .as_array()
        .into_iter()
        .flatten()
        .map(short)
        .collect();
    if !before.is_empty() {
        if before == after {
            println!("relays:        unchanged ({})", before.join(", "));
        } else {
            println!(
                "relays:        {} → {} (the service record is published again)",
                before.join(", "),
                after.join(", ")
            );
        }
    } else if geo {
        println!(
            "relays:        none to choose (this node is reachable, or not a service behind a NAT)"
        );
    }
    if o["ranked"] == 0 {
        println!(
            "note:          no entry had an RTT to rank by yet{}",
            if geo {
                " (coordinates come with DHT traffic)"
            } else {
                " (pings run every 15 s on connected peers)"
            }
        );
    }
    Ok(())
}

/// `beam network probe`: the running node looks `target` up `count` times afresh and opens a
/// tunnel on the route `strategy` chooses after each lookup; prints each round and the medians.
pub async fn probe(
    state_dir: &Path,
    target: &str,
    count: u32,
    strategy: &str,
    json: bool,
) -> Result<()> {
    // Checked here too, for an error before anything is asked.
    target
        .parse::<beam_node::app::ServiceRef>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !(1..=control::MAX_PROBE_ROUNDS).contains(&count) {
        bail!(
            "--count takes 1 to {}, not {count}",
            control::MAX_PROBE_ROUNDS
        );
    }
    if !json {
        eprintln!("probing {target}: {count} rounds of a fresh lookup and a tunnel ({strategy})");
    }
    let req = Request::Probe {
        target: target.to_string(),
        count,
        strategy: strategy.to_string(),
    };
    // A round is a lookup (a few seconds at worst) and a tunnel (its retries included).
    let v = control::ask(state_dir, &req, Duration::from_secs(30) * count).await?;
    let rounds = v["rounds"].as_array().cloned().unwrap_or_default();
    let column =
        |key: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[key].as_f64()).collect() };
    let mut lookups: Vec<f64> = rounds
        .iter()
        .filter(|r| r["found"].as_bool() == Some(true))
        .filter_map(|r| r["lookup_ms"].as_f64())
        .collect();
    let (mut setups, mut rtts) = (column("setup_ms"), column("route_rtt_ms"));
    let opened = rtts.len();
    let summary = serde_json::json!({
        "target": target,
        "strategy": strategy,
        "rounds": rounds,
        "found": lookups.len(),
        "opened": opened,
        "lookup_p50_ms": median(&mut lookups),
        "setup_p50_ms": median(&mut setups),
        "route_rtt_p50_ms": median(&mut rtts),
    });
    if json {
        println!("{summary}");
        return Ok(());
    }
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1} ms"));
    for (i, r) in rounds.iter().enumerate() {
        let what = match (r["route"].as_str(), r["error"].as_str()) {
            (Some(route), None) => format!(
                "{route}: setup {}, round trip {}",
                ms(&r["setup_ms"]),
                ms(&r["route_rtt_ms"])
            ),
            (Some(route), Some(e)) => format!("{route}: {e}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => String::new(),
        };
        println!("{:>3}  lookup {:>9}  {what}", i + 1, ms(&r["lookup_ms"]));
    }
    println!(
        "found {} of {} · lookup p50 {} · tunnel setup p50 {} · route round trip p50 {} ({} opened)",
        lookups.len(),
        rounds.len(),
        ms(&summary["lookup_p50_ms"]),
        ms(&summary["setup_p50_ms"]),
        ms(&summary["route_rtt_p50_ms"]),
        opened
    );
    if opened < rounds.len() {
        bail!(
            "{} of {} rounds failed",
            rounds.len() - opened,
            rounds.len()
        );
    }
    Ok(())
}
