//! Starting and stopping the roles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracepost_collector::{
    CollectorMetrics, ConvertConfig, Ingest, IngestLimits, OperationCatalog, Pipeline, PipelineConfig, RedConfig,
    SpanMetrics,
};
use tracepost_storage::{connect_pool, partitions, schema, Database, DatabaseConfig, PostgresReader, PostgresWriter};

use crate::listener::{bind, serve, Edges, ListenerConfig};

/// Which parts of tracepost this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Collector and query API in one process.
    Serve,
    /// OTLP receivers, the write pipeline and partition maintenance; health and metrics on the admin listener.
    Collector,
    /// The query API only.
    Query,
}

impl Role {
    fn collects(self) -> bool {
        matches!(self, Self::Serve | Self::Collector)
    }

    fn queries(self) -> bool {
        matches!(self, Self::Serve | Self::Query)
    }
}

/// Everything a role needs. The binary fills it from flags and `TRACEPOST_*` variables.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub database: DatabaseConfig,
    pub otlp_grpc_listen: SocketAddr,
    pub otlp_http_listen: SocketAddr,
    pub query_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tempo_listen: SocketAddr,
    pub cluster_name: Option<String>,
    pub retention: Duration,
    pub skip_migrations: bool,
    pub pipeline: PipelineConfig,
    pub max_request_bytes: usize,
    /// OTLP requests being decoded or written at once (taken once the body is in); more wait for the admission wait, then 503.
    pub max_concurrent_requests: usize,
    /// An OTLP request's whole body must arrive within this time.
    pub body_read_timeout: Duration,
    /// Every OTLP request is answered within this time of its start (under the clients' 10 s).
    pub export_timeout: Duration,
    /// Distinct operations recorded per service in the operations list (span names beyond it are still
    /// stored and searchable, just not listed).
    pub max_operations_per_service: usize,
    pub shutdown_grace: Duration,
    pub partition_days_ahead: i32,
    pub maintenance_interval: Duration,
    /// RED metrics and service graph computed at ingest (`None`: off).
    pub span_metrics: Option<RedConfig>,
    /// Where to push `/metrics` (VictoriaMetrics's `/api/v1/import/prometheus`), if anywhere.
    pub metrics_push_url: Option<String>,
    pub metrics_push_interval: Duration,
    /// The Prometheus-compatible API (VictoriaMetrics) that answers Jaeger SPM queries, if any.
    pub metrics_query_url: Option<String>,
    /// Connection limits and timeouts of every listener; TLS and authentication per listener group.
    pub listeners: ListenerConfig,
    /// Caps on what one query may ask for and return.
    pub query_limits: tracepost_query::QueryLimits,
    /// Query and Tempo requests answered at once (the others wait up to `QUERY_TURN_WAIT`, then 503).
    pub max_concurrent_queries: usize,
}

impl AppConfig {
    /// Defaults for everything but the database, listening on the standard ports.
    pub fn new(database: DatabaseConfig) -> Self {
        Self {
            database,
            otlp_grpc_listen: ([0, 0, 0, 0], 4317).into(),
            otlp_http_listen: ([0, 0, 0, 0], 4318).into(),
            query_listen: ([0, 0, 0, 0], 16686).into(),
            admin_listen: ([0, 0, 0, 0], 8888).into(),
            tempo_listen: ([0, 0, 0, 0], 3200).into(),
            cluster_name: None,
            retention: Duration::from_secs(7 * 86_400),
            skip_migrations: false,
            pipeline: PipelineConfig::default(),
            max_request_bytes: tracepost_collector::DEFAULT_MAX_REQUEST_BYTES,
            max_concurrent_requests: IngestLimits::default().max_concurrent_requests,
            body_read_timeout: IngestLimits::default().body_read_timeout,
            export_timeout: IngestLimits::default().export_timeout,
            max_operations_per_service: tracepost_collector::catalog::DEFAULT_MAX_OPERATIONS_PER_SERVICE,
            shutdown_grace: Duration::from_secs(25),
            partition_days_ahead: 2,
            maintenance_interval: Duration::from_secs(600),
            span_metrics: Some(RedConfig::default()),
            metrics_push_url: None,
            metrics_push_interval: Duration::from_secs(15),
            metrics_query_url: None,
            listeners: ListenerConfig::default(),
            query_limits: tracepost_query::QueryLimits::default(),
            max_concurrent_queries: 8,
        }
    }
}

