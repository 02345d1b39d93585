//! Writes the seed corpora in `corpus/<target>/`. Regenerate with
//! `cargo test --lib -- --ignored write_seed_corpora` (from `fuzz/`), after a
//! format change or when the golden AdmissionReviews change.

use std::fs;
use std::path::{Path, PathBuf};

use dorado::examples;
use dorado_core::session::{Outcome, Session, Sessions};
use dorado_core::{ClientTag, Command, Entry, SnapshotData, StateMachine};
use wasm_encoder::{
    CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    Instruction, MemorySection, MemoryType, TypeSection, ValType,
};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    dir
}

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(corpus(target).join(name), bytes).expect("write seed");
}

fn command(id: Option<(&str, u64)>, payload: &[u8]) -> Command {
    Command {
        client: id.map(|(id, seq)| ClientTag { id: id.into(), seq }),
        payload: payload.to_vec(),
    }
}

fn entries() {
    let put = br#"{"op":"put","key":"a","value":1}"#;
    let seeds = [
        ("noop", Entry::Noop),
        ("empty-batch", Entry::Batch(vec![])),
        (
            "batch-two",
            Entry::Batch(vec![command(Some(("c1", 7)), put), command(None, b"")]),
        ),
        (
            "batch-long-id",
            Entry::Batch(vec![command(Some((&"x".repeat(255), u64::MAX)), put)]),
        ),
        (
            "batch-three",
            Entry::Batch(vec![
                command(Some(("web-1", 1)), put),
                command(Some(("web-1", 2)), br#"{"op":"get","key":"a"}"#),
                command(Some(("web-2", 1)), br#"{"op":"delete","key":"a"}"#),
            ]),
        ),
    ];
    for (name, entry) in seeds {
        write("entry_decode", name, entry.encode().expect("encode seed"));
    }
}

fn snapshots() {
    let mut kv = crate::host()
        .load(examples::KV)
        .expect("kv loads")
        .instantiate()
        .expect("kv instantiates");
    kv.apply(br#"{"op":"put","key":"a","value":1}"#).unwrap();
    kv.apply(br#"{"op":"put","key":"b","value":"x"}"#).unwrap();
    let state = kv.snapshot().expect("kv snapshot");
    let mut sessions = Sessions::default();
    sessions.insert(
        "a".into(),
        Session {
            seq: 3,
            last_index: 9,
            outcome: Outcome::Reply(b"{\"ok\":true}".to_vec()),
        },
    );
    sessions.insert(
        "b".into(),
        Session {
            seq: 1,
            last_index: 2,
            outcome: Outcome::Rejected("trap: guest panicked".into()),
        },
    );
    let empty = SnapshotData {
        index: 0,
        hash: [0; 32],
        module_sha256: String::new(),
        sessions: Sessions::default(),
        state: vec![],
    };
    let full = SnapshotData {
        index: 42,
        hash: [7; 32],
        module_sha256: "ab".repeat(32),
        sessions,
        state,
    };
    write("snapshot_decode", "empty", empty.encode().unwrap());
    write("snapshot_decode", "kv-two-sessions", full.encode().unwrap());
}

fn headers() {
    let seeds: [(&str, &str); 6] = [
        ("none", "content-type: application/json\r\n\r\n"),
        ("both", "dorado-client-id: web-1\r\ndorado-seq: 7\r\n\r\n"),
        ("only-id", "dorado-client-id: web-1\r\n\r\n"),
        ("zero-seq", "dorado-client-id: a\r\ndorado-seq: 0\r\n\r\n"),
        (
            "repeated",
            "dorado-client-id: a\r\ndorado-client-id: b\r\ndorado-seq: 18446744073709551615\r\n\r\n",
        ),
        ("spaces", "dorado-client-id: has space\r\ndorado-seq:  3 \r\n\r\n"),
    ];
    for (name, text) in seeds {
        write("client_tag", name, text);
    }
}

fn requests() {
    let seeds: [(&str, &str); 10] = [
        (
            "command",
            "POST /v1/commands HTTP/1.1\r\nhost: r0\r\ndorado-client-id: web-1\r\ndorado-seq: 1\r\ncontent-type: application/json\r\n\r\n{\"op\":\"put\",\"key\":\"a\",\"value\":1}",
        ),
        ("command-empty", "POST /v1/commands HTTP/1.1\r\n\r\n"),
        (
            "command-too-large",
            "POST /v1/commands HTTP/1.1\r\ncontent-length: 80\r\n\r\n01234567890123456789012345678901234567890123456789012345678901234567890123456789",
        ),
        (
            "command-bad-seq",
            "POST /v1/commands HTTP/1.1\r\ndorado-client-id: a\r\ndorado-seq: -1\r\n\r\nx",
        ),
        (
            "query-stale",
            "POST /v1/query?consistency=stale HTTP/1.1\r\n\r\n{\"op\":\"get\",\"key\":\"a\"}",
        ),
        (
            "query-bad-consistency",
            "POST /v1/query?consistency=eventual HTTP/1.1\r\n\r\n{}",
        ),
        ("status", "GET /v1/status HTTP/1.1\r\nhost: r0\r\n\r\n"),
        ("healthz", "GET /healthz HTTP/1.1\r\n\r\n"),
        ("readyz-head", "HEAD /readyz HTTP/1.1\r\n\r\n"),
        ("wrong-method", "DELETE /v1/commands HTTP/1.1\r\n\r\n"),
    ];
    for (name, text) in seeds {
        write("api_router", name, text);
    }
    write("api_router", "not-found", "GET /v2/metrics?x=%zz HTTP/1.1\r\n\r\n");
    write("api_router", "snapshot", "GET /v1/snapshot HTTP/1.1\r\n\r\n");
}

/// A hand-made guest: `abi` is what `dorado_abi_version` returns; replies
/// echo the input; optionally it imports a function (which is refused).
fn guest(abi: i32, import: bool) -> Vec<u8> {
    const I32: ValType = ValType::I32;
    const I64: ValType = ValType::I64;
    let mut types = TypeSection::new();
    types.ty().function([], [I32]); // 0: () -> i32
    types.ty().function([I32], [I32]); // 1: (i32) -> i32
    types.ty().function([I32, I32], [I64]); // 2: (i32, i32) -> i64
    types.ty().function([], [I64]); // 3: () -> i64
    types.ty().function([I32, I32], [I32]); // 4: (i32, i32) -> i32
    let mut imports = ImportSection::new();
    if import {
        imports.import("env", "now", EntityType::Function(3));
    }
    let base = u32::from(import);
    let echo = |f: &mut Function| {
        f.instruction(&Instruction::LocalGet(0));
        f.instruction(&Instruction::I64ExtendI32U);
        f.instruction(&Instruction::I64Const(32));
        f.instruction(&Instruction::I64Shl);
        f.instruction(&Instruction::LocalGet(1));
        f.instruction(&Instruction::I64ExtendI32U);
        f.instruction(&Instruction::I64Or);
    };
    let mut bodies: Vec<(&str, u32, Function)> = Vec::new();
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(abi));
    bodies.push(("dorado_abi_version", 0, f));
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(1024));
    bodies.push(("dorado_alloc", 1, f));
    for name in ["dorado_apply", "dorado_query"] {
        let mut f = Function::new([]);
        echo(&mut f);
        bodies.push((name, 2, f));
    }
    let mut f = Function::new([]);
    f.instruction(&Instruction::I64Const(0));
    bodies.push(("dorado_snapshot", 3, f));
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(0));
    bodies.push(("dorado_restore", 4, f));
    let mut functions = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    for (i, (name, ty, mut body)) in bodies.into_iter().enumerate() {
        functions.function(ty);
        exports.export(name, ExportKind::Func, base + i as u32);
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(16),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    exports.export("memory", ExportKind::Memory, 0);
    let mut module = wasm_encoder::Module::new();
    module.section(&types);
    if import {
        module.section(&imports);
    }
    module
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}

fn modules() {
    for (name, bytes) in examples::ALL {
        write("host_load", &format!("{name}.wasm"), bytes);
    }
    write("host_load", "echo.wasm", guest(1, false));
    write("host_load", "abi-version-2.wasm", guest(2, false));
    write("host_load", "imports-env.wasm", guest(1, true));
    write("host_load", "abi-shape-unreachable.wasm", crate::abi_shape());
    write("host_load", "empty-module.wasm", b"\0asm\x01\0\0\0");
    assert!(crate::host().load(&guest(1, false)).is_ok(), "echo guest loads");
}

/// wasm-smith reads any bytes; these are fixed pseudo-random blobs of a few
/// sizes (xorshift), so a run starts with a spread of module shapes.
fn smith() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, len) in [64usize, 256, 1024, 4096].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        write("host_smith", &format!("random-{i}-{len}"), bytes);
    }
}

