//! The `echolab` binary: parses the command line and hands it to one library crate.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod generate;

/// CS:APP chapter 12 made runnable: echo servers in every concurrency model, a load
/// generator, and a lab of the lecture's hazards.
#[derive(Debug, Parser)]
#[command(name = "echolab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Each subcommand's one-line `about` (its line in `echolab --help`) is given here as an
// attribute, not a doc comment: a doc comment would also replace the subcommand's long help,
// the Args struct's doc with its exit statuses, which `echolab SUBCOMMAND --help` shows.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = "Serve TCP echo with one concurrency model (--udp: UDP echo too)")]
    Serve(ServeCmd),
    #[command(
        about = "Send stdin (or a file) to an echo server and print or verify what comes back (`client --udp --help`: over UDP)"
    )]
    Client(ClientCmd),
    #[command(
        about = "Load an echo server and measure it: messages/s, latency percentiles, errors (`bench --udp --help`: the UDP load)"
    )]
    Bench(BenchCmd),
    #[command(about = "Run every model under the same load and write tables and charts")]
    Compare(echolab_load::CompareArgs),
    #[command(
        about = "Combine bench results (--json documents, --hdr-log logs) from several load machines into one report"
    )]
    Merge(echolab_load::merge::MergeArgs),
    #[command(
        about = "Reproduce the lecture's hazards (races, deadlock, starvation...) and measure them"
    )]
    Lab(echolab_lab::LabArgs),
    #[command(about = "Print a shell completion script (bash, zsh, fish, elvish, powershell)")]
    Completions(generate::CompletionsArgs),
    #[command(about = "Print the man page, or a subcommand's (roff; `echolab man | man -l -`)")]
    Man(generate::ManArgs),
}

// UDP hook (issue 10): `serve` is the TCP flags plus the UDP ones.
#[derive(Debug, clap::Args)]
struct ServeCmd {
    #[command(flatten)]
    tcp: echolab_server::cli::ServeArgs,
    #[command(flatten)]
    udp: echolab_udp::cli::UdpServeArgs,
}

// UDP hook (issue 11): `bench` and `client` list the flags of their --udp forms too, for
// --help, completions and man pages; `echolab_udp::cli::dispatch` parses those forms before
// this parser runs, so here they are only refused without --udp.
#[derive(Debug, clap::Args)]
struct BenchCmd {
    #[command(flatten)]
    tcp: echolab_load::BenchArgs,
    #[command(flatten)]
    udp: echolab_udp::cli::UdpBenchFlags,
}

#[derive(Debug, clap::Args)]
struct ClientCmd {
    #[command(flatten)]
    tcp: echolab_load::ClientArgs,
    #[command(flatten)]
    udp: echolab_udp::cli::UdpClientFlags,
}

// UDP hook (issue 10): UDP beside TCP, or alone; without --udp, TCP exactly as before.
fn serve(args: ServeCmd, matches: &clap::ArgMatches) -> ExitCode {
    let ServeCmd { mut tcp, udp } = args;
    // Ops hook (issue 11): sockets passed by the service manager (LISTEN_FDS).
    if let Err(code) = take_passed_sockets(udp.enabled()) {
        return code;
    }
    if !udp.enabled() {
        return echolab_server::cli::run(tcp);
    }
    if tcp.listen.len() > 1 {
        // One UDP socket (or loop group) per server; --listen given twice is TCP's.
        echolab_cli::say!("echolab serve: --listen given {} times: not with --udp or --udp-only (UDP serves one address; give --listen once)", tcp.listen.len());
        return ExitCode::from(2);
    }
    if let Some(n) = tcp.processes {
        // The UDP server's threads exist before the supervisor would fork; and UDP needs
        // no descriptor per client, the limit worker processes are for.
        echolab_cli::say!("echolab serve: --processes {n}: not with --udp or --udp-only: one UDP socket serves every client, so the descriptor limit that worker processes get around does not bind UDP (--workers spreads it over SO_REUSEPORT sockets)");
        return ExitCode::from(2);
    }
    let tcp_only = echolab_server::cli::tcp_only_flag_given(matches);
    if let Some(flag) = tcp_only.filter(|_| udp.udp_only) {
        echolab_cli::say!("echolab serve: {flag}: a TCP setting, and --udp-only serves no TCP");
        return ExitCode::from(2);
    }
    echolab_server::logging::init(tcp.quiet, tcp.verbose);
    // Ops hook (issue 11): the UDP guard's counts join the stats line and /metrics.
    echolab_server::stats::set_udp_source(|| {
        echolab_udp::live_stats().map(|s| echolab_server::stats::UdpFigures {
            received: s.received,
            echoed: s.echoed,
            dropped: echolab_udp::DropReason::ALL
                .iter()
                .map(|reason| (reason.name(), s.dropped(*reason)))
                .collect(),
        })
    });
    // Ops hook (issue 11): with --udp-only no TCP server starts a reporter; SIGUSR1 still
    // prints the stats line.
    let _reporter = if udp.udp_only {
        let interval = (!tcp.stats_interval.is_zero()).then_some(tcp.stats_interval);
        echolab_server::stats::listen_for_usr1()
            .and_then(|()| echolab_server::stats::Reporter::new(interval).spawn())
            .ok()
    } else {
        None
    };
    // --metrics with --udp-only: no TCP server starts the endpoint (it was silently absent).
    let _metrics = match tcp.metrics.filter(|_| udp.udp_only) {
        Some(addr) => {
            let model = tcp.model.unwrap_or(echolab_server::Model::DEFAULT);
            match echolab_server::metrics::start_announced(addr, model) {
                Ok(endpoint) => Some(endpoint),
                Err(err) => {
                    echolab_cli::say!("echolab serve: {err}");
                    return ExitCode::from(err.exit_code());
                }
            }
        }
        None => None,
    };
    let model = tcp.model.unwrap_or(echolab_server::Model::DEFAULT).name();
    // sd_notify for --udp-only (beside TCP, the TCP server says it).
    let notify = echolab_udp::cli::Notify {
        ready: echolab_server::activation::notify_ready,
        stopping: echolab_server::activation::notify_stopping,
    };
    // A passed TCP listener replaces --listen for UDP too: same port as TCP.
    let udp_listen = echolab_server::activation::tcp_listener_addr().unwrap_or(tcp.first_listen());
    echolab_udp::cli::run_serve(
        &udp,
        model,
        udp_listen,
        tcp.workers,
        tcp.ipv6_only,
        |addr| {
            tcp.listen = vec![addr];
            echolab_server::cli::run(tcp)
        },
        notify,
    )
}

