-- Postgres dialect of 0009_automation_labels (sqlite/0009_automation_labels.sql is the twin).
-- A description, and tags: short lowercase labels, stored as ",a,b," so
-- that one LIKE finds an automation by tag on both databases.
alter table automations add column description text not null default '';
alter table automations add column tags text not null default '';
