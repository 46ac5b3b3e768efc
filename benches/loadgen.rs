//! loadgen: throughput, latency and memory of accessgov on the real broker and
//! database, against a minimal pipeline measured in the same run. Speed and
//! memory targets live here, never in timed unit tests.
//!
//! ```text
//! cargo bench --bench loadgen -- --baseline                     # every scenario, with ratios
//! cargo bench --bench loadgen -- --baseline --scenario dry_run  # dry_run|live0|live100|ingress|memory|all
//! LOADGEN_EVENTS=5000 LOADGEN_CONCURRENCY=32 cargo bench --bench loadgen -- --baseline
//! ```
//!
//! Scenarios (each on a fresh database `accessgov_loadgen_<tag>` and broker
//! prefix `agload_<tag>`, both removed afterwards):
//! - `--baseline`: lapin consume + one HTTP call to a 0 ms local mock + one sqlx
//!   INSERT+COMMIT + ack, N events published with publisher confirms into its
//!   own queue (`loadgen/baseline.rs`). Runs first; every ratio is against it.
//! - `dry_run`: ingress + worker in this process, every application dry-run;
//!   N signed webhooks from C closed-loop clients; end to end = from the first
//!   post until `processed_events` holds N. Target: >= 1.0x the baseline.
//! - `live0`: the same with Confluence live behind the in-process mock provider
//!   answering at once (one HTTP call per event, through accessgov's HTTP layer).
//!   Target: >= 0.5x the baseline.
//! - `live100`: the mock answers after 100 ms. Target: within 10 % of C / 0.1 s.
//!   Then again with `rate_limit_per_second` = L (LOADGEN_RATE_LIMIT, 10) for
//!   15 s' worth of events: within 10 % of min(C / 0.1 s, L), and no sliding 1-s
//!   window at the mock above L. L is well below C / 0.1 s so that the limiter
//!   binds (at L = 50 accessgov never offered 50 calls in a second).
//! - `ingress`: the ingress alone, webhooks sent open loop at 1,000/s for 10 s
//!   after a 1-s warm-up, latency from each request's scheduled send time.
//!   Target: p99 <= 10 ms.
//! - `memory`: `accessgov worker --config <tmp>` as a child process with 1,000
//!   events in flight (prefetch = concurrency = 1,000, live `jira` application
//!   on the mock at 500 ms). Target: its VmHWM <= 64 MiB.
//!
//! Environment: LOADGEN_EVENTS (N, 2000), LOADGEN_CONCURRENCY (C, 16: worker
//! concurrency, baseline consumer concurrency, and the number of closed-loop
//! clients / publishers), LOADGEN_INGRESS_RPS (1000), LOADGEN_INGRESS_SECONDS
//! (10), LOADGEN_RATE_LIMIT (10), LOADGEN_MEMORY_CONCURRENCY (1000, the memory
//! worker's concurrency), LOADGEN_BATCH_MAX (the in-process worker's
//! `batch_max`, for experiments), LOADGEN_ACCESSGOV_BIN (the worker binary),
//! ACCESSGOV_TEST_DATABASE_URL, ACCESSGOV_TEST_AMQP_URL.
//!
//! The in-process accessgov runs under the production tracing subscriber
//! (spans, JSON logs at `RUST_LOG`, default info, formatted into a sink; no
//! OTLP endpoint, as by default).
//!
//! Prints a table at the end and exits 1 when a checked target is missed.
//! Without `--baseline` the ratio targets are reported as unchecked.

#[path = "loadgen/baseline.rs"]
mod baseline;
#[path = "loadgen/common.rs"]
mod common;
#[path = "loadgen/memory.rs"]
mod memory;
#[path = "loadgen/mock.rs"]
mod mock;
#[path = "loadgen/pipeline.rs"]
mod pipeline;

use common::{Env, percentile_ms};
use pipeline::{Mode, Throughput};
use std::time::Duration;

