//! Uploaded plugins and the plugins' key-value state.

use sqlx::Connection as _;
use sqlx::FromRow;
use sqlx::types::Json;

use super::types::DbTime;
use super::{Dialect, Result, Store, with_db};
/// A plugin stored through the API. The store keeps its manifest as the
/// JSON the plugin runtime wrote (it reads back what it wrote; the store
/// does not know the manifest's shape).
#[derive(Debug, Clone)]
pub struct StoredPlugin {
    /// Its name.
    pub name: String,
    /// Its kind, as the manifest names it (`filter`, `source`...).
    pub kind: String,
    /// Its manifest, as JSON.
    pub manifest: serde_json::Value,
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// SHA-256 of `wasm`, lowercase hex.
    pub sha256: String,
}

#[derive(FromRow)]
struct Row {
    name: String,
    kind: String,
    manifest: Json<serde_json::Value>,
    wasm: Vec<u8>,
    sha256: String,
}

impl Store {
    /// Inserts or replaces an uploaded plugin.
    pub async fn upsert_plugin(&self, p: &StoredPlugin) -> Result<()> {
        let now = DbTime::new(crate::model::now());
        with_db!(self, write, |db| {
            sqlx::query(
                "insert into plugins (name, kind, manifest, wasm, sha256, created_at, updated_at) \
                 values ($1, $2, $3, $4, $5, $6, $6) \
                 on conflict (name) do update set kind = excluded.kind, manifest = excluded.manifest, \
                 wasm = excluded.wasm, sha256 = excluded.sha256, updated_at = excluded.updated_at",
            )
            .bind(&p.name)
            .bind(&p.kind)
            .bind(Json(&p.manifest))
            .bind(&p.wasm)
            .bind(&p.sha256)
            .bind(now)
            .execute(db)
            .await?;
        });
        Ok(())
    }

    /// Every uploaded plugin.
    pub async fn list_plugins(&self) -> Result<Vec<StoredPlugin>> {
        let rows: Vec<Row> = with_db!(self, read, |db| {
            sqlx::query_as("select name, kind, manifest, wasm, sha256 from plugins order by name").fetch_all(db).await?
        });
        Ok(rows
            .into_iter()
            .map(|r| StoredPlugin {
                name: r.name,
                kind: r.kind,
                manifest: r.manifest.0,
                wasm: r.wasm,
                sha256: r.sha256,
            })
            .collect())
    }

    /// A fingerprint of the uploaded plugins (count and latest change), so a
    /// replica can tell cheaply whether to reload.
    pub async fn plugins_version(&self) -> Result<(i64, Option<String>)> {
        let row: (i64, Option<DbTime>) = with_db!(self, read, |db| {
            sqlx::query_as("select count(*), max(updated_at) from plugins").fetch_one(db).await?
        });
        Ok((row.0, row.1.map(|t| t.0.to_rfc3339())))
    }

    /// Deletes an uploaded plugin; false if there was none.
    pub async fn delete_plugin(&self, name: &str) -> Result<bool> {
        let n = with_db!(self, write, |db| {
            sqlx::query("delete from plugins where name = $1").bind(name).execute(db).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Live automations that name a plugin (as filter, preset or executor).
    pub async fn automations_using_plugin(&self, name: &str) -> Result<Vec<uuid::Uuid>> {
        // The one place JSON is queried: the operators differ by dialect.
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "select id from automations where deleted_at is null and (\
                 json_extract(executor, '$.plugin') = $1 or json_extract(preset, '$.name') = $1 \
                 or json_extract(trigger, '$.filter_plugin') = $1) order by id"
            }
            Dialect::Postgres => {
                "select id from automations where deleted_at is null and (\
                 executor->>'plugin' = $1 or preset->>'name' = $1 or trigger->>'filter_plugin' = $1) \
                 order by id"
            }
        };
        let ids: Vec<super::types::DbId> =
            with_db!(self, read, |db| sqlx::query_scalar(sql).bind(name).fetch_all(db).await?);
        Ok(ids.into_iter().map(|i| i.0).collect())
    }

    /// Reads a plugin's key.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar("select value from plugin_kv where plugin = $1 and key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(db)
                .await?
        }))
    }

    /// Writes a plugin's key.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        quota: crate::model::KvQuota,
    ) -> Result<std::result::Result<(), String>> {
        let now = DbTime::new(crate::model::now());
        let usage_sql = match self.dialect() {
            super::Dialect::Sqlite => {
                "select count(*), coalesce(sum(length(cast(key as blob)) + length(value)), 0) \
                 from plugin_kv where plugin = $1 and key <> $2"
            }
            super::Dialect::Postgres => {
                "select count(*), coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint \
                 from plugin_kv where plugin = $1 and key <> $2"
            }
        };
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            if matches!(self.dialect(), super::Dialect::Postgres) {
                // Sets of one plugin on several replicas queue here, so none
                // passes the quota on a count another is about to change.
                sqlx::query("select pg_advisory_xact_lock(hashtext($1))").bind(plugin).execute(&mut *tx).await?;
            }
            let (keys, bytes): (i64, i64) =
                sqlx::query_as(usage_sql).bind(plugin).bind(key).fetch_one(&mut *tx).await?;
            if let Err(refusal) = quota.allows(keys, bytes, (key.len() + value.len()) as i64) {
                return Ok(Err(refusal));
            }
            sqlx::query(
                "insert into plugin_kv (plugin, key, value, updated_at) values ($1, $2, $3, $4) \
                 on conflict (plugin, key) do update set value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(plugin)
            .bind(key)
            .bind(value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    /// Deletes a plugin's key; true if it existed.
    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool> {
        let n = with_db!(self, write, |db| {
            sqlx::query("delete from plugin_kv where plugin = $1 and key = $2")
                .bind(plugin)
                .bind(key)
                .execute(db)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Lists a plugin's keys starting with `prefix`, in order.
    pub async fn kv_list(&self, plugin: &str, prefix: &str, limit: u32) -> Result<Vec<String>> {
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "select key from plugin_kv where plugin = $1 and substr(key, 1, length($2)) = $2 \
                 order by key limit $3"
            }
            Dialect::Postgres => {
                "select key from plugin_kv where plugin = $1 and starts_with(key, $2) order by key limit $3"
            }
        };
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar(sql).bind(plugin).bind(prefix).bind(i64::from(limit)).fetch_all(db).await?
        }))
    }
}

