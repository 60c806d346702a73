//! Where Python's `jmespath` (1.1, the reference service's library) departs
//! from the specification that the `jmespath` crate follows, and filters
//! written for the reference rely on the departure:
//!
//! - **Ordering strings.** `<`, `<=`, `>`, `>=` compare strings too (by code
//!   point), so `created_at > '2024-01-01'` works on ISO dates; a string
//!   against a number is an error; any other type gives `null`, as in the
//!   specification. The crate gives `null` for everything but numbers, so
//!   ordering comparisons are rewritten into calls to functions with the
//!   Python behaviour (names no expression can spell, so no user can call
//!   them directly).
//! - **Unquoted literals.** `` `opened` `` (not valid JSON) is the string
//!   `"opened"`: the deprecated form that AWS's documentation made common.
//!   The crate refuses it, so such literals are rewritten as JSON strings
//!   before parsing.
//!
//! Elsewhere the two agree as far as this project has compared them: both
//! pass all 908 compliance cases, and a differential run of 78 expressions
//! over the 273 GitHub payloads found no other difference. One that is not
//! bridged: objects keep their keys sorted here (the crate stores them in a
//! `BTreeMap`) but in document order in Python, which shows in `keys`,
//! `values`, `to_string` and `*` on an object.

use std::borrow::Cow;
use std::cmp::Ordering;

use jmespath::ast::{Ast, Comparator, KeyValuePair};
use jmespath::functions::Function;
use jmespath::{Context, ErrorReason, JmespathError, Rcvar, RuntimeError, Variable};

/// The name of the function an ordering comparator is rewritten into, or
/// `None` for `==` and `!=`, which the crate already evaluates like Python.
pub(crate) fn ordering_function(comparator: &Comparator) -> Option<&'static str> {
    match comparator {
        Comparator::LessThan => Some("<"),
        Comparator::LessThanEqual => Some("<="),
        Comparator::GreaterThan => Some(">"),
        Comparator::GreaterThanEqual => Some(">="),
        Comparator::Equal | Comparator::NotEqual => None,
    }
}

/// Python's ordering comparison under one operator's name.
pub(crate) struct PythonOrdering {
    accepts: fn(Ordering) -> bool,
}

impl PythonOrdering {
    /// The four operators, keyed by the names [`ordering_function`] uses.
    pub(crate) fn all() -> [(&'static str, PythonOrdering); 4] {
        let op = |accepts: fn(Ordering) -> bool| PythonOrdering { accepts };
        [
            ("<", op(Ordering::is_lt)),
            ("<=", op(Ordering::is_le)),
            (">", op(Ordering::is_gt)),
            (">=", op(Ordering::is_ge)),
        ]
    }
}

impl Function for PythonOrdering {
    fn evaluate(&self, args: &[Rcvar], ctx: &mut Context<'_>) -> jmespath::SearchResult {
        let ordering = match (&*args[0], &*args[1]) {
            (Variable::Number(a), Variable::Number(b)) => {
                a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b))
            }
            (Variable::String(a), Variable::String(b)) => Some(a.cmp(b)),
            // Python raises TypeError here; report which side is off, with
            // the caret on the operator.
            (Variable::String(_), Variable::Number(_)) | (Variable::Number(_), Variable::String(_)) => {
                let reason = ErrorReason::Runtime(RuntimeError::InvalidType {
                    expected: args[0].get_type().to_string(),
                    actual: args[1].get_type().to_string(),
                    position: 1,
                });
                return Err(JmespathError::from_ctx(ctx, reason));
            }
            _ => None,
        };
        Ok(Rcvar::new(match ordering {
            Some(ordering) => Variable::Bool((self.accepts)(ordering)),
            None => Variable::Null,
        }))
    }
}

