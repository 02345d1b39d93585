//! The state machine a replica runs across module upgrades.
//!
//! A group's module changes only at an ordered upgrade entry, and every
//! replica must then do exactly the same thing, including failing the same
//! way. Two rules follow:
//! - **Availability is not an outcome.** Whether this process has compiled
//!   the new module yet depends on timing, so [`Switching::upgrade`] must
//!   never be asked about a module the driver has not put into the
//!   [`ModuleSet`] (the driver fetches it from the store first and waits).
//!   A module that *does not load* (not wasm, wrong ABI, missing export) is a
//!   property of its bytes, so it is a deterministic rejection.
//! - **Rejections carry stable text.** The rejection message is hashed into
//!   the chain, so it names the failure class (and the guest's own panic
//!   message), never wasmtime's wording, which may change between releases.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use dorado_core::{RejectKind, Rejection, StateMachine};
use sha2::{Digest, Sha256};

use super::{Host, Instance, LoadError, Module};

/// Every module this process has compiled (or found not to load), by sha256.
#[derive(Debug)]
pub struct ModuleSet {
    host: Host,
    modules: Mutex<BTreeMap<String, Result<Module, LoadError>>>,
}

impl ModuleSet {
    /// An empty set compiling with `host`.
    pub fn new(host: Host) -> Arc<Self> {
        Arc::new(ModuleSet {
            host,
            modules: Mutex::new(BTreeMap::new()),
        })
    }

    /// Add a module loaded elsewhere (the replica's own).
    pub fn insert(&self, module: Module) {
        self.lock().insert(module.sha256().to_owned(), Ok(module));
    }

    /// Compile `bytes`, which the store holds as module `sha256`. A module
    /// that does not load is remembered as such (upgrading to it is a
    /// deterministic rejection). `Err` when the bytes are not that module at
    /// all (their sha256 differs): nothing is recorded.
    pub fn insert_bytes(&self, sha256: &str, bytes: &[u8]) -> Result<(), String> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != sha256 {
            return Err(format!(
                "the bytes given as module {sha256} have sha256 {actual}"
            ));
        }
        let loaded = self.host.load(bytes);
        if let Err(e) = &loaded {
            tracing::warn!(module = sha256, error = %e, "a module of this group does not load");
        }
        self.lock().insert(sha256.to_owned(), loaded);
        Ok(())
    }

    /// True when `sha256` has been compiled (or found not to load) here.
    pub fn contains(&self, sha256: &str) -> bool {
        self.lock().contains_key(sha256)
    }

    /// The module, if compiled here; `Some(Err)` for one that does not load.
    pub fn get(&self, sha256: &str) -> Option<Result<Module, LoadError>> {
        self.lock().get(sha256).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<Module, LoadError>>> {
        self.modules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A guest instance that can switch modules at upgrade entries.
#[derive(Debug)]
pub struct Switching {
    modules: Arc<ModuleSet>,
    current: Instance,
}

impl Switching {
    /// Run `current`; `modules` holds what upgrades and restores may switch to.
    pub fn new(modules: Arc<ModuleSet>, current: Instance) -> Self {
        modules.insert(current.module().clone());
        Switching { modules, current }
    }

    /// The running instance.
    pub fn current(&self) -> &Instance {
        &self.current
    }

    /// The module set this machine switches within.
    pub fn modules(&self) -> &Arc<ModuleSet> {
        &self.modules
    }

    /// A fresh instance of module `sha256`, or why there is none.
    fn instance_of(&self, sha256: &str) -> Result<Instance, Rejection> {
        let module = match self.modules.get(sha256) {
            Some(Ok(module)) => module,
            Some(Err(e)) => return Err(load_rejection(&e)),
            // The driver's contract (see the module docs) was broken: this is
            // not a property of the module, so say so loudly.
            None => {
                return Err(Rejection {
                    kind: RejectKind::BadModule,
                    message: format!("module {sha256} is not loaded on this replica"),
                });
            }
        };
        module.instantiate().map_err(|e| Rejection {
            kind: RejectKind::BadModule,
            message: format!("the module cannot be instantiated: {e}"),
        })
    }
}

/// The hashed rejection for a module that does not load: the failure class
/// and what the ABI requires, not wasmtime's wording.
fn load_rejection(e: &LoadError) -> Rejection {
    let message = match e {
        LoadError::Invalid(_) => "the module is not a valid wasm module".to_owned(),
        LoadError::ForbiddenImports { .. } | LoadError::MissingExport { .. } => e.to_string(),
        LoadError::WrongExport { .. } | LoadError::AbiVersion { .. } => e.to_string(),
        LoadError::Instantiate(_) => "the module cannot be instantiated".to_owned(),
    };
    Rejection {
        kind: RejectKind::BadModule,
        message,
    }
}

impl StateMachine for Switching {
    fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, Rejection> {
        self.current.apply(command)
    }

    fn query(&mut self, query: &[u8]) -> Result<Vec<u8>, Rejection> {
        self.current.query(query)
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, Rejection> {
        self.current.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), Rejection> {
        self.current.restore(snapshot)
    }

    fn upgrade(&mut self, from: &str, to: &str) -> Result<(), Rejection> {
        let from_raw = dorado_core::upgrade::sha256_bytes(from).ok_or_else(|| Rejection {
            kind: RejectKind::BadModule,
            message: format!("the running module's hash {from} is not a sha256"),
        })?;
        let mut next = self.instance_of(to)?;
        let snapshot = self.current.snapshot()?;
        next.migrate_from(&from_raw, &snapshot)?;
        self.current = next;
        Ok(())
    }

    fn load(&mut self, module: &str, snapshot: Option<&[u8]>) -> Result<(), Rejection> {
        if module == self.current.module().sha256() {
            return match snapshot {
                Some(s) => self.current.restore(s),
                None => Ok(()),
            };
        }
        let mut next = self.instance_of(module)?;
        if let Some(s) = snapshot {
            next.restore(s)?;
        }
        self.current = next;
        Ok(())
    }
}
