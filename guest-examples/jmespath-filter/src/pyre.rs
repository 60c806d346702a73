//! Python `re.search` on top of the `regex` crate.
//!
//! The reference service's `regex(s, pattern)` is `re.search(pattern, s)`.
//! The two syntaxes agree on what filters commonly use (classes,
//! quantifiers, anchors, groups, `(?P<name>...)`, inline flags, Unicode
//! `\d \w \s \b`); this module bridges the differences that can be bridged
//! by rewriting the pattern or searching twice:
//!
//! - `\Z` (end of text) is `\z` in Rust;
//! - `{,n}` and `{,}` are quantifiers in Python (`{0,n}`, `{0,}`), and a
//!   brace that does not form a quantifier (`{`, `a{b`, `{}`, `a{ 1}`) is a
//!   literal, where Rust would refuse the pattern or read it differently;
//! - inside a set, `[` is a literal in Python, while Rust reads `[[:alpha:]]`
//!   as a POSIX class and `[a[b]]` as a nested set; `&&` and `~~` are set
//!   operations in Rust only;
//! - without `(?m)`, Python's `$` also matches just before a newline that
//!   ends the text; a second search without that newline reproduces it
//!   (except for patterns that go on to match that newline, such as `$\n`);
//! - in a set, `\b` is a backspace in Python.
//!
//! What cannot be bridged: look-around (`(?=`, `(?!`, `(?<=`, `(?<!`),
//! back-references (`\1`, `(?P=name)`), `\N{...}` names, conditionals and
//! possessive or atomic groups do not exist in the `regex` crate, so such a
//! pattern fails to compile and `regex()` returns `false` (as for an invalid
//! pattern). Conversely some patterns Python rejects are accepted: `\p{L}`
//! and `\x{...}` escapes, inline flags after the start (`a(?i)`), a
//! quantifier on an anchor (`^*`) or on a quantifier (`a{2}{3}`); such a
//! pattern may match where the reference returns `false`.

use regex_automata::meta::{Config, Regex};
use regex_automata::nfa::thompson::WhichCaptures;

/// A compiled Python pattern.
#[derive(Debug, Clone)]
pub struct PyRegex {
    regex: Regex,
    /// Whether a `$` (outside a set) may need to match before a final
    /// newline, and no `\Z` makes the second search inexact.
    search_before_final_newline: bool,
}

impl PyRegex {
    /// Compiles a pattern written in Python's syntax, or `None` if the
    /// `regex` crate cannot express it (or it is invalid in both).
    pub fn new(pattern: &str) -> Option<Self> {
        let translated = translate(pattern);
        let regex = Regex::builder().configure(engine_config()).build(&translated.pattern).ok()?;
        Some(Self { regex, search_before_final_newline: translated.has_dollar && !translated.has_end_of_text })
    }

    /// `re.search(pattern, text) is not None`.
    pub fn search(&self, text: &str) -> bool {
        if self.regex.is_match(text) {
            return true;
        }
        // Python's `$` matches at the end and just before a final newline.
        // Any match in the text without that newline is a match Python finds
        // in the whole text (the only anchor that could tell them apart is
        // `\z`, excluded above), so the second search never over-matches.
        // It misses only patterns that consume the newline after `$` (`$\n`).
        self.search_before_final_newline && text.strip_suffix('\n').is_some_and(|trimmed| self.regex.is_match(trimmed))
    }
}

/// The engine set-up: searches that stay fast over long texts.
///
/// The host keeps filter instances, and each keeps its compiled
/// expressions (the regexes with them), so a pattern is built once and
/// searched on many events. The lazy DFA (its states built as a search
/// reaches them, so cheap to set up) and the literal prefilter (a `memchr`
/// scan for a literal every match contains, such as `fix` in
/// `fix(es)? #12\b`) keep a search over a 10 KB issue body to about 1.6 µs,
/// where the bounded backtracker and the PikeVM alone took about 170 µs
/// (natively; see BENCHMARKS.md, 2026-12-07). Building the prefilters makes
/// compiling a new instance's expressions slower (1,000 of them: 3.7 ->
/// 7.8 ms natively), paid once per kept instance. The full and one-pass DFAs stay off: they are built up
/// front, and a yes/no search reads no captures.
fn engine_config() -> Config {
    Config::new().which_captures(WhichCaptures::None).dfa(false).onepass(false)
}

