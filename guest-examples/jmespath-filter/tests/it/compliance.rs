//! The official JMESPath compliance suite (`jmespath-compliance/*.json`),
//! run through the filter's engine: plain JMESPath results, no truthiness.
//!
//! Each file is a list of `{given, cases: [{expression, result | error |
//! bench}]}`. A case with `result` must evaluate to it (numbers compare by
//! value, so `1 == 1.0`); a case with `error` must fail to compile or to
//! evaluate; a benchmark case without a result must compile (`parse`) or
//! evaluate (`interpret`, `full`) without error.

use std::fs;

use jmespath_filter::eval::{Engine, parse_payload};
use serde_json::Value;

use crate::support::fixtures_dir;

/// Cases that are known not to pass, as (file, expression, why). Empty: the
/// whole suite passes. The test fails if this list and the failures differ,
/// so a fix or a regression is noticed either way.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// What one case expects.
enum Expect<'a> {
    Result(&'a Value),
    Error(&'a str),
    /// A benchmark with no recorded result: it only has to run.
    Runs {
        evaluate: bool,
    },
}

#[test]
fn compliance_suite() {
    let dir = fixtures_dir().join("jmespath-compliance");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "expected the whole suite in {}", dir.display());

    let engine = Engine::new();
    let mut passed = 0usize;
    let mut failures: Vec<(String, String, String)> = Vec::new();
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(path).unwrap();
        let suites: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("{file} is not a JSON list: {err}"));
        for suite in &suites {
            let given = parse_payload(&suite["given"].to_string()).unwrap();
            for case in suite["cases"].as_array().expect("cases") {
                let expression = case["expression"].as_str().expect("expression");
                let expect = if let Some(error) = case.get("error") {
                    Expect::Error(error.as_str().unwrap_or("error"))
                } else if let Some(result) = case.get("result") {
                    Expect::Result(result)
                } else {
                    let bench = case.get("bench").and_then(Value::as_str);
                    assert!(bench.is_some(), "{file}: `{expression}` expects nothing");
                    Expect::Runs { evaluate: bench != Some("parse") }
                };
                let outcome = engine.search(expression, &given);
                let problem = match (&expect, &outcome) {
                    (Expect::Result(expected), Ok(actual)) => {
                        let actual = serde_json::to_value(&**actual).unwrap();
                        (!json_eq(expected, &actual)).then(|| format!("expected {expected}, got {actual}"))
                    }
                    (Expect::Result(expected), Err(err)) => Some(format!("expected {expected}, got error: {err}")),
                    (Expect::Error(_), Err(_)) => None,
                    (Expect::Error(kind), Ok(actual)) => Some(format!("expected a {kind} error, got {actual:?}")),
                    (Expect::Runs { .. }, Ok(_)) => None,
                    (Expect::Runs { evaluate: true }, Err(err)) => Some(format!("benchmark failed: {err}")),
                    // A `parse` benchmark only has to compile.
                    (Expect::Runs { evaluate: false }, Err(err)) => {
                        engine.compile(expression).is_err().then(|| format!("benchmark failed to compile: {err}"))
                    }
                };
                match problem {
                    None => passed += 1,
                    Some(problem) => failures.push((file.clone(), expression.to_owned(), problem)),
                }
            }
        }
    }

    eprintln!("JMESPath compliance: {passed} of {} cases pass in {} files", passed + failures.len(), files.len());
    let unexpected: Vec<_> = failures
        .iter()
        .filter(|(file, expr, _)| !KNOWN_FAILURES.iter().any(|(f, e, _)| f == file && e == expr))
        .collect();
    let fixed: Vec<_> = KNOWN_FAILURES
        .iter()
        .filter(|(f, e, _)| !failures.iter().any(|(file, expr, _)| f == file && e == expr))
        .collect();
    let report: Vec<String> =
        unexpected.iter().map(|(file, expr, problem)| format!("{file}: `{expr}`: {problem}")).collect();
    assert!(unexpected.is_empty(), "{} unexpected failures:\n{}", unexpected.len(), report.join("\n"));
    assert!(fixed.is_empty(), "these known failures now pass: {fixed:?}");
    assert!(passed > 800, "only {passed} cases ran");
}

/// JSON equality with numbers compared by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, value)| y.get(key).is_some_and(|other| json_eq(value, other)))
        }
        _ => a == b,
    }
}

#[test]
fn json_eq_compares_numbers_by_value() {
    let a: Value = serde_json::from_str(r#"{"a": [1, 2.0, {"b": -0.0}]}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a": [1.0, 2, {"b": 0}]}"#).unwrap();
    assert!(json_eq(&a, &b));
    let c: Value = serde_json::from_str(r#"{"a": [1, 2, {"b": 1}]}"#).unwrap();
    assert!(!json_eq(&a, &c));
    assert!(!json_eq(&Value::from(1), &Value::from("1")));
}
