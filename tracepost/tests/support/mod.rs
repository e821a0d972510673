//! What the tests that run the real binary share: a fresh database, the process, its log and its addresses.
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

/// Kills the child if the test fails before it is stopped on purpose.
pub struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The running binary, its log lines, and the addresses from its readiness line.
pub struct Running {
    pub child: KillOnDrop,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Lines logged before the readiness line, not yet taken by [`Running::drain_lines`].
    before_ready: Vec<String>,
    ready_line: String,
}

impl Running {
    /// The address the readiness line gives for `field` (`otlp_http`, `query`, ...).
    pub fn address(&self, field: &str) -> String {
        let key = format!("{field}=Some(");
        let start = self
            .ready_line
            .find(&key)
            .unwrap_or_else(|| panic!("{field} in {}", self.ready_line))
            + key.len();
        let end = start + self.ready_line[start..].find(')').expect("closing parenthesis");
        self.ready_line[start..end].to_owned()
    }

    /// A value in kB from `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let pid = self.child.0.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }

    /// SIGKILL: the process ends at once, as in a crash or an OOM kill.
    pub fn kill9(&mut self) {
        let mut process = self.child.0.take().expect("child");
        process.kill().expect("kill -9");
        process.wait().expect("reaped");
    }

    /// Log lines received so far (from the start, the first time), except the readiness line.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.before_ready);
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        lines
    }

    pub fn sigterm(&mut self) -> std::process::Child {
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
pub async fn start_serve(database_url: &str, args: &[&str]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_tracepost"))
        .args(["serve", "--database-url", database_url])
        .args(["--otlp-grpc-listen", "127.0.0.1:0", "--otlp-http-listen", "127.0.0.1:0"])
        .args(["--query-listen", "127.0.0.1:0", "--tempo-listen", "127.0.0.1:0"])
        .args(args)
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
    let mut before_ready = Vec::new();
    let ready_line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if line.contains("tracepost is ready") {
                return line;
            }
            before_ready.push(line);
        }
        panic!("tracepost exited before it was ready");
    })
    .await
    .expect("ready within a minute");
    Running {
        child,
        lines,
        before_ready,
        ready_line,
    }
}

fn pg_cluster(command: &str, name: &str) -> String {
    let script = format!("{}/../scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(&script)
        .args([command, name])
        .output()
        .expect("run pg-cluster.sh");
    assert!(
        output.status.success(),
        "pg-cluster.sh {command} {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

/// A PostgreSQL cluster of the test's own, which it may stop and start (scripts/pg-cluster.sh); destroyed
/// when dropped.
pub struct PrivateCluster {
    name: String,
    pub url: String,
}

impl PrivateCluster {
    pub fn start(test: &str) -> Self {
        let name = format!("{test}-{}", std::process::id());
        let url = pg_cluster("start", &name);
        Self { name, url }
    }

    /// Stops the server (fast shutdown: connections are closed).
    pub fn stop(&self) {
        pg_cluster("stop", &self.name);
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let url = pg_cluster("start", &self.name);
        assert_eq!(url, self.url, "the cluster came back on another port");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        pg_cluster("destroy", &self.name);
    }
}
