//! The kernel command line (/proc/cmdline): what stage 1 needs to find and mount the root, on a
//! local device (`root=`) or over the network (`piimg.root=`).

use std::net::{IpAddr, SocketAddr};

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
    /// `piimg.root=http://ADDRESS[:PORT]/PATH`: netboot, the root image is fetched from there
    /// (kept when invalid, so stage 1 can say why it does not boot).
    pub net_root: Option<Result<HttpUrl, UrlError>>,
}

/// An `http://` URL whose host is an address literal: stage 1 has no resolver, and the builder
/// writes what the profile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub addr: SocketAddr,
    /// Starts with `/`, as it goes on the request line.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?}: only http:// is supported")]
    Scheme(String),
    #[error(
        "{0:?}: the host must be an IPv4 address or a bracketed IPv6 address (no DNS at boot)"
    )]
    Host(String),
    #[error("{0:?}: bad port")]
    Port(String),
    #[error("{0:?}: no path to the root image")]
    Path(String),
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::Scheme(text.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => return Err(UrlError::Path(text.into())),
        };
        if path.len() < 2 || path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Path(text.into()));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (ip, after) = v6
                    .split_once(']')
                    .ok_or_else(|| UrlError::Host(text.into()))?;
                let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| UrlError::Host(text.into()))?;
                (IpAddr::V6(ip), after)
            }
            None => {
                let (ip, after) = match authority.find(':') {
                    Some(i) => authority.split_at(i),
                    None => (authority, ""),
                };
                let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| UrlError::Host(text.into()))?;
                (IpAddr::V4(ip), after)
            }
        };
        let port = match port {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|&p| p != 0)
                .ok_or_else(|| UrlError::Port(text.into()))?,
        };
        Ok(HttpUrl {
            addr: SocketAddr::new(host, port),
            path: path.to_string(),
        })
    }

    /// What the `Host:` header carries (`10.0.2.2:8080`, `[fd00::1]:80`).
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
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
            net_root: None,
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
            ("piimg.root", Some(v)) => c.net_root = Some(HttpUrl::parse(v)),
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

    #[test]
    fn network_root_is_an_http_url_with_an_address_literal() {
        let c = parse("console=ttyAMA0 piimg.root=http://10.0.2.2:8080/nodes/w1/root.squashfs rw");
        assert_eq!(c.root, None);
        let url = c.net_root.unwrap().unwrap();
        assert_eq!(url.addr, "10.0.2.2:8080".parse().unwrap());
        assert_eq!(url.path, "/nodes/w1/root.squashfs");
        assert_eq!(url.authority(), "10.0.2.2:8080");
        assert_eq!(
            url.to_string(),
            "http://10.0.2.2:8080/nodes/w1/root.squashfs"
        );
        let url = HttpUrl::parse("http://192.168.1.5/root.img").unwrap();
        assert_eq!(url.addr, "192.168.1.5:80".parse().unwrap());
        let url = HttpUrl::parse("http://[fd00::1]:81/r").unwrap();
        assert_eq!(url.addr, "[fd00::1]:81".parse().unwrap());
        assert_eq!(url.authority(), "[fd00::1]:81");
        assert_eq!(
            HttpUrl::parse("http://[fd00::1]/r").unwrap().addr.port(),
            80
        );
        assert_eq!(parse("root=/dev/sda2").net_root, None);
    }

    #[test]
    fn network_root_refuses_what_stage1_cannot_fetch() {
        for (text, want) in [
            (
                "https://10.0.2.2/r",
                UrlError::Scheme("https://10.0.2.2/r".into()),
            ),
            ("10.0.2.2/r", UrlError::Scheme("10.0.2.2/r".into())),
            (
                "http://server.lan/r",
                UrlError::Host("http://server.lan/r".into()),
            ),
            (
                "http://fd00::1/r",
                UrlError::Host("http://fd00::1/r".into()),
            ),
            (
                "http://[fd00::1/r",
                UrlError::Host("http://[fd00::1/r".into()),
            ),
            (
                "http://10.0.2.2:0/r",
                UrlError::Port("http://10.0.2.2:0/r".into()),
            ),
            (
                "http://10.0.2.2:70000/r",
                UrlError::Port("http://10.0.2.2:70000/r".into()),
            ),
            (
                "http://10.0.2.2:/r",
                UrlError::Port("http://10.0.2.2:/r".into()),
            ),
            ("http://[::1]x/r", UrlError::Port("http://[::1]x/r".into())),
            ("http://10.0.2.2", UrlError::Path("http://10.0.2.2".into())),
            (
                "http://10.0.2.2/",
                UrlError::Path("http://10.0.2.2/".into()),
            ),
        ] {
            assert_eq!(HttpUrl::parse(text), Err(want), "{text}");
        }
        let c = parse("piimg.root=http://nas/root.img");
        assert!(matches!(c.net_root, Some(Err(UrlError::Host(_)))));
    }
}
