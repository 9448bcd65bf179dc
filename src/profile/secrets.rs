//! Cluster secrets: the kubeadm bootstrap token, the certificate key, the cluster CA and the rest
//! of the control plane's shared PKI (front-proxy CA, etcd CA, service-account key pair), so that
//! every control-plane image carries them and `kubeadm join --control-plane` needs no uploaded
//! certificates. They live in a file of their own (git-ignored, mode 0600) that profiles
//! reference; piimg generates it on first use and adds what an older file lacks. Nothing here
//! prints a secret; `Debug` is redacted.

use super::diag::{Diagnostic, Location};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    /// kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// 32 random bytes as 64 hex digits (kubeadm `--certificate-key`).
    pub certificate_key: String,
    /// Cluster CA certificate (PEM).
    pub ca_cert: String,
    /// Cluster CA private key (PKCS#8 PEM).
    pub ca_key: String,
    /// The front-proxy CA (kubeadm's front-proxy-ca.crt/.key), PEM.
    #[serde(default)]
    pub front_proxy_ca_cert: String,
    #[serde(default)]
    pub front_proxy_ca_key: String,
    /// The etcd CA (kubeadm's etcd/ca.crt/.key), PEM.
    #[serde(default)]
    pub etcd_ca_cert: String,
    #[serde(default)]
    pub etcd_ca_key: String,
    /// The key pair service-account tokens are signed with (kubeadm's sa.key / sa.pub), PEM.
    #[serde(default)]
    pub sa_key: String,
    #[serde(default)]
    pub sa_pub: String,
    /// Wi-Fi passphrases by SSID (`[wifi]` `"SSID" = "passphrase"`): written only into the
    /// node's 0600 wpa_supplicant configuration. An SSID without one is an open network.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub wifi: std::collections::BTreeMap<String, String>,
}

/// The files of kubeadm's certificates folder the secrets provide: (path under
/// /etc/kubernetes/pki, content, private).
pub type PkiFile<'a> = (&'static str, &'a str, bool);

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecrets(<redacted>)")
    }
}

/// kubeadm's token format.
pub fn valid_token(t: &str) -> bool {
    let b = t.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.len() == 23 && b[6] == b'.' && b[..6].iter().all(ok) && b[7..].iter().all(ok)
}

