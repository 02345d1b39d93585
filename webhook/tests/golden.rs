//! Golden tests: captured AdmissionReview requests in `tests/golden/<case>.request.json`,
//! expected responses in `<case>.response.json` (with `response.patch` shown decoded)
//! and, for mutations, the patched pod in `<case>.mutated.json`.
//!
//! Regenerate the expected files after an intended change with
//! `DORADO_UPDATE_GOLDEN=1 cargo test -p dorado-webhook --test golden`, then review the diff.

mod common;

use common::{CaseOutput, cases, golden_dir, read_json, request, run};
use dorado_webhook::Outcome;
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
        let req = request(&case);
        let out = run(&case);
        assert_eq!(
            out.response["response"]["uid"], req["request"]["uid"],
            "{case}: uid not echoed"
        );
        assert_eq!(out.response["kind"], "AdmissionReview", "{case}");
        assert_eq!(out.response["apiVersion"], "admission.k8s.io/v1", "{case}");
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
        let allowed = out.response["response"]["allowed"].as_bool().unwrap();
        assert_eq!(
            allowed,
            matches!(expected, Outcome::Mutated | Outcome::Skipped),
            "{case}"
        );
        assert_eq!(
            out.patch.is_some(),
            expected == Outcome::Mutated,
            "{case}: patch presence"
        );
        if out.patch.is_some() {
            assert_eq!(out.response["response"]["patchType"], "JSONPatch", "{case}");
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
        assert_eq!(again.response["response"]["allowed"], true);
    }
}

#[test]
fn mutation_is_stable_without_the_marker() {
    // Even if something strips the marker, applying the webhook again converges: the
    // second patch leaves the pod as it was (no duplicated env, ports, mounts or volumes).
    for case in cases() {
        let Some(mut pod) = run(&case).mutated else {
            continue;
        };
        pod["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("dorado.io/status");
        let body = common::review_for(&pod, "again");
        let again = common::run_body(&body, Some(&pod));
        let mut twice = again.mutated.expect("mutated again");
        let mut once = run(&case).mutated.unwrap();
        // Warnings may differ; the pods must not.
        for p in [&mut once, &mut twice] {
            p["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("dorado.io/status");
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
    assert_eq!(request("dry-run")["request"]["dryRun"], true);
    let strip = |mut v: Value| {
        v["response"]["uid"] = Value::Null;
        v
    };
    assert_eq!(strip(real), strip(dry));
}

#[test]
fn unknown_fields_survive() {
    let pod = run("unknown-fields-preserved").mutated.unwrap();
    assert_eq!(pod["spec"]["hostnameOverride"], "kv-zero");
    assert_eq!(
        pod["spec"]["containers"][0]["restartPolicyRules"][0]["exitCodes"]["values"],
        json!([42])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resizePolicy"][0]["resourceName"],
        "cpu"
    );
    assert_eq!(pod["metadata"]["creationTimestamp"], Value::Null);
    assert!(pod["metadata"].get("creationTimestamp").is_some());
}

#[test]
fn keys_with_slash_and_tilde_are_escaped_and_kept() {
    let out = run("keys-with-slash-and-tilde");
    let patch = serde_json::to_value(out.patch.unwrap()).unwrap();
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/dorado.io~1status"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/metadata/labels/dorado.io~1group"),
        "{paths:?}"
    );
    let pod = out.mutated.unwrap();
    let a = &pod["metadata"]["annotations"];
    assert_eq!(a["example.com/owner~team"], "storage");
    assert_eq!(a["a/b~c/d"], "x~y/z");
    assert_eq!(a["dorado.io/status"], "mutated");
    assert_eq!(
        pod["metadata"]["labels"]["team.example.com/cost~center"],
        "db"
    );
    assert_eq!(pod["metadata"]["labels"]["dorado.io/group"], "kv");
}

#[test]
fn missing_parents_are_added() {
    let out = run("missing-parents");
    let patch = serde_json::to_value(out.patch.unwrap()).unwrap();
    let ops: Vec<(&str, &str)> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| (op["op"].as_str().unwrap(), op["path"].as_str().unwrap()))
        .collect();
    assert!(ops.contains(&("add", "/metadata/labels")), "{ops:?}");
    assert!(ops.contains(&("add", "/spec/volumes")), "{ops:?}");
    let pod = out.mutated.unwrap();
    assert_eq!(pod["metadata"]["labels"]["dorado.io/group"], "kv");
    assert_eq!(pod["spec"]["volumes"][0]["name"], "dorado-module");
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[test]
fn runtime_container_follows_the_contract() {
    let pod = run("opt-in-statefulset").mutated.unwrap();
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "dorado/dorado:0.1.0");
    assert_eq!(c["command"], json!(["dorado"]));
    assert_eq!(c["args"], json!(["run"]));
    let env = env_of(c);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
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
        ]
    );
    let value = |n: &str| env.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(value("DORADO_GROUP")["value"], "kv");
    assert_eq!(value("DORADO_REPLICA")["value"], "$(POD_NAME)");
    assert_eq!(
        value("DORADO_MODULE")["value"],
        "/etc/dorado/module/kv.wasm"
    );
    assert_eq!(value("DORADO_LISTEN")["value"], "0.0.0.0:7070");
    assert_eq!(value("DORADO_ADVERTISE")["value"], "$(POD_IP):7070");
    assert_eq!(
        value("DORADO_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        value("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        c["ports"][0],
        json!({"name": "dorado", "containerPort": 7070, "protocol": "TCP"})
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "dorado");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(
        &json!({"name": "dorado-module", "mountPath": "/etc/dorado/module", "readOnly": true})
    ));
    // The service-account token the ServiceAccount plugin injected is gone.
    assert!(
        !mounts
            .iter()
            .any(|m| m["name"].as_str().unwrap().starts_with("kube-api-access-"))
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let module = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dorado-module")
        .unwrap();
    assert_eq!(module["configMap"]["name"], "kv");
    assert_eq!(
        module["configMap"]["items"],
        json!([{"key": "kv.wasm", "path": "kv.wasm"}])
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
}

fn etcd_tls_parts(pod: &Value) -> (Option<Value>, Option<Value>, Vec<(String, Value)>) {
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dorado-etcd-client")
        .cloned();
    let c = &pod["spec"]["containers"][0];
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "dorado-etcd-client")
        .cloned();
    let env = env_of(c)
        .into_iter()
        .filter(|(n, _)| n.starts_with("DORADO_ETCD_") && n != "DORADO_ETCD_ENDPOINTS")
        .collect();
    (volume, mount, env)
}

