//! `fetch` and `fetch --outdated`: the lock and the cache.

use super::profiles::{cache, load, unknown_profile};
use anyhow::Result;
use piimg::profile::{NodeProfile, Profiles};
use std::path::{Path, PathBuf};

fn selected<'a>(
    p: &'a Profiles,
    dir: &Path,
    profile: Option<&str>,
) -> Result<Vec<&'a NodeProfile>> {
    Ok(match profile {
        Some(name) => vec![p.node(name).ok_or_else(|| unknown_profile(dir, name))?],
        None => p.nodes.iter().collect(),
    })
}

/// What `fetch` and `fetch --outdated` start from.
struct Start {
    profiles: Profiles,
    lock: PathBuf,
    progress: super::progress::Progress,
    cache: piimg::components::cache::Cache,
}

/// Loads the folder (None when it has errors, already printed).
fn start(dir: &Path, profile: Option<&str>, quiet: bool) -> Result<Option<Start>> {
    let Some(profiles) = load(dir, profile, false, quiet)? else {
        return Ok(None);
    };
    Ok(Some(Start {
        profiles,
        lock: piimg::pipeline::lock_path(dir),
        progress: super::progress::Progress::new(quiet),
        cache: cache()?,
    }))
}

pub fn fetch(dir: &Path, profile: Option<&str>, update: bool, quiet: bool) -> Result<i32> {
    let Some(s) = start(dir, profile, quiet)? else {
        return Ok(1);
    };
    let nodes = selected(&s.profiles, dir, profile)?;
    let r = piimg::pipeline::fetch(&nodes, &s.cache, &s.lock, update, &s.progress)?;
    for c in &r.changes {
        println!("{c}");
    }
    for (suite, n) in &r.suites {
        println!("{suite}: {n} packages locked and cached");
    }
    for u in &r.unpinned {
        eprintln!(
            "piimg: warning: {name} could not be fetched ({why}); {} need it: supply it with --component {name}=PATH or run `piimg fetch --update` where it can be downloaded",
            u.profiles.join(", "),
            name = u.name,
            why = u.reason,
        );
    }
    println!(
        "{} {}",
        s.lock.display(),
        if r.lock_changed {
            "written"
        } else {
            "unchanged"
        }
    );
    Ok(0)
}

/// `fetch --outdated`: a table (or JSON) of locked packages with newer versions; exit 1 if any.
pub fn outdated(dir: &Path, profile: Option<&str>, json: bool, quiet: bool) -> Result<i32> {
    let Some(s) = start(dir, profile, quiet)? else {
        return Ok(1);
    };
    let nodes = selected(&s.profiles, dir, profile)?;
    let found = piimg::pipeline::outdated(&nodes, &s.cache, &s.lock, &s.progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        println!(
            "{}: every locked package is the newest the archive has",
            s.lock.display()
        );
    } else {
        let w = found.iter().map(|o| o.name.len()).max().unwrap_or(0).max(7);
        let wl = found
            .iter()
            .map(|o| o.locked.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let wa = found
            .iter()
            .map(|o| o.available.len())
            .max()
            .unwrap_or(0)
            .max(9);
        println!(
            "{:w$}  {:wl$}  {:wa$}  FROM",
            "PACKAGE", "LOCKED", "AVAILABLE"
        );
        for o in &found {
            println!(
                "{:w$}  {:wl$}  {:wa$}  {}{}",
                o.name,
                o.locked,
                o.available,
                o.from.join(","),
                if o.security { "  [security]" } else { "" }
            );
        }
        let sec = found.iter().filter(|o| o.security).count();
        println!(
            "{} outdated ({sec} from the security archive): run `piimg fetch --update`",
            found.len()
        );
    }
    Ok(if found.is_empty() { 0 } else { 1 })
}