/// Dry-run end-to-end events/s, as a multiple of the baseline's.
const TARGET_DRY_RUN_RATIO: f64 = 1.0;
/// Live (0 ms provider) end-to-end events/s, as a multiple of the baseline's.
const TARGET_LIVE0_RATIO: f64 = 0.5;
/// The slow provider's latency, and how close to C / latency throughput must be.
const LIVE100_LATENCY: Duration = Duration::from_millis(100);
const LIVE100_TOLERANCE: f64 = 0.10;
/// Webhook -> 202 p99 at the target rate, open loop.
const TARGET_INGRESS_P99_MS: f64 = 10.0;
const TARGET_INGRESS_RPS: usize = 1000;
/// Worker peak RSS with `memory::EVENTS` in flight.
const TARGET_WORKER_RSS_MIB: f64 = 64.0;
/// The offboarding scenario (issue 13): a leaver with this many holds, one granting ticket each,
/// spread over this many live applications behind the mock at [`LIVE100_LATENCY`].
const OFFBOARD_HOLDS: usize = 50;
const OFFBOARD_APPLICATIONS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    DryRun,
    Live0,
    Live100,
    Ingress,
    Memory,
    Offboard,
}

const ALL: [Scenario; 6] =
    [Scenario::DryRun, Scenario::Live0, Scenario::Live100, Scenario::Ingress, Scenario::Memory, Scenario::Offboard];

impl Scenario {
    fn parse(s: &str) -> anyhow::Result<Vec<Self>> {
        Ok(match s {
            "all" => ALL.to_vec(),
            "dry_run" => vec![Self::DryRun],
            "live0" => vec![Self::Live0],
            "live100" => vec![Self::Live100],
            "ingress" => vec![Self::Ingress],
            "memory" => vec![Self::Memory],
            "offboard" => vec![Self::Offboard],
            other => {
                anyhow::bail!("unknown scenario {other:?}: dry_run, live0, live100, ingress, memory, offboard or all")
            }
        })
    }
}

struct Args {
    baseline: bool,
    scenarios: Vec<Scenario>,
}

const USAGE: &str = "usage: loadgen [--baseline] [--scenario dry_run|live0|live100|ingress|memory|offboard|all[,...]]";

/// `None`: nothing to run (`--list`, `--help`).
fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = Args { baseline: false, scenarios: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // `cargo test --benches` asks harness-less benches to list; nothing to list.
            "--list" => return Ok(None),
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            // `cargo bench` passes it to every bench.
            "--bench" => {}
            "--baseline" => args.baseline = true,
            "--scenario" => {
                let v = it.next().ok_or_else(|| anyhow::anyhow!("--scenario needs a value\n{USAGE}"))?;
                for s in v.split(',') {
                    args.scenarios.extend(Scenario::parse(s.trim())?);
                }
            }
            other if other.starts_with("--scenario=") => {
                for s in other["--scenario=".len()..].split(',') {
                    args.scenarios.extend(Scenario::parse(s.trim())?);
                }
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = ALL.to_vec();
    }
    args.scenarios.dedup();
    Ok(Some(args))
}

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Met,
    Missed,
    Unchecked(String),
}

impl Verdict {
    fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }
    fn show(&self) -> String {
        match self {
            Self::Met => "met".into(),
            Self::Missed => "MISSED".into(),
            Self::Unchecked(why) => format!("unchecked ({why})"),
        }
    }
}

struct Row {
    scenario: String,
    metric: String,
    accessgov: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: Verdict,
}

