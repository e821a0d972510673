//! A real single-node VictoriaMetrics (Debian's `victoria-metrics` package) on a free loopback port, with
//! its own data directory, optionally scraping one target every second. Stopped and removed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct VictoriaMetrics {
    pub url: String,
    child: Child,
    directory: PathBuf,
}

/// The binary: `TRACEPOST_TEST_VICTORIA_METRICS`, else Debian's path.
fn binary() -> String {
    std::env::var("TRACEPOST_TEST_VICTORIA_METRICS").unwrap_or_else(|_| "/usr/bin/victoria-metrics".to_owned())
}

/// A loopback address nothing listens on right now.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics on `address`, scraping `http://{scrape}/metrics` every second if given, and
    /// returns once it answers `/health`.
    pub async fn start(address: SocketAddr, scrape: Option<SocketAddr>) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let directory = std::env::temp_dir().join(format!(
            "tracepost-vm-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("vm directory");
        let mut command = Command::new(binary());
        command
            .arg(format!("-httpListenAddr={address}"))
            .arg(format!("-storageDataPath={}", directory.join("data").display()))
            .arg("-retentionPeriod=1d")
            .arg("-search.latencyOffset=1s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(target) = scrape {
            let config = directory.join("scrape.yml");
            std::fs::write(
                &config,
                format!(
                    "scrape_configs:\n  - job_name: tracepost\n    scrape_interval: 1s\n    \
                     static_configs:\n      - targets: ['{target}']\n"
                ),
            )
            .expect("scrape config");
            command.arg(format!("-promscrape.config={}", config.display()));
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start {} ({error}): install Debian's victoria-metrics package (scripts/test.sh does)",
                binary()
            )
        });
        let vm = Self {
            url: format!("http://{address}"),
            child,
            directory,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/health", vm.url)).await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "VictoriaMetrics did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        vm
    }

    /// The result vector of an instant query.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("vm query");
        let body: serde_json::Value = response.json().await.expect("vm json");
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that yields one series (`None` when it yields none).
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        assert!(result.len() <= 1, "{promql} yields {} series: {result:?}", result.len());
        result
            .first()
            .map(|series| series["value"][1].as_str().expect("value").parse().expect("number"))
    }

    /// Polls until `promql` yields `expected` (samples arrive with the next scrape or push).
    pub async fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = reqwest::get(format!("{}/internal/force_flush", self.url)).await;
            let value = self.value(promql).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} is {value:?}, expected {expected} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
