//! Golden tests: captured AdmissionReview requests in `tests/golden/<case>.request.json`,
//! expected responses in `<case>.response.json` (with `response.patch` shown decoded)
//! and, for mutations, the patched pod in `<case>.mutated.json`.
//!
//! Regenerate the expected files after an intended change with
//! `DORADO_UPDATE_GOLDEN=1 cargo test -p dorado-webhook --test golden`, then review the diff.

mod common;

use common::{CaseOutput, cases, golden_dir, read_json, review, run};
use dorado_webhook::Outcome;
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, KeyToPath, Pod, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{Value, json};

fn check_or_update(name: &str, actual: &Value, failures: &mut Vec<String>) {
    let path = golden_dir().join(name);
    let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("DORADO_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, pretty).unwrap();
        return;
    }
    if !path.exists() {
        failures.push(format!(
            "{name}: missing (run with DORADO_UPDATE_GOLDEN=1 to create it)"
        ));
        return;
    }
    let expected = read_json(&path);
    if &expected != actual {
        failures.push(format!(
            "{name}: differs from the golden file\n--- expected\n{}\n--- actual\n{pretty}",
            serde_json::to_string_pretty(&expected).unwrap()
        ));
    }
}

#[test]
fn golden_cases_match() {
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 40, "golden set unexpectedly small: {all:?}");
    for case in &all {
        let out = run(case);
        check_or_update(
            &format!("{case}.response.json"),
            &out.response,
            &mut failures,
        );
        let mutated_path = golden_dir().join(format!("{case}.mutated.json"));
        match &out.mutated {
            Some(pod) => check_or_update(&format!("{case}.mutated.json"), pod, &mut failures),
            None if mutated_path.exists() => {
                failures.push(format!("{case}: no patch, but {case}.mutated.json exists"))
            }
            None => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn uid_is_always_echoed() {
    for case in cases() {
        let out = run(&case);
        assert_eq!(
            out.answer.response.uid,
            review(&case).uid,
            "{case}: uid not echoed"
        );
        assert_eq!(out.answer.kind, "AdmissionReview", "{case}");
        assert_eq!(out.answer.api_version, "admission.k8s.io/v1", "{case}");
    }
}

#[test]
fn case_names_state_their_outcome() {
    for case in cases() {
        let out = run(&case);
        let expected = if case.starts_with("deny-") {
            Outcome::Denied
        } else if case.starts_with("invalid-") {
            Outcome::Invalid
        } else if [
            "no-annotation",
            "opted-out",
            "stray-annotations-without-replicate",
            "already-mutated",
            "update-operation",
            "not-a-pod",
        ]
        .contains(&case.as_str())
        {
            Outcome::Skipped
        } else {
            Outcome::Mutated
        };
        assert_eq!(out.outcome, expected, "{case}: {:#}", out.response);
        assert_eq!(
            out.answer.response.allowed,
            matches!(expected, Outcome::Mutated | Outcome::Skipped),
            "{case}"
        );
        assert_eq!(
            out.patch.is_some(),
            expected == Outcome::Mutated,
            "{case}: patch presence"
        );
        if out.patch.is_some() {
            assert_eq!(
                out.answer.response.patch_type.as_deref(),
                Some("JSONPatch"),
                "{case}"
            );
        }
    }
}

#[test]
fn a_second_pass_yields_no_patch() {
    for case in cases() {
        let CaseOutput {
            mutated: Some(pod), ..
        } = run(&case)
        else {
            continue;
        };
        let body = common::review_for(&pod, "second-pass");
        let again = common::run_body(&body, Some(&pod));
        assert_eq!(
            again.outcome,
            Outcome::Skipped,
            "{case}: {:#}",
            again.response
        );
        assert!(
            again.patch.is_none(),
            "{case}: second pass produced a patch"
        );
        assert!(again.answer.response.allowed, "{case}");
    }
}

/// Where the webhook's marker annotation is.
const STATUS_ANNOTATION: [&str; 3] = ["metadata", "annotations", "dorado.io/status"];

#[test]
fn mutation_is_stable_without_the_marker() {
    // Even if something strips the marker, applying the webhook again converges: the
    // second patch leaves the pod as it was (no duplicated env, ports, mounts or volumes).
    for case in cases() {
        let Some(mut pod) = run(&case).mutated else {
            continue;
        };
        common::remove(&mut pod, &STATUS_ANNOTATION);
        let body = common::review_for(&pod, "again");
        let again = common::run_body(&body, Some(&pod));
        let mut twice = again.mutated.expect("mutated again");
        let mut once = run(&case).mutated.unwrap();
        // Warnings may differ; the pods must not.
        for p in [&mut once, &mut twice] {
            common::remove(p, &STATUS_ANNOTATION);
        }
        assert_eq!(
            once, twice,
            "{case}: re-applying the webhook changed the pod"
        );
    }
}

#[test]
fn dry_run_gets_the_same_answer() {
    // The webhook has no side effects (sideEffects: None), so dryRun changes nothing.
    let real = run("opt-in-statefulset").response;
    let dry = run("dry-run").response;
    assert!(review("dry-run").dry_run);
    let strip = |mut v: Value| {
        common::set(&mut v, &["response", "uid"], Value::Null);
        v
    };
    assert_eq!(strip(real), strip(dry));
}

/// Fields of Kubernetes versions newer than the one `k8s_openapi` is built for here, and
/// `creationTimestamp: null` (absent and `null` are the same to `k8s_openapi`).
#[derive(Deserialize)]
struct Newer {
    metadata: NewerMeta,
    spec: NewerSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewerMeta {
    #[serde(default, deserialize_with = "dorado_webhook::view::present")]
    creation_timestamp: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewerSpec {
    hostname_override: Option<String>,
    containers: Vec<NewerContainer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewerContainer {
    #[serde(default)]
    restart_policy_rules: Vec<RestartRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestartRule {
    exit_codes: ExitCodes,
}

#[derive(Deserialize)]
struct ExitCodes {
    values: Vec<i32>,
}

#[test]
fn unknown_fields_survive() {
    let out = run("unknown-fields-preserved");
    let newer = Newer::deserialize(out.mutated.as_ref().unwrap()).unwrap();
    assert_eq!(newer.spec.hostname_override.as_deref(), Some("kv-zero"));
    assert_eq!(
        newer.spec.containers[0].restart_policy_rules[0]
            .exit_codes
            .values,
        [42]
    );
    let pod = out.pod();
    let resize = pod.spec.unwrap().containers[0]
        .resize_policy
        .clone()
        .unwrap();
    assert_eq!(resize[0].resource_name, "cpu");
    assert_eq!(newer.metadata.creation_timestamp, Some(Value::Null));
}

/// `(op, path)` of every operation of the patch.
fn ops(out: &CaseOutput) -> Vec<(&'static str, String)> {
    let ops = &out.patch.as_ref().expect("a patch").0;
    ops.iter()
        .map(|op| {
            let name = match op {
                PatchOperation::Add(_) => "add",
                PatchOperation::Remove(_) => "remove",
                PatchOperation::Replace(_) => "replace",
                PatchOperation::Move(_) => "move",
                PatchOperation::Copy(_) => "copy",
                PatchOperation::Test(_) => "test",
            };
            (name, op.path().to_string())
        })
        .collect()
}

#[test]
fn keys_with_slash_and_tilde_are_escaped_and_kept() {
    let out = run("keys-with-slash-and-tilde");
    let paths: Vec<String> = ops(&out).into_iter().map(|(_, path)| path).collect();
    assert!(
        paths.contains(&"/metadata/annotations/dorado.io~1status".into()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/metadata/labels/dorado.io~1group".into()),
        "{paths:?}"
    );
    let meta = out.pod().metadata;
    let a = meta.annotations.unwrap();
    let l = meta.labels.unwrap();
    let get = |map: &std::collections::BTreeMap<String, String>, key: &str| map.get(key).cloned();
    assert_eq!(
        get(&a, "example.com/owner~team").as_deref(),
        Some("storage")
    );
    assert_eq!(get(&a, "a/b~c/d").as_deref(), Some("x~y/z"));
    assert_eq!(get(&a, "dorado.io/status").as_deref(), Some("mutated"));
    assert_eq!(
        get(&l, "team.example.com/cost~center").as_deref(),
        Some("db")
    );
    assert_eq!(get(&l, "dorado.io/group").as_deref(), Some("kv"));
}

#[test]
fn missing_parents_are_added() {
    let out = run("missing-parents");
    let ops = ops(&out);
    assert!(ops.contains(&("add", "/metadata/labels".into())), "{ops:?}");
    assert!(ops.contains(&("add", "/spec/volumes".into())), "{ops:?}");
    let pod = out.pod();
    assert_eq!(label(&pod, "dorado.io/group"), Some("kv"));
    assert_eq!(volumes(&pod)[0].name, "dorado-module");
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn spec(pod: &Pod) -> &k8s_openapi::api::core::v1::PodSpec {
    pod.spec.as_ref().expect("a spec")
}

fn volumes(pod: &Pod) -> &[Volume] {
    spec(pod).volumes.as_deref().unwrap_or_default()
}

fn volume<'a>(pod: &'a Pod, name: &str) -> Option<&'a Volume> {
    volumes(pod).iter().find(|v| v.name == name)
}

fn mounts(c: &Container) -> &[VolumeMount] {
    c.volume_mounts.as_deref().unwrap_or_default()
}

fn quantity<'a>(
    list: Option<&'a std::collections::BTreeMap<String, Quantity>>,
    name: &str,
) -> Option<&'a str> {
    list?.get(name).map(|q| q.0.as_str())
}

fn env_of(container: &Container) -> Vec<EnvVar> {
    container.env.clone().expect("an env")
}

fn env_value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter().find(|e| e.name == name)?.value.as_deref()
}

fn env_field_path<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    let from = env.iter().find(|e| e.name == name)?.value_from.as_ref()?;
    Some(from.field_ref.as_ref()?.field_path.as_str())
}

#[test]
fn runtime_container_follows_the_contract() {
    let pod = run("opt-in-statefulset").pod();
    let c = &spec(&pod).containers[0];
    assert_eq!(c.image.as_deref(), Some("dorado/dorado:0.1.0"));
    assert_eq!(c.command, Some(vec!["dorado".to_owned()]));
    assert_eq!(c.args, Some(vec!["run".to_owned()]));
    let env = env_of(c);
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "DORADO_GROUP",
            "DORADO_NAMESPACE",
            "DORADO_REPLICA",
            "DORADO_MODULE",
            "DORADO_ETCD_ENDPOINTS",
            "DORADO_LISTEN",
            "DORADO_ADVERTISE",
            "DORADO_LEASE_TTL",
            "DORADO_SNAPSHOT_EVERY",
            "DORADO_LOG_FORMAT",
            "DORADO_UPGRADE",
        ]
    );
    assert_eq!(env_value(&env, "DORADO_GROUP"), Some("kv"));
    assert_eq!(env_value(&env, "DORADO_REPLICA"), Some("$(POD_NAME)"));
    assert_eq!(
        env_value(&env, "DORADO_MODULE"),
        Some("/etc/dorado/module/kv.wasm")
    );
    assert_eq!(env_value(&env, "DORADO_LISTEN"), Some("0.0.0.0:7070"));
    assert_eq!(env_value(&env, "DORADO_ADVERTISE"), Some("$(POD_IP):7070"));
    // dorado.io/upgrade: "auto" unless the template says "manual".
    assert_eq!(env_value(&env, "DORADO_UPGRADE"), Some("auto"));
    let manual = run("all-overrides").pod();
    assert_eq!(
        env_value(&env_of(&spec(&manual).containers[0]), "DORADO_UPGRADE"),
        Some("manual")
    );
    assert_eq!(
        env_field_path(&env, "DORADO_NAMESPACE"),
        Some("metadata.namespace")
    );
    assert_eq!(env_field_path(&env, "POD_IP"), Some("status.podIP"));
    assert_eq!(
        c.ports.as_ref().unwrap()[0],
        ContainerPort {
            name: Some("dorado".into()),
            container_port: 7070,
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    );
    let http_get = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe.as_ref().unwrap().http_get.clone().unwrap()
    };
    assert_eq!(
        http_get(&c.readiness_probe).path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        http_get(&c.liveness_probe).path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        http_get(&c.readiness_probe).port,
        IntOrString::String("dorado".into())
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let mounts = mounts(c);
    assert!(mounts.contains(&VolumeMount {
        name: "dorado-module".into(),
        mount_path: "/etc/dorado/module".into(),
        read_only: Some(true),
        ..Default::default()
    }));
    // The service-account token the ServiceAccount plugin injected is gone.
    assert!(
        !mounts
            .iter()
            .any(|m| m.name.starts_with("kube-api-access-"))
    );
    assert_eq!(spec(&pod).automount_service_account_token, Some(false));
    let module = volume(&pod, "dorado-module").unwrap();
    let config_map = module.config_map.as_ref().unwrap();
    assert_eq!(config_map.name, "kv");
    assert_eq!(
        config_map.items,
        Some(vec![KeyToPath {
            key: "kv.wasm".into(),
            path: "kv.wasm".into(),
            mode: None
        }])
    );
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(quantity(resources.requests.as_ref(), "cpu"), Some("100m"));
    assert_eq!(quantity(resources.limits.as_ref(), "memory"), Some("512Mi"));
}

fn etcd_tls_parts(pod: &Pod) -> (Option<Volume>, Option<VolumeMount>, Vec<EnvVar>) {
    let volume = volume(pod, "dorado-etcd-client").cloned();
    let c = &spec(pod).containers[0];
    let mount = mounts(c)
        .iter()
        .find(|m| m.name == "dorado-etcd-client")
        .cloned();
    let env = env_of(c)
        .into_iter()
        .filter(|e| e.name.starts_with("DORADO_ETCD_") && e.name != "DORADO_ETCD_ENDPOINTS")
        .collect();
    (volume, mount, env)
}

#[test]
fn https_endpoints_mount_the_etcd_client_secret() {
    for (case, secret) in [
        ("etcd-tls-default-secret", "dorado-etcd-client"),
        ("etcd-tls-named-secret", "kv-etcd-client"),
    ] {
        let pod = run(case).pod();
        let (volume, mount, env) = etcd_tls_parts(&pod);
        let volume = volume.unwrap_or_else(|| panic!("{case}: no secret volume"));
        let source = volume.secret.unwrap();
        assert_eq!(source.secret_name.as_deref(), Some(secret), "{case}");
        let item = |key: &str| KeyToPath {
            key: key.into(),
            path: key.into(),
            mode: None,
        };
        assert_eq!(
            source.items,
            Some(vec![item("ca.crt"), item("tls.crt"), item("tls.key")]),
            "{case}"
        );
        // A whole-volume, read-only mount (no subPath: subPath mounts never see a rotation).
        assert_eq!(
            mount,
            Some(VolumeMount {
                name: "dorado-etcd-client".into(),
                mount_path: "/etc/dorado/etcd-tls".into(),
                read_only: Some(true),
                ..Default::default()
            }),
            "{case}"
        );
        let value = |n: &str| {
            env_value(&env, n)
                .unwrap_or_else(|| panic!("{case}: no {n}"))
                .to_owned()
        };
        assert_eq!(value("DORADO_ETCD_CA"), "/etc/dorado/etcd-tls/ca.crt");
        assert_eq!(value("DORADO_ETCD_CERT"), "/etc/dorado/etcd-tls/tls.crt");
        assert_eq!(value("DORADO_ETCD_KEY"), "/etc/dorado/etcd-tls/tls.key");
    }
    // http:// endpoints (the golden configuration's default): nothing TLS is added.
    for case in ["opt-in-statefulset", "etcd-client-secret-ignored-on-http"] {
        let (volume, mount, env) = etcd_tls_parts(&run(case).pod());
        assert!(
            volume.is_none() && mount.is_none() && env.is_empty(),
            "{case}"
        );
    }
    let deny = |case: &str| run(case).message().to_owned();
    let msg = deny("deny-etcd-client-secret-invalid");
    assert!(
        msg.contains("dorado.io/etcd-client-secret") && msg.contains("DNS-1123 subdomain"),
        "{msg}"
    );
    let msg = deny("deny-etcd-endpoints-mixed-schemes");
    assert!(msg.contains("mixes https:// and http://"), "{msg}");
}

#[test]
fn group_comes_from_the_owner() {
    for (case, group) in [
        ("opt-in-statefulset", "kv"),
        ("opt-in-deployment", "web-api"),
        ("replicaset-without-hash-label", "web-api"),
        ("explicit-group-bare-pod", "orders"),
    ] {
        let pod = run(case).pod();
        let env = env_of(&spec(&pod).containers[0]);
        assert_eq!(env_value(&env, "DORADO_GROUP"), Some(group), "{case}");
        assert_eq!(label(&pod, "dorado.io/group"), Some(group), "{case}");
    }
}

/// The containers of a pod, raw.
#[derive(Deserialize)]
struct RawContainers {
    spec: RawContainersSpec,
}

#[derive(Deserialize)]
struct RawContainersSpec {
    containers: Vec<Value>,
}

#[test]
fn merge_keeps_other_containers_and_entries() {
    let raw = |pod: &Value| RawContainers::deserialize(pod).unwrap().spec.containers;
    let out = run("merge-into-existing-container");
    // The sidecar is byte-for-byte untouched.
    assert_eq!(
        raw(out.mutated.as_ref().unwrap())[0],
        raw(&review("merge-into-existing-container").object)[0]
    );
    let pod = out.pod();
    let app = &spec(&pod).containers[1];
    let env = env_of(app);
    assert_eq!(
        env.iter().filter(|e| e.name == "DORADO_LEASE_TTL").count(),
        1
    );
    assert_eq!(env.iter().filter(|e| e.name == "POD_NAME").count(), 1);
    assert!(env.iter().any(|e| e.name == "RUST_LOG"));
    let ports: Vec<&str> = app
        .ports
        .iter()
        .flatten()
        .map(|p| p.name.as_deref().unwrap())
        .collect();
    assert_eq!(ports, ["dorado", "admin"]);
    let resources = app.resources.as_ref().unwrap();
    assert_eq!(
        quantity(resources.requests.as_ref(), "ephemeral-storage"),
        Some("1Gi")
    );
    let sc = app.security_context.as_ref().unwrap();
    let se_linux = sc.se_linux_options.as_ref().unwrap();
    assert_eq!(se_linux.level.as_deref(), Some("s0:c123,c456"));
    assert_eq!(sc.run_as_user, Some(65532));
    assert!(app.working_dir.is_none());
    // The token volume is still mounted by the sidecar, so it stays.
    assert!(volume(&pod, "kube-api-access-x7k2p").is_some());
    let volumes: Vec<&str> = volumes(&pod).iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        volumes.iter().filter(|v| **v == "dorado-module").count(),
        1,
        "{volumes:?}"
    );
}

