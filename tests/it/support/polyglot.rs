//! Builds the Python and JavaScript guests in `guest-examples/` with their
//! own toolchains (componentize-py from PyPI, componentize-js from npm),
//! cached under `target/tmp/polyglot/` and rebuilt when a source, the WIT or
//! the pinned toolchain changes. A missing `python3`/`npm` or a failed
//! install fails the test that needs the guest, loudly: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A digest of `files` and every `wit/*.wit`: what the component is built from.
fn fingerprint(files: &[PathBuf]) -> String {
    let mut all: Vec<PathBuf> = files.to_vec();
    let mut wit: Vec<PathBuf> = std::fs::read_dir(repo().join("wit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wit"))
        .collect();
    wit.sort();
    all.extend(wit);
    let mut h = Sha256::new();
    for f in &all {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
    }
    hex::encode(&h.finalize()[..8])
}

/// `program` at the lowest CPU priority: these builds take tens of seconds of
/// both cores, and the tests running beside them (the sandbox's fork bomb,
/// the HTTP front's timeouts) must not starve.
fn niced(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"]).arg(program);
    cmd
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Held while a toolchain is installed into the cache, so two tests that
/// need it at once do not install it over each other (on a fresh machine
/// the second one's rename found the first one's directory in place).
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds once per fingerprint: `build(tmp)` writes the component to `tmp`,
/// which is renamed into place only when it succeeded.
fn cached(name: &str, fp: &str, build: impl FnOnce(&Path)) -> Vec<u8> {
    let out = cache().join(format!("{name}-{fp}.wasm"));
    if !out.exists() {
        let tmp = cache().join(format!("{name}-{fp}.wasm.tmp"));
        build(&tmp);
        std::fs::rename(&tmp, &out).unwrap();
    }
    std::fs::read(&out).unwrap()
}

/// `guest-examples/python-filter`, built with componentize-py.
pub(crate) fn python_filter() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let src = repo().join("guest-examples/python-filter");
        let requirements = src.join("requirements.txt");
        let fp = fingerprint(&[src.join("app.py"), requirements.clone()]);
        cached("python-filter", &fp, |tmp| componentize_py(&src, &repo().join("wit"), tmp))
    })
    .clone()
}

/// `guest-examples/js-filter`, built with componentize-js (npm ci from its
/// lockfile into the cache, not into the source tree).
pub(crate) fn js_filter() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let src = repo().join("guest-examples/js-filter");
        let lock = [src.join("package.json"), src.join("package-lock.json")];
        let mut inputs = lock.to_vec();
        inputs.push(src.join("filter.js"));
        let fp = fingerprint(&inputs);
        cached("js-filter", &fp, |tmp| componentize_js(&src.join("filter.js"), &repo().join("wit"), tmp))
    })
    .clone()
}

/// Builds the Python app `app.py` in `dir` against `wit` into `out`, with
/// the componentize-py that `guest-examples/python-filter/requirements.txt`
/// pins (installed once into the cache).
pub(crate) fn componentize_py(dir: &Path, wit: &Path, out: &Path) {
    let requirements = repo().join("guest-examples/python-filter/requirements.txt");
    let deps = cache().join(format!("pydeps-{}", fingerprint(std::slice::from_ref(&requirements))));
    let tool = deps.join("bin/componentize-py");
    // Tests run on threads of one process: one installs, the others wait.
    let installing = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !tool.exists() {
        let partial = deps.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        run(
            niced("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"])
                .arg("--target")
                .arg(&partial)
                .arg("-r")
                .arg(&requirements),
            "pip install -r guest-examples/python-filter/requirements.txt",
        );
        std::fs::rename(&partial, &deps).unwrap();
    }
    drop(installing);
    run(
        niced(&tool)
            .env("PYTHONPATH", &deps)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-d")
            .arg(wit)
            .args(["-w", "filter-plugin", "componentize", "app", "-p"])
            .arg(dir)
            .arg("-o")
            .arg(out),
        &format!("componentize-py ({})", dir.display()),
    );
}

/// Builds the JavaScript module `source` against `wit` into `out`, with the
/// componentize-js that `guest-examples/js-filter`'s lockfile pins
/// (`npm ci` once into the cache, not into the source tree).
pub(crate) fn componentize_js(source: &Path, wit: &Path, out: &Path) {
    let src = repo().join("guest-examples/js-filter");
    let lock = [src.join("package.json"), src.join("package-lock.json")];
    let work = cache().join(format!("npm-{}", fingerprint(&lock)));
    let tool = work.join("node_modules/.bin/componentize-js");
    let installing = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !tool.exists() {
        std::fs::create_dir_all(&work).unwrap();
        for f in &lock {
            std::fs::copy(f, work.join(f.file_name().unwrap())).unwrap();
        }
        run(
            niced("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&work),
            "npm ci (guest-examples/js-filter)",
        );
    }
    drop(installing);
    run(
        niced(&tool).current_dir(&work).arg(source).arg("-w").arg(wit).args(["-n", "filter-plugin", "-o"]).arg(out),
        &format!("componentize-js ({})", source.display()),
    );
}

/// Builds the Rust crate in `dir` for wasm32-wasip2 (release), with a
/// target directory kept in the cache so dependencies build once.
#[allow(dead_code)] // The benchmarks include this file but build no crate.
pub(crate) fn cargo_component(dir: &Path) -> PathBuf {
    let target = cache().join("rust-target");
    let mut cmd = niced(env!("CARGO"));
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet", "--jobs", "1"])
        .env("CARGO_TARGET_DIR", &target);
    // The outer build's settings are for the host, not for this crate.
    for (key, _) in std::env::vars() {
        let host_only =
            (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("RUSTC") || key == "RUSTFLAGS";
        if host_only && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    run(&mut cmd, &format!("cargo build ({})", dir.display()));
    target.join("wasm32-wasip2/release")
}
