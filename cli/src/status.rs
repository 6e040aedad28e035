//! `beam status` and `beam tor status`: ask the running `beam` through its control socket
//! ([`crate::control`]) and print what it measured.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::control::{self, Request};
use crate::serve::bytes;

/// `beam status [--json]`.
pub async fn node(state_dir: &Path, json: bool) -> Result<()> {
    let v = control::ask(state_dir, &Request::Status, Duration::from_secs(10)).await?;
    let s = &v["status"];
    if json {
        println!("{s}");
        return Ok(());
    }
    let p = &s["p2p"];
    println!("{}", p["peer_id"].as_str().unwrap_or("?"));
    if let Some(name) = s["name"].as_str() {
        println!("name:          {name}");
    }
    if let Some(onion) = s["onion_address"].as_str() {
        println!("Tor URL:       http://{onion}");
    }
    let t = &s["tor"];
    if t.is_object() {
        let reachable = match t["reachable"].as_bool() {
            Some(true) => "reachable",
            Some(false) => "not reachable",
            None => "reachability not measured yet",
        };
        println!(
            "Tor:           {} ({} % bootstrapped), {reachable}; {} circuits in use, {} visitor \
             streams open (beam tor status for more)",
            t["state"].as_str().unwrap_or("?"),
            t["bootstrap_percent"],
            t["circuits_in_use"],
            t["streams_open"],
        );
    }
    match s["forwarding_to"].as_u64() {
        Some(port) => println!("forwarding to: 127.0.0.1:{port}"),
        None => println!("forwarding to: nothing (a node that exposes nothing)"),
    }
    if s["auth_required"].as_bool() == Some(true) {
        println!(
            "access:        token required; {} tunnels refused without it",
            s["auth_refused"]
        );
    }
    println!(
        "participation: {}",
        p["participation"].as_str().unwrap_or("?")
    );
    if let Some(region) = p["region"].as_str() {
        println!(
            "location:      {region} (declared with --location or p2p.location; sent to peers)"
        );
    }
    for a in p["listen"].as_array().into_iter().flatten() {
        println!("listening:     {}", a.as_str().unwrap_or("?"));
    }
    let estimate = p["network_size_estimate"]
        .as_f64()
        .map_or("not yet measured".to_string(), |e| format!("~{e:.0} peers"));
    println!(
        "peers:         {} connected, {} in the routing table; network {estimate}",
        p["peers_connected"], p["routing_table"]
    );
    let health = p["dht_health"]
        .as_f64()
        .map_or("no DHT operation yet".to_string(), |h| {
            format!(
                "{:.0} % of the last {} operations reached their goal",
                h * 1e2,
                p["dht_operations"]
            )
        });
    println!("DHT health:    {health}");
    let c = &p["cache"];
    if c.is_object() {
        println!(
            "cache:         {} records held (p2p.caching); {} lookups answered from it, {} copies \
             given to peers on lookup paths, {} taken, {} served",
            c["copies"], c["hits"], c["pushed"], c["stored"], c["served"]
        );
    }
    let rtt = p["peer_rtt_p50_ms"]
        .as_f64()
        .map_or("not measured yet".to_string(), |r| format!("{r:.1} ms"));
    println!("peer RTT p50:  {rtt} (libp2p ping of the connected peers)");
    println!(
        "bandwidth:     in {}/s, out {}/s (tunnels, last 10 s)",
        bytes(p["rate_in_bps"].as_f64().unwrap_or(0.0) as u64),
        bytes(p["rate_out_bps"].as_f64().unwrap_or(0.0) as u64),
    );
    println!(
        "tunnels:       {} open, {} in total; in {}, out {}; relayed for others {}",
        s["tunnels_open"],
        s["tunnels_total"],
        bytes(s["bytes_in"].as_u64().unwrap_or(0)),
        bytes(s["bytes_out"].as_u64().unwrap_or(0)),
        bytes(s["bytes_relayed"].as_u64().unwrap_or(0)),
    );
    let cap = s["relay_rate"]
        .as_u64()
        .map_or("no cap".to_string(), |r| format!("{}/s per peer", bytes(r)));
    println!(
        "relay cap:     {cap}; peers made to wait {} times",
        s["relay_throttled"]
    );
    let l = &s["limits"];
    if l.is_object() {
        let idle = l["idle_timeout_s"]
            .as_u64()
            .map_or("never".to_string(), |t| format!("after {t} s"));
        println!(
            "limits:        {} streams open; refused {} over {} per peer, {} over {} in total; \
             idle closed {idle}: {} times",
            l["streams_open"],
            l["refused_per_peer"],
            l["streams_per_peer"],
            l["refused_total"],
            l["streams_total"],
            l["idle_closed"],
        );
        println!(
            "               connections refused (p2p.maxPeers, limits.connections*): {} · \
             handshakes refused (limits.handshakes*): {} · circuits refused: {} · tunnel \
             streams retried: {}",
            l["connections_refused"],
            l["handshakes_refused"],
            l["circuits_refused"],
            l["open_retries"],
        );
    }
    println!(
        "records held:  {} · malformed messages dropped: {} · up {} s",
        p["records_held"], p["malformed_in"], s["uptime_s"]
    );
    Ok(())
}

