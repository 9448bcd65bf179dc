//! Reading file content: which 4 KiB blocks of a file may hold data (holes of sparse host files
//! are skipped with SEEK_DATA/SEEK_HOLE), and streaming those blocks.

use super::layout::BS;
use super::Ext4Error;
use crate::tree::FileData;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn read_err(path: &Path, source: std::io::Error) -> Ext4Error {
    Ext4Error::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Data regions of `file` within `[start, end)` (host offsets). Filesystems without SEEK_DATA
/// report the whole range.
fn data_regions(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![(start, end)]),
                _ => Err(e),
            };
        }
        let d = d as u64;
        if d >= end {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let h = (h as u64).min(end);
        out.push((d, h));
        pos = h;
    }
    Ok(out)
}

/// Files up to this size are not probed for holes: reading them costs less than asking.
const PROBE_MIN: u64 = 1 << 20;

fn open_checked(data: &FileData) -> Result<Option<(File, u64)>, Ext4Error> {
    let len = data.len();
    let (path, base) = match data {
        FileData::Bytes(_) => return Ok(None),
        FileData::Host { path, .. } => (path, 0),
        FileData::Range { path, offset, .. } => (path, *offset),
    };
    let file = File::open(path).map_err(|e| read_err(path, e))?;
    let actual = file.metadata().map_err(|e| read_err(path, e))?.len();
    let changed = match data {
        FileData::Host { .. } => actual != len,
        _ => actual < base + len,
    };
    if changed {
        return Err(read_err(
            path,
            std::io::Error::other(format!(
                "changed size while building ({actual} bytes, expected {})",
                base + len
            )),
        ));
    }
    Ok(Some((file, base)))
}

/// Logical byte ranges (block aligned, in order) of a file that may hold non-zero data, and an
/// upper bound of the blocks they need (exact for in-memory bytes).
pub fn probe(data: &FileData) -> Result<(Vec<(u64, u64)>, u64), Ext4Error> {
    let len = data.len();
    let whole = if len > 0 {
        vec![(0, len.next_multiple_of(BS))]
    } else {
        vec![]
    };
    if let FileData::Bytes(b) = data {
        let n = b.chunks(BS as usize).filter(|c| !is_zero(c)).count() as u64;
        return Ok((whole, n));
    }
    if len <= PROBE_MIN {
        return Ok((whole, len.div_ceil(BS)));
    }
    let Some((file, base)) = open_checked(data)? else {
        return Ok((whole, len.div_ceil(BS)));
    };
    let regions = data_regions(&file, base, base + len).map_err(|e| read_err(path_of(data), e))?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (s, e) in regions {
        let ls = (s - base) / BS * BS;
        let le = (e - base)
            .next_multiple_of(BS)
            .min(len.next_multiple_of(BS));
        match ranges.last_mut() {
            Some(last) if last.1 >= ls => last.1 = last.1.max(le),
            _ => ranges.push((ls, le)),
        }
    }
    let n = ranges.iter().map(|(s, e)| (e - s) / BS).sum();
    Ok((ranges, n))
}

fn path_of(data: &FileData) -> &Path {
    match data {
        FileData::Host { path, .. } | FileData::Range { path, .. } => path,
        FileData::Bytes(_) => Path::new(""),
    }
}

/// Receives (first logical block, bytes) for each chunk of a file.
pub type ChunkFn<'f> = dyn FnMut(u64, &[u8]) -> Result<(), Ext4Error> + 'f;

/// A file's content opened for block-wise reading of the ranges `probe` found.
pub struct Content<'a> {
    data: &'a FileData,
    file: Option<File>,
    base: u64,
    ranges: &'a [(u64, u64)],
}

impl<'a> Content<'a> {
    pub fn open(data: &'a FileData, ranges: &'a [(u64, u64)]) -> Result<Content<'a>, Ext4Error> {
        let (file, base) = match open_checked(data)? {
            Some((f, b)) => (Some(f), b),
            None => (None, 0),
        };
        Ok(Content {
            data,
            file,
            base,
            ranges,
        })
    }

    /// Calls `f(logical block, bytes)` for chunks of whole blocks (the last one may be short) in
    /// order, covering every range.
    pub fn for_each_chunk(&self, buf: &mut Vec<u8>, f: &mut ChunkFn) -> Result<(), Ext4Error> {
        let len = self.data.len();
        let cap = buf.capacity().max(BS as usize) / BS as usize * BS as usize;
        if let FileData::Bytes(b) = self.data {
            for (i, chunk) in b.chunks(cap).enumerate() {
                f(i as u64 * (cap as u64 / BS), chunk)?;
            }
            return Ok(());
        }
        let (Some(file), path) = (&self.file, path_of(self.data)) else {
            return Ok(());
        };
        let cap = cap as u64;
        for (s, e) in self.ranges {
            let mut pos = *s;
            let end = (*e).min(len);
            while pos < end {
                let n = (end - pos).min(cap) as usize;
                buf.resize(n, 0);
                file.read_exact_at(buf, self.base + pos)
                    .map_err(|e| read_err(path, e))?;
                f(pos / BS, buf)?;
                pos += n as u64;
            }
        }
        Ok(())
    }
}

/// True if every byte is zero (64-byte folds, which vectorise).
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, x| acc | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|x| *x == 0)
}
