//! TLS to etcd: where the files are, loading and checking them, and saying
//! clearly why a handshake failed.
//!
//! Why this module exists: `etcd-client` (tonic) reports every TLS failure as
//! an opaque transport error and keeps retrying it, so a pod with the wrong
//! CA would only ever say "etcd did not answer". Instead the material is
//! checked here before it is used (files readable, PEM well formed, client
//! certificate inside its validity period, key matching certificate), and
//! every new connection is preceded by a [`TlsMaterial::probe`] of each
//! endpoint: a real handshake with the same CA and client certificate, which
//! maps rustls' verdict (and etcd's alert, when it refuses the client
//! certificate) to an [`EtcdTlsError`] naming the endpoint and what failed.
//!
//! Rotation (re-reading the files and swapping the connection) lives with the
//! store in [`super::etcd`]; this module only compares file contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default interval between checks of the files for a rotated certificate.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS flags of `dorado run` and `dorado replay`, flattened into their
/// argument structs so both commands (and their environment variables) agree.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct EtcdTlsArgs {
    /// CA bundle (PEM) that etcd's serving certificate must chain to; needed for https:// endpoints.
    #[arg(long = "etcd-ca", env = "DORADO_ETCD_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM, leaf first) presented to etcd (--client-cert-auth).
    #[arg(
        long = "etcd-cert",
        env = "DORADO_ETCD_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(
        long = "etcd-key",
        env = "DORADO_ETCD_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Seconds between checks of the three files for a rotated certificate.
    #[arg(long = "etcd-tls-reload-secs", env = "DORADO_ETCD_TLS_RELOAD_SECS", default_value_t = DEFAULT_RELOAD_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reload_secs: u64,
}

impl EtcdTlsArgs {
    /// The TLS configuration for `endpoints`: `None` for plain `http://`
    /// endpoints without TLS flags. Mixing schemes, https without a CA, or
    /// TLS flags with http endpoints are [`EtcdTlsError::Config`].
    pub fn resolve(&self, endpoints: &[String]) -> Result<Option<EtcdTls>, EtcdTlsError> {
        let https = endpoints.iter().filter(|e| is_https(e)).count();
        if https > 0 && https < endpoints.len() {
            return Err(EtcdTlsError::Config(format!(
                "etcd endpoints mix https:// and http:// ({}); use one scheme",
                endpoints.join(",")
            )));
        }
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientIdentityFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(EtcdTlsError::Config(
                    "--etcd-cert and --etcd-key go together: give both or neither".into(),
                ));
            }
        };
        let reload_interval = Duration::from_secs(self.reload_secs.max(1));
        match (https > 0, &self.ca) {
            (true, Some(ca)) => Ok(Some(EtcdTls {
                ca: ca.clone(),
                identity,
                reload_interval,
            })),
            (true, None) => Err(EtcdTlsError::Config(format!(
                "https:// etcd endpoints ({}) need --etcd-ca (DORADO_ETCD_CA): the CA bundle that signed etcd's certificate",
                endpoints.join(",")
            ))),
            (false, None) if identity.is_none() => Ok(None),
            (false, _) => Err(EtcdTlsError::Config(format!(
                "--etcd-ca/--etcd-cert/--etcd-key need https:// etcd endpoints, got {}",
                endpoints.join(",")
            ))),
        }
    }
}

fn is_https(endpoint: &str) -> bool {
    endpoint
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// A client certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentityFiles {
    /// Certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// TLS towards etcd: the files, and how often they are checked for rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle etcd's serving certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate for etcd's `--client-cert-auth`, if any.
    pub identity: Option<ClientIdentityFiles>,
    /// How often the files are re-read; changed content replaces the connection.
    pub reload_interval: Duration,
}