/// A running role: the addresses it bound, and the handle to stop it.
#[derive(Debug)]
pub struct App {
    pub otlp_grpc_addr: Option<SocketAddr>,
    pub otlp_http_addr: Option<SocketAddr>,
    pub query_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub tempo_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits for the role to stop. An error means spans were left uncommitted (their clients were not
    /// acknowledged) or a server failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("tracepost task panicked")?
    }

    /// Begins a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.wait().await
    }
}

#[derive(Clone)]
struct Health {
    pool: Database,
    ready: Arc<AtomicBool>,
    registry: Arc<Registry>,
    /// The collector's pipeline, whose writes tell whether PostgreSQL takes spans.
    pipeline: Option<Pipeline>,
    /// Why the schema is not usable yet (migrations still retrying or failed), if so.
    schema_problem: Arc<std::sync::Mutex<Option<String>>>,
}

/// A write waiting on PostgreSQL longer than this makes `/readyz` fail.
const WRITE_STALLED_AFTER: Duration = Duration::from_secs(2);

/// Applies pending migrations, retrying while PostgreSQL is unreachable (for up to `patience`).
pub async fn migrate(pool: &Database, patience: Duration) -> anyhow::Result<Vec<i32>> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(200);
    loop {
        match schema::migrate(pool).await {
            Ok(applied) => return Ok(applied),
            Err(error @ tracepost_storage::StorageError::Migration { .. }) => return Err(error.into()),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%error, "database not ready for migrations, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error).context("applying migrations"),
        }
    }
}

