//! Event sources and deliveries: durable acknowledgement (group-committed),
//! claiming for matching, and the matching result with its runs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Connection as _;
use sqlx::FromRow;
use sqlx::types::Json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::types::{DbId, DbTime};
use super::{Dialect, Result, Store, with_db};
use crate::model::{Run, RunStatus};

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Our id for it.
    pub id: Uuid,
    /// The source.
    pub source: String,
    /// The provider's delivery id (for dedup), if any.
    pub delivery_id: Option<String>,
    /// The event key, if one could be derived.
    pub event_key: Option<String>,
    /// The payload (JSON text, as received or unwrapped from an envelope).
    pub payload: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// What storing a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// It is new and stored.
    New(Uuid),
    /// Its delivery id was seen before; this is the first delivery's id.
    Duplicate(Uuid),
}

/// The outcome of matching one delivery, to record.
#[derive(Debug, Clone)]
pub struct MatchRecord {
    /// The delivery.
    pub delivery: Uuid,
    /// The runs to create (one per matched automation).
    pub runs: Vec<Run>,
    /// Filter errors, by automation.
    pub filter_errors: Vec<(Uuid, String)>,
    /// What matched and why the others did not.
    pub result: serde_json::Value,
}

/// A delivery waiting to be matched: what the matcher reads of it (the
/// payload as stored text, never parsed by the host).
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// Our id.
    pub id: Uuid,
    /// The source.
    pub source: String,
    /// The event key.
    pub event_key: Option<String>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// The payload as stored (JSON text).
    pub payload: String,
}

impl From<&Delivery> for PendingDelivery {
    fn from(d: &Delivery) -> PendingDelivery {
        PendingDelivery {
            id: d.id,
            source: d.source.clone(),
            event_key: d.event_key.clone(),
            received_at: d.received_at,
            payload: d.payload_text.clone(),
        }
    }
}

/// A stored delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Our id.
    pub id: Uuid,
    /// The source.
    pub source: String,
    /// The provider's delivery id.
    pub delivery_id: Option<String>,
    /// The event key.
    pub event_key: Option<String>,
    /// `pending`, `matching`, `matched` or `unrecognized`.
    pub status: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// When matching finished.
    pub matched_at: Option<DateTime<Utc>>,
    /// Which automations matched (with their runs) and why the others did not.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The payload as stored (JSON text), for plugins.
    #[serde(skip)]
    pub payload_text: String,
}

#[derive(FromRow)]
struct Row {
    id: DbId,
    source: String,
    delivery_id: Option<String>,
    event_key: Option<String>,
    status: String,
    received_at: DbTime,
    matched_at: Option<DbTime>,
    result: Option<Json<serde_json::Value>>,
    payload: String,
}

const COLUMNS: &str = "id, source, delivery_id, event_key, status, received_at, matched_at, result, \
    (select p.payload from delivery_payloads p where p.id = deliveries.id) as payload";

impl From<Row> for Delivery {
    fn from(r: Row) -> Delivery {
        Delivery {
            id: r.id.0,
            source: r.source,
            delivery_id: r.delivery_id,
            event_key: r.event_key,
            status: r.status,
            received_at: r.received_at.0,
            matched_at: r.matched_at.map(|t| t.0),
            result: r.result.map(|j| j.0),
            payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
            payload_text: r.payload,
        }
    }
}

/// A custom event source (named `EventSource` in the API description: a
/// plugin's `Source` is where it came from).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = EventSource)]
pub struct Source {
    /// Its name (the `{source}` in `POST /v1/events/{source}`).
    pub name: String,
    /// How deliveries are signed: `hmac-sha256`, `standard-webhooks`,
    /// `slack-v0` or `token` (not shown for a plugin source).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature_scheme: String,
    /// The header carrying the signature or token (none for a plugin source).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature_header: String,
    /// JMESPath expression that extracts the event key from the payload
    /// (none for a plugin source).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub event_key_expr: String,
    /// The header carrying the sender's delivery id (for dedup), if any.
    pub delivery_id_header: Option<String>,
    /// The source plugin that verifies and reads its deliveries instead of
    /// the HMAC check and key expression above, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The built-in provider it was made for (`gitlab`, `slack`,
    /// `standard-webhooks`), which set the fields above and may answer a
    /// handshake (Slack's `url_verification`); none for a custom source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The HMAC secret (never serialized).
    #[serde(skip)]
    pub secret: String,
}

