//! Builds the example guests in `../wasm-examples` (a separate Cargo workspace)
//! so that the runtime always embeds and tests modules built from the current
//! guest sources, never stale `.wasm` files.
//!
//! The nested cargo must not inherit the outer build's environment: the outer
//! `CARGO_TARGET_DIR` would make it wait forever on the lock the outer cargo
//! holds, and RUSTFLAGS / wrappers / `CARGO_BUILD_TARGET` / the jobserver are
//! meant for host code, not for `wasm32-unknown-unknown` guests.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let repo = manifest_dir.parent().unwrap_or(&manifest_dir);
    let examples = repo.join("wasm-examples");
    let target_dir = examples.join("target");
    let wasm_dir = target_dir.join(TARGET).join("release");

    println!("cargo:rerun-if-changed=build.rs");
    watch(&examples);
    println!("cargo:rustc-env=DORADO_WASM_DIR={}", wasm_dir.display());

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if !target_installed(&rustc) {
        fail(&format!(
            "the {TARGET} target is not installed; run `rustup target add {TARGET}`"
        ));
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--locked", "--target", TARGET])
        .current_dir(&examples);
    for (key, _) in env::vars_os() {
        if inherited_build_setting(&key) {
            command.env_remove(&key);
        }
    }
    command
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTC", &rustc);

    match command.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            fail(&format!(
                "building the guests in {} failed ({}); see the cargo output above",
                examples.display(),
                out.status
            ));
        }
        Err(e) => fail(&format!(
            "could not run {}: {e}",
            Path::new(&cargo).display()
        )),
    }
}

/// Re-run when anything in the guest workspace changes, except its build output.
fn watch(examples: &Path) {
    let Ok(entries) = std::fs::read_dir(examples) else {
        fail(&format!("guest workspace {} not found", examples.display()));
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
}

/// Environment the outer cargo sets or honours that must not leak into the
/// guest build. Registry, network and terminal settings are kept.
fn inherited_build_setting(key: &OsStr) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const DROP: [&str; 9] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTC_LINKER",
        "MAKEFLAGS",
        "MFLAGS",
        "NUM_JOBS",
    ];
    (key.starts_with("CARGO") && !KEEP.iter().any(|k| key.starts_with(k))) || DROP.contains(&key)
}

fn target_installed(rustc: &OsStr) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
