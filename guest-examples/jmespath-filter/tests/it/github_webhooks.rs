//! Real GitHub webhook payloads (`github-webhooks/<event>/<name>.json`, from
//! octokit/webhooks): every one parses, and expressions built from what
//! `serde_json` independently reads out of it evaluate as expected, in one
//! batch per payload as the host sends them.

use std::fs;
use std::path::{Path, PathBuf};

use jmespath_filter::eval::Engine;
use serde_json::Value;

use crate::support::fixtures_dir;

/// A JMESPath JSON literal holding `s` (backticks escaped), so values with
/// quotes or backslashes need no raw-string escaping rules.
fn lit(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap();
    format!("`{}`", json.replace('`', "\\`"))
}

/// Every payload file, sorted.
pub(crate) fn payload_files() -> Vec<PathBuf> {
    let root = fixtures_dir().join("github-webhooks");
    let mut files = Vec::new();
    for event_dir in fs::read_dir(&root).unwrap() {
        let event_dir = event_dir.unwrap().path();
        if !event_dir.is_dir() {
            continue;
        }
        for file in fs::read_dir(&event_dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|ext| ext == "json") {
                files.push(file);
            }
        }
    }
    files.sort();
    files
}

/// Expressions with their expected outcome for one payload.
pub(crate) fn cases_for(event: &str, payload: &Value) -> Vec<(String, bool)> {
    let mut cases = vec![
        ("@".to_owned(), true),
        ("this_field_does_not_exist".to_owned(), false),
        ("this.path.does.not.exist".to_owned(), false),
        ("!this_field_does_not_exist".to_owned(), true),
        (format!("length(keys(@)) == `{}`", payload.as_object().map_or(0, |o| o.len())), true),
    ];

    match payload.get("action").and_then(Value::as_str) {
        Some(action) => {
            cases.push((format!("action == {}", lit(action)), true));
            cases.push((format!("action == {}", lit(&format!("not-{action}"))), false));
            cases.push((format!("glob(action, {})", lit(&format!("{}*", &action[..1]))), true));
            cases.push((format!("regex(action, {})", lit("^[a-z_-]+$")), true));
        }
        None => cases.push(("action".to_owned(), false)),
    }

    if let Some(full_name) = payload.pointer("/repository/full_name").and_then(Value::as_str) {
        let owner = full_name.split('/').next().unwrap();
        cases.extend([
            ("repository.full_name".to_owned(), true),
            (format!("repository.full_name == {}", lit(full_name)), true),
            (format!("glob(repository.full_name, {})", lit(&format!("{owner}/*"))), true),
            (format!("glob(repository.full_name, {})", lit("not-an-owner/*")), false),
            (format!("starts_with(repository.full_name, {})", lit(&format!("{owner}/"))), true),
            (format!("icontains(repository.full_name, {})", lit(&full_name.to_uppercase())), true),
            (format!("regex(repository.full_name, {})", lit("^[^/]+/[^/]+$")), true),
        ]);
    } else {
        cases.push(("repository.full_name".to_owned(), false));
    }

    if let Some(login) = payload.pointer("/sender/login").and_then(Value::as_str) {
        cases.extend([
            (format!("lower(sender.login) == {}", lit(&login.to_lowercase())), true),
            (format!("upper(sender.login) == {}", lit(&login.to_uppercase())), true),
            ("ends_with(sender.login, '[bot]')".to_owned(), login.ends_with("[bot]")),
        ]);
    }
    if let Some(kind) = payload.pointer("/sender/type").and_then(Value::as_str) {
        cases.push(("sender.type == 'Bot'".to_owned(), kind == "Bot"));
    }

    if let Some(pr) = payload.get("pull_request") {
        let number = pr["number"].as_u64().expect("pull_request.number");
        cases.push((format!("pull_request.number == `{number}`"), true));
        cases.push((format!("pull_request.number == `{}`", number + 1), false));
        if let Some(draft) = pr.get("draft").and_then(Value::as_bool) {
            cases.push(("pull_request.draft".to_owned(), draft));
            cases.push(("!(pull_request.draft)".to_owned(), !draft));
            // `!` binds tighter than `.`: this is `(!pull_request).draft`,
            // a field of a boolean, so null, so never a match (as in Python).
            cases.push(("!pull_request.draft".to_owned(), false));
        }
        if let Some(base) = pr.pointer("/base/ref").and_then(Value::as_str) {
            cases.push((format!("pull_request.base.ref == {}", lit(base)), true));
        }
        let labels: Vec<&str> =
            pr["labels"].as_array().map(|l| l.iter().filter_map(|l| l["name"].as_str()).collect()).unwrap_or_default();
        if let Some(first) = labels.first() {
            cases.push((format!("contains(pull_request.labels[].name, {})", lit(first)), true));
        }
        cases.push(("contains(pull_request.labels[].name, 'no-such-label')".to_owned(), false));
    }

    if let Some(number) = payload.pointer("/issue/number").and_then(Value::as_u64) {
        cases.push((format!("issue.number == `{number}`"), true));
    }
    if let Some(body) = payload.pointer("/comment/body").and_then(Value::as_str) {
        cases.push((format!("icontains(comment.body, {})", lit(&body.chars().take(8).collect::<String>())), true));
    }

    if event == "push" {
        let reference = payload["ref"].as_str().expect("push has a ref");
        let commits = payload["commits"].as_array().map_or(0, Vec::len);
        cases.extend([
            ("starts_with(ref, 'refs/')".to_owned(), true),
            (format!("ref == {}", lit(reference)), true),
            ("regex(ref, '^refs/(heads|tags)/')".to_owned(), true),
            (format!("length(commits) == `{commits}`"), true),
            ("glob(ref, 'refs/heads/*') || glob(ref, 'refs/tags/*')".to_owned(), true),
        ]);
    }
    cases
}

