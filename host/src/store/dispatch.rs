//! What the dispatcher needs: claiming pending runs under the concurrency
//! limits, leases and heartbeats, and rescue (starts and ends: `Store::write_runs`).
//!
//! Claiming locks the automations whose runs it considers (Postgres:
//! `for update skip locked`; SQLite: its single writer), so the count of an
//! automation's running runs read inside the transaction is authoritative:
//! no two hosts can both start the last free slot of one automation.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::types::Json;
use uuid::Uuid;

use super::runs::{DRIVER_COLUMNS, Row};
use super::types::{DbId, DbTime};
use super::{Dialect, Result, Store, with_db};
use crate::model::{ConcurrencyPolicy, Run, RunStatus, StatusDetail};

/// Most automations one claim considers.
const CLAIM_AUTOMATIONS: i64 = 200;

/// What one claim did.
#[derive(Debug, Default)]
pub struct Claim {
    /// Runs now `running` and leased to the claiming host.
    pub claimed: Vec<Run>,
    /// Runs marked `skipped` (over their automation's limit, policy `skip`).
    pub skipped: Vec<Uuid>,
    /// Runs marked `cancelled` because their automation was deleted.
    pub cancelled: Vec<Uuid>,
}

/// An automation with pending runs, as a claim sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAutomation {
    /// Its id.
    pub id: Uuid,
    /// Its concurrency limit.
    pub concurrency: i64,
    /// What happens to a run over the limit.
    pub policy: ConcurrencyPolicy,
    /// Whether it was deleted (its pending runs are cancelled).
    pub deleted: bool,
    /// Its runs now `running`.
    pub running: i64,
}

impl ClaimAutomation {
    /// How many of its oldest pending runs a claim needs to see: all of them
    /// when it was deleted (they are cancelled) or when runs over its limit
    /// are skipped, else one per free slot (the rest wait their turn).
    pub fn pending_to_read(&self) -> i64 {
        if self.deleted || self.policy == ConcurrencyPolicy::Skip {
            MAX_PENDING_READ
        } else {
            (self.concurrency - self.running).clamp(0, MAX_PENDING_READ)
        }
    }
}

/// Most pending runs one claim reads.
const MAX_PENDING_READ: i64 = 5000;

/// What a claim may act on: the automations with the oldest pending runs
/// (locked), and their pending runs, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimCandidates {
    /// The automations.
    pub automations: Vec<ClaimAutomation>,
    /// Their pending runs: (run, automation), oldest first.
    pub pending: Vec<(Uuid, Uuid)>,
}

/// What a claim does (see `dispatch::plan::choose_claims`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimChoice {
    /// Runs to start on the claiming host.
    pub claim: Vec<Uuid>,
    /// Runs to mark `skipped`.
    pub skip: Vec<Uuid>,
    /// Runs to mark `cancelled`.
    pub cancel: Vec<Uuid>,
}

