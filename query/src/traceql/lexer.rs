//! Splitting a query into tokens.

use super::ast::Op;
use super::ParseError;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Token {
    LeftBrace,
    RightBrace,
    LeftParen,
    RightParen,
    And,
    Or,
    Pipe,
    Op(Op),
    Str(String),
    Word(String),
}

#[derive(Clone, Debug)]
pub(super) struct Lexeme {
    pub(super) token: Token,
    /// Character positions, `end` exclusive.
    pub(super) start: usize,
    pub(super) end: usize,
}

/// Characters that end a word (besides whitespace).
const TERMINALS: &[char] = &['{', '}', '(', ')', '=', '!', '~', '<', '>', '&', '|', '"', '`', ','];

pub(super) fn lex(text: &str) -> Result<Vec<Lexeme>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut lexemes = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c.is_whitespace() {
            index += 1;
            continue;
        }
        let start = index;
        let next = chars.get(index + 1).copied();
        let (token, length) = match (c, next) {
            ('{', _) => (Token::LeftBrace, 1),
            ('}', _) => (Token::RightBrace, 1),
            ('(', _) => (Token::LeftParen, 1),
            (')', _) => (Token::RightParen, 1),
            ('&', Some('&')) => (Token::And, 2),
            ('|', Some('|')) => (Token::Or, 2),
            ('|', _) => (Token::Pipe, 1),
            ('=', Some('~')) => (Token::Op(Op::Match), 2),
            ('=', _) => (Token::Op(Op::Eq), 1),
            ('!', Some('=')) => (Token::Op(Op::Ne), 2),
            ('!', Some('~')) => (Token::Op(Op::NotMatch), 2),
            ('>', Some('>')) | ('<', Some('<')) => {
                return Err(ParseError::new("structural operators are not supported", start));
            }
            ('>', Some('=')) => (Token::Op(Op::Ge), 2),
            ('>', _) => (Token::Op(Op::Gt), 1),
            ('<', Some('=')) => (Token::Op(Op::Le), 2),
            ('<', _) => (Token::Op(Op::Lt), 1),
            ('"', _) => {
                let (text, end) = lex_quoted(&chars, index)?;
                lexemes.push(Lexeme {
                    token: Token::Str(text),
                    start,
                    end,
                });
                index = end;
                continue;
            }
            ('`', _) => {
                let close = chars[index + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .ok_or_else(|| ParseError::new("unterminated raw string", start))?;
                let end = index + 1 + close + 1;
                lexemes.push(Lexeme {
                    token: Token::Str(chars[index + 1..end - 1].iter().collect()),
                    start,
                    end,
                });
                index = end;
                continue;
            }
            _ if TERMINALS.contains(&c) => {
                return Err(ParseError::new(format!("unexpected `{c}`"), start));
            }
            _ => {
                let length = chars[index..]
                    .iter()
                    .position(|c| c.is_whitespace() || TERMINALS.contains(c))
                    .unwrap_or(chars.len() - index);
                (Token::Word(chars[index..index + length].iter().collect()), length)
            }
        };
        index += length;
        lexemes.push(Lexeme {
            token,
            start,
            end: index,
        });
    }
    Ok(lexemes)
}

/// A double-quoted string starting at `open`: its unescaped text and the position after the closing quote.
fn lex_quoted(chars: &[char], open: usize) -> Result<(String, usize), ParseError> {
    let mut text = String::new();
    let mut index = open + 1;
    loop {
        let Some(&c) = chars.get(index) else {
            return Err(ParseError::new("unterminated string", open));
        };
        index += 1;
        match c {
            '"' => return Ok((text, index)),
            '\\' => {
                let Some(&escaped) = chars.get(index) else {
                    return Err(ParseError::new("unterminated string", open));
                };
                index += 1;
                match escaped {
                    '"' | '\\' | '\'' => text.push(escaped),
                    'n' => text.push('\n'),
                    't' => text.push('\t'),
                    'r' => text.push('\r'),
                    'a' => text.push('\u{7}'),
                    'b' => text.push('\u{8}'),
                    'f' => text.push('\u{c}'),
                    'v' => text.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let digits = match escaped {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.get(index..index + digits).unwrap_or_default().iter().collect();
                        let decoded = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == digits)
                            .and_then(char::from_u32)
                            .ok_or_else(|| ParseError::new(format!("invalid escape `\\{escaped}{hex}`"), index - 2))?;
                        text.push(decoded);
                        index += digits;
                    }
                    // Kept as written: regular expressions need `\.`, `\d`, ….
                    other => {
                        text.push('\\');
                        text.push(other);
                    }
                }
            }
            other => text.push(other),
        }
    }
}
