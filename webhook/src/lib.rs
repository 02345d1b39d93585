//! Dorado mutating admission webhook.
//!
//! Pods annotated `dorado.io/replicate: "true"` are rewritten so that their target
//! container runs the Dorado runtime (`dorado run`), configured entirely through
//! environment variables. The decision is a pure function ([`review::review`] over the
//! raw request body, [`mutate::mutate_pod`] over the raw pod JSON); [`server`] only glues
//! it to HTTPS, metrics and certificate hot-reload. Decisions read the pod through the
//! typed views of [`view`]; the patch is written against the raw JSON (read typed, write
//! raw: see [`mutate`]).
//!
//! - [`serve`] runs the HTTPS webhook and the admin endpoints until a shutdown future
//!   resolves;
//! - [`certs`] generates a development CA and serving certificate;
//! - the annotation table in `README.md` lists every `dorado.io/*` annotation.

pub mod annotations;
pub mod certs;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod quantity;
pub mod review;
pub mod server;
pub mod tls;
pub mod validate;
pub mod view;

pub use config::{LogFormat, MutationConfig, ResourceDefaults, ServeConfig, TlsFiles, UpgradeMode};
pub use mutate::{Decision, Skip, Verdict, mutate_pod};
pub use review::{Outcome, ReviewError, Reviewed, review};
pub use server::{AdminState, AppState, ServeError, admin_router, router, serve};