#[test]
fn every_denial_names_the_problem_and_the_expected_form() {
    for case in cases().into_iter().filter(|c| c.starts_with("deny-")) {
        let out = run(&case);
        let msg = out.message();
        assert!(!msg.is_empty(), "{case}: empty denial message");
        let names_something = msg.contains("dorado.io/") || msg.contains("spec.containers");
        assert!(
            names_something,
            "{case}: message names no annotation: {msg}"
        );
        assert!(
            msg.contains("expected") || msg.contains("set annotation"),
            "{case}: message gives no expected form: {msg}"
        );
    }
    let several = run("deny-several-problems");
    let msg = several.message();
    for key in [
        "dorado.io/module",
        "dorado.io/port",
        "dorado.io/log-format",
        "dorado.io/upgrade",
    ] {
        assert!(msg.contains(key), "all problems are listed at once: {msg}");
    }
}

#[test]
fn every_warning_case_warns() {
    for (case, needle) in [
        ("module-default-key", "no key given"),
        ("replicaset-without-hash-label", "dorado.io/group"),
        ("first-container-defaulted", "dorado.io/container not set"),
        (
            "unknown-dorado-annotation",
            "unknown annotation dorado.io/replicas",
        ),
        ("status-not-mutated", "dorado.io/status"),
        ("snapshots-disabled", "never truncated"),
        ("stray-annotations-without-replicate", "ignored"),
        ("merge-into-existing-container", "DORADO_LEASE_TTL replaced"),
        ("merge-into-existing-container", "resources.requests.cpu"),
        ("merge-into-existing-container", "workingDir removed"),
        ("not-a-pod", "only mutates v1 Pods"),
        (
            "etcd-client-secret-ignored-on-http",
            "dorado.io/etcd-client-secret ignored",
        ),
    ] {
        let out = run(case);
        let warnings = out
            .answer
            .response
            .warnings
            .unwrap_or_else(|| panic!("{case}: no warnings"));
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "{case}: no warning containing {needle:?} in {warnings:?}"
        );
    }
    // A plain opt-in draws no warning.
    assert!(run("opt-in-statefulset").answer.response.warnings.is_none());
}

