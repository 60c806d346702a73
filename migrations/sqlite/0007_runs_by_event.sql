-- SQLite dialect of 0007_runs_by_event (postgres/0007_runs_by_event.sql is the twin).
-- An event run no longer stores its own copy of the trigger payload: it
-- reads its delivery's. The delivery purge keeps deliveries that runs refer
-- to, and asks this index which ones those are.
create index runs_by_event on runs (event_id) where event_id is not null;
