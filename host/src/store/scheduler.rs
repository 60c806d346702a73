//! What the scheduler needs: due cron automations, slot rows and the runs
//! they create, written in one transaction per batch.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::types::Json;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Dialect, Result, Store, with_db};
use crate::model::{ConcurrencyPolicy, RunStatus, RunTrigger, SlotOutcome, StatusDetail, Trigger};

/// An automation with due slots, as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct DueAutomation {
    /// Its id.
    pub id: Uuid,
    /// Its (cron) trigger.
    pub trigger: Trigger,
    /// The first slot not yet handled.
    pub next_fire_at: DateTime<Utc>,
    /// Its concurrency limit.
    pub concurrency: u32,
    /// Its concurrency policy.
    pub concurrency_policy: ConcurrencyPolicy,
    /// Its pending and running runs.
    pub active_runs: i64,
}

/// One slot as the scheduler decided it, with the run it creates if it fired.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSlot {
    /// The automation.
    pub automation_id: Uuid,
    /// The slot's time.
    pub scheduled_for: DateTime<Utc>,
    /// What happens to it.
    pub outcome: SlotOutcome,
    /// The run to create (id and trigger), for a fired slot.
    pub run: Option<(Uuid, RunTrigger)>,
}

/// Where an automation's schedule goes after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextFire {
    /// The automation.
    pub automation_id: Uuid,
    /// Its next slot (`None`: it never fires again as it is).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Whether any of its slots fired (then `last_triggered_at` moves).
    pub fired: bool,
}

/// What the scheduler decided for one batch of due automations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotPlan {
    /// Every slot to record, oldest first per automation.
    pub slots: Vec<PlannedSlot>,
    /// Every automation's next fire time.
    pub next: Vec<NextFire>,
}

