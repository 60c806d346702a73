//! Runs: insert, read, list and status transitions.
//!
//! Every transition is one conditional `update ... where status in (...)`:
//! the first writer wins, and a loser learns it from getting no row back.

use sqlx::Connection as _;
use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, status_list, to_u32, with_db};
use crate::model::{PluginLogLine, Run, RunOutput, RunProgress, RunStatus, RunTrigger, StatusDetail};

/// Inserts a run (with its `rerun_of`) and marks its automation as
/// triggered, inside the transaction `$tx` (a macro: the body is typed per
/// database, as `with_db!` makes it).
macro_rules! insert_run_in {
    ($tx:expr, $run:expr, $callback_token_hash:expr) => {{
        let run: &Run = $run;
        sqlx::query(
            "insert into runs (id, automation_id, status, status_detail, trigger, attempt, \
             callback_token_hash, created_at, updated_at, rerun_of) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(DbId(run.id))
        .bind(DbId(run.automation_id))
        .bind(run.status.as_str())
        .bind(Json(&run.status_detail))
        .bind(Json(&run.trigger))
        .bind(i64::from(run.attempt))
        .bind($callback_token_hash)
        .bind(DbTime::new(run.created_at))
        .bind(DbTime::new(run.updated_at))
        .bind(run.rerun_of.map(DbId))
        .execute(&mut *$tx)
        .await?;
        sqlx::query("update automations set last_triggered_at = $2 where id = $1")
            .bind(DbId(run.automation_id))
            .bind(DbTime::new(run.created_at))
            .execute(&mut *$tx)
            .await?;
    }};
}

/// An event run's trigger payload is not stored on the run: it is the
/// delivery's, read with the run (`event_payload`). Runs stored before that
/// carry their copy in `trigger`, which wins.
pub(super) const COLUMNS: &str = "id, automation_id, status, status_detail, trigger, attempt, \
    executor, executor_handle, output, error, plugin_log, created_at, started_at, finished_at, \
    timeout_at, updated_at, rerun_of, progress, \
    (select d.payload from delivery_payloads d where d.id = runs.event_id) as event_payload";

/// The columns of a run as its driver takes it (claim, rescue): without
/// the event payload, which the driver reads as text from the delivery
/// ([`Store::delivery_payload`]) through a reader, outside the writer's
/// transaction.
pub(super) const DRIVER_COLUMNS: &str = "id, automation_id, status, status_detail, trigger, attempt, \
    executor, executor_handle, output, error, plugin_log, created_at, started_at, finished_at, \
    timeout_at, updated_at, rerun_of, progress, null as event_payload";

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
    rerun_of: Option<DbId>,
    progress: Option<Json<RunProgress>>,
    event_payload: Option<String>,
}

impl TryFrom<Row> for Run {
    type Error = super::Error;

    fn try_from(r: Row) -> Result<Run> {
        let mut trigger = r.trigger.0;
        if trigger.payload.is_null()
            && let Some(text) = &r.event_payload
        {
            trigger.payload = serde_json::from_str(text)
                .map_err(|e| super::Error::Corrupt(format!("the payload of delivery {:?}: {e}", trigger.event_id)))?;
        }
        Ok(Run {
            id: r.id.0,
            automation_id: r.automation_id.0,
            status: RunStatus::parse(&r.status)
                .ok_or_else(|| super::Error::Corrupt(format!("run status {}", r.status)))?,
            status_detail: r.status_detail.0,
            trigger,
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
            rerun_of: r.rerun_of.map(|id| id.0),
            progress: r.progress.map(|p| p.0),
            notifications: Vec::new(),
        })
    }
}

/// What `insert_run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// The run was created.
    Created,
    /// The key was used within the window: this is the first run's id.
    Replayed(Uuid),
}

/// What `delete_run` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRun {
    /// Deleted.
    Deleted,
    /// No such run.
    NotFound,
    /// The run is not final yet.
    NotFinal(RunStatus),
}

/// One page of runs, newest first.
#[derive(Debug, Clone)]
pub struct RunPage {
    /// The runs on this page.
    pub items: Vec<Run>,
    /// How many runs match in all.
    pub total: i64,
}

/// Which runs a list shows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this automation's.
    pub automation_id: Option<Uuid>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after this.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only runs created before this.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a run's driver writes about it (see [`Store::write_runs`]).
