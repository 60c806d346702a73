-- SQLite dialect of 0008_runs_api (postgres/0008_runs_api.sql is the twin).
-- A re-run names the run it repeats; a manual dispatch with an
-- Idempotency-Key remembers its run for 24 hours, so a retried request
-- gets the first run back instead of a second one.
alter table runs add column rerun_of text;

create table dispatch_keys (
    automation_id text not null,
    idempotency_key text not null,
    run_id text not null,
    created_at text not null,
    primary key (automation_id, idempotency_key)
);
