use crate::support::{Backend, KEY, TestServer};
use reqwest::Method;

/// Every operation the description lists is served (not 404/405), and every
/// route the API serves is described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes() {
    let s = TestServer::start(Backend::Sqlite).await;
    let spec = s.raw(Method::GET, "/openapi.json", &[], vec![]).await.expect(200).body;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    let mut described = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete", "put"] {
            if item.get(method).is_some() {
                described.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    described.sort();
    let mut expected = vec![
        "GET /health",
        "GET /ready",
        "POST /v1/automations",
        "GET /v1/automations",
        "GET /v1/automations/{id}",
        "PATCH /v1/automations/{id}",
        "DELETE /v1/automations/{id}",
        "POST /v1/automations/{id}/dispatch",
        "GET /v1/automations/{id}/runs",
        "GET /v1/runs",
        "GET /v1/runs/{id}",
        "POST /v1/runs/{id}/cancel",
        "POST /v1/uploads",
        "GET /v1/uploads",
        "GET /v1/uploads/{id}",
        "DELETE /v1/uploads/{id}",
        "GET /v1/plugins",
        "GET /v1/plugins/{name}",
        "PUT /v1/plugins/{name}",
        "DELETE /v1/plugins/{name}",
        "GET /v1/plugins/{name}/grants",
        "POST /v1/plugins/{name}/grants",
        "DELETE /v1/plugins/{name}/grants/{sha256}",
        "POST /v1/filters/evaluate",
        "GET /metrics",
        "GET /v1/automations/{id}/schedule",
        "GET /v1/automations/{id}/slots",
        "POST /v1/events/github",
        "POST /v1/events/{id}",
        "GET /v1/events/{id}",
        "GET /v1/events",
        "POST /v1/sources",
        "GET /v1/sources",
        "GET /v1/sources/{name}",
        "PATCH /v1/sources/{name}",
        "DELETE /v1/sources/{name}",
        "POST /v1/runs/{id}/complete",
        "POST /v1/runs/{id}/rerun",
        "POST /v1/automations/{id}/test",
        "DELETE /v1/runs/{id}",
        "GET /v1/tags",
        "GET /v1/runs/{id}/logs",
        "GET /v1/me",
        "GET /v1/schedule",
        "POST /v1/runs/{id}/progress",
        "GET /v1/api-keys",
        "POST /v1/api-keys",
        "DELETE /v1/api-keys/{id}",
        "GET /v1/audit",
    ];
    expected.sort();
    assert_eq!(described, expected);
    for op in &described {
        let (method, path) = op.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{name}", "no-such-plugin")
            .replace("{sha256}", &"0".repeat(64));
        let r = s.call(Method::from_bytes(method.as_bytes()).unwrap(), &path, None).await;
        let unrouted = r.status == 405 || (r.status == 404 && r.body["detail"] == "no such route");
        assert!(!unrouted, "{op} is described but not served: {} {}", r.status, r.text);
        // The completion and progress callbacks authenticate with the run's own token,
        // deliveries with their signature.
        let signed = path.ends_with("/complete")
            || path.ends_with("/progress")
            || (method == "POST" && path.starts_with("/v1/events/"));
        if path.starts_with("/v1") && !signed {
            let op_spec = &paths[op.split_once(' ').unwrap().1][method.to_lowercase()];
            assert!(op_spec["security"].is_array(), "{op} does not declare its auth");
        }
    }
    assert!(spec["components"]["securitySchemes"]["api_key"].is_object());
    // Each keyed operation names the scope it needs, as the auth layer enforces it.
    let scope_of = |method: &str, path: &str| paths[path][method]["security"][0]["api_key"][0].clone();
    assert_eq!(scope_of("get", "/v1/automations"), "read");
    assert_eq!(scope_of("post", "/v1/automations"), "write");
    assert_eq!(scope_of("post", "/v1/automations/{id}/dispatch"), "operate");
    assert_eq!(scope_of("put", "/v1/plugins/{name}"), "plugins");
    assert_eq!(scope_of("post", "/v1/plugins/{name}/grants"), "admin");
    assert_eq!(scope_of("get", "/v1/api-keys"), "admin");
    let description = spec["info"]["description"].as_str().unwrap();
    for word in ["`read`", "`operate`", "`write`", "`plugins`", "`admin`", "403", "revoked"] {
        assert!(description.contains(word), "the description does not explain {word}");
    }
}

/// schemathesis (pinned in `tests/schemathesis/requirements.txt`, installed
/// into `target/tmp` on first use) against the served description with an
/// admin key, every check, bounded and seeded: each status the server
/// answers is one the description lists, and each request valid by the
/// description is accepted. The README's test command runs it (PyPI needed
/// on first use), so the description cannot drift from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_description_true() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let requirements = repo.join("tests/schemathesis/requirements.txt");
    let pin = std::fs::read_to_string(&requirements).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pin.as_bytes()));
    let venv = repo.join(format!("target/tmp/schemathesis-{}", &digest[..12]));
    let st = venv.join("bin/schemathesis");
    // A venv's scripts name its own path, so it is made in place; the
    // marker says the install finished.
    let done = venv.join(".installed");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let ok = std::process::Command::new("python3").arg("-m").arg("venv").arg(&venv).status().unwrap();
        assert!(ok.success(), "python3 -m venv failed (python3 with venv is needed)");
        let pip = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(pip.success(), "pip install -r tests/schemathesis/requirements.txt failed (PyPI needed)");
        std::fs::write(&done, pin.as_bytes()).unwrap();
    }
    let s = TestServer::start(Backend::Sqlite).await;
    let base = format!("http://127.0.0.1:{}", s.port());
    let out = tokio::process::Command::new(&st)
        .current_dir(std::env::temp_dir())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", repo.join("tests/schemathesis"))
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(repo.join("tests/schemathesis/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the description untrue:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
