//! API keys: generation, hashing, and which scope each route needs.
//!
//! Keys are 192 random bits, so a plain SHA-256 is enough to store them: a
//! slow password hash protects low-entropy secrets, and these are not.

use http::Method;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::Scope;

/// The prefix of every generated key, so a leaked key is easy to recognise.
pub const KEY_PREFIX: &str = "ahk_";

/// A new random API key.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Why a key cannot be made as asked.
#[derive(Debug, thiserror::Error)]
pub enum InvalidKey {
    /// The name is empty or too long.
    #[error("name must be 1 to 200 characters")]
    Name,
    /// No scope was named.
    #[error("name at least one scope (read, operate, write, plugins, admin); a key cannot do nothing")]
    NoScope,
    /// The expiry is not in the future.
    #[error("the expiry must be in the future")]
    Expiry,
}

/// Makes a new key: the secret (shown once) and what is stored about it.
pub fn mint(
    name: &str,
    scopes: &[Scope],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(String, crate::model::ApiKeyInfo), InvalidKey> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(InvalidKey::Name);
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(InvalidKey::NoScope);
    }
    let now = crate::model::now();
    if expires_at.is_some_and(|at| at <= now) {
        return Err(InvalidKey::Expiry);
    }
    let key = generate_key();
    let info = crate::model::ApiKeyInfo {
        id: uuid::Uuid::now_v7(),
        name: name.to_owned(),
        prefix: display_prefix(&key),
        scopes,
        created_at: now,
        expires_at: expires_at.map(|t| chrono::SubsecRound::trunc_subsecs(t, 6)),
        last_used_at: None,
        revoked_at: None,
    };
    Ok((key, info))
}

/// Whether a key last used at `last` should have its use recorded at `now`
/// (at most once a minute, so using a key is not a write per request).
pub fn should_record_use(last: Option<chrono::DateTime<chrono::Utc>>, now: chrono::DateTime<chrono::Utc>) -> bool {
    last.is_none_or(|t| now - t >= chrono::TimeDelta::seconds(60))
}

