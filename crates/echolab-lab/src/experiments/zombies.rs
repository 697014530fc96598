//! `zombies`: a fork-per-connection server that never calls `waitpid` keeps every child
//! it ever forked as a zombie: the child has exited, but its exit status (and its
//! process-table entry) waits for a parent that never asks. One that reaps keeps none.
//!
//! Trade-off: reaping needs SIGCHLD handling somewhere in the server (a handler, or here
//! a signalfd in the accept loop); skipping it is simpler and leaks a process slot per
//! connection until the server dies or the process table fills.

use std::io;
use std::time::Duration;

use serde_json::json;

use crate::experiment::{Deadline, Experiment, Report, Settings};
use crate::experiments::forkserver::{echo_once, zombies_settle, ForkServer, ServerFlaws};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "zombies",
    summary: "a fork server that does not reap leaves a zombie per connection; one that reaps leaves none (--trials: connections)",
    max_trials: 1_000,
    run,
};

/// What one server variant left behind after `n_conns` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    pub n_conns: usize,
    /// Zombie children of the server, counted in /proc.
    pub zombies: usize,
    /// Children the server says it reaped.
    pub reaped: usize,
}

/// Serves `n_conns` one-line clients with a server that does (or does not) reap, then
/// counts its zombies once they settle (or at `deadline`).
pub fn leftovers(
    settings: &Settings,
    reap: bool,
    n_conns: usize,
    deadline: Deadline,
) -> io::Result<Leftovers> {
    let flaws = ServerFlaws {
        reap,
        close_in_parent: true,
    };
    let mut server = ForkServer::start(
        settings,
        flaws,
        deadline.remaining() + Duration::from_secs(1),
    )?;
    for _ in 0..n_conns {
        let view = echo_once(server.addr, deadline.remaining())?;
        if view.eof_after.is_none() {
            return Err(io::Error::other(
                "a client saw no end-of-file from a server that closes its copy",
            ));
        }
    }
    // Each child has closed its connection; it exits right after, and then it is either
    // a zombie (not reaped) or gone (reaped). Wait for the count to reach that.
    let settle = deadline.min_after(Duration::from_secs(5));
    let mut reaped = 0;
    let want_zombies = if reap { 0 } else { n_conns };
    if reap {
        server.wait_reaped(n_conns, &mut reaped, settle);
    }
    let zombies = zombies_settle(server.pid(), want_zombies, settle);
    server.process.kill_and_reap();
    Ok(Leftovers {
        n_conns,
        zombies,
        reaped,
    })
}

fn run(settings: &Settings) -> io::Result<Report> {
    let n_conns = settings.trials_or(20);
    let deadline = settings.deadline();
    let leaky = leftovers(
        settings,
        false,
        n_conns,
        deadline.min_after(settings.timeout / 2),
    )?;
    let reaping = leftovers(settings, true, n_conns, deadline)?;
    let measured = vec![
        format!("no waitpid:          {n_conns} connections served, {} zombie children counted in /proc", leaky.zombies),
        format!(
            "signalfd + waitpid:  {n_conns} connections served, {} children reaped, {} zombies",
            reaping.reaped, reaping.zombies
        ),
    ];
    let picture = Picture::new(
        format!("Zombie children after {n_conns} connections"),
        "zombies",
        vec![Panel::new(
            "zombie children of the server",
            vec![
                Bar::new("no waitpid", leaky.zombies as f64),
                Bar::new("reaps", reaping.zombies as f64),
            ],
        )],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Zombies: a process server must reap",
        claim: "The listening server process must reap its zombie children, to avoid a fatal memory leak.",
        did: format!(
            "Ran a fork-per-connection echo server twice, each time for {n_conns} one-line clients: once never calling waitpid, once reaping on SIGCHLD \
             (read from a signalfd); then counted its children in state Z in /proc."
        ),
        measured,
        meaning: format!(
            "Every connection to the non-reaping server left one zombie ({} after {n_conns}): each holds a process-table entry and its exit status until the \
             parent waits for it or dies. A long-running server leaks one per client until fork fails.",
            leaky.zombies
        ),
        fix: format!(
            "Reap every exited child: on SIGCHLD, call waitpid(-1, WNOHANG) until it returns 0 (one signal may stand for many children). \
             The reaping server reaped {} of {n_conns} and left {} zombies.",
            reaping.reaped, reaping.zombies
        ),
        hangs: Vec::new(),
        figures: json!({
            "connections": n_conns,
            "no_waitpid": { "zombies": leaky.zombies },
            "reaping": { "zombies": reaping.zombies, "reaped": reaping.reaped },
        }),
        svg: Some(picture.svg()),
    })
}
