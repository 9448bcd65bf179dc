//! The netboot tree `piimg serve` serves: one folder per node, named the way the Pi bootloader
//! asks for it (serial or MAC), plus what every Pi 3 ROM fetches from the top (bootcode.bin).
//! Several builds merge their nodes into one tree; a file's bytes are stored once under
//! `.store/<sha256>` and hard-linked into each folder, so common firmware and kernels cost
//! nothing per node and any TFTP server (ours, tftp-hpa, dnsmasq) serves the folders as plain
//! files. A node's folder is replaced whole (an exchange of two directories), so a Pi booting
//! meanwhile sees the old set or the new one, never a mix.

use crate::tree::FileData;
use piimg_agent::node::{Board, Role};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File contents by sha256, hard-linked into the node folders.
pub const STORE: &str = ".store";
/// One record per node: what its folder holds and whether it serves secrets.
pub const RECORDS: &str = ".piimg";

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("netboot folder `{folder}` belongs to node {other} (see {record}); give {node} its own netboot.serial or netboot.mac")]
    FolderTaken {
        folder: String,
        node: String,
        other: String,
        record: PathBuf,
    },
}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |e| TreeError::Io(p.to_path_buf(), e)
}

/// What `.piimg/<node>.json` says of a node's folder; `piimg netboot check` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: String,
    pub board: Board,
    pub role: Role,
    /// The folder, relative to the tree (`9ffefdef` or `dc-a6-32-01-36-c2`).
    pub folder: String,
    /// Every file of the folder by name, with its sha256.
    pub files: BTreeMap<String, String>,
    /// Files at the top of the tree this node's boot ROM reads, with their sha256.
    pub top: BTreeMap<String, String>,
    /// The root image's name in the folder (fetched over HTTP by the initramfs).
    pub root: String,
    /// The root image holds the node's secrets (profile `netboot.secrets = "serve"`).
    pub secrets_served: bool,
}

/// One file to place: its name, content, and whether only the owner may read it on this host.
pub struct Placed {
    pub name: String,
    pub data: FileData,
    pub private: bool,
}

/// A node's contribution to the tree.
pub struct NodeFiles {
    pub node: String,
    pub board: Board,
    pub role: Role,
    pub folder: String,
    pub root: String,
    pub secrets_served: bool,
    /// Into the node's folder.
    pub files: Vec<Placed>,
    /// Into the top of the tree (shared by every node that needs them).
    pub top: Vec<Placed>,
}

/// Merges `node` into the tree at `dir` and returns its record. Concurrent merges into one tree
/// take turns on a lock file.
pub fn merge(dir: &Path, node: NodeFiles) -> Result<NodeRecord, TreeError> {
    let records = dir.join(RECORDS);
    std::fs::create_dir_all(&records).map_err(io_at(&records))?;
    let lock_path = records.join("lock");
    let _lock = crate::components::cache::lock_file(&lock_path)
        .map_err(|e| TreeError::Io(lock_path.clone(), io::Error::other(e.to_string())))?;
    let previous = read_records(dir)?;
    if let Some(other) = previous
        .values()
        .find(|r| r.folder == node.folder && r.node != node.node)
    {
        return Err(TreeError::FolderTaken {
            folder: node.folder.clone(),
            node: node.node.clone(),
            other: other.node.clone(),
            record: records.join(format!("{}.json", other.node)),
        });
    }
    let store = dir.join(STORE);
    std::fs::create_dir_all(&store).map_err(io_at(&store))?;
    let mut files = BTreeMap::new();
    let tmp = TempFolder::create(dir.join(format!(".tmp-{}", node.folder)))?;
    for p in &node.files {
        let (sha, object) = store_object(&store, p)?;
        let at = tmp.0.join(&p.name);
        std::fs::hard_link(&object, &at).map_err(io_at(&at))?;
        files.insert(p.name.clone(), sha);
    }
    sync_dir(&store)?;
    sync_dir(&tmp.0)?;
    install_folder(dir, &tmp.0, &node.folder)?;
    let mut top = BTreeMap::new();
    for p in &node.top {
        let (sha, object) = store_object(&store, p)?;
        replace_link(dir, &object, &p.name)?;
        top.insert(p.name.clone(), sha);
    }
    let record = NodeRecord {
        node: node.node,
        board: node.board,
        role: node.role,
        folder: node.folder,
        files,
        top,
        root: node.root,
        secrets_served: node.secrets_served,
    };
    write_record(&records, &record)?;
    // The node's folder moved (a new serial): the old one would boot a stale node.
    if let Some(old) = previous.get(&record.node) {
        if old.folder != record.folder {
            remove_dir_if_present(&dir.join(&old.folder))?;
        }
    }
    prune_store(&store)?;
    sync_dir(dir)?;
    Ok(record)
}

