//! `piimg flash`: pick and check the target, ask, write, report.

use anyhow::{bail, Context, Result};
use piimg::flash::device::{self, BlockDevice, Kind};
use piimg::flash::{self, FlashError, Image, Target};
use piimg::pipeline::Freshness;
use piimg::units::human;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

pub struct FlashArgs<'a> {
    pub profiles: &'a Path,
    pub positional: &'a [PathBuf],
    pub profile: Option<&'a str>,
    pub out: &'a Path,
    pub components: &'a [String],
    pub offline: bool,
    pub list: bool,
    pub json: bool,
    pub yes: bool,
    pub allow_fixed: bool,
    pub file: bool,
    pub quiet: bool,
    pub verbose: u8,
}

pub fn run(a: FlashArgs) -> Result<i32> {
    if a.list {
        return list(a.json);
    }
    let (image, target) = match (a.profile, a.positional) {
        (Some(name), [dev]) => match image_for_profile(&a, name)? {
            Some(img) => (img, dev.clone()),
            None => return Ok(1),
        },
        (None, [img, dev]) => (img.clone(), dev.clone()),
        (Some(_), _) => bail!("with --profile, give only the device: piimg flash --profile NAME DEVICE"),
        (None, _) => bail!("usage: piimg flash IMAGE DEVICE, piimg flash --profile NAME DEVICE, or piimg flash --list"),
    };
    let progress = super::progress::Progress::new(a.quiet);
    let img = Image::open(&image, &progress)?;
    let block_device = check_target(&target, img.size, &a)?;
    if block_device && !a.yes {
        confirm(&target, &img)?;
    }
    let t = Target::open(&target, block_device)?;
    let s = match flash::flash(&img, &t, &progress) {
        Ok(s) => s,
        Err(e @ FlashError::Device { .. }) => {
            eprintln!("piimg: error: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(n) = &s.reread_note {
        if !a.quiet {
            eprintln!("piimg: {n}");
        }
    }
    if a.verbose > 0 {
        eprintln!(
            "piimg: writing and syncing {:.2} s, reading back {:.2} s",
            s.write_seconds, s.verify_seconds
        );
    }
    let rate = s.mapped_bytes as f64 / s.seconds.max(1e-3) / 1e6;
    println!(
        "{}: wrote {} of the {} image{} in {:.1} s ({rate:.0} MB/s), {} read back and verified{}",
        target.display(),
        human(s.mapped_bytes),
        human(s.image_bytes),
        if s.zeroed_bytes > 0 {
            format!(
                " and {} of zeros over old signatures",
                human(s.zeroed_bytes)
            )
        } else {
            String::new()
        },
        s.seconds,
        human(s.verified_bytes),
        if s.gpt_moved {
            ", backup GPT moved to the card's end"
        } else {
            ""
        }
    );
    Ok(0)
}

/// out/NAME.img, built first when missing or built from other inputs.
fn image_for_profile(a: &FlashArgs, name: &str) -> Result<Option<PathBuf>> {
    let Some(p) = super::profiles::load(a.profiles, Some(name), false, a.quiet)? else {
        return Ok(None);
    };
    let Some(node) = p.node(name) else {
        return Err(super::profiles::unknown_profile(a.profiles, name));
    };
    let opts = super::build_options(a.out, a.offline, a.components, Vec::new())?;
    let lock = piimg::pipeline::lock_path(a.profiles);
    let inputs = piimg::pipeline::build_inputs(&p, node, &lock, &opts)?;
    let image = a.out.join(format!("{name}.img"));
    match piimg::pipeline::freshness(a.out, name, &inputs) {
        Freshness::Current => {
            if !a.quiet {
                eprintln!("piimg: {} is current", image.display());
            }
        }
        Freshness::Stale(why) => {
            if !a.quiet {
                eprintln!("piimg: building {name}: {why}");
            }
            let progress = super::progress::Progress::new(a.quiet);
            let cache = super::profiles::cache()?;
            let r = piimg::pipeline::build(&p, node, &cache, &lock, &opts, &progress)?;
            if !a.quiet {
                eprintln!("piimg: built {} (sha256 {})", r.image.display(), r.sha256);
            }
        }
    }
    Ok(Some(image))
}

/// Every rule a target must pass before anything is opened for writing. Returns whether it is a
/// block device (else a regular file allowed by --file).
fn check_target(path: &Path, image_size: u64, a: &FlashArgs) -> Result<bool> {
    let refuse = |why: String| -> anyhow::Error {
        FlashError::Refused {
            path: path.to_path_buf(),
            why,
        }
        .into()
    };
    match device::classify(path).with_context(|| format!("inspecting {}", path.display()))? {
        Kind::Missing if a.file => {
            // A card's copy may hold a node's secrets: owner-only, as the image is.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|f| f.set_len(image_size))
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(false)
        }
        Kind::Missing => Err(FlashError::Missing(path.to_path_buf()).into()),
        Kind::Regular(size) if a.file => {
            if size < image_size {
                return Err(FlashError::TooSmall {
                    path: path.to_path_buf(),
                    device: size,
                    image: image_size,
                }
                .into());
            }
            Ok(false)
        }
        Kind::Regular(_) => Err(refuse(
            "it is a regular file, not a device (pass --file to write the image into a file)"
                .into(),
        )),
        Kind::Other => Err(refuse("it is not a block device".into())),
        Kind::Partition { disk } => Err(refuse(format!(
            "it is a partition of /dev/{disk}: give the whole disk, /dev/{disk}"
        ))),
        Kind::Disk(d) => {
            if let Some(at) = d.holds_system.first() {
                return Err(refuse(format!(
                    "it holds this machine's running system ({at} is on it)"
                )));
            }
            if !d.in_use.is_empty() {
                return Err(refuse(format!("it is in use: {}", d.in_use.join("; "))));
            }
            if d.read_only {
                return Err(refuse(
                    "the device is read-only (write-protect switch?)".into(),
                ));
            }
            if !d.removable && !a.allow_fixed {
                return Err(refuse(format!(
                    "it is a fixed disk ({}), not a removable card; pass --allow-fixed if you mean it",
                    describe(&d)
                )));
            }
            if d.size < image_size {
                return Err(FlashError::TooSmall {
                    path: path.to_path_buf(),
                    device: d.size,
                    image: image_size,
                }
                .into());
            }
            Ok(true)
        }
    }
}

fn describe(d: &BlockDevice) -> String {
    let vm = format!("{} {}", d.vendor, d.model).trim().to_string();
    format!(
        "{}, {}{}",
        human(d.size),
        d.transport,
        if vm.is_empty() {
            String::new()
        } else {
            format!(", {vm}")
        }
    )
}

/// Shows what is about to be erased and waits for the device's name.
fn confirm(path: &Path, img: &Image) -> Result<()> {
    let Kind::Disk(d) = device::classify(path)? else {
        bail!("{} changed while piimg was looking at it", path.display());
    };
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to write {} without confirmation: standard input is not a terminal (pass --yes)",
            path.display()
        );
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "{}: {}", path.display(), describe(&d))?;
    if d.partitions.is_empty() {
        writeln!(err, "  no partitions")?;
    }
    for p in &d.partitions {
        writeln!(err, "  {:<12} {:>10}", p.name, human(p.size))?;
    }
    write!(
        err,
        "Everything on it will be replaced by {}. Type the device name ({}) to go on: ",
        img.path.display(),
        d.name
    )?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().trim_start_matches("/dev/");
    if answer != d.name {
        bail!("not confirmed: nothing was written");
    }
    Ok(())
}

fn list(json: bool) -> Result<i32> {
    let devs = device::candidates();
    if json {
        println!("{}", serde_json::to_string_pretty(&devs)?);
        return Ok(0);
    }
    if devs.is_empty() {
        println!("no removable disk that is free to write (plug in a card reader; fixed disks and disks in use are not listed)");
        return Ok(0);
    }
    println!(
        "{:<14} {:>10}  {:<6} {:<10} {:<24} PARTITIONS",
        "DEVICE", "SIZE", "BUS", "VENDOR", "MODEL"
    );
    for d in devs {
        println!(
            "{:<14} {:>10}  {:<6} {:<10} {:<24} {}",
            d.path.display(),
            human(d.size),
            d.transport,
            d.vendor,
            d.model,
            d.partitions.len()
        );
    }
    Ok(0)
}