#[test]
fn https_endpoints_mount_the_etcd_client_secret() {
    for (case, secret) in [
        ("etcd-tls-default-secret", "dorado-etcd-client"),
        ("etcd-tls-named-secret", "kv-etcd-client"),
    ] {
        let pod = run(case).mutated.unwrap();
        let (volume, mount, env) = etcd_tls_parts(&pod);
        let volume = volume.unwrap_or_else(|| panic!("{case}: no secret volume"));
        assert_eq!(volume["secret"]["secretName"], secret, "{case}");
        assert_eq!(
            volume["secret"]["items"],
            json!([
                {"key": "ca.crt", "path": "ca.crt"},
                {"key": "tls.crt", "path": "tls.crt"},
                {"key": "tls.key", "path": "tls.key"}
            ]),
            "{case}"
        );
        // A whole-volume, read-only mount (no subPath: subPath mounts never see a rotation).
        assert_eq!(
            mount,
            Some(
                json!({"name": "dorado-etcd-client", "mountPath": "/etc/dorado/etcd-tls", "readOnly": true})
            ),
            "{case}"
        );
        let value = |n: &str| {
            env.iter()
                .find(|(k, _)| k == n)
                .map(|(_, e)| e["value"].clone())
                .unwrap_or_else(|| panic!("{case}: no {n}"))
        };
        assert_eq!(value("DORADO_ETCD_CA"), "/etc/dorado/etcd-tls/ca.crt");
        assert_eq!(value("DORADO_ETCD_CERT"), "/etc/dorado/etcd-tls/tls.crt");
        assert_eq!(value("DORADO_ETCD_KEY"), "/etc/dorado/etcd-tls/tls.key");
    }
    // http:// endpoints (the golden configuration's default): nothing TLS is added.
    for case in ["opt-in-statefulset", "etcd-client-secret-ignored-on-http"] {
        let (volume, mount, env) = etcd_tls_parts(&run(case).mutated.unwrap());
        assert!(
            volume.is_none() && mount.is_none() && env.is_empty(),
            "{case}"
        );
    }
    let deny = |case: &str| {
        run(case).response["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
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
        let pod = run(case).mutated.unwrap();
        let env = env_of(&pod["spec"]["containers"][0]);
        let g = env.iter().find(|(n, _)| n == "DORADO_GROUP").unwrap();
        assert_eq!(g.1["value"], group, "{case}");
        assert_eq!(
            pod["metadata"]["labels"]["dorado.io/group"], group,
            "{case}"
        );
    }
}

#[test]
fn merge_keeps_other_containers_and_entries() {
    let req = request("merge-into-existing-container");
    let pod = run("merge-into-existing-container").mutated.unwrap();
    // The sidecar is byte-for-byte untouched.
    assert_eq!(
        pod["spec"]["containers"][0],
        req["request"]["object"]["spec"]["containers"][0]
    );
    let app = &pod["spec"]["containers"][1];
    let env = env_of(app);
    assert_eq!(
        env.iter().filter(|(n, _)| n == "DORADO_LEASE_TTL").count(),
        1
    );
    assert_eq!(env.iter().filter(|(n, _)| n == "POD_NAME").count(), 1);
    assert!(env.iter().any(|(n, _)| n == "RUST_LOG"));
    let ports: Vec<&str> = app["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["dorado", "admin"]);
    assert_eq!(app["resources"]["requests"]["ephemeral-storage"], "1Gi");
    assert_eq!(
        app["securityContext"]["seLinuxOptions"]["level"],
        "s0:c123,c456"
    );
    assert_eq!(app["securityContext"]["runAsUser"], 65532);
    assert!(app.get("workingDir").is_none());
    // The token volume is still mounted by the sidecar, so it stays.
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "kube-api-access-x7k2p")
    );
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
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
        let msg = out.response["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
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
    let several = run("deny-several-problems").response;
    let msg = several["response"]["status"]["message"].as_str().unwrap();
    for key in ["dorado.io/module", "dorado.io/port", "dorado.io/log-format"] {
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
        let warnings = out.response["response"]["warnings"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: no warnings"));
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains(needle)),
            "{case}: no warning containing {needle:?} in {warnings:?}"
        );
    }
    // A plain opt-in draws no warning.
    assert!(
        run("opt-in-statefulset").response["response"]
            .get("warnings")
            .is_none()
    );
}

