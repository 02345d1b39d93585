//! Every run is reproducible from its seed: the same seed run twice, once on
//! this thread and once on a fresh one (so no thread-local state is shared),
//! takes exactly the same path — same event log, byte for byte, and the same
//! report. This is what makes `dorado-sim --seed N` a faithful re-run of a
//! failure found in a sweep.

#[test]
fn a_seed_replays_the_same_event_log() {
    let count: u64 = std::env::var("DORADO_SIM_REPRO_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..count {
        let (first, first_log) = dorado_sim::run_logged(seed, false);
        let (second, second_log) = std::thread::spawn(move || dorado_sim::run_logged(seed, false))
            .join()
            .expect("the second run panicked");
        let (first_log, second_log) = match (&first, &second) {
            (Err(a), Err(b)) => (a.log.clone(), b.log.clone()),
            _ => (first_log, second_log),
        };
        if let Some(at) = first_log
            .iter()
            .zip(&second_log)
            .position(|(a, b)| a != b)
            .or((first_log.len() != second_log.len())
                .then_some(first_log.len().min(second_log.len())))
        {
            let from = at.saturating_sub(5);
            panic!(
                "seed {seed} took two paths; the event logs part at line {at}:\n\
                 first run:\n  {}\nsecond run:\n  {}",
                first_log[from..(at + 3).min(first_log.len())].join("\n  "),
                second_log[from..(at + 3).min(second_log.len())].join("\n  "),
            );
        }
        match (first, second) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed}: same log, different reports"),
            (Err(a), Err(b)) => assert_eq!(a.message, b.message, "seed {seed}"),
            (a, b) => panic!("seed {seed}: one run passed, one failed: {a:?} / {b:?}"),
        }
    }
}
