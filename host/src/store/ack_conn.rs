//! Postgres: the connection of the acknowledgement path.
//!
//! A delivery's commit is what a sender waits for. From the shared pool it
//! waited for a free connection behind every run's bookkeeping (32 runs at
//! once hold most of the pool), and each use paid the pool's hand-offs (a
//! task to return the connection, a ping of the server before it is free
//! again). The group committer uses one connection of its own instead.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, MutexGuard};

use super::{Error, Result};

/// How long a caller waits for its turn before giving up.
const TURN_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection, opened on first use and again after a failed use.
pub(crate) struct AckConnection {
    conn: Mutex<Slot>,
    opts: PgConnectOptions,
}

#[derive(Default)]
struct Slot {
    conn: Option<PgConnection>,
    /// The last use did not report success: check the connection first.
    suspect: bool,
}

/// One caller's use of the connection. A use that does not end with
/// [`Turn::succeeded`] (an error returned early) makes the next one check
/// the connection, and open another if it does not answer.
pub(crate) struct Turn<'a>(MutexGuard<'a, Slot>);

impl Turn<'_> {
    /// The use went well: the connection is fine for the next.
    pub(crate) fn succeeded(&mut self) {
        self.0.suspect = false;
    }
}

impl std::ops::Deref for Turn<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.0.conn.as_ref().expect("a turn holds an open connection")
    }
}

impl std::ops::DerefMut for Turn<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0.conn.as_mut().expect("a turn holds an open connection")
    }
}

impl AckConnection {
    /// A connection to open with `opts` when first used.
    pub(crate) fn new(opts: PgConnectOptions) -> AckConnection {
        AckConnection { conn: Mutex::new(Slot::default()), opts }
    }

    /// Waits for the connection, (re)opening it when needed.
    pub(crate) async fn turn(&self) -> Result<Turn<'_>> {
        let mut slot = tokio::time::timeout(TURN_TIMEOUT, self.conn.lock())
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolTimedOut))?;
        if slot.suspect
            && let Some(conn) = slot.conn.as_mut()
            && conn.ping().await.is_err()
            && let Some(old) = slot.conn.take()
        {
            let _ = old.close_hard().await;
        }
        if slot.conn.is_none() {
            slot.conn = Some(self.opts.connect().await?);
        }
        slot.suspect = true;
        Ok(Turn(slot))
    }

    /// Closes the connection (at shutdown).
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.conn.take() {
            let _ = conn.close().await;
        }
    }
}
