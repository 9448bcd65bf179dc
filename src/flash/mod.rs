//! Writing an image to a card: only the mapped blocks (from the image's bmap, or its holes), then
//! what makes the blocks left unwritten harmless, then a read-back of everything written.
//!
//! Unwritten blocks keep whatever the card held. Inside a filesystem they are free space, which
//! neither ext4 nor FAT reads; what could still be read is an old signature, so piimg writes
//! zeros over the places where probes look and the image has no data: the first and last MiB of
//! every partition (superblocks of ext4, btrfs, XFS, swap, LVM, md 0.90/1.0, ISO 9660 lie there)
//! and of the card (an old GPT, or old md metadata at the card's end, which the data partition
//! reaches once the agent grows it). A GPT image's backup table is then moved to the card's real
//! end, as `sgdisk -e` does, so the table is valid for the card and not only for the image.

pub mod device;

use crate::bmap::{Bmap, BmapError};
use crate::compress::{self, Codec};
use crate::report::Reporter;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MIB: u64 = 1 << 20;
/// Writes are pushed to the device in windows of this size, so that progress reflects the
/// card (not the page cache) and a failing card is noticed near where it failed.
const WINDOW: u64 = 32 * MIB;
const CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: no such file or device")]
    Missing(PathBuf),
    #[error("refusing to write {path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("permission denied opening {0} for writing: run piimg as root, or add your user to the `disk` group and log in again")]
    Permission(PathBuf),
    #[error("{0} is busy: the kernel has it in use (a mounted partition, or another program holds it open exclusively)")]
    Busy(PathBuf),
    #[error("{path} holds {} but the image needs {}", crate::units::human(*device), crate::units::human(*image))]
    TooSmall {
        path: PathBuf,
        device: u64,
        image: u64,
    },
    #[error("writing {path} failed at byte {at} after {done} of {total} bytes ({pct:.0}%) had been written: {source}. Was the card removed? What it holds now is incomplete: flash it again", pct = *done as f64 * 100.0 / (*total).max(1) as f64)]
    Device {
        path: PathBuf,
        at: u64,
        done: u64,
        total: u64,
        #[source]
        source: io::Error,
    },
    #[error("{image} does not match its block map: bytes {start}..{end} have sha256 {got}, the map says {want}; the image is damaged (check it with sha256sum -c) and the card holds a bad copy")]
    Source {
        image: PathBuf,
        start: u64,
        end: u64,
        got: String,
        want: String,
    },
    #[error("verification failed: {path} reads back bytes {start}..{end} with sha256 {got}, not the {want} of the image; the card may be failing: flash it again or use another card")]
    Verify {
        path: PathBuf,
        start: u64,
        end: u64,
        got: String,
        want: String,
    },
    #[error("{0}: {1}")]
    Bmap(PathBuf, #[source] BmapError),
    #[error("{0}: the image ends before its block map says")]
    Truncated(PathBuf),
    #[error("moving the backup GPT to the end of {0}: {1}")]
    Gpt(PathBuf, #[source] piimg_agent::grow::GrowError),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image to flash and how to read it.
pub struct Image {
    pub path: PathBuf,
    pub codec: Option<Codec>,
    /// Size of the uncompressed image.
    pub size: u64,
    pub bmap: Option<Bmap>,
    pub bmap_path: Option<PathBuf>,
}

/// `NAME.img.bmap` for `NAME.img`, `NAME.img.zst` or `NAME.img.xz`.
pub fn bmap_path_for(image: &Path) -> PathBuf {
    let base = match Codec::from_path(image) {
        Some(_) => image.with_extension(""),
        None => image.to_path_buf(),
    };
    let mut s = base.into_os_string();
    s.push(".bmap");
    PathBuf::from(s)
}

impl Image {
    /// Opens `path` (.img, .img.zst, .img.xz) with the bmap beside it when there is one.
    pub fn open(path: &Path, reporter: &dyn Reporter) -> Result<Image, FlashError> {
        let md = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FlashError::Missing(path.to_path_buf()),
            _ => io_err(path)(e),
        })?;
        let codec = Codec::from_path(path);
        let bp = bmap_path_for(path);
        let bmap = match std::fs::read_to_string(&bp) {
            Ok(text) => Some(Bmap::parse(&text).map_err(|e| FlashError::Bmap(bp.clone(), e))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&bp)(e)),
        };
        let size = match (&bmap, codec) {
            (Some(b), _) => b.image_size,
            (None, None) => md.len(),
            (None, Some(c)) => {
                // Without a map the size of a compressed image is known only by reading it.
                reporter.begin(
                    &format!(
                        "reading {} for its size (no .bmap beside it)",
                        path.display()
                    ),
                    None,
                );
                let f = File::open(path).map_err(io_err(path))?;
                let mut r =
                    compress::decoder(c, Box::new(io::BufReader::new(f))).map_err(io_err(path))?;
                let n = io::copy(&mut r, &mut io::sink()).map_err(io_err(path))?;
                reporter.end();
                n
            }
        };
        if codec.is_none() && bmap.is_some() && md.len() != size {
            return Err(FlashError::Bmap(
                bp.clone(),
                BmapError::Xml(format!(
                    "it describes a {size}-byte image, {} has {} bytes",
                    path.display(),
                    md.len()
                )),
            ));
        }
        Ok(Image {
            path: path.to_path_buf(),
            codec,
            size,
            bmap_path: bmap.as_ref().map(|_| bp),
            bmap,
        })
    }

    /// The byte ranges to write, with the sha256 the map promises for each.
    fn ranges(&self) -> Result<Vec<Planned>, FlashError> {
        if let Some(b) = &self.bmap {
            return Ok(b
                .ranges
                .iter()
                .map(|r| {
                    let (start, end) = b.span(r);
                    Planned {
                        start,
                        end,
                        expect: Some(r.sha256),
                    }
                })
                .collect());
        }
        if self.codec.is_some() {
            // A stream has no holes to read: without a map, every byte is written.
            return Ok(vec![Planned {
                start: 0,
                end: self.size,
                expect: None,
            }]);
        }
        let f = File::open(&self.path).map_err(io_err(&self.path))?;
        Ok(crate::fs::sparse::data_regions(&f, self.size)
            .map_err(io_err(&self.path))?
            .into_iter()
            .map(|(start, end)| Planned {
                start,
                end,
                expect: None,
            })
            .collect())
    }
}

