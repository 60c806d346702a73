-- Postgres dialect of 0001_init (sqlite/0001_init.sql is the twin).

create table api_keys (
    id uuid primary key,
    name text not null,
    key_hash text not null unique,
    prefix text not null,
    created_at timestamptz not null,
    revoked_at timestamptz
);

create table uploads (
    id uuid primary key,
    name text,
    size_bytes bigint not null,
    sha256 text not null,
    entry_count bigint not null,
    unpacked_bytes bigint not null,
    content bytea,
    created_at timestamptz not null,
    deleted_at timestamptz
);

create table automations (
    id uuid primary key,
    name text not null,
    trigger jsonb not null,
    trigger_type text not null,
    event_source text,
    bundle_upload_id uuid references uploads (id),
    preset jsonb,
    entrypoint text,
    env jsonb not null,
    executor jsonb not null,
    timeout_seconds bigint not null,
    enabled boolean not null,
    concurrency bigint not null,
    concurrency_policy text not null,
    filter_error_count bigint not null default 0,
    last_filter_error text,
    last_filter_error_at timestamptz,
    last_triggered_at timestamptz,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    deleted_at timestamptz
);

create index automations_event_lookup on automations (event_source, trigger_type)
    where deleted_at is null;
create index automations_upload on automations (bundle_upload_id)
    where deleted_at is null;

create table runs (
    id uuid primary key,
    automation_id uuid not null references automations (id),
    status text not null,
    status_detail jsonb not null,
    trigger jsonb not null,
    attempt bigint not null default 0,
    executor text,
    executor_handle text,
    output jsonb,
    error text,
    callback_token_hash text,
    lease_owner text,
    lease_expires_at timestamptz,
    created_at timestamptz not null,
    started_at timestamptz,
    finished_at timestamptz,
    timeout_at timestamptz,
    updated_at timestamptz not null
);

create index runs_by_automation on runs (automation_id, id);
create index runs_by_status on runs (status, id);