#[test]
fn invalid_request_echoes_the_uid() {
    let out = run("invalid-request-missing-operation");
    assert_eq!(out.outcome, Outcome::Invalid);
    assert_eq!(out.response["response"]["allowed"], false);
    assert_eq!(
        out.response["response"]["uid"],
        request("invalid-request-missing-operation")["request"]["uid"]
    );
    let msg = out.response["response"]["status"]["message"]
        .as_str()
        .unwrap();
    assert!(msg.contains("operation"), "{msg}");
}

#[test]
fn undecodable_bodies_are_errors_not_panics() {
    let cfg = common::config();
    let valid = serde_json::to_vec(&request("opt-in-statefulset")).unwrap();
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
        "dorado.io/protocol",
        "dorado.io/cpu-request",
        "dorado.io/cpu-limit",
        "dorado.io/memory-request",
        "dorado.io/memory-limit",
        "dorado.io/status",
    ];
    let base = request("opt-in-statefulset")["request"]["object"].clone();
    let cfg = common::config();
    for (i, key) in keys.iter().enumerate() {
        for (j, value) in values.iter().enumerate() {
            let mut pod = base.clone();
            pod["metadata"]["annotations"][*key] = json!(value);
            if (i + j) % 3 == 0 {
                pod["spec"]["containers"] = json!([{ "name": value }]);
            }
            let d = dorado_webhook::mutate_pod(&pod, &cfg);
            if let dorado_webhook::Verdict::Mutate(patch) = d.verdict {
                json_patch::patch(&mut pod, &patch).expect("patch applies");
            }
        }
    }
}
