//! The bundled components exercised in-process through the host's plugin
//! runtime (the same code path the server uses): the JMESPath compliance
//! suite and every GitHub webhook fixture through the real jmespath filter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use automation_host::plugins::manifest::Grants;
use automation_host::plugins::{FilterEvent, Plugin, Runtime, Source, bundled};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn runtime(dir: &Path) -> Runtime {
    Runtime::standalone(dir, Path::new(&crate::support::shared_cache_dir()), Grants::default(), false).expect("runtime")
}

fn jmespath(rt: &Runtime) -> Arc<Plugin> {
    let (manifest, wasm) =
        bundled::all().unwrap().into_iter().find(|(m, _)| m.name == "jmespath").expect("bundled jmespath");
    Arc::new(rt.load(manifest, wasm, Source::Bundled, None).expect("jmespath loads"))
}

/// Python truthiness, which the filter applies to the final result.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Every compliance case, one batch call per `given` document: a case with
/// a `result` must match exactly when that result is truthy; a case with an
/// `error` must be refused by `validate` or fail in `matches`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmespath_compliance_suite_through_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let plugin = jmespath(&rt);
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("jmespath-compliance"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 15);
    let (mut checked, mut failures) = (0, Vec::new());
    for path in &files {
        let suites: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for suite in suites {
            let cases = suite["cases"].as_array().unwrap();
            let exprs: Vec<String> = cases.iter().map(|c| c["expression"].as_str().unwrap().to_owned()).collect();
            let event = FilterEvent::new("test", "test", &suite["given"].to_string());
            let (verdicts, _) = rt.filter_matches(&plugin, &event, &exprs);
            let verdicts = verdicts.unwrap_or_else(|e| panic!("{}: the batch call failed: {e}", path.display()));
            assert_eq!(verdicts.len(), cases.len());
            for (case, verdict) in cases.iter().zip(verdicts) {
                let expr = case["expression"].as_str().unwrap();
                let ok = if case.get("error").is_some() {
                    verdict.is_err() || rt.filter_validate(&plugin, expr).0.is_err()
                } else if let Some(result) = case.get("result") {
                    verdict.as_ref().ok() == Some(&truthy(result))
                } else {
                    verdict.is_ok() // a benchmark case without a recorded result: it must run
                };
                checked += 1;
                if !ok {
                    failures.push(format!("{}: {expr} -> {verdict:?}", path.file_name().unwrap().to_string_lossy()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} compliance cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 900, "only {checked} cases found");
}

/// Every GitHub fixture payload goes through the component with expressions
/// whose answer is known from the payload itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_fixtures_through_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let plugin = jmespath(&rt);
    let mut count = 0;
    for event_dir in std::fs::read_dir(fixtures().join("github-webhooks")).unwrap() {
        let event_dir = event_dir.unwrap().path();
        if !event_dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&event_dir).unwrap() {
            let file = file.unwrap().path();
            let text = std::fs::read_to_string(&file).unwrap();
            let payload: Value = serde_json::from_str(&text).unwrap();
            let mut exprs = vec![("`true`".to_owned(), true), ("missing_field_xyz".to_owned(), false)];
            if let Some(action) = payload["action"].as_str() {
                exprs.push((format!("action == '{action}'"), true));
                exprs.push((format!("action != '{action}'"), false));
                exprs.push((format!("glob(action, '{}*')", &action[..1]), true));
            }
            if let Some(name) = payload["repository"]["full_name"].as_str() {
                exprs.push((format!("repository.full_name == '{name}'"), true));
                exprs.push((format!("icontains(repository.full_name, '{}')", name.to_uppercase()), true));
                exprs.push(("starts_with(repository.full_name, 'no-such-owner/')".to_owned(), false));
            }
            if let Some(login) = payload["sender"]["login"].as_str() {
                exprs.push((format!("ends_with(sender.login, '{}')", &login[login.len() - 1..]), true));
            }
            let event = FilterEvent::new("github", "x", &text);
            let (verdicts, _) =
                rt.filter_matches(&plugin, &event, &exprs.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>());
            let verdicts = verdicts.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for ((expr, expected), verdict) in exprs.iter().zip(verdicts) {
                assert_eq!(verdict.as_ref().ok(), Some(expected), "{}: {expr}", file.display());
                count += 1;
            }
        }
    }
    assert!(count > 1500, "only {count} checks ran");
}

/// Every GitHub fixture's payload file, sorted.
fn github_fixture_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for event_dir in std::fs::read_dir(fixtures().join("github-webhooks")).unwrap() {
        let event_dir = event_dir.unwrap().path();
        if event_dir.is_dir() {
            files.extend(std::fs::read_dir(&event_dir).unwrap().map(|f| f.unwrap().path()));
        }
    }
    files.sort();
    files
}