impl Row {
    fn new(scenario: &str, metric: &str, accessgov: String, target: String, verdict: Verdict) -> Self {
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            accessgov,
            baseline: "-".into(),
            ratio: "-".into(),
            target,
            verdict,
        }
    }
    fn error(scenario: &str, e: &anyhow::Error) -> Self {
        let msg: String = format!("{e:#}").lines().next().unwrap_or_default().chars().take(60).collect();
        Self::new(scenario, "scenario ran", format!("error: {msg}"), "completes".into(), Verdict::Missed)
    }
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, row: Row) {
        let against = if row.baseline == "-" {
            String::new()
        } else {
            format!(" [baseline {}, ratio {}]", row.baseline, row.ratio)
        };
        println!(
            "  => {} {}: {}{against} (target {}): {}",
            row.scenario,
            row.metric,
            row.accessgov,
            row.target,
            row.verdict.show()
        );
        self.rows.push(row);
    }

    fn print_table(&self) {
        let header = ["scenario", "metric", "accessgov", "baseline", "ratio", "target", "result"];
        let cells: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    r.metric.clone(),
                    r.accessgov.clone(),
                    r.baseline.clone(),
                    r.ratio.clone(),
                    r.target.clone(),
                    r.verdict.show(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: Vec<&str>| {
            let padded: Vec<String> = cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("| {} |", padded.join(" | "));
        };
        println!();
        line(header.to_vec());
        println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
        for row in &cells {
            line(row.iter().map(String::as_str).collect());
        }
    }

    fn missed(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.verdict == Verdict::Missed).collect()
    }
}

fn ratio_row(scenario: &str, t: &Throughput, base: Option<&baseline::Baseline>, target: f64) -> Row {
    let eps = t.events_per_sec();
    let mut row = Row::new(
        scenario,
        "end-to-end events/s",
        format!("{eps:.0}"),
        format!(">= {target:.1}x baseline"),
        Verdict::Unchecked("no --baseline".into()),
    );
    if let Some(b) = base {
        let ratio = eps / b.events_per_sec();
        row.baseline = format!("{:.0}", b.events_per_sec());
        row.ratio = format!("{ratio:.2}x");
        row.verdict = Verdict::of(ratio >= target);
        println!(
            "ratio {scenario}: accessgov {eps:.0} events/s / baseline {:.0} events/s = {ratio:.2}x (target >= {target:.1}x): {}",
            b.events_per_sec(),
            row.verdict.show()
        );
    } else {
        println!("ratio {scenario}: no baseline in this run (pass --baseline)");
    }
    row
}

/// A throughput scenario judged by its ratio to the baseline (dry_run, live0);
/// a live one also checks one provider call per event.
#[allow(clippy::too_many_arguments)]
async fn ratio_scenario(
    report: &mut Report,
    env: &Env,
    name: &str,
    mode: Mode,
    n: usize,
    base: Option<&baseline::Baseline>,
    baseline_missing: bool,
    target: f64,
) {
    match pipeline::throughput(env, mode, n).await {
        Ok(t) => {
            print_throughput(name, &t);
            let mut row = ratio_row(name, &t, base, target);
            if baseline_missing {
                row.verdict = Verdict::Missed;
            }
            report.push(row);
            sanity_rows(report, name, &t, matches!(mode, Mode::Live { .. }));
        }
        Err(e) => report.push(Row::error(name, &e)),
    }
}

fn print_throughput(name: &str, t: &Throughput) {
    let l = &t.posted.latencies;
    println!(
        "{name}: {} of {} webhooks accepted in {:.2}s ({:.0}/s; closed-loop 202 p50 {:.1} ms, p99 {:.1} ms); \
         all processed after {:.2}s => {:.0} events/s end to end",
        t.accepted(),
        t.events,
        t.posted.elapsed.as_secs_f64(),
        t.accepted() as f64 / t.posted.elapsed.as_secs_f64(),
        percentile_ms(l, 0.50),
        percentile_ms(l, 0.99),
        t.end_to_end.as_secs_f64(),
        t.events_per_sec(),
    );
    let actions: Vec<String> = t.actions.iter().map(|(a, n)| format!("{a} {n}")).collect();
    println!(
        "{name}: audit rows: {}; {} batch commits (mean batch {:.1} events)",
        actions.join(", "),
        t.batches,
        t.accepted() as f64 / t.batches.max(1) as f64
    );
    println!("{name}: {}", t.cpu);
    if t.calls > 0 {
        println!(
            "{name}: mock provider: {} calls, at most {} at once, at most {} in a sliding second ({} in a fixed one)",
            t.calls, t.max_in_flight, t.max_sliding_second, t.max_fixed_second
        );
    }
}

