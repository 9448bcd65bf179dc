//! Directory entry names: VFAT long names (UTF-16) and unique, deterministic 8.3 short names.

use super::FatError;
use std::collections::{BTreeMap, BTreeSet};

/// Longest long file name in UTF-16 code units.
const LFN_MAX: usize = 255;
/// Characters no FAT name may hold.
const FORBIDDEN: &[u8] = b"\"*/:<>?\\|";
/// Reserved bits 3 and 4 of byte 12 (Windows NT / Linux): the base / extension are lower case.
pub const CASE_LOWER_BASE: u8 = 0x08;
pub const CASE_LOWER_EXT: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatName {
    /// 11 bytes, space padded, as stored in the short entry.
    pub short: [u8; 11],
    /// Case flags for a name stored as a short entry only.
    pub case: u8,
    /// The long name in UTF-16 when the short entry cannot carry the name exactly.
    pub long: Option<Vec<u16>>,
}

impl FatName {
    /// Directory entries this name takes (long-name entries plus the short entry).
    pub fn slots(&self) -> usize {
        self.long.as_ref().map_or(0, |l| l.len().div_ceil(13)) + 1
    }
}

fn short_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"$%'-_@~`!(){}^#&".contains(&c)
}

/// `name` as an exact 8.3 name (with case flags) when it is one: ASCII, one optional dot,
/// base 1-8 and extension 0-3 valid characters, each part in a single case.
fn exact_short(name: &str) -> Option<([u8; 11], u8)> {
    let b = name.as_bytes();
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &b[..0]),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (name.contains('.') && ext.is_empty())
    {
        return None;
    }
    if !base.iter().chain(ext).all(|c| short_char_ok(*c)) {
        return None;
    }
    let mut case = 0;
    for (part, flag) in [(base, CASE_LOWER_BASE), (ext, CASE_LOWER_EXT)] {
        let lower = part.iter().any(|c| c.is_ascii_lowercase());
        let upper = part.iter().any(|c| c.is_ascii_uppercase());
        if lower && upper {
            return None;
        }
        if lower {
            case |= flag;
        }
    }
    let mut short = [b' '; 11];
    for (i, c) in base.iter().enumerate() {
        short[i] = c.to_ascii_uppercase();
    }
    for (i, c) in ext.iter().enumerate() {
        short[8 + i] = c.to_ascii_uppercase();
    }
    Some((short, case))
}

/// The short-name basis of a long name (FAT spec, "basis-name generation"): upper case, spaces and
/// leading dots removed, other dots removed from the base, characters with no short form as `_`.
/// Returns the base (<= 8), extension (<= 3) and whether anything was lost.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let mut lossy = false;
    let conv = |c: char, lossy: &mut bool| -> Option<u8> {
        if c == ' ' {
            *lossy = true;
            return None;
        }
        if c.is_ascii() && (short_char_ok(c as u8) || c == '.') {
            return Some((c as u8).to_ascii_uppercase());
        }
        *lossy = true;
        Some(b'_')
    };
    let trimmed = name.trim_start_matches('.');
    if trimmed.len() != name.len() {
        lossy = true;
    }
    let (base_s, ext_s) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut base = Vec::new();
    for c in base_s.chars() {
        if c == '.' {
            lossy = true;
            continue;
        }
        if let Some(b) = conv(c, &mut lossy) {
            base.push(b);
        }
    }
    let mut ext = Vec::new();
    for c in ext_s.chars() {
        if let Some(b) = conv(c, &mut lossy) {
            ext.push(b);
        }
    }
    if base.len() > 8 {
        base.truncate(8);
        lossy = true;
    }
    if ext.len() > 3 {
        ext.truncate(3);
        lossy = true;
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

fn pack(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base);
    s[8..8 + ext.len()].copy_from_slice(ext);
    s
}

