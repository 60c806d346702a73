//! Host-wide settings shared by every replica (secrets generated once).

use super::{Result, Store, with_db};

impl Store {
    /// The value of `key`, created with `make()` if it does not exist yet.
    /// Replicas racing to create it all end up with the first one written.
    pub async fn setting_or_create(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let value = make();
        with_db!(self, write, |db| {
            sqlx::query("insert into settings (key, value) values ($1, $2) on conflict (key) do nothing")
                .bind(key)
                .bind(&value)
                .execute(db)
                .await?;
            Ok(sqlx::query_scalar("select value from settings where key = $1").bind(key).fetch_one(db).await?)
        })
    }
}
