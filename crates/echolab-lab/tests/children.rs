//! The experiments that run in child processes, tested through the real machinery: this
//! test binary is its own child. Run with no arguments it is a small test runner; run as
//! `lab --child NAME ...` (which is how the watchdog re-executes the current binary) it
//! runs that experiment body, and as `serve ...` it is the iterative server of `backlog`.
//!
//! Fixed variants are asserted exactly (every child reaped, no zombie, end-of-file); the
//! hazards only where they are certain by construction (a forced lock cycle, a server
//! that never reaps, a parent that keeps the descriptor), never on timing luck.

#![cfg_attr(loom, allow(unused))]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use echolab_lab::experiment::{Deadline, Settings};
use echolab_lab::experiments::{backlog, deadlock, fd_refcount, signal_handler, zombies};
use echolab_lab::watchdog::{child_args, End, WatchedChild};

/// `serve ...`, as the echolab binary parses it.
#[cfg(not(loom))]
#[derive(Debug, Parser)]
struct ServeCli {
    #[command(subcommand)]
    command: ServeCommand,
}

#[cfg(not(loom))]
#[derive(Debug, clap::Subcommand)]
enum ServeCommand {
    Serve(echolab_server::cli::ServeArgs),
}

fn settings() -> Settings {
    Settings::new(Duration::from_secs(30)).expect("the test binary knows its own path")
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

fn watchdog_reports_a_blocked_child_as_a_hang() {
    let settings = settings();
    let child =
        WatchedChild::spawn(&settings.exe, &child_args("block", &serde_json::json!({}))).unwrap();
    let pid = child.pid();
    let finished = child
        .wait(Deadline::after(Duration::from_millis(500)), None)
        .unwrap();
    let End::Hung { stalled, state, .. } = &finished.end else {
        panic!(
            "the blocked child was not reported hung: {:?}",
            finished.end
        );
    };
    assert!(!stalled);
    assert_eq!(state.pid, pid);
    assert!(!state.threads.is_empty());
    assert!(finished.result().is_none());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the blocked child was killed and reaped"
    );
}

fn signalfd_version_reaps_every_child() {
    let outcome = signal_handler::run_variant(&settings(), "signalfd", 300, deadline()).unwrap();
    assert_eq!(
        outcome.ending,
        signal_handler::Ending::Finished,
        "{:?}",
        outcome.detail
    );
    assert_eq!(outcome.started, 300);
    assert_eq!(outcome.reaped, 300);
}

/// The signalfd variant cannot hang (no handler shares its lock); cut off by a budget
/// shorter than the stall interval while it forks 20,000 children, it is "timed out"
/// (still making progress), never "hung" (this once said "HUNG, 0 reaped").
fn a_run_cut_off_by_its_budget_is_timed_out_not_hung() {
    use signal_handler::{Ending, STALL};
    let budget = Deadline::after(STALL / 4);
    let outcome = signal_handler::run_variant(
        &settings(),
        "signalfd",
        signal_handler::HANG_MAX_CHILDREN,
        budget,
    )
    .unwrap();
    assert_ne!(outcome.ending, Ending::Hung, "{outcome:?}");
    if outcome.ending == Ending::TimedOut {
        assert!(outcome.started < signal_handler::HANG_MAX_CHILDREN);
        assert!(outcome.reaped <= outcome.started);
        let detail = outcome.detail.unwrap();
        assert!(detail.starts_with("timed out"), "{detail}");
    }
}

/// Whether (and when) the locking handler hangs is timing; that a run is accounted for
/// either way is not.
fn locking_handler_run_is_accounted_for() {
    let outcome = signal_handler::run_variant(&settings(), "locking", 200, deadline()).unwrap();
    assert!(outcome.started <= 200);
    assert!(outcome.reaped <= outcome.started, "{outcome:?}");
    match &outcome.detail {
        Some(detail) => assert!(detail.contains("children started"), "{detail}"),
        None => assert_eq!(outcome.started, 200),
    }
}

fn detector_finds_a_constructed_cycle() {
    let broken = deadlock::run_broken(&settings(), 1_000, true, deadline()).unwrap();
    assert!(broken.hang.is_none(), "{:?}", broken.hang);
    assert!(broken.deadlocked());
    assert_eq!(
        broken.rounds,
        [0, 0],
        "both threads stop in their first round"
    );
    assert!(
        broken
            .cycle
            .iter()
            .any(|line| line.contains("cycle of 2 threads")),
        "{:?}",
        broken.cycle
    );
    assert!(broken
        .cycle
        .iter()
        .any(|line| line.contains("holds lock A and waits for lock B")));
    assert!(broken
        .cycle
        .iter()
        .any(|line| line.contains("holds lock B and waits for lock A")));
}

fn global_lock_order_completes() {
    let (count, _) = deadlock::run_ordered(10_000);
    assert_eq!(count, 20_000);
}

fn non_reaping_server_leaves_a_zombie_per_connection() {
    let leaky = zombies::leftovers(&settings(), false, 5, deadline()).unwrap();
    assert_eq!(leaky.zombies, 5);
    let reaping = zombies::leftovers(&settings(), true, 5, deadline()).unwrap();
    assert_eq!((reaping.reaped, reaping.zombies), (5, 0));
}

