//! The command line: bad flags and values get one line on stderr naming the problem, and
//! exit code 2; help explains.

mod support;

use std::process::Output;

use support::echolab;

fn run(args: &[&str]) -> Output {
    echolab().args(args).output().expect("run echolab")
}

fn assert_usage_error(args: &[&str], names: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected, got:\n{stderr}"
    );
    assert!(
        stderr.contains(names),
        "{args:?}: {stderr:?} does not name {names:?}"
    );
}

#[test]
fn unknown_model_is_named() {
    assert_usage_error(&["serve", "--model", "forky"], "forky");
}

#[test]
fn zero_max_line_is_refused() {
    assert_usage_error(&["serve", "--max-line", "0"], "--max-line");
}

#[test]
fn zero_workers_and_max_conns_are_refused() {
    assert_usage_error(&["serve", "--workers", "0"], "--workers");
    assert_usage_error(&["serve", "--max-conns", "0"], "--max-conns");
}

#[test]
fn bad_listen_address_is_named() {
    assert_usage_error(&["serve", "--listen", "localhost"], "localhost");
}

/// Issue 11: --listen may be given several times, but not the same address twice, and not
/// several with UDP (which serves one address). Refused before anything is bound.
#[test]
fn several_listen_addresses_are_refused_where_they_make_no_sense() {
    assert_usage_error(
        &["serve", "-l", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        "--listen 127.0.0.1:0: given twice",
    );
    // A host name is its address: localhost:0 is 127.0.0.1:0.
    assert_usage_error(
        &["serve", "-l", "127.0.0.1:0", "-l", "localhost:0"],
        "--listen 127.0.0.1:0: given twice",
    );
    for udp in ["--udp", "--udp-only"] {
        assert_usage_error(
            &["serve", udp, "-l", "127.0.0.1:0", "-l", "127.0.0.2:0"],
            "--listen given 2 times: not with --udp or --udp-only",
        );
    }
    let help = String::from_utf8_lossy(&run(&["serve", "--help"]).stdout).into_owned();
    assert!(
        help.contains("--listen 127.0.0.1:7007 --listen [::1]:7007"),
        "serve --help teaches several --listen: {help}"
    );
}

#[test]
fn bare_echolab_prints_the_help_page_and_exits_2() {
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "help belongs on stderr here");
    // clap's page as it is printed for --help: a usage line and one line per subcommand,
    // not squashed onto one line.
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("Usage: echolab")),
        "{stderr}"
    );
    for sub in ["serve", "client", "bench", "compare", "lab"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(sub)),
            "{sub} has no line of its own:\n{stderr}"
        );
    }
}

#[test]
fn unknown_subcommand_is_named() {
    assert_usage_error(&["srve"], "srve");
}

#[test]
fn port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_usage_error(
        &["serve", "--listen", &addr],
        &format!("cannot bind {addr}: address already in use"),
    );
}

#[test]
fn help_explains_the_models_and_the_connection_cap() {
    let out = run(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "iterative",
        "prethreaded",
        "reactor",
        "--max-conns",
        "closed at once",
        "--idle-timeout",
    ] {
        assert!(help.contains(word), "serve --help lacks {word:?}");
    }
}

#[test]
fn port_in_use_by_another_reactor_is_named() {
    // SO_REUSEPORT would let a second reactor share the port silently; it must refuse.
    let first = support::Server::start("reactor", &[]);
    let addr = first.addr.to_string();
    assert_usage_error(
        &["serve", "--model", "reactor", "--listen", &addr],
        &format!("cannot bind {addr}: address already in use"),
    );
}

/// Every subcommand's `--help` lists its exit statuses (a doc comment on the subcommand in
/// main.rs once replaced the text that listed them), and says 2 is a bad argument.
#[test]
fn every_help_lists_the_exit_statuses() {
    for args in [
        &["serve", "--help"][..],
        &["client", "--help"],
        &["client", "--udp", "--help"],
        &["bench", "--help"],
        &["bench", "--udp", "--help"],
        &["compare", "--help"],
        &["lab", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.starts_with("Exit status: 0 "))
            .unwrap_or_else(|| panic!("{args:?} --help has no exit statuses:\n{help}"));
        assert!(line.contains("2 bad argument"), "{args:?}: {line}");
        assert!(line.contains("; 1 "), "{args:?}: {line}");
    }
}

#[test]
fn bash_completions_know_the_subcommands_and_flags() {
    let out = run(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F _echolab"), "not a bash script");
    for word in [
        "serve",
        "bench",
        "--idle-timeout",
        "--max-p99",
        "--json-stream",
    ] {
        assert!(script.contains(word), "bash completion lacks {word:?}");
    }
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("serve"),
            "{shell}"
        );
    }
    assert_usage_error(&["completions", "tcsh"], "tcsh");
}

