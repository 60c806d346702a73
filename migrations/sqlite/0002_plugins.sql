-- SQLite dialect of 0002_plugins (postgres/0002_plugins.sql is the twin).
-- Plugins uploaded through the API live in the database, so every replica
-- sharing it loads the same ones; plugin_kv is the `kv` capability's store.

create table plugins (
    name text primary key not null,
    kind text not null,
    manifest text not null,
    wasm blob not null,
    sha256 text not null,
    created_at text not null,
    updated_at text not null
);

create table plugin_kv (
    plugin text not null,
    key text not null,
    value blob not null,
    updated_at text not null,
    primary key (plugin, key)
);
