//! {{name}}: a filter plugin for automation-host.
//!
//! An expression is `path=value`: the delivery matches when the JSON value
//! at the dotted `path` of its payload, as text, is `value`
//! (`action=opened`, `sender.login=octocat`, `pull_request.draft=false`).
//! Change `Rule` and `Rule::matches` to decide what you need.

use automation_plugin::filter::{Event, Filter};
use automation_plugin::{Error, Value};

/// A parsed expression.
struct Rule<'a> {
    path: Vec<&'a str>,
    value: &'a str,
}

impl<'a> Rule<'a> {
    fn parse(expression: &'a str) -> Result<Rule<'a>, Error> {
        let (path, value) = expression
            .split_once('=')
            .ok_or_else(|| Error::InvalidInput(format!("expected `path=value`, got {expression:?}")))?;
        let path: Vec<&str> = path.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(Error::InvalidInput(format!("empty path segment in {expression:?}")));
        }
        Ok(Rule { path, value: value.trim() })
    }

    fn matches(&self, payload: &Value) -> bool {
        let mut at = payload;
        for key in &self.path {
            match at.get(key) {
                Some(next) => at = next,
                None => return false,
            }
        }
        match at {
            Value::String(s) => s == self.value,
            other => other.to_string() == self.value,
        }
    }
}

pub struct PathFilter;

impl Filter for PathFilter {
    fn validate(expression: &str) -> Result<(), Error> {
        Rule::parse(expression).map(|_| ())
    }

    fn matches(event: &Event, expression: &str) -> Result<bool, Error> {
        // `payload()` parses once per call, however many expressions ask.
        Ok(Rule::parse(expression)?.matches(event.payload()?))
    }
}

automation_plugin::export_filter!(PathFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_values() {
        let event = Event::new("github", "pull_request.opened", r#"{"action": "opened", "n": 2}"#);
        assert_eq!(PathFilter::matches(&event, "action=opened"), Ok(true));
        assert_eq!(PathFilter::matches(&event, "n=2"), Ok(true));
        assert_eq!(PathFilter::matches(&event, "action=closed"), Ok(false));
        assert!(PathFilter::validate("no equals sign").is_err());
    }
}
