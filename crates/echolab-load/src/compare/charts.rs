//! compare's charts: first the data behind each chart ([`ChartData`], pure, written into
//! results.json as `charts`), then its SVG drawn from that data alone (plotters), so what
//! a chart shows and what results.json says it shows cannot differ.
//!
//! Every chart asks a question in its title, names its units on both axes, draws the
//! run-to-run spread (whiskers from the lowest to the highest run), marks a model that left
//! connections unserved ("served 8/64", hollow point, in the legend too) and never names it
//! best, and draws the reference C servers (ref_epoll, ref_threads) as dashed lines.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::output::{Median, ModelRuns, Results, RunSample};
use super::{Placement, Workload};
use crate::cli::MODELS;

type ChartResult = Result<(), Box<dyn Error>>;

/// A figure read from one run, and the same figure from the median of the runs.
type Figure = (fn(&RunSample) -> f64, fn(&Median) -> f64);

/// One point of a series: a median with the lowest and highest run beside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    /// Connections (a line chart) or the index of a category (see [`ChartData::categories`]).
    pub x: f64,
    pub median: f64,
    /// The lowest and highest run: the whisker.
    pub min: f64,
    pub max: f64,
    /// Runs behind the point.
    pub runs: usize,
    /// Connections the workload opened.
    pub conns: usize,
    /// Connections the model never echoed to in some run.
    pub unserved_conns: u64,
    /// "served 8/64" when some connections were never served: the figure is that of the
    /// few, so the point is marked and not ranked.
    pub served: Option<String>,
    /// Whether the point may be ranked best (every connection served).
    pub ranked: bool,
}

/// One line (or set of bars) of a chart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    /// What the legend says: the model, "ref_epoll (C reference)", or a placement.
    pub name: String,
    /// The model whose colour the series takes (a placement series: its own name).
    pub color_key: String,
    /// A reference C server: drawn dashed, never ranked.
    pub reference: bool,
    /// The first "served N/M" of its points, repeated in the legend.
    pub served: Option<String>,
    pub points: Vec<Point>,
}

/// The model a chart names best, on the figure and at the point it says.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Best {
    pub model: String,
    pub value: f64,
    /// Where: "at 64 connections", "p99", "idle".
    pub at: String,
}

/// Everything one chart draws.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChartData {
    /// The SVG's file name in the output folder.
    pub file: String,
    /// The title: the question the chart answers.
    pub question: String,
    /// The axes' descriptions, units included.
    pub x_axis: String,
    pub y_axis: String,
    pub x_log: bool,
    pub y_log: bool,
    /// Named x positions (bars, percentiles); empty when x is a number of connections.
    pub categories: Vec<String>,
    /// Bars instead of points (with a value printed over each bar).
    pub bars: bool,
    /// Whether a series' points are joined by a line.
    pub connect: bool,
    pub lower_is_better: bool,
    /// Lines printed under the chart, computed from its figures.
    pub notes: Vec<String>,
    /// The best ranked model (never one with unserved connections, never a reference).
    pub best: Option<Best>,
    pub series: Vec<Series>,
}

/// A reference C server, by the name compare gives it.
pub fn is_reference(model: &str) -> bool {
    model.starts_with("ref_")
}

/// The legend's name for a model.
fn series_name(model: &str) -> String {
    if is_reference(model) {
        format!("{model} (C reference)")
    } else {
        model.to_string()
    }
}

/// "served 8/64", or nothing when every connection was served.
pub fn served_label(unserved: u64, conns: usize) -> Option<String> {
    (unserved > 0).then(|| {
        let served = (conns as u64).saturating_sub(unserved);
        format!("served {served}/{conns}")
    })
}

/// A point from one model's runs: the median's figure, the whisker from the runs that
/// completed (every run when none did).
fn point(
    x: f64,
    conns: usize,
    runs: &ModelRuns,
    of_run: fn(&RunSample) -> f64,
    of_median: fn(&Median) -> f64,
) -> Option<Point> {
    let median = runs.median.as_ref()?;
    let clean: Vec<f64> = runs
        .runs
        .iter()
        .filter(|r| r.error.is_none())
        .map(of_run)
        .collect();
    let values = if clean.is_empty() {
        runs.runs.iter().map(of_run).collect()
    } else {
        clean
    };
    let mid = of_median(median);
    let min = values.iter().copied().fold(mid, f64::min);
    let max = values.iter().copied().fold(mid, f64::max);
    Some(Point {
        x,
        median: mid,
        min,
        max,
        runs: median.runs,
        conns,
        unserved_conns: median.unserved_conns,
        served: served_label(median.unserved_conns, conns),
        ranked: median.unserved_conns == 0,
    })
}