pub fn valid_certificate_key(k: &str) -> bool {
    k.len() == 64
        && k.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// What WPA-PSK takes: a passphrase of 8 to 63 printable ASCII characters, or the 256-bit PSK
/// itself as 64 hex digits.
pub fn valid_wifi_passphrase(p: &str) -> bool {
    let printable = (8..=63).contains(&p.len()) && p.bytes().all(|c| (0x20..0x7f).contains(&c));
    let psk = p.len() == 64 && p.bytes().all(|c| c.is_ascii_hexdigit());
    printable || psk
}

pub fn valid_ca_hash(h: &str) -> bool {
    h.strip_prefix("sha256:")
        .is_some_and(|x| x.len() == 64 && x.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the cluster CA: {0}")]
    Ca(String),
    #[error("no random numbers from the OS: {0}")]
    Random(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(b)
}

/// A uniformly random string over `[a-z0-9]` (rejection sampling, no modulo bias).
fn random_alnum(n: usize) -> Result<String, SecretsError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes::<32>()? {
            // 252 = 7 * 36: bytes above it would favour the first letters.
            if b < 252 && out.len() < n {
                out.push(ALPHABET[usize::from(b) % 36] as char);
            }
        }
    }
    Ok(out)
}

/// Day count since 1970-01-01 of a proleptic Gregorian date (inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One DER element at the start of `b`: (tag, content, rest).
fn der_next(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore of a PEM certificate as Unix seconds: Certificate -> tbsCertificate -> (version)
/// serialNumber, signature, issuer, validity.notBefore (UTCTime or GeneralizedTime).
pub fn cert_not_before(pem_text: &str) -> Option<i64> {
    let der = pem::parse(pem_text).ok()?;
    let (_, cert, _) = der_next(der.contents())?;
    let (_, tbs, _) = der_next(cert)?;
    let (tag, _, after) = der_next(tbs)?;
    // [0] version is optional (v1 certificates start with the serial number).
    let rest = if tag == 0xa0 { after } else { tbs };
    let (_, _, rest) = der_next(rest)?; // serialNumber
    let (_, _, rest) = der_next(rest)?; // signature
    let (_, _, rest) = der_next(rest)?; // issuer
    let (_, validity, _) = der_next(rest)?;
    let (tag, t, _) = der_next(validity)?;
    let t = std::str::from_utf8(t).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = t.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let days = days_from_civil(year, n(0..2)?, n(2..4)?);
    Some(days * 86_400 + n(4..6)? * 3600 + n(6..8)? * 60 + n(8..10)?)
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// A CA the way kubeadm makes one (CN, CA:TRUE, keyCertSign, ten years), valid from the day
/// before `now_unix` (nodes whose clock starts slightly behind); ECDSA P-256, which the generated
/// ClusterConfiguration's `encryptionAlgorithm: ECDSA-P256` matches. Returns (cert, key) PEM.
fn new_ca(cn: &str, now_unix: i64) -> Result<(String, String), SecretsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca = |e: rcgen::Error| SecretsError::Ca(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    let (y, m, d) = civil_from_days(now_unix.div_euclid(86_400) - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
    let serial = random_bytes::<16>()?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params.self_signed(&key).map_err(ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl ClusterSecrets {
    /// Fresh secrets: random token and certificate key, the cluster CA (CN=kubernetes) and the
    /// rest of the shared control-plane PKI.
    pub fn generate(now_unix: i64) -> Result<ClusterSecrets, SecretsError> {
        let token = format!("{}.{}", random_alnum(6)?, random_alnum(16)?);
        let certificate_key = hex::encode(random_bytes::<32>()?);
        let (ca_cert, ca_key) = new_ca("kubernetes", now_unix)?;
        let mut s = ClusterSecrets {
            token,
            certificate_key,
            ca_cert,
            ca_key,
            front_proxy_ca_cert: String::new(),
            front_proxy_ca_key: String::new(),
            etcd_ca_cert: String::new(),
            etcd_ca_key: String::new(),
            sa_key: String::new(),
            sa_pub: String::new(),
            wifi: Default::default(),
        };
        s.complete(now_unix)?;
        Ok(s)
    }

    /// Generates whatever shared control-plane PKI the secrets lack (files written before
    /// piimg preseeded it); true when something was added.
    pub fn complete(&mut self, now_unix: i64) -> Result<bool, SecretsError> {
        let mut added = false;
        if self.front_proxy_ca_cert.is_empty() || self.front_proxy_ca_key.is_empty() {
            (self.front_proxy_ca_cert, self.front_proxy_ca_key) =
                new_ca("front-proxy-ca", now_unix)?;
            added = true;
        }
        if self.etcd_ca_cert.is_empty() || self.etcd_ca_key.is_empty() {
            (self.etcd_ca_cert, self.etcd_ca_key) = new_ca("etcd-ca", now_unix)?;
            added = true;
        }
        if self.sa_key.is_empty() || self.sa_pub.is_empty() {
            // ECDSA P-256 like every other key: the ClusterConfiguration's encryptionAlgorithm.
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| SecretsError::Ca(e.to_string()))?;
            self.sa_key = key.serialize_pem();
            self.sa_pub = key.public_key_pem();
            added = true;
        }
        Ok(added)
    }

    /// The control plane's shared files, at the paths kubeadm reads them from
    /// (phases/certs SharedCertificateExists: what `join --control-plane` without a
    /// certificate key requires).
    pub fn pki_files(&self) -> Vec<PkiFile<'_>> {
        vec![
            ("ca.crt", &self.ca_cert, false),
            ("ca.key", &self.ca_key, true),
            ("front-proxy-ca.crt", &self.front_proxy_ca_cert, false),
            ("front-proxy-ca.key", &self.front_proxy_ca_key, true),
            ("etcd/ca.crt", &self.etcd_ca_cert, false),
            ("etcd/ca.key", &self.etcd_ca_key, true),
            ("sa.key", &self.sa_key, true),
            ("sa.pub", &self.sa_pub, false),
        ]
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo: what `kubeadm join
    /// --discovery-token-ca-cert-hash` pins.
    pub fn ca_cert_hash(&self) -> Result<String, String> {
        let key = rcgen::KeyPair::from_pem(&self.ca_key).map_err(|e| e.to_string())?;
        Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(key.public_key_der()))
        ))
    }

    /// Reads and checks a secrets file; problems are reported at their line.
    pub fn load(path: &Path) -> Result<ClusterSecrets, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diagnostic::error(
                Location::file(path),
                "",
                format!("cannot read secrets file: {e}"),
            )]
        })?;
        let s: ClusterSecrets = toml::from_str(&text).map_err(|e| {
            // Never echo the parser's excerpt: it could contain a secret.
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            vec![Diagnostic::error(
                Location {
                    file: path.to_path_buf(),
                    line,
                    col: None,
                },
                "",
                format!("invalid secrets file: {}", e.message()),
            )]
        })?;
        // The parser's key positions: a field is found by its key, not by a line that happens
        // to start like it (`ca` and `ca_cert`, `[wifi] token` and `token`, escaped SSIDs).
        let doc = toml_edit::ImDocument::parse(text.as_str()).ok();
        let at = |key: &[&str]| -> Location {
            let (line, col) = doc
                .as_ref()
                .and_then(|d| key_offset(d, key))
                .map(|o| line_col(&text, o))
                .unzip();
            Location {
                file: path.to_path_buf(),
                line,
                col,
            }
        };
        let mut errs = Vec::new();
        if !valid_token(&s.token) {
            errs.push(Diagnostic::error(
                at(&["token"]),
                "token",
                "not a kubeadm bootstrap token (expected [a-z0-9]{6}.[a-z0-9]{16})",
            ));
        }
        if !valid_certificate_key(&s.certificate_key) {
            errs.push(Diagnostic::error(
                at(&["certificate_key"]),
                "certificate_key",
                "expected 64 lowercase hex digits",
            ));
        }
        if let Err(e) = s.ca_cert_hash() {
            errs.push(Diagnostic::error(
                at(&["ca_key"]),
                "ca_key",
                format!("not a usable private key: {e}"),
            ));
        }
        if !s.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
            errs.push(Diagnostic::error(
                at(&["ca_cert"]),
                "ca_cert",
                "expected a PEM certificate",
            ));
        }
        for ssid in s
            .wifi
            .iter()
            .filter(|(_, p)| !valid_wifi_passphrase(p))
            .map(|(k, _)| k)
        {
            // The SSID names the entry; the passphrase is never echoed.
            errs.push(Diagnostic::error(
                at(&["wifi", ssid]),
                &format!("wifi.{ssid}"),
                "a WPA passphrase is 8 to 63 printable ASCII characters (or the PSK as 64 hex digits)",
            ));
        }
        if errs.is_empty() {
            Ok(s)
        } else {
            Err(errs)
        }
    }

    /// Rewrites an existing secrets file with these secrets (after [`ClusterSecrets::complete`]):
    /// the old file or the new one, never half of either.
    pub fn save_replace(&self, path: &Path) -> Result<(), SecretsError> {
        self.write(path, |tmp, path| std::fs::rename(tmp, path))
    }

    /// Writes a new secrets file with mode 0600 (created exclusively: never overwrites).
    pub fn save_new(&self, path: &Path) -> Result<(), SecretsError> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SecretsError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        // Linked into place: an existing file is never replaced.
        self.write(path, |tmp, path| std::fs::hard_link(tmp, path))
    }

    /// The file's text into a 0600 temp file beside `path`, fsynced, then `place`d.
    fn write(
        &self,
        path: &Path,
        place: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
    ) -> Result<(), SecretsError> {
        let io = |e| SecretsError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let body = toml::to_string(self).map_err(|e| SecretsError::Ca(e.to_string()))?;
        let text = format!(
            "# Cluster secrets generated by piimg. Keep this file private (mode 0600) and out of\n\
             # version control: anyone with it can join nodes to the cluster.\n{body}"
        );
        // A fresh temp name each time (mode 0600, removed when dropped): neither a crashed
        // run's leftover nor a concurrent run can stand in the way.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".secrets.")
            .suffix(".partial")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io)?;
        let f = tmp.as_file_mut();
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .and_then(|_| place(tmp.path(), path))
            .map_err(io)
    }
}

