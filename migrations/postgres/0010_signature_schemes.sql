-- Postgres dialect of 0010_signature_schemes (sqlite/0010_signature_schemes.sql is the twin).
-- How a custom source's deliveries are signed: hmac-sha256 (every source
-- made before this), standard-webhooks, slack-v0 or token.
alter table event_sources add column signature_scheme text not null default 'hmac-sha256';