#[derive(Debug, Clone)]
pub enum RunWrite {
    /// The executor started it.
    Start(RunStart),
    /// It ended.
    End(RunEnd),
}

impl RunWrite {
    fn run_id(&self) -> Uuid {
        match self {
            RunWrite::Start(s) => s.id,
            RunWrite::End(e) => e.id,
        }
    }
}

/// That an executor started a run: its plugin, handle, deadline. Written
/// only while the run is `running` and leased to `host`.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// The run.
    pub id: Uuid,
    /// The host that holds its lease.
    pub host: String,
    /// The executor plugin.
    pub executor: String,
    /// The executor's handle for it.
    pub handle: String,
    /// When it times out.
    pub timeout_at: chrono::DateTime<chrono::Utc>,
}

/// One run's end, as its driver records it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// The run, which must still be `running`.
    pub id: Uuid,
    /// Its final status.
    pub to: RunStatus,
    /// Why it ended.
    pub detail: StatusDetail,
    /// Its error, output and log.
    pub changes: RunChanges,
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

/// A run's end, written only while it is `running` (binds: see `bind_end!`).
const END_RUN: &str = "update runs set status = $2, status_detail = $3, updated_at = $4, finished_at = $4, \
                       error = coalesce($5, error), output = coalesce($6, output), \
                       plugin_log = coalesce($7, plugin_log) where id = $1 and status = 'running'";

/// That a run's executor started it, written only while it is `running`
/// and leased to the host (binds: see `bind_start!`).
const START_RUN: &str = "update runs set executor = $3, executor_handle = $4, timeout_at = $5, updated_at = $6 \
                         where id = $1 and lease_owner = $2 and status = 'running'";

/// Binds the parameters of [`START_RUN`] for `start`, written at `now`.
macro_rules! bind_start {
    ($q:expr, $start:expr, $now:expr) => {
        $q.bind(DbId($start.id))
            .bind(&$start.host)
            .bind(&$start.executor)
            .bind(&$start.handle)
            .bind(DbTime::new($start.timeout_at))
            .bind(DbTime::new($now))
    };
}

/// Binds `$1`-`$7` of [`END_RUN`] for `end`.
macro_rules! bind_end {
    ($q:expr, $end:expr) => {
        $q.bind(DbId($end.id))
            .bind($end.to.as_str())
            .bind(Json(&$end.detail))
            .bind(DbTime::new($end.detail.at))
            .bind($end.changes.error.as_deref())
            .bind($end.changes.output.as_ref().map(Json))
            .bind($end.changes.plugin_log.as_ref().map(Json))
    };
}

impl Store {
    /// Inserts a new run and marks its automation as triggered, in one
    /// transaction. `callback_token_hash` is the SHA-256 of the run's
    /// completion-callback token, if it has one.
    pub async fn insert_run(&self, run: &Run, callback_token_hash: Option<&str>) -> Result<()> {
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            insert_run_in!(tx, run, callback_token_hash);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Inserts a manual run unless `key` was used for the same automation
    /// since `since` (then nothing is inserted and the first run's id is
    /// returned). Keys older than `since` are forgotten and reusable. Two
    /// concurrent requests with one key: the first to insert the key wins,
    /// the other waits for it (Postgres) or runs after it (SQLite's one
    /// writer) and gets its run.
    pub async fn insert_run_once(
        &self,
        run: &Run,
        key: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Dispatched> {
        Ok(with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            sqlx::query(
                "delete from dispatch_keys where automation_id = $1 and idempotency_key = $2 and created_at < $3",
            )
            .bind(DbId(run.automation_id))
            .bind(key)
            .bind(DbTime::new(since))
            .execute(&mut *tx)
            .await?;
            let mine = sqlx::query(
                "insert into dispatch_keys (automation_id, idempotency_key, run_id, created_at) values ($1, $2, $3, $4) \
                 on conflict (automation_id, idempotency_key) do nothing",
            )
            .bind(DbId(run.automation_id))
            .bind(key)
            .bind(DbId(run.id))
            .bind(DbTime::new(run.created_at))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if mine {
                insert_run_in!(tx, run, None::<&str>);
                tx.commit().await?;
                Dispatched::Created
            } else {
                let first: DbId = sqlx::query_scalar(
                    "select run_id from dispatch_keys where automation_id = $1 and idempotency_key = $2",
                )
                .bind(DbId(run.automation_id))
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Dispatched::Replayed(first.0)
            }
        }))
    }

