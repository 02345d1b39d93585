//! Dorado runtime.

pub mod api;
pub mod cli;
pub mod client;
pub mod driver;
pub mod forward;
pub mod host;
pub mod metrics;
pub mod node;
pub mod probe;
mod read_index;
pub mod replay;
pub mod replica;
pub mod runner;
pub mod store;
pub mod tools;
pub mod trace;
pub mod upgrade;
pub mod wire;

/// Make sure rustls has its (ring) crypto provider before an HTTP client is
/// built. Binaries install it first thing; this keeps library users and tests
/// from a panic deep inside reqwest if they forgot. Idempotent.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for the replicas' own plain-HTTP API (forwarding, probes,
/// upgrade proposals), with `timeout` per request. It trusts no TLS roots:
/// it must not depend on the image carrying a system certificate store (a
/// minimal image has none, and reqwest then refuses to build a client).
pub fn replica_http(timeout: std::time::Duration) -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .timeout(timeout)
}
