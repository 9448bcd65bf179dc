//! `piimg netboot check`: walks a netboot tree in the order a Pi's boot ROM, bootloader and
//! firmware fetch files (../shared/notes/raspberry-pi-boot.md), follows config.txt and
//! cmdline.txt to the kernel, device tree, initramfs and root image they name, and stops at the
//! first file the Pi would not find: what a tcpdump of a failing boot would have shown.

use super::tree::{read_records, NodeRecord, TreeError};
use piimg_agent::node::{Board, Role};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{0}: no netboot tree here (no .piimg records); name a folder with --serial or --mac and --board")]
    NoRecords(String),
    #[error("folder `{0}` has no record in this tree: say which board reads it with --board")]
    UnknownBoard(String),
    #[error("a Zero 2 W cannot boot from the network (no Ethernet)")]
    NoNetboot,
    #[error("{0}: {1}")]
    Read(String, #[source] std::io::Error),
}

/// One file the Pi asks for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Path relative to the tree, as the TFTP or HTTP request names it.
    pub path: String,
    pub found: bool,
    /// A miss the boot survives (the ROM probes for it).
    pub optional: bool,
    /// Who asks for it.
    pub by: &'static str,
}

/// What one node's boot would fetch, up to the first required file missing.
#[derive(Debug, Clone)]
pub struct Walk {
    pub folder: String,
    pub board: Board,
    pub node: Option<String>,
    pub fetches: Vec<Fetch>,
    pub warnings: Vec<String>,
}

impl Walk {
    /// The first required file that is not there.
    pub fn missing(&self) -> Option<&Fetch> {
        self.fetches.iter().find(|f| !f.found && !f.optional)
    }
}

/// Walks each node of the tree at `dir`, or only `folder` (a serial or MAC folder name).
pub fn check(
    dir: &Path,
    folder: Option<&str>,
    board: Option<Board>,
) -> Result<Vec<Walk>, CheckError> {
    let records = read_records(dir)?;
    let targets: Vec<(String, Board, Option<&NodeRecord>)> = match folder {
        Some(f) => {
            let rec = records.values().find(|r| r.folder == f);
            let b = board
                .or(rec.map(|r| r.board))
                .ok_or_else(|| CheckError::UnknownBoard(f.to_string()))?;
            vec![(f.to_string(), b, rec)]
        }
        None if records.is_empty() => return Err(CheckError::NoRecords(dir.display().to_string())),
        None => records
            .values()
            .map(|r| (r.folder.clone(), board.unwrap_or(r.board), Some(r)))
            .collect(),
    };
    targets
        .into_iter()
        .map(|(f, b, rec)| walk(dir, &f, b, rec))
        .collect()
}

/// One node's boot, file by file.
fn walk(
    dir: &Path,
    folder: &str,
    board: Board,
    rec: Option<&NodeRecord>,
) -> Result<Walk, CheckError> {
    let mut w = Walk {
        folder: folder.to_string(),
        board,
        node: rec.map(|r| r.node.clone()),
        fetches: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(r) = rec.filter(|r| r.secrets_served) {
        w.warnings.push(format!(
            "{folder}/{} holds node {}'s secrets (join token, certificate key{}): anyone on the LAN can fetch them over TFTP or HTTP (profile: netboot.secrets = \"serve\")",
            r.root,
            r.node,
            if r.role == Role::ControlPlane { ", cluster CA keys" } else { "" },
        ));
    }
    let exists = |p: &str| dir.join(p).is_file();
    let ask = |w: &mut Walk, path: String, optional: bool, by: &'static str| -> bool {
        let found = exists(&path);
        w.fetches.push(Fetch {
            path,
            found,
            optional,
            by,
        });
        found || optional
    };
    let (firmware, fixup, rom): (&str, &str, &'static str) = match board {
        Board::Zero2w => return Err(CheckError::NoNetboot),
        Board::Rpi3b | Board::Rpi3bplus => ("start.elf", "fixup.dat", "boot ROM"),
        Board::Rpi4b | Board::Cm4 => ("start4.elf", "fixup4.dat", "EEPROM bootloader"),
    };
    // The Pi 3 ROM runs bootcode.bin from the top before it looks in any folder.
    if matches!(board, Board::Rpi3b | Board::Rpi3bplus) {
        if !ask(&mut w, "bootcode.bin".into(), false, rom) {
            return Ok(w);
        }
        ask(&mut w, "bootsig.bin".into(), true, rom);
    }
    // The folder is used only when the firmware is found in it; otherwise the top is.
    let prefixed = format!("{folder}/{firmware}");
    let prefix = if exists(&prefixed) {
        format!("{folder}/")
    } else {
        ask(&mut w, prefixed, true, rom);
        if matches!(board, Board::Rpi4b | Board::Cm4) && exists(&format!("{folder}/start.elf")) {
            format!("{folder}/")
        } else {
            String::new()
        }
    };
    if prefix.is_empty() {
        w.warnings.push(format!(
            "no {firmware} in {folder}/: the {rom} falls back to the top of the tree"
        ));
    }
    // Then, as tcpdumps of both boards show: config.txt, the recovery probes, the firmware.
    if !ask(&mut w, format!("{prefix}config.txt"), false, rom) {
        return Ok(w);
    }
    let recovery: &[&str] = match board {
        Board::Rpi4b | Board::Cm4 => &["recover4.elf", "recovery.elf"],
        _ => &["recovery.elf"],
    };
    for r in recovery {
        ask(&mut w, format!("{prefix}{r}"), true, rom);
    }
    for name in [firmware, fixup] {
        if !ask(&mut w, format!("{prefix}{name}"), false, rom) {
            return Ok(w);
        }
    }
    let config = read(dir, &format!("{prefix}config.txt"))?;
    let named = crate::qemu::parse_config_txt_for(&config, board);
    for (name, by) in [
        (Some(named.device_tree.as_str()), "firmware (device_tree=)"),
        (Some(named.cmdline_file.as_str()), "firmware"),
        (Some(named.kernel.as_str()), "firmware (kernel=)"),
        (named.initramfs.as_deref(), "firmware (initramfs)"),
    ] {
        let Some(name) = name else { continue };
        if !ask(&mut w, format!("{prefix}{name}"), false, by) {
            return Ok(w);
        }
    }
    let cmdline = read(dir, &format!("{prefix}{}", named.cmdline_file))?;
    match root_path(&cmdline) {
        Some(p) => {
            ask(&mut w, p, false, "initramfs (piimg.root= over HTTP)");
        }
        None => w.warnings.push(format!(
            "{prefix}{} names no piimg.root=: not a piimg netboot node",
            named.cmdline_file
        )),
    }
    stale_files(dir, rec, &mut w);
    Ok(w)
}