fn parent_copy_of_connfd_withholds_end_of_file() {
    let buggy = fd_refcount::views(&settings(), false, 1, deadline()).unwrap();
    assert_eq!(buggy.eof_after, vec![None]);
    assert_eq!(buggy.children_exited, 1, "the child exited all the same");
    let fixed = fd_refcount::views(&settings(), true, 1, deadline()).unwrap();
    assert!(fixed.eof_after[0].is_some());
    assert_eq!(fixed.children_exited, 1);
}

fn second_client_blocks_in_read_not_connect() {
    let settings = settings();
    let (mut server, addr) = backlog::start_iterative(&settings.exe, deadline()).unwrap();
    let hold = Duration::from_millis(100);
    let timeline = backlog::timeline(addr, hold, deadline()).unwrap();
    server.kill_and_reap();
    // The iterative model's known limit, asserted as such: the answer comes only after
    // client 1 has left.
    assert!(
        timeline.client2_answered_ms >= timeline.client1_left_ms,
        "{timeline:?}"
    );
    assert!(
        timeline.client2_read_ms >= hold.as_secs_f64() * 1e3 * 0.9,
        "{timeline:?}"
    );
}

fn spawn_cost_measures_all_three() {
    let mut settings = settings();
    settings.trials = Some(20);
    let report = (echolab_lab::experiment::find("spawn-cost").unwrap().run)(&settings).unwrap();
    for kind in ["process", "thread", "pool"] {
        assert_eq!(report.figures[kind]["ns"]["n"], 20, "{kind}");
    }
}

/// Unjoined joinable threads keep their stacks: deterministic on glibc (the stack of a
/// joinable thread is freed only by pthread_join), whatever the timing.
fn unjoined_threads_keep_their_stacks() {
    let mut settings = settings();
    settings.trials = Some(2);
    let report = (echolab_lab::experiment::find("thread-leak").unwrap().run)(&settings).unwrap();
    let variants = report.figures["variants"].as_array().unwrap();
    let growth = |idx: usize| {
        let samples = variants[idx]["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 3, "a sample before and after each batch");
        let last = &samples[2];
        assert_eq!(last["threads"], 1, "every thread has returned: {last}");
        assert_eq!(
            last["started"],
            2 * echolab_lab::experiments::thread_leak::PER_BATCH
        );
        last["vsz_kib"].as_u64().unwrap() as i64 - samples[0]["vsz_kib"].as_u64().unwrap() as i64
    };
    assert_eq!(variants[0]["variant"], "never-joined");
    let leaked = growth(0);
    // At least a 64 KiB stack (plus guard page) per thread, whatever `ulimit -s` says.
    assert!(leaked >= 100 * 64, "never-joined grew only {leaked} KiB");
    for (idx, variant) in variants.iter().enumerate().skip(1) {
        let kept = growth(idx);
        assert!(
            kept * 10 < leaked,
            "{}: {kept} KiB against {leaked}",
            variant["variant"]
        );
    }
    assert!(
        report
            .meaning
            .starts_with("Each joinable thread that was never joined kept"),
        "{}",
        report.meaning
    );
}

const TESTS: &[(&str, fn())] = &[
    (
        "unjoined_threads_keep_their_stacks",
        unjoined_threads_keep_their_stacks,
    ),
    (
        "watchdog_reports_a_blocked_child_as_a_hang",
        watchdog_reports_a_blocked_child_as_a_hang,
    ),
    (
        "signalfd_version_reaps_every_child",
        signalfd_version_reaps_every_child,
    ),
    (
        "a_run_cut_off_by_its_budget_is_timed_out_not_hung",
        a_run_cut_off_by_its_budget_is_timed_out_not_hung,
    ),
    (
        "locking_handler_run_is_accounted_for",
        locking_handler_run_is_accounted_for,
    ),
    (
        "detector_finds_a_constructed_cycle",
        detector_finds_a_constructed_cycle,
    ),
    ("global_lock_order_completes", global_lock_order_completes),
    (
        "non_reaping_server_leaves_a_zombie_per_connection",
        non_reaping_server_leaves_a_zombie_per_connection,
    ),
    (
        "parent_copy_of_connfd_withholds_end_of_file",
        parent_copy_of_connfd_withholds_end_of_file,
    ),
    (
        "second_client_blocks_in_read_not_connect",
        second_client_blocks_in_read_not_connect,
    ),
    (
        "spawn_cost_measures_all_three",
        spawn_cost_measures_all_three,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = echolab_lab::child::main_if_child(&args) {
        return code;
    }
    #[cfg(not(loom))]
    if args.get(1).map(String::as_str) == Some("serve") {
        let ServeCommand::Serve(serve) = ServeCli::parse().command;
        return echolab_server::cli::run(serve);
    }
    // Like libtest: a first free argument filters tests by name; flags are ignored.
    let filter = args.iter().skip(1).find(|arg| !arg.starts_with('-'));
    let mut n_run = 0;
    for (name, test) in TESTS {
        if filter.is_some_and(|filter| !name.contains(filter.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        test();
        println!("ok");
        n_run += 1;
    }
    println!("\ntest result: ok. {n_run} passed");
    ExitCode::SUCCESS
}
