-- SQLite dialect of 0003_run_loop (postgres/0003_run_loop.sql is the twin).
-- What the run loop needs: host-wide secrets, cron slots (unique per
-- automation and time, so replicas never fire one twice), event sources and
-- deliveries (unique per provider delivery id, for dedup).

create table settings (
    key text primary key not null,
    value text not null
);

alter table automations add column next_fire_at text;
create index automations_due on automations (next_fire_at)
    where deleted_at is null and trigger_type = 'cron' and enabled;

create table cron_slots (
    automation_id text not null references automations (id),
    scheduled_for text not null,
    outcome text not null,
    run_id text,
    recorded_at text not null,
    primary key (automation_id, scheduled_for)
);

create index runs_leases on runs (status, lease_expires_at);

-- What the executor plugin logged while carrying out the run (bounded).
alter table runs add column plugin_log text;

-- A delivery creates at most one run per automation, even if two hosts
-- (or a rescued matcher) match it twice.
alter table runs add column event_id text;
create unique index runs_event on runs (automation_id, event_id) where event_id is not null;

create table event_sources (
    name text primary key not null,
    secret text not null,
    signature_header text not null,
    event_key_expr text not null,
    delivery_id_header text,
    created_at text not null,
    updated_at text not null
);

create table deliveries (
    id text primary key not null,
    source text not null,
    delivery_id text,
    event_key text,
    payload text not null,
    received_at text not null,
    status text not null,
    matched_at text,
    claimed_by text,
    claimed_at text,
    result text
);

create unique index deliveries_dedup on deliveries (source, delivery_id) where delivery_id is not null;
create index deliveries_pending on deliveries (status, id);
create index deliveries_received on deliveries (received_at);
