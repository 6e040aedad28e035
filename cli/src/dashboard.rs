//! `beam network dashboard` (also `map`, `watch`, `monitor`): a terminal view of the running
//! node, redrawn each second from what it answers on its control socket — a world map of the
//! peers (at the places they declared with `--location`) and the routes in use, the peer list
//! with its RTTs, live latency and throughput graphs, and the connection inspector.
//!
//! Drawing is a pure function of a [`Snapshot`] ([`draw`]), so it is tested on ratatui's test
//! backend; the loop around it ([`run`]) only fetches, keeps the graphs' history and reads keys.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize as _};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::canvas::{self, Canvas, Map, MapResolution};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};
use serde_json::Value;

use crate::control::{self, Request};
use crate::serve::bytes;

/// How often the node is asked again.
const REFRESH: Duration = Duration::from_secs(1);
/// Samples the graphs keep (one per refresh).
const HISTORY: usize = 120;

/// What one refresh fetched.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `beam status --json`'s object.
    pub status: Value,
    /// `beam network peers --json`'s list.
    pub peers: Vec<Value>,
    /// `beam status --connections --json`'s list.
    pub connections: Vec<Value>,
    /// Peer RTT p50 per refresh, µs (oldest first; 0 when not measured): whole µs, so a
    /// sub-millisecond RTT on a LAN still draws.
    pub rtt_us: VecDeque<u64>,
    /// Tunnel bytes per second in + out per refresh.
    pub rate_bps: VecDeque<u64>,
}

impl Snapshot {
    /// Adds one refresh's figures to the graphs' history.
    fn sample(&mut self) {
        let p = &self.status["p2p"];
        let rtt = p["peer_rtt_p50_ms"].as_f64().unwrap_or(0.0) * 1e3;
        let rate =
            p["rate_in_bps"].as_f64().unwrap_or(0.0) + p["rate_out_bps"].as_f64().unwrap_or(0.0);
        for (h, v) in [(&mut self.rtt_us, rtt), (&mut self.rate_bps, rate)] {
            h.push_back(v.max(0.0).round() as u64);
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
    }
}

/// Runs the dashboard until `q`, Esc or Ctrl-C.
///
/// The node is asked from a thread of its own, so a node slow to answer (each question may
/// wait up to 5 s) never holds up the keys or the drawing: the screen keeps the last answer
/// and says how old it is.
pub fn run(state_dir: &Path) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "the dashboard needs a terminal; for scripts use `beam status --json`, `beam network \
             peers --json` or `beam status --connections --json`"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut snap = Snapshot::default();
    // The first fetch before the screen changes, so that "no beam is running" reads plainly.
    let first = rt.block_on(fetch(state_dir))?;
    snap.set(first);
    snap.sample();
    let (tx, answers) = std::sync::mpsc::channel();
    let dir = state_dir.to_path_buf();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            let answer = rt.block_on(fetch(&dir)).map_err(|e| format!("{e:#}"));
            if tx.send(answer).is_err() {
                return; // the dashboard has quit
            }
        }
    });
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut fresh = Instant::now();
        let mut error: Option<String> = None;
        loop {
            while let Ok(answer) = answers.try_recv() {
                match answer {
                    Ok(a) => {
                        snap.set(a);
                        snap.sample();
                        fresh = Instant::now();
                        error = None;
                    }
                    Err(e) => error = Some(e),
                }
            }
            let age = fresh.elapsed();
            let note = match &error {
                Some(e) => Some(format!(
                    "cannot ask the node: {e} (showing what it said {} s ago)",
                    age.as_secs()
                )),
                None if age > REFRESH * 3 => Some(format!(
                    "the node has not answered for {} s (showing what it said then)",
                    age.as_secs()
                )),
                None => None,
            };
            terminal.draw(|f| draw(f, &snap, note.as_deref()))?;
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    result
}

/// One fetch: status, peers, connections.
type Answer = (Value, Vec<Value>, Vec<Value>);

impl Snapshot {
    fn set(&mut self, (status, peers, connections): Answer) {
        self.status = status;
        self.peers = peers;
        self.connections = connections;
    }
}