/// One range of the image to write, and the sha256 its bytes must have when a map says so.
#[derive(Debug, Clone, Copy)]
struct Planned {
    start: u64,
    end: u64,
    expect: Option<[u8; 32]>,
}

/// Reads the image front to back; a stream can only skip forward.
enum Reader {
    File(File),
    Stream { r: Box<dyn Read + Send>, pos: u64 },
}

impl Reader {
    fn open(img: &Image) -> io::Result<Reader> {
        let f = File::open(&img.path)?;
        Ok(match img.codec {
            None => Reader::File(f),
            Some(c) => Reader::Stream {
                r: compress::decoder(c, Box::new(io::BufReader::with_capacity(1 << 20, f)))?,
                pos: 0,
            },
        })
    }

    fn read_exact_at(&mut self, buf: &mut [u8], at: u64) -> io::Result<()> {
        match self {
            Reader::File(f) => f.read_exact_at(buf, at),
            Reader::Stream { r, pos } => {
                if at < *pos {
                    return Err(io::Error::other("image ranges out of order"));
                }
                let skip = at - *pos;
                let skipped = io::copy(&mut r.by_ref().take(skip), &mut io::sink())?;
                if skipped < skip {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                r.read_exact(buf)?;
                *pos = at + buf.len() as u64;
                Ok(())
            }
        }
    }
}

/// Where the image goes.
pub struct Target {
    pub path: PathBuf,
    /// The data path: O_DIRECT on a block device where the kernel allows it.
    pub file: File,
    /// A buffered descriptor of the same device for the partition-table work, whose reads and
    /// writes are sector-sized and unaligned.
    pub meta: File,
    pub size: u64,
    pub block_device: bool,
    pub direct: bool,
}

/// Alignment of direct I/O buffers, offsets and lengths (the largest logical block size).
const ALIGN: usize = 4096;

/// A zeroed buffer whose usable part starts on an [`ALIGN`] boundary, as O_DIRECT needs.
struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + ALIGN];
        let off = v.as_ptr().align_offset(ALIGN);
        AlignedBuf { v, off }
    }

    fn get(&mut self, n: usize) -> &mut [u8] {
        &mut self.v[self.off..self.off + n]
    }
}