/// `$first, $first+1, ...` for `n` placeholders.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Store {
    /// Claims pending runs for `host`: reads the candidates (the
    /// automations with the oldest pending runs, locked, with their running
    /// counts), lets `choose` decide which runs start, are skipped or are
    /// cancelled (a pure function, see `dispatch::plan::choose_claims`), and
    /// applies that in the same transaction.
    pub async fn claim_runs(
        &self,
        host: &str,
        lease_until: DateTime<Utc>,
        choose: impl FnOnce(&ClaimCandidates) -> ClaimChoice + Send + 'static,
    ) -> Result<Claim> {
        let (store, host) = (self.clone(), host.to_owned());
        self.at_front(async move { store.claim_runs_here(&host, lease_until, choose).await }).await
    }

    /// See [`Store::claim_runs`].
    async fn claim_runs_here(
        &self,
        host: &str,
        lease_until: DateTime<Utc>,
        choose: impl FnOnce(&ClaimCandidates) -> ClaimChoice,
    ) -> Result<Claim> {
        self.noted(async {
            let now = crate::model::now();
            let dialect = self.dialect();
            with_db!(self, write, |db| {
                let mut tx = db.begin().await?;
                let lock = if dialect == Dialect::Postgres { " for update skip locked" } else { "" };
                // Without statistics SQLite reads pending runs through
                // `runs_leases` (status first) and sorts them; the partial
                // index of pending runs is already in the order wanted.
                let pending_index = if dialect == Dialect::Sqlite { " indexed by runs_pending" } else { "" };
                // The automations with the oldest pending runs, locked.
                let autos: Vec<(DbId, i64, String, Option<DbTime>)> = sqlx::query_as(&format!(
                    "select id, concurrency, concurrency_policy, deleted_at from automations where id in (\
                       select automation_id from runs{pending_index} where status = 'pending' \
                       group by automation_id order by min(created_at) limit {CLAIM_AUTOMATIONS}){lock}"
                ))
                .fetch_all(&mut *tx)
                .await?;
                if autos.is_empty() {
                    return Ok(Claim::default());
                }
                let in_list = placeholders(1, autos.len());
                let running_sql = format!(
                    "select automation_id, count(*) from runs where status = 'running' \
                     and automation_id in ({in_list}) group by automation_id"
                );
                let mut running_q = sqlx::query_as::<_, (DbId, i64)>(&running_sql);
                for a in &autos {
                    running_q = running_q.bind(a.0);
                }
                let running: HashMap<Uuid, i64> =
                    running_q.fetch_all(&mut *tx).await?.into_iter().map(|(id, n)| (id.0, n)).collect();
                let automations: Vec<ClaimAutomation> = autos
                    .iter()
                    .map(|(id, concurrency, policy, deleted)| ClaimAutomation {
                        id: id.0,
                        concurrency: *concurrency,
                        policy: ConcurrencyPolicy::parse(policy).unwrap_or_default(),
                        deleted: deleted.is_some(),
                        running: running.get(&id.0).copied().unwrap_or(0),
                    })
                    .collect();
                // Only the pending runs a claim could act on: an automation
                // whose queue is full contributes none, one with free slots
                // its oldest few (not thousands of rows per claim when a
                // backlog waits behind a few busy automations).
                let wanted: Vec<(Uuid, i64)> =
                    automations.iter().map(|a| (a.id, a.pending_to_read())).filter(|(_, n)| *n > 0).collect();
                let pending = if wanted.is_empty() {
                    Vec::new()
                } else {
                    // One index seek per automation (`runs_pending`), its
                    // oldest runs first.
                    let arms: Vec<String> = (0..wanted.len())
                        .map(|i| {
                            format!(
                                "select * from (select id, automation_id, created_at from runs{pending_index} \
                                 where status = 'pending' and automation_id = ${} order by created_at, id limit ${}) as p{i}",
                                2 * i + 1,
                                2 * i + 2
                            )
                        })
                        .collect();
                    let pending_sql = format!(
                        "select id, automation_id from ({}) as p order by created_at, id limit {MAX_PENDING_READ}",
                        arms.join(" union all ")
                    );
                    let mut pending_q = sqlx::query_as::<_, (DbId, DbId)>(&pending_sql);
                    for (id, n) in &wanted {
                        pending_q = pending_q.bind(DbId(*id)).bind(*n);
                    }
                    pending_q.fetch_all(&mut *tx).await?
                };
                let candidates = ClaimCandidates {
                    automations,
                    pending: pending.into_iter().map(|(run, auto)| (run.0, auto.0)).collect(),
                };
                let ClaimChoice { claim: claim_ids, skip: skip_ids, cancel: cancel_ids } = choose(&candidates);
                let automation_of: HashMap<Uuid, Uuid> = candidates.pending.iter().copied().collect();

                let mut claim = Claim::default();
                if !claim_ids.is_empty() {
                    let detail = StatusDetail {
                        from: Some(RunStatus::Pending),
                        by: format!("dispatcher:{host}"),
                        reason: "claimed".into(),
                        at: now,
                    };
                    let sql = format!(
                        "update runs set status = 'running', lease_owner = $1, lease_expires_at = $2, started_at = $3, \
                         updated_at = $3, attempt = attempt + 1, status_detail = $4 \
                         where status = 'pending' and id in ({}) returning {DRIVER_COLUMNS}",
                        placeholders(5, claim_ids.len())
                    );
                    let mut q = sqlx::query_as::<_, Row>(&sql)
                        .bind(host)
                        .bind(DbTime::new(lease_until))
                        .bind(DbTime::new(now))
                        .bind(Json(&detail));
                    for id in &claim_ids {
                        q = q.bind(DbId(*id));
                    }
                    let rows = q.fetch_all(&mut *tx).await?;
                    claim.claimed = rows.into_iter().map(Run::try_from).collect::<Result<Vec<_>>>()?;
                    claim.claimed.sort_by_key(|r| r.id);
                }
                for (ids, status, reason) in [
                    (&skip_ids, RunStatus::Skipped, "the automation already has `concurrency` runs going (policy: skip)"),
                    (&cancel_ids, RunStatus::Cancelled, "automation deleted"),
                ] {
                    if ids.is_empty() {
                        continue;
                    }
                    let detail = StatusDetail {
                        from: Some(RunStatus::Pending),
                        by: format!("dispatcher:{host}"),
                        reason: reason.into(),
                        at: now,
                    };
                    let sql = format!(
                        "update runs set status = $1, status_detail = $2, finished_at = $3, updated_at = $3, error = $4 \
                         where status = 'pending' and id in ({})",
                        placeholders(5, ids.len())
                    );
                    let mut q =
                        sqlx::query(&sql).bind(status.as_str()).bind(Json(&detail)).bind(DbTime::new(now)).bind(reason);
                    for id in ids {
                        q = q.bind(DbId(*id));
                    }
                    q.execute(&mut *tx).await?;
                    for id in ids {
                        if let Some(automation) = automation_of.get(id) {
                            super::notifications::notify_in!(tx, *id, *automation, status, now);
                        }
                    }
                }
                claim.skipped = skip_ids;
                claim.cancelled = cancel_ids;
                tx.commit().await?;
                Ok(claim)
            })
        }
        .await)
    }

    /// Stores the hash of a run's completion-callback token.
    pub async fn set_callback_token(&self, run_id: Uuid, token_hash: &str) -> Result<()> {
        with_db!(self, write, |db| {
            sqlx::query("update runs set callback_token_hash = $2 where id = $1")
                .bind(DbId(run_id))
                .bind(token_hash)
                .execute(db)
                .await?;
        });
        Ok(())
    }

    /// The hash of a run's completion-callback token.
    pub async fn callback_token_hash(&self, run_id: Uuid) -> Result<Option<String>> {
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar::<_, Option<String>>("select callback_token_hash from runs where id = $1")
                .bind(DbId(run_id))
                .fetch_optional(db)
                .await?
                .flatten()
        }))
    }

    /// Extends the leases of this host's running runs (one statement for all
    /// of them); returns the ids it still holds.
    pub async fn renew_leases(&self, host: &str, ids: &[Uuid], until: DateTime<Utc>) -> Result<Vec<Uuid>> {
        let (store, host, ids) = (self.clone(), host.to_owned(), ids.to_vec());
        self.at_front(async move { store.renew_leases_here(&host, &ids, until).await }).await
    }

    /// See [`Store::renew_leases`].
    async fn renew_leases_here(&self, host: &str, ids: &[Uuid], until: DateTime<Utc>) -> Result<Vec<Uuid>> {
        self.noted(
            async {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                // Postgres: the rows are locked in id order, as the run-end
                // committer locks them, so a heartbeat and a batch of ends
                // never wait for each other in a cycle (a deadlock).
                let ids_sql = placeholders(3, ids.len());
                let sql = match self.dialect() {
                    Dialect::Postgres => format!(
                        "update runs set lease_expires_at = $2 where id in (select id from runs \
                         where lease_owner = $1 and status = 'running' and id in ({ids_sql}) order by id for update) \
                         returning id"
                    ),
                    Dialect::Sqlite => format!(
                        "update runs set lease_expires_at = $2 where lease_owner = $1 and status = 'running' \
                         and id in ({ids_sql}) returning id"
                    ),
                };
                let held: Vec<DbId> = with_db!(self, write, |db| {
                    let mut q = sqlx::query_scalar(&sql).bind(host).bind(DbTime::new(until));
                    for id in ids {
                        q = q.bind(DbId(*id));
                    }
                    q.fetch_all(db).await?
                });
                Ok(held.into_iter().map(|i| i.0).collect())
            }
            .await,
        )
    }

    /// Takes over running runs whose lease expired (their host stopped
    /// heartbeating), or every running run when `all` (a single-host SQLite
    /// start-up: whoever held them is gone). Returns them, now leased to `host`.
    pub async fn take_over_runs(&self, host: &str, until: DateTime<Utc>, all: bool, limit: u32) -> Result<Vec<Run>> {
        let (store, host) = (self.clone(), host.to_owned());
        self.at_front(async move { store.take_over_runs_here(&host, until, all, limit).await }).await
    }

    /// See [`Store::take_over_runs`].
    async fn take_over_runs_here(&self, host: &str, until: DateTime<Utc>, all: bool, limit: u32) -> Result<Vec<Run>> {
        self.noted(
            async {
                let now = crate::model::now();
                let dialect = self.dialect();
                let detail_for = |from: &str| StatusDetail {
                    from: Some(RunStatus::Running),
                    by: format!("rescue:{host}"),
                    reason: format!("taken over from {from}, which stopped heartbeating"),
                    at: now,
                };
                with_db!(self, write, |db| {
                    let mut tx = db.begin().await?;
                    let lock = if dialect == Dialect::Postgres { " for update skip locked" } else { "" };
                    let expired = if all { "" } else { " and (lease_expires_at is null or lease_expires_at < $1)" };
                    let stale: Vec<(DbId, Option<String>)> = sqlx::query_as(&format!(
                    "select id, lease_owner from runs where status = 'running'{expired} order by id limit {limit}{lock}"
                ))
                .bind(DbTime::new(now))
                .fetch_all(&mut *tx)
                .await?;
                    let mut taken = Vec::new();
                    for (id, owner) in stale {
                        let detail = detail_for(owner.as_deref().unwrap_or("an unknown host"));
                        let row: Option<Row> = sqlx::query_as(&format!(
                        "update runs set lease_owner = $2, lease_expires_at = $3, status_detail = $4, updated_at = $5 \
                         where id = $1 and status = 'running' returning {DRIVER_COLUMNS}"
                    ))
                    .bind(id)
                    .bind(host)
                    .bind(DbTime::new(until))
                    .bind(Json(&detail))
                    .bind(DbTime::new(now))
                    .fetch_optional(&mut *tx)
                    .await?;
                        if let Some(r) = row {
                            taken.push(Run::try_from(r)?);
                        }
                    }
                    tx.commit().await?;
                    Ok(taken)
                })
            }
            .await,
        )
    }

    /// Counts runs by status (for metrics).
    pub async fn count_runs_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(with_db!(self, read, |db| {
            sqlx::query_as("select status, count(*) from runs group by status").fetch_all(db).await?
        }))
    }
}