/// A grant recorded through the API for one component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RecordedGrant {
    /// The plugin's name.
    pub name: String,
    /// The digest of the component it was given to.
    pub sha256: String,
    /// Capability names (`kv`, `http`, `sandbox`).
    pub capabilities: Vec<String>,
    /// Hosts `http` may reach.
    pub allowed_hosts: Vec<String>,
    /// Who gave it: the API key's name and id.
    pub granted_by: String,
    /// When.
    pub granted_at: chrono::DateTime<chrono::Utc>,
}

#[derive(FromRow)]
struct GrantRow {
    name: String,
    sha256: String,
    capabilities: String,
    allowed_hosts: String,
    granted_by: String,
    granted_at: DbTime,
}

impl GrantRow {
    fn into_grant(self) -> Result<RecordedGrant> {
        let list = |s: &str, what: &str| {
            serde_json::from_str::<Vec<String>>(s)
                .map_err(|e| super::Error::Corrupt(format!("plugin grant {what}: {e}")))
        };
        Ok(RecordedGrant {
            capabilities: list(&self.capabilities, "capabilities")?,
            allowed_hosts: list(&self.allowed_hosts, "allowed_hosts")?,
            name: self.name,
            sha256: self.sha256,
            granted_by: self.granted_by,
            granted_at: self.granted_at.0,
        })
    }
}

impl Store {
    /// Records (or replaces) the grant of one component.
    pub async fn upsert_plugin_grant(&self, g: &RecordedGrant) -> Result<()> {
        let caps = serde_json::to_string(&g.capabilities).unwrap_or_else(|_| "[]".into());
        let hosts = serde_json::to_string(&g.allowed_hosts).unwrap_or_else(|_| "[]".into());
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            sqlx::query(
                "insert into plugin_grants (name, sha256, capabilities, allowed_hosts, granted_by, granted_at) \
                 values ($1, $2, $3, $4, $5, $6) on conflict (name, sha256) do update set \
                 capabilities = excluded.capabilities, allowed_hosts = excluded.allowed_hosts, \
                 granted_by = excluded.granted_by, granted_at = excluded.granted_at",
            )
            .bind(&g.name)
            .bind(&g.sha256)
            .bind(&caps)
            .bind(&hosts)
            .bind(&g.granted_by)
            .bind(DbTime::new(g.granted_at))
            .execute(&mut *tx)
            .await?;
            // Replicas notice grant changes as plugin changes.
            sqlx::query("update plugins set updated_at = $2 where name = $1")
                .bind(&g.name)
                .bind(DbTime::new(g.granted_at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The grant recorded for a component, if any.
    pub async fn get_plugin_grant(&self, name: &str, sha256: &str) -> Result<Option<RecordedGrant>> {
        let row: Option<GrantRow> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select name, sha256, capabilities, allowed_hosts, granted_by, granted_at from plugin_grants \
                 where name = $1 and sha256 = $2",
            )
            .bind(name)
            .bind(sha256)
            .fetch_optional(db)
            .await?
        });
        row.map(GrantRow::into_grant).transpose()
    }

    /// Every grant recorded for a plugin name, newest first.
    pub async fn list_plugin_grants(&self, name: &str) -> Result<Vec<RecordedGrant>> {
        let rows: Vec<GrantRow> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select name, sha256, capabilities, allowed_hosts, granted_by, granted_at from plugin_grants \
                 where name = $1 order by granted_at desc",
            )
            .bind(name)
            .fetch_all(db)
            .await?
        });
        rows.into_iter().map(GrantRow::into_grant).collect()
    }

    /// Withdraws the grant of a component; false if there was none.
    pub async fn delete_plugin_grant(&self, name: &str, sha256: &str) -> Result<bool> {
        let n = with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            let n = sqlx::query("delete from plugin_grants where name = $1 and sha256 = $2")
                .bind(name)
                .bind(sha256)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("update plugins set updated_at = $2 where name = $1")
                .bind(name)
                .bind(DbTime::new(crate::model::now()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }
}
