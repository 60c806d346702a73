//! Filters: decide whether an event matches an automation's expression.
//!
//! The host calls a filter with one event and the expressions of every
//! candidate automation (a batch), and may keep the instance for many
//! calls: a filter may cache what it derives from expressions (in a
//! `thread_local!`), but its answers must depend on its inputs alone.

use std::cell::OnceCell;

use crate::{Datetime, Error, Value};

/// One event, as the host accepted it. The payload is parsed on first use
/// and at most once per batch, however many expressions ask for it.
#[derive(Debug)]
pub struct Event {
    /// The delivery id the host assigned (a UUID; nil for a dry run).
    pub id: String,
    /// The source: `github`, or a custom source's name.
    pub source: String,
    /// The event key, such as `pull_request.opened`.
    pub key: String,
    /// When the host received it.
    pub received_at: Datetime,
    payload: String,
    parsed: OnceCell<Result<Value, String>>,
}

impl Event {
    /// An event, for tests of a filter's logic.
    pub fn new(source: &str, key: &str, payload: &str) -> Event {
        Event {
            id: String::new(),
            source: source.to_owned(),
            key: key.to_owned(),
            received_at: Datetime::default(),
            payload: payload.to_owned(),
            parsed: OnceCell::new(),
        }
    }

    /// The payload as the sender sent it (JSON text), for filters that
    /// parse it their own way.
    pub fn payload_text(&self) -> &str {
        &self.payload
    }

    /// The payload, parsed (once).
    pub fn payload(&self) -> Result<&Value, Error> {
        self.parsed
            .get_or_init(|| serde_json::from_str(&self.payload).map_err(|e| format!("the payload is not JSON: {e}")))
            .as_ref()
            .map_err(|e| Error::InvalidInput(e.clone()))
    }
}

/// A filter plugin.
pub trait Filter {
    /// Checks an expression when an automation is saved; the error text is
    /// shown to the user at the field, so it should point at the problem.
    fn validate(expression: &str) -> Result<(), Error>;

    /// Whether `event` matches `expression`. An error counts as no match and
    /// is shown on the automation.
    fn matches(event: &Event, expression: &str) -> Result<bool, Error>;

    /// Every expression of a batch against one event, in order, one answer
    /// each. The default asks [`Filter::matches`] for each; override it to
    /// share work across the batch.
    fn matches_all(event: &Event, expressions: &[String]) -> Vec<Result<bool, Error>> {
        expressions.iter().map(|e| Self::matches(event, e)).collect()
    }
}

type W = crate::__wit::filter::automation::plugin::types::Error;

#[doc(hidden)]
pub fn __validate<F: Filter>(expression: String) -> Result<(), W> {
    F::validate(&expression).map_err(Into::into)
}

#[doc(hidden)]
pub fn __matches<F: Filter>(
    event: crate::__wit::filter::automation::plugin::types::Event,
    expressions: Vec<String>,
) -> Vec<Result<bool, W>> {
    let event = Event {
        id: event.id,
        source: event.source,
        key: event.key,
        received_at: event.received_at.into(),
        payload: event.payload,
        parsed: OnceCell::new(),
    };
    let mut answers: Vec<Result<bool, W>> =
        F::matches_all(&event, &expressions).into_iter().map(|r| r.map_err(Into::into)).collect();
    // One answer per expression, whatever `matches_all` did: the host
    // would otherwise fail the whole batch.
    answers.resize_with(expressions.len(), || {
        Err(W::Internal("the filter gave no answer for this expression".to_owned()))
    });
    answers
}

/// Exports a [`Filter`] as this component's `filter` interface. One line,
/// at the crate root: `automation_plugin::export_filter!(MyFilter);`.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __AutomationPluginFilter;
            impl $crate::__wit::filter::exports::automation::plugin::filter::Guest for __AutomationPluginFilter {
                fn validate(
                    expression: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::__wit::filter::automation::plugin::types::Error> {
                    $crate::filter::__validate::<$filter>(expression)
                }
                fn matches(
                    event: $crate::__wit::filter::automation::plugin::types::Event,
                    expressions: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::vec::Vec<
                    ::core::result::Result<bool, $crate::__wit::filter::automation::plugin::types::Error>,
                > {
                    $crate::filter::__matches::<$filter>(event, expressions)
                }
    }
            $crate::__wit::filter::__export_filter_world!(__AutomationPluginFilter with_types_in $crate::__wit::filter);
        };
    };
}
