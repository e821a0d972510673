//! The `tracepost` binary: command line, logging, signals. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};
use tracepost::listener::{ListenerConfig, TlsFiles};
use tracepost::{loadgen, AppConfig, Role};
use tracepost_collector::{PipelineConfig, RedConfig, RouteRules, SpoolConfig};
use tracepost_query::QueryLimits;
use tracepost_storage::DatabaseConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tracepost",
    version,
    about = "OpenTelemetry traces into PostgreSQL, out through the Jaeger and Tempo APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: OTLP receivers, the write pipeline and the query API.
    Serve(ServeArgs),
    /// Run the OTLP receivers and the write pipeline (health and metrics on --admin-listen).
    Collector(ServeArgs),
    /// Run the query API only.
    Query(ServeArgs),
    /// Apply pending schema migrations and exit.
    Migrate(MigrateArgs),
    /// Send Linkerd-shaped OTLP traffic to a collector.
    Loadgen(loadgen::LoadgenArgs),
    /// Measure query API latency (p50/p99/max) against stored spans; with --planted, check rare-value searches.
    Querybench(tracepost::querybench::QuerybenchArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// After migrating, grant this existing role read access (CONNECT, schema USAGE, SELECT on tracepost's
    /// tables now and on those later migrations add) for `tracepost query`; repeatable.
    #[arg(long = "grant-read-to", env = "TRACEPOST_GRANT_READ_TO", value_delimiter = ',')]
    grant_read_to: Vec<String>,
    /// Log format: text or json.
    #[arg(long, env = "TRACEPOST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Debug, Args)]
struct DatabaseArgs {
    /// PostgreSQL URL, libpq style (sslmode disable, prefer or require; verify-ca/verify-full need --database-ca-file).
    #[arg(
        long,
        env = "TRACEPOST_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/tracepost"
    )]
    database_url: String,
    /// PEM file of CA certificates: verify the server's certificate and host name against it.
    #[arg(long, env = "TRACEPOST_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// PostgreSQL connections in the pool.
    #[arg(long, env = "TRACEPOST_DATABASE_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    database_pool_size: usize,
    /// Longest any one statement may run before PostgreSQL cancels it (queries answer 503); writes are bounded
    /// by --export-timeout instead, migrations and maintenance by none. 0 keeps the server's setting.
    #[arg(long, env = "TRACEPOST_STATEMENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    statement_timeout: Duration,
}

