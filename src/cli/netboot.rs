//! `piimg netboot check`: prints the walk of a netboot tree the library made.

use anyhow::{bail, Result};
use piimg::netboot::check::{self, Walk};
use piimg_agent::node::Board;
use std::path::Path;

pub fn parse_board(s: &str) -> Result<Board, String> {
    Board::ALL
        .into_iter()
        .find(|b| b.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Board::ALL.iter().map(|b| b.as_str()).collect();
            format!("`{s}` is not a board ({})", names.join(", "))
        })
}

/// Exit 0 when every walked node finds every file, 1 when one would not.
pub fn check(
    dir: &Path,
    serial: Option<&str>,
    mac: Option<&str>,
    board: Option<Board>,
    quiet: bool,
) -> Result<i32> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    let folder = match (serial, mac) {
        (Some(s), _) => {
            if s.len() != 8 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("--serial {s}: expected 8 hex digits (e.g. 9ffefdef)");
            }
            Some(s.to_ascii_lowercase())
        }
        (None, Some(m)) => {
            let parts: Vec<&str> = m.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                bail!("--mac {m}: expected a MAC address (e.g. dc:a6:32:01:36:c2)");
            }
            Some(parts.join("-").to_ascii_lowercase())
        }
        (None, None) => None,
    };
    let walks = check::check(dir, folder.as_deref(), board)?;
    let mut incomplete = 0;
    for w in &walks {
        print_walk(dir, w, quiet);
        if w.missing().is_some() {
            incomplete += 1;
        }
    }
    Ok(if incomplete == 0 { 0 } else { 1 })
}

fn print_walk(dir: &Path, w: &Walk, quiet: bool) {
    let who = w
        .node
        .as_deref()
        .map_or(String::new(), |n| format!(" (node {n})"));
    if !quiet {
        for f in &w.fetches {
            let state = match (f.found, f.optional) {
                (true, _) => "ok",
                (false, true) => "absent (fine)",
                (false, false) => "MISSING",
            };
            println!("  {state:<13} {}  [{}]", f.path, f.by);
        }
    }
    for warning in &w.warnings {
        eprintln!("warning: {}/{}: {warning}", dir.display(), w.folder);
    }
    match w.missing() {
        Some(m) => println!(
            "{}/{}{who}: {} would not find {} (TFTP/HTTP path `{}`)",
            dir.display(),
            w.folder,
            w.board,
            m.path.rsplit('/').next().unwrap_or(&m.path),
            m.path
        ),
        None => println!(
            "{}/{}{who}: complete for {} ({} files fetched in order)",
            dir.display(),
            w.folder,
            w.board,
            w.fetches.iter().filter(|f| f.found).count()
        ),
    }
}