/// Adds `p` to the series of `name` (created in first-seen order).
fn add(series: &mut Vec<Series>, name: &str, color_key: &str, reference: bool, p: Point) {
    let idx = match series.iter().position(|s| s.name == name) {
        Some(idx) => idx,
        None => {
            series.push(Series {
                name: name.to_string(),
                color_key: color_key.to_string(),
                reference,
                served: None,
                points: Vec::new(),
            });
            series.len() - 1
        }
    };
    let s = &mut series[idx];
    if s.served.is_none() {
        s.served.clone_from(&p.served);
    }
    s.points.push(p);
}

/// The best ranked point among the series at `x` (or anywhere when `x` is `None`).
fn best(series: &[Series], x: Option<f64>, lower: bool, at: &str) -> Option<Best> {
    let mut found: Option<Best> = None;
    for s in series.iter().filter(|s| !s.reference) {
        for p in &s.points {
            if !p.ranked || x.is_some_and(|x| p.x != x) || (lower && p.median <= 0.0) {
                continue;
            }
            let better = match &found {
                None => true,
                Some(b) => {
                    if lower {
                        p.median < b.value
                    } else {
                        p.median > b.value
                    }
                }
            };
            if better {
                found = Some(Best {
                    model: s.name.clone(),
                    value: p.median,
                    at: at.to_string(),
                });
            }
        }
    }
    found
}

/// The closed-loop TCP workloads of `size` bytes that the scheduler places (unpinned).
fn closed_of_size(results: &Results, size: usize) -> impl Iterator<Item = &super::output::WorkloadResults> {
    results
        .workloads
        .iter()
        .filter(move |w| is_closed_tcp(&w.workload) && w.workload.size == size)
}

fn is_closed_tcp(w: &Workload) -> bool {
    !w.churn && !w.udp && w.pin.is_none()
}

/// The line chart of one figure against connections (64-byte messages), a line per model.
fn against_conns(
    results: &Results,
    of_run: fn(&RunSample) -> f64,
    of_median: fn(&Median) -> f64,
    lower: bool,
) -> (Vec<Series>, Vec<String>) {
    let mut series = Vec::new();
    for w in closed_of_size(results, 64) {
        for (model, runs) in &w.models {
            let x = w.workload.conns as f64;
            if let Some(p) = point(x, w.workload.conns, runs, of_run, of_median) {
                add(&mut series, &series_name(model), model, is_reference(model), p);
            }
        }
    }
    let mut notes = Vec::new();
    let mut counts: Vec<usize> = closed_of_size(results, 64).map(|w| w.workload.conns).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.len() < 3 {
        notes.push(format!(
            "Measured at {} connection counts only ({}): a line between two points is not a measurement.",
            counts.len(),
            counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" and ")
        ));
    }
    let _ = lower;
    (series, notes)
}

/// Whisker and served notes every chart with runs carries.
fn spread_note(series: &[Series]) -> String {
    let runs = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.runs)
        .max()
        .unwrap_or(0);
    let unserved: Vec<&str> = series
        .iter()
        .filter(|s| s.served.is_some())
        .map(|s| s.name.as_str())
        .collect();
    let mut note = format!("Points are medians of {runs} runs; whiskers span the lowest to the highest run.");
    if !unserved.is_empty() {
        note.push_str(&format!(
            " Hollow points marked \"served N/M\" ({}) left connections unserved: their figure is that of the few and is not ranked.",
            unserved.join(", ")
        ));
    }
    note
}

fn best_note(best: &Option<Best>, unit: &str) -> String {
    match best {
        Some(b) => format!(
            "Best {} among the models that served every connection: {} ({} {unit}).",
            b.at,
            b.model,
            figure(b.value)
        ),
        None => "No model served every connection here: none is ranked.".to_string(),
    }
}