/// Starts a role: migrations (unless skipped), partitions, listeners. Returns once every listener is bound
/// and the role is ready to serve.
pub async fn start(role: Role, config: AppConfig) -> anyhow::Result<App> {
    let pool = connect_pool(&config.database)?;
    // With PostgreSQL unreachable the role still starts and listens (liveness holds, `/readyz` says why it
    // is not ready): migrations and the first partition maintenance run in the background until they work.
    let schema_problem = Arc::new(std::sync::Mutex::new(None));
    let mut schema_task = None;
    if role.collects() {
        let (pool, config, problem) = (pool.clone(), config.clone(), schema_problem.clone());
        let migrate_first = !config.skip_migrations;
        let (first_attempt, first_attempt_done) = tokio::sync::oneshot::channel();
        schema_task = Some(tokio::spawn(async move {
            let mut first_attempt = Some(first_attempt);
            if migrate_first {
                prepare_schema(&pool, &problem, &mut first_attempt).await;
            }
            if let Err(error) = maintain(&pool, &config).await {
                tracing::warn!(%error, "partition maintenance failed at start; spans go to the default partition");
            }
            first_attempt.take().map(|done| done.send(()));
        }));
        // A reachable database is migrated before the listeners open; an unreachable one is not waited for.
        let _ = first_attempt_done.await;
    }

    let mut registry = Registry::default();
    let metrics = CollectorMetrics::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown, shutdown_signal) = watch::channel(false);
    let edges = Edges::load(&config.listeners, &shutdown_signal)?;
    let mut servers: Vec<JoinHandle<std::io::Result<()>>> = Vec::new();
    let mut app_addrs = (None, None, None, None, None);
    let mut background: Vec<JoinHandle<()>> = Vec::new();

    let mut collector = None;
    if let Some(task) = schema_task {
        background.push(task);
    }
    if role.collects() {
        let span_metrics = config.span_metrics.clone().map(SpanMetrics::new);
        if let Some(span_metrics) = &span_metrics {
            registry.register_collector(Box::new(span_metrics.clone()));
            background.push(tokio::spawn(run_graph_expiry(span_metrics.clone())));
        }
        let writer = Arc::new(PostgresWriter::new(pool.clone()));
        let (pipeline, tasks) = Pipeline::start(config.pipeline.clone(), writer, metrics.clone())
            .context("opening the spool (--spool-dir)")?;
        let ingest = Ingest::new(
            pipeline.clone(),
            ConvertConfig {
                cluster_name: config.cluster_name.clone(),
                catalog: Arc::new(OperationCatalog::new(config.max_operations_per_service)),
                span_metrics,
            },
            metrics.clone(),
            IngestLimits {
                max_request_bytes: config.max_request_bytes,
                max_concurrent_requests: config.max_concurrent_requests,
                body_read_timeout: config.body_read_timeout,
                export_timeout: config.export_timeout,
            },
        );
        let grpc = bind(config.otlp_grpc_listen, "otlp grpc").await?;
        let http = bind(config.otlp_http_listen, "otlp http").await?;
        app_addrs.0 = Some(grpc.local_addr()?);
        app_addrs.1 = Some(http.local_addr()?);
        servers.push(serve(
            grpc,
            tracepost_collector::grpc_router(ingest.clone()),
            &edges.otlp,
            shutdown_signal.clone(),
        ));
        servers.push(serve(
            http,
            tracepost_collector::http_router(ingest),
            &edges.otlp,
            shutdown_signal.clone(),
        ));
        let partition_bytes = PartitionBytes::default();
        registry.register(
            "tracepost_storage_partition_bytes",
            "Bytes on disk (heap, TOAST, indexes) of each daily partition of tracepost's tables, refreshed with partition maintenance",
            partition_bytes.clone(),
        );
        let maintenance = tokio::spawn(run_maintenance(
            pool.clone(),
            config.clone(),
            partition_bytes,
            shutdown_signal.clone(),
        ));
        collector = Some((pipeline, tasks, maintenance));
    }

    let reader = role.queries().then(|| PostgresReader::new(pool.clone()));
    if let Some(reader) = &reader {
        registry.sub_registry_with_prefix("tracepost").register(
            "stored_rows_undecodable",
            "Stored span or resource rows the reader could not decode (left out of answers, logged with their trace ID)",
            reader.undecodable_rows(),
        );
    }
    let registry = Arc::new(registry);
    if let Some(url) = &config.metrics_push_url {
        background.push(tokio::spawn(crate::push::run(
            url.clone(),
            config.metrics_push_interval,
            registry.clone(),
        )));
    }
    let health = Health {
        pool: pool.clone(),
        ready: ready.clone(),
        registry,
        pipeline: collector.as_ref().map(|(pipeline, _, _)| pipeline.clone()),
        schema_problem,
    };
    let health_routes = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health);
    if let Some(reader) = reader {
        let listener = bind(config.query_listen, "query").await?;
        app_addrs.2 = Some(listener.local_addr()?);
        let turns = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_queries.max(1)));
        let router = limit_queries(
            tracepost_query::router_with_limits(reader.clone(), config.query_limits),
            turns.clone(),
        )
        .merge(tracepost_query::spm_router(config.metrics_query_url.clone()))
        .merge(health_routes);
        servers.push(serve(listener, router, &edges.query, shutdown_signal.clone()));
        let tempo = bind(config.tempo_listen, "tempo").await?;
        app_addrs.4 = Some(tempo.local_addr()?);
        servers.push(serve(
            tempo,
            limit_queries(
                tracepost_query::tempo_router_with_limits(reader, config.query_limits),
                turns,
            ),
            &edges.query,
            shutdown_signal.clone(),
        ));
    } else {
        let listener = bind(config.admin_listen, "admin").await?;
        app_addrs.3 = Some(listener.local_addr()?);
        servers.push(serve(listener, health_routes, &edges.admin, shutdown_signal.clone()));
    }

    ready.store(true, Ordering::SeqCst);
    let mut signal = shutdown_signal;
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        let _ = signal.wait_for(|stopping| *stopping).await;
        ready.store(false, Ordering::SeqCst);
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new connections, finishing requests in flight"
        );
        let deadline = tokio::time::Instant::now() + grace;
        background.iter().for_each(JoinHandle::abort);
        let failed_before = collector.as_ref().map_or(0, |(pipeline, _, _)| pipeline.failed_spans());
        let drained = tokio::time::timeout_at(deadline, async {
            for server in &mut servers {
                if let Ok(Err(error)) = server.await {
                    tracing::error!(%error, "server failed");
                }
            }
        })
        .await;
        // Past the grace period, stop serving where we are, as the process exit that follows would.
        let abort_servers = || servers.iter().for_each(JoinHandle::abort);
        let Some((pipeline, mut tasks, maintenance)) = collector else {
            abort_servers();
            return Ok(());
        };
        maintenance.abort();
        pipeline.close();
        let joined = tokio::time::timeout_at(deadline, tasks.join()).await;
        let pending = pipeline.pending_spans();
        tasks.abort();
        abort_servers();
        let spooled = pipeline.spool_backlog_bytes();
        if spooled > 0 {
            // Durable and acknowledged: written to PostgreSQL by the next start on this spool.
            tracing::info!(
                spooled_bytes = spooled,
                "shutdown grace period ended with spans still in the spool; they are drained at the next start"
            );
            return Ok(());
        }
        let failed = pipeline.failed_spans() - failed_before;
        if drained.is_err() || joined.is_err() || pending > 0 || failed > 0 {
            tracing::error!(
                uncommitted_spans = pending,
                failed_spans = failed,
                "shutdown grace period ended with spans not committed; their clients were not acknowledged"
            );
            anyhow::bail!("{} span(s) not committed at shutdown", pending as u64 + failed);
        }
        tracing::info!("shutdown complete, every acknowledged span is committed");
        Ok(())
    });
    Ok(App {
        otlp_grpc_addr: app_addrs.0,
        otlp_http_addr: app_addrs.1,
        query_addr: app_addrs.2,
        admin_addr: app_addrs.3,
        tempo_addr: app_addrs.4,
        shutdown,
        task,
    })
}

