//! The listeners' connection layer end to end: TLS with the real OTLP exporters, certificate reload,
//! authentication on the query, Tempo and OTLP APIs, the connection cap and the connection timeouts.
//! Certificates are made in the test by the `openssl` command line, signed by a CA of the test's own.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::SpanExporter as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracepost::listener::TlsFiles;
use tracepost::{App, AppConfig, Role};

/// A CA of the test's own, in a scratch directory, issuing server certificates for localhost and 127.0.0.1.
struct Pki {
    dir: PathBuf,
    ca_pem: Vec<u8>,
}

static PKI_COUNTER: AtomicU32 = AtomicU32::new(0);

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tracepost-tls-{test}-{}-{}",
            std::process::id(),
            PKI_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tracepost test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions file");
        let ca_pem = std::fs::read(dir.join("ca.crt")).expect("ca certificate");
        Self { dir, ca_pem }
    }

    /// A new server certificate and key, `NAME.crt` and `NAME.key`.
    fn issue(&self, name: &str) -> TlsFiles {
        let (crt, key, csr) = (format!("{name}.crt"), format!("{name}.key"), format!("{name}.csr"));
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                &crt,
            ],
        );
        TlsFiles {
            cert_file: self.dir.join(crt),
            key_file: self.dir.join(key),
        }
    }

    /// A client configuration trusting this CA, offering `alpn`, never resuming sessions.
    fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(certificate.expect("ca pem")).expect("ca certificate");
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        // Every handshake a full one: a resumed session reports the certificate of the session it resumes.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first certificate in a PEM file, as DER.
fn leaf_of(file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(file).expect("certificate file")
}

/// Puts `contents` at `path` the way a secret or certificate rotation does: a new file renamed over it.
fn replace_file(path: &Path, contents: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("write staged file");
    std::fs::rename(&staged, path).expect("rename over");
}

/// A TLS handshake with the server at `address`; the stream and the certificate the server presented.
async fn handshake(
    address: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let server_name = ServerName::from(address.ip());
    let stream = tokio_rustls::TlsConnector::from(client)
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let leaf = stream.get_ref().1.peer_certificates().expect("server certificates")[0].clone();
    (stream, leaf)
}

/// Sends one HTTP/1.1 request over a TLS stream and returns the response with its whole body.
async fn send_over(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request.map(Full::new)).await?;
    let (parts, body) = response.into_parts();
    Ok(http::Response::from_parts(parts, body.collect().await?.to_bytes()))
}

/// An HTTPS client for the OTLP/HTTP exporter and the query API: one TLS connection per request, trusting
/// the test's CA only.
#[derive(Debug)]
struct HttpsClient(Arc<rustls::ClientConfig>);

impl HttpsClient {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let authority = request.uri().authority().ok_or("no authority")?.clone();
        let address: SocketAddr = authority.as_str().parse()?;
        let (stream, _) = handshake(address, self.0.clone()).await;
        send_over(stream, request).await
    }

    async fn get_json(&self, url: &str) -> (u16, serde_json::Value) {
        let request = http::Request::get(url).body(Bytes::new()).expect("request");
        let response = self.send(request).await.expect("https request");
        let body = serde_json::from_slice(response.body()).expect("json body");
        (response.status().as_u16(), body)
    }
}

impl opentelemetry_http::HttpClient for HttpsClient {
    fn send_bytes<'client, 'call>(
        &'client self,
        request: http::Request<Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'call,
        >,
    >
    where
        'client: 'call,
        Self: 'call,
    {
        Box::pin(self.send(request))
    }
}

async fn start(config: AppConfig) -> App {
    tracepost::start(Role::Serve, config).await.expect("tracepost starts")
}

/// Reads until the server closes the connection; `None` if it is still open after `wait`.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(wait, stream.read_to_end(&mut received))
        .await
        .ok()
        .map(|_| received)
}

/// Sends `GET /healthz` on a keep-alive connection and returns the response once it is complete.
async fn get_healthz(stream: &mut TcpStream) -> String {
    send_healthz(stream).await;
    read_healthz(stream).await
}

async fn send_healthz(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: tracepost\r\n\r\n")
        .await
        .expect("send");
}

