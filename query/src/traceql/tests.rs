use std::collections::HashMap;

use tracepost_storage::model::{KeyValue, Resource, Span, SpanDetail, SpanId, TraceId, Value};

use super::pattern::Pattern;
use super::*;

fn parse(text: &str) -> Query {
    Query::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn error(text: &str) -> String {
    Query::parse(text).expect_err(text).to_string()
}

fn compare(field: Field, op: Op, operand: Operand) -> Expr {
    Expr::Compare(Comparison { field, op, operand })
}

fn string(text: &str) -> Operand {
    Operand::Str(text.to_owned())
}

#[test]
fn empty_queries_match_everything() {
    for text in ["{}", "{ }", "  {\n}  ", ""] {
        assert!(parse(text).is_match_all(), "{text}");
    }
}

#[test]
fn grafana_builder_output_parses() {
    // The checklist's example of the search builder (service, span name, status, duration).
    let query = parse(r#"{resource.service.name="frontend" && name="GET /cart" && status=error && duration>100ms}"#);
    assert_eq!(
        query.filter,
        Some(Expr::And(vec![
            compare(Field::Resource("service.name".into()), Op::Eq, string("frontend")),
            compare(Field::Name, Op::Eq, string("GET /cart")),
            compare(Field::Status, Op::Eq, Operand::Status(SpanStatus::Error)),
            compare(Field::Duration, Op::Gt, Operand::Duration(100_000_000)),
        ]))
    );
    assert_eq!(query.exact_services(), Some(vec!["frontend".to_owned()]));
    assert_eq!(query.operation(), Some("GET /cart"));
    assert_eq!(query.span_duration_bounds(), (Some(100_000_001), None));

    // Multi-value selections: `||` groups for `=`, `&&` groups for `!=`, one regex for `=~`.
    let query = parse(
        r#"{(resource.service.name="a" || resource.service.name="b") && (span.foo!="x" && span.foo!="y") && span.bar=~"p\\.q|r" && traceDuration<=2s}"#,
    );
    assert_eq!(
        query.filter,
        Some(Expr::And(vec![
            Expr::Or(vec![
                compare(Field::Resource("service.name".into()), Op::Eq, string("a")),
                compare(Field::Resource("service.name".into()), Op::Eq, string("b")),
            ]),
            Expr::And(vec![
                compare(Field::Span("foo".into()), Op::Ne, string("x")),
                compare(Field::Span("foo".into()), Op::Ne, string("y")),
            ]),
            compare(
                Field::Span("bar".into()),
                Op::Match,
                Operand::Pattern(Pattern::compile(r"p\.q|r").expect("pattern"))
            ),
            compare(Field::TraceDuration, Op::Le, Operand::Duration(2_000_000_000)),
        ]))
    );
    assert_eq!(query.exact_services(), Some(vec!["a".to_owned(), "b".to_owned()]));
    assert_eq!(query.operation(), None);

    // Grafana's tag-values filter and the default "all" query.
    assert_eq!(
        parse(r#"{resource.service.name="frontend"}"#).exact_services(),
        Some(vec!["frontend".to_owned()])
    );
    assert!(parse("{}").is_match_all());
}

#[test]
fn values_of_every_kind_parse() {
    let operand = |text: &str| match parse(&format!("{{ span.x = {text} }}")).filter {
        Some(Expr::Compare(comparison)) => comparison.operand,
        other => panic!("{other:?}"),
    };
    assert_eq!(operand("503"), Operand::Int(503));
    assert_eq!(operand("-2"), Operand::Int(-2));
    assert_eq!(operand("0.25"), Operand::Float(0.25));
    assert_eq!(operand("true"), Operand::Bool(true));
    assert_eq!(operand(r#""a \"b\" \\ \n \u00e9""#), string("a \"b\" \\ \n é"));
    assert_eq!(operand("`raw \\d`"), string("raw \\d"));
    let duration = |text: &str| match parse(&format!("{{ duration > {text} }}")).filter {
        Some(Expr::Compare(Comparison {
            operand: Operand::Duration(nanos),
            ..
        })) => nanos,
        other => panic!("{other:?}"),
    };
    assert_eq!(duration("100ms"), 100_000_000);
    assert_eq!(duration("1.5s"), 1_500_000_000);
    assert_eq!(duration("2m"), 120_000_000_000);
    assert_eq!(duration("1h"), 3_600_000_000_000);
    assert_eq!(duration("250us"), 250_000);
    assert_eq!(duration("10ns"), 10);
    assert_eq!(duration("1h30m"), 5_400_000_000_000);
    assert_eq!(
        parse("{ kind = server && status != ok }").filter,
        Some(Expr::And(vec![
            compare(Field::Kind, Op::Eq, Operand::Kind(SpanKind::Server)),
            compare(Field::Status, Op::Ne, Operand::Status(SpanStatus::Ok)),
        ]))
    );
    assert_eq!(
        parse(r#"{ .http.route = "/a" || span."odd key" >= 3 || span:name = "x" || trace:duration > 1s }"#).filter,
        Some(Expr::Or(vec![
            compare(Field::Unscoped("http.route".into()), Op::Eq, string("/a")),
            compare(Field::Span("odd key".into()), Op::Ge, Operand::Int(3)),
            compare(Field::Name, Op::Eq, string("x")),
            compare(Field::TraceDuration, Op::Gt, Operand::Duration(1_000_000_000)),
        ]))
    );
}

#[test]
fn invalid_queries_say_what_is_wrong() {
    assert_eq!(
        error("name = \"x\""),
        "a query starts with `{`, e.g. `{ name = \"GET /\" }` (at character 1)"
    );
    assert_eq!(error("{ name = \"x\" "), "expected `&&`, `||` or `}` (at character 14)");
    assert_eq!(
        error("{ name \"x\" }"),
        "expected an operator (= != =~ !~ > >= < <=) (at character 8)"
    );
    assert_eq!(error("{ name = }"), "expected a value (at character 10)");
    assert_eq!(error("{ name = \"x }"), "unterminated string (at character 10)");
    assert_eq!(
        error("{ foo = \"x\" }"),
        "unknown field `foo`: use `.foo`, `span.foo` or `resource.foo` for an attribute (at character 3)"
    );
    assert_eq!(
        error("{ event.name = \"x\" }"),
        "`event` fields are not supported (at character 3)"
    );
    assert_eq!(
        error("{ span:id = \"x\" }"),
        "`span:id` is not supported (at character 3)"
    );
    assert_eq!(
        error("{ rootName = \"x\" }"),
        "`rootName` is not supported (at character 3)"
    );
    assert_eq!(
        error("{ http.route = \"x\" }"),
        "unknown field `http.route`: use `.http.route`, `span.http.route` or `resource.http.route` for an attribute (at character 3)"
    );
    assert_eq!(
        error("{ .foo = bar }"),
        "unexpected value `bar`: quote strings, e.g. \"bar\" (at character 10)"
    );
    assert_eq!(
        error("{ status = 500 }"),
        "`status` compares with ok, error or unset (at character 12)"
    );
    assert_eq!(
        error("{ status > error }"),
        "`>` cannot be used with `status` (at character 12)"
    );
    assert_eq!(
        error("{ kind = \"server\" }"),
        "`kind` compares with client, server, producer, consumer, internal or unspecified (at character 10)"
    );
    assert_eq!(
        error("{ duration > 100 }"),
        "`duration` compares with a duration such as 100ms (at character 14)"
    );
    assert_eq!(
        error("{ duration > 5x }"),
        "invalid number or duration `5x` (at character 14)"
    );
    assert_eq!(
        error("{ name = 3 }"),
        "`name` compares with a quoted string (at character 10)"
    );
    assert_eq!(
        error("{ span.ok > true }"),
        "`>` cannot be used with `span.ok` (at character 13)"
    );
    assert_eq!(
        error("{ span.x = error }"),
        "ok, error and unset compare only with `status`; quote them for a string (at character 12)"
    );
    assert_eq!(
        error("{ span.x =~ 5 }"),
        "`=~` needs a quoted regular expression (at character 13)"
    );
    assert_eq!(
        error("{ name =~ \"(a|b\" }"),
        "invalid regular expression `(a|b`: unclosed group (at character 11)"
    );
    assert_eq!(error("{ span.x = nil }"), "`nil` is not supported (at character 12)");
    assert_eq!(
        error("{} | count() > 2"),
        "pipelines (`|`) are not supported (at character 4)"
    );
    assert_eq!(
        error("{} && {}"),
        "only one spanset filter `{ … }` is supported (at character 4)"
    );
    assert_eq!(
        error("{ .a = 1 } >> { .b = 2 }"),
        "structural operators are not supported (at character 12)"
    );
    assert_eq!(error("{ (name = \"a\" }"), "expected `)` (at character 15)");
    assert_eq!(
        error("{ span. = \"a\" }"),
        "`span.` needs an attribute name (at character 3)"
    );
    assert_eq!(
        error("{ name = \"a\" & kind = server }"),
        "unexpected `&` (at character 14)"
    );
    assert_eq!(
        error("{ span.x = 99999999999999999999 }"),
        "number `99999999999999999999` is out of range (at character 12)"
    );
}

#[test]
fn patterns_match_whole_values() {
    let pattern = |text: &str| Pattern::compile(text).unwrap_or_else(|error| panic!("{error}"));
    assert!(pattern("a|b").matches("a"));
    assert!(pattern("a|b").matches("b"));
    assert!(!pattern("a|b").matches("ab"), "anchored");
    assert!(pattern("GET .*").matches("GET /cart"));
    assert!(!pattern("GET").matches("GET /cart"));
    assert!(pattern(".*cart.*").matches("GET /cart?x"));
    assert!(pattern(r"/api/v2\.0/.+").matches("/api/v2.0/projects"));
    assert!(!pattern(r"/api/v2\.0/.+").matches("/api/v2x0/projects"));
    assert!(!pattern(r"/api/v2\.0/.+").matches("/api/v2.0/"));
    assert!(pattern(r"5\d\d").matches("503"));
    assert!(!pattern(r"5\d\d").matches("5x3"));
    assert!(pattern("^colou?r$").matches("color"));
    assert!(pattern("^colou?r$").matches("colour"));
    assert!(pattern("").matches(""));
    assert!(!pattern("").matches("x"));
    assert!(pattern(r"a\|b").matches("a|b"));
    // Linear matching: no blow-up on pathological patterns.
    let long = "a".repeat(5000);
    assert!(!pattern(&"a*".repeat(30).replace("**", "*")).matches(&format!("{long}b")));
    for bad in [r"\p", "*a", r"a\", "a)|(b", "[z-a]"] {
        assert!(Pattern::compile(bad).is_err(), "{bad}");
    }
}

fn resource() -> StoredResource {
    StoredResource {
        id: 7,
        service_name: "harbor-core".into(),
        cluster: None,
        resource: Resource {
            attributes: vec![
                KeyValue::string("service.name", "harbor-core"),
                KeyValue::string("k8s.pod.ip", "10.42.1.7"),
                KeyValue::string("direction", "resource-level"),
            ],
            dropped_attributes_count: 0,
            schema_url: String::new(),
        },
    }
}

fn span(name: &str, start: u64, duration: u64, status: StatusCode, attributes: Vec<KeyValue>) -> StoredSpan {
    StoredSpan {
        span: Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([start as u8 + 1; 8]),
            parent_span_id: None,
            name: name.into(),
            kind: SpanKind::Server,
            start_time_unix_nano: start,
            status_code: status,
            detail: SpanDetail {
                attributes,
                end_time_unix_nano: start + duration,
                ..SpanDetail::default()
            },
        },
        resource_id: 7,
        service_name: "harbor-core".into(),
        cluster: None,
    }
}

/// A Linkerd-style span: every attribute is a string.
fn linkerd_span() -> StoredSpan {
    span(
        "/api/v2.0/projects/42/repositories",
        1_000,
        45_000_000,
        StatusCode::Unset,
        vec![
            KeyValue::string("direction", "inbound"),
            KeyValue::string("http.response.status_code", "503"),
            KeyValue::string("server.port", "80"),
            KeyValue::string("tls", "true"),
        ],
    )
}

fn matches(text: &str, span: &StoredSpan) -> bool {
    let resource = resource();
    parse(text).may_match_span(span, Some(&resource))
}

#[test]
fn attributes_compare_by_the_query_value_type() {
    let linkerd = linkerd_span();
    assert!(
        matches("{ span.http.response.status_code = 503 }", &linkerd),
        "string attribute, number query"
    );
    assert!(matches(r#"{ span.http.response.status_code = "503" }"#, &linkerd));
    assert!(matches("{ span.http.response.status_code >= 500 }", &linkerd));
    assert!(!matches("{ span.http.response.status_code < 500 }", &linkerd));
    assert!(matches("{ span.http.response.status_code = 503.0 }", &linkerd));
    assert!(matches(r#"{ span.http.response.status_code =~ "5.." }"#, &linkerd));
    assert!(matches("{ span.tls = true }", &linkerd));
    assert!(!matches("{ span.tls = false }", &linkerd));
    assert!(
        matches(r#"{ span.server.port > "8" }"#, &linkerd),
        "numeric strings compare as numbers"
    );

    let sdk = span(
        "GET /checkout",
        0,
        10,
        StatusCode::Ok,
        vec![
            KeyValue::new("http.response.status_code", Value::Int(200)),
            KeyValue::new("ratio", Value::Double(0.25)),
            KeyValue::new("cached", Value::Bool(false)),
        ],
    );
    assert!(
        matches(r#"{ span.http.response.status_code = "200" }"#, &sdk),
        "int attribute, string query"
    );
    assert!(matches("{ span.http.response.status_code = 200 }", &sdk));
    assert!(matches("{ span.ratio < 0.5 && span.ratio > 0 }", &sdk));
    assert!(matches("{ span.cached = false && span.cached != true }", &sdk));
    assert!(!matches(r#"{ span.cached = "true" }"#, &sdk));
}

#[test]
fn scopes_and_missing_attributes() {
    let linkerd = linkerd_span();
    assert!(matches(r#"{ resource.k8s.pod.ip = "10.42.1.7" }"#, &linkerd));
    assert!(
        !matches(r#"{ span.k8s.pod.ip = "10.42.1.7" }"#, &linkerd),
        "not a span attribute"
    );
    assert!(
        matches(r#"{ .k8s.pod.ip = "10.42.1.7" }"#, &linkerd),
        "unscoped falls back to the resource"
    );
    assert!(
        matches(r#"{ .direction = "inbound" }"#, &linkerd),
        "unscoped prefers the span"
    );
    assert!(matches(r#"{ resource.direction = "resource-level" }"#, &linkerd));
    assert!(
        !matches(r#"{ span.missing != "x" }"#, &linkerd),
        "a missing attribute never matches"
    );
    assert!(!matches(r#"{ span.missing !~ "x" }"#, &linkerd));
    // service.name is the derived service, even without the resource.
    let query = parse(r#"{ resource.service.name = "harbor-core" }"#);
    assert!(query.may_match_span(&linkerd, None));
    assert!(parse(r#"{ .service.name =~ "harbor-.*" }"#).may_match_span(&linkerd, None));
}

#[test]
fn intrinsics_and_groups() {
    let linkerd = linkerd_span();
    assert!(matches(r#"{ name = "/api/v2.0/projects/42/repositories" }"#, &linkerd));
    assert!(matches(r#"{ name =~ "/api/v2\\.0/projects/.*" }"#, &linkerd));
    assert!(matches("{ kind = server && kind != client }", &linkerd));
    assert!(matches("{ status = unset && status != error }", &linkerd));
    assert!(matches("{ duration > 40ms && duration <= 45ms }", &linkerd));
    assert!(!matches("{ duration > 45ms }", &linkerd));
    assert!(matches(
        r#"{ (span.direction = "outbound" || span.direction = "inbound") && kind = server }"#,
        &linkerd
    ));
    assert!(!matches(
        r#"{ (span.direction != "outbound" && span.direction != "inbound") }"#,
        &linkerd
    ));
    assert!(
        matches(
            r#"{ span.direction = "outbound" || status = unset && kind = server }"#,
            &linkerd
        ),
        "&& binds tighter"
    );
    let failed = span("x", 0, 1, StatusCode::Error, Vec::new());
    assert_eq!(span_status(&failed), SpanStatus::Error);
    assert!(matches("{ status = error }", &failed));
}

#[test]
fn one_span_must_satisfy_every_span_condition() {
    let inbound = linkerd_span();
    let outbound = span(
        "/api/v2.0/projects/42/repositories",
        2_000,
        48_000_000,
        StatusCode::Error,
        vec![KeyValue::string("direction", "outbound")],
    );
    let trace = StoredTrace {
        trace_id: TraceId([1; 16]),
        spans: vec![inbound, outbound],
        resources: HashMap::from([(7, resource())]),
        truncated: false,
    };
    let query = parse(r#"{ span.direction = "inbound" && status = error }"#);
    assert!(query.matching_spans(&trace).is_empty(), "no single span has both");
    assert!(!query.matches_trace(&trace));
    let query = parse(r#"{ span.direction = "outbound" && status = error }"#);
    assert_eq!(query.matching_spans(&trace).len(), 1);
    assert!(query.matches_trace(&trace));
    assert_eq!(parse("{}").matching_spans(&trace).len(), 2);
}

#[test]
fn trace_duration_is_checked_on_the_whole_trace() {
    let first = span("a", 1_000, 10, StatusCode::Unset, Vec::new());
    let last = span("b", 2_000_000, 1_000_000, StatusCode::Unset, Vec::new());
    let trace = StoredTrace {
        trace_id: TraceId([1; 16]),
        spans: vec![first.clone(), last],
        resources: HashMap::new(),
        truncated: false,
    };
    // 3 ms - 1 µs.
    assert_eq!(trace_duration_nanos(&trace), 2_999_000);
    let query = parse("{ traceDuration > 2ms && name = \"a\" }");
    assert!(query.may_match_span(&first, None), "unknown until the trace is read");
    assert_eq!(query.matching_spans(&trace).len(), 1);
    let query = parse("{ traceDuration > 3ms }");
    assert!(query.may_match_span(&first, None));
    assert!(!query.matches_trace(&trace));
    assert_eq!(parse("{ traceDuration < 3ms }").matching_spans(&trace).len(), 2);
}

#[test]
fn service_and_duration_hints() {
    let query = parse(r#"{ resource.service.name =~ "harbor-.*" && resource.service.name != "harbor-db" }"#);
    assert!(query.constrains_service());
    assert_eq!(query.exact_services(), None);
    assert!(query.service_allowed("harbor-core"));
    assert!(!query.service_allowed("harbor-db"));
    assert!(!query.service_allowed("cart"));
    let query = parse(r#"{ resource.service.name = "a" && resource.service.name = "b" }"#);
    assert_eq!(
        query.exact_services(),
        Some(Vec::new()),
        "contradiction selects nothing"
    );
    let query = parse(r#"{ resource.service.name = "a" || name = "b" }"#);
    assert!(
        !query.constrains_service(),
        "an || with another field selects no service"
    );
    assert_eq!(query.exact_services(), None);
    assert_eq!(
        parse("{ duration >= 1ms && duration < 1s && duration > 2ms }").span_duration_bounds(),
        (Some(2_000_001), Some(999_999_999))
    );
    assert_eq!(
        parse("{ duration > 1ms || name = \"x\" }").span_duration_bounds(),
        (None, None),
        "an || does not bound"
    );
    let query = parse(r#"{ span.a = "1" && (status = error || kind = client) && span.a != "2" }"#);
    assert_eq!(
        query.fields(),
        vec![&Field::Span("a".into()), &Field::Status, &Field::Kind]
    );
}

#[test]
fn deeply_nested_queries_are_refused_not_a_stack_overflow() {
    // What a hostile client sends: `{` and thousands of `(`; the parser used to recurse until the stack ran out.
    let hostile = format!("{{{}", "(".repeat(10_000));
    let refused = Query::parse(&hostile).expect_err("too deep");
    assert!(refused.is_limit_exceeded());
    assert_eq!(
        refused.to_string(),
        "parentheses are nested more than 32 deep: remove redundant parentheses (at character 34)"
    );
    // Balanced nesting just within the limit still parses, and one level more is refused.
    let nested = |depth: usize| format!("{{ {}name = \"a\"{} }}", "(".repeat(depth), ")".repeat(depth));
    assert_eq!(parse(&nested(DEFAULT_MAX_DEPTH)).operation(), Some("a"));
    assert!(Query::parse(&nested(DEFAULT_MAX_DEPTH + 1))
        .expect_err("one too deep")
        .is_limit_exceeded());
    let strict = ParseLimits {
        max_depth: 1,
        ..ParseLimits::default()
    };
    assert!(Query::parse_with(&nested(1), strict).is_ok());
    assert!(Query::parse_with(&nested(2), strict).is_err());
}

#[test]
fn overlong_queries_are_refused_before_lexing() {
    let long = format!("{{ name = \"{}\" }}", "x".repeat(DEFAULT_MAX_LENGTH));
    let refused = Query::parse(&long).expect_err("too long");
    assert!(refused.is_limit_exceeded());
    assert!(
        refused.to_string().starts_with(&format!(
            "the query is {} bytes long, over the limit of 16384 bytes: shorten it",
            long.len()
        )),
        "{refused}"
    );
    let within = format!("{{ name = \"{}\" }}", "x".repeat(DEFAULT_MAX_LENGTH - 20));
    assert_eq!(parse(&within).operation().map(str::len), Some(DEFAULT_MAX_LENGTH - 20));
    // A syntax error is not a limit.
    assert!(!Query::parse("{ name = }").expect_err("syntax").is_limit_exceeded());
}

#[test]
fn re2_groups_classes_and_counted_repetition_match_whole_values() {
    let pattern = |text: &str| Pattern::compile(text).unwrap_or_else(|error| panic!("{error}"));
    // What the hand-written engine refused: groups, classes, counted repetition, lazy quantifiers.
    assert!(pattern("(GET|POST) /api/.*").matches("POST /api/v2"));
    assert!(!pattern("(GET|POST) /api/.*").matches("PUT /api/v2"));
    assert!(pattern("[45][0-9]{2}").matches("503"));
    assert!(!pattern("[45][0-9]{2}").matches("5030"), "anchored");
    assert!(
        pattern("a*?").matches("aaa"),
        "anchored, so lazy still matches the whole value"
    );
    assert!(pattern("(?i)harbor-core").matches("Harbor-Core"));
    // An alternation inside a group stays anchored as a whole.
    assert!(!pattern("a|b").matches("xb"));
    assert!(
        Query::parse(r#"{ resource.service.name =~ "(cart|checkout)-v[0-9]+" }"#)
            .expect("valid")
            .service_allowed("cart-v2")
    );
}

#[test]
fn expensive_regular_expressions_are_refused() {
    // Counted repetition of a Unicode class compiles to megabytes; the size limit refuses it at parse time.
    let refused = Query::parse(r#"{ name =~ "(\\w{100}){100}" }"#).expect_err("too large");
    assert!(
        refused
            .to_string()
            .starts_with(r"regular expression `(\w{100}){100}` is too large: it compiles to more than 262144 bytes"),
        "{refused}"
    );
    // Nesting beyond the pattern's own limit is refused without recursing deeply.
    let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
    assert!(Pattern::compile(&deep)
        .expect_err("too deep")
        .starts_with("invalid regular expression"));
    // Matching stays linear: a classic backtracking killer over a long value answers at once.
    let long = "a".repeat(20_000);
    assert!(!pattern_of("(a+)+b").matches(&long));
}

fn pattern_of(text: &str) -> Pattern {
    Pattern::compile(text).unwrap_or_else(|error| panic!("{error}"))
}
