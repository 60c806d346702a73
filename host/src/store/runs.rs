//! Runs: insert, read, list and status transitions.
//!
//! Every transition is one conditional `update ... where status in (...)`:
//! the first writer wins, and a loser learns it from getting no row back.

use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, status_list, to_u32, with_db};
use crate::model::{PluginLogLine, Run, RunOutput, RunStatus, RunTrigger, StatusDetail};

pub(super) const COLUMNS: &str = "id, automation_id, status, status_detail, trigger, attempt, \
    executor, executor_handle, output, error, plugin_log, created_at, started_at, finished_at, \
    timeout_at, updated_at";

#[derive(FromRow)]
pub(super) struct Row {
    id: DbId,
    automation_id: DbId,
    status: String,
    status_detail: Json<StatusDetail>,
    trigger: Json<RunTrigger>,
    attempt: i64,
    executor: Option<String>,
    executor_handle: Option<String>,
    output: Option<Json<RunOutput>>,
    error: Option<String>,
    plugin_log: Option<Json<Vec<PluginLogLine>>>,
    created_at: DbTime,
    started_at: Option<DbTime>,
    finished_at: Option<DbTime>,
    timeout_at: Option<DbTime>,
    updated_at: DbTime,
}

impl TryFrom<Row> for Run {
    type Error = super::Error;

    fn try_from(r: Row) -> Result<Run> {
        Ok(Run {
            id: r.id.0,
            automation_id: r.automation_id.0,
            status: RunStatus::parse(&r.status)
                .ok_or_else(|| super::Error::Corrupt(format!("run status {}", r.status)))?,
            status_detail: r.status_detail.0,
            trigger: r.trigger.0,
            attempt: to_u32(r.attempt, "attempt")?,
            executor: r.executor,
            executor_handle: r.executor_handle,
            output: r.output.map(|o| o.0),
            error: r.error,
            plugin_log: r.plugin_log.map(|l| l.0).unwrap_or_default(),
            created_at: r.created_at.0,
            started_at: r.started_at.map(|t| t.0),
            finished_at: r.finished_at.map(|t| t.0),
            timeout_at: r.timeout_at.map(|t| t.0),
            updated_at: r.updated_at.0,
        })
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone)]
pub struct RunPage {
    /// The runs on this page.
    pub items: Vec<Run>,
    /// How many runs match in all.
    pub total: i64,
}

/// Fields a transition may set besides the status.
#[derive(Debug, Clone, Default)]
pub struct RunChanges {
    /// Sets `error`.
    pub error: Option<String>,
    /// Sets `output`.
    pub output: Option<RunOutput>,
    /// Sets `plugin_log`.
    pub plugin_log: Option<Vec<PluginLogLine>>,
}

impl Store {
    /// Inserts a new run and marks its automation as triggered, in one
    /// transaction. `callback_token_hash` is the SHA-256 of the run's
    /// completion-callback token, if it has one.
    pub async fn insert_run(&self, run: &Run, callback_token_hash: Option<&str>) -> Result<()> {
        let sql = "insert into runs (id, automation_id, status, status_detail, trigger, attempt, \
            callback_token_hash, created_at, updated_at) \
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            sqlx::query(sql)
                .bind(DbId(run.id))
                .bind(DbId(run.automation_id))
                .bind(run.status.as_str())
                .bind(Json(&run.status_detail))
                .bind(Json(&run.trigger))
                .bind(i64::from(run.attempt))
                .bind(callback_token_hash)
                .bind(DbTime::new(run.created_at))
                .bind(DbTime::new(run.updated_at))
                .execute(&mut *tx)
                .await?;
            sqlx::query("update automations set last_triggered_at = $2 where id = $1")
                .bind(DbId(run.automation_id))
                .bind(DbTime::new(run.created_at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Reads a run.
    pub async fn get_run(&self, id: Uuid) -> Result<Option<Run>> {
        let sql = format!("select {COLUMNS} from runs where id = $1");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        row.map(Run::try_from).transpose()
    }

    /// Lists runs newest first, optionally of one automation and one status.
    pub async fn list_runs(
        &self,
        automation_id: Option<Uuid>,
        status: Option<RunStatus>,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<RunPage> {
        let where_ = "($1 is null or automation_id = $1) and ($2 is null or status = $2)";
        let page_sql = format!(
            "select {COLUMNS} from runs where {where_} and ($3 is null or id < $3) \
             order by id desc limit $4"
        );
        let count_sql = format!("select count(*) from runs where {where_}");
        let status = status.map(RunStatus::as_str);
        let (rows, total): (Vec<Row>, i64) = with_db!(self, read, |db| {
            let rows = sqlx::query_as(&page_sql)
                .bind(automation_id.map(DbId))
                .bind(status)
                .bind(before.map(DbId))
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?;
            let total = sqlx::query_scalar(&count_sql).bind(automation_id.map(DbId)).bind(status).fetch_one(db).await?;
            (rows, total)
        });
        let items = rows.into_iter().map(Run::try_from).collect::<Result<_>>()?;
        Ok(RunPage { items, total })
    }

    /// Moves a run to `to` if its status is one of `from`; returns the updated
    /// run, or `None` if it was not in any of them (someone else moved it
    /// first, or it does not exist).
    pub async fn transition_run(
        &self,
        id: Uuid,
        from: &[RunStatus],
        to: RunStatus,
        detail: &StatusDetail,
        changes: RunChanges,
    ) -> Result<Option<Run>> {
        self.noted(
            async {
                let sql = format!(
                    "update runs set status = $2, status_detail = $3, updated_at = $4, \
                 finished_at = case when $5 then $4 else finished_at end, \
                 error = coalesce($6, error), output = coalesce($7, output), plugin_log = coalesce($8, plugin_log) \
                 where id = $1 and status in ({}) returning {COLUMNS}",
                    status_list(from)
                );
                let row: Option<Row> = with_db!(self, write, |db| {
                    sqlx::query_as(&sql)
                        .bind(DbId(id))
                        .bind(to.as_str())
                        .bind(Json(detail))
                        .bind(DbTime::new(detail.at))
                        .bind(to.is_final())
                        .bind(changes.error)
                        .bind(changes.output.map(Json))
                        .bind(changes.plugin_log.map(Json))
                        .fetch_optional(db)
                        .await?
                });
                row.map(Run::try_from).transpose()
            }
            .await,
        )
    }
}