/// Rows every throughput scenario has: all webhooks accepted; for live ones,
/// one provider call per event.
fn sanity_rows(report: &mut Report, name: &str, t: &Throughput, live: bool) {
    if t.posted.failures > 0 {
        report.push(Row::new(
            name,
            "webhooks accepted",
            format!("{} of {}", t.accepted(), t.events),
            "all".into(),
            Verdict::Missed,
        ));
    }
    if live {
        report.push(Row::new(
            name,
            "provider calls",
            t.calls.to_string(),
            format!("= {} events", t.accepted()),
            Verdict::of(t.calls == t.accepted()),
        ));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else { return Ok(()) };
    // accessgov as it runs in a container: the production subscriber (spans with
    // their OpenTelemetry ids, JSON log lines at RUST_LOG, default info), the
    // lines formatted into a sink rather than onto this report.
    let _telemetry = accessgov::telemetry::init_with_writer(
        accessgov::telemetry::LogFormat::Json,
        "loadgen",
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::sink),
    );
    let env = Env::from_env();
    let (n, c) = (env.events, env.concurrency);
    println!(
        "loadgen: N = {n} events, C = {c}, batch_max {}, scenarios {:?}, baseline {}; {} cpus, load average {}",
        env.batch_max.map_or_else(|| "default".to_owned(), |b| b.to_string()),
        args.scenarios,
        if args.baseline { "on" } else { "off" },
        std::thread::available_parallelism().map_or(0, usize::from),
        common::loadavg()
    );
    let mut report = Report { rows: Vec::new() };

    let mut base = None;
    if args.baseline {
        println!("\n[baseline] load average {}", common::loadavg());
        let prefetch = accessgov::config::BrokerConfig::default().prefetch;
        match baseline::run(&env, common::bodies(n)?, prefetch, pipeline::POOL_SIZE).await {
            Ok(b) => {
                println!(
                    "baseline: {n} published (confirm p50 {:.1} ms, p99 {:.1} ms) in {:.2}s; all committed after {:.2}s => {:.0} events/s end to end",
                    percentile_ms(&b.confirms, 0.50),
                    percentile_ms(&b.confirms, 0.99),
                    b.publish.as_secs_f64(),
                    b.end_to_end.as_secs_f64(),
                    b.events_per_sec()
                );
                println!("baseline: {}", b.cpu);
                if let Some(o) = &b.open_loop {
                    println!(
                        "baseline: confirmed publish open loop at {}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} ({} failed)",
                        o.rps,
                        percentile_ms(&o.latencies, 0.50),
                        percentile_ms(&o.latencies, 0.99),
                        percentile_ms(&o.latencies, 1.0),
                        o.measured,
                        o.failures
                    );
                }
                base = Some(b);
            }
            Err(e) => {
                eprintln!("baseline failed: {e:#}");
                report.push(Row::error("baseline", &e));
            }
        }
    }
    let baseline_missing = args.baseline && base.is_none();

    for scenario in &args.scenarios {
        println!("\n[{scenario:?}] load average {}", common::loadavg());
        match scenario {
            Scenario::DryRun => {
                let (base, target) = (base.as_ref(), TARGET_DRY_RUN_RATIO);
                ratio_scenario(&mut report, &env, "dry_run", Mode::DryRun, n, base, baseline_missing, target).await;
            }
            Scenario::Live0 => {
                let mode = Mode::Live { latency: Duration::ZERO, rate_limit: None };
                let (base, target) = (base.as_ref(), TARGET_LIVE0_RATIO);
                ratio_scenario(&mut report, &env, "live0", mode, n, base, baseline_missing, target).await;
            }
            Scenario::Live100 => {
                let ideal = c as f64 / LIVE100_LATENCY.as_secs_f64();
                let mode = Mode::Live { latency: LIVE100_LATENCY, rate_limit: None };
                match pipeline::throughput(&env, mode, n).await {
                    Ok(t) => {
                        print_throughput("live100", &t);
                        report.push(within("live100", &t, ideal, &format!("C/0.1s = {ideal:.0}")));
                        sanity_rows(&mut report, "live100", &t, true);
                    }
                    Err(e) => report.push(Row::error("live100", &e)),
                }
                let limit = env.rate_limit;
                let name = format!("live100_rl{limit}");
                // Fifteen seconds' worth at the limit.
                let events = n.min(limit * 15);
                println!("\n[{name}] load average {}", common::loadavg());
                let mode = Mode::Live { latency: LIVE100_LATENCY, rate_limit: Some(limit) };
                match pipeline::throughput(&env, mode, events).await {
                    Ok(t) => {
                        print_throughput(&name, &t);
                        let expect = ideal.min(limit as f64);
                        report.push(within(&name, &t, expect, &format!("min(C/0.1s, limit) = {expect:.0}")));
                        report.push(Row::new(
                            &name,
                            "max calls in a 1-s window",
                            format!("{} (fixed 1-s buckets: {})", t.max_sliding_second, t.max_fixed_second),
                            format!("<= rate_limit_per_second {limit}"),
                            Verdict::of(t.max_sliding_second <= limit),
                        ));
                        sanity_rows(&mut report, &name, &t, true);
                    }
                    Err(e) => report.push(Row::error(&name, &e)),
                }
            }
            Scenario::Offboard => {
                let (holds, apps) = (OFFBOARD_HOLDS, OFFBOARD_APPLICATIONS);
                match pipeline::offboard(&env, holds, apps, LIVE100_LATENCY).await {
                    Ok(o) => {
                        println!(
                            "offboard: {} holds across {} applications (mock at {} ms): all revoked {:.2}s after the 202; \
                             {} provider calls, at most {} at once",
                            o.holds,
                            o.applications,
                            LIVE100_LATENCY.as_millis(),
                            o.end_to_end.as_secs_f64(),
                            o.calls,
                            o.max_in_flight
                        );
                        println!("offboard: {}", o.cpu);
                        report.push(Row::new(
                            "offboard",
                            &format!("{holds} holds / {apps} apps revoked"),
                            format!("{:.2} s", o.end_to_end.as_secs_f64()),
                            "a figure (no target)".into(),
                            Verdict::Unchecked("reported".into()),
                        ));
                        report.push(Row::new(
                            "offboard",
                            "provider calls",
                            o.calls.to_string(),
                            format!("= {holds} holds"),
                            Verdict::of(o.calls == holds),
                        ));
                    }
                    Err(e) => report.push(Row::error("offboard", &e)),
                }
            }
            Scenario::Ingress => match pipeline::ingress(&env).await {
                Ok(i) => {
                    let o = &i.open_loop;
                    let p99 = percentile_ms(&o.latencies, 0.99);
                    println!(
                        "ingress: open loop at {}/s for {:.1}s: {} measured after a 1-s warm-up, {} not 202; 202 latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; generator lag at worst {:.1} ms; {} messages queued",
                        o.rps,
                        o.elapsed.as_secs_f64(),
                        o.measured,
                        o.failures,
                        percentile_ms(&o.latencies, 0.50),
                        percentile_ms(&o.latencies, 0.90),
                        p99,
                        percentile_ms(&o.latencies, 0.999),
                        percentile_ms(&o.latencies, 1.0),
                        o.max_send_lag.as_secs_f64() * 1000.0,
                        i.queued
                    );
                    println!("ingress: {}", i.cpu);
                    let verdict = if o.rps < TARGET_INGRESS_RPS {
                        Verdict::Unchecked(format!("rate {} < {TARGET_INGRESS_RPS}/s", o.rps))
                    } else {
                        Verdict::of(p99 <= TARGET_INGRESS_P99_MS)
                    };
                    let mut row = Row::new(
                        "ingress",
                        &format!("p99 webhook->202 at {}/s", o.rps),
                        format!("{p99:.2} ms"),
                        format!("<= {TARGET_INGRESS_P99_MS} ms"),
                        verdict,
                    );
                    if let Some(b) = base.as_ref().and_then(|b| b.open_loop.as_ref()) {
                        let bp99 = percentile_ms(&b.latencies, 0.99);
                        row.baseline = format!("{bp99:.2} ms (confirmed publish)");
                        row.ratio = format!("{:.1}x", p99 / bp99);
                        println!(
                            "ratio ingress: p99 {p99:.2} ms / baseline confirmed-publish p99 {bp99:.2} ms = {:.1}x (target: p99 <= {TARGET_INGRESS_P99_MS} ms)",
                            p99 / bp99
                        );
                    }
                    report.push(row);
                    report.push(Row::new(
                        "ingress",
                        "answered 202",
                        format!("{} of {}", o.measured - o.failures, o.measured),
                        "all".into(),
                        Verdict::of(o.failures == 0),
                    ));
                }
                Err(e) => report.push(Row::error("ingress", &e)),
            },
            Scenario::Memory => match memory::run(&env).await {
                Ok(m) => {
                    println!(
                        "memory: worker {} processed {} events in {:.2}s; mock: {} calls, at most {} at once; worker peak RSS (VmHWM) {:.1} MiB",
                        m.bin.display(),
                        m.events,
                        m.elapsed.as_secs_f64(),
                        m.calls,
                        m.max_in_flight,
                        m.peak_rss_mib
                    );
                    println!("ratio memory: no baseline figure (target is absolute)");
                    let metric = if memory::concurrency() == memory::EVENTS {
                        format!("worker peak RSS, {} in flight", m.events)
                    } else {
                        format!("worker peak RSS, {} delivered, concurrency {}", m.events, memory::concurrency())
                    };
                    report.push(Row::new(
                        "memory",
                        &metric,
                        format!("{:.1} MiB", m.peak_rss_mib),
                        format!("<= {TARGET_WORKER_RSS_MIB} MiB"),
                        Verdict::of(m.peak_rss_mib <= TARGET_WORKER_RSS_MIB),
                    ));
                }
                Err(e) => {
                    eprintln!("memory failed: {e:#}");
                    report.push(Row::error("memory", &e));
                }
            },
        }
    }

    report.print_table();
    println!("load average at the end {}", common::loadavg());
    let missed = report.missed();
    if missed.is_empty() {
        println!("targets: all checked targets met");
        Ok(())
    } else {
        let names: Vec<String> = missed.iter().map(|r| format!("{} {}", r.scenario, r.metric)).collect();
        println!("targets MISSED: {}", names.join("; "));
        std::process::exit(1);
    }
}

/// Throughput within `LIVE100_TOLERANCE` of `expect` events/s.
fn within(name: &str, t: &Throughput, expect: f64, what: &str) -> Row {
    let eps = t.events_per_sec();
    let ok = (eps - expect).abs() <= LIVE100_TOLERANCE * expect;
    println!(
        "ratio {name}: {eps:.0} events/s / expected {expect:.0} = {:.2} (target within {:.0} %): {}",
        eps / expect,
        LIVE100_TOLERANCE * 100.0,
        Verdict::of(ok).show()
    );
    let mut row =
        Row::new(name, "end-to-end events/s", format!("{eps:.0}"), format!("within 10 % of {what}"), Verdict::of(ok));
    row.ratio = format!("{:.2} of expected", eps / expect);
    row
}
