//! The recursive-descent parser.

use tracepost_storage::model::SpanKind;

use super::ast::{Comparison, Expr, Field, Operand};
use super::check::check;
use super::lexer::{lex, Lexeme, Token};
use super::{ParseError, Query, SpanStatus};
use crate::params::parse_go_duration;

/// TraceQL scopes outside the subset (and `span:`/`trace:` intrinsics other than the supported ones).
const OTHER_SCOPES: &[&str] = &[
    "event",
    "link",
    "instrumentation",
    "parent",
    "trace",
    "span",
    "resource",
];
/// TraceQL intrinsics outside the subset.
const OTHER_INTRINSICS: &[&str] = &[
    "statusMessage",
    "rootName",
    "rootServiceName",
    "childCount",
    "nestedSetLeft",
    "nestedSetRight",
    "nestedSetParent",
];

pub(super) struct Parser {
    lexemes: Vec<Lexeme>,
    next: usize,
    /// Where the text ends (for errors at the end).
    length: usize,
    /// Parentheses open at the current position, and how many may be.
    depth: usize,
    max_depth: usize,
}

impl Parser {
    pub(super) fn new(text: &str, max_depth: usize) -> Result<Self, ParseError> {
        Ok(Self {
            lexemes: lex(text)?,
            next: 0,
            length: text.chars().count(),
            depth: 0,
            max_depth,
        })
    }

    fn peek(&self) -> Option<&Lexeme> {
        self.lexemes.get(self.next)
    }

    fn bump(&mut self) -> Option<Lexeme> {
        let lexeme = self.lexemes.get(self.next).cloned();
        self.next += usize::from(lexeme.is_some());
        lexeme
    }

