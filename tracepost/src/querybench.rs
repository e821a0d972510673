//! `tracepost querybench`: latency of the query API against whatever a collector has stored, as Grafana and
//! the Jaeger UI would query it. Prints p50, p99 and max per query kind, against the targets of issue 10,
//! with how many answers were flagged incomplete (header `tracepost-search-incomplete`).
//!
//! With `--planted` (the `PLANTED` lines of `tracepost loadgen --plant`) it also searches for each planted
//! rare value through the Jaeger API (service + `tags`), api v3 (service + `query.attributes`) and Tempo
//! (TraceQL, with and without a service), and checks that every answer holds exactly the planted trace. Any
//! wrong answer (or error status) is counted, shown, and makes the command fail once every kind has run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// Options of `tracepost querybench`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuerybenchArgs {
    /// Query API base URL.
    #[arg(long, default_value = "http://127.0.0.1:16686")]
    pub url: String,
    /// Tempo API base URL (the rare-value TraceQL searches).
    #[arg(long, default_value = "http://127.0.0.1:3200")]
    pub tempo_url: String,
    /// Requests per query kind (after 10 warm-up requests).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Search window, in minutes back from now (unless --between).
    #[arg(long, default_value_t = 60)]
    pub window_minutes: i64,
    /// Search window `START_NS..END_NS` (Unix nanoseconds), instead of --window-minutes: where the spans are,
    /// as trace IDs are sampled from ten slices of the window.
    #[arg(long, value_name = "START_NS..END_NS")]
    pub between: Option<String>,
    /// The attribute searched for, as `key=value`.
    #[arg(long, default_value = "http.response.status_code=503")]
    pub attribute: String,
    /// File of `PLANTED trace_id=.. service=.. key=.. value=..` lines (`tracepost loadgen --plant`): search for
    /// each planted value and check the answers hold exactly its trace.
    #[arg(long)]
    pub planted: Option<PathBuf>,
}

/// Header an incomplete search answer carries.
const INCOMPLETE_HEADER: &str = "tracepost-search-incomplete";

/// One answer: status, whether it was flagged incomplete, body.
struct Answer {
    status: u16,
    incomplete: bool,
    body: Bytes,
}

/// A planted rare value and the one trace carrying it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planted {
    trace_id: String,
    service: String,
    key: String,
    value: String,
}

/// What one query kind measured.
struct Measured {
    name: String,
    p50: Duration,
    p99: Duration,
    max: Duration,
    target: Duration,
    requests: usize,
    non_empty: usize,
    incomplete: usize,
    wrong: usize,
}

struct Bench {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
    tempo: String,
    measured: Vec<Measured>,
}

/// A check of one answer's body: `Err` says what is wrong with it.
type Check<'a> = &'a dyn Fn(usize, &serde_json::Value) -> Result<(), String>;

impl Bench {
    async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        let uri: http::Uri = url.parse().context("request url")?;
        let response = self.client.get(uri).await.with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let incomplete = response
            .headers()
            .get(INCOMPLETE_HEADER)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            incomplete,
            body,
        })
    }

    async fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let answer = self.get(&url).await?;
        if answer.status != 200 {
            bail!("GET {url}: {} {}", answer.status, String::from_utf8_lossy(&answer.body));
        }
        Ok(serde_json::from_slice(&answer.body)?)
    }

    /// Times `requests` GETs of the URLs `url_for(i)` yields, after 10 warm-up requests. Every answer (warm-up
    /// ones too) must be 200 and pass `check` when there is one; those that do not are counted and the first
    /// few shown.
    async fn measure(
        &mut self,
        name: &str,
        target_ms: u64,
        requests: usize,
        url_for: impl Fn(usize) -> String,
        check: Option<Check<'_>>,
    ) -> anyhow::Result<()> {
        let mut latencies = Vec::with_capacity(requests);
        let (mut non_empty, mut incomplete, mut wrong) = (0, 0, 0);
        for index in 0..requests + 10 {
            let url = url_for(index);
            let started = Instant::now();
            let answer = self.get(&url).await?;
            let elapsed = started.elapsed();
            let verdict = if answer.status != 200 {
                Err(format!("status {}", answer.status))
            } else if let Some(check) = check {
                serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .map_err(|error| format!("not JSON: {error}"))
                    .and_then(|body| check(index, &body))
            } else {
                Ok(())
            };
            if let Err(problem) = &verdict {
                wrong += 1;
                if wrong <= 3 {
                    let text = String::from_utf8_lossy(&answer.body);
                    let excerpt: String = text.chars().take(300).collect();
                    eprintln!(
                        "querybench: WRONG ANSWER ({name}): {problem}{}\n  GET {url}\n  {excerpt}",
                        if answer.incomplete { " (flagged incomplete)" } else { "" }
                    );
                }
            }
            if index < 10 {
                continue;
            }
            latencies.push(elapsed);
            non_empty += usize::from(answer.body.len() > 64);
            incomplete += usize::from(answer.incomplete);
        }
        latencies.sort();
        let percentile = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        let measured = Measured {
            name: name.to_owned(),
            p50: percentile(0.50),
            p99: percentile(0.99),
            max: *latencies.last().unwrap_or(&Duration::ZERO),
            target: Duration::from_millis(target_ms),
            requests,
            non_empty,
            incomplete,
            wrong,
        };
        print_measured(&measured);
        self.measured.push(measured);
        Ok(())
    }
}

