//! The concurrency models, one file each, holding only the model's scheduling idea: how
//! it waits for connections and bytes, and who runs what. Everything else is the shared
//! layer below them: the echo ([`crate::echo`], [`crate::conn`]), the connection cap
//! ([`crate::admission`]), the accept pause ([`crate::accept`]), the runner of N event
//! loops ([`crate::runner`]), the shutdown ([`crate::shutdown`]); every model receives one
//! [`crate::Server`] (listeners, one per `--listen` address, all served; [`crate::ServeConfig`],
//! shutdown, cap).
//!
//! The lecture's models: [`iterative`], [`process`], [`event`], [`thread`],
//! [`prethreaded`]. Beyond the lecture: [`reactor`] (an event loop per core), [`uring`]
//! (io_uring), [`async_tokio`] (tokio, the conventional Rust server).

pub mod async_tokio;
pub mod event;
pub mod iterative;
pub mod prethreaded;
pub mod process;
pub mod reactor;
pub mod thread;
pub mod uring;