/// A slot that fired.
#[derive(Debug, Clone)]
pub struct FiredSlot {
    /// The automation.
    pub automation_id: Uuid,
    /// The slot's time.
    pub scheduled_for: DateTime<Utc>,
    /// The run created for it.
    pub run_id: Uuid,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct FireReport {
    /// Automations looked at.
    pub automations: usize,
    /// Slots that fired (a run each).
    pub fired: Vec<FiredSlot>,
    /// Slot counts by outcome.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// A recorded slot.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SlotRecord {
    /// The slot's time (UTC).
    pub scheduled_for: DateTime<Utc>,
    /// `fired`, `missed` or `skipped_overlap`.
    pub outcome: String,
    /// The run it created, if it fired.
    pub run_id: Option<Uuid>,
    /// When the outcome was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl Store {
    /// The earliest `next_fire_at` of any enabled, live cron automation.
    pub async fn next_cron_due(&self) -> Result<Option<DateTime<Utc>>> {
        let t: Option<DbTime> = with_db!(self, read, |db| {
            sqlx::query_scalar(
                "select min(next_fire_at) from automations \
                 where deleted_at is null and trigger_type = 'cron' and enabled",
            )
            .fetch_one(db)
            .await?
        });
        Ok(t.map(|t| t.0))
    }

    /// Fires the due slots of up to `limit` automations in one transaction:
    /// locks them, has `plan` decide their slots (a pure function of the
    /// rows, see `scheduler::plan::plan_batch`), records every slot (unique
    /// per automation and time), creates a run per fired slot and moves
    /// `next_fire_at` on.
    pub async fn fire_due_slots(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        plan: impl FnOnce(&[DueAutomation]) -> SlotPlan,
    ) -> Result<FireReport> {
        self.noted(async {
            let dialect = self.dialect();
            with_db!(self, write, |db| {
                let mut tx = db.begin().await?;
                let lock = if dialect == Dialect::Postgres { " for update skip locked" } else { "" };
                let rows: Vec<(DbId, Json<Trigger>, DbTime, i64, String)> = sqlx::query_as(&format!(
                    "select id, trigger, next_fire_at, concurrency, concurrency_policy from automations \
                     where deleted_at is null and trigger_type = 'cron' and enabled and next_fire_at <= $1 \
                     order by next_fire_at limit {limit}{lock}"
                ))
                .bind(DbTime::new(now))
                .fetch_all(&mut *tx)
                .await?;
                let mut report = FireReport { automations: rows.len(), ..Default::default() };
                if rows.is_empty() {
                    return Ok(report);
                }
                let in_list = super::dispatch::placeholders(1, rows.len());
                let active_sql = format!(
                    "select automation_id, count(*) from runs where status in ('pending', 'running') \
                     and automation_id in ({in_list}) group by automation_id"
                );
                let mut q = sqlx::query_as::<_, (DbId, i64)>(&active_sql);
                for r in &rows {
                    q = q.bind(r.0);
                }
                let active: HashMap<Uuid, i64> =
                    q.fetch_all(&mut *tx).await?.into_iter().map(|(id, n)| (id.0, n)).collect();
                let due: Vec<DueAutomation> = rows
                    .into_iter()
                    .map(|(id, trigger, next_fire_at, concurrency, policy)| DueAutomation {
                        id: id.0,
                        trigger: trigger.0,
                        next_fire_at: next_fire_at.0,
                        concurrency: u32::try_from(concurrency).unwrap_or(1),
                        concurrency_policy: ConcurrencyPolicy::parse(&policy).unwrap_or_default(),
                        active_runs: active.get(&id.0).copied().unwrap_or(0),
                    })
                    .collect();
                let created_at = crate::model::now();
                let SlotPlan { slots, next } = plan(&due);
                for slot in &slots {
                    *report.outcomes.entry(slot.outcome.as_str()).or_default() += 1;
                }
                let runs: Vec<(Uuid, Uuid, RunTrigger)> = slots
                    .iter()
                    .filter_map(|s| s.run.as_ref().map(|(id, trig)| (*id, s.automation_id, trig.clone())))
                    .collect();
                let slots: Vec<(Uuid, DateTime<Utc>, SlotOutcome, Option<Uuid>)> = slots
                    .into_iter()
                    .map(|s| (s.automation_id, s.scheduled_for, s.outcome, s.run.map(|(id, _)| id)))
                    .collect();

                // Slots first: a slot that already exists (another host, an
                // edit that moved the schedule back) keeps its first outcome and
                // creates no second run.
                let mut inserted: std::collections::HashSet<(Uuid, DateTime<Utc>)> = Default::default();
                for chunk in slots.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "insert into cron_slots (automation_id, scheduled_for, outcome, run_id, recorded_at) ",
                    );
                    qb.push_values(chunk, |mut b, (auto, at, outcome, run)| {
                        b.push_bind(DbId(*auto))
                            .push_bind(DbTime::new(*at))
                            .push_bind(outcome.as_str())
                            .push_bind(run.map(DbId))
                            .push_bind(DbTime::new(created_at));
                    });
                    qb.push(
                        " on conflict (automation_id, scheduled_for) do nothing returning automation_id, scheduled_for",
                    );
                    let done: Vec<(DbId, DbTime)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                    inserted.extend(done.into_iter().map(|(a, t)| (a.0, t.0)));
                }
                let detail =
                    StatusDetail { from: None, by: "scheduler".into(), reason: "cron slot fired".into(), at: created_at };
                let runs: Vec<_> = runs
                    .into_iter()
                    .filter(|(_, auto, trig)| {
                        inserted.contains(&(*auto, trig.scheduled_for.expect("cron runs have a slot")))
                    })
                    .collect();
                for chunk in runs.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "insert into runs (id, automation_id, status, status_detail, trigger, attempt, created_at, updated_at) ",
                    );
                    qb.push_values(chunk, |mut b, (run, auto, trig)| {
                        b.push_bind(DbId(*run))
                            .push_bind(DbId(*auto))
                            .push_bind(RunStatus::Pending.as_str())
                            .push_bind(Json(detail.clone()))
                            .push_bind(Json(trig.clone()))
                            .push_bind(0i64)
                            .push_bind(DbTime::new(created_at))
                            .push_bind(DbTime::new(created_at));
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                for NextFire { automation_id: id, next_fire_at, fired } in &next {
                    let sql = if *fired {
                        "update automations set next_fire_at = $2, last_triggered_at = $3 where id = $1"
                    } else {
                        "update automations set next_fire_at = $2 where id = $1"
                    };
                    let mut q = sqlx::query(sql).bind(DbId(*id)).bind(next_fire_at.map(DbTime::new));
                    if *fired {
                        q = q.bind(DbTime::new(created_at));
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                report.fired = runs
                    .into_iter()
                    .map(|(run_id, automation_id, trig)| FiredSlot {
                        automation_id,
                        scheduled_for: trig.scheduled_for.expect("cron runs have a slot"),
                        run_id,
                        created_at,
                    })
                    .collect();
                Ok(report)
            })
        }
        .await)
    }

    /// The latest recorded slots of an automation, newest first.
    pub async fn list_slots(&self, automation_id: Uuid, limit: u32) -> Result<Vec<SlotRecord>> {
        let rows: Vec<(DbTime, String, Option<DbId>, DbTime)> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select scheduled_for, outcome, run_id, recorded_at from cron_slots \
                 where automation_id = $1 order by scheduled_for desc limit $2",
            )
            .bind(DbId(automation_id))
            .bind(i64::from(limit))
            .fetch_all(db)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(s, outcome, run, r)| SlotRecord {
                scheduled_for: s.0,
                outcome,
                run_id: run.map(|r| r.0),
                recorded_at: r.0,
            })
            .collect())
    }
}
