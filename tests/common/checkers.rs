//! Tools piimg did not write (e2fsck, fsck.vfat, sfdisk, debugfs, dpkg-deb, sha256sum, ...), run
//! the way the tests read them. A missing tool fails the test, never skips it: CI installs them
//! all (scripts/test.sh). The helpers are `#[track_caller]`, so a failure points at the test line.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

/// One finished tool run.
pub struct ToolRun {
    cmd: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ToolRun {
    fn new(cmd: &Command, o: Output) -> ToolRun {
        ToolRun {
            cmd: format!("{cmd:?}"),
            status: o.status,
            stdout: o.stdout,
            stderr: o.stderr,
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout then stderr, as one text.
    pub fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    /// The whole run, for a failure message.
    pub fn show(&self) -> String {
        format!(
            "{}: {}\n--- stdout\n{}--- stderr\n{}",
            self.cmd,
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }

    /// Fails the test, showing the run, unless the tool exited 0.
    #[track_caller]
    pub fn assert_ok(self) -> ToolRun {
        assert!(self.success(), "{}", self.show());
        self
    }
}

#[track_caller]
fn missing(cmd: &Command, e: std::io::Error) -> ! {
    panic!(
        "cannot run {:?} ({e}); the tests need it installed",
        cmd.get_program()
    )
}

/// Runs a tool, whatever its exit.
#[track_caller]
pub fn tool(cmd: &mut Command) -> ToolRun {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => ToolRun::new(cmd, o),
        Err(e) => missing(cmd, e),
    }
}

/// Runs a tool with `input` on its stdin, whatever its exit.
#[track_caller]
pub fn tool_stdin(cmd: &mut Command, input: &[u8]) -> ToolRun {
    let input = input.to_vec();
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => missing(cmd, e),
    };
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // A tool may stop reading early (cpio -i of one member): that is not an error here.
        let _ = stdin.write_all(&input);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    ToolRun::new(cmd, o)
}

/// Runs a tool that must exit 0; returns its stdout and stderr together.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    tool(cmd).assert_ok().text()
}

/// Runs a tool that must exit 0; returns its stdout.
#[track_caller]
pub fn stdout_of(cmd: &mut Command) -> Vec<u8> {
    tool(cmd).assert_ok().stdout
}

/// Runs a tool that must exit 0; returns its stdout as text.
#[track_caller]
pub fn text_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&stdout_of(cmd)).into_owned()
}

/// Runs a tool that must exit 0 with `input` on its stdin; returns its stdout.
#[track_caller]
pub fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    tool_stdin(cmd, input).assert_ok().stdout
}

/// `e2fsck -fn`: the ext4 filesystem (an image file or a device) must be clean.
#[track_caller]
pub fn e2fsck(fs: impl AsRef<OsStr>) -> String {
    run(Command::new("e2fsck").arg("-fn").arg(fs))
}

/// `fsck.vfat -n`: the FAT filesystem (an image file or a device) must be clean.
#[track_caller]
pub fn fsck_vfat(fs: impl AsRef<OsStr>) -> String {
    run(Command::new("fsck.vfat").arg("-n").arg(fs))
}

/// `debugfs -R REQUEST`: what it printed (stdout and stderr, where it says "File not found").
#[track_caller]
pub fn debugfs(fs: &Path, request: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(request).arg(fs))
}

/// `sfdisk --json` of a disk image or device.
#[track_caller]
pub fn sfdisk_json(disk: impl AsRef<OsStr>) -> serde_json::Value {
    let out = stdout_of(Command::new("sfdisk").arg("--json").arg(disk));
    serde_json::from_slice(&out).unwrap()
}

/// (start, size) in bytes of every partition of an `sfdisk --json` table.
pub fn spans(table: &serde_json::Value) -> Vec<(u64, u64)> {
    let t = &table["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect()
}

/// (start, size) in bytes of every partition of a disk image or device, as sfdisk reads them.
#[track_caller]
pub fn partitions(disk: impl AsRef<OsStr>) -> Vec<(u64, u64)> {
    spans(&sfdisk_json(disk))
}

/// Copies `size` bytes at `start` of `img` to `dest` with dd, holes kept (e2fsck, debugfs and
/// fsck.vfat take no offset).
#[track_caller]
pub fn extract(img: &Path, start: u64, size: u64, dest: &Path) {
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", dest.display()))
        .arg(format!("skip={start}"))
        .arg(format!("count={size}"))
        .args([
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ]));
    assert_eq!(
        std::fs::metadata(dest).unwrap().len(),
        size,
        "{}",
        dest.display()
    );
}

