//! Event keys: deriving them (GitHub, custom sources) and matching them
//! against an automation's `on` patterns.

use serde_json::Value;

/// The GitHub event key: the event type (the `X-GitHub-Event` header, or
/// detected from the payload's keys as the reference service does when the
/// header is absent) plus `.action` when the payload has a non-empty one.
pub fn github_key(event_header: Option<&str>, payload: &Value) -> Option<String> {
    let kind = match event_header.map(str::trim).filter(|h| !h.is_empty()) {
        Some(h) => h.to_owned(),
        None => detect_github_type(payload)?.to_owned(),
    };
    match payload.get("action").and_then(Value::as_str).filter(|a| !a.is_empty()) {
        Some(action) => Some(format!("{kind}.{action}")),
        None => Some(kind),
    }
}

/// The reference service's detection order, on top-level keys.
fn detect_github_type(p: &Value) -> Option<&'static str> {
    let has = |k: &str| p.get(k).is_some();
    Some(if has("pull_request") && has("review") {
        "pull_request_review"
    } else if has("pull_request") {
        "pull_request"
    } else if has("issue") && has("comment") {
        "issue_comment"
    } else if has("issue") {
        "issues"
    } else if has("ref") && has("commits") {
        "push"
    } else if has("release") {
        "release"
    } else if has("workflow_run") {
        "workflow_run"
    } else if has("check_run") {
        "check_run"
    } else {
        return None;
    })
}

/// Most nodes an event-key expression may have.
pub const MAX_KEY_EXPR_NODES: usize = 16;
/// Longest event key kept; a longer result is no key.
pub const MAX_KEY_BYTES: usize = 256;
/// Functions an event-key expression may call: none takes an expression
/// reference, so none evaluates a sub-expression more than once.
const KEY_FUNCTIONS: &[&str] =
    &["join", "to_string", "to_number", "not_null", "type", "length", "contains", "starts_with", "ends_with"];

/// Compiles a custom source's event-key expression, refusing what could
/// make one delivery's key expensive. The expression runs natively on
/// every delivery, so it is bounded by its shape: at most
/// [`MAX_KEY_EXPR_NODES`] nodes and no projection, flatten, object-values
/// or expression reference. Without those, each node is evaluated once,
/// and a key costs at most that many passes over the payload.
pub fn compile_key_expr(expr: &str) -> Result<jmespath::Expression<'static>, String> {
    let compiled = jmespath::compile(expr).map_err(|e| e.to_string())?;
    let mut nodes = 0;
    check_key_ast(compiled.as_ast(), &mut nodes)?;
    Ok(compiled)
}

