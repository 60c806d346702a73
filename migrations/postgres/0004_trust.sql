-- Postgres dialect of 0004_trust (sqlite/0004_trust.sql is the twin).
-- Grants recorded through the API: they name a plugin and the digest of the
-- one component they were given to, and who gave them when.

create table plugin_grants (
    name text not null,
    sha256 text not null,
    capabilities text not null,
    allowed_hosts text not null,
    granted_by text not null,
    granted_at timestamptz not null,
    primary key (name, sha256)
);
