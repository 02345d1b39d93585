//! `dorado inspect` and `dorado try`, run as the built binary.

use dorado_testkit::examples;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dorado(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dorado"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dorado binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("dorado finishes")
}

fn example(name: &str) -> String {
    Path::new(examples::wasm_dir())
        .join(format!("{name}.wasm"))
        .to_string_lossy()
        .into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A module file in a temp dir, from WAT.
fn wat_file(dir: &tempfile::TempDir, name: &str, source: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, wat::parse_str(source).expect("valid wat")).expect("write module");
    path
}

const ABI_TAIL: &str = r#"
  (func (export "dorado_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dorado_apply") (param i32 i32) (result i64) (i64.const 0))
  (func (export "dorado_query") (param i32 i32) (result i64) (i64.const 0))
  (func (export "dorado_snapshot") (result i64) (i64.const 0))
  (func (export "dorado_restore") (param i32 i32) (result i32) (i32.const 0))"#;

#[test]
fn inspect_prints_version_exports_size_and_sha256() {
    let path = example("kv");
    let out = dorado(&["inspect", &path], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    let sha = hex::encode(Sha256::digest(examples::KV));
    assert!(report.contains("abi version: 1\n"), "{report}");
    assert!(
        report.contains(&format!("sha256:      {sha}\n")),
        "{report}"
    );
    assert!(
        report.contains(&format!("size:        {} bytes\n", examples::KV.len())),
        "{report}"
    );
    assert!(report.contains("imports:     none\n"), "{report}");
    for export in [
        "dorado_apply        func(i32, i32) -> i64",
        "dorado_snapshot     func() -> i64",
        "memory              memory(",
    ] {
        assert!(report.contains(export), "{export} missing from\n{report}");
    }
}

#[test]
fn inspect_refuses_invalid_modules_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let missing_export = wat_file(
        &dir,
        "missing.wasm",
        &format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "dorado_abi_version") (result i32) (i32.const 1)) {})"#,
            ABI_TAIL.replace(
                r#"(func (export "dorado_query") (param i32 i32) (result i64) (i64.const 0))"#,
                ""
            )
        ),
    );
    let wrong_abi = wat_file(
        &dir,
        "abi7.wasm",
        &format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "dorado_abi_version") (result i32) (i32.const 7)) {ABI_TAIL})"#
        ),
    );
    let wasi = wat_file(
        &dir,
        "wasi.wasm",
        &format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "dorado_abi_version") (result i32) (i32.const 1)) {ABI_TAIL})"#
        ),
    );
    let absent = dir.path().join("absent.wasm");

    for (path, expected) in [
        (&garbage, "not a valid wasm module"),
        (
            &missing_export,
            "missing export dorado_query: expected func(i32, i32) -> i64",
        ),
        (
            &wrong_abi,
            "unsupported abi version 7: this host speaks version 1",
        ),
        (
            &wasi,
            "forbidden import wasi_snapshot_preview1.fd_write (function)",
        ),
        (&absent, "cannot read"),
    ] {
        let out = dorado(&["inspect", path.to_str().unwrap()], "");
        let err = stderr(&out);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            err.contains(expected),
            "{}: expected {expected:?} in {err}",
            path.display()
        );
    }
}

#[test]
fn try_applies_lines_answers_queries_and_continues_after_rejections() {
    let input = concat!(
        "{\"op\":\"put\",\"key\":\"a\",\"value\":1}\n",
        "?{\"op\":\"get\",\"key\":\"a\"}\n",
        "\n",
        "not json\r\n",
        "{\"op\":\"put\",\"key\":\"b\",\"value\":\"x\"}\n",
        "?{\"op\":\"len\"}",
    );
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("kv.snapshot");
    let out = dorado(
        &[
            "try",
            &example("kv"),
            "--snapshot",
            snapshot.to_str().unwrap(),
        ],
        input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        concat!(
            "{\"ok\":true}\n",
            "{\"ok\":true,\"value\":1}\n",
            "{\"ok\":false,\"error\":\"malformed request: expected ident at line 1 column 2\"}\n",
            "{\"ok\":true}\n",
            "{\"ok\":true,\"len\":2}\n",
        )
    );
    assert_eq!(
        std::fs::read_to_string(&snapshot).unwrap(),
        r#"{"a":1,"b":"x"}"#
    );
}

#[test]
fn try_prints_rejections_and_keeps_going() {
    let input = concat!(
        "{\"op\":\"set\",\"value\":1}\n",
        "{\"op\":\"loop\",\"set\":2}\n",
        "{\"op\":\"panic\",\"set\":3}\n",
        "{\"op\":\"alloc\",\"mb\":64}\n",
        "?{\"op\":\"loop\"}\n",
        "?{\"op\":\"get\"}\n",
        "{\"op\":\"set\",\"value\":4}\n",
        "?{\"op\":\"get\"}\n",
    );
    let out = dorado(
        &[
            "try",
            &example("faulty"),
            "--fuel",
            "5000000",
            "--memory-mib",
            "32",
        ],
        input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(lines[0], r#"{"ok":true}"#);
    assert_eq!(
        lines[1],
        "rejected: out of fuel: fuel budget of 5000000 exhausted"
    );
    assert!(
        lines[2].starts_with("rejected: trap: guest panicked: faulty guest asked to panic (at "),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("rejected: memory limit: "),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4],
        "rejected: out of fuel: fuel budget of 5000000 exhausted"
    );
    assert_eq!(lines[5], r#"{"ok":true,"value":1,"applied":1}"#);
    assert_eq!(lines[6], r#"{"ok":true}"#);
    assert_eq!(lines[7], r#"{"ok":true,"value":4,"applied":2}"#);
}

#[test]
fn try_refuses_an_invalid_module_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0\x99").unwrap();
    let out = dorado(&["try", garbage.to_str().unwrap()], "{}\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.contains("is not a valid dorado module: not a valid wasm module"),
        "{err}"
    );
}