#[derive(FromRow)]
struct SourceRow {
    name: String,
    secret: String,
    signature_scheme: String,
    signature_header: String,
    event_key_expr: String,
    delivery_id_header: Option<String>,
    plugin: Option<String>,
    created_at: DbTime,
    preset: Option<String>,
}

/// Where a source's sealed secret belongs (its associated data).
fn source_aad(name: &str) -> String {
    format!("event_sources.secret:{name}")
}

impl SourceRow {
    fn open(self, store: &Store) -> Result<Source> {
        Ok(Source {
            secret: store.open_secret(&source_aad(&self.name), &self.secret)?,
            name: self.name,
            signature_scheme: self.signature_scheme,
            signature_header: self.signature_header,
            event_key_expr: self.event_key_expr,
            delivery_id_header: self.delivery_id_header,
            plugin: self.plugin,
            created_at: self.created_at.0,
            preset: self.preset,
        })
    }
}

impl Store {
    /// Stores deliveries in one statement (group commit): concurrent
    /// requests share one commit. A delivery whose provider id was seen
    /// before is not stored again.
    ///
    /// Atomic (one transaction on SQLite, one statement on Postgres): a
    /// multi-row `insert` of the delivery rows, then one of the payloads of
    /// those stored (their own table, so the row the
    /// matcher updates twice is small: on SQLite each update of a row that
    /// held its payload wrote the payload again). The original of a
    /// duplicate is looked up afterwards, through a reader.
    pub async fn insert_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<Stored>> {
        let r = async {
            self.file_intact()?;
            let postgres = self.dialect() == Dialect::Postgres;
            let inserted: Vec<DbId> = with_db!(self, ack, |db| {
                if postgres {
                    // One statement: a round trip fewer on the connection
                    // every group of senders waits for.
                    let mut qb = sqlx::QueryBuilder::new(
                        "with v (id, source, delivery_id, event_key, received_at, status, payload) as (",
                    );
                    qb.push_values(batch, |mut b, d| {
                        b.push_bind(DbId(d.id))
                            .push_bind(&d.source)
                            .push_bind(&d.delivery_id)
                            .push_bind(&d.event_key)
                            .push_bind(DbTime::new(d.received_at))
                            .push_bind(if d.event_key.is_some() { "pending" } else { "unrecognized" })
                            .push_bind(&d.payload);
                    });
                    qb.push(
                        "), d as (insert into deliveries (id, source, delivery_id, event_key, received_at, status) \
                         select id, source, delivery_id, event_key, received_at, status from v \
                         on conflict (source, delivery_id) where delivery_id is not null do nothing returning id), \
                         p as (insert into delivery_payloads (id, payload) select v.id, v.payload from v join d on d.id = v.id) \
                         select id from d",
                    );
                    qb.build_query_scalar().fetch_all(db).await?
                } else {
                let mut tx = db.begin().await?;
                let mut qb = sqlx::QueryBuilder::new(
                    "insert into deliveries (id, source, delivery_id, event_key, received_at, status) ",
                );
                qb.push_values(batch, |mut b, d| {
                    b.push_bind(DbId(d.id))
                        .push_bind(&d.source)
                        .push_bind(&d.delivery_id)
                        .push_bind(&d.event_key)
                        .push_bind(DbTime::new(d.received_at))
                        .push_bind(if d.event_key.is_some() { "pending" } else { "unrecognized" });
                });
                qb.push(" on conflict (source, delivery_id) where delivery_id is not null do nothing returning id");
                let inserted: Vec<DbId> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
                // The payloads of the ones stored (not of duplicates), in
                // their own table: written once, never with a status change.
                let new: std::collections::HashSet<Uuid> = inserted.iter().map(|i| i.0).collect();
                let payloads: Vec<&NewDelivery> = batch.iter().filter(|d| new.contains(&d.id)).collect();
                if !payloads.is_empty() {
                    let mut qb = sqlx::QueryBuilder::new("insert into delivery_payloads (id, payload) ");
                    qb.push_values(payloads, |mut b, d| {
                        b.push_bind(DbId(d.id)).push_bind(&d.payload);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                inserted
                }
            });
            // A commit into a file that was deleted or replaced meanwhile
            // reached no one: it must not be acknowledged.
            self.file_intact()?;
            let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().map(|i| i.0).collect();
            let mut out = Vec::with_capacity(batch.len());
            for d in batch {
                if inserted.contains(&d.id) {
                    out.push(Stored::New(d.id));
                    continue;
                }
                // Committed before this statement (or by it, for a second
                // copy in the same group), so any reader sees it.
                let first: Option<DbId> = with_db!(self, read, |db| {
                    sqlx::query_scalar("select id from deliveries where source = $1 and delivery_id = $2")
                        .bind(&d.source)
                        .bind(&d.delivery_id)
                        .fetch_optional(db)
                        .await?
                });
                out.push(Stored::Duplicate(first.map(|f| f.0).unwrap_or(d.id)));
            }
            Ok(out)
        }
        .await;
        if r.is_ok() {
            self.health.recover();
        }
        self.noted(r)
    }

    /// Claims pending deliveries (and ones a stopped host left half-matched
    /// before `stale_before`, and ones `host` itself claimed but could not
    /// record: its matcher claims one batch at a time) for matching by
    /// `host`, oldest first.
    ///
    /// The claim returns no payload: reading 14 KB payloads back inside the
    /// update held the SQLite writer while every row was handed over. They
    /// are read afterwards through a reader (a payload never changes).
    pub async fn claim_deliveries(
        &self,
        host: &str,
        limit: u32,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<PendingDelivery>> {
        let (store, host) = (self.clone(), host.to_owned());
        self.at_front(async move { store.claim_deliveries_here(&host, limit, stale_before).await }).await
    }

    /// See [`Store::claim_deliveries`].
    async fn claim_deliveries_here(
        &self,
        host: &str,
        limit: u32,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<PendingDelivery>> {
        self.noted(
            async {
                let lock = if self.dialect() == Dialect::Postgres { " for update skip locked" } else { "" };
                let sql = format!(
                    "update deliveries set status = 'matching', claimed_by = $1, claimed_at = $2 where id in (\
                   select id from deliveries where status = 'pending' \
               or (status = 'matching' and (claimed_at < $3 or claimed_by = $1)) \
                   order by id limit {limit}{lock}) returning id, source, event_key, received_at"
                );
                let claimed: Vec<(DbId, String, Option<String>, DbTime)> = with_db!(self, write, |db| {
                    sqlx::query_as(&sql)
                        .bind(host)
                        .bind(DbTime::new(crate::model::now()))
                        .bind(DbTime::new(stale_before))
                        .fetch_all(db)
                        .await?
                });
                if claimed.is_empty() {
                    return Ok(Vec::new());
                }
                let read_sql = format!(
                    "select id, payload from delivery_payloads where id in ({})",
                    super::dispatch::placeholders(1, claimed.len())
                );
                let payloads: Vec<(DbId, String)> = with_db!(self, read, |db| {
                    let mut q = sqlx::query_as(&read_sql);
                    for (id, ..) in &claimed {
                        q = q.bind(*id);
                    }
                    q.fetch_all(db).await?
                });
                let mut payloads: HashMap<Uuid, String> = payloads.into_iter().map(|(id, p)| (id.0, p)).collect();
                let mut out: Vec<PendingDelivery> = claimed
                    .into_iter()
                    .filter_map(|(id, source, event_key, received_at)| {
                        // Always there (deliveries waiting to be matched are
                        // never purged); one that is not is left claimed and
                        // taken again by this host's next claim.
                        let payload = payloads.remove(&id.0)?;
                        Some(PendingDelivery { id: id.0, source, event_key, received_at: received_at.0, payload })
                    })
                    .collect();
                out.sort_by_key(|d| d.id);
                Ok(out)
            }
            .await,
        )
    }

    /// Records the matching of several deliveries in one transaction:
    /// their runs, the filter errors seen, and each result. A delivery is
    /// recorded only if `host` still holds its claim; returns how many were.
    pub async fn record_matches(&self, host: &str, records: &[MatchRecord]) -> Result<usize> {
        let (store, host, records) = (self.clone(), host.to_owned(), records.to_vec());
        self.at_front(async move { store.record_matches_here(&host, &records).await }).await
    }

    /// See [`Store::record_matches`].
    async fn record_matches_here(&self, host: &str, records: &[MatchRecord]) -> Result<usize> {
        self.noted(
            async {
                let now = crate::model::now();
                with_db!(self, write, |db| {
                    let mut tx = db.begin().await?;
                    // Every delivery's result in one statement (a round trip
                    // per delivery held the writer for each of them); those
                    // another host took over are not returned.
                    let mut done: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
                    for chunk in records.chunks(1000) {
                        let mut qb = sqlx::QueryBuilder::new("update deliveries set status = 'matched', matched_at = ");
                        qb.push_bind(DbTime::new(now)).push(", result = v.column2 from (");
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(DbId(r.delivery)).push_bind(Json(&r.result));
                        });
                        qb.push(") as v where deliveries.id = v.column1 and deliveries.claimed_by = ")
                            .push_bind(host)
                            .push(" and deliveries.status = 'matching' returning deliveries.id");
                        let ids: Vec<DbId> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
                        done.extend(ids.into_iter().map(|i| i.0));
                    }
                    let mine: Vec<&MatchRecord> = records.iter().filter(|r| done.contains(&r.delivery)).collect();
                    let recorded = mine.len();
                    let runs: Vec<&Run> = mine.iter().flat_map(|r| &r.runs).collect();
                    for r in &mine {
                        for (automation, error) in &r.filter_errors {
                            sqlx::query(
                                "update automations set filter_error_count = filter_error_count + 1, \
                             last_filter_error = $2, last_filter_error_at = $3 where id = $1",
                            )
                            .bind(DbId(*automation))
                            .bind(error)
                            .bind(DbTime::new(now))
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    for chunk in runs.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::new(
                            "insert into runs (id, automation_id, status, status_detail, trigger, attempt, event_id, \
                         created_at, updated_at) ",
                        );
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(DbId(r.id))
                                .push_bind(DbId(r.automation_id))
                                .push_bind(RunStatus::Pending.as_str())
                                .push_bind(Json(&r.status_detail))
                                .push_bind(Json(&r.trigger))
                                .push_bind(0i64)
                                .push_bind(r.trigger.event_id.map(DbId))
                                .push_bind(DbTime::new(r.created_at))
                                .push_bind(DbTime::new(r.created_at));
                        });
                        qb.push(" on conflict (automation_id, event_id) where event_id is not null do nothing");
                        qb.build().execute(&mut *tx).await?;
                        let mut qb = sqlx::QueryBuilder::new("update automations set last_triggered_at = ");
                        qb.push_bind(DbTime::new(now)).push(" where id in (");
                        let mut sep = qb.separated(", ");
                        for r in chunk {
                            sep.push_bind(DbId(r.automation_id));
                        }
                        qb.push(")");
                        qb.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(recorded)
                })
            }
            .await,
        )
    }

    /// A delivery's payload as it was received (a run's driver reads its
    /// event this way, through a reader).
    pub async fn delivery_payload(&self, id: Uuid) -> Result<Option<String>> {
        Ok(with_db!(self, read, |db| {
            sqlx::query_scalar("select payload from delivery_payloads where id = $1")
                .bind(DbId(id))
                .fetch_optional(db)
                .await?
        }))
    }

    /// Reads a delivery.
    pub async fn get_delivery(&self, id: Uuid) -> Result<Option<Delivery>> {
        let sql = format!("select {COLUMNS} from deliveries where id = $1");
        let row: Option<Row> =
            with_db!(self, read, |db| sqlx::query_as(&sql).bind(DbId(id)).fetch_optional(db).await?);
        Ok(row.map(Delivery::from))
    }

    /// Lists deliveries newest first, optionally of one source.
    pub async fn list_deliveries(
        &self,
        source: Option<&str>,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<(Vec<Delivery>, i64)> {
        let sql = format!(
            "select {COLUMNS} from deliveries where ($1 is null or source = $1) and ($2 is null or id < $2) \
             order by id desc limit $3"
        );
        let (rows, total): (Vec<Row>, i64) = with_db!(self, read, |db| {
            let rows =
                sqlx::query_as(&sql).bind(source).bind(before.map(DbId)).bind(i64::from(limit)).fetch_all(db).await?;
            let total = sqlx::query_scalar("select count(*) from deliveries where ($1 is null or source = $1)")
                .bind(source)
                .fetch_one(db)
                .await?;
            (rows, total)
        });
        Ok((rows.into_iter().map(Delivery::from).collect(), total))
    }

    /// Deletes matched deliveries received before `before` (the dedup window
    /// ends there) that no run refers to (a run's trigger payload is its
    /// delivery's); returns how many.
    pub async fn purge_deliveries(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(with_db!(self, write, |db| {
            sqlx::query(
                "delete from deliveries where received_at < $1 and status in ('matched', 'unrecognized') \
                 and not exists (select 1 from runs where runs.event_id = deliveries.id)",
            )
            .bind(DbTime::new(before))
            .execute(db)
            .await?
            .rows_affected()
        }))
    }

    /// A fingerprint of the event automations (count and latest change), so
    /// a matcher knows when to refresh its cache.
    pub async fn event_automations_version(&self) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>)> {
        let row: (i64, Option<DbTime>) = with_db!(self, read, |db| {
            sqlx::query_as("select count(*), max(updated_at) from automations where trigger_type = 'event'")
                .fetch_one(db)
                .await?
        });
        Ok((row.0, row.1.map(|t| t.0)))
    }

    /// Inserts a custom source; false if the name is taken.
    pub async fn insert_source(&self, s: &Source) -> Result<bool> {
        let sealed = self.seal(&source_aad(&s.name), &s.secret)?;
        let n = with_db!(self, write, |db| {
            sqlx::query(
                "insert into event_sources (name, secret, signature_header, event_key_expr, delivery_id_header, \
                 plugin, created_at, updated_at, signature_scheme, preset) values ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9) \
                 on conflict (name) do nothing",
            )
            .bind(&s.name)
            .bind(&sealed)
            .bind(&s.signature_header)
            .bind(&s.event_key_expr)
            .bind(&s.delivery_id_header)
            .bind(&s.plugin)
            .bind(DbTime::new(s.created_at))
            .bind(&s.signature_scheme)
            .bind(&s.preset)
            .execute(db)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Reads a custom source (with its secret).
    pub async fn get_source(&self, name: &str) -> Result<Option<Source>> {
        let row: Option<SourceRow> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select name, secret, signature_scheme, signature_header, event_key_expr, delivery_id_header, plugin, created_at, \
                 preset from event_sources where name = $1",
            )
            .bind(name)
            .fetch_optional(db)
            .await?
        });
        row.map(|r| r.open(self)).transpose()
    }

    /// Changes a custom source's secret (rotation); false if there is none.
    pub async fn set_source_secret(&self, name: &str, secret: &str) -> Result<bool> {
        let sealed = self.seal(&source_aad(name), secret)?;
        let n = with_db!(self, write, |db| {
            sqlx::query("update event_sources set secret = $2, updated_at = $3 where name = $1")
                .bind(name)
                .bind(&sealed)
                .bind(DbTime::new(crate::model::now()))
                .execute(db)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Lists custom sources by name.
    pub async fn list_sources(&self) -> Result<Vec<Source>> {
        let rows: Vec<SourceRow> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select name, secret, signature_scheme, signature_header, event_key_expr, delivery_id_header, plugin, created_at, \
                 preset from event_sources order by name",
            )
            .fetch_all(db)
            .await?
        });
        rows.into_iter().map(|r| r.open(self)).collect()
    }

    /// Deletes a custom source; false if there was none.
    pub async fn delete_source(&self, name: &str) -> Result<bool> {
        let n = with_db!(self, write, |db| {
            sqlx::query("delete from event_sources where name = $1").bind(name).execute(db).await?.rows_affected()
        });
        Ok(n == 1)
    }
}