impl DatabaseArgs {
    fn config(&self) -> DatabaseConfig {
        let mut config = DatabaseConfig::new(self.database_url.clone());
        config.ca_file = self.database_ca_file.clone();
        config.pool_size = self.database_pool_size;
        config.statement_timeout = Some(self.statement_timeout).filter(|timeout| !timeout.is_zero());
        config
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "TRACEPOST_OTLP_GRPC_LISTEN", default_value = "0.0.0.0:4317")]
    otlp_grpc_listen: SocketAddr,
    /// OTLP/HTTP listen address.
    #[arg(long, env = "TRACEPOST_OTLP_HTTP_LISTEN", default_value = "0.0.0.0:4318")]
    otlp_http_listen: SocketAddr,
    /// Query API listen address (Jaeger API, /healthz, /readyz, /metrics in `serve`).
    #[arg(long, env = "TRACEPOST_QUERY_LISTEN", default_value = "0.0.0.0:16686")]
    query_listen: SocketAddr,
    /// Tempo API listen address (the subset Grafana's Tempo data source uses), in `serve` and `query`.
    #[arg(long, env = "TRACEPOST_TEMPO_LISTEN", default_value = "0.0.0.0:3200")]
    tempo_listen: SocketAddr,
    /// Admin listen address of the collector role (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRACEPOST_ADMIN_LISTEN", default_value = "0.0.0.0:8888")]
    admin_listen: SocketAddr,
    /// Connections open at once on each listener; at the cap new ones wait in the kernel's backlog.
    #[arg(long, env = "TRACEPOST_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How long a TLS handshake and each HTTP/1 request head may take (an HTTP/1 keep-alive connection idle this long is closed too).
    #[arg(long, env = "TRACEPOST_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_short_duration)]
    header_read_timeout: Duration,
    /// Close a connection that has no request being handled and no response bytes moving for this long.
    #[arg(long, env = "TRACEPOST_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_short_duration)]
    idle_timeout: Duration,
    /// Longest a query or Tempo API request may take until its response starts (0: unlimited); then 503.
    #[arg(long, env = "TRACEPOST_QUERY_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    query_request_timeout: Duration,
    /// PEM certificate chain: TLS on the OTLP gRPC and HTTP receivers (reloaded when the file changes).
    #[arg(long, env = "TRACEPOST_OTLP_TLS_CERT_FILE", requires = "otlp_tls_key_file")]
    otlp_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --otlp-tls-cert-file.
    #[arg(long, env = "TRACEPOST_OTLP_TLS_KEY_FILE", requires = "otlp_tls_cert_file")]
    otlp_tls_key_file: Option<PathBuf>,
    /// PEM certificate chain: TLS on the query and Tempo listeners (reloaded when the file changes).
    #[arg(long, env = "TRACEPOST_QUERY_TLS_CERT_FILE", requires = "query_tls_key_file")]
    query_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --query-tls-cert-file.
    #[arg(long, env = "TRACEPOST_QUERY_TLS_KEY_FILE", requires = "query_tls_cert_file")]
    query_tls_key_file: Option<PathBuf>,
    /// File of bearer tokens (one a line) the OTLP receivers require; unset: no authentication.
    #[arg(long, env = "TRACEPOST_OTLP_AUTH_TOKENS_FILE")]
    otlp_auth_tokens_file: Option<PathBuf>,
    /// File of bearer tokens (one a line) the query and Tempo APIs accept; /healthz, /readyz, /metrics stay open.
    #[arg(long, env = "TRACEPOST_QUERY_AUTH_TOKENS_FILE")]
    query_auth_tokens_file: Option<PathBuf>,
    /// File of user:password lines the query and Tempo APIs accept as basic auth (with or without tokens).
    #[arg(long, env = "TRACEPOST_QUERY_BASIC_AUTH_FILE")]
    query_basic_auth_file: Option<PathBuf>,
    /// Cluster of spans whose resource has no k8s.cluster.name (unset: none).
    #[arg(long, env = "TRACEPOST_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// How long spans are kept (partitions older than this are dropped), e.g. 7d, 36h.
    #[arg(long, env = "TRACEPOST_RETENTION", default_value = "7d", value_parser = parse_retention)]
    retention: Duration,
    /// How often the collector creates and drops partitions and ANALYZEs the ones it wrote (first run at start).
    #[arg(long, env = "TRACEPOST_PARTITION_MAINTENANCE_INTERVAL", default_value = "10m", value_parser = parse_maintenance_interval)]
    partition_maintenance_interval: Duration,
    /// Do not apply migrations at start (run `tracepost migrate` as a Job instead).
    #[arg(long, env = "TRACEPOST_SKIP_MIGRATIONS")]
    skip_migrations: bool,
    /// Cap on OTLP request bodies, compressed and decompressed, in bytes.
    #[arg(long, env = "TRACEPOST_MAX_REQUEST_BYTES", default_value_t = tracepost_collector::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// OTLP requests decoded or written at once (taken once the body is in); more wait for --admission-wait, then 503 / UNAVAILABLE.
    #[arg(long, env = "TRACEPOST_MAX_CONCURRENT_REQUESTS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_concurrent_requests: u32,
    /// An OTLP request's whole body must arrive within this time (else 408 / DEADLINE_EXCEEDED).
    #[arg(long, env = "TRACEPOST_BODY_READ_TIMEOUT", default_value = "5s", value_parser = parse_short_duration)]
    body_read_timeout: Duration,
    /// Every OTLP request is answered, acknowledged or refused, within this time of its start (keep it under
    /// the clients' 10 s timeout).
    #[arg(long, env = "TRACEPOST_EXPORT_TIMEOUT", default_value = "8s", value_parser = parse_short_duration)]
    export_timeout: Duration,
    /// Distinct span names listed per service, each under every kind it is used with (names beyond it are stored and searchable, not listed).
    #[arg(long, env = "TRACEPOST_MAX_OPERATIONS_PER_SERVICE", default_value_t = tracepost_collector::catalog::DEFAULT_MAX_OPERATIONS_PER_SERVICE)]
    max_operations_per_service: usize,
    /// Encoded span bytes admitted and not yet committed, at most; beyond it requests are refused as overloaded.
    #[arg(long, env = "TRACEPOST_MAX_INFLIGHT_BYTES", default_value_t = PipelineConfig::default().max_inflight_bytes, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40).map(|value| value as usize))]
    max_inflight_bytes: usize,
    /// How long a request may wait for admission before it is refused (e.g. 1s, 500ms).
    #[arg(long, env = "TRACEPOST_ADMISSION_WAIT", default_value = "1s", value_parser = parse_duration)]
    admission_wait: Duration,
    /// Spans one transaction takes at most (a free writer takes what is waiting, up to this).
    #[arg(long, env = "TRACEPOST_BATCH_MAX_SPANS", default_value_t = PipelineConfig::default().batch_max_spans, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|value| value as usize))]
    batch_max_spans: usize,
    /// Encoded bytes one transaction takes at most.
    #[arg(long, env = "TRACEPOST_BATCH_MAX_BYTES", default_value_t = PipelineConfig::default().batch_max_bytes, value_parser = clap::value_parser!(u32).range(1024..=1 << 30).map(|value| value as usize))]
    batch_max_bytes: usize,
    /// Acknowledge exports once fsync'd in a spool in this directory (one process per directory), and move
    /// them to PostgreSQL from there; unset: acknowledge once committed in PostgreSQL.
    #[arg(long, env = "TRACEPOST_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Bytes the spool may hold on disk; beyond it exports are refused (503 / UNAVAILABLE, retryable).
    #[arg(long, env = "TRACEPOST_SPOOL_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(4 << 20..))]
    spool_max_bytes: u64,
    /// Concurrent batch writers (one PostgreSQL connection each while writing).
    #[arg(long, env = "TRACEPOST_WRITERS", default_value_t = PipelineConfig::default().writers, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    writers: usize,
    /// How long a failed batch is retried before its requests get a retryable error.
    #[arg(long, env = "TRACEPOST_WRITE_RETRY_BUDGET", default_value = "5s", value_parser = parse_duration)]
    write_retry_budget: Duration,
    /// On SIGTERM, how long to finish requests in flight before exiting.
    #[arg(long, env = "TRACEPOST_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Daily partitions created ahead of today.
    #[arg(long, env = "TRACEPOST_PARTITION_DAYS_AHEAD", default_value_t = 2, value_parser = clap::value_parser!(i32).range(0..=60))]
    partition_days_ahead: i32,
    /// Do not compute RED metrics and the service graph at ingest.
    #[arg(long, env = "TRACEPOST_DISABLE_SPAN_METRICS")]
    disable_span_metrics: bool,
    /// Distinct service label sets in the RED metrics; further services are counted as `__overflow__`.
    #[arg(long, env = "TRACEPOST_METRICS_MAX_SERVICES", default_value_t = RedConfig::default().max_services)]
    metrics_max_services: usize,
    /// Distinct span names (route templates) per service in the RED metrics; further ones are `__overflow__`.
    #[arg(long, env = "TRACEPOST_METRICS_MAX_OPERATIONS_PER_SERVICE", default_value_t = RedConfig::default().max_operations_per_service)]
    metrics_max_operations_per_service: usize,
    /// Route patterns tried before the built-in placeholders, e.g. `/users/{user}/**` (repeat or comma-separate).
    #[arg(long = "route-pattern", env = "TRACEPOST_ROUTE_PATTERNS", value_delimiter = ',')]
    route_patterns: Vec<String>,
    /// Keep path segments that look like identifiers as they are (only --route-pattern templates).
    #[arg(long, env = "TRACEPOST_NO_ROUTE_PLACEHOLDERS")]
    no_route_placeholders: bool,
    /// How long a client or server span waits for its other half in the service graph.
    #[arg(long, env = "TRACEPOST_SERVICE_GRAPH_WAIT", default_value = "15s", value_parser = parse_duration)]
    service_graph_wait: Duration,
    /// Spans waiting for their other half, at most; further ones are not paired (and counted as dropped).
    #[arg(long, env = "TRACEPOST_SERVICE_GRAPH_MAX_ITEMS", default_value_t = RedConfig::default().graph_max_items)]
    service_graph_max_items: usize,
    /// Push /metrics to this URL (VictoriaMetrics's /api/v1/import/prometheus) as well as serving it.
    #[arg(long, env = "TRACEPOST_METRICS_PUSH_URL", hide_env_values = true)]
    metrics_push_url: Option<String>,
    /// How often to push metrics.
    #[arg(long, env = "TRACEPOST_METRICS_PUSH_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    metrics_push_interval: Duration,
    /// Prometheus-compatible query API (VictoriaMetrics) answering Jaeger SPM's /api/metrics/* routes.
    #[arg(long, env = "TRACEPOST_METRICS_QUERY_URL", hide_env_values = true)]
    metrics_query_url: Option<String>,
    /// Traces one search may return at most (Jaeger `limit`, api v3 `query.searchDepth`, Tempo `limit`, trace IDs
    /// per multi-get); asking for more is a 400.
    #[arg(long, env = "TRACEPOST_MAX_TRACES_PER_SEARCH", default_value_t = QueryLimits::default().max_traces_per_search, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|value| value as usize))]
    max_traces_per_search: usize,
    /// Spans per span set one Tempo search may return at most (`spss`); asking for more is a 400.
    #[arg(long, env = "TRACEPOST_MAX_SPANS_PER_SPAN_SET", default_value_t = QueryLimits::default().max_spans_per_span_set, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|value| value as usize))]
    max_spans_per_span_set: usize,
    /// Spans returned per trace at most; a longer trace is cut to its first spans by start time (with a warning
    /// on its first span in Jaeger's JSON, a `tracepost-trace-truncated` header elsewhere).
    #[arg(long, env = "TRACEPOST_MAX_SPANS_PER_TRACE", default_value_t = QueryLimits::default().max_spans_per_trace, value_parser = clap::value_parser!(u32).range(1..=10_000_000).map(|value| value as usize))]
    max_spans_per_trace: usize,
    /// Spans one search may return at most, all traces together; past it the search answers with the traces
    /// found so far (as when its time budget runs out).
    #[arg(long, env = "TRACEPOST_MAX_SPANS_PER_SEARCH", default_value_t = QueryLimits::default().max_spans_per_search, value_parser = clap::value_parser!(u32).range(1..=100_000_000).map(|value| value as usize))]
    max_spans_per_search: usize,
    /// Query and Tempo requests answered at once; more wait up to 5 s for a turn, then 503 with Retry-After.
    #[arg(long, env = "TRACEPOST_MAX_CONCURRENT_QUERIES", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=10_000).map(usize::from))]
    max_concurrent_queries: usize,
    /// Bytes a TraceQL query may have at most; a longer one is a 400.
    #[arg(long, env = "TRACEPOST_MAX_TRACEQL_LENGTH", default_value_t = QueryLimits::default().max_traceql_length, value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|value| value as usize))]
    max_traceql_length: usize,
    /// Parentheses a TraceQL query may nest at most; a deeper one is a 400.
    #[arg(long, env = "TRACEPOST_MAX_TRACEQL_DEPTH", default_value_t = QueryLimits::default().max_traceql_depth, value_parser = clap::value_parser!(u32).range(1..=1024).map(|value| value as usize))]
    max_traceql_depth: usize,
    /// Log format: text or json.
    #[arg(long, env = "TRACEPOST_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<AppConfig> {
        let mut config = AppConfig::new(self.database.config());
        config.otlp_grpc_listen = self.otlp_grpc_listen;
        config.otlp_http_listen = self.otlp_http_listen;
        config.query_listen = self.query_listen;
        config.admin_listen = self.admin_listen;
        config.tempo_listen = self.tempo_listen;
        config.listeners = self.listener_config();
        config.cluster_name = self.cluster_name.clone().filter(|name| !name.is_empty());
        config.retention = self.retention;
        config.maintenance_interval = self.partition_maintenance_interval;
        config.skip_migrations = self.skip_migrations;
        config.max_request_bytes = self.max_request_bytes;
        config.max_concurrent_requests = self.max_concurrent_requests as usize;
        config.max_concurrent_queries = self.max_concurrent_queries;
        config.query_limits = QueryLimits {
            max_traces_per_search: self.max_traces_per_search,
            max_spans_per_span_set: self.max_spans_per_span_set,
            max_spans_per_trace: self.max_spans_per_trace,
            max_spans_per_search: self.max_spans_per_search,
            max_traceql_length: self.max_traceql_length,
            max_traceql_depth: self.max_traceql_depth,
        };
        config.body_read_timeout = self.body_read_timeout;
        config.export_timeout = self.export_timeout;
        if !(1024..=1 << 30).contains(&self.max_request_bytes) {
            anyhow::bail!("--max-request-bytes must be between 1 KiB and 1 GiB");
        }
        if self.max_inflight_bytes < self.max_request_bytes.saturating_mul(2) {
            anyhow::bail!(
                "--max-inflight-bytes must be at least twice --max-request-bytes (a request's body and its \
                 decompressed form are both held while it is decoded)"
            );
        }
        if self.spool_dir.is_some() && self.spool_max_bytes < self.max_inflight_bytes as u64 {
            anyhow::bail!(
                "--spool-max-bytes must be at least --max-inflight-bytes (a request's spans, up to that much, must \
                 fit in the spool)"
            );
        }
        if self.spool_dir.is_some() && self.spool_max_bytes < self.max_inflight_bytes as u64 {
            anyhow::bail!(
                "--spool-max-bytes must be at least --max-inflight-bytes (a request's spans, up to that much, must \
                 fit in the spool)"
            );
        }
        config.max_operations_per_service = self.max_operations_per_service;
        config.shutdown_grace = self.shutdown_grace;
        config.partition_days_ahead = self.partition_days_ahead;
        config.pipeline = PipelineConfig {
            max_inflight_bytes: self.max_inflight_bytes,
            admission_wait: self.admission_wait,
            batch_max_spans: self.batch_max_spans,
            batch_max_bytes: self.batch_max_bytes,
            writers: self.writers,
            retry_budget: self.write_retry_budget,
            spool: self.spool_dir.clone().map(|dir| SpoolConfig {
                dir,
                max_bytes: self.spool_max_bytes,
            }),
        };
        config.span_metrics = if self.disable_span_metrics {
            None
        } else {
            Some(RedConfig {
                max_services: self.metrics_max_services,
                max_operations_per_service: self.metrics_max_operations_per_service,
                graph_wait: self.service_graph_wait,
                graph_max_items: self.service_graph_max_items,
                routes: RouteRules::new(&self.route_patterns, !self.no_route_placeholders)
                    .map_err(|error| anyhow::anyhow!("--route-pattern: {error}"))?,
                ..RedConfig::default()
            })
        };
        config.metrics_push_url = self.metrics_push_url.clone().filter(|url| !url.is_empty());
        config.metrics_push_interval = self.metrics_push_interval;
        config.metrics_query_url = self.metrics_query_url.clone().filter(|url| !url.is_empty());
        Ok(config)
    }
}

