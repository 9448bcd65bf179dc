//! The kernel command line (/proc/cmdline): what stage 1 needs to find and mount the root.

/// How the root device is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// `root=PARTUUID=...` (stored lowercase: the kernel prints GUIDs lowercase).
    PartUuid(String),
    /// `root=/dev/...`.
    Device(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub root: Option<RootSpec>,
    pub rootfstype: String,
    pub rootflags: Option<String>,
    pub rootwait: bool,
    /// Seconds to wait for the root device (`rootdelay=`; default when `rootwait` is absent).
    pub rootdelay: Option<u64>,
    /// `ro` (the kernel default) unless `rw` is given; the last one wins.
    pub read_only: bool,
    /// `init=`: what stage 1 executes in the new root.
    pub init: String,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            root: None,
            rootfstype: "ext4".into(),
            rootflags: None,
            rootwait: false,
            rootdelay: None,
            read_only: true,
            init: "/sbin/init".into(),
        }
    }
}

/// Whether the command line turns `name` off (`name=0` or `name=off`; the last one wins).
pub fn turned_off(text: &str, name: &str) -> bool {
    words(text)
        .iter()
        .filter_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .next_back()
        .is_some_and(|v| v == "0" || v == "off")
}

/// Splits the command line into words, honouring double quotes like the kernel does.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for w in words(text) {
        let (key, val) = match w.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (w.as_str(), None),
        };
        match (key, val) {
            ("root", Some(v)) => {
                c.root = Some(match v.strip_prefix("PARTUUID=") {
                    Some(u) => RootSpec::PartUuid(u.to_ascii_lowercase()),
                    None => RootSpec::Device(v.to_string()),
                })
            }
            ("rootfstype", Some(v)) if !v.is_empty() => c.rootfstype = v.to_string(),
            ("rootflags", Some(v)) if !v.is_empty() => c.rootflags = Some(v.to_string()),
            ("rootwait", None) => c.rootwait = true,
            ("rootdelay", Some(v)) => c.rootdelay = v.parse().ok(),
            ("ro", None) => c.read_only = true,
            ("rw", None) => c.read_only = false,
            ("init", Some(v)) if v.starts_with('/') => c.init = v.to_string(),
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_pi_line() {
        let c = parse(
            "console=ttyAMA0,115200 root=PARTUUID=0BADC0DE-02 rootfstype=ext4 rootwait rw quiet\n",
        );
        assert_eq!(c.root, Some(RootSpec::PartUuid("0badc0de-02".into())));
        assert_eq!(c.rootfstype, "ext4");
        assert!(c.rootwait);
        assert!(!c.read_only);
        assert_eq!(c.init, "/sbin/init");
    }

    #[test]
    fn defaults_and_device_root() {
        let c = parse("root=/dev/mmcblk0p2 init=/sbin/piimg-agent rootdelay=5");
        assert_eq!(c.root, Some(RootSpec::Device("/dev/mmcblk0p2".into())));
        assert!(c.read_only);
        assert!(!c.rootwait);
        assert_eq!(c.rootdelay, Some(5));
        assert_eq!(c.init, "/sbin/piimg-agent");
        assert_eq!(parse("").root, None);
    }

    #[test]
    fn switches_turned_off() {
        assert!(turned_off(
            "console=ttyAMA0 piimg.watchdog=0",
            "piimg.watchdog"
        ));
        assert!(turned_off(
            "piimg.watchdog=1 piimg.watchdog=off",
            "piimg.watchdog"
        ));
        assert!(!turned_off(
            "piimg.watchdog=0 piimg.watchdog=1",
            "piimg.watchdog"
        ));
        assert!(!turned_off(
            "piimg.watchdogx=0 root=/dev/x",
            "piimg.watchdog"
        ));
        assert!(!turned_off("", "piimg.watchdog"));
    }

    #[test]
    fn quotes_and_last_wins() {
        assert_eq!(words(r#"a="b c" d"#), vec!["a=b c", "d"]);
        let c =
            parse(r#"rw dyndbg="file x +p" ro root=PARTUUID=6c586e13-8cdb-4a1d-9c3e-0f2a1b3c4d5e"#);
        assert!(c.read_only);
        assert_eq!(
            c.root,
            Some(RootSpec::PartUuid(
                "6c586e13-8cdb-4a1d-9c3e-0f2a1b3c4d5e".into()
            ))
        );
    }
}