/// Takes the sockets of socket activation: the TCP listener waits for `serve`, a UDP
/// socket goes to the UDP server (which needs --udp or --udp-only).
fn take_passed_sockets(udp_enabled: bool) -> Result<(), ExitCode> {
    use echolab_server::activation;
    if let Err(err) = activation::take() {
        echolab_cli::say!("echolab serve: {err}");
        return Err(ExitCode::from(2));
    }
    if let Some(socket) = activation::udp_socket() {
        if !udp_enabled {
            echolab_cli::announce(
                "echolab serve: LISTEN_FDS passed a UDP socket: serve it with --udp or --udp-only",
            );
            return Err(ExitCode::from(2));
        }
        echolab_udp::serve_passed_socket(socket);
    }
    Ok(())
}

/// Every command's status, or 141 when its stdout reader left (`echolab_cli::exit_status`).
fn main() -> ExitCode {
    echolab_cli::exit_status(run())
}

fn run() -> ExitCode {
    // UDP hook (issue 10): `bench --udp` and `client --udp` have their own flags.
    if let Some(code) = echolab_udp::cli::dispatch(&std::env::args_os().collect::<Vec<_>>()) {
        return code;
    }
    // The matches too: `serve --udp-only` asks which flags came from the command line.
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => {
            // --help and --version: clap's own output, on stdout.
            return echolab_cli::help_printed(err.print());
        }
        Err(err)
            if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // Bare `echolab` (or `echolab lab`): the normal help page, on stderr, exit 2.
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            let message = one_line(&err.render().to_string());
            echolab_cli::say!("echolab: {message}");
            if bench_wants_json() {
                // `echolab bench --json` promises scripts a JSON document whatever happens.
                echolab_cli::print_out(&echolab_load::bench::error_json(&message, 2));
            }
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(
            args,
            matches
                .subcommand_matches("serve")
                .expect("clap parsed the serve subcommand"),
        ),
        Command::Client(args) => echolab_load::run_client(args.tcp),
        Command::Bench(args) => echolab_load::run_bench(args.tcp),
        Command::Compare(args) => echolab_load::run_compare(args),
        Command::Merge(args) => echolab_load::merge::run(args),
        Command::Lab(args) => echolab_lab::run(args),
        Command::Completions(args) => generate::completions::<Cli>(&args),
        Command::Man(args) => generate::man::<Cli>(&args),
    }
}

/// True for `echolab bench ... --json ...` (or `--json-stream`), read from the raw
/// arguments (clap could not parse them).
fn bench_wants_json() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.first().is_some_and(|a| a == "bench")
        && args.iter().any(|a| a == "--json" || a == "--json-stream")
}

/// A clap error on one line: "error: invalid value 'x' for `'--model <MODEL>'` [possible
/// values: ...]", without the blank line and the "--help" hint.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}
