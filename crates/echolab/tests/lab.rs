//! `echolab lab` end to end, through the real binary: the list, one quick experiment as
//! JSON, argument errors, and `lab all --report` writing a page with every section.

use std::process::Command;

fn echolab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_echolab"))
        .args(args)
        .output()
        .expect("the echolab binary runs")
}

#[test]
fn list_names_every_experiment() {
    let output = echolab(&["lab", "list"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for name in [
        "counter",
        "thread-arg",
        "thread-leak",
        "signal-handler",
        "deadlock",
        "progress-graph",
        "livelock",
        "starvation",
        "spawn-cost",
        "backlog",
        "zombies",
        "fd-refcount",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
}

#[test]
fn one_experiment_as_json() {
    let output = echolab(&["lab", "thread-arg", "--json", "--trials", "1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["experiment"], "thread-arg");
    let panels = report["figures"]["panels"].as_array().unwrap();
    // The all-cores panel exists only when there is more than one core to run on.
    let several = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
    assert_eq!(panels.len(), if several { 3 } else { 2 });
    // The no-race panel is exact: every value once.
    assert_eq!(panels[0]["distinct_per_trial"][0], 100);
    for panel in panels {
        let total: u64 = panel["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(total, 100, "every thread counted once");
    }
}

#[test]
fn bad_arguments_name_the_bad_value() {
    let output = echolab(&["lab", "no-such-thing"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"no-such-thing\""));
    // A CPU list that parses but names a CPU this process may not use: one line, exit 2
    // (this once panicked inside clap and exited 101, which `!= 0` let through).
    let output = echolab(&["lab", "counter", "--cpus", "999"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cpu 999"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for (args, bad) in [
        (&["lab", "counter", "--cpus", "3-1"][..], "\"3-1\""),
        (&["lab", "counter", "--timeout", "0.5"][..], "'0.5'"),
        (
            &["lab", "counter", "--trials", "0"][..],
            "'0' for '--trials",
        ),
    ] {
        let output = echolab(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(bad), "{args:?}: {stderr}");
    }
}

#[test]
fn a_cpu_list_pins_the_experiment() {
    // thread-arg is the fastest experiment that takes --cpus; one trial on CPU 0 (every
    // machine has one, and this process may use it unless an affinity mask says otherwise).
    let cpu = first_allowed_cpu();
    let output = echolab(&[
        "lab",
        "thread-arg",
        "--json",
        "--trials",
        "1",
        "--cpus",
        &cpu.to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["experiment"], "thread-arg");
}

/// `--cpus` reaches every experiment, child processes included: thread-leak's children
/// report the CPU list the kernel gives them.
#[test]
fn a_cpu_list_reaches_child_processes() {
    let cpu = first_allowed_cpu();
    let output = echolab(&[
        "lab",
        "thread-leak",
        "--json",
        "--trials",
        "1",
        "--cpus",
        &cpu.to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for variant in report["figures"]["variants"].as_array().unwrap() {
        assert_eq!(variant["cpus_allowed"], cpu.to_string(), "{variant}");
    }
    let did = report["did"].as_str().unwrap();
    assert!(
        did.ends_with(&format!("restricted to CPU(s) {cpu} (--cpus).")),
        "{did}"
    );
}

/// Absurd trial counts are refused in one line that names the value, for every
/// experiment (4294967295 once divided by zero in signal-handler and deadlock).
#[test]
fn absurd_trial_counts_are_refused() {
    let output = echolab(&["lab", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for entry in list.as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        for trials in ["4294967295", "18446744073709551615"] {
            let output = echolab(&["lab", name, "--trials", trials]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name} {trials}: {stderr}");
            assert!(stderr.contains(trials), "{name}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        }
    }
    for args in [
        &["lab", "counter", "--trials", "18446744073709551616"][..],
        &["lab", "all", "--trials", "1001"],
    ] {
        let output = echolab(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

/// The largest accepted trial count under the shortest deadline: the trial loops stop
/// at the deadline, the run ends by itself and says how many trials fitted.
#[test]
fn many_trials_stop_at_the_deadline() {
    for name in ["signal-handler", "deadlock"] {
        let started = std::time::Instant::now();
        let output = echolab(&["lab", name, "--trials", "1000", "--timeout", "1", "--json"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let meaning = report["meaning"].as_str().unwrap();
        assert!(
            meaning.contains("(1000 asked for; the deadline left no time for the rest)"),
            "{name}: {meaning}"
        );
        // Generous: a bound on the loop, not a benchmark.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{name}"
        );
    }
}

#[test]
fn the_list_as_json() {
    let output = echolab(&["lab", "list", "--json"]);
    assert!(output.status.success());
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 12);
    assert_eq!(list[0]["name"], "counter");
}

/// The first CPU in this process's affinity mask, from /proc/self/status.
fn first_allowed_cpu() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split([',', '-']).next().unwrap().parse().unwrap()
}

/// With one CPU given, thread-arg runs no "all cores" panel and makes no all-cores
/// comparison.
#[test]
fn thread_arg_on_one_cpu_says_so() {
    let cpu = first_allowed_cpu().to_string();
    let output = echolab(&[
        "lab",
        "thread-arg",
        "--json",
        "--trials",
        "1",
        "--cpus",
        &cpu,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let panels = report["figures"]["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 2);
    assert!(panels.iter().all(|panel| panel["panel"] != "all cores"));
    let meaning = report["meaning"].as_str().unwrap();
    assert!(
        meaning.contains(&format!(
            "only CPU [{cpu}] was given, so nothing ran on several cores and there is no all-cores comparison"
        )),
        "{meaning}"
    );
    assert!(!meaning.contains("all cores 1"), "{meaning}");
}

/// The opposite-order run is set up to meet: a common start and a window between the
/// two locks, both stated. Whether a given run deadlocks is not asserted.
#[test]
fn deadlock_states_its_start_and_window() {
    let output = echolab(&["lab", "deadlock", "--json", "--trials", "1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["figures"]["window_us"], 10);
    let did = report["did"].as_str().unwrap();
    assert!(
        did.contains("starting together from a barrier and holding the first lock for 10 µs (busy) before asking for the second"),
        "{did}"
    );
    assert_eq!(
        report["figures"]["opposite_order"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn all_writes_a_report_with_a_section_and_picture_per_experiment() {
    let dir = std::env::temp_dir().join(format!("echolab-lab-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = echolab(&[
        "lab",
        "all",
        "--trials",
        "1",
        "--timeout",
        "30",
        "--report",
        dir.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert_eq!(page.matches("<section class=\"experiment\"").count(), 12);
    assert_eq!(page.matches("<figure>").count(), 12);
    assert_eq!(page.matches("<svg").count(), 12);
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(figures["schema_version"], 1, "provenance");
    let by_name = |name: &str| {
        figures["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|report| report["experiment"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    // The fixed variants, exactly.
    let counter = by_name("counter");
    for variant in &counter["figures"]["variants"].as_array().unwrap()[1..] {
        assert_eq!(variant["lost"][0], 0, "{variant}");
    }
    assert_eq!(
        by_name("signal-handler")["figures"]["signalfd"]["reaped"],
        1000
    );
    assert_eq!(by_name("zombies")["figures"]["reaping"]["zombies"], 0);
    assert_eq!(by_name("zombies")["figures"]["no_waitpid"]["zombies"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