/// The part of a key shown in listings.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The scope a request needs, from its method and its route template (the
/// `MatchedPath`, such as `/v1/automations/{id}`). One table for the whole
/// API: the auth layer enforces it and `/openapi.json` is written from it.
/// A route not named here needs `admin` for changes and `read` for GET, so
/// a new route is never open by accident.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let admin_only = route.starts_with("/v1/api-keys") || route.starts_with("/v1/audit");
    if admin_only {
        return Scope::Admin;
    }
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    match (method.as_str(), route) {
        // Evaluating an expression changes nothing.
        ("POST", "/v1/filters/evaluate") => Scope::Read,
        (
            "POST",
            "/v1/automations/{id}/dispatch"
            | "/v1/automations/{id}/test"
            | "/v1/runs/{id}/cancel"
            | "/v1/runs/{id}/rerun",
        ) => Scope::Operate,
        ("POST", "/v1/automations" | "/v1/uploads" | "/v1/sources")
        | ("PATCH", "/v1/automations/{id}" | "/v1/sources/{name}")
        | ("DELETE", "/v1/automations/{id}" | "/v1/uploads/{id}" | "/v1/sources/{name}" | "/v1/runs/{id}") => {
            Scope::Write
        }
        ("PUT" | "DELETE", "/v1/plugins/{name}") => Scope::Plugins,
        _ => Scope::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_prefixed_and_hash_stably() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 48);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key(&a).len(), 64);
    }

    #[test]
    fn mint_checks_and_normalises() {
        let (key, info) = mint(" ci ", &[Scope::Write, Scope::Read, Scope::Write], None).unwrap();
        assert_eq!(info.name, "ci");
        assert_eq!(info.scopes, vec![Scope::Read, Scope::Write]);
        assert!(key.starts_with(&info.prefix));
        assert!(matches!(mint("", &[Scope::Read], None), Err(InvalidKey::Name)));
        assert!(matches!(mint("x", &[], None), Err(InvalidKey::NoScope)));
        let past = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
        assert!(matches!(mint("x", &[Scope::Read], Some(past)), Err(InvalidKey::Expiry)));
        let t = chrono::Utc::now();
        assert!(should_record_use(None, t));
        assert!(!should_record_use(Some(t - chrono::TimeDelta::seconds(59)), t));
        assert!(should_record_use(Some(t - chrono::TimeDelta::seconds(60)), t));
    }

    #[test]
    fn a_key_is_refused_once_revoked_or_expired() {
        use crate::model::KeyRefusal;
        let (_, mut info) = mint("x", &[Scope::Read], None).unwrap();
        let now = chrono::Utc::now();
        assert_eq!(info.refusal(now), None);
        info.expires_at = Some(now);
        assert_eq!(info.refusal(now), Some(KeyRefusal::Expired(now)));
        assert_eq!(info.refusal(now - chrono::TimeDelta::seconds(1)), None);
        info.revoked_at = Some(now - chrono::TimeDelta::seconds(5));
        assert!(matches!(info.refusal(now - chrono::TimeDelta::seconds(1)), Some(KeyRefusal::Revoked(_))));
    }

    #[test]
    fn scopes_nest_as_documented() {
        use Scope::*;
        for s in Scope::ALL {
            assert!(Admin.includes(s) && s.includes(Read) && s.includes(s), "{s}");
        }
        assert!(Write.includes(Operate) && !Write.includes(Plugins) && !Write.includes(Admin));
        assert!(!Operate.includes(Write) && !Read.includes(Operate) && !Plugins.includes(Write));
        assert!(Scope::any_includes(&[Read, Plugins], Plugins) && !Scope::any_includes(&[Read, Operate], Write));
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert!("root".parse::<Scope>().unwrap_err().contains("read, operate"));
    }

    #[test]
    fn every_route_needs_the_scope_the_readme_names() {
        let cases = [
            (Method::GET, "/v1/automations", Scope::Read),
            (Method::GET, "/v1/plugins/{name}/grants", Scope::Read),
            (Method::POST, "/v1/filters/evaluate", Scope::Read),
            (Method::POST, "/v1/automations/{id}/dispatch", Scope::Operate),
            (Method::POST, "/v1/runs/{id}/cancel", Scope::Operate),
            (Method::POST, "/v1/runs/{id}/rerun", Scope::Operate),
            (Method::POST, "/v1/automations/{id}/test", Scope::Operate),
            (Method::DELETE, "/v1/runs/{id}", Scope::Write),
            (Method::POST, "/v1/automations", Scope::Write),
            (Method::PATCH, "/v1/automations/{id}", Scope::Write),
            (Method::DELETE, "/v1/uploads/{id}", Scope::Write),
            (Method::POST, "/v1/sources", Scope::Write),
            (Method::PATCH, "/v1/sources/{name}", Scope::Write),
            (Method::PUT, "/v1/plugins/{name}", Scope::Plugins),
            (Method::DELETE, "/v1/plugins/{name}", Scope::Plugins),
            (Method::POST, "/v1/plugins/{name}/grants", Scope::Admin),
            (Method::DELETE, "/v1/plugins/{name}/grants/{sha256}", Scope::Admin),
            (Method::GET, "/v1/api-keys", Scope::Admin),
            (Method::POST, "/v1/api-keys", Scope::Admin),
            (Method::DELETE, "/v1/api-keys/{id}", Scope::Admin),
            (Method::GET, "/v1/audit", Scope::Admin),
            // Unknown changes are admin-only, so a new route is never open.
            (Method::POST, "/v1/something-new", Scope::Admin),
        ];
        for (method, route, scope) in cases {
            assert_eq!(required_scope(&method, route), scope, "{method} {route}");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
