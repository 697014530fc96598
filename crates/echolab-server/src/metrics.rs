//! `--metrics ADDR`: the figures of [`crate::stats`] as a Prometheus exposition at
//! `GET /metrics`, served by hyper on a thread of its own (one current-thread tokio
//! runtime, a task per connection, at most [`MAX_SCRAPE_CONNS`] of them, each with a
//! header-read timeout and a bounded head): OpenMetrics text to a scraper that accepts it
//! (Prometheus does), else the classic Prometheus text format 0.0.4 (curl,
//! `promtool check metrics`), as the Go client does.
//!
//! Nothing is counted here: each scrape reads the atomics of [`crate::stats::global`]
//! (a collector, not metrics of its own), so the echo path pays nothing for the endpoint.
//! Names follow Prometheus conventions (`echolab_` prefix, `_total` on counters, base
//! units), and every series carries the `model` label.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::stats::{self, Snapshot};
use crate::Model;

/// The Content-Type of the OpenMetrics exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of the classic Prometheus text exposition.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads [`stats::global`] at every scrape.
#[derive(Debug)]
struct StatsCollector;

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counters_by(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes `snapshot` as metric families (the prefix and the `model` label are the
/// registry's).
fn encode_snapshot(
    snapshot: &Snapshot,
    mut encoder: DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let e = &mut encoder;
    let uptime = ConstGauge::new(snapshot.uptime.as_secs_f64());
    uptime.encode(e.encode_descriptor(
        "uptime_seconds",
        "Seconds since the server started.",
        None,
        uptime.metric_type(),
    )?)?;
    let open = ConstGauge::new(snapshot.open() as i64);
    open.encode(e.encode_descriptor(
        "connections_open",
        "Connections open now.",
        None,
        open.metric_type(),
    )?)?;
    counter(
        e,
        "connections",
        "Connections admitted and served since the start.",
        snapshot.opened,
    )?;
    counters_by(
        e,
        "connections_refused",
        "Connections accepted and closed at once by the connection cap, by the flag that refused them.",
        "reason",
        &[
            ("max_conns", snapshot.refused_full),
            ("max_conns_per_ip", snapshot.refused_per_peer),
        ],
    )?;
    counter(
        e,
        "connections_dropped",
        "Connections accepted then dropped before being served (no socket option, thread or process for them).",
        snapshot.dropped,
    )?;
    let ends: Vec<(&str, u64)> = snapshot
        .ends
        .iter()
        .map(|(kind, n)| (kind.name(), *n))
        .collect();
    counters_by(
        e,
        "connections_closed",
        "Connections closed, by how they ended (reset, broken_pipe, line_too_long and io_error are errors).",
        "reason",
        &ends,
    )?;
    counter(
        e,
        "bytes_received",
        "Bytes received from connections, counted as they are read.",
        snapshot.bytes_in,
    )?;
    counter(
        e,
        "bytes_sent",
        "Bytes sent to connections, counted as they are written (uring: as they are queued for its send).",
        snapshot.bytes_out,
    )?;
    counter(
        e,
        "accept_pauses",
        "Times accepting paused for 100 ms (out of descriptors or memory).",
        snapshot.accept_pauses,
    )?;
    if let Some(udp) = &snapshot.udp {
        counter(
            e,
            "udp_datagrams_received",
            "UDP datagrams received.",
            udp.received,
        )?;
        counter(
            e,
            "udp_datagrams_echoed",
            "UDP datagrams echoed.",
            udp.echoed,
        )?;
        counters_by(
            e,
            "udp_datagrams_dropped",
            "UDP datagrams not echoed, by reason.",
            "reason",
            &udp.dropped,
        )?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_snapshot(&stats::global().snapshot(), encoder)
    }
}

/// The registry of a server of `model`: prefix `echolab`, label `model`.
fn registry(model: Model) -> Registry {
    let labels = [(Cow::Borrowed("model"), Cow::Borrowed(model.name()))];
    let mut registry = Registry::with_prefix_and_labels("echolab", labels.into_iter());
    registry.register_collector(Box::new(StatsCollector));
    registry
}

/// The exposition text for a server of `model`, now.
pub fn exposition(model: Model) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry(model));
    text
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family's HELP and TYPE
/// name its samples (`X_total`, where OpenMetrics names the family `X`), and there is no
/// `# EOF` line. Every other line is the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Whether a request's `Accept` header asks for OpenMetrics.
fn wants_openmetrics(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(hyper::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    })
}

