//! TCP echo servers in every concurrency model of CS:APP chapter 12, and the models that
//! answer the lecture's "cons", all meeting one contract.
//!
//! A model differs from the others only in how it schedules connections; the bytes on the
//! wire come from [`echo::Echo`], written once.
//!
//! # Layout
//! Two floors: the models, each only its scheduling idea, over one shared layer.
//! - [`serve`]: binds the listeners (one per `--listen` address), installs the shutdown signal and the panic hook, builds
//!   the connection cap, runs one model with one [`Server`].
//! - [`cli`]: the `echolab serve` arguments and their checks.
//! - [`model`]: one file per model. The lecture's: [`model::iterative`],
//!   [`model::process`], [`model::event`], [`model::thread`], [`model::prethreaded`].
//!   Beyond it: [`model::reactor`] (an event loop per core), [`model::uring`] (io_uring),
//!   [`model::async_tokio`] (tokio, the conventional Rust server).
//! - The shared layer: [`echo`] (what to echo, when, how much may wait), [`conn`] (the
//!   blocking per-connection loop, the lecture's `echo(connfd)`, and the close log line),
//!   [`event_loop`] (what the readiness loops share: connections by token, a connection's
//!   budgeted turn, the paced accept), [`deadline`] (the loops' idle timeout, a timer wheel),
//!   [`admission`] (the one connection cap: `--max-conns`, `--max-conns-per-ip`),
//!   [`accept`] (the accept pause after EMFILE, and the blocking models' accept loop),
//!   [`runner`] (N event loops, stopped together), [`live`] (the open connections of a
//!   blocking model, for shutdown), [`net`] (listener and socket options), [`shutdown`]
//!   (SIGINT/SIGTERM and panics as a pollable descriptor), [`sbuf`] (the bounded queue,
//!   CS:APP's `sbuf`), [`logging`].
//! - [`supervisor`]: `--processes N`, nginx's design: worker processes, each a model's
//!   event loops on its own SO_REUSEPORT listener, forked, restarted and reaped.
//! - Operations: [`stats`] (the counters behind `kill -USR1`), [`metrics`] (`--metrics`,
//!   them for Prometheus), [`activation`] (sockets passed by systemd, and `sd_notify`).
#![forbid(unsafe_code)]

pub mod accept;
pub mod activation;
pub mod admission;
pub mod cli;
pub mod conn;
pub mod deadline;
pub mod echo;
pub mod event_loop;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod net;
pub mod runner;
pub mod shutdown;
pub mod stats;
pub mod supervisor;
pub mod uring_conn;

/// The bounded queue of the prethreaded model (CS:APP's `sbuf`), in a crate of its own.
pub use echolab_sbuf as sbuf;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

pub use echo::{EchoConfig, Mode};

/// A concurrency model: how the server schedules its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// One client at a time (echoserveri); a second client waits in the listen backlog.
    Iterative,
    /// A child process per connection (echoserverp), reaped in the main loop, not in a signal handler.
    Process,
    /// One thread multiplexing every connection with poll(2) (echoservers).
    Event,
    /// A thread per connection (echoservert).
    Thread,
    /// A fixed pool of worker threads fed by a bounded queue (echoservert_pre + sbuf).
    Prethreaded,
    /// One epoll event loop per core, each with its own SO_REUSEPORT listener.
    Reactor,
    /// io_uring: completion-based I/O with batched submission.
    Uring,
    /// tokio's multi-threaded runtime, the conventional Rust server.
    Async,
}

impl Model {
    /// Every model, in the lecture's order, then the fast ones.
    pub const ALL: [Model; 8] = [
        Model::Iterative,
        Model::Process,
        Model::Event,
        Model::Thread,
        Model::Prethreaded,
        Model::Reactor,
        Model::Uring,
        Model::Async,
    ];

    /// The default `--max-conns`: what the host can afford of this model's cost per
    /// connection. A process (about 83 KiB of PSS) or a thread (a stack, a kernel task)
    /// per connection gets a smaller cap than a few hundred bytes of loop state.
    pub fn default_max_conns(self) -> usize {
        match self {
            Model::Process => 256,
            Model::Thread => 1024,
            _ => cli::DEFAULT_MAX_CONNS,
        }
    }

