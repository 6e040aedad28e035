//! `sim`: run scenarios and write the scaling table; check the CI gate; query the latency model.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sim::report::{self, Row};
use sim::scenario::{Scenario, Strategy};
use sim::{gate, latency, latency_fit, run};

#[derive(Parser)]
#[command(
    name = "sim",
    version,
    about = "beam's deterministic network simulator: runs scenarios and writes the scaling table",
    long_about = "Runs each scenario file (TOML; see scenarios/example.toml for every key) with \
                  the real protocol core on simulated hosts, and writes one CSV row per scenario. \
                  The same seed gives byte-identical rows. Wall time and peak memory go to stderr.",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  cargo run --release -p sim -- scenarios/100-peers.toml\n  \
                  cargo run --release -p sim -- scenarios/*-peers.toml --strategy direct --strategy geographic --out reports/scaling.csv\n  \
                  cargo run --release -p sim -- gate scenarios/ci reports/baseline.csv -j 2\n  \
                  cargo run --release -p sim -- latency 38.9,-77.0 53.3,-6.3\n  \
                  cargo run --release -p sim -- latency-fit reports/latency-dataset/rtt.csv\n\n\
                  BEAM_SIM_DEBUG=1 lists every failed request on stderr (client, service, NAT, lookup);\n\
                  BEAM_SIM_DEBUG_SIZE=1 every honest peer's size estimate and the announcements it counted."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Scenario files to run, in order.
    scenarios: Vec<PathBuf>,
    /// Write the CSV table here instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also draw latency and routing success against network size as an SVG chart.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Run every scenario once per strategy given here, overriding its `workload.strategy`
    /// (direct, multi-hop, geographic; repeat the flag for several).
    #[arg(long, value_name = "STRATEGY")]
    strategy: Vec<Strategy>,
    /// Run every scenario with N seeds (its own, then the next N - 1), one row each, and
    /// summarize the headline columns (routing and lookup success, latency p50 and p99,
    /// stretch) as a mean with a 95 % interval on stderr.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    seeds: u64,
    /// Also write the seeds' summary as CSV here (with one seed its intervals are empty).
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// Run this many scenarios at once, one per thread (rows keep their order; each run is
    /// as deterministic as alone, but the wall times printed then share the cores).
    #[arg(
        long,
        short = 'j',
        value_name = "N",
        default_value_t = 1,
        global = true
    )]
    jobs: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the latency model's median RTT between two points ("LAT,LON" or a city name).
    Latency {
        /// First point, e.g. 38.9,-77.0 or Dublin (a point may start with `-`: -33.9,151.2).
        #[arg(allow_hyphen_values = true)]
        a: String,
        /// Second point.
        #[arg(allow_hyphen_values = true)]
        b: String,
    },
    /// Fit the latency model's corridor factors to a published RTT dataset (every other row),
    /// and print the median relative error on the held-out rows and per provider held out.
    LatencyFit {
        /// The dataset (columns source, lat_a, lon_a, lat_b, lon_b, rtt_ms).
        #[arg(default_value = "reports/latency-dataset/rtt.csv")]
        dataset: PathBuf,
        /// Print the checks as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run every scenario in DIR and compare with the baseline; exit 1 on a regression.
    Gate {
        /// Folder of scenario files (e.g. scenarios/ci).
        dir: PathBuf,
        /// The committed baseline table (e.g. reports/baseline.csv).
        baseline: PathBuf,
        /// Rewrite the baseline from this run (a deliberate act: say why in the commit).
        #[arg(long)]
        update_baseline: bool,
    },
}

fn progress_bar(name: &str, total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    // One set of bars for every thread (`--jobs`), drawn together.
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    let pb = BARS
        .get_or_init(|| MultiProgress::with_draw_target(target))
        .add(ProgressBar::new(total));
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} simulated s ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(name.to_owned());
    pb
}

/// Runs `scenarios` on `jobs` threads; the results in the scenarios' order.
fn run_many(scenarios: &[Scenario], jobs: usize) -> Vec<Result<Row>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs = jobs.clamp(1, scenarios.len().max(1));
    if jobs == 1 {
        return scenarios.iter().map(run_one).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Row>>>> =
        Mutex::new((0..scenarios.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(sc) = scenarios.get(i) else { break };
                    let r = run_one(sc);
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a scenario's thread panicked"))))
        .collect()
}

/// Runs one scenario with a progress bar; reports wall time and memory on stderr.
fn run_one(sc: &Scenario) -> Result<Row> {
    let started = Instant::now();
    let pb = progress_bar(&sc.name, sc.warmup_s + sc.duration_s + 5);
    let out = run::run(sc, |done, _| pb.set_position(done))
        .with_context(|| format!("scenario {} cannot run", sc.name))?;
    pb.finish_and_clear();
    let r = &out.row;
    eprintln!(
        "{} [{}]: {} peers, {} services, {} requests, routing {:.3} %, lookup {:.3} %; \
         msgs/peer/s light {:.2} routing {:.2} full {:.2}; coordinates median error {}; \
         hole punches {}/{}; \
         wall {:.1} s, peak RSS {} MiB",
        sc.name,
        sc.workload.strategy,
        sc.peers,
        out.services,
        r.requests,
        r.routing_success * 100.0,
        r.lookup_success * 100.0,
        out.msgs_per_level[0],
        out.msgs_per_level[1],
        out.msgs_per_level[2],
        out.coords_median_error
            .map_or("-".into(), |e| format!("{:.1} %", e * 100.0)),
        out.punches.1,
        out.punches.0,
        started.elapsed().as_secs_f64(),
        run::peak_rss_mib().map_or("?".into(), |m| format!("{m:.0}")),
    );
    if r.adversary_server_share > 0.0 {
        eprintln!(
            "  adversaries {:.1} % of the dialable servers; overlay: {:.1} % of honest servers \
             captured, largest honest strongly connected part {:.1} %, in-degree honest {:.1} \
             adversary {:.1}; size estimate error mean {:.1} % max {:.1} %{}",
            r.adversary_server_share * 100.0,
            r.captured_share * 100.0,
            r.honest_scc_share * 100.0,
            r.in_degree_honest,
            r.in_degree_adversary,
            r.size_estimate_error * 100.0,
            r.size_estimate_error_max * 100.0,
            if r.eclipse_lookup_success.is_nan() {
                String::new()
            } else {
                format!(
                    "; eclipsed service's lookups {:.1} %",
                    r.eclipse_lookup_success * 100.0
                )
            },
        );
    }
    Ok(out.row)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Cmd::Latency { a, b }) => {
            println!("{}", latency::latency_command(&a, &b)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::LatencyFit { dataset, json }) => {
            let samples = latency_fit::read_dataset(&dataset)?;
            let report = latency_fit::evaluate(&samples, &latency::LatencyModel::default());
            if json {
                println!("{}", serde_json::to_string_pretty(&report.checks)?);
            } else {
                print!("{}", latency_fit::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Gate {
            dir,
            baseline,
            update_baseline,
        }) => {
            let files = gate::scenario_files(&dir)
                .with_context(|| format!("cannot read the scenario folder {}", dir.display()))?;
            if files.is_empty() {
                bail!("{} holds no .toml scenario files", dir.display());
            }
            let scenarios: Vec<_> = files
                .into_iter()
                .map(|p| {
                    let s = Scenario::load(&p).map_err(|e| e.to_string());
                    (p, s)
                })
                .collect();
            let base = if update_baseline {
                vec![]
            } else {
                report::read_rows(&baseline).with_context(|| {
                    format!(
                        "cannot read the baseline {} (create it with --update-baseline)",
                        baseline.display()
                    )
                })?
            };
            let runnable: Vec<Scenario> = scenarios
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok().cloned())
                .collect();
            let mut done: Vec<(String, Result<Row, String>)> = run_many(&runnable, cli.jobs)
                .into_iter()
                .zip(&runnable)
                .map(|(r, sc)| (sc.name.clone(), r.map_err(|e| format!("{e:#}"))))
                .collect();
            let mut rows = vec![];
            let checks = gate::run_gate(&scenarios, &base, |sc| {
                let at = done.iter().position(|(name, _)| *name == sc.name);
                let row = at
                    .map(|i| done.remove(i).1)
                    .unwrap_or_else(|| Err(format!("scenario {} did not run", sc.name)))?;
                rows.push(row.clone());
                Ok(row)
            });
            if update_baseline {
                report::write_rows_file(&baseline, &rows)?;
                eprintln!("wrote {} rows to {}", rows.len(), baseline.display());
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", gate::table(&checks));
            let failed = checks.iter().filter(|c| !c.failures.is_empty()).count();
            if failed > 0 {
                println!("gate: FAILED ({failed} of {} scenarios)", checks.len());
                Ok(ExitCode::FAILURE)
            } else {
                println!("gate: passed ({} scenarios)", checks.len());
                Ok(ExitCode::SUCCESS)
            }
        }
        None => {
            if cli.scenarios.is_empty() {
                bail!("no scenario given: try `sim scenarios/100-peers.toml` (see --help)");
            }
            let scenarios = cli
                .scenarios
                .iter()
                .map(Scenario::load)
                .collect::<Result<Vec<_>, _>>()?;
            let mut runs = vec![];
            for sc in &scenarios {
                if cli.strategy.is_empty() {
                    runs.extend(sim::seeds::expand(sc, cli.seeds));
                }
                for s in &cli.strategy {
                    let mut sc = sc.clone();
                    sc.workload.strategy = *s;
                    runs.extend(sim::seeds::expand(&sc, cli.seeds));
                }
            }
            let rows = run_many(&runs, cli.jobs)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            match &cli.out {
                Some(path) => {
                    report::write_rows_file(path, &rows)?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{}", report::to_csv_string(&rows)),
            }
            if let Some(plot) = &cli.plot {
                report::plot_svg(&rows, plot)?;
                eprintln!("wrote {}", plot.display());
            }
            if cli.seeds > 1 || cli.summary.is_some() {
                let summaries = sim::seeds::summarize(&rows);
                eprint!("{}", sim::seeds::describe(&summaries));
                if let Some(path) = &cli.summary {
                    sim::seeds::write_summary_file(path, &summaries)?;
                    eprintln!("wrote {}", path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
