//! Micro benchmarks (criterion): plugin instantiation, host-to-guest call
//! cost, fresh-instance filter calls, one delivery against 10/100/1000
//! filters, component load from the compile cache versus a cold compile,
//! cron next-fire computation, and a source plugin's cost per delivery.
//!
//! Run with `cargo bench --bench micro` (or `just bench`, which also runs the
//! load benchmarks and rewrites BENCHMARKS.md).

#![allow(missing_docs)]

mod common;
// The Python and JavaScript guests, built as the end-to-end tests build them.
#[path = "../../tests/it/support/polyglot.rs"]
mod polyglot;

use std::sync::Arc;
use std::time::Duration;

use automation_host::plugins::manifest::{Grants, Kind, Manifest};
use automation_host::plugins::{FilterEvent, Plugin, Runtime, Source, bundled};
use automation_host::scheduler::cron::Schedule;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

struct Setup {
    _rt_guard: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    runtime: Runtime,
    jmespath: Arc<Plugin>,
    noop_filter: Arc<Plugin>,
}

fn setup() -> Setup {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _enter = tokio.enter();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::standalone(dir.path(), &dir.path().join("cache"), Grants::default(), false).unwrap();
    let (manifest, wasm) = bundled::all().unwrap().into_iter().find(|(m, _)| m.name == "jmespath").unwrap();
    let jmespath = Arc::new(runtime.load(manifest, wasm, Source::Bundled, None).unwrap());
    // The spin test filter's `validate` returns at once: a no-op call.
    let spin = std::fs::read(format!("{}/test_spin_filter.wasm", env!("GUEST_WASM_DIR"))).unwrap();
    let noop_filter =
        Arc::new(runtime.load(Manifest::new("noop", Kind::Filter), &spin, Source::Directory, None).unwrap());
    drop(_enter);
    Setup { _rt_guard: tokio, _dir: dir, runtime, jmespath, noop_filter }
}

