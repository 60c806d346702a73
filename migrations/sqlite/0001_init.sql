-- SQLite dialect of 0001_init (postgres/0001_init.sql is the twin).
-- Ids are hyphenated lowercase text; times are fixed-width RFC 3339 UTC text
-- ('2026-11-26T05:39:29.123456Z'), which sorts like time; JSON is text;
-- booleans are 0/1.

create table api_keys (
    id text primary key not null,
    name text not null,
    key_hash text not null unique,
    prefix text not null,
    created_at text not null,
    revoked_at text
);

create table uploads (
    id text primary key not null,
    name text,
    size_bytes integer not null,
    sha256 text not null,
    entry_count integer not null,
    unpacked_bytes integer not null,
    content blob,
    created_at text not null,
    deleted_at text
);

create table automations (
    id text primary key not null,
    name text not null,
    trigger text not null,
    trigger_type text not null,
    event_source text,
    bundle_upload_id text references uploads (id),
    preset text,
    entrypoint text,
    env text not null,
    executor text not null,
    timeout_seconds integer not null,
    enabled integer not null,
    concurrency integer not null,
    concurrency_policy text not null,
    filter_error_count integer not null default 0,
    last_filter_error text,
    last_filter_error_at text,
    last_triggered_at text,
    created_at text not null,
    updated_at text not null,
    deleted_at text
);

create index automations_event_lookup on automations (event_source, trigger_type)
    where deleted_at is null;
create index automations_upload on automations (bundle_upload_id)
    where deleted_at is null;

create table runs (
    id text primary key not null,
    automation_id text not null references automations (id),
    status text not null,
    status_detail text not null,
    trigger text not null,
    attempt integer not null default 0,
    executor text,
    executor_handle text,
    output text,
    error text,
    callback_token_hash text,
    lease_owner text,
    lease_expires_at text,
    created_at text not null,
    started_at text,
    finished_at text,
    timeout_at text,
    updated_at text not null
);

create index runs_by_automation on runs (automation_id, id);
create index runs_by_status on runs (status, id);
