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
