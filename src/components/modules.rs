//! Kernel modules: reads each module's `.modinfo` ELF section (`name=`, `depends=`, `alias=`,
//! `softdep=`, `vermagic=`), computes the dependency closure of a requested set, and writes
//! `modules.dep`, `modules.alias` and `modules.softdep` in depmod's format for exactly that set.
//! The Debian kernel package ships no depmod output (depmod runs at install time), and the image
//! has no kmod, so piimg produces these files itself.
//!
//! Modules may be plain `.ko` (bookworm) or `.ko.xz` / `.ko.zst` / `.ko.gz` (trixie uses xz);
//! compressed ones are decompressed in memory. ELF is parsed by hand: only the section header
//! table and the section name string table are needed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use crate::tree::{InodeKind, Tree};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{module}: {reason}")]
    Elf { module: String, reason: String },
    #[error("{module}: {source}")]
    Io {
        module: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no /usr/lib/modules/<release> (or /lib/modules/<release>) directory in the tree")]
    NoModulesDir,
    #[error("several kernel releases in the tree ({0}): name one")]
    SeveralReleases(String),
    #[error("unknown kernel module(s): {0}")]
    Unknown(String),
    #[error("module {module} depends on {dep}, which is not in the kernel package")]
    MissingDep { module: String, dep: String },
}

/// Canonical module name: depmod treats `-` and `_` alike and uses `_`.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The `.modinfo` fields piimg uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModInfo {
    /// Canonical name (from `name=`, else from the file name).
    pub name: String,
    /// Path relative to the modules directory, e.g. `kernel/fs/ext4/ext4.ko.xz`.
    pub path: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
    /// Raw `softdep=` values, e.g. `pre: crc32c`.
    pub softdeps: Vec<String>,
    pub vermagic: String,
}

/// Decompresses a module file by its name's suffix.
pub fn decompress_module(name: &str, data: &[u8]) -> Result<Vec<u8>, ModuleError> {
    let io = |source| ModuleError::Io {
        module: name.to_string(),
        source,
    };
    let mut out = Vec::new();
    if name.ends_with(".ko.xz") {
        xz2::read::XzDecoder::new_multi_decoder(data)
            .read_to_end(&mut out)
            .map_err(io)?;
    } else if name.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(data)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(io)?;
    } else if name.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(io)?;
    } else {
        out = data.to_vec();
    }
    Ok(out)
}

fn is_module_name(n: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| n.ends_with(s))
}

fn stem(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base)
}

/// The raw bytes of the `.modinfo` section of an ELF (32/64-bit, either endianness).
pub fn modinfo_section<'a>(module: &str, elf: &'a [u8]) -> Result<&'a [u8], ModuleError> {
    let err = |reason: &str| ModuleError::Elf {
        module: module.to_string(),
        reason: reason.to_string(),
    };
    if elf.len() < 0x34 || &elf[..4] != b"\x7fELF" {
        return Err(err("not an ELF file"));
    }
    let is64 = match elf[4] {
        1 => false,
        2 => true,
        _ => return Err(err("bad ELF class")),
    };
    let le = match elf[5] {
        1 => true,
        2 => false,
        _ => return Err(err("bad ELF data encoding")),
    };
    let rd = |off: usize, n: usize| -> Result<u64, ModuleError> {
        let b = elf
            .get(off..off + n)
            .ok_or_else(|| err("truncated ELF header"))?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if le { b[n - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (rd(0x28, 8)?, rd(0x3a, 2)?, rd(0x3c, 2)?, rd(0x3e, 2)?)
    } else {
        (rd(0x20, 4)?, rd(0x2e, 2)?, rd(0x30, 2)?, rd(0x32, 2)?)
    };
    // (name, offset, size) of section i.
    let section = |i: u64| -> Result<(u64, u64, u64), ModuleError> {
        let base = shoff
            .checked_add(
                i.checked_mul(shentsize)
                    .ok_or_else(|| err("bad sections"))?,
            )
            .ok_or_else(|| err("bad sections"))? as usize;
        if is64 {
            Ok((rd(base, 4)?, rd(base + 24, 8)?, rd(base + 32, 8)?))
        } else {
            Ok((rd(base, 4)?, rd(base + 16, 4)?, rd(base + 20, 4)?))
        }
    };
    let bytes = |off: u64, size: u64| -> Result<&'a [u8], ModuleError> {
        let end = off.checked_add(size).ok_or_else(|| err("bad section"))?;
        elf.get(off as usize..end as usize)
            .ok_or_else(|| err("section runs past the end of the file"))
    };
    if shstrndx >= shnum {
        return Err(err("no section name table"));
    }
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = strtab.get(name as usize..).unwrap_or(b"");
        let n = &n[..n.iter().position(|b| *b == 0).unwrap_or(n.len())];
        if n == b".modinfo" {
            return bytes(off, size);
        }
    }
    Err(err("no .modinfo section"))
}

