//! Cluster secrets: the kubeadm bootstrap token, the certificate key and the cluster CA. They live
//! in a file of their own (git-ignored, mode 0600) that profiles reference; piimg generates it on
//! first use. Nothing here prints a secret; `Debug` is redacted.

use super::diag::{Diagnostic, Location};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
}

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

impl ClusterSecrets {
    /// Fresh secrets: random token and certificate key, and a new CA the way kubeadm makes one
    /// (CN=kubernetes, CA:TRUE, keyCertSign, ten years). The key is ECDSA P-256; the generated
    /// ClusterConfiguration sets `encryptionAlgorithm: ECDSA-P256` to match.
    pub fn generate(now_unix: i64) -> Result<ClusterSecrets, SecretsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let token = format!("{}.{}", random_alnum(6)?, random_alnum(16)?);
        let certificate_key = hex::encode(random_bytes::<32>()?);
        let ca = |e: rcgen::Error| SecretsError::Ca(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ca)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubernetes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        // Backdate a day for nodes whose clock starts slightly behind.
        let (y, m, d) = civil_from_days(now_unix.div_euclid(86_400) - 1);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
        let serial = random_bytes::<16>()?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.self_signed(&key).map_err(ca)?;
        Ok(ClusterSecrets {
            token,
            certificate_key,
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
        })
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
        let at = |field: &str| -> Location {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(field))
                .map(|i| i + 1);
            Location {
                file: path.to_path_buf(),
                line,
                col: line.map(|_| 1),
            }
        };
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
        let mut errs = Vec::new();
        if !valid_token(&s.token) {
            errs.push(Diagnostic::error(
                at("token"),
                "token",
                "not a kubeadm bootstrap token (expected [a-z0-9]{6}.[a-z0-9]{16})",
            ));
        }
        if !valid_certificate_key(&s.certificate_key) {
            errs.push(Diagnostic::error(
                at("certificate_key"),
                "certificate_key",
                "expected 64 lowercase hex digits",
            ));
        }
        if let Err(e) = s.ca_cert_hash() {
            errs.push(Diagnostic::error(
                at("ca_key"),
                "ca_key",
                format!("not a usable private key: {e}"),
            ));
        }
        if !s.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
            errs.push(Diagnostic::error(
                at("ca_cert"),
                "ca_cert",
                "expected a PEM certificate",
            ));
        }
        if errs.is_empty() {
            Ok(s)
        } else {
            Err(errs)
        }
    }

    /// Writes a new secrets file with mode 0600 (created exclusively: never overwrites).
    pub fn save_new(&self, path: &Path) -> Result<(), SecretsError> {
        let io = |e| SecretsError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let body = toml::to_string(self).map_err(|e| SecretsError::Ca(e.to_string()))?;
        let text = format!(
            "# Cluster secrets generated by piimg. Keep this file private (mode 0600) and out of\n\
             # version control: anyone with it can join nodes to the cluster.\n{body}"
        );
        // Write beside the target, then link into place: no reader ever sees half a file and an
        // existing file is never replaced.
        let tmp = path.with_extension("toml.partial");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let res = f
            .write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .and_then(|_| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        res.map_err(io)
    }
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
    fn formats() {
        assert!(valid_token("abcdef.0123456789abcdef"));
        assert!(!valid_token("ABCDEF.0123456789abcdef"));
        assert!(!valid_token("abcdef0123456789abcdef"));
        assert!(!valid_ca_hash("sha256:abc"));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
