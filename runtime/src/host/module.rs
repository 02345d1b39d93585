//! Load-time validation. Everything that can be checked once per module is
//! checked here, so a bad module is refused with a precise message before any
//! replica applies a command with it.

use super::HostConfig;
use super::error::LoadError;
use super::instance::{GuestData, Live};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use wasmtime::{Engine, ExternType, FuncType, InstancePre, Linker};

/// The ABI version this host implements (`dorado_abi_version()` must return it).
pub const ABI_VERSION: u32 = 1;

/// Required function exports and their exact signatures.
const REQUIRED_FUNCS: [(&str, &str); 6] = [
    ("dorado_abi_version", "func() -> i32"),
    ("dorado_alloc", "func(i32) -> i32"),
    ("dorado_apply", "func(i32, i32) -> i64"),
    ("dorado_query", "func(i32, i32) -> i64"),
    ("dorado_snapshot", "func() -> i64"),
    ("dorado_restore", "func(i32, i32) -> i32"),
];

/// Optional export: the guest's last panic message, used in trap rejections.
pub(super) const LAST_PANIC: (&str, &str) = ("dorado_last_panic", "func() -> i64");

/// Optional export: build the state from another module's snapshot at an
/// upgrade (`sha256(old module) ++ old snapshot`); without it the host
/// restores the old snapshot as is.
pub(super) const MIGRATE: (&str, &str) = ("dorado_migrate", "func(i32, i32) -> i32");

const MEMORY: (&str, &str) = ("memory", "32-bit unshared memory");

/// One export of a module, for display (`dorado inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name.
    pub name: String,
    /// Its type, e.g. `func(i32, i32) -> i64` or `memory(17 pages)`.
    pub ty: String,
}

/// A validated, compiled guest module. Cheap to clone; instantiate it as many
/// times as needed.
#[derive(Clone)]
pub struct Module {
    inner: Arc<Inner>,
}

struct Inner {
    pre: InstancePre<GuestData>,
    config: HostConfig,
    sha256: String,
    sha256_bytes: [u8; 32],
    size: usize,
    has_migrate: bool,
    abi_version: u32,
    exports: Vec<ExportInfo>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("sha256", &self.inner.sha256)
            .field("size", &self.inner.size)
            .field("abi_version", &self.inner.abi_version)
            .finish_non_exhaustive()
    }
}

impl Module {
    pub(super) fn load(
        engine: &Engine,
        config: HostConfig,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        let sha256_bytes: [u8; 32] = Sha256::digest(bytes).into();
        let sha256 = hex::encode(sha256_bytes);
        let module = wasmtime::Module::from_binary(engine, bytes)
            .map_err(|e| LoadError::Invalid(one_line(&format!("{e:#}"))))?;

        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}.{} ({})", i.module(), i.name(), kind(&i.ty())))
            .collect();
        if !imports.is_empty() {
            return Err(LoadError::ForbiddenImports { imports });
        }

        let exports: Vec<ExportInfo> = module
            .exports()
            .map(|e| ExportInfo {
                name: e.name().to_owned(),
                ty: describe(&e.ty()),
            })
            .collect();
        check_exports(&module)?;
        let has_migrate = module.get_export(MIGRATE.0).is_some();