/// A folder being filled; removed with whatever it holds unless it was installed (renamed away).
struct TempFolder(PathBuf);

impl TempFolder {
    fn create(path: PathBuf) -> Result<TempFolder, TreeError> {
        remove_dir_if_present(&path)?;
        std::fs::create_dir(&path).map_err(io_at(&path))?;
        Ok(TempFolder(path))
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every node record in the tree, by node name.
pub fn read_records(dir: &Path) -> Result<BTreeMap<String, NodeRecord>, TreeError> {
    let records = dir.join(RECORDS);
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(&records) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TreeError::Io(records, e)),
    };
    for e in rd {
        let path = e.map_err(io_at(&records))?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read(&path).map_err(io_at(&path))?;
        let r: NodeRecord = serde_json::from_slice(&text).map_err(|source| TreeError::Record {
            path: path.clone(),
            source,
        })?;
        out.insert(r.node.clone(), r);
    }
    Ok(out)
}

/// Streams `p` into the store under its sha256 (kept when already there) and returns both.
fn store_object(store: &Path, p: &Placed) -> Result<(String, PathBuf), TreeError> {
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(store)
        .map_err(io_at(store))?;
    let mut hasher = Sha256::new();
    let mut src = p
        .data
        .open()
        .map_err(|e| TreeError::Io(PathBuf::from(&p.name), e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| TreeError::Io(PathBuf::from(&p.name), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        temp.write_all(&buf[..n]).map_err(io_at(temp.path()))?;
    }
    let sha = hex::encode(hasher.finalize());
    let object = store.join(&sha);
    let mode = if p.private { 0o600 } else { 0o644 };
    if object.exists() {
        // Same bytes; the stricter mode wins, since folders share the object.
        let m = std::fs::metadata(&object).map_err(io_at(&object))?;
        if p.private && m.permissions().mode() & 0o077 != 0 {
            set_mode(&object, 0o600)?;
        }
        return Ok((sha, object));
    }
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_at(temp.path()))?;
    temp.as_file().sync_all().map_err(io_at(temp.path()))?;
    temp.persist(&object)
        .map_err(|e| TreeError::Io(object.clone(), e.error))?;
    Ok((sha, object))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), TreeError> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io_at(p))
}

/// Puts the complete folder `tmp` at `dir/name`: an atomic exchange when one is there already.
fn install_folder(dir: &Path, tmp: &Path, name: &str) -> Result<(), TreeError> {
    let dest = dir.join(name);
    if !dest.exists() {
        return std::fs::rename(tmp, &dest).map_err(io_at(&dest));
    }
    exchange(tmp, &dest)?;
    // `tmp` now holds the old folder.
    remove_dir_if_present(tmp)
}

/// renameat2(RENAME_EXCHANGE): both names stay valid throughout.
fn exchange(a: &Path, b: &Path) -> Result<(), TreeError> {
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|e| TreeError::Io(a.to_path_buf(), io::Error::other(e)))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|e| TreeError::Io(b.to_path_buf(), io::Error::other(e)))?;
    // SAFETY: both are valid NUL-terminated paths for the duration of the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(TreeError::Io(b.to_path_buf(), io::Error::last_os_error()));
    }
    Ok(())
}

/// `dir/name` becomes a link to `object`, replaced by a rename so it is never missing.
fn replace_link(dir: &Path, object: &Path, name: &str) -> Result<(), TreeError> {
    let dest = dir.join(name);
    if let (Ok(a), Ok(b)) = (std::fs::metadata(&dest), std::fs::metadata(object)) {
        if a.ino() == b.ino() && a.dev() == b.dev() {
            return Ok(());
        }
    }
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(object, &tmp).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_at(&dest))
}

/// Objects no folder links any more.
fn prune_store(store: &Path) -> Result<(), TreeError> {
    for e in std::fs::read_dir(store).map_err(io_at(store))? {
        let e = e.map_err(io_at(store))?;
        let p = e.path();
        let stale_temp = e.file_name().as_bytes().starts_with(b".tmp-");
        let m = e.metadata().map_err(io_at(&p))?;
        if stale_temp || m.nlink() == 1 {
            std::fs::remove_file(&p).map_err(io_at(&p))?;
        }
    }
    Ok(())
}