    /// Whether `--workers` sizes this model's pool of threads or loops; the others (one
    /// thread, a process or a thread per connection) have none to size.
    pub fn has_workers(self) -> bool {
        matches!(
            self,
            Model::Prethreaded | Model::Reactor | Model::Uring | Model::Async
        )
    }

    /// The model `echolab serve` uses when none is named: the best one the project has
    /// (`scripts/bench-models.py` shows it against the C reference).
    pub const DEFAULT: Model = Model::Reactor;

    pub fn name(self) -> &'static str {
        match self {
            Model::Iterative => "iterative",
            Model::Process => "process",
            Model::Event => "event",
            Model::Thread => "thread",
            Model::Prethreaded => "prethreaded",
            Model::Reactor => "reactor",
            Model::Uring => "uring",
            Model::Async => "async",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a server needs to run, already checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: Model,
    /// The first `--listen` address.
    pub listen: SocketAddr,
    /// The other `--listen` addresses (`--listen` given several times): one server, one
    /// connection cap, on every address.
    pub also_listen: Vec<SocketAddr>,
    pub echo: EchoConfig,
    /// Connections silent (nothing read, nothing written) for this long are closed.
    pub idle_timeout: Option<Duration>,
    /// The most connections open at once; the next one is accepted and closed at once.
    pub max_conns: usize,
    /// The most connections open at once from one IP address; `None`: no such limit.
    pub max_conns_per_ip: Option<usize>,
    /// Worker threads for the models that have a pool (prethreaded, reactor, uring, async).
    pub workers: Option<usize>,
    /// The stats summary at info level every this long; `None`: never.
    pub stats_interval: Option<Duration>,
    /// `--ipv6-only`: an IPv6 listener takes no IPv4 connections (else the kernel's
    /// default: dual-stack `[::]` on Linux).
    pub ipv6_only: bool,
    /// `--metrics`: where to serve the Prometheus exposition (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
}

impl ServeConfig {
    /// Defaults for `model` on `listen`, as `echolab serve` has them.
    pub fn new(model: Model, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            model,
            listen,
            also_listen: Vec::new(),
            echo: EchoConfig::default(),
            idle_timeout: Some(Duration::from_secs(cli::DEFAULT_IDLE_TIMEOUT_SECS)),
            max_conns: model.default_max_conns(),
            max_conns_per_ip: None,
            workers: None,
            stats_interval: Some(stats::DEFAULT_SUMMARY_INTERVAL),
            metrics: None,
            ipv6_only: false,
        }
    }

    /// Every `--listen` address, the first first.
    pub fn listens(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.listen).chain(self.also_listen.iter().copied())
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    /// The listen address could not be bound.
    Bind { addr: SocketAddr, source: io::Error },
    /// The `--metrics` address could not be bound (named apart from the echo address: both
    /// are "cannot bind" otherwise).
    MetricsBind { addr: SocketAddr, source: io::Error },
    /// The model cannot run here (for example io_uring refused by the kernel).
    Unsupported { model: Model, reason: String },
    /// A thread of the server panicked (the log has its line); the server stopped.
    Panicked,
    /// Anything else, with what was being done.
    Io {
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, source } => {
                write!(f, "cannot bind {addr}: {}", net::describe(source))
            }
            ServeError::MetricsBind { addr, source } => {
                write!(
                    f,
                    "--metrics {addr}: cannot bind: {}",
                    net::describe(source)
                )
            }
            ServeError::Unsupported { model, reason } => {
                write!(f, "model {model} cannot run here: {reason}")
            }
            ServeError::Panicked => f.write_str("stopped after a panic (see the log line above)"),
            ServeError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl ServeError {
    /// The exit status `echolab serve` uses: 2 for a bad setting, 1 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Bind { .. }
            | ServeError::MetricsBind { .. }
            | ServeError::Unsupported { .. } => 2,
            ServeError::Io { .. } | ServeError::Panicked => 1,
        }
    }
}

