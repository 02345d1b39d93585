//! Random bytes as a guest module: `Host::load` is what a replica runs on
//! the ConfigMap's contents, which anyone with write access to that ConfigMap
//! controls.
//!
//! Properties: loading never panics and never hangs (start functions and
//! `dorado_abi_version` run under the fuzzing host's fuel and memory caps);
//! a module that loads can be instantiated and driven through every ABI call
//! without a panic, and every failure is a `Rejection`.
#![no_main]

use dorado_core::StateMachine;
use dorado_fuzz::host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(module) = host().load(data) else {
        return;
    };
    assert_eq!(module.size(), data.len());
    assert_eq!(module.sha256().len(), 64);
    let Ok(mut instance) = module.instantiate() else {
        return;
    };
    let _ = instance.apply(data);
    let _ = instance.query(b"{}");
    if let Ok(snapshot) = instance.snapshot() {
        let _ = instance.restore(&snapshot);
    }
    let _ = instance.apply(b"");
});