/// Asks the node for its status, peers and connections.
async fn fetch(state_dir: &Path) -> Result<Answer> {
    let t = Duration::from_secs(5);
    let status = control::ask(state_dir, &Request::Status, t).await?;
    let peers = control::ask(state_dir, &Request::Peers, t).await?;
    let conns = control::ask(state_dir, &Request::Connections, t).await?;
    Ok((
        status["status"].clone(),
        peers["peers"].as_array().cloned().unwrap_or_default(),
        conns["connections"].as_array().cloned().unwrap_or_default(),
    ))
}

/// A beam address's short form (the inspector's), or the text itself.
fn short(id: &str) -> String {
    id.parse::<beam_node::PeerId>()
        .map_or_else(|_| id.chars().take(8).collect(), |p| p.short())
}

fn location(v: &Value) -> Option<(f64, f64)> {
    let a = v.as_array()?;
    Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?))
}

/// A route between two places (lat, lon) as the map draws it: the short way round, so a
/// line from Tokyo to San Francisco crosses the Pacific, leaving the map's edge at ±180° and
/// coming back at the other (two segments), not crossing the whole world.
fn segments(a: (f64, f64), b: (f64, f64)) -> Vec<((f64, f64), (f64, f64))> {
    let ((lat1, lon1), (lat2, lon2)) = (a, b);
    if (lon2 - lon1).abs() <= 180.0 {
        return vec![(a, b)];
    }
    // Unwrap the second point next to the first, cut the line where it meets the edge.
    let lon2u = if lon2 < lon1 {
        lon2 + 360.0
    } else {
        lon2 - 360.0
    };
    let edge = if lon2u > lon1 { 180.0 } else { -180.0 };
    let f = (edge - lon1) / (lon2u - lon1);
    let lat_edge = lat1 + f * (lat2 - lat1);
    vec![(a, (lat_edge, edge)), ((lat_edge, -edge), b)]
}

