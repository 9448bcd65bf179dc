//! Block maps in bmaptool's format (version 2.0): which blocks of an image hold data, with a
//! sha256 per range, so that a flasher writes and verifies only those. The map of a piimg image
//! comes from what its writers wrote (see [`crate::fs::sparse::FileSink::mapped`]), never from
//! the host filesystem's extents, so it is the same on every machine. It always describes the
//! uncompressed image (a map of a compressed file is meaningless to a flasher: mkosi#950).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The block size piimg writes maps with (the writers' hole granularity).
pub const BLOCK_SIZE: u64 = crate::fs::sparse::HOLE_CHUNK as u64;

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("not a bmap file: {0}")]
    Xml(String),
    #[error("bmap version {0} is not supported (piimg reads 1.4 and 2.x, as bmaptool 3.x does)")]
    Version(String),
    #[error("bmap checksum type `{0}` is not supported (piimg reads sha256)")]
    ChecksumType(String),
    #[error("missing <{0}>")]
    Missing(&'static str),
    #[error("<{what}>: `{text}` is not a number")]
    Number { what: &'static str, text: String },
    #[error("<Range> `{0}` is malformed or lies outside the image")]
    Range(String),
    #[error("<Range> {0} has no sha256 (chksum attribute)")]
    RangeChecksum(String),
    #[error("ranges are out of order or overlap at {0}")]
    Order(String),
    #[error("<MappedBlocksCount> says {said}, the ranges add up to {counted}")]
    Count { said: u64, counted: u64 },
    #[error("the file's own checksum does not match (BmapFileChecksum): the file is damaged")]
    FileChecksum,
}

/// One run of mapped blocks, `first..=last`, and the sha256 of its bytes in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

impl Bmap {
    /// Maps `image` from byte ranges (sorted, disjoint), hashing each range's bytes.
    pub fn from_extents(image: &File, extents: &[(u64, u64)]) -> io::Result<Bmap> {
        let image_size = image.metadata()?.len();
        let mut ranges = Vec::with_capacity(extents.len());
        // Merge ranges that touch once rounded to blocks, as the map cannot tell them apart.
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in extents {
            let e = e.min(image_size);
            if e <= s {
                continue;
            }
            let (first, last) = (s / BLOCK_SIZE, (e - 1) / BLOCK_SIZE);
            match blocks.last_mut() {
                Some(b) if first <= b.1 + 1 => b.1 = b.1.max(last),
                _ => blocks.push((first, last)),
            }
        }
        let mut buf = vec![0u8; 1 << 20];
        for (first, last) in blocks {
            let (start, end) = byte_span(first, last, BLOCK_SIZE, image_size);
            let mut h = Sha256::new();
            let mut at = start;
            while at < end {
                let want = ((end - at) as usize).min(buf.len());
                let n = image.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "image shrank while mapping it",
                    ));
                }
                h.update(&buf[..n]);
                at += n as u64;
            }
            ranges.push(Range {
                first,
                last,
                sha256: h.finalize().into(),
            });
        }
        Ok(Bmap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges,
        })
    }

    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes the map covers (the last block may be partial).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (s, e) = self.span(r);
                e - s
            })
            .sum()
    }

    /// The byte range `[start, end)` of `r` in the image.
    pub fn span(&self, r: &Range) -> (u64, u64) {
        byte_span(r.first, r.last, self.block_size, self.image_size)
    }

    /// The file bmaptool writes: its layout, with the file's own sha256 computed over the text
    /// with that field's value as 64 ASCII zeros.
    pub fn to_xml(&self) -> String {
        let mapped = self.mapped_blocks();
        let pct = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str(
            "<!-- The block map of an image written by piimg: the blocks that hold data (partition\n     \
             tables, filesystem metadata, files, directories, journals). A flasher writes only\n     \
             these and checks each range against its sha256; the rest is free space. -->\n\n",
        );
        x.push_str("<bmap version=\"2.0\">\n");
        x.push_str(&format!(
            "    <!-- Image size in bytes: {} -->\n    <ImageSize> {} </ImageSize>\n\n",
            crate::units::human(self.image_size),
            self.image_size
        ));
        x.push_str(&format!(
            "    <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n",
            self.block_size
        ));
        x.push_str(&format!(
            "    <!-- Count of blocks in the image file -->\n    <BlocksCount> {} </BlocksCount>\n\n",
            self.blocks_count()
        ));
        x.push_str(&format!(
            "    <!-- Count of mapped blocks: {} or {pct:.1}% -->\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n",
            crate::units::human(self.mapped_bytes()),
        ));
        x.push_str("    <!-- Type of checksum used in this file -->\n    <ChecksumType> sha256 </ChecksumType>\n\n");
        x.push_str("    <!-- The checksum of this bmap file. When it is calculated, the value of\n         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
        x.push_str("    <BmapFileChecksum> ");
        let at = x.len();
        x.push_str(&"0".repeat(64));
        x.push_str(" </BmapFileChecksum>\n\n    <BlockMap>\n");
        for r in &self.ranges {
            let span = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            x.push_str(&format!(
                "        <Range chksum=\"{}\"> {span} </Range>\n",
                hex::encode(r.sha256)
            ));
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        x.replace_range(at..at + 64, &sum);
        x
    }

    /// Reads a bmap file (piimg's or bmaptool's), checking its own checksum, its version and
    /// that its ranges lie in order inside the image.
    pub fn parse(text: &str) -> Result<Bmap, BmapError> {
        let mut raw = RawBmap::read(text)?;
        raw.check_version()?;
        raw.check_checksum_type()?;
        let own = raw.field("BmapFileChecksum")?;
        check_own_checksum(text, own)?;
        let image_size = raw.number("ImageSize")?;
        let block_size = raw.number("BlockSize")?;
        if block_size == 0 {
            return Err(BmapError::Number {
                what: "BlockSize",
                text: "0".into(),
            });
        }
        let blocks = image_size.div_ceil(block_size);
        let map = Bmap {
            image_size,
            block_size,
            ranges: parse_ranges(std::mem::take(&mut raw.ranges), blocks)?,
        };
        let said = raw.number("MappedBlocksCount")?;
        if said != map.mapped_blocks() {
            return Err(BmapError::Count {
                said,
                counted: map.mapped_blocks(),
            });
        }
        Ok(map)
    }
}

/// A bmap file's contents as text, before any of it is checked.
#[derive(Debug, Default)]
struct RawBmap {
    /// The `version` attribute of `<bmap>`.
    version: Option<String>,
    /// Text of each element directly inside `<bmap>`, by name.
    fields: BTreeMap<String, String>,
    /// Each `<Range>`'s text and `chksum` attribute.
    ranges: Vec<(String, Option<String>)>,
}

impl RawBmap {
    fn read(text: &str) -> Result<RawBmap, BmapError> {
        use quick_xml::events::Event;
        let xml = |e: &dyn std::fmt::Display| BmapError::Xml(e.to_string());
        let mut reader = quick_xml::Reader::from_str(text);
        let mut raw = RawBmap::default();
        let mut path: Vec<String> = Vec::new();
        let mut range_sum: Option<String> = None;
        loop {
            match reader.read_event() {
                Err(e) => return Err(xml(&e)),
                Ok(Event::Eof) => return Ok(raw),
                Ok(Event::Start(e)) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    for a in e.attributes() {
                        let a = a.map_err(|e| xml(&e))?;
                        let v = a.unescape_value().map_err(|e| xml(&e))?.into_owned();
                        match (name.as_str(), a.key.as_ref()) {
                            ("bmap", b"version") => raw.version = Some(v),
                            ("Range", b"chksum") => range_sum = Some(v),
                            _ => {}
                        }
                    }
                    path.push(name);
                }
                Ok(Event::End(_)) => {
                    path.pop();
                }
                Ok(Event::Text(t)) => {
                    let t = t.unescape().map_err(|e| xml(&e))?.trim().to_string();
                    match path.last().map(String::as_str) {
                        Some("Range") => raw.ranges.push((t, range_sum.take())),
                        Some(n) if path.len() == 2 => {
                            raw.fields.insert(n.to_string(), t);
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
            }
        }
    }

    fn check_version(&self) -> Result<(), BmapError> {
        let version = self
            .version
            .as_ref()
            .ok_or(BmapError::Missing("bmap version"))?;
        let major = version.split('.').next().unwrap_or_default();
        if !(major == "2" || version == "1.4") {
            return Err(BmapError::Version(version.clone()));
        }
        Ok(())
    }

    fn check_checksum_type(&self) -> Result<(), BmapError> {
        let ctype = self.field("ChecksumType")?;
        if !ctype.eq_ignore_ascii_case("sha256") {
            return Err(BmapError::ChecksumType(ctype.to_string()));
        }
        Ok(())
    }

    fn field(&self, what: &'static str) -> Result<&str, BmapError> {
        self.fields
            .get(what)
            .map(String::as_str)
            .ok_or(BmapError::Missing(what))
    }

    fn number(&self, what: &'static str) -> Result<u64, BmapError> {
        let t = self.field(what)?;
        t.parse().map_err(|_| BmapError::Number {
            what,
            text: t.to_string(),
        })
    }
}

/// The `<Range>`s: each `first-last` (or one block) inside an image of `blocks` blocks, in
/// order, with its sha256.
fn parse_ranges(raw: Vec<(String, Option<String>)>, blocks: u64) -> Result<Vec<Range>, BmapError> {
    let mut ranges = Vec::with_capacity(raw.len());
    for (t, sum) in raw {
        let (a, b) = t.split_once('-').unwrap_or((&t, &t));
        let (Ok(first), Ok(last)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
            return Err(BmapError::Range(t));
        };
        if first > last || last >= blocks {
            return Err(BmapError::Range(t));
        }
        if let Some(prev) = ranges.last().map(|r: &Range| r.last) {
            if first <= prev {
                return Err(BmapError::Order(t));
            }
        }
        let sum = sum.ok_or_else(|| BmapError::RangeChecksum(t.clone()))?;
        let sha256: [u8; 32] = hex::decode(&sum)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| BmapError::RangeChecksum(t.clone()))?;
        ranges.push(Range {
            first,
            last,
            sha256,
        });
    }
    Ok(ranges)
}

fn byte_span(first: u64, last: u64, bs: u64, size: u64) -> (u64, u64) {
    ((first * bs).min(size), ((last + 1) * bs).min(size))
}

/// The file's sha256 over its text with the stored value replaced by zeros (bmaptool's rule).
fn check_own_checksum(text: &str, stored: &str) -> Result<(), BmapError> {
    let tag = "<BmapFileChecksum>";
    let at = text
        .find(tag)
        .ok_or(BmapError::Missing("BmapFileChecksum"))?
        + tag.len();
    let rel = text[at..].find(stored).ok_or(BmapError::FileChecksum)?;
    let mut zeroed = text.as_bytes().to_vec();
    zeroed[at + rel..at + rel + stored.len()].fill(b'0');
    if hex::encode(Sha256::digest(&zeroed)) == stored.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(BmapError::FileChecksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &std::path::Path) -> (File, Vec<(u64, u64)>) {
        let path = dir.join("img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[1u8; 100], 10).unwrap();
        f.write_all_at(&[2u8; 5000], 8192).unwrap();
        f.write_all_at(&[3u8; 1], (1 << 20) - 1).unwrap();
        // The middle range is written zeros too: mapped, even though it reads as a hole.
        (
            f,
            vec![
                (10, 110),
                (8192, 8192 + 5000),
                (20000, 30000),
                ((1 << 20) - 1, 1 << 20),
            ],
        )
    }

    #[test]
    fn round_trip_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (f, ext) = image(dir.path());
        let m = Bmap::from_extents(&f, &ext).unwrap();
        // 8192..13192 and 20000..30000 touch once rounded to blocks (2-3 and 4-7).
        let spans: Vec<(u64, u64)> = m.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, vec![(0, 0), (2, 7), (255, 255)]);
        assert_eq!(m.mapped_blocks(), 8);
        let bytes = std::fs::read(dir.path().join("img")).unwrap();
        let want: [u8; 32] = Sha256::digest(&bytes[8192..32768]).into();
        assert_eq!(m.ranges[1].sha256, want);
        let xml = m.to_xml();
        assert_eq!(Bmap::parse(&xml).unwrap(), m);
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (f, ext) = image(dir.path());
        let xml = Bmap::from_extents(&f, &ext).unwrap().to_xml();
        let bad = xml.replacen("> 2-7 <", "> 2-8 <", 1);
        assert!(matches!(Bmap::parse(&bad), Err(BmapError::FileChecksum)));
        let bad = xml.replacen("version=\"2.0\"", "version=\"3.0\"", 1);
        assert!(matches!(Bmap::parse(&bad), Err(BmapError::Version(_))));
        assert!(matches!(
            Bmap::parse("<bmap version=\"2.0\"><ImageSize>"),
            Err(BmapError::Xml(_) | BmapError::Missing(_))
        ));
        assert!(Bmap::parse("not xml at all <<<").is_err());
    }
}
