-- Postgres dialect of 0013_source_presets (sqlite/0013_source_presets.sql is the twin).
-- The built-in provider a source was made for (gitlab, slack,
-- standard-webhooks): it fixed the signature scheme, headers and event key,
-- and may answer a handshake (Slack's url_verification). Null: custom.
alter table event_sources add column preset text;
