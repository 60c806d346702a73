//! Retention: the row deletions the sweep (`crate::retention`) makes, each
//! a small batch in its own statement so none holds the SQLite writer for
//! long. Which rows are old enough is decided here in SQL (it depends on
//! the rows); how often and how much is the sweep's.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, status_list, with_db};
use crate::model::RunStatus;

/// The per-automation tables the sweep trims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// `runs`.
    Runs,
    /// `cron_slots`.
    Slots,
}

impl Retained {
    fn name(self) -> &'static str {
        match self {
            Retained::Runs => "runs",
            Retained::Slots => "cron_slots",
        }
    }
}

impl Store {
    /// Automations (deleted ones too) with more than `keep` rows in `table`
    /// (their runs or their cron slots): the only ones a sweep of that
    /// table can take anything from.
    pub async fn automations_over(&self, table: Retained, keep: u32) -> Result<Vec<Uuid>> {
        let sql = format!("select automation_id from {} group by automation_id having count(*) > $1", table.name());
        let ids: Vec<DbId> =
            with_db!(self, read, |db| sqlx::query_scalar(&sql).bind(i64::from(keep)).fetch_all(db).await?);
        Ok(ids.into_iter().map(|i| i.0).collect())
    }

    /// Deletes up to `batch` of an automation's final runs created before
    /// `before`, oldest first, never one of its newest `keep` runs; returns
    /// how many (0: nothing more to take from it).
    pub async fn purge_runs_of(
        &self,
        automation_id: Uuid,
        keep: u32,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64> {
        let finals: Vec<RunStatus> = RunStatus::ALL.into_iter().filter(|s| s.is_final()).collect();
        let sql = format!(
            "delete from runs where id in (select id from runs where automation_id = $1 and created_at < $2 \
             and status in ({}) \
             and id <= (select id from runs where automation_id = $1 order by id desc limit 1 offset $3) \
             order by id limit $4)",
            status_list(&finals)
        );
        Ok(with_db!(self, write, |db| {
            sqlx::query(&sql)
                .bind(DbId(automation_id))
                .bind(DbTime::new(before))
                .bind(i64::from(keep))
                .bind(i64::from(batch))
                .execute(db)
                .await?
                .rows_affected()
        }))
    }

    /// Deletes up to `batch` of an automation's slots recorded before
    /// `before`, oldest first, never one of its newest `keep`.
    pub async fn purge_slots_of(
        &self,
        automation_id: Uuid,
        keep: u32,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64> {
        Ok(with_db!(self, write, |db| {
            sqlx::query(
                "delete from cron_slots where automation_id = $1 and scheduled_for in \
                 (select scheduled_for from cron_slots where automation_id = $1 and recorded_at < $2 \
                 and scheduled_for <= (select scheduled_for from cron_slots where automation_id = $1 \
                 order by scheduled_for desc limit 1 offset $3) \
                 order by scheduled_for limit $4)",
            )
            .bind(DbId(automation_id))
            .bind(DbTime::new(before))
            .bind(i64::from(keep))
            .bind(i64::from(batch))
            .execute(db)
            .await?
            .rows_affected()
        }))
    }

    /// Deletes up to `batch` idempotency keys made before `before` (they
    /// answer for 24 hours only).
    pub async fn purge_dispatch_keys(&self, before: DateTime<Utc>, batch: u32) -> Result<u64> {
        Ok(with_db!(self, write, |db| {
            sqlx::query(
                "delete from dispatch_keys where (automation_id, idempotency_key) in \
                 (select automation_id, idempotency_key from dispatch_keys where created_at < $1 limit $2)",
            )
            .bind(DbTime::new(before))
            .bind(i64::from(batch))
            .execute(db)
            .await?
            .rows_affected()
        }))
    }
}
