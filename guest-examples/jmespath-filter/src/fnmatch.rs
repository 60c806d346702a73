//! Shell-style wildcard matching with the semantics of Python's
//! `fnmatch.fnmatchcase`, which the reference automation service uses for its
//! `glob()` filter function.
//!
//! - `*` matches any run of characters, including `/` and `.` (unlike a shell
//!   path glob);
//! - `?` matches exactly one character;
//! - `[seq]` matches one character in `seq`, `[!seq]` one character not in it;
//!   ranges such as `a-z` are allowed, a `]` directly after `[` or `[!` is a
//!   literal, and a `[` without a closing `]` is a literal `[`;
//! - everything else, backslash included, matches itself;
//! - the whole string must match, and the comparison is case-sensitive.
//!
//! Python compiles the pattern to a regular expression; matching directly is
//! equivalent for these single-character tokens and saves a regex compilation
//! per call.

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `?`: any single character.
    Any,
    /// A character that must appear as is.
    Literal(char),
    /// `[...]`: one character in (or, when negated, not in) the ranges.
    /// Single characters are stored as one-character ranges.
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Token {
    /// Whether this single-character token accepts `c` (`Star` is handled
    /// by the matcher, never here).
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Literal(l) => *l == c,
            Token::Class { negated, ranges } => {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                inside != *negated
            }
        }
    }
}

