//! The bytes that travel to the agent-server: the tar.gz of a bundle's
//! rendered files, and `multipart/form-data` upload bodies.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// One rendered file of a bundle.
#[derive(Debug, Clone, Copy)]
pub struct FileEntry<'a> {
    /// Path relative to the bundle root.
    pub path: &'a str,
    /// Unix permission bits.
    pub mode: u32,
    /// The bytes.
    pub contents: &'a [u8],
}

/// Checks a bundle path: relative, no `..`, no empty or `.` components
/// beyond a leading `./`, no NUL.
pub fn check_path(path: &str) -> Result<&str, String> {
    let p = path.strip_prefix("./").unwrap_or(path);
    if p.is_empty() || p.starts_with('/') || p.contains('\0') || p.contains('\\') {
        return Err(format!("bundle file path {path:?} must be relative"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("bundle file path {path:?} must not contain empty, . or .. components"));
    }
    Ok(p)
}

/// A gzip-compressed tar of the files: regular files with their mode
/// (`0o644` when none is given), owner 0, modification time `mtime` (seconds
/// since the epoch). Later files with the same path win when unpacked.
pub fn files_tarball(files: &[FileEntry<'_>], mtime: u64) -> Result<Vec<u8>, String> {
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    for f in files {
        let path = check_path(f.path)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(f.contents.len() as u64);
        let mode = f.mode & 0o7777;
        header.set_mode(if mode == 0 { 0o644 } else { mode });
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path, f.contents)
            .map_err(|e| format!("cannot add {path:?} to the files archive: {e}"))?;
    }
    let gz = tar.into_inner().map_err(|e| format!("cannot finish the files archive: {e}"))?;
    gz.finish().map_err(|e| format!("cannot compress the files archive: {e}"))
}

/// A `multipart/form-data` body with one file field; returns the
/// `content-type` header value and the body. The boundary is chosen so that
/// it does not occur in the contents.
pub fn multipart(field: &str, filename: &str, contents: &[u8]) -> (String, Vec<u8>) {
    let mut n: u32 = 0;
    let boundary = loop {
        let b = format!("automation-agent-server-{n:08x}");
        if !contains(contents, b.as_bytes()) {
            break b;
        }
        n += 1;
    };
    let mut body = Vec::with_capacity(contents.len() + 256);
    let _ = write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    body.extend_from_slice(contents);
    let _ = write!(body, "\r\n--{boundary}--\r\n");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unpack(bytes: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                (e.path().unwrap().to_string_lossy().into_owned(), h.mode().unwrap(), h.mtime().unwrap(), data)
            })
            .collect()
    }

    #[test]
    fn files_become_a_tarball_with_modes() {
        let long = format!("{}/deep.txt", "d".repeat(150));
        let files = [
            FileEntry { path: "main.sh", mode: 0o755, contents: b"#!/bin/sh\necho hi\n" },
            FileEntry { path: "./conf/a.json", mode: 0o100644, contents: b"{}" },
            FileEntry { path: &long, mode: 0, contents: b"" },
        ];
        let bytes = files_tarball(&files, 1_700_000_000).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        let entries = unpack(&bytes);
        assert_eq!(entries[0], ("main.sh".to_owned(), 0o755, 1_700_000_000, b"#!/bin/sh\necho hi\n".to_vec()));
        assert_eq!(entries[1].0, "conf/a.json");
        assert_eq!(entries[1].1, 0o644);
        // Names over 100 bytes use the GNU long-name extension.
        assert_eq!(entries[2].0, long);
        assert_eq!(entries[2].1, 0o644);
        assert!(files_tarball(&[], 0).is_ok());
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "./", "a\\b"] {
            assert!(files_tarball(&[FileEntry { path: bad, mode: 0o644, contents: b"" }], 0).is_err(), "{bad:?}");
        }
        assert_eq!(check_path("./a/b").unwrap(), "a/b");
    }

    #[test]
    fn multipart_body_is_well_formed() {
        let (ct, body) = multipart("file", "bundle.tar.gz", b"DATA");
        assert_eq!(ct, "multipart/form-data; boundary=automation-agent-server-00000000");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "--automation-agent-server-00000000\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bundle.tar.gz\"\r\n\
             Content-Type: application/octet-stream\r\n\r\nDATA\r\n--automation-agent-server-00000000--\r\n"
        );
        // A boundary that occurs in the contents is not used.
        let (ct, _) = multipart("file", "x", b"..automation-agent-server-00000000..");
        assert!(ct.ends_with("automation-agent-server-00000001"));
    }
}