    fn position(&self) -> usize {
        self.peek().map_or(self.length, |lexeme| lexeme.start)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError::new(message, self.position()))
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek().is_some_and(|lexeme| &lexeme.token == token) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn query(mut self) -> Result<Query, ParseError> {
        if !self.eat(&Token::LeftBrace) {
            return self.error("a query starts with `{`, e.g. `{ name = \"GET /\" }`");
        }
        let filter = if self.eat(&Token::RightBrace) {
            None
        } else {
            let expr = self.or()?;
            if !self.eat(&Token::RightBrace) {
                return self.error("expected `&&`, `||` or `}`");
            }
            Some(expr)
        };
        match self.peek().map(|lexeme| &lexeme.token) {
            None => Ok(Query { filter }),
            Some(Token::Pipe) => self.error("pipelines (`|`) are not supported"),
            Some(_) => self.error("only one spanset filter `{ … }` is supported"),
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while self.eat(&Token::Or) {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.primary()?];
        while self.eat(&Token::And) {
            terms.push(self.primary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    /// A comparison or a parenthesised expression. The only recursion of the parser goes through here, so the
    /// depth check bounds its stack.
    fn primary(&mut self) -> Result<Expr, ParseError> {
        let position = self.position();
        if self.eat(&Token::LeftParen) {
            if self.depth >= self.max_depth {
                return Err(ParseError::limit(
                    format!(
                        "parentheses are nested more than {} deep: remove redundant parentheses",
                        self.max_depth
                    ),
                    position,
                ));
            }
            self.depth += 1;
            let expr = self.or()?;
            if !self.eat(&Token::RightParen) {
                return self.error("expected `)`");
            }
            self.depth -= 1;
            return Ok(expr);
        }
        self.comparison().map(Expr::Compare)
    }

    fn comparison(&mut self) -> Result<Comparison, ParseError> {
        let field_position = self.position();
        let field = self.field()?;
        let Some(Lexeme {
            token: Token::Op(op), ..
        }) = self.peek().cloned()
        else {
            return self.error("expected an operator (= != =~ !~ > >= < <=)");
        };
        self.next += 1;
        let value_position = self.position();
        let operand = self.operand()?;
        check(&field, op, operand)
            .map_err(|message| {
                let position = if message.starts_with("field") {
                    field_position
                } else {
                    value_position
                };
                ParseError::new(message, position)
            })
            .map(|operand| Comparison { field, op, operand })
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        let Some(Lexeme {
            token: Token::Word(word),
            end,
            ..
        }) = self.peek().cloned()
        else {
            return self.error("expected a field, e.g. `name`, `span.http.route` or `resource.service.name`");
        };
        let position = self.position();
        self.next += 1;
        // `span."a b"`: a quoted attribute name right after the scope.
        let scoped = |prefix: &str| word.strip_prefix(prefix).map(str::to_owned);
        let attribute = |this: &mut Self, name: String| -> Result<String, ParseError> {
            if !name.is_empty() {
                return Ok(name);
            }
            match this.peek().cloned() {
                Some(Lexeme {
                    token: Token::Str(quoted),
                    start,
                    ..
                }) if start == end && !quoted.is_empty() => {
                    this.next += 1;
                    Ok(quoted)
                }
                _ => Err(ParseError::new(format!("`{word}` needs an attribute name"), position)),
            }
        };
        let field = match word.as_str() {
            "name" | "span:name" => Field::Name,
            "status" | "span:status" => Field::Status,
            "kind" | "span:kind" => Field::Kind,
            "duration" | "span:duration" => Field::Duration,
            "traceDuration" | "trace:duration" => Field::TraceDuration,
            _ => {
                if let Some(name) = scoped("resource.") {
                    Field::Resource(attribute(self, name)?)
                } else if let Some(name) = scoped("span.") {
                    Field::Span(attribute(self, name)?)
                } else if let Some(name) = scoped(".") {
                    Field::Unscoped(attribute(self, name)?)
                } else if let Some((scope, _)) = word
                    .split_once(['.', ':'])
                    .filter(|(scope, _)| OTHER_SCOPES.contains(scope))
                {
                    let message = if word.contains(':') {
                        format!("`{word}` is not supported")
                    } else {
                        format!("`{scope}` fields are not supported")
                    };
                    return Err(ParseError::new(message, position));
                } else if OTHER_INTRINSICS.contains(&word.as_str()) {
                    return Err(ParseError::new(format!("`{word}` is not supported"), position));
                } else {
                    return Err(ParseError::new(
                        format!("unknown field `{word}`: use `.{word}`, `span.{word}` or `resource.{word}` for an attribute"),
                        position,
                    ));
                }
            }
        };
        Ok(field)
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let Some(lexeme) = self.bump() else {
            return self.error("expected a value");
        };
        match lexeme.token {
            Token::Str(text) => Ok(Operand::Str(text)),
            Token::Word(word) => parse_word(&word).map_err(|message| ParseError::new(message, lexeme.start)),
            _ => Err(ParseError::new("expected a value", lexeme.start)),
        }
    }
}

/// An unquoted value: keyword, number or duration.
fn parse_word(word: &str) -> Result<Operand, String> {
    match word {
        "true" => return Ok(Operand::Bool(true)),
        "false" => return Ok(Operand::Bool(false)),
        "ok" => return Ok(Operand::Status(SpanStatus::Ok)),
        "error" => return Ok(Operand::Status(SpanStatus::Error)),
        "unset" => return Ok(Operand::Status(SpanStatus::Unset)),
        "client" => return Ok(Operand::Kind(SpanKind::Client)),
        "server" => return Ok(Operand::Kind(SpanKind::Server)),
        "producer" => return Ok(Operand::Kind(SpanKind::Producer)),
        "consumer" => return Ok(Operand::Kind(SpanKind::Consumer)),
        "internal" => return Ok(Operand::Kind(SpanKind::Internal)),
        "unspecified" => return Ok(Operand::Kind(SpanKind::Unspecified)),
        "nil" => return Err("`nil` is not supported".to_owned()),
        _ => {}
    }
    let unsigned = word.strip_prefix(['-', '+']).unwrap_or(word);
    if !unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(format!("unexpected value `{word}`: quote strings, e.g. \"{word}\""));
    }
    let plain = unsigned.chars().all(|c| c.is_ascii_digit());
    if plain {
        return word
            .parse::<i64>()
            .map(Operand::Int)
            .map_err(|_| format!("number `{word}` is out of range"));
    }
    let float_like = unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if float_like {
        if let Ok(number) = word.parse::<f64>() {
            if number.is_finite() {
                return Ok(Operand::Float(number));
            }
        }
    }
    parse_go_duration(word)
        .map(Operand::Duration)
        .map_err(|_| format!("invalid number or duration `{word}`"))
}