fn write_record(records: &Path, r: &NodeRecord) -> Result<(), TreeError> {
    let path = records.join(format!("{}.json", r.node));
    let mut text = serde_json::to_vec_pretty(r).map_err(|source| TreeError::Record {
        path: path.clone(),
        source,
    })?;
    text.push(b'\n');
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(records)
        .map_err(io_at(records))?;
    temp.write_all(&text).map_err(io_at(&path))?;
    temp.as_file().sync_all().map_err(io_at(&path))?;
    temp.persist(&path)
        .map_err(|e| TreeError::Io(path.clone(), e.error))?;
    Ok(())
}

fn remove_dir_if_present(p: &Path) -> Result<(), TreeError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(TreeError::Io(p.to_path_buf(), e)),
        _ => Ok(()),
    }
}

fn sync_dir(p: &Path) -> Result<(), TreeError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_at(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(name: &str, bytes: &[u8]) -> Placed {
        Placed {
            name: name.into(),
            data: FileData::from_bytes(bytes.to_vec()),
            private: false,
        }
    }

    fn node(name: &str, folder: &str, kernel: &[u8]) -> NodeFiles {
        NodeFiles {
            node: name.into(),
            board: Board::Rpi3b,
            role: Role::Worker,
            folder: folder.into(),
            root: "root.squashfs".into(),
            secrets_served: false,
            files: vec![
                placed("start.elf", b"firmware"),
                placed("kernel8.img", kernel),
                placed("root.squashfs", name.as_bytes()),
            ],
            top: vec![placed("bootcode.bin", b"bootcode")],
        }
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn common_files_are_stored_once_and_each_node_has_its_folder() {
        let d = tempfile::tempdir().unwrap();
        merge(d.path(), node("w1", "10000001", b"kernel")).unwrap();
        merge(d.path(), node("w2", "10000002", b"kernel")).unwrap();
        let t = d.path();
        assert_eq!(
            ino(&t.join("10000001/start.elf")),
            ino(&t.join("10000002/start.elf"))
        );
        assert_eq!(
            ino(&t.join("10000001/kernel8.img")),
            ino(&t.join("10000002/kernel8.img"))
        );
        assert_ne!(
            ino(&t.join("10000001/root.squashfs")),
            ino(&t.join("10000002/root.squashfs"))
        );
        assert_eq!(
            std::fs::read(t.join("10000002/root.squashfs")).unwrap(),
            b"w2"
        );
        assert_eq!(std::fs::read(t.join("bootcode.bin")).unwrap(), b"bootcode");
        // start.elf, kernel, bootcode and two roots.
        assert_eq!(std::fs::read_dir(t.join(STORE)).unwrap().count(), 5);
        assert_eq!(read_records(t).unwrap().len(), 2);
    }

    #[test]
    fn a_rebuild_replaces_the_folder_and_drops_what_nothing_links() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        merge(t, node("w1", "10000001", b"old kernel")).unwrap();
        let r = merge(t, node("w1", "10000001", b"new kernel")).unwrap();
        assert_eq!(
            std::fs::read(t.join("10000001/kernel8.img")).unwrap(),
            b"new kernel"
        );
        assert_eq!(
            r.files["kernel8.img"],
            hex::encode(Sha256::digest(b"new kernel"))
        );
        assert_eq!(std::fs::read_dir(t.join(STORE)).unwrap().count(), 4);
        // A new serial moves the node: the old folder goes.
        merge(t, node("w1", "10000009", b"new kernel")).unwrap();
        assert!(!t.join("10000001").exists());
        assert!(t.join("10000009/kernel8.img").exists());
        let leftovers: Vec<_> = std::fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_folder_of_another_node_is_refused() {
        let d = tempfile::tempdir().unwrap();
        merge(d.path(), node("w1", "10000001", b"k")).unwrap();
        let e = merge(d.path(), node("w2", "10000001", b"k")).unwrap_err();
        assert!(e.to_string().contains("belongs to node w1"), "{e}");
    }

    #[test]
    fn private_files_are_owner_only_on_the_host() {
        let d = tempfile::tempdir().unwrap();
        let mut n = node("w1", "10000001", b"k");
        n.files[2].private = true;
        merge(d.path(), n).unwrap();
        let m = std::fs::metadata(d.path().join("10000001/root.squashfs")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
