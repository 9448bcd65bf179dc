//! Flattened device trees (the `.dtb` files the Pi firmware hands the kernel): parse into an
//! editable tree and write back. piimg reads a board's dtb to choose its drivers (the
//! `compatible` strings of enabled nodes) and edits a copy for QEMU machines that emulate less
//! than the board has. The format is the Devicetree Specification's chapter 5; crates.io has
//! readers (`fdt`) and writers (`vm-fdt`) but none that does both, and the whole format is a
//! header, a reservation list, a token stream and a string table.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum DtbError {
    #[error("not a device tree blob: {0}")]
    Format(String),
    #[error("device tree blob is cut short at offset {0}")]
    Truncated(usize),
}

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const HEADER_LEN: usize = 40;
/// Deeper nesting is refused: real trees are under 10 levels, and every walk here recurses.
const MAX_DEPTH: usize = 64;

/// A whole device tree: the root node plus the header fields that are not layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdt {
    pub root: Node,
    /// Memory reservation block entries (address, size).
    pub mem_reserve: Vec<(u64, u64)>,
    pub boot_cpuid: u32,
}

/// One node: its name with unit address (`mmc@7e300000`; the root's is empty), properties in
/// blob order, children in blob order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub props: Vec<(String, Vec<u8>)>,
    pub children: Vec<Node>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn u32(&self, at: usize) -> Result<u32, DtbError> {
        let s = self.b.get(at..at + 4).ok_or(DtbError::Truncated(at))?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&self, at: usize) -> Result<u64, DtbError> {
        Ok((u64::from(self.u32(at)?) << 32) | u64::from(self.u32(at + 4)?))
    }
    /// The NUL-terminated string at `at` and the offset just past its NUL.
    fn cstr(&self, at: usize, end: usize) -> Result<(String, usize), DtbError> {
        let rest = self.b.get(at..end).ok_or(DtbError::Truncated(at))?;
        let n = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(DtbError::Truncated(end))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| DtbError::Format(format!("name at offset {at} is not UTF-8")))?;
        Ok((s.to_string(), at + n + 1))
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Fdt {
    pub fn parse(b: &[u8]) -> Result<Fdt, DtbError> {
        let r = Reader { b };
        if r.u32(0)? != MAGIC {
            return Err(DtbError::Format("bad magic".into()));
        }
        let total = r.u32(4)? as usize;
        let off_struct = r.u32(8)? as usize;
        let off_strings = r.u32(12)? as usize;
        let off_rsv = r.u32(16)? as usize;
        let version = r.u32(20)?;
        let boot_cpuid = r.u32(28)?;
        let size_strings = r.u32(32)? as usize;
        let size_struct = r.u32(36)? as usize;
        if version < 17 {
            return Err(DtbError::Format(format!("version {version} (need 17)")));
        }
        if total > b.len() {
            return Err(DtbError::Truncated(b.len()));
        }
        let strings_end = off_strings + size_strings;
        let struct_end = off_struct + size_struct;
        if strings_end > total || struct_end > total {
            return Err(DtbError::Format("blocks reach past totalsize".into()));
        }

        let mut mem_reserve = Vec::new();
        let mut at = off_rsv;
        loop {
            let (addr, size) = (r.u64(at)?, r.u64(at + 8)?);
            at += 16;
            if addr == 0 && size == 0 {
                break;
            }
            mem_reserve.push((addr, size));
        }

        // A stack of open nodes; the root is the first BEGIN_NODE.
        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        let mut at = off_struct;
        while at < struct_end {
            let token = r.u32(at)?;
            at += 4;
            match token {
                BEGIN_NODE => {
                    let (name, next) = r.cstr(at, struct_end)?;
                    at = align4(next);
                    if root.is_some() {
                        return Err(DtbError::Format("a node after the root".into()));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(DtbError::Format(format!(
                            "nodes nested deeper than {MAX_DEPTH}"
                        )));
                    }
                    stack.push(Node {
                        name,
                        ..Node::default()
                    });
                }
                END_NODE => {
                    let node = stack
                        .pop()
                        .ok_or_else(|| DtbError::Format(format!("unbalanced end at {at}")))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                PROP => {
                    let len = r.u32(at)? as usize;
                    let nameoff = r.u32(at + 4)? as usize;
                    at += 8;
                    let value = b.get(at..at + len).ok_or(DtbError::Truncated(at))?;
                    at = align4(at + len);
                    let (name, _) = r.cstr(off_strings + nameoff, strings_end)?;
                    stack
                        .last_mut()
                        .ok_or_else(|| DtbError::Format("property outside a node".into()))?
                        .props
                        .push((name, value.to_vec()));
                }
                NOP => {}
                END => break,
                t => return Err(DtbError::Format(format!("token {t} at {}", at - 4))),
            }
        }
        if !stack.is_empty() {
            return Err(DtbError::Format("node left open".into()));
        }
        let root = root.ok_or_else(|| DtbError::Format("no root node".into()))?;
        Ok(Fdt {
            root,
            mem_reserve,
            boot_cpuid,
        })
    }

    /// The blob, version 17: header, reservations, structure, strings. Property names are
    /// stored once each, in first-use order, so equal trees give equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut strings: Vec<u8> = Vec::new();
        let mut offsets: BTreeMap<&str, u32> = BTreeMap::new();
        let mut st: Vec<u8> = Vec::new();
        fn put(v: &mut Vec<u8>, x: u32) {
            v.extend_from_slice(&x.to_be_bytes());
        }
        fn pad(v: &mut Vec<u8>) {
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
        }
        fn emit<'a>(
            n: &'a Node,
            st: &mut Vec<u8>,
            strings: &mut Vec<u8>,
            offsets: &mut BTreeMap<&'a str, u32>,
        ) {
            put(st, BEGIN_NODE);
            st.extend_from_slice(n.name.as_bytes());
            st.push(0);
            pad(st);
            for (name, value) in &n.props {
                let off = *offsets.entry(name.as_str()).or_insert_with(|| {
                    let off = strings.len() as u32;
                    strings.extend_from_slice(name.as_bytes());
                    strings.push(0);
                    off
                });
                put(st, PROP);
                put(st, value.len() as u32);
                put(st, off);
                st.extend_from_slice(value);
                pad(st);
            }
            for c in &n.children {
                emit(c, st, strings, offsets);
            }
            put(st, END_NODE);
        }
        emit(&self.root, &mut st, &mut strings, &mut offsets);
        put(&mut st, END);

        let mut rsv = Vec::new();
        for &(a, s) in self.mem_reserve.iter().chain([(0, 0)].iter()) {
            rsv.extend_from_slice(&a.to_be_bytes());
            rsv.extend_from_slice(&s.to_be_bytes());
        }
        let off_rsv = HEADER_LEN; // 8-aligned, as the reservation block must be
        let off_struct = off_rsv + rsv.len();
        let off_strings = off_struct + st.len();
        let total = off_strings + strings.len();
        let mut out = Vec::with_capacity(total);
        for x in [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            self.boot_cpuid,
            strings.len() as u32,
            st.len() as u32,
        ] {
            put(&mut out, x);
        }
        out.extend_from_slice(&rsv);
        out.extend_from_slice(&st);
        out.extend_from_slice(&strings);
        out
    }

    /// The node at an absolute path such as `/soc/mmc@7e300000` (`/` is the root).
    pub fn node(&self, path: &str) -> Option<&Node> {
        let mut n = &self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            n = n.children.iter().find(|c| c.name == part)?;
        }
        Some(n)
    }

    pub fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        let mut n = &mut self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            n = n.children.iter_mut().find(|c| c.name == part)?;
        }
        Some(n)
    }

    /// Every node with its absolute path, parents before children, in blob order.
    pub fn walk(&self) -> Vec<(String, &Node)> {
        self.walk_where(|_| true)
    }

    /// Paths of nodes that are enabled and whose ancestors all are: what the kernel probes.
    pub fn enabled(&self) -> Vec<(String, &Node)> {
        self.walk_where(Node::is_enabled)
    }

    /// The root and every node `keep` accepts, below nodes it accepted.
    fn walk_where(&self, keep: impl Fn(&Node) -> bool) -> Vec<(String, &Node)> {
        fn go<'a>(
            n: &'a Node,
            path: &str,
            keep: &dyn Fn(&Node) -> bool,
            out: &mut Vec<(String, &'a Node)>,
        ) {
            for c in n.children.iter().filter(|c| keep(c)) {
                let p = format!("{}/{}", path.trim_end_matches('/'), c.name);
                out.push((p.clone(), c));
                go(c, &p, keep, out);
            }
        }
        let mut out = vec![("/".to_string(), &self.root)];
        go(&self.root, "/", &keep, &mut out);
        out
    }
}

