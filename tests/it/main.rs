#![allow(unreachable_pub, missing_docs)] // A test binary: nothing here is a public API.

//! End-to-end tests: each starts the real `automation-host` binary on an
//! ephemeral port and talks HTTP to it. Every storage behaviour runs on
//! SQLite and on Postgres (`db_tests!` makes both variants).

mod support;

// Health and readiness probes, no auth.
mod health;
// API keys: admin key, created keys, refusals.
mod auth;
// API key scopes, revocation, expiry, audit.
mod keys;
// Secrets: sealed at rest, write-only, rotation, environment.
mod secrets;
// Automations: create, validation, pagination, patch, soft delete.
mod automations;
// Runs: dispatch, listing, cancel and its races.
mod runs;
// Automation states: drafts, disabling by hand and by the host (failures,
// a bundle that cannot be made, a missing plugin).
mod states;
// Retention: old runs, slots and kept workspaces go; the newest stay.
mod retention;
// Live run logs (and their stream) and progress reports.
mod run_logs;
// Completion notifications: signed, retried, recorded, never into the host's network.
mod notify;
// Runs carried out by executor plugins: output, timeouts, cancel, rescue.
mod dispatch;
// The local sandbox against hostile bundles: every escape blocked.
mod sandbox;
// Storage faults under load: full disk, read-only or vanished files,
// Postgres stopped or locked; nothing acknowledged is lost.
mod faults;
// The agent-server executor against a real OpenHands agent-server.
mod agent_server;
// Bundled components in-process: JMESPath compliance, GitHub fixtures.
mod components;
// Events: signed GitHub and custom deliveries, dedup, matching, kill -9.
mod events;
// Plugins: the registry, uploads, grants, misbehaving guests.
mod plugins;
// Trust boundaries: plugin grants by identity, cache, supervision.
mod trust;
// Provide, then deny: WASI 0.2 linked whole, denied where it matters.
mod wasi;
// The Python and JavaScript guest filters, built by their toolchains.
mod polyglot;
// WIT releases side by side: a committed 0.1.0 guest next to 0.2.0 ones.
mod wit_versions;
// Built-in providers (GitLab, Slack, Standard Webhooks) with their published sample payloads.
mod provider_sources;
// Source plugins: Linear's webhooks, and a source plugin that misbehaves.
mod source_plugins;
// The HTTP front against slow clients and floods.
mod http_limits;
// Cron: slots, misfire policies, next fire times, two hosts.
mod scheduler;
// Bundle uploads and archive checks.
mod uploads;
// Hostile input: archives built to escape or to exhaust the host.
mod hostile_input;
// The OpenAPI description matches the routes.
mod openapi;
// The web console in a real headless Chromium.
mod console;
// The command line: --help, config errors, restarts.
mod cli;
