-- SQLite dialect of 0012_notifications (postgres/0012_notifications.sql is the twin).
-- An automation may name a notification target: when one of its runs ends in
-- a status it lists, the host POSTs a signed Standard Webhooks message there.
-- The message is queued in the same transaction as the run's final status,
-- so none is lost, and retried with backoff until delivered or given up.
alter table automations add column notify_url text;
alter table automations add column notify_on text;
alter table automations add column notify_secret text;

create table notifications (
    id text primary key,
    run_id text not null,
    automation_id text not null,
    status text not null,
    attempts integer not null default 0,
    next_attempt_at text not null,
    last_error text,
    last_status_code integer,
    delivered_at text,
    created_at text not null
);
create index notifications_due on notifications (status, next_attempt_at);
create index notifications_by_run on notifications (run_id);