/// Why TLS towards etcd failed. Each variant names the file or the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EtcdTlsError {
    /// The flags do not fit together or do not fit the endpoints.
    #[error("etcd tls configuration: {0}")]
    Config(String),
    /// A file is missing or unreadable.
    #[error("cannot read the etcd {what} {}: {source}", path.display())]
    ReadFile {
        /// Which file (`CA bundle`, `client certificate`, `client key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("the etcd {what} {} is not valid PEM: {reason}", path.display())]
    BadPem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client certificate's validity period has ended.
    #[error("the etcd client certificate {} expired at {not_after} (now {now}); write a renewed certificate over it", path.display())]
    ClientCertExpired {
        /// The certificate file.
        path: PathBuf,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// The current time, RFC 3339.
        now: String,
    },
    /// The client certificate's validity period has not started.
    #[error("the etcd client certificate {} is not valid before {not_before} (now {now})", path.display())]
    ClientCertNotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`, RFC 3339.
        not_before: String,
        /// The current time, RFC 3339.
        now: String,
    },
    /// The key does not belong to the certificate, or rustls cannot use it.
    #[error("the etcd client certificate {} and key {} do not form a usable pair: {source}", cert.display(), key.display())]
    KeyPair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// etcd's serving certificate is not signed by a CA in the bundle.
    #[error("etcd at {endpoint} presented a certificate signed by an unknown CA: it does not chain to any certificate in the CA bundle {}", ca.display())]
    UnknownCa {
        /// The endpoint.
        endpoint: String,
        /// The CA bundle used.
        ca: PathBuf,
    },
    /// etcd's serving certificate has expired (or is not yet valid).
    #[error("etcd at {endpoint} presented an expired or not yet valid certificate ({detail})")]
    ServerCertExpired {
        /// The endpoint.
        endpoint: String,
        /// rustls' description, with the dates when known.
        detail: String,
    },
    /// etcd's serving certificate is not valid for the endpoint's host name.
    #[error(
        "etcd at {endpoint} presented a certificate for the wrong host name: it is not valid for {host:?} ({detail}); connect by a name in its subject alternative names"
    )]
    WrongHostName {
        /// The endpoint.
        endpoint: String,
        /// The host name (or IP address) connected to.
        host: String,
        /// rustls' description, with the names presented when known.
        detail: String,
    },
    /// etcd's serving certificate was refused for another reason.
    #[error("etcd at {endpoint} presented a certificate that was refused: {detail}")]
    ServerCertInvalid {
        /// The endpoint.
        endpoint: String,
        /// rustls' description.
        detail: String,
    },
    /// etcd refused the client certificate (or its absence).
    #[error(
        "etcd at {endpoint} refused the client certificate {client} (tls alert {alert}): etcd's --trusted-ca-file must hold the CA that signed it, and it must be valid now"
    )]
    ClientCertRejected {
        /// The endpoint.
        endpoint: String,
        /// The certificate file, or `(none: pass --etcd-cert/--etcd-key)`.
        client: String,
        /// The alert etcd sent.
        alert: String,
    },
    /// The endpoint does not speak TLS (e.g. etcd serves plain http there).
    #[error(
        "etcd at {endpoint} does not speak TLS ({detail}); use an http:// endpoint or enable TLS on etcd"
    )]
    NotTls {
        /// The endpoint.
        endpoint: String,
        /// rustls' description.
        detail: String,
    },
    /// Any other handshake failure.
    #[error("tls handshake with etcd at {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

impl EtcdTlsError {
    /// Whether the error is in the configuration itself (a restart with other
    /// flags is needed), rather than in files or a server that may change.
    pub fn is_config(&self) -> bool {
        matches!(self, EtcdTlsError::Config(_))
    }
}

/// Loaded and checked TLS material: the bytes of the three files (to notice
/// rotation) and a rustls configuration built from them.
#[derive(Clone)]
pub struct TlsMaterial {
    files: EtcdTls,
    ca_pem: Vec<u8>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdTlsError> {
    std::fs::read(path).map_err(|source| EtcdTlsError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, EtcdTlsError> {
    let bad = |reason: String| EtcdTlsError::BadPem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

impl EtcdTls {
    /// The files' current contents, unchecked (to compare with what is in use).
    pub fn read_files(&self) -> Result<FileContents, EtcdTlsError> {
        let ca = read("CA bundle", &self.ca)?;
        let identity = match &self.identity {
            Some(id) => Some((
                read("client certificate", &id.cert)?,
                read("client key", &id.key)?,
            )),
            None => None,
        };
        Ok(FileContents { ca, identity })
    }

    /// Read and check the files (see [`TlsMaterial::from_contents`]).
    pub fn load(&self) -> Result<TlsMaterial, EtcdTlsError> {
        TlsMaterial::from_contents(self, self.read_files()?, SystemTime::now())
    }
}

/// The raw contents of the TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    /// Check `contents` of `files` at time `now`: well-formed PEM, a client
    /// certificate within its validity period and a key that matches it.
    pub fn from_contents(
        files: &EtcdTls,
        contents: FileContents,
        now: SystemTime,
    ) -> Result<Self, EtcdTlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates("CA bundle", &files.ca, &contents.ca)? {
            roots.add(cert).map_err(|e| EtcdTlsError::BadPem {
                what: "CA bundle",
                path: files.ca.clone(),
                reason: format!("a certificate is not usable as a CA: {e}"),
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdTlsError::Config(format!("rustls: {e}")))?
        .with_root_certificates(roots);
        let mut config = match (&files.identity, &contents.identity) {
            (Some(id), Some((cert_pem, key_pem))) => {
                let chain = certificates("client certificate", &id.cert, cert_pem)?;
                check_validity(&id.cert, &chain[0], now)?;
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| EtcdTlsError::BadPem {
                        what: "client key",
                        path: id.key.clone(),
                        reason: format!("no usable PRIVATE KEY block: {e}"),
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| EtcdTlsError::KeyPair {
                        cert: id.cert.clone(),
                        key: id.key.clone(),
                        source,
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsMaterial {
            files: files.clone(),
            ca_pem: contents.ca,
            identity_pem: contents.identity,
            config: Arc::new(config),
        })
    }

    /// Whether `contents` are the bytes this material was built from.
    pub fn is_from(&self, contents: &FileContents) -> bool {
        self.ca_pem == contents.ca && self.identity_pem == contents.identity
    }

    /// The files this material came from.
    pub fn files(&self) -> &EtcdTls {
        &self.files
    }

    /// The same material as `etcd-client` options.
    pub fn client_options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity_pem {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        tls
    }

    /// Handshake with `endpoint` using this material and wait for etcd's
    /// first HTTP/2 frame, which only comes once etcd accepted the client
    /// certificate (with TLS 1.3 it checks it after the client considers the
    /// handshake done, and answers with an alert instead).
    ///
    /// An endpoint that cannot be reached at all is `Ok(Err(reason))`: that
    /// is availability, for the store's own probe and retries to handle.
    pub async fn probe(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Result<(), String>, EtcdTlsError> {
        let uri: http::Uri = match endpoint.parse() {
            Ok(uri) => uri,
            Err(e) => {
                return Err(EtcdTlsError::Config(format!(
                    "etcd endpoint {endpoint:?} is not a URL: {e}"
                )));
            }
        };
        let Some(host) = uri.host() else {
            return Err(EtcdTlsError::Config(format!(
                "etcd endpoint {endpoint:?} has no host"
            )));
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(|e| {
            EtcdTlsError::Config(format!(
                "etcd endpoint {endpoint:?}: {host:?} is not a host name: {e}"
            ))
        })?;
        let attempt = async {
            let tcp = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
                Ok(tcp) => tcp,
                Err(e) => return Ok(Err(format!("cannot connect to {endpoint}: {e}"))),
            };
            let connector = tokio_rustls::TlsConnector::from(self.config.clone());
            let mut tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| self.diagnose_io(endpoint, &host, e))?;
            // The HTTP/2 client preface and an empty SETTINGS frame; etcd
            // answers with its SETTINGS once it serves this connection.
            let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            tls.write_all(&preface)
                .await
                .map_err(|e| self.diagnose_io(endpoint, &host, e))?;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await {
                Ok(0) => Ok(Err(format!("etcd at {endpoint} closed the connection"))),
                Ok(_) => Ok(Ok(())),
                Err(e) => Err(self.diagnose_io(endpoint, &host, e)),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Ok(Err(format!(
                "no tls answer from etcd at {endpoint} within {timeout:?}"
            ))),
        }
    }

    fn diagnose_io(&self, endpoint: &str, host: &str, e: std::io::Error) -> EtcdTlsError {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => self.diagnose(endpoint, host, tls.clone()),
            None => EtcdTlsError::Handshake {
                endpoint: endpoint.to_owned(),
                source: rustls::Error::General(e.to_string()),
            },
        }
    }

    /// Name what a rustls error means for a connection to `endpoint`.
    pub fn diagnose(&self, endpoint: &str, host: &str, e: rustls::Error) -> EtcdTlsError {
        let endpoint = endpoint.to_owned();
        match e {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => EtcdTlsError::UnknownCa {
                    endpoint,
                    ca: self.files.ca.clone(),
                },
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => EtcdTlsError::ServerCertExpired {
                    endpoint,
                    detail: describe_validity(&cert),
                },
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => EtcdTlsError::WrongHostName {
                    endpoint,
                    host: host.to_owned(),
                    detail: rustls::Error::InvalidCertificate(cert).to_string(),
                },
                other => EtcdTlsError::ServerCertInvalid {
                    endpoint,
                    detail: rustls::Error::InvalidCertificate(other).to_string(),
                },
            },
            rustls::Error::AlertReceived(alert) if is_client_cert_alert(alert) => {
                EtcdTlsError::ClientCertRejected {
                    endpoint,
                    client: match &self.files.identity {
                        Some(id) => id.cert.display().to_string(),
                        None => "(none: pass --etcd-cert and --etcd-key)".into(),
                    },
                    alert: format!("{alert:?}"),
                }
            }
            rustls::Error::InvalidMessage(m) => EtcdTlsError::NotTls {
                endpoint,
                detail: format!("{m:?}"),
            },
            other => EtcdTlsError::Handshake {
                endpoint,
                source: other,
            },
        }
    }
}

/// Alerts a server sends when it refuses (or misses) the client certificate.
fn is_client_cert_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
    )
}

fn describe_validity(cert: &CertificateError) -> String {
    let at = |t: &rustls::pki_types::UnixTime| rfc3339(t.as_secs());
    match cert {
        CertificateError::ExpiredContext { time, not_after } => {
            format!("expired at {}, now {}", at(not_after), at(time))
        }
        CertificateError::NotValidYetContext { time, not_before } => {
            format!("not valid before {}, now {}", at(not_before), at(time))
        }
        other => format!("{other:?}"),
    }
}

/// Refuse a client certificate outside its validity period, naming the file.
fn check_validity(
    path: &Path,
    cert: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), EtcdTlsError> {
    let (not_before, not_after) = validity(cert).map_err(|reason| EtcdTlsError::BadPem {
        what: "client certificate",
        path: path.to_owned(),
        reason: format!("cannot read the validity period: {reason}"),
    })?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if now > not_after {
        return Err(EtcdTlsError::ClientCertExpired {
            path: path.to_owned(),
            not_after: rfc3339_signed(not_after),
            now: rfc3339_signed(now),
        });
    }
    if now < not_before {
        return Err(EtcdTlsError::ClientCertNotYetValid {
            path: path.to_owned(),
            not_before: rfc3339_signed(not_before),
            now: rfc3339_signed(now),
        });
    }
    Ok(())
}

/// One DER element: tag, contents, and what follows it.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    let (&first, rest) = rest.split_first().ok_or("truncated")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad length");
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("truncated");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `(notBefore, notAfter)` of an X.509 certificate, in Unix seconds.
///
/// Reads just the path to `tbsCertificate.validity` (RFC 5280 §4.1): a
/// small walk instead of a full X.509 parser dependency in the runtime.
fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), &'static str> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(cert.as_ref())?;
    if tag != SEQUENCE {
        return Err("not a certificate");
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return Err("no tbsCertificate");
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        // [0] EXPLICIT version
        rest = after;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = der_element(rest)?.2;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return Err("no validity");
    }
    let (t1, not_before, rest) = der_element(validity)?;
    let (t2, not_after, _) = der_element(rest)?;
    Ok((der_time(t1, not_before)?, der_time(t2, not_after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, bytes: &[u8]) -> Result<i64, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "time is not ASCII")?;
    let digits = text.strip_suffix('Z').ok_or("time is not UTC")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("time is not digits");
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| "time is not digits");
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return Err("unsupported time format"),
    };
    let (month, day) = (num(&rest[..2])?, num(&rest[2..4])?);
    let (h, m, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or("month out of range")?;
    let small = |v: i64| u8::try_from(v).map_err(|_| "time out of range");
    let date = time::Date::from_calendar_date(
        i32::try_from(year).map_err(|_| "year out of range")?,
        month,
        small(day)?,
    )
    .map_err(|_| "date out of range")?;
    // A leap second (60) counts as the last second of its minute.
    let clock = time::Time::from_hms(small(h)?, small(m)?, small(s.min(59))?)
        .map_err(|_| "time out of range")?;
    Ok(time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp())
}

fn rfc3339(secs: u64) -> String {
    rfc3339_signed(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
fn rfc3339_signed(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{secs} s after 1970-01-01"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: bool, cert: bool) -> EtcdTlsArgs {
        EtcdTlsArgs {
            ca: ca.then(|| PathBuf::from("/tls/ca.crt")),
            cert: cert.then(|| PathBuf::from("/tls/tls.crt")),
            key: cert.then(|| PathBuf::from("/tls/tls.key")),
            reload_secs: 10,
        }
    }

    #[test]
    fn flags_must_fit_the_endpoints() {
        let http = vec!["http://a:2379".to_string()];
        let https = vec!["https://a:2379".to_string(), "HTTPS://b:2379".to_string()];
        assert_eq!(args(false, false).resolve(&http).unwrap(), None);
        let tls = args(true, true).resolve(&https).unwrap().unwrap();
        assert_eq!(tls.ca, PathBuf::from("/tls/ca.crt"));
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert!(tls.identity.is_some());
        for (a, eps, needle) in [
            (args(false, false), &https, "need --etcd-ca"),
            (args(true, false), &http, "need https://"),
            (args(false, true), &http, "need https://"),
        ] {
            let e = a.resolve(eps).unwrap_err();
            assert!(e.is_config() && e.to_string().contains(needle), "{e}");
        }
        let mixed = vec!["https://a:2379".to_string(), "http://b:2379".to_string()];
        let e = args(true, true).resolve(&mixed).unwrap_err();
        assert!(e.to_string().contains("mix https:// and http://"), "{e}");
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339_signed(0), "1970-01-01T00:00:00Z");
        let t = der_time(0x17, b"261204175818Z").unwrap();
        assert_eq!(rfc3339_signed(t), "2026-12-04T17:58:18Z");
        let g = der_time(0x18, b"20491231235959Z").unwrap();
        assert_eq!(rfc3339_signed(g), "2049-12-31T23:59:59Z");
        assert_eq!(der_time(0x17, b"491231235959Z").unwrap() + 1, {
            der_time(0x18, b"20500101000000Z").unwrap()
        });
        assert!(der_time(0x17, b"2612041758Z").is_err());
        assert!(der_time(0x17, b"261304175818Z").is_err());
        assert!(der_time(0x17, "2612041758\u{e9}Z".as_bytes()).is_err());
        assert!(
            der_time(0x18, b"20260230000000Z").is_err(),
            "no February 30"
        );
    }

    #[test]
    fn validity_is_read_from_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 2, 29);
        params.not_after = rcgen::date_time_ymd(2031, 7, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        assert_eq!(rfc3339_signed(nb), "2020-02-29T00:00:00Z");
        assert_eq!(rfc3339_signed(na), "2031-07-01T00:00:00Z");
        assert!(validity(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])).is_err());
    }
}