/// Draws the whole screen (80×24 and up).
pub fn draw(f: &mut Frame<'_>, snap: &Snapshot, error: Option<&str>) {
    let [header, middle, graphs, conns, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_header(f, header, snap);
    let [map, peers] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(middle);
    draw_map(f, map, snap);
    draw_peers(f, peers, snap);
    let [rtt, rate] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(graphs);
    draw_graphs(f, rtt, rate, snap);
    draw_connections(f, conns, snap);
    let help = match error {
        Some(e) => Line::from(format!(" {e}")).red(),
        None => Line::from(vec![
            Span::from(" q").bold(),
            Span::from(" quit · refreshed each second · places are the peers' --location"),
        ]),
    };
    f.render_widget(Paragraph::new(help), footer);
}

fn draw_header(f: &mut Frame<'_>, area: Rect, snap: &Snapshot) {
    let s = &snap.status;
    let p = &s["p2p"];
    let me = p["peer_id"].as_str().map_or("?".into(), short);
    let name = s["name"]
        .as_str()
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let size = p["network_size_estimate"]
        .as_f64()
        .map_or("?".into(), |e| format!("~{e:.0}"));
    let health = p["dht_health"]
        .as_f64()
        .map_or("-".into(), |h| format!("{:.0}%", h * 1e2));
    let line = Line::from(vec![
        Span::from(format!(" beam {me}{name}")).bold(),
        Span::from(format!(
            " · {} peers · net {size} · DHT {health} · {} tunnels",
            p["peers_connected"].as_u64().unwrap_or(0),
            s["tunnels_open"].as_u64().unwrap_or(0),
        )),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_map(f: &mut Frame<'_>, area: Rect, snap: &Snapshot) {
    let me = location(&snap.status["p2p"]["location"]);
    let places: HashMap<String, (f64, f64)> = snap
        .peers
        .iter()
        .filter_map(|p| Some((short(p["peer"].as_str()?), location(&p["location"])?)))
        .collect();
    // The routes in use: this node → each relay → the other end, where the places are known.
    let mut routes: Vec<((f64, f64), (f64, f64))> = Vec::new();
    for c in snap.connections.iter().filter(|c| c["open"] == true) {
        let mut hops: Vec<Option<(f64, f64)>> = vec![me];
        for v in c["via"].as_array().into_iter().flatten() {
            hops.push(v.as_str().and_then(|v| places.get(v).copied()));
        }
        hops.push(c["peer"].as_str().and_then(|p| places.get(p).copied()));
        for w in hops.windows(2) {
            if let (Some(a), Some(b)) = (w[0], w[1]) {
                routes.push((a, b));
            }
        }
    }
    let shown = places.len();
    let title = format!(" map · {shown} of {} peers placed ", snap.peers.len());
    let canvas = Canvas::default()
        .block(Block::bordered().title(title))
        .marker(Marker::Braille)
        .x_bounds([-180.0, 180.0])
        .y_bounds([-90.0, 90.0])
        .paint(move |ctx| {
            ctx.draw(&Map {
                color: Color::DarkGray,
                resolution: MapResolution::Low,
            });
            ctx.layer();
            for &(from, to) in &routes {
                for ((y1, x1), (y2, x2)) in segments(from, to) {
                    ctx.draw(&canvas::Line {
                        x1,
                        y1,
                        x2,
                        y2,
                        color: Color::Yellow,
                    });
                }
            }
            ctx.layer();
            for &(lat, lon) in places.values() {
                ctx.print(lon, lat, "●".green());
            }
            if let Some((lat, lon)) = me {
                ctx.print(lon, lat, "◆".cyan().bold());
            }
        });
    f.render_widget(canvas, area);
}

fn draw_peers(f: &mut Frame<'_>, area: Rect, snap: &Snapshot) {
    let rows = snap.peers.iter().map(|p| {
        let id = p["peer"]
            .as_str()
            .map_or_else(|| short(p["libp2p_id"].as_str().unwrap_or("?")), short);
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1}ms"));
        // "Europe (near Frankfurt)" → "Frankfurt": the column is narrow.
        let place = p["region"].as_str().map_or("-".to_string(), |r| {
            r.split_once("(near ")
                .map_or(r, |(_, c)| c.trim_end_matches(')'))
                .to_string()
        });
        let dot = if p["location"].is_array() { "●" } else { " " };
        Row::new(vec![
            Span::from(dot).green(),
            Span::from(id),
            Span::from(rtt),
            Span::from(place),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Min(4),
        ],
    )
    .header(Row::new(vec!["", "peer", "rtt", "place"]).style(Style::new().bold()))
    .block(Block::bordered().title(" peers "));
    f.render_widget(table, area);
}

fn draw_graphs(f: &mut Frame<'_>, rtt_area: Rect, rate_area: Rect, snap: &Snapshot) {
    let last = |h: &VecDeque<u64>| h.back().copied().unwrap_or(0);
    // Each graph shows as many recent samples as it is wide.
    let tail = |h: &VecDeque<u64>, area: Rect| -> Vec<u64> {
        let w = usize::from(area.width.saturating_sub(2));
        h.iter().skip(h.len().saturating_sub(w)).copied().collect()
    };
    let rtt = Sparkline::default()
        .block(Block::bordered().title(format!(
            " peer RTT p50 {:.1} ms ",
            last(&snap.rtt_us) as f64 / 1e3
        )))
        .data(tail(&snap.rtt_us, rtt_area))
        .style(Style::new().cyan());
    f.render_widget(rtt, rtt_area);
    let rate = Sparkline::default()
        .block(Block::bordered().title(format!(" tunnels {}/s ", bytes(last(&snap.rate_bps)))))
        .data(tail(&snap.rate_bps, rate_area))
        .style(Style::new().yellow());
    f.render_widget(rate, rate_area);
}

fn draw_connections(f: &mut Frame<'_>, area: Rect, snap: &Snapshot) {
    let rows = snap.connections.iter().map(|c| {
        let route = match c["via"].as_array() {
            Some(v) if !v.is_empty() => format!(
                "{} via {}",
                c["kind"].as_str().unwrap_or("?"),
                v.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => c["kind"].as_str().unwrap_or("?").to_string(),
        };
        let state = if c["open"] == true { "open" } else { "ended" };
        Row::new(vec![
            format!(
                "{} {}",
                c["direction"].as_str().unwrap_or("?"),
                c["peer"].as_str().unwrap_or("?")
            ),
            route,
            format!(
                "{}/{}",
                bytes(c["bytes_in"].as_u64().unwrap_or(0)),
                bytes(c["bytes_out"].as_u64().unwrap_or(0))
            ),
            format!("{:.0}s", c["duration_s"].as_f64().unwrap_or(0.0)),
            state.to_string(),
        ])
    });
    let open = snap
        .connections
        .iter()
        .filter(|c| c["open"] == true)
        .count();
    let table = Table::new(
        rows,
        [
            Constraint::Length(13),
            Constraint::Min(16),
            Constraint::Length(19),
            Constraint::Length(5),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(vec!["tunnel", "route", "in/out", "time", ""]).style(Style::new().bold()))
    .block(Block::bordered().title(format!(
        " connections · {open} open, {} recent (beam status --connections) ",
        snap.connections.len() - open
    )));
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn screen(snap: &Snapshot) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        t.draw(|f| draw(f, snap, None)).expect("draw");
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn id(seed: u8) -> String {
        beam_node::Keypair::from_secret([seed; 32])
            .peer_id()
            .to_string()
    }

    #[test]
    fn draws_the_peers_on_the_map_and_the_route_in_the_inspector() {
        let (me, a, b, c) = (id(1), id(2), id(3), id(4));
        let mut snap = Snapshot {
            status: json!({
                "name": "demo",
                "tunnels_open": 1,
                "p2p": {"peer_id": me, "location": [50.11, 8.68], "peers_connected": 3,
                        "network_size_estimate": 4.0, "dht_health": 1.0,
                        "peer_rtt_p50_ms": 12.0, "rate_in_bps": 2048.0, "rate_out_bps": 0.0},
            }),
            peers: vec![
                json!({"peer": a, "location": [35.68, 139.69], "region": "Asia (near Tokyo)",
                       "rtt_ms": 1.5}),
                json!({"peer": b, "location": [40.71, -74.0],
                       "region": "North America (near New York)", "rtt_ms": 2.5}),
                json!({"peer": c, "rtt_ms": 3.5}),
            ],
            connections: vec![json!({
                "open": true, "direction": "out", "kind": "multi-hop",
                "peer": short(&c), "via": [short(&a), short(&b)],
                "bytes_in": 52_428_800u64, "bytes_out": 49, "duration_s": 2.0,
            })],
            ..Snapshot::default()
        };
        snap.sample();
        let s = screen(&snap);
        // Two placed peers and this node; the third declared nothing.
        assert_eq!(s.matches('●').count(), 2 + 2, "{s}"); // map + peer list
        assert_eq!(s.matches('◆').count(), 1, "{s}");
        assert!(s.contains("2 of 3 peers placed"), "{s}");
        assert!(s.contains("Tokyo") && s.contains("New York"), "{s}");
        // The map itself (braille dots) is drawn.
        assert!(
            s.chars()
                .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
                .count()
                > 100
        );
        assert!(
            s.contains(&format!("multi-hop via {},{}", short(&a), short(&b))),
            "{s}"
        );
        assert!(s.contains("1 open, 0 recent"), "{s}");
        assert!(s.contains("peer RTT p50 12.0 ms"), "{s}");
        assert!(s.contains(&short(&me)) && s.contains("demo"), "{s}");
    }

    #[test]
    fn an_empty_node_draws_without_panicking() {
        let s = screen(&Snapshot::default());
        assert!(s.contains("0 of 0 peers placed"), "{s}");
    }

    #[test]
    fn routes_go_the_short_way_round() {
        // Frankfurt–New York: one segment.
        assert_eq!(segments((50.1, 8.7), (40.7, -74.0)).len(), 1);
        // Tokyo (139.7° E) to San Francisco (122.4° W): over the Pacific, cut at ±180°.
        let s = segments((35.7, 139.7), (37.8, -122.4));
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            (s[0].0, s[0].1.1, s[1].0.1, s[1].1),
            ((35.7, 139.7), 180.0, -180.0, (37.8, -122.4))
        );
        assert!(
            (s[0].1.0 - s[1].0.0).abs() < 1e-9,
            "both halves meet at one latitude"
        );
        assert!(s[0].1.0 > 35.7 && s[0].1.0 < 37.8);
        // And the other way.
        let s = segments((37.8, -122.4), (35.7, 139.7));
        assert_eq!((s[0].1.1, s[1].0.1), (-180.0, 180.0));
    }
}
