//! Regular expressions: RE2 syntax, as Tempo (Go's `regexp`) has it, compiled by the `regex` crate, whose
//! matching is linear in the value's length whatever the pattern; the compiled size is capped so that no
//! pattern is expensive to build or to hold.

use regex::{Regex, RegexBuilder};

/// Bytes a compiled pattern may take at most (`RegexBuilder::size_limit`). An alternation of a few hundred
/// escaped service names, as Grafana writes for a multi-value selection, takes well under this.
const MAX_COMPILED_BYTES: usize = 256 * 1024;
/// Bytes the lazy DFA may cache per pattern (`RegexBuilder::dfa_size_limit`); beyond it matching falls back
/// to a slower, still linear, engine.
const MAX_DFA_BYTES: usize = 1024 * 1024;
/// Groups and repetitions nested inside one another at most (`RegexBuilder::nest_limit`).
const MAX_NESTING: u32 = 32;

/// A compiled regular expression, matched against a whole value (as if between `^(?:` and `)$`).
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    /// As written in the query.
    source: String,
    anchored: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Compiles `text`; the error says what is wrong with it, in one line.
    pub(super) fn compile(text: &str) -> Result<Self, String> {
        // Checked alone first: wrapped, an unbalanced `a)|(b` would parse as a different, unanchored pattern.
        build(text).map_err(|error| describe(text, &error))?;
        let anchored = build(&format!("^(?:{text})$")).map_err(|error| describe(text, &error))?;
        Ok(Self {
            source: text.to_owned(),
            anchored,
        })
    }

    /// Whether the whole of `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        self.anchored.is_match(text)
    }
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_COMPILED_BYTES)
        .dfa_size_limit(MAX_DFA_BYTES)
        .nest_limit(MAX_NESTING)
        .build()
}

/// The crate's message without its multi-line caret diagram.
fn describe(text: &str, error: &regex::Error) -> String {
    match error {
        regex::Error::CompiledTooBig(limit) => format!(
            "regular expression `{text}` is too large: it compiles to more than {limit} bytes; use fewer \
             alternatives or smaller repetition counts"
        ),
        regex::Error::Syntax(message) => {
            let reason = message
                .lines()
                .rev()
                .find_map(|line| line.trim().strip_prefix("error: "))
                .unwrap_or(message.as_str());
            format!("invalid regular expression `{text}`: {reason}")
        }
        other => format!("invalid regular expression `{text}`: {other}"),
    }
}
