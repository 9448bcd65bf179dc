//! The mount tables of both stages and the switch to the real root.

use crate::syscall::Syscall;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: Option<&'static str>,
) -> MountSpec {
    MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

/// What stage 1 (the initramfs) needs: enough to load modules and find the root.
pub fn stage1_mounts() -> Vec<MountSpec> {
    vec![
        m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
    ]
}

/// The API filesystems of a running node (the data partition on /var is mounted separately).
pub fn stage2_mounts() -> Vec<MountSpec> {
    let mut v = stage1_mounts();
    v.extend([
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        m(
            "shm",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "run",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        ),
        m(
            "tmp",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            Some("nsdelegate"),
        ),
        m(
            "bpf",
            "/sys/fs/bpf",
            "bpf",
            NOSUID_NODEV_NOEXEC,
            Some("mode=0700"),
        ),
    ]);
    v
}

/// The filesystem type of what is mounted on `/` (the last of a stack wins), from
/// /proc/self/mountinfo.
pub fn root_fstype(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/"))
        .filter_map(|l| l.split_once(" - ")?.1.split(' ').next())
        .next_back()
        .map(str::to_string)
}

/// Mount points listed in /proc/self/mountinfo (field 5), unescaped.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .collect()
}

fn currently_mounted(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("proc/self/mountinfo"))
        .map(|t| mount_points(&t))
        .unwrap_or_default()
}

/// Mounts each spec under `root` (creating the directory) unless something is mounted there
/// already. Returns failures for the caller to log; the rest still gets mounted.
pub fn mount_all(
    sys: &dyn Syscall,
    root: &Path,
    specs: &[MountSpec],
) -> Vec<(String, std::io::Error)> {
    let mut failed = Vec::new();
    for s in specs {
        let target = root.join(s.target.trim_start_matches('/'));
        let existing = currently_mounted(root);
        if existing.iter().any(|p| Path::new(p) == Path::new(s.target)) {
            continue;
        }
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = sys.mount(s.source, &target, Some(s.fstype), s.flags, s.data) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                failed.push((s.target.to_string(), e));
            }
        }
    }
    failed
}

/// Enables every available controller from `wanted` for child cgroups (kubelet needs them).
/// Returns the controllers enabled.
pub fn enable_cgroup_controllers(cgroup_root: &Path, wanted: &[&str]) -> Vec<String> {
    let avail = std::fs::read_to_string(cgroup_root.join("cgroup.controllers")).unwrap_or_default();
    let mut on = Vec::new();
    for c in wanted {
        if avail.split_whitespace().any(|a| a == *c)
            && std::fs::write(cgroup_root.join("cgroup.subtree_control"), format!("+{c}")).is_ok()
        {
            on.push(c.to_string());
        }
    }
    on
}

pub const CGROUP_CONTROLLERS: [&str; 6] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// The mounts stage 1 hands to stage 2 (which then finds them mounted).
pub const CARRIED: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Moves the `carried` mounts into `newroot` and makes it `/` (what switch_root does); the caller
/// then execs init. Afterwards the process's root and cwd are the new root.
pub fn switch_root(sys: &dyn Syscall, newroot: &Path, carried: &[&str]) -> std::io::Result<()> {
    for &d in carried {
        let target: PathBuf = newroot.join(d.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = sys.mount(d, &target, None, libc::MS_MOVE, None) {
            // Not fatal: stage 2 mounts them again.
            crate::console::say(&format!("move {d}: {e}; unmounting instead"));
            let _ = sys.umount(Path::new(d), libc::MNT_DETACH);
        }
    }
    sys.chdir(newroot)?;
    sys.mount(".", Path::new("/"), None, libc::MS_MOVE, None)?;
    sys.chroot(Path::new("."))?;
    sys.chdir(Path::new("/"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::fake::{put, RecordingSyscall};

    #[test]
    fn mountinfo_points() {
        let t = "22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                 23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw\n\
                 40 22 0:30 / /mnt/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(t), vec!["/", "/dev", "/mnt/a b"]);
        assert_eq!(root_fstype(t).as_deref(), Some("ext4"));
        let netboot = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                       30 1 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/run/l\n";
        assert_eq!(root_fstype(netboot).as_deref(), Some("overlay"));
        assert_eq!(root_fstype(""), None);
    }

    #[test]
    fn stage2_covers_everything_kubelet_needs() {
        let targets: Vec<&str> = stage2_mounts().iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/tmp",
            "/sys/fs/cgroup",
            "/sys/fs/bpf",
        ] {
            assert!(targets.contains(&t), "{t}");
        }
        // Parents come before children.
        let pos = |t: &str| targets.iter().position(|x| *x == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }

    #[test]
    fn mount_all_skips_mounted_targets_and_tolerates_ebusy() {
        let t = tempfile::tempdir().unwrap();
        put(
            t.path(),
            "/proc/self/mountinfo",
            b"20 1 0:4 / /proc rw - proc proc rw\n",
        );
        let sys = RecordingSyscall::new(t.path());
        sys.fail("mount sysfs", libc::EBUSY);
        sys.fail("mount devtmpfs", libc::ENODEV);
        let failed = mount_all(&sys, t.path(), &stage1_mounts());
        assert_eq!(
            sys.calls(),
            vec![
                "mount sysfs /sys -t sysfs -o nosuid,nodev,noexec",
                "mount devtmpfs /dev -t devtmpfs -o nosuid,mode=0755",
            ]
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "/dev");
        assert!(t.path().join("dev").is_dir());
    }

    #[test]
    fn switch_root_detaches_what_it_cannot_move() {
        let t = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::new(t.path());
        sys.fail("mount /sys ", libc::EINVAL);
        switch_root(&sys, &t.path().join("newroot"), &CARRIED).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                "mount /proc /newroot/proc -o move",
                "mount /sys /newroot/sys -o move",
                "umount /sys -l",
                "mount /dev /newroot/dev -o move",
                "chdir /newroot",
                "mount . / -o move",
                "chroot .",
                "chdir /",
            ]
        );
    }

    #[test]
    fn controllers_only_available_ones() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let on = enable_cgroup_controllers(t.path(), &CGROUP_CONTROLLERS);
        assert_eq!(on, vec!["cpu", "cpuset", "io", "memory", "pids"]);
    }
}