/// The flags only `bench --udp` and `client --udp` have are in `bench`'s and `client`'s
/// own definitions, so their --help, completions and man pages list them; without --udp
/// they are refused (one line, exit 2), and with it they parse as before.
#[test]
fn the_udp_forms_flags_are_listed_completed_and_refused_without_udp() {
    let bench_help = String::from_utf8_lossy(&run(&["bench", "--help"]).stdout).into_owned();
    let client_help = String::from_utf8_lossy(&run(&["client", "--help"]).stdout).into_owned();
    let script = String::from_utf8_lossy(&run(&["completions", "bash"]).stdout).into_owned();
    let man = String::from_utf8_lossy(&run(&["man", "bench"]).stdout).into_owned();
    for flag in ["--udp", "--count", "--max-loss"] {
        assert!(
            bench_help.contains(&format!("{flag} ")),
            "bench --help lacks {flag}"
        );
        // Completions: bench's word list; man: roff escapes the dashes.
        assert!(script.contains(flag), "bash completion lacks {flag}");
        assert!(
            man.contains(&flag.replace('-', "\\-")),
            "man bench lacks {flag}"
        );
    }
    for flag in ["--udp", "--size"] {
        assert!(
            client_help.contains(&format!("{flag} ")),
            "client --help lacks {flag}"
        );
    }
    assert_usage_error(&["bench", "127.0.0.1:9", "--count", "5"], "--udp");
    assert_usage_error(&["bench", "127.0.0.1:9", "--max-loss", "1"], "--udp");
    assert_usage_error(&["client", "127.0.0.1:9", "--size", "5"], "--udp");
    // Under --udp, the same values as before: a bad one is still one line naming it.
    assert_usage_error(
        &["bench", "--udp", "127.0.0.1:9", "--count", "0"],
        "--count",
    );
    assert_usage_error(
        &["bench", "--udp", "127.0.0.1:9", "--max-loss", "x"],
        "--max-loss",
    );
    assert_usage_error(&["client", "--udp", "127.0.0.1:9", "--size", "0"], "--size");
}

/// The man pages are roff that groff reads without a warning, when groff is here;
/// otherwise only their header is checked (and the test says so).
#[test]
fn man_pages_parse() {
    let groff = std::process::Command::new("groff")
        .arg("--version")
        .output();
    if groff.is_err() {
        eprintln!("SKIPPED (groff part): groff is not installed; checking the .TH header only");
    }
    for (args, title) in [
        (&["man"][..], "echolab"),
        (&["man", "serve"], "echolab-serve"),
        (&["man", "bench"], "echolab-bench"),
        (&["man", "lab"], "echolab-lab"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!(".TH {title} 1 "))),
            "{args:?}: no .TH header for {title}:\n{page}"
        );
        if groff.is_ok() {
            use std::io::Write;
            let mut child = std::process::Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
            let checked = support::finish_bounded(child, support::STEP);
            let warnings = String::from_utf8_lossy(&checked.stderr);
            assert!(
                checked.status.success() && warnings.is_empty(),
                "{args:?}: {warnings}"
            );
        }
    }
    assert_usage_error(&["man", "nope"], "nope");
}

/// `unshare -rn -- echolab serve ARGS...`: echolab in a network namespace of its own (and
/// a user namespace that makes that allowed), where binding the wildcard addresses touches
/// no real network; `None` (SKIPPED, said) where this machine cannot make one.
fn in_own_netns() -> Option<std::process::Command> {
    let probe = std::process::Command::new("unshare")
        .args(["-rn", "true"])
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(probe, Ok(status) if status.success()) {
        eprintln!("SKIPPED: `unshare -rn` cannot make a network namespace here: {probe:?}");
        return None;
    }
    let mut command = std::process::Command::new("unshare");
    command.args(["-rn", "--", env!("CARGO_BIN_EXE_echolab")]);
    Some(command)
}

/// Issue 11, "say what [::] does and offer the other": `[::]:PORT` is dual-stack by default,
/// so beside `0.0.0.0:PORT` its bind fails (one line naming it, exit 2); with --ipv6-only
/// one server listens on both, a line each.
#[test]
fn wildcards_of_both_families_need_ipv6_only() {
    let Some(mut command) = in_own_netns() else {
        return;
    };
    let child = command
        .args([
            "serve",
            "-m",
            "event",
            "-l",
            "0.0.0.0:7007",
            "-l",
            "[::]:7007",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::finish_bounded(child, support::STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("echolab serve: cannot bind [::]:7007: address already in use"),
        "{stderr}"
    );
    let Some(command) = in_own_netns() else {
        return;
    };
    let mut server = support::Server::start_with(
        command,
        "event",
        "0.0.0.0:7007",
        &["--listen", "[::]:7007", "--ipv6-only"],
    );
    let lines = server.log.wait_for("listening on ", 2);
    assert_eq!(
        lines,
        [
            "listening on 0.0.0.0:7007 (model event)",
            "listening on [::]:7007 (model event)"
        ]
    );
    let status = server
        .terminate(support::STEP)
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}
