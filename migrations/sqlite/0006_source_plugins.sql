-- SQLite dialect of 0006_source_plugins (postgres/0006_source_plugins.sql is the twin).
-- A custom source may name a source plugin (WIT 0.2.0) that verifies and
-- reads its deliveries instead of the built-in HMAC check and key
-- expression; the secret stays with the source and is handed to the plugin.
alter table event_sources add column plugin text;