/// Checks a name and converts it to UTF-16 for a long entry.
fn long_form(name: &[u8], path: &str) -> Result<(String, Vec<u16>), FatError> {
    let bad = |why: &str| FatError::Invalid(format!("{path}: name cannot be stored on FAT: {why}"));
    let s = std::str::from_utf8(name).map_err(|_| bad("not UTF-8"))?;
    if let Some(c) = s
        .bytes()
        .find(|c| *c < 0x20 || *c == 0x7f || FORBIDDEN.contains(c))
    {
        return Err(bad(&format!("contains {:?}", c as char)));
    }
    if s.ends_with('.') || s.ends_with(' ') {
        return Err(bad("ends with a dot or space"));
    }
    let utf16: Vec<u16> = s.encode_utf16().collect();
    if utf16.len() > LFN_MAX {
        return Err(bad(&format!(
            "{} UTF-16 units, FAT allows {LFN_MAX}",
            utf16.len()
        )));
    }
    Ok((s.to_string(), utf16))
}

/// Names for all entries of one directory, in the given order. `dir` is the directory's path for
/// messages. Exact 8.3 names keep their short form; the others get `BASE~N` tails, numbered in
/// entry order, skipping any short name already taken.
pub fn assign(dir: &str, names: &[&[u8]]) -> Result<Vec<FatName>, FatError> {
    let join = |n: &[u8]| {
        let n = String::from_utf8_lossy(n);
        if dir.is_empty() {
            n.into_owned()
        } else {
            format!("{dir}/{n}")
        }
    };
    let forms = long_forms(names, &join)?;
    let mut taken: BTreeSet<[u8; 11]> = BTreeSet::new();
    let mut out: Vec<Option<FatName>> = vec![None; names.len()];
    for (i, (s, _)) in forms.iter().enumerate() {
        if let Some((short, case)) = exact_short(s) {
            taken.insert(short);
            out[i] = Some(FatName {
                short,
                case,
                long: None,
            });
        }
    }
    let mut next_tail: BTreeMap<[u8; 11], u32> = BTreeMap::new();
    for (i, (s, utf16)) in forms.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let (base, ext, lossy) = basis(s);
        let plain = pack(&base, &ext);
        let short = if !lossy && !taken.contains(&plain) {
            plain
        } else {
            let n = next_tail.entry(plain).or_insert(1);
            tailed(&base, &ext, n, &taken).ok_or_else(|| {
                FatError::Invalid(format!("{}: no free short name left", join(names[i])))
            })?
        };
        taken.insert(short);
        out[i] = Some(FatName {
            short,
            case: 0,
            long: Some(utf16.clone()),
        });
    }
    Ok(out.into_iter().flatten().collect())
}

/// Each name checked and in UTF-16. FAT looks names up case-insensitively: two names differing
/// only in case would collide.
fn long_forms(
    names: &[&[u8]],
    join: &dyn Fn(&[u8]) -> String,
) -> Result<Vec<(String, Vec<u16>)>, FatError> {
    let mut forms = Vec::with_capacity(names.len());
    let mut folded: BTreeMap<String, &[u8]> = BTreeMap::new();
    for n in names {
        let path = join(n);
        let (s, utf16) = long_form(n, &path)?;
        let key: String = s.chars().flat_map(char::to_uppercase).collect();
        if let Some(prev) = folded.insert(key, n) {
            return Err(FatError::Invalid(format!(
                "{path}: FAT names are case-insensitive and {} exists too",
                join(prev)
            )));
        }
        forms.push((s, utf16));
    }
    Ok(forms)
}

/// The first free `BASE~N` short name from tail number `*n` on (which it advances); None once
/// the tail no longer fits.
fn tailed(base: &[u8], ext: &[u8], n: &mut u32, taken: &BTreeSet<[u8; 11]>) -> Option<[u8; 11]> {
    loop {
        let tail = format!("~{n}");
        if tail.len() > 7 {
            return None;
        }
        let keep = base.len().min(8 - tail.len());
        let mut b = base[..keep].to_vec();
        b.extend_from_slice(tail.as_bytes());
        let cand = pack(&b, ext);
        *n += 1;
        if !taken.contains(&cand) {
            return Some(cand);
        }
    }
}

/// Checksum of a short name stored in each of its long-name entries.
pub fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, c| sum.rotate_right(1).wrapping_add(*c))
}

