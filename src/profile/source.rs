//! Reading profile files: TOML with positions, `extends` chains merged deeply (the extending
//! profile wins, arrays are replaced whole), and for every key the file and line it came from, so
//! that every later error can point at the line a user has to change.

use super::diag::{Diagnostic, Diagnostics, Location};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where each dotted key path (`network.address`, `network.routes.0.via`) was last set.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    map: BTreeMap<String, Location>,
}

impl Origins {
    /// The location of `path`, or of its closest parent that has one.
    pub fn locate(&self, path: &str) -> Option<&Location> {
        let mut p = path;
        loop {
            if let Some(l) = self.map.get(p) {
                return Some(l);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return self.map.get(""),
            }
        }
    }

    /// The file that set `path` (or the profile itself).
    pub fn file_of(&self, path: &str) -> Option<&Path> {
        self.locate(path).map(|l| l.file.as_path())
    }

    fn set_prefix(&mut self, prefix: &str, from: &Origins) {
        // A table or array replaced by a later file: forget the old file's positions below it.
        let dotted = format!("{prefix}.");
        self.map
            .retain(|k, _| k != prefix && !k.starts_with(&dotted));
        for (k, v) in &from.map {
            if k == prefix || k.starts_with(&dotted) {
                self.map.insert(k.clone(), v.clone());
            }
        }
    }
}

/// One parsed profile file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub table: toml::Table,
    pub origins: Origins,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

fn record_item(text: &str, file: &Path, prefix: &str, item: &toml_edit::Item, out: &mut Origins) {
    match item {
        toml_edit::Item::Table(t) => record_table(text, file, prefix, t.iter_kv(), out),
        toml_edit::Item::Value(v) => record_value(text, file, prefix, v, out),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{prefix}.{i}");
                if let Some(span) = t.span() {
                    out.map.insert(p.clone(), loc(text, file, span.start));
                }
                record_table(text, file, &p, t.iter_kv(), out);
            }
        }
        toml_edit::Item::None => {}
    }
}

fn record_value(text: &str, file: &Path, prefix: &str, v: &toml_edit::Value, out: &mut Origins) {
    match v {
        toml_edit::Value::InlineTable(t) => record_table(text, file, prefix, t.iter_kv(), out),
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{prefix}.{i}");
                if let Some(span) = v.span() {
                    out.map.insert(p.clone(), loc(text, file, span.start));
                }
                record_value(text, file, &p, v, out);
            }
        }
        _ => {}
    }
}

/// Key/value pairs of a table or inline table, with the key's position.
trait IterKv {
    fn iter_kv(&self) -> Vec<(&toml_edit::Key, toml_edit::Item)>;
}

impl IterKv for toml_edit::Table {
    fn iter_kv(&self) -> Vec<(&toml_edit::Key, toml_edit::Item)> {
        self.iter()
            .filter_map(|(k, _)| self.get_key_value(k))
            .map(|(k, v)| (k, v.clone()))
            .collect()
    }
}

impl IterKv for toml_edit::InlineTable {
    fn iter_kv(&self) -> Vec<(&toml_edit::Key, toml_edit::Item)> {
        self.iter()
            .filter_map(|(k, _)| self.get_key_value(k))
            .map(|(k, v)| (k, v.clone()))
            .collect()
    }
}

fn record_table(
    text: &str,
    file: &Path,
    prefix: &str,
    kvs: Vec<(&toml_edit::Key, toml_edit::Item)>,
    out: &mut Origins,
) {
    for (k, item) in kvs {
        let p = if prefix.is_empty() {
            k.get().to_string()
        } else {
            format!("{prefix}.{}", k.get())
        };
        if let Some(span) = k.span() {
            out.map.insert(p.clone(), loc(text, file, span.start));
        }
        record_item(text, file, &p, &item, out);
    }
}

fn loc(text: &str, file: &Path, offset: usize) -> Location {
    let (line, col) = line_col(text, offset);
    Location {
        file: file.to_path_buf(),
        line: Some(line),
        col: Some(col),
    }
}

