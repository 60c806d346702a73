-- Postgres dialect of 0003_run_loop (sqlite/0003_run_loop.sql is the twin).

create table settings (
    key text primary key,
    value text not null
);

alter table automations add column next_fire_at timestamptz;
create index automations_due on automations (next_fire_at)
    where deleted_at is null and trigger_type = 'cron' and enabled;

create table cron_slots (
    automation_id uuid not null references automations (id),
    scheduled_for timestamptz not null,
    outcome text not null,
    run_id uuid,
    recorded_at timestamptz not null,
    primary key (automation_id, scheduled_for)
);

create index runs_leases on runs (status, lease_expires_at);

-- What the executor plugin logged while carrying out the run (bounded).
alter table runs add column plugin_log jsonb;

-- A delivery creates at most one run per automation, even if two hosts
-- (or a rescued matcher) match it twice.
alter table runs add column event_id uuid;
create unique index runs_event on runs (automation_id, event_id) where event_id is not null;

create table event_sources (
    name text primary key,
    secret text not null,
    signature_header text not null,
    event_key_expr text not null,
    delivery_id_header text,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table deliveries (
    id uuid primary key,
    source text not null,
    delivery_id text,
    event_key text,
    payload text not null,
    received_at timestamptz not null,
    status text not null,
    matched_at timestamptz,
    claimed_by text,
    claimed_at timestamptz,
    result jsonb
);

create unique index deliveries_dedup on deliveries (source, delivery_id) where delivery_id is not null;
create index deliveries_pending on deliveries (status, id);
create index deliveries_received on deliveries (received_at);
