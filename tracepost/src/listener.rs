//! The connection layer every listener shares: accepting under a cap, TLS, HTTP/1 and HTTP/2 on one port,
//! timeouts for connections that send nothing or stall, authentication, and graceful shutdown.
//!
//! Per listener:
//! - At most `max_connections` connections are open at once. At the cap the listener stops accepting until
//!   one closes (the kernel's backlog holds the rest), so a flood of connections can exhaust neither memory
//!   nor file descriptors for the other listeners. Accept errors (`EMFILE` included) are logged and retried
//!   after a short pause; they never end the listener.
//! - Each connection is served by hyper's automatic HTTP/1 / HTTP/2 builder: OTLP/gRPC uses HTTP/2 with prior
//!   knowledge on a plain port, or HTTP/2 negotiated by ALPN over TLS.
//! - Timeouts: the TLS handshake and every HTTP/1 request head must complete within `header_read_timeout`
//!   (hyper's timer starts when it begins waiting for a head, so it also closes an HTTP/1 keep-alive
//!   connection idle that long). A connection with no request being handled and no response bytes moving
//!   for `idle_timeout` is closed: one that never sends a request, an HTTP/2 connection with no streams, a
//!   client that stops reading its response. A request being handled is never cut by these; bodies the
//!   client announces and does not send are for the handlers' body timeouts and, on the query listeners,
//!   `request_timeout`.
//! - Shutdown: the listener stops accepting; connections with nothing in flight close at once (idle
//!   keep-alive connections, connections still sending their headers or handshake); the others get hyper's
//!   graceful shutdown (`Connection: close`, HTTP/2 GOAWAY) and close as soon as their last response is
//!   written. The listener's task ends when its last connection has closed.

mod auth;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The connection layer's settings. TLS and authentication are set per group: the OTLP receivers (gRPC and
/// HTTP), and the query group (the query and Tempo listeners). The admin listener of the collector role
/// (health and metrics only) is always plain and open.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Connections open at once on each listener.
    pub max_connections: usize,
    /// How long a TLS handshake, and each HTTP/1 request head, may take.
    pub header_read_timeout: Duration,
    /// How long a connection may go with no request being handled and no response bytes moving.
    pub idle_timeout: Duration,
    /// Longest time a request on the query and Tempo listeners may take until its response starts
    /// (`None`: unlimited). Beyond it the answer is 503.
    pub query_request_timeout: Option<Duration>,
    /// TLS on the OTLP receivers (`None`: plain).
    pub otlp_tls: Option<TlsFiles>,
    /// TLS on the query and Tempo listeners (`None`: plain).
    pub query_tls: Option<TlsFiles>,
    /// Bearer tokens the OTLP receivers accept, one a line (`None`: no authentication).
    pub otlp_auth_tokens_file: Option<PathBuf>,
    /// Bearer tokens the query and Tempo APIs accept, one a line.
    pub query_auth_tokens_file: Option<PathBuf>,
    /// `user:password` lines the query and Tempo APIs accept as basic authentication.
    pub query_basic_auth_file: Option<PathBuf>,
    /// How often certificate and secret files are checked for changes.
    pub reload_interval: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            query_request_timeout: Some(Duration::from_secs(60)),
            otlp_tls: None,
            query_tls: None,
            otlp_auth_tokens_file: None,
            query_auth_tokens_file: None,
            query_basic_auth_file: None,
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// What a group of listeners adds to the connection layer: TLS, authentication, a request timeout.
#[derive(Clone)]
pub struct Edge {
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Arc<auth::Auth>>,
    request_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// The edges of a process's listener groups, loaded once at start. Certificate and secret files are read
/// now (an unreadable or invalid one fails the start) and then watched until `shutdown`.
pub struct Edges {
    /// OTLP/gRPC and OTLP/HTTP receivers.
    pub otlp: Edge,
    /// Query and Tempo APIs.
    pub query: Edge,
    /// The collector role's admin listener: plain, open.
    pub admin: Edge,
}

impl Edges {
    pub fn load(config: &ListenerConfig, shutdown: &watch::Receiver<bool>) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_connections > 0, "max connections must be at least 1");
        anyhow::ensure!(
            !config.header_read_timeout.is_zero() && !config.idle_timeout.is_zero(),
            "the header-read and idle timeouts must be longer than zero"
        );
        let limits = Limits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        };
        let interval = config.reload_interval;
        let tls = |files: &Option<TlsFiles>| {
            files
                .as_ref()
                .map(|files| tls::acceptor(files, interval, shutdown.clone()))
                .transpose()
        };
        let otlp_auth = auth::Auth::load(config.otlp_auth_tokens_file.as_ref(), None, interval, shutdown)
            .context("--otlp-auth-tokens-file")?;
        let query_auth = auth::Auth::load(
            config.query_auth_tokens_file.as_ref(),
            config.query_basic_auth_file.as_ref(),
            interval,
            shutdown,
        )
        .context("query authentication")?;
        Ok(Self {
            otlp: Edge {
                limits,
                tls: tls(&config.otlp_tls).context("OTLP TLS")?,
                auth: otlp_auth.map(Arc::new),
                request_timeout: None,
            },
            query: Edge {
                limits,
                tls: tls(&config.query_tls).context("query TLS")?,
                auth: query_auth.map(Arc::new),
                request_timeout: config.query_request_timeout.filter(|timeout| !timeout.is_zero()),
            },
            admin: Edge {
                limits,
                tls: None,
                auth: None,
                request_timeout: None,
            },
        })
    }
}

