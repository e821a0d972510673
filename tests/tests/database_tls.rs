//! A platform engineer points tracepost at CloudNativePG, whose servers accept TLS 1.3 only, with the `uri`
//! CloudNativePG generates (no sslmode) or with verification against the cluster's CA.

mod support;

use std::time::Duration;

use support::*;
use tracepost::Role;
use tracepost_storage::{connect_pool, DatabaseConfig};

/// A fresh database on the private TLS 1.3-only cluster, created over TLS by tracepost's own pool.
async fn tls_database(test: &str) -> (String, u16) {
    let server = private_cluster("tls", true);
    let port: u16 = server
        .split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let pool = connect_pool(&DatabaseConfig::new(server.clone())).expect("pool");
    let name = format!("tracepost_test_{test}_{}", std::process::id());
    pool.query_text(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("a TLS connection with sslmode=require");
    pool.query_text(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    (name, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_only_server_is_reached_encrypted_with_sslmode_prefer_and_require() {
    for mode in ["", "?sslmode=prefer", "?sslmode=require"] {
        let (name, port) = tls_database(&format!("tls_mode{}", mode.len())).await;
        let database = TestDatabase {
            name: name.clone(),
            url: format!("postgres://postgres@127.0.0.1:{port}/{name}{mode}"),
        };
        let app = serve(&database).await;
        let trace = sdk_trace("checkout");
        export_grpc(&grpc_endpoint(&app), &trace)
            .await
            .expect("export over a TLS database connection");
        let (status, body) = get_json(&query_url(&app, &format!("/api/traces/{}", trace.trace_id()))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(2));

        let pool = connect_pool(&DatabaseConfig::new(database.url.clone())).expect("pool");
        // Every connection of tracepost's to the database: encrypted, and with TLS 1.3.
        let summary = pool
            .query_text(&format!(
                "SELECT count(*) || ' ' || bool_and(s.ssl) || ' ' || string_agg(DISTINCT s.version, ',')
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'tracepost' AND a.datname = '{name}'"
            ))
            .await
            .expect("pg_stat_ssl")
            .expect("one row");
        let fields: Vec<&str> = summary.split(' ').collect();
        assert!(
            fields[0].parse::<u32>().expect("count") > 0,
            "tracepost's connections are visible"
        );
        assert_eq!(fields[1], "true", "sslmode {mode:?}: connection not encrypted");
        assert_eq!(fields[2], "TLSv1.3");
        app.stop().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_verifies_the_server_certificate() {
    let (name, port) = tls_database("tls_ca").await;
    let mut trusted = DatabaseConfig::new(format!(
        "postgres://postgres@localhost:{port}/{name}?sslmode=verify-full"
    ));
    trusted.ca_file = Some(private_cluster_ca("tls").into());
    let pool = connect_pool(&trusted).expect("pool");
    let migrated = tracepost::app::migrate(&pool, Duration::from_secs(5))
        .await
        .expect("verified connection");
    let all: Vec<i32> = tracepost_storage::schema::MIGRATIONS
        .iter()
        .map(|migration| migration.version)
        .collect();
    assert_eq!(migrated, all);

    // Another CA does not vouch for this server: no connection, with a reason.
    let mut untrusted = trusted.clone();
    let other_ca = std::env::temp_dir().join(format!("tracepost-other-ca-{}.pem", std::process::id()));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=someone else",
        ])
        .args(["-keyout", "/dev/null", "-out"])
        .arg(&other_ca)
        .output()
        .expect("openssl");
    assert!(status.status.success());
    untrusted.ca_file = Some(other_ca);
    untrusted.connect_timeout = Duration::from_secs(2);
    let pool = connect_pool(&untrusted).expect("pool");
    let error = pool
        .query_text("SELECT 1")
        .await
        .expect_err("unverifiable server refused");
    let reason = format!("{error:?}");
    assert!(
        reason.contains("certificate") || reason.contains("Certificate"),
        "{reason}"
    );

    // And the role itself reports it: not ready.
    let mut config = config(&TestDatabase {
        name,
        url: trusted.url.clone(),
    });
    config.database = trusted;
    let app = tracepost::start(Role::Query, config).await.expect("query role");
    assert_eq!(get_text(&query_url(&app, "/readyz")).await.0, 200);
    app.stop().await.expect("clean shutdown");
}
