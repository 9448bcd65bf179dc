//! The one rule for which files `piimg serve` hands out, shared by its TFTP and HTTP servers so
//! that neither can serve what the other refuses.
//!
//! Names are taken relative to the served folder: a leading `/` is dropped (the Pi ROM sends
//! `bootcode.bin` or `SERIAL/start4.elf`; clients that send `/name` mean the same file, as with
//! tftp-hpa's `-s`). `..` is refused, and so is any name whose real path (symlinks resolved)
//! lies outside the folder, and anything but a regular file (a folder, a FIFO or a device would
//! list, block or never end). Hidden names (a component starting with `.`) are refused: a netboot
//! tree keeps its store, records and staged files there.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Why a name is not served. The text goes to the client too, so it names no server path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no such file")]
    NotFound,
    #[error("{0}")]
    Denied(String),
}

/// The real path of a requested name inside `root` (itself canonical).
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, Refused> {
    let relative = Path::new(name.trim_start_matches('/'));
    for part in relative.components() {
        match part {
            // piimg's own bookkeeping (.store, .piimg, .tmp-*, staged .partial files) and
            // anything else hidden is not for clients.
            Component::Normal(p) if p.as_encoded_bytes().starts_with(b".") => {
                return Err(Refused::Denied("hidden names are not served".into()))
            }
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(Refused::Denied("`..` leaves the served folder".into())),
        }
    }
    let real = root
        .join(relative)
        .canonicalize()
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Refused::Denied(e.to_string()),
            _ => Refused::NotFound,
        })?;
    if !real.starts_with(root) {
        return Err(Refused::Denied("it leads outside the served folder".into()));
    }
    Ok(real)
}

/// Opens a requested name for reading, with its length. The resolved path is opened without
/// following a symlink, so none can have been swapped in since it was checked.
pub fn open(root: &Path, name: &str) -> Result<(File, u64), Refused> {
    let real = resolve(root, name)?;
    let denied = |e: io::Error| Refused::Denied(e.to_string());
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(denied)?;
    let meta = file.metadata().map_err(denied)?;
    if !meta.is_file() {
        return Err(Refused::Denied("not a regular file".into()));
    }
    Ok((file, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_served_folder() {
        // No hidden component in the folder's own path: the absolute name below must be refused
        // for being taken relative (not found), not for being hidden.
        let t = tempfile::Builder::new().prefix("files-").tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"x").unwrap();
        std::fs::write(t.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("in")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "sub/f").unwrap(), root.join("sub/f"));
        assert_eq!(resolve(&root, "/sub/f").unwrap(), root.join("sub/f"));
        assert_eq!(resolve(&root, "in").unwrap(), root.join("sub/f"));
        std::fs::create_dir_all(root.join(".store")).unwrap();
        std::fs::write(root.join(".store/x"), b"x").unwrap();
        for hidden in [".store/x", "/.store/x", "sub/.f"] {
            assert!(
                matches!(resolve(&root, hidden), Err(Refused::Denied(_))),
                "{hidden}"
            );
        }
        let denied = |name| matches!(resolve(&root, name), Err(Refused::Denied(_)));
        assert!(denied("../secret"));
        assert!(denied("sub/../../secret"));
        assert!(denied("out"));
        assert_eq!(resolve(&root, "missing"), Err(Refused::NotFound));
        let abs = t.path().join("secret").display().to_string();
        assert_eq!(resolve(&root, &abs), Err(Refused::NotFound));
    }

    #[test]
    fn only_regular_files_open() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("f"), b"abc").unwrap();
        assert_eq!(open(&root, "f").unwrap().1, 3);
        for name in ["sub", "/", ""] {
            assert!(
                matches!(open(&root, name), Err(Refused::Denied(_))),
                "{name:?}"
            );
        }
    }
}
