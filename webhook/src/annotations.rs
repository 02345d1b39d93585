//! The `dorado.io/*` annotation keys the webhook reads and writes. the annotation table in `README.md`
//! documents each one; a test checks that every key listed here appears there.

/// Prefix shared by all Dorado annotations.
pub const PREFIX: &str = "dorado.io/";

/// Opt-in: `"true"` rewrites the pod, `"false"` (or absence) leaves it alone.
pub const REPLICATE: &str = "dorado.io/replicate";
/// Module reference `NAME[/KEY]`: ConfigMap name and key of the `.wasm` file.
pub const MODULE: &str = "dorado.io/module";
/// Replica group name; defaults to the controlling StatefulSet or Deployment.
pub const GROUP: &str = "dorado.io/group";
/// Name of the container to turn into the runtime; defaults to the first.
pub const CONTAINER: &str = "dorado.io/container";
/// Client port of the runtime.
pub const PORT: &str = "dorado.io/port";
/// Leader lease TTL in seconds.
pub const LEASE_TTL: &str = "dorado.io/lease-ttl";
/// Snapshot interval in log entries.
pub const SNAPSHOT_EVERY: &str = "dorado.io/snapshot-every";
/// Comma-separated etcd client URLs, replacing the webhook's default.
pub const ETCD_ENDPOINTS: &str = "dorado.io/etcd-endpoints";
/// Name of the Secret (`ca.crt`, `tls.crt`, `tls.key`) holding the runtime's etcd client
/// certificate; mounted when the pod's etcd endpoints are `https://`.
pub const ETCD_CLIENT_SECRET: &str = "dorado.io/etcd-client-secret";
/// Runtime log format, `human` or `json`.
pub const LOG_FORMAT: &str = "dorado.io/log-format";
/// What a pod whose module the group does not run does, `auto` or `manual`.
pub const UPGRADE: &str = "dorado.io/upgrade";
/// CPU request of the runtime container.
pub const CPU_REQUEST: &str = "dorado.io/cpu-request";
/// CPU limit of the runtime container (`none` removes it).
pub const CPU_LIMIT: &str = "dorado.io/cpu-limit";
/// Memory request of the runtime container.
pub const MEMORY_REQUEST: &str = "dorado.io/memory-request";
/// Memory limit of the runtime container (`none` removes it).
pub const MEMORY_LIMIT: &str = "dorado.io/memory-limit";
/// Written by the webhook (`mutated`); its presence makes a later pass a no-op.
pub const STATUS: &str = "dorado.io/status";

/// Value of [`STATUS`] on a rewritten pod.
pub const STATUS_MUTATED: &str = "mutated";
/// Key used when [`MODULE`] names no key.
pub const DEFAULT_MODULE_KEY: &str = "module.wasm";
/// Label the webhook puts on rewritten pods, holding the group name.
pub const GROUP_LABEL: &str = "dorado.io/group";

/// Every annotation the webhook understands. Any other `dorado.io/*` key draws a warning.
pub const KNOWN: &[&str] = &[
    REPLICATE,
    MODULE,
    GROUP,
    CONTAINER,
    PORT,
    LEASE_TTL,
    SNAPSHOT_EVERY,
    ETCD_ENDPOINTS,
    ETCD_CLIENT_SECRET,
    LOG_FORMAT,
    UPGRADE,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    STATUS,
];
