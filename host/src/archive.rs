//! Checking bundle archives (gzip-compressed tar) before they are accepted.
//!
//! Nothing is unpacked here. The archive is read as a bounded stream (the
//! decompressed bytes may not pass the unpacked limit plus room for headers,
//! whatever the compressed size), first header by header, refusing oversized
//! metadata records (GNU long names, PAX headers) before the tar crate would
//! read one into memory, then entry by entry: relative paths only, no `..`,
//! no duplicates, only files, directories and links, sizes within limits.
//! Last, links are resolved through each other the way the kernel would: no
//! link may lead outside the bundle through any chain, and no entry may be
//! written through a link. Unpacking (`sandbox::workspace`) then writes
//! without following links at all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use tar::EntryType;

/// Largest GNU long-name, long-link or PAX record accepted.
const MAX_METADATA: u64 = 64 << 10;
/// Most links followed while resolving one (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

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
    /// A metadata record (long name, PAX header) larger than any real one.
    #[error("the archive has a {kind} record of {size} bytes; at most {max} are accepted")]
    MetadataTooLarge {
        /// What record.
        kind: &'static str,
        /// Its size.
        size: u64,
        /// The most accepted.
        max: u64,
    },
    /// Two entries with the same path.
    #[error("entry {0:?} appears twice")]
    Duplicate(String),
    /// An entry inside a directory that is a link.
    #[error("entry {path:?} is inside {link:?}, which is a link; nothing may be written through a link")]
    ThroughLink {
        /// The entry.
        path: String,
        /// The link it would be written through.
        link: String,
    },
    /// A hard link to something that is not a file of the archive.
    #[error("hard link {path:?} points to {target:?}, which is not a file of the bundle")]
    BadHardLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
}

/// A reader that fails once more than `left` bytes came through it: the
/// decompressed stream may be far larger than the upload (a gzip bomb).
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("the archive decompresses to more than its limits allow"));
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The decompressed stream of an archive, bounded by what its limits allow
/// (file bytes plus three header blocks per entry, and a little slack).
fn stream(bytes: &[u8], limits: Limits) -> Bounded<GzDecoder<&[u8]>> {
    let room =
        limits.max_unpacked_bytes.saturating_add(limits.max_entries.saturating_mul(3 * 512)).saturating_add(1 << 20);
    Bounded { inner: GzDecoder::new(bytes), left: room }
}

fn too_large_or_corrupt(e: std::io::Error, limits: Limits) -> ArchiveError {
    if e.to_string().contains("decompresses to more") {
        ArchiveError::TooLarge(limits.max_unpacked_bytes)
    } else {
        ArchiveError::Corrupt(e.to_string())
    }
}

/// Walks the raw tar headers, refusing metadata records larger than any
/// real one before anything buffers them.
fn check_headers(bytes: &[u8], limits: Limits) -> Result<(), ArchiveError> {
    let mut r = stream(bytes, limits);
    let mut block = [0u8; 512];
    loop {
        match read_block(&mut r, &mut block) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(too_large_or_corrupt(e, limits)),
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&block);
        let size = header.entry_size().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let kind = header.entry_type();
        let metadata = if kind.is_gnu_longname() {
            Some("long name")
        } else if kind.is_gnu_longlink() {
            Some("long link")
        } else if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            Some("PAX header")
        } else {
            None
        };
        if let Some(kind) = metadata
            && size > MAX_METADATA
        {
            return Err(ArchiveError::MetadataTooLarge { kind, size, max: MAX_METADATA });
        }
        // Skip the data (PAX `size` overrides only matter past 8 GiB, which
        // the stream bound refuses anyway).
        // A base-256 size can be near u64::MAX: round up without overflowing
        // (found by the archive_check fuzz target).
        let padded = size
            .checked_next_multiple_of(512)
            .ok_or_else(|| ArchiveError::Corrupt(format!("an entry claims {size} bytes")))?;
        std::io::copy(&mut (&mut r).take(padded), &mut std::io::sink()).map_err(|e| too_large_or_corrupt(e, limits))?;
    }
}

/// Reads one 512-byte block; false at a clean end of stream.
fn read_block(r: &mut impl Read, block: &mut [u8; 512]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < block.len() {
        match r.read(&mut block[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated tar header")),
            n => got += n,
        }
    }
    Ok(true)
}

/// What an entry is, for link resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File,
    Dir,
    Symlink(String),
    HardLink(String),
}

