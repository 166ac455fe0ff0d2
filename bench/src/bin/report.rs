//! Turns one or more `suite.json` files (repeated runs) into BENCHMARKS.md — medians over runs,
//! gateway/peer ratios, the targets checked — and PNG plots: latency CDF, RSS per
//! connection against connections, CPU per delivered message against fan-out size.
//!
//! `report --out BENCHMARKS.md --plots bench/plots --command "bench/run-all" RUN1/suite.json ...`
//!
//! `report --section protocols --out BENCHMARKS.md --command "..." RUN1/suite.json ...`
//! regenerates only that section of an existing BENCHMARKS.md (between its
//! `<!-- section:protocols -->` markers, with its own provenance line), leaving the rest.
//!
//! Text in the plots is drawn with ab_glyph from a TrueType file (`--font`, default
//! DejaVuSans from Debian's fonts-dejavu-core), so no fontconfig or freetype is needed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use serde::Deserialize;
use switchboard_bench::stats::median;

#[derive(Parser)]
#[command(about = "Medians of benchmark runs into BENCHMARKS.md and PNG plots")]
struct Cli {
    /// suite.json files, one per run.
    runs: Vec<PathBuf>,
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Folder for the PNG plots (linked from the Markdown by a path relative to it).
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
    /// The command that produced the runs, for the header.
    #[arg(long, default_value = "bench/run-all")]
    command: String,
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Regenerate only this section of `--out` (`protocols`: TLS, permessage-deflate and
    /// HTTP/2; `subscribe`: client messages to consumer groups), in place.
    #[arg(long)]
    section: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Record {
    scenario: String,
    target: String,
    params: BTreeMap<String, f64>,
    metrics: BTreeMap<String, f64>,
    exact: Option<bool>,
    notes: Vec<String>,
    cdf: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct SuiteFile {
    started: String,
    seconds: f64,
    quick: bool,
    machine: BTreeMap<String, String>,
    records: Vec<Record>,
}

/// Records of every run with the same scenario, target and parameters.
#[derive(Default)]
struct Group {
    runs: Vec<Record>,
}

impl Group {
    fn med(&self, metric: &str) -> Option<f64> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.metrics.get(metric).copied())
            .collect();
        median(&v)
    }

    fn range(&self, metric: &str) -> Option<(f64, f64)> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.metrics.get(metric).copied())
            .collect();
        if v.is_empty() {
            return None;
        }
        Some((
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ))
    }

    fn exact(&self) -> String {
        let known: Vec<bool> = self.runs.iter().filter_map(|r| r.exact).collect();
        if known.is_empty() {
            "–".into()
        } else if known.iter().all(|&e| e) {
            format!("yes ({}/{})", known.len(), known.len())
        } else {
            format!(
                "**no** ({}/{})",
                known.iter().filter(|&&e| e).count(),
                known.len()
            )
        }
    }

    fn notes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.runs.iter().flat_map(|r| r.notes.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

type Key = (String, String, Vec<(String, i64)>);

fn key(r: &Record) -> Key {
    (
        r.scenario.clone(),
        r.target.clone(),
        r.params
            .iter()
            .map(|(k, v)| (k.clone(), v.round() as i64))
            .collect(),
    )
}

struct Data {
    groups: BTreeMap<Key, Group>,
}

impl Data {
    fn get(&self, scenario: &str, target: &str, params: &[(&str, f64)]) -> Option<&Group> {
        let k: Key = (scenario.into(), target.into(), {
            let mut p: Vec<(String, i64)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.round() as i64))
                .collect();
            p.sort();
            p
        });
        self.groups.get(&k)
    }

    fn of(&self, scenario: &str) -> impl Iterator<Item = (&Key, &Group)> {
        let s = scenario.to_owned();
        self.groups.iter().filter(move |(k, _)| k.0 == s)
    }

    fn param(k: &Key, name: &str) -> f64 {
        k.2.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v as f64)
            .unwrap_or(0.0)
    }
}

/// `old` with the block between `<!-- section:NAME -->` and `<!-- /section:NAME -->` replaced by
/// `## title` + `body`; appended when there is no such block.
fn splice_section(old: &str, name: &str, body: &str) -> String {
    let open = format!("<!-- section:{name} -->");
    let close = format!("<!-- /section:{name} -->");
    let block = format!("{open}\n{body}{close}\n");
    match (old.find(&open), old.find(&close)) {
        (Some(a), Some(b)) if b > a => {
            let rest = old[b + close.len()..].trim_start_matches('\n');
            // One blank line before what follows, as the full report leaves it.
            let gap = if rest.is_empty() { "" } else { "\n" };
            format!("{}{block}{gap}{rest}", &old[..a])
        }
        _ if old.is_empty() => block,
        _ => format!("{}\n{block}", old.trim_end_matches('\n').to_owned() + "\n"),
    }
}

