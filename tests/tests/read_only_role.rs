//! The query role needs only read access, as it has through CloudNativePG's `postgres-ro` service: `tracepost
//! query` against a role with nothing but CONNECT, USAGE on the schema and SELECT answers every API, and the
//! grants it needs are the ones the README documents.

mod support;

use support::*;
use tracepost::{AppConfig, Role};
use tracepost_storage::DatabaseConfig;

/// The grants the README's "Read-only query role" section gives, for a role named `role` on `database`.
fn documented_grants(role: &str, database: &str) -> String {
    format!(
        "GRANT CONNECT ON DATABASE {database} TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_role_answers_every_api_through_a_select_only_role() {
    let database = TestDatabase::create("read_only").await;
    let collector = serve(&database).await;
    let trace = sdk_trace("readonly-svc");
    export_grpc(&grpc_endpoint(&collector), &trace).await.expect("stored");

    let role = format!("tracepost_ro_{}", std::process::id());
    let admin = database.client().await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; {}",
            documented_grants(&role, &database.name)
        ))
        .await
        .expect("create the read-only role");
    // The role can read but not write: a write through it is refused by PostgreSQL.
    let read_only_url = with_role(&database.url, &role);
    let check = connect(&read_only_url).await;
    let refused = check
        .batch_execute("DELETE FROM span_blocks")
        .await
        .expect_err("no write access");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );

    let mut config = AppConfig::new(DatabaseConfig::new(read_only_url));
    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    config.query_listen = loopback;
    config.tempo_listen = loopback;
    config.skip_migrations = true;
    let query = tracepost::start(Role::Query, config).await.expect("query role starts");

    let (status, body) = get_text(&query_url(&query, "/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, services) = get_json(&query_url(&query, "/api/services")).await;
    assert_eq!(status, 200, "{services}");
    assert!(services["data"]
        .as_array()
        .expect("services")
        .iter()
        .any(|service| service == "readonly-svc"));
    let (status, found) = get_json(&query_url(&query, &format!("/api/traces/{}", trace.trace_id()))).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["data"][0]["spans"].as_array().map(Vec::len),
        Some(trace.spans.len())
    );
    let (status, found) = get_json(&query_url(&query, "/api/traces?service=readonly-svc&lookback=1h")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"].as_array().map(Vec::len), Some(1));
    let (status, dependencies) = get_json(&query_url(
        &query,
        &format!("/api/dependencies?endTs={}&lookback=3600000", now_micros() / 1000),
    ))
    .await;
    assert_eq!(status, 200, "{dependencies}");
    let (status, tempo) = get_json(&tempo_url(&query, &format!("/api/traces/{}", trace.trace_id()))).await;
    assert_eq!(status, 200, "{tempo}");
    let (status, search) = get_json(&tempo_url(
        &query,
        "/api/search?q=%7B%20resource.service.name%20%3D%20%22readonly-svc%22%20%7D",
    ))
    .await;
    assert_eq!(status, 200, "{search}");
    assert_eq!(search["traces"].as_array().map(Vec::len), Some(1), "{search}");

    query.stop().await.expect("clean shutdown");
    collector.stop().await.expect("clean shutdown");
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .expect("drop the role");
}

/// The URL with its user replaced by `role` (trust authentication on the test server).
fn with_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let rest = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{rest}")
}

/// `tracepost migrate --grant-read-to ROLE` (`schema::grant_read`): an existing role gets read access and
/// nothing more (it reads the stored blocks, a write through it is refused), granting twice is harmless, a
/// role name needing quotes names itself, and a role that does not exist is refused with its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_grants_the_read_only_role_read_access_and_nothing_more() {
    let database = TestDatabase::create("grant_read").await;
    let collector = serve(&database).await;
    let trace = sdk_trace("granted-svc");
    export_grpc(&grpc_endpoint(&collector), &trace).await.expect("stored");

    let role = format!("Tracepost RO {}", std::process::id());
    let quoted = format!("\"{role}\"");
    let admin = database.client().await;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {quoted}; CREATE ROLE {quoted} LOGIN"))
        .await
        .expect("create the role");
    let pool = tracepost_storage::connect_pool(&DatabaseConfig::new(database.url.clone())).expect("pool");
    let missing = tracepost_storage::schema::grant_read(&pool, "no_such_role_here")
        .await
        .expect_err("no such role");
    assert!(
        missing.to_string().contains("\"no_such_role_here\" does not exist"),
        "{missing}"
    );
    for _ in 0..2 {
        tracepost_storage::schema::grant_read(&pool, &role)
            .await
            .expect("granted");
    }

    let url = with_role(&database.url, &role.replace(' ', "%20"));
    let reader = connect(&url).await;
    let spans: i64 = reader
        .query_one("SELECT coalesce(sum(span_count), 0)::int8 FROM span_blocks", &[])
        .await
        .expect("the role reads")
        .get(0);
    assert_eq!(spans, trace.spans.len() as i64);
    let refused = reader
        .batch_execute("DELETE FROM trace_index")
        .await
        .expect_err("no write access");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    drop(reader);
    collector.stop().await.expect("clean shutdown");
    admin
        .batch_execute(&format!("DROP OWNED BY {quoted}; DROP ROLE {quoted}"))
        .await
        .expect("drop the role");
}