/// `a/./b/` as `a/b`.
fn normalize(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A relative path's components, `..` kept as `..`, `.` dropped.
fn parts(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some("..".to_owned()),
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// Resolves `target` (a symlink's, relative to `dir`) through the archive's
/// own links, as the kernel would; `None` if it leads outside the root at
/// any step, or through too many links.
fn resolve(nodes: &BTreeMap<String, Node>, dir: &str, target: &str) -> Option<String> {
    if Path::new(target).is_absolute() {
        return None;
    }
    let mut at: Vec<String> = parts(dir);
    // Components still to walk, the next one last.
    let mut todo: Vec<String> = parts(target).into_iter().rev().collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            at.pop()?;
            continue;
        }
        at.push(part);
        if let Some(Node::Symlink(next)) = nodes.get(&at.join("/")) {
            hops += 1;
            if hops > MAX_LINK_HOPS || Path::new(next).is_absolute() {
                return None;
            }
            // The link's target replaces it, relative to its directory.
            at.pop();
            todo.extend(parts(next).into_iter().rev());
        }
    }
    Some(at.join("/"))
}

/// Checks the links of a complete archive: every symlink resolves inside
/// the root through any chain; hard links name files; nothing lies under a
/// link.
fn check_links(nodes: &BTreeMap<String, Node>) -> Result<(), ArchiveError> {
    for (path, node) in nodes {
        // No proper prefix of an entry's path may be a link.
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if matches!(nodes.get(&prefix), Some(Node::Symlink(_) | Node::HardLink(_))) {
                return Err(ArchiveError::ThroughLink { path: path.clone(), link: prefix.clone() });
            }
        }
        match node {
            Node::Symlink(target) => {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                if resolve(nodes, dir, target).is_none() {
                    return Err(ArchiveError::LinkEscapes { path: path.clone(), target: target.clone() });
                }
            }
            Node::HardLink(target) => {
                if nodes.get(&normalize(target)) != Some(&Node::File) {
                    return Err(ArchiveError::BadHardLink { path: path.clone(), target: target.clone() });
                }
            }
            Node::File | Node::Dir => {}
        }
    }
    Ok(())
}

