//! {{name}}: a filter plugin for automation-host.
//!
//! An expression is `path=value`: the delivery matches when the JSON value
//! at the dotted `path` of its payload, as text, is `value`
//! (`action=opened`, `sender.login=octocat`, `pull_request.draft=false`).
//! Change `Rule` and `Rule::matches` to decide what you need.

mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({ path: "wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;
use serde_json::Value;

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

struct Filter;

impl Guest for Filter {
    fn validate(expression: String) -> Result<(), Error> {
        Rule::parse(&expression).map(|_| ())
    }

    fn matches(event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        // The payload is parsed once per call, however many expressions.
        let payload: Value = match serde_json::from_str(&event.payload) {
            Ok(v) => v,
            Err(e) => {
                let message = format!("the payload is not JSON: {e}");
                return expressions.iter().map(|_| Err(Error::InvalidInput(message.clone()))).collect();
            }
        };
        expressions.iter().map(|e| Rule::parse(e).map(|rule| rule.matches(&payload))).collect()
    }
}

bindings::export!(Filter with_types_in bindings);
