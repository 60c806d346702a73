//! Automations: insert, read, list, update and soft-delete.

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::FromRow;
use sqlx::types::Json;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Result, Store, to_u32, with_db};
use crate::model::{
    Automation, BundleRef, ConcurrencyPolicy, DisabledReason, ExecutorRef, FilterErrors, NotifyTarget, PresetRef,
    RunStatus, SecretEnv, StatusDetail, Trigger, WriteOnly,
};

const COLUMNS: &str = "id, name, trigger, bundle_upload_id, preset, entrypoint, env, executor, \
    timeout_seconds, enabled, concurrency, concurrency_policy, filter_error_count, \
    last_filter_error, last_filter_error_at, last_triggered_at, next_fire_at, created_at, updated_at, secret_env, \
    description, tags, draft, disabled_reason, disabled_detail, disabled_at, enabled_at, \
    notify_url, notify_on, notify_secret";

struct DeletedFlag(bool);

#[derive(FromRow)]
struct Row {
    id: DbId,
    name: String,
    trigger: Json<Trigger>,
    bundle_upload_id: Option<DbId>,
    preset: Option<Json<PresetRef>>,
    entrypoint: Option<String>,
    env: Json<std::collections::BTreeMap<String, String>>,
    executor: Json<ExecutorRef>,
    timeout_seconds: i64,
    enabled: bool,
    concurrency: i64,
    concurrency_policy: String,
    filter_error_count: i64,
    last_filter_error: Option<String>,
    last_filter_error_at: Option<DbTime>,
    last_triggered_at: Option<DbTime>,
    next_fire_at: Option<DbTime>,
    created_at: DbTime,
    updated_at: DbTime,
    secret_env: Option<String>,
    description: String,
    tags: String,
    draft: bool,
    disabled_reason: Option<String>,
    disabled_detail: Option<String>,
    disabled_at: Option<DbTime>,
    enabled_at: Option<DbTime>,
    notify_url: Option<String>,
    notify_on: Option<String>,
    notify_secret: Option<String>,
}

/// Tags as stored: `,a,b,` (empty for none), so `like '%,tag,%'` finds one.
fn tags_column(tags: &[String]) -> String {
    if tags.is_empty() { String::new() } else { format!(",{},", tags.join(",")) }
}

/// `s` for a LIKE pattern: `\`, `%` and `_` escaped (with `escape '\'`).
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// Statuses as stored for `notify_on`: `,failed,timed_out,`, so
/// `like '%,failed,%'` finds one.
pub(super) fn statuses_column(statuses: &[RunStatus]) -> String {
    format!(",{},", statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))
}

/// Where an automation's sealed notification secret belongs.
fn notify_secret_aad(id: Uuid) -> String {
    format!("automations.notify_secret:{id}")
}

/// Where an automation's sealed secret environment belongs.
fn secret_env_aad(id: Uuid) -> String {
    format!("automations.secret_env:{id}")
}

impl Row {
    fn into_automation(self, store: &Store) -> Result<Automation> {
        let r = self;
        let secret_env = match &r.secret_env {
            None => SecretEnv::default(),
            Some(sealed) => {
                let json = store.open_secret(&secret_env_aad(r.id.0), sealed)?;
                SecretEnv(serde_json::from_str(&json).map_err(|e| super::Error::Corrupt(format!("secret_env: {e}")))?)
            }
        };
        let notify = match (&r.notify_url, &r.notify_secret) {
            (Some(url), Some(sealed)) => Some(NotifyTarget {
                url: url.clone(),
                on: r
                    .notify_on
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| RunStatus::parse(s).ok_or_else(|| super::Error::Corrupt(format!("notify_on {s}"))))
                    .collect::<Result<_>>()?,
                secret: WriteOnly(store.open_secret(&notify_secret_aad(r.id.0), sealed)?),
            }),
            _ => None,
        };
        Ok(Automation {
            notify,
            secret_env,
            id: r.id.0,
            name: r.name,
            description: r.description,
            tags: r.tags.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            trigger: r.trigger.0,
            bundle: r.bundle_upload_id.map(|id| BundleRef { upload_id: id.0 }),
            preset: r.preset.map(|p| p.0),
            entrypoint: r.entrypoint,
            env: r.env.0,
            executor: r.executor.0,
            timeout_seconds: to_u32(r.timeout_seconds, "timeout_seconds")?,
            enabled: r.enabled,
            draft: r.draft,
            disabled_reason: r
                .disabled_reason
                .map(|s| DisabledReason::parse(&s).ok_or_else(|| super::Error::Corrupt(format!("disabled_reason {s}"))))
                .transpose()?,
            disabled_detail: r.disabled_detail,
            disabled_at: r.disabled_at.map(|t| t.0),
            enabled_at: r.enabled_at.map(|t| t.0),
            concurrency: to_u32(r.concurrency, "concurrency")?,
            concurrency_policy: ConcurrencyPolicy::parse(&r.concurrency_policy)
                .ok_or_else(|| super::Error::Corrupt(format!("concurrency_policy {}", r.concurrency_policy)))?,
            filter_errors: FilterErrors {
                count: r.filter_error_count,
                last_error: r.last_filter_error,
                last_error_at: r.last_filter_error_at.map(|t| t.0),
            },
            last_triggered_at: r.last_triggered_at.map(|t| t.0),
            next_fire_at: r.next_fire_at.map(|t| t.0),
            created_at: r.created_at.0,
            updated_at: r.updated_at.0,
        })
    }
}

