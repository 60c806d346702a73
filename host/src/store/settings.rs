//! Host-wide settings shared by every replica (secrets generated once), and
//! the start-up step that keeps secrets sealed at rest.

use super::{Error, Result, Store, with_db};
use sqlx::Connection as _;

/// The setting that proves a host holds the key this database was sealed
/// with: a sealed known value.
const KEY_CHECK: &str = "secret_key_check";

/// What sealing at start did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Values stored in plain text before sealing existed, now sealed.
    pub sealed: u64,
}

impl Store {
    /// The value of `key`, created with `make()` if it does not exist yet.
    /// Replicas racing to create it all end up with the first one written.
    pub async fn setting_or_create(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let value = make();
        with_db!(self, write, |db| {
            let mut tx = db.begin().await?;
            sqlx::query("insert into settings (key, value) values ($1, $2) on conflict (key) do nothing")
                .bind(key)
                .bind(&value)
                .execute(&mut *tx)
                .await?;
            let stored =
                sqlx::query_scalar("select value from settings where key = $1").bind(key).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// Like [`Store::setting_or_create`] for a secret: stored sealed.
    pub async fn secret_setting_or_create(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let aad = format!("settings.value:{key}");
        let sealed = self.seal(&aad, &make())?;
        let stored = self.setting_or_create(key, || sealed).await?;
        self.open_secret(&aad, &stored)
    }

    /// Checks that this host's secret key is the one the database's secrets
    /// were sealed with (refusing to start otherwise, rather than failing
    /// every delivery later), then seals what an older version stored in
    /// plain text.
    pub async fn seal_at_rest(&self) -> Result<SealReport> {
        let check = self.secret_setting_or_create(KEY_CHECK, || "ok".to_owned()).await;
        match check {
            Ok(v) if v == "ok" => {}
            Ok(_) | Err(Error::Corrupt(_)) => {
                return Err(Error::Corrupt(
                    "this database's secrets were sealed with another secret key: give every host the same \
                     AUTOMATION_SECRET_KEY or AUTOMATION_SECRET_KEY_FILE"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        }
        let mut report = SealReport::default();
        let plain_sources: Vec<(String, String)> = with_db!(self, read, |db| {
            sqlx::query_as("select name, secret from event_sources where secret not like 'sealed:v1:%'")
                .fetch_all(db)
                .await?
        });
        for (name, secret) in plain_sources {
            self.set_source_secret(&name, &secret).await?;
            report.sealed += 1;
        }
        let plain_settings: Vec<(String, String)> = with_db!(self, read, |db| {
            sqlx::query_as(
                "select key, value from settings where key = 'callback_secret' and value not like 'sealed:v1:%'",
            )
            .fetch_all(db)
            .await?
        });
        for (key, value) in plain_settings {
            let sealed = self.seal(&format!("settings.value:{key}"), &value)?;
            with_db!(self, write, |db| {
                sqlx::query("update settings set value = $2 where key = $1")
                    .bind(&key)
                    .bind(&sealed)
                    .execute(db)
                    .await?;
            });
            report.sealed += 1;
        }
        Ok(report)
    }
}