/// Reads one `/healthz` response (its body is `ok\n`).
async fn read_healthz(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    while !received.ends_with(b"ok\n") {
        let mut chunk = [0u8; 512];
        let read = stream.read(&mut chunk).await.expect("read");
        assert!(
            read > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8(received).expect("utf-8 response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_tls_with_the_real_exporters_stores_spans_the_query_api_returns_over_tls() {
    let database = TestDatabase::create("tls_otlp").await;
    let pki = Pki::new("otlp");
    let files = pki.issue("server");
    let mut config = config(&database);
    config.listeners.otlp_tls = Some(files.clone());
    config.listeners.query_tls = Some(files);
    let app = start(config).await;
    let https = HttpsClient(pki.client(&[b"http/1.1"]));

    // OTLP/gRPC: tonic's TLS (ALPN h2), verifying the server against the test CA by name.
    let grpc_trace = sdk_trace("tls-grpc");
    let grpc_port = app.otlp_grpc_addr.expect("grpc").port();
    let mut grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://localhost:{grpc_port}"))
        .with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("grpc exporter");
    grpc.set_resource(&grpc_trace.resource);
    grpc.export(grpc_trace.spans.clone())
        .await
        .expect("gRPC export over TLS");

    // OTLP/HTTP protobuf over TLS.
    let http_trace = sdk_trace("tls-http");
    let mut http = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(HttpsClient(pki.client(&[b"http/1.1"])))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("https://{}/v1/traces", app.otlp_http_addr.expect("otlp http")))
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("http exporter");
    http.set_resource(&http_trace.resource);
    http.export(http_trace.spans.clone())
        .await
        .expect("HTTP export over TLS");

    let query = app.query_addr.expect("query");
    for (trace, service) in [(&grpc_trace, "tls-grpc"), (&http_trace, "tls-http")] {
        let (status, body) = https
            .get_json(&format!("https://{query}/api/traces/{}", trace.trace_id()))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(2), "{body}");
        let processes = body["data"][0]["processes"].as_object().expect("processes");
        assert!(
            processes.values().all(|process| process["serviceName"] == service),
            "{body}"
        );
    }

    // The query listener negotiates HTTP/2 when offered, and speaks only TLS.
    let (h2, _) = handshake(query, pki.client(&[b"h2", b"http/1.1"])).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut plain = TcpStream::connect(query).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: tracepost\r\n\r\n")
        .await
        .expect("send");
    let answer = read_until_closed(&mut plain, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP is not answered on a TLS listener"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_handshakes_and_a_broken_one_is_ignored() {
    let database = TestDatabase::create("tls_reload").await;
    let pki = Pki::new("reload");
    let (first, second) = (pki.issue("first"), pki.issue("second"));
    let live = TlsFiles {
        cert_file: pki.dir.join("live.crt"),
        key_file: pki.dir.join("live.key"),
    };
    std::fs::copy(&first.cert_file, &live.cert_file).expect("copy");
    std::fs::copy(&first.key_file, &live.key_file).expect("copy");
    let mut config = config(&database);
    config.listeners.query_tls = Some(live.clone());
    config.listeners.reload_interval = Duration::from_millis(100);
    let app = start(config).await;
    let query = app.query_addr.expect("query");
    let client = pki.client(&[b"http/1.1"]);

    let (established, presented) = handshake(query, client.clone()).await;
    assert_eq!(presented, leaf_of(&first.cert_file));

    // Rotation: key first, then certificate, as two renames (a reload in between fails and keeps `first`).
    replace_file(&live.key_file, &std::fs::read(&second.key_file).expect("key"));
    replace_file(&live.cert_file, &std::fs::read(&second.cert_file).expect("cert"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presented) = handshake(query, client.clone()).await;
        if presented == leaf_of(&second.cert_file) {
            break;
        }
        assert_eq!(
            presented,
            leaf_of(&first.cert_file),
            "only the two certificates are ever served"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The connection made before the rotation still works.
    let response = send_over(
        established,
        http::Request::get(format!("https://{query}/healthz"))
            .body(Bytes::new())
            .expect("request"),
    )
    .await
    .expect("request on the established connection");
    assert_eq!(response.status(), 200);

    // A broken certificate file is not loaded: for the next several reload intervals every handshake
    // still gets the second certificate.
    replace_file(
        &live.cert_file,
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let watch_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < watch_until {
        let (_, presented) = handshake(query, client.clone()).await;
        assert_eq!(presented, leaf_of(&second.cert_file));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_tempo_apis_accept_bearer_tokens_and_basic_auth_and_refuse_the_rest() {
    let database = TestDatabase::create("query_auth").await;
    let pki = Pki::new("auth");
    let tokens = pki.dir.join("query-tokens");
    let basic = pki.dir.join("query-basic");
    std::fs::write(&tokens, "# Grafana's Jaeger data source\nquery-token-1\n").expect("tokens");
    std::fs::write(&basic, "grafana:s3cret pass\n").expect("basic");
    let mut config = config(&database);
    config.listeners.query_auth_tokens_file = Some(tokens.clone());
    config.listeners.query_basic_auth_file = Some(basic);
    config.listeners.reload_interval = Duration::from_millis(100);
    let app = start(config).await;
    let client = reqwest::Client::new();
    let services = query_url(&app, "/api/services");
    let echo = tempo_url(&app, "/api/echo");

    for url in [&services, &echo] {
        let refused = client.get(url).send().await.expect("request");
        assert_eq!(refused.status(), 401, "{url} without credentials");
        let challenges: Vec<&str> = refused
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|value| value.to_str().expect("ascii"))
            .collect();
        assert_eq!(
            challenges,
            [
                "Bearer realm=\"tracepost\"",
                "Basic realm=\"tracepost\", charset=\"UTF-8\""
            ]
        );
        let status =
            |request: reqwest::RequestBuilder| async move { request.send().await.expect("request").status().as_u16() };
        assert_eq!(
            status(client.get(url).bearer_auth("query-token-1")).await,
            200,
            "{url} bearer"
        );
        assert_eq!(
            status(client.get(url).bearer_auth("query-token-")).await,
            401,
            "{url} wrong token"
        );
        assert_eq!(
            status(client.get(url).bearer_auth("s3cret pass")).await,
            401,
            "{url} password as token"
        );
        assert_eq!(
            status(client.get(url).basic_auth("grafana", Some("s3cret pass"))).await,
            200,
            "{url} basic"
        );
        assert_eq!(
            status(client.get(url).basic_auth("grafana", Some("s3cret"))).await,
            401,
            "{url} wrong password"
        );
        assert_eq!(
            status(client.get(url).basic_auth("admin", Some("s3cret pass"))).await,
            401,
            "{url} wrong user"
        );
        assert_eq!(
            status(client.get(url).basic_auth("query-token-1", None::<&str>)).await,
            401,
            "{url} token as basic user"
        );
    }
    let answered = client
        .get(&echo)
        .bearer_auth("query-token-1")
        .send()
        .await
        .expect("echo")
        .text()
        .await
        .expect("body");
    assert_eq!(answered, "echo");

    // Probes and scrapers need no credentials.
    for url in [
        query_url(&app, "/healthz"),
        query_url(&app, "/readyz"),
        query_url(&app, "/metrics"),
        tempo_url(&app, "/ready"),
    ] {
        assert_eq!(client.get(&url).send().await.expect("open path").status(), 200, "{url}");
    }

    // A rotated token file: the new token is accepted and the old one refused once it is reloaded.
    replace_file(&tokens, b"query-token-2\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(&services)
        .bearer_auth("query-token-2")
        .send()
        .await
        .expect("request")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the new token was not accepted within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = client
        .get(&services)
        .bearer_auth("query-token-1")
        .send()
        .await
        .expect("request");
    assert_eq!(old.status(), 401);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receivers_refuse_exports_without_the_bearer_token_and_store_those_with_it() {
    let database = TestDatabase::create("otlp_auth").await;
    let pki = Pki::new("otlp-auth");
    let tokens = pki.dir.join("otlp-tokens");
    std::fs::write(&tokens, "otlp-token\n").expect("tokens");
    let mut config = config(&database);
    config.listeners.otlp_auth_tokens_file = Some(tokens);
    let app = start(config).await;

    // gRPC without, and with a wrong, token: UNAUTHENTICATED.
    let mut client = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    let refused = client
        .export(ExportTraceServiceRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(refused.message(), "missing or invalid bearer token");
    let mut wrong = tonic::Request::new(ExportTraceServiceRequest::default());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer otlp-tokeN".parse().expect("metadata"));
    let refused = client.export(wrong).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // The real gRPC exporter sending the token as metadata.
    let trace = sdk_trace("authenticated-grpc");
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", "Bearer otlp-token".parse().expect("metadata"));
    let mut grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_endpoint(&app))
        .with_metadata(metadata)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("grpc exporter");
    grpc.set_resource(&trace.resource);
    grpc.export(trace.spans.clone())
        .await
        .expect("authenticated gRPC export");
    assert_eq!(database.span_rows().await, 2);

    // OTLP/HTTP without the token: 401 with a Bearer challenge; nothing stored.
    let (status, headers, _) = post_otlp(&http_endpoint(&app), "application/x-protobuf", None, Vec::new()).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers
            .get("www-authenticate")
            .map(|value| value.to_str().expect("ascii")),
        Some("Bearer realm=\"tracepost\"")
    );
    let unauthenticated = export_http(
        &http_endpoint(&app),
        &sdk_trace("anonymous"),
        opentelemetry_otlp::Protocol::HttpBinary,
    )
    .await;
    assert!(unauthenticated.is_err(), "the exporter reports the refusal");
    assert_eq!(database.span_rows().await, 2);

    // The real HTTP exporter sending the token as a header.
    let trace = sdk_trace("authenticated-http");
    let mut http = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(reqwest::Client::new())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(http_endpoint(&app))
        .with_headers([("authorization".to_owned(), "Bearer otlp-token".to_owned())].into())
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("http exporter");
    http.set_resource(&trace.resource);
    http.export(trace.spans.clone())
        .await
        .expect("authenticated HTTP export");
    assert_eq!(database.span_rows().await, 4);

    // The query API has no authentication configured: it stays open.
    let (status, body) = get_json(&query_url(&app, "/api/services")).await;
    assert_eq!(status, 200);
    let services = body["data"].as_array().expect("services");
    assert!(services.contains(&serde_json::json!("authenticated-grpc")), "{body}");
    assert!(services.contains(&serde_json::json!("authenticated-http")), "{body}");
    assert!(!services.contains(&serde_json::json!("anonymous")), "{body}");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_next_connection_waits_until_one_closes() {
    let database = TestDatabase::create("connection_cap").await;
    let mut config = config(&database);
    config.listeners.max_connections = 2;
    let app = start(config).await;
    let query = app.query_addr.expect("query");

    let mut first = TcpStream::connect(query).await.expect("connect");
    let mut second = TcpStream::connect(query).await.expect("connect");
    assert!(get_healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(get_healthz(&mut second).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the third handshake (backlog), but tracepost does not accept it yet.
    let mut third = TcpStream::connect(query).await.expect("connect");
    send_healthz(&mut third).await;
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte))
            .await
            .is_err(),
        "the third connection is not served at the cap"
    );

    // Other listeners have caps of their own.
    let (status, _) = get_text(&tempo_url(&app, "/ready")).await;
    assert_eq!(status, 200);

    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), read_healthz(&mut third))
        .await
        .expect("served once a connection closed");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(get_healthz(&mut second).await.starts_with("HTTP/1.1 200"));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_and_a_stalled_tls_handshake_are_closed_after_the_header_read_timeout() {
    let database = TestDatabase::create("header_timeout").await;
    let pki = Pki::new("header-timeout");
    let mut config = config(&database);
    config.listeners.header_read_timeout = Duration::from_millis(500);
    config.listeners.idle_timeout = Duration::from_secs(60);
    config.listeners.otlp_tls = Some(pki.issue("server"));
    let app = start(config).await;

    for (what, address, sent) in [
        ("half a request line", app.query_addr.expect("query"), &b"GET /heal"[..]),
        (
            "headers without their end",
            app.tempo_addr.expect("tempo"),
            &b"GET /ready HTTP/1.1\r\nhost: x\r\n"[..],
        ),
        ("no TLS handshake", app.otlp_grpc_addr.expect("grpc"), &b""[..]),
    ] {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let opened = Instant::now();
        stream.write_all(sent).await.expect("send");
        let received = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: still open after 5 s"));
        let open_for = opened.elapsed();
        assert_eq!(received, b"", "{what}: closed without an answer");
        assert!(
            open_for >= Duration::from_millis(400),
            "{what}: closed after {open_for:?}, before the timeout"
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_and_http2_connections_are_closed_after_the_idle_timeout() {
    let database = TestDatabase::create("idle_timeout").await;
    let mut config = config(&database);
    config.listeners.header_read_timeout = Duration::from_secs(60);
    config.listeners.idle_timeout = Duration::from_millis(500);
    let app = start(config).await;
    let query = app.query_addr.expect("query");

    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(query).await.expect("connect");
    let opened = Instant::now();
    let received = read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("closed within 5 s");
    assert_eq!(received, b"");
    assert!(
        opened.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        opened.elapsed()
    );

    // An HTTP/2 connection (prior knowledge, as OTLP/gRPC uses) after one answered request.
    let tcp = TcpStream::connect(query).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(format!("http://{query}/healthz"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("h2 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok\n");
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the server closed the idle HTTP/2 connection within 5 s")
        .expect("join")
        .expect("a clean close (GOAWAY)");
    assert!(
        answered.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        answered.elapsed()
    );
    app.stop().await.expect("clean stop");
}
