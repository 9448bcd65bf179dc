//! Output of image bytes: a positioned-write sink that leaves holes where only zeros would go, and
//! an atomic output file (temp file in the destination directory, fsync, rename, `.sha256`).

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where writers put bytes. Offsets are absolute in the output; writers never read back.
/// Regions never written read as zeros.
pub trait Sink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// The size of the output; writing past it is an error.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Granularity at which all-zero data is skipped instead of written (a filesystem block).
const HOLE_CHUNK: usize = 4096;

/// A sink over a file that was sized with `set_len` (so it starts as one hole): zero chunks are not
/// written, which keeps the output sparse.
pub struct FileSink {
    file: File,
    len: u64,
}

impl FileSink {
    /// Truncates `file` to zero and extends it to `len` bytes of holes.
    pub fn new(file: File, len: u64) -> io::Result<FileSink> {
        file.set_len(0)?;
        file.set_len(len)?;
        Ok(FileSink { file, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

impl Sink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "write of {} bytes at offset {} runs past the end of the {}-byte output",
                        data.len(),
                        offset,
                        self.len
                    ),
                )
            })?;
        // Split on absolute chunk boundaries so holes line up with filesystem blocks; runs of
        // non-zero chunks go out in one write (one syscall per run, not per 4 KiB).
        let mut pos = 0usize;
        let mut run: Option<usize> = None;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let room = HOLE_CHUNK - (abs % HOLE_CHUNK as u64) as usize;
            let n = room.min(data.len() - pos);
            let chunk = &data[pos..pos + n];
            let zero = chunk.iter().fold(0u8, |acc, b| acc | b) == 0;
            match (zero, run) {
                (false, None) => run = Some(pos),
                (true, Some(start)) => {
                    self.file
                        .write_all_at(&data[start..pos], offset + start as u64)?;
                    run = None;
                }
                _ => {}
            }
            pos += n;
        }
        if let Some(start) = run {
            self.file
                .write_all_at(&data[start..], offset + start as u64)?;
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// A sink that stores everything in memory (tests and small images).
#[derive(Debug, Default, Clone)]
pub struct MemSink {
    pub bytes: Vec<u8>,
}

impl MemSink {
    pub fn new(len: u64) -> MemSink {
        MemSink {
            bytes: vec![0; len as usize],
        }
    }
}

impl Sink for MemSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = offset as usize;
        let end = start
            .checked_add(data.len())
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past end"))?;
        self.bytes[start..end].copy_from_slice(data);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// An output file that appears at its final path only when complete: created as a temp file in the
/// same directory, synced, then renamed. Dropped without `commit`, it leaves nothing behind.
pub struct AtomicOutput {
    temp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl AtomicOutput {
    pub fn create(dest: &Path) -> io::Result<AtomicOutput> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(&dir)?;
        Ok(AtomicOutput {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    /// A sparse sink of `len` bytes over the temp file.
    pub fn sink(&self, len: u64) -> io::Result<FileSink> {
        FileSink::new(self.temp.as_file().try_clone()?, len)
    }

    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs, sets mode 0644 (tempfile creates 0600), renames into place and syncs the directory.
    pub fn commit(self) -> io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let f = self.temp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        let dest = self.dest.clone();
        self.temp.persist(&dest).map_err(|e| e.error)?;
        if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(dest)
    }
}

/// Next offset at or after `from` where the file has data (`SEEK_DATA`) or a hole (`SEEK_HOLE`);
/// `None` when the filesystem cannot say (the caller then reads everything).
fn seek_region(file: &File, from: u64, whence: libc::c_int, len: u64) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(from) else {
        return Ok(None);
    };
    // SAFETY: lseek on a valid, owned descriptor; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some((r as u64).min(len)));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // No data at or after `from`: the rest is a hole.
        Some(libc::ENXIO) => Ok(Some(len)),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(None),
        _ => Err(e),
    }
}

/// sha256 of a whole file, holes read as zeros (they are part of the image bytes). Holes are found
/// with SEEK_DATA/SEEK_HOLE and fed to the hash from a zero buffer: reading them would make the
/// kernel allocate and clear page-cache pages for every hole (most of a fresh image).
pub fn sha256_file(file: &mut File) -> io::Result<[u8; 32]> {
    const BUF: usize = 1 << 20;
    let len = file.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let zeros = vec![0u8; BUF];
    let mut pos = 0u64;
    while pos < len {
        let (data, hole) = match seek_region(file, pos, libc::SEEK_DATA, len)? {
            Some(d) => (
                d,
                seek_region(file, d, libc::SEEK_HOLE, len)?.unwrap_or(len),
            ),
            None => (pos, len),
        };
        // A hole reported at the data offset itself (a racing writer) must not stall the loop.
        let hole = if hole > data { hole } else { len };
        let mut gap = data.saturating_sub(pos);
        while gap > 0 {
            let n = gap.min(BUF as u64) as usize;
            h.update(&zeros[..n]);
            gap -= n as u64;
        }
        let mut at = data.max(pos);
        while at < hole {
            let want = (hole - at).min(BUF as u64) as usize;
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while hashing",
                ));
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        pos = hole.max(at);
    }
    // Callers used to get the file positioned at its end; keep that.
    file.seek(SeekFrom::Start(len))?;
    Ok(h.finalize().into())
}

