//! `fd-refcount`: after `fork`, parent and child each hold a descriptor for the
//! connection, and the kernel closes the connection only when the last one is closed. A
//! parent that forgets its copy keeps every connection open after the child has
//! finished and exited: the client waits for end-of-file that never comes.
//!
//! Trade-off: none really; closing the parent's copy is one line, and forgetting it costs a
//! descriptor per connection and clients that hang. The experiment measures the hang
//! with a timeout, so it cannot hang itself.

use std::io;
use std::time::Duration;

use serde_json::json;

use crate::experiment::{ms, Deadline, Experiment, Report, Settings};
use crate::experiments::forkserver::{echo_once, ForkServer, ServerFlaws};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "fd-refcount",
    summary: "a parent that keeps its copy of connfd: the client never sees EOF after the child exits (--trials: clients)",
    max_trials: 1_000,
    run,
};

/// How long a client waits for end-of-file before calling it "never".
pub const EOF_WAIT: Duration = Duration::from_millis(1_000);

/// What the clients of one server variant saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// Per client: time from shutdown(write) to end-of-file, `None` if none within the wait.
    pub eof_after: Vec<Option<Duration>>,
    /// Children the server reaped: proof that the child serving each client had exited.
    pub children_exited: usize,
}

/// Runs `n_clients` clients against a server that does (or does not) close its copy.
pub fn views(
    settings: &Settings,
    close_in_parent: bool,
    n_clients: usize,
    deadline: Deadline,
) -> io::Result<Views> {
    let flaws = ServerFlaws {
        reap: true,
        close_in_parent,
    };
    let mut server = ForkServer::start(
        settings,
        flaws,
        deadline.remaining() + Duration::from_secs(1),
    )?;
    let mut eof_after = Vec::new();
    let mut reaped = 0;
    for n_done in 1..=n_clients {
        eof_after.push(echo_once(server.addr, EOF_WAIT.min(deadline.remaining()))?.eof_after);
        // Whether or not end-of-file came, the child serving this client has exited:
        // the server reaps it and says so.
        server.wait_reaped(
            n_done,
            &mut reaped,
            deadline.min_after(Duration::from_secs(5)),
        );
    }
    server.process.kill_and_reap();
    Ok(Views {
        eof_after,
        children_exited: reaped,
    })
}

fn describe(view: &Views) -> String {
    let parts: Vec<String> = view
        .eof_after
        .iter()
        .map(|eof| match eof {
            Some(after) => format!("EOF after {:.2} ms", ms(*after)),
            None => format!("no EOF within {} ms", EOF_WAIT.as_millis()),
        })
        .collect();
    parts.join(", ")
}

fn run(settings: &Settings) -> io::Result<Report> {
    let n_clients = settings.trials_or(2);
    let deadline = settings.deadline();
    let buggy = views(
        settings,
        false,
        n_clients,
        deadline.min_after(settings.timeout / 2),
    )?;
    let fixed = views(settings, true, n_clients, deadline)?;
    let never = buggy.eof_after.iter().filter(|eof| eof.is_none()).count();
    let measured = vec![
        format!(
            "parent keeps connfd:  {} (children exited and reaped: {})",
            describe(&buggy),
            buggy.children_exited
        ),
        format!(
            "parent closes connfd: {} (children exited and reaped: {})",
            describe(&fixed),
            fixed.children_exited
        ),
    ];
    let bar = |view: &Views| {
        let first = view.eof_after.first().copied().flatten();
        first.map_or(ms(EOF_WAIT), ms)
    };
    let mut panel = Panel::new(
        "client's wait for end-of-file (first client)",
        vec![
            Bar::new("parent keeps connfd", bar(&buggy)),
            Bar::new("parent closes connfd", bar(&fixed)),
        ],
    );
    panel.references.push((
        format!("gave up at {} ms", EOF_WAIT.as_millis()),
        ms(EOF_WAIT),
    ));
    let picture = Picture::new(
        "End-of-file after the child exits",
        "milliseconds",
        vec![panel],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Descriptor reference counts: the parent must close connfd",
        claim: "After fork, refcnt(connfd) = 2; the connection is not closed until refcnt(connfd) = 0, so the parent must close its copy.",
        did: format!(
            "{n_clients} client(s) each sent a line to a fork-per-connection server, read the echo, shut down writing, and waited up to {} ms for end-of-file; \
             once with a parent that keeps its copy of each connection, once with one that closes it.",
            EOF_WAIT.as_millis()
        ),
        measured,
        meaning: format!(
            "With the parent's copy open, {never} of {n_clients} client(s) never saw end-of-file although the child serving them had exited (the server reaped it): \
             the kernel's count for the connection was still 1. A client that reads until end-of-file hangs, and the server leaks a descriptor per client."
        ),
        fix: "Close the parent's copy right after fork (and the child's copy of the listening socket): then the child's close is the last one and the client sees end-of-file at once.".to_string(),
        hangs: Vec::new(),
        figures: json!({
            "eof_wait_ms": EOF_WAIT.as_millis() as u64,
            "parent_keeps": buggy.eof_after.iter().map(|eof| eof.map(ms)).collect::<Vec<_>>(),
            "parent_closes": fixed.eof_after.iter().map(|eof| eof.map(ms)).collect::<Vec<_>>(),
            "children_exited": [buggy.children_exited, fixed.children_exited],
        }),
        svg: Some(picture.svg()),
    })
}