#[test]
fn invalid_request_echoes_the_uid() {
    let out = run("invalid-request-missing-operation");
    assert_eq!(out.outcome, Outcome::Invalid);
    assert!(!out.answer.response.allowed);
    assert_eq!(
        out.answer.response.uid,
        review("invalid-request-missing-operation").uid
    );
    let msg = out.message();
    assert!(msg.contains("operation"), "{msg}");
}

#[test]
fn undecodable_bodies_are_errors_not_panics() {
    let cfg = common::config();
    let valid = serde_json::to_vec(&common::request("opt-in-statefulset")).unwrap();
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        br#"{"kind":"AdmissionReview"}"#.to_vec(),
        br#"{"kind":"Pod","apiVersion":"admission.k8s.io/v1","request":{}}"#.to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{}}"#
            .to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":[]}"#.to_vec(),
    ];
    // Every truncation of a valid body.
    for cut in (0..valid.len()).step_by(97) {
        bodies.push(valid[..cut].to_vec());
    }
    for body in bodies {
        match dorado_webhook::review(&body, &cfg) {
            Err(_) => {}
            Ok(r) => assert_eq!(
                r.outcome,
                Outcome::Invalid,
                "{}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    let err = dorado_webhook::review(
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{}}"#,
        &cfg,
    )
    .unwrap_err();
    assert!(err.to_string().contains("admission.k8s.io/v1"), "{err}");
}

