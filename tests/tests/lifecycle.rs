//! Running tracepost: readiness, migrations racing, partitions and retention, graceful shutdown.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use support::*;
use tracepost::Role;
use tracepost_storage::time::{now_unix_nanos, NANOS_PER_DAY};

fn request_at(start: i64, count: u8) -> ExportTraceServiceRequest {
    let spans = (1..=count)
        .map(|id| Span {
            trace_id: vec![0x22; 16],
            span_id: vec![id; 8],
            name: "work".into(),
            start_time_unix_nano: start as u64,
            end_time_unix_nano: start as u64 + 1_000,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'span_blocks'::regclass ORDER BY 1",
            &[],
        )
        .await
        .expect("partitions");
    rows.iter().map(|row| row.get::<_, String>(0)).collect()
}

async fn wait_for_pending(app: &tracepost::App, spans: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!(
            "http://{}/metrics",
            app.query_addr.or(app.admin_addr).expect("metrics listener")
        );
        if metric_value(&get_text(&url).await.1, "tracepost_pending_spans") >= spans {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans never reached the pipeline"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_schema_version() {
    let database = TestDatabase::create("readiness").await;
    let query = tracepost::start(Role::Query, config(&database))
        .await
        .expect("query role starts");
    let readyz = query_url(&query, "/readyz");
    let (status, body) = get_text(&readyz).await;
    assert_eq!(status, 503);
    assert!(body.contains("tracepost migrate"), "{body}");
    assert_eq!(
        get_text(&query_url(&query, "/healthz")).await.0,
        200,
        "alive even when not ready"
    );

    let pool =
        tracepost_storage::connect_pool(&tracepost_storage::DatabaseConfig::new(database.url.clone())).expect("pool");
    tracepost::app::migrate(&pool, Duration::from_secs(5))
        .await
        .expect("migrate");
    assert_eq!(get_text(&readyz).await.0, 200);
    query.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_each_migration_once() {
    let database = TestDatabase::create("migration_race").await;
    let starts = (0..3).map(|_| {
        let config = config(&database);
        tokio::spawn(async move { tracepost::start(Role::Collector, config).await })
    });
    let mut apps = Vec::new();
    for start in starts {
        apps.push(start.await.expect("task").expect("replica starts"));
    }
    let rows = database
        .client()
        .await
        .query(
            "SELECT version, count(*) FROM tracepost_schema_migrations GROUP BY version ORDER BY version",
            &[],
        )
        .await
        .expect("versions");
    let versions: Vec<(i32, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let each_once: Vec<(i32, i64)> = tracepost_storage::schema::MIGRATIONS
        .iter()
        .map(|migration| (migration.version, 1))
        .collect();
    assert_eq!(versions, each_once);
    for app in apps {
        let admin = format!("http://{}/readyz", app.admin_addr.expect("collector admin listener"));
        assert_eq!(get_text(&admin).await.0, 200);
        app.stop().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_outside_the_partitions_are_kept_and_moved_when_their_day_gets_one() {
    let database = TestDatabase::create("partitions").await;
    let app = serve(&database).await;
    let client = database.client().await;
    let now = now_unix_nanos();
    let today = tracepost_storage::time::day_of(now);
    let expected: Vec<String> = (today - 1..=today + 2)
        .map(tracepost_storage::partitions::partition_name)
        .collect();
    let existing = partitions(&client).await;
    for name in &expected {
        assert!(existing.contains(name), "{name} missing from {existing:?}");
    }

    // A span from a client whose clock is 20 days ahead.
    let future = now + 20 * NANOS_PER_DAY;
    let mut grpc = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    grpc.export(request_at(future, 3)).await.expect("accepted");
    let where_stored = "SELECT tableoid::regclass::text, sum(span_count)::int8 FROM span_blocks GROUP BY 1";
    let rows = client.query(where_stored, &[]).await.expect("rows");
    assert_eq!(
        (rows[0].get::<_, String>(0), rows[0].get::<_, i64>(1)),
        ("span_blocks_default".into(), 3)
    );

    // Twenty days later, maintenance creates that day's partition and moves the spans into it...
    let pool =
        tracepost_storage::connect_pool(&tracepost_storage::DatabaseConfig::new(database.url.clone())).expect("pool");
    let report = tracepost_storage::partitions::maintain(&pool, future, 2, Duration::from_secs(7 * 86_400))
        .await
        .expect("maintenance");
    assert!(report.ran);
    let future_partition = tracepost_storage::partitions::partition_name(tracepost_storage::time::day_of(future));
    assert!(report.created.contains(&future_partition));
    let rows = client.query(where_stored, &[]).await.expect("rows");
    assert_eq!(
        (rows[0].get::<_, String>(0), rows[0].get::<_, i64>(1)),
        (future_partition.clone(), 3)
    );
    // ...and, past the 7-day retention, drops today's partitions.
    for name in &expected {
        assert!(report.dropped.contains(name), "{name} not dropped: {report:?}");
    }
    assert!(!partitions(&client).await.contains(&expected[0]));
    let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{}", "22".repeat(16)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(3));
    app.stop().await.expect("clean shutdown");
}

/// The report: spans dated in 2100 sat in the default partition forever, since retention only looked at
/// their timestamps. Now they are kept for the retention counted from when maintenance first saw their day,
/// then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_dated_far_in_the_future_are_removed_after_the_retention_too() {
    let database = TestDatabase::create("far_future").await;
    let app = serve(&database).await;
    let client = database.client().await;
    let now = now_unix_nanos();
    let year_2100 = 4_102_444_800 * 1_000_000_000i64;
    let mut grpc = TraceServiceClient::connect(grpc_endpoint(&app)).await.expect("connect");
    grpc.export(request_at(year_2100, 2)).await.expect("accepted");
    // And one at the end of time (u64::MAX ns, stored as i64::MAX), whose day once overflowed maintenance.
    let mut end_of_time = request_at(0, 1);
    let span = &mut end_of_time.resource_spans[0].scope_spans[0].spans[0];
    span.span_id = vec![9; 8];
    (span.start_time_unix_nano, span.end_time_unix_nano) = (u64::MAX, u64::MAX);
    grpc.export(end_of_time).await.expect("accepted");
    assert_eq!(database.span_rows().await, 3);

    let pool =
        tracepost_storage::connect_pool(&tracepost_storage::DatabaseConfig::new(database.url.clone())).expect("pool");
    let retention = Duration::from_secs(7 * 86_400);
    let report = tracepost_storage::partitions::maintain(&pool, now, 2, retention)
        .await
        .expect("maintenance");
    assert_eq!(report.expired_default_rows, 0, "kept while within the retention");
    assert_eq!(database.span_rows().await, 3);
    let seen: i64 = client
        .query_one(
            "SELECT count(*) FROM out_of_window_days WHERE table_name = 'span_blocks'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(seen, 2);

    let later = now + 8 * NANOS_PER_DAY;
    let report = tracepost_storage::partitions::maintain(&pool, later, 2, retention)
        .await
        .expect("maintenance");
    assert_eq!(
        report.expired_default_rows, 2,
        "two blocks of 2 and 1 spans: {report:?}"
    );
    assert_eq!(database.span_rows().await, 0);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_before_exiting() {
    let database = TestDatabase::create("shutdown_drain").await;
    let app = serve(&database).await;
    let mut blocker = database.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE span_blocks IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let endpoint = grpc_endpoint(&app);
    let in_flight = tokio::spawn(async move {
        let mut client = TraceServiceClient::connect(endpoint).await.expect("connect");
        client.export(request_at(now_unix_nanos(), 5)).await
    });
    wait_for_pending(&app, 5.0).await;
    app.begin_shutdown();
    lock.rollback().await.expect("release");
    let response = in_flight
        .await
        .expect("task")
        .expect("the request in flight is acknowledged");
    assert!(response.into_inner().partial_success.is_none());
    app.wait().await.expect("exit 0 once everything is committed");
    assert_eq!(database.span_rows().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_database_stuck_reports_uncommitted_spans() {
    let database = TestDatabase::create("shutdown_stuck").await;
    let mut config = config(&database);
    config.shutdown_grace = Duration::from_millis(500);
    config.pipeline.retry_budget = Duration::from_secs(30);
    let app = tracepost::start(Role::Serve, config).await.expect("start");
    let mut blocker = database.client().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE span_blocks IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let endpoint = grpc_endpoint(&app);
    let in_flight = tokio::spawn(async move {
        let mut client = TraceServiceClient::connect(endpoint).await.expect("connect");
        client.export(request_at(now_unix_nanos(), 4)).await
    });
    wait_for_pending(&app, 4.0).await;
    let outcome = app.stop().await;
    let error = outcome.expect_err("uncommitted spans make the exit non-zero");
    assert!(error.to_string().contains("4 span(s) not committed"), "{error}");
    assert!(
        in_flight.await.expect("task").is_err(),
        "the client was never acknowledged"
    );
    lock.rollback().await.expect("release");
}

/// A platform engineer's "database size per day" panel: every collector reports the size of each daily
/// partition of the blocks and the trace index (and their default partitions) as
/// `tracepost_storage_partition_bytes{relation, day}`, today's included, without waiting for a maintenance
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_reports_the_size_of_each_days_partitions() {
    let database = TestDatabase::create("partition_bytes").await;
    let app = serve(&database).await;
    let (year, month, day) =
        tracepost_storage::time::civil_from_days((now_unix_nanos().div_euclid(NANOS_PER_DAY)) as i32);
    let today = format!("{year:04}-{month:02}-{day:02}");
    let url = query_url(&app, "/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = get_text(&url).await.1;
        if page.contains("tracepost_storage_partition_bytes{") {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no partition sizes on the metrics page"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for relation in ["span_blocks", "trace_index"] {
        for day in [today.as_str(), "default"] {
            let sample = format!("tracepost_storage_partition_bytes{{relation=\"{relation}\",day=\"{day}\"}}");
            // An empty partition still has its indexes' metapages: at least one 8 KiB page.
            assert!(metric_value(&page, &sample) >= 8192.0, "{sample} in {page}");
        }
    }
    app.stop().await.expect("clean shutdown");
}
