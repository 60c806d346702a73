//! Checking bundle archives (gzip-compressed tar) before they are accepted.
//!
//! Nothing is unpacked here: the archive is read once, entry by entry, and
//! refused at the first entry that could escape the bundle root or break a
//! limit. Sizes are checked from the headers before the data is read, so a
//! decompression bomb costs at most one entry's header past the limit.

use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use tar::EntryType;

/// Limits on what an archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes all files may hold once unpacked.
    pub max_unpacked_bytes: u64,
    /// Most entries.
    pub max_entries: u64,
}

/// What a valid archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Number of entries.
    pub entries: u64,
    /// Total file bytes once unpacked.
    pub unpacked_bytes: u64,
}

/// Why an archive was refused. Each message names the problem and the entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    /// Not gzip at all.
    #[error("not a gzip file: a bundle must be a .tar.gz archive")]
    NotGzip,
    /// The gzip or tar stream is damaged.
    #[error("damaged archive: {0}")]
    Corrupt(String),
    /// No entries.
    #[error("the archive is empty")]
    Empty,
    /// An absolute path.
    #[error("entry {0:?} has an absolute path; bundle paths must be relative")]
    AbsolutePath(String),
    /// A path with `..`.
    #[error("entry {0:?} contains '..'; bundle paths must stay inside the bundle")]
    ParentDir(String),
    /// A symbolic or hard link pointing outside the bundle.
    #[error("link {path:?} points to {target:?}, outside the bundle")]
    LinkEscapes {
        /// The link's path.
        path: String,
        /// Where it points.
        target: String,
    },
    /// Devices, FIFOs and other special entries.
    #[error("entry {path:?} is a {kind}; bundles may hold only files, directories and links")]
    Unsupported {
        /// The entry's path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// Too many entries.
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
    /// Too many bytes once unpacked.
    #[error("the archive unpacks to more than {0} bytes")]
    TooLarge(u64),
}

/// Checks an archive; returns what it holds, or the first problem found.
pub fn check(bytes: &[u8], limits: Limits) -> Result<Summary, ArchiveError> {
    if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
        return Err(ArchiveError::NotGzip);
    }
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut summary = Summary { entries: 0, unpacked_bytes: 0 };
    let entries = archive.entries().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        summary.entries += 1;
        if summary.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let path_bytes = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&path_bytes).into_owned();
        check_relative(Path::new(&path), &path)?;

        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                summary.unpacked_bytes = summary.unpacked_bytes.saturating_add(entry.size());
                if summary.unpacked_bytes > limits.max_unpacked_bytes {
                    return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
                }
            }
            EntryType::Directory => {}
            EntryType::Symlink => {
                let target = link_target(&mut entry)?;
                // A symlink's target is relative to the directory holding it.
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                if escapes(&base.join(&target)) || Path::new(&target).is_absolute() {
                    return Err(ArchiveError::LinkEscapes { path, target });
                }
            }
            EntryType::Link => {
                // A hard link's target is relative to the archive root.
                let target = link_target(&mut entry)?;
                if escapes(Path::new(&target)) || Path::new(&target).is_absolute() {
                    return Err(ArchiveError::LinkEscapes { path, target });
                }
            }
            // Metadata entries the tar crate folds into the next entry.
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {}
            other => {
                return Err(ArchiveError::Unsupported { path, kind: format!("{other:?}").to_lowercase() });
            }
        }
        // Drain the entry so a damaged stream is noticed here, not at run time.
        std::io::copy(&mut entry.by_ref().take(u64::MAX), &mut std::io::sink())
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    }
    if summary.entries == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(summary)
}

fn link_target<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let target = entry.link_name_bytes().ok_or_else(|| {
        ArchiveError::Corrupt(format!("link {:?} has no target", String::from_utf8_lossy(&entry.path_bytes())))
    })?;
    Ok(String::from_utf8_lossy(&target).into_owned())
}

fn check_relative(path: &Path, shown: &str) -> Result<(), ArchiveError> {
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath(shown.to_owned()));
            }
            Component::ParentDir => return Err(ArchiveError::ParentDir(shown.to_owned())),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

/// True if walking `path` from the bundle root ever climbs above it.
fn escapes(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    const LIMITS: Limits = Limits { max_unpacked_bytes: 1 << 20, max_entries: 100 };

    /// Builds a .tar.gz from (path, kind, data-or-link-target) triples,
    /// writing raw header names so tests can make archives `tar` would refuse.
    pub(crate) fn build(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            if matches!(kind, EntryType::Symlink | EntryType::Link) {
                header.set_link_name_literal(data).unwrap();
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn accepts_files_dirs_and_inner_links() {
        let tgz = build(&[
            ("bin/", EntryType::Directory, b""),
            ("bin/run.sh", EntryType::Regular, b"echo hi\n"),
            ("run", EntryType::Symlink, b"bin/run.sh"),
            ("bin/alias", EntryType::Symlink, b"../run"),
            ("copy", EntryType::Link, b"bin/run.sh"),
        ]);
        assert_eq!(check(&tgz, LIMITS), Ok(Summary { entries: 5, unpacked_bytes: 8 }));
    }

    #[test]
    fn refuses_escapes_with_a_message_naming_the_entry() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (build(&[("/etc/passwd", EntryType::Regular, b"x")]), "absolute path"),
            (build(&[("a/../../x", EntryType::Regular, b"x")]), "contains '..'"),
            (build(&[("l", EntryType::Symlink, b"../outside")]), "outside the bundle"),
            (build(&[("l", EntryType::Symlink, b"/etc/passwd")]), "outside the bundle"),
            (build(&[("d/l", EntryType::Symlink, b"../../x")]), "outside the bundle"),
            (build(&[("h", EntryType::Link, b"../x")]), "outside the bundle"),
            (build(&[("dev", EntryType::Char, b"")]), "only files"),
        ];
        for (tgz, needle) in cases {
            let err = check(&tgz, LIMITS).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn refuses_non_gzip_damaged_empty_and_oversized() {
        assert_eq!(check(b"PK\x03\x04", LIMITS), Err(ArchiveError::NotGzip));
        let mut tgz = build(&[("a", EntryType::Regular, &[7u8; 5000])]);
        tgz.truncate(tgz.len() / 2);
        assert!(matches!(check(&tgz, LIMITS), Err(ArchiveError::Corrupt(_))));
        assert_eq!(check(&build(&[]), LIMITS), Err(ArchiveError::Empty));
        let big = vec![0u8; 2 << 20];
        assert_eq!(check(&build(&[("big", EntryType::Regular, &big)]), LIMITS), Err(ArchiveError::TooLarge(1 << 20)));
        let many: Vec<(String, EntryType, &[u8])> =
            (0..101).map(|i| (format!("f{i}"), EntryType::Regular, &b""[..])).collect();
        let many: Vec<(&str, EntryType, &[u8])> = many.iter().map(|(p, k, d)| (p.as_str(), *k, *d)).collect();
        assert_eq!(check(&build(&many), LIMITS), Err(ArchiveError::TooManyEntries(100)));
    }
}
