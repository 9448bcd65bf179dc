//! Compressed copies of images for other flashers (rpi-imager, bmaptool, Etcher read .zst / .xz)
//! and reading them back. Both encoders run multi-threaded with settings that make the bytes
//! independent of the thread count, so a compressed image is as reproducible as the image.

use std::io::{self, Read, Write};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    Zstd,
    Xz,
}

/// zstd level: most of the ratio of 19 on these images at a fraction of its time.
const ZSTD_LEVEL: i32 = 9;
/// xz preset 6 (xz's default) with a fixed block size: liblzma splits the input into blocks of
/// this size whatever the thread count, so the output depends only on the input.
const XZ_PRESET: u32 = 6;
const XZ_BLOCK: u64 = 24 << 20;

impl Codec {
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => "zst",
            Codec::Xz => "xz",
        }
    }

    /// The codec of a file name ending in `.zst` or `.xz`.
    pub fn from_path(path: &Path) -> Option<Codec> {
        match path.extension()?.to_str()? {
            "zst" | "zstd" => Some(Codec::Zstd),
            "xz" => Some(Codec::Xz),
            _ => None,
        }
    }
}

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Compresses all of `input` into `output` with `threads` workers (at least one: zstd's
/// single-threaded mode writes other bytes than its multi-threaded one).
pub fn compress_with(
    codec: Codec,
    threads: u32,
    input: &mut dyn Read,
    output: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> io::Result<()> {
    let threads = threads.max(1);
    match codec {
        Codec::Zstd => {
            let mut enc = zstd::stream::Encoder::new(output, ZSTD_LEVEL)?;
            enc.multithread(threads)?;
            enc.include_checksum(true)?;
            copy(input, &mut enc, progress)?;
            enc.finish()?;
        }
        Codec::Xz => {
            let stream = xz2::stream::MtStreamBuilder::new()
                .threads(threads)
                .block_size(XZ_BLOCK)
                .preset(XZ_PRESET)
                .check(xz2::stream::Check::Crc64)
                .encoder()
                .map_err(io::Error::other)?;
            let mut enc = xz2::write::XzEncoder::new_stream(output, stream);
            copy(input, &mut enc, progress)?;
            enc.finish()?;
        }
    }
    Ok(())
}

/// [`compress_with`] on every core.
pub fn compress(
    codec: Codec,
    input: &mut dyn Read,
    output: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> io::Result<()> {
    compress_with(codec, threads(), input, output, progress)
}

/// A reader of the decompressed bytes of `input`.
pub fn decoder<'a>(
    codec: Codec,
    input: Box<dyn Read + Send + 'a>,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match codec {
        Codec::Zstd => Box::new(zstd::stream::Decoder::new(input)?),
        // Concatenated streams (pixz, xz -T) are read as one.
        Codec::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(io::BufReader::new(
            input,
        ))),
    })
}

fn copy(input: &mut dyn Read, output: &mut dyn Write, progress: &dyn Fn(u64)) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buf[..n])?;
        progress(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input larger than several zstd jobs and xz blocks, so that the workers really split it.
    fn input() -> Vec<u8> {
        let mut v = vec![0u8; 80 << 20];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for chunk in v.chunks_mut(4096).step_by(3) {
            for b in chunk.iter_mut().take(1500) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x % 7) as u8;
            }
        }
        v
    }

    #[test]
    fn output_does_not_depend_on_thread_count_and_round_trips() {
        let data = input();
        for codec in [Codec::Zstd, Codec::Xz] {
            let mut one = Vec::new();
            compress_with(codec, 1, &mut &data[..], &mut one, &|_| {}).unwrap();
            let mut four = Vec::new();
            compress_with(codec, 4, &mut &data[..], &mut four, &|_| {}).unwrap();
            assert!(one == four, "{codec:?}: 1 and 4 threads differ");
            let mut back = Vec::new();
            decoder(codec, Box::new(&one[..]))
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "{codec:?} does not round-trip");
        }
    }
}