/// Binds a listener; `what` names it in the error.
pub async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} listener on {address}"))
}

/// HTTP/1 read buffer (request heads must fit in it). hyper's own maximum: a smaller one cost the ingest
/// benchmark about 10 % more CPU per span in read calls.
const H1_MAX_BUFFER: usize = 400 << 10;
/// HTTP/2 receive window, per connection and per stream: at most this much request body is buffered per
/// connection before a handler reads it.
const H2_WINDOW: u32 = 256 << 10;
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 128;

/// Serves `router` on `listener` with `edge`'s TLS, authentication and timeouts until `shutdown` turns
/// true; the task ends when the last connection has closed.
pub fn serve(
    listener: TcpListener,
    router: axum::Router,
    edge: &Edge,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    let router = match &edge.auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth.clone(), auth::require)),
        None => router,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // What a connection may buffer before a handler reads it (and reserves it from the ingest memory
    // budget) is bounded here: the HTTP/1 read buffer, and HTTP/2's flow-control windows. This is the
    // per-connection term of the memory bound in ARCHITECTURE.md.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(edge.limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .initial_connection_window_size(H2_WINDOW)
        .initial_stream_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let shared = Arc::new(Shared {
        builder,
        router,
        tls: edge.tls.clone(),
        limits: edge.limits,
        request_timeout: edge.request_timeout,
    });
    tokio::spawn(accept_loop(listener, shared, shutdown))
}