fn print_measured(measured: &Measured) {
    let verdict = if measured.wrong > 0 {
        "WRONG"
    } else if measured.p99 <= measured.target {
        "ok"
    } else {
        "MISSED"
    };
    println!(
        "{:<46} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  target p99 <= {:>3} ms {:<6}  non-empty {}/{}  incomplete {}  wrong {}",
        measured.name,
        millis(measured.p50),
        millis(measured.p99),
        millis(measured.max),
        measured.target.as_millis(),
        verdict,
        measured.non_empty,
        measured.requests,
        measured.incomplete,
        measured.wrong,
    );
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Unix nanoseconds as RFC 3339 in UTC with nanoseconds, as api v3 takes them.
fn rfc3339(unix_nanos: i64) -> String {
    let days = unix_nanos.div_euclid(tracepost_storage::time::NANOS_PER_DAY);
    let of_day = unix_nanos.rem_euclid(tracepost_storage::time::NANOS_PER_DAY);
    let (year, month, day) = tracepost_storage::time::civil_from_days(days as i32);
    let seconds = of_day / 1_000_000_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        of_day % 1_000_000_000
    )
}

/// A trace ID compared as the APIs write them: lower-case hex without leading zeros (Tempo trims them).
fn normalized_id(id: &str) -> String {
    let id = id.trim_start_matches('0').to_ascii_lowercase();
    if id.is_empty() {
        "0".into()
    } else {
        id
    }
}

/// The planted values of `PLANTED key=value ...` lines; other lines are ignored.
fn parse_planted(text: &str) -> anyhow::Result<Vec<Planted>> {
    let mut planted = Vec::new();
    for line in text.lines() {
        let Some(fields) = line.trim().strip_prefix("PLANTED ") else {
            continue;
        };
        let field = |name: &str| {
            fields
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
                .with_context(|| format!("PLANTED line without {name}: {line}"))
        };
        planted.push(Planted {
            trace_id: field("trace_id")?,
            service: field("service")?,
            key: field("key")?,
            value: field("value")?,
        });
    }
    Ok(planted)
}

