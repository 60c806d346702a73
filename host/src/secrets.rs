//! Secrets at rest: values the database must hold but must not show to
//! whoever reads the database file or a backup of it (event-source secrets,
//! the callback-token key, automations' secret environment).
//!
//! Each value is sealed with XChaCha20-Poly1305 under a 256-bit key that is
//! kept outside the database: `AUTOMATION_SECRET_KEY`, the file named by
//! `AUTOMATION_SECRET_KEY_FILE`, or `secret.key` in the data directory
//! (made on first start, mode 0600). The value's place (table, column and
//! row) is bound in as associated data, so a sealed value copied into
//! another row does not open there. Stored form:
//! `sealed:v1:<base64(nonce || ciphertext)>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// The prefix of every sealed value.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// Why a key could not be had, or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The configured key is not 32 bytes of hex or base64.
    #[error("{0} must be 32 bytes, as 64 hex digits or base64 (try `openssl rand -hex 32`)")]
    BadKey(&'static str),
    /// The key file could not be read or made.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file can be read by others.
    #[error("secret key file {0} is readable by group or others; chmod 600 it")]
    KeyFileOpen(PathBuf),
    /// A sealed value did not open: another key, or it was changed.
    #[error(
        "a sealed {0} does not open with this host's secret key (another AUTOMATION_SECRET_KEY, or the value was changed)"
    )]
    Open(String),
}

/// The key that seals and opens secrets.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Where a host's key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The value itself (`AUTOMATION_SECRET_KEY`).
    Value(String),
    /// A file holding it; made if `create` and missing.
    File {
        /// The file.
        path: PathBuf,
        /// Make it (0600, random) when it does not exist.
        create: bool,
    },
}

impl SecretKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey { cipher: XChaCha20Poly1305::new(&bytes.into()) }
    }

    /// Parses 64 hex digits or base64 of 32 bytes.
    pub fn parse(text: &str, what: &'static str) -> Result<SecretKey, SecretError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .or_else(|| B64.decode(text).ok())
            .ok_or(SecretError::BadKey(what))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey(what))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// Loads (or makes) the key from where the configuration says.
    pub fn load(source: &KeySource) -> Result<SecretKey, SecretError> {
        match source {
            KeySource::Value(v) => SecretKey::parse(v, "AUTOMATION_SECRET_KEY"),
            KeySource::File { path, create } => {
                let io = |source| SecretError::KeyFile { path: path.clone(), source };
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        check_private(path)?;
                        SecretKey::parse(&text, "the secret key file")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && *create => {
                        let mut bytes = [0u8; 32];
                        rand::rng().fill_bytes(&mut bytes);
                        write_new_key(path, &hex::encode(bytes)).map_err(io)?;
                        // Another process may have won the race: use what is there.
                        SecretKey::parse(&std::fs::read_to_string(path).map_err(io)?, "the secret key file")
                    }
                    Err(e) => Err(io(e)),
                }
            }
        }
    }

    /// Seals `plain` for the place `aad` names (such as `event_sources.secret:github`).
    pub fn seal(&self, aad: &str, plain: &str) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: aad.as_bytes() })
            .expect("XChaCha20-Poly1305 sealing cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    /// Opens a stored value. A value without the sealed prefix is one stored
    /// before sealing existed, and is returned as it is (the host seals
    /// those at start).
    pub fn open(&self, aad: &str, stored: &str) -> Result<String, SecretError> {
        let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let fail = || SecretError::Open(aad.split(':').next().unwrap_or(aad).to_owned());
        let raw = B64.decode(body).map_err(|_| fail())?;
        if raw.len() < 24 {
            return Err(fail());
        }
        let (nonce, ct) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

fn check_private(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretError::KeyFile { path: path.into(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::KeyFileOpen(path.into()));
    }
    Ok(())
}

/// Writes a new key file 0600, never replacing one that exists: written
/// whole under a temporary name, then hard-linked into place (the first link
/// wins). Shared with the compile cache's key.
pub(crate) fn write_new_key(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // A hard link fails if the name exists: the first key made wins.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let key = SecretKey::from_bytes([7; 32]);
        let sealed = key.seal("event_sources.secret:github", "s3cret-value");
        assert!(is_sealed(&sealed) && !sealed.contains("s3cret"));
        assert_eq!(key.open("event_sources.secret:github", &sealed).unwrap(), "s3cret-value");
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sealed, key.seal("event_sources.secret:github", "s3cret-value"));
        // Another row, another key, a flipped byte: refused.
        assert!(key.open("event_sources.secret:other", &sealed).is_err());
        assert!(SecretKey::from_bytes([8; 32]).open("event_sources.secret:github", &sealed).is_err());
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(key.open("event_sources.secret:github", &String::from_utf8(tampered).unwrap()).is_err());
        assert!(key.open("x", "sealed:v1:!!").is_err());
        // Values from before sealing read as they are.
        assert_eq!(key.open("x", "plain").unwrap(), "plain");
    }

    #[test]
    fn keys_parse_from_hex_or_base64_only_at_32_bytes() {
        assert!(SecretKey::parse(&"ab".repeat(32), "k").is_ok());
        assert!(SecretKey::parse(&base64::engine::general_purpose::STANDARD.encode([1u8; 32]), "k").is_ok());
        assert!(SecretKey::parse("short", "k").is_err());
        assert!(SecretKey::parse(&"ab".repeat(16), "k").is_err());
    }

    #[test]
    fn the_key_file_is_made_private_once_and_refused_when_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let source = KeySource::File { path: path.clone(), create: true };
        let a = SecretKey::load(&source).unwrap();
        let b = SecretKey::load(&source).unwrap();
        assert_eq!(b.open("p", &a.seal("p", "v")).unwrap(), "v");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SecretKey::load(&source), Err(SecretError::KeyFileOpen(_))));
        let missing = KeySource::File { path: dir.path().join("none"), create: false };
        assert!(matches!(SecretKey::load(&missing), Err(SecretError::KeyFile { .. })));
    }
}