/// A figure with three significant digits at most, no exponent.
pub fn figure(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The largest connection count of the 64-byte closed-loop workloads.
fn busiest(results: &Results) -> Option<usize> {
    closed_of_size(results, 64).map(|w| w.workload.conns).max()
}

fn throughput(results: &Results) -> ChartData {
    let (series, mut notes) = against_conns(
        results,
        |r| r.messages_per_sec,
        |m| m.messages_per_sec,
        false,
    );
    let at = busiest(results);
    let best = best(
        &series,
        at.map(|c| c as f64),
        false,
        &format!("at {} connections", at.unwrap_or(0)),
    );
    notes.insert(0, spread_note(&series));
    notes.push(best_note(&best, "messages/s"));
    ChartData {
        file: "throughput_vs_conns.svg".to_string(),
        question: "Which model echoes the most messages per second as connections grow?".to_string(),
        x_axis: "connections (count, log scale)".to_string(),
        y_axis: "messages per second (msgs/s, 64 B, closed loop)".to_string(),
        x_log: true,
        y_log: false,
        categories: Vec::new(),
        bars: false,
        connect: true,
        lower_is_better: false,
        notes,
        best,
        series,
    }
}

fn cpu_vs_conns(results: &Results) -> ChartData {
    let (series, mut notes) = against_conns(
        results,
        |r| r.server_cpu_us_per_msg,
        |m| m.server_cpu_us_per_msg,
        true,
    );
    let at = busiest(results);
    let best = best(
        &series,
        at.map(|c| c as f64),
        true,
        &format!("at {} connections", at.unwrap_or(0)),
    );
    notes.insert(0, spread_note(&series));
    if !series.iter().any(|s| s.reference) {
        notes.push(
            "No reference C server ran (build them with scripts/build-ref.sh, or pass --ref-dir).".to_string(),
        );
    }
    notes.push(best_note(&best, "µs/msg"));
    ChartData {
        file: "cpu_per_msg_vs_conns.svg".to_string(),
        question: "Which model spends the least server CPU per message as connections grow?".to_string(),
        x_axis: "connections (count, log scale)".to_string(),
        y_axis: "server CPU per message (µs/msg, user + system, 64 B)".to_string(),
        x_log: true,
        y_log: true,
        categories: Vec::new(),
        bars: false,
        connect: true,
        lower_is_better: true,
        notes,
        best,
        series,
    }
}

/// CPU per message on every closed-loop TCP workload (pinned ones included), a point per
/// model per workload.
fn cpu_by_workload(results: &Results) -> ChartData {
    let workloads: Vec<&super::output::WorkloadResults> = results
        .workloads
        .iter()
        .filter(|w| !w.workload.churn && !w.workload.udp)
        .collect();
    let mut series = Vec::new();
    for (idx, w) in workloads.iter().enumerate() {
        for (model, runs) in &w.models {
            let p = point(
                idx as f64,
                w.workload.conns,
                runs,
                |r| r.server_cpu_us_per_msg,
                |m| m.server_cpu_us_per_msg,
            );
            if let Some(p) = p {
                add(&mut series, &series_name(model), model, is_reference(model), p);
            }
        }
    }
    let notes = vec![
        spread_note(&series),
        "Churn is left out: its cost is per connection, not per message (see its table).".to_string(),
    ];
    ChartData {
        file: "cpu_per_msg_by_workload.svg".to_string(),
        question: "What does a message cost the server in CPU, workload by workload?".to_string(),
        x_axis: "workload (message size × connections)".to_string(),
        y_axis: "server CPU per message (µs/msg, log scale)".to_string(),
        x_log: false,
        y_log: true,
        categories: workloads.iter().map(|w| w.workload.name.clone()).collect(),
        bars: false,
        connect: false,
        lower_is_better: true,
        notes,
        best: None,
        series,
    }
}

/// Latency percentiles at the busiest 64-byte workload, a line per model.
fn latency(results: &Results) -> ChartData {
    let workload = closed_of_size(results, 64).max_by_key(|w| w.workload.conns);
    let name = workload.map_or("no data".to_string(), |w| w.workload.name.clone());
    let figures: [Figure; 4] = [
        (|r| r.p50_us, |m| m.p50_us),
        (|r| r.p90_us, |m| m.p90_us),
        (|r| r.p99_us, |m| m.p99_us),
        (|r| r.p999_us, |m| m.p999_us),
    ];
    let mut series = Vec::new();
    if let Some(w) = workload {
        for (model, runs) in &w.models {
            for (i, (of_run, of_median)) in figures.iter().enumerate() {
                if let Some(p) = point(i as f64, w.workload.conns, runs, *of_run, *of_median) {
                    add(&mut series, &series_name(model), model, is_reference(model), p);
                }
            }
        }
    }
    let best = best(&series, Some(2.0), true, "p99");
    let notes = vec![spread_note(&series), best_note(&best, "µs")];
    ChartData {
        file: "latency_percentiles.svg".to_string(),
        question: format!("Which model answers fastest, and how long is its tail? ({name})"),
        x_axis: "percentile of messages (p50 … p99.9)".to_string(),
        y_axis: "round-trip latency (µs, log scale)".to_string(),
        x_log: false,
        y_log: true,
        categories: ["p50", "p90", "p99", "p99.9"].map(str::to_string).to_vec(),
        bars: false,
        connect: true,
        lower_is_better: true,
        notes,
        best,
        series,
    }
}

/// One connection pinned both ways: messages/s per model, same CPU against different CPUs.
fn placement(results: &Results) -> Option<ChartData> {
    let pinned: Vec<&super::output::WorkloadResults> =
        results.workloads.iter().filter(|w| w.workload.pin.is_some()).collect();
    if pinned.is_empty() {
        return None;
    }
    let mut models: Vec<&str> = Vec::new();
    for w in &pinned {
        for (model, runs) in &w.models {
            if runs.median.is_some() && !models.contains(&model.as_str()) {
                models.push(model);
            }
        }
    }
    let mut series = Vec::new();
    for w in &pinned {
        let Some(pin) = w.workload.pin else { continue };
        for (idx, model) in models.iter().enumerate() {
            let Some(runs) = w.models.get(*model) else { continue };
            if let Some(p) = point(idx as f64, 1, runs, |r| r.messages_per_sec, |m| m.messages_per_sec) {
                add(&mut series, pin.describe(), pin.describe(), false, p);
            }
        }
    }
    let mut notes = vec![spread_note(&series)];
    notes.push(placement_lesson(&series));
    Some(ChartData {
        file: "one_conn_placement.svg".to_string(),
        question: "How much does one connection depend on where client and server run?".to_string(),
        x_axis: "model (64 B, one connection, client and server pinned by sched_setaffinity)".to_string(),
        y_axis: "messages per second (msgs/s)".to_string(),
        x_log: false,
        y_log: false,
        categories: models.iter().map(|m| series_name(m)).collect(),
        bars: false,
        connect: false,
        lower_is_better: false,
        notes,
        best: None,
        series,
    })
}

/// The placement chart's lesson, computed from its medians: the ratio of same-CPU to
/// different-CPU throughput, model by model, summarised by its median.
pub fn placement_lesson(series: &[Series]) -> String {
    let same = series.iter().find(|s| s.name == Placement::SameCpu.describe());
    let apart = series.iter().find(|s| s.name == Placement::DifferentCpus.describe());
    let (Some(same), Some(apart)) = (same, apart) else {
        return "Only one placement could be measured (the machine lets this process use one CPU): no comparison.".to_string();
    };
    let ratios: Vec<f64> = same
        .points
        .iter()
        .filter_map(|p| {
            let q = apart.points.iter().find(|q| q.x == p.x)?;
            (q.median > 0.0).then(|| p.median / q.median)
        })
        .collect();
    if ratios.is_empty() {
        return "No model ran both placements: no comparison.".to_string();
    }
    let mid = super::output::median(ratios.clone());
    let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
    let hi = ratios.iter().copied().fold(f64::MIN, f64::max);
    let verb = if mid >= 1.0 { "more" } else { "fewer" };
    format!(
        "Same CPU against different CPUs: {:.2}× the messages/s (median over {} models; {:.2}× to {:.2}×): one connection on a CPU of its own each way echoes {verb} messages, so an unpinned one-connection figure measures the scheduler's choice.",
        mid,
        ratios.len(),
        lo,
        hi
    )
}

/// Server memory per idle connection, a labelled bar per model on a log axis.
fn idle_memory(results: &Results) -> ChartData {
    let measured: Vec<&super::output::IdleResult> = results
        .idle
        .iter()
        .filter(|i| i.error.is_none() && i.skipped.is_none())
        .collect();
    let mut series = Vec::new();
    for (idx, i) in measured.iter().enumerate() {
        let p = Point {
            x: idx as f64,
            median: i.kib_per_conn,
            min: i.kib_per_conn,
            max: i.kib_per_conn,
            runs: 1,
            conns: results.idle_conns,
            unserved_conns: 0,
            served: None,
            ranked: true,
        };
        add(&mut series, &series_name(&i.model), &i.model, is_reference(&i.model), p);
    }
    let best = best(&series, None, true, "idle");
    let skipped: Vec<String> = results
        .idle
        .iter()
        .filter_map(|i| i.skipped.as_ref().map(|why| format!("{} ({why})", i.model)))
        .collect();
    let mut notes = vec![
        "One run per model (the idle step is not repeated): no whiskers. Each bar is labelled with its value.".to_string(),
    ];
    if !skipped.is_empty() {
        notes.push(format!("Not measured: {}.", skipped.join("; ")));
    }
    notes.push(best_note(&best, "KiB per connection"));
    ChartData {
        file: "memory_per_idle_conn.svg".to_string(),
        question: format!(
            "What does an idle connection cost in server memory? ({} held)",
            results.idle_conns
        ),
        x_axis: "model".to_string(),
        y_axis: "server memory per idle connection (KiB of PSS, log scale)".to_string(),
        x_log: false,
        y_log: true,
        categories: measured.iter().map(|i| series_name(&i.model)).collect(),
        bars: true,
        connect: false,
        lower_is_better: true,
        notes,
        best,
        series,
    }
}

/// UDP echoes per second per model and workload.
fn udp_rate(results: &Results) -> Option<ChartData> {
    let udp: Vec<&super::output::WorkloadResults> =
        results.workloads.iter().filter(|w| w.workload.udp).collect();
    if udp.is_empty() {
        return None;
    }
    let mut series = Vec::new();
    for (idx, w) in udp.iter().enumerate() {
        for (model, runs) in &w.models {
            let p = point(idx as f64, w.workload.conns, runs, |r| r.messages_per_sec, |m| m.messages_per_sec);
            if let Some(p) = p {
                add(&mut series, &series_name(model), model, is_reference(model), p);
            }
        }
    }
    let notes = vec![spread_note(&series), "Closed loop: one datagram outstanding per socket; see the tables for loss.".to_string()];
    Some(ChartData {
        file: "udp_echoes.svg".to_string(),
        question: "Which model echoes the most UDP datagrams per second?".to_string(),
        x_axis: "workload (datagram size × sockets)".to_string(),
        y_axis: "echoes per second (datagrams/s)".to_string(),
        x_log: false,
        y_log: false,
        categories: udp.iter().map(|w| w.workload.name.clone()).collect(),
        bars: false,
        connect: false,
        lower_is_better: false,
        notes,
        best: None,
        series,
    })
}

/// The data of every chart, in the order the page shows them.
pub fn data(results: &Results) -> Vec<ChartData> {
    let mut charts = vec![
        throughput(results),
        cpu_vs_conns(results),
        cpu_by_workload(results),
        latency(results),
    ];
    charts.extend(placement(results));
    charts.push(idle_memory(results));
    charts.extend(udp_rate(results));
    charts
}

/// Draws every chart of `results.charts` into `out`; returns their paths.
pub fn write_all(out: &Path, results: &Results) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for chart in &results.charts {
        let path = out.join(&chart.file);
        let svg = svg(chart).map_err(|err| format!("cannot draw {}: {err}", path.display()))?;
        std::fs::write(&path, svg).map_err(|err| {
            format!(
                "cannot write {}: {}",
                path.display(),
                crate::engine::describe(&err)
            )
        })?;
        files.push(path);
    }
    Ok(files)
}

