//! The real binary under a real SIGTERM: requests in flight are committed and the process exits 0, promptly
//! even with idle and half-sent connections open.
//! (This test lives with the binary package because only it can name the built binary.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// A fresh database on the private test cluster (or TRACEPOST_TEST_DATABASE_URL's server).
async fn fresh_database(test: &str) -> String {
    let server = std::env::var("TRACEPOST_TEST_DATABASE_URL").unwrap_or_else(|_| {
        let script = format!("{}/../scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"));
        let output = Command::new("bash")
            .arg(&script)
            .args(["start", "test"])
            .output()
            .expect("run pg-cluster.sh");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
    });
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let name = format!("tracepost_test_sigterm_{test}_{}", std::process::id());
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let (base, query) = server
        .split_once('?')
        .map_or((server.as_str(), ""), |(base, query)| (base, query));
    let (host, _) = base.rsplit_once('/').expect("database in url");
    format!("{host}/{name}?{query}")
}

/// Kills the child if the test fails before it is stopped on purpose.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The running binary, its log lines, and the addresses from its readiness line.
struct Running {
    child: KillOnDrop,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    ready_line: String,
}

impl Running {
    /// The address the readiness line gives for `field` (`otlp_http`, `query`, ...).
    fn address(&self, field: &str) -> String {
        let key = format!("{field}=Some(");
        let start = self
            .ready_line
            .find(&key)
            .unwrap_or_else(|| panic!("{field} in {}", self.ready_line))
            + key.len();
        let end = start + self.ready_line[start..].find(')').expect("closing parenthesis");
        self.ready_line[start..end].to_owned()
    }

    fn sigterm(&mut self) -> std::process::Child {
        let process = self.child.0.take().expect("child");
        assert!(Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .expect("kill")
            .success());
        process
    }
}

/// Starts `tracepost serve` on free loopback ports and waits for its readiness log line.
async fn start_serve(database_url: &str) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_tracepost"))
        .args(["serve", "--database-url", database_url])
        .args(["--otlp-grpc-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0"])
        .args(["--query-listen", "127.0.0.1:0", "--tempo-listen", "127.0.0.1:0"])
        .env("TRACEPOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracepost");
    let mut child = KillOnDrop(Some(child));
    let stderr = child.0.as_mut().and_then(|child| child.stderr.take()).expect("stderr");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Readiness: the log line that names the bound addresses.
    let ready_line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if line.contains("tracepost is ready") {
                return line;
            }
        }
        panic!("tracepost exited before it was ready");
    })
    .await
    .expect("ready within a minute");
    Running {
        child,
        lines,
        ready_line,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_was_accepted_and_exits_zero() {
    let database_url = fresh_database("commits").await;
    let mut running = start_serve(&database_url).await;
    let http_addr = running.address("otlp_http");

    let spans = (1..=3u8)
        .map(|id| Span {
            trace_id: vec![0x33; 16],
            span_id: vec![id; 8],
            name: "signal".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_001_000,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            http::Request::post(format!("http://{http_addr}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(request.encode_to_vec())))
                .expect("request"),
        )
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;

    let mut process = running.sigterm();
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let mut saw_clean_shutdown = false;
    // The log ends when the process closes stderr.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = running.lines.recv().await {
            saw_clean_shutdown |= line.contains("shutdown complete");
        }
    })
    .await
    .expect("stderr closes after exit");
    assert!(saw_clean_shutdown, "the log says every acknowledged span is committed");

    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let stored: i64 = db
        .query_one("SELECT count(*) FROM spans", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_and_half_sent_connections_open_exits_within_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let database_url = fresh_database("idle").await;
    let mut running = start_serve(&database_url).await;
    let (query, otlp_http, otlp_grpc) = (
        running.address("query"),
        running.address("otlp_http"),
        running.address("otlp_grpc"),
    );
    // Never sends a byte.
    let silent = TcpStream::connect(&query).await.expect("connect");
    // Half a request head, on the query and on the OTLP/HTTP listener.
    let mut half_query = TcpStream::connect(&query).await.expect("connect");
    half_query
        .write_all(b"GET /api/services HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("send");
    let mut half_otlp = TcpStream::connect(&otlp_http).await.expect("connect");
    half_otlp.write_all(b"POST /v1/tra").await.expect("send");
    // A keep-alive connection after one answered request.
    let mut kept_alive = TcpStream::connect(&query).await.expect("connect");
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let mut status_line = [0u8; 12];
    kept_alive.read_exact(&mut status_line).await.expect("answer");
    assert_eq!(&status_line, b"HTTP/1.1 200");
    // An HTTP/2 client that sent its preface and nothing more, as an idle gRPC channel looks.
    let mut h2 = TcpStream::connect(&otlp_grpc).await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("send");

    let signalled = std::time::Instant::now();
    let mut process = running.sigterm();
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("join")
        .expect("wait");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} with only quiet connections open"
    );
    drop((silent, half_query, half_otlp, kept_alive, h2));
}
