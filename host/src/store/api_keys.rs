//! API keys, stored as SHA-256 hashes, and the audit log of changes made
//! with them.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Error, Result, Store, with_db};
use crate::model::{ApiKeyInfo, AuditEntry, Scope};

const KEY_COLUMNS: &str = "id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at";

#[derive(FromRow)]
struct Row {
    id: DbId,
    name: String,
    prefix: String,
    scopes: String,
    created_at: DbTime,
    expires_at: Option<DbTime>,
    last_used_at: Option<DbTime>,
    revoked_at: Option<DbTime>,
}

impl Row {
    fn into_info(self) -> Result<ApiKeyInfo> {
        let scopes: Vec<Scope> = serde_json::from_str(&self.scopes)
            .map_err(|e| Error::Corrupt(format!("scopes of API key {}: {e}", self.id.0)))?;
        Ok(ApiKeyInfo {
            id: self.id.0,
            name: self.name,
            prefix: self.prefix,
            scopes,
            created_at: self.created_at.0,
            expires_at: self.expires_at.map(|t| t.0),
            last_used_at: self.last_used_at.map(|t| t.0),
            revoked_at: self.revoked_at.map(|t| t.0),
        })
    }
}

#[derive(FromRow)]
struct AuditRow {
    id: DbId,
    at: DbTime,
    key_id: Option<DbId>,
    key_name: String,
    action: String,
    target: String,
    status: i32,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> AuditEntry {
        AuditEntry {
            id: r.id.0,
            at: r.at.0,
            key_id: r.key_id.map(|k| k.0),
            key_name: r.key_name,
            action: r.action,
            target: r.target,
            status: u16::try_from(r.status).unwrap_or(0),
        }
    }
}

/// One page of the audit log.
pub struct AuditPage {
    /// Up to `limit` entries, newest first.
    pub items: Vec<AuditEntry>,
    /// How many entries exist.
    pub total: i64,
}

impl Store {
    /// Stores a new key's hash and public part.
    pub async fn insert_api_key(&self, info: &ApiKeyInfo, key_hash: &str) -> Result<()> {
        let scopes = serde_json::to_string(&info.scopes).map_err(|e| Error::Corrupt(e.to_string()))?;
        with_db!(self, write, |db| {
            sqlx::query(
                "insert into api_keys (id, name, key_hash, prefix, scopes, created_at, expires_at) \
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(DbId(info.id))
            .bind(&info.name)
            .bind(key_hash)
            .bind(&info.prefix)
            .bind(&scopes)
            .bind(DbTime::new(info.created_at))
            .bind(info.expires_at.map(DbTime::new))
            .execute(db)
            .await?;
        });
        Ok(())
    }

    /// Finds the key with this hash, revoked and expired ones included (the
    /// caller decides, and says why it refuses).
    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyInfo>> {
        let sql = format!("select {KEY_COLUMNS} from api_keys where key_hash = $1");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(key_hash).fetch_optional(db).await?);
        row.map(Row::into_info).transpose()
    }

    /// One key by id.
    pub async fn get_api_key(&self, id: Uuid) -> Result<Option<ApiKeyInfo>> {
        let sql = format!("select {KEY_COLUMNS} from api_keys where id = $1");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        row.map(Row::into_info).transpose()
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let sql = format!("select {KEY_COLUMNS} from api_keys order by id");
        let rows: Vec<Row> = with_db!(self, read, |db| sqlx::query_as(&sql).fetch_all(db).await?);
        rows.into_iter().map(Row::into_info).collect()
    }

    /// Revokes a key at `at`; a key revoked before keeps its first time.
    /// `None` if there is no such key.
    pub async fn revoke_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<Option<ApiKeyInfo>> {
        with_db!(self, write, |db| {
            sqlx::query("update api_keys set revoked_at = $2 where id = $1 and revoked_at is null")
                .bind(DbId(id))
                .bind(DbTime::new(at))
                .execute(db)
                .await?;
        });
        self.get_api_key(id).await
    }

    /// Records that a key was used at `at`.
    pub async fn touch_api_key(&self, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        with_db!(self, write, |db| {
            sqlx::query("update api_keys set last_used_at = $2 where id = $1")
                .bind(DbId(id))
                .bind(DbTime::new(at))
                .execute(db)
                .await?;
        });
        Ok(())
    }

    /// How many keys can still be used (not revoked, not expired).
    pub async fn count_api_keys(&self) -> Result<i64> {
        let now = DbTime::new(crate::model::now());
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar(
                "select count(*) from api_keys where revoked_at is null \
                 and (expires_at is null or expires_at > $1)",
            )
            .bind(now)
            .fetch_one(db)
            .await?
        }))
    }

    /// Appends an audit record.
    pub async fn insert_audit(&self, e: &AuditEntry) -> Result<()> {
        with_db!(self, write, |db| {
            sqlx::query(
                "insert into audit_log (id, at, key_id, key_name, action, target, status) \
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(DbId(e.id))
            .bind(DbTime::new(e.at))
            .bind(e.key_id.map(DbId))
            .bind(&e.key_name)
            .bind(&e.action)
            .bind(&e.target)
            .bind(i32::from(e.status))
            .execute(db)
            .await?;
        });
        Ok(())
    }

    /// The audit log newest first, optionally for one key.
    pub async fn list_audit(&self, limit: u32, before: Option<Uuid>, key_id: Option<Uuid>) -> Result<AuditPage> {
        let (rows, total): (Vec<AuditRow>, i64) = with_db!(self, read, |db| {
            let rows = sqlx::query_as(
                "select id, at, key_id, key_name, action, target, status from audit_log \
                 where ($1 is null or id < $1) and ($2 is null or key_id = $2) order by id desc limit $3",
            )
            .bind(before.map(DbId))
            .bind(key_id.map(DbId))
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?;
            let total = sqlx::query_scalar("select count(*) from audit_log where ($1 is null or key_id = $1)")
                .bind(key_id.map(DbId))
                .fetch_one(db)
                .await?;
            (rows, total)
        });
        Ok(AuditPage { items: rows.into_iter().map(AuditEntry::from).collect(), total })
    }
}
