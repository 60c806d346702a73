-- Postgres dialect of 0002_plugins (sqlite/0002_plugins.sql is the twin).

create table plugins (
    name text primary key,
    kind text not null,
    manifest jsonb not null,
    wasm bytea not null,
    sha256 text not null,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

create table plugin_kv (
    plugin text not null,
    key text not null,
    value bytea not null,
    updated_at timestamptz not null,
    primary key (plugin, key)
);
