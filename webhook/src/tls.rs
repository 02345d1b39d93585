//! Serving certificate: loading, a hot-swappable rustls resolver, and the reload loop.
//!
//! New TLS handshakes ask [`CertStore`] (a [`ResolvesServerCert`]) for the current
//! `Arc<CertifiedKey>`, which is swapped atomically when the files change, so rotation
//! never restarts the listener and established connections are not disturbed.
//!
//! Reloads are triggered by file-system events on the *parent directories* of the
//! certificate and key (this is what catches the atomic `..data` symlink swap Kubernetes
//! performs on Secret volumes) plus a periodic re-check as a fallback. A new pair that
//! cannot be read or parsed, or whose key does not match the certificate, is logged and
//! counted, and the previous pair stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;
use crate::metrics::{Metrics, ReloadResult};

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("no valid PEM certificate in {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// The key file holds no PEM private key, or a malformed one.
    #[error("no valid PEM private key in {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        reason: String,
    },
    /// rustls rejected the pair (unsupported key type, key does not match certificate).
    #[error("certificate and key do not form a usable pair: {0}")]
    Pair(#[source] rustls::Error),
    /// The TLS server configuration could not be built.
    #[error("cannot build the tls configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The ring crypto provider, used explicitly so the library never depends on which
/// process-wide default was installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain (leaf first) and PEM private key into a rustls pair.
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    files: &TlsFiles,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: files.cert.clone(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Pair)
}

/// What [`CertStore::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files have the same content as at the last attempt; nothing to do.
    Unchanged,
    /// A new pair is now served.
    Loaded,
}

/// The current serving pair, swappable while the server runs.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: ArcSwapOption<CertifiedKey>,
    /// Contents of the last attempt (successful or not), to skip unchanged files.
    last_attempt: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl CertStore {
    /// A store with nothing loaded yet.
    pub fn new(files: TlsFiles) -> Self {
        Self {
            files,
            current: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
        }
    }

    /// The files this store reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether a pair is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Reads both files and, if their content changed since the last attempt, parses and
    /// installs the new pair. On error the previous pair stays in use.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let cert = read(&self.files.cert)?;
        let key = read(&self.files.key)?;
        {
            let mut last = self
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.as_ref().is_some_and(|(c, k)| *c == cert && *k == key) {
                return Ok(Reload::Unchanged);
            }
            *last = Some((cert.clone(), key.clone()));
        }
        let pair = parse_pair(&cert, &key, &self.files)?;
        self.current.store(Some(Arc::new(pair)));
        Ok(Reload::Loaded)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) whose
/// certificate comes from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Attempts a reload and reports it (log + metrics). Repeated identical failures (e.g.
/// a missing file seen by every periodic check) are logged once.
pub fn reload_and_report(store: &CertStore, metrics: &Metrics, last_error: &mut Option<String>) {
    match store.reload() {
        Ok(Reload::Unchanged) => {}
        Ok(Reload::Loaded) => {
            *last_error = None;
            metrics.reload(ReloadResult::Success);
            tracing::info!(cert = %store.files.cert.display(), "serving certificate loaded");
        }
        Err(e) => {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                metrics.reload(ReloadResult::Failure);
                if store.is_loaded() {
                    tracing::error!(error = %msg, "new certificate rejected; keeping the previous one");
                } else {
                    tracing::error!(error = %msg, "no usable serving certificate yet");
                }
                *last_error = Some(msg);
            }
        }
    }
    metrics.cert_loaded.set(i64::from(store.is_loaded()));
}

/// Watches the certificate files until `cancel` fires, reloading on change.
pub async fn watch(
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
    let watcher = start_notify(&store.files, tx);
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(()) = rx.recv() => {
                // Coalesce the burst of events one swap produces.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        let store2 = store.clone();
        let metrics2 = metrics.clone();
        let mut err = last_error.take();
        // File reads and key parsing are blocking work.
        last_error = tokio::task::spawn_blocking(move || {
            reload_and_report(&store2, &metrics2, &mut err);
            err
        })
        .await
        .unwrap_or(None);
    }
    drop(watcher);
}

/// Starts a notify watcher on the parent directories; `None` (polling only) on failure.
fn start_notify(
    files: &TlsFiles,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // A full channel already holds a pending wake-up.
                let _ = tx.try_send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificate files; relying on periodic checks");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = [&files.cert, &files.key]
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on periodic checks");
        }
    }
    Some(watcher)
}
