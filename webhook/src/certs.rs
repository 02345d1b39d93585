//! Development certificate authority and serving certificates (rcgen, ECDSA P-256).
//!
//! `dorado-webhook certs --service S --namespace NS --out DIR` uses [`generate`] and
//! [`write_files`] to produce `ca.crt`, `tls.crt` and `tls.key`; the caBundle of the
//! MutatingWebhookConfiguration is the base64 of `ca.crt`. With `--etcd-out DIR` it also
//! writes etcd's certificates ([`generate_etcd`], [`write_etcd_files`]): a separate etcd
//! CA, the server and peer pairs for the etcd StatefulSet's headless Service, and a client
//! pair for the Dorado runtime. Production clusters can use cert-manager instead (see
//! `certs/README.md`).

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
        self.issue_for(names, days, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// Issues a certificate for `names` (the first is also the common name) with the
    /// extended key usages `usages`, valid for `days`.
    pub fn issue_for(
        &self,
        names: &[String],
        days: u32,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<ServingPair, CertsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
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

/// Common name of the runtime's etcd client certificate.
pub const ETCD_CLIENT_NAME: &str = "dorado-runtime";

/// etcd's certificates, as written by [`write_etcd_files`].
#[derive(Debug, Clone)]
pub struct EtcdGenerated {
    /// The etcd CA (`ca.crt`): trusted by etcd for clients and peers, and by clients for etcd.
    pub ca_pem: String,
    /// Client-facing serving pair (`server.crt`, `server.key`).
    pub server: ServingPair,
    /// Peer pair (`peer.crt`, `peer.key`), server and client auth.
    pub peer: ServingPair,
    /// The runtime's client pair (`client.crt`, `client.key`), client auth only.
    pub client: ServingPair,
}

/// The names etcd members are reached by: every member `S-i` of StatefulSet `S` behind
/// headless Service `S` in `namespace` (short, `.svc` and `.svc.cluster.local` forms, and
/// wildcards for members added later), the client Service `client_service`, and loopback
/// (for `etcdctl` inside a member's pod).
pub fn etcd_dns_names(
    service: &str,
    client_service: &str,
    namespace: &str,
    replicas: u32,
) -> Vec<String> {
    let mut names = Vec::new();
    for suffix in ["", ".svc", ".svc.cluster.local"] {
        for i in 0..replicas {
            names.push(format!("{service}-{i}.{service}.{namespace}{suffix}"));
        }
        names.push(format!("*.{service}.{namespace}{suffix}"));
    }
    for s in [service, client_service] {
        names.extend(service_dns_names(s, namespace));
    }
    names.push("localhost".into());
    names.push("127.0.0.1".into());
    names
}

/// A new etcd CA and the server, peer and client pairs for StatefulSet `service` (with
/// `replicas` members) and client Service `client_service` in `namespace`.
pub fn generate_etcd(
    service: &str,
    client_service: &str,
    namespace: &str,
    replicas: u32,
    ca_days: u32,
    days: u32,
) -> Result<EtcdGenerated, CertsError> {
    for (what, value) in [
        ("etcd service", service),
        ("etcd client service", client_service),
        ("namespace", namespace),
    ] {
        crate::validate::dns1123_label(value).map_err(|reason| CertsError::Name {
            what,
            value: value.to_owned(),
            reason,
        })?;
    }
    let ca = CertificateAuthority::new(&format!("dorado etcd CA ({namespace})"), ca_days)?;
    let names = etcd_dns_names(service, client_service, namespace, replicas);
    let both = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(EtcdGenerated {
        ca_pem: ca.cert_pem().to_owned(),
        // etcd also dials itself (gRPC gateway) with the server pair: both usages.
        server: ca.issue_for(&names, days, &both)?,
        peer: ca.issue_for(&names, days, &both)?,
        client: ca.issue_for(
            &[ETCD_CLIENT_NAME.to_owned()],
            days,
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )?,
    })
}

/// Writes `ca.crt`, `server.crt`, `server.key`, `peer.crt`, `peer.key`, `client.crt` and
/// `client.key` (keys mode 0600) into `dir`, creating it.
pub fn write_etcd_files(
    dir: &Path,
    generated: &EtcdGenerated,
    force: bool,
) -> Result<(), CertsError> {
    write_set(
        dir,
        &[
            ("ca.crt", generated.ca_pem.as_str(), 0o644),
            ("server.crt", generated.server.cert_pem.as_str(), 0o644),
            ("server.key", generated.server.key_pem.as_str(), 0o600),
            ("peer.crt", generated.peer.cert_pem.as_str(), 0o644),
            ("peer.key", generated.peer.key_pem.as_str(), 0o600),
            ("client.crt", generated.client.cert_pem.as_str(), 0o644),
            ("client.key", generated.client.key_pem.as_str(), 0o600),
        ],
        force,
    )
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
pub fn write_files(dir: &Path, generated: &Generated, force: bool) -> Result<(), CertsError> {
    write_set(
        dir,
        &[
            ("ca.crt", generated.ca_pem.as_str(), 0o644),
            ("tls.crt", generated.serving.cert_pem.as_str(), 0o644),
            ("tls.key", generated.serving.key_pem.as_str(), 0o600),
        ],
        force,
    )
}

/// Writes `(name, content, mode)` files into `dir`; none if any exists and not `force`.
fn write_set(dir: &Path, files: &[(&str, &str, u32)], force: bool) -> Result<(), CertsError> {
    if !force {
        for (name, _, _) in files {
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
    for &(name, content, mode) in files {
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
    fn etcd_pairs_chain_to_their_ca_and_name_the_members() {
        let g = generate_etcd("etcd", "etcd-client", "dorado-system", 3, 30, 10).unwrap();
        for pair in [&g.server, &g.peer, &g.client] {
            crate::tls::parse_pair(
                pair.cert_pem.as_bytes(),
                pair.key_pem.as_bytes(),
                &crate::config::TlsFiles {
                    cert: "c".into(),
                    key: "k".into(),
                },
            )
            .unwrap();
        }
        let names = etcd_dns_names("etcd", "etcd-client", "dorado-system", 3);
        for n in [
            "etcd-0.etcd.dorado-system.svc",
            "etcd-2.etcd.dorado-system.svc.cluster.local",
            "*.etcd.dorado-system.svc",
            "etcd-client.dorado-system.svc",
            "127.0.0.1",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        write_etcd_files(dir.path(), &g, false).unwrap();
        assert!(matches!(
            write_etcd_files(dir.path(), &g, false),
            Err(CertsError::Exists(_))
        ));
        assert!(matches!(
            generate_etcd("etcd", "etcd-client", "Bad", 3, 1, 1),
            Err(CertsError::Name { .. })
        ));
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
