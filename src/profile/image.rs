//! `[image]`: the image's partition sizes and the Debian archives its packages come from.

use super::fields::{parse_size_field, Ctx};
use super::schema::ImageSpec;
use super::{ImageSettings, DEFAULT_SUITE, SUPPORTED_SUITES};
use crate::components::apt::{Archive, Snapshot, SuiteSources};
use std::path::PathBuf;

/// The image settings; a bad value is reported and its default used, so checks go on.
pub(super) fn check(ctx: &mut Ctx, img: &ImageSpec) -> ImageSettings {
    let (size, boot_size, data_size) = sizes(ctx, img);
    let suite = suite(ctx, img.suite.as_deref());
    check_mirrors(ctx, img);
    let archives = archives(ctx, img);
    let snapshot = snapshot(ctx, img);
    let keyring = keyring(ctx, img.keyring.as_deref());
    let trim = |m: &String| m.trim_end_matches('/').to_string();
    ImageSettings {
        size,
        boot_size,
        data_size,
        sources: SuiteSources {
            suite,
            mirror: img.mirror.as_ref().map(trim),
            security_mirror: img.security_mirror.as_ref().map(trim),
            archives,
            snapshot,
            keyring,
        },
    }
}

/// Whole image, boot and data partition: the layout must fit a root filesystem, and QEMU's SD
/// card model takes power-of-two sizes only.
fn sizes(ctx: &mut Ctx, img: &ImageSpec) -> (u64, u64, u64) {
    let size = parse_size_field(ctx, "image.size", img.size.as_deref(), 2 << 30);
    if !size.is_power_of_two() {
        ctx.err(
            "image.size",
            format!(
                "{size} bytes is not a power of two (QEMU's SD card model needs one, e.g. 2GiB)"
            ),
        );
    }
    let boot_size = parse_size_field(ctx, "image.boot_size", img.boot_size.as_deref(), 128 << 20);
    let data_size = parse_size_field(ctx, "image.data_size", img.data_size.as_deref(), 256 << 20);
    if boot_size < (64 << 20) {
        ctx.err(
            "image.boot_size",
            "the FAT32 boot partition needs at least 64MiB",
        );
    }
    if boot_size + data_size + (256 << 20) > size {
        ctx.err(
            "image.size",
            format!(
                "too small for a {} boot and {} data partition plus a root filesystem of at least 256 MiB",
                crate::units::human(boot_size),
                crate::units::human(data_size)
            ),
        );
    }
    (size, boot_size, data_size)
}

/// piimg knows the package sets of these suites only.
fn suite(ctx: &mut Ctx, suite: Option<&str>) -> String {
    let suite = suite.unwrap_or(DEFAULT_SUITE).to_string();
    if !SUPPORTED_SUITES.contains(&suite.as_str()) {
        ctx.err(
            "image.suite",
            format!(
                "`{suite}` is not supported (use {})",
                SUPPORTED_SUITES.join(" or ")
            ),
        );
    }
    suite
}

/// The fetcher speaks HTTP(S) only.
fn check_mirrors(ctx: &mut Ctx, img: &ImageSpec) {
    for (field, uri) in [
        ("image.mirror", &img.mirror),
        ("image.security_mirror", &img.security_mirror),
        ("image.snapshot_mirror", &img.snapshot_mirror),
    ] {
        if let Some(u) = uri {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace);
            if !ok {
                ctx.err(field, format!("`{u}` is not an http(s) URI"));
            }
        }
    }
}

/// The archives resolved besides the suite; the security archive lives on its own mirror.
fn archives(ctx: &mut Ctx, img: &ImageSpec) -> Vec<Archive> {
    let mut archives = Vec::new();
    for a in img
        .archives
        .clone()
        .unwrap_or_else(|| vec!["updates".into(), "security".into()])
    {
        match Archive::parse(&a) {
            Ok(x) if archives.contains(&x) => {
                ctx.err("image.archives", format!("`{a}` is listed twice"))
            }
            Ok(x) => archives.push(x),
            Err(_) => ctx.err(
                "image.archives",
                format!(
                    "`{a}` is not an archive piimg resolves from (use \"updates\", \"security\")"
                ),
            ),
        }
    }
    if archives.contains(&Archive::Security)
        && img.mirror.is_some()
        && img.security_mirror.is_none()
    {
        ctx.err(
            "image.security_mirror",
            "needed with image.mirror while image.archives includes \"security\" \
             (the security archive has its own mirror), or leave \"security\" out of image.archives",
        );
    }
    archives
}

/// The keyring verifies every Release file, so it must exist when the profile is checked.
fn keyring(ctx: &mut Ctx, keyring: Option<&str>) -> Option<PathBuf> {
    let keyring = keyring.map(|k| ctx.rel("image.keyring", k));
    if let Some(k) = &keyring {
        if !k.is_file() {
            ctx.err("image.keyring", format!("{} is not a file", k.display()));
        }
    }
    keyring
}

