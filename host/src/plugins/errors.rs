//! What can go wrong loading or calling a plugin, and what a call reports
//! besides its result.

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::host::LogLine;

/// Why a plugin could not be loaded. The message says what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("plugin {name}: {reason}")]
pub struct LoadError {
    /// The plugin's name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// An expected failure a plugin reported (a WIT `error` value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    /// Which of the WIT `error` cases.
    pub kind: GuestErrorKind,
    /// The plugin's message.
    pub message: String,
}

/// The cases of the WIT `error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorKind {
    /// The input was wrong.
    InvalidInput,
    /// Not allowed.
    Denied,
    /// Not possible now; worth retrying.
    Unavailable,
    /// What was asked for does not exist.
    NotFound,
    /// The plugin failed.
    Internal,
}

impl GuestErrorKind {
    /// The name in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::InvalidInput => "invalid_input",
            GuestErrorKind::Denied => "denied",
            GuestErrorKind::Unavailable => "unavailable",
            GuestErrorKind::NotFound => "not_found",
            GuestErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for GuestErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GuestError {
    /// True for failures worth retrying later.
    pub fn is_transient(&self) -> bool {
        self.kind == GuestErrorKind::Unavailable
    }
}

/// Why a call failed without the plugin returning a value: it trapped, ran
/// out of time or memory, or returned an error value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Ran past its deadline and was stopped.
    #[error("plugin {plugin} ran past its {limit_ms} ms deadline and was stopped")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The deadline in milliseconds.
        limit_ms: u128,
    },
    /// Tried to grow its memory past the limit, then failed.
    #[error("plugin {plugin} exceeded its memory limit: asked for {asked} bytes, the limit is {limit}")]
    Memory {
        /// The plugin.
        plugin: String,
        /// The size it asked for.
        asked: usize,
        /// The limit.
        limit: usize,
    },
    /// Trapped (a panic, `unreachable`, a bad memory access).
    #[error("plugin {plugin} crashed: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The trap, and what the plugin wrote to stderr.
        message: String,
    },
    /// Returned a WIT `error`.
    #[error("plugin {plugin} returned an error: {error}")]
    Guest {
        /// The plugin.
        plugin: String,
        /// The error.
        error: GuestError,
    },
    /// Returned something its interface rules out (a filter answering a
    /// different number of verdicts than it was given expressions).
    #[error("plugin {plugin} broke its interface: {message}")]
    Contract {
        /// The plugin.
        plugin: String,
        /// What it got wrong.
        message: String,
    },
}

impl CallError {
    /// True for failures worth retrying (the plugin said `unavailable`).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Guest { error, .. } if error.is_transient())
    }
}

/// What a call did besides its result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    /// Log lines.
    pub logs: Vec<LogLine>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Wall time, including instantiation.
    pub elapsed: Duration,
    /// Largest linear memory reached, in bytes.
    pub peak_memory: usize,
    /// Fuel consumed, when the engine meters fuel.
    pub fuel: Option<u64>,
    /// Whether the call ran on an instance kept from an earlier call
    /// (filters only; see `Runtime::filter_call`).
    pub reused: bool,
}
