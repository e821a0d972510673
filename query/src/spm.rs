//! Jaeger SPM (the Jaeger UI's Monitor tab): `/api/metrics/{calls,errors,latencies,minstep}`.
//!
//! Answered from the RED metrics tracepost's collectors expose, as stored by VictoriaMetrics (or any
//! Prometheus-compatible API) at `--metrics-query-url`: the same PromQL Jaeger's Prometheus metrics store
//! runs, over `traces_span_metrics_calls_total` and `traces_span_metrics_duration_seconds_bucket`, with
//! latencies converted to milliseconds as the UI expects. Without a metrics query URL the routes answer 501,
//! as Jaeger does when no metrics storage is configured.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tracepost_storage::time::{civil_from_days, now_unix_nanos};

use crate::api::{PrettyPrint, QueryError, V1Envelope, V1Error};
use crate::params::{parse_bool, parse_int, Params};

const CALLS: &str = "traces_span_metrics_calls_total";
const DURATION_BUCKETS: &str = "traces_span_metrics_duration_seconds_bucket";
const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Spm {
    base: Option<String>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// The SPM routes; `metrics_query_url` is the base URL of a Prometheus-compatible query API.
pub fn spm_router(metrics_query_url: Option<String>) -> Router {
    let spm = Spm {
        base: metrics_query_url.map(|url| url.trim_end_matches('/').to_owned()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    Router::new()
        .route("/api/metrics/minstep", get(min_step))
        .route("/api/metrics/{metric}", get(metric))
        .with_state(Arc::new(spm))
}

fn disabled() -> QueryError {
    QueryError::NotImplemented("metrics querying is currently disabled".to_owned())
}

async fn min_step(State(spm): State<Arc<Spm>>, pretty: PrettyPrint) -> Result<Response, V1Error> {
    if spm.base.is_none() {
        return Err(disabled().into());
    }
    // Jaeger's Prometheus metrics store answers 1 ms: the step is only bounded by the query API.
    Ok(pretty.json(V1Envelope::data(1)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Calls,
    Errors,
    Latencies,
}

/// What the Monitor tab asks for.
#[derive(Debug, PartialEq)]
struct MetricQuery {
    metric: Metric,
    services: Vec<String>,
    group_by_operation: bool,
    end_ms: i64,
    lookback_ms: i64,
    step_ms: i64,
    rate_per_ms: i64,
    span_kinds: Vec<&'static str>,
    quantile: f64,
}

fn bad(message: impl Into<String>) -> QueryError {
    QueryError::BadRequest(message.into())
}

fn int_ms(params: &Params, name: &str, default: i64) -> Result<i64, QueryError> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    let value = parse_int(text).map_err(|error| bad(format!("unable to parse param '{name}': {error}")))?;
    if value <= 0 && name != "endTs" {
        return Err(bad(format!("{name} must be greater than 0")));
    }
    Ok(value)
}

fn parse_query(metric: &str, params: &Params) -> Result<MetricQuery, QueryError> {
    let metric = match metric {
        "calls" => Metric::Calls,
        "errors" => Metric::Errors,
        "latencies" => Metric::Latencies,
        other => {
            return Err(bad(format!(
                "unknown metric {other:?}: use calls, errors, latencies or minstep"
            )))
        }
    };
    let services: Vec<String> = params.all("service").map(str::to_owned).collect();
    if services.is_empty() {
        return Err(bad("please provide at least one service name"));
    }
    let group_by_operation = params
        .get("groupByOperation")
        .map(parse_bool)
        .transpose()
        .map_err(|error| bad(format!("unable to parse param 'groupByOperation': {error}")))?
        .unwrap_or(false);
    let mut span_kinds = Vec::new();
    for kind in params.all("spanKind") {
        span_kinds.push(match kind.to_ascii_lowercase().as_str() {
            "unspecified" => "SPAN_KIND_UNSPECIFIED",
            "internal" => "SPAN_KIND_INTERNAL",
            "server" => "SPAN_KIND_SERVER",
            "client" => "SPAN_KIND_CLIENT",
            "producer" => "SPAN_KIND_PRODUCER",
            "consumer" => "SPAN_KIND_CONSUMER",
            _ => return Err(bad(format!("unsupported spanKind {kind:?}"))),
        });
    }
    if span_kinds.is_empty() {
        span_kinds.push("SPAN_KIND_SERVER");
    }
    let quantile = match (metric, params.get("quantile")) {
        (Metric::Latencies, None) => return Err(bad("please provide a quantile between (0, 1]")),
        (Metric::Latencies, Some(text)) => match text.parse::<f64>() {
            Ok(quantile) if quantile > 0.0 && quantile <= 1.0 => quantile,
            _ => return Err(bad(format!("quantile must be between (0, 1], got {text:?}"))),
        },
        _ => 0.0,
    };
    Ok(MetricQuery {
        metric,
        services,
        group_by_operation,
        end_ms: int_ms(params, "endTs", now_unix_nanos() / 1_000_000)?,
        lookback_ms: int_ms(params, "lookback", 3_600_000)?,
        step_ms: int_ms(params, "step", 5_000)?,
        rate_per_ms: int_ms(params, "ratePer", 600_000)?,
        span_kinds,
        quantile,
    })
}

/// A PromQL string literal of a regular expression matching exactly one of `values`.
fn alternatives(values: &[impl AsRef<str>]) -> String {
    let mut regex = String::new();
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            regex.push('|');
        }
        for ch in value.as_ref().chars() {
            if "\\.+*?()|[]{}^$".contains(ch) {
                regex.push('\\');
            }
            regex.push(ch);
        }
    }
    let mut literal = String::with_capacity(regex.len() + 2);
    literal.push('"');
    for ch in regex.chars() {
        match ch {
            '\\' => literal.push_str("\\\\"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            ch => literal.push(ch),
        }
    }
    literal.push('"');
    literal
}

impl MetricQuery {
    /// The PromQL Jaeger's Prometheus metrics store would run.
    fn promql(&self) -> String {
        let filter = format!(
            "service_name=~{}, span_kind=~{}",
            alternatives(&self.services),
            alternatives(&self.span_kinds)
        );
        let group = if self.group_by_operation {
            "service_name, span_name"
        } else {
            "service_name"
        };
        let window = format!("{}ms", self.rate_per_ms);
        let calls = |extra: &str| format!("sum(rate({CALLS}{{{filter}{extra}}}[{window}])) by ({group})");
        match self.metric {
            Metric::Calls => calls(""),
            Metric::Errors => {
                let all = calls("");
                format!(
                    "({errors} / {all}) or ({all} * 0)",
                    errors = calls(", status_code=\"STATUS_CODE_ERROR\"")
                )
            }
            Metric::Latencies => format!(
                "histogram_quantile({}, sum(rate({DURATION_BUCKETS}{{{filter}}}[{window}])) by ({group}, le))",
                self.quantile
            ),
        }
    }

    fn family(&self) -> (String, String) {
        let (scope, grouping) = if self.group_by_operation {
            ("service_operation", "service & operation")
        } else {
            ("service", "service")
        };
        match self.metric {
            Metric::Calls => (
                format!("{scope}_call_rate"),
                format!("calls/sec, grouped by {grouping}"),
            ),
            Metric::Errors => (
                format!("{scope}_error_rate"),
                format!("error rate, computed as a fraction of errors/sec over calls/sec, grouped by {grouping}"),
            ),
            Metric::Latencies => (
                format!("{scope}_latencies"),
                format!("{}th quantile latency, grouped by {grouping}", self.quantile),
            ),
        }
    }
}

/// Jaeger's `MetricFamily` as JSON.
#[derive(Debug, Serialize, PartialEq)]
struct MetricFamily {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    help: String,
    metrics: Vec<JaegerMetric>,
}

#[derive(Debug, Serialize, PartialEq)]
struct JaegerMetric {
    labels: Vec<Label>,
    #[serde(rename = "metricPoints")]
    metric_points: Vec<MetricPoint>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Label {
    name: &'static str,
    value: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct MetricPoint {
    #[serde(rename = "gaugeValue")]
    gauge_value: GaugeValue,
    timestamp: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct GaugeValue {
    #[serde(rename = "doubleValue")]
    double_value: f64,
}

/// The parts of a Prometheus `query_range` answer used here.
#[derive(Debug, Deserialize)]
struct RangeResponse {
    status: String,
    #[serde(default)]
    data: Option<RangeData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RangeData {
    result: Vec<RangeSeries>,
}

#[derive(Debug, Deserialize)]
struct RangeSeries {
    metric: std::collections::BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// `2021-06-03T09:12:06Z` (with fractional seconds only when there are any, as protobuf's JSON writes them).
fn rfc3339(seconds: f64) -> String {
    let millis = (seconds * 1000.0).round() as i64;
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400) as i32);
    let of_day = secs.rem_euclid(86_400);
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let fraction = if ms == 0 { String::new() } else { format!(".{ms:03}") };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

fn to_family(query: &MetricQuery, response: RangeResponse) -> Result<MetricFamily, QueryError> {
    if response.status != "success" {
        return Err(QueryError::Backend(format!(
            "metrics query failed: {}",
            response.error.unwrap_or(response.status)
        )));
    }
    let scale = if query.metric == Metric::Latencies { 1000.0 } else { 1.0 };
    let mut metrics: Vec<JaegerMetric> = response
        .data
        .map(|data| data.result)
        .unwrap_or_default()
        .into_iter()
        .map(|series| {
            let mut labels = vec![Label {
                name: "service_name",
                value: series.metric.get("service_name").cloned().unwrap_or_default(),
            }];
            if query.group_by_operation {
                labels.push(Label {
                    name: "operation",
                    value: series.metric.get("span_name").cloned().unwrap_or_default(),
                });
            }
            let metric_points = series
                .values
                .into_iter()
                .map(|(at, value)| {
                    let value = value.parse::<f64>().unwrap_or(0.0) * scale;
                    MetricPoint {
                        gauge_value: GaugeValue {
                            double_value: if value.is_finite() { value } else { 0.0 },
                        },
                        timestamp: rfc3339(at),
                    }
                })
                .collect();
            JaegerMetric { labels, metric_points }
        })
        .collect();
    metrics.sort_by(|a, b| {
        let key = |metric: &JaegerMetric| {
            metric
                .labels
                .iter()
                .map(|label| label.value.clone())
                .collect::<Vec<_>>()
        };
        key(a).cmp(&key(b))
    });
    let (name, help) = query.family();
    Ok(MetricFamily {
        name,
        kind: "GAUGE",
        help,
        metrics,
    })
}

fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn metric(
    State(spm): State<Arc<Spm>>,
    pretty: PrettyPrint,
    Path(metric): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, V1Error> {
    let Some(base) = &spm.base else {
        return Err(disabled().into());
    };
    let Query(pairs) = query.map_err(|rejection| bad(rejection.body_text()))?;
    let query = parse_query(&metric, &Params::new(pairs))?;
    let seconds = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    let url = format!(
        "{base}/api/v1/query_range?query={}&start={}&end={}&step={}",
        form_encode(&query.promql()),
        seconds(query.end_ms - query.lookback_ms),
        seconds(query.end_ms),
        seconds(query.step_ms),
    );
    let backend = |error: String| QueryError::Backend(format!("metrics query failed: {error}"));
    let request = http::Request::get(url)
        .body(Empty::new())
        .map_err(|error| backend(error.to_string()))?;
    let response = tokio::time::timeout(BACKEND_TIMEOUT, spm.client.request(request))
        .await
        .map_err(|_| backend("timed out".to_owned()))?
        .map_err(|error| backend(error.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| backend(error.to_string()))?
        .to_bytes();
    let parsed: RangeResponse = serde_json::from_slice(&body).map_err(|_| {
        backend(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]).trim()
        ))
    })?;
    Ok(pretty.json(to_family(&query, parsed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(metric: &str, pairs: &[(&str, &str)]) -> Result<MetricQuery, String> {
        parse_query(metric, &Params::from_pairs(pairs)).map_err(|error| error.to_string())
    }

    #[test]
    fn queries_are_the_promql_jaeger_runs() {
        let calls = query("calls", &[("service", "web"), ("service", "api.v2"), ("endTs", "1000")]).unwrap();
        assert_eq!(
            calls.promql(),
            r#"sum(rate(traces_span_metrics_calls_total{service_name=~"web|api\\.v2", span_kind=~"SPAN_KIND_SERVER"}[600000ms])) by (service_name)"#
        );
        let latencies = query(
            "latencies",
            &[
                ("service", "web"),
                ("quantile", "0.95"),
                ("groupByOperation", "true"),
                ("spanKind", "client"),
                ("ratePer", "60000"),
            ],
        )
        .unwrap();
        assert_eq!(
            latencies.promql(),
            r#"histogram_quantile(0.95, sum(rate(traces_span_metrics_duration_seconds_bucket{service_name=~"web", span_kind=~"SPAN_KIND_CLIENT"}[60000ms])) by (service_name, span_name, le))"#
        );
        assert_eq!(latencies.family().0, "service_operation_latencies");
        let errors = query("errors", &[("service", "web")]).unwrap();
        assert!(errors.promql().starts_with(
            r#"(sum(rate(traces_span_metrics_calls_total{service_name=~"web", span_kind=~"SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR"}[600000ms])) by (service_name) / "#
        ));
        assert!(errors.promql().ends_with(" * 0)"));
    }

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        assert_eq!(
            query("calls", &[]).unwrap_err(),
            "please provide at least one service name"
        );
        assert_eq!(
            query("latencies", &[("service", "web")]).unwrap_err(),
            "please provide a quantile between (0, 1]"
        );
        assert!(query("latencies", &[("service", "web"), ("quantile", "1.5")]).is_err());
        assert!(query("calls", &[("service", "web"), ("spanKind", "sideways")])
            .unwrap_err()
            .contains("spanKind"));
        assert!(query("calls", &[("service", "web"), ("step", "x")])
            .unwrap_err()
            .starts_with("unable to parse param 'step'"));
        assert!(query("throughput", &[("service", "web")]).is_err());
    }

    #[test]
    fn a_range_answer_becomes_a_jaeger_metric_family() {
        let query = query("latencies", &[("service", "web"), ("quantile", "0.5")]).unwrap();
        let response: RangeResponse = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"service_name":"web"},"values":[[1622711526,"0.0125"],[1622711531.5,"NaN"]]}]}}"#,
        )
        .unwrap();
        let family = serde_json::to_value(to_family(&query, response).unwrap()).unwrap();
        assert_eq!(
            family,
            serde_json::json!({
                "name": "service_latencies",
                "type": "GAUGE",
                "help": "0.5th quantile latency, grouped by service",
                "metrics": [{
                    "labels": [{"name": "service_name", "value": "web"}],
                    "metricPoints": [
                        {"gaugeValue": {"doubleValue": 12.5}, "timestamp": "2021-06-03T09:12:06Z"},
                        {"gaugeValue": {"doubleValue": 0.0}, "timestamp": "2021-06-03T09:12:11.500Z"}
                    ]
                }]
            })
        );
    }
}