/// An HTTP/2 connection whose peer does not answer a ping within `H2_PING_TIMEOUT` is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after an accept error (out of file descriptors, say) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a connection asked to close (graceful shutdown, idle) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    request_timeout: Option<Duration>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut connections = JoinSet::new();
    let address = listener.local_addr().ok();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, listener = ?address, "accept failed, retrying shortly");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    _ = shutdown.wait_for(|stopping| *stopping) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_stream(stream, peer, shared, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_stream(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(acceptor) = &shared.tls else {
        return serve_connection(stream, &shared, shutdown).await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(stream)) => handshake,
        _ = shutdown.wait_for(|stopping| *stopping) => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_connection(stream, &shared, shutdown).await,
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_connection<I>(io: I, shared: &Shared, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = ConnectionService {
        router: TowerToHyperService::new(shared.router.clone()),
        activity: activity.clone(),
        request_timeout: shared.request_timeout,
    };
    let connection = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle_timeout = shared.limits.idle_timeout;
    let mut stopping = false;
    let mut close_by: Option<Instant> = None;
    loop {
        let wake = close_by.unwrap_or_else(|| activity.idle_deadline(idle_timeout));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait_for(|stopping| *stopping), if !stopping => {
                stopping = true;
                if close_by.is_none() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = activity.quiet.notified(), if stopping && close_by.is_none() => {}
            () = tokio::time::sleep_until(wake) => {
                if close_by.is_some() {
                    return;
                }
            }
        }
        if close_by.is_none() && ((stopping && activity.nothing_in_flight()) || activity.is_idle(idle_timeout)) {
            if !stopping {
                connection.as_mut().graceful_shutdown();
            }
            close_by = Some(Instant::now() + CLOSE_GRACE);
        }
    }
}

/// What a connection is doing, for the idle timeout and shutdown.
struct Activity {
    origin: Instant,
    /// When a request last started or ended or a response frame last moved, in ms since `origin`.
    last: AtomicU64,
    /// Requests whose handler has not answered yet.
    handlers: AtomicUsize,
    /// Requests whose response has not been written whole yet (handlers included).
    exchanges: AtomicUsize,
    /// Notified when the last exchange ends.
    quiet: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            handlers: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            quiet: Notify::new(),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    fn nothing_in_flight(&self) -> bool {
        self.exchanges.load(Ordering::SeqCst) == 0
    }

    fn is_idle(&self, idle_timeout: Duration) -> bool {
        self.handlers.load(Ordering::SeqCst) == 0 && self.last_activity() + idle_timeout <= Instant::now()
    }

    /// When the connection would be idle if nothing happens meanwhile (checked again then).
    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        if self.handlers.load(Ordering::SeqCst) > 0 {
            Instant::now() + idle_timeout
        } else {
            self.last_activity() + idle_timeout
        }
    }
}

/// One request's share of its connection's [`Activity`], from the request's start until its response has
/// been written whole (or abandoned).
struct Exchange {
    activity: Arc<Activity>,
    handling: bool,
}

impl Exchange {
    fn start(activity: Arc<Activity>) -> Self {
        activity.exchanges.fetch_add(1, Ordering::SeqCst);
        activity.handlers.fetch_add(1, Ordering::SeqCst);
        activity.touch();
        Self {
            activity,
            handling: true,
        }
    }

    fn answered(&mut self) {
        if std::mem::replace(&mut self.handling, false) {
            self.activity.handlers.fetch_sub(1, Ordering::SeqCst);
            self.activity.touch();
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.answered();
        if self.activity.exchanges.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.activity.quiet.notify_one();
        }
        self.activity.touch();
    }
}

/// The router, counting what each connection has in flight, with the optional request timeout.
struct ConnectionService {
    router: TowerToHyperService<axum::Router>,
    activity: Arc<Activity>,
    request_timeout: Option<Duration>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut exchange = Exchange::start(self.activity.clone());
        let response = self.router.call(request);
        let timeout = self.request_timeout;
        Box::pin(async move {
            let response = match timeout {
                None => response.await,
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(response) => response,
                    Err(_) => Ok(timed_out(limit)),
                },
            };
            let Ok(response) = response;
            exchange.answered();
            Ok(response.map(|body| TrackedBody { body, exchange }))
        })
    }
}

