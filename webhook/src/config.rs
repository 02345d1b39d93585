//! Configuration of the mutation (what the generated runtime container looks like) and of
//! the server. Built by the binary from flags; tests build it directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::quantity::Quantity;
use crate::validate;

/// Runtime log format (`DORADO_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per applied command.
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value written into `DORADO_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }

    /// Parses `human` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// What a pod whose module the group does not run does (`DORADO_UPGRADE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpgradeMode {
    /// Propose an ordered upgrade of the group to the pod's module.
    #[default]
    Auto,
    /// Stay not ready until `dorado upgrade` switches the group.
    Manual,
}

impl UpgradeMode {
    /// The value written into `DORADO_UPGRADE`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeMode::Auto => "auto",
            UpgradeMode::Manual => "manual",
        }
    }

    /// Parses `auto` or `manual`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(UpgradeMode::Auto),
            "manual" => Some(UpgradeMode::Manual),
            _ => None,
        }
    }
}

/// Default resources of the runtime container; each can be overridden per pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDefaults {
    /// `resources.requests.cpu`.
    pub cpu_request: Quantity,
    /// `resources.limits.cpu`; `None` sets no CPU limit.
    pub cpu_limit: Option<Quantity>,
    /// `resources.requests.memory`.
    pub memory_request: Quantity,
    /// `resources.limits.memory`.
    pub memory_limit: Option<Quantity>,
}

impl Default for ResourceDefaults {
    fn default() -> Self {
        let q = |s: &str| Quantity::parse(s).expect("built-in default quantity is valid");
        Self {
            cpu_request: q("100m"),
            cpu_limit: Some(q("1")),
            memory_request: q("128Mi"),
            memory_limit: Some(q("512Mi")),
        }
    }
}

/// Everything the pure mutation needs besides the pod itself.
#[derive(Debug, Clone, PartialEq)]
pub struct MutationConfig {
    /// Image of the Dorado runtime (`dorado` binary).
    pub runtime_image: String,
    /// `imagePullPolicy` of the runtime container; `None` keeps what the pod had.
    pub image_pull_policy: Option<String>,
    /// Default etcd client URLs (`DORADO_ETCD_ENDPOINTS`), overridable per pod.
    pub etcd_endpoints: Vec<String>,
    /// Default name of the etcd client-certificate Secret in the pod's namespace, mounted
    /// when the pod's etcd endpoints are `https://` (annotation
    /// `dorado.io/etcd-client-secret` overrides it).
    pub etcd_client_secret: String,
    /// Default client port (`DORADO_LISTEN`, port name `dorado`).
    pub port: u16,
    /// Default leader lease TTL in seconds (`DORADO_LEASE_TTL`).
    pub lease_ttl_secs: u32,
    /// Default snapshot interval in log entries (`DORADO_SNAPSHOT_EVERY`; 0 = never).
    pub snapshot_every: u64,
    /// Default runtime log format (`DORADO_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Default resources.
    pub resources: ResourceDefaults,
    /// UID and GID the runtime runs as (the runtime image's non-root user).
    pub run_as_user: i64,
}

impl MutationConfig {
    /// A configuration with the documented defaults for everything but the image and the
    /// etcd endpoints.
    pub fn new(runtime_image: impl Into<String>, etcd_endpoints: Vec<String>) -> Self {
        Self {
            runtime_image: runtime_image.into(),
            image_pull_policy: None,
            etcd_endpoints,
            etcd_client_secret: DEFAULT_ETCD_CLIENT_SECRET.to_owned(),
            port: DEFAULT_PORT,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            log_format: LogFormat::Human,
            resources: ResourceDefaults::default(),
            run_as_user: DEFAULT_RUN_AS_USER,
        }
    }

