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

mod api_keys;
mod automations;
mod dispatch;
mod events;
mod plugins;
mod runs;
mod scheduler;
mod settings;
pub(crate) mod types;
mod uploads;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use automations::{AutomationFilter, AutomationPage};
pub use dispatch::Claim;
pub use events::{Delivery, MatchRecord, NewDelivery, Source, Stored};
pub use plugins::StoredPlugin;
pub use runs::{RunChanges, RunPage};
pub use scheduler::{DueAutomation, FireReport, FiredSlot, SlotRecord};
pub use uploads::{DeleteUpload, UploadPage};

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
}

#[derive(Clone)]
enum Inner {
    Sqlite {
        /// One connection: SQLite has one writer at a time anyway, and queuing
        /// writers in our pool instead of in SQLite's busy handler means no
        /// "database is locked" under load.
        write: SqlitePool,
        /// Readers run concurrently with the writer under WAL.
        read: SqlitePool,
    },
    Postgres(PgPool),
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
            $crate::store::Inner::Postgres(pool) => {
                let $e = pool;
                $body
            }
        }
    };
    ($store:expr, write, |$e:ident| $body:expr) => {
        match &$store.inner {
            $crate::store::Inner::Sqlite { write, .. } => {
                let $e = write;
                $body
            }
            $crate::store::Inner::Postgres(pool) => {
                let $e = pool;
                $body
            }
        }
    };
}
pub(crate) use with_db;

impl Store {
    /// Opens the database at `url` (`sqlite://...` or `postgres://...`),
    /// creating a SQLite file if it does not exist.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store { inner: Inner::Postgres(pool) })
        } else {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before we answer, so an
                // acknowledged event survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts.clone())
                .await?;
            let read = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts.read_only(true))
                .await?;
            Ok(Store { inner: Inner::Sqlite { write, read } })
        }
    }

    /// The SQLite URL for `automation.db` in `data_dir`.
    pub fn default_sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("automation.db").display())
    }

    /// Which dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite { .. } => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Applies pending migrations. On Postgres, sqlx holds an advisory lock
    /// while it migrates, so replicas starting together do not race.
    pub async fn migrate(&self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite { write, .. } => SQLITE_MIGRATOR.run(write).await?,
            Inner::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        with_db!(self, read, |db| sqlx::query("select 1").execute(db).await.is_ok())
    }

    /// Closes every connection (used at shutdown).
    pub async fn close(&self) {
        match &self.inner {
            Inner::Sqlite { write, read } => {
                read.close().await;
                write.close().await;
            }
            Inner::Postgres(pool) => pool.close().await,
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
