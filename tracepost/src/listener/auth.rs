//! Authentication middleware: bearer tokens and basic auth from files, compared in constant time.
//!
//! Health and metrics paths stay open, so probes and scrapers need no secret. A refused gRPC request gets
//! `UNAUTHENTICATED` as a trailers-only gRPC response; any other request gets 401 with `WWW-Authenticate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::sync::watch;

use super::{watch_files, Reloading};

/// Paths answered without credentials: liveness, readiness (ours and the Tempo API's) and metrics.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/ready", "/metrics"];

/// The credentials one listener group accepts.
pub(super) struct Auth {
    tokens: Option<Arc<Reloading<Secrets>>>,
    basic: Option<Arc<Reloading<Secrets>>>,
}

/// Accepted secrets: bearer tokens, or `user:password` pairs as sent in basic auth.
struct Secrets(Vec<Vec<u8>>);

impl Auth {
    /// `None` when neither file is given (no authentication).
    pub(super) fn load(
        tokens_file: Option<&PathBuf>,
        basic_file: Option<&PathBuf>,
        interval: Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Self>> {
        let watch = |file: &PathBuf, what: &'static str, parse: fn(&str, &Path) -> anyhow::Result<Secrets>| {
            let path = file.clone();
            watch_files(
                what,
                vec![file.clone()],
                interval,
                move || {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    parse(&text, &path)
                },
                shutdown.clone(),
            )
        };
        let tokens = tokens_file
            .map(|file| watch(file, "bearer tokens", parse_tokens))
            .transpose()?;
        let basic = basic_file
            .map(|file| watch(file, "basic auth credentials", parse_basic))
            .transpose()?;
        Ok((tokens.is_some() || basic.is_some()).then_some(Self { tokens, basic }))
    }

    /// Whether the request's `Authorization` header carries an accepted credential.
    fn allows(&self, headers: &HeaderMap) -> bool {
        headers.get_all(header::AUTHORIZATION).iter().any(|value| {
            let Some((scheme, credential)) = value.to_str().ok().and_then(|value| value.trim().split_once(' ')) else {
                return false;
            };
            let credential = credential.trim();
            if scheme.eq_ignore_ascii_case("bearer") {
                self.tokens
                    .as_ref()
                    .is_some_and(|tokens| tokens.current().contains(credential.as_bytes()))
            } else if scheme.eq_ignore_ascii_case("basic") {
                let Some(basic) = &self.basic else { return false };
                base64::engine::general_purpose::STANDARD
                    .decode(credential)
                    .is_ok_and(|pair| basic.current().contains(&pair))
            } else {
                false
            }
        })
    }

    fn refusal(&self, request: &Request) -> Response {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        if grpc {
            // Trailers-only: the status is in the headers of an empty HTTP 200 response.
            return (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/grpc")),
                    (
                        header::HeaderName::from_static("grpc-status"),
                        HeaderValue::from_static("16"),
                    ),
                    (
                        header::HeaderName::from_static("grpc-message"),
                        HeaderValue::from_static("missing or invalid bearer token"),
                    ),
                ],
                (),
            )
                .into_response();
        }
        let mut response = (StatusCode::UNAUTHORIZED, "missing or invalid credentials\n").into_response();
        let headers = response.headers_mut();
        if self.tokens.is_some() {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tracepost\""),
            );
        }
        if self.basic.is_some() {
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tracepost\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// The middleware: passes open paths and authenticated requests to the router, refuses the rest.
pub(super) async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) || auth.allows(request.headers()) {
        return next.run(request).await;
    }
    tracing::debug!(
        path = request.uri().path(),
        "refused a request without valid credentials"
    );
    auth.refusal(&request)
}

impl Secrets {
    /// Compares `presented` with every accepted secret, in time that depends only on the secrets' lengths.
    fn contains(&self, presented: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, secret| found | constant_time_eq(secret, presented))
    }
}

/// Byte equality without an early exit on the first difference (lengths are not secret).
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left
        .iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| std::hint::black_box(difference | (a ^ b)));
    difference == 0
}

/// Meaningful lines: not empty and not `#` comments. Line endings (`\n`, `\r\n`) are not part of a line.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
}

/// One token a line; surrounding whitespace is ignored.
fn parse_tokens(text: &str, path: &Path) -> anyhow::Result<Secrets> {
    let tokens: Vec<Vec<u8>> = lines(text).map(|(_, line)| line.trim().as_bytes().to_vec()).collect();
    anyhow::ensure!(!tokens.is_empty(), "no token in {}", path.display());
    Ok(Secrets(tokens))
}

/// `user:password` a line, taken as written (a password may begin or end with spaces).
fn parse_basic(text: &str, path: &Path) -> anyhow::Result<Secrets> {
    let mut pairs = Vec::new();
    for (number, line) in lines(text) {
        // The message names the line, never its content.
        anyhow::ensure!(
            line.split_once(':').is_some_and(|(user, _)| !user.is_empty()),
            "line {number} of {} is not user:password",
            path.display()
        );
        pairs.push(line.as_bytes().to_vec());
    }
    anyhow::ensure!(!pairs.is_empty(), "no user:password line in {}", path.display());
    Ok(Secrets(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_secrets_match_and_any_difference_does_not() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
        let secrets = Secrets(vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(secrets.contains(b"two"));
        assert!(!secrets.contains(b"three"));
    }

    #[test]
    fn token_files_skip_blank_lines_comments_and_line_endings() {
        let secrets = parse_tokens("# for grafana\r\n  abc  \r\n\ndef\n", Path::new("t")).expect("tokens");
        assert_eq!(secrets.0, vec![b"abc".to_vec(), b"def".to_vec()]);
        assert!(parse_tokens("# only a comment\n\n", Path::new("t")).is_err());
    }

    #[test]
    fn basic_files_keep_passwords_as_written_and_name_bad_lines_without_their_content() {
        let secrets = parse_basic("grafana:pa:ss \nadmin:x\r\n", Path::new("b")).expect("pairs");
        assert_eq!(secrets.0, vec![b"grafana:pa:ss ".to_vec(), b"admin:x".to_vec()]);
        let Err(error) = parse_basic("grafana:ok\nhunter2\n", Path::new("b")) else {
            panic!("a line without a colon is refused");
        };
        let message = error.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