/// The server keeps filter instances between calls (so each expression is
/// compiled once): a kept instance must answer exactly as a new one does,
/// event after event, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_filter_instance_answers_like_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let plugin = jmespath(&rt);
    let exprs: Vec<String> = [
        "action",
        "contains(keys(@), 'pull_request')",
        "regex(sender.login, '^[a-m]')",
        "length(repository.topics || `[]`) > `0`",
        "glob(repository.full_name, '*/*')",
        "sender.login == 'octocat' || action == 'opened'",
        "upper(action) == 'CREATED'",
        "bad ==",
    ]
    .map(String::from)
    .to_vec();
    let files = github_fixture_files();
    assert!(files.len() > 250, "only {} fixtures", files.len());
    let (mut reused, mut matched, mut errors) = (0, 0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let event = FilterEvent::new("github", "x", &text);
        let (kept, report) = rt.filter_matches(&plugin, &event, &exprs);
        let (fresh, fresh_report) = rt.filter_matches_fresh(&plugin, &event, &exprs);
        let kept = kept.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(kept, fresh.unwrap(), "{}", file.display());
        assert!(!fresh_report.reused);
        reused += usize::from(report.reused);
        matched += kept.iter().filter(|v| v.as_ref() == Ok(&true)).count();
        errors += kept.iter().filter(|v| v.is_err()).count();
    }
    assert_eq!(reused, files.len() - 1, "every call after the first ran on the kept instance");
    // The expressions really discriminate: some match, some do not, and
    // the broken one (plus type errors on payloads without those fields)
    // fails on every payload.
    assert!(matched > files.len() && matched < files.len() * 5, "{matched} matches");
    assert!(errors >= files.len(), "{errors} errors");
}

/// A filter call that traps or runs out of memory does not leave its
/// instance for the next call, which starts afresh and fails (or succeeds)
/// on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_instance_that_failed_is_not_kept() {
    use automation_host::plugins::manifest::{Kind, Manifest};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let event = FilterEvent::new("test", "x", r#"{"a": 1}"#);
    let exprs = vec!["a".to_owned()];
    for (file, needle) in [("test_panic_filter.wasm", "crashed"), ("test_membomb_filter.wasm", "memory limit")] {
        let wasm = std::fs::read(Path::new(env!("GUEST_WASM_DIR")).join(file)).unwrap();
        let manifest = Manifest::new(file.trim_end_matches(".wasm"), Kind::Filter);
        let broken = rt.load(manifest, &wasm, Source::Directory, None).expect("loads");
        for attempt in 0..3 {
            // Guest output goes through WASI streams that block on the
            // runtime: the server makes plugin calls on blocking threads.
            let (r, report) = tokio::task::block_in_place(|| rt.filter_matches(&broken, &event, &exprs));
            let err = r.expect_err("the broken filter fails").to_string();
            assert!(err.contains(needle), "{file} attempt {attempt}: {err}");
            assert!(!report.reused, "{file} attempt {attempt} ran on an instance that had failed");
        }
    }
    // The good filter is unaffected and keeps its own instance.
    let plugin = jmespath(&rt);
    let first = rt.filter_matches(&plugin, &event, &exprs);
    let second = rt.filter_matches(&plugin, &event, &exprs);
    assert_eq!(first.0.unwrap(), vec![Ok(true)]);
    assert_eq!(second.0.unwrap(), vec![Ok(true)]);
    assert!(!first.1.reused && second.1.reused);
}
