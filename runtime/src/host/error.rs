//! Errors of the host. A module that is not a valid Dorado guest gets a
//! [`LoadError`] naming exactly what is wrong, because the person reading it
//! is a guest author who needs to know what to change.

/// Why a module was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly module wasmtime accepts (garbage,
    /// truncated, a component, or a disabled proposal such as threads).
    #[error("not a valid wasm module: {0}")]
    Invalid(String),
    /// The module imports something. Dorado offers no host functions, so a
    /// guest may import nothing at all (no WASI, no `env` functions).
    #[error(
        "forbidden import {}: dorado guests may not import anything (no wasi, no host functions); build for wasm32-unknown-unknown",
        .imports.join(", ")
    )]
    ForbiddenImports {
        /// Every import, as `module.field (kind)`.
        imports: Vec<String>,
    },
    /// A required ABI export is absent.
    #[error("missing export {name}: expected {expected}")]
    MissingExport {
        /// The export name, e.g. `dorado_apply`.
        name: String,
        /// Its required type, e.g. `func(i32, i32) -> i64`.
        expected: String,
    },
    /// An ABI export exists with the wrong type.
    #[error("export {name} is {found}, expected {expected}")]
    WrongExport {
        /// The export name.
        name: String,
        /// What the module has.
        found: String,
        /// What the ABI requires.
        expected: String,
    },
    /// `dorado_abi_version()` returned a version this host does not speak.
    #[error("unsupported abi version {found}: this host speaks version {expected}")]
    AbiVersion {
        /// The module's version.
        found: u32,
        /// [`super::ABI_VERSION`].
        expected: u32,
    },
    /// The module validated but could not be instantiated or did not answer
    /// `dorado_abi_version` (start function trapped, initial memory above the
    /// cap, ...).
    #[error("module cannot be instantiated: {0}")]
    Instantiate(String),
}

/// A failure of the host itself rather than of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration.
    #[error("wasm engine configuration refused: {0}")]
    Engine(String),
    /// A fresh instance of an already validated module could not be created.
    #[error("cannot instantiate module: {0}")]
    Instantiate(String),
}
