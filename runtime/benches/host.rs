//! `apply` of a 100-byte `kv` put: through the wasm host (ABI round trip,
//! fuel metering, rollback log and periodic checkpoints included) versus the
//! very same store logic compiled natively. The ratio is the price of running
//! a state machine as a sandboxed, deterministic guest.
//!
//! Each pair is measured twice: wall-clock time (criterion's default) and the
//! benchmark thread's CPU time. On a shared 2-core machine where other builds
//! run, wall-clock includes time spent descheduled; thread CPU time does not,
//! so it is the number to compare across runs.
//!
//! Run: `cargo bench -p dorado --bench host`

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dorado::host::{Host, HostConfig};
use dorado_core::StateMachine;
use dorado_testkit::examples;
use std::hint::black_box;
use std::time::Duration;

/// The guest's logic, compiled for the host (the same source file the `kv`
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

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (nanoseconds) as wall time, so reuse its formatting.
        let wall: &'static WallTime = &WallTime;
        wall.formatter()
    }
}

fn kv_put<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let commands = puts();
    let mut group = c.benchmark_group(group);
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

fn wall_time(c: &mut Criterion) {
    kv_put(c, "kv_put_100B_wall");
}

fn cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    kv_put(c, "kv_put_100B_cpu");
}

criterion_group!(wall, wall_time);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu_time
}
criterion_main!(wall, cpu);
