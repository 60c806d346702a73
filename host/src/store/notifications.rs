//! Notifications of run endings: queued in the transaction that makes a
//! run final (so a run never ends without its message, nor gets two), then
//! claimed, sent and recorded by the notifier (`crate::notify`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, to_u32, with_db};
use crate::model::{NotificationRecord, RunStatus};

/// Queues the notification of run `$run_id`'s end in `$status`, inside the
/// transaction `$tx`, when its automation's `notify` lists that status.
macro_rules! notify_in {
    ($tx:expr, $run_id:expr, $automation_id:expr, $status:expr, $now:expr) => {{
        let pattern = $crate::store::notifications::notify_pattern($status);
        sqlx::query(
            "insert into notifications (id, run_id, automation_id, status, attempts, next_attempt_at, created_at) \
             select $1, $2, id, 'pending', 0, $3, $3 from automations \
             where id = $4 and notify_url is not null and notify_on like $5",
        )
        .bind($crate::store::types::DbId(uuid::Uuid::now_v7()))
        .bind($crate::store::types::DbId($run_id))
        .bind($crate::store::types::DbTime::new($now))
        .bind($crate::store::types::DbId($automation_id))
        .bind(pattern)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use notify_in;

/// The `like` pattern of an automation's `notify_on` that lists `status`.
pub(super) fn notify_pattern(status: RunStatus) -> String {
    format!("%,{},%", status.as_str())
}

const COLUMNS: &str =
    "id, status, attempts, last_error, last_status_code, delivered_at, next_attempt_at, created_at, run_id";

#[derive(sqlx::FromRow)]
struct Row {
    id: DbId,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    last_status_code: Option<i64>,
    delivered_at: Option<DbTime>,
    next_attempt_at: DbTime,
    created_at: DbTime,
    run_id: DbId,
}

impl Row {
    fn into_record(self) -> Result<(Uuid, NotificationRecord)> {
        Ok((
            self.run_id.0,
            NotificationRecord {
                id: self.id.0,
                status: self.status,
                attempts: to_u32(self.attempts, "attempts")?,
                last_error: self.last_error,
                last_status_code: self.last_status_code.and_then(|c| u16::try_from(c).ok()),
                delivered_at: self.delivered_at.map(|t| t.0),
                next_attempt_at: self.next_attempt_at.0,
                created_at: self.created_at.0,
            },
        ))
    }
}

/// A notification claimed for sending.
#[derive(Debug, Clone)]
pub struct DueNotification {
    /// Its id.
    pub id: Uuid,
    /// The run whose end it tells.
    pub run_id: Uuid,
    /// POSTs tried before this one.
    pub attempts: u32,
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status_code: u16,
    },
    /// It failed; try again at `retry_at`, or give up (`None`).
    Failed {
        /// Why.
        error: String,
        /// The receiver's status, if it answered.
        status_code: Option<u16>,
        /// When to try again; `None` gives up.
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Store {
    /// Claims up to `limit` pending notifications due at `now`: each is
    /// moved to `lease_until` first, so another host (or a retry of this
    /// one) does not send it at the same time.
    pub async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueNotification>> {
        let due: Vec<(DbId, DbId, i64, DbTime)> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select id, run_id, attempts, next_attempt_at from notifications \
                 where status = 'pending' and next_attempt_at <= $1 order by next_attempt_at limit $2",
            )
            .bind(DbTime::new(now))
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?
        });
        let mut claimed = Vec::with_capacity(due.len());
        for (id, run_id, attempts, at) in due {
            let won = with_db!(self, write, |db| {
                sqlx::query(
                    "update notifications set next_attempt_at = $3 \
                     where id = $1 and status = 'pending' and next_attempt_at = $2",
                )
                .bind(id)
                .bind(at)
                .bind(DbTime::new(lease_until))
                .execute(db)
                .await?
                .rows_affected()
            });
            if won == 1 {
                claimed.push(DueNotification { id: id.0, run_id: run_id.0, attempts: to_u32(attempts, "attempts")? });
            }
        }
        Ok(claimed)
    }

    /// Records how an attempt went.
    pub async fn record_notification(&self, id: Uuid, attempts: u32, attempt: &Attempt) -> Result<()> {
        let now = crate::model::now();
        let (status, error, code, next, delivered) = match attempt {
            Attempt::Delivered { status_code } => ("delivered", None, Some(*status_code), now, Some(now)),
            Attempt::Failed { error, status_code, retry_at: Some(at) } => {
                ("pending", Some(error.as_str()), *status_code, *at, None)
            }
            Attempt::Failed { error, status_code, retry_at: None } => {
                ("failed", Some(error.as_str()), *status_code, now, None)
            }
        };
        with_db!(self, write, |db| {
            sqlx::query(
                "update notifications set status = $2, attempts = $3, last_error = $4, last_status_code = $5, \
                 next_attempt_at = $6, delivered_at = $7 where id = $1",
            )
            .bind(DbId(id))
            .bind(status)
            .bind(i64::from(attempts))
            .bind(error)
            .bind(code.map(i64::from))
            .bind(DbTime::new(next))
            .bind(delivered.map(DbTime::new))
            .execute(db)
            .await?;
        });
        Ok(())
    }

    /// A run's notifications, oldest first.
    pub async fn run_notifications(&self, run_id: Uuid) -> Result<Vec<NotificationRecord>> {
        let sql = format!("select {COLUMNS} from notifications where run_id = $1 order by id");
        let rows: Vec<Row> = with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(run_id)).fetch_all(db).await?);
        rows.into_iter().map(|r| r.into_record().map(|(_, n)| n)).collect()
    }

    /// Deletes up to `batch` notifications whose run no longer exists.
    pub async fn purge_orphan_notifications(&self, batch: u32) -> Result<u64> {
        Ok(with_db!(self, write, |db| {
            sqlx::query(
                "delete from notifications where id in (select n.id from notifications n \
                 where not exists (select 1 from runs r where r.id = n.run_id) limit $1)",
            )
            .bind(i64::from(batch))
            .execute(db)
            .await?
            .rows_affected()
        }))
    }
}
