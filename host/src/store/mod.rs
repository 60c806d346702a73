//! Storage: the only module that touches SQL.
//!
//! One [`Store`] over either SQLite (the zero-set-up default) or Postgres (for
//! teams and several host replicas). Most statements are the same text on
//! both: `$1` placeholders work on SQLite too, and the column types in
//! [`types`] decode the same on both. Where the dialects really differ
//! (row locking, JSON operators) the method says so and carries one statement
//! per dialect. sqlx's `Any` driver is not used: it cannot decode Postgres
//! `uuid`, `jsonb` or `timestamptz`.
//!
//! Queries are unchecked (`sqlx::query_as`) rather than `query!` macros:
//! sqlx 0.8's macros check against one database per crate, and we have two.
//! The end-to-end suite runs every storage behaviour on both instead.

mod ack_conn;
mod api_keys;
mod automations;
mod dispatch;
mod events;
mod health;
mod notifications;
mod plugins;
mod retention;
mod runs;
mod scheduler;
mod settings;
pub(crate) mod types;
mod uploads;
mod wakeups;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use api_keys::AuditPage;
pub use automations::{AutomationFilter, AutomationPage};
pub use dispatch::{Claim, ClaimAutomation, ClaimCandidates, ClaimChoice};
pub use events::{Delivery, MatchRecord, NewDelivery, PendingDelivery, Source, Stored};
pub use health::{Failing, Health};
pub use notifications::{Attempt, DueNotification};
pub use plugins::{RecordedGrant, StoredPlugin};
pub use retention::Retained;
pub use runs::{DeleteRun, Dispatched, RunChanges, RunEnd, RunFilter, RunPage, RunStart, RunWrite};
pub use scheduler::{DueAutomation, FireReport, FiredSlot, NextFire, PlannedSlot, SlotPlan, SlotRecord};
pub use settings::SealReport;
pub use uploads::{DeleteUpload, UploadPage};
pub use wakeups::RunListener;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be turned back into a domain value.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database cannot be used right now (its file vanished, say).
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// The reason in words when the database cannot be used right now (a
    /// full disk, a read-only or vanished file, a server that does not
    /// answer), rather than a bad statement: callers answer 503 and retry.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Error::Database(e) => health::unavailable_reason(e).map(str::to_owned),
            Error::Unavailable(reason) => Some(reason.clone()),
            _ => None,
        }
    }
}

/// Results from the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, through one writer connection and a pool of readers.
    Sqlite,
    /// Postgres, through a pool.
    Postgres,
}

/// The storage handle shared by the whole host. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Inner,
    health: std::sync::Arc<Health>,
    /// The SQLite file, watched for deletion and replacement.
    file: Option<std::sync::Arc<health::FileWatch>>,
    /// Seals secrets at rest; set by [`Store::with_secret_key`].
    secrets: Option<crate::secrets::SecretKey>,
    /// Where run bookkeeping is written (see [`Store::with_front_runtime`]).
    front: Option<tokio::runtime::Handle>,
}

#[derive(Clone)]
enum Inner {
    Sqlite {
        /// One connection (see `writer`).
        writer: std::sync::Arc<writer::Writer>,
        /// Readers run concurrently with the writer under WAL.
        read: SqlitePool,
        /// The background writers' lane: one of them at a time waits for
        /// (or holds) the writer, so a delivery's commit, which skips the
        /// lane, waits behind at most one other transaction, never behind
        /// a queue of run bookkeeping.
        lane: std::sync::Arc<tokio::sync::Semaphore>,
    },
    Postgres {
        /// Everything but the acknowledgement path.
        pool: PgPool,
        /// The delivery commits' own connection (see `ack_conn`).
        ack: std::sync::Arc<ack_conn::AckConnection>,
    },
}