/// Every file of a FAT filesystem (`IMG` or `IMG@@OFFSET`), copied out with `mcopy -s` into
/// `dest`: relative path -> content.
#[track_caller]
pub fn fat_files(spec: &str, dest: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dest).unwrap();
    run(Command::new("mcopy")
        .args(["-s", "-n", "-m", "-i", spec, "::/"])
        .arg(dest));
    let mut found = BTreeMap::new();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dest)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    found
}

/// The sha256 `sha256sum` prints for a file or device.
#[track_caller]
pub fn sha256sum(path: impl AsRef<OsStr>) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The data tar of a .deb, as dpkg-deb reads it.
#[track_caller]
pub fn deb_tar(deb: &Path) -> Vec<u8> {
    stdout_of(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb))
}

/// One member (`./usr/bin/busybox`) of a .deb, read with dpkg-deb and tar.
#[track_caller]
pub fn deb_member(deb: &Path, member: &str) -> Vec<u8> {
    pipe(
        Command::new("tar").args(["-xOf", "-", member]),
        &deb_tar(deb),
    )
}

/// Unpacks a .deb's files into `dir` with dpkg-deb and tar.
#[track_caller]
pub fn deb_unpack(deb: &Path, dir: &Path) {
    pipe(
        Command::new("tar").arg("-x").arg("-C").arg(dir),
        &deb_tar(deb),
    );
}

/// The target of a symlink in the ext4 image (debugfs stat's "Fast link dest"), None for others.
pub fn ext4_readlink(fs: &Path, path: &str) -> Option<String> {
    let st = debugfs(fs, &format!("stat \"{path}\""));
    let rest = st.split("Fast link dest: \"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// `path` with every final symlink followed (debugfs follows those of the folders on the way).
pub fn ext4_resolve(fs: &Path, path: &str) -> String {
    let mut p = path.to_string();
    for _ in 0..8 {
        match ext4_readlink(fs, &p) {
            Some(t) if t.starts_with('/') => p = t,
            Some(t) => p = format!("{}/{t}", p.rsplit_once('/').unwrap().0),
            None => return p,
        }
    }
    panic!("{path}: symlink loop");
}

/// A file's bytes from the ext4 image, symlinks followed; None when it is not there.
pub fn ext4_read(fs: &Path, dir: &Path, path: &str) -> Option<Vec<u8>> {
    let real = ext4_resolve(fs, path);
    let out = dir.join("dumped");
    let _ = std::fs::remove_file(&out);
    let said = debugfs(fs, &format!("dump \"{real}\" \"{}\"", out.display()));
    if said.contains("File not found") {
        return None;
    }
    std::fs::read(&out).ok()
}

/// Every path under `dir` in the ext4 image (recursively, debugfs ls -p).
pub fn ext4_walk(fs: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        for line in debugfs(fs, &format!("ls -p \"{d}\"")).lines() {
            let f: Vec<&str> = line.split('/').collect();
            if f.len() < 8 || f[1] == "0" || f[5].is_empty() || f[5] == "." || f[5] == ".." {
                continue;
            }
            let p = format!("{d}/{}", f[5]);
            if u32::from_str_radix(f[2], 8).is_ok_and(|m| m >> 12 == 0o04) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A shell-style pattern with `*` only, as modinfo's firmware entries use.
pub fn firmware_glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Debian's wpa_supplicant as the agent starts it, in a network namespace of its own (nothing
/// it does can reach another network; wlan0 does not exist there).
pub fn wpa_supplicant_reads(conf: &Path) -> (Option<i32>, String) {
    let r = tool(
        Command::new("unshare")
            .args([
                "--net",
                "wpa_supplicant",
                "-i",
                "wlan0",
                "-D",
                "nl80211",
                "-dd",
                "-K",
                "-c",
            ])
            .arg(conf),
    );
    (r.status.code(), r.text())
}
