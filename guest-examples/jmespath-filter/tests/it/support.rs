use std::path::PathBuf;

use jmespath_filter::eval::Engine;

/// The fixtures directory: `AUTOMATION_FIXTURES_DIR` if set, else the
/// repository's `tests/fixtures` (third-party data copied in unchanged).
pub(crate) fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("AUTOMATION_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"),
    };
    assert!(
        dir.is_dir(),
        "fixtures not found at {}; set AUTOMATION_FIXTURES_DIR to the shared fixtures directory",
        dir.display()
    );
    dir
}

/// Evaluates one expression against a payload, as the component would.
pub(crate) fn matches(payload: &str, expression: &str) -> Result<bool, String> {
    Engine::global()
        .matches(payload, &[expression])
        .pop()
        .expect("one result per expression")
        .map_err(|err| err.to_string())
}

/// Asserts that `expression` evaluates to `expected` against `payload`.
#[track_caller]
pub(crate) fn check(payload: &str, expression: &str, expected: bool) {
    match matches(payload, expression) {
        Ok(actual) => assert_eq!(actual, expected, "`{expression}` against {payload}: expected {expected}"),
        Err(err) => panic!("`{expression}` against {payload} failed: {err}"),
    }
}

/// Asserts that evaluating `expression` against `payload` is an error.
#[track_caller]
pub(crate) fn check_error(payload: &str, expression: &str) -> String {
    match matches(payload, expression) {
        Ok(actual) => panic!("`{expression}` against {payload}: expected an error, got {actual}"),
        Err(err) => err,
    }
}
