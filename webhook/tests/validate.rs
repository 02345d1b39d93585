//! Schema validation with the real tools: every mutated pod of the golden set and every
//! manifest rendered by `kubectl kustomize` must pass `kubernetes-validate --strict`
//! (PyPI: `pip install kubernetes-validate`) for the oldest supported Kubernetes (1.33) and
//! the newest the tool knows (1.37).
//!
//! Nothing is installed here. When `kubernetes-validate` or `kubectl` is missing the tests
//! print why and pass, except in CI (`CI=true`), where a missing tool is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

/// Golden cases that deliberately carry fields newer than 1.33 (to prove they survive).
const NEWER_THAN_1_33: &[&str] = &["unknown-fields-preserved"];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(tool);
            p.is_file()
        })
    })
}

/// True when the tools are there; otherwise skips (or fails in CI).
fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not found on PATH (install with `pip install kubernetes-validate`; kubectl provides kustomize)",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs kubernetes-validate; fails on any error, and on warnings other than the allowed ones.
fn kubernetes_validate(files: &[PathBuf], version: &str, allowed_warning: Option<&str>) {
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg("-k")
        .arg(version)
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict -k {version} failed:\n{text}"
    );
    for line in text.lines() {
        assert!(!line.starts_with("ERROR"), "{line}");
        if line.starts_with("WARN") {
            let allowed = allowed_warning.is_some_and(|a| line.contains(a));
            assert!(
                allowed,
                "unexpected warning from kubernetes-validate: {line}"
            );
        }
    }
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    assert!(passed > 0, "kubernetes-validate validated nothing:\n{text}");
}

