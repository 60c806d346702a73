//! Times one `matches` call: a GitHub payload against 1,000 distinct filter
//! expressions, on a new engine (every expression compiled) and on a kept
//! one (expressions compiled by an earlier call), natively (the component adds the WebAssembly slowdown and the
//! cost of copying the arguments in).
//!
//! Run with, from `guest-examples/`:
//!
//! ```sh
//! cargo run --release -p jmespath-filter --example bench [payload.json]
//! ```
//!
//! The default payload is `github-webhooks/issues/labeled.with-organization.payload.json`
//! (14 KB) from the repository's tests/fixtures.

use std::time::{Duration, Instant};

use jmespath_filter::eval::{Engine, ExpressionCache};

/// Calls timed after the warm-up call.
const ROUNDS: usize = 50;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        format!(
            "{}/../../tests/fixtures/github-webhooks/issues/labeled.with-organization.payload.json",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let payload = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let expressions = expressions(1000);

    // Each call compiles every expression afresh, as a fresh component
    // instance would; only the `regex()` cache survives between calls here,
    // so a fresh engine is built per round to keep it cold.
    let mut times: Vec<Duration> = Vec::with_capacity(ROUNDS);
    let mut matched = 0;
    for round in 0..=ROUNDS {
        let engine = Engine::new();
        let start = Instant::now();
        let results = engine.matches(&payload, &expressions);
        let elapsed = start.elapsed();
        matched = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert!(results.iter().all(Result::is_ok), "an expression failed");
        if round > 0 {
            times.push(elapsed);
        }
    }
    report("new instance", &payload, &expressions, matched, &mut times);

    // A kept instance: one engine and one expression cache for every call,
    // as the host's kept filter instances have.
    let engine = Engine::new();
    let cache = ExpressionCache::new();
    times.clear();
    for round in 0..=ROUNDS {
        let start = Instant::now();
        let results = engine.matches_cached(&cache, &payload, &expressions);
        let elapsed = start.elapsed();
        assert_eq!(results.iter().filter(|r| matches!(r, Ok(true))).count(), matched);
        if round > 0 {
            times.push(elapsed);
        }
    }
    report("kept instance", &payload, &expressions, matched, &mut times);

    // Searches over a long text: 100 `regex()` filters over the issue body
    // (the fixture's sentence repeated to 1 KB and 10 KB), on a kept
    // instance, where the search rather than the compilation is the cost.
    let patterns: Vec<String> = (0..100).map(|i| format!("regex(issue.body || '', 'fix(es)? #{i}\\b')")).collect();
    let mut value: serde_json::Value = serde_json::from_str(&payload).expect("the payload is JSON");
    let sentence = value["issue"]["body"].as_str().unwrap_or("some text ").to_owned();
    for size in [1 << 10, 10 << 10] {
        value["issue"]["body"] = serde_json::Value::String(sentence.repeat(size / sentence.len().max(1) + 1));
        let text = value.to_string();
        times.clear();
        for round in 0..=ROUNDS {
            let start = Instant::now();
            let results = engine.matches_cached(&cache, &text, &patterns);
            let elapsed = start.elapsed();
            matched = results.iter().filter(|r| matches!(r, Ok(true))).count();
            if round > 0 {
                times.push(elapsed);
            }
        }
        report(&format!("kept instance, regex over a {} KB body", size >> 10), &text, &patterns, matched, &mut times);
    }
}

fn report(what: &str, payload: &str, expressions: &[String], matched: usize, times: &mut [Duration]) {
    times.sort();
    println!(
        "{what}: {} bytes of payload, {} expressions ({matched} match): min {:?}, median {:?}, max {:?} per call",
        payload.len(),
        expressions.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
    );
}

/// `n` distinct expressions in the shapes automations use, a tenth of them
/// with a `regex()`.
fn expressions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 10 {
            0 => format!("regex(issue.title, '^\\[{i}\\]|Spelling error')"),
            1 => format!("repository.full_name == 'org/repo-{i}'"),
            2 => format!("glob(repository.full_name, 'Octocoders/*') && action == 'labeled' && issue.number != `{i}`"),
            3 => format!("icontains(issue.body, '@bot-{i}') || contains(issue.labels[].name, 'label-{i}')"),
            4 => format!("starts_with(sender.login, 'user{i}') && !ends_with(sender.login, '[bot]')"),
            5 => format!("lower(sender.login) == 'codertocat' && issue.state == 'open' && `{i}`"),
            6 => format!("contains(issue.labels[].name, 'bug') && issue.comments < `{i}`"),
            7 => format!("length(issue.labels[?name != 'wontfix-{i}']) > `0`"),
            8 => format!("organization.login == 'Octocoders' || sender.id == `{i}`"),
            _ => format!("glob(issue.html_url, 'https://github.com/*/issues/{i}')"),
        })
        .collect()
}
