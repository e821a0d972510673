//! The query side as a hostile client and a careless operator would try it: queries that used to crash, poison
//! or exhaust tracepost get an answer that says what was wrong, and tracepost keeps answering everyone else.

mod support;

use support::*;

/// Percent-encodes every byte outside the unreserved set, as a browser or Grafana sends a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A TraceQL query opened with thousands of parentheses used to overflow the parser's stack and abort the
/// process; now search, tag names and tag values answer 400 naming the limit, and the listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempo_query_with_thousands_of_parentheses_is_refused_and_tracepost_keeps_serving() {
    let database = TestDatabase::create("deep_traceql").await;
    let app = serve(&database).await;
    let hostile = encode(&format!("{{{}", "(".repeat(5000)));
    for path in [
        "/api/search?q=",
        "/api/v2/search/tag/name/values?q=",
        "/api/v2/search/tag/span.http.route/values?q=",
        "/api/v2/search/tags?q=",
    ] {
        let (status, body) = get_text(&tempo_url(&app, &format!("{path}{hostile}"))).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body,
            "invalid TraceQL query: parentheses are nested more than 32 deep: remove redundant parentheses \
             (at character 34)\n",
            "{path}"
        );
    }
    assert_eq!(get_text(&tempo_url(&app, "/api/echo")).await, (200, "echo".to_owned()));
    app.begin_shutdown();
    app.wait().await.expect("clean shutdown");
}
