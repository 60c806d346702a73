-- SQLite dialect of 0005_keys (postgres/0005_keys.sql is the twin).
-- API keys get scopes, an optional expiry and a last-use time; keys made
-- before scopes existed could do everything, so they keep `admin`.
-- Every change made through the API leaves an audit record naming the key.

alter table api_keys add column scopes text not null default '["admin"]';
alter table api_keys add column expires_at text;
alter table api_keys add column last_used_at text;

create table audit_log (
    id text primary key not null,
    at text not null,
    key_id text,
    key_name text not null,
    action text not null,
    target text not null,
    status integer not null
);

-- Secret environment variables of an automation, sealed (see secrets.rs).
alter table automations add column secret_env text;
