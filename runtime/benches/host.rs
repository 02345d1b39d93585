//! `apply` of a 100-byte `kv` put: through the wasm host (ABI round trip,
//! fuel metering, rollback log and periodic checkpoints included) versus the
//! very same store logic compiled natively. The ratio is the price of running
//! a state machine as a sandboxed, deterministic guest.
//!
//! Run: `cargo bench -p dorado --bench host`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dorado::examples;
use dorado::host::{Host, HostConfig};
use dorado_core::StateMachine;
use std::hint::black_box;

/// The guest's logic, compiled for the host (same source file the `kv`
/// guest is built from).
#[allow(dead_code)]
#[path = "../../wasm-examples/kv/src/logic.rs"]
mod kv_logic;

const COMMAND_LEN: usize = 100;
const KEYS: usize = 1024;

/// `KEYS` distinct put commands of exactly `COMMAND_LEN` bytes each.
fn puts() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| {
            let head = format!(r#"{{"op":"put","key":"key-{i:05}","value":""#);
            let pad = COMMAND_LEN - head.len() - 2;
            let command = format!("{head}{}\"}}", "v".repeat(pad));
            assert_eq!(command.len(), COMMAND_LEN);
            command.into_bytes()
        })
        .collect()
}

fn kv_put(c: &mut Criterion) {
    let commands = puts();
    let mut group = c.benchmark_group("kv_put_100B");
    group.throughput(Throughput::Elements(1));

    group.bench_function("wasm_host", |b| {
        let host = Host::new(HostConfig::default()).expect("host");
        let mut instance = host
            .load(examples::KV)
            .expect("kv loads")
            .instantiate()
            .expect("kv instantiates");
        let mut i = 0;
        b.iter(|| {
            let reply = instance.apply(&commands[i % KEYS]).expect("put applies");
            i += 1;
            black_box(reply)
        });
    });

    group.bench_function("native", |b| {
        let mut kv = kv_logic::Kv::default();
        let mut i = 0;
        b.iter(|| {
            let reply = kv.apply(&commands[i % KEYS]);
            i += 1;
            black_box(reply)
        });
    });

    group.finish();
}

criterion_group!(benches, kv_put);
criterion_main!(benches);