/// The response to one request: `GET /metrics` the exposition, another path 404, another
/// method 405 (with `Allow`, RFC 9110 15.5.6). HEAD is answered as GET is, without the body
/// (hyper sends none; RFC 9110 9.3.2: every general-purpose server supports it).
fn respond<B>(request: &hyper::Request<B>, model: Model) -> hyper::Response<String> {
    use hyper::{Method, Response, StatusCode};
    let method = request.method();
    let get_or_head = method == Method::GET || method == Method::HEAD;
    let (status, content_type, body) = match (get_or_head, request.uri().path()) {
        (true, "/metrics") if wants_openmetrics(request.headers()) => {
            (StatusCode::OK, OPENMETRICS, exposition(model))
        }
        (true, "/metrics") => (
            StatusCode::OK,
            PROMETHEUS_TEXT,
            to_prometheus_text(&exposition(model)),
        ),
        (true, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
    }
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// What watches a running server for its operator: the SIGUSR1 reporter's thread (not in
/// the process model, which may start no thread: its own loop reports) and the
/// `--metrics` endpoint. Dropping it stops both.
#[derive(Debug)]
pub struct Observers {
    _reporter: Option<stats::ReporterThread>,
    _metrics: Option<MetricsServer>,
}

impl Observers {
    /// Starts what `config` asks for; announces the metrics address on stderr.
    pub fn start(config: &crate::ServeConfig) -> Result<Observers, crate::ServeError> {
        let reporter = match config.model {
            Model::Process => None,
            _ => Some(
                stats::Reporter::new(config.stats_interval)
                    .spawn()
                    .map_err(|source| crate::ServeError::Io {
                        what: "cannot start the stats thread",
                        source,
                    })?,
            ),
        };
        let metrics = match config.metrics {
            // `echolab serve` refuses this pair before; a library caller gets it here.
            Some(_) if config.model == Model::Process => {
                return Err(crate::ServeError::Unsupported {
                    model: config.model,
                    reason: "--metrics needs a thread, and the process model forks only while it has one".into(),
                })
            }
            Some(addr) => Some(start_announced(addr, config.model)?),
            None => None,
        };
        Ok(Observers {
            _reporter: reporter,
            _metrics: metrics,
        })
    }
}

/// The `--metrics` endpoint on `addr`, its address announced on stderr (`metrics on
/// http://ADDR/metrics`): by [`Observers::start`], and by a server without TCP (`serve
/// --udp-only`), which starts no `Observers`.
pub fn start_announced(addr: SocketAddr, model: Model) -> Result<MetricsServer, crate::ServeError> {
    let endpoint = MetricsServer::start(addr, model)
        .map_err(|source| crate::ServeError::MetricsBind { addr, source })?;
    echolab_cli::say!("metrics on http://{}/metrics", endpoint.local_addr());
    Ok(endpoint)
}

/// Scrape connections open at once. The next one accepted closes the oldest (an idle
/// keep-alive scraper reconnects; a slow client loses its place to a newer one), so idle
/// or slow clients can neither starve a scraper nor cost more than this many sockets.
pub const MAX_SCRAPE_CONNS: usize = 16;

/// A connection whose request head is not complete this long after the server starts
/// reading it is closed (slowloris); it bounds an idle keep-alive connection too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// No scrape connection lives longer, whatever it does (a client that sends requests and
/// never reads the responses).
pub const CONN_LIFETIME: Duration = Duration::from_secs(30);

/// The largest request head read, in bytes (hyper's smallest read buffer): a longer one is
/// answered 431 and closed.
pub const MAX_HEAD_BYTES: usize = 8192;

/// The running endpoint: one thread running a current-thread tokio runtime, on which
/// hyper serves each connection as a task (never a thread per connection). Dropping it
/// stops the runtime, closing the listener and every scrape connection, and joins the
/// thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` and HEAD (another path: 404; another method:
    /// 405).
    pub fn start(addr: SocketAddr, model: Model) -> io::Result<MetricsServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let listener = crate::net::bind(addr, false, false)?;
        let bound = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || runtime.block_on(accept_scrapes(listener, model, stopped)))?;
        Ok(MetricsServer {
            addr: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts scrape connections until `stopped`, each served by a task, at most
/// [`MAX_SCRAPE_CONNS`] at once (the oldest closed for a new one).
async fn accept_scrapes(
    listener: tokio::net::TcpListener,
    model: Model,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    // In accept order, oldest first.
    let mut open: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    loop {
        let conn = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _peer)) => conn,
                Err(e) if crate::net::aborted_before_accept(&e) => continue,
                // Out of descriptors or memory: retrying at once would spin. Not counted
                // in the echo server's accept pauses, which are about its own listener.
                Err(_) => {
                    tokio::time::sleep(crate::accept::OUT_OF_DESCRIPTORS_PAUSE).await;
                    continue;
                }
            },
        };
        open.retain(|task| !task.is_finished());
        if open.len() >= MAX_SCRAPE_CONNS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let served = http.serve_connection(
            hyper_util::rt::TokioIo::new(conn),
            hyper::service::service_fn(move |request| async move {
                Ok::<_, std::convert::Infallible>(respond(&request, model))
            }),
        );
        let task = tokio::spawn(async move {
            // A connection that fails or outlives CONN_LIFETIME is closed as it is dropped.
            let _ = tokio::time::timeout(CONN_LIFETIME, served).await;
        });
        open.push_back(task.abort_handle());
        // Lets the new task read the request already in its buffer before the next accept,
        // so a burst of newer connections cannot close a scraper before it is answered.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{EndKind, UdpFigures};
    use std::time::Duration;

    fn encode(snapshot: &Snapshot) -> String {
        #[derive(Debug)]
        struct Fixed(Snapshot);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_snapshot(&self.0, encoder)
            }
        }
        let labels = [(Cow::Borrowed("model"), Cow::Borrowed("event"))];
        let mut registry = Registry::with_prefix_and_labels("echolab", labels.into_iter());
        registry.register_collector(Box::new(Fixed(snapshot.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn every_figure_is_a_series_with_the_model_label() {
        let snapshot = Snapshot {
            uptime: Duration::from_millis(1500),
            opened: 7,
            closed: 4,
            refused_full: 2,
            refused_per_peer: 1,
            dropped: 3,
            bytes_in: 1000,
            bytes_out: 999,
            accept_pauses: 5,
            ends: EndKind::ALL.map(|kind| (kind, if kind == EndKind::Reset { 4 } else { 0 })),
            udp: Some(UdpFigures {
                received: 9,
                echoed: 8,
                dropped: vec![("rate-limited", 1)],
            }),
        };
        let text = encode(&snapshot);
        for line in [
            "echolab_uptime_seconds{model=\"event\"} 1.5",
            "echolab_connections_open{model=\"event\"} 3",
            "echolab_connections_total{model=\"event\"} 7",
            "echolab_connections_refused_total{model=\"event\",reason=\"max_conns\"} 2",
            "echolab_connections_refused_total{model=\"event\",reason=\"max_conns_per_ip\"} 1",
            "echolab_connections_dropped_total{model=\"event\"} 3",
            "echolab_connections_closed_total{model=\"event\",reason=\"reset\"} 4",
            "echolab_connections_closed_total{model=\"event\",reason=\"peer_closed\"} 0",
            "echolab_bytes_received_total{model=\"event\"} 1000",
            "echolab_bytes_sent_total{model=\"event\"} 999",
            "echolab_accept_pauses_total{model=\"event\"} 5",
            "echolab_udp_datagrams_received_total{model=\"event\"} 9",
            "echolab_udp_datagrams_echoed_total{model=\"event\"} 8",
            "echolab_udp_datagrams_dropped_total{model=\"event\",reason=\"rate-limited\"} 1",
            "# TYPE echolab_connections_open gauge",
            "# TYPE echolab_bytes_received counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// `GET path` with `accept` (if any): status line, Content-Type, body.
    fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        write!(conn, "GET {path} HTTP/1.0\r\n{accept}\r\n").unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(": ")?;
                name.eq_ignore_ascii_case("content-type").then_some(value)
            })
            .unwrap_or("")
            .to_string();
        (
            head.lines().next().unwrap().to_string(),
            content_type,
            body.to_string(),
        )
    }

    /// Sends `text` on a new connection; the response's head and body.
    fn request(addr: SocketAddr, text: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.write_all(text.as_bytes()).unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[test]
    fn openmetrics_is_what_an_accept_header_names_and_only_that() {
        let accepts = |values: &[&str]| {
            let mut headers = hyper::HeaderMap::new();
            for v in values {
                headers.append(hyper::header::ACCEPT, v.parse().unwrap());
            }
            wants_openmetrics(&headers)
        };
        assert!(!accepts(&[]));
        assert!(!accepts(&["text/plain;version=0.0.4;q=0.9,*/*;q=0.1"]));
        assert!(accepts(&["application/openmetrics-text;version=1.0.0"]));
        assert!(accepts(&["text/plain", "application/openmetrics-text"]));
    }

    #[test]
    fn the_endpoint_serves_both_formats_and_nothing_else_and_stops_when_dropped() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Model::Event).unwrap();
        let addr = server.local_addr();
        assert!(format!("{server:?}").contains(&addr.to_string()));
        let (status, content_type, body) = get(addr, "/metrics", None);
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert!(
            body.contains("# TYPE echolab_connections_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("echolab_connections_open{model=\"event\"} "),
            "{body}"
        );
        assert!(!body.contains("# EOF"));
        let openmetrics = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5";
        let (_, content_type, body) = get(addr, "/metrics", Some(openmetrics));
        assert_eq!(content_type, OPENMETRICS);
        assert!(body.contains("# TYPE echolab_connections counter\n") && body.ends_with("# EOF\n"));
        let (_, content_type, _) = get(addr, "/metrics", Some("text/plain"));
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert_eq!(get(addr, "/", None).0, "HTTP/1.0 404 Not Found");
        // HEAD: GET's status and headers, no body; another method: 405 naming both.
        let (head, body) = request(addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.contains(PROMETHEUS_TEXT), "{head}");
        assert!(head.contains("content-length: "), "{head}");
        assert_eq!(body, "");
        let (head, _) = request(addr, "DELETE /metrics HTTP/1.0\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.0 405 Method Not Allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nallow: GET, HEAD"), "{head}");
        drop(server);
        // The runtime, and with it the listener, is gone once the thread is joined.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    /// Reads what the server sends until it closes, within `limit`: the bytes, or the
    /// error (a reset) that ended the read.
    fn until_closed(conn: &mut std::net::TcpStream, limit: Duration) -> Result<String, io::Error> {
        use std::io::Read;
        conn.set_read_timeout(Some(limit)).unwrap();
        let mut response = Vec::new();
        conn.read_to_end(&mut response)?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    #[test]
    fn a_head_not_sent_in_time_is_closed() {
        use std::io::Write;
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Model::Event).unwrap();
        let mut slow = std::net::TcpStream::connect(server.local_addr()).unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = std::time::Instant::now();
        let response = until_closed(&mut slow, HEAD_TIMEOUT + Duration::from_secs(15)).unwrap();
        assert_eq!(response, "");
        assert!(started.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(500));
    }

    #[test]
    fn a_head_over_the_cap_is_refused_before_the_timeout() {
        use std::io::Write;
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Model::Event).unwrap();
        let mut big = std::net::TcpStream::connect(server.local_addr()).unwrap();
        let pad = "a".repeat(MAX_HEAD_BYTES + 100);
        // No blank line: a server without the cap would wait for the rest of the head.
        let _ = big.write_all(format!("GET /metrics HTTP/1.1\r\nX-Pad: {pad}\r\n").as_bytes());
        match until_closed(&mut big, HEAD_TIMEOUT / 2) {
            Ok(response) => assert!(response.starts_with("HTTP/1.1 431"), "{response:?}"),
            // Closed with our bytes unread: the kernel resets, and may drop the 431.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    #[test]
    fn past_the_cap_a_new_connection_closes_the_oldest_and_is_served() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Model::Event).unwrap();
        let addr = server.local_addr();
        let t0 = std::time::Instant::now();
        // One more idle connection than the cap, in accept order.
        let mut idle: Vec<_> = (0..=MAX_SCRAPE_CONNS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // The scrape is the cap's second connection past it: it is served at once.
        let (status, _, body) = get(addr, "/metrics", None);
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(body.contains("echolab_connections_open"));
        // The third oldest is still open (nothing to read yet), checked at once: after
        // HEAD_TIMEOUT its head timeout would close it too (a loaded machine can get there).
        idle[2].set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let still = std::io::Read::read(&mut idle[2], &mut byte);
        if t0.elapsed() < HEAD_TIMEOUT / 2 {
            assert_eq!(still.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        } else {
            echolab_cli::say!(
                "SKIPPED the third-oldest check: {:?} passed (head timeout {HEAD_TIMEOUT:?})",
                t0.elapsed()
            );
        }
        // The two oldest were closed for the two newer ones, long before their head timeout.
        for conn in &mut idle[..2] {
            assert_eq!(until_closed(conn, HEAD_TIMEOUT / 2).unwrap(), "");
        }
    }

    #[test]
    fn observers_start_no_thread_for_the_process_model_and_refuse_its_metrics() {
        let mut config = crate::ServeConfig::new(Model::Process, "127.0.0.1:0".parse().unwrap());
        let observers = Observers::start(&config).unwrap();
        assert!(observers._reporter.is_none() && observers._metrics.is_none());
        config.metrics = Some("127.0.0.1:0".parse().unwrap());
        assert!(matches!(
            Observers::start(&config),
            Err(crate::ServeError::Unsupported {
                model: Model::Process,
                ..
            })
        ));
        let mut event = crate::ServeConfig::new(Model::Event, "127.0.0.1:0".parse().unwrap());
        event.metrics = config.metrics;
        crate::stats::listen_for_usr1().unwrap();
        let observers = Observers::start(&event).unwrap();
        assert!(observers._reporter.is_some() && observers._metrics.is_some());
    }

    #[test]
    fn the_exposition_of_a_model_carries_its_label() {
        let text = exposition(Model::Uring);
        assert!(
            text.contains("echolab_uptime_seconds{model=\"uring\"} "),
            "{text}"
        );
        assert!(
            text.contains("echolab_bytes_sent_total{model=\"uring\"} "),
            "{text}"
        );
    }

    #[test]
    fn the_classic_text_names_counter_families_by_their_samples() {
        let openmetrics = "# HELP echolab_bytes_sent Bytes sent.\n# TYPE echolab_bytes_sent counter\necholab_bytes_sent_total{model=\"event\"} 3\n# HELP echolab_connections_open Open.\n# TYPE echolab_connections_open gauge\necholab_connections_open{model=\"event\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP echolab_bytes_sent_total Bytes sent.\n# TYPE echolab_bytes_sent_total counter\necholab_bytes_sent_total{model=\"event\"} 3\n# HELP echolab_connections_open Open.\n# TYPE echolab_connections_open gauge\necholab_connections_open{model=\"event\"} 1\n"
        );
    }

    #[test]
    fn without_udp_there_are_no_udp_series() {
        let snapshot = stats::global().snapshot();
        let mut without = snapshot.clone();
        without.udp = None;
        assert!(!encode(&without).contains("udp"));
    }
}
