//! WIT types in, domain types out: the only place the two meet.

use super::Plugin;
use super::bindings::source::exports::automation::plugin::source as wit_source;
use super::bindings::types;
use super::domain::{Bundle, ExecStatus, FilterEvent, RunContext, SourceOutcome, SourceRequest};
use super::errors::{CallError, GuestError};
use crate::model::RunOutput;

impl From<types::Error> for GuestError {
    fn from(e: types::Error) -> GuestError {
        use super::errors::GuestErrorKind as K;
        let (kind, message) = match e {
            types::Error::InvalidInput(m) => (K::InvalidInput, m),
            types::Error::Denied(m) => (K::Denied, m),
            types::Error::Unavailable(m) => (K::Unavailable, m),
            types::Error::NotFound(m) => (K::NotFound, m),
            types::Error::Internal(m) => (K::Internal, m),
        };
        GuestError { kind, message }
    }
}

/// The WIT event for a filter call.
pub(super) fn event_to_wit(e: &FilterEvent) -> types::Event {
    types::Event {
        id: e.id.to_string(),
        source: e.source.clone(),
        key: e.key.clone(),
        payload: e.payload.clone(),
        received_at: datetime_to_wit(e.received_at),
    }
}

fn datetime_to_wit(t: chrono::DateTime<chrono::Utc>) -> types::Datetime {
    types::Datetime { seconds: t.timestamp(), nanoseconds: t.timestamp_subsec_nanos() }
}

pub(super) fn bundle_from_wit(b: types::Bundle) -> Bundle {
    Bundle {
        archive: b.archive,
        files: b.files.into_iter().map(|f| (f.path, f.mode, f.contents)).collect(),
        entrypoint: b.entrypoint,
        env: b.env,
    }
}

pub(super) fn bundle_to_wit(b: &Bundle) -> types::Bundle {
    types::Bundle {
        archive: b.archive.clone(),
        files: b
            .files
            .iter()
            .map(|(path, mode, contents)| types::File { path: path.clone(), mode: *mode, contents: contents.clone() })
            .collect(),
        entrypoint: b.entrypoint.clone(),
        env: b.env.clone(),
    }
}

pub(super) fn context_to_wit(c: &RunContext) -> types::RunContext {
    types::RunContext {
        run_id: c.run_id.to_string(),
        automation_id: c.automation_id.to_string(),
        automation_name: c.automation_name.clone(),
        attempt: c.attempt,
        trigger: types::TriggerInfo {
            kind: c.trigger_kind.clone(),
            payload: c.trigger_payload.clone(),
            event_key: c.event_key.clone(),
            scheduled_for: c.scheduled_for.map(datetime_to_wit),
        },
        config: c.config.clone(),
        timeout_ms: c.timeout.as_millis() as u64,
        callback_url: c.callback_url.clone(),
        callback_token: c.callback_token.clone(),
    }
}

fn output_from_wit(o: types::RunOutput) -> RunOutput {
    RunOutput { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, truncated: o.truncated }
}

pub(super) fn status_from_wit(s: types::RunStatus) -> ExecStatus {
    match s {
        types::RunStatus::Running => ExecStatus::Running,
        types::RunStatus::Succeeded(o) => ExecStatus::Succeeded(output_from_wit(o)),
        types::RunStatus::Failed((why, o)) => ExecStatus::Failed(why, output_from_wit(o)),
        types::RunStatus::TimedOut(o) => ExecStatus::TimedOut(output_from_wit(o)),
        types::RunStatus::Cancelled(o) => ExecStatus::Cancelled(output_from_wit(o)),
    }
}

/// A filter's answer to `matches`, checked: one verdict per expression, in
/// order, or the whole call fails.
pub(super) fn verdicts(
    plugin: &Plugin,
    answer: Vec<Result<bool, types::Error>>,
    expressions: usize,
) -> Result<Vec<Result<bool, GuestError>>, CallError> {
    if answer.len() != expressions {
        return Err(CallError::Contract {
            plugin: plugin.name().to_owned(),
            message: format!("`matches` returned {} verdicts for {expressions} expressions", answer.len()),
        });
    }
    Ok(answer.into_iter().map(|x| x.map_err(GuestError::from)).collect())
}

pub(super) fn source_request_to_wit(r: SourceRequest) -> wit_source::Request {
    wit_source::Request { headers: r.headers, body: r.body }
}

pub(super) fn source_outcome_from_wit(o: wit_source::Outcome) -> SourceOutcome {
    match o {
        wit_source::Outcome::Deliver(d) => {
            SourceOutcome::Deliver { key: d.key, delivery_id: d.delivery_id, payload: d.payload }
        }
        wit_source::Outcome::Reply(r) => {
            SourceOutcome::Reply { status: r.status, content_type: r.content_type, body: r.body }
        }
    }
}
