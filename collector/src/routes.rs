//! Raw URL paths (Linkerd names its spans after them) turned into bounded route templates for metric labels.
//!
//! Only the `span_name` label of the RED metrics uses the template; stored spans keep their name. A name is
//! templated when it is a path (`/…`) or a method and a path (`GET /…`); the query string is dropped. The
//! operator's patterns (`--route-pattern`) are tried first, in order: a pattern is a path whose segments
//! are literals, `*` or `{name}` (any one segment) and, last, `**` (any rest). The first pattern that matches
//! is the template. Otherwise, unless disabled, each segment that looks like an identifier becomes a
//! placeholder: all digits → `{id}`, a UUID → `{uuid}`, 8+ hex digits with at least one digit → `{hex}`,
//! 20+ characters mixing letters and digits → `{token}`.

use std::borrow::Cow;

/// One operator pattern, split into segments.
#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

/// How span names become route templates.
#[derive(Clone, Debug)]
pub struct RouteRules {
    patterns: Vec<Pattern>,
    placeholders: bool,
}

impl Default for RouteRules {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            placeholders: true,
        }
    }
}

impl RouteRules {
    /// Parses operator patterns; `placeholders` enables the built-in identifier rules.
    pub fn new(patterns: &[String], placeholders: bool) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .map(|text| parse_pattern(text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns, placeholders })
    }

    /// The template of a span name (the name itself when it is not a path or nothing in it varies).
    pub fn template<'a>(&self, name: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        if self.template_into(name, &mut out) {
            Cow::Owned(out)
        } else {
            Cow::Borrowed(name)
        }
    }

    /// Writes the template of `name` into `out` and returns true, or returns false (and leaves `out` empty)
    /// when the template is `name` itself. A reused `out` saves an allocation per span.
    pub fn template_into(&self, name: &str, out: &mut String) -> bool {
        out.clear();
        let bytes = name.as_bytes();
        let path_start = match bytes.first() {
            Some(b'/') => 0,
            Some(b'A'..=b'Z') => {
                let Some(space) = bytes.iter().position(|byte| !byte.is_ascii_uppercase()) else {
                    return false;
                };
                if bytes[space] != b' ' || bytes.get(space + 1) != Some(&b'/') {
                    return false;
                }
                space + 1
            }
            _ => return false,
        };
        let path_end = bytes[path_start..]
            .iter()
            .position(|byte| matches!(byte, b'?' | b'#'))
            .map_or(bytes.len(), |end| path_start + end);
        out.push_str(&name[..path_start]);
        if self.template_path_into(&name[path_start..path_end], out) || path_end != bytes.len() {
            true
        } else {
            out.clear();
            false
        }
    }

    /// Appends the template of `path` to `out`; returns whether it differs from `path`.
    fn template_path_into(&self, path: &str, out: &mut String) -> bool {
        if let Some(pattern) = self.patterns.iter().find(|pattern| matches(&pattern.segments, path)) {
            out.push_str(&pattern.text);
            return true;
        }
        if !self.placeholders {
            out.push_str(path);
            return false;
        }
        // One pass over the bytes (this runs for every counted span); runs without a placeholder are copied
        // whole.
        let mut changed = false;
        let (mut start, mut copied) = (0, 0);
        for (end, byte) in path.bytes().chain([b'/']).enumerate() {
            if byte != b'/' {
                continue;
            }
            if let Some(placeholder) = placeholder(&path[start..end]) {
                changed = true;
                out.push_str(&path[copied..start]);
                out.push_str(placeholder);
                copied = end;
            }
            start = end + 1;
        }
        out.push_str(&path[copied..]);
        changed
    }
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    if !text.starts_with('/') {
        return Err(format!("route pattern {text:?} must start with '/'"));
    }
    let parts: Vec<&str> = text[1..].split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        segments.push(match *part {
            "**" if index + 1 == parts.len() => Segment::Rest,
            "**" => return Err(format!("route pattern {text:?}: '**' may only be the last segment")),
            "*" => Segment::Any,
            part if part.starts_with('{') && part.ends_with('}') && part.len() > 2 => Segment::Any,
            part if part.contains(['{', '}', '*']) => {
                return Err(format!(
                    "route pattern {text:?}: segment {part:?} must be a literal, '*', '{{name}}' or a final '**'"
                ))
            }
            part => Segment::Literal(part.to_owned()),
        });
    }
    Ok(Pattern {
        text: text.to_owned(),
        segments,
    })
}

fn matches(segments: &[Segment], path: &str) -> bool {
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    for segment in segments {
        match segment {
            Segment::Rest => return true,
            Segment::Any => {
                if parts.next().is_none_or(str::is_empty) {
                    return false;
                }
            }
            Segment::Literal(literal) => {
                if parts.next() != Some(literal.as_str()) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

/// The placeholder for a path segment that looks like an identifier.
fn placeholder(segment: &str) -> Option<&'static str> {
    let bytes = segment.as_bytes();
    // Every placeholder but a UUID needs a digit; most segments are words without one.
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return (bytes.len() == 36 && is_uuid(bytes)).then_some("{uuid}");
    }
    if digits == bytes.len() {
        return Some("{id}");
    }
    if is_uuid(bytes) {
        return Some("{uuid}");
    }
    if bytes.len() >= 8 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some("{hex}");
    }
    if bytes.len() >= 20
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'='))
    {
        return Some("{token}");
    }
    None
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_placeholders() {
        let rules = RouteRules::default();
        for (raw, template) in [
            (
                "/api/v2.0/projects/42/repositories",
                "/api/v2.0/projects/{id}/repositories",
            ),
            (
                "/orders/3f2c1a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6/items/7",
                "/orders/{uuid}/items/{id}",
            ),
            ("/commits/9fceb02d0ae598e95dc970b74767f19372d61af8", "/commits/{hex}"),
            ("/blobs/sha256:abc", "/blobs/sha256:abc"),
            ("/files/eyJhbGciOiJIUzI1NiJ9x0aB3", "/files/{token}"),
            ("/users/alice?tab=1", "/users/alice"),
            ("/v1/traces", "/v1/traces"),
            ("/cafe/deadbeef", "/cafe/deadbeef"),
            ("GET /items/12", "GET /items/{id}"),
            ("GET /items", "GET /items"),
            ("SELECT 1", "SELECT 1"),
            ("/", "/"),
        ] {
            assert_eq!(rules.template(raw), template, "{raw}");
        }
    }

    #[test]
    fn operator_patterns_win_over_placeholders() {
        let rules = RouteRules::new(&["/users/{user}/repos/*".to_owned(), "/static/**".to_owned()], true).unwrap();
        assert_eq!(rules.template("/users/alice/repos/tracepost"), "/users/{user}/repos/*");
        assert_eq!(rules.template("/users/alice/repos"), "/users/alice/repos");
        assert_eq!(rules.template("/static/js/app.3f2c1a9e.js"), "/static/**");
        assert_eq!(rules.template("/static"), "/static/**");
        assert_eq!(rules.template("/items/5"), "/items/{id}");
        let plain = RouteRules::new(&[], false).unwrap();
        assert_eq!(plain.template("/items/5"), "/items/5");
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for (pattern, reason) in [
            ("users/*", "must start with '/'"),
            ("/a/**/b", "'**' may only be the last segment"),
            ("/a/x*", "must be a literal"),
        ] {
            let error = RouteRules::new(&[pattern.to_owned()], true).unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }
}