fn check_key_ast(ast: &jmespath::ast::Ast, nodes: &mut usize) -> Result<(), String> {
    use jmespath::ast::Ast;
    *nodes += 1;
    if *nodes > MAX_KEY_EXPR_NODES {
        return Err(format!("an event-key expression may have at most {MAX_KEY_EXPR_NODES} parts"));
    }
    let refuse = |what: &str| {
        Err(format!(
            "an event-key expression may not use {what} (it runs on every delivery; use field paths, \
             indexes, ||, && and simple functions)"
        ))
    };
    match ast {
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => {
            Ok(())
        }
        Ast::Projection { .. } => refuse("projections ([*], [?...], .*)"),
        Ast::Flatten { .. } => refuse("flatten ([])"),
        Ast::ObjectValues { .. } => refuse("object values (*)"),
        Ast::Expref { .. } => refuse("expression references (&)"),
        Ast::Not { node, .. } => check_key_ast(node, nodes),
        Ast::Comparison { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => {
            check_key_ast(lhs, nodes)?;
            check_key_ast(rhs, nodes)
        }
        Ast::Condition { predicate, then, .. } => {
            check_key_ast(predicate, nodes)?;
            check_key_ast(then, nodes)
        }
        Ast::MultiList { elements, .. } => elements.iter().try_for_each(|e| check_key_ast(e, nodes)),
        Ast::MultiHash { elements, .. } => elements.iter().try_for_each(|kv| check_key_ast(&kv.value, nodes)),
        Ast::Function { name, args, .. } => {
            if !KEY_FUNCTIONS.contains(&name.as_str()) {
                return refuse(&format!("the function {name}()"));
            }
            args.iter().try_for_each(|a| check_key_ast(a, nodes))
        }
    }
}

/// The key a custom source's JMESPath expression extracts: a string as is,
/// a number or boolean as text; anything else (or an error, or a key over
/// [`MAX_KEY_BYTES`]) is no key.
pub fn custom_key(expr: &str, payload: &Value) -> Result<Option<String>, String> {
    let compiled = compile_key_expr(expr)?;
    let data = jmespath::Variable::from_json(&payload.to_string()).map_err(|e| e.to_string())?;
    let result = compiled.search(data).map_err(|e| e.to_string())?;
    Ok(match &*result {
        jmespath::Variable::String(s) if !s.is_empty() && s.len() <= MAX_KEY_BYTES => Some(s.clone()),
        jmespath::Variable::Number(n) => Some(n.to_string()),
        jmespath::Variable::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// Whether an event key matches an `on` pattern: exactly, or as a glob
/// (Python `fnmatch` without case folding: `*` spans anything, `.` and `/`
/// included; `?`; `[abc]`, `[!abc]`, `[a-z]`).
pub fn key_matches(pattern: &str, key: &str) -> bool {
    pattern == key || glob(pattern, key)
}

/// The first character of `s` (which is not empty) and its length in bytes.
fn first(s: &str) -> (char, usize) {
    let c = s.chars().next().expect("not empty");
    (c, c.len_utf8())
}

/// Glob matching by characters, not bytes (as Python's `fnmatch` and the
/// bundled filter's `glob()` do: `?` is one character, `é` included),
/// without allocating: the matcher calls this for every pattern of every
/// automation on every delivery.
fn glob(p: &str, s: &str) -> bool {
    // Iterative matching with one backtrack point for the last `*`; indices
    // are byte offsets at character boundaries.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let (c, clen) = first(&s[si..]);
        if pi < p.len() {
            let (pc, plen) = first(&p[pi..]);
            match pc {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += clen;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p[pi..], c) {
                        if matched {
                            pi += next;
                            si += clen;
                            continue;
                        }
                    } else if c == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                pc if pc == c => {
                    pi += plen;
                    si += clen;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                // The star swallows one more character and the rest retries.
                let next = ss + first(&s[ss..]).1;
                pi = sp + 1;
                si = next;
                star = Some((sp, next));
            }
            None => return false,
        }
    }
    p[pi..].bytes().all(|c| c == b'*')
}

/// Matches one character against a `[...]` class at the start of `p`;
/// returns (matched, length of the class in bytes) or `None` if the class is
/// not closed.
fn class(p: &str, c: char) -> Option<(bool, usize)> {
    let negate = p[1..].starts_with('!');
    let start = if negate { 2 } else { 1 };
    let mut chars = p[start..].char_indices();
    let mut matched = false;
    let mut first_char = true;
    while let Some((i, lo)) = chars.next() {
        if lo == ']' && !first_char {
            return Some((matched != negate, start + i + 1));
        }
        first_char = false;
        // `lo-hi` is a range unless the `-` is followed by the closing `]`.
        let mut ahead = chars.clone();
        if let (Some((_, '-')), Some((_, hi))) = (ahead.next(), ahead.next())
            && hi != ']'
        {
            matched |= lo <= c && c <= hi;
            chars = ahead;
            continue;
        }
        matched |= lo == c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn github_keys() {
        assert_eq!(github_key(Some("pull_request"), &json!({"action": "opened"})), Some("pull_request.opened".into()));
        assert_eq!(github_key(Some("push"), &json!({"ref": "refs/heads/main"})), Some("push".into()));
        assert_eq!(github_key(Some("ping"), &json!({"zen": "x"})), Some("ping".into()));
        // Without the header, detected from the payload as the reference does.
        assert_eq!(
            github_key(None, &json!({"pull_request": {}, "review": {}, "action": "submitted"})),
            Some("pull_request_review.submitted".into())
        );
        assert_eq!(
            github_key(None, &json!({"issue": {}, "comment": {}, "action": "created"})),
            Some("issue_comment.created".into())
        );
        assert_eq!(github_key(None, &json!({"ref": "x", "commits": []})), Some("push".into()));
        assert_eq!(github_key(None, &json!({"zen": "x"})), None);
        assert_eq!(github_key(Some("issues"), &json!({"action": ""})), Some("issues".into()));
    }

    #[test]
    fn globs_count_characters_not_bytes() {
        // Expected values from Python's fnmatch.fnmatchcase, which the
        // bundled filter's glob() follows.
        for (key, pattern, want) in [
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
            assert_eq!(key_matches(pattern, key), want, "{pattern:?} on {key:?}");
        }
    }

    #[test]
    fn globs_follow_fnmatch() {
        assert!(key_matches("push", "push"));
        assert!(key_matches("pull_request.*", "pull_request.opened"));
        assert!(key_matches("pull_request*", "pull_request_review.submitted"));
        assert!(key_matches("*.opened", "issues.opened"));
        assert!(key_matches("issue?.opened", "issues.opened"));
        assert!(key_matches("[ip]*.opened", "pull_request.opened"));
        assert!(!key_matches("[!ip]*.opened", "pull_request.opened"));
        assert!(key_matches("release-[0-9]", "release-7"));
        assert!(!key_matches("pull_request.*", "pull_request"));
        assert!(!key_matches("Push", "push"));
        assert!(key_matches("*", "anything.at/all"));
        assert!(key_matches("a[b", "a[b"));
    }

    #[test]
    fn custom_keys() {
        assert_eq!(custom_key("type", &json!({"type": "order.paid"})), Ok(Some("order.paid".into())));
        assert_eq!(custom_key("n", &json!({"n": 3})), Ok(Some("3".into())));
        assert_eq!(custom_key("kind.name", &json!({"kind": {}})), Ok(None));
        assert!(custom_key("a[", &json!({})).is_err());
        // Shapes that could make a key expensive are refused.
        for bad in ["a[*].b", "a[?x == `1`]", "a[]", "a.*", "sort_by(a, &b)", "max_by(a, &b)", "keys(@)"] {
            assert!(compile_key_expr(bad).is_err(), "{bad} should be refused");
        }
        let many = vec!["@"; 20].join(", ");
        assert!(compile_key_expr(&format!("join('', [{many}])")).unwrap_err().contains("at most 16"));
        for ok in ["type", "event.kind", "object_kind || event_type", "join('.', [object_kind, action])", "a[0].b"] {
            compile_key_expr(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            custom_key(
                "join('.', [object_kind, object_attributes.action])",
                &json!({"object_kind": "merge_request", "object_attributes": {"action": "open"}})
            ),
            Ok(Some("merge_request.open".into()))
        );
        // The expression the jmespath_filter fuzz target found (>2 GiB
        // natively) is refused as an event-key expression.
        assert!(compile_key_expr(include_str!("../../../tests/fixtures/fuzz/jmespath-oom.txt")).is_err());
        // A huge key is no key.
        assert_eq!(custom_key("k", &json!({"k": "x".repeat(MAX_KEY_BYTES + 1)})), Ok(None));
    }

    /// Bounded property test (fuzz target `event_key`): random expressions
    /// from JMESPath's alphabet on random payloads never panic; an accepted
    /// expression gives a key of at most `MAX_KEY_BYTES`, and the GitHub
    /// rule always gives one for a payload with a known top-level key.
    #[test]
    fn property_event_keys_are_bounded_and_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x4e7);
        let atoms = [
            "a",
            "b",
            ".",
            "[0]",
            "[*]",
            "[]",
            "||",
            "&&",
            "!",
            "`1`",
            "'x'",
            "@",
            "join('.', [a, b])",
            "to_string(@)",
            "length(a)",
            "(",
            ")",
            "*",
            "==",
            "{k: a}",
        ];
        let payloads = [
            json!({"a": "x", "b": {"a": [1, 2, "y"]}}),
            json!({"a": ["p", "q"], "b": "z".repeat(300)}),
            json!([1, {"a": true}]),
            json!({"pull_request": {}, "action": "opened"}),
        ];
        for _ in 0..500 {
            let n = rng.random_range(1..8);
            let expr: String = (0..n).map(|_| atoms[rng.random_range(0..atoms.len())]).collect();
            let payload = &payloads[rng.random_range(0..payloads.len())];
            if let Ok(Some(key)) = custom_key(&expr, payload) {
                assert!(key.len() <= MAX_KEY_BYTES, "{expr}: {key}");
            }
            let header = if rng.random_bool(0.5) { Some("push") } else { None };
            let _ = github_key(header, payload);
        }
        assert_eq!(github_key(None, &payloads[3]).as_deref(), Some("pull_request.opened"));
    }
}
