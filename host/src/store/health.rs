//! Whether the store can write right now, and why not.
//!
//! A write that fails for a reason of the database's own (a full disk, a
//! read-only or vanished file, a server that does not answer) marks the
//! store as failing; only a successful write of the size of a delivery (the
//! probe, or a delivery commit) marks it sound again, so a small write that
//! squeezes into the last free page does not make `/ready` flap. The probe
//! runs in the background (`lib.rs`), so readiness returns by itself once
//! writes work again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Why the store cannot write, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failing {
    /// What is wrong, in words (no database text).
    pub reason: String,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// The store's write health, shared by every clone of the store.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<Option<Failing>>,
}

impl Health {
    /// `Some` while writes fail.
    pub fn failing(&self) -> Option<Failing> {
        self.failing.lock().expect("health lock").clone()
    }

    /// Records a failed write; the first reason and time are kept until
    /// the store recovers, except that a new reason replaces the old one.
    pub(crate) fn fail(&self, reason: &str) {
        let mut f = self.failing.lock().expect("health lock");
        match &mut *f {
            Some(existing) if existing.reason == reason => {}
            Some(existing) => existing.reason = reason.to_owned(),
            None => {
                tracing::error!(reason, "the database cannot be written; deliveries get 503 until it can");
                *f = Some(Failing { reason: reason.to_owned(), since: crate::model::now() });
            }
        }
    }

    /// Records a write of full size that succeeded.
    pub(crate) fn recover(&self) {
        if let Some(was) = self.failing.lock().expect("health lock").take() {
            let secs = (crate::model::now() - was.since).num_milliseconds() as f64 / 1000.0;
            tracing::warn!(reason = %was.reason, failing_seconds = secs, "the database can be written again");
        }
    }
}

/// The reason, in words, when an error means the database cannot be used
/// right now (rather than a bad statement or a constraint); `None` otherwise.
pub(crate) fn unavailable_reason(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            if let Ok(n) = code.parse::<i32>() {
                // SQLite: the primary result code is the low byte.
                return match n & 0xff {
                    13 => Some("the database's disk is full"),
                    10 => Some("the database's disk failed a read or write"),
                    8 => Some("the database is read-only"),
                    14 => Some("the database file cannot be opened"),
                    11 | 26 => Some("the database file is damaged"),
                    5 | 6 => Some("the database is busy"),
                    _ => None,
                };
            }
            // Postgres SQLSTATE classes.
            match code.get(..2) {
                Some("08") => Some("the database connection failed"),
                Some("53") => Some("the database server is out of resources (disk, memory or connections)"),
                Some("57") => Some("the database server is shutting down or not accepting connections"),
                Some("58") => Some("the database server failed a read or write"),
                _ => None,
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => Some("the database does not answer"),
        sqlx::Error::PoolTimedOut => Some("the database did not answer in time"),
        sqlx::Error::PoolClosed => Some("the database connection pool is closed"),
        sqlx::Error::WorkerCrashed => Some("the database worker crashed"),
        _ => None,
    }
}

/// Which file a path names (device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId { dev: m.dev(), ino: m.ino() })
}

/// Watches the SQLite file's identity: SQLite writes on through an open
/// descriptor when its file is deleted or replaced, into a file nobody will
/// read again. The host must notice before it acknowledges anything.
#[derive(Debug)]
pub(crate) struct FileWatch {
    path: PathBuf,
    id: Mutex<Option<FileId>>,
    /// When the file last changed under the host: connections opened before
    /// then are on the old file and are replaced.
    changed_at: Mutex<Option<Instant>>,
}

impl FileWatch {
    pub(crate) fn new(path: PathBuf) -> FileWatch {
        FileWatch { path, id: Mutex::new(None), changed_at: Mutex::new(None) }
    }

    /// `Err` with the reason when the file is gone or is another file than
    /// the one the host opened. A replacement becomes the file from then on
    /// (connections older than it are retired).
    pub(crate) fn check(&self) -> Result<(), String> {
        let now = file_id(&self.path);
        let mut id = self.id.lock().expect("file watch");
        match (now, *id) {
            (Some(a), Some(b)) if a == b => Ok(()),
            // The first sighting (the file is made by the first connection).
            (Some(a), None) => {
                *id = Some(a);
                Ok(())
            }
            (None, _) => Err(format!("the database file {} was deleted", self.path.display())),
            (Some(a), _) => {
                *id = Some(a);
                *self.changed_at.lock().expect("file watch") = Some(Instant::now());
                Err(format!("the database file {} was replaced", self.path.display()))
            }
        }
    }

    /// True if a connection of this age was opened on a file that is no
    /// longer the database's (or the file is gone).
    pub(crate) fn stale(&self, age: std::time::Duration) -> bool {
        if self.id.lock().expect("file watch").is_none() {
            return false;
        }
        if self.check().is_err() && file_id(&self.path).is_none() {
            return true;
        }
        match *self.changed_at.lock().expect("file watch") {
            Some(at) => age > at.elapsed(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_reason_replaces_the_old_and_recovery_clears_it() {
        let h = Health::default();
        assert!(h.failing().is_none());
        h.fail("the database's disk is full");
        let since = h.failing().unwrap().since;
        h.fail("the database's disk is full");
        h.fail("the database is read-only");
        let f = h.failing().unwrap();
        assert_eq!((f.reason.as_str(), f.since), ("the database is read-only", since));
        h.recover();
        assert!(h.failing().is_none());
    }

    #[test]
    fn availability_errors_are_told_from_statement_errors() {
        assert_eq!(unavailable_reason(&sqlx::Error::PoolTimedOut), Some("the database did not answer in time"));
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert_eq!(unavailable_reason(&io), Some("the database does not answer"));
        assert_eq!(unavailable_reason(&sqlx::Error::RowNotFound), None);
    }

    #[test]
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        std::fs::write(&path, "one").unwrap();
        let w = FileWatch::new(path.clone());
        assert!(!w.stale(std::time::Duration::from_secs(60)), "not armed yet");
        assert!(w.check().is_ok());
        assert!(!w.stale(std::time::Duration::from_secs(60)));
        // Held open, the old inode cannot be reused by the replacement (some
        // file systems hand a freed inode number straight out again).
        let _old = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(w.check().unwrap_err().contains("deleted"));
        assert!(w.stale(std::time::Duration::from_secs(60)));
        std::fs::write(&path, "two").unwrap();
        assert!(w.check().unwrap_err().contains("replaced"));
        // Connections older than the replacement are on the old file.
        assert!(w.stale(std::time::Duration::from_secs(60)));
        assert!(!w.stale(std::time::Duration::ZERO));
        assert!(w.check().is_ok());
    }
}
