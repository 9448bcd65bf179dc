//! Kernel modules: resolving names and aliases through depmod's text files (modules.dep,
//! modules.alias, modules.builtin) and loading with finit_module (the kernel decompresses .ko.xz).

use crate::syscall::Syscall;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModError {
    #[error("module {0}: not found in modules.dep or modules.alias")]
    NotFound(String),
    #[error("module {name}: dependency cycle")]
    Cycle { name: String },
    #[error("module {path}: {source}")]
    Load {
        path: String,
        source: std::io::Error,
    },
}

/// Module name as the kernel uses it: the file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// kmod's alias normalisation: `-` becomes `_` except inside `[...]` classes.
pub fn normalize_alias(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_class = false;
    for c in s.chars() {
        match c {
            '[' => {
                in_class = true;
                out.push(c)
            }
            ']' => {
                in_class = false;
                out.push(c)
            }
            '-' if !in_class => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// fnmatch(3) without flags: `*`, `?` and `[...]` (with ranges and `!`/`^` negation).
pub fn glob_match(pat: &str, text: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(&c) = t.first() else { return false };
            let mut i = 1;
            let negate = matches!(p.get(1), Some('!') | Some('^'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != ']') {
                first = false;
                if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                    if p[i] <= c && c <= p[i + 2] {
                        matched = true;
                    }
                    i += 3;
                } else {
                    if p[i] == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
            if i >= p.len() {
                // No closing bracket: treat '[' literally.
                return c == '[' && glob_at(&p[1..], &t[1..]);
            }
            matched != negate && glob_at(&p[i + 1..], &t[1..])
        }
        Some(&c) => t.first() == Some(&c) && glob_at(&p[1..], &t[1..]),
    }
}

/// The parsed depmod database of one kernel.
#[derive(Debug, Default, Clone)]
pub struct ModuleDb {
    /// module name -> (relative path, dependency paths as listed).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// (normalised alias pattern, module name) in file order.
    aliases: Vec<(String, String)>,
    builtin: BTreeSet<String>,
}

impl ModuleDb {
    pub fn parse(dep: &str, alias: &str, builtin: &str) -> ModuleDb {
        let mut db = ModuleDb::default();
        for line in dep.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = rest.split_whitespace().map(str::to_string).collect();
            db.deps.insert(module_name(path), (path.to_string(), deps));
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pat), Some(name)) = (w.next(), w.next(), w.next()) {
                db.aliases
                    .push((normalize_alias(pat), name.replace('-', "_")));
            }
        }
        for line in builtin.lines() {
            let l = line.trim();
            if !l.is_empty() {
                db.builtin.insert(module_name(l));
            }
        }
        db
    }

    /// Reads `<dir>/modules.dep`, `modules.alias` and `modules.builtin` (missing files are empty).
    pub fn load(dir: &Path) -> ModuleDb {
        let read = |n: &str| fs::read_to_string(dir.join(n)).unwrap_or_default();
        ModuleDb::parse(
            &read("modules.dep"),
            &read("modules.alias"),
            &read("modules.builtin"),
        )
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// Module names a request (name or alias) stands for, in modules.alias order.
    pub fn lookup(&self, request: &str) -> Vec<String> {
        let name = request.replace('-', "_");
        if self.deps.contains_key(&name) || self.builtin.contains(&name) {
            return vec![name];
        }
        let norm = normalize_alias(request);
        let mut out: Vec<String> = Vec::new();
        for (pat, m) in &self.aliases {
            if glob_match(pat, &norm) && !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    /// The module files (relative paths) to load for `name`, dependencies first.
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, ModError> {
        let mut out = Vec::new();
        let mut visiting = BTreeSet::new();
        self.visit(&name.replace('-', "_"), &mut out, &mut visiting)?;
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        out: &mut Vec<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<(), ModError> {
        if self.builtin.contains(name) {
            return Ok(());
        }
        let (path, deps) = self
            .deps
            .get(name)
            .ok_or_else(|| ModError::NotFound(name.to_string()))?;
        if out.contains(path) {
            return Ok(());
        }
        if !visiting.insert(name.to_string()) {
            return Err(ModError::Cycle {
                name: name.to_string(),
            });
        }
        // depmod lists the full closure; depth-first makes every module follow its own deps.
        for d in deps.iter().rev() {
            self.visit(&module_name(d), out, visiting)?;
        }
        visiting.remove(name);
        out.push(path.clone());
        Ok(())
    }
}

/// Where loading happens: the module directory and /sys/module (to skip loaded modules).
#[derive(Debug, Clone)]
pub struct Loader {
    pub module_dir: PathBuf,
    pub sys_module: PathBuf,
    /// The kernel command line: its `module.param=value` words are that module's options, as
    /// kmod's modprobe passes them (the kernel applies them only to built-in code).
    pub cmdline: String,
}

impl Loader {
    pub fn for_running_kernel(sys: &dyn Syscall, root: &Path) -> Loader {
        Loader {
            module_dir: root.join("lib/modules").join(sys.kernel_release()),
            sys_module: root.join("sys/module"),
            cmdline: fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default(),
        }
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        self.sys_module.join(name).exists()
    }

    /// Loads one module file (relative to the module dir); already loaded is success.
    pub fn load_file(&self, sys: &dyn Syscall, rel: &str) -> Result<bool, ModError> {
        let name = module_name(rel);
        if self.is_loaded(&name) {
            return Ok(false);
        }
        let path = self.module_dir.join(rel);
        let err = |source| ModError::Load {
            path: path.display().to_string(),
            source,
        };
        let f = fs::File::open(&path).map_err(err)?;
        let compressed = [".xz", ".zst", ".gz"].iter().any(|s| rel.ends_with(s));
        let params = cmdline_options(&self.cmdline, &name);
        match sys.finit_module(&f, &params, compressed) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// modprobe: resolves a name or alias and loads it with its dependencies. Returns the files
    /// newly loaded.
    pub fn modprobe(
        &self,
        sys: &dyn Syscall,
        db: &ModuleDb,
        request: &str,
    ) -> Result<Vec<String>, ModError> {
        let names = db.lookup(request);
        if names.is_empty() {
            return Err(ModError::NotFound(request.to_string()));
        }
        let mut loaded = Vec::new();
        let mut last_err = None;
        let mut ok = false;
        for name in names {
            match db.load_order(&name).and_then(|files| {
                let mut l = Vec::new();
                for f in files {
                    if self.load_file(sys, &f)? {
                        l.push(f);
                    }
                }
                Ok(l)
            }) {
                Ok(l) => {
                    ok = true;
                    loaded.extend(l);
                }
                Err(e) => last_err = Some(e),
            }
        }
        match (ok, last_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(loaded),
        }
    }
}

/// The options the kernel command line gives module `name` (`cfg80211.ieee80211_regdom=DE` ->
/// `ieee80211_regdom=DE`), space-separated; '-' and '_' are one in module names.
pub fn cmdline_options(cmdline: &str, name: &str) -> String {
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (module, option) = w.split_once('.')?;
            (module.replace('-', "_") == name && option.contains('=')).then_some(option)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a list file: one entry per line, `#` comments and blank lines ignored.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/drivers/mmc/host/sdhci-iproc.ko.xz: kernel/drivers/mmc/host/sdhci-pltfm.ko.xz kernel/drivers/mmc/host/sdhci.ko.xz
kernel/drivers/mmc/host/sdhci-pltfm.ko.xz: kernel/drivers/mmc/host/sdhci.ko.xz
kernel/drivers/mmc/host/sdhci.ko.xz:
kernel/net/ipv4/netfilter/ip_tables.ko.xz: kernel/net/netfilter/x_tables.ko.xz
kernel/net/netfilter/x_tables.ko.xz:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias fs-ext4 ext4
alias ext3 ext4
alias of:N*T*Cbrcm,bcm2835-sdhci ext4
alias of:N*T*Cbrcm,bcm2711-emmc2C* sdhci_iproc
alias net-pf-7 bridge
alias devname:fuse fuse
alias ipt_[a-c]* ip_tables
";

    fn db() -> ModuleDb {
        ModuleDb::parse(DEP, ALIAS, "kernel/fs/fuse/fuse.ko\n")
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/mmc/host/sdhci-iproc.ko.xz"),
            "sdhci_iproc"
        );
        assert_eq!(module_name("x/llc.ko"), "llc");
        assert_eq!(normalize_alias("pci:v-[a-b]-x"), "pci:v_[a-b]_x");
    }

    #[test]
    fn dependency_order() {
        let d = db();
        assert_eq!(
            d.load_order("br_netfilter").unwrap(),
            vec![
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz",
            ]
        );
        // Dashes and underscores are the same module.
        let order = d.load_order("sdhci-iproc").unwrap();
        assert_eq!(
            order.last().unwrap(),
            "kernel/drivers/mmc/host/sdhci-iproc.ko.xz"
        );
        assert_eq!(order[0], "kernel/drivers/mmc/host/sdhci.ko.xz");
        assert_eq!(order.len(), 3);
        assert!(matches!(d.load_order("nope"), Err(ModError::NotFound(_))));
        // Built-in modules need nothing.
        assert!(d.load_order("fuse").unwrap().is_empty());
    }

    #[test]
    fn alias_resolution() {
        let d = db();
        assert_eq!(d.lookup("fs-ext4"), vec!["ext4"]);
        assert_eq!(d.lookup("net-pf-7"), vec!["bridge"]);
        assert_eq!(
            d.lookup("of:NmmcT(null)Cbrcm,bcm2711-emmc2Cfoo"),
            vec!["sdhci_iproc"]
        );
        assert_eq!(d.lookup("ipt_bar"), vec!["ip_tables"]);
        assert!(d.lookup("ipt_zed").is_empty());
        assert_eq!(d.lookup("bridge"), vec!["bridge"]);
        assert!(d.lookup("net-pf-99").is_empty());
    }

    #[test]
    fn globbing() {
        assert!(glob_match("a*b?c", "axxbyc"));
        assert!(!glob_match("a*b?c", "axxbc"));
        assert!(glob_match("[!x]y", "zy"));
        assert!(!glob_match("[!x]y", "xy"));
        assert!(glob_match("v[0-9]", "v7"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn cycle_detected() {
        let d = ModuleDb::parse("a.ko: b.ko\nb.ko: a.ko\n", "", "");
        assert!(matches!(d.load_order("a"), Err(ModError::Cycle { .. })));
    }

    #[test]
    fn list_files() {
        assert_eq!(
            parse_list("# k8s\nbr_netfilter\n\n overlay # fs\n"),
            vec!["br_netfilter", "overlay"]
        );
    }

    #[test]
    fn modprobe_loads_dependencies_first_and_skips_loaded_ones() {
        let t = tempfile::tempdir().unwrap();
        let l = Loader {
            module_dir: t.path().join("lib/modules/6.12.0"),
            sys_module: t.path().join("sys/module"),
            cmdline: String::new(),
        };
        for rel in ["llc/llc", "802/stp", "bridge/bridge", "bridge/br_netfilter"] {
            let p = l.module_dir.join(format!("kernel/net/{rel}.ko.xz"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"module").unwrap();
        }
        fs::create_dir_all(t.path().join("sys/module/stp")).unwrap();
        let sys = crate::syscall::fake::RecordingSyscall::new(t.path());
        let loaded = l.modprobe(&sys, &db(), "br_netfilter").unwrap();
        assert_eq!(
            loaded,
            vec![
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz",
            ]
        );
        let at = "finit_module /lib/modules/6.12.0/kernel/net";
        assert_eq!(
            sys.calls(),
            vec![
                format!("{at}/llc/llc.ko.xz compressed"),
                format!("{at}/bridge/bridge.ko.xz compressed"),
                format!("{at}/bridge/br_netfilter.ko.xz compressed"),
            ]
        );
    }

    #[test]
    fn options_on_the_kernel_command_line_reach_their_module() {
        let cmdline = "console=ttyAMA0 cfg80211.ieee80211_regdom=DE brcmfmac.debug=0x100000 \
                       cfg80211.x brcmfmac_wcc.a=1 root=PARTUUID=1-02\n";
        assert_eq!(cmdline_options(cmdline, "cfg80211"), "ieee80211_regdom=DE");
        assert_eq!(cmdline_options(cmdline, "brcmfmac"), "debug=0x100000");
        assert_eq!(cmdline_options(cmdline, "brcmfmac_wcc"), "a=1");
        assert_eq!(cmdline_options(cmdline, "llc"), "");
        let t = tempfile::tempdir().unwrap();
        let l = Loader {
            module_dir: t.path().join("lib/modules/6.12.0"),
            sys_module: t.path().join("sys/module"),
            cmdline: cmdline.into(),
        };
        let p = l.module_dir.join("kernel/net/wireless/cfg80211.ko");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"module").unwrap();
        let sys = crate::syscall::fake::RecordingSyscall::new(t.path());
        assert!(l
            .load_file(&sys, "kernel/net/wireless/cfg80211.ko")
            .unwrap());
        assert_eq!(
            sys.calls(),
            ["finit_module /lib/modules/6.12.0/kernel/net/wireless/cfg80211.ko ieee80211_regdom=DE"]
        );
    }

    #[test]
    fn loader_skips_loaded_and_reports_missing() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("sys/module/llc")).unwrap();
        let l = Loader {
            module_dir: t.path().join("lib/modules/6.12.0"),
            sys_module: t.path().join("sys/module"),
            cmdline: String::new(),
        };
        let sys = crate::syscall::fake::RecordingSyscall::new(t.path());
        assert!(!l.load_file(&sys, "kernel/net/llc/llc.ko.xz").unwrap());
        let err = l.load_file(&sys, "kernel/net/802/stp.ko.xz").unwrap_err();
        assert!(err.to_string().contains("stp.ko.xz"), "{err}");
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
    }
}
