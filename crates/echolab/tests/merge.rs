//! `echolab bench --hdr-log` and `echolab merge` from the outside: two bench processes
//! against one server, as two load machines would run, merged; the merged percentiles are
//! checked against a histogram this test builds itself of both runs' values.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde_json::Value;
use support::{echolab, finish_bounded, Server};

fn run(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echolab");
    finish_bounded(child, Duration::from_secs(60))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("echolab-merge-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bench_command(addr: std::net::SocketAddr, size: &str, log: &PathBuf) -> Command {
    let mut command = echolab();
    command.arg("bench").arg(addr.to_string()).args([
        "--conns",
        "4",
        "--threads",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0.1",
        "--size",
        size,
        "--interval",
        "0.25",
        "--json",
        "--hdr-log",
    ]);
    command.arg(log);
    command
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no JSON ({err}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn decode(text: &str) -> Histogram<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap()
}

#[test]
fn two_runs_merged_are_one_histogram_of_both() {
    let server = Server::start("reactor", &["--quiet"]);
    let dir = scratch("two");
    let (log_a, log_b) = (dir.join("a.hlog"), dir.join("b.hlog"));
    // Side by side, as two load machines would run.
    let a = bench_command(server.addr, "64", &log_a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = run(bench_command(server.addr, "64", &log_b));
    let a = finish_bounded(a, Duration::from_secs(60));
    assert!(a.status.success() && b.status.success(), "{a:?} {b:?}");
    let (doc_a, doc_b) = (json(&a), json(&b));
    let (json_a, json_b) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&json_a, &a.stdout).unwrap();
    std::fs::write(&json_b, &b.stdout).unwrap();

    // The truth, built here: every value of both runs recorded in one histogram.
    let mut both = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    for doc in [&doc_a, &doc_b] {
        let h = decode(doc["histogram"].as_str().unwrap());
        for v in h.iter_recorded() {
            both.record_n(v.value_iterated_to(), v.count_at_value())
                .unwrap();
        }
    }
    assert!(!both.is_empty());

    let mut merge = echolab();
    merge.args(["merge", "--json"]).arg(&json_a).arg(&json_b);
    let merged = run(merge);
    assert!(merged.status.success(), "{merged:?}");
    let merged = json(&merged);
    for (key, q) in [
        ("p50_us", 0.5),
        ("p90_us", 0.9),
        ("p99_us", 0.99),
        ("p999_us", 0.999),
    ] {
        assert_eq!(
            merged[key].as_f64().unwrap(),
            both.value_at_quantile(q) as f64 / 1e3,
            "{key}"
        );
    }
    assert_eq!(merged["max_us"].as_f64().unwrap(), both.max() as f64 / 1e3);
    assert_eq!(merged["latency_count"].as_u64().unwrap(), both.len());
    assert_eq!(
        merged["messages"].as_u64().unwrap(),
        doc_a["messages"].as_u64().unwrap() + doc_b["messages"].as_u64().unwrap()
    );
    let rate =
        doc_a["messages_per_sec"].as_f64().unwrap() + doc_b["messages_per_sec"].as_f64().unwrap();
    assert!((merged["messages_per_sec"].as_f64().unwrap() - rate).abs() < 1e-6 * rate);
    assert_eq!(merged["sources"].as_array().unwrap().len(), 2);

    // The interval logs hold the same histograms, interval by interval, and merge to
    // the same report.
    let log_text = std::fs::read_to_string(&log_a).unwrap();
    let intervals = log_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert_eq!(intervals, 4, "1 s in intervals of 0.25 s:\n{log_text}");
    assert!(log_text.contains("#[StartTime: "), "{log_text}");
    let mut merge = echolab();
    merge.args(["merge", "--json"]).arg(&log_a).arg(&log_b);
    let from_logs = run(merge);
    assert!(from_logs.status.success(), "{from_logs:?}");
    let from_logs = json(&from_logs);
    assert_eq!(from_logs["histogram"], merged["histogram"]);
    assert_eq!(from_logs["messages"], merged["messages"]);
    assert_eq!(from_logs["p99_us"], merged["p99_us"]);

    // Text: one summary line, then a line per source.
    let mut merge = echolab();
    merge.arg("merge").arg(&json_a).arg(&log_b);
    let text = run(merge);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.starts_with("merged 2 sources, 64-byte messages, closed loop: "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn different_message_sizes_are_refused_unless_forced() {
    let server = Server::start("reactor", &["--quiet"]);
    let dir = scratch("sizes");
    let (log_a, log_b) = (dir.join("a.hlog"), dir.join("b.hlog"));
    assert!(run(bench_command(server.addr, "64", &log_a))
        .status
        .success());
    assert!(run(bench_command(server.addr, "128", &log_b))
        .status
        .success());
    let mut merge = echolab();
    merge.arg("merge").arg(&log_a).arg(&log_b);
    let refused = run(merge);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("message size 64") && stderr.contains("128") && stderr.contains("--force"),
        "{stderr}"
    );
    let mut merge = echolab();
    merge.args(["merge", "--force"]).arg(&log_a).arg(&log_b);
    assert!(run(merge).status.success());
    // Garbage is one line and exit 1.
    let junk = dir.join("junk");
    std::fs::write(&junk, "not a log\n").unwrap();
    let mut merge = echolab();
    merge.arg("merge").arg(&junk);
    let bad = run(merge);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