/// Checks an archive; returns what it holds, or the first problem found.
pub fn check(bytes: &[u8], limits: Limits) -> Result<Summary, ArchiveError> {
    if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
        return Err(ArchiveError::NotGzip);
    }
    check_headers(bytes, limits)?;
    let mut archive = tar::Archive::new(stream(bytes, limits));
    let mut summary = Summary { entries: 0, unpacked_bytes: 0 };
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let entries = archive.entries().map_err(|e| too_large_or_corrupt(e, limits))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| too_large_or_corrupt(e, limits))?;
        summary.entries += 1;
        if summary.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let path_bytes = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&path_bytes).into_owned();
        check_relative(Path::new(&path), &path)?;
        let key = normalize(&path);

        let kind = entry.header().entry_type();
        let node = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                summary.unpacked_bytes = summary.unpacked_bytes.saturating_add(entry.size());
                if summary.unpacked_bytes > limits.max_unpacked_bytes {
                    return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
                }
                Some(Node::File)
            }
            EntryType::Directory => Some(Node::Dir),
            EntryType::Symlink => {
                let target = link_target(&mut entry)?;
                // A symlink's target is relative to the directory holding it.
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                if escapes(&base.join(&target)) || Path::new(&target).is_absolute() {
                    return Err(ArchiveError::LinkEscapes { path, target });
                }
                Some(Node::Symlink(target))
            }
            EntryType::Link => {
                // A hard link's target is relative to the archive root.
                let target = link_target(&mut entry)?;
                if escapes(Path::new(&target)) || Path::new(&target).is_absolute() {
                    return Err(ArchiveError::LinkEscapes { path, target });
                }
                Some(Node::HardLink(target))
            }
            // Metadata entries the tar crate folds into the next entry.
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => None,
            other => {
                return Err(ArchiveError::Unsupported { path, kind: format!("{other:?}").to_lowercase() });
            }
        };
        if let Some(node) = node {
            if key.is_empty() && node == Node::Dir {
                // `./`: the root itself.
            } else if !seen.insert(key.clone()) {
                return Err(ArchiveError::Duplicate(path));
            } else {
                nodes.insert(key, node);
            }
        }
        // Drain the entry so a damaged stream is noticed here, not at run time.
        std::io::copy(&mut entry.by_ref().take(u64::MAX), &mut std::io::sink())
            .map_err(|e| too_large_or_corrupt(e, limits))?;
    }
    if summary.entries == 0 {
        return Err(ArchiveError::Empty);
    }
    check_links(&nodes)?;
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

    #[test]
    fn link_chains_are_resolved_through_each_other() {
        // Each link alone looks inside; together they leave the root.
        let chain = build(&[
            ("a/", EntryType::Directory, b""),
            ("a/b", EntryType::Symlink, b".."),
            ("main.sh", EntryType::Symlink, b"a/b/../automation.db"),
        ]);
        let err = check(&chain, LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::LinkEscapes { ref path, .. } if path == "main.sh"), "{err}");
        // A loop is refused, not followed forever.
        let looped = build(&[("x", EntryType::Symlink, b"y"), ("y", EntryType::Symlink, b"x")]);
        assert!(matches!(check(&looped, LIMITS), Err(ArchiveError::LinkEscapes { .. })));
        // Links through links that stay inside are fine.
        let fine = build(&[
            ("d/", EntryType::Directory, b""),
            ("d/f", EntryType::Regular, b"x"),
            ("l1", EntryType::Symlink, b"d"),
            ("l2", EntryType::Symlink, b"l1/f"),
        ]);
        assert!(check(&fine, LIMITS).is_ok());
    }

    #[test]
    fn nothing_is_written_through_a_link_and_paths_are_unique() {
        let through = build(&[
            ("l", EntryType::Symlink, b"d"),
            ("d/", EntryType::Directory, b""),
            ("l/x", EntryType::Regular, b"x"),
        ]);
        assert!(matches!(check(&through, LIMITS), Err(ArchiveError::ThroughLink { .. })));
        let twice = build(&[("f", EntryType::Regular, b"1"), ("./f", EntryType::Regular, b"2")]);
        assert_eq!(check(&twice, LIMITS), Err(ArchiveError::Duplicate("./f".into())));
        let to_link =
            build(&[("l", EntryType::Symlink, b"f"), ("f", EntryType::Regular, b"x"), ("h", EntryType::Link, b"l")]);
        assert!(matches!(check(&to_link, LIMITS), Err(ArchiveError::BadHardLink { .. })));
    }

    #[test]
    fn a_long_name_bomb_is_refused_before_it_is_read() {
        // A GNU long-name record claiming 1 GiB: gzip makes it a few MB.
        let mut raw = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(1 << 30);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        use std::io::Write;
        gz.write_all(&raw).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let err = check(&bomb, LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::MetadataTooLarge { kind: "long name", .. }), "{err}");
        // And a plain gzip bomb stops at the stream bound.
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..3].copy_from_slice(b"big");
        h.set_entry_type(EntryType::Regular);
        h.set_size(64 << 20);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        assert_eq!(check(&gz.finish().unwrap(), LIMITS), Err(ArchiveError::TooLarge(1 << 20)));
    }

    /// Found by fuzzing: an entry whose (base-256) size is near u64::MAX
    /// overflowed the padding arithmetic (a panic in debug builds, a wrong
    /// skip in release ones). It is refused as corrupt.
    #[test]
    fn an_entry_size_near_u64_max_is_refused_not_overflowed() {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"a.txt");
        header.set_entry_type(EntryType::Regular);
        header.set_size(u64::MAX - 3);
        header.set_cksum();
        let mut tar_bytes = header.as_bytes().to_vec();
        tar_bytes.extend_from_slice(&[0u8; 1024]);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
        let err = check(&gz.finish().unwrap(), LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_) | ArchiveError::TooLarge(_)), "{err:?}");
    }

    /// Bounded property test (the fuzz target `archive_check` runs the same
    /// check unbounded): random bytes, and valid archives with their tar
    /// stream mutated before compression, never panic, and whatever passes
    /// is within the limits.
    #[test]
    fn property_mutated_archives_never_panic_and_stay_within_limits() {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_a4c1);
        let valid = build(&[
            ("bin/", EntryType::Directory, b""),
            ("bin/run.sh", EntryType::Regular, b"echo hi\n"),
            ("run", EntryType::Symlink, b"bin/run.sh"),
            ("data/x", EntryType::Regular, &[7u8; 3000]),
        ]);
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&valid[..]), &mut tar_bytes).unwrap();
        let limits = Limits { max_unpacked_bytes: 64 << 10, max_entries: 20 };
        for i in 0..400 {
            let bytes = if i % 4 == 0 {
                let mut b = vec![0u8; rng.random_range(0..4096)];
                rng.fill_bytes(&mut b);
                b
            } else {
                let mut t = tar_bytes.clone();
                for _ in 0..rng.random_range(1..16) {
                    let at = rng.random_range(0..t.len());
                    t[at] = rng.random();
                }
                if rng.random_bool(0.2) {
                    t.truncate(rng.random_range(0..t.len()));
                }
                let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
                std::io::Write::write_all(&mut gz, &t).unwrap();
                gz.finish().unwrap()
            };
            if let Ok(summary) = check(&bytes, limits) {
                assert!(summary.entries <= limits.max_entries && summary.unpacked_bytes <= limits.max_unpacked_bytes);
            }
        }
    }
}