/// The long-name entries for `long`, in on-disk order (highest sequence number first).
pub fn lfn_entries(long: &[u16], short: &[u8; 11]) -> Vec<[u8; 32]> {
    let sum = lfn_checksum(short);
    let count = long.len().div_ceil(13);
    let mut out = Vec::with_capacity(count);
    for seq in (1..=count).rev() {
        let mut units = [0xffffu16; 13];
        for (k, u) in units.iter_mut().enumerate() {
            let idx = (seq - 1) * 13 + k;
            match idx.cmp(&long.len()) {
                std::cmp::Ordering::Less => *u = long[idx],
                std::cmp::Ordering::Equal => *u = 0,
                std::cmp::Ordering::Greater => {}
            }
        }
        let mut e = [0u8; 32];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = 0x0f;
        e[13] = sum;
        let offsets = (0..5)
            .map(|k| 1 + 2 * k)
            .chain((0..6).map(|k| 14 + 2 * k))
            .chain((0..2).map(|k| 28 + 2 * k));
        for (u, off) in units.iter().zip(offsets) {
            e[off..off + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(s: &FatName) -> String {
        String::from_utf8_lossy(&s.short).into_owned()
    }

    #[test]
    fn exact_names_keep_short_form_with_case_flags() {
        let n = assign("", &[b"config.txt", b"README", b"start4.elf"]).unwrap();
        assert_eq!(short(&n[0]), "CONFIG  TXT");
        assert_eq!(n[0].case, CASE_LOWER_BASE | CASE_LOWER_EXT);
        assert!(n[0].long.is_none());
        assert_eq!(short(&n[1]), "README     ");
        assert_eq!(n[1].case, 0);
        assert_eq!(n[2].slots(), 1);
    }

    #[test]
    fn long_names_get_unique_tails() {
        let names: Vec<Vec<u8>> = (0..120)
            .map(|i| format!("overlay-{i:03}.dtbo").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let n = assign("overlays", &refs).unwrap();
        let set: BTreeSet<_> = n.iter().map(|x| x.short).collect();
        assert_eq!(set.len(), 120);
        assert_eq!(short(&n[0]), "OVERLA~1DTB");
        assert_eq!(short(&n[9]), "OVERL~10DTB");
        assert_eq!(short(&n[119]), "OVER~120DTB");
        assert!(n.iter().all(|x| x.long.is_some()));
    }

    #[test]
    fn literal_short_names_win_over_generated_tails() {
        let n = assign("", &[b"Long Name.txt", b"LONGNA~1.TXT"]).unwrap();
        assert_eq!(short(&n[1]), "LONGNA~1TXT");
        assert_eq!(short(&n[0]), "LONGNA~2TXT");
    }

    #[test]
    fn mixed_case_lossless_name_needs_no_tail() {
        let n = assign("", &[b"Makefile"]).unwrap();
        assert_eq!(short(&n[0]), "MAKEFILE   ");
        assert_eq!(n[0].long.as_deref().map(|l| l.len()), Some(8));
    }

    #[test]
    fn case_duplicates_and_bad_chars_are_errors() {
        assert!(assign("d", &[b"a.txt", b"A.TXT"]).is_err());
        assert!(assign("d", &[b"a:b"]).is_err());
        assert!(assign("d", &[b"trailing."]).is_err());
        assert!(assign("d", &[&[0xff, 0xfe][..]]).is_err());
    }

    #[test]
    fn checksum_matches_reference() {
        // Reference value computed by the FAT spec's algorithm for "README  TXT".
        let mut sum: u8 = 0;
        for c in b"README  TXT" {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(*c);
        }
        assert_eq!(lfn_checksum(b"README  TXT"), sum);
    }

    #[test]
    fn lfn_entries_pad_with_terminator_then_ffff() {
        let long: Vec<u16> = "abcdefghijklmn".encode_utf16().collect(); // 14 units
        let e = lfn_entries(&long, b"ABCDEF~1   ");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0], 0x42);
        assert_eq!(e[1][0], 0x01);
        // second entry holds 'n' then 0x0000 then 0xFFFF
        assert_eq!(&e[0][1..7], &[b'n', 0, 0, 0, 0xff, 0xff]);
    }
}
