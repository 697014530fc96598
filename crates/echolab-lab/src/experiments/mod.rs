//! One module per experiment, in the lecture's order. Each has an `EXPERIMENT` entry for
//! the table in [`crate::experiment`] and a `run` that returns a
//! [`crate::experiment::Report`]; those that need a process of their own also have a
//! `child_body` that [`crate::child`] runs.

pub mod backlog;
pub mod counter;
pub mod deadlock;
pub mod fd_refcount;
pub mod forkserver;
pub mod livelock;
pub mod progress_graph;
pub mod signal_handler;
pub mod spawn_cost;
pub mod starvation;
pub mod thread_arg;
pub mod thread_leak;
pub mod zombies;