/// Parses a module's `.modinfo` (`path` relative to the modules dir, used for the name if the
/// section has no `name=`).
pub fn parse_module(path: &str, elf: &[u8]) -> Result<ModInfo, ModuleError> {
    let sec = modinfo_section(path, elf)?;
    let mut info = ModInfo {
        path: path.to_string(),
        ..Default::default()
    };
    let mut name = None;
    for kv in sec.split(|b| *b == 0) {
        let Ok(kv) = std::str::from_utf8(kv) else {
            continue;
        };
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "name" => name = Some(canonical(v)),
            "depends" => info
                .depends
                .extend(v.split(',').filter(|d| !d.is_empty()).map(canonical)),
            "alias" => info.aliases.push(v.to_string()),
            "softdep" => info.softdeps.push(v.to_string()),
            "vermagic" => info.vermagic = v.to_string(),
            _ => {}
        }
    }
    info.name = name.unwrap_or_else(|| canonical(stem(path)));
    Ok(info)
}

/// Every module of one kernel release.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModuleSet {
    pub release: String,
    /// Path of the modules directory in the tree, e.g. `usr/lib/modules/6.12.107+deb13-arm64`.
    pub dir: String,
    /// By canonical name.
    pub modules: BTreeMap<String, ModInfo>,
}

impl ModuleSet {
    /// Reads every module under `usr/lib/modules/<release>/` (or `lib/modules/<release>/`) of a
    /// tree filled from the kernel package. `release: None` takes the only release present.
    pub fn from_tree(tree: &Tree, release: Option<&str>) -> Result<ModuleSet, ModuleError> {
        let base = ["usr/lib/modules", "lib/modules"]
            .into_iter()
            .find(|b| tree.lookup(b).is_some_and(|id| tree.inode(id).is_dir()))
            .ok_or(ModuleError::NoModulesDir)?;
        let base_id = tree.lookup(base).ok_or(ModuleError::NoModulesDir)?;
        let releases: Vec<String> = tree
            .children(base_id)
            .filter(|(_, id)| tree.inode(*id).is_dir())
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        let release = match release {
            Some(r) if releases.iter().any(|x| x == r) => r.to_string(),
            Some(_) => return Err(ModuleError::NoModulesDir),
            None => match releases.as_slice() {
                [one] => one.clone(),
                [] => return Err(ModuleError::NoModulesDir),
                many => return Err(ModuleError::SeveralReleases(many.join(", "))),
            },
        };
        let dir = format!("{base}/{release}");
        let dir_id = tree.lookup(&dir).ok_or(ModuleError::NoModulesDir)?;
        let mut modules = BTreeMap::new();
        let mut stack = vec![(String::new(), dir_id)];
        while let Some((rel, id)) = stack.pop() {
            for (name, child) in tree.children(id) {
                let name = String::from_utf8_lossy(name);
                let p = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                match &tree.inode(child).kind {
                    InodeKind::Dir(_) => stack.push((p, child)),
                    InodeKind::File(data) if is_module_name(&p) => {
                        let raw = data.read_all().map_err(|source| ModuleError::Io {
                            module: p.clone(),
                            source,
                        })?;
                        let elf = decompress_module(&p, &raw)?;
                        let info = parse_module(&p, &elf)?;
                        modules.insert(info.name.clone(), info);
                    }
                    _ => {}
                }
            }
        }
        Ok(ModuleSet {
            release,
            dir,
            modules,
        })
    }