/// A series' colour, the same on every chart: a model's follows its place in [`MODELS`];
/// anything else (references, placements) a fixed place after them by its name.
fn color(key: &str) -> RGBColor {
    let idx = MODELS.iter().position(|m| *m == key).unwrap_or_else(|| {
        let extra = ["ref_epoll", "ref_threads", "same CPU", "different CPUs"];
        MODELS.len() + extra.iter().position(|e| key.starts_with(e)).unwrap_or(extra.len())
    });
    let (r, g, b) = Palette99::pick(idx).rgb();
    RGBColor(r, g, b)
}

const SIZE: (u32, u32) = (1000, 600);
const LEGEND_WIDTH: u32 = 210;
const NOTE_LINE: u32 = 17;

/// An axis in drawing coordinates: log axes are drawn as log10 of the value.
#[derive(Debug, Clone, Copy)]
struct Axis {
    log: bool,
    /// The smallest value a log axis shows (zeros are drawn there).
    floor: f64,
}

impl Axis {
    fn to(self, v: f64) -> f64 {
        if self.log {
            v.max(self.floor).log10()
        } else {
            v
        }
    }
}

/// Tick values for a log axis from `lo` to `hi`: 1, 2 and 5 times the powers of ten.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi && ticks.len() < 60 {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo && t <= hi {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// One chart drawn from its data, as SVG text.
pub fn svg(chart: &ChartData) -> Result<String, Box<dyn Error>> {
    let mut text = String::new();
    draw(SVGBackend::with_string(&mut text, SIZE), chart)?;
    Ok(text)
}

