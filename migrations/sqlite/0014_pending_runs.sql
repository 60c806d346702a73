-- SQLite dialect of 0014_pending_runs (postgres/0014_pending_runs.sql is the twin).
-- A claim asks which automations have pending runs, oldest first, and then
-- for those runs; with thousands pending, reading each from the table on
-- every claim kept the single writer busy. This index holds only pending
-- runs and answers both questions by itself.
create index runs_pending on runs (automation_id, created_at, id) where status = 'pending';