fn scripts() {
    let seeds: [(&str, &[u8]); 6] = [
        (
            "kv",
            b"kv\napply {\"op\":\"put\",\"key\":\"a\",\"value\":1}\napply {\"op\":\"cas\",\"key\":\"a\",\"expected\":1,\"value\":2}\nquery {\"op\":\"get\",\"key\":\"a\"}\nsnapshot\napply {\"op\":\"delete\",\"key\":\"a\"}\nquery {\"op\":\"len\"}\nrestore-own\n",
        ),
        (
            "bank",
            b"bank\napply {\"op\":\"open\",\"account\":\"a\",\"balance\":100}\napply {\"op\":\"open\",\"account\":\"b\",\"balance\":0}\napply {\"op\":\"transfer\",\"from\":\"a\",\"to\":\"b\",\"amount\":30}\napply {\"op\":\"transfer\",\"from\":\"b\",\"to\":\"a\",\"amount\":1000}\nquery {\"op\":\"total\"}\nrestore {\"a\":1}\nsnapshot\n",
        ),
        (
            "counter",
            b"counter\napply {\"op\":\"add\",\"n\":5}\napply {\"op\":\"add\",\"n\":9223372036854775807}\napply {\"op\":\"add\",\"n\":-5}\nquery {\"op\":\"get\"}\nrestore garbage\n",
        ),
        (
            "faulty-rollback",
            b"faulty\napply {\"op\":\"set\",\"value\":1}\napply {\"op\":\"panic\",\"set\":2}\napply {\"op\":\"loop\",\"set\":3}\napply {\"op\":\"alloc\",\"set\":4}\napply {\"op\":\"recurse\",\"set\":5}\nquery {\"op\":\"get\"}\nsnapshot\n",
        ),
        (
            "faulty-queries",
            b"faulty\napply {\"op\":\"set\",\"value\":\"x\"}\nquery {\"op\":\"panic\"}\nquery {\"op\":\"loop\"}\napply {\"op\":\"alloc\",\"mb\":4,\"set\":[1,2]}\nrestore-own\n",
        ),
        (
            "generated",
            b"kv\napply* \x00\x01\x02\x03\x04\x05\x06\x07\napply* \x03\x02\x01\nquery* \x01\x00\napply \xff\xfe\nsnapshot\n",
        ),
    ];
    for (name, text) in seeds {
        write("host_examples", name, text);
    }
}

fn admission_reviews() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook/tests/golden");
    let mut names: Vec<PathBuf> = fs::read_dir(&golden)
        .expect("webhook golden dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = name.trim_end_matches(".request.json");
        let bytes = fs::read(&path).expect("read golden request");
        write("webhook_review", &format!("{case}.json"), &bytes);
        let review: serde_json::Value = serde_json::from_slice(&bytes).expect("golden is JSON");
        if let Some(pod) = review.pointer("/request/object").filter(|p| p.is_object()) {
            let pod = serde_json::to_vec_pretty(pod).unwrap();
            write("webhook_mutate", &format!("{case}.json"), pod);
        }
    }
}

#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpora"]
fn write_seed_corpora() {
    entries();
    snapshots();
    headers();
    requests();
    modules();
    smith();
    scripts();
    admission_reviews();
}