/// A snapshot needs both its timestamp and the service that serves it.
fn snapshot(ctx: &mut Ctx, img: &ImageSpec) -> Option<Snapshot> {
    match (&img.snapshot, &img.snapshot_mirror) {
        (Some(t), Some(m)) => {
            if !Snapshot::valid_timestamp(t) {
                ctx.err(
                    "image.snapshot",
                    format!("`{t}` is not a snapshot timestamp (want the form 20251120T000000Z)"),
                );
            }
            Some(Snapshot {
                timestamp: t.clone(),
                mirror: m.trim_end_matches('/').to_string(),
            })
        }
        (Some(_), None) => {
            ctx.err(
                "image.snapshot",
                "needs image.snapshot_mirror, the snapshot archive's base URI",
            );
            None
        }
        (None, Some(_)) => {
            ctx.err("image.snapshot_mirror", "set without image.snapshot");
            None
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors};
    use super::*;

    fn spec(text: &str) -> ImageSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn an_empty_section_takes_the_defaults() {
        let (img, diags) = check(|ctx| super::check(ctx, &ImageSpec::default()));
        assert!(diags.0.is_empty(), "{diags}");
        assert_eq!(
            (img.size, img.boot_size, img.data_size),
            (2 << 30, 128 << 20, 256 << 20)
        );
        assert_eq!(img.sources.suite, DEFAULT_SUITE);
        assert_eq!(img.sources.archives, [Archive::Updates, Archive::Security]);
    }

    #[test]
    fn mirrors_lose_their_trailing_slash() {
        let s = spec(
            "mirror = \"http://deb.debian.org/debian/\"\nsecurity_mirror = \"https://security.debian.org//\"\n\
             snapshot = \"20251120T000000Z\"\nsnapshot_mirror = \"https://snapshot.debian.org/\"",
        );
        let (img, diags) = check(|ctx| super::check(ctx, &s));
        assert!(diags.0.is_empty(), "{diags}");
        assert_eq!(
            img.sources.mirror.as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            img.sources.security_mirror.as_deref(),
            Some("https://security.debian.org")
        );
        assert_eq!(
            img.sources.snapshot.map(|s| s.mirror).as_deref(),
            Some("https://snapshot.debian.org")
        );
    }

    #[test]
    fn sizes_are_powers_of_two_with_room_for_the_root() {
        let (_, diags) = check(|ctx| sizes(ctx, &spec("size = \"3GiB\"")));
        assert!(errors(&diags)[0].starts_with("image.size: 3221225472 bytes is not a power of two"));
        let (_, diags) = check(|ctx| sizes(ctx, &spec("size = \"512MiB\"")));
        assert!(errors(&diags)[0].starts_with("image.size: too small"));
        let (_, diags) = check(|ctx| sizes(ctx, &spec("boot_size = \"32MiB\"")));
        assert!(errors(&diags)[0].starts_with("image.boot_size: the FAT32 boot partition"));
    }

    #[test]
    fn only_known_suites() {
        let (s, diags) = check(|ctx| suite(ctx, Some("bookworm")));
        assert_eq!(s, "bookworm");
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| suite(ctx, Some("sid")));
        assert_eq!(
            errors(&diags),
            ["image.suite: `sid` is not supported (use trixie or bookworm)"]
        );
    }

    #[test]
    fn mirrors_are_http() {
        let (_, diags) = check(|ctx| check_mirrors(ctx, &spec("snapshot_mirror = \"ftp://x\"")));
        assert_eq!(
            errors(&diags),
            ["image.snapshot_mirror: `ftp://x` is not an http(s) URI"]
        );
    }

    #[test]
    fn a_mirror_needs_a_security_mirror_while_security_is_resolved() {
        let (a, diags) = check(|ctx| {
            archives(
                ctx,
                &spec("archives = [\"updates\"]\nmirror = \"http://m\""),
            )
        });
        assert_eq!(a, [Archive::Updates]);
        assert!(diags.0.is_empty());
        let (_, diags) = check(|ctx| archives(ctx, &spec("mirror = \"http://m\"")));
        assert!(errors(&diags)[0].starts_with("image.security_mirror: needed with image.mirror"));
        let (_, diags) = check(|ctx| archives(ctx, &spec("archives = [\"updates\", \"updates\"]")));
        assert_eq!(
            errors(&diags),
            ["image.archives: `updates` is listed twice"]
        );
    }

    #[test]
    fn a_snapshot_needs_its_mirror() {
        let (s, diags) = check(|ctx| snapshot(ctx, &spec("snapshot = \"20251120T000000Z\"")));
        assert!(s.is_none());
        assert!(errors(&diags)[0].starts_with("image.snapshot: needs image.snapshot_mirror"));
    }

    #[test]
    fn the_keyring_must_exist() {
        let (_, diags) = check(|ctx| keyring(ctx, Some("no/such.gpg")));
        assert_eq!(errors(&diags), ["image.keyring: no/such.gpg is not a file"]);
    }
}