impl ServeArgs {
    fn listener_config(&self) -> ListenerConfig {
        let tls = |cert: &Option<PathBuf>, key: &Option<PathBuf>| {
            Some(TlsFiles {
                cert_file: cert.clone()?,
                key_file: key.clone()?,
            })
        };
        ListenerConfig {
            max_connections: self.max_connections as usize,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            query_request_timeout: Some(self.query_request_timeout).filter(|timeout| !timeout.is_zero()),
            otlp_tls: tls(&self.otlp_tls_cert_file, &self.otlp_tls_key_file),
            query_tls: tls(&self.query_tls_cert_file, &self.query_tls_key_file),
            otlp_auth_tokens_file: self.otlp_auth_tokens_file.clone(),
            query_auth_tokens_file: self.query_auth_tokens_file.clone(),
            query_basic_auth_file: self.query_basic_auth_file.clone(),
            ..ListenerConfig::default()
        }
    }
}

/// The longest duration any setting takes: ten years.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `250ms`, `5s`, `10m`, `36h`, `7d`, up to ten years.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 7d"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("invalid duration unit in {text:?}: use ms, s, m, h or d")),
    };
    let duration = number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| format!("duration {text:?} is out of range: at most 3650d"))?;
    Ok(duration)
}

/// A request-scale duration: from 1 ms to 10 minutes.
fn parse_short_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() || duration > Duration::from_secs(600) {
        return Err(format!("duration {text:?} is out of range: between 1ms and 10m"));
    }
    Ok(duration)
}