impl Node {
    pub fn prop(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Replaces the property's value, or appends the property.
    pub fn set_prop(&mut self, name: &str, value: Vec<u8>) {
        match self.props.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.props.push((name.to_string(), value)),
        }
    }

    pub fn remove_prop(&mut self, name: &str) -> bool {
        let before = self.props.len();
        self.props.retain(|(n, _)| n != name);
        self.props.len() != before
    }

    pub fn remove_child(&mut self, name: &str) -> bool {
        let before = self.children.len();
        self.children.retain(|c| c.name != name);
        self.children.len() != before
    }

    /// A string-list property (`compatible`), split at its NULs; empty when absent.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.prop(name)
            .map(|v| {
                v.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node name without its unit address (`mmc` for `mmc@7e300000`).
    pub fn base_name(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }

    /// A node without `status`, or with "okay"/"ok", is enabled (Devicetree spec 2.3.4).
    pub fn is_enabled(&self) -> bool {
        match self.strings("status").first().map(String::as_str) {
            None => true,
            Some(s) => s == "okay" || s == "ok",
        }
    }

    /// The device's modalias as the kernel forms it (drivers/of/module.c, of_modalias):
    /// `of:N<name>T<device_type or (null)>` then `C<compatible>` for each entry, spaces in them
    /// turned into underscores. udev loads the modules whose `alias=` patterns match it.
    pub fn modalias(&self) -> Option<String> {
        let compat = self.strings("compatible");
        if compat.is_empty() {
            return None;
        }
        let ty = self
            .strings("device_type")
            .into_iter()
            .next()
            .unwrap_or_else(|| "(null)".into());
        let mut s = format!("of:N{}T{}", self.base_name(), ty);
        for c in compat {
            s.push('C');
            s.push_str(&c.replace(' ', "_"));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fdt {
        Fdt {
            root: Node {
                name: String::new(),
                props: vec![
                    (
                        "compatible".into(),
                        b"raspberrypi,4-model-b\0brcm,bcm2711\0".to_vec(),
                    ),
                    ("#address-cells".into(), 2u32.to_be_bytes().to_vec()),
                ],
                children: vec![Node {
                    name: "soc".into(),
                    props: vec![],
                    children: vec![
                        Node {
                            name: "mmc@7e300000".into(),
                            props: vec![
                                (
                                    "compatible".into(),
                                    b"brcm,bcm2835-mmc\0brcm,bcm2835-sdhci\0".to_vec(),
                                ),
                                ("status".into(), b"okay\0".to_vec()),
                                ("non-removable".into(), vec![]),
                            ],
                            children: vec![],
                        },
                        Node {
                            name: "pcie@7d500000".into(),
                            props: vec![
                                ("compatible".into(), b"brcm,bcm2711-pcie\0".to_vec()),
                                ("status".into(), b"disabled\0".to_vec()),
                            ],
                            children: vec![Node {
                                name: "child".into(),
                                props: vec![("compatible".into(), b"x,y\0".to_vec())],
                                children: vec![],
                            }],
                        },
                    ],
                }],
            },
            mem_reserve: vec![(0, 0x1000)],
            boot_cpuid: 0,
        }
    }

    #[test]
    fn round_trip_is_identity_and_stable() {
        let t = sample();
        let b = t.to_bytes();
        let back = Fdt::parse(&b).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.to_bytes(), b);
    }

    #[test]
    fn edits_and_lookups() {
        let mut t = sample();
        let mmc = t.node_mut("/soc/mmc@7e300000").unwrap();
        assert!(mmc.remove_prop("non-removable"));
        assert!(!mmc.remove_prop("non-removable"));
        mmc.set_prop("status", b"disabled\0".to_vec());
        let t = Fdt::parse(&t.to_bytes()).unwrap();
        assert!(!t.node("/soc/mmc@7e300000").unwrap().is_enabled());
        assert!(t.node("/soc/nope").is_none());
        let paths: Vec<_> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/soc",
                "/soc/mmc@7e300000",
                "/soc/pcie@7d500000",
                "/soc/pcie@7d500000/child"
            ]
        );
    }

    #[test]
    fn enabled_skips_disabled_subtrees() {
        let t = sample();
        let paths: Vec<_> = t.enabled().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/", "/soc", "/soc/mmc@7e300000"]);
    }

    #[test]
    fn modalias_matches_the_kernels_form() {
        let t = sample();
        assert_eq!(
            t.node("/soc/mmc@7e300000").unwrap().modalias().unwrap(),
            "of:NmmcT(null)Cbrcm,bcm2835-mmcCbrcm,bcm2835-sdhci"
        );
        assert_eq!(t.node("/soc").unwrap().modalias(), None);
    }

    #[test]
    fn deep_nesting_is_refused_before_anything_recurses() {
        let mut n = Node::default();
        for _ in 1..MAX_DEPTH {
            n = Node {
                name: "n".into(),
                children: vec![n],
                ..Node::default()
            };
        }
        let t = Fdt {
            root: n,
            mem_reserve: vec![],
            boot_cpuid: 0,
        };
        assert!(Fdt::parse(&t.to_bytes()).is_ok());
        let t = Fdt {
            root: Node {
                children: vec![t.root],
                ..Node::default()
            },
            ..t
        };
        let e = Fdt::parse(&t.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("deeper than 64"), "{e}");
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let b = sample().to_bytes();
        assert!(matches!(Fdt::parse(&b[..3]), Err(DtbError::Truncated(_))));
        assert!(Fdt::parse(&b[..b.len() - 10]).is_err());
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(matches!(Fdt::parse(&bad), Err(DtbError::Format(_))));
        // Every truncation point and every single-byte corruption: an error or a tree, never a
        // panic.
        for n in 0..b.len() {
            let _ = Fdt::parse(&b[..n]);
            let mut c = b.clone();
            c[n] ^= 0xff;
            let _ = Fdt::parse(&c);
        }
    }
}