/// Rewrites the syntax tree in place for the Python behaviour (ordering
/// comparisons become function calls) and checks, in the same walk, that
/// every function it calls is `known`.
///
/// The recursion is bounded: the caller has already limited how much
/// nesting an expression may have.
pub(crate) fn prepare(expression: &str, ast: &mut Ast, known: &dyn Fn(&str) -> bool) -> Result<(), JmespathError> {
    let go = |ast: &mut Ast| prepare(expression, ast, known);
    match ast {
        Ast::Comparison { comparator, lhs, rhs, .. } => {
            go(lhs)?;
            go(rhs)?;
            if let Some(name) = ordering_function(comparator) {
                // Take the node out to move its operands into the call.
                let placeholder = Ast::Identity { offset: 0 };
                if let Ast::Comparison { offset, lhs, rhs, .. } = std::mem::replace(ast, placeholder) {
                    *ast = Ast::Function { offset, name: name.to_owned(), args: vec![*lhs, *rhs] };
                }
            }
        }
        Ast::Function { offset, name, args } => {
            if !known(name) {
                let reason = ErrorReason::Runtime(RuntimeError::UnknownFunction(name.clone()));
                return Err(JmespathError::new(expression, *offset, reason));
            }
            args.iter_mut().try_for_each(go)?;
        }
        Ast::Condition { predicate: lhs, then: rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => {
            go(lhs)?;
            go(rhs)?;
        }
        Ast::Expref { ast: node, .. }
        | Ast::Flatten { node, .. }
        | Ast::Not { node, .. }
        | Ast::ObjectValues { node, .. } => go(node)?,
        Ast::MultiList { elements, .. } => elements.iter_mut().try_for_each(go)?,
        Ast::MultiHash { elements, .. } => elements.iter_mut().try_for_each(|KeyValuePair { value, .. }| go(value))?,
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => {}
    }
    Ok(())
}

/// Rewrites each `` `...` `` literal that is not JSON but is valid as the
/// inside of a JSON string (after leading whitespace) into a JSON string
/// literal, as Python's lexer reads it. Everything else is left for the
/// parser, errors included.
///
/// Positions in a later error message refer to the rewritten text, which
/// differs from the original only inside such literals.
pub(crate) fn legacy_literals(expression: &str) -> Cow<'_, str> {
    if !expression.contains('`') {
        return Cow::Borrowed(expression);
    }
    let mut out = String::with_capacity(expression.len() + 8);
    let mut rewritten = false;
    let mut chars = expression.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            // Quoted text: copy through to the closing quote, escapes included.
            '\'' | '"' => {
                out.push(c);
                while let Some((_, d)) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '`' => {
                // Find the closing backtick; `\` escapes the next character.
                let mut end = None;
                while let Some((i, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '`' {
                        end = Some(i);
                        break;
                    }
                }
                let Some(end) = end else {
                    // Unclosed: the parser reports it.
                    out.push_str(&expression[start..]);
                    break;
                };
                let raw = &expression[start + 1..end];
                let lexeme: Cow<'_, str> =
                    if raw.contains("\\`") { Cow::Owned(raw.replace("\\`", "`")) } else { Cow::Borrowed(raw) };
                let as_string = || -> Option<String> {
                    serde_json::from_str::<serde_json::Value>(&lexeme).err()?;
                    serde_json::from_str(&format!("\"{}\"", lexeme.trim_start())).ok()
                };
                match as_string() {
                    Some(text) => {
                        let json = serde_json::to_string(&text).unwrap_or_default();
                        out.push('`');
                        out.push_str(&json.replace('`', "\\`"));
                        out.push('`');
                        rewritten = true;
                    }
                    None => out.push_str(&expression[start..=end]),
                }
            }
            _ => out.push(c),
        }
    }
    if rewritten { Cow::Owned(out) } else { Cow::Borrowed(expression) }
}

#[cfg(test)]
mod tests {
    use super::legacy_literals;

    #[test]
    fn legacy_literals_become_json_strings() {
        assert_eq!(legacy_literals("a == `opened`"), r#"a == `"opened"`"#);
        assert_eq!(legacy_literals("a == ` opened `"), r#"a == `"opened "`"#);
        assert_eq!(legacy_literals("[?s==`running`].id"), r#"[?s==`"running"`].id"#);
        // Escaped backticks inside: the string holds a backtick.
        assert_eq!(legacy_literals(r"a == `x\`y`"), r#"a == `"x\`y"`"#);
    }

    #[test]
    fn json_literals_and_quoted_text_are_untouched() {
        for expression in [
            "a == `1`",
            "a == `\"x\"`",
            "a == `[1, 2]`",
            "a == `true`",
            "a == 'it`s' || b == `null`",
            r#""odd`name" == `{"a": 1}`"#,
            "no literals at all",
            // Neither JSON nor a valid string inside: left for the parser.
            "a == `\"unterminated`",
            "a == `unclosed",
        ] {
            assert_eq!(legacy_literals(expression), expression);
        }
    }
}
