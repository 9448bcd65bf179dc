//! The data filesystem is checked before it is mounted, as a distribution's boot does. A power
//! cut can tear a superblock write: a card takes 512-byte sectors and ext4's superblock spans
//! two, so its checksum stops matching and the kernel refuses the filesystem ("invalid
//! superblock checksum"). e2fsck's preen mode (-p) fixes what is safe to fix unattended and
//! gives up on a bad primary superblock; a node has nobody at its console to answer e2fsck's
//! questions, so what preen leaves is repaired with -fy: the whole filesystem is checked, since
//! the backup superblock a bad primary leaves may say "clean" (the kernel's online resize writes
//! its backups from the mounted primary) while the path through it drops the groups' uninit
//! flags; the console says so.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// e2fsck's exit status bits (e2fsck(8), "EXIT CODE"); the others (4 errors left uncorrected,
/// 16 usage, 32 cancelled, 128 library error) all mean the filesystem was not made clean.
const CORRECTED: i32 = 1;
const REBOOT: i32 = 2;
const OPERATIONAL: i32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do (preen, or -fy after preen failed for a passing reason).
    Clean,
    /// Preen fixed what it found (a journal replay, counts).
    Preened,
    /// Preen gave up; -fy repaired it.
    Repaired,
    /// Errors are left after -fy: e2fsck's exit status.
    Failed(i32),
}

/// Preen, then -fy when preen gave up. Every line e2fsck prints goes to `say`, prefixed with
/// the mode it ran in.
pub fn check(e2fsck: &Path, dev: &Path, say: &mut dyn FnMut(&str)) -> io::Result<Outcome> {
    let preen = run(e2fsck, "-p", dev, say)?;
    // Anything but "fixed" is preen giving up: uncorrected errors, an operational error (a
    // superblock it cannot read), a usage or library error.
    if preen & !(CORRECTED | REBOOT) == 0 {
        return Ok(if preen == 0 {
            Outcome::Clean
        } else {
            Outcome::Preened
        });
    }
    say(&format!(
        "e2fsck -p gave up on {} (exit {preen}); checking all of it with e2fsck -fy, which \
         takes minutes on a large, full card",
        dev.display()
    ));
    let yes = run(e2fsck, "-fy", dev, say)?;
    Ok(if yes & !(CORRECTED | REBOOT) != 0 {
        Outcome::Failed(yes)
    } else if yes == 0 {
        Outcome::Clean
    } else {
        Outcome::Repaired
    })
}

/// Lines of one e2fsck run shown on the console at most: a badly damaged filesystem makes
/// e2fsck -fy print a line per fix, more than a serial console should carry before /var.
const MAX_LINES: usize = 200;