#[test]
fn mutated_golden_pods_pass_kubernetes_validate() {
    if !tools_available(&["kubernetes-validate"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pods = common::mutated_pods();
    assert!(pods.len() >= 15, "too few mutated pods: {}", pods.len());
    let mut all = Vec::new();
    let mut old_ok = Vec::new();
    for (case, pod) in &pods {
        // Pods of a ReplicaSet arrive with only generateName (the API server picks the name
        // after admission); the validator needs a name, so fill it in as the API server will.
        let mut pod = pod.clone();
        let meta = common::typed_pod(&pod).metadata;
        if meta.name.is_none()
            && let Some(prefix) = meta.generate_name
        {
            common::set(
                &mut pod,
                &["metadata", "name"],
                format!("{prefix}x7k2q").into(),
            );
        }
        let pod = &pod;
        let path = dir.path().join(format!("{case}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
        if !NEWER_THAN_1_33.contains(&case.as_str()) {
            old_ok.push(path.clone());
        }
        all.push(path);
    }
    kubernetes_validate(&old_ok, "1.33.0", None);
    kubernetes_validate(&all, "1.37.0", None);
}

#[test]
fn admitted_collision_fixtures_pass_kubernetes_validate() {
    if !tools_available(&["kubernetes-validate"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (file, pod) in common::collision_fixtures() {
        let body = common::review_for(&pod, "fixture");
        let Some(mutated) = common::run_body(&body, Some(&pod)).mutated else {
            continue; // denied
        };
        let path = dir.path().join(file.replace(".yaml", ".json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&mutated).unwrap()).unwrap();
        files.push(path);
    }
    assert!(
        files.len() >= 5,
        "too few admitted fixtures: {}",
        files.len()
    );
    for version in VERSIONS {
        kubernetes_validate(&files, version, None);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// etcd serves clients and peers over TLS with client-certificate authentication, and
/// the webhook's default endpoints are https:// (so runtimes mount the client Secret).
fn check_etcd_tls(name: &str, yaml: &str) {
    for flag in [
        "--listen-client-urls=https://0.0.0.0:2379",
        "--listen-peer-urls=https://0.0.0.0:2380",
        "--client-cert-auth",
        "--peer-client-cert-auth",
        "--trusted-ca-file=/etc/etcd/tls/server/ca.crt",
        "--peer-trusted-ca-file=/etc/etcd/tls/peer/ca.crt",
        "secretName: etcd-server-tls",
        "secretName: etcd-peer-tls",
        "value: https://etcd-0.etcd.dorado-system.svc:2379,https://etcd-1",
    ] {
        assert!(yaml.contains(flag), "{name}: {flag} missing");
    }
    assert!(
        !yaml.contains("=http://etcd-"),
        "{name}: a plain-http etcd URL is left"
    );
}

/// A temporary copy of `manifests/` with what the overlays need generated into it.
fn prepared_manifests() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    dorado_webhook::certs::Generated,
) {
    // Work on a copy: the build products the overlays need (kv.wasm, TLS files) are
    // generated there, never in the source tree.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("manifests");
    copy_dir(&src, &root);
    for example in ["kv", "bank"] {
        let wasm = root.join(format!("examples/{example}/{example}.wasm"));
        if !wasm.exists() {
            // Any bytes do for rendering; the end-to-end tests use the real modules.
            std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
        }
    }
    let generated =
        dorado_webhook::certs::generate("dorado-webhook", "dorado-system", 10, 1).unwrap();
    dorado_webhook::certs::write_files(&root.join("overlays/self-signed/tls"), &generated, true)
        .unwrap();
    let etcd =
        dorado_webhook::certs::generate_etcd("etcd", "etcd-client", "dorado-system", 3, 10, 1)
            .unwrap();
    dorado_webhook::certs::write_etcd_files(
        &root.join("overlays/self-signed/tls/etcd"),
        &etcd,
        true,
    )
    .unwrap();

    (tmp, root, generated)
}

#[test]
fn rendered_manifests_serve_etcd_over_tls() {
    if !tools_available(&["kubectl"]) {
        return;
    }
    let (_tmp, root, _) = prepared_manifests();
    for name in ["base", "overlays/self-signed", "overlays/cert-manager"] {
        check_etcd_tls(name, &kustomize(&root.join(name)));
    }
}

#[test]
fn rendered_manifests_pass_kubernetes_validate() {
    if !tools_available(&["kubernetes-validate", "kubectl"]) {
        return;
    }
    let (tmp, root, generated) = prepared_manifests();
    let out_dir = tmp.path().join("rendered");
    std::fs::create_dir_all(&out_dir).unwrap();
    for (name, allowed_warning) in [
        ("base", None),
        ("overlays/self-signed", None),
        (
            "overlays/cert-manager",
            Some("api version cert-manager.io/v1"),
        ),
        ("examples/kv", None),
        ("examples/bank", None),
    ] {
        let yaml = kustomize(&root.join(name));
        if !name.starts_with("examples/") {
            check_etcd_tls(name, &yaml);
        }
        match name {
            "overlays/self-signed" => {
                let bundle = generated.ca_bundle();
                let flat: String = yaml.split_whitespace().collect();
                assert!(
                    flat.contains(&format!("caBundle:|{bundle}")),
                    "caBundle not set from ca.crt"
                );
            }
            "overlays/cert-manager" => {
                assert!(
                    yaml.contains("cert-manager.io/inject-ca-from: dorado-system/dorado-webhook")
                );
                for secret in ["secretName: etcd-server-tls", "secretName: etcd-peer-tls"] {
                    assert!(
                        yaml.matches(secret).count() >= 2,
                        "{secret}: a Certificate writes what the StatefulSet mounts"
                    );
                }
            }
            "examples/kv" | "examples/bank" => {
                let example = name.trim_start_matches("examples/");
                assert!(yaml.contains(&format!("dorado.io/module: {example}/{example}.wasm")));
                assert!(
                    yaml.contains(&format!("name: {example}\n  namespace: dorado-demo")),
                    "ConfigMap name must be stable"
                );
            }
            _ => {}
        }
        let file = out_dir.join(format!("{}.yaml", name.replace('/', "-")));
        std::fs::write(&file, yaml).unwrap();
        for version in VERSIONS {
            kubernetes_validate(std::slice::from_ref(&file), version, allowed_warning);
        }
    }
}

#[test]
fn annotation_table_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let doc = std::fs::read_to_string(&path).expect("README.md exists");
    for key in dorado_webhook::annotations::KNOWN {
        assert!(
            doc.contains(&format!("`{key}`")),
            "{key} is not documented in the README annotation table"
        );
    }
}
