//! The CI sweep: 1,000 seeds of the whole-group simulation must pass every
//! check. `DORADO_SIM_SEEDS` overrides the count (the long mode:
//! `DORADO_SIM_SEEDS=100000`, or `cargo run -p dorado-sim --release -- --long`).
//! Not run with a planted bug (those builds are expected to fail: tests/planted.rs).

#[cfg(not(any(
    feature = "bug-unfenced",
    feature = "bug-skip-gap-fill",
    feature = "bug-no-session-cache"
)))]
#[test]
fn a_thousand_seeds_pass_every_check() {
    let count = std::env::var("DORADO_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000u64);
    let t0 = std::time::Instant::now();
    let reports = dorado_sim::sweep(0, count).unwrap_or_else(|f| {
        for line in &f.log {
            eprintln!("{line}");
        }
        panic!("{f}");
    });
    let secs = t0.elapsed().as_secs_f64();
    let ops: usize = reports.iter().map(|r| r.operations).sum();
    let faults: usize = reports.iter().map(|r| r.faults).sum();
    let depositions: usize = reports.iter().map(|r| r.depositions).sum();
    eprintln!(
        "{count} seeds in {secs:.1} s ({:.1} seeds/s), {ops} operations, {faults} faults, {depositions} depositions",
        count as f64 / secs
    );
    assert!(
        faults as u64 >= count,
        "the nemesis injected too few faults: {faults}"
    );
    // Suspicion is exercised: crashed and paused leaders get deposed.
    assert!(
        depositions as u64 >= count / 10,
        "too few depositions: {depositions}"
    );
}