/// How long a query waits for its turn under `--max-concurrent-queries` before it is answered 503.
const QUERY_TURN_WAIT: Duration = Duration::from_secs(5);

/// At most as many query requests run at once as `turns` has permits (shared by the query and Tempo
/// listeners): what queries hold in memory together is bounded by that times one query's caps.
fn limit_queries(router: axum::Router, turns: Arc<tokio::sync::Semaphore>) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let turns = turns.clone();
            async move {
                match tokio::time::timeout(QUERY_TURN_WAIT, turns.acquire_owned()).await {
                    Ok(Ok(_turn)) => next.run(request).await,
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        "too many queries at once, retry later\n",
                    )
                        .into_response(),
                }
            }
        },
    ))
}

/// Ends the wait of unpaired service graph spans even when no spans arrive.
async fn run_graph_expiry(span_metrics: Arc<SpanMetrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        span_metrics.expire();
    }
}

async fn maintain(pool: &Database, config: &AppConfig) -> Result<(), tracepost_storage::StorageError> {
    let now = tracepost_storage::time::now_unix_nanos();
    partitions::maintain(pool, now, config.partition_days_ahead, config.retention)
        .await
        .map(|_| ())
}

/// `tracepost_storage_partition_bytes{relation, day}`.
type PartitionBytes = Family<Vec<(String, String)>, Gauge>;