fn plugins(c: &mut Criterion) {
    let s = setup();
    let _enter = s._rt_guard.enter();
    let mut g = c.benchmark_group("plugin");
    g.bench_function("instantiate", |b| b.iter_custom(|n| s.runtime.bench_instantiate(&s.jmespath, n).unwrap()));
    g.bench_function("warm_call_noop", |b| {
        b.iter_custom(|n| s.runtime.bench_warm_validate(&s.noop_filter, "a", n).unwrap())
    });
    let small = FilterEvent::new("github", "push", r#"{"ref": "refs/heads/main", "n": 1}"#);
    let exprs = vec!["ref == 'refs/heads/main'".to_owned()];
    g.bench_function("fresh_instance_filter_call", |b| {
        b.iter(|| {
            let (r, _) = s.runtime.filter_matches_fresh(&s.jmespath, &small, &exprs);
            assert_eq!(r.unwrap()[0], Ok(true));
        })
    });
    // What the server does: a kept instance that has seen the expression.
    g.bench_function("warm_instance_filter_call", |b| {
        b.iter(|| {
            let (r, _) = s.runtime.filter_matches(&s.jmespath, &small, &exprs);
            assert_eq!(r.unwrap()[0], Ok(true));
        })
    });
    g.finish();

    let payload = common::delivery_14kb();
    let event = FilterEvent::new("github", "issues.labeled", &payload);
    // First sight: a new instance compiles every expression.
    let mut g = c.benchmark_group("filters_14kb");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for n in [10usize, 100, 1000] {
        let exprs = common::expressions(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &exprs, |b, exprs| {
            b.iter(|| {
                let (r, _) = s.runtime.filter_matches_fresh(&s.jmespath, &event, exprs);
                assert_eq!(r.unwrap().len(), exprs.len());
            })
        });
    }
    g.finish();

    // The matcher's steady state: a kept instance that compiled the
    // expressions for an earlier event.
    let mut g = c.benchmark_group("filters_14kb_warm");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for n in [10usize, 100, 1000] {
        let exprs = common::expressions(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &exprs, |b, exprs| {
            b.iter(|| {
                let (r, _) = s.runtime.filter_matches(&s.jmespath, &event, exprs);
                assert_eq!(r.unwrap().len(), exprs.len());
            })
        });
    }
    g.finish();

    // The same 1,000-filter batch with fuel metering on (what `plugin call`
    // uses), to price fuel against epoch deadlines.
    let fuel = Runtime::standalone(s._dir.path(), &s._dir.path().join("cache-fuel"), Grants::default(), true).unwrap();
    let (manifest, wasm) = bundled::all().unwrap().into_iter().find(|(m, _)| m.name == "jmespath").unwrap();
    let fueled = fuel.load(manifest.clone(), wasm, Source::Bundled, None).unwrap();
    let exprs = common::expressions(1000);
    let mut g = c.benchmark_group("filters_14kb_fuel");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("1000", |b| {
        b.iter(|| {
            let (r, _) = fuel.filter_matches_fresh(&fueled, &event, &exprs);
            assert_eq!(r.unwrap().len(), 1000);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("component_load");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("from_cache", |b| {
        b.iter(|| s.runtime.load(manifest.clone(), wasm, Source::Bundled, None).unwrap());
    });
    g.bench_function("cold_compile", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let cold =
                    Runtime::standalone(dir.path(), &dir.path().join("cache"), Grants::default(), false).unwrap();
                cold.load(manifest.clone(), wasm, Source::Bundled, None).unwrap();
            },
            criterion::BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn cron(c: &mut Criterion) {
    let mut g = c.benchmark_group("cron_next_fire");
    let after = chrono::DateTime::parse_from_rfc3339("2026-06-15T10:17:23Z").unwrap().with_timezone(&chrono::Utc);
    let every5 = Schedule::parse("*/5 * * * *", "UTC").unwrap();
    g.bench_function("every_5_minutes_utc", |b| b.iter(|| every5.next_after(after).unwrap()));
    let paris = Schedule::parse("30 9 * * MON-FRI", "Europe/Paris").unwrap();
    g.bench_function("weekdays_paris", |b| b.iter(|| paris.next_after(after).unwrap()));
    // Near a DST change the slow path compares candidates.
    let gap = Schedule::parse("*/15 * * * *", "America/New_York").unwrap();
    let dst = chrono::DateTime::parse_from_rfc3339("2026-03-08T06:50:00Z").unwrap().with_timezone(&chrono::Utc);
    g.bench_function("every_15_minutes_across_dst", |b| b.iter(|| gap.next_after(dst).unwrap()));
    g.finish();
}

/// The same filter in Rust (the bundled JMESPath engine, with the
/// equivalent expressions), Python (componentize-py) and JavaScript
/// (componentize-js): size, one cold compile, load from the compile cache,
/// and a 14 KB delivery against four rules on a kept instance.
fn guest_languages(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _enter = tokio.enter();
    let (jm, jm_wasm) = bundled::all().unwrap().into_iter().find(|(m, _)| m.name == "jmespath").unwrap();
    let rules = ["sender:Codertocat", "sender:github,Octocoders,octocat", "label:bug", "sender:nobody-at-all"];
    let jmespath_rules = [
        "sender.login == 'Codertocat'",
        "contains(['github', 'Octocoders', 'octocat'], sender.login)",
        "contains(pull_request.labels[].name || `[]`, 'bug') || contains(issue.labels[].name || `[]`, 'bug')",
        "sender.login == 'nobody-at-all'",
    ];
    let guests: Vec<(&str, Manifest, Vec<u8>, Vec<String>)> = vec![
        ("rust_jmespath", jm, jm_wasm.to_vec(), jmespath_rules.iter().map(|r| r.to_string()).collect()),
        (
            "python",
            Manifest::new("py", Kind::Filter),
            polyglot::python_filter(),
            rules.iter().map(|r| r.to_string()).collect(),
        ),
        (
            "javascript",
            Manifest::new("js", Kind::Filter),
            polyglot::js_filter(),
            rules.iter().map(|r| r.to_string()).collect(),
        ),
    ];
    let event = FilterEvent::new("github", "issues.labeled", &common::delivery_14kb());
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::standalone(dir.path(), &dir.path().join("cache"), Grants::default(), false).unwrap();
    let mut g = c.benchmark_group("guest_languages");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, manifest, wasm, exprs) in &guests {
        // One cold compile each (tens of seconds for a language runtime:
        // too slow to repeat ten times), then the cached path.
        let started = std::time::Instant::now();
        let plugin = runtime.load(manifest.clone(), wasm, Source::Directory, None).unwrap();
        println!("guest_languages/{name}: {} bytes, cold compile {:.2} s", wasm.len(), started.elapsed().as_secs_f64());
        let (first, report) = runtime.filter_matches_fresh(&plugin, &event, exprs);
        let verdicts: Vec<bool> = first.unwrap().into_iter().map(|v| v.unwrap()).collect();
        assert_eq!(verdicts, [true, false, true, false], "{name}");
        println!(
            "guest_languages/{name}: first call on a new instance {:.2} ms, peak memory {} KiB",
            report.elapsed.as_secs_f64() * 1000.0,
            report.peak_memory >> 10
        );
        g.bench_function(format!("{name}/load_from_cache"), |b| {
            b.iter(|| runtime.load(manifest.clone(), wasm, Source::Directory, None).unwrap())
        });
        g.bench_function(format!("{name}/kept_instance_call_14kb_4_rules"), |b| {
            b.iter(|| {
                let (r, _) = runtime.filter_matches(&plugin, &event, exprs);
                assert_eq!(r.unwrap().len(), 4);
            })
        });
    }
    g.finish();
}

/// What reading one 14 KB delivery costs a custom source: the built-in
/// HMAC check (what `POST /v1/events/{source}` does for an HMAC source),
/// against the bundled `linear` source plugin on a fresh instance
/// (signature, timestamp and key, what it does for a plugin source).
fn sources(c: &mut Criterion) {
    use automation_host::events::signature;
    use automation_host::plugins::{SourceOutcome, SourceRequest};
    use hmac::Mac;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _enter = tokio.enter();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::standalone(dir.path(), &dir.path().join("cache"), Grants::default(), false).unwrap();
    let (manifest, wasm) = bundled::all().unwrap().into_iter().find(|(m, _)| m.name == "linear").unwrap();
    let linear = runtime.load(manifest, wasm, Source::Bundled, None).unwrap();
    let secret = "lin_wh_0123456789abcdef0123456789";
    let mut payload: serde_json::Value = serde_json::from_str(&common::delivery_14kb()).unwrap();
    payload["type"] = "Issue".into();
    payload["action"] = "create".into();
    let sample = serde_json::to_vec(&payload).unwrap();
    let hub = signature::sign(secret.as_bytes(), &sample);
    // A fresh, signed request per iteration (made outside the timed part):
    // the plugin refuses a webhookTimestamp a minute old.
    let mut request = move || {
        payload["webhookTimestamp"] = chrono::Utc::now().timestamp_millis().into();
        let body = serde_json::to_vec(&payload).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        SourceRequest {
            headers: vec![
                ("linear-signature".to_owned(), sig),
                ("linear-delivery".to_owned(), "234d1a4e-b617-4388-90fe-adc3633d6b72".to_owned()),
            ],
            body,
        }
    };
    let mut g = c.benchmark_group("sources_14kb");
    g.bench_function("builtin_hmac_check", |b| {
        b.iter(|| signature::verify(secret.as_bytes(), &sample, "X-Signature-256", Some(&hub)).unwrap())
    });
    g.bench_function("linear_plugin_verify", |b| {
        b.iter_batched(
            &mut request,
            |req| {
                let (r, _) = runtime.source_verify(&linear, req, secret);
                assert!(matches!(r.unwrap(), SourceOutcome::Deliver { key: Some(_), .. }));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, plugins, cron, guest_languages, sources);
criterion_main!(benches);