/// `Subscribe`: client messages to consumer groups.
fn subscribe_section(d: &Data, md: &mut String) -> Result<()> {
    let subscribe: Vec<(&Key, &Group)> = d.of("subscribe").collect();
    writeln!(md, "## Subscribe: client messages to consumer groups\n")?;
    writeln!(
        md,
        "100 client sockets send stamped 100-byte messages at a paced total rate; each of \
         the consumer groups (one `Subscribe` member each) gets every one as a hub event \
         (`subscribe`, which starts its own gateway and checks every group got every \
         message once and in order per session). Latency is client send to event \
         received; CPU is the gateway's per client message (every group's delivery \
         included).\n"
    )?;
    writeln!(
        md,
        "| groups | asked/s | achieved/s (median) | range | p50 ms | p99 ms | user µs/msg | range | total µs/msg | range | exact |"
    )?;
    writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let range = |g: &Group, m: &str, digits: usize| {
        g.range(m)
            .map(|(a, b)| format!("{a:.digits$}–{b:.digits$}"))
            .unwrap_or_default()
    };
    for (k, g) in subscribe {
        writeln!(
            md,
            "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            Data::param(k, "groups"),
            Data::param(k, "rate"),
            f(g.med("achieved_per_s"), 0),
            range(g, "achieved_per_s", 0),
            f(g.med("p50_ms"), 1),
            f(g.med("p99_ms"), 1),
            f(g.med("cpu_user_us_per_msg"), 2),
            range(g, "cpu_user_us_per_msg", 2),
            f(g.med("cpu_total_us_per_msg"), 2),
            range(g, "cpu_total_us_per_msg", 2),
            g.exact()
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// TLS, permessage-deflate and WebSockets over HTTP/2.
fn protocols_section(d: &Data, md: &mut String) -> Result<()> {
    tls_section(d, md)?;
    compression_section(d, md)?;
    let h2: Vec<(&Key, &Group)> = d.of("http2").collect();
    if h2.is_empty() {
        return Ok(());
    }
    writeln!(md, "## WebSockets over HTTP/2: idle sessions\n")?;
    writeln!(
        md,
        "Idle WebSocket sessions opened as extended CONNECTs (RFC 8441) on cleartext HTTP/2 \
         connections, 100 per connection (`h2hold`); the gateway's RSS after minus before, per \
         session. The HTTP/1.1 figure of the same count (one socket per session) is in the idle \
         table above.\n"
    )?;
    writeln!(
        md,
        "| sessions | per connection | RSS/session KiB (median) | range | HTTP/1.1 RSS/conn KiB |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- |")?;
    for (k, g) in h2 {
        let n = Data::param(k, "sessions");
        let h1 = d
            .get("idle", "switchboard", &[("sockets", n)])
            .and_then(|g| g.med("rss_per_conn_kib"))
            .or_else(|| {
                d.get(
                    "compression",
                    "switchboard",
                    &[("sockets", n), ("deflate", 0.0)],
                )?
                .med("rss_per_conn_kib")
            });
        writeln!(
            md,
            "| {:.0} | {:.0} | {} | {} | {} |",
            n,
            Data::param(k, "per_connection"),
            f(g.med("rss_per_session_kib"), 2),
            g.range("rss_per_session_kib")
                .map(|(a, b)| format!("{a:.2}–{b:.2}"))
                .unwrap_or_default(),
            f(h1, 2),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The gateway over TLS and over plain TCP in the same runs: idle memory, broadcast CPU.
fn tls_section(d: &Data, md: &mut String) -> Result<()> {
    let mut rows: Vec<(&Key, &Group)> = d.of("tls").collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_by_key(|(k, _)| Data::param(k, "tls") as i64);
    writeln!(md, "## TLS: idle sessions and a broadcast\n")?;
    writeln!(
        md,
        "One gateway node serving `wss://` (rustls, TLS 1.3, a certificate from a test CA) and, \
         in the same run, plain `ws://`: sockets opened by the load generators (the \
         fastwebsockets client over rustls for TLS), the gateway's RSS per connection with the \
         sockets idle, then a hub-wide broadcast of ~100 B to every socket; CPU is the \
         gateway's per delivered message. The load generators' own memory per socket is in the \
         last column.\n"
    )?;
    writeln!(md, "| transport | sockets | RSS/conn KiB (median) | range | user µs/msg | total µs/msg | total range | p50 ms | p99 ms | delivered/expected | exact | load generator KiB/socket |")?;
    writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let range = |g: &Group, m: &str| {
        g.range(m)
            .map(|(a, b)| format!("{a:.2}–{b:.2}"))
            .unwrap_or_default()
    };
    for (k, g) in &rows {
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
            if Data::param(k, "tls") > 0.0 {
                "TLS"
            } else {
                "plain TCP"
            },
            Data::param(k, "sockets"),
            f(g.med("rss_per_conn_kib"), 2),
            range(g, "rss_per_conn_kib"),
            f(g.med("cpu_user_us_per_msg"), 2),
            f(g.med("cpu_total_us_per_msg"), 2),
            range(g, "cpu_total_us_per_msg"),
            f(g.med("p50_ms"), 1),
            f(g.med("p99_ms"), 1),
            f(g.med("delivered"), 0),
            f(g.med("expected"), 0),
            g.exact(),
            f(g.med("loadgen_kib_per_socket"), 1),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The permessage-deflate broadcast: each target with and without compression, and the
/// issue's targets for the gateway.
fn compression_section(d: &Data, md: &mut String) -> Result<()> {
    if d.of("compression").next().is_none() {
        return Ok(());
    }
    writeln!(
        md,
        "## permessage-deflate: broadcast of a 2 KiB JSON message\n"
    )?;
    writeln!(
        md,
        "A hub-wide broadcast of a 2,048-byte text message of JSON records (market-data-like, \
         numbers varying from record to record) to 10,000 sockets, once with clients that do not \
         offer permessage-deflate and once with clients that offer it as browsers do \
         (`permessage-deflate; client_max_window_bits`). The gateway compresses each broadcast \
         once (no context takeover) and queues the same frame for every session; nchan stores a \
         compressed copy per message (`nchan_deflate_message_for_websocket on`). *Wire* is what \
         the load generators read off their sockets per delivered message (frame headers \
         included); CPU is the server's per delivered message; RSS per connection is measured \
         with the sockets idle, before the broadcast.\n"
    )?;
    writeln!(md, "| target | compression | RSS/conn KiB | wire B/msg | user µs/msg | sys µs/msg | total µs/msg | total range | p50 ms | delivered/expected | exact |")?;
    writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let mut rows: Vec<(&Key, &Group)> = d.of("compression").collect();
    rows.sort_by_key(|(k, _)| (target_order(&k.1), Data::param(k, "deflate") as i64));
    for (k, g) in &rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            k.1,
            if Data::param(k, "deflate") > 0.0 {
                "permessage-deflate"
            } else {
                "none"
            },
            f(g.med("rss_per_conn_kib"), 2),
            f(g.med("wire_bytes_per_msg"), 0),
            f(g.med("cpu_user_us_per_msg"), 2),
            f(g.med("cpu_sys_us_per_msg"), 2),
            f(g.med("cpu_total_us_per_msg"), 2),
            g.range("cpu_total_us_per_msg")
                .map(|(a, b)| format!("{a:.2}–{b:.2}"))
                .unwrap_or_default(),
            f(g.med("p50_ms"), 1),
            f(g.med("delivered"), 0),
            f(g.med("expected"), 0),
            g.exact()
        )?;
    }
    writeln!(md)?;
    let n = rows
        .first()
        .map(|(k, _)| Data::param(k, "sockets"))
        .unwrap_or(10_000.0);
    let plain = d.get(
        "compression",
        "switchboard",
        &[("sockets", n), ("deflate", 0.0)],
    );
    let deflate = d.get(
        "compression",
        "switchboard",
        &[("sockets", n), ("deflate", 1.0)],
    );
    if let (Some(p), Some(c)) = (plain, deflate) {
        let ratio = |m: &str| Some(c.med(m)? / p.med(m)?);
        let cpu = ratio("cpu_total_us_per_msg");
        let wire = ratio("wire_bytes_per_msg");
        let rss = (c.med("rss_per_conn_kib"), p.med("rss_per_conn_kib"));
        writeln!(
            md,
            "| target (gateway, deflate vs none) | measured (median) | met |"
        )?;
        writeln!(md, "| --- | --- | --- |")?;
        let yes = |ok: Option<bool>| match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        writeln!(
            md,
            "| server CPU per delivered message ≤ 1.5× | {}× | {} |",
            f(cpu, 2),
            yes(cpu.map(|r| r <= 1.5))
        )?;
        writeln!(
            md,
            "| bytes on the wire per message ≤ 0.3× | {}× | {} |",
            f(wire, 2),
            yes(wire.map(|r| r <= 0.3))
        )?;
        // "The same as plain": within the run-to-run spread of the plain figure, or 0.1 KiB.
        let spread = p
            .range("rss_per_conn_kib")
            .map(|(a, b)| (b - a).max(0.1))
            .unwrap_or(0.1);
        let same = match rss {
            (Some(c), Some(p)) => Some(c - p <= spread),
            _ => None,
        };
        writeln!(
            md,
            "| idle RSS per compressed session = plain (within {spread:.2} KiB) | {} vs {} KiB | {} |",
            f(rss.0, 2),
            f(rss.1, 2),
            yes(same)
        )?;
        writeln!(md)?;
    }
    Ok(())
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

fn target_order(t: &str) -> usize {
    [
        "switchboard",
        "switchboard-batch",
        "switchboard-2node",
        "switchboard-2node-batch",
        "switchboard-redis",
        "switchboard-memory",
        "nchan",
        "nchan-Nw",
        "pushpin",
        "bun",
    ]
    .iter()
    // `nchan-2w` and the like: nchan with a worker per core, right after nchan.
    .position(|x| *x == t || (x.starts_with("nchan-") && t.starts_with("nchan-")))
    .unwrap_or(10)
}

/// The publisher's batch period of a unicast group, when it sent with `SendBatch`. Read from
/// the records, not the key, whose parameters are rounded to integers; older runs have no
/// batched rows, so their groups read as unary.
fn batch_ms(g: &Group) -> Option<f64> {
    g.runs
        .iter()
        .find_map(|r| r.params.get("batch_ms").copied())
        .filter(|&ms| ms > 0.0)
}

/// How a unicast row's messages were sent.
fn unicast_mode(target: &str, g: &Group) -> String {
    match batch_ms(g) {
        Some(ms) => {
            let per_call = g
                .med("batch_items_mean")
                .map(|m| format!(", {m:.1} msgs/call"))
                .unwrap_or_default();
            format!("`SendBatch`, {ms} ms batches{per_call}")
        }
        None if target.starts_with("switchboard") => "unary `Send`".into(),
        None => "one HTTP publish per message".into(),
    }
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
];

/// The peers beside the gateway, in table and plot order.
const PEERS: [&str; 3] = ["nchan", "pushpin", "bun"];

fn color(t: &str) -> RGBColor {
    match t {
        "switchboard" => COLORS[0],
        "nchan" => COLORS[1],
        "pushpin" => COLORS[2],
        "bun" => COLORS[3],
        _ => COLORS[4],
    }
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn plot_cdf(path: &Path, title: &str, series: &[(String, Vec<(f64, f64)>)]) -> PlotResult {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0 / 1000.0))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((0.01f64..max_ms * 1.1).log_scale(), 0.0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of deliveries")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, cdf) in series {
        let c = color(name);
        chart
            .draw_series(LineSeries::new(
                cdf.iter().map(|&(us, q)| ((us / 1000.0).max(0.01), q)),
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A named, coloured line of (x, y) points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// Lines of (x, y) points per series name.
fn plot_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> PlotResult {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let max_y = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..max_x * 1.05, 0.0f64..max_y * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, c, pts) in series {
        let c = *c;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

fn rel(from: &Path, to: &Path) -> String {
    // The Markdown sits at the repository root in practice; keep paths relative to its folder.
    let base = from.parent().unwrap_or(Path::new(""));
    to.strip_prefix(base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| to.display().to_string())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(!cli.runs.is_empty(), "give at least one suite.json");
    let mut files = Vec::new();
    for p in &cli.runs {
        let f: SuiteFile = serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("parse {}", p.display()))?;
        files.push(f);
    }
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for f in &files {
        for r in &f.records {
            groups.entry(key(r)).or_default().runs.push(r.clone());
        }
    }
    let d = Data { groups };
    let n_runs = files.len();
    if let Some(section) = &cli.section {
        anyhow::ensure!(
            section == "protocols" || section == "subscribe",
            "unknown section {section:?}"
        );
        let mut body = String::new();
        writeln!(
            body,
            "Generated by `{}` ({} run{}, started {}; gateway revision {}), apart from the rest of \
             this file.\n",
            cli.command,
            n_runs,
            if n_runs == 1 { "" } else { "s" },
            files
                .iter()
                .map(|f| f.started.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            files[0]
                .machine
                .get("revision")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
        )?;
        if section == "protocols" {
            protocols_section(&d, &mut body)?;
        } else {
            subscribe_section(&d, &mut body)?;
        }
        let old = std::fs::read_to_string(&cli.out)
            .with_context(|| format!("read {}", cli.out.display()))?;
        std::fs::write(&cli.out, splice_section(&old, section, &body))?;
        return Ok(());
    }

    let font = std::fs::read(&cli.font).with_context(|| {
        format!(
            "read font {} (apt-get install fonts-dejavu-core)",
            cli.font.display()
        )
    })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("bad font file"))?;
    std::fs::create_dir_all(&cli.plots)?;

    let mut md = String::new();
    let first = &files[0];
    let total: f64 = files.iter().map(|f| f.seconds).sum();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Generated by `{}` ({} run{}{}, {:.0} s of measuring in all; runs started {}). \
         Every figure is the **median over the runs**; ranges are min–max over runs.\n",
        cli.command,
        n_runs,
        if n_runs == 1 { "" } else { "s" },
        if first.quick { ", quick sizes" } else { "" },
        total,
        files
            .iter()
            .map(|f| f.started.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        md,
        "Gateway revision: {}. Machine: {} × {}, {} memory, {}. The machine is shared and noisy: memory per connection \
         and CPU per delivered message are stable from run to run, latency percentiles are \
         not (compare targets within a run, as ratios). Server, load generators and publisher \
         share the same two cores, so every latency includes the client's own scheduling. \
         RSS is `VmRSS` of the server's processes (nginx master + worker; Pushpin's runner, \
         condure, proxy, handler and zurl; the bun process) after minus before, divided by \
         sockets; kernel socket memory (~10 KB per loopback connection, both ends) is not in it. CPU is `utime` and \
         `stime` of the same processes over the measurement, divided by delivered messages \
         ({} Hz ticks). Every load generator checks exact delivery: each expected message once, \
         none lost, none duplicated, none at the wrong socket, each socket's messages in order \
         and each message's bytes as the publisher built them.\n",
        first
            .machine
            .get("revision")
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        first.machine.get("cores").cloned().unwrap_or_default(),
        first.machine.get("cpu").cloned().unwrap_or_default(),
        first.machine.get("memory").cloned().unwrap_or_default(),
        first.machine.get("kernel").cloned().unwrap_or_default(),
        100
    )?;

    // --- targets ---
    let mut checks: Vec<(String, String, bool)> = Vec::new();
    let big = [19_000.0, 10_000.0, 1000.0]
        .into_iter()
        .find_map(|n| Some((n, d.get("idle", "switchboard", &[("sockets", n)])?)));
    if let Some((n, g)) = big {
        let v = g.med("rss_per_conn_kib").unwrap_or(f64::NAN);
        checks.push((
            format!("idle: gateway RSS per connection ≤ 4 KB ({n:.0} sockets)"),
            format!("{v:.2} KiB"),
            v * 1.024 <= 4.0,
        ));
    }
    let fan = [10_000.0, 1000.0].into_iter().find_map(|n| {
        let g = d.get(
            "fanout",
            "switchboard",
            &[("sockets", n), ("payload", 100.0)],
        )?;
        Some((n, g))
    });
    if let Some((n, g)) = fan {
        let user = g.med("cpu_user_us_per_msg").unwrap_or(f64::NAN);
        checks.push((
            format!("broadcast to {n:.0}: user CPU ≤ 1 µs per delivered message"),
            format!("{user:.2} µs"),
            user <= 1.0,
        ));
        if let Some(nc) = d.get("fanout", "nchan", &[("sockets", n), ("payload", 100.0)]) {
            let ours = g.med("cpu_total_us_per_msg").unwrap_or(f64::NAN);
            let theirs = nc.med("cpu_total_us_per_msg").unwrap_or(f64::NAN);
            checks.push((
                format!("broadcast to {n:.0}: total server CPU ≤ 0.85× nchan's"),
                format!("{:.2}× ({ours:.2} vs {theirs:.2} µs)", ours / theirs),
                ours <= 0.85 * theirs,
            ));
            let p99 = g.med("p99_ms").unwrap_or(f64::NAN);
            let np99 = nc.med("p99_ms").unwrap_or(f64::NAN);
            checks.push((
                format!("broadcast to {n:.0}: p99 below nchan's"),
                format!("{p99:.1} vs {np99:.1} ms"),
                p99 < np99,
            ));
        }
    }
    // One gateway node, whichever way it is driven (unary `Send` or `SendBatch`): the best
    // mode counts, and the cell says which one it was.
    let uni: Vec<(&Key, &Group)> = d
        .of("unicast")
        .filter(|(k, _)| k.1 == "switchboard" || k.1 == "switchboard-batch")
        .collect();
    let label = |g: &Group| match batch_ms(g) {
        Some(ms) => format!("`SendBatch`, {ms} ms batches"),
        None => "unary `Send`".to_owned(),
    };
    // A rate with messages lost or duplicated is not a rate the gateway sustains: per mode, the
    // exact row (exact in every run) with the highest median achieved rate, or the best
    // inexact row when a mode has no exact one.
    let all_exact = |g: &Group| g.runs.iter().all(|r| r.exact == Some(true));
    let mut best_by_mode: BTreeMap<String, (bool, f64, f64)> = BTreeMap::new();
    for (k, g) in &uni {
        let Some(v) = g.med("achieved_per_s") else {
            continue;
        };
        let cand = (all_exact(g), v, Data::param(k, "rate"));
        let e = best_by_mode.entry(label(g)).or_insert(cand);
        if (cand.0, cand.1) > (e.0, e.1) {
            *e = cand;
        }
    }
    if let Some((mode, (exact, best, asked))) = best_by_mode.iter().max_by(|a, b| {
        (a.1 .0, a.1 .1)
            .partial_cmp(&(b.1 .0, b.1 .1))
            .unwrap_or(std::cmp::Ordering::Equal)
    }) {
        let exact = *exact;
        let others: Vec<String> = best_by_mode
            .iter()
            .filter(|(m, _)| *m != mode)
            .map(|(m, (_, v, _))| format!("{m}: {v:.0}"))
            .collect();
        checks.push((
            "unicast: ≥ 50,000 msgs/s".into(),
            format!(
                "{best:.0} msgs/s at most, with {mode} (asked {asked:.0}/s{}){}",
                if exact { "" } else { "; **not exact**" },
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join("; "))
                }
            ),
            *best >= 50_000.0 && exact,
        ));
    }
    // Per mode: the row asked for 25,000/s; the lowest median p99 counts.
    let mut at_25k: Vec<(String, f64, f64)> = uni
        .iter()
        .filter(|(k, _)| (Data::param(k, "rate") - 25_000.0).abs() < 1.0)
        .map(|(_, g)| {
            (
                label(g),
                g.med("p99_ms").unwrap_or(f64::NAN),
                g.med("achieved_per_s").unwrap_or(0.0),
            )
        })
        .collect();
    at_25k.sort_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((mode, p99, achieved)) = at_25k.first() {
        let others: Vec<String> = at_25k[1..]
            .iter()
            .map(|(m, p, _)| format!("{m}: {p:.1} ms"))
            .collect();
        checks.push((
            "unicast: p99 ≤ 5 ms at 25,000 msgs/s".into(),
            format!(
                "{p99:.1} ms with {mode} (achieved {achieved:.0}/s){}",
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join("; "))
                }
            ),
            *p99 <= 5.0,
        ));
    }
    if let Some(g) = d.get("churn", "switchboard-redis", &[("concurrency", 64.0)]) {
        let v = g.med("cycles_per_s").unwrap_or(f64::NAN);
        checks.push((
            "churn with Redis: ≥ 2,000 connects+disconnects/s".into(),
            format!("{v:.0}/s"),
            v >= 2000.0,
        ));
    }
    // Against Bun (uWebSockets), in the same runs: memory, and broadcast CPU with a margin
    // that survives the noise (the worst of our runs against the best of Bun's).
    let span = |g: &Group, m: &str| g.range(m).map(|(a, b)| format!("{a:.2}–{b:.2}"));
    for n in [10_000.0] {
        let (Some(ours), Some(bun)) = (
            d.get("idle", "switchboard", &[("sockets", n)]),
            d.get("idle", "bun", &[("sockets", n)]),
        ) else {
            continue;
        };
        let (o, b) = (
            ours.med("rss_per_conn_kib").unwrap_or(f64::NAN),
            bun.med("rss_per_conn_kib").unwrap_or(f64::NAN),
        );
        checks.push((
            format!("idle ({n:.0} sockets): gateway RSS per connection below Bun's"),
            format!(
                "{o:.2} KiB (range {}) vs Bun {b:.2} KiB (range {})",
                span(ours, "rss_per_conn_kib").unwrap_or_default(),
                span(bun, "rss_per_conn_kib").unwrap_or_default()
            ),
            ours.range("rss_per_conn_kib").map(|r| r.1)
                < bun.range("rss_per_conn_kib").map(|r| r.0),
        ));
    }
    for n in [10_000.0] {
        let at = [("sockets", n), ("payload", 100.0)];
        let (Some(ours), Some(bun)) = (
            d.get("fanout", "switchboard", &at),
            d.get("fanout", "bun", &at),
        ) else {
            continue;
        };
        for (what, m) in [
            ("user", "cpu_user_us_per_msg"),
            ("total", "cpu_total_us_per_msg"),
        ] {
            checks.push((
                format!("broadcast to {n:.0}: {what} CPU per delivered message below Bun's in every run"),
                format!(
                    "{} µs (range {}) vs Bun {} µs (range {})",
                    f(ours.med(m), 2),
                    span(ours, m).unwrap_or_default(),
                    f(bun.med(m), 2),
                    span(bun, m).unwrap_or_default()
                ),
                ours.range(m).map(|r| r.1) < bun.range(m).map(|r| r.0),
            ));
        }
        if let Some(nc) = d.get("fanout", "nchan", &at) {
            let m = "cpu_total_us_per_msg";
            let (o, t) = (
                ours.med(m).unwrap_or(f64::NAN),
                nc.med(m).unwrap_or(f64::NAN),
            );
            checks.push((
                format!("broadcast to {n:.0}: total server CPU ≤ 0.7× nchan's"),
                format!("{:.2}× ({o:.2} vs {t:.2} µs)", o / t),
                o <= 0.7 * t,
            ));
        }
    }
    // TLS sessions as lean as plain ones: the idle TLS figure and its cost over plain TCP, in
    // the same run.
    if let Some(tls) = d.get("tls", "switchboard", &[("sockets", 10_000.0), ("tls", 1.0)]) {
        let plain = d
            .get("tls", "switchboard", &[("sockets", 10_000.0), ("tls", 0.0)])
            .and_then(|g| g.med("rss_per_conn_kib"));
        let o = tls.med("rss_per_conn_kib").unwrap_or(f64::NAN);
        checks.push((
            "idle over TLS (10000 sockets): gateway RSS per connection ≤ 5 KiB".into(),
            format!(
                "{o:.2} KiB (range {}); plain TCP in the same runs {} KiB",
                span(tls, "rss_per_conn_kib").unwrap_or_default(),
                f(plain, 2)
            ),
            o <= 5.0,
        ));
    }
    if let Some(best) = best_by_mode.get("unary `Send`") {
        checks.push((
            "unary `Send`: ≥ 50,000 msgs/s".into(),
            format!(
                "{:.0} msgs/s (asked {:.0}/s){}",
                best.1,
                best.2,
                if best.0 { "" } else { "; **not exact**" }
            ),
            best.1 >= 50_000.0 && best.0,
        ));
    }
    for (k, g) in d.of("scale") {
        checks.push((
            format!(
                "{:.0} sockets over {:.0} nodes + Redis Cluster: a hub-wide publish reaches each once",
                Data::param(k, "sockets"),
                Data::param(k, "nodes")
            ),
            format!(
                "{}/{} per run; {} KiB RSS/conn, {} B Redis/session",
                f(g.med("delivered"), 0),
                f(g.med("expected"), 0),
                f(g.med("rss_per_conn_kib"), 2),
                f(g.med("redis_bytes_per_session"), 0)
            ),
            g.runs.iter().all(|r| r.exact == Some(true)),
        ));
    }
    let gw_exact = d
        .groups
        .iter()
        .filter(|(k, _)| k.1.starts_with("switchboard"))
        .flat_map(|(_, g)| g.runs.iter().filter_map(|r| r.exact))
        .collect::<Vec<_>>();
    // A measurement is not exact when a socket failed to open, too; say which it was.
    let connect_only = d
        .groups
        .iter()
        .filter(|(k, _)| k.1.starts_with("switchboard"))
        .flat_map(|(_, g)| g.runs.iter())
        .filter(|r| {
            r.exact == Some(false)
                && r.metrics.contains_key("delivered")
                && r.metrics.get("delivered") == r.metrics.get("expected")
        })
        .count();
    checks.push((
        "exactly once everywhere (gateway rows)".into(),
        format!(
            "{}/{} measurements exact{}",
            gw_exact.iter().filter(|&&e| e).count(),
            gw_exact.len(),
            if connect_only > 0 {
                format!(
                    "; in {connect_only} other(s) every open socket got every message once, \
                     but a socket failed to open (see the notes)"
                )
            } else {
                String::new()
            }
        ),
        gw_exact.iter().all(|&e| e),
    ));
    writeln!(md, "## The issue's targets\n")?;
    writeln!(md, "| target | measured (median) | met |")?;
    writeln!(md, "| --- | --- | --- |")?;
    for (what, v, ok) in &checks {
        writeln!(
            md,
            "| {what} | {v} | {} |",
            if *ok { "yes" } else { "**no**" }
        )?;
    }
    writeln!(md)?;

    // --- idle ---
    writeln!(md, "## Idle connections: server RSS per connection\n")?;
    writeln!(
        md,
        "One server process (nginx: one worker; Bun: one process, whose JavaScript and \
         uWebSockets event loop run on one thread), sockets opened at a fixed rate from several \
         load-generator processes bound to different 127.0.0.x source addresses. Server \
         keepalive pings are off on every side (nchan: `nchan_websocket_ping_interval 0`; Bun: \
         `sendPings: false`, `idleTimeout: 0`; gateway: `--ping-interval 1h`), so no ping round \
         lands in a measured window. Each nchan and Bun socket joins its own channel and the \
         broadcast channel `all`.\n"
    )?;
    writeln!(md, "| target | sockets | RSS/conn KiB (median) | range | RSS before → after MiB | load generator KiB/socket |")?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- |")?;
    let mut idle: Vec<(&Key, &Group)> = d.of("idle").collect();
    idle.sort_by(|a, b| {
        (target_order(&a.0 .1), Data::param(a.0, "sockets") as i64)
            .cmp(&(target_order(&b.0 .1), Data::param(b.0, "sockets") as i64))
    });
    for (k, g) in &idle {
        let r = g.range("rss_per_conn_kib");
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} → {} | {} |",
            k.1,
            Data::param(k, "sockets"),
            f(g.med("rss_per_conn_kib"), 2),
            r.map(|(a, b)| format!("{a:.2}–{b:.2}")).unwrap_or_default(),
            f(g.med("rss_before_kib").map(|v| v / 1024.0), 1),
            f(g.med("rss_after_kib").map(|v| v / 1024.0), 1),
            f(g.med("loadgen_rss_per_conn_kib"), 2),
        )?;
    }
    for (k, g) in d.of("multinode") {
        writeln!(
            md,
            "| switchboard, {:.0} nodes + Redis | {:.0} | {} | {} | – | – |",
            Data::param(k, "nodes"),
            Data::param(k, "sockets"),
            f(g.med("rss_per_conn_kib"), 2),
            g.range("rss_per_conn_kib")
                .map(|(a, b)| format!("{a:.2}–{b:.2}"))
                .unwrap_or_default(),
        )?;
    }
    writeln!(md)?;
    let multinode: Vec<(&Key, &Group)> = d.of("multinode").collect();
    if !multinode.is_empty() {
        writeln!(md, "Several nodes: a hub-wide Publish sent to one node reaches every socket of every node.\n")?;
        writeln!(md, "| nodes | sockets | broadcast p50 / p99 ms | CPU µs/msg (all nodes) | delivered/expected | exact |")?;
        writeln!(md, "| --- | --- | --- | --- | --- | --- |")?;
        for (k, g) in multinode {
            writeln!(
                md,
                "| {:.0} | {:.0} | {} / {} | {} | {}/{} | {} |",
                Data::param(k, "nodes"),
                Data::param(k, "sockets"),
                f(g.med("p50_ms"), 1),
                f(g.med("p99_ms"), 1),
                f(g.med("cpu_total_us_per_msg"), 2),
                f(g.med("delivered"), 0),
                f(g.med("expected"), 0),
                g.exact()
            )?;
        }
        writeln!(md)?;
    }

    if d.of("subscribe").next().is_some() {
        let mut body = String::new();
        subscribe_section(&d, &mut body)?;
        md.push_str(&splice_section("", "subscribe", &body));
        md.push('\n');
    }

    let scale: Vec<(&Key, &Group)> = d.of("scale").collect();
    if !scale.is_empty() {
        writeln!(md, "## Six nodes and a Redis Cluster\n")?;
        writeln!(
            md,
            "Six gateway nodes share a three-master Redis Cluster (no replicas, persistence off); \
             load generators of at most 10,000 sockets each offer 20,000 connects a second in \
             all, spread evenly over the nodes (a reconnect storm: the nodes take them as fast \
             as `--max-handshakes` lets them); then three hub-wide Publishes through \
             one node, each reaching every socket once, and a quiet period in which nothing more \
             may arrive. Memory is measured at rest after the connects: gateway RSS over every \
             node, Redis `used_memory` over every master (the session record, its index entries \
             and the node's sets), and the kernel's, machine-wide, per connection (both ends are \
             on this machine: the client's socket is counted too). *To last* is the time from a \
             publish until the last socket got it (median of the three).\n"
        )?;
        writeln!(md, "| nodes | sockets | connects/s | gateway RSS/conn KiB (median) | range | Redis B/session | Redis keys/session | kernel TCP buffers KiB/conn | kernel slab KiB/conn | to last ms | delivered/expected | exact |")?;
        writeln!(
            md,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        for (k, g) in scale {
            writeln!(
                md,
                "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
                Data::param(k, "nodes"),
                Data::param(k, "sockets"),
                f(g.med("connects_per_s"), 0),
                f(g.med("rss_per_conn_kib"), 2),
                g.range("rss_per_conn_kib")
                    .map(|(a, b)| format!("{a:.2}–{b:.2}"))
                    .unwrap_or_default(),
                f(g.med("redis_bytes_per_session"), 0),
                f(g.med("redis_keys_per_session"), 2),
                f(g.med("kernel_tcp_kib_per_conn"), 2),
                f(g.med("kernel_slab_kib_per_conn"), 2),
                f(g.med("to_last_ms"), 1),
                f(g.med("delivered"), 0),
                f(g.med("expected"), 0),
                g.exact()
            )?;
        }
        writeln!(md)?;
        for (_, g) in d.of("scale") {
            writeln!(
                md,
                "Once every socket has closed, Redis holds {} B and {} keys per closed session: \
                 the tombstones that let `CheckSessions` answer *closed* for 10 minutes.\n",
                f(g.med("redis_closed_bytes_per_session"), 0),
                f(g.med("redis_closed_keys_per_session"), 2),
            )?;
        }
    }

    // --- fan-out ---
    writeln!(md, "## Broadcast fan-out\n")?;
    writeln!(
        md,
        "A hub-wide Publish (nchan: `POST /pub/all`; Pushpin: an HTTP publish to channel `all`; \
         Bun: `POST /pub/all`, which calls `server.publish(\"all\", body)`) repeated at a fixed \
         interval; latency is publisher send stamp to client receive, over every delivery; *to \
         last* is the time until the last socket got a message (median over messages). CPU is \
         the server's, per delivered message.\n"
    )?;
    writeln!(md, "| target | sockets | payload | p50 ms | p90 ms | p99 ms | max ms | to last ms | user µs/msg | sys µs/msg | total µs/msg | delivered/expected | exact |")?;
    writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let mut fo: Vec<(&Key, &Group)> = d.of("fanout").collect();
    fo.sort_by(|a, b| {
        (
            Data::param(a.0, "payload") as i64,
            Data::param(a.0, "sockets") as i64,
            target_order(&a.0 .1),
        )
            .cmp(&(
                Data::param(b.0, "payload") as i64,
                Data::param(b.0, "sockets") as i64,
                target_order(&b.0 .1),
            ))
    });
    for (k, g) in &fo {
        writeln!(
            md,
            "| {} | {:.0} | {:.0} B | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            k.1,
            Data::param(k, "sockets"),
            Data::param(k, "payload"),
            f(g.med("p50_ms"), 1),
            f(g.med("p90_ms"), 1),
            f(g.med("p99_ms"), 1),
            f(g.med("max_ms"), 1),
            f(g.med("to_last_p50_ms"), 1),
            f(g.med("cpu_user_us_per_msg"), 2),
            f(g.med("cpu_sys_us_per_msg"), 2),
            f(g.med("cpu_total_us_per_msg"), 2),
            f(g.med("delivered"), 0),
            f(g.med("expected"), 0),
            g.exact()
        )?;
    }
    writeln!(md)?;
    // Ratios gateway / peer.
    let mut ratio_rows = Vec::new();
    for (k, g) in &fo {
        if k.1 != "switchboard" {
            continue;
        }
        let params: Vec<(&str, f64)> = vec![
            ("sockets", Data::param(k, "sockets")),
            ("payload", Data::param(k, "payload")),
        ];
        for peer in PEERS {
            if let Some(p) = d.get("fanout", peer, &params) {
                let r = |m: &str| match (g.med(m), p.med(m)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".into(),
                };
                let rss = match (
                    d.get("idle", "switchboard", &[("sockets", params[0].1)])
                        .and_then(|g| g.med("rss_per_conn_kib")),
                    d.get("idle", peer, &[("sockets", params[0].1)])
                        .and_then(|g| g.med("rss_per_conn_kib")),
                ) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".into(),
                };
                ratio_rows.push(format!(
                    "| {peer} | {:.0} | {:.0} B | {} | {} | {} | {} | {} |",
                    params[0].1,
                    params[1].1,
                    r("cpu_total_us_per_msg"),
                    r("cpu_user_us_per_msg"),
                    r("p50_ms"),
                    r("p99_ms"),
                    rss
                ));
            }
        }
    }
    if !ratio_rows.is_empty() {
        writeln!(
            md,
            "Gateway / peer ratios (below 1: the gateway uses less or is faster):\n"
        )?;
        writeln!(
            md,
            "| peer | sockets | payload | total CPU | user CPU | p50 | p99 | RSS/conn |"
        )?;
        writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
        for r in ratio_rows {
            writeln!(md, "{r}")?;
        }
        writeln!(md)?;
    }

    // --- unicast ---
    writeln!(md, "## Unicast\n")?;
    writeln!(
        md,
        "Messages to one socket each, paced at the asked rate for a fixed time, with the sockets \
         otherwise idle. One message per call (Switchboard: gRPC `Send` from 256 concurrent \
         callers over 4 HTTP/2 connections; nchan and Bun: `POST /pub/<id>` over 64 keep-alive \
         connections; Pushpin: an HTTP publish per message, 64 callers, a new connection per \
         request since Pushpin answers `Connection: close`), or, in the `-batch` rows, gRPC \
         `SendBatch`: every batch period the publisher sends every message already due in one \
         call (at most 16 calls in flight over 4 connections), and stamps each message with its \
         due time, so the wait for the batch is part of the latency. The gateway's batched \
         rows run over the same open sockets right after its unary rows. `switchboard-2node`: \
         the sockets are on node A, the calls go to node B, which forwards them to A (Redis \
         registry). Steps stop once a target falls below 70% of the asked rate. CPU is the \
         server's (both nodes for 2-node).\n"
    )?;
    writeln!(md, "| target | calls | sockets | asked/s | achieved/s | p50 ms | p90 ms | p99 ms | max ms | user µs/msg | sys µs/msg | publisher µs/msg | delivered/expected | exact |")?;
    writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let mut un: Vec<(&Key, &Group)> = d.of("unicast").collect();
    un.sort_by(|a, b| {
        (target_order(&a.0 .1), Data::param(a.0, "rate") as i64)
            .cmp(&(target_order(&b.0 .1), Data::param(b.0, "rate") as i64))
    });
    for (k, g) in &un {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            k.1,
            unicast_mode(&k.1, g),
            Data::param(k, "sockets"),
            Data::param(k, "rate"),
            f(g.med("achieved_per_s"), 0),
            f(g.med("p50_ms"), 1),
            f(g.med("p90_ms"), 1),
            f(g.med("p99_ms"), 1),
            f(g.med("max_ms"), 1),
            f(g.med("cpu_user_us_per_msg"), 2),
            f(g.med("cpu_sys_us_per_msg"), 2),
            f(g.med("publisher_cpu_us_per_msg"), 1),
            f(g.med("delivered"), 0),
            f(g.med("expected"), 0),
            g.exact()
        )?;
    }
    writeln!(md)?;

    // --- churn ---
    writeln!(md, "## Connect churn\n")?;
    writeln!(
        md,
        "64 loops at once: connect, upgrade, close handshake, reconnect. Redis commands and \
         reads per connect are `INFO commandstats` / `total_reads_processed` deltas divided by \
         completed cycles (one cycle = one connect + one disconnect; reads < commands because \
         the gateway pipelines and its connection multiplexes concurrent connects).\n"
    )?;
    writeln!(md, "| registry | cycles/s | range | handshake p50 / p99 ms | errors | Redis commands/connect | Redis reads/connect | gateway CPU µs/cycle |")?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for (k, g) in d.of("churn") {
        writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            k.1.trim_start_matches("switchboard-"),
            f(g.med("cycles_per_s"), 0),
            g.range("cycles_per_s")
                .map(|(a, b)| format!("{a:.0}–{b:.0}"))
                .unwrap_or_default(),
            f(g.med("handshake_p50_ms"), 1),
            f(g.med("handshake_p99_ms"), 1),
            f(g.med("errors"), 0),
            f(g.med("redis_commands_per_connect"), 2),
            f(g.med("redis_reads_per_connect"), 2),
            f(g.med("cpu_us_per_cycle"), 1),
        )?;
        for n in g.notes() {
            writeln!(md, "\n*{}*: {n}", k.1)?;
        }
    }
    writeln!(md)?;

    // --- flood ---
    writeln!(md, "## Single-socket throughput\n")?;
    writeln!(
        md,
        "One socket; a backend writes binary messages on an `Attach` stream as fast as the \
         stream takes them (backpressure from the session's outbound queue); throughput is \
         measured at the client from the first send stamp to the last receive.\n"
    )?;
    writeln!(
        md,
        "| payload | msgs/s | MB/s | p50 ms | p99 ms | delivered/expected | exact |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |")?;
    let mut fl: Vec<(&Key, &Group)> = d.of("flood").collect();
    fl.sort_by_key(|(k, _)| Data::param(k, "payload") as i64);
    for (k, g) in fl {
        writeln!(
            md,
            "| {:.0} B | {} | {} | {} | {} | {}/{} | {} |",
            Data::param(k, "payload"),
            f(g.med("msgs_per_s"), 0),
            f(g.med("mb_per_s"), 1),
            f(g.med("p50_ms"), 1),
            f(g.med("p99_ms"), 1),
            f(g.med("delivered"), 0),
            f(g.med("expected"), 0),
            g.exact()
        )?;
    }
    writeln!(md)?;

    if ["tls", "compression", "http2"]
        .iter()
        .any(|s| d.of(s).next().is_some())
    {
        let mut body = String::new();
        protocols_section(&d, &mut body)?;
        md.push_str(&splice_section("", "protocols", &body));
        md.push('\n');
    }

    // --- notes ---
    let mut notes = Vec::new();
    for (k, g) in &d.groups {
        let params =
            k.2.iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
        for n in g.notes() {
            if k.0 != "churn" {
                notes.push(format!("- {} / {} ({params}): {n}", k.0, k.1));
            }
        }
        for (i, r) in g.runs.iter().enumerate() {
            if let (Some(opened), Some((_, n))) = (
                r.metrics.get("opened"),
                k.2.iter().find(|(p, _)| p == "sockets"),
            ) {
                if *opened < *n as f64 && k.0 != "idle" {
                    notes.push(format!(
                        "- {} / {} ({params}), a run ({} of {}): {:.0} of {n} sockets failed to open",
                        k.0,
                        k.1,
                        i + 1,
                        g.runs.len(),
                        *n as f64 - opened
                    ));
                }
            }
            let (Some(del), Some(exp)) = (r.metrics.get("delivered"), r.metrics.get("expected"))
            else {
                continue;
            };
            if del < exp {
                notes.push(format!(
                    "- {} / {} ({params}), a run ({} of {}): {:.0} of {:.0} expected messages \
                     never arrived at sockets that were open",
                    k.0,
                    k.1,
                    i + 1,
                    g.runs.len(),
                    exp - del,
                    exp
                ));
            }
        }
    }
    if !notes.is_empty() {
        writeln!(md, "## Notes from the runs\n")?;
        for n in notes {
            writeln!(md, "{n}")?;
        }
        writeln!(md)?;
    }

    // --- plots ---
    writeln!(md, "## Plots\n")?;
    let cdf_n = [10_000.0, 1000.0].into_iter().find(|&n| {
        d.get(
            "fanout",
            "switchboard",
            &[("sockets", n), ("payload", 100.0)],
        )
        .is_some()
    });
    if let Some(n) = cdf_n {
        let mut series = Vec::new();
        for t in std::iter::once("switchboard").chain(PEERS) {
            if let Some(g) = d.get("fanout", t, &[("sockets", n), ("payload", 100.0)]) {
                // The run whose p50 is the median one.
                let med = g.med("p50_ms").unwrap_or(0.0);
                if let Some(r) = g.runs.iter().min_by(|a, b| {
                    let da = (a.metrics.get("p50_ms").copied().unwrap_or(0.0) - med).abs();
                    let db = (b.metrics.get("p50_ms").copied().unwrap_or(0.0) - med).abs();
                    da.total_cmp(&db)
                }) {
                    if !r.cdf.is_empty() {
                        series.push((t.to_owned(), r.cdf.clone()));
                    }
                }
            }
        }
        let p = cli.plots.join("latency-cdf.png");
        plot_cdf(
            &p,
            &format!("Broadcast latency CDF, {n:.0} sockets, 100 B (median run)"),
            &series,
        )
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        writeln!(md, "![latency CDF]({})\n", rel(&cli.out, &p))?;
    }
    let mut rss_series = Vec::new();
    for t in std::iter::once("switchboard").chain(PEERS) {
        let mut pts: Vec<(f64, f64)> = d
            .of("idle")
            .filter(|(k, _)| k.1 == t)
            .filter_map(|(k, g)| Some((Data::param(k, "sockets"), g.med("rss_per_conn_kib")?)))
            .collect();
        if t == "switchboard" {
            pts.extend(d.of("multinode").filter_map(|(k, g)| {
                Some((Data::param(k, "sockets"), g.med("rss_per_conn_kib")?))
            }));
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !pts.is_empty() {
            rss_series.push((t.to_owned(), color(t), pts));
        }
    }
    if !rss_series.is_empty() {
        let p = cli.plots.join("rss-per-connection.png");
        plot_lines(
            &p,
            "Server RSS per idle connection",
            "open sockets (switchboard above 19k: several nodes)",
            "KiB per connection",
            &rss_series,
        )
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        writeln!(md, "![RSS per connection]({})\n", rel(&cli.out, &p))?;
    }
    let mut cpu_series = Vec::new();
    for t in std::iter::once("switchboard").chain(PEERS) {
        for (metric, label) in [
            ("cpu_user_us_per_msg", "user"),
            ("cpu_sys_us_per_msg", "system"),
        ] {
            let mut pts: Vec<(f64, f64)> = d
                .of("fanout")
                .filter(|(k, _)| k.1 == t && Data::param(k, "payload") == 100.0)
                .filter_map(|(k, g)| Some((Data::param(k, "sockets"), g.med(metric)?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                let mut c = color(t);
                if label == "system" {
                    c = RGBColor(c.0 / 2, c.1 / 2, c.2 / 2);
                }
                cpu_series.push((format!("{t} {label}"), c, pts));
            }
        }
    }
    if !cpu_series.is_empty() {
        let p = cli.plots.join("cpu-per-message.png");
        plot_lines(
            &p,
            "Server CPU per delivered message, 100 B broadcast",
            "fan-out size (sockets)",
            "µs per delivered message",
            &cpu_series,
        )
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        writeln!(md, "![CPU per message]({})\n", rel(&cli.out, &p))?;
    }

    writeln!(md, "## Reproduce\n")?;
    writeln!(
        md,
        "`bench/run-all` (everything, three runs, with peers; installs nginx + nchan, Pushpin, \
         Node, redis-server and a font from Debian's packages and Bun 1.4.4 from npm when \
         missing), `bench/run-all --quick` (small sizes), `bench/smoke` (exact delivery only, for \
         CI). Scenario by scenario: `target/release/suite run --out DIR --only \
         fanout,unicast,churn,flood,multinode,scale,subscribe [--quick] [--peers nchan,pushpin,bun|none]`, then \
         `target/release/report DIR*/suite.json`. The load generator and publisher run alone \
         too: see `bench/README.md`."
    )?;
    std::fs::write(&cli.out, md)?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
