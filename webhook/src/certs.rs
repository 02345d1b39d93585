//! Development certificate authority and serving certificates (rcgen, ECDSA P-256).
//!
//! `dorado-webhook certs --service S --namespace NS --out DIR` uses [`generate`] and
//! [`write_files`] to produce `ca.crt`, `tls.crt` and `tls.key`; the caBundle of the
//! MutatingWebhookConfiguration is the base64 of `ca.crt`. Production clusters can use
//! cert-manager instead (see `certs/README.md`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Why certificates could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters (e.g. an invalid DNS name).
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An output file exists and overwriting was not requested.
    #[error("{0} already exists (pass --force to overwrite)")]
    Exists(PathBuf),
    /// Service or namespace is not a DNS-1123 label.
    #[error("{what} {value:?} {reason}")]
    Name {
        /// `service` or `namespace`.
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A CA that can issue serving certificates.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A serving certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct ServingPair {
    /// Certificate (`tls.crt`).
    pub cert_pem: String,
    /// PKCS#8 private key (`tls.key`).
    pub key_pem: String,
}

/// CA certificate plus serving pair, as written by [`write_files`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// CA certificate (`ca.crt`).
    pub ca_pem: String,
    /// The serving pair.
    pub serving: ServingPair,
}

impl Generated {
    /// The MutatingWebhookConfiguration `caBundle`: base64 of the CA's PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little to tolerate clock skew between nodes.
    (
        now - Duration::minutes(5),
        now + Duration::days(i64::from(days)),
    )
}

impl CertificateAuthority {
    /// A new self-signed CA valid for `days`.
    pub fn new(common_name: &str, days: u32) -> Result<Self, CertsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a serving certificate for `names` (DNS names or IP addresses), valid for
    /// `days`. Every call uses a fresh key, hence a fresh serial number.
    pub fn issue(&self, names: &[String], days: u32) -> Result<ServingPair, CertsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The DNS names the API server may use for Service `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA plus a serving certificate for the Service's DNS names.
pub fn generate(
    service: &str,
    namespace: &str,
    ca_days: u32,
    serving_days: u32,
) -> Result<Generated, CertsError> {
    for (what, value) in [("service", service), ("namespace", namespace)] {
        crate::validate::dns1123_label(value).map_err(|reason| CertsError::Name {
            what,
            value: value.to_owned(),
            reason,
        })?;
    }
    let ca = CertificateAuthority::new(&format!("dorado-webhook CA ({namespace})"), ca_days)?;
    let serving = ca.issue(&service_dns_names(service, namespace), serving_days)?;
    Ok(Generated {
        ca_pem: ca.cert_pem().to_owned(),
        serving,
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
pub fn write_files(dir: &Path, generated: &Generated, force: bool) -> Result<(), CertsError> {
    let files = [
        ("ca.crt", generated.ca_pem.as_str(), 0o644),
        ("tls.crt", generated.serving.cert_pem.as_str(), 0o644),
        ("tls.key", generated.serving.key_pem.as_str(), 0o600),
    ];
    if !force {
        for (name, _, _) in &files {
            let path = dir.join(name);
            if path.exists() {
                return Err(CertsError::Exists(path));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    for (name, content, mode) in files {
        let path = dir.join(name);
        write_file(&path, content.as_bytes(), mode)
            .map_err(|source| CertsError::Write { path, source })?;
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path)?;
    f.write_all(content)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_into_rustls() {
        let g = generate("dorado-webhook", "dorado-system", 30, 10).unwrap();
        let files = crate::config::TlsFiles {
            cert: "tls.crt".into(),
            key: "tls.key".into(),
        };
        crate::tls::parse_pair(
            g.serving.cert_pem.as_bytes(),
            g.serving.key_pem.as_bytes(),
            &files,
        )
        .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(g.ca_bundle())
            .unwrap();
        assert_eq!(decoded, g.ca_pem.as_bytes());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            generate("Bad_Name", "ns", 1, 1),
            Err(CertsError::Name { .. })
        ));
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate("s", "n", 1, 1).unwrap();
        write_files(dir.path(), &g, false).unwrap();
        assert!(matches!(
            write_files(dir.path(), &g, false),
            Err(CertsError::Exists(_))
        ));
        write_files(dir.path(), &g, true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("tls.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