/// What every model receives: the listeners, the checked settings, the shutdown signal and
/// the connection cap.
#[derive(Debug)]
pub struct Server {
    /// One listener per `--listen` address, in their order (at least one); every model
    /// serves them all, under one cap.
    pub listeners: Vec<TcpListener>,
    pub config: ServeConfig,
    pub shutdown: shutdown::Shutdown,
    /// `--max-conns` and `--max-conns-per-ip`: every model admits each connection here.
    pub cap: std::sync::Arc<admission::ConnCap>,
}

/// Binds every `--listen` address, announces them, and runs `config.model` until SIGINT
/// or SIGTERM. `on_listening` receives the bound addresses in `--listen` order (the real
/// port where 0 was asked).
///
/// A panic in any thread stops the whole server ([`shutdown::Shutdown::stop_on_panic`],
/// which replaces the process's panic hook) and makes this return
/// [`ServeError::Panicked`], or, in a model whose own thread is the one that panicked
/// (iterative, event), unwind out of it.
pub fn serve(
    config: ServeConfig,
    on_listening: impl FnOnce(&[SocketAddr]),
) -> Result<(), ServeError> {
    // Issue 11: the listeners passed by the service manager win over --listen.
    let mut listeners =
        activation::tcp_listener_or_bind(&config).map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    // Issue 11: --listen given several times.
    for addr in config.also_listen.iter().copied() {
        let reuse_port = matches!(config.model, Model::Reactor | Model::Uring);
        let listener = net::bind(addr, reuse_port, config.ipv6_only)
            .map_err(|source| ServeError::Bind { addr, source })?;
        listeners.push(listener);
    }
    serve_on(config, listeners, on_listening)
}

/// As [`serve`], on listeners already bound (a `--processes` worker's own SO_REUSEPORT
/// listeners, see [`supervisor`]), one per `--listen` address.
pub fn serve_on(
    config: ServeConfig,
    listeners: Vec<TcpListener>,
    on_listening: impl FnOnce(&[SocketAddr]),
) -> Result<(), ServeError> {
    let shutdown = shutdown::Shutdown::install().map_err(|source| ServeError::Io {
        what: "cannot install the SIGINT/SIGTERM handlers",
        source,
    })?;
    // Issue 9, item 4b: a panic anywhere stops everything.
    shutdown.stop_on_panic();
    // Issue 11: the counters exist before any fork; SIGUSR1 reports instead of killing.
    stats::global();
    stats::listen_for_usr1().map_err(|source| ServeError::Io {
        what: "cannot install the SIGUSR1 handler",
        source,
    })?;
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| ServeError::Io {
            what: "cannot read the bound address",
            source,
        })?;
    let cap = admission::ConnCap::new(config.max_conns, config.max_conns_per_ip);
    let server = Server {
        listeners,
        config,
        shutdown,
        cap,
    };
    // Checks that can fail before the announcement (io_uring support) happen inside the
    // model's `prepare`, so a script never sees "listening" from a server that cannot serve.
    let model = server.config.model;
    let runner = prepare(model, &server)?;
    // Issue 11: the SIGUSR1 reporter and --metrics, stopped when dropped.
    let _observers = metrics::Observers::start(&server.config)?;
    on_listening(&addrs);
    log::info!("serving {} with model {model}", server.config.echo.mode);
    activation::notify_ready();
    let result = runner(server);
    activation::notify_stopping();
    if shutdown::panicked() {
        return Err(ServeError::Panicked);
    }
    result.map_err(|source| ServeError::Io {
        what: "server failed",
        source,
    })
}

type Runner = fn(Server) -> io::Result<()>;

fn prepare(model: Model, server: &Server) -> Result<Runner, ServeError> {
    Ok(match model {
        Model::Iterative => model::iterative::run,
        Model::Process => model::process::run,
        Model::Event => model::event::run,
        Model::Thread => model::thread::run,
        Model::Prethreaded => model::prethreaded::run,
        Model::Reactor => model::reactor::run,
        Model::Uring => {
            model::uring::probe(server)
                .map_err(|reason| ServeError::Unsupported { model, reason })?;
            model::uring::run
        }
        Model::Async => model::async_tokio::run,
    })
}

/// The number of CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