fn open_error(path: &Path, e: io::Error) -> FlashError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            FlashError::Permission(path.to_path_buf())
        }
        Some(libc::EBUSY) => FlashError::Busy(path.to_path_buf()),
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
            FlashError::Missing(path.to_path_buf())
        }
        _ => io_err(path)(e),
    }
}

impl Target {
    /// Opens a checked target for writing: O_EXCL on a block device, which the kernel refuses
    /// while a partition is mounted or another program holds the device exclusively. Data goes
    /// through O_DIRECT there: no page cache to fill and drop, every write done when it returns
    /// (so a failing card is noticed where it fails), and the read-back comes from the device.
    pub fn open(path: &Path, block_device: bool) -> Result<Target, FlashError> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |flags: i32| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags | libc::O_CLOEXEC)
                .open(path)
        };
        let (file, direct) = if block_device {
            match open(libc::O_EXCL | libc::O_DIRECT) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    (open(libc::O_EXCL).map_err(|e| open_error(path, e))?, false)
                }
                Err(e) => return Err(open_error(path, e)),
            }
        } else {
            (open(0).map_err(|e| open_error(path, e))?, false)
        };
        // Without O_EXCL: the claim is held by `file`.
        let meta = open(0).map_err(|e| open_error(path, e))?;
        let size = piimg_agent::grow::device_bytes(&meta).map_err(io_err(path))?;
        Ok(Target {
            path: path.to_path_buf(),
            file,
            meta,
            size,
            block_device,
            direct,
        })
    }
}

/// What a flash did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub image_bytes: u64,
    /// Image bytes written (the mapped ranges).
    pub mapped_bytes: u64,
    /// Zeros written where old signatures could be.
    pub zeroed_bytes: u64,
    pub verified_bytes: u64,
    pub gpt_moved: bool,
    /// What re-reading the partition table said, when it did not succeed.
    pub reread_note: Option<String>,
    pub seconds: f64,
    /// Of which: writing (until the data was on the device) and reading back.
    pub write_seconds: f64,
    pub verify_seconds: f64,
}