        let pre = Linker::new(engine)
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(one_line(&format!("{e:#}"))))?;
        let mut live = Live::new(&pre, &config)
            .map_err(|e| LoadError::Instantiate(one_line(&format!("{e:#}"))))?;
        let abi_version = live
            .abi_version(config.fuel_per_snapshot)
            .map_err(|e| LoadError::Instantiate(format!("dorado_abi_version failed: {e}")))?;
        if abi_version != ABI_VERSION {
            return Err(LoadError::AbiVersion {
                found: abi_version,
                expected: ABI_VERSION,
            });
        }

        Ok(Module {
            inner: Arc::new(Inner {
                pre,
                config,
                sha256,
                sha256_bytes,
                size: bytes.len(),
                has_migrate,
                abi_version,
                exports,
            }),
        })
    }

    /// Hex sha256 of the module bytes, recorded in the group metadata so
    /// replicas running different modules refuse to apply.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// The raw sha256 of the module bytes (what [`Module::sha256`] spells in
    /// hex), as passed to the next module's `dorado_migrate` at an upgrade.
    pub fn sha256_bytes(&self) -> [u8; 32] {
        self.inner.sha256_bytes
    }

    /// Whether the module exports the optional `dorado_migrate`. Without it,
    /// [`Instance::migrate_from`](super::Instance::migrate_from) restores the
    /// old module's snapshot as is.
    pub fn has_migrate(&self) -> bool {
        self.inner.has_migrate
    }

    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// What `dorado_abi_version()` returned (always [`ABI_VERSION`] once loaded).
    pub fn abi_version(&self) -> u32 {
        self.inner.abi_version
    }

    /// All exports, in module order.
    pub fn exports(&self) -> &[ExportInfo] {
        &self.inner.exports
    }

    /// The limits instances of this module run with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// A fresh instance in the guest's initial state.
    pub fn instantiate(&self) -> Result<super::Instance, super::HostError> {
        super::Instance::new(self.clone())
    }

    pub(super) fn pre(&self) -> &InstancePre<GuestData> {
        &self.inner.pre
    }
}

fn check_exports(module: &wasmtime::Module) -> Result<(), LoadError> {
    let (name, expected) = MEMORY;
    match module.get_export(name) {
        None => {
            return Err(LoadError::MissingExport {
                name: name.into(),
                expected: expected.into(),
            });
        }
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => {}
        Some(other) => {
            return Err(LoadError::WrongExport {
                name: name.into(),
                found: describe(&other),
                expected: expected.into(),
            });
        }
    }
    for (name, expected) in REQUIRED_FUNCS {
        check_func(module, name, expected, true)?;
    }
    for (name, expected) in [LAST_PANIC, MIGRATE] {
        check_func(module, name, expected, false)?;
    }
    Ok(())
}

fn check_func(
    module: &wasmtime::Module,
    name: &str,
    expected: &str,
    required: bool,
) -> Result<(), LoadError> {
    match module.get_export(name) {
        None if required => Err(LoadError::MissingExport {
            name: name.into(),
            expected: expected.into(),
        }),
        None => Ok(()),
        Some(ty) => {
            let found = describe(&ty);
            if found == expected {
                Ok(())
            } else {
                Err(LoadError::WrongExport {
                    name: name.into(),
                    found,
                    expected: expected.into(),
                })
            }
        }
    }
}

fn kind(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "function",
        ExternType::Global(_) => "global",
        ExternType::Table(_) => "table",
        ExternType::Memory(_) => "memory",
        ExternType::Tag(_) => "tag",
    }
}

fn signature(f: &FuncType) -> String {
    let params: Vec<String> = f.params().map(|p| p.to_string()).collect();
    let results: Vec<String> = f.results().map(|r| r.to_string()).collect();
    let mut s = format!("func({})", params.join(", "));
    match results.len() {
        0 => {}
        1 => s.push_str(&format!(" -> {}", results[0])),
        _ => s.push_str(&format!(" -> ({})", results.join(", "))),
    }
    s
}

/// A short human description of an export's type.
fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => signature(f),
        ExternType::Memory(m) => {
            let mut s = String::from(if m.is_64() { "memory64(" } else { "memory(" });
            s.push_str(&format!("{} pages", m.minimum()));
            if let Some(max) = m.maximum() {
                s.push_str(&format!(", max {max}"));
            }
            if m.is_shared() {
                s.push_str(", shared");
            }
            s.push(')');
            s
        }
        ExternType::Global(g) => format!("global({})", g.content()),
        other => kind(other).to_owned(),
    }
}

/// wasmtime error chains may span lines; refusals are printed on one.
pub(super) fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
