//! The async UDP server: tokio's multi-threaded runtime, N tasks receiving on one shared
//! socket (`recv_from`, then `send_to`), the conventional Rust UDP service.
//!
//! Trade-off: the least code and the runtime's scheduling for free; one datagram per
//! system call (tokio has no batched receive), and the tasks contend on one socket.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::guard::Guard;
use crate::{judge, sent, transient, BUF_LEN, TICK};

/// The most datagrams a task serves after the stop flag is seen, from what already waits.
const FINAL_DRAIN: usize = 1024;

/// Serves `socket` with `workers` tasks on as many runtime threads, until `stop` is set.
pub fn serve(
    socket: UdpSocket,
    workers: usize,
    guard: Arc<Mutex<Guard>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("udp-async")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            tasks.spawn(task(
                Arc::clone(&socket),
                Arc::clone(&guard),
                Arc::clone(&stop),
            ));
        }
        let mut first_err = Ok(());
        while let Some(result) = tasks.join_next().await {
            let result = result.unwrap_or_else(|err| Err(std::io::Error::other(err)));
            if let (Err(err), true) = (result, first_err.is_ok()) {
                first_err = Err(err);
            }
        }
        first_err
    })
}

/// One task: receive, judge, echo; a tick without a datagram looks at the stop flag.
async fn task(
    socket: Arc<tokio::net::UdpSocket>,
    guard: Arc<Mutex<Guard>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF_LEN];
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(TICK, socket.recv_from(&mut buf)).await {
            Err(_elapsed) => {}
            Ok(Ok((len, src))) => {
                if judge(&guard, src, len) {
                    sent(&guard, src, len, socket.send_to(&buf[..len], src).await);
                }
            }
            Ok(Err(err)) if transient(&err) => {}
            Ok(Err(err)) => return Err(err),
        }
    }
    for _ in 0..FINAL_DRAIN {
        let Ok((len, src)) = socket.try_recv_from(&mut buf) else {
            break;
        };
        if judge(&guard, src, len) {
            sent(&guard, src, len, socket.try_send_to(&buf[..len], src));
        }
    }
    Ok(())
}
