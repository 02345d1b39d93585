//! The wasm host against the real example guests (`dorado_testkit::examples`) and
//! hand-written WAT modules for the refusals.

use dorado::host::{Host, HostConfig, Instance, LoadError};
use dorado_core::{RejectKind, StateMachine};
use dorado_testkit::examples;
use sha2::{Digest, Sha256};

fn host() -> Host {
    Host::new(HostConfig::default()).expect("host")
}

fn host_with(config: HostConfig) -> Host {
    Host::new(config).expect("host")
}

fn instance(host: &Host, bytes: &[u8]) -> Instance {
    host.load(bytes)
        .expect("module loads")
        .instantiate()
        .expect("instantiates")
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("utf-8 reply")
}

fn apply(i: &mut Instance, command: &str) -> String {
    text(i.apply(command.as_bytes()).expect("command applies"))
}

fn query(i: &mut Instance, q: &str) -> String {
    text(i.query(q.as_bytes()).expect("query answers"))
}

/// A minimal guest in WAT. `imports` goes first (WAT requires it), `apply`
/// is the body of `dorado_apply`, `omit` drops the export with that name.
fn wat_guest(imports: &str, version: i32, apply: &str, omit: Option<&str>) -> Vec<u8> {
    let exports = [
        ("memory", r#"(memory (export "memory") 1)"#.to_owned()),
        (
            "dorado_abi_version",
            format!(r#"(func (export "dorado_abi_version") (result i32) (i32.const {version}))"#),
        ),
        (
            "dorado_alloc",
            r#"(func (export "dorado_alloc") (param i32) (result i32) (i32.const 1024))"#
                .to_owned(),
        ),
        (
            "dorado_apply",
            format!(r#"(func (export "dorado_apply") (param i32 i32) (result i64) {apply})"#),
        ),
        (
            "dorado_query",
            r#"(func (export "dorado_query") (param i32 i32) (result i64) (i64.const 0))"#
                .to_owned(),
        ),
        (
            "dorado_snapshot",
            r#"(func (export "dorado_snapshot") (result i64) (i64.const 0))"#.to_owned(),
        ),
        (
            "dorado_restore",
            r#"(func (export "dorado_restore") (param i32 i32) (result i32) (i32.const 0))"#
                .to_owned(),
        ),
    ];
    let body: Vec<&str> = exports
        .iter()
        .filter(|(name, _)| Some(*name) != omit)
        .map(|(_, wat)| wat.as_str())
        .collect();
    let source = format!("(module {imports} {})", body.join("\n"));
    wat::parse_str(&source).expect("valid wat")
}

// ---------------------------------------------------------------- loading

#[test]
fn examples_load_small_with_sha256_and_no_imports() {
    let host = host();
    for (name, bytes) in examples::ALL {
        let module = host.load(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(module.abi_version(), 1, "{name}");
        assert_eq!(module.size(), bytes.len());
        assert!(bytes.len() < 256 * 1024, "{name} is {} bytes", bytes.len());
        assert_eq!(
            module.sha256(),
            hex::encode(Sha256::digest(bytes)),
            "{name}"
        );
        let names: Vec<&str> = module.exports().iter().map(|e| e.name.as_str()).collect();
        for required in [
            "memory",
            "dorado_abi_version",
            "dorado_alloc",
            "dorado_apply",
            "dorado_query",
            "dorado_snapshot",
            "dorado_restore",
            "dorado_last_panic",
        ] {
            assert!(
                names.contains(&required),
                "{name} lacks {required}: {names:?}"
            );
        }
    }
    let kv_file = std::path::Path::new(examples::wasm_dir()).join("kv.wasm");
    assert_eq!(std::fs::read(kv_file).unwrap(), examples::KV);
}

#[test]
fn garbage_bytes_are_refused() {
    for garbage in [
        &b""[..],
        b"\0asm",
        b"hello world",
        &[0, 97, 115, 109, 1, 0, 0, 0, 99],
    ] {
        let err = host().load(garbage).unwrap_err();
        assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("not a valid wasm module: "),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}

#[test]
fn any_import_is_refused_and_named() {
    let wasi = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#;
    let err = host()
        .load(&wat_guest(wasi, 1, "(i64.const 0)", None))
        .unwrap_err();
    assert_eq!(
        err,
        LoadError::ForbiddenImports {
            imports: vec!["wasi_snapshot_preview1.fd_write (function)".into()]
        }
    );
    let message = err.to_string();
    assert!(
        message.starts_with("forbidden import wasi_snapshot_preview1.fd_write (function): "),
        "{message}"
    );

    // Anything else too: the ABI currently has no host functions at all.
    let env = r#"(import "env" "clock" (func (result i64))) (import "env" "mem" (memory 1))"#;
    let err = host()
        .load(&wat_guest(env, 1, "(i64.const 0)", Some("memory")))
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("env.clock (function), env.mem (memory)"),
        "{message}"
    );
}

#[test]
fn every_missing_export_is_named() {
    for name in [
        "memory",
        "dorado_abi_version",
        "dorado_alloc",
        "dorado_apply",
        "dorado_query",
        "dorado_snapshot",
        "dorado_restore",
    ] {
        let err = host()
            .load(&wat_guest("", 1, "(i64.const 0)", Some(name)))
            .unwrap_err();
        match &err {
            LoadError::MissingExport { name: missing, .. } => assert_eq!(missing, name),
            other => panic!("{name}: expected MissingExport, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("missing export {name}: expected ")),
            "{message}"
        );
    }
}

#[test]
fn wrong_export_signature_is_refused() {
    // dorado_apply returning i32 instead of the packed i64.
    let bytes = wat_guest(
        r#"(func (export "dorado_apply") (param i32 i32) (result i32) (i32.const 0))"#,
        1,
        "",
        Some("dorado_apply"),
    );
    let err = host().load(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "export dorado_apply is func(i32, i32) -> i32, expected func(i32, i32) -> i64"
    );
    // The optional dorado_last_panic is checked too when present.
    let bytes = wat_guest(
        r#"(func (export "dorado_last_panic") (result i32) (i32.const 0))"#,
        1,
        "(i64.const 0)",
        None,
    );
    let err = host().load(&bytes).unwrap_err();
    assert!(matches!(err, LoadError::WrongExport { ref name, .. } if name == "dorado_last_panic"));
}

#[test]
fn wrong_abi_version_is_refused_with_both_versions() {
    let err = host()
        .load(&wat_guest("", 2, "(i64.const 0)", None))
        .unwrap_err();
    assert_eq!(
        err,
        LoadError::AbiVersion {
            found: 2,
            expected: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "unsupported abi version 2: this host speaks version 1"
    );
}

#[test]
fn initial_memory_above_the_cap_is_refused_at_load() {
    let host = host_with(HostConfig {
        memory_limit: 64 * 1024,
        ..HostConfig::default()
    });
    let err = host.load(examples::KV).unwrap_err();
    assert!(matches!(err, LoadError::Instantiate(_)), "{err:?}");
}

#[test]
fn threads_proposal_is_disabled() {
    let shared = wat::parse_str(r#"(module (memory (export "memory") 1 1 shared))"#).unwrap();
    let err = host().load(&shared).unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
}

// ---------------------------------------------------------------- determinism

#[test]
fn nan_results_are_canonical() {
    // sqrt(-1) is a NaN whose bits differ between CPUs unless canonicalised.
    let apply = "(i32.store (i32.const 0) (i32.reinterpret_f32 (f32.sqrt (f32.const -1)))) \
                 (i64.store (i32.const 4) (i64.reinterpret_f64 (f64.sqrt (f64.const -1)))) \
                 (i64.const 12)";
    let mut i = instance(&host(), &wat_guest("", 1, apply, None));
    let reply = i.apply(b"x").unwrap();
    assert_eq!(reply.len(), 12);
    assert_eq!(
        u32::from_le_bytes(reply[0..4].try_into().unwrap()),
        0x7fc0_0000
    );
    assert_eq!(
        u64::from_le_bytes(reply[4..12].try_into().unwrap()),
        0x7ff8_0000_0000_0000
    );
}

#[test]
fn bad_reply_pointer_is_rejected_and_instance_recovers() {
    // The reply claims 16 bytes at 0xffff0000, far outside a 64 KiB memory.
    let mut i = instance(
        &host(),
        &wat_guest("", 1, "(i64.const 0xffff000000000010)", None),
    );
    let rejection = i.apply(b"x").unwrap_err();
    assert_eq!(rejection.kind, RejectKind::BadReply);
    assert!(rejection.message.contains("dorado_apply"), "{rejection}");
    assert_eq!(i.apply(b"y").unwrap_err().kind, RejectKind::BadReply);
    assert_eq!(i.query(b"q").unwrap(), Vec::<u8>::new());
}

fn history(name: &str) -> Vec<String> {
    match name {
        "kv" => (0..50)
            .map(|i| match i % 4 {
                0 => format!(
                    r#"{{"op":"put","key":"k{}","value":{{"s":"v{i}","n":{i}}}}}"#,
                    i % 7
                ),
                1 => format!(r#"{{"op":"delete","key":"k{}"}}"#, i % 5),
                2 => format!(
                    r#"{{"op":"cas","key":"k{}","expected":null,"value":{i}}}"#,
                    i % 9
                ),
                _ => format!(r#"{{"op":"get","key":"k{}"}}"#, i % 3),
            })
            .collect(),
        "counter" => (0..50)
            .map(|i| format!(r#"{{"op":"add","n":{}}}"#, i * 7 - 100))
            .collect(),
        "bank" => {
            let mut h: Vec<String> = (0..5)
                .map(|i| {
                    format!(
                        r#"{{"op":"open","account":"acct{i}","balance":{}}}"#,
                        100 * i
                    )
                })
                .collect();
            h.extend((0..45).map(|i| {
                format!(
                    r#"{{"op":"transfer","from":"acct{}","to":"acct{}","amount":{}}}"#,
                    i % 5,
                    (i * 3 + 1) % 5,
                    (i * 37) % 150
                )
            }));
            h
        }
        "faulty" => (0..50)
            .map(|i| format!(r#"{{"op":"set","value":[{i},"x",{{"b":1,"a":2}}]}}"#))
            .collect(),
        other => panic!("no history for {other}"),
    }
}

fn probe(name: &str) -> &'static str {
    match name {
        "kv" => r#"{"op":"len"}"#,
        "counter" | "faulty" => r#"{"op":"get"}"#,
        "bank" => r#"{"op":"total"}"#,
        other => panic!("no probe for {other}"),
    }
}

#[test]
fn snapshot_restore_round_trip_is_byte_identical_for_every_example() {
    let host = host();
    for (name, bytes) in examples::ALL {
        let commands = history(name);
        let (first, rest) = commands.split_at(commands.len() / 2);
        let mut a = instance(&host, bytes);
        for c in first {
            a.apply(c.as_bytes()).unwrap();
        }
        let snapshot = a.snapshot().unwrap();
        let mut b = instance(&host, bytes);
        b.restore(&snapshot).unwrap();
        assert_eq!(
            b.snapshot().unwrap(),
            snapshot,
            "{name}: restore(snapshot) differs"
        );
        for c in rest {
            assert_eq!(
                a.apply(c.as_bytes()).unwrap(),
                b.apply(c.as_bytes()).unwrap(),
                "{name}: replies differ for {c}"
            );
        }
        assert_eq!(
            query(&mut a, probe(name)),
            query(&mut b, probe(name)),
            "{name}"
        );
        assert_eq!(a.snapshot().unwrap(), b.snapshot().unwrap(), "{name}");
    }
}

#[test]
fn two_hosts_fed_the_same_commands_have_identical_snapshots() {
    let (h1, h2) = (host(), host());
    for (name, bytes) in examples::ALL {
        let mut a = instance(&h1, bytes);
        let mut b = instance(&h2, bytes);
        for c in history(name) {
            assert_eq!(a.apply(c.as_bytes()), b.apply(c.as_bytes()), "{name}: {c}");
        }
        let snapshot = a.snapshot().unwrap();
        assert!(!snapshot.is_empty());
        assert_eq!(snapshot, b.snapshot().unwrap(), "{name}");
    }
}

#[test]
fn corrupt_snapshot_is_rejected_and_state_kept() {
    let mut kv = instance(&host(), examples::KV);
    apply(&mut kv, r#"{"op":"put","key":"a","value":1}"#);
    let before = kv.snapshot().unwrap();
    let rejection = kv.restore(b"{not a snapshot").unwrap_err();
    assert_eq!(rejection.kind, RejectKind::Trap);
    assert!(
        rejection.message.contains("corrupt kv snapshot"),
        "{rejection}"
    );
    assert_eq!(kv.snapshot().unwrap(), before);
    assert_eq!(
        query(&mut kv, r#"{"op":"get","key":"a"}"#),
        r#"{"ok":true,"value":1}"#
    );
}

// ---------------------------------------------------------------- example semantics

#[test]
fn kv_semantics() {
    let mut kv = instance(&host(), examples::KV);
    assert_eq!(
        apply(&mut kv, r#"{"op":"put","key":"a","value":"x"}"#),
        r#"{"ok":true}"#
    );
    assert_eq!(
        apply(&mut kv, r#"{"op":"get","key":"a"}"#),
        r#"{"ok":true,"value":"x"}"#
    );
    assert_eq!(
        apply(
            &mut kv,
            r#"{"op":"cas","key":"a","expected":"y","value":"z"}"#
        ),
        r#"{"ok":false,"error":"cas mismatch","current":"x"}"#
    );
    assert_eq!(
        apply(
            &mut kv,
            r#"{"op":"cas","key":"a","expected":"x","value":"z"}"#
        ),
        r#"{"ok":true}"#
    );
    assert_eq!(
        apply(
            &mut kv,
            r#"{"op":"cas","key":"new","expected":null,"value":[1,2]}"#
        ),
        r#"{"ok":true}"#
    );
    assert_eq!(query(&mut kv, r#"{"op":"len"}"#), r#"{"ok":true,"len":2}"#);
    assert_eq!(
        apply(&mut kv, r#"{"op":"delete","key":"a"}"#),
        r#"{"ok":true,"deleted":true}"#
    );
    assert_eq!(
        apply(&mut kv, r#"{"op":"delete","key":"a"}"#),
        r#"{"ok":true,"deleted":false}"#
    );
    assert_eq!(
        query(&mut kv, r#"{"op":"get","key":"a"}"#),
        r#"{"ok":true,"value":null}"#
    );
    assert_eq!(
        query(&mut kv, r#"{"op":"get","key":"new"}"#),
        r#"{"ok":true,"value":[1,2]}"#
    );
    for malformed in [
        "",
        "{",
        r#"{"op":"put"}"#,
        r#"{"op":"explode"}"#,
        "[1]",
        "\u{0}",
    ] {
        let reply = apply(&mut kv, malformed);
        assert!(
            reply.starts_with(r#"{"ok":false,"error":"#),
            "{malformed:?} -> {reply}"
        );
    }
    assert!(query(&mut kv, r#"{"op":"put"}"#).starts_with(r#"{"ok":false,"#));
    assert_eq!(query(&mut kv, r#"{"op":"len"}"#), r#"{"ok":true,"len":1}"#);
}

#[test]
fn counter_semantics() {
    let mut c = instance(&host(), examples::COUNTER);
    assert_eq!(
        apply(&mut c, r#"{"op":"add","n":40}"#),
        r#"{"ok":true,"value":40}"#
    );
    assert_eq!(
        apply(&mut c, r#"{"op":"add","n":2}"#),
        r#"{"ok":true,"value":42}"#
    );
    assert_eq!(
        apply(&mut c, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":42}"#
    );
    assert_eq!(
        query(&mut c, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":42}"#
    );
    assert_eq!(
        apply(&mut c, &format!(r#"{{"op":"add","n":{}}}"#, i64::MAX)),
        r#"{"ok":false,"error":"counter overflow"}"#
    );
    assert!(apply(&mut c, r#"{"op":"add","n":"x"}"#).starts_with(r#"{"ok":false"#));
    assert_eq!(
        query(&mut c, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":42}"#
    );
}

#[test]
fn bank_refuses_overdraft_and_unknown_accounts_and_conserves_money() {
    let mut bank = instance(&host(), examples::BANK);
    apply(
        &mut bank,
        r#"{"op":"open","account":"alice","balance":100}"#,
    );
    apply(&mut bank, r#"{"op":"open","account":"bob","balance":50}"#);
    let before = bank.snapshot().unwrap();
    let overdraft = apply(
        &mut bank,
        r#"{"op":"transfer","from":"alice","to":"bob","amount":101}"#,
    );
    assert!(
        overdraft.starts_with(r#"{"ok":false,"error":"insufficient funds"#),
        "{overdraft}"
    );
    let unknown = apply(
        &mut bank,
        r#"{"op":"transfer","from":"alice","to":"carol","amount":1}"#,
    );
    assert_eq!(
        unknown,
        r#"{"ok":false,"error":"unknown account \"carol\""}"#
    );
    for refused in [
        r#"{"op":"transfer","from":"carol","to":"bob","amount":1}"#,
        r#"{"op":"open","account":"bob","balance":1}"#,
        r#"{"op":"transfer","from":"alice","to":"bob"}"#,
        r#"{"op":"transfer","from":"alice","to":"bob","amount":-5}"#,
    ] {
        let reply = apply(&mut bank, refused);
        assert!(
            reply.starts_with(r#"{"ok":false,"error":"#),
            "{refused} -> {reply}"
        );
    }
    assert_eq!(bank.snapshot().unwrap(), before);

    for i in 0..200u64 {
        let (from, to) = if i % 3 == 0 {
            ("bob", "alice")
        } else {
            ("alice", "bob")
        };
        let amount = (i * 13) % 70 + 1;
        apply(
            &mut bank,
            &format!(r#"{{"op":"transfer","from":"{from}","to":"{to}","amount":{amount}}}"#),
        );
        assert_eq!(
            query(&mut bank, r#"{"op":"total"}"#),
            r#"{"ok":true,"total":150,"accounts":2}"#
        );
    }
}

// ---------------------------------------------------------------- traps and rollback

fn faulty(config: HostConfig) -> Instance {
    instance(&host_with(config), examples::FAULTY)
}

fn small_limits() -> HostConfig {
    HostConfig {
        fuel_per_command: 5_000_000,
        memory_limit: 32 << 20,
        ..HostConfig::default()
    }
}

/// Applies `command`, expects a rejection of `kind`, and checks that nothing
/// changed and the next command works. Leaves the state as it found it.
fn assert_rejected(i: &mut Instance, command: &str, kind: RejectKind) -> String {
    let state = query(i, r#"{"op":"get"}"#);
    let snapshot = i.snapshot().unwrap();
    let rejection = i.apply(command.as_bytes()).unwrap_err();
    assert_eq!(rejection.kind, kind, "{command}: {rejection}");
    assert_eq!(
        query(i, r#"{"op":"get"}"#),
        state,
        "{command} changed the state"
    );
    assert_eq!(
        i.snapshot().unwrap(),
        snapshot,
        "{command} changed the snapshot"
    );
    assert_eq!(apply(i, r#"{"op":"set","value":"next"}"#), r#"{"ok":true}"#);
    assert!(query(i, r#"{"op":"get"}"#).contains(r#""value":"next""#));
    i.restore(&snapshot).unwrap();
    rejection.to_string()
}

#[test]
fn panic_is_a_trap_with_the_message_and_is_rolled_back() {
    let mut f = faulty(small_limits());
    apply(&mut f, r#"{"op":"set","value":1}"#);
    let message = assert_rejected(&mut f, r#"{"op":"panic","set":99}"#, RejectKind::Trap);
    assert!(
        message.starts_with("trap: guest panicked: faulty guest asked to panic (at "),
        "{message}"
    );
    assert_eq!(
        query(&mut f, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":1,"applied":1}"#
    );
}

#[test]
fn endless_loop_runs_out_of_fuel_and_is_rolled_back() {
    let mut f = faulty(small_limits());
    apply(&mut f, r#"{"op":"set","value":1}"#);
    let message = assert_rejected(&mut f, r#"{"op":"loop","set":2}"#, RejectKind::OutOfFuel);
    assert_eq!(message, "out of fuel: fuel budget of 5000000 exhausted");
    assert_eq!(
        query(&mut f, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":1,"applied":1}"#
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_cap_and_is_rolled_back() {
    let mut f = faulty(HostConfig {
        memory_limit: 32 << 20,
        ..HostConfig::default()
    });
    apply(&mut f, r#"{"op":"set","value":1}"#);
    let message = assert_rejected(&mut f, r#"{"op":"alloc","set":3}"#, RejectKind::MemoryLimit);
    assert!(message.contains(&(32u32 << 20).to_string()), "{message}");
    assert_rejected(&mut f, r#"{"op":"alloc","mb":64}"#, RejectKind::MemoryLimit);
    // Bounded allocations under the cap work, repeatedly (memory is reused).
    for _ in 0..3 {
        assert_eq!(
            apply(&mut f, r#"{"op":"alloc","mb":8}"#),
            r#"{"ok":true,"allocated":8388608}"#
        );
    }
    assert_eq!(
        query(&mut f, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":1,"applied":4}"#
    );
}

#[test]
fn stack_exhaustion_is_a_trap() {
    let mut f = faulty(small_limits());
    let message = assert_rejected(&mut f, r#"{"op":"recurse","set":5}"#, RejectKind::Trap);
    // Rust's shadow stack overflows into unmapped memory (or wasmtime's own
    // stack limit trips first); either way a plain trap, described once.
    assert!(
        message == "trap: out of bounds memory access" || message == "trap: call stack exhausted",
        "{message}"
    );
}

#[test]
fn trapping_queries_change_nothing() {
    let mut f = faulty(small_limits());
    apply(&mut f, r#"{"op":"set","value":"kept"}"#);
    assert_eq!(
        f.query(br#"{"op":"panic"}"#).unwrap_err().kind,
        RejectKind::Trap
    );
    assert_eq!(
        f.query(br#"{"op":"loop"}"#).unwrap_err().kind,
        RejectKind::OutOfFuel
    );
    assert_eq!(
        query(&mut f, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":"kept","applied":1}"#
    );
}

#[test]
fn rollback_is_exact_across_checkpoints_and_restores() {
    // A tiny threshold makes the host re-checkpoint every few commands.
    let mut f = faulty(HostConfig {
        checkpoint_log_bytes: 200,
        ..small_limits()
    });
    let mut reference = faulty(HostConfig::default());
    for i in 0..40 {
        let command = format!(r#"{{"op":"set","value":{i}}}"#);
        assert_eq!(apply(&mut f, &command), apply(&mut reference, &command));
        if i % 7 == 3 {
            for bad in [r#"{"op":"panic","set":-1}"#, r#"{"op":"loop","set":-2}"#] {
                assert!(f.apply(bad.as_bytes()).is_err());
            }
        }
        if i == 20 {
            let snapshot = f.snapshot().unwrap();
            f.restore(&snapshot).unwrap();
        }
        assert_eq!(
            f.snapshot().unwrap(),
            reference.snapshot().unwrap(),
            "after command {i}"
        );
    }
    assert_eq!(
        query(&mut f, r#"{"op":"get"}"#),
        r#"{"ok":true,"value":39,"applied":40}"#
    );
}

#[test]
fn same_trap_gives_same_rejection_on_every_host() {
    let mut a = faulty(small_limits());
    let mut b = faulty(small_limits());
    for command in [
        r#"{"op":"panic"}"#,
        r#"{"op":"loop"}"#,
        r#"{"op":"alloc"}"#,
        r#"{"op":"set","value":1}"#,
    ] {
        assert_eq!(
            a.apply(command.as_bytes()),
            b.apply(command.as_bytes()),
            "{command}"
        );
    }
}

#[test]
fn fuel_used_by_a_put_is_far_below_the_default_budget() {
    let mut kv = instance(&host(), examples::KV);
    apply(
        &mut kv,
        r#"{"op":"put","key":"key-00001","value":"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"}"#,
    );
    let used = kv.last_fuel_used();
    let budget = HostConfig::default().fuel_per_command;
    assert!(used > 0 && used < budget / 1000, "a put used {used} fuel");
}