/// Asks for the list under `key`; prints it as JSON (with `json`) or `empty` when there is
/// nothing, and returns it only when the caller should print it as text.
async fn list(
    state_dir: &Path,
    req: Request,
    key: &str,
    json: bool,
    empty: &str,
) -> Result<Option<Vec<Value>>> {
    let v = control::ask(state_dir, &req, Duration::from_secs(10)).await?;
    let list = v[key].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", Value::Array(list));
        return Ok(None);
    }
    if list.is_empty() {
        println!("{empty}");
        return Ok(None);
    }
    Ok(Some(list))
}

/// One check of `beam network health`.
#[derive(serde::Serialize)]
struct Check {
    check: &'static str,
    ok: bool,
    detail: String,
}

/// `beam network health [--json]`; `Ok(false)` when a check failed.
pub async fn health(state_dir: &Path, json: bool) -> Result<bool> {
    let v = control::ask(state_dir, &Request::Status, Duration::from_secs(10)).await?;
    let p = &v["status"]["p2p"];
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let (connected, table) = (n("peers_connected"), n("routing_table"));
    let (boot, known) = (n("bootstrap_connected"), n("bootstrap_known"));
    let dht = p["dht_health"].as_f64();
    let reach = p["reachability"].as_str().unwrap_or("unknown").to_string();
    let checks = [
        Check {
            check: "peers",
            ok: connected > 0,
            detail: format!("{connected} connected"),
        },
        Check {
            check: "bootstrap",
            ok: known == 0 || boot > 0,
            detail: if known == 0 {
                "none given (started a network, or found peers on the LAN)".into()
            } else {
                format!("{boot} of {known} connected")
            },
        },
        Check {
            check: "routing table",
            ok: table > 0,
            detail: format!("{table} DHT servers"),
        },
        Check {
            check: "DHT",
            ok: dht.is_none_or(|h| h >= 0.5),
            detail: dht.map_or("no operation yet".into(), |h| {
                format!(
                    "{:.0} % of the last {} operations reached their goal",
                    h * 1e2,
                    n("dht_operations")
                )
            }),
        },
        Check {
            check: "reachability",
            ok: true,
            detail: match reach.as_str() {
                "public" => "public: peers can dial this node".into(),
                "private" => {
                    "private (behind a NAT): reached through relays and hole punching".into()
                }
                _ => "not decided yet (AutoNAT)".into(),
            },
        },
    ];
    let healthy = checks.iter().all(|c| c.ok);
    if json {
        println!(
            "{}",
            serde_json::json!({"healthy": healthy, "checks": checks})
        );
    } else {
        for c in &checks {
            println!(
                "{} {:<14} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.check,
                c.detail
            );
        }
        println!("{}", if healthy { "healthy" } else { "not healthy" });
    }
    Ok(healthy)
}

