//! Every JSON document echolab writes carries its provenance: schema_version, echolab's
//! version and git revision, the command line, the CPU model and the kernel (one helper,
//! echolab-cli's `provenance::stamp`). compare's results.json is checked in bench.rs's
//! compare test, which already runs it.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{echolab, run_bounded, Server};

/// The revision this test's source is at, by git, or None without git or a repository.
fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Asserts `doc` carries every provenance field, with `args` as its command line.
fn assert_provenance(doc: &Value, args: &[&str]) {
    assert_eq!(doc["schema_version"], 1, "{doc:#}");
    assert_eq!(doc["echolab_version"], env!("CARGO_PKG_VERSION"), "{doc:#}");
    let revision = doc["git_revision"].as_str().unwrap();
    match git_head() {
        // The binary was built from this tree (its HEAD when cargo last ran the build
        // script; a commit made since rebuilds it).
        Some(head) => assert_eq!(revision, head, "{doc:#}"),
        None => {
            eprintln!("SKIPPED (revision check): no git here; the document says {revision:?}");
        }
    }
    let command_line: Vec<&str> = doc["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(command_line[0].ends_with("echolab"), "{command_line:?}");
    assert_eq!(&command_line[1..], args, "{doc:#}");
    let cpu = doc["cpu_model"].as_str().unwrap();
    assert!(!cpu.is_empty(), "{doc:#}");
    let kernel = doc["kernel"].as_str().unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(kernel, format!("Linux {}", release.trim()), "{doc:#}");
}

/// Runs `echolab ARGS` and parses its stdout as one JSON document.
fn document(args: &[&str]) -> Value {
    let output = run_bounded(echolab().args(args), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "{args:?}: not one JSON document ({err}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn bench_documents_carry_their_provenance() {
    let server = Server::start("reactor", &["--udp"]);
    let addr = server.addr.to_string();
    let tcp = [
        "bench",
        &addr,
        "--conns",
        "2",
        "--duration",
        "100ms",
        "--warmup",
        "0",
        "--interval",
        "0",
        "--json",
    ];
    let doc = document(&tcp);
    assert!(doc["messages"].as_u64().unwrap() > 0, "{doc:#}");
    assert_provenance(&doc, &tcp);
    let udp = [
        "bench",
        "--udp",
        &addr,
        "--conns",
        "1",
        "--duration",
        "100ms",
        "--json",
    ];
    let doc = document(&udp);
    assert!(doc.get("error").is_none(), "{doc:#}");
    assert_provenance(&doc, &udp);
    // A run that could not take place says so in a document with the same fields.
    for refused in [
        &["bench", "127.0.0.1:9", "--size", "0", "--json"][..],
        &["bench", "--udp", "127.0.0.1:9", "--size", "0", "--json"],
    ] {
        let doc = document(refused);
        assert_eq!(doc["exit_code"], 2, "{doc:#}");
        assert_provenance(&doc, refused);
    }
}

#[test]
fn lab_documents_carry_their_provenance() {
    let one = ["lab", "thread-arg", "--trials", "1", "--json"];
    let doc = document(&one);
    assert_eq!(doc["experiment"], "thread-arg", "{doc:#}");
    assert_provenance(&doc, &one);
}

#[test]
fn merge_documents_carry_their_provenance() {
    let server = Server::start("reactor", &[]);
    let addr = server.addr.to_string();
    let dir = std::env::temp_dir().join(format!("echolab-prov-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.json");
    let run = [
        "bench",
        &addr,
        "--conns",
        "1",
        "--duration",
        "100ms",
        "--warmup",
        "0",
        "--interval",
        "0",
        "--json",
    ];
    let doc = document(&run);
    std::fs::write(&path, doc.to_string()).unwrap();
    let path = path.to_str().unwrap();
    // merge --json writes bench's top-level keys: the provenance is one of them. (The same
    // run twice is refused as counted twice; --force merges it anyway.)
    let merge = ["merge", "--json", "--force", path, path];
    let merged = document(&merge);
    assert_eq!(merged["messages"], 2 * doc["messages"].as_u64().unwrap());
    assert_provenance(&merged, &merge);
    let _ = std::fs::remove_dir_all(&dir);
}