/// Which automations a listing returns.
#[derive(Debug, Clone, Default)]
pub struct AutomationFilter {
    /// Only enabled (true) or disabled (false) ones.
    pub enabled: Option<bool>,
    /// Only this trigger type (`cron`, `event`, `manual`).
    pub trigger_type: Option<String>,
    /// Only ones with this tag.
    pub tag: Option<String>,
    /// Only event automations of this source.
    pub source: Option<String>,
    /// Only ones whose name contains this (case-insensitive).
    pub name_contains: Option<String>,
    /// Only drafts (true) or only the others (false).
    pub draft: Option<bool>,
}

/// One page of automations, newest first.
#[derive(Debug, Clone)]
pub struct AutomationPage {
    /// The automations on this page.
    pub items: Vec<Automation>,
    /// How many automations match the filter in all.
    pub total: i64,
}

/// Binds `$1..$21`: the id, every editable field, `next_fire_at`,
/// `updated_at` and the state (draft, why and since when disabled, since
/// when enabled), in the order the insert and the update both use.
macro_rules! bind_fields {
    ($query:expr, $a:expr) => {
        $query
            .bind(DbId($a.id))
            .bind(&$a.name)
            .bind(Json(&$a.trigger))
            .bind($a.trigger.kind())
            .bind($a.trigger.event_source())
            .bind($a.bundle.as_ref().map(|b| DbId(b.upload_id)))
            .bind($a.preset.as_ref().map(Json))
            .bind(&$a.entrypoint)
            .bind(Json(&$a.env))
            .bind(Json(&$a.executor))
            .bind(i64::from($a.timeout_seconds))
            .bind($a.enabled)
            .bind(i64::from($a.concurrency))
            .bind($a.concurrency_policy.as_str())
            .bind($a.next_fire_at.map(DbTime::new))
            .bind(DbTime::new($a.updated_at))
            .bind($a.draft)
            .bind($a.disabled_reason.map(DisabledReason::as_str))
            .bind(&$a.disabled_detail)
            .bind($a.disabled_at.map(DbTime::new))
            .bind($a.enabled_at.map(DbTime::new))
    };
}

impl Store {
    /// The sealed form of an automation's secret environment (`None` if empty).
    fn seal_secret_env(&self, a: &Automation) -> Result<Option<String>> {
        if a.secret_env.0.is_empty() {
            return Ok(None);
        }
        let json = serde_json::to_string(&a.secret_env.0).map_err(|e| super::Error::Corrupt(e.to_string()))?;
        self.seal(&secret_env_aad(a.id), &json).map(Some)
    }

    /// The stored form of an automation's notification target: URL,
    /// statuses, sealed secret (all `None` without one).
    fn notify_columns(&self, a: &Automation) -> Result<(Option<String>, Option<String>, Option<String>)> {
        let Some(n) = &a.notify else { return Ok((None, None, None)) };
        let sealed = self.seal(&notify_secret_aad(a.id), &n.secret.0)?;
        Ok((Some(n.url.clone()), Some(statuses_column(&n.on)), Some(sealed)))
    }