/// Files that are not the bytes the node was built with: each is a hard link to the store
/// object named by its sha256, so a different inode means another build replaced it (e.g. a
/// Pi 3 built from other firmware took over the shared bootcode.bin).
fn stale_files(dir: &Path, rec: Option<&NodeRecord>, w: &mut Walk) {
    use std::os::unix::fs::MetadataExt;
    let Some(r) = rec else { return };
    let ino = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let recorded = r
        .files
        .iter()
        .map(|(n, sha)| (format!("{}/{n}", r.folder), sha))
        .chain(r.top.iter().map(|(n, sha)| (n.clone(), sha)));
    for (path, sha) in recorded {
        let here = ino(&dir.join(&path));
        if here.is_some() && here != ino(&dir.join(super::tree::STORE).join(sha)) {
            w.warnings.push(format!(
                "{path} is not the file node {} was built with (replaced by another build?): rebuild {}",
                r.node, r.node
            ));
        }
    }
}

fn read(dir: &Path, rel: &str) -> Result<String, CheckError> {
    std::fs::read(dir.join(rel))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| CheckError::Read(dir.join(rel).display().to_string(), e))
}

/// The tree path of `piimg.root=http://HOST:PORT/PATH` (HTTP serves the same folder).
fn root_path(cmdline: &str) -> Option<String> {
    let url = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("piimg.root="))
        .next_back()?;
    let rest = url.strip_prefix("http://")?;
    let (_, path) = rest.split_once('/')?;
    Some(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_path_comes_from_piimg_root() {
        assert_eq!(
            root_path(
                "console=ttyAMA0 piimg.root=http://10.0.2.2:8080/9ffefdef/root.squashfs panic=10"
            )
            .as_deref(),
            Some("9ffefdef/root.squashfs")
        );
        assert_eq!(root_path("root=PARTUUID=x"), None);
    }

    /// A Pi 4 tree written by hand: complete, then with each file removed in turn.
    #[test]
    fn the_first_missing_file_in_fetch_order_is_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("9ffefdef");
        std::fs::create_dir(&f).unwrap();
        let files = [
            "config.txt",
            "start4.elf",
            "fixup4.dat",
            "b.dtb",
            "cmdline.txt",
            "kernel8.img",
            "initramfs8",
            "root.squashfs",
        ];
        for n in files {
            std::fs::write(f.join(n), n).unwrap();
        }
        std::fs::write(
            f.join("config.txt"),
            "kernel=kernel8.img\ninitramfs initramfs8 followkernel\ndevice_tree=b.dtb\n",
        )
        .unwrap();
        std::fs::write(
            f.join("cmdline.txt"),
            "piimg.root=http://10.0.2.2:8080/9ffefdef/root.squashfs\n",
        )
        .unwrap();
        let w = &check(d.path(), Some("9ffefdef"), Some(Board::Rpi4b)).unwrap()[0];
        assert_eq!(w.missing(), None, "{w:?}");
        // Every file, and the two recovery probes the bootloader makes after config.txt.
        assert_eq!(w.fetches.len(), files.len() + 2);
        assert!(w.fetches[1].path.ends_with("recover4.elf") && w.fetches[1].optional);
        // start4.elf decides the folder; its absence is the case below.
        for n in files.iter().filter(|n| **n != "start4.elf") {
            let saved = std::fs::read(f.join(n)).unwrap();
            std::fs::remove_file(f.join(n)).unwrap();
            let w = &check(d.path(), Some("9ffefdef"), Some(Board::Rpi4b)).unwrap()[0];
            assert_eq!(
                w.missing().map(|m| m.path.as_str()),
                Some(format!("9ffefdef/{n}").as_str())
            );
            std::fs::write(f.join(n), saved).unwrap();
        }
        // Without start4.elf in the folder the bootloader reads the top, where nothing is.
        std::fs::remove_file(f.join("start4.elf")).unwrap();
        let w = &check(d.path(), Some("9ffefdef"), Some(Board::Rpi4b)).unwrap()[0];
        assert_eq!(w.missing().map(|m| m.path.as_str()), Some("config.txt"));
    }
}
