//! `echolab completions SHELL` and `echolab man [SUBCOMMAND]`: a shell completion script
//! and roff man pages, generated from the same clap definitions that parse the command
//! line, so they cannot fall behind it. Printed on stdout; nothing installs them (the
//! README says where they go).
//!
//! The UDP forms `bench --udp` and `client --udp` have parsers of their own (see
//! echolab-udp's `cli::dispatch`); their flags are in `bench`'s and `client`'s definitions
//! too (`UdpBenchFlags`, `UdpClientFlags`), so they are completed and listed.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

/// Print a shell completion script on stdout.
///
/// bash: `echolab completions bash > ~/.local/share/bash-completion/completions/echolab`.
/// zsh: into a directory of your `$fpath` as `_echolab`. fish:
/// `~/.config/fish/completions/echolab.fish`.
///
/// Exit status: 0 written; 1 stdout could not be written; 2 bad argument; 141 stdout closed
/// by its reader (`| head`).
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Print a man page (roff) on stdout: `echolab man | man -l -`.
///
/// Without a subcommand, echolab(1), which lists the subcommands; with one, its own page,
/// echolab-SUBCOMMAND(1), with every flag. To install: `echolab man > echolab.1`, and
/// `echolab man bench > echolab-bench.1`, ... into a `man1` directory of your MANPATH.
///
/// Exit status: 0 written; 1 stdout could not be written; 2 bad argument; 141 stdout closed
/// by its reader (`| head`).
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// A subcommand whose page to print (serve, client, bench, compare, lab).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

/// Writes the completion script for `args.shell` of the command line `C`.
pub fn completions<C: CommandFactory>(args: &CompletionsArgs) -> ExitCode {
    let mut cli = C::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "echolab", &mut out);
    write_stdout(&out)
}

/// Writes the man page of the command line `C`, or of one of its subcommands.
pub fn man<C: CommandFactory>(args: &ManArgs) -> ExitCode {
    let mut cli = C::command();
    cli.build();
    let page = match &args.subcommand {
        None => clap_mangen::Man::new(cli),
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                let names: Vec<&str> = cli.get_subcommands().map(|s| s.get_name()).collect();
                echolab_cli::say!(
                    "echolab man: no subcommand {name:?} (subcommands: {})",
                    names.join(", ")
                );
                return ExitCode::from(2);
            };
            // The page's title, echolab-bench, is what `man` is asked for.
            clap_mangen::Man::new(sub.clone()).title(format!("echolab-{name}"))
        }
    };
    let mut out = Vec::new();
    match page.render(&mut out) {
        Ok(()) => write_stdout(&out),
        Err(err) => {
            echolab_cli::say!("echolab man: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut stdout = echolab_cli::stdout();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `echolab man | head -1`: the reader left as it meant to (`main` says 141).
        Err(_) if echolab_cli::stdout_closed() => ExitCode::FAILURE,
        Err(err) => {
            echolab_cli::say!("echolab: cannot write to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}
