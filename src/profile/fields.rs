//! What every section check shares: reporting a problem at the line that set a field, and parsing
//! the value kinds profiles use (CIDRs, addresses, sizes, host:port, paths relative to a file).

use super::diag::{Diagnostic, Diagnostics, Location};
use super::source::Origins;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// One profile being checked: where its findings go and where each of its fields was set.
pub(super) struct Ctx<'a> {
    pub diags: &'a mut Diagnostics,
    pub origins: &'a Origins,
    pub path: &'a Path,
    /// The files merged, the profile's own first, then each one it extends.
    pub chain: &'a [PathBuf],
}

impl Ctx<'_> {
    /// The line that set `field`, or the profile itself when nothing did.
    pub fn at(&self, field: &str) -> Location {
        self.origins
            .locate(field)
            .cloned()
            .unwrap_or_else(|| Location::file(self.path))
    }

    pub fn err(&mut self, field: &str, msg: impl Into<String>) {
        let l = self.at(field);
        self.diags.push(Diagnostic::error(l, field, msg));
    }

    pub fn warn(&mut self, field: &str, msg: impl Into<String>) {
        let l = self.at(field);
        self.diags.push(Diagnostic::warning(l, field, msg));
    }

    /// A field no file of the chain sets: the profile itself is where to add it.
    pub fn missing(&mut self, field: &str, what: &str) {
        let l = Location::file(self.path);
        self.diags.push(Diagnostic::error(
            l,
            field,
            format!("missing: {what} must be set (here or in a profile it extends)"),
        ));
    }

    /// `p` resolved against the folder of the file that set `field`, as its author meant it.
    pub fn rel(&self, field: &str, p: &str) -> PathBuf {
        let base = self
            .origins
            .file_of(field)
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        normalize(&base.join(p))
    }
}

/// An RFC 1123 label in lowercase: what kubelet accepts as a node name.
pub(super) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

pub(super) fn parse_cidr(ctx: &mut Ctx, field: &str, v: &str) -> Option<IpNet> {
    match v.parse::<IpNet>() {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.err(
                field,
                format!("`{v}` is not a CIDR (expected an address with a prefix, e.g. 192.168.50.11/24)"),
            );
            None
        }
    }
}

pub(super) fn parse_ip(ctx: &mut Ctx, field: &str, v: &str) -> Option<IpAddr> {
    match v.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(field, format!("`{v}` is not an IP address"));
            None
        }
    }
}

/// A size such as "128MiB", or `default` when unset (also after an error, so checks go on).
pub(super) fn parse_size_field(ctx: &mut Ctx, field: &str, v: Option<&str>, default: u64) -> u64 {
    match v {
        None => default,
        Some(s) => match crate::units::parse_size(s) {
            Ok(n) => n,
            Err(e) => {
                ctx.err(field, e);
                default
            }
        },
    }
}

/// Splits `host:port` (IPv6 hosts in brackets).
pub(super) fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    (valid_hostname(h) || h.contains('.')).then(|| (h.to_string(), port))
}

/// Two networks share addresses exactly when one holds the other's first address.
pub(super) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `a/b/../c` -> `a/c` without touching the filesystem (the target may not exist yet).
pub(super) fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check, errors, warnings};
    use super::*;

    #[test]
    fn host_and_port_split_with_ipv6_in_brackets() {
        assert_eq!(split_host_port("lb1:6443"), Some(("lb1".into(), 6443)));
        assert_eq!(
            split_host_port("[fd00::1]:6443"),
            Some(("fd00::1".into(), 6443))
        );
        assert_eq!(
            split_host_port("lb.example.org:443"),
            Some(("lb.example.org".into(), 443))
        );
        assert_eq!(split_host_port("LB_1:6443"), None);
        assert_eq!(split_host_port("lb1"), None);
    }

    #[test]
    fn paths_are_normalised_without_the_filesystem() {
        assert_eq!(normalize(Path::new("a/b/../c")), Path::new("a/c"));
        assert_eq!(normalize(Path::new("./a/..")), Path::new("."));
        assert_eq!(normalize(Path::new("../a")), Path::new("../a"));
    }

    #[test]
    fn findings_name_their_field() {
        let (size, diags) = check(|ctx| {
            ctx.warn("agent.debug_shell", "on");
            ctx.missing("role", "role");
            parse_size_field(ctx, "image.size", Some("4 lots"), 7)
        });
        assert_eq!(size, 7);
        assert_eq!(warnings(&diags), ["agent.debug_shell: on"]);
        let e = errors(&diags);
        assert_eq!(
            e[0],
            "role: missing: role must be set (here or in a profile it extends)"
        );
        assert!(e[1].starts_with("image.size: `4 lots`"), "{e:?}");
    }

    #[test]
    fn addresses_and_cidrs_parse_or_name_their_field() {
        let (a, diags) = check(|ctx| parse_ip(ctx, "network.gateway", "192.168.50.1"));
        assert!(a.is_some() && diags.0.is_empty());
        let (n, diags) = check(|ctx| parse_cidr(ctx, "network.address", "10.0.0.1"));
        assert!(n.is_none());
        assert!(errors(&diags)[0].starts_with("network.address: `10.0.0.1` is not a CIDR"));
    }
}