/// Draws one chart from its data.
fn draw(backend: SVGBackend<'_>, chart: &ChartData) -> ChartResult {
    let whole = backend.into_drawing_area();
    whole.fill(&WHITE)?;
    let notes_height = NOTE_LINE * chart.notes.len() as u32 * 2 + 10;
    let (top, bottom) = whole.split_vertically(SIZE.1 - notes_height);
    let (root, legend) = top.split_horizontally(SIZE.0 - LEGEND_WIDTH);

    let points = || chart.series.iter().flat_map(|s| &s.points);
    let x_axis = Axis { log: chart.x_log, floor: 0.5 };
    let (x_lo, x_hi) = if chart.categories.is_empty() {
        let lo = points().map(|p| p.x).fold(f64::MAX, f64::min).min(1.0);
        let hi = points().map(|p| p.x).fold(1.0, f64::max).max(2.0);
        (x_axis.to(lo) - 0.15, x_axis.to(hi) + 0.15)
    } else {
        (-0.6, chart.categories.len().max(1) as f64 - 0.4)
    };
    let y_max = points().map(|p| p.max).fold(0.0, f64::max).max(1e-3);
    let y_floor = points()
        .map(|p| p.min)
        .filter(|v| *v > 0.0)
        .fold(y_max, f64::min)
        .max(y_max * 1e-4);
    let y_axis = Axis { log: chart.y_log, floor: y_floor * 0.5 };
    let (y_lo, y_hi) = if chart.y_log {
        (y_axis.to(y_floor) - 0.3, y_axis.to(y_max) + 0.3)
    } else {
        (0.0, y_max * 1.15)
    };

    let mut cc = ChartBuilder::on(&root)
        .caption(&chart.question, ("sans-serif", 19))
        .margin(15)
        .x_label_area_size(70)
        .y_label_area_size(85)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    let mut mesh = cc.configure_mesh();
    mesh.x_desc(&chart.x_axis).y_desc(&chart.y_axis).disable_x_mesh().x_labels(0);
    if chart.y_log {
        mesh.y_labels(0);
    } else {
        mesh.y_label_formatter(&|v| figure(*v));
    }
    mesh.draw()?;

    // Ticks drawn by hand: at the measured connection counts or the categories on x, and at
    // 1-2-5 values on a log y axis, so no label reads "3.16".
    let small = ("sans-serif", 13).into_font();
    let x_ticks: Vec<(f64, String)> = if chart.categories.is_empty() {
        let mut xs: Vec<f64> = points().map(|p| p.x).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs.into_iter().map(|x| (x_axis.to(x), figure(x))).collect()
    } else {
        chart.categories.iter().enumerate().map(|(i, c)| (i as f64, c.clone())).collect()
    };
    for (x, label) in x_ticks {
        cc.draw_series(std::iter::once(
            EmptyElement::at((x, y_lo))
                + PathElement::new(vec![(0, 0), (0, 5)], BLACK)
                + Text::new(label, (-4 * 3, 8), small.clone()),
        ))?;
    }
    if chart.y_log {
        let ticks = log_ticks(10f64.powf(y_lo), 10f64.powf(y_hi));
        for t in ticks {
            let y = y_axis.to(t);
            cc.draw_series(std::iter::once(PathElement::new(
                vec![(x_lo, y), (x_hi, y)],
                BLACK.mix(0.08),
            )))?;
            cc.draw_series(std::iter::once(
                EmptyElement::at((x_lo, y))
                    + PathElement::new(vec![(-5, 0), (0, 0)], BLACK)
                    + Text::new(figure(t), (-48, -7), small.clone()),
            ))?;
        }
    }

    let n_series = chart.series.len().max(1) as f64;
    for (k, s) in chart.series.iter().enumerate() {
        let c = color(&s.color_key);
        // Series side by side on a category chart, so whiskers do not overlap.
        let dodge = if chart.categories.is_empty() || chart.bars {
            0.0
        } else {
            (k as f64 - (n_series - 1.0) / 2.0) * (0.6 / n_series)
        };
        let xy: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (x_axis.to(p.x) + dodge, y_axis.to(p.median)))
            .collect();
        if chart.connect && xy.len() > 1 {
            if s.reference {
                cc.draw_series(DashedLineSeries::new(xy.clone(), 8, 6, c.stroke_width(2)))?;
            } else {
                cc.draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?;
            }
        }
        for (p, (x, y)) in s.points.iter().zip(&xy) {
            if chart.bars {
                let base = if chart.y_log { y_lo } else { 0.0 };
                cc.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.3, base), (x + 0.3, *y)],
                    c.filled(),
                )))?;
                cc.draw_series(std::iter::once(Text::new(
                    format!("{} KiB", figure(p.median)),
                    (x - 0.2, y + (y_hi - y_lo) * 0.04),
                    small.clone(),
                )))?;
                continue;
            }
            let (lo, hi) = (y_axis.to(p.min), y_axis.to(p.max));
            if hi > lo {
                cc.draw_series(std::iter::once(
                    EmptyElement::at((*x, lo))
                        + PathElement::new(vec![(-4, 0), (4, 0)], c.stroke_width(1)),
                ))?;
                cc.draw_series(std::iter::once(
                    EmptyElement::at((*x, hi))
                        + PathElement::new(vec![(-4, 0), (4, 0)], c.stroke_width(1)),
                ))?;
                cc.draw_series(std::iter::once(PathElement::new(
                    vec![(*x, lo), (*x, hi)],
                    c.stroke_width(1),
                )))?;
            }
            match &p.served {
                None => {
                    cc.draw_series(std::iter::once(Circle::new((*x, *y), 4, c.filled())))?;
                }
                Some(label) => {
                    cc.draw_series(std::iter::once(Circle::new((*x, *y), 6, c.stroke_width(2))))?;
                    cc.draw_series(std::iter::once(
                        EmptyElement::at((*x, *y))
                            + Text::new(label.clone(), (8, -14), small.clone().color(&c)),
                    ))?;
                }
            }
        }
    }

    // The legend, in its own column: inside the plot it would hide points.
    for (i, s) in chart.series.iter().enumerate() {
        let y = 60 + 22 * i as i32;
        let c = color(&s.color_key);
        if s.reference {
            legend.draw(&PathElement::new(vec![(8, y), (16, y)], c.stroke_width(3)))?;
            legend.draw(&PathElement::new(vec![(24, y), (32, y)], c.stroke_width(3)))?;
        } else {
            legend.draw(&PathElement::new(vec![(8, y), (32, y)], c.stroke_width(3)))?;
        }
        legend.draw(&Circle::new((20, y), 4, c.filled()))?;
        let name = match &s.served {
            Some(served) => format!("{} ({served})", s.name),
            None => s.name.clone(),
        };
        legend.draw(&Text::new(name, (40, y - 7), ("sans-serif", 14).into_font()))?;
    }

    // The notes: sentences computed from the chart's figures, wrapped by word.
    let mut line = 0;
    for note in &chart.notes {
        for text in wrap(note, 125) {
            bottom.draw(&Text::new(
                text,
                (15, 5 + (NOTE_LINE * line) as i32),
                ("sans-serif", 13).into_font(),
            ))?;
            line += 1;
        }
    }
    whole.present()?;
    Ok(())
}

/// `text` cut into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}
