-- SQLite dialect of 0011_states_and_progress (postgres/0011_states_and_progress.sql is the twin).
-- Why an automation is disabled (manual, failures, bad_bundle, plugin_missing),
-- whether it is a draft that was never enabled, and since when it is enabled
-- (only runs that finished since then count towards auto-disable).
alter table automations add column draft integer not null default 0;
alter table automations add column disabled_reason text;
alter table automations add column disabled_detail text;
alter table automations add column disabled_at text;
alter table automations add column enabled_at text;
update automations set enabled_at = created_at where enabled;
update automations set disabled_reason = 'manual', disabled_at = updated_at where not enabled and deleted_at is null;
-- The latest progress a run reported (phase, percent, when, by whom), as JSON.
alter table runs add column progress text;
