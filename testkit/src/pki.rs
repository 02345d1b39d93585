//! Certificates for TLS tests (rcgen, ECDSA P-256): a CA, serving and client
//! pairs, with validity periods of the test's choosing (an expired client
//! certificate is one call). Written to files because etcd and `dorado run`
//! read files; [`Pair::write_to`] replaces files atomically (write, then
//! rename), the way a rotation should land.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A test certificate authority.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 key.
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (and client: etcd peers are both).
    Server,
    /// TLS client.
    Client,
}

/// `(not_before, not_after)` from now: valid since an hour, for a day.
pub fn valid_now() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::hours(1), now + Duration::days(1))
}

/// `(not_before, not_after)` that ended an hour ago.
pub fn expired() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(2), now - Duration::hours(1))
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = valid_now();
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("self-sign ca");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A pair for `names` (DNS names or IP addresses; the first is the
    /// common name) valid over `validity`.
    pub fn issue(
        &self,
        names: &[&str],
        usage: Usage,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Pair {
        self.issue_in(names, None, usage, validity)
    }

    /// Like [`Self::issue`], with `organization` as the subject's `O`
    /// (Kubernetes reads the common name as the user and the organisation
    /// as a group).
    pub fn issue_in(
        &self,
        names: &[&str],
        organization: Option<&str>,
        usage: Usage,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("valid names");
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A serving pair for 127.0.0.1 and localhost, valid now.
    pub fn loopback_server(&self) -> Pair {
        self.issue(&["127.0.0.1", "localhost"], Usage::Server, valid_now())
    }

    /// A client pair called `name`, valid now.
    pub fn client(&self, name: &str) -> Pair {
        self.issue(&[name], Usage::Client, valid_now())
    }

    /// Write the CA certificate to `path` (atomically).
    pub fn write_cert(&self, path: &Path) {
        write_atomic(path, self.cert_pem.as_bytes());
    }
}

impl Pair {
    /// Write `<dir>/<name>.crt` and `<dir>/<name>.key` (each atomically:
    /// a reader sees the old or the new file, never half of one) and return
    /// their paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_atomic(&cert, self.cert_pem.as_bytes());
        write_atomic(&key, self.key_pem.as_bytes());
        (cert, key)
    }
}

/// Several CA certificates as one PEM bundle.
pub fn bundle(cas: &[&TestCa]) -> String {
    cas.iter().map(|ca| ca.cert_pem()).collect()
}

/// Write `bytes` to `path` by writing a sibling temp file and renaming it.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
