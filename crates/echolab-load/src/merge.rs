//! `echolab merge`: one report of several bench runs (several load machines, or several
//! bench processes on one), from their `--json` documents or `--hdr-log` interval logs.
//!
//! Percentiles cannot be averaged; histograms can be added, and are: the merged
//! percentiles are those of one histogram holding every source's values, exactly.
//! Counts add up; so do rates (the sources ran side by side, each over its own window);
//! the window is the longest source's.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::config::BenchConfig;
use crate::hdr;
use crate::latency::{Latency, LatencySummary};
use crate::report::BenchReport;

/// Combine bench results from several load machines into one report.
///
/// Each FILE is an `echolab bench --json` document or an `echolab bench --hdr-log`
/// interval log (or a document `merge --json` wrote). Counts and rates are summed, the
/// percentiles are those of the sum of the histograms (exact, never averaged), and each
/// source gets a line of its own.
///
/// Exit status: 0 merged; 1 a file that cannot be read or holds no histogram; 2 a bad
/// argument, or sources with different message sizes, workloads or modes (unless --force);
/// 141 stdout closed by its reader (`| head`).
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The results to merge: bench --json documents or --hdr-log interval logs.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Print one JSON document (bench's top-level keys: messages, messages_per_sec,
    /// p50_us, p99_us, ..., plus sources and the merged histogram) instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Merge sources even when their message sizes, workloads or modes differ.
    #[arg(long)]
    pub force: bool,
}

/// One run to merge: its figures and its latency histogram (nanoseconds).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// Message size in bytes (`None`: the source does not say, a foreign log).
    pub size: Option<u64>,
    pub workload: Option<String>,
    pub lines: Option<bool>,
    pub conns: u64,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub errors: u64,
    pub incomplete: u64,
    pub hist: Histogram<u64>,
}

impl Source {
    /// Reads a source from a file's text: a JSON document (starts with `{`) or an
    /// interval log. One line when it is neither, or holds no histogram.
    pub fn parse(name: &str, text: &str) -> Result<Source, String> {
        if text.trim_start().starts_with('{') {
            let doc: Value =
                serde_json::from_str(text).map_err(|err| format!("{name}: not JSON: {err}"))?;
            if let Some(error) = doc.get("error").and_then(Value::as_str) {
                return Err(format!("{name}: a run that did not take place ({error})"));
            }
            let encoded = doc
                .get("histogram")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name}: no \"histogram\" (from a bench without it?)"))?;
            let hist = hdr::decode(encoded).map_err(|err| format!("{name}: {err}"))?;
            Ok(Source::from_figures(name, &doc, hist))
        } else {
            let log = hdr::read_log(text).map_err(|err| format!("{name}: {err}"))?;
            match log.meta {
                Some(meta) => Ok(Source::from_figures(name, &meta, log.total)),
                // A foreign log: only its latencies are known.
                None => Ok(Source {
                    name: name.to_string(),
                    size: None,
                    workload: None,
                    lines: None,
                    conns: 0,
                    messages: log.total.len(),
                    seconds: 0.0,
                    messages_per_sec: 0.0,
                    errors: 0,
                    incomplete: 0,
                    hist: log.total,
                }),
            }
        }
    }

    /// The figures of a bench (or merge) JSON document, or of a log's `#echolab` line.
    fn from_figures(name: &str, doc: &Value, hist: Histogram<u64>) -> Source {
        let u = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let f = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(0.0);
        let config = doc.get("config");
        Source {
            name: name.to_string(),
            size: config.and_then(|c| c.get("size")).and_then(Value::as_u64),
            workload: doc
                .get("workload")
                .and_then(Value::as_str)
                .map(str::to_string),
            lines: config.and_then(|c| c.get("lines")).and_then(Value::as_bool),
            conns: u(config.and_then(|c| c.get("conns"))),
            messages: u(doc.get("messages")),
            seconds: f(doc.get("seconds")),
            messages_per_sec: f(doc.get("messages_per_sec")),
            errors: u(doc.get("errors")),
            incomplete: u(doc.get("incomplete")),
            hist,
        }
    }

    fn summary(&self) -> LatencySummary {
        Latency::from_histogram(self.hist.clone()).summary()
    }
}

