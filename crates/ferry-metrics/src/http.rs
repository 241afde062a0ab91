//! The metrics listener: `GET /metrics` and `GET /health`, nothing else.
//!
//! ```text
//! serve(listener, metrics, limits, shutdown)
//!   accept -> a scrape slot free (max_scrapes)? no -> close at once
//!          -> one task: hyper HTTP/1.1, one request per connection
//!             (keep-alive off), headers within header_timeout and
//!             max_request_bytes, the whole exchange within
//!             connection_timeout
//!   GET /metrics -> 200, Metrics::encode(), text format 0.0.4
//!   GET /health  -> 200 "ok", or 503 "unhealthy" while a health check
//!                   (the cluster directory) is down; a line per check
//!   other paths  -> 404; other methods -> 405
//!   shutdown     -> the listener closes, open scrapes are cut
//! ```
//!
//! There is no authentication: bind it to loopback or a private address
//! (the `--metrics` help says so). The limits keep a client that opens
//! many connections, sends huge headers or sends them slowly from costing
//! more than `max_scrapes` small tasks for a few seconds.
//!
//! hyper is in ferry's dependency tree already (igd-next's client), so
//! its HTTP/1 parser serves here rather than a hand-written one.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tracing::{debug, warn};

use crate::Metrics;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more are closed at once (default 8).
    pub max_scrapes: usize,
    /// How long the request line and headers may take (default 5 s).
    pub header_timeout: Duration,
    /// How long one connection may last in all (default 10 s).
    pub connection_timeout: Duration,
    /// The most bytes of request line and headers (default 8 KiB, the
    /// least hyper takes); a larger request gets 431 and is closed.
    pub max_request_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_scrapes: 8,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_request_bytes: 8 * 1024,
        }
    }
}

/// Serves `metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_scrapes.max(1)));
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "metrics listener: accept failed; backing off {backoff:?}");
                        sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                backoff = Duration::from_millis(10);
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "metrics listener: too many scrapes at once; closing");
                    continue;
                };
                let metrics = metrics.clone();
                tasks.spawn(async move {
                    let service = service_fn(move |request| {
                        let response = respond(&metrics, &request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .max_buf_size(limits.max_request_bytes.max(8192))
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    match timeout(limits.connection_timeout, connection).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => debug!(%peer, %error, "metrics listener: bad request"),
                        Err(_) => debug!(%peer, "metrics listener: connection timed out"),
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    tasks.shutdown().await;
}

/// The answer to one request.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, crate::CONTENT_TYPE, metrics.encode()),
        (&Method::GET, "/health") => {
            let report = metrics.health();
            let status = if report.healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, TEXT, report.text())
        }
        (_, "/metrics" | "/health") => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /health\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    /// A listener with `limits` on loopback; its address and its stop.
    async fn start(metrics: Metrics, limits: HttpLimits) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, metrics, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes (at most 5 s);
    /// what came before the close (or a reset).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut got = Vec::new();
        let _ = timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("the server closes after one answer");
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn metrics_and_health_answer_other_paths_are_404() {
        let metrics = Metrics::new();
        metrics.rendezvous().claims(crate::ClaimOutcome::Ok, 3);
        let (addr, _stop) = start(metrics, HttpLimits::default()).await;

        let got = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.contains("content-type: text/plain; version=0.0.4"),
            "{got}"
        );
        assert!(
            got.contains("\nferry_claims_total{outcome=\"ok\"} 3\n"),
            "{got}"
        );

        let got = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nok\n"), "{got}");

        let got = exchange(addr, b"GET /metricsX HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 404 Not Found\r\n"), "{got}");
        let got = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            got.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_and_closed() {
        let (addr, _stop) = start(Metrics::new(), HttpLimits::default()).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 64 * 1024));
        request.extend(b"\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may stop reading (and close) before all of it is sent.
        let _ = stream.write_all(&request).await;
        let mut got = Vec::new();
        let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("the server closes an oversized request");
        let got = String::from_utf8_lossy(&got);
        assert!(
            read.is_err() || got.starts_with("HTTP/1.1 431"),
            "no metrics for an oversized request: {got}"
        );
        assert!(!got.contains("ferry_"), "{got}");
        // Which would show had it been served: even unused metrics have
        // their HELP lines.
        assert!(Metrics::new().encode().contains("# HELP ferry_"));
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_off() {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(2),
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(Metrics::new(), limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("the server hangs up on a slow client");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let got = String::from_utf8_lossy(&got);
        assert!(read.is_err() || !got.contains("200 OK"), "{got}");
    }

    #[tokio::test]
    async fn health_follows_its_checks_and_the_gauge_with_it() {
        use crate::HealthCheck;
        use crate::health::Probed;
        use std::sync::atomic::{AtomicBool, Ordering};

        let metrics = Metrics::new();
        let up = Arc::new(AtomicBool::new(true));
        let probe = up.clone();
        metrics.add_health_check(HealthCheck::Cluster, move || Probed {
            up: probe.load(Ordering::Relaxed),
            // A newline in a detail must not forge a line of its own.
            detail: "redis://h:1/0\nfake: up".into(),
        });
        let (addr, _stop) = start(metrics, HttpLimits::default()).await;
        let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let metrics_request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

        let got = exchange(addr, health).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\nok\ncluster: up, redis://h:1/0 fake: up\n"),
            "{got}"
        );
        let got = exchange(addr, metrics_request).await;
        assert!(
            got.contains("\nferry_health_check_up{check=\"cluster\"} 1\n"),
            "{got}"
        );

        up.store(false, Ordering::Relaxed);
        let got = exchange(addr, health).await;
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\n\r\nunhealthy\ncluster: down, "), "{got}");
        let got = exchange(addr, metrics_request).await;
        assert!(
            got.contains("\nferry_health_check_up{check=\"cluster\"} 0\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn scrapes_over_the_cap_are_closed_at_once() {
        let limits = HttpLimits {
            max_scrapes: 1,
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(Metrics::new(), limits).await;
        // The first holds the only slot, sending nothing.
        let _holder = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(got, "", "the second connection is closed unanswered");
        drop(_holder);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = exchange(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }
}
