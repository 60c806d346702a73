//! API keys, stored as SHA-256 hashes.

use sqlx::FromRow;

use super::types::{DbId, DbTime};
use super::{Result, Store, with_db};
use crate::model::ApiKeyInfo;

#[derive(FromRow)]
struct Row {
    id: DbId,
    name: String,
    prefix: String,
    created_at: DbTime,
}

impl From<Row> for ApiKeyInfo {
    fn from(r: Row) -> ApiKeyInfo {
        ApiKeyInfo { id: r.id.0, name: r.name, prefix: r.prefix, created_at: r.created_at.0 }
    }
}

impl Store {
    /// Stores a new key's hash and public part.
    pub async fn insert_api_key(&self, info: &ApiKeyInfo, key_hash: &str) -> Result<()> {
        with_db!(self, write, |db| {
            sqlx::query(
                "insert into api_keys (id, name, key_hash, prefix, created_at) \
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(DbId(info.id))
            .bind(&info.name)
            .bind(key_hash)
            .bind(&info.prefix)
            .bind(DbTime::new(info.created_at))
            .execute(db)
            .await?;
        });
        Ok(())
    }

    /// Finds the live key with this hash.
    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyInfo>> {
        let row: Option<Row> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select id, name, prefix, created_at from api_keys \
                 where key_hash = $1 and revoked_at is null",
            )
            .bind(key_hash)
            .fetch_optional(db)
            .await?
        });
        Ok(row.map(ApiKeyInfo::from))
    }

    /// How many live keys exist.
    pub async fn count_api_keys(&self) -> Result<i64> {
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar("select count(*) from api_keys where revoked_at is null").fetch_one(db).await?
        }))
    }
}