/// Runs `$body` once per dialect with `$e` bound to that dialect's pool, so a
/// statement written once is compiled against both drivers.
macro_rules! with_db {
    ($store:expr, read, |$e:ident| $body:expr) => {
        match &$store.inner {
            $crate::store::Inner::Sqlite { read, .. } => {
                let $e = read;
                $body
            }
            $crate::store::Inner::Postgres { pool, .. } => {
                let $e = pool;
                $body
            }
        }
    };
    // Every write but the acknowledgement path's: on SQLite it waits its
    // turn in the background lane first.
    ($store:expr, write, |$e:ident| $body:expr) => {
        match &$store.inner {
            $crate::store::Inner::Sqlite { writer, lane, .. } => {
                // The semaphore is never closed; were it, the write would
                // simply go without its turn.
                let _lane = lane.acquire().await.ok();
                let mut turn = writer.turn().await?;
                let $e = &mut *turn;
                $body
            }
            $crate::store::Inner::Postgres { pool, .. } => {
                let $e = pool;
                $body
            }
        }
    };
    // The commit a sender waits for (deliveries): straight to the writer.
    ($store:expr, ack, |$e:ident| $body:expr) => {
        match &$store.inner {
            $crate::store::Inner::Sqlite { writer, .. } => {
                let mut turn = writer.turn().await?;
                let $e = &mut *turn;
                $body
            }
            $crate::store::Inner::Postgres { ack, .. } => {
                let mut turn = ack.turn().await?;
                let $e = &mut *turn;
                let done = $body;
                turn.succeeded();
                done
            }
        }
    };
}
pub(crate) use with_db;

