//! Writing into a run's workspace without ever following a link.
//!
//! The host writes bundles into workspaces with its own privileges (root,
//! on some hosts), while the workspace's contents may come from a hostile
//! archive or from the run itself. Every path is therefore resolved from the
//! workspace's directory descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: a link anywhere on the way is an error, never a
//! detour, whatever the archive check let through.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// A directory written into only beneath itself.
pub(crate) struct Tree {
    root: OwnedFd,
}

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// The normal components of a relative path; `..`, `/` and the like are
/// refused (the callers validated already; this is the last word).
fn names(rel: &str) -> Result<Vec<&std::ffi::OsStr>, String> {
    let mut out = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(format!("{rel:?} must be a relative path inside the workspace")),
        }
    }
    Ok(out)
}

fn fail(rel: &str, what: &str, e: Errno) -> String {
    match e {
        Errno::ELOOP | Errno::EXDEV => format!("{rel}: cannot {what} through a link"),
        e => format!("{rel}: cannot {what}: {}", e.desc()),
    }
}

impl Tree {
    /// Opens `dir` (which must not itself be a link).
    pub(crate) fn open(dir: &Path) -> Result<Tree, String> {
        nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map(|root| Tree { root })
            .map_err(|e| format!("cannot open the workspace: {}", e.desc()))
    }

    /// The directory `parts` (made as needed, mode `mode`), as a descriptor.
    fn dir(&self, rel: &str, parts: &[&std::ffi::OsStr], mode: u32) -> Result<OwnedFd, String> {
        let mut at = self.root.as_fd().try_clone_to_owned().map_err(|e| format!("{rel}: {e}"))?;
        for name in parts {
            match nix::sys::stat::mkdirat(&at, *name, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(fail(rel, "make a directory", e)),
            }
            at = openat2(&at, *name, how(OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0))
                .map_err(|e| fail(rel, "enter a directory", e))?;
        }
        Ok(at)
    }

    /// Makes a directory and its parents.
    pub(crate) fn mkdir_all(&self, rel: &str, mode: u32) -> Result<(), String> {
        let parts = names(rel)?;
        self.dir(rel, &parts, mode & 0o777).map(drop)
    }

    /// Writes a file (replacing a file or a link of that name, never writing
    /// through one), mode `mode` without setuid, setgid or sticky bits.
    pub(crate) fn write_file(&self, rel: &str, mode: u32, mut data: impl Read) -> Result<(), String> {
        let parts = names(rel)?;
        let Some((name, parents)) = parts.split_last() else { return Err(format!("{rel:?} names no file")) };
        let dir = self.dir(rel, parents, 0o755)?;
        let open = || openat2(&dir, *name, how(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC, mode & 0o777));
        let fd = match open() {
            // A link of that name (say, from the archive): files written
            // later win, so the link goes, not what it points to.
            Err(Errno::ELOOP) => {
                nix::unistd::unlinkat(&dir, *name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| fail(rel, "replace a link", e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| fail(rel, "write", e))?;
        let mut file = std::fs::File::from(fd);
        std::io::copy(&mut data, &mut file).map_err(|e| format!("{rel}: {e}"))?;
        file.flush().map_err(|e| format!("{rel}: {e}"))?;
        // The umask may have taken bits the bundle asked for.
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode & 0o777)).map_err(|e| fail(rel, "chmod", e))
    }

    /// Makes a symbolic link (its target is not followed here).
    pub(crate) fn symlink(&self, rel: &str, target: &str) -> Result<(), String> {
        let parts = names(rel)?;
        let Some((name, parents)) = parts.split_last() else { return Err(format!("{rel:?} names no link")) };
        let dir = self.dir(rel, parents, 0o755)?;
        nix::unistd::symlinkat(target, &dir, *name).map_err(|e| fail(rel, "make a link", e))
    }

    /// Opens a file of the tree for reading (a hard link's source).
    pub(crate) fn read(&self, rel: &str) -> Result<std::fs::File, String> {
        names(rel)?;
        openat2(&self.root, rel, how(OFlag::O_RDONLY, 0)).map(std::fs::File::from).map_err(|e| fail(rel, "read", e))
    }
}

/// Unpacks a checked archive into `tree`: directories, files (modes without
/// special bits), symlinks as links, hard links as copies.
pub(crate) fn extract(bytes: &[u8], tree: &Tree) -> Result<(), String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive.entries().map_err(|e| format!("cannot read the bundle: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot read the bundle: {e}"))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mode = entry.header().mode().unwrap_or(0o644);
        match entry.header().entry_type() {
            tar::EntryType::Directory => tree.mkdir_all(&path, mode | 0o700)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                tree.write_file(&path, mode, &mut entry)?
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                tree.symlink(&path, &target.ok_or_else(|| format!("{path}: a link without a target"))?)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                let source = tree.read(&target.ok_or_else(|| format!("{path}: a link without a target"))?)?;
                tree.write_file(&path, mode, source)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_follow_links_and_strip_special_bits() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let ws = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, ws.path().join("main.sh")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("dir")).unwrap();
        let tree = Tree::open(ws.path()).unwrap();
        // A file named like a link replaces the link, not its target.
        tree.write_file("main.sh", 0o4755, &b"echo hi\n"[..]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(ws.path().join("main.sh")).unwrap(), "echo hi\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(ws.path().join("main.sh")).unwrap().permissions().mode() & 0o7777, 0o755);
        // Nothing is written through a linked directory.
        // (A link where a directory is wanted reads as "not a directory".)
        let err = tree.write_file("dir/planted", 0o644, &b"x"[..]).unwrap_err();
        assert!(err.contains("through a link") || err.contains("Not a directory"), "{err}");
        assert!(!outside.path().join("planted").exists());
        assert!(tree.write_file("../x", 0o644, &b"x"[..]).is_err());
        assert!(tree.read("main.sh").is_ok());
    }
}
