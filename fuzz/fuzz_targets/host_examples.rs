//! Random commands, queries and snapshots against the real example guests
//! (`kv`, `bank`, `counter`, `faulty`), as a client of the API or a corrupted
//! snapshot in the store would send them.
//!
//! Two instances run side by side: `main` gets every call, `shadow` only the
//! commands `main` accepted (and the restores it accepted). Properties:
//! * nothing panics or hangs (fuel and memory caps of the fuzzing host);
//! * a rejected command leaves the state unchanged: right after a rejection,
//!   `main`'s snapshot equals `shadow`'s, which never saw the command; the
//!   same for a rejected restore, and for queries (compared at the end);
//! * determinism: an accepted command gives `shadow` the same reply, and a
//!   command that trapped traps again with the same rejection when retried;
//! * `restore(snapshot())` is the identity.
//!
//! Known limit (documented in `runtime/src/host/mod.rs`): fuel and memory use
//! depend slightly on the guest's heap layout, which differs after a rollback,
//! so a command close to its budget may be accepted by one instance and
//! refused by the other. Such runs stop early instead of failing.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use dorado::host::{Instance, Module};
use dorado_core::{RejectKind, Rejection, StateMachine};
use dorado_fuzz::{GuestCommand, host};
use dorado_testkit::examples;
use libfuzzer_sys::fuzz_target;

static MODULES: LazyLock<Vec<Module>> = LazyLock::new(|| {
    [
        examples::KV,
        examples::BANK,
        examples::COUNTER,
        examples::FAULTY,
    ]
    .iter()
    .map(|bytes| host().load(bytes).expect("example module loads"))
    .collect()
});

#[derive(Debug)]
enum Payload {
    Json(GuestCommand),
    Raw(Vec<u8>),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Json(c) => c.to_bytes(),
            Payload::Raw(b) => b.clone(),
        }
    }
}

#[derive(Debug)]
enum Call {
    Apply(Payload),
    Query(Payload),
    Snapshot,
    RestoreOwn,
    Restore(Payload),
}

/// The input is text: the first line names the guest (`kv`, `bank`,
/// `counter`, `faulty`), every further line is one call, `VERB PAYLOAD`:
/// `apply`, `query` and `restore` send the rest of the line as it is;
/// `apply*` and `query*` build a well-formed JSON command from it
/// ([`GuestCommand`]); `snapshot` and `restore-own` take nothing.
struct Input {
    module: usize,
    calls: Vec<Call>,
}

fn parse(data: &[u8]) -> Input {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let module = match first {
        b"kv" => 0,
        b"bank" => 1,
        b"counter" => 2,
        b"faulty" => 3,
        other => other.first().map_or(0, |b| usize::from(*b)),
    };
    let generated = |payload: &[u8]| {
        GuestCommand::arbitrary(&mut Unstructured::new(payload))
            .ok()
            .map(Payload::Json)
    };
    let calls = lines
        .filter_map(|line| {
            let (verb, payload) = match line.iter().position(|b| *b == b' ') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            };
            let raw = || Payload::Raw(payload.to_vec());
            Some(match verb {
                b"apply" => Call::Apply(raw()),
                b"apply*" => Call::Apply(generated(payload)?),
                b"query" => Call::Query(raw()),
                b"query*" => Call::Query(generated(payload)?),
                b"restore" => Call::Restore(raw()),
                b"snapshot" => Call::Snapshot,
                b"restore-own" => Call::RestoreOwn,
                _ => return None,
            })
        })
        .collect();
    Input { module, calls }
}

/// Rejections that may legitimately differ between instances (see the
/// known limit above).
fn layout_dependent(r: &Rejection) -> bool {
    matches!(r.kind, RejectKind::OutOfFuel | RejectKind::MemoryLimit)
}

/// Both snapshots, or `None` if either could not be taken within its budget.
fn snapshots(main: &mut Instance, shadow: &mut Instance) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((main.snapshot().ok()?, shadow.snapshot().ok()?))
}

/// Runs the calls; returns early (without failing) on a layout-dependent
/// divergence.
fn run(input: &Input) -> Option<()> {
    let module = &MODULES[input.module % MODULES.len()];
    let mut main = module.instantiate().ok()?;
    let mut shadow = module.instantiate().ok()?;
    for call in input.calls.iter().take(24) {
        match call {
            Call::Apply(p) => {
                let command = p.bytes();
                match main.apply(&command) {
                    Ok(reply) => match shadow.apply(&command) {
                        Ok(r) => assert_eq!(r, reply, "replies differ for {p:?}"),
                        Err(e) if layout_dependent(&e) => return None,
                        Err(e) => panic!("shadow rejected {p:?} ({e}), main accepted it"),
                    },
                    Err(rejection) => {
                        let (a, b) = snapshots(&mut main, &mut shadow)?;
                        assert_eq!(a, b, "rejected {p:?} ({rejection}) changed the state");
                        if !layout_dependent(&rejection) {
                            match main.apply(&command) {
                                Err(again) => assert_eq!(again, rejection, "retry of {p:?}"),
                                Ok(_) => panic!("{p:?} was rejected ({rejection}), then accepted"),
                            }
                        }
                    }
                }
            }
            Call::Query(p) => {
                let _ = main.query(&p.bytes());
            }
            Call::Snapshot => {
                let (a, b) = snapshots(&mut main, &mut shadow)?;
                assert_eq!(a, b, "snapshots diverged");
            }
            Call::RestoreOwn => {
                let before = main.snapshot().ok()?;
                match main.restore(&before) {
                    Ok(()) => {}
                    Err(e) if layout_dependent(&e) => return None,
                    Err(e) => panic!("restoring its own snapshot failed: {e}"),
                }
                let after = main.snapshot().ok()?;
                assert_eq!(before, after, "restore(snapshot()) changed the state");
            }
            Call::Restore(p) => {
                let snapshot = p.bytes();
                match main.restore(&snapshot) {
                    Ok(()) => match shadow.restore(&snapshot) {
                        Ok(()) => {}
                        Err(e) if layout_dependent(&e) => return None,
                        Err(e) => panic!("shadow refused a restore main accepted: {e}"),
                    },
                    Err(_) => {
                        let (a, b) = snapshots(&mut main, &mut shadow)?;
                        assert_eq!(a, b, "a refused restore changed the state");
                    }
                }
            }
        }
    }
    let (a, b) = snapshots(&mut main, &mut shadow)?;
    assert_eq!(a, b, "queries or rollbacks changed the state");
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&parse(data));
});
