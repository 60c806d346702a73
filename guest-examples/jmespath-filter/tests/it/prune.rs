//! Every expression gives the same result on the payload parsed whole and
//! on the payload parsed with only what the expression can see
//! (`src/prune.rs`): the compliance suite's cases, and real GitHub payloads
//! with the expressions filters are made of, one expression at a time (the
//! strictest pruning) and in batches as the host sends them.

use std::fs;

use jmespath::Rcvar;
use jmespath_filter::eval::{Engine, EvalError, ExpressionCache, parse_payload, python_truthy};
use serde_json::Value;

use crate::github_webhooks::{cases_for, payload_files};
use crate::support::fixtures_dir;

/// Both outcomes, compared exactly: the same value, or the same error.
fn compare(what: &str, whole: &Result<Rcvar, EvalError>, pruned: &Result<Rcvar, EvalError>) -> Option<String> {
    match (whole, pruned) {
        (Ok(a), Ok(b)) if a == b => None,
        (Err(a), Err(b)) if a == b => None,
        _ => Some(format!("{what}: whole payload gave {whole:?}, pruned gave {pruned:?}")),
    }
}

#[test]
fn compliance_cases_agree_on_pruned_payloads() {
    let dir = fixtures_dir().join("jmespath-compliance");
    let engine = Engine::new();
    let mut compared = 0usize;
    let mut differences = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let suites: Vec<Value> = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        for suite in &suites {
            let text = suite["given"].to_string();
            let given = parse_payload(&text).unwrap();
            for case in suite["cases"].as_array().unwrap() {
                let expression = case["expression"].as_str().unwrap();
                if engine.compile(expression).is_err() {
                    continue;
                }
                let whole = engine.search(expression, &given);
                let pruned = engine.search_pruned(expression, &text);
                let what = format!("{}: `{expression}` on {text}", path.file_name().unwrap().to_string_lossy());
                differences.extend(compare(&what, &whole, &pruned));
                compared += 1;
            }
        }
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    assert!(compared > 700, "only {compared} cases compared");
}

/// Expressions beyond the per-payload cases: shapes that the analysis keeps
/// whole or follows through arrays.
const MORE: &[&str] = &[
    "repository.owner.login == sender.login",
    "pull_request.labels[?name == 'bug'] | [0].id",
    "pull_request.labels[*].name | [0]",
    "issue.labels[0]",
    "issue.labels[-1].name",
    "issue.labels[::2].color",
    "commits[].author.name",
    "commits[*].modified[]",
    "length(commits[?distinct])",
    "sort_by(commits, &timestamp)[0].id",
    "max_by(issue.labels, &name).name",
    "repository.*",
    "repository.owner.*.login",
    "keys(repository)",
    "values(sender)",
    "{a: action, r: repository.name}",
    "[action, sender.login][1]",
    "repository && sender.site_admin == `false`",
    "pull_request || issue",
    "!issue",
    "to_string(sender.id)",
    "issue.user.login != sender.login && issue.state == 'open'",
    "pull_request.head.repo.fork",
    "pull_request.requested_reviewers[].login",
    "`{\"a\": 1}`.a",
    "repository.topics[?starts_with(@, 'a')]",
    "organization",
    "installation.id > `0`",
    "created_at > '2020-01-01'",
    "repository.pushed_at > `1600000000`",
];

#[test]
fn github_payloads_agree_on_pruned_payloads() {
    let engine = Engine::new();
    let mut compared = 0usize;
    let mut differences = Vec::new();
    for file in payload_files() {
        let event = file.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&file).unwrap();
        let payload: Value = serde_json::from_str(&text).unwrap();
        let given = parse_payload(&text).unwrap();
        let mut expressions: Vec<String> = cases_for(&event, &payload).into_iter().map(|(e, _)| e).collect();
        expressions.extend(MORE.iter().map(|e| (*e).to_owned()));

        // One at a time: each expression sees only what it needs.
        let mut expected = Vec::new();
        for expression in &expressions {
            let whole = engine.search(expression, &given);
            let pruned = engine.search_pruned(expression, &text);
            differences.extend(compare(&format!("{}: `{expression}`", file.display()), &whole, &pruned));
            expected.push(whole.map(|value| python_truthy(&value)));
            compared += 1;
        }

        // As the host sends them: one batch (without `@`, which needs the
        // whole payload), twice through one cache (the batch's needs are
        // then reused).
        let batch: Vec<(&String, &Result<bool, EvalError>)> =
            expressions.iter().zip(&expected).filter(|(e, _)| e.as_str() != "@").collect();
        let texts: Vec<&str> = batch.iter().map(|(e, _)| e.as_str()).collect();
        let cache = ExpressionCache::new();
        for round in 0..2 {
            let results = engine.matches_cached(&cache, &text, &texts);
            for ((expression, expected), result) in batch.iter().zip(results) {
                if **expected != result {
                    differences.push(format!(
                        "{} (batch, round {round}): `{expression}`: whole gave {expected:?}, batch gave {result:?}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    assert!(compared > 273 * 30, "only {compared} expressions compared");
}