/// Parses a pattern the way `fnmatch.translate` reads it.
fn parse(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let n = p.len();
    let mut tokens = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let c = p[i];
        i += 1;
        match c {
            '*' => {
                // Consecutive stars mean the same as one; folding them keeps
                // the matcher's backtracking linear in the common case.
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::Any),
            '[' => {
                // Find the closing bracket; a `]` right after `[` or `[!` is
                // part of the set, not its end.
                let mut j = i;
                if j < n && p[j] == '!' {
                    j += 1;
                }
                if j < n && p[j] == ']' {
                    j += 1;
                }
                while j < n && p[j] != ']' {
                    j += 1;
                }
                if j >= n {
                    tokens.push(Token::Literal('['));
                } else {
                    tokens.push(parse_class(&p[i..j]));
                    i = j + 1;
                }
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    tokens
}

/// Parses the inside of `[...]` (without the brackets).
///
/// Python splits the set on range hyphens left to right: `x-y` is a range
/// when a character follows the hyphen, a hyphen first or last is literal,
/// and a range whose start is above its end matches nothing (Python drops
/// it, because the regex engine would reject it).
fn parse_class(body: &[char]) -> Token {
    let (negated, body) = match body.split_first() {
        Some(('!', rest)) => (true, rest),
        _ => (false, body),
    };
    let mut ranges = Vec::with_capacity(body.len());
    let mut k = 0;
    while k < body.len() {
        let lo = body[k];
        if k + 2 < body.len() && body[k + 1] == '-' {
            let hi = body[k + 2];
            if lo <= hi {
                ranges.push((lo, hi));
            }
            k += 3;
        } else {
            ranges.push((lo, lo));
            k += 1;
        }
    }
    Token::Class { negated, ranges }
}

/// Returns whether the whole of `name` matches the wildcard `pattern`
/// (Python `fnmatch.fnmatchcase(name, pattern)`).
pub fn fnmatch(name: &str, pattern: &str) -> bool {
    let tokens = parse(pattern);
    let text: Vec<char> = name.chars().collect();

    // Greedy matching with backtracking to the most recent star: every token
    // other than `*` consumes exactly one character, so remembering only the
    // last star is enough (an earlier star can never do better).
    let (mut t, mut s) = (0usize, 0usize);
    let mut last_star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                last_star = Some((t, s));
                t += 1;
                continue;
            }
            Some(token) if token.accepts(text[s]) => {
                t += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match last_star {
            Some((star_t, star_s)) => {
                // Let the star swallow one more character and retry.
                t = star_t + 1;
                s = star_s + 1;
                last_star = Some((star_t, star_s + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn literals_and_wildcards() {
        assert!(fnmatch("OpenHands/OpenHands", "OpenHands/OpenHands"));
        assert!(!fnmatch("OpenHands/OpenHands", "other/repo"));
        assert!(fnmatch("OpenHands/automation", "OpenHands/*"));
        assert!(fnmatch("OpenHands/automation", "*/automation"));
        assert!(!fnmatch("OpenHands/automation", "Other/*"));
        assert!(fnmatch("release-1", "release-?"));
        assert!(!fnmatch("release-1", "release-??"));
        assert!(fnmatch("", ""));
        assert!(fnmatch("", "*"));
        assert!(!fnmatch("", "?"));
        assert!(!fnmatch("a", ""));
    }

    #[test]
    fn star_crosses_slashes_and_dots() {
        assert!(fnmatch("refs/heads/release/1.0", "refs/heads/release/*"));
        assert!(fnmatch("a/b/c.d.e", "a*e"));
        assert!(fnmatch(".hidden", "*"));
        assert!(fnmatch("line1\nline2", "line1*2"));
        assert!(!fnmatch("refs/heads/main", "refs/heads/release/*"));
    }

    #[test]
    fn backtracking() {
        assert!(fnmatch("abcabcabd", "*abd"));
        assert!(fnmatch("aaaa", "a**a"));
        assert!(fnmatch("mississippi", "*sip*"));
        assert!(!fnmatch("mississippi", "*sipx*"));
        assert!(fnmatch("abc", "*?*?*?*"));
        assert!(!fnmatch("ab", "*?*?*?*"));
    }

    /// The same table as the host's `globs_count_characters_not_bytes`
    /// (host/src/events/keys.rs), from Python's `fnmatch.fnmatchcase`: the
    /// host's event-key globs and this `glob()` agree on non-ASCII.
    #[test]
    fn non_ascii_counts_characters() {
        for (name, pattern, want) in [
            ("é", "?", true),
            ("issues.é", "issues.?", true),
            ("pré.opened", "pr?.opened", true),
            ("pré", "pr[é]", true),
            ("pré", "pr[a-z]", false),
            ("prë", "pr[à-ÿ]", true),
            ("naïve.x", "na*e.x", true),
            ("日本.push", "??.push", true),
            ("日本.push", "?.push", false),
            ("日本.push", "*.push", true),
            ("ab", "a[!é]", true),
            ("aé", "a[!é]", false),
            ("é", "[", false),
        ] {
            assert_eq!(fnmatch(name, pattern), want, "{pattern:?} on {name:?}");
        }
    }

    #[test]
    fn case_sensitive() {
        assert!(!fnmatch("openhands/x", "OpenHands/*"));
        assert!(!fnmatch("README.MD", "*.md"));
    }

    #[test]
    fn character_classes() {
        assert!(fnmatch("v1", "v[0-9]"));
        assert!(!fnmatch("vx", "v[0-9]"));
        assert!(fnmatch("vx", "v[!0-9]"));
        assert!(!fnmatch("v1", "v[!0-9]"));
        assert!(fnmatch("b", "[abc]"));
        assert!(!fnmatch("d", "[abc]"));
        // `]` first in the set is a literal.
        assert!(fnmatch("]", "[]]"));
        assert!(fnmatch("a", "[]a]"));
        assert!(fnmatch("x", "[!]]"));
        assert!(!fnmatch("]", "[!]]"));
        // A leading or trailing hyphen is a literal.
        assert!(fnmatch("-", "[-a]"));
        assert!(fnmatch("-", "[a-]"));
        assert!(!fnmatch("b", "[a-]"));
        // `a-c-e`: range a-c, then a literal `-` and `e`.
        assert!(fnmatch("b", "[a-c-e]"));
        assert!(fnmatch("-", "[a-c-e]"));
        assert!(fnmatch("e", "[a-c-e]"));
        assert!(!fnmatch("d", "[a-c-e]"));
        // `^` and `[` are ordinary inside a set; `!` only negates when first.
        assert!(fnmatch("^", "[^]"));
        assert!(fnmatch("[", "[[]"));
        assert!(fnmatch("!", "[a!]"));
        // A reversed range is empty: it matches nothing, and its negation anything.
        assert!(!fnmatch("m", "[z-a]"));
        assert!(fnmatch("m", "[!z-a]"));
    }

    #[test]
    fn unclosed_bracket_is_literal() {
        assert!(fnmatch("[abc", "[abc"));
        assert!(fnmatch("a[", "a["));
        assert!(fnmatch("[]", "[]"));
        assert!(!fnmatch("a", "[a"));
    }

    #[test]
    fn backslash_is_literal() {
        assert!(fnmatch(r"a\b", r"a\b"));
        assert!(fnmatch(r"a\*", r"a\*"));
        assert!(!fnmatch("a*", r"a\*"));
    }

    #[test]
    fn unicode_characters_count_once() {
        assert!(fnmatch("café", "caf?"));
        assert!(fnmatch("日本", "??"));
        assert!(fnmatch("é", "[à-ü]"));
    }
}
