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
            "dorado_migrate",
        ] {
            assert!(
                names.contains(&required),
                "{name} lacks {required}: {names:?}"
            );
        }
        assert!(module.has_migrate(), "{name}");
        assert_eq!(
            module.sha256_bytes(),
            <[u8; 32]>::from(Sha256::digest(bytes)),
            "{name}"
        );
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
fn wrong_migrate_signature_is_refused_naming_it() {
    // dorado_migrate returning the packed i64 of apply instead of a status.
    let bytes = wat_guest(
        r#"(func (export "dorado_migrate") (param i32 i32) (result i64) (i64.const 0))"#,
        1,
        "(i64.const 0)",
        None,
    );
    let err = host().load(&bytes).unwrap_err();
    assert_eq!(
        err,
        LoadError::WrongExport {
            name: "dorado_migrate".into(),
            found: "func(i32, i32) -> i64".into(),
            expected: "func(i32, i32) -> i32".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "export dorado_migrate is func(i32, i32) -> i64, expected func(i32, i32) -> i32"
    );
    // A global of that name is refused too.
    let bytes = wat_guest(
        r#"(global (export "dorado_migrate") i32 (i32.const 0))"#,
        1,
        "(i64.const 0)",
        None,
    );
    let err = host().load(&bytes).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("export dorado_migrate is global(i32), expected "),
        "{err}"
    );
    // Absent is fine: the export is optional.
    let module = host()
        .load(&wat_guest("", 1, "(i64.const 0)", None))
        .unwrap();
    assert!(!module.has_migrate());
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
        "kv" | "kv2" | "kv_migrate_trap" => (0..50)
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
        "kv" | "kv2" | "kv_migrate_trap" => r#"{"op":"len"}"#,
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

// ---------------------------------------------------------------- upgrades (migration)

#[test]
fn kv_upgrades_to_kv2_keeping_its_data_and_rolls_back_to_the_migrated_state() {
    // A small command budget so that one big put runs out of fuel.
    let host = host_with(HostConfig {
        fuel_per_command: 2_000_000,
        ..HostConfig::default()
    });
    let kv = host.load(examples::KV).unwrap();
    let mut v1 = kv.instantiate().unwrap();
    apply(&mut v1, r#"{"op":"put","key":"a","value":"x"}"#);
    apply(&mut v1, r#"{"op":"put","key":"n","value":40}"#);
    apply(
        &mut v1,
        r#"{"op":"put","key":"obj","value":{"deep":[1,2]}}"#,
    );
    // kv v1 does not know incr.
    assert!(apply(&mut v1, r#"{"op":"incr","key":"n"}"#).contains("unknown op"));
    let v1_snapshot = v1.snapshot().unwrap();
    assert!(
        v1_snapshot.starts_with(b"{"),
        "kv v1 snapshots are bare JSON"
    );

    let kv2 = host.load(examples::KV2).unwrap();
    assert!(kv2.has_migrate());
    let mut v2 = kv2.instantiate().unwrap();

    v2.migrate_from(&kv.sha256_bytes(), &v1_snapshot).unwrap();
    assert_eq!(query(&mut v2, r#"{"op":"len"}"#), r#"{"ok":true,"len":3}"#);
    assert_eq!(
        query(&mut v2, r#"{"op":"get","key":"a"}"#),
        r#"{"ok":true,"value":"x"}"#
    );
    assert_eq!(
        query(&mut v2, r#"{"op":"get","key":"obj"}"#),
        r#"{"ok":true,"value":{"deep":[1,2]}}"#
    );
    assert_eq!(
        apply(&mut v2, r#"{"op":"incr","key":"n","by":2}"#),
        r#"{"ok":true,"value":42}"#
    );
    assert_eq!(
        apply(&mut v2, r#"{"op":"incr","key":"fresh"}"#),
        r#"{"ok":true,"value":1}"#
    );
    assert_eq!(
        apply(&mut v2, r#"{"op":"incr","key":"a"}"#),
        r#"{"ok":false,"error":"incr needs the value to be a signed 64-bit integer","current":"x"}"#
    );

    // No snapshot since the migration: rollback must rebuild from the
    // checkpoint the migration left plus the two incrs logged since.
    let big = format!(
        r#"{{"op":"put","key":"big","value":"{}"}}"#,
        "v".repeat(1 << 20)
    );
    let rejection = v2.apply(big.as_bytes()).unwrap_err();
    assert_eq!(rejection.kind, RejectKind::OutOfFuel, "{rejection}");
    assert_eq!(
        query(&mut v2, r#"{"op":"get","key":"n"}"#),
        r#"{"ok":true,"value":42}"#
    );
    assert_eq!(query(&mut v2, r#"{"op":"len"}"#), r#"{"ok":true,"len":4}"#);
    assert_eq!(
        apply(&mut v2, r#"{"op":"incr","key":"n"}"#),
        r#"{"ok":true,"value":43}"#
    );

    // The state snapshots in kv's format and round-trips through restore.
    let v2_snapshot = v2.snapshot().unwrap();
    assert!(v2_snapshot.starts_with(b"{"), "{v2_snapshot:?}");
    let mut other = kv2.instantiate().unwrap();
    other.restore(&v2_snapshot).unwrap();
    assert_eq!(other.snapshot().unwrap(), v2_snapshot);

    // Every replica migrates to the same bytes.
    let mut replica = host.load(examples::KV2).unwrap().instantiate().unwrap();
    replica
        .migrate_from(&kv.sha256_bytes(), &v1_snapshot)
        .unwrap();
    let mut reference = kv2.instantiate().unwrap();
    reference
        .migrate_from(&kv.sha256_bytes(), &v1_snapshot)
        .unwrap();
    assert_eq!(replica.snapshot().unwrap(), reference.snapshot().unwrap());
}

#[test]
fn refused_migration_is_a_trap_with_the_panic_message_and_changes_nothing() {
    let host = host();
    let kv = host.load(examples::KV).unwrap();
    let mut v1 = kv.instantiate().unwrap();
    apply(&mut v1, r#"{"op":"put","key":"theirs","value":1}"#);
    let v1_snapshot = v1.snapshot().unwrap();

    let trap = host.load(examples::KV_MIGRATE_TRAP).unwrap();
    assert!(trap.has_migrate());
    let mut t = trap.instantiate().unwrap();
    apply(&mut t, r#"{"op":"put","key":"mine","value":true}"#);
    let before = t.snapshot().unwrap();
    apply(&mut t, r#"{"op":"put","key":"logged","value":2}"#);

    let rejection = t
        .migrate_from(&kv.sha256_bytes(), &v1_snapshot)
        .unwrap_err();
    assert_eq!(rejection.kind, RejectKind::Trap);
    assert!(rejection.message.contains("refuses"), "{rejection}");
    assert!(
        rejection
            .message
            .starts_with("guest panicked: kv_migrate_trap refuses every migration (at "),
        "{rejection}"
    );
    // Unchanged: the state, and its checkpoint + log (a later trap rolls
    // back to it, not to anything the migration touched).
    assert_eq!(
        query(&mut t, r#"{"op":"get","key":"theirs"}"#),
        r#"{"ok":true,"value":null}"#
    );
    assert_eq!(
        query(&mut t, r#"{"op":"get","key":"logged"}"#),
        r#"{"ok":true,"value":2}"#
    );
    let mut reference = trap.instantiate().unwrap();
    reference.restore(&before).unwrap();
    apply(&mut reference, r#"{"op":"put","key":"logged","value":2}"#);
    assert_eq!(t.snapshot().unwrap(), reference.snapshot().unwrap());

    // The same refusal on every host; plain restore still works.
    let mut elsewhere = host_with(HostConfig::default())
        .load(examples::KV_MIGRATE_TRAP)
        .unwrap()
        .instantiate()
        .unwrap();
    assert_eq!(
        elsewhere.migrate_from(&kv.sha256_bytes(), &v1_snapshot),
        Err(rejection)
    );
    t.restore(&v1_snapshot).unwrap();
    assert_eq!(
        query(&mut t, r#"{"op":"get","key":"theirs"}"#),
        r#"{"ok":true,"value":1}"#
    );
}

#[test]
fn downgrade_from_kv2_to_kv_keeps_the_data() {
    let host = host();
    let kv2 = host.load(examples::KV2).unwrap();
    let mut v2 = kv2.instantiate().unwrap();
    apply(&mut v2, r#"{"op":"incr","key":"n"}"#);
    let v2_snapshot = v2.snapshot().unwrap();
    let mut v1 = instance(&host, examples::KV);
    apply(&mut v1, r#"{"op":"put","key":"gone","value":1}"#);
    // kv uses the SDK's default migrate, i.e. its restore, and kv2 writes
    // kv's format: a rollback keeps what kv2 wrote.
    v1.migrate_from(&kv2.sha256_bytes(), &v2_snapshot).unwrap();
    assert_eq!(query(&mut v1, r#"{"op":"len"}"#), r#"{"ok":true,"len":1}"#);
    assert_eq!(
        query(&mut v1, r#"{"op":"get","key":"n"}"#),
        r#"{"ok":true,"value":1}"#
    );
    assert!(apply(&mut v1, r#"{"op":"incr","key":"n"}"#).contains("unknown op"));
}

/// A WAT guest whose state is a byte string: `dorado_restore` (and the echo
/// `dorado_migrate`) set it to their input, `dorado_query` and
/// `dorado_snapshot` return it, `dorado_apply` always traps. `migrate` is the
/// `dorado_migrate` export, or `None` for a module without one.
fn wat_state_guest(migrate: Option<&str>) -> Vec<u8> {
    let migrate = migrate
        .map(|body| {
            format!(r#"(func (export "dorado_migrate") (param i32 i32) (result i32) {body})"#)
        })
        .unwrap_or_default();
    let source = format!(
        r#"(module
          (memory (export "memory") 1)
          (func $set (param $ptr i32) (param $len i32)
            (memory.copy (i32.const 0x100) (local.get $ptr) (local.get $len))
            (i32.store (i32.const 0) (local.get $len)))
          (func $state (result i64)
            (i64.or (i64.shl (i64.const 0x100) (i64.const 32))
                    (i64.extend_i32_u (i32.load (i32.const 0)))))
          (func (export "dorado_abi_version") (result i32) (i32.const 1))
          (func (export "dorado_alloc") (param i32) (result i32) (i32.const 0x8000))
          (func (export "dorado_apply") (param i32 i32) (result i64) (unreachable))
          (func (export "dorado_query") (param i32 i32) (result i64) (call $state))
          (func (export "dorado_snapshot") (result i64) (call $state))
          (func (export "dorado_restore") (param i32 i32) (result i32)
            (call $set (local.get 0) (local.get 1)) (i32.const 0))
          {migrate})"#
    );
    wat::parse_str(&source).expect("valid wat")
}

const ECHO_MIGRATE: &str = "(call $set (local.get 0) (local.get 1)) (i32.const 0)";

#[test]
fn module_without_dorado_migrate_falls_back_to_restore() {
    let module = host().load(&wat_state_guest(None)).unwrap();
    assert!(!module.has_migrate());
    let mut i = module.instantiate().unwrap();
    i.migrate_from(&[0xab; 32], b"old state").unwrap();
    // dorado_restore got exactly the snapshot, without the hash.
    assert_eq!(i.query(b"").unwrap(), b"old state");
    assert_eq!(i.apply(b"x").unwrap_err().kind, RejectKind::Trap);
    assert_eq!(i.query(b"").unwrap(), b"old state");
}

#[test]
fn dorado_migrate_gets_the_old_hash_then_the_snapshot_and_rollback_uses_the_new_state() {
    let module = host().load(&wat_state_guest(Some(ECHO_MIGRATE))).unwrap();
    assert!(module.has_migrate());
    let mut i = module.instantiate().unwrap();
    let from: [u8; 32] = std::array::from_fn(|n| n as u8);
    i.migrate_from(&from, b"old state").unwrap();
    let mut expected = from.to_vec();
    expected.extend_from_slice(b"old state");
    assert_eq!(i.query(b"").unwrap(), expected);
    // The trap forces a rebuild from the checkpoint through dorado_restore:
    // it must be the migrated state, not the foreign snapshot.
    assert_eq!(i.apply(b"x").unwrap_err().kind, RejectKind::Trap);
    assert_eq!(i.query(b"").unwrap(), expected);
    // An empty snapshot still carries the hash.
    i.migrate_from(&from, b"").unwrap();
    assert_eq!(i.query(b"").unwrap(), from);
}

#[test]
fn migration_faults_are_classified_like_restore_and_change_nothing() {
    let host = host_with(HostConfig {
        fuel_per_snapshot: 1_000_000,
        ..HostConfig::default()
    });
    for (body, kind, message) in [
        (
            "(loop $l (br $l)) (i32.const 0)",
            RejectKind::OutOfFuel,
            "fuel budget of 1000000 exhausted".to_owned(),
        ),
        (
            "(drop (memory.grow (i32.const 0x8000))) (i32.const 0)",
            RejectKind::MemoryLimit,
            format!(
                "guest memory would exceed the cap of {} bytes",
                HostConfig::default().memory_limit
            ),
        ),
        (
            "(i32.const 1)",
            RejectKind::BadReply,
            "dorado_migrate returned status 1".to_owned(),
        ),
        (
            "(unreachable)",
            RejectKind::Trap,
            "wasm `unreachable` instruction executed".to_owned(),
        ),
    ] {
        let mut i = host
            .load(&wat_state_guest(Some(body)))
            .unwrap()
            .instantiate()
            .unwrap();
        i.restore(b"before").unwrap();
        let rejection = i.migrate_from(&[1; 32], b"old state").unwrap_err();
        assert_eq!(
            (rejection.kind, rejection.message),
            (kind, message),
            "{body}"
        );
        assert_eq!(i.query(b"").unwrap(), b"before", "{body}");
        assert_eq!(i.apply(b"x").unwrap_err().kind, RejectKind::Trap);
        assert_eq!(i.query(b"").unwrap(), b"before", "{body}");
    }
}