/// `beam network my-stats [--json]`.
pub async fn my_stats(state_dir: &Path, json: bool) -> Result<()> {
    let v = control::ask(state_dir, &Request::Status, Duration::from_secs(10)).await?;
    let s = &v["status"];
    let mine = serde_json::json!({
        "participation": s["p2p"]["participation"],
        "circuits_relayed": s["circuits_relayed"],
        "peers_helped": s["peers_helped"],
        "bytes_relayed": s["bytes_relayed"],
        "tunnels_total": s["tunnels_total"],
        "uptime_s": s["uptime_s"],
        "records_held": s["p2p"]["records_held"],
    });
    if json {
        println!("{mine}");
        return Ok(());
    }
    println!(
        "participation:    {}",
        mine["participation"].as_str().unwrap_or("?")
    );
    println!(
        "routes provided:  {} circuits relayed for {} distinct peers, {} relayed",
        mine["circuits_relayed"],
        mine["peers_helped"],
        bytes(mine["bytes_relayed"].as_u64().unwrap_or(0))
    );
    println!("tunnels:          {} served or made", mine["tunnels_total"]);
    println!("records held:     {} for others", mine["records_held"]);
    println!("uptime:           {} s", mine["uptime_s"]);
    Ok(())
}

/// `beam network peers [--json]`.
pub async fn peers(state_dir: &Path, json: bool, geo: bool) -> Result<()> {
    let Some(list) = list(
        state_dir,
        Request::Peers,
        "peers",
        json,
        "no peers connected",
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "{:<60} {:>9}  {:<3} {:<5} ADDRESS",
        "PEER", "RTT", "DIR", "DHT"
    );
    for p in &list {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1} ms"));
        let id = p["peer"]
            .as_str()
            .or(p["libp2p_id"].as_str())
            .unwrap_or("?");
        let relayed = if p["relayed"].as_bool() == Some(true) {
            " (relayed)"
        } else {
            ""
        };
        println!(
            "{id:<60} {rtt:>9}  {:<3} {:<5} {}{relayed}",
            p["direction"].as_str().unwrap_or("?"),
            if p["in_routing_table"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            p["address"].as_str().unwrap_or("?"),
        );
    }
    if geo {
        println!();
        println!("{:<60} {:<16} REGION", "PEER", "LOCATION");
        for p in &list {
            let id = p["peer"]
                .as_str()
                .or(p["libp2p_id"].as_str())
                .unwrap_or("?");
            let at = p["location"].as_array().map_or("-".to_string(), |a| {
                format!(
                    "{:.2},{:.2}",
                    a[0].as_f64().unwrap_or(0.0),
                    a[1].as_f64().unwrap_or(0.0)
                )
            });
            let region = p["region"].as_str().unwrap_or("not declared");
            println!("{id:<60} {at:<16} {region}");
        }
        let declared = list.iter().filter(|p| p["location"].is_array()).count();
        println!(
            "{declared} of {} peers declared where they are (--location: their word, not \
             measured)",
            list.len()
        );
    }
    println!("{} peers", list.len());
    Ok(())
}

