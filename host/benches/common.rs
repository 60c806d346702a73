//! Shared by the benchmarks: the 14 KB delivery and filter expressions.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

/// The repository's tests/fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A real 14 KB GitHub delivery (issues.labeled, octokit fixture).
pub fn delivery_14kb() -> String {
    std::fs::read_to_string(fixtures().join("github-webhooks/issues/labeled.with-organization.payload.json"))
        .expect("fixture")
}

/// `n` distinct, realistic filter expressions over that delivery (about a
/// tenth use `regex`); a few match, most do not.
pub fn expressions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 10 {
            0 => format!("action == 'labeled' && label.name == 'label-{i}'"),
            1 => format!("contains(issue.labels[].name, 'bug-{i}')"),
            2 => format!("glob(repository.full_name, 'org-{i}/*')"),
            3 => format!("icontains(issue.title, 'keyword {i}')"),
            4 => format!("sender.login == 'user-{i}' || issue.number == `{i}`"),
            5 => format!("starts_with(issue.html_url, 'https://github.com/org{i}/')"),
            6 => format!("regex(issue.body || '', 'fix(es)? #{i}\\b')"),
            7 => format!("issue.comments > `{i}` && !issue.locked"),
            8 => format!("ends_with(repository.name, '-{i}')"),
            _ => format!("length(issue.labels) > `{}` && lower(issue.state) == 'open' && `{i}` > `0`", i % 5),
        })
        .collect()
}