    /// `names` and everything they depend on (hard `depends=`; with `softdeps`, also the `pre:`
    /// and `post:` modules that exist), as canonical names in sorted order. Unknown names are an
    /// error listing all of them.
    pub fn closure(&self, names: &[&str], softdeps: bool) -> Result<Vec<String>, ModuleError> {
        let unknown: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.modules.contains_key(&canonical(n)))
            .collect();
        if !unknown.is_empty() {
            return Err(ModuleError::Unknown(unknown.join(", ")));
        }
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = names.iter().map(|n| canonical(n)).collect();
        while let Some(n) = stack.pop() {
            if !out.insert(n.clone()) {
                continue;
            }
            let Some(m) = self.modules.get(&n) else {
                continue;
            };
            for d in &m.depends {
                if !self.modules.contains_key(d) {
                    return Err(ModuleError::MissingDep {
                        module: n.clone(),
                        dep: d.clone(),
                    });
                }
                stack.push(d.clone());
            }
            if softdeps {
                for s in soft_names(m) {
                    if self.modules.contains_key(&s) {
                        stack.push(s);
                    } else {
                        // A softdep may name an alias (`pre: crc32c` -> crc32c_generic).
                        stack.extend(
                            self.modules
                                .values()
                                .filter(|o| o.aliases.contains(&s))
                                .map(|o| o.name.clone()),
                        );
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// All transitive hard dependencies of `name`, ordered as depmod writes them: every module
    /// appears before the modules it needs, so loading the list from the end works.
    pub fn load_order_deps(&self, name: &str) -> Vec<&ModInfo> {
        // Depth-first post-order gives dependencies before dependents; depmod lists the reverse.
        fn visit<'a>(
            set: &'a ModuleSet,
            n: &str,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<&'a ModInfo>,
        ) {
            let Some(m) = set.modules.get(n) else { return };
            let mut deps = m.depends.clone();
            deps.sort();
            for d in deps {
                if seen.insert(d.clone()) {
                    visit(set, &d, seen, out);
                    if let Some(dm) = set.modules.get(&d) {
                        out.push(dm);
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        seen.insert(canonical(name));
        let mut out = Vec::new();
        visit(self, &canonical(name), &mut seen, &mut out);
        out.reverse();
        out
    }

    /// Module paths of `names` in an order that loads (stage 1's list): every module after the
    /// modules it depends on and after its `pre:` soft dependencies, as modprobe would load them.
    pub fn load_order(&self, names: &[String]) -> Vec<String> {
        fn visit(set: &ModuleSet, n: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(n.to_string()) {
                return;
            }
            if let Some(m) = set.modules.get(n) {
                for p in set.pre_softdeps(m) {
                    visit(set, &p, seen, out);
                }
                let mut deps = m.depends.clone();
                deps.sort();
                for d in deps {
                    visit(set, &d, seen, out);
                }
                out.push(m.path.clone());
            }
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for n in names {
            visit(self, n, &mut seen, &mut out);
        }
        out
    }

    /// The modules of this set that `m`'s `pre:` soft dependencies name, directly or by alias
    /// (`pre: crc32c` -> crc32c_generic), sorted.
    fn pre_softdeps(&self, m: &ModInfo) -> Vec<String> {
        let mut out = BTreeSet::new();
        for spec in &m.softdeps {
            let mut pre = false;
            for w in spec.split_whitespace() {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => {
                        let name = canonical(name);
                        if self.modules.contains_key(&name) {
                            out.insert(name);
                        } else {
                            out.extend(
                                self.modules
                                    .values()
                                    .filter(|o| o.aliases.contains(&name))
                                    .map(|o| o.name.clone()),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        out.into_iter().collect()
    }

    fn selected<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = &'a ModInfo> + 'a {
        let mut v: Vec<&ModInfo> = names.iter().filter_map(|n| self.modules.get(n)).collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v.into_iter()
    }

    /// `modules.dep` for the selected modules (sorted by path).
    pub fn modules_dep(&self, names: &[String]) -> String {
        let mut s = String::new();
        for m in self.selected(names) {
            s.push_str(&m.path);
            s.push(':');
            for d in self.load_order_deps(&m.name) {
                s.push(' ');
                s.push_str(&d.path);
            }
            s.push('\n');
        }
        s
    }

    /// `modules.alias` for the selected modules.
    pub fn modules_alias(&self, names: &[String]) -> String {
        let mut s = String::from("# Aliases extracted from modules themselves.\n");
        for m in self.selected(names) {
            for a in &m.aliases {
                s.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        s
    }

    /// `modules.softdep` for the selected modules.
    pub fn modules_softdep(&self, names: &[String]) -> String {
        let mut s = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in self.selected(names) {
            for d in &m.softdeps {
                s.push_str(&format!("softdep {} {d}\n", m.name));
            }
        }
        s
    }
}

/// Module names in a module's softdep strings (`pre: a b post: c`).
fn soft_names(m: &ModInfo) -> Vec<String> {
    m.softdeps
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter(|w| !w.ends_with(':'))
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE with a section-name table and a .modinfo section.
    pub(crate) fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let mi_off = f.len();
        f.extend_from_slice(modinfo);
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, shstr_off, shstr.len());
        sh(11, mi_off, modinfo.len());
        f
    }

    #[test]
    fn load_order_puts_pre_softdeps_first_even_by_alias() {
        let module = |name: &str, depends: &[&str], aliases: &[&str], softdeps: &[&str]| ModInfo {
            name: name.into(),
            path: format!("{name}.ko"),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            softdeps: softdeps.iter().map(|s| s.to_string()).collect(),
            vermagic: String::new(),
        };
        let set = ModuleSet {
            release: "r".into(),
            dir: "lib/modules/r".into(),
            modules: [
                module("ext4", &["jbd2"], &[], &["pre: zcrc post: zpost"]),
                module("jbd2", &[], &[], &[]),
                // Named only by alias, and sorting after ext4: the old order loaded it later.
                module("zz_crc_generic", &[], &["zcrc"], &[]),
                module("zpost", &[], &[], &[]),
            ]
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect(),
        };
        assert_eq!(
            set.load_order(&["ext4".into(), "zpost".into()]),
            ["zz_crc_generic.ko", "jbd2.ko", "ext4.ko", "zpost.ko"]
        );
    }

    #[test]
    fn parses_fake_modinfo_and_orders_deps() {
        let mk = |path: &str, mi: &str| parse_module(path, &fake_module(mi.as_bytes())).unwrap();
        let ext4 = mk(
            "kernel/fs/ext4/ext4.ko",
            "alias=fs-ext4\0depends=jbd2,mbcache,crc16\0softdep=pre: crc32c\0vermagic=6.1 SMP\0name=ext4\0",
        );
        assert_eq!(ext4.depends, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(ext4.vermagic, "6.1 SMP");
        let set = ModuleSet {
            release: "x".into(),
            dir: "usr/lib/modules/x".into(),
            modules: [
                ext4,
                mk("kernel/fs/jbd2/jbd2.ko", "depends=crc16\0name=jbd2\0"),
                mk("kernel/fs/mbcache.ko", "depends=\0"),
                mk("kernel/lib/crc16.ko", "depends=\0name=crc16\0"),
                mk(
                    "kernel/crypto/crc32c-generic.ko",
                    "alias=crc32c\0name=crc32c_generic\0",
                ),
            ]
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect(),
        };
        assert_eq!(set.modules["mbcache"].name, "mbcache");
        let c = set.closure(&["ext4"], false).unwrap();
        assert_eq!(c, ["crc16", "ext4", "jbd2", "mbcache"]);
        let dep = set.modules_dep(&c);
        assert!(dep.contains(
            "kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
        ), "{dep}");
        assert!(set.closure(&["nope", "ext-4"], false).is_err());
        let soft = set.closure(&["ext4"], true).unwrap();
        assert_eq!(soft, ["crc16", "crc32c_generic", "ext4", "jbd2", "mbcache"]);
    }
}
