//! Uploads: bundle archives. The bytes live in the database, not on one
//! host's disk, so any replica sharing a Postgres database can run any bundle.

use sqlx::Connection as _;
use sqlx::FromRow;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, with_db};
use crate::model::Upload;

const COLUMNS: &str = "id, name, size_bytes, sha256, entry_count, unpacked_bytes, created_at";

#[derive(FromRow)]
struct Row {
    id: DbId,
    name: Option<String>,
    size_bytes: i64,
    sha256: String,
    entry_count: i64,
    unpacked_bytes: i64,
    created_at: DbTime,
}

impl From<Row> for Upload {
    fn from(r: Row) -> Upload {
        Upload {
            id: r.id.0,
            name: r.name,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            entry_count: r.entry_count,
            unpacked_bytes: r.unpacked_bytes,
            created_at: r.created_at.0,
        }
    }
}

/// One page of uploads, newest first.
#[derive(Debug, Clone)]
pub struct UploadPage {
    /// The uploads on this page.
    pub items: Vec<Upload>,
    /// How many uploads exist in all.
    pub total: i64,
}

/// What `delete_upload` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteUpload {
    /// It is gone.
    Deleted,
    /// It did not exist (or was already deleted).
    NotFound,
    /// Enabled automations use it; nothing changed.
    InUse(Vec<Uuid>),
}

impl Store {
    /// Stores an upload's metadata and bytes.
    pub async fn insert_upload(&self, u: &Upload, content: &[u8]) -> Result<()> {
        let sql = "insert into uploads (id, name, size_bytes, sha256, entry_count, \
            unpacked_bytes, content, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)";
        with_db!(self, write, |db| {
            sqlx::query(sql)
                .bind(DbId(u.id))
                .bind(&u.name)
                .bind(u.size_bytes)
                .bind(&u.sha256)
                .bind(u.entry_count)
                .bind(u.unpacked_bytes)
                .bind(content)
                .bind(DbTime::new(u.created_at))
                .execute(db)
                .await?;
        });
        Ok(())
    }

    /// Reads a live upload's metadata.
    pub async fn get_upload(&self, id: Uuid) -> Result<Option<Upload>> {
        let sql = format!("select {COLUMNS} from uploads where id = $1 and deleted_at is null");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        Ok(row.map(Upload::from))
    }

    /// Reads a live upload's bytes.
    pub async fn get_upload_content(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        let sql = "select content from uploads where id = $1 and deleted_at is null";
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(sql).bind(DbId(id)).fetch_optional(db).await?.flatten()
        }))
    }

    /// Lists live uploads newest first.
    pub async fn list_uploads(&self, limit: u32, before: Option<Uuid>) -> Result<UploadPage> {
        let page_sql = format!(
            "select {COLUMNS} from uploads where deleted_at is null and ($1 is null or id < $1) \
             order by id desc limit $2"
        );
        let count_sql = "select count(*) from uploads where deleted_at is null";
        let (rows, total): (Vec<Row>, i64) = with_db!(self, read, |db| {
            let rows = sqlx::query_as(&page_sql).bind(before.map(DbId)).bind(i64::from(limit)).fetch_all(db).await?;
            (rows, sqlx::query_scalar(count_sql).fetch_one(db).await?)
        });
        Ok(UploadPage { items: rows.into_iter().map(Upload::from).collect(), total })
    }

    /// Deletes an upload unless an enabled automation uses it. The bytes are
    /// dropped; the row stays (soft delete) so old references still explain
    /// themselves.
    pub async fn delete_upload(&self, id: Uuid) -> Result<DeleteUpload> {
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            let users: Vec<DbId> = sqlx::query_scalar(
                "select id from automations where bundle_upload_id = $1 \
                 and deleted_at is null and enabled order by id",
            )
            .bind(DbId(id))
            .fetch_all(&mut *tx)
            .await?;
            if !users.is_empty() {
                return Ok(DeleteUpload::InUse(users.into_iter().map(|u| u.0).collect()));
            }
            let n = sqlx::query(
                "update uploads set deleted_at = $2, content = null \
                 where id = $1 and deleted_at is null",
            )
            .bind(DbId(id))
            .bind(DbTime::new(crate::model::now()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(if n == 1 { DeleteUpload::Deleted } else { DeleteUpload::NotFound })
        })
    }
}
