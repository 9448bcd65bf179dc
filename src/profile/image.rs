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