/// The distinct trace IDs of an answer's `path` (`data[].traceID` and the like), normalized.
fn trace_ids_in(body: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    let mut ids: Vec<String> = body[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item[field].as_str())
        .map(normalized_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The distinct trace IDs of an api v3 answer's spans, normalized.
fn v3_trace_ids(body: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = body["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|resource| resource["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|scope| scope["spans"].as_array().into_iter().flatten())
        .filter_map(|span| span["traceId"].as_str())
        .map(normalized_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `Ok` when `found` is exactly the planted trace.
fn exactly(found: &[String], planted: &Planted) -> Result<(), String> {
    if found.len() == 1 && found[0] == normalized_id(&planted.trace_id) {
        Ok(())
    } else {
        Err(format!(
            "expected exactly trace {} for {}={}, got {} trace(s): {}",
            planted.trace_id,
            planted.key,
            planted.value,
            found.len(),
            found.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Runs the query benchmark.
pub async fn run(args: QuerybenchArgs) -> anyhow::Result<()> {
    let mut bench = Bench {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        base: args.url.trim_end_matches('/').to_owned(),
        tempo: args.tempo_url.trim_end_matches('/').to_owned(),
        measured: Vec::new(),
    };
    let services: Vec<String> = serde_json::from_value(bench.json("/api/services").await?["data"].take())?;
    if services.is_empty() {
        bail!("no services stored: load spans first (tracepost loadgen)");
    }
    let (start_ns, end_ns) = match &args.between {
        Some(text) => {
            let (start, end) = text.split_once("..").context("--between is START_NS..END_NS")?;
            (start.trim().parse::<i64>()?, end.trim().parse::<i64>()?)
        }
        None => {
            let now = tracepost_storage::time::now_unix_nanos();
            (now - args.window_minutes * 60_000_000_000, now + 60_000_000_000)
        }
    };
    if start_ns >= end_ns {
        bail!("the search window is empty");
    }
    let window = format!("start={}&end={}", start_ns / 1000, (end_ns + 999) / 1000);
    let planted = match &args.planted {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let planted = parse_planted(&text)?;
            if planted.is_empty() {
                bail!("{} holds no PLANTED line", path.display());
            }
            planted
        }
        None => Vec::new(),
    };
    // Trace IDs from searches across the whole window (ten slices, every service), not only the newest
    // traces, and the planted ones.
    let mut operations = Vec::new();
    let mut trace_ids: Vec<String> = planted.iter().map(|planted| planted.trace_id.clone()).collect();
    for service in &services {
        let names: Vec<String> = serde_json::from_value(
            bench
                .json(&format!("/api/services/{}/operations", encode(service)))
                .await?["data"]
                .take(),
        )?;
        operations.extend(names.into_iter().take(50).map(|name| (service.clone(), name)));
        for slice in 0..10 {
            let slice_end = end_ns - (end_ns - start_ns) / 10 * slice;
            let found = bench
                .json(&format!(
                    "/api/traces?service={}&limit=10&start={}&end={}",
                    encode(service),
                    start_ns / 1000,
                    slice_end / 1000
                ))
                .await?;
            for trace in found["data"].as_array().into_iter().flatten() {
                if let Some(id) = trace["traceID"].as_str() {
                    trace_ids.push(id.to_owned());
                }
            }
        }
    }
    trace_ids.sort();
    trace_ids.dedup();
    if trace_ids.is_empty() || operations.is_empty() {
        bail!("no traces found in the search window");
    }
    let (key, value) = args.attribute.split_once('=').context("--attribute is key=value")?;
    let tags = encode(&format!("{{\"{key}\":\"{value}\"}}"));
    println!(
        "query benchmark: {} services, {} operations sampled, {} trace IDs sampled, {} planted values, {} requests each, window {} .. {}",
        services.len(),
        operations.len(),
        trace_ids.len(),
        planted.len(),
        args.requests,
        rfc3339(start_ns),
        rfc3339(end_ns)
    );
    let requests = args.requests;
    let base = bench.base.clone();
    let tempo = bench.tempo.clone();
    let pick = |index: usize, length: usize| (index.wrapping_mul(2_654_435_761)) % length;
    bench
        .measure(
            "trace by ID (no time range)",
            10,
            requests,
            |i| format!("{base}/api/traces/{}", trace_ids[pick(i, trace_ids.len())]),
            None,
        )
        .await?;
    bench
        .measure(
            "trace by ID (with start/end)",
            10,
            requests,
            |i| format!("{base}/api/traces/{}?{window}", trace_ids[pick(i, trace_ids.len())]),
            None,
        )
        .await?;
    bench
        .measure("services", 5, requests, |_| format!("{base}/api/services"), None)
        .await?;
    bench
        .measure(
            "operations",
            5,
            requests,
            |i| {
                format!(
                    "{base}/api/services/{}/operations",
                    encode(&services[i % services.len()])
                )
            },
            None,
        )
        .await?;
    bench
        .measure(
            "search by service (limit 20)",
            30,
            requests,
            |i| {
                format!(
                    "{base}/api/traces?service={}&limit=20&{window}",
                    encode(&services[i % services.len()])
                )
            },
            None,
        )
        .await?;
    bench
        .measure(
            "search by service + operation + duration",
            30,
            requests,
            |i| {
                let (service, operation) = &operations[pick(i, operations.len())];
                format!(
                    "{base}/api/traces?service={}&operation={}&minDuration=1ms&limit=20&{window}",
                    encode(service),
                    encode(operation)
                )
            },
            None,
        )
        .await?;
    bench
        .measure(
            &format!("search by attribute {key}={value}"),
            100,
            requests,
            |i| {
                format!(
                    "{base}/api/traces?service={}&tags={tags}&limit=20&{window}",
                    encode(&services[i % services.len()])
                )
            },
            None,
        )
        .await?;
    if !planted.is_empty() {
        let nth = |i: usize| &planted[i % planted.len()];
        let tags_of = |planted: &Planted| encode(&format!("{{\"{}\":\"{}\"}}", planted.key, planted.value));
        let traceql = |planted: &Planted, with_service: bool| {
            let span = format!("span.{} = \"{}\"", planted.key, planted.value);
            let query = if with_service {
                format!("{{ resource.service.name = \"{}\" && {span} }}", planted.service)
            } else {
                format!("{{ {span} }}")
            };
            format!(
                "{tempo}/api/search?q={}&start={}&end={}",
                encode(&query),
                start_ns.div_euclid(1_000_000_000),
                (end_ns + 999_999_999).div_euclid(1_000_000_000)
            )
        };
        bench
            .measure(
                "rare value: Jaeger v1 service + tags",
                100,
                requests,
                |i| {
                    let planted = nth(i);
                    format!(
                        "{base}/api/traces?service={}&tags={}&limit=20&{window}",
                        encode(&planted.service),
                        tags_of(planted)
                    )
                },
                Some(&|i, body| exactly(&trace_ids_in(body, "data", "traceID"), nth(i))),
            )
            .await?;
        bench
            .measure(
                "rare value: api v3 service + attributes",
                100,
                requests,
                |i| {
                    let planted = nth(i);
                    format!(
                        "{base}/api/v3/traces?query.service_name={}&query.attributes={}&query.start_time_min={}&query.start_time_max={}",
                        encode(&planted.service),
                        tags_of(planted),
                        encode(&rfc3339(start_ns)),
                        encode(&rfc3339(end_ns))
                    )
                },
                Some(&|i, body| exactly(&v3_trace_ids(body), nth(i))),
            )
            .await?;
        bench
            .measure(
                "rare value: Tempo { span.k = v }",
                100,
                requests,
                |i| traceql(nth(i), false),
                Some(&|i, body| exactly(&trace_ids_in(body, "traces", "traceID"), nth(i))),
            )
            .await?;
        bench
            .measure(
                "rare value: Tempo { service && span.k = v }",
                100,
                requests,
                |i| traceql(nth(i), true),
                Some(&|i, body| exactly(&trace_ids_in(body, "traces", "traceID"), nth(i))),
            )
            .await?;
    }
    let missed: Vec<&str> = bench
        .measured
        .iter()
        .filter(|measured| measured.p99 > measured.target)
        .map(|measured| measured.name.as_str())
        .collect();
    let wrong: Vec<String> = bench
        .measured
        .iter()
        .filter(|measured| measured.wrong > 0)
        .map(|measured| format!("{} ({} of {})", measured.name, measured.wrong, measured.requests + 10))
        .collect();
    println!(
        "targets missed: {}",
        if missed.is_empty() {
            "none".to_owned()
        } else {
            missed.join("; ")
        }
    );
    if !wrong.is_empty() {
        bail!("wrong answers: {}", wrong.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_300_000_123_456_789), "2026-11-21T22:26:40.123456789Z");
    }

    #[test]
    fn planted_lines_are_parsed_and_answers_checked() {
        let planted = parse_planted(
            "loadgen summary\nPLANTED trace_id=00ab service=grafana key=order.id value=rare-1 start_ns=5\n",
        )
        .unwrap();
        assert_eq!(
            planted,
            vec![Planted {
                trace_id: "00ab".into(),
                service: "grafana".into(),
                key: "order.id".into(),
                value: "rare-1".into(),
            }]
        );
        let tempo = serde_json::json!({ "traces": [{ "traceID": "ab" }] });
        assert!(exactly(&trace_ids_in(&tempo, "traces", "traceID"), &planted[0]).is_ok());
        let two = serde_json::json!({ "data": [{ "traceID": "00ab" }, { "traceID": "cd" }] });
        assert!(exactly(&trace_ids_in(&two, "data", "traceID"), &planted[0]).is_err());
        let v3 = serde_json::json!({ "result": { "resourceSpans": [{ "scopeSpans": [{ "spans": [
            { "traceId": "000000000000000000000000000000ab" }, { "traceId": "000000000000000000000000000000ab" }
        ] }] }] } });
        assert!(exactly(&v3_trace_ids(&v3), &planted[0]).is_ok());
        assert!(exactly(&[], &planted[0]).is_err());
    }
}
