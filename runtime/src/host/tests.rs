//! Unit tests for the pieces that need no guest: error texts and helpers.
//! Behaviour with real guests is in `runtime/tests/host.rs`.

use super::module::one_line;
use super::*;

#[test]
fn default_config_is_documented() {
    let c = HostConfig::default();
    assert_eq!(c.fuel_per_command, 100_000_000);
    assert_eq!(c.memory_limit, 256 << 20);
}

#[test]
fn one_line_joins_chains() {
    assert_eq!(one_line("a\n  b\n\nc"), "a; b; c");
}

#[test]
fn garbage_is_invalid() {
    let host = Host::new(HostConfig::default()).unwrap();
    match host.load(b"definitely not wasm") {
        Err(LoadError::Invalid(message)) => assert!(!message.contains('\n'), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn host_types_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Host>();
    send_sync::<Module>();
    send::<Instance>();
}

#[test]
fn sha256_bytes_is_the_hex_sha256_decoded() {
    use sha2::{Digest, Sha256};
    let bytes = wat::parse_str(
        r#"(module (memory (export "memory") 1)
          (func (export "dorado_abi_version") (result i32) (i32.const 1))
          (func (export "dorado_alloc") (param i32) (result i32) (i32.const 0))
          (func (export "dorado_apply") (param i32 i32) (result i64) (i64.const 0))
          (func (export "dorado_query") (param i32 i32) (result i64) (i64.const 0))
          (func (export "dorado_snapshot") (result i64) (i64.const 0))
          (func (export "dorado_restore") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let module = Host::new(HostConfig::default())
        .unwrap()
        .load(&bytes)
        .unwrap();
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    assert_eq!(module.sha256_bytes(), digest);
    assert_eq!(hex::encode(module.sha256_bytes()), module.sha256());
    assert!(!module.has_migrate());
}
