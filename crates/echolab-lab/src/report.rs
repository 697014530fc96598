//! `echolab lab all --report DIR`: one HTML page, DIR/index.html, with a section per
//! experiment (the lecture's claim, what was measured here, the picture inlined as SVG,
//! and the fix), plus each picture as DIR/EXPERIMENT.svg and the figures as DIR/lab.json.
//!
//! The page is self-contained (no script, no external style or font), so it reads the
//! same in a browser, in headless Chromium (scripts/check-report.sh) and from a CI artifact.

use std::io;
use std::path::{Path, PathBuf};

use crate::experiment::Report;

/// Escapes `&`, `<`, `>` and `"` for HTML text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-top: 2px solid #468; padding-top: 0.6em; margin-top: 2em; }
nav ol { columns: 2; }
.claim { background: #f3f3ee; border-left: 4px solid #998; padding: 0.4em 0.8em; }
.fix { background: #eef5ee; border-left: 4px solid #585; padding: 0.4em 0.8em; }
.hang { background: #fbeeee; border-left: 4px solid #a44; padding: 0.4em 0.8em; }
pre { background: #f6f6f8; padding: 0.6em; overflow-x: auto; font-size: 0.88em; white-space: pre-wrap; overflow-wrap: anywhere; }
figure { margin: 1em 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; }
";

/// The page for `reports`, as HTML text.
pub fn html(reports: &[Report]) -> String {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<title>echolab lab: the lecture's hazards, measured</title>\n");
    page.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    page.push_str("<h1>echolab lab: the lecture's hazards, measured</h1>\n");
    page.push_str(&format!(
        "<p>Each section reproduces one hazard of CS:APP chapter 12 (\"Concurrent Programming\") on this machine ({} CPUs), \
         shows what was measured, and runs the fix beside it. Produced by <code>echolab lab all --report</code>; \
         every number below was measured in that run.</p>\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    page.push_str("<nav><ol>\n");
    for report in reports {
        page.push_str(&format!(
            "<li><a href=\"#{}\">{}</a></li>\n",
            report.experiment,
            escape(report.title)
        ));
    }
    page.push_str("</ol></nav>\n");
    for report in reports {
        page.push_str(&section(report));
    }
    page.push_str("</body>\n</html>\n");
    page
}

fn section(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "<section class=\"experiment\" id=\"{}\">\n<h2>{} <small><code>echolab lab {}</code></small></h2>\n",
        report.experiment,
        escape(report.title),
        report.experiment
    ));
    out.push_str(&format!(
        "<p class=\"claim\"><strong>The lecture's claim.</strong> {}</p>\n",
        escape(report.claim)
    ));
    out.push_str(&format!(
        "<p><strong>What ran.</strong> {}</p>\n",
        escape(&report.did)
    ));
    out.push_str("<p><strong>Measured here.</strong></p>\n<pre>");
    for line in &report.measured {
        out.push_str(&escape(line));
        out.push('\n');
    }
    out.push_str("</pre>\n");
    for hang in &report.hangs {
        out.push_str(&format!(
            "<p class=\"hang\"><strong>A run stopped early (hung, or timed out), reported as a result.</strong> {}</p>\n",
            escape(hang)
        ));
    }
    if let Some(svg) = &report.svg {
        // The SVG is our own output (plotters escapes its text), inlined as markup.
        let svg = svg.trim_start_matches(|ch| ch != '<');
        let svg = svg
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
            .unwrap_or(svg);
        out.push_str(&format!("<figure>\n{}\n</figure>\n", svg.trim()));
    }
    out.push_str(&format!(
        "<p><strong>What it means.</strong> {}</p>\n",
        escape(&report.meaning)
    ));
    out.push_str(&format!(
        "<p class=\"fix\"><strong>The fix.</strong> {}</p>\n</section>\n",
        escape(&report.fix)
    ));
    out
}

/// The document of `lab all --json` and lab.json: the provenance every echolab document
/// carries, and `experiments`, each experiment's report.
pub fn all_json(reports: &[Report]) -> serde_json::Value {
    let experiments: Vec<_> = reports.iter().map(Report::json).collect();
    let mut doc = serde_json::json!({ "experiments": experiments });
    echolab_cli::provenance::stamp(&mut doc);
    doc
}

/// Creates `dir` if it does not exist and checks that a file can be written into it
/// (a probe file, removed at once), so that `lab all --report DIR` fails before it runs.
pub fn prepare(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".echolab-write-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Writes DIR/index.html, DIR/EXPERIMENT.svg and DIR/lab.json; returns the page's path.
pub fn write(dir: &Path, reports: &[Report]) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for report in reports {
        if let Some(svg) = &report.svg {
            std::fs::write(dir.join(format!("{}.svg", report.experiment)), svg)?;
        }
    }
    std::fs::write(
        dir.join("lab.json"),
        serde_json::to_string_pretty(&all_json(reports)).map_err(io::Error::other)?,
    )?;
    let path = dir.join("index.html");
    std::fs::write(&path, html(reports))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(name: &'static str) -> Report {
        Report {
            experiment: name,
            title: "A <title>",
            claim: "claim",
            did: "did".to_string(),
            measured: vec!["a & b".to_string()],
            meaning: "means".to_string(),
            fix: "fix".to_string(),
            hangs: vec!["it hung".to_string()],
            figures: json!({}),
            svg: Some("<svg><text>x</text></svg>".to_string()),
        }
    }

    #[test]
    fn page_has_a_section_and_a_figure_per_report() {
        let page = html(&[report("one"), report("two")]);
        assert_eq!(page.matches("<section class=\"experiment\"").count(), 2);
        assert_eq!(page.matches("<figure>").count(), 2);
        assert!(page.contains("A &lt;title&gt;"));
        assert!(page.contains("a &amp; b"));
        // Long measured lines wrap instead of needing a horizontal scroll.
        assert!(page.contains("white-space: pre-wrap"));
        assert!(page.contains("href=\"#two\""));
    }
}
