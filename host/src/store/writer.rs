//! The SQLite writer: one connection, handed to one caller at a time.
//!
//! SQLite has one writer at a time anyway; queuing writers here rather than
//! in SQLite's busy handler means no "database is locked" under load. It is
//! a connection behind a fair lock rather than a pool of one because a
//! pool's turn costs more than the statements of most turns: sqlx returns
//! a pooled connection from a task of its own and pings it first, so every
//! use held the writer for two more hand-offs between threads, each a wait
//! for a CPU when the host is busy, and every other writer (a delivery's
//! commit among them) waited through them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, MutexGuard};

use super::health::FileWatch;
use super::{Error, Result};

/// How long a caller waits for its turn before giving up (as a pool's
/// acquire timeout did).
const TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer connection and what it takes to (re)open it.
pub(crate) struct Writer {
    conn: Mutex<Option<Open>>,
    opts: std::sync::Mutex<SqliteConnectOptions>,
    file: Arc<FileWatch>,
    uses: AtomicU64,
}

struct Open {
    conn: SqliteConnection,
    opened: Instant,
}

/// One caller's turn with the writer; the next caller's starts when it is
/// dropped.
pub(crate) struct Turn<'a>(MutexGuard<'a, Option<Open>>);

impl std::ops::Deref for Turn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.0.as_ref().expect("a turn holds an open connection").conn
    }
}

impl std::ops::DerefMut for Turn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.0.as_mut().expect("a turn holds an open connection").conn
    }
}

impl Writer {
    /// Opens the writer connection with `opts`.
    pub(crate) async fn open(opts: SqliteConnectOptions, file: Arc<FileWatch>) -> Result<Writer> {
        let conn = opts.connect().await?;
        Ok(Writer {
            conn: Mutex::new(Some(Open { conn, opened: Instant::now() })),
            opts: std::sync::Mutex::new(opts),
            file,
            uses: AtomicU64::new(0),
        })
    }

    /// Options for connections opened from now on.
    pub(crate) fn set_connect_options(&self, opts: SqliteConnectOptions) {
        *self.opts.lock().expect("writer options") = opts;
    }

    /// Times the writer was used (a transaction or a single statement).
    pub(crate) fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Waits for the writer. The connection is replaced first when it was
    /// opened on a file that is no longer the database's, or when it is not
    /// cleanly outside any transaction (see [`writer_is_sound`]).
    pub(crate) async fn turn(&self) -> Result<Turn<'_>> {
        let mut slot = tokio::time::timeout(TURN_TIMEOUT, self.conn.lock())
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolTimedOut))?;
        let keep = match slot.as_mut() {
            Some(open) => !self.file.stale(open.opened.elapsed()) && writer_is_sound(&mut open.conn).await,
            None => false,
        };
        if !keep {
            if let Some(old) = slot.take() {
                let _ = old.conn.close_hard().await;
            }
            let opts = self.opts.lock().expect("writer options").clone();
            *slot = Some(Open { conn: opts.connect().await?, opened: Instant::now() });
        }
        self.uses.fetch_add(1, Ordering::Relaxed);
        Ok(Turn(slot))
    }

    /// Closes the connection (at shutdown).
    pub(crate) async fn close(&self) {
        if let Some(open) = self.conn.lock().await.take() {
            let _ = open.conn.close().await;
        }
    }
}

/// Decides whether the SQLite writer connection may be used again; `false`
/// closes it and a new one is opened.
///
/// Why: when SQLite fails a statement or a `COMMIT` with `SQLITE_FULL` or an
/// I/O error, it may roll the whole transaction back by itself. sqlx then
/// sends its own `ROLLBACK`, which fails ("no transaction is active"), and
/// its count of open transactions stays at 1. From then on sqlx nests every
/// transaction as a `SAVEPOINT`; after one more failure a `ROLLBACK TO
/// SAVEPOINT` leaves a real transaction open, and every later "commit" is a
/// `RELEASE` inside it: it reports success and persists nothing, even after
/// space comes back. That is how a full disk turned into acknowledged and
/// lost deliveries. A connection that is not cleanly outside any
/// transaction is therefore never reused.
async fn writer_is_sound(conn: &mut SqliteConnection) -> bool {
    use sqlx::{Executor, TransactionManager};
    let depth = |c: &SqliteConnection| sqlx::sqlite::SqliteTransactionManager::get_transaction_depth(c);
    if depth(conn) == 0 {
        // Committed (or never in a transaction): the common case, no cost.
        return true;
    }
    // A transaction was dropped without a commit; its rollback is queued on
    // the connection. Let it run, then look again.
    if conn.ping().await.is_err() {
        return false;
    }
    if depth(conn) != 0 {
        tracing::warn!("the database writer's rollback failed; replacing the connection");
        return false;
    }
    // sqlx agrees it is out of any transaction; make sure SQLite does too (a
    // `BEGIN` inside a transaction is refused).
    if conn.execute("BEGIN").await.is_err() {
        tracing::warn!("the database writer was left inside a transaction; replacing the connection");
        return false;
    }
    conn.execute("ROLLBACK").await.is_ok()
}