    /// How many runs are in each status (of one automation, or all), in one
    /// grouped query.
    pub async fn run_status_counts(
        &self,
        automation_id: Option<Uuid>,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = with_db!(self, read, |db| {
            sqlx::query_as("select status, count(*) from runs where ($1 is null or automation_id = $1) group by status")
                .bind(automation_id.map(DbId))
                .fetch_all(db)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Records a run's progress while it is pending or running; false if
    /// it is final (or gone).
    pub async fn set_progress(&self, id: Uuid, progress: &RunProgress) -> Result<bool> {
        let n = with_db!(self, write, |db| {
            sqlx::query("update runs set progress = $2 where id = $1 and status in ('pending', 'running')")
                .bind(DbId(id))
                .bind(Json(progress))
                .execute(db)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Deletes a run that reached a final status.
    pub async fn delete_run(&self, id: Uuid) -> Result<DeleteRun> {
        let finals: Vec<RunStatus> = RunStatus::ALL.into_iter().filter(|s| s.is_final()).collect();
        let sql = format!("delete from runs where id = $1 and status in ({})", status_list(&finals));
        // Twice at most: a run that became final between the delete and
        // the status read is deleted on the second pass.
        for _ in 0..2 {
            let n = with_db!(self, write, |db| sqlx::query(&sql).bind(DbId(id)).execute(db).await?.rows_affected());
            if n == 1 {
                return Ok(DeleteRun::Deleted);
            }
            match self.get_run_status(id).await? {
                None => return Ok(DeleteRun::NotFound),
                Some(s) if !s.is_final() => return Ok(DeleteRun::NotFinal(s)),
                Some(_) => {}
            }
        }
        Ok(DeleteRun::NotFound)
    }

    /// Reads a run.
    pub async fn get_run(&self, id: Uuid) -> Result<Option<Run>> {
        let sql = format!("select {COLUMNS} from runs where id = $1");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        row.map(Run::try_from).transpose()
    }

    /// A run's status alone (what a run's driver checks between polls,
    /// without reading its trigger, output or log).
    pub async fn get_run_status(&self, id: Uuid) -> Result<Option<RunStatus>> {
        let status: Option<String> = with_db!(self, read, |db| {
            sqlx::query_scalar("select status from runs where id = $1").bind(DbId(id)).fetch_optional(db).await?
        });
        status.map(|s| RunStatus::parse(&s).ok_or_else(|| super::Error::Corrupt(format!("run status {s}")))).transpose()
    }

    /// Lists runs newest first, optionally of one automation and one status.
    pub async fn list_runs(&self, filter: &RunFilter, limit: u32, before: Option<Uuid>) -> Result<RunPage> {
        let where_ = "($1 is null or automation_id = $1) and ($2 is null or status = $2) \
                      and ($3 is null or created_at >= $3) and ($4 is null or created_at < $4)";
        let page_sql = format!(
            "select {COLUMNS} from runs where {where_} and ($5 is null or id < $5) \
             order by id desc limit $6"
        );
        let count_sql = format!("select count(*) from runs where {where_}");
        let status = filter.status.map(RunStatus::as_str);
        let (after, until) = (filter.created_after.map(DbTime::new), filter.created_before.map(DbTime::new));
        let automation_id = filter.automation_id.map(DbId);
        let (rows, total): (Vec<Row>, i64) = with_db!(self, read, |db| {
            let rows = sqlx::query_as(&page_sql)
                .bind(automation_id)
                .bind(status)
                .bind(after)
                .bind(until)
                .bind(before.map(DbId))
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?;
            let total = sqlx::query_scalar(&count_sql)
                .bind(automation_id)
                .bind(status)
                .bind(after)
                .bind(until)
                .fetch_one(db)
                .await?;
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
                // A run that ends queues its notification in the same
                // transaction: never an end without its message, nor two.
                let row: Option<Row> = with_db!(self, write, |db| {
                    let mut tx = db.begin().await?;
                    let row: Option<Row> = sqlx::query_as(&sql)
                        .bind(DbId(id))
                        .bind(to.as_str())
                        .bind(Json(detail))
                        .bind(DbTime::new(detail.at))
                        .bind(to.is_final())
                        .bind(changes.error)
                        .bind(changes.output.map(Json))
                        .bind(changes.plugin_log.map(Json))
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(r) = &row
                        && to.is_final()
                    {
                        super::notifications::notify_in!(tx, r.id.0, r.automation_id.0, to, detail.at);
                    }
                    tx.commit().await?;
                    row
                });
                row.map(Run::try_from).transpose()
            }
            .await,
        )
    }

    /// Writes what drivers report about their runs, in one transaction
    /// (the dispatcher's group commit of starts and ends). A start is
    /// written only if the run is still `running` and leased to its host;
    /// an end only if the run is still `running`, with its notification
    /// queued. For each write, whether it applied (false: the run was
    /// cancelled, finished by a callback or taken over). Nothing of the run
    /// is read back (its payload, output): its driver has them.
    ///
    /// A write alone (the common case: starts are written as they happen,
    /// and most ends are alone in their group) is one statement without a
    /// transaction around it, so it holds the SQLite writer for one round
    /// trip instead of three or four; an end takes that path only when its
    /// automation wants no notification (else both go in one transaction).
    pub async fn write_runs(&self, writes: &[RunWrite]) -> Result<Vec<bool>> {
        let (store, writes) = (self.clone(), writes.to_vec());
        self.at_front(async move { store.write_runs_here(&writes).await }).await
    }

    /// See [`Store::write_runs`].
    async fn write_runs_here(&self, writes: &[RunWrite]) -> Result<Vec<bool>> {
        if let [one] = writes
            && let Some(applied) = self.noted(self.write_run_alone(one).await)?
        {
            return Ok(vec![applied]);
        }
        self.noted(
            async {
                let end_sql = format!("{END_RUN} returning automation_id");
                let now = crate::model::now();
                // In id order: Postgres locks each row as it is updated, and
                // the heartbeat locks its rows in the same order (no deadlock).
                let mut order: Vec<usize> = (0..writes.len()).collect();
                order.sort_by_key(|&i| writes[i].run_id());
                with_db!(self, write, |db| {
                    let mut tx = db.begin().await?;
                    let mut applied = vec![false; writes.len()];
                    for i in order {
                        applied[i] = match &writes[i] {
                            RunWrite::Start(s) => {
                                bind_start!(sqlx::query(START_RUN), s, now).execute(&mut *tx).await?.rows_affected()
                                    == 1
                            }
                            RunWrite::End(end) => {
                                debug_assert!(end.to.is_final(), "a run ends in a final status");
                                let automation: Option<DbId> =
                                    bind_end!(sqlx::query_scalar(&end_sql), end).fetch_optional(&mut *tx).await?;
                                if let Some(a) = automation {
                                    super::notifications::notify_in!(tx, end.id, a.0, end.to, end.detail.at);
                                }
                                automation.is_some()
                            }
                        };
                    }
                    tx.commit().await?;
                    Ok(applied)
                })
            }
            .await,
        )
    }

    /// One start, or one end that queues no notification, as a single
    /// statement; `None` when the end must go through a transaction (its
    /// automation wants a notification, or the run is not running: the
    /// transaction finds out which).
    async fn write_run_alone(&self, write: &RunWrite) -> Result<Option<bool>> {
        let now = crate::model::now();
        let n = match write {
            RunWrite::Start(s) => with_db!(self, write, |db| {
                bind_start!(sqlx::query(START_RUN), s, now).execute(db).await?.rows_affected()
            }),
            RunWrite::End(end) => {
                debug_assert!(end.to.is_final(), "a run ends in a final status");
                let sql = format!(
                    "{END_RUN} and not exists (select 1 from automations \
                     where automations.id = runs.automation_id and notify_url is not null and notify_on like $8)"
                );
                let n = with_db!(self, write, |db| {
                    bind_end!(sqlx::query(&sql), end)
                        .bind(super::notifications::notify_pattern(end.to))
                        .execute(db)
                        .await?
                        .rows_affected()
                });
                if n == 0 {
                    return Ok(None);
                }
                n
            }
        };
        Ok(Some(n == 1))
    }
}
