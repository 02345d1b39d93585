//! Well-formed but arbitrary guests: wasm-smith generates modules that have
//! exactly Dorado's ABI exports (so they pass the export checks) with random
//! function bodies, data, globals, tables and start functions. These reach
//! the parts of the host that random bytes never do: instantiation, the ABI
//! calls (the optional `dorado_migrate` of upgrades included), pointer/length
//! replies out of bounds, traps of every kind, and the rollback that rebuilds
//! an instance after a trap.
//!
//! Properties:
//! * nothing panics or hangs (fuel and memory caps of the fuzzing host);
//! * determinism: two instances of the same module fed the same calls give
//!   identical replies and identical rejections (kind and message), which
//!   is what keeps replicas from diverging.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use dorado_core::StateMachine;
use dorado_fuzz::{abi_shape, host};
use libfuzzer_sys::fuzz_target;

static SHAPE: LazyLock<Vec<u8>> = LazyLock::new(abi_shape);

#[derive(Debug, Arbitrary)]
enum Call {
    Apply(Vec<u8>),
    Query(Vec<u8>),
    Snapshot,
    Restore(Vec<u8>),
    /// An upgrade's switch into this module from another one's snapshot.
    Migrate([u8; 32], Vec<u8>),
}

fn module(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut config = wasm_smith::Config::arbitrary(u)?;
    config.exports = Some(SHAPE.clone());
    config.available_imports = None;
    config.module_shape = None;
    config.max_imports = 0;
    config.min_imports = 0;
    config.max_memories = 1;
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.memory64_enabled = false;
    config.relaxed_simd_enabled = false;
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.max_memory32_bytes = config.max_memory32_bytes.min(64 << 20);
    config.max_instructions = config.max_instructions.min(2_000);
    config.max_funcs = config.max_funcs.min(50);
    Ok(wasm_smith::Module::new(config, u)?.to_bytes())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = module(&mut u) else {
        return;
    };
    let Ok(calls) = Vec::<Call>::arbitrary(&mut u) else {
        return;
    };
    let Ok(module) = host().load(&bytes) else {
        return;
    };
    let (Ok(mut a), Ok(mut b)) = (module.instantiate(), module.instantiate()) else {
        return;
    };
    for call in calls.iter().take(16) {
        match call {
            Call::Apply(c) => assert_eq!(a.apply(c), b.apply(c), "apply diverged"),
            Call::Query(q) => assert_eq!(a.query(q), b.query(q), "query diverged"),
            Call::Snapshot => assert_eq!(a.snapshot(), b.snapshot(), "snapshot diverged"),
            Call::Restore(s) => assert_eq!(a.restore(s), b.restore(s), "restore diverged"),
            Call::Migrate(from, s) => assert_eq!(
                a.migrate_from(from, s),
                b.migrate_from(from, s),
                "migrate diverged"
            ),
        }
    }
});