    /// Inserts a new automation.
    pub async fn insert_automation(&self, a: &Automation) -> Result<()> {
        let sql = "insert into automations (id, name, trigger, trigger_type, event_source, \
            bundle_upload_id, preset, entrypoint, env, executor, timeout_seconds, enabled, \
            concurrency, concurrency_policy, next_fire_at, updated_at, draft, disabled_reason, disabled_detail, \
            disabled_at, enabled_at, created_at, secret_env, description, tags, notify_url, notify_on, notify_secret) \
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
            $21, $22, $23, $24, $25, $26, $27, $28)";
        let sealed = self.seal_secret_env(a)?;
        let tags = tags_column(&a.tags);
        let (notify_url, notify_on, notify_secret) = self.notify_columns(a)?;
        with_db!(self, write, |db| {
            bind_fields!(sqlx::query(sql), a)
                .bind(DbTime::new(a.created_at))
                .bind(&sealed)
                .bind(&a.description)
                .bind(&tags)
                .bind(&notify_url)
                .bind(&notify_on)
                .bind(&notify_secret)
                .execute(db)
                .await?;
        });
        Ok(())
    }

    /// Reads a live (not deleted) automation.
    pub async fn get_automation(&self, id: Uuid) -> Result<Option<Automation>> {
        let sql = format!("select {COLUMNS} from automations where id = $1 and deleted_at is null");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        row.map(|r| r.into_automation(self)).transpose()
    }

    /// Reads an automation, deleted or not (runs outlive their automation).
    pub async fn get_automation_any(&self, id: Uuid) -> Result<Option<(Automation, bool)>> {
        let sql = format!("select {COLUMNS}, deleted_at is not null as deleted from automations where id = $1");
        let row: Option<(DeletedFlag, Row)> = with_db!(self, read, |db| {
            let row = sqlx::query(&sql).bind(DbId(id)).fetch_optional(db).await?;
            match row {
                Some(r) => {
                    use sqlx::Row as _;
                    let deleted: bool = r.try_get("deleted")?;
                    Some((DeletedFlag(deleted), Row::from_row(&r)?))
                }
                None => None,
            }
        });
        row.map(|(d, r)| r.into_automation(self).map(|a| (a, d.0))).transpose()
    }

    /// Every automation changed at or after `since`, whatever its trigger,
    /// deleted ones too (with whether it is deleted): what a matcher patches
    /// its cached automations with instead of reading them all again.
    pub async fn automations_changed_since(&self, since: DateTime<Utc>) -> Result<Vec<(Automation, bool)>> {
        let sql = format!(
            "select {COLUMNS}, deleted_at is not null as deleted from automations where updated_at >= $1 order by id"
        );
        let rows: Vec<(DeletedFlag, Row)> = with_db!(self, read, |db| {
            use sqlx::Row as _;
            let rows = sqlx::query(&sql).bind(DbTime::new(since)).fetch_all(db).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let deleted: bool = r.try_get("deleted")?;
                out.push((DeletedFlag(deleted), Row::from_row(r)?));
            }
            out
        });
        rows.into_iter().map(|(d, r)| r.into_automation(self).map(|a| (a, d.0))).collect()
    }

    /// The live, enabled event automations of one source (by the
    /// `(event_source, trigger_type)` index, not a scan).
    pub async fn event_automations(&self, source: &str) -> Result<Vec<Automation>> {
        let sql = format!(
            "select {COLUMNS} from automations where event_source = $1 and trigger_type = 'event' \
             and deleted_at is null and enabled order by id"
        );
        let rows: Vec<Row> = with_db!(self, read, |db| sqlx::query_as(&sql).bind(source).fetch_all(db).await?);
        rows.into_iter().map(|r| r.into_automation(self)).collect()
    }

    /// Lists live automations newest first: up to `limit` with ids below
    /// `before` (the previous page's last id), plus the total count.
    pub async fn list_automations(
        &self,
        filter: &AutomationFilter,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<AutomationPage> {
        let where_ = "deleted_at is null and ($1 is null or enabled = $1) \
            and ($2 is null or trigger_type = $2) \
            and ($3 is null or tags like $3 escape '\\') \
            and ($4 is null or event_source = $4) \
            and ($5 is null or lower(name) like $5 escape '\\') \
            and ($6 is null or draft = $6)";
        let page_sql = format!(
            "select {COLUMNS} from automations where {where_} and ($7 is null or id < $7) \
             order by id desc limit $8"
        );
        let count_sql = format!("select count(*) from automations where {where_}");
        let tag = filter.tag.as_deref().map(|t| format!("%,{},%", like_escape(&t.to_lowercase())));
        let name = filter.name_contains.as_deref().map(|q| format!("%{}%", like_escape(&q.to_lowercase())));
        let (rows, total): (Vec<Row>, i64) = with_db!(self, read, |db| {
            let rows = sqlx::query_as(&page_sql)
                .bind(filter.enabled)
                .bind(filter.trigger_type.as_deref())
                .bind(tag.as_deref())
                .bind(filter.source.as_deref())
                .bind(name.as_deref())
                .bind(filter.draft)
                .bind(before.map(DbId))
                .bind(i64::from(limit))
                .fetch_all(db)
                .await?;
            let total = sqlx::query_scalar(&count_sql)
                .bind(filter.enabled)
                .bind(filter.trigger_type.as_deref())
                .bind(tag.as_deref())
                .bind(filter.source.as_deref())
                .bind(name.as_deref())
                .bind(filter.draft)
                .fetch_one(db)
                .await?;
            (rows, total)
        });
        let items = rows.into_iter().map(|r| r.into_automation(self)).collect::<Result<_>>()?;
        Ok(AutomationPage { items, total })
    }

    /// Every tag of the live automations, with how many have it.
    pub async fn tag_counts(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        let rows: Vec<String> = with_db!(self, read, |db| {
            sqlx::query_scalar("select tags from automations where deleted_at is null and tags <> ''")
                .fetch_all(db)
                .await?
        });
        let mut counts = std::collections::BTreeMap::new();
        for tags in &rows {
            for t in tags.split(',').filter(|t| !t.is_empty()) {
                *counts.entry(t.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Writes every editable field of a live automation; false if it is gone.
    pub async fn update_automation(&self, a: &Automation) -> Result<bool> {
        let sql = "update automations set name = $2, trigger = $3, trigger_type = $4, \
            event_source = $5, bundle_upload_id = $6, preset = $7, entrypoint = $8, env = $9, \
            executor = $10, timeout_seconds = $11, enabled = $12, concurrency = $13, \
            concurrency_policy = $14, next_fire_at = $15, updated_at = $16, draft = $17, disabled_reason = $18, \
            disabled_detail = $19, disabled_at = $20, enabled_at = $21, secret_env = $22, \
            description = $23, tags = $24, notify_url = $25, notify_on = $26, notify_secret = $27 \
            where id = $1 and deleted_at is null";
        let sealed = self.seal_secret_env(a)?;
        let tags = tags_column(&a.tags);
        let (notify_url, notify_on, notify_secret) = self.notify_columns(a)?;
        let done = with_db!(self, write, |db| {
            bind_fields!(sqlx::query(sql), a)
                .bind(&sealed)
                .bind(&a.description)
                .bind(&tags)
                .bind(&notify_url)
                .bind(&notify_on)
                .bind(&notify_secret)
                .execute(db)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// The statuses of an automation's latest runs that ended `succeeded`,
    /// `failed` or `timed_out` after `since`, newest first, at most `limit`
    /// (what decides whether failures disable it).
    pub async fn recent_outcomes(
        &self,
        automation_id: Uuid,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Uuid, RunStatus)>> {
        let rows: Vec<(DbId, String)> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select id, status from runs where automation_id = $1 \
                 and status in ('succeeded', 'failed', 'timed_out') and finished_at >= $2 \
                 order by id desc limit $3",
            )
            .bind(DbId(automation_id))
            .bind(DbTime::new(since))
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?
        });
        rows.into_iter()
            .map(|(id, s)| {
                RunStatus::parse(&s)
                    .map(|st| (id.0, st))
                    .ok_or_else(|| super::Error::Corrupt(format!("run status {s}")))
            })
            .collect()
    }

    /// Disables a live, enabled automation for `reason`; false if it was
    /// already disabled (or is gone), so the first reason stays.
    pub async fn disable_automation(&self, id: Uuid, reason: DisabledReason, detail: &str) -> Result<bool> {
        let now = crate::model::now();
        let done = with_db!(self, write, |db| {
            sqlx::query(
                "update automations set enabled = false, next_fire_at = null, disabled_reason = $2, \
                 disabled_detail = $3, disabled_at = $4, updated_at = $4 \
                 where id = $1 and enabled and deleted_at is null",
            )
            .bind(DbId(id))
            .bind(reason.as_str())
            .bind(detail)
            .bind(DbTime::new(now))
            .execute(db)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Soft-deletes an automation and cancels its pending runs, in one
    /// transaction. False if it did not exist or was already deleted.
    pub async fn soft_delete_automation(&self, id: Uuid) -> Result<bool> {
        let now = crate::model::now();
        let detail = StatusDetail {
            from: Some(RunStatus::Pending),
            by: "api".into(),
            reason: "automation deleted".into(),
            at: now,
        };
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            let deleted = sqlx::query(
                "update automations set deleted_at = $2, enabled = false, updated_at = $2 \
                 where id = $1 and deleted_at is null",
            )
            .bind(DbId(id))
            .bind(DbTime::new(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted == 1 {
                sqlx::query(
                    "update runs set status = 'cancelled', status_detail = $2, \
                     finished_at = $3, updated_at = $3 \
                     where automation_id = $1 and status = 'pending'",
                )
                .bind(DbId(id))
                .bind(Json(&detail))
                .bind(DbTime::new(now))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(deleted == 1)
        })
    }
}
