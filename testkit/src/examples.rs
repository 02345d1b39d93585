//! The example guests, embedded in the binary.
//!
//! `build.rs` builds `wasm-examples/` on every change to its sources, so
//! these bytes always match the current guest code; tests, benchmarks and
//! demos use them instead of reading files at run time.

/// `kv`: JSON key-value store (put / get / delete / cas).
pub const KV: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/kv.wasm"));
/// `counter`: JSON counter (add / get).
pub const COUNTER: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/counter.wasm"));
/// `bank`: accounts and transfers with conserved total.
pub const BANK: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/bank.wasm"));
/// `faulty`: panics, loops or exhausts memory on request (host tests).
pub const FAULTY: &[u8] = include_bytes!(concat!(env!("DORADO_WASM_DIR"), "/faulty.wasm"));

/// Every example as `(name, bytes)`.
pub const ALL: [(&str, &[u8]); 4] = [
    ("kv", KV),
    ("counter", COUNTER),
    ("bank", BANK),
    ("faulty", FAULTY),
];

/// Directory holding the built `.wasm` files (inside `wasm-examples/target`),
/// for tests and tools that need paths rather than bytes.
pub fn wasm_dir() -> &'static str {
    env!("DORADO_WASM_DIR")
}