/// Where the key at `path` (`["wifi", "lab"]`) starts in the parsed text.
fn key_offset(doc: &toml_edit::ImDocument<&str>, path: &[&str]) -> Option<usize> {
    let (last, parents) = path.split_last()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    for p in parents {
        table = table.get(p)?.as_table_like()?;
    }
    Some(table.get_key_value(last)?.0.span()?.start)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1);
    (before.matches('\n').count() + 1, col + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_kubeadm_formats() {
        let s = ClusterSecrets::generate(1_760_000_000).unwrap();
        assert!(valid_token(&s.token), "{}", s.token);
        assert!(valid_certificate_key(&s.certificate_key));
        assert!(valid_ca_hash(&s.ca_cert_hash().unwrap()));
        assert!(!format!("{s:?}").contains(&s.token));
    }

    #[test]
    fn wifi_passphrases_are_what_wpa_psk_takes_and_never_echoed() {
        assert!(valid_wifi_passphrase("correct horse"));
        assert!(valid_wifi_passphrase(&"ab".repeat(32)));
        assert!(!valid_wifi_passphrase("short"));
        assert!(!valid_wifi_passphrase("new\nline passphrase"));
        assert!(!valid_wifi_passphrase(&"x".repeat(64)));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        let mut s = ClusterSecrets::generate(1_760_000_000).unwrap();
        s.wifi.insert("lab net".into(), "tiny".into());
        s.save_new(&p).unwrap();
        let errs = ClusterSecrets::load(&p).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "wifi.lab net");
        let text = std::fs::read_to_string(&p).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with("\"lab net\""))
            .unwrap()
            + 1;
        assert_eq!(errs[0].location.line, Some(line));
        assert!(!errs[0].to_string().contains("tiny"), "{}", errs[0]);
        s.wifi.insert("lab net".into(), "long enough".into());
        s.save_replace(&p).unwrap();
        assert_eq!(
            ClusterSecrets::load(&p).unwrap().wifi["lab net"],
            "long enough"
        );
    }

    #[test]
    fn a_bad_passphrase_is_reported_at_its_own_wifi_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        ClusterSecrets::generate(1_760_000_000)
            .unwrap()
            .save_new(&p)
            .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let wifi = text.lines().count() + 1;
        // SSIDs named like the fields above [wifi], and one written with TOML escapes.
        let added =
            "[wifi]\ntoken = \"tiny\"\nca = \"short\"\n\"lab \\\"x\\\" \\\\ caf\\u00e9\" = \"x\"\n";
        std::fs::write(&p, format!("{text}{added}")).unwrap();
        let mut errs = ClusterSecrets::load(&p).unwrap_err();
        errs.sort_by(|a, b| a.field.cmp(&b.field));
        let got: Vec<(&str, Option<usize>, Option<usize>)> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.location.line, e.location.col))
            .collect();
        assert_eq!(
            got,
            [
                ("wifi.ca", Some(wifi + 2), Some(1)),
                ("wifi.lab \"x\" \\ caf\u{e9}", Some(wifi + 3), Some(1)),
                ("wifi.token", Some(wifi + 1), Some(1)),
            ]
        );
    }

    #[test]
    fn formats() {
        assert!(valid_token("abcdef.0123456789abcdef"));
        assert!(!valid_token("ABCDEF.0123456789abcdef"));
        assert!(!valid_token("abcdef0123456789abcdef"));
        assert!(!valid_ca_hash("sha256:abc"));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(days_from_civil(2024, 1, 1), 19_723);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn ca_not_before_is_the_day_before_generation() {
        let now = 1_764_000_000; // 2025-11-24T16:00:00Z
        let s = ClusterSecrets::generate(now).unwrap();
        let nb = cert_not_before(&s.ca_cert).unwrap();
        assert_eq!(nb, (now / 86_400 - 1) * 86_400);
        assert_eq!(cert_not_before(&s.etcd_ca_cert), Some(nb));
        assert_eq!(cert_not_before("not a certificate"), None);
    }
}