/// Merged, sorted `[start, end)` ranges minus `taken`.
fn subtract(range: (u64, u64), taken: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = range.0;
    for &(s, e) in taken {
        if e <= at || s >= range.1 {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < range.1 {
        out.push((at, range.1));
    }
    out
}

struct Writer<'a> {
    target: &'a Target,
    done: u64,
    total: u64,
    /// Dirty span since the last window push, and the window being written back.
    dirty: Option<(u64, u64)>,
    flushing: Option<(u64, u64)>,
}

impl Writer<'_> {
    fn fail(&self, at: u64, source: io::Error) -> FlashError {
        FlashError::Device {
            path: self.target.path.clone(),
            at,
            done: self.done,
            total: self.total,
            source,
        }
    }

    fn write(&mut self, data: &[u8], at: u64) -> Result<(), FlashError> {
        let r = match self.target.file.write_all_at(data, at) {
            // A piece not aligned to the device's logical block (a partition end on a 4Kn
            // disk): through the page cache instead.
            Err(e) if self.target.direct && e.raw_os_error() == Some(libc::EINVAL) => self
                .target
                .meta
                .write_all_at(data, at)
                .and_then(|()| self.target.meta.sync_data()),
            r => r,
        };
        r.map_err(|e| self.fail(at, e))?;
        self.done += data.len() as u64;
        let end = at + data.len() as u64;
        let d = self.dirty.get_or_insert((at, end));
        d.0 = d.0.min(at);
        d.1 = d.1.max(end);
        if d.1 - d.0 >= WINDOW {
            self.push()?;
        }
        Ok(())
    }

    /// Starts write-back of the dirty span and waits for the span before it: the device always
    /// has one window in flight while the next is filled. Direct writes have nothing to push.
    fn push(&mut self) -> Result<(), FlashError> {
        if self.target.direct {
            self.dirty = None;
            return Ok(());
        }
        let fd = self.target.file.as_raw_fd();
        if let Some((s, e)) = self.dirty.take() {
            sync_range(fd, s, e, libc::SYNC_FILE_RANGE_WRITE).map_err(|err| self.fail(s, err))?;
            if let Some((ps, pe)) = self.flushing.replace((s, e)) {
                sync_range(
                    fd,
                    ps,
                    pe,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
                .map_err(|err| self.fail(ps, err))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), FlashError> {
        self.push()?;
        self.flushing = None;
        let at = self.done;
        self.target.file.sync_all().map_err(|e| self.fail(at, e))
    }
}

fn sync_range(fd: i32, start: u64, end: u64, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: plain syscall on an owned descriptor.
    let r = unsafe {
        libc::sync_file_range(
            fd,
            start as libc::off64_t,
            (end - start) as libc::off64_t,
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops the target's cached pages so that the read-back comes from the device.
fn drop_cache(t: &Target) {
    // SAFETY: advisory calls on an owned descriptor; failure only means a warmer cache.
    unsafe {
        libc::posix_fadvise(t.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        if t.block_device {
            libc::ioctl(t.file.as_raw_fd(), BLKFLSBUF as _, 0);
        }
    }
}

const BLKFLSBUF: libc::c_ulong = 0x1261;
const BLKRRPART: libc::c_ulong = 0x125f;

/// Asks the kernel to read the new partition table.
fn reread_table(t: &Target) -> Option<String> {
    if !t.block_device {
        return None;
    }
    // SAFETY: ioctl without arguments on an owned descriptor.
    let r = unsafe { libc::ioctl(t.file.as_raw_fd(), BLKRRPART as _, 0) };
    if r == 0 {
        return None;
    }
    let e = io::Error::last_os_error();
    Some(match e.raw_os_error() {
        // Loop devices without partition scanning, kernels without partition-table support.
        Some(libc::EINVAL) => "the kernel does not partition this device; nothing to re-read".into(),
        Some(libc::EBUSY) => {
            "the kernel still uses the old partition table (device busy): unplug and replug the card".into()
        }
        _ => format!("re-reading the partition table: {e}"),
    })
}

/// Reads `ranges` back from the device and compares each with the sha256 of what was written,
/// on every core (reading and hashing a range are independent of the others).
fn verify(
    target: &Target,
    ranges: &[(u64, u64, [u8; 32])],
    reporter: &dyn Reporter,
) -> Result<u64, FlashError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<u64, FlashError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<u64, FlashError> {
                    let mut buf = AlignedBuf::new(CHUNK);
                    let mut done = 0u64;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(start, end, want)) = ranges.get(i) else {
                            return Ok(done);
                        };
                        let mut h = Sha256::new();
                        let mut at = start;
                        while at < end {
                            let n = ((end - at) as usize).min(CHUNK);
                            let b = buf.get(n);
                            match target.file.read_exact_at(b, at) {
                                Err(e)
                                    if target.direct && e.raw_os_error() == Some(libc::EINVAL) =>
                                {
                                    target.meta.read_exact_at(b, at)
                                }
                                r => r,
                            }
                            .map_err(|e| FlashError::Io {
                                path: target.path.clone(),
                                source: e,
                            })?;
                            h.update(b);
                            reporter.advance(n as u64);
                            at += n as u64;
                        }
                        let got: [u8; 32] = h.finalize().into();
                        if got != want {
                            return Err(FlashError::Verify {
                                path: target.path.clone(),
                                start,
                                end,
                                got: hex::encode(got),
                                want: hex::encode(want),
                            });
                        }
                        done += end - start;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FlashError::Io {
                        path: target.path.clone(),
                        source: io::Error::other("verification thread panicked"),
                    })
                })
            })
            .collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// A range of the device as written: (start, end, sha256 of the bytes written there).
type WrittenRange = (u64, u64, [u8; 32]);

/// Writes `img` to `target` (already checked and opened) and verifies it.
pub fn flash(img: &Image, target: &Target, reporter: &dyn Reporter) -> Result<Summary, FlashError> {
    let t0 = Instant::now();
    if target.size < img.size {
        return Err(FlashError::TooSmall {
            path: target.path.clone(),
            device: target.size,
            image: img.size,
        });
    }
    let ranges = img.ranges()?;
    let mapped: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let mut w = Writer {
        target,
        done: 0,
        total: mapped,
        dirty: None,
        flushing: None,
    };
    let mut written = write_mapped(img, &ranges, &mut w, reporter)?;
    let zeroed = wipe_old_signatures(target, &mut w, &mut written)?;
    w.finish()?;
    let write_seconds = t0.elapsed().as_secs_f64();

    let verified = verify_flashed(img, target, &written, reporter)?;
    let verify_seconds = t0.elapsed().as_secs_f64() - write_seconds;

    // Only now, with the image verified as written, the GPT backup moves to the card's end.
    let gpt_moved = if target.size > img.size {
        move_gpt_backup(target)?
    } else {
        false
    };
    let reread_note = reread_table(target);
    Ok(Summary {
        image_bytes: img.size,
        mapped_bytes: mapped,
        zeroed_bytes: zeroed,
        verified_bytes: verified,
        gpt_moved,
        reread_note,
        seconds: t0.elapsed().as_secs_f64(),
        write_seconds,
        verify_seconds,
    })
}

/// Copies the image's mapped ranges to the device. Reading (or decompressing) and hashing the
/// image runs beside writing the device: the two cores each take one side.
fn write_mapped(
    img: &Image,
    ranges: &[Planned],
    w: &mut Writer,
    reporter: &dyn Reporter,
) -> Result<Vec<WrittenRange>, FlashError> {
    let mut reader = Reader::open(img).map_err(io_err(&img.path))?;
    let mut written: Vec<WrittenRange> = Vec::with_capacity(ranges.len() + 16);
    reporter.begin(
        &format!(
            "writing {} to {}",
            img.path.file_name().map_or_else(
                || img.path.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            w.target.path.display()
        ),
        Some(w.total),
    );
    enum Msg {
        Chunk { at: u64, buf: AlignedBuf, n: usize },
        Range { start: u64, end: u64, got: [u8; 32] },
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(4);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(8);
    for _ in 0..6 {
        let _ = free_tx.send(AlignedBuf::new(CHUNK));
    }
    let produced = std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<(), FlashError> {
            for &Planned {
                start,
                end,
                expect: want,
            } in ranges
            {
                // With a block map, its sha256 is what the read-back must find (a damaged image
                // shows there too, and is told apart in verify_flashed); without one, the
                // image's own bytes.
                let mut h = want.is_none().then(Sha256::new);
                let mut at = start;
                while at < end {
                    // The writer gone (it failed) ends the reading too.
                    let Ok(mut buf) = free_rx.recv() else {
                        return Ok(());
                    };
                    let n = ((end - at) as usize).min(CHUNK);
                    reader
                        .read_exact_at(buf.get(n), at)
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::UnexpectedEof => FlashError::Truncated(img.path.clone()),
                            _ => io_err(&img.path)(e),
                        })?;
                    if let Some(h) = h.as_mut() {
                        h.update(buf.get(n));
                    }
                    if tx.send(Msg::Chunk { at, buf, n }).is_err() {
                        return Ok(());
                    }
                    at += n as u64;
                }
                let got = match (h, want) {
                    (Some(h), _) => h.finalize().into(),
                    (None, Some(w)) => w,
                    (None, None) => [0; 32],
                };
                if tx.send(Msg::Range { start, end, got }).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut wrote = Ok(());
        for msg in rx {
            match msg {
                Msg::Chunk { at, mut buf, n } => {
                    if let Err(e) = w.write(buf.get(n), at) {
                        wrote = Err(e);
                        break;
                    }
                    reporter.advance(n as u64);
                    let _ = free_tx.send(buf);
                }
                Msg::Range { start, end, got } => written.push((start, end, got)),
            }
        }
        drop(free_tx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io_err(&img.path)(io::Error::other("reader panicked"))));
        // A device error is the one to report: the reader only stopped because of it.
        wrote.and(produced)
    });
    produced?;
    reporter.end();
    Ok(written)
}

/// Zeros where old signatures could be read (the device's ends, each old partition's ends) and
/// the image wrote nothing, so blkid and the kernel find no stale filesystem. Returns the bytes
/// zeroed; the zeroed ranges join `written` for verification.
fn wipe_old_signatures(
    target: &Target,
    w: &mut Writer,
    written: &mut Vec<WrittenRange>,
) -> Result<u64, FlashError> {
    let taken: Vec<(u64, u64)> = written.iter().map(|r| (r.0, r.1)).collect();
    let mut spots: Vec<(u64, u64)> = vec![
        (0, MIB.min(target.size)),
        (target.size.saturating_sub(MIB), target.size),
    ];
    let mut dev = &target.meta;
    let parts = crate::qemu::read_partitions(&mut dev, &target.path.display().to_string())
        .unwrap_or_default();
    for p in &parts {
        let end = p.start + p.size;
        spots.push((p.start, (p.start + MIB).min(end)));
        spots.push((end.saturating_sub(MIB).max(p.start), end));
    }
    spots.sort_unstable();
    let mut zero_ranges: Vec<(u64, u64)> = Vec::new();
    for s in spots {
        for (a, b) in subtract(s, &taken) {
            match zero_ranges.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => zero_ranges.push((a, b)),
            }
        }
    }
    let zeroed: u64 = zero_ranges.iter().map(|r| r.1 - r.0).sum();
    let mut zeros = AlignedBuf::new(MIB as usize);
    w.total += zeroed;
    for &(a, b) in &zero_ranges {
        let mut at = a;
        while at < b {
            let n = (b - at).min(MIB);
            w.write(zeros.get(n as usize), at)?;
            at += n;
        }
        written.push((a, b, zeros_sha256(b - a)));
    }
    Ok(zeroed)
}