/// A pattern rewritten in the `regex` crate's syntax.
#[derive(Debug, PartialEq, Eq)]
struct Translated {
    pattern: String,
    /// An unescaped `$` outside a set.
    has_dollar: bool,
    /// A `\Z` (translated to `\z`).
    has_end_of_text: bool,
}

/// Rewrites the Python-only syntax listed in the module docs. Everything
/// else is copied as is, escapes included, so an escape Python rejects
/// reaches the `regex` crate unchanged and is (nearly always) rejected there
/// too.
fn translate(pattern: &str) -> Translated {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out =
        Translated { pattern: String::with_capacity(pattern.len() + 8), has_dollar: false, has_end_of_text: false };
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                match chars.get(i + 1) {
                    Some('Z') => {
                        out.pattern.push_str(r"\z");
                        out.has_end_of_text = true;
                    }
                    Some(&next) => {
                        out.pattern.push('\\');
                        out.pattern.push(next);
                    }
                    // A trailing backslash is an error in both.
                    None => out.pattern.push('\\'),
                }
                i += 2;
            }
            '[' => i = copy_set(&chars, i, &mut out.pattern),
            '{' => match quantifier(&chars, i) {
                Some((quantifier, next)) => {
                    out.pattern.push_str(&quantifier);
                    i = next;
                }
                None => {
                    out.pattern.push_str(r"\{");
                    i += 1;
                }
            },
            // A stray closing bracket or brace is a literal in Python.
            c @ ('}' | ']') => {
                out.pattern.push('\\');
                out.pattern.push(c);
                i += 1;
            }
            '$' => {
                out.has_dollar = true;
                out.pattern.push('$');
                i += 1;
            }
            c => {
                out.pattern.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Copies a set starting at `chars[start] == '['` and returns the index
/// after its closing `]` (or the end, for an unterminated set, which both
/// engines reject).
fn copy_set(chars: &[char], start: usize, out: &mut String) -> usize {
    out.push('[');
    let mut j = start + 1;
    if chars.get(j) == Some(&'^') {
        out.push('^');
        j += 1;
    }
    // A `]` first in the set is a literal in both syntaxes.
    if chars.get(j) == Some(&']') {
        out.push_str(r"\]");
        j += 1;
    }
    while j < chars.len() {
        match chars[j] {
            '\\' => {
                match chars.get(j + 1) {
                    // In a set, Python's `\b` is a backspace.
                    Some('b') => out.push_str(r"\x08"),
                    Some(&next) => {
                        out.push('\\');
                        out.push(next);
                    }
                    None => out.push('\\'),
                }
                j += 2;
            }
            ']' => {
                out.push(']');
                return j + 1;
            }
            // Literals in Python; nested sets and set operations in Rust.
            c @ ('[' | '&' | '~') => {
                out.push('\\');
                out.push(c);
                j += 1;
            }
            c => {
                out.push(c);
                j += 1;
            }
        }
    }
    j
}

/// Reads a Python counted repetition at `chars[start] == '{'`: `{m}`,
/// `{m,}`, `{,n}`, `{m,n}` or `{,}` with plain digits. Returns it in Rust
/// syntax with the index after it, or `None` when Python would read the
/// brace as a literal.
fn quantifier(chars: &[char], start: usize) -> Option<(String, usize)> {
    let digits = |from: usize| -> (String, usize) {
        let mut end = from;
        while chars.get(end).is_some_and(char::is_ascii_digit) {
            end += 1;
        }
        (chars[from..end].iter().collect(), end)
    };
    let (min, mut j) = digits(start + 1);
    let max = if chars.get(j) == Some(&',') {
        let (max, end) = digits(j + 1);
        j = end;
        Some(max)
    } else {
        None
    };
    if chars.get(j) != Some(&'}') || (min.is_empty() && max.is_none()) {
        return None;
    }
    let min = if min.is_empty() { "0".to_owned() } else { min };
    let quantifier = match max {
        None => format!("{{{min}}}"),
        Some(max) => format!("{{{min},{max}}}"),
    };
    Some((quantifier, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(pattern: &str, text: &str) -> bool {
        PyRegex::new(pattern).is_some_and(|re| re.search(text))
    }

    #[test]
    fn plain_patterns_are_unchanged() {
        for pattern in [r"^refs/tags/v", r"v[0-9]+\.[0-9]+\.[0-9]+", r"(?i)wip", r"(?P<n>\d+)", r"a{2,3}"] {
            assert_eq!(translate(pattern).pattern, pattern);
        }
    }

    #[test]
    fn end_of_text() {
        assert_eq!(translate(r"abc\Z").pattern, r"abc\z");
        assert_eq!(translate(r"a\\Z").pattern, r"a\\Z");
        assert!(search(r"v[0-9]+\Z", "tag v12"));
        assert!(!search(r"v[0-9]+\Z", "v12\n"));
    }

    #[test]
    fn dollar_matches_before_a_final_newline() {
        assert!(search("fix$", "line\nfix\n"));
        assert!(search("^fix$", "fix\n"));
        assert!(!search("^fix$", "fix\n\n"));
        assert!(!search("fix$", "fix\nmore"));
        assert!(search("(?m)^fix$", "a\nfix\nb"));
        // `\Z` is strict, so the second search is not made.
        assert!(!search(r"fix$|nope\Z", "fix\n"));
        // Inside a set `$` is a literal.
        assert!(!translate("[$]").has_dollar);
    }

    #[test]
    fn braces() {
        assert_eq!(translate("a{,2}b").pattern, "a{0,2}b");
        assert_eq!(translate("a{,}").pattern, "a{0,}");
        assert_eq!(translate("a{3,}").pattern, "a{3,}");
        assert_eq!(translate("{").pattern, r"\{");
        assert_eq!(translate("{}").pattern, r"\{\}");
        assert_eq!(translate("a{b}").pattern, r"a\{b\}");
        assert_eq!(translate("a{ 1}").pattern, r"a\{ 1\}");
        assert_eq!(translate(r"\{x\}").pattern, r"\{x\}");
        assert!(search("a{,2}b", "xb"));
        assert!(search("a{b", "a{b}"));
        assert!(search("{}", "x{}"));
        assert!(!search("a{ 1}", "a"));
        assert!(search("a{ 1}", "a{ 1}"));
        // Invalid in both.
        assert!(!search("x{2,1}", "xx"));
    }

    #[test]
    fn sets() {
        assert_eq!(translate("[[:alpha:]]").pattern, r"[\[:alpha:]\]");
        assert!(!search("[[:alpha:]]", "abc"));
        assert!(search("[[:alpha:]]", "a]"));
        assert!(search("[]a]", "]"));
        assert!(search("[^]a]", "b"));
        assert!(search("[a&&b]", "&"));
        assert!(search(r"[\]x]", "]"));
        assert!(search("[{]", "{"));
        assert!(search(r"[\b]", "\u{8}"));
        assert!(!search(r"[\b]", "b"));
    }

    #[test]
    fn long_and_non_ascii_texts_search_as_python_does() {
        // The lazy DFA gives up on a Unicode `\b` at a non-ASCII byte and
        // the meta engine searches again without it: same answers.
        let long = "Ünïcödé wörds and more text. ".repeat(400);
        assert!(search(r"fix(es)? #12\b", &format!("{long}this fixes #12, ü")));
        assert!(!search(r"fix(es)? #12\b", &format!("{long}this fixes #123")));
        assert!(search(r"\bwörds\b", &long));
        assert!(!search(r"\bwörd\b", &long));
        assert!(search(r"(?i)ÜNÏ", &long));
        assert!(search(r"^Ünï", &long) && !search(r"^wörds", &long));
        // A literal the prefilter finds, where the rest of the pattern fails.
        assert!(!search(r"fix(es)? #[0-9]+x", &"fixes #1 ".repeat(2000)));
    }

    #[test]
    fn unsupported_syntax_does_not_compile() {
        for pattern in ["(?<=a)b", "(?=a)", "(?!a)", r"(a)\1", "(?P<n>a)(?P=n)", "[invalid", r"trailing\", "*"] {
            assert!(PyRegex::new(pattern).is_none(), "{pattern}");
        }
    }
}
