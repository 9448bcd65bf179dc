//! Output of image bytes: a positioned-write sink that leaves holes where only zeros would go and
//! records which blocks the writers filled (the image's block map), atomic output files (temp file
//! in the destination directory, fsync, rename) and sets of them, `.sha256` files, and reading
//! sparse files without reading their holes.

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

/// Granularity at which all-zero data is skipped instead of written, and of the block map (a
/// filesystem block; bmaptool's usual block size).
pub const HOLE_CHUNK: usize = 4096;

/// Byte ranges `[start, end)` of an output, merged on demand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    ranges: Vec<(u64, u64)>,
}

impl Extents {
    pub fn new() -> Extents {
        Extents::default()
    }

    pub fn add(&mut self, start: u64, end: u64) {
        if end > start {
            // Consecutive writes are the common case: extend the last range in place.
            if let Some(last) = self.ranges.last_mut() {
                if start >= last.0 && start <= last.1 {
                    last.1 = last.1.max(end);
                    return;
                }
            }
            self.ranges.push((start, end));
        }
    }

    /// The ranges, sorted, with overlapping and touching ones merged.
    pub fn merged(&self) -> Vec<(u64, u64)> {
        let mut r = self.ranges.clone();
        r.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
        for (s, e) in r {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// A sink over a file that was sized with `set_len` (so it starts as one hole): zero chunks are not
/// written, which keeps the output sparse. Every block a writer passes data for, zeros included,
/// is recorded as mapped: an all-zero FAT sector or journal block must still reach a card that
/// held other data, while blocks no writer touched are free space that may keep whatever it had.
pub struct FileSink {
    file: File,
    len: u64,
    mapped: Extents,
}

impl FileSink {
    /// Truncates `file` to zero and extends it to `len` bytes of holes.
    pub fn new(file: File, len: u64) -> io::Result<FileSink> {
        file.set_len(0)?;
        file.set_len(len)?;
        Ok(FileSink {
            file,
            len,
            mapped: Extents::new(),
        })
    }

    /// The blocks written so far, as byte ranges rounded out to [`HOLE_CHUNK`] (within the output).
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        self.mapped.merged()
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
        let chunk = HOLE_CHUNK as u64;
        self.mapped.add(
            offset / chunk * chunk,
            (offset + data.len() as u64)
                .next_multiple_of(chunk)
                .min(self.len),
        );
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
        self.commit_mode(0o644)
    }

    /// As [`commit`](Self::commit) with the given permission bits.
    pub fn commit_mode(self, mode: u32) -> io::Result<PathBuf> {
        self.prepare(mode)?;
        let dest = self.persist()?;
        sync_parent(&dest)?;
        Ok(dest)
    }

    fn prepare(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let f = self.temp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    }

    fn persist(self) -> io::Result<PathBuf> {
        let dest = self.dest.clone();
        self.temp.persist(&dest).map_err(|e| e.error)?;
        Ok(dest)
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// Outputs that belong together (an image, its block map, its checksums, its manifest) and are
/// committed as one set: every file is synced before any is renamed, the old copy of the last one
/// (the manifest, which vouches for the others) is removed before the first rename and the new one
/// renamed last. A crash part-way leaves no manifest that describes files it does not match.
pub struct OutputSet {
    outputs: Vec<AtomicOutput>,
    stale: Vec<PathBuf>,
}

impl OutputSet {
    pub fn new() -> OutputSet {
        OutputSet {
            outputs: Vec::new(),
            stale: Vec::new(),
        }
    }

    /// A file of an earlier set that this one does not replace (a compressed copy not asked for
    /// this time): removed with the old commit record, so nothing outdated stays beside the image.
    pub fn remove(&mut self, path: PathBuf) {
        self.stale.push(path);
    }

    /// Adds an output; the last one added is the set's commit record.
    pub fn push(&mut self, out: AtomicOutput) {
        self.outputs.push(out);
    }

    /// Commits every output with `mode`; returns the final paths in the order pushed.
    pub fn commit(self, mode: u32) -> io::Result<Vec<PathBuf>> {
        for o in &self.outputs {
            o.prepare(mode)?;
        }
        if let Some(last) = self.outputs.last() {
            for p in std::iter::once(last.dest()).chain(self.stale.iter().map(PathBuf::as_path)) {
                match std::fs::remove_file(p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            sync_parent(last.dest())?;
        }
        let mut paths = Vec::new();
        for o in self.outputs {
            paths.push(o.persist()?);
        }
        if let Some(p) = paths.last() {
            sync_parent(p)?;
        }
        Ok(paths)
    }
}

impl Extend<AtomicOutput> for OutputSet {
    fn extend<T: IntoIterator<Item = AtomicOutput>>(&mut self, iter: T) {
        self.outputs.extend(iter);
    }
}

impl Default for OutputSet {
    fn default() -> Self {
        OutputSet::new()
    }
}

/// Reads a file front to back, returning zeros for its holes without reading them (SEEK_DATA /
/// SEEK_HOLE): compressing or hashing a 4 GiB image with 200 MB of data costs 200 MB of reads.
pub struct SparseReader {
    file: File,
    pos: u64,
    len: u64,
    /// The current region `[pos, until)` is data when `data`, zeros otherwise.
    until: u64,
    data: bool,
}

impl SparseReader {
    pub fn new(file: File) -> io::Result<SparseReader> {
        let len = file.metadata()?.len();
        Ok(SparseReader {
            file,
            pos: 0,
            len,
            until: 0,
            data: true,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn next_region(&mut self) -> io::Result<()> {
        match seek_region(&self.file, self.pos, libc::SEEK_DATA, self.len)? {
            None => (self.data, self.until) = (true, self.len),
            Some(d) if d > self.pos => (self.data, self.until) = (false, d),
            Some(_) => {
                let h = seek_region(&self.file, self.pos, libc::SEEK_HOLE, self.len)?
                    .unwrap_or(self.len);
                // A hole reported at the data offset itself (a racing writer): read the rest.
                let h = if h > self.pos { h } else { self.len };
                (self.data, self.until) = (true, h);
            }
        }
        Ok(())
    }
}

impl io::Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.until {
            self.next_region()?;
        }
        let n = buf.len().min((self.until - self.pos) as usize);
        let n = if self.data {
            let n = self.file.read_at(&mut buf[..n], self.pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while reading",
                ));
            }
            n
        } else {
            buf[..n].fill(0);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// The data (non-hole) regions of a file of `len` bytes, rounded out to [`HOLE_CHUNK`]; the whole
/// file when the filesystem cannot tell.
pub fn data_regions(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let chunk = HOLE_CHUNK as u64;
    let mut out = Extents::new();
    let mut pos = 0u64;
    while pos < len {
        let Some(data) = seek_region(file, pos, libc::SEEK_DATA, len)? else {
            return Ok(vec![(0, len)]);
        };
        if data >= len {
            break;
        }
        let hole = seek_region(file, data, libc::SEEK_HOLE, len)?.unwrap_or(len);
        let hole = if hole > data { hole } else { len };
        out.add(data / chunk * chunk, hole.next_multiple_of(chunk).min(len));
        pos = hole;
    }
    Ok(out.merged())
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
    // Leave the file positioned at its end, as a reader that consumed it would.
    file.seek(SeekFrom::Start(len))?;
    Ok(h.finalize().into())
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
    fn a_set_commits_together_and_drops_stale_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("m.json"), "old").unwrap();
        std::fs::write(d.join("img.zst"), "old").unwrap();
        let mut set = OutputSet::new();
        for (name, text) in [("img", "new image"), ("m.json", "new manifest")] {
            let o = AtomicOutput::create(&d.join(name)).unwrap();
            std::io::Write::write_all(&mut o.file(), text.as_bytes()).unwrap();
            set.push(o);
        }
        set.remove(d.join("img.zst"));
        let paths = set.commit(0o600).unwrap();
        assert_eq!(paths, vec![d.join("img"), d.join("m.json")]);
        assert_eq!(
            std::fs::read_to_string(d.join("m.json")).unwrap(),
            "new manifest"
        );
        assert!(!d.join("img.zst").exists());
        let mode = std::fs::metadata(d.join("img"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 2);
    }

    #[test]
    fn sparse_reader_reads_what_read_reads() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let out = AtomicOutput::create(&path).unwrap();
        let len = (5 << 20) + 77;
        let mut sink = out.sink(len).unwrap();
        sink.write_at(4096, &[9u8; 10000]).unwrap();
        sink.write_at(3 << 20, &[8u8; 5]).unwrap();
        sink.write_at(len - 1, &[7u8]).unwrap();
        assert_eq!(
            sink.mapped(),
            vec![(4096, 16384), (3 << 20, (3 << 20) + 4096), (len - 77, len)]
        );
        drop(sink);
        let p = out.commit().unwrap();
        let mut got = Vec::new();
        SparseReader::new(File::open(&p).unwrap())
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == std::fs::read(&p).unwrap());
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
