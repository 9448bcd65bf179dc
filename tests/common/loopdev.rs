//! Loop devices (the tests that use them run as root): a file, or a byte range of one, as a block
//! device, detached with its partitions when dropped. This machine's kernel has no
//! partition-table parsers: `partx -a` adds a loop device's partitions through BLKPG.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::checkers::{run, sha256sum};

pub struct LoopDev {
    /// /dev/loopN.
    pub dev: String,
    pub backing: PathBuf,
}

impl LoopDev {
    /// A new sparse file of `size` bytes at `backing`, attached.
    pub fn new_file(backing: &Path, size: u64) -> LoopDev {
        let f = std::fs::File::create(backing).unwrap();
        f.set_len(size).unwrap();
        LoopDev::attach(backing, &[])
    }

    /// `size` bytes at `start` of an existing file.
    pub fn range(file: &Path, start: u64, size: u64) -> LoopDev {
        LoopDev::attach(
            file,
            &["-o", &start.to_string(), "--sizelimit", &size.to_string()],
        )
    }

    fn attach(file: &Path, opts: &[&str]) -> LoopDev {
        let dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .args(opts)
            .arg(file))
        .trim()
        .to_string();
        LoopDev {
            dev,
            backing: file.to_path_buf(),
        }
    }

    /// The device of partition `n` (after [`LoopDev::add_partitions`]).
    pub fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    pub fn add_partitions(&self) {
        run(Command::new("partx").args(["-a", &self.dev]));
    }

    pub fn remove_partitions(&self) {
        let _ = Command::new("partx").args(["-d", &self.dev]).output();
    }

    /// sha256 of the whole device, by sha256sum.
    pub fn sha256(&self) -> String {
        sha256sum(&self.dev)
    }

    pub fn write_at(&self, at: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.dev)
            .unwrap();
        f.write_all_at(data, at).unwrap();
        f.sync_all().unwrap();
    }

    pub fn read_at(&self, at: u64, len: u64) -> Vec<u8> {
        let f = std::fs::File::open(&self.dev).unwrap();
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, at).unwrap();
        b
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        self.remove_partitions();
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}