/// The partition maintenance interval: from a minute to a day (partitions are made two days ahead).
fn parse_maintenance_interval(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(60) || duration > Duration::from_secs(86_400) {
        return Err(format!("interval {text:?} is out of range: between 1m and 1d"));
    }
    Ok(duration)
}

/// The retention: at least a day (the current and previous day's partitions are always kept).
fn parse_retention(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(86_400) {
        return Err(format!("retention {text:?} is too short: at least 1d"));
    }
    Ok(duration)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACEPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log collectors (and tests reading the log) get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tracepost: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("tracepost: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (role, args) = match cli.command {
        Command::Serve(args) => (Role::Serve, args),
        Command::Collector(args) => (Role::Collector, args),
        Command::Query(args) => (Role::Query, args),
        Command::Migrate(args) => {
            init_logging(args.log_format == "json");
            let pool = tracepost_storage::connect_pool(&args.database.config())?;
            let applied = tracepost::app::migrate(&pool, Duration::from_secs(60)).await?;
            tracing::info!(
                ?applied,
                version = tracepost_storage::schema::REQUIRED_VERSION,
                "schema is up to date"
            );
            for role in &args.grant_read_to {
                tracepost_storage::schema::grant_read(&pool, role)
                    .await
                    .with_context(|| format!("granting read access to {role:?}"))?;
                tracing::info!(role, "read access granted");
            }
            return Ok(());
        }
        Command::Loadgen(args) => return loadgen::run(args).await,
        Command::Querybench(args) => return tracepost::querybench::run(args).await,
    };
    init_logging(args.log_format == "json");
    let app = tracepost::start(role, args.config()?).await?;
    tracing::info!(
        role = ?role,
        otlp_grpc = ?app.otlp_grpc_addr,
        otlp_http = ?app.otlp_http_addr,
        query = ?app.query_addr,
        admin = ?app.admin_addr,
        "tracepost is ready"
    );
    shutdown_signal().await;
    app.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM, only Ctrl-C stops tracepost");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    /// The report's `--retention 213503982334602d` wrapped around to 17 hours and dropped yesterday's spans.
    #[test]
    fn durations_that_overflow_or_are_out_of_range_are_refused() {
        let error = parse_retention("213503982334602d").expect_err("overflows");
        assert!(error.contains("out of range"), "{error}");
        assert!(parse_duration("18446744073709551615ms").is_err());
        assert!(parse_duration("3651d").is_err());
        assert_eq!(parse_retention("3650d"), Ok(MAX_DURATION));
        assert!(parse_retention("17h").expect_err("short").contains("at least 1d"));
        assert!(parse_short_duration("0s").is_err());
        assert!(parse_short_duration("11m").is_err());
        assert_eq!(parse_short_duration("8s"), Ok(Duration::from_secs(8)));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