/// Reads and parses one profile file; a syntax error is reported with its position.
pub fn read_file(path: &Path) -> Result<SourceFile, Diagnostic> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::error(
            Location::file(path),
            "",
            format!("cannot read profile: {e}"),
        )
    })?;
    let doc = toml_edit::ImDocument::parse(text.as_str()).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| line_col(&text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        Diagnostic::error(
            Location {
                file: path.to_path_buf(),
                line,
                col,
            },
            "",
            format!("malformed TOML: {}", e.message().trim()),
        )
    })?;
    let mut origins = Origins::default();
    origins.map.insert("".into(), Location::file(path));
    record_table(&text, path, "", doc.as_table().iter_kv(), &mut origins);
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Diagnostic::error(
            Location::file(path),
            "",
            format!("malformed TOML: {}", e.message()),
        )
    })?;
    Ok(SourceFile {
        path: path.to_path_buf(),
        table,
        origins,
    })
}

/// Deep merge of `over` onto `base`: tables merge key by key, everything else is replaced.
fn merge(
    base: &mut toml::Table,
    over: &toml::Table,
    prefix: &str,
    origins: &mut Origins,
    from: &Origins,
) {
    for (k, v) in over {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                if let Some(l) = from.map.get(&p) {
                    origins.map.insert(p.clone(), l.clone());
                }
                merge(b, o, &p, origins, from);
            }
            _ => {
                base.insert(k.clone(), v.clone());
                origins.set_prefix(&p, from);
            }
        }
    }
}

/// A profile with its `extends` chain merged.
#[derive(Debug, Clone)]
pub struct Merged {
    pub name: String,
    pub path: PathBuf,
    /// The files it was merged from: itself first, then each profile it extends.
    pub chain: Vec<PathBuf>,
    pub table: toml::Table,
    pub origins: Origins,
}

/// Resolves `name` within `files` (profile name -> parsed file), following `extends`.
pub fn resolve(
    name: &str,
    files: &BTreeMap<String, SourceFile>,
    diags: &mut Diagnostics,
) -> Option<Merged> {
    let mut chain: Vec<&SourceFile> = Vec::new();
    let mut cur = name.to_string();
    loop {
        let Some(f) = files.get(&cur) else {
            // Only reachable through an `extends` naming a missing profile.
            let from = chain.last()?;
            diags.push(Diagnostic::error(
                from.origins
                    .locate("extends")
                    .cloned()
                    .unwrap_or_else(|| Location::file(&from.path)),
                "extends",
                format!(
                    "no profile named `{cur}` in {}",
                    from.path
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            ));
            return None;
        };
        if chain.iter().any(|c| c.path == f.path) {
            let names: Vec<String> = chain
                .iter()
                .chain(std::iter::once(&f))
                .map(|c| profile_name(&c.path))
                .collect();
            let from = chain.last().copied().unwrap_or(f);
            diags.push(Diagnostic::error(
                from.origins
                    .locate("extends")
                    .cloned()
                    .unwrap_or_else(|| Location::file(&from.path)),
                "extends",
                format!("`extends` forms a cycle: {}", names.join(" -> ")),
            ));
            return None;
        }
        chain.push(f);
        match f.table.get("extends") {
            None => break,
            Some(toml::Value::String(next)) => cur = next.clone(),
            Some(_) => {
                diags.push(Diagnostic::error(
                    f.origins
                        .locate("extends")
                        .cloned()
                        .unwrap_or_else(|| Location::file(&f.path)),
                    "extends",
                    "must be a profile name (a string)".to_string(),
                ));
                return None;
            }
        }
    }
    let mut table = toml::Table::new();
    let mut origins = Origins::default();
    for f in chain.iter().rev() {
        merge(&mut table, &f.table, "", &mut origins, &f.origins);
    }
    origins
        .map
        .insert("".into(), Location::file(&chain[0].path));
    Some(Merged {
        name: name.to_string(),
        path: chain[0].path.clone(),
        chain: chain.iter().map(|c| c.path.clone()).collect(),
        table,
        origins,
    })
}

/// The profile name of a file: its stem (`profiles/cp1.toml` -> `cp1`).
pub fn profile_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