    /// Checks the values a flag could have got wrong, so that a bad default is reported at
    /// start-up instead of in every admission response.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.runtime_image.trim().is_empty() {
            return Err(ConfigError::EmptyImage);
        }
        if self.etcd_endpoints.is_empty() {
            return Err(ConfigError::NoEtcdEndpoints);
        }
        for e in &self.etcd_endpoints {
            validate::etcd_endpoint(e).map_err(|reason| ConfigError::EtcdEndpoint {
                endpoint: e.clone(),
                reason,
            })?;
        }
        let https = self
            .etcd_endpoints
            .iter()
            .filter(|e| validate::is_https(e))
            .count();
        if https != 0 && https != self.etcd_endpoints.len() {
            return Err(ConfigError::MixedEtcdSchemes(self.etcd_endpoints.join(",")));
        }
        validate::dns1123_subdomain(&self.etcd_client_secret).map_err(|reason| {
            ConfigError::EtcdClientSecret {
                name: self.etcd_client_secret.clone(),
                reason,
            }
        })?;
        if self.port == 0 {
            return Err(ConfigError::Port);
        }
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl_secs) {
            return Err(ConfigError::LeaseTtl(self.lease_ttl_secs));
        }
        if let Some(p) = &self.image_pull_policy
            && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(ConfigError::PullPolicy(p.clone()));
        }
        if self.run_as_user <= 0 {
            return Err(ConfigError::RunAsUser(self.run_as_user));
        }
        let r = &self.resources;
        for (what, request, limit) in [
            ("cpu", &r.cpu_request, &r.cpu_limit),
            ("memory", &r.memory_request, &r.memory_limit),
        ] {
            if let Some(limit) = limit
                && request.value() > limit.value()
            {
                return Err(ConfigError::RequestAboveLimit {
                    resource: what,
                    request: request.to_string(),
                    limit: limit.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Default name of the etcd client-certificate Secret (in each pod's namespace).
pub const DEFAULT_ETCD_CLIENT_SECRET: &str = "dorado-etcd-client";
/// Default client port of the runtime.
pub const DEFAULT_PORT: u16 = 7070;
/// Default leader lease TTL. Longer than the runtime's own default (2 s) so that an etcd
/// leader election (about 1 s with etcd's defaults) does not also cost Dorado its leader.
pub const DEFAULT_LEASE_TTL_SECS: u32 = 5;
/// Smallest accepted lease TTL.
pub const MIN_LEASE_TTL_SECS: u32 = 1;
/// Largest accepted lease TTL (the runtime's limit).
pub const MAX_LEASE_TTL_SECS: u32 = 600;
/// Default snapshot interval.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Non-root user of the distroless runtime image (`nonroot`).
pub const DEFAULT_RUN_AS_USER: i64 = 65532;
/// Default limit on the size of an AdmissionReview body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The runtime image is empty.
    #[error("runtime image must not be empty")]
    EmptyImage,
    /// No etcd endpoint was given.
    #[error("at least one etcd endpoint is required")]
    NoEtcdEndpoints,
    /// An etcd endpoint is not an `http(s)://host:port` URL.
    #[error("etcd endpoint {endpoint:?} is invalid: {reason}")]
    EtcdEndpoint {
        /// The offending endpoint.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Some etcd endpoints are `https://` and some are not.
    #[error("etcd endpoints {0} mix https:// and http://; use one scheme")]
    MixedEtcdSchemes(String),
    /// The default etcd client Secret name is not a DNS-1123 subdomain.
    #[error("etcd client secret name {name:?} {reason}")]
    EtcdClientSecret {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client port is zero.
    #[error("runtime port must be between 1 and 65535")]
    Port,
    /// The lease TTL is out of range.
    #[error("lease ttl {0}s is out of range {MIN_LEASE_TTL_SECS}..={MAX_LEASE_TTL_SECS}")]
    LeaseTtl(u32),
    /// The image pull policy is not one Kubernetes knows.
    #[error("image pull policy {0:?} is not one of Always, IfNotPresent, Never")]
    PullPolicy(String),
    /// The runtime user is root or negative.
    #[error("run-as user {0} must be a positive, non-root uid")]
    RunAsUser(i64),
    /// A default request exceeds its default limit.
    #[error("default {resource} request {request} exceeds the default limit {limit}")]
    RequestAboveLimit {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The request.
        request: String,
        /// The limit.
        limit: String,
    },
}

/// Paths of the serving certificate and key (PEM), as mounted from a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`tls.crt`).
    pub cert: PathBuf,
    /// Private key, PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key: PathBuf,
}

/// Configuration of [`crate::serve`].
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How pods are rewritten.
    pub mutation: MutationConfig,
    /// Where the serving certificate and key live.
    pub tls: TlsFiles,
    /// Fallback period for re-reading the certificate files when no file event arrives.
    pub reload_interval: Duration,
    /// Largest accepted AdmissionReview body; bigger bodies get HTTP 413.
    pub max_body_bytes: usize,
    /// After the shutdown signal: keep serving (with `/readyz` failing) this long, so
    /// endpoints can drop the pod before connections are refused.
    pub shutdown_delay: Duration,
    /// Then: how long in-flight connections may take to finish.
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    /// Defaults: 30 s reload fallback, 3 MiB body limit, no shutdown delay, 10 s grace.
    pub fn new(mutation: MutationConfig, tls: TlsFiles) -> Self {
        Self {
            mutation,
            tls,
            reload_interval: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