fn run(e2fsck: &Path, mode: &str, dev: &Path, say: &mut dyn FnMut(&str)) -> io::Result<i32> {
    let out = Command::new(e2fsck)
        .arg(mode)
        .arg(dev)
        .stdin(Stdio::null())
        .output()?;
    let text = [&out.stdout, &out.stderr].map(|t| String::from_utf8_lossy(t).into_owned());
    let lines: Vec<&str> = text
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    for line in lines.iter().take(MAX_LINES) {
        say(&format!("e2fsck {mode}: {line}"));
    }
    if lines.len() > MAX_LINES {
        say(&format!(
            "e2fsck {mode}: ... {} more lines not shown",
            lines.len() - MAX_LINES
        ));
    }
    // Killed by a signal: nothing was decided, as with an operational error.
    Ok(out.status.code().unwrap_or(OPERATIONAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    fn e2fsck() -> PathBuf {
        PathBuf::from("e2fsck")
    }

    /// A 256 MiB ext4 image (two block groups: group 1 holds a backup superblock), as the
    /// image's data filesystem, with a file on it.
    fn data_fs(dir: &Path) -> PathBuf {
        let img = dir.join("data.img");
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("lib/piimg")).unwrap();
        std::fs::write(src.join("lib/piimg/marker"), b"kept\n").unwrap();
        let out = Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-O",
                "metadata_csum",
                "-L",
                "piimg-data",
                "-d",
            ])
            .arg(&src)
            .arg(&img)
            .arg("256M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        img
    }

    /// What a power cut in the middle of a superblock write leaves: the superblock's first
    /// sector new (a later mount count and write time), its second one, which ends with the
    /// checksum, old.
    fn tear_superblock(img: &Path) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let mut first = [0u8; 512];
        f.read_exact_at(&mut first, 1024).unwrap();
        // s_mtime (0x2C), s_wtime (0x30), s_mnt_count (0x34).
        first[0x2C..0x30].copy_from_slice(&1_795_000_000u32.to_le_bytes());
        first[0x30..0x34].copy_from_slice(&1_795_000_000u32.to_le_bytes());
        first[0x34..0x36].copy_from_slice(&1u16.to_le_bytes());
        f.write_all_at(&first, 1024).unwrap();
    }

    fn fsck_clean(img: &Path) -> bool {
        Command::new("e2fsck")
            .arg("-fn")
            .arg(img)
            .output()
            .unwrap()
            .status
            .success()
    }

    #[test]
    fn a_clean_filesystem_is_left_as_it_is() {
        let t = tempfile::tempdir().unwrap();
        let img = data_fs(t.path());
        let mut lines = Vec::new();
        let got = check(&e2fsck(), &img, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(got, Outcome::Clean, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("e2fsck -p: ") && l.contains("clean")),
            "{lines:?}"
        );
        assert!(fsck_clean(&img));
    }

    /// Preen refuses a torn superblock (e2fsck exit 8); -fy takes the backup and the file on
    /// the filesystem is still there afterwards, by e2fsprogs' own debugfs.
    #[test]
    fn a_torn_superblock_is_repaired_from_its_backup() {
        let t = tempfile::tempdir().unwrap();
        let img = data_fs(t.path());
        tear_superblock(&img);
        assert!(!fsck_clean(&img), "the tear did not break the checksum");
        let mut lines = Vec::new();
        let got = check(&e2fsck(), &img, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(got, Outcome::Repaired, "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("e2fsck -fy: ")),
            "{lines:?}"
        );
        assert!(fsck_clean(&img), "e2fsck -fn after the repair: {lines:?}");
        let cat = Command::new("debugfs")
            .args(["-R", "cat /lib/piimg/marker"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "kept\n", "{cat:?}");
    }

    /// Something e2fsck cannot make a filesystem of at all is reported with -fy's status.
    #[test]
    fn what_even_y_cannot_repair_is_reported_as_failed() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("zeros.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let got = check(&e2fsck(), &img, &mut |_| {}).unwrap();
        assert!(
            matches!(got, Outcome::Failed(c) if c & OPERATIONAL != 0),
            "{got:?}"
        );
    }

    /// A preen that fails in any way (here a usage error, 16) leads to -fy, whose output the
    /// console gets at most MAX_LINES of, then a count.
    #[test]
    fn any_preen_failure_leads_to_a_full_check_whose_output_is_capped() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("e2fsck");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase $1 in -p) exit 16 ;; -fy) seq 1 300; exit 1 ;; esac\nexit 99\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut lines = Vec::new();
        let got = check(&fake, Path::new("/dev/x"), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert_eq!(got, Outcome::Repaired);
        assert!(lines[0].starts_with("e2fsck -p gave up on /dev/x (exit 16); "));
        assert_eq!(lines[1], "e2fsck -fy: 1");
        assert_eq!(lines[MAX_LINES], format!("e2fsck -fy: {MAX_LINES}"));
        assert_eq!(
            lines[MAX_LINES + 1],
            "e2fsck -fy: ... 100 more lines not shown"
        );
        assert_eq!(lines.len(), MAX_LINES + 2);
    }

    #[test]
    fn a_missing_checker_is_an_error_not_a_verdict() {
        let t = tempfile::tempdir().unwrap();
        let e = check(
            &t.path().join("no-e2fsck"),
            &t.path().join("dev"),
            &mut |_| {},
        );
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
