//! Human sizes on the command line and in profiles: `512MiB`, `2G`, `4096`.

/// Parses a byte size: a whole number with an optional binary suffix (K/KiB, M/MiB, G/GiB,
/// T/TiB; the short forms are binary too, as in dd and mke2fs).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size (expected e.g. 512MiB, 2GiB or bytes)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (number too large)"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `1.5 GiB`-style rendering for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