impl Store {
    /// Opens the database at `url` (`sqlite://...` or `postgres://...`),
    /// creating a SQLite file if it does not exist.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Store::connect_with(url, max_connections, None).await
    }

    /// Like [`Store::connect`], with a cap on the SQLite file's size in bytes
    /// (`PRAGMA max_page_count`): past it, writes fail as on a full disk.
    pub async fn connect_with(url: &str, max_connections: u32, sqlite_max_bytes: Option<u64>) -> Result<Store> {
        let health = std::sync::Arc::new(Health::default());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let ack = std::sync::Arc::new(ack_conn::AckConnection::new(opts.clone()));
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store { inner: Inner::Postgres { pool, ack }, health, file: None, secrets: None, front: None })
        } else {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before we answer, so an
                // acknowledged event survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // The default page size; a database made with another keeps its own,
            // so the cap is approximate there.
            let opts = match sqlite_max_bytes {
                Some(bytes) => opts.pragma("max_page_count", (bytes / 4096).max(16).to_string()),
                None => opts,
            };
            let file = std::sync::Arc::new(health::FileWatch::new(opts.get_filename().to_owned()));
            let writer = std::sync::Arc::new(writer::Writer::open(opts.clone(), file.clone()).await?);
            let read = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                // In-process: a ping before each use would only cost a
                // hand-off to the connection's thread and back.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .before_acquire({
                    let file = file.clone();
                    move |_, meta| {
                        let fresh = !file.stale(meta.age);
                        Box::pin(async move { Ok(fresh) })
                    }
                })
                .connect_with(opts.clone().read_only(true))
                .await?;
            let _ = file.check();
            // From now on a missing file is an outage, not a fresh start: a
            // replaced connection must not create an empty database.
            writer.set_connect_options(opts.clone().create_if_missing(false));
            read.set_connect_options(opts.read_only(true).create_if_missing(false));
            let lane = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
            Ok(Store {
                inner: Inner::Sqlite { writer, read, lane },
                health,
                file: Some(file),
                secrets: None,
                front: None,
            })
        }
    }

    /// This store, writing run bookkeeping (claims, starts, ends, leases,
    /// match records) from tasks on `runtime`. The host drives runs on
    /// threads that yield the CPU to acknowledgements; a write of theirs
    /// holds the database writer, which a delivery's commit may be waiting
    /// for, so it is carried out at the acknowledgements' priority, not
    /// theirs.
    pub fn with_front_runtime(mut self, runtime: tokio::runtime::Handle) -> Store {
        self.front = Some(runtime);
        self
    }

    /// Runs `work` on the front runtime when there is one, else here.
    async fn at_front<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let Some(front) = &self.front else { return work.await };
        match front.spawn(work).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Unavailable("the host is stopping".into())),
        }
    }

    /// This store, sealing secrets at rest with `key`.
    pub fn with_secret_key(mut self, key: crate::secrets::SecretKey) -> Store {
        self.secrets = Some(key);
        self
    }

    /// Seals `plain` for the place `aad` names.
    pub(crate) fn seal(&self, aad: &str, plain: &str) -> Result<String> {
        Ok(self.secret_key()?.seal(aad, plain))
    }

    /// Opens a stored secret.
    pub(crate) fn open_secret(&self, aad: &str, stored: &str) -> Result<String> {
        self.secret_key()?.open(aad, stored).map_err(|e| Error::Corrupt(e.to_string()))
    }

    fn secret_key(&self) -> Result<&crate::secrets::SecretKey> {
        self.secrets.as_ref().ok_or_else(|| Error::Corrupt("this store was opened without a secret key".into()))
    }

    /// The SQLite URL for `automation.db` in `data_dir`.
    pub fn default_sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("automation.db").display())
    }

    /// Which dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite { .. } => Dialect::Sqlite,
            Inner::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Applies pending migrations. On Postgres, sqlx holds an advisory lock
    /// while it migrates, so replicas starting together do not race.
    pub async fn migrate(&self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite { writer, .. } => SQLITE_MIGRATOR.run(&mut *writer.turn().await?).await?,
            Inner::Postgres { pool, .. } => POSTGRES_MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// How many times the SQLite writer connection was used so far (each a
    /// transaction or a single statement); `None` on Postgres.
    pub fn sqlite_writer_uses(&self) -> Option<u64> {
        match &self.inner {
            Inner::Sqlite { writer, .. } => Some(writer.uses()),
            Inner::Postgres { .. } => None,
        }
    }

    /// Whether writes work now.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Passes a write's result through, marking the store failing when the
    /// error says the database cannot be used.
    pub(crate) fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && let Some(reason) = e.unavailable()
        {
            self.health.fail(&reason);
        }
        r
    }

    /// `Err` if the SQLite file was deleted or replaced under the host.
    pub(crate) fn file_intact(&self) -> Result<()> {
        match &self.file {
            Some(f) => f.check().map_err(Error::Unavailable),
            None => Ok(()),
        }
    }

    /// Writes (and removes) a row the size of a delivery, to learn whether
    /// the database can store deliveries now; marks the store sound or
    /// failing accordingly.
    pub async fn probe_write(&self) -> Result<()> {
        let probe = "p".repeat(16 << 10);
        let r = async {
            self.file_intact()?;
            with_db!(self, write, |db| {
                let mut tx = db.begin().await?;
                sqlx::query(
                    "insert into settings (key, value) values ('write-probe', $1) \
                     on conflict (key) do update set value = excluded.value",
                )
                .bind(&probe)
                .execute(&mut *tx)
                .await?;
                sqlx::query("delete from settings where key = 'write-probe'").execute(&mut *tx).await?;
                tx.commit().await?;
            });
            self.file_intact()
        }
        .await;
        match &r {
            Ok(()) => self.health.recover(),
            Err(e) => {
                let reason = e.unavailable().unwrap_or_else(|| "the database refused a write".to_owned());
                self.health.fail(&reason);
            }
        }
        r
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        with_db!(self, read, |db| sqlx::query("select 1").execute(db).await.is_ok())
    }

    /// Closes every connection (used at shutdown).
    pub async fn close(&self) {
        match &self.inner {
            Inner::Sqlite { writer, read, .. } => {
                read.close().await;
                writer.close().await;
            }
            Inner::Postgres { pool, ack } => {
                ack.close().await;
                pool.close().await;
            }
        }
    }
}

/// Turns a stored unsigned value back into `u32`, refusing nonsense.
pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{what} = {v} is out of range")))
}

/// A comma-separated SQL list of status literals. Statuses are our own enum
/// names, never user input, so inlining them is safe.
pub(crate) fn status_list(statuses: &[crate::model::RunStatus]) -> String {
    statuses.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two migration trees must stay twins: same versions, same names.
    #[test]
    fn migration_trees_match() {
        let names = |m: &Migrator| m.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>();
        assert_eq!(names(&SQLITE_MIGRATOR), names(&POSTGRES_MIGRATOR));
        assert!(SQLITE_MIGRATOR.iter().count() >= 3);
    }

    #[test]
    fn status_lists_are_quoted_names() {
        use crate::model::RunStatus;
        assert_eq!(status_list(&[RunStatus::Pending, RunStatus::TimedOut]), "'pending', 'timed_out'");
    }
}