/// The one merged report.
#[derive(Debug, Clone)]
pub struct Merged {
    pub size: Option<u64>,
    pub workload: Option<String>,
    pub lines: Option<bool>,
    pub conns: u64,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub errors: u64,
    pub incomplete: u64,
    pub hist: Histogram<u64>,
}

/// The first difference that makes sources unfit to merge (message size, workload,
/// mode), as one line; `None` when they agree (a source that does not say agrees).
pub fn mismatch(sources: &[Source]) -> Option<String> {
    fn first_differing<T: PartialEq + std::fmt::Debug>(
        sources: &[Source],
        what: &str,
        get: impl Fn(&Source) -> Option<T>,
    ) -> Option<String> {
        let mut seen: Option<(&str, T)> = None;
        for s in sources {
            let Some(value) = get(s) else { continue };
            match &seen {
                None => seen = Some((&s.name, value)),
                Some((name, first)) if *first != value => {
                    return Some(format!(
                        "{name} has {what} {first:?}, {} has {value:?}: merging different loads mixes their latencies (--force to merge anyway)",
                        s.name
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }
    first_differing(sources, "message size", |s| s.size)
        .or_else(|| first_differing(sources, "workload", |s| s.workload.clone()))
        .or_else(|| {
            first_differing(sources, "mode", |s| {
                s.lines.map(|l| if l { "lines" } else { "bytes" })
            })
        })
        .or_else(|| same_run(sources))
}

/// Two sources that hold the same run (the same file given twice, or a copy of it): equal
/// latency histograms with at least one message and equal counts. Two load machines never
/// record identical histograms; summing them would count one machine's run twice.
fn same_run(sources: &[Source]) -> Option<String> {
    for (idx, a) in sources.iter().enumerate() {
        for b in &sources[idx + 1..] {
            if !a.hist.is_empty()
                && a.hist == b.hist
                && a.messages == b.messages
                && a.errors == b.errors
            {
                return Some(format!(
                    "{} and {} hold the same run (identical histograms and counts): merging would count it twice (--force to merge anyway)",
                    a.name, b.name
                ));
            }
        }
    }
    None
}

/// Adds the sources up: counts and rates summed, the window the longest, the histogram
/// the sum. One line when two histograms cannot be added (different ranges).
pub fn merge(sources: &[Source]) -> Result<Merged, String> {
    let first = sources.first().ok_or("nothing to merge")?;
    let mut hist = Histogram::new_from(&first.hist);
    let agreed = |get: &dyn Fn(&Source) -> Option<String>| {
        let values: Vec<String> = sources.iter().filter_map(get).collect();
        values
            .first()
            .filter(|v| values.iter().all(|w| w == *v))
            .cloned()
    };
    let mut merged = Merged {
        size: agreed(&|s| s.size.map(|n| n.to_string())).and_then(|v| v.parse().ok()),
        workload: agreed(&|s| s.workload.clone()),
        lines: agreed(&|s| s.lines.map(|l| l.to_string())).map(|v| v == "true"),
        conns: 0,
        messages: 0,
        seconds: 0.0,
        messages_per_sec: 0.0,
        errors: 0,
        incomplete: 0,
        hist: Histogram::new_from(&first.hist),
    };
    for s in sources {
        hdr::add(&mut hist, &s.hist).map_err(|err| format!("{}: {err}", s.name))?;
        merged.conns += s.conns;
        merged.messages += s.messages;
        merged.seconds = merged.seconds.max(s.seconds);
        merged.messages_per_sec += s.messages_per_sec;
        merged.errors += s.errors;
        merged.incomplete += s.incomplete;
    }
    merged.hist = hist;
    Ok(merged)
}

impl Merged {
    pub fn summary(&self) -> LatencySummary {
        Latency::from_histogram(self.hist.clone()).summary()
    }

    /// The merged report as JSON: bench's top-level keys, `sources`, and the histogram
    /// (so that a merged document merges again).
    pub fn to_json(&self, sources: &[Source]) -> Value {
        let l = self.summary();
        let per_source: Vec<Value> = sources
            .iter()
            .map(|s| {
                let l = s.summary();
                json!({
                    "name": s.name,
                    "messages": s.messages,
                    "messages_per_sec": s.messages_per_sec,
                    "seconds": s.seconds,
                    "errors": s.errors,
                    "latency_count": l.count,
                    "p50_us": l.p50_us,
                    "p99_us": l.p99_us,
                    "max_us": l.max_us,
                })
            })
            .collect();
        json!({
            "config": { "size": self.size, "lines": self.lines, "conns": self.conns },
            "workload": self.workload,
            "messages": self.messages,
            "completed": self.messages,
            "incomplete": self.incomplete,
            "seconds": self.seconds,
            "messages_per_sec": self.messages_per_sec,
            "mb_per_sec": self.size.map(|size| self.messages_per_sec * size as f64 / 1e6),
            "mean_us": l.mean_us,
            "p50_us": l.p50_us,
            "p90_us": l.p90_us,
            "p99_us": l.p99_us,
            "p999_us": l.p999_us,
            "max_us": l.max_us,
            "latency_count": l.count,
            "errors": self.errors,
            "sources": per_source,
            "histogram": hdr::encode(&self.hist),
        })
    }

    /// The merged report as text: one summary, then a line per source.
    pub fn to_text(&self, sources: &[Source]) -> String {
        let mut out = String::new();
        let load = match (self.size, &self.workload) {
            (Some(size), Some(w)) => format!(", {size}-byte messages, {w} loop"),
            (Some(size), None) => format!(", {size}-byte messages"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "merged {} source{}{load}: {} messages, {:.1} messages/s (the sum of the sources' rates), {} errors, {} incomplete",
            sources.len(),
            if sources.len() == 1 { "" } else { "s" },
            self.messages,
            self.messages_per_sec,
            self.errors,
            self.incomplete
        );
        let l = self.summary();
        let _ = writeln!(
            out,
            "  latency us (one histogram of every source): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
        for s in sources {
            let l = s.summary();
            let _ = writeln!(
                out,
                "  {}: {} messages, {:.1} messages/s, p50 {:.1}  p99 {:.1}  max {:.1} us (n={})",
                s.name, s.messages, s.messages_per_sec, l.p50_us, l.p99_us, l.max_us, l.count
            );
        }
        out
    }
}

/// Runs `echolab merge` (see [`MergeArgs`]).
pub fn run(args: MergeArgs) -> ExitCode {
    let mut sources = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                let why = echolab_cli::describe_io(&err);
                return fail(&format!("cannot read {name}: {why}"), 1);
            }
        };
        match Source::parse(&name, &text) {
            Ok(source) => sources.push(source),
            Err(err) => return fail(&err, 1),
        }
    }
    if !args.force {
        if let Some(why) = mismatch(&sources) {
            return fail(&why, 2);
        }
    }
    let merged = match merge(&sources) {
        Ok(merged) => merged,
        Err(err) => return fail(&err, 1),
    };
    let mut stdout = echolab_cli::stdout();
    let _ = if args.json {
        let mut doc = merged.to_json(&sources);
        echolab_cli::provenance::stamp(&mut doc);
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        )
    } else {
        write!(stdout, "{}", merged.to_text(&sources))
    };
    ExitCode::SUCCESS
}

fn fail(message: &str, code: u8) -> ExitCode {
    echolab_cli::say!("echolab merge: {message}");
    ExitCode::from(code)
}

/// Writes `bench --hdr-log`'s file: the run's intervals (or its whole histogram as one
/// interval when it kept none) and its figures on the `#echolab` line.
pub fn write_bench_log(
    path: &Path,
    report: &BenchReport,
    config: &BenchConfig,
) -> std::io::Result<()> {
    let doc = report.to_json(config);
    let keys = [
        "workload",
        "messages",
        "seconds",
        "messages_per_sec",
        "errors",
        "incomplete",
    ];
    let mut meta = serde_json::Map::new();
    meta.insert(
        "config".to_string(),
        json!({
            "size": config.msg_size,
            "lines": config.lines,
            "conns": config.n_conns,
        }),
    );
    for key in keys {
        meta.insert(key.to_string(), doc[key].clone());
    }
    let (start, intervals) = match report.latency_hist.intervals() {
        Some(iv) => {
            let ago = Instant::now().saturating_duration_since(iv.origin());
            (SystemTime::now() - ago, iv.histograms())
        }
        None => {
            let window = Duration::from_secs_f64(report.seconds.max(0.0));
            (
                SystemTime::now() - window,
                vec![(
                    Duration::ZERO,
                    window,
                    report.latency_hist.histogram().clone(),
                )],
            )
        }
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    hdr::write_log(&mut out, start, &intervals, &Value::Object(meta))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for v in values {
            h.record(*v).unwrap();
        }
        h
    }

    fn source(name: &str, size: u64, values: &[u64]) -> Source {
        Source {
            name: name.to_string(),
            size: Some(size),
            workload: Some("closed".to_string()),
            lines: Some(false),
            conns: 4,
            messages: values.len() as u64,
            seconds: 2.0,
            messages_per_sec: values.len() as f64 / 2.0,
            errors: 1,
            incomplete: 2,
            hist: hist(values),
        }
    }

    #[test]
    fn counts_and_rates_add_percentiles_come_from_the_sum() {
        // Known truth: 100 values of 1..=100 us split 30/70; the sum's p50 is 50 us and
        // its p99 99 us, which neither part has (their p50s are 15 and 65).
        let all: Vec<u64> = (1..=100).map(|us| us * 1_000).collect();
        let a = source("a", 64, &all[..30]);
        let mut b = source("b", 64, &all[30..]);
        b.seconds = 3.0;
        let merged = merge(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(merged.messages, 100);
        assert_eq!(merged.errors, 2);
        assert_eq!(merged.incomplete, 4);
        assert_eq!(merged.conns, 8);
        assert_eq!(merged.seconds, 3.0);
        assert_eq!(merged.messages_per_sec, 15.0 + 35.0);
        let l = merged.summary();
        assert_eq!(l.count, 100);
        assert!((l.p50_us - 50.0).abs() < 0.05, "p50 {}", l.p50_us);
        assert!((l.p99_us - 99.0).abs() < 0.1, "p99 {}", l.p99_us);
        assert_eq!(hdr::encode(&merged.hist), hdr::encode(&hist(&all)));
        assert_eq!(merged.size, Some(64));
        assert_eq!(merged.workload.as_deref(), Some("closed"));
        assert_eq!(merged.lines, Some(false));
        // Each source's own percentiles: a's values are 1..=30 us.
        let doc = merged.to_json(&[a.clone(), b.clone()]);
        assert_eq!(doc["sources"][0]["latency_count"], 30);
        assert!(
            (doc["sources"][0]["p50_us"].as_f64().unwrap() - 15.0).abs() < 0.02,
            "{doc}"
        );
        assert!(
            (doc["sources"][1]["max_us"].as_f64().unwrap() - 100.0).abs() < 0.1,
            "{doc}"
        );
        let text = merged.to_text(&[a, b]);
        assert!(
            text.starts_with(
                "merged 2 sources, 64-byte messages, closed loop: 100 messages, 50.0 messages/s"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  a: 30 messages, 15.0 messages/s, p50 15.0  p99 30.0"),
            "{text}"
        );
    }

    #[test]
    fn different_loads_are_refused_and_named() {
        let a = source("a", 64, &[1_000]);
        let b = source("b", 128, &[1_000]);
        let why = mismatch(&[a.clone(), b]).unwrap();
        assert!(why.starts_with("a has message size 64, b has 128"), "{why}");
        let mut c = source("c", 64, &[1_000]);
        c.workload = Some("open".to_string());
        assert!(mismatch(&[a.clone(), c.clone()])
            .unwrap()
            .contains("workload"));
        // Forced: the size is said, the workload (not one) is not.
        let forced = merge(&[a.clone(), c.clone()]).unwrap();
        assert!(forced
            .to_text(&[a.clone(), c])
            .starts_with("merged 2 sources, 64-byte messages: 2 messages"));
        let mut d = source("d", 64, &[1_000]);
        d.lines = Some(true);
        assert!(mismatch(&[a.clone(), d.clone()]).unwrap().contains("mode"));
        // The same load, another run (the same run twice is refused for another reason).
        assert_eq!(mismatch(&[a.clone(), source("a2", 64, &[2_000])]), None);
        // Forced: the merged report does not claim the mode.
        assert_eq!(merge(&[a, d]).unwrap().lines, None);
    }

    #[test]
    fn the_same_run_twice_is_refused_two_runs_alike_are_not() {
        let a = source("a.json", 64, &[1_000, 2_000]);
        let copy = source("copy.json", 64, &[1_000, 2_000]);
        let other = source("b.json", 64, &[1_000, 2_001_000]);
        assert_eq!(
            mismatch(&[a.clone(), other.clone(), copy]).as_deref(),
            Some("a.json and copy.json hold the same run (identical histograms and counts): merging would count it twice (--force to merge anyway)")
        );
        assert_eq!(mismatch(&[a, other]), None);
        // Two machines that measured nothing have equal (empty) histograms: not one run.
        assert_eq!(
            mismatch(&[source("x", 64, &[]), source("y", 64, &[])]),
            None
        );
    }

    #[test]
    fn a_source_that_does_not_say_agrees() {
        let a = source("a", 64, &[1_000]);
        let mut foreign = source("f", 0, &[2_000]);
        foreign.size = None;
        foreign.workload = None;
        foreign.lines = None;
        assert_eq!(mismatch(&[a.clone(), foreign.clone()]), None);
        assert_eq!(merge(&[a, foreign]).unwrap().size, Some(64));
    }

    #[test]
    fn a_merged_document_parses_and_merges_again() {
        let a = source("a", 64, &[1_000, 2_000]);
        let b = source("b", 64, &[3_000]);
        let merged = merge(&[a.clone(), b.clone()]).unwrap();
        let doc = merged.to_json(&[a, b]);
        assert_eq!(doc["messages"], 3);
        assert_eq!(doc["config"]["size"], 64);
        let again = Source::parse("m", &doc.to_string()).unwrap();
        assert_eq!(again.messages, 3);
        assert_eq!(again.size, Some(64));
        assert_eq!(again.workload.as_deref(), Some("closed"));
        assert_eq!(hdr::encode(&again.hist), hdr::encode(&merged.hist));
    }

    #[test]
    fn error_documents_and_garbage_are_refused() {
        let err = Source::parse("e", r#"{"error": "cannot connect", "exit_code": 1}"#).unwrap_err();
        assert!(err.contains("did not take place"), "{err}");
        let err = Source::parse("n", r#"{"messages": 3}"#).unwrap_err();
        assert!(err.contains("no \"histogram\""), "{err}");
        assert!(Source::parse("g", "{nope").is_err());
        assert!(Source::parse("l", "not a log\n").is_err());
        assert!(merge(&[]).is_err());
    }
}
