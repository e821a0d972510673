//! What the tests that run the real binary share: a fresh database, the process, and its log.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A fresh database on the private test cluster (or TRACEPOST_TEST_DATABASE_URL's server).
pub async fn fresh_database(test: &str) -> String {
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
    let name = format!("tracepost_test_{test}_{}", std::process::id());
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

/// The running binary; killed if the test ends before it is stopped on purpose.
pub struct Tracepost {
    pub child: Option<std::process::Child>,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Drop for Tracepost {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Tracepost {
    /// Starts `tracepost serve` on loopback ports with `args` added.
    pub fn serve(database_url: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracepost"))
            .args(["serve", "--database-url", database_url])
            .args(["--otlp-grpc-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0"])
            .args(["--query-listen", "127.0.0.1:0", "--tempo-listen", "127.0.0.1:0"])
            .args(args)
            .env("TRACEPOST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracepost");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        Self {
            child: Some(child),
            lines,
        }
    }

    /// Waits for the log line that names the bound addresses and returns the value of `field`
    /// (e.g. `otlp_http`).
    pub async fn ready(&mut self, fields: &[&str]) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                if line.contains("tracepost is ready") {
                    return fields
                        .iter()
                        .map(|field| {
                            let marker = format!("{field}=Some(");
                            let start = line.find(&marker).expect("field in the ready line") + marker.len();
                            let end = start + line[start..].find(')').expect("closing parenthesis");
                            line[start..end].to_owned()
                        })
                        .collect();
                }
            }
            panic!("tracepost exited before it was ready");
        })
        .await
        .expect("ready within a minute")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A value in kB from `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }
}