#[test]
fn fuzzed_annotations_never_panic() {
    // A cheap deterministic fuzz over annotation values and pod shapes.
    let values = [
        "",
        "true",
        "false",
        "/",
        "~",
        "~1",
        "a/b/c",
        "0",
        "-1",
        "65536",
        "1e3",
        "none",
        "kv/",
        "/kv",
        "http://",
        "https://e:2379",
        "https://e:2379,http://f:2379",
        "ü",
        "\u{0}",
        " true",
        "9999999999999999999999",
        "manual",
    ];
    let keys = [
        "dorado.io/replicate",
        "dorado.io/module",
        "dorado.io/group",
        "dorado.io/container",
        "dorado.io/port",
        "dorado.io/lease-ttl",
        "dorado.io/snapshot-every",
        "dorado.io/etcd-endpoints",
        "dorado.io/etcd-client-secret",
        "dorado.io/log-format",
        "dorado.io/upgrade",
        "dorado.io/protocol",
        "dorado.io/cpu-request",
        "dorado.io/cpu-limit",
        "dorado.io/memory-request",
        "dorado.io/memory-limit",
        "dorado.io/status",
    ];
    let base = review("opt-in-statefulset").object;
    let cfg = common::config();
    for (i, key) in keys.iter().enumerate() {
        for (j, value) in values.iter().enumerate() {
            let mut pod = base.clone();
            common::set(&mut pod, &["metadata", "annotations", key], json!(value));
            if (i + j) % 3 == 0 {
                common::set(
                    &mut pod,
                    &["spec", "containers"],
                    json!([{ "name": value }]),
                );
            }
            let d = dorado_webhook::mutate_pod(&pod, &cfg);
            if let dorado_webhook::Verdict::Mutate(patch) = d.verdict {
                json_patch::patch(&mut pod, &patch).expect("patch applies");
            }
        }
    }
}