fn zeros_sha256(len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let z = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(z.len() as u64);
        h.update(&z[..n as usize]);
        left -= n;
    }
    h.finalize().into()
}

/// Reads back every written range past the page cache. On a mismatch it tells which side is
/// wrong: the card, or an image that does not match its own block map.
fn verify_flashed(
    img: &Image,
    target: &Target,
    written: &[WrittenRange],
    reporter: &dyn Reporter,
) -> Result<u64, FlashError> {
    reporter.begin(
        &format!("verifying {}", target.path.display()),
        Some(written.iter().map(|r| r.1 - r.0).sum()),
    );
    drop_cache(target);
    let verified = match verify(target, written, reporter) {
        Err(FlashError::Verify {
            start, end, want, ..
        }) if img.bmap.is_some() && img.codec.is_none() => {
            let f = File::open(&img.path).map_err(io_err(&img.path))?;
            let mut data = vec![0u8; (end - start) as usize];
            f.read_exact_at(&mut data, start)
                .map_err(io_err(&img.path))?;
            let got = hex::encode(Sha256::digest(&data));
            return Err(if got != want {
                FlashError::Source {
                    image: img.path.clone(),
                    start,
                    end,
                    got,
                    want,
                }
            } else {
                FlashError::Verify {
                    path: target.path.clone(),
                    start,
                    end,
                    got: "different".into(),
                    want,
                }
            });
        }
        r => r?,
    };
    reporter.end();
    Ok(verified)
}