/// `beam status --connections [--json]`: the connection inspector.
pub async fn connections(state_dir: &Path, json: bool) -> Result<()> {
    let Some(list) = list(
        state_dir,
        Request::Connections,
        "connections",
        json,
        "no tunnel connections yet",
    )
    .await?
    else {
        return Ok(());
    };
    for c in &list {
        let via: Vec<&str> = c["via"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let route = match (c["kind"].as_str().unwrap_or("?"), via.is_empty()) {
            (k, true) => k.to_string(),
            (k, false) => format!("{k} via {}", via.join(", ")),
        };
        let arrow = if c["direction"] == "in" { "from" } else { "to" };
        let state = match (c["open"].as_bool(), c["ended_s_ago"].as_f64()) {
            (Some(true), _) => "open".to_string(),
            (_, Some(ago)) => format!("ended {ago:.0} s ago"),
            _ => "ended".to_string(),
        };
        let rtt = c["first_hop_rtt_ms"]
            .as_f64()
            .map_or("not measured".to_string(), |r| format!("{r:.1} ms"));
        println!(
            "#{} {} {arrow} {}: {route} · {state}, {:.1} s",
            c["id"],
            c["direction"].as_str().unwrap_or("?"),
            c["peer"].as_str().unwrap_or("?"),
            c["duration_s"].as_f64().unwrap_or(0.0),
        );
        println!(
            "    in {}, out {} · setup {:.1} ms · first hop RTT {rtt}",
            bytes(c["bytes_in"].as_u64().unwrap_or(0)),
            bytes(c["bytes_out"].as_u64().unwrap_or(0)),
            c["setup_ms"].as_f64().unwrap_or(0.0),
        );
        println!("    why: {}", c["why"].as_str().unwrap_or("?"));
        if let Some(e) = c["error"].as_str() {
            println!("    failed: {e}");
        }
    }
    Ok(())
}

/// `beam tor status [--json]`.
pub async fn tor(state_dir: &Path, json: bool) -> Result<()> {
    // The answer may wait for a self-test through the Tor network (up to 30 s).
    let v = control::ask(state_dir, &Request::Tor, Duration::from_secs(45)).await?;
    let t = &v["tor"];
    if json {
        println!("{t}");
        return Ok(());
    }
    let state = t["state"].as_str().unwrap_or("?");
    let detail = t["detail"].as_str().unwrap_or("");
    match state {
        "running" => println!(
            "Tor:            running, bootstrapped in {:.1} s ({detail})",
            t["bootstrap_ms"].as_f64().unwrap_or(0.0) / 1e3
        ),
        "bootstrapping" => println!(
            "Tor:            bootstrapping, {}% ({detail})",
            t["bootstrap_percent"]
        ),
        _ => println!("Tor:            {state}: {detail}"),
    }
    if let Some(onion) = t["onion_address"].as_str() {
        let to = t["local_port"]
            .as_u64()
            .map_or(String::new(), |p| format!(" → 127.0.0.1:{p}"));
        println!("onion service:  http://{onion}{to}");
        match t["restricted_clients"].as_u64() {
            Some(n) => println!(
                "discovery:      restricted to {n} authorized clients (beam tor client list)"
            ),
            None => println!("discovery:      open (anyone with the address)"),
        }
        let test = &t["self_test"];
        let test_text = if test.is_null() && !t["restricted_clients"].is_null() {
            "not possible in restricted mode (this node holds no client key)".to_string()
        } else if test.is_null() {
            "not run yet".to_string()
        } else if test["reachable"] == Value::Bool(true) {
            format!(
                "rendezvous in {} ms, {} s ago",
                test["took_ms"], t["self_test_age_s"]
            )
        } else {
            format!(
                "failed after {} ms, {} s ago: {}",
                test["took_ms"],
                t["self_test_age_s"],
                test["error"].as_str().unwrap_or("?")
            )
        };
        match (&t["reachable"], t["reachable_by"].as_str()) {
            (Value::Bool(true), Some("rendezvous")) => println!(
                "reachable:      yes (a rendezvous through the Tor network completed {} s ago)",
                t["last_rendezvous_age_s"]
            ),
            (Value::Bool(true), _) => println!("reachable:      yes (self-test: {test_text})"),
            (Value::Bool(false), _) => println!("reachable:      no (self-test: {test_text})"),
            _ => println!("reachable:      not measured yet"),
        }
        println!("self-test:      {test_text}");
        println!(
            "Arti's view:    {}{}",
            t["service_state"].as_str().unwrap_or("?"),
            t["service_problem"]
                .as_str()
                .map_or(String::new(), |p| format!(" ({p})"))
        );
    }
    println!(
        "circuits:       {} in use · introductions {} · rendezvous failed {} · self-tests {}",
        t["circuits_in_use"], t["introductions"], t["rendezvous_failed"], t["probes"]
    );
    println!(
        "visitors:       {} streams open, {} in total, {} refused · in {} · out {}",
        t["streams_open"],
        t["streams_total"],
        t["streams_refused"],
        bytes(t["bytes_in"].as_u64().unwrap_or(0)),
        bytes(t["bytes_out"].as_u64().unwrap_or(0)),
    );
    Ok(())
}

/// The period read from `period` and the history's samples in it.
fn history_of(state_dir: &Path, period: &str) -> Result<(Duration, Vec<crate::history::Sample>)> {
    use crate::history;
    let period = history::parse_period(period)?;
    let samples = history::read(&history::path(state_dir), period, history::unix_now())?;
    Ok((period, samples))
}

fn no_samples(state_dir: &Path, period: Duration) -> String {
    format!(
        "no samples in the last {} in {} (a running beam samples every history.sampleSeconds, 60 \
         by default)",
        humantime::format_duration(period),
        crate::history::path(state_dir).display()
    )
}

/// `beam network analytics --period P --output FILE`: the history drawn as SVG.
pub fn analytics(state_dir: &Path, period: &str, output: &Path) -> Result<()> {
    let (period, samples) = history_of(state_dir, period)?;
    if samples.is_empty() {
        anyhow::bail!("{}", no_samples(state_dir, period));
    }
    crate::history::plot(&samples, output)?;
    println!(
        "wrote {} ({} samples over the last {})",
        output.display(),
        samples.len(),
        humantime::format_duration(period)
    );
    Ok(())
}

/// `beam network stats --period P [--json]`: the history the node sampled.
pub fn stats(state_dir: &Path, period: &str, json: bool) -> Result<()> {
    let (period, samples) = history_of(state_dir, period)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"period_s": period.as_secs(), "samples": samples})
        );
        return Ok(());
    }
    if samples.is_empty() {
        println!("{}", no_samples(state_dir, period));
        return Ok(());
    }
    println!(
        "{:<20} {:>5} {:>6} {:>7} {:>9} {:>11} {:>11} {:>10}",
        "TIME (UTC)", "PEERS", "DHT", "NET", "RTT p50", "IN", "OUT", "RELAYED"
    );
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    // IN and OUT: what passed since the previous sample, per second.
    let rates = crate::history::interval_rates(&samples);
    for (s, rate) in samples.iter().zip(&rates) {
        // Clamped to year 9999: a corrupt far-future time must not panic the formatting.
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs((s.t.max(0) as u64).min(253_402_300_799));
        println!(
            "{:<20} {:>5} {:>6} {:>7} {:>9} {:>11} {:>11} {:>10}",
            humantime::format_rfc3339_seconds(at)
                .to_string()
                .replace('T', " "),
            s.peers,
            opt(s.dht_health, &|h| format!("{:.0}%", h * 1e2)),
            opt(s.network_size, &|n| format!("~{n:.0}")),
            opt(s.rtt_p50_ms, &|r| format!("{r:.1} ms")),
            opt(rate.map(|r| r.0), &|r| format!("{}/s", bytes(r as u64))),
            opt(rate.map(|r| r.1), &|r| format!("{}/s", bytes(r as u64))),
            bytes(s.bytes_relayed.max(0) as u64),
        );
    }
    let peers: Vec<i64> = samples.iter().map(|s| s.peers).collect();
    let rtts: Vec<f64> = samples.iter().filter_map(|s| s.rtt_p50_ms).collect();
    println!(
        "{} samples over the last {}: peers {}–{}; RTT p50 {}",
        samples.len(),
        humantime::format_duration(period),
        peers.iter().min().unwrap_or(&0),
        peers.iter().max().unwrap_or(&0),
        if rtts.is_empty() {
            "not measured".to_string()
        } else {
            format!(
                "{:.1}–{:.1} ms",
                rtts.iter().copied().fold(f64::INFINITY, f64::min),
                rtts.iter().copied().fold(0.0, f64::max)
            )
        }
    );
    Ok(())
}
