//! Regular expressions.

/// A regular expression of the supported subset, matched against a whole value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pattern {
    /// Alternatives; each a sequence of atoms.
    branches: Vec<Vec<Atom>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Atom {
    class: Class,
    repeat: Repeat,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Literal(char),
    Any,
    Digit,
    Word,
    Space,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Repeat {
    One,
    /// `?`
    Optional,
    /// `*`
    Many,
}

/// Patterns longer than this are refused (matching is linear in value length times pattern length).
const MAX_PATTERN_CHARS: usize = 1024;

impl Pattern {
    pub(super) fn compile(text: &str) -> Result<Self, String> {
        if text.chars().count() > MAX_PATTERN_CHARS {
            return Err(format!(
                "regular expressions are limited to {MAX_PATTERN_CHARS} characters"
            ));
        }
        let unsupported = |what: &str| {
            format!("unsupported regular expression `{text}`: {what} (supported: literals, `\\` escapes, `.`, `\\d`, `\\w`, `\\s`, `*`, `+`, `?`, `|`)")
        };
        let mut branches: Vec<Vec<Atom>> = vec![Vec::new()];
        let mut chars = text.chars().peekable();
        let mut at_branch_start = true;
        while let Some(c) = chars.next() {
            let branch = branches.last_mut().ok_or_else(|| unsupported("empty"))?;
            let class = match c {
                '|' => {
                    branches.push(Vec::new());
                    at_branch_start = true;
                    continue;
                }
                // Matching is anchored already.
                '^' if at_branch_start => continue,
                '$' if chars.peek().is_none_or(|next| *next == '|') => continue,
                '.' => Class::Any,
                '\\' => match chars.next() {
                    Some('d') => Class::Digit,
                    Some('w') => Class::Word,
                    Some('s') => Class::Space,
                    Some(escaped) if !escaped.is_alphanumeric() => Class::Literal(escaped),
                    Some(escaped) => return Err(unsupported(&format!("`\\{escaped}`"))),
                    None => return Err(unsupported("trailing `\\`")),
                },
                '*' | '+' | '?' => {
                    let Some(last) = branch.last_mut().filter(|atom| atom.repeat == Repeat::One) else {
                        return Err(unsupported(&format!("`{c}` follows nothing to repeat")));
                    };
                    match c {
                        '*' => last.repeat = Repeat::Many,
                        '?' => last.repeat = Repeat::Optional,
                        _ => {
                            let copy = Atom {
                                class: last.class,
                                repeat: Repeat::Many,
                            };
                            branch.push(copy);
                        }
                    }
                    // A lazy or possessive suffix is not supported.
                    if matches!(chars.peek(), Some('?' | '+')) {
                        return Err(unsupported("lazy or possessive quantifiers"));
                    }
                    continue;
                }
                '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' => {
                    return Err(unsupported(&format!("`{c}`")));
                }
                other => Class::Literal(other),
            };
            at_branch_start = false;
            branch.push(Atom {
                class,
                repeat: Repeat::One,
            });
        }
        Ok(Self { branches })
    }

    /// Whether the whole of `text` matches one of the alternatives.
    pub(crate) fn matches(&self, text: &str) -> bool {
        self.branches.iter().any(|atoms| matches_branch(atoms, text))
    }
}

impl Class {
    fn accepts(self, c: char) -> bool {
        match self {
            Self::Literal(expected) => c == expected,
            Self::Any => c != '\n',
            Self::Digit => c.is_ascii_digit(),
            Self::Word => c.is_ascii_alphanumeric() || c == '_',
            Self::Space => c.is_whitespace(),
        }
    }
}

/// Runs the branch as an NFA over the positions between atoms (no backtracking).
fn matches_branch(atoms: &[Atom], text: &str) -> bool {
    let mut current = vec![false; atoms.len() + 1];
    current[0] = true;
    close(atoms, &mut current);
    for c in text.chars() {
        let mut next = vec![false; atoms.len() + 1];
        let mut any = false;
        for (position, atom) in atoms.iter().enumerate() {
            if current[position] && atom.class.accepts(c) {
                let target = if atom.repeat == Repeat::Many {
                    position
                } else {
                    position + 1
                };
                next[target] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(atoms, &mut next);
        current = next;
    }
    current[atoms.len()]
}

/// Adds the positions reachable by skipping optional atoms.
fn close(atoms: &[Atom], states: &mut [bool]) {
    for (position, atom) in atoms.iter().enumerate() {
        if states[position] && atom.repeat != Repeat::One {
            states[position + 1] = true;
        }
    }
}