/// Moves a GPT's backup to the end of a device larger than the image, then reads it back: the
/// moved table must parse with valid CRCs and already sit at the end.
fn move_gpt_backup(target: &Target) -> Result<bool, FlashError> {
    let moved = piimg_agent::grow::move_gpt_backup(&target.meta, target.size)
        .map_err(|e| FlashError::Gpt(target.path.clone(), e))?;
    if moved {
        drop_cache(target);
        if piimg_agent::grow::move_gpt_backup(&target.meta, target.size)
            .map_err(|e| FlashError::Gpt(target.path.clone(), e))?
        {
            return Err(FlashError::Gpt(
                target.path.clone(),
                piimg_agent::grow::GrowError::BadGpt("the backup did not stay at the end"),
            ));
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_leaves_the_gaps() {
        assert_eq!(
            subtract((0, 100), &[(10, 20), (30, 40), (90, 200)]),
            vec![(0, 10), (20, 30), (40, 90)]
        );
        assert_eq!(subtract((50, 60), &[(0, 100)]), vec![]);
        assert_eq!(subtract((50, 60), &[]), vec![(50, 60)]);
    }

    #[test]
    fn bmap_beside_compressed_images() {
        assert_eq!(
            bmap_path_for(Path::new("out/w1.img.zst")),
            Path::new("out/w1.img.bmap")
        );
        assert_eq!(
            bmap_path_for(Path::new("out/w1.img")),
            Path::new("out/w1.img.bmap")
        );
        assert_eq!(
            bmap_path_for(Path::new("w1.img.xz")),
            Path::new("w1.img.bmap")
        );
    }
}