#[test]
fn every_payload_evaluates_as_expected() {
    let files = payload_files();
    let events: std::collections::BTreeSet<&Path> = files.iter().map(|f| f.parent().unwrap()).collect();
    assert_eq!(events.len(), 60, "event directories");
    assert_eq!(files.len(), 273, "payload files");

    let engine = Engine::global();
    let mut checked = 0usize;
    for file in &files {
        let event = file.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let name = file.strip_prefix(fixtures_dir()).unwrap().display().to_string();
        let text = fs::read_to_string(file).unwrap();
        let payload: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
        let cases = cases_for(&event, &payload);
        let expressions: Vec<&str> = cases.iter().map(|(e, _)| e.as_str()).collect();
        let results = engine.matches(&text, &expressions);
        assert_eq!(results.len(), cases.len());
        for ((expression, expected), result) in cases.iter().zip(results) {
            match result {
                Ok(actual) => assert_eq!(actual, *expected, "{name}: `{expression}`"),
                Err(err) => panic!("{name}: `{expression}` failed: {err}"),
            }
            checked += 1;
        }
    }
    assert!(checked > 273 * 8, "only {checked} expressions checked");
}

/// The action in a file name (`opened.payload.json`) is the payload's
/// `action`, except for the few files named after a variant.
#[test]
fn file_names_agree_with_actions() {
    let engine = Engine::global();
    let mut agreed = 0;
    for file in payload_files() {
        let stem = file.file_name().unwrap().to_string_lossy().into_owned();
        let first = stem.split('.').next().unwrap();
        let text = fs::read_to_string(&file).unwrap();
        let payload: Value = serde_json::from_str(&text).unwrap();
        if payload.get("action").and_then(Value::as_str) == Some(first) {
            let expression = format!("action == {}", lit(first));
            assert_eq!(engine.matches(&text, &[expression]), vec![Ok(true)]);
            agreed += 1;
        }
    }
    // 233 of the 273 files are named after their action; the others are
    // events without one (`push/payload.json`) or named after a variant.
    assert!(agreed >= 230, "only {agreed} files named after their action");
}