/// Writes `<image>.sha256` in `sha256sum` format (atomically), returning the hex digest.
pub fn write_sha256_sidecar(image: &Path, digest: &[u8; 32]) -> io::Result<String> {
    let hex = hex::encode(digest);
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut side = image.as_os_str().to_owned();
    side.push(".sha256");
    let out = AtomicOutput::create(Path::new(&side))?;
    std::io::Write::write_all(&mut out.file(), format!("{hex}  {name}\n").as_bytes())?;
    out.commit()?;
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_chunks_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let out = AtomicOutput::create(&path).unwrap();
        let mut sink = out.sink(64 << 20).unwrap();
        sink.write_at(0, &[1u8; 4096]).unwrap();
        sink.write_at(8 << 20, &vec![0u8; 16 << 20]).unwrap();
        sink.write_at((64 << 20) - 10, &[7u8; 10]).unwrap();
        assert!(sink.write_at((64 << 20) - 5, &[7u8; 10]).is_err());
        drop(sink);
        let p = out.commit().unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 64 << 20);
        // two 4 KiB chunks with data; everything else a hole
        assert!(md.blocks() * 512 <= 64 * 1024, "blocks {}", md.blocks());
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[(64 << 20) - 1], 7);
    }

    #[test]
    fn sha256_of_a_sparse_file_counts_holes_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let out = AtomicOutput::create(&path).unwrap();
        let len = (9 << 20) + 100;
        let mut sink = out.sink(len).unwrap();
        // Data at the start, in the middle (unaligned), and a last partial block.
        sink.write_at(0, &[1u8; 5000]).unwrap();
        sink.write_at((3 << 20) + 123, &[2u8; 70000]).unwrap();
        sink.write_at(len - 7, &[3u8; 7]).unwrap();
        drop(sink);
        // Before the sync (data only in the page cache, delayed allocation) and after it.
        let before = sha256_file(&mut out.file().try_clone().unwrap()).unwrap();
        let p = out.commit().unwrap();
        let after = sha256_file(&mut File::open(&p).unwrap()).unwrap();
        let want: [u8; 32] = Sha256::digest(std::fs::read(&p).unwrap()).into();
        assert_eq!(before, want);
        assert_eq!(after, want);
        // A file with no data at all, and an empty file.
        let hole = dir.path().join("hole");
        let f = File::create(&hole).unwrap();
        f.set_len(3 << 20).unwrap();
        let want: [u8; 32] = Sha256::digest(vec![0u8; 3 << 20]).into();
        assert_eq!(sha256_file(&mut File::open(&hole).unwrap()).unwrap(), want);
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        let want: [u8; 32] = Sha256::digest([]).into();
        assert_eq!(sha256_file(&mut File::open(&empty).unwrap()).unwrap(), want);
    }

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        {
            let out = AtomicOutput::create(&path).unwrap();
            let mut s = out.sink(4096).unwrap();
            s.write_at(0, b"abc").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