fn timed_out(limit: Duration) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "the request did not complete within {} ms (--query-request-timeout); narrow it (a shorter time range, \
         a lower limit) or retry\n",
        limit.as_millis()
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body that counts as activity while it moves and ends its [`Exchange`] when dropped.
struct TrackedBody {
    body: Body,
    exchange: Exchange,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(_)) = frame {
            this.exchange.activity.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A value loaded from files and loaded again when they change.
struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Reloading<T> {
    fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What identifies a file's version: modification time and length (`None`: unreadable).
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|file| {
            let metadata = std::fs::metadata(file).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

/// Loads `load` now (its error is returned) and again whenever one of `files` changes, checked every
/// `interval` until `shutdown`. A failed reload keeps the previous value and is logged once per change.
fn watch_files<T, F>(
    what: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    load: F,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Reloading<T>>>
where
    T: Send + Sync + 'static,
    F: Fn() -> anyhow::Result<T> + Send + Sync + 'static,
{
    let mut seen = stamp(&files);
    let value = Arc::new(Reloading {
        current: RwLock::new(Arc::new(load()?)),
    });
    let target = value.clone();
    let load = Arc::new(load);
    let files = Arc::new(files);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            let files_now = files.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || stamp(&files_now)).await else {
                continue;
            };
            if now == seen {
                continue;
            }
            seen = now;
            let load_now = load.clone();
            let Ok(loaded) = tokio::task::spawn_blocking(move || load_now()).await else {
                continue;
            };
            match loaded {
                Ok(loaded) => {
                    *target
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
                    tracing::info!(what, files = ?files, "reloaded");
                }
                Err(error) => {
                    tracing::warn!(what, files = ?files, error = format!("{error:#}"), "reload failed, keeping the previous one");
                }
            }
        }
    });
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `router` on a loopback port as the query group would be.
    async fn start(
        router: axum::Router,
        config: ListenerConfig,
    ) -> (SocketAddr, watch::Sender<bool>, JoinHandle<std::io::Result<()>>) {
        let (stop, stopped) = watch::channel(false);
        let edges = Edges::load(&config, &stopped).expect("edges");
        let listener = bind(([127, 0, 0, 1], 0).into(), "test").await.expect("bind");
        let address = listener.local_addr().expect("address");
        (address, stop, serve(listener, router, &edges.query, stopped))
    }

    /// Reads until the peer closes; returns what it sent, or `None` if it is still open after `wait`.
    async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut received = Vec::new();
        tokio::time::timeout(wait, stream.read_to_end(&mut received))
            .await
            .ok()
            .map(|_| String::from_utf8_lossy(&received).into_owned())
    }

    #[tokio::test]
    async fn a_request_slower_than_the_request_timeout_is_answered_503() {
        let router = axum::Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let config = ListenerConfig {
            query_request_timeout: Some(Duration::from_millis(200)),
            ..ListenerConfig::default()
        };
        let (address, _stop, _server) = start(router, config).await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let response = read_to_close(&mut stream, Duration::from_secs(5))
            .await
            .expect("answered");
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("--query-request-timeout"), "{response}");
    }

    #[tokio::test]
    async fn shutdown_closes_quiet_connections_at_once_and_waits_for_the_request_in_flight() {
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (release_handler, started_handler) = (release.clone(), started.clone());
        let router = axum::Router::new()
            .route(
                "/slow",
                get(move || async move {
                    started_handler.notify_one();
                    release_handler.notified().await;
                    "finished"
                }),
            )
            .route("/fast", get(|| async { "fast" }));
        let (address, stop, mut server) = start(router, ListenerConfig::default()).await;

        let mut idle = TcpStream::connect(address).await.expect("connect");
        let mut half_sent = TcpStream::connect(address).await.expect("connect");
        half_sent
            .write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("send");
        let mut kept_alive = TcpStream::connect(address).await.expect("connect");
        kept_alive
            .write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let mut first = [0u8; 17];
        kept_alive.read_exact(&mut first).await.expect("response");
        assert_eq!(&first, b"HTTP/1.1 200 OK\r\n");
        let mut in_flight = TcpStream::connect(address).await.expect("connect");
        in_flight
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        started.notified().await;

        stop.send(true).expect("signal");
        let grace = CLOSE_GRACE + Duration::from_secs(1);
        assert_eq!(read_to_close(&mut idle, grace).await.as_deref(), Some(""));
        assert_eq!(read_to_close(&mut half_sent, grace).await.as_deref(), Some(""));
        assert!(
            read_to_close(&mut kept_alive, grace).await.is_some(),
            "the idle keep-alive connection closes"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut server)
                .await
                .is_err(),
            "the listener waits for the request in flight"
        );

        release.notify_one();
        let response = read_to_close(&mut in_flight, Duration::from_secs(5))
            .await
            .expect("answered, then closed");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("connection: close"), "{response}");
        assert!(response.ends_with("finished"), "{response}");
        let ended = tokio::time::timeout(Duration::from_secs(2), server).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the listener ends with its last connection"
        );
        assert!(TcpStream::connect(address).await.is_err(), "nothing listens any more");
    }

    #[tokio::test]
    async fn a_handler_slower_than_the_idle_timeout_still_answers() {
        let router = axum::Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow but answered"
            }),
        );
        let config = ListenerConfig {
            idle_timeout: Duration::from_millis(200),
            ..ListenerConfig::default()
        };
        let (address, _stop, _server) = start(router, config).await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let response = read_to_close(&mut stream, Duration::from_secs(5))
            .await
            .expect("closed when idle");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("slow but answered"), "{response}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_response_frees_its_connection_slot_after_the_idle_timeout() {
        let router = axum::Router::new()
            .route("/big", get(|| async { vec![b'x'; 32 << 20] }))
            .route("/small", get(|| async { "small" }));
        let config = ListenerConfig {
            max_connections: 1,
            idle_timeout: Duration::from_millis(300),
            ..ListenerConfig::default()
        };
        let (address, _stop, _server) = start(router, config).await;
        let mut stalled = TcpStream::connect(address).await.expect("connect");
        stalled
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        // Never read from `stalled`: its response fills the socket buffers and stops moving.
        let mut next = TcpStream::connect(address).await.expect("connect");
        next.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let response = read_to_close(&mut next, Duration::from_secs(5))
            .await
            .expect("served once the stalled connection was dropped");
        assert!(response.ends_with("small"), "{response}");
        drop(stalled);
    }
}
