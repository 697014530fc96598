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
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
    /// Every distinct "served N/M" of its points ("served 8/64, 8/512"), for the legend.
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
/// Adds `model`'s point at `x` (see [`point`]) to its series, if it has a median.
fn add_model(
    series: &mut Vec<Series>,
    model: &str,
    x: f64,
    conns: usize,
    runs: &ModelRuns,
    of_run: fn(&RunSample) -> f64,
    of_median: fn(&Median) -> f64,
) {
    if let Some(p) = point(x, conns, runs, of_run, of_median) {
        add(series, &series_name(model), model, is_reference(model), p);
    }
}

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
    // Every distinct "served N/M" of the series, for the legend: "served 8/64, 8/512".
    if let Some(label) = &p.served {
        match &mut s.served {
            None => s.served = Some(label.clone()),
            Some(all) => {
                let count = label.trim_start_matches("served ");
                if !all
                    .split(", ")
                    .any(|l| l.trim_start_matches("served ") == count)
                {
                    all.push_str(", ");
                    all.push_str(count);
                }
            }
        }
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
fn closed_of_size(
    results: &Results,
    size: usize,
) -> impl Iterator<Item = &super::output::WorkloadResults> {
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
) -> (Vec<Series>, Vec<String>) {
    let mut series = Vec::new();
    for w in closed_of_size(results, 64) {
        for (model, runs) in &w.models {
            let x = w.workload.conns as f64;
            add_model(
                &mut series,
                model,
                x,
                w.workload.conns,
                runs,
                of_run,
                of_median,
            );
        }
    }
    let mut notes = Vec::new();
    let mut counts: Vec<usize> = closed_of_size(results, 64)
        .map(|w| w.workload.conns)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.len() < 3 {
        notes.push(format!(
            "Measured at {} connection counts only ({}): a line between two points is not a measurement.",
            counts.len(),
            counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" and ")
        ));
    }
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
    let mut note = if runs > 1 {
        format!("Points are medians of {runs} runs; whiskers span the lowest to the highest run.")
    } else {
        "One run per point: no spread to show (run with --repeats 3 or more for whiskers)."
            .to_string()
    };
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
    let (series, mut notes) =
        against_conns(results, |r| r.messages_per_sec, |m| m.messages_per_sec);
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
        question: "Which model echoes the most messages per second as connections grow?"
            .to_string(),
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
            "No reference C server ran (build them with scripts/build-ref.sh, or pass --ref-dir)."
                .to_string(),
        );
    }
    notes.push(best_note(&best, "µs/msg"));
    ChartData {
        file: "cpu_per_msg_vs_conns.svg".to_string(),
        question: "Which model spends the least server CPU per message as connections grow?"
            .to_string(),
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
            add_model(
                &mut series,
                model,
                idx as f64,
                w.workload.conns,
                runs,
                |r| r.server_cpu_us_per_msg,
                |m| m.server_cpu_us_per_msg,
            );
        }
    }
    let notes = vec![
        spread_note(&series),
        "Churn is left out: its cost is per connection, not per message (see its table)."
            .to_string(),
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
                let conns = w.workload.conns;
                add_model(
                    &mut series,
                    model,
                    i as f64,
                    conns,
                    runs,
                    *of_run,
                    *of_median,
                );
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
    let pinned: Vec<&super::output::WorkloadResults> = results
        .workloads
        .iter()
        .filter(|w| w.workload.pin.is_some())
        .collect();
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
            let Some(runs) = w.models.get(*model) else {
                continue;
            };
            if let Some(p) = point(
                idx as f64,
                1,
                runs,
                |r| r.messages_per_sec,
                |m| m.messages_per_sec,
            ) {
                add(&mut series, pin.describe(), pin.describe(), false, p);
            }
        }
    }
    let mut notes = vec![spread_note(&series)];
    notes.push(placement_lesson(&series));
    Some(ChartData {
        file: "one_conn_placement.svg".to_string(),
        question: "How much does one connection depend on where client and server run?".to_string(),
        x_axis: "model (64 B, one connection, client and server pinned by sched_setaffinity)"
            .to_string(),
        y_axis: "messages per second (msgs/s)".to_string(),
        x_log: false,
        y_log: false,
        categories: models.iter().map(|m| m.to_string()).collect(),
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
    let same = series
        .iter()
        .find(|s| s.name == Placement::SameCpu.describe());
    let apart = series
        .iter()
        .find(|s| s.name == Placement::DifferentCpus.describe());
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
    let faster = if mid >= 1.0 {
        "sharing one CPU"
    } else {
        "on CPUs of their own"
    };
    format!(
        "Same CPU against different CPUs: {:.2}× the messages/s (median over {} models; {:.2}× to {:.2}×): client and server {faster} echo more, so an unpinned one-connection figure measures where the scheduler put them.",
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
        add(
            &mut series,
            &series_name(&i.model),
            &i.model,
            is_reference(&i.model),
            p,
        );
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
        x_axis: format!(
            "model (one bar each, {} idle connections held)",
            results.idle_conns
        ),
        y_axis: "server memory per idle connection (KiB of PSS, log scale)".to_string(),
        x_log: false,
        y_log: true,
        categories: measured.iter().map(|i| i.model.clone()).collect(),
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
    let udp: Vec<&super::output::WorkloadResults> = results
        .workloads
        .iter()
        .filter(|w| w.workload.udp)
        .collect();
    if udp.is_empty() {
        return None;
    }
    let mut series = Vec::new();
    for (idx, w) in udp.iter().enumerate() {
        for (model, runs) in &w.models {
            add_model(
                &mut series,
                model,
                idx as f64,
                w.workload.conns,
                runs,
                |r| r.messages_per_sec,
                |m| m.messages_per_sec,
            );
        }
    }
    let notes = vec![
        spread_note(&series),
        "Closed loop: one datagram outstanding per socket; see the tables for loss.".to_string(),
    ];
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

/// A series' colour, the same on every chart: a model's follows its place in [`MODELS`],
/// a reference's the place after them; the placements have two contrasting colours.
fn color(key: &str) -> RGBColor {
    match key {
        "same CPU" => return RGBColor(31, 88, 160),
        "different CPUs" => return RGBColor(222, 110, 20),
        _ => {}
    }
    let idx = MODELS.iter().position(|m| *m == key).unwrap_or_else(|| {
        let refs = ["ref_epoll", "ref_threads"];
        MODELS.len() + refs.iter().position(|r| *r == key).unwrap_or(refs.len())
    });
    let (r, g, b) = Palette99::pick(idx).rgb();
    RGBColor(r, g, b)
}

/// A tick label: the fewest decimals (up to four) that show the value.
pub fn tick(v: f64) -> String {
    let text = format!("{v:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
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
    let x_axis = Axis {
        log: chart.x_log,
        floor: 0.5,
    };
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
    let y_axis = Axis {
        log: chart.y_log,
        floor: y_floor * 0.5,
    };
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
    mesh.x_desc(&chart.x_axis)
        .y_desc(&chart.y_axis)
        .disable_x_mesh()
        .x_labels(0);
    if chart.y_log {
        mesh.y_labels(0);
    } else {
        mesh.y_label_formatter(&|v| figure(*v));
    }
    mesh.draw()?;

    // Ticks drawn by hand: at the measured connection counts or the categories on x, and at
    // 1-2-5 values on a log y axis, so no label reads "3.16".
    let small: TextStyle = ("sans-serif", 13).into_font().into();
    let x_ticks: Vec<(f64, String)> = if chart.categories.is_empty() {
        let mut xs: Vec<f64> = points().map(|p| p.x).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs.into_iter().map(|x| (x_axis.to(x), tick(x))).collect()
    } else {
        chart
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| (i as f64, c.clone()))
            .collect()
    };
    let centred = small.clone().pos(Pos::new(HPos::Center, VPos::Top));
    for (x, label) in x_ticks {
        cc.draw_series(std::iter::once(
            EmptyElement::at((x, y_lo)) + PathElement::new(vec![(0, 0), (0, 5)], BLACK),
        ))?;
        // A long category ("64 B × 1 conn, different CPUs") on two lines.
        for (i, part) in label.split(", ").enumerate() {
            cc.draw_series(std::iter::once(
                EmptyElement::at((x, y_lo))
                    + Text::new(part.to_string(), (0, 8 + 15 * i as i32), centred.clone()),
            ))?;
        }
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
                    + Text::new(
                        tick(t),
                        (-8, 0),
                        small.clone().pos(Pos::new(HPos::Right, VPos::Center)),
                    ),
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
                cc.draw_series(std::iter::once(
                    EmptyElement::at((*x, *y))
                        + Text::new(
                            format!("{} KiB", figure(p.median)),
                            (0, -4),
                            small.clone().pos(Pos::new(HPos::Center, VPos::Bottom)),
                        ),
                ))?;
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
                            + Text::new(
                                label.clone(),
                                (-8, -8),
                                small
                                    .clone()
                                    .color(&c)
                                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
                            ),
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
        legend.draw(&Text::new(
            name,
            (40, y - 7),
            ("sans-serif", 14).into_font(),
        ))?;
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

#[cfg(test)]
mod tests {
    use super::super::output::{IdleResult, Machine, WorkloadResults};
    use super::super::Plan;
    use super::*;

    fn workload(conns: usize, pin: Option<Placement>, udp: bool) -> Workload {
        let place = pin.map_or(String::new(), |p| format!(", {}", p.describe()));
        Workload {
            name: format!(
                "{}64 B × {}{place}",
                if udp { "UDP " } else { "" },
                echolab_cli::counted(conns, "conn")
            ),
            conns,
            size: 64,
            churn: false,
            pin,
            udp,
        }
    }

    /// A run whose every figure is `v` (latencies `v` µs, CPU `v` µs/msg), with `unserved`
    /// connections never served.
    fn run(v: f64, unserved: u64) -> RunSample {
        RunSample {
            messages_per_sec: v,
            p50_us: v,
            p90_us: v,
            p99_us: v,
            p999_us: v,
            server_cpu_us_per_msg: v,
            unserved_conns: unserved,
            ..RunSample::default()
        }
    }

    /// 64 B at 1, 8 and 64 connections; at 64, prethreaded served 8 and has the best
    /// figure of all on every chart (highest rate, lowest latency and CPU). Among the
    /// others, ref_epoll beats every model (it is a reference, never ranked), reactor is
    /// best at 64 connections, and event has the highest rate at one connection (so a best
    /// taken at the wrong point would be event).
    fn results(counts: &[usize]) -> Results {
        let models = ["event", "prethreaded", "reactor", "ref_epoll"];
        let mut workloads = Vec::new();
        for &conns in counts {
            let mut w = WorkloadResults::new(workload(conns, None, false), models.into_iter());
            for m in models {
                for k in 0..3 {
                    let k = k as f64;
                    let starved = m == "prethreaded" && conns == 64;
                    // Runs k = 0, 1, 2 around a median of k = 1.
                    let (rate, small) = match m {
                        _ if starved => (1e6, 1.0),
                        "event" if conns == 1 => (100_000.0 + k * 1000.0, 10.0 + k),
                        "event" => (10_000.0 + k * 1000.0, 10.0 + k),
                        "prethreaded" => (11_000.0 + k * 1000.0, 20.0 + k),
                        "reactor" => (12_000.0 + k * 1000.0, 5.0 + k),
                        _ => (50_000.0 + k * 1000.0, 2.0 + k),
                    };
                    let mut r = run(rate, 0);
                    r.p50_us = small;
                    r.p90_us = small;
                    r.p99_us = small;
                    r.p999_us = small;
                    r.server_cpu_us_per_msg = small;
                    r.unserved_conns = if starved { 56 } else { 0 };
                    w.push(m, r);
                }
            }
            w.summarise();
            workloads.push(w);
        }
        for (pin, rate) in [
            (Placement::SameCpu, 50_000.0),
            (Placement::DifferentCpus, 5_000.0),
        ] {
            let mut w = WorkloadResults::new(workload(1, Some(pin), false), ["event"].into_iter());
            w.push("event", run(rate, 0));
            w.summarise();
            workloads.push(w);
        }
        let mut w = WorkloadResults::new(workload(8, None, true), ["event"].into_iter());
        w.push("event", run(90_000.0, 0));
        w.summarise();
        workloads.push(w);
        let idle = vec![
            IdleResult {
                model: "event".to_string(),
                kib_per_conn: 0.2,
                ..IdleResult::default()
            },
            IdleResult {
                model: "thread".to_string(),
                kib_per_conn: 16.0,
                ..IdleResult::default()
            },
            IdleResult::skipped("prethreaded", "a fixed pool"),
            IdleResult::failed("process", "refused".to_string()),
        ];
        let plan = Plan::new(true, Some(3));
        let mut results = Results {
            machine: Machine::here(),
            idle_conns: plan.idle_conns,
            plan,
            models: Vec::new(),
            workloads,
            idle,
            interrupted: false,
            notes: Vec::new(),
            charts: Vec::new(),
        };
        results.charts = data(&results);
        results
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("echolab-charts-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_model_with_unserved_connections_is_marked_in_every_chart_and_never_best() {
        let results = results(&[1, 8, 64]);
        let json: serde_json::Value = serde_json::to_value(&results).unwrap();
        let charts = json["charts"].as_array().unwrap();
        let mut charts_with_it = Vec::new();
        for chart in charts {
            let file = chart["file"].as_str().unwrap();
            for s in chart["series"].as_array().unwrap() {
                if s["name"] != "prethreaded" {
                    continue;
                }
                for p in s["points"].as_array().unwrap() {
                    if p["conns"] == 64 {
                        assert_eq!(p["served"], "served 8/64", "{file}: {p}");
                        assert_eq!(p["ranked"], false, "{file}: {p}");
                        assert_eq!(p["unserved_conns"], 56, "{file}: {p}");
                        charts_with_it.push(file.to_string());
                    } else {
                        assert_eq!(p["served"], serde_json::Value::Null, "{file}: {p}");
                        assert_eq!(p["ranked"], true, "{file}: {p}");
                    }
                }
                if charts_with_it.last().is_some_and(|f| f == file) {
                    assert_eq!(s["served"], "served 8/64", "{file}: the legend");
                }
            }
            if let Some(best) = chart["best"].as_object() {
                assert_ne!(best["model"], "prethreaded", "{file}");
                assert!(
                    !best["model"].as_str().unwrap().starts_with("ref_"),
                    "{file}"
                );
            }
        }
        charts_with_it.dedup();
        assert_eq!(
            charts_with_it,
            [
                "throughput_vs_conns.svg",
                "cpu_per_msg_vs_conns.svg",
                "cpu_per_msg_by_workload.svg",
                "latency_percentiles.svg"
            ]
        );
        // The best among the models that served everyone, at the point each chart says:
        // reactor, on every figure, at 64 connections.
        let best = |file: &str| {
            let c = results.charts.iter().find(|c| c.file == file).unwrap();
            c.best.as_ref().map(|b| (b.model.clone(), b.value))
        };
        assert_eq!(
            best("throughput_vs_conns.svg"),
            Some(("reactor".to_string(), 13_000.0))
        );
        assert_eq!(
            best("cpu_per_msg_vs_conns.svg"),
            Some(("reactor".to_string(), 6.0))
        );
        assert_eq!(
            best("latency_percentiles.svg"),
            Some(("reactor".to_string(), 6.0))
        );
        assert_eq!(
            best("memory_per_idle_conn.svg"),
            Some(("event".to_string(), 0.2))
        );

        // And the pictures say it where the data does.
        let dir = scratch("served");
        write_all(&dir, &results).unwrap();
        for file in &charts_with_it {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.contains("served 8/64"), "{file} has no served label");
            assert!(svg.contains("prethreaded (served 8/64)"), "{file}: legend");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_chart_file_names_its_units_on_both_axes() {
        let results = results(&[1, 8, 64]);
        let dir = scratch("units");
        let files = write_all(&dir, &results).unwrap();
        assert_eq!(files.len(), results.charts.len());
        assert_eq!(
            results.charts.len(),
            7,
            "every chart of a full results structure"
        );
        let units = [
            "(count",
            "(msgs/s",
            "(µs",
            "(KiB",
            "(datagrams/s",
            "(message size",
            "(p50",
            "(64 B, one connection",
            "idle connections held)",
            "(datagram size",
        ];
        for chart in &results.charts {
            let svg = std::fs::read_to_string(dir.join(&chart.file)).unwrap();
            let svg = svg.replace("&amp;", "&");
            for axis in [&chart.x_axis, &chart.y_axis] {
                assert!(
                    units.iter().any(|u| axis.contains(u)),
                    "{}: axis {axis:?} names no unit",
                    chart.file
                );
                assert!(
                    svg.contains(axis.as_str()),
                    "{}: {axis:?} not drawn",
                    chart.file
                );
            }
            assert!(chart.question.ends_with('?') || chart.question.ends_with(')'));
            assert!(
                svg.contains(&chart.question.replace('&', "&amp;"))
                    || svg.contains(&chart.question)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_legend_names_every_unserved_point() {
        let mut series = Vec::new();
        for (conns, unserved) in [(8, 0), (64, 56), (512, 504), (512, 504)] {
            let p = Point {
                x: conns as f64,
                median: 1.0,
                min: 1.0,
                max: 1.0,
                runs: 1,
                conns,
                unserved_conns: unserved,
                served: served_label(unserved, conns),
                ranked: unserved == 0,
            };
            add(&mut series, "prethreaded", "prethreaded", false, p);
        }
        assert_eq!(series[0].served.as_deref(), Some("served 8/64, 8/512"));
    }

    #[test]
    fn every_chart_with_repeated_runs_draws_its_spread() {
        let results = results(&[1, 8, 64]);
        let tp = results
            .charts
            .iter()
            .find(|c| c.file == "throughput_vs_conns.svg")
            .unwrap();
        let event = tp.series.iter().find(|s| s.name == "event").unwrap();
        // Runs of 10, 11, 12 (× 1000) at 8 connections: the median 11000, the whisker
        // 10000 to 12000.
        assert_eq!(
            (
                event.points[1].min,
                event.points[1].median,
                event.points[1].max
            ),
            (10_000.0, 11_000.0, 12_000.0)
        );
        for chart in &results.charts {
            let runs = chart
                .series
                .iter()
                .flat_map(|s| &s.points)
                .map(|p| p.runs)
                .max();
            if runs > Some(1) {
                assert!(
                    chart.notes[0].contains("whiskers span"),
                    "{}: {:?}",
                    chart.file,
                    chart.notes
                );
            }
        }
    }

    #[test]
    fn two_connection_counts_are_said_to_be_two_points() {
        let two = results(&[1, 64]);
        let three = results(&[1, 8, 64]);
        let note = |r: &Results| {
            r.charts[0]
                .notes
                .iter()
                .find(|n| n.starts_with("Measured at"))
                .cloned()
        };
        assert_eq!(
            note(&two).as_deref(),
            Some(
                "Measured at 2 connection counts only (1 and 64): a line between two points is not a measurement."
            )
        );
        assert_eq!(note(&three), None);
        // The quick plan measures a middle point.
        let plan = Plan::new(true, None);
        let counts: Vec<usize> = plan
            .workloads
            .iter()
            .filter(|w| is_closed_tcp(w) && w.size == 64)
            .map(|w| w.conns)
            .collect();
        assert_eq!(counts, [1, 8, 64]);
    }

    #[test]
    fn the_placement_lesson_is_computed_from_its_medians() {
        let results = results(&[1, 8, 64]);
        let chart = results
            .charts
            .iter()
            .find(|c| c.file == "one_conn_placement.svg")
            .unwrap();
        assert_eq!(
            chart.notes[1],
            "Same CPU against different CPUs: 10.00× the messages/s (median over 1 models; 10.00× to 10.00×): client and server sharing one CPU echo more, so an unpinned one-connection figure measures where the scheduler put them."
        );
        let mut flipped = chart.series.clone();
        flipped.swap(0, 1);
        flipped[0].name = Placement::SameCpu.describe().to_string();
        flipped[1].name = Placement::DifferentCpus.describe().to_string();
        assert!(placement_lesson(&flipped).contains("0.10× the messages/s"));
        assert!(
            placement_lesson(&flipped).contains("client and server on CPUs of their own echo more")
        );
        assert!(placement_lesson(&flipped[..1]).starts_with("Only one placement"));
        // A model with no different-CPU figure has no ratio.
        let mut zero = chart.series.clone();
        zero[1].points[0].median = 0.0;
        assert_eq!(
            placement_lesson(&zero),
            "No model ran both placements: no comparison."
        );
    }

    #[test]
    fn memory_bars_are_on_a_log_axis_and_labelled() {
        let results = results(&[1, 8, 64]);
        let chart = results
            .charts
            .iter()
            .find(|c| c.file == "memory_per_idle_conn.svg")
            .unwrap();
        assert!(chart.y_log && chart.bars);
        assert_eq!(chart.categories, ["event", "thread"]);
        let svg = svg(chart).unwrap();
        assert!(
            svg.contains("0.200 KiB") && svg.contains("16.0 KiB"),
            "{svg}"
        );
        assert!(chart
            .notes
            .iter()
            .any(|n| n.contains("prethreaded (a fixed pool)")));
    }

    #[test]
    fn udp_rows_get_a_chart_and_references_are_dashed() {
        let results = results(&[1, 8, 64]);
        let udp = results
            .charts
            .iter()
            .find(|c| c.file == "udp_echoes.svg")
            .unwrap();
        assert_eq!(udp.series[0].points[0].median, 90_000.0);
        let cpu = results
            .charts
            .iter()
            .find(|c| c.file == "cpu_per_msg_vs_conns.svg")
            .unwrap();
        let refs: Vec<&str> = cpu
            .series
            .iter()
            .filter(|s| s.reference)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(refs, ["ref_epoll (C reference)"]);
        let svg = svg(cpu).unwrap();
        // plotters draws a dashed series as many short paths: more paths than the solid
        // lines' alone.
        assert!(svg.contains("ref_epoll (C reference)"));
    }

    #[test]
    fn best_skips_unranked_references_and_zeros_and_keeps_the_first_of_a_tie() {
        let p = |x: f64, median: f64, ranked: bool| Point {
            x,
            median,
            min: median,
            max: median,
            runs: 1,
            conns: x as usize,
            unserved_conns: u64::from(!ranked),
            served: None,
            ranked,
        };
        let s = |name: &str, reference: bool, points: Vec<Point>| Series {
            name: name.to_string(),
            color_key: name.to_string(),
            reference,
            served: None,
            points,
        };
        let series = vec![
            s("a", false, vec![p(1.0, 0.0, true), p(8.0, 5.0, true)]),
            s("b", false, vec![p(1.0, 3.0, true), p(8.0, 5.0, true)]),
            s("c", false, vec![p(8.0, 1.0, false)]),
            s("ref_epoll", true, vec![p(8.0, 0.5, true)]),
        ];
        let pick = |x: Option<f64>, lower: bool| {
            best(&series, x, lower, "here").map(|b| (b.model, b.value))
        };
        // Lowest at 8: a and b tie at 5; the first keeps it. c (unranked) and the
        // reference are lower but never best.
        assert_eq!(pick(Some(8.0), true), Some(("a".to_string(), 5.0)));
        // Lowest anywhere: a's 0 is "not measured", so b's 3.
        assert_eq!(pick(None, true), Some(("b".to_string(), 3.0)));
        // Highest at 1: b; at 8, the first of the tie.
        assert_eq!(pick(Some(1.0), false), Some(("b".to_string(), 3.0)));
        assert_eq!(pick(Some(8.0), false), Some(("a".to_string(), 5.0)));
        assert_eq!(pick(Some(64.0), false), None);
    }

    fn chart<'a>(results: &'a Results, file: &str) -> &'a ChartData {
        results.charts.iter().find(|c| c.file == file).unwrap()
    }

    #[test]
    fn notes_say_the_best_the_unserved_the_references_and_single_runs() {
        let results = results(&[1, 8, 64]);
        let tp = chart(&results, "throughput_vs_conns.svg");
        assert_eq!(
            tp.notes.last().unwrap(),
            "Best at 64 connections among the models that served every connection: reactor (13000 messages/s)."
        );
        assert!(tp.notes[0].ends_with(
            "Hollow points marked \"served N/M\" (prethreaded) left connections unserved: their figure is that of the few and is not ranked."
        ));
        // No unserved model on the placement chart: no such sentence.
        let placement = chart(&results, "one_conn_placement.svg");
        assert!(
            !placement.notes[0].contains("Hollow"),
            "{:?}",
            placement.notes
        );
        // ref_epoll ran: no sentence about its absence; without it, one.
        let no_ref = "No reference C server ran";
        let cpu = chart(&results, "cpu_per_msg_vs_conns.svg");
        assert!(!cpu.notes.iter().any(|n| n.starts_with(no_ref)));
        let mut without = results.clone();
        for w in &mut without.workloads {
            w.models.remove("ref_epoll");
        }
        let cpu = cpu_vs_conns(&without);
        assert!(cpu.notes.iter().any(|n| n.starts_with(no_ref)));
        // Only the starved model at 64: none ranked there.
        let mut starved = results.clone();
        for w in &mut starved.workloads {
            w.models.retain(|m, _| m == "prethreaded");
        }
        assert_eq!(
            throughput(&starved).notes.last().unwrap(),
            "No model served every connection here: none is ranked."
        );
        // One run per point: no whiskers promised.
        let mut single = results.clone();
        for w in &mut single.workloads {
            for runs in w.models.values_mut() {
                runs.runs.truncate(1);
            }
            w.summarise();
        }
        assert!(throughput(&single).notes[0].starts_with("One run per point: no spread"));
    }

    #[test]
    fn cpu_by_workload_shows_the_closed_loop_tcp_workloads_only() {
        let results = results(&[1, 8, 64]);
        let c = chart(&results, "cpu_per_msg_by_workload.svg");
        assert_eq!(
            c.categories,
            [
                "64 B × 1 conn",
                "64 B × 8 conns",
                "64 B × 64 conns",
                "64 B × 1 conn, same CPU",
                "64 B × 1 conn, different CPUs"
            ]
        );
    }

    #[test]
    fn ticks_and_figures_read_plainly() {
        assert_eq!(tick(64.0), "64");
        assert_eq!(tick(100_000.0), "100000");
        let log = Axis {
            log: true,
            floor: 0.5,
        };
        let linear = Axis {
            log: false,
            floor: 0.5,
        };
        assert_eq!((log.to(100.0), log.to(0.0)), (2.0, 0.5f64.log10()));
        assert_eq!(linear.to(7.0), 7.0);
        assert_eq!(tick(0.05), "0.05");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(log_ticks(0.9, 60.0), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        // Bounded: 60 ticks at most, however wide the range.
        assert_eq!(log_ticks(1e-30, 1e30).len(), 60);
        assert_eq!(figure(95450.4), "95450");
        assert_eq!(figure(16.84), "16.8");
        assert_eq!(figure(4.981), "4.98");
        assert_eq!(figure(0.2), "0.200");
        assert_eq!(served_label(56, 64).as_deref(), Some("served 8/64"));
        assert_eq!(served_label(0, 64), None);
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        // The space between two words counts: 2 + 1 + 2 > 4.
        assert_eq!(wrap("aa bb", 4), ["aa", "bb"]);
        assert_eq!(wrap("aaa b", 5), ["aaa b"]);
        assert_eq!(wrap("a bbb", 4), ["a", "bbb"]);
    }
}
