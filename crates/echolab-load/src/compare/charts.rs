//! compare's SVG charts (plotters): throughput against connections, latency percentiles
//! per model, memory per idle connection.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::output::{Median, Results};
use crate::cli::MODELS;

type ChartResult = Result<(), Box<dyn Error>>;

/// Draws one chart into the file at the path.
type DrawChart = fn(&Path, &Results) -> ChartResult;

const SIZE: (u32, u32) = (900, 540);

/// Writes every chart there is data for into `out`; returns their paths.
pub fn write_all(out: &Path, results: &Results) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let charts: [(&str, DrawChart); 3] = [
        ("throughput_vs_conns.svg", throughput_vs_conns),
        ("latency_percentiles.svg", latency_percentiles),
        ("memory_per_idle_conn.svg", memory_per_idle_conn),
    ];
    for (name, draw) in charts {
        let path = out.join(name);
        draw(&path, results).map_err(|err| format!("cannot draw {}: {err}", path.display()))?;
        files.push(path);
    }
    Ok(files)
}

/// Every model's median on every closed-loop workload of `size` bytes, by connections.
fn series_by_conns(results: &Results, size: usize) -> Vec<(String, Vec<(usize, Median)>)> {
    let mut models: Vec<(String, Vec<(usize, Median)>)> = Vec::new();
    for w in results
        .workloads
        .iter()
        .filter(|w| !w.workload.churn && w.workload.size == size)
    {
        for (name, runs) in &w.models {
            let Some(m) = &runs.median else { continue };
            match models.iter_mut().find(|(n, _)| n == name) {
                Some((_, points)) => points.push((w.workload.conns, m.clone())),
                None => models.push((name.clone(), vec![(w.workload.conns, m.clone())])),
            }
        }
    }
    models
}

/// A model's colour, the same on every chart (it follows the model's place in
/// [`MODELS`], not its place on one chart, which changes with what that chart shows).
fn color(model: &str) -> RGBColor {
    let idx = MODELS
        .iter()
        .position(|m| *m == model)
        .unwrap_or(MODELS.len());
    let (r, g, b) = Palette99::pick(idx).rgb();
    RGBColor(r, g, b)
}

/// Width of the column right of a line chart that holds its legend: inside the plot, a
/// legend hides the points under it.
const LEGEND_WIDTH: u32 = 130;

/// The legend of a line chart, drawn in its own column: a coloured stroke and the name
/// for each model.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    names: &[&str],
) -> ChartResult
where
    DB::ErrorType: 'static,
{
    let top = 60;
    for (i, name) in names.iter().enumerate() {
        let y = top + 22 * i as i32;
        let c = color(name);
        area.draw(&PathElement::new(vec![(8, y), (32, y)], c.stroke_width(3)))?;
        area.draw(&Circle::new((20, y), 4, c.filled()))?;
        area.draw(&Text::new(
            name.to_string(),
            (40, y - 7),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}

/// Messages/s against connections (64-byte messages), one line per model, log x axis.
fn throughput_vs_conns(path: &Path, results: &Results) -> ChartResult {
    let whole = SVGBackend::new(path, SIZE).into_drawing_area();
    whole.fill(&WHITE)?;
    let (root, legend) = whole.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let series = series_by_conns(results, 64);
    let max_conns = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(c, _)| *c))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let max_rate = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, m)| m.messages_per_sec))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput against connections (64 B messages, closed loop)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0.8f64..max_conns * 1.25).log_scale(), 0f64..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("messages/s (median)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (name, points) in &series {
        let c = color(name);
        let xy: Vec<(f64, f64)> = points
            .iter()
            .map(|(conns, m)| (*conns as f64, m.messages_per_sec))
            .collect();
        chart.draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?;
        // A point whose rate left connections unserved is hollow and says how many were
        // served: its rate is that of the few.
        for ((conns, m), p) in points.iter().zip(xy) {
            if m.unserved_conns == 0 {
                chart.draw_series(std::iter::once(Circle::new(p, 4, c.filled())))?;
            } else {
                let served = (*conns as u64).saturating_sub(m.unserved_conns);
                chart.draw_series(std::iter::once(Circle::new(p, 6, c.stroke_width(2))))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("served {served}/{conns}"),
                    p,
                    ("sans-serif", 12).into_font().color(&c),
                )))?;
            }
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    draw_legend(&legend, &names)?;
    whole.present()?;
    Ok(())
}

/// p50, p90, p99 and p99.9 per model at the busiest 64-byte workload, log y axis.
fn latency_percentiles(path: &Path, results: &Results) -> ChartResult {
    let whole = SVGBackend::new(path, SIZE).into_drawing_area();
    whole.fill(&WHITE)?;
    let (root, legend) = whole.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    // The workload with the most connections every model ran (the iterative one only
    // runs one connection, so it appears on the chart of that workload only if alone).
    let workload = results
        .workloads
        .iter()
        .filter(|w| !w.workload.churn && w.workload.size == 64)
        .max_by_key(|w| w.workload.conns);
    let title = workload.map_or("no data".to_string(), |w| w.workload.name.clone());
    let models: Vec<(String, Median)> = workload
        .map(|w| {
            w.models
                .iter()
                .filter_map(|(n, r)| r.median.clone().map(|m| (n.clone(), m)))
                .collect()
        })
        .unwrap_or_default();
    let max = models.iter().map(|(_, m)| m.p999_us).fold(10.0, f64::max);
    let min = models
        .iter()
        .map(|(_, m)| m.p50_us)
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(max / 10.0)
        .max(0.1);
    let labels = ["p50", "p90", "p99", "p99.9"];
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency percentiles per model ({title})"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2f64..3.2f64, (min * 0.8..max * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("latency µs (median of runs)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (name, m) in &models {
        let c = color(name);
        let xy: Vec<(f64, f64)> = [m.p50_us, m.p90_us, m.p99_us, m.p999_us]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, v.max(min)))
            .collect();
        chart.draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?;
        chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    draw_legend(&legend, &names)?;
    whole.present()?;
    Ok(())
}

/// KiB of server memory (PSS) per idle connection, a bar per model.
fn memory_per_idle_conn(path: &Path, results: &Results) -> ChartResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let bars: Vec<(String, f64)> = results
        .idle
        .iter()
        .filter(|i| i.error.is_none() && i.skipped.is_none())
        .map(|i| (i.model.clone(), i.kib_per_conn))
        .collect();
    let max = bars.iter().map(|(_, v)| *v).fold(1.0, f64::max);
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Server memory per idle connection ({} held, PSS)",
                results.idle_conns
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|v| {
            let centre = v - 0.5;
            let i = centre.round();
            if (centre - i).abs() < 0.01 && i >= 0.0 && (i as usize) < bars.len() {
                bars[i as usize].0.clone()
            } else {
                String::new()
            }
        })
        .y_desc("KiB per connection")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (name, v))| {
        let x = i as f64;
        Rectangle::new([(x + 0.2, 0.0), (x + 0.8, *v)], color(name).filled())
    }))?;
    // The value over each bar: the event-driven models' bars are a pixel high, and "less
    // than a KiB" is the finding.
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format!("{v:.1} KiB"),
            (i as f64 + 0.35, *v + max * 0.06),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    root.present()?;
    Ok(())
}