/// Sets the partition sizes gauge to what the catalogs say now (partitions dropped since leave it). Every
/// collector reports them, not only the one that maintains: dashboards take the max per day.
async fn refresh_partition_bytes(pool: &Database, gauge: &PartitionBytes) {
    match partitions::partition_sizes(pool).await {
        Ok(sizes) => {
            gauge.clear();
            for size in sizes {
                gauge
                    .get_or_create(&vec![
                        ("relation".to_owned(), size.relation),
                        ("day".to_owned(), size.day),
                    ])
                    .set(size.bytes);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read partition sizes"),
    }
}

/// The collector role's background work: the dependency roll-up every `ROLLUP_INTERVAL`, partition
/// maintenance every `maintenance_interval`. Both take advisory locks, so one instance does each; each
/// instance refreshes the partition sizes after each maintenance pass.
async fn run_maintenance(
    pool: Database,
    config: AppConfig,
    partition_bytes: PartitionBytes,
    shutdown: watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut partitions = tokio::time::interval(config.maintenance_interval);
    let mut rollup = tokio::time::interval(ROLLUP_INTERVAL);
    partitions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rollup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    partitions.tick().await; // the first tick is immediate, and start-up already maintained partitions
    refresh_partition_bytes(&pool, &partition_bytes).await;
    let stop = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = partitions.tick() => {
                if let Err(error) = maintain(&pool, &config).await {
                    tracing::warn!(%error, "partition maintenance failed, retrying at the next interval");
                }
                refresh_partition_bytes(&pool, &partition_bytes).await;
            }
            _ = rollup.tick() => {
                let now = tracepost_storage::time::now_unix_nanos();
                let retention = i64::try_from(config.retention.as_nanos()).unwrap_or(i64::MAX);
                if let Err(error) = tracepost_storage::dependencies::rollup(&pool, now, retention).await {
                    tracing::warn!(%error, "dependency roll-up failed, retrying at the next interval");
                }
            }
            () = &mut stop => return,
        }
    }
}

/// How often settled 5-minute buckets of service dependencies are rolled up.
const ROLLUP_INTERVAL: Duration = Duration::from_secs(60);

/// Applies migrations, retrying until they succeed: a database that is not there yet is waited for, and a
/// migration that fails is reported on `/readyz` and retried (an operator may fix its cause).
async fn prepare_schema(
    pool: &Database,
    problem: &std::sync::Mutex<Option<String>>,
    first_attempt: &mut Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = schema::migrate(pool).await;
        if outcome.is_err() {
            // Start serving now; the migration keeps being retried in the background.
            first_attempt.take().map(|done| done.send(()));
        }
        match outcome {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "schema migrated");
                }
                *problem.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                return;
            }
            Err(error) => {
                let reason = match &error {
                    tracepost_storage::StorageError::Migration { version, .. } => {
                        format!("migration {version} failed (see the log)")
                    }
                    _ => "database unreachable, retrying migrations".to_owned(),
                };
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "schema not ready");
                *problem.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn readyz(State(health): State<Health>) -> Response {
    if !health.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let problem = health
        .schema_problem
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    // With a spool, ingest is ready while the spool takes appends, whatever PostgreSQL does.
    if let Some(pipeline) = &health.pipeline {
        match (
            pipeline.spool_health(),
            problem
                .clone()
                .map_or_else(|| pipeline.write_health(WRITE_STALLED_AFTER), Err),
        ) {
            (Some(Ok(())), Ok(())) => return (StatusCode::OK, "ready\n").into_response(),
            (Some(Ok(())), Err(reason)) => {
                return (StatusCode::OK, format!("ready, spooling: {reason}\n")).into_response();
            }
            (Some(Err(reason)), _) => {
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
            }
            (None, _) => {}
        }
    }
    if let Some(problem) = problem {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response();
    }
    if let Some(Err(reason)) = health
        .pipeline
        .as_ref()
        .map(|pipeline| pipeline.write_health(WRITE_STALLED_AFTER))
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database does not take writes: {reason}\n"),
        )
            .into_response();
    }
    let version = tokio::time::timeout(Duration::from_secs(2), schema::current_version(&health.pool)).await;
    match version {
        Ok(Ok(version)) if version >= schema::REQUIRED_VERSION => (StatusCode::OK, "ready\n").into_response(),
        Ok(Ok(version)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "schema version {version}, need {}: run `tracepost migrate`\n",
                schema::REQUIRED_VERSION
            ),
        )
            .into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable (see the log)\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database did not answer within 2s\n").into_response(),
    }
}

async fn metrics_text(State(health): State<Health>) -> Response {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &health.registry) {
        tracing::error!(%error, "cannot encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
