//! Cross-host wake-ups on Postgres: a host that made runs says so with
//! `NOTIFY automation_runs`, and every host's dispatcher `LISTEN`s, so an
//! idle host claims a run made elsewhere at once instead of at its next
//! poll. A hint only: the poll stays, and a lost notification (a dropped
//! listener connection) costs at most one poll interval. SQLite has one
//! host, which wakes itself in process.

use super::{Inner, Result, Store};

/// The channel.
const CHANNEL: &str = "automation_runs";

/// A listener for run wake-ups.
pub struct RunListener(sqlx::postgres::PgListener);

impl RunListener {
    /// Waits for the next wake-up (several may arrive as one).
    pub async fn next(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

impl Store {
    /// Tells the other hosts that runs were made (Postgres; a no-op on SQLite).
    pub async fn notify_runs(&self) -> Result<()> {
        if let Inner::Postgres { pool, .. } = &self.inner {
            sqlx::query("select pg_notify($1, '')").bind(CHANNEL).execute(pool).await?;
        }
        Ok(())
    }

    /// A listener for the other hosts' wake-ups; `None` on SQLite.
    pub async fn listen_runs(&self) -> Result<Option<RunListener>> {
        let Inner::Postgres { pool, .. } = &self.inner else { return Ok(None) };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(RunListener(listener)))
    }
}
