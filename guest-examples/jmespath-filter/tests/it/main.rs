//! Native integration tests of the filter's evaluation logic.
//!
//! One test binary (faster to link than one per file), a module per area:

/// Locating and reading the fixtures (tests/fixtures).
mod support;

/// The reference service's own filter test cases.
mod reference;

/// The official JMESPath compliance suite.
mod compliance;

/// Real GitHub webhook payloads.
mod github_webhooks;

/// The parser that builds only what expressions can see gives the same
/// results as the whole payload.
mod prune;
