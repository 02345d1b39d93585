//! Pods that already have what the rewrite adds (volume names, mount paths, port names
//! and numbers, environment variables): each is either denied with a message naming the
//! conflicting field and what to rename, or rewritten into a pod without duplicates that
//! the API server's validation accepts. Also checks the YAML fixtures in
//! `tests/fixtures/collisions/` against what their README promises.

mod common;

use std::collections::HashSet;

use common::typed_pod;
use dorado_webhook::{MutationConfig, Verdict, mutate_pod};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, Pod, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;
use serde_json::{Value, json};

fn http_cfg() -> MutationConfig {
    MutationConfig::new("dorado:test", vec!["http://etcd:2379".into()])
}

fn https_cfg() -> MutationConfig {
    MutationConfig::new("dorado:test", vec!["https://etcd:2379".into()])
}

/// An opted-in pod with `spec`; `container` selects the target when given.
fn pod(container: Option<&str>, spec: Value) -> Value {
    let mut pod = json!({ "metadata": { "name": "p", "annotations": {
        "dorado.io/replicate": "true",
        "dorado.io/module": "kv/kv.wasm",
        "dorado.io/group": "kv",
    }}, "spec": spec });
    if let Some(c) = container {
        common::set(
            &mut pod,
            &["metadata", "annotations", "dorado.io/container"],
            json!(c),
        );
    }
    pod
}

fn app() -> Value {
    json!({ "name": "app", "image": "registry.invalid/app:1" })
}

/// [`app`] with `fields` merged in (a JSON merge patch).
fn app_with(fields: Value) -> Value {
    let mut app = app();
    json_patch::merge(&mut app, &fields);
    app
}

/// The denial message, or a panic saying what happened instead.
fn denial(pod: &Value, cfg: &MutationConfig) -> String {
    match mutate_pod(pod, cfg).verdict {
        Verdict::Deny(message) => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// The patched pod (raw and typed) and the warnings, or a panic saying what happened
/// instead.
fn rewritten(pod: &Value, cfg: &MutationConfig) -> (Value, Pod, Vec<String>) {
    let decision = mutate_pod(pod, cfg);
    let Verdict::Mutate(patch) = decision.verdict else {
        panic!("expected a rewrite, got {:?}", decision.verdict)
    };
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("the patch applies");
    let typed = typed_pod(&out);
    assert_no_duplicates(&typed);
    (out, typed, decision.warnings)
}

fn spec(pod: &Pod) -> &k8s_openapi::api::core::v1::PodSpec {
    pod.spec.as_ref().expect("a spec")
}

fn volume_names(pod: &Pod) -> Vec<&str> {
    spec(pod)
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect()
}

fn mounts(c: &Container) -> &[VolumeMount] {
    c.volume_mounts.as_deref().unwrap_or_default()
}

fn mount_paths(c: &Container) -> Vec<&str> {
    mounts(c).iter().map(|m| m.mount_path.as_str()).collect()
}

fn ports(c: &Container) -> &[ContainerPort] {
    c.ports.as_deref().unwrap_or_default()
}

fn duplicates<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|i| !seen.insert(*i)).collect()
}

/// What the API server rejects (volume names per pod, mount paths and port names per
/// container, mounts of missing volumes) and what it warns about (port names and
/// containerPort/protocol shared by containers and sidecars, env names defined twice in
/// the runtime container).
fn assert_no_duplicates(pod: &Pod) {
    let spec = spec(pod);
    let volumes = volume_names(pod);
    assert!(
        duplicates(volumes.clone()).is_empty(),
        "duplicate volumes in {spec:?}"
    );
    let mut pod_port_names = Vec::new();
    let mut pod_port_numbers = Vec::new();
    let regular = spec.containers.iter().map(|c| (true, c));
    let init = spec.init_containers.iter().flatten().map(|c| (false, c));
    for (is_regular, c) in regular.chain(init) {
        let cname = &c.name;
        assert!(
            duplicates(mount_paths(c)).is_empty(),
            "{cname}: duplicate mountPaths: {c:?}"
        );
        for m in mounts(c) {
            assert!(
                volumes.contains(&m.name.as_str()),
                "{cname}: mount of missing volume {}: {pod:?}",
                m.name
            );
        }
        let port_names: Vec<&str> = ports(c).iter().filter_map(|p| p.name.as_deref()).collect();
        assert!(
            duplicates(port_names.clone()).is_empty(),
            "{cname}: duplicate port names: {c:?}"
        );
        if is_regular || c.restart_policy.as_deref() == Some("Always") {
            pod_port_names.extend(port_names);
            for p in ports(c) {
                let protocol = p.protocol.as_deref().unwrap_or("TCP");
                pod_port_numbers.push(format!("{}/{protocol}", p.container_port));
            }
        }
    }
    assert!(
        duplicates(pod_port_names).is_empty(),
        "port names shared: {spec:?}"
    );
    let numbers = duplicates(pod_port_numbers.iter().map(String::as_str));
    assert!(numbers.is_empty(), "ports {numbers:?} shared: {spec:?}");
    let target = target(pod);
    let env = target.env.iter().flatten().map(|e| e.name.as_str());
    assert!(duplicates(env).is_empty(), "duplicate env: {target:?}");
}

/// The runtime container of a rewritten pod.
fn target(pod: &Pod) -> &Container {
    spec(pod)
        .containers
        .iter()
        .find(|c| c.command.as_deref() == Some(&["dorado".to_owned()]))
        .expect("a runtime container")
}

/// The name of a volume given as JSON.
fn name_of(volume: &Value) -> String {
    Volume::deserialize(volume).expect("a volume").name
}

#[test]
fn a_volume_named_like_one_of_ours_is_denied() {
    let cases = [
        (
            json!({ "name": "dorado-tmp", "emptyDir": {} }),
            "the runtime's /tmp",
            http_cfg(),
        ),
        (
            json!({ "name": "dorado-module", "configMap": { "name": "other" } }),
            "the module ConfigMap",
            http_cfg(),
        ),
        (
            json!({ "name": "dorado-etcd-client", "secret": { "secretName": "mine" } }),
            "the etcd client certificate Secret",
            https_cfg(),
        ),
    ];
    for (volume, purpose, cfg) in cases {
        let name = name_of(&volume);
        let sidecar = json!({ "name": "cache", "image": "x",
            "volumeMounts": [{ "name": name, "mountPath": "/cache" }] });
        let p = pod(
            Some("app"),
            json!({ "containers": [app(), sidecar], "volumes": [ { "name": "data", "emptyDir": {} }, volume ] }),
        );
        let msg = denial(&p, &cfg);
        assert_eq!(
            msg,
            format!(
                "spec.volumes[1]: volume name {name:?} is used by the Dorado rewrite for \
                 {purpose}, but spec.containers[1] (container \"cache\") mounts this volume; \
                 rename the volume and the volumeMounts that refer to it"
            )
        );
    }
    // Init and ephemeral containers count as well.
    let volume = json!({ "name": "dorado-tmp", "emptyDir": {} });
    let mounting = json!({ "name": "debug", "image": "x",
        "volumeMounts": [{ "name": "dorado-tmp", "mountPath": "/scratch" }] });
    for key in ["initContainers", "ephemeralContainers"] {
        let mut spec = json!({ "containers": [app()], "volumes": [volume.clone()] });
        common::set(&mut spec, &[key], json!([mounting.clone()]));
        let msg = denial(&pod(None, spec), &http_cfg());
        assert!(
            msg.contains(&format!(
                "but spec.{key}[0] (container \"debug\") mounts this volume"
            )),
            "{msg}"
        );
    }
}

#[test]
fn a_volume_named_like_one_of_ours_that_only_the_target_mounts_is_replaced() {
    // A stale copy of a mutated pod: the old volume goes, the runtime's takes its place.
    let container =
        app_with(json!({ "volumeMounts": [{ "name": "dorado-tmp", "mountPath": "/scratch" }] }));
    let volumes = json!([
        { "name": "dorado-tmp", "emptyDir": { "medium": "Memory" } },
        { "name": "dorado-module", "configMap": { "name": "stale" } },
    ]);
    let p = pod(
        None,
        json!({ "containers": [container], "volumes": volumes }),
    );
    let (_, out, warnings) = rewritten(&p, &http_cfg());
    let tmp = spec(&out)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dorado-tmp")
        .unwrap();
    assert_eq!(
        tmp.empty_dir,
        Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("64Mi".into())),
        })
    );
    for (name, purpose) in [
        ("dorado-tmp", "the runtime's /tmp"),
        ("dorado-module", "the module ConfigMap"),
    ] {
        let expected = format!(
            "volume {name:?} replaced by the runtime's ({purpose}); no other container mounts it"
        );
        assert!(
            warnings.contains(&expected),
            "{expected:?} not in {warnings:?}"
        );
    }
    let paths = mount_paths(target(&out));
    assert!(!paths.contains(&"/scratch"), "{paths:?}");
}

#[test]
fn the_etcd_volume_name_is_free_when_no_certificate_is_mounted() {
    // With http:// endpoints the rewrite adds no dorado-etcd-client volume, so the pod's
    // own volume of that name, and the target's mount of it, stay.
    let volume = json!({ "name": "dorado-etcd-client", "secret": { "secretName": "mine" } });
    let container = app_with(
        json!({ "volumeMounts": [{ "name": "dorado-etcd-client", "mountPath": "/certs" }] }),
    );
    let p = pod(
        None,
        json!({ "containers": [container], "volumes": [volume.clone()] }),
    );
    let (_, out, _) = rewritten(&p, &http_cfg());
    let volume = Volume::deserialize(&volume).unwrap();
    assert!(spec(&out).volumes.iter().flatten().any(|v| *v == volume));
    let mounts = mount_paths(target(&out));
    assert!(mounts.contains(&"/certs"), "{mounts:?}");
}

#[test]
fn volumes_of_an_earlier_pass_are_kept() {
    // The marker stripped, the webhook runs again: its own volumes are not collisions.
    for cfg in [http_cfg(), https_cfg()] {
        let p = pod(None, json!({ "containers": [app()] }));
        let (mut once, _, _) = rewritten(&p, &cfg);
        common::remove(&mut once, &["metadata", "annotations", "dorado.io/status"]);
        let (_, twice, _) = rewritten(&once, &cfg);
        assert_eq!(typed_pod(&once).spec, twice.spec);
    }
}

#[test]
fn a_port_named_dorado_in_another_container_is_denied() {
    let metrics = json!({ "name": "metrics", "image": "x",
        "ports": [ { "name": "http", "containerPort": 8080 }, { "name": "dorado", "containerPort": 9090 } ] });
    let p = pod(Some("app"), json!({ "containers": [app(), metrics] }));
    assert_eq!(
        denial(&p, &http_cfg()),
        "spec.containers[1].ports[1] (container \"metrics\"): port name \"dorado\" is used by \
         the Dorado rewrite for the runtime's client port; rename this port"
    );
    // A sidecar shares the pod's network and its port names count; a plain init
    // container has exited before the runtime starts and its ports do not.
    let proxy = json!({ "name": "proxy", "image": "x", "restartPolicy": "Always",
        "ports": [ { "name": "dorado", "containerPort": 9090 } ] });
    let p = pod(
        None,
        json!({ "initContainers": [proxy], "containers": [app()] }),
    );
    assert_eq!(
        denial(&p, &http_cfg()),
        "spec.initContainers[0].ports[0] (container \"proxy\"): port name \"dorado\" is used \
         by the Dorado rewrite for the runtime's client port; rename this port"
    );
    let setup = json!({ "name": "setup", "image": "x",
        "ports": [ { "name": "dorado", "containerPort": 7070 } ] });
    let p = pod(
        None,
        json!({ "initContainers": [setup], "containers": [app()] }),
    );
    rewritten(&p, &http_cfg());
}

#[test]
fn the_client_port_in_another_container_is_denied() {
    let metrics = json!({ "name": "metrics", "image": "x",
        "ports": [ { "name": "metrics", "containerPort": 7070, "protocol": "TCP" } ] });
    let p = pod(Some("app"), json!({ "containers": [app(), metrics] }));
    assert_eq!(
        denial(&p, &http_cfg()),
        "annotation dorado.io/port: port 7070 is already declared by spec.containers[1].ports[0] \
         (container \"metrics\"); expected a free port: set dorado.io/port to another port or \
         change that container's port"
    );
}

#[test]
fn the_target_containers_own_ports_are_replaced_with_a_warning() {
    let container = app_with(json!({ "ports": [
        { "name": "dorado", "containerPort": 8080, "protocol": "TCP" },
        { "name": "http", "containerPort": 7070, "protocol": "TCP" },
        { "name": "admin", "containerPort": 9000, "protocol": "TCP" },
    ]}));
    let (_, out, warnings) = rewritten(
        &pod(None, json!({ "containers": [container] })),
        &http_cfg(),
    );
    let port = |name: &str, number| ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    assert_eq!(
        ports(target(&out)),
        [port("dorado", 7070), port("admin", 9000)]
    );
    for replaced in ["\"dorado\" (8080/TCP)", "\"http\" (7070/TCP)"] {
        let expected = format!(
            "container \"app\": port {replaced} replaced by the runtime's port \"dorado\" (7070/TCP)"
        );
        assert!(
            warnings.contains(&expected),
            "{expected:?} not in {warnings:?}"
        );
    }
}

#[test]
fn the_target_containers_own_mounts_at_our_paths_are_replaced_with_a_warning() {
    let container = app_with(json!({ "volumeMounts": [
        { "name": "scratch", "mountPath": "/tmp" },
        { "name": "config", "mountPath": "/etc/dorado/module", "readOnly": true },
        { "name": "certs", "mountPath": "/etc/dorado/etcd-tls" },
        { "name": "data", "mountPath": "/data" },
    ]}));
    let volumes = json!([
        { "name": "scratch", "emptyDir": {} },
        { "name": "config", "emptyDir": {} },
        { "name": "certs", "emptyDir": {} },
        { "name": "data", "emptyDir": {} },
    ]);
    let p = pod(
        None,
        json!({ "containers": [container], "volumes": volumes }),
    );
    let (_, out, warnings) = rewritten(&p, &https_cfg());
    let mount = |name: &str, path: &str, read_only| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        ..Default::default()
    };
    assert_eq!(
        mounts(target(&out)),
        [
            mount("dorado-module", "/etc/dorado/module", Some(true)),
            mount("dorado-tmp", "/tmp", None),
            mount("dorado-etcd-client", "/etc/dorado/etcd-tls", Some(true)),
            mount("data", "/data", None),
        ]
    );
    // The user's volumes stay (another container may mount them; unmounted is valid).
    let volumes = volume_names(&out);
    for v in ["scratch", "config", "certs", "data", "dorado-tmp"] {
        assert!(volumes.contains(&v), "{v} missing from {volumes:?}");
    }
    for (name, path) in [
        ("scratch", "/tmp"),
        ("config", "/etc/dorado/module"),
        ("certs", "/etc/dorado/etcd-tls"),
    ] {
        let expected = format!(
            "container \"app\": volumeMount of {name:?} at {path} replaced by the runtime's \
             mounts (dorado-module at /etc/dorado/module, dorado-tmp at /tmp, \
             dorado-etcd-client at /etc/dorado/etcd-tls)"
        );
        assert!(
            warnings.contains(&expected),
            "{expected:?} not in {warnings:?}"
        );
    }
    // With http:// endpoints /etc/dorado/etcd-tls is not ours: the mount stays.
    let (_, out, _) = rewritten(&p, &http_cfg());
    let paths = mount_paths(target(&out));
    assert!(paths.contains(&"/etc/dorado/etcd-tls"), "{paths:?}");
}

#[test]
fn another_containers_mount_at_tmp_is_no_collision() {
    let shell = json!({ "name": "shell", "image": "x",
        "volumeMounts": [ { "name": "scratch", "mountPath": "/tmp" } ] });
    let p = pod(
        Some("app"),
        json!({ "containers": [app(), shell.clone()], "volumes": [ { "name": "scratch", "emptyDir": {} } ] }),
    );
    let (_, out, _) = rewritten(&p, &http_cfg());
    assert_eq!(
        spec(&out).containers[1],
        Container::deserialize(&shell).unwrap()
    );
}

#[test]
fn a_block_device_at_one_of_our_paths_is_denied() {
    let container =
        app_with(json!({ "volumeDevices": [ { "name": "raw", "devicePath": "/tmp" } ] }));
    let volumes =
        json!([ { "name": "raw", "persistentVolumeClaim": { "claimName": "raw-block" } } ]);
    let p = pod(
        None,
        json!({ "containers": [container], "volumes": volumes }),
    );
    assert_eq!(
        denial(&p, &http_cfg()),
        "spec.containers[0].volumeDevices[0] (container \"app\", device \"raw\"): devicePath \
         /tmp is where the Dorado runtime mounts a volume; move the device to another path or \
         another container"
    );
}

#[test]
fn the_target_containers_own_env_is_not_duplicated() {
    let container = app_with(json!({ "env": [
        { "name": "POD_NAME", "value": "fixed" },
        { "name": "DORADO_GROUP", "value": "other" },
        { "name": "APP_MODE", "value": "replica" },
    ]}));
    let (_, out, warnings) = rewritten(
        &pod(None, json!({ "containers": [container] })),
        &http_cfg(),
    );
    let env = target(&out).env.as_deref().unwrap();
    let group = env.iter().find(|e| e.name == "DORADO_GROUP").unwrap();
    assert_eq!(group.value.as_deref(), Some("kv"));
    assert!(env.iter().any(|e| e.name == "APP_MODE"));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("env DORADO_GROUP replaced")),
        "{warnings:?}"
    );
}

#[test]
fn every_collision_is_listed_in_one_denial() {
    let metrics = json!({ "name": "metrics", "image": "x",
        "ports": [ { "name": "dorado", "containerPort": 9090 } ],
        "volumeMounts": [ { "name": "dorado-tmp", "mountPath": "/tmp" } ] });
    let p = pod(
        Some("app"),
        json!({ "containers": [app(), metrics], "volumes": [ { "name": "dorado-tmp", "emptyDir": {} } ] }),
    );
    let msg = denial(&p, &http_cfg());
    assert!(
        msg.contains("spec.volumes[0]: volume name \"dorado-tmp\""),
        "{msg}"
    );
    assert!(
        msg.contains("spec.containers[1].ports[0] (container \"metrics\")"),
        "{msg}"
    );
}

/// Expected outcome of each fixture: the denial substring its README promises, or `None`
/// for admitted.
const FIXTURES: &[(&str, Option<&str>)] = &[
    (
        "volume-name.yaml",
        Some("volume name \"dorado-tmp\" is used by the Dorado rewrite"),
    ),
    ("volume-name-target-only.yaml", None),
    (
        "port-name-other-container.yaml",
        Some("port name \"dorado\" is used by the Dorado rewrite"),
    ),
    (
        "port-name-sidecar.yaml",
        Some("port name \"dorado\" is used by the Dorado rewrite"),
    ),
    (
        "port-number-other-container.yaml",
        Some("port 7070 is already declared by spec.containers[1].ports[0]"),
    ),
    (
        "device-path.yaml",
        Some("devicePath /tmp is where the Dorado runtime mounts a volume"),
    ),
    ("mount-path-target.yaml", None),
    ("mount-path-other-container.yaml", None),
    ("port-target-container.yaml", None),
    ("port-name-init-container.yaml", None),
    ("env-target-container.yaml", None),
];

#[test]
fn fixtures_get_what_their_readme_promises() {
    let readme =
        std::fs::read_to_string(common::collision_fixture_dir().join("README.md")).unwrap();
    let fixtures = common::collision_fixtures();
    let on_disk: Vec<&str> = fixtures.iter().map(|(f, _)| f.as_str()).collect();
    let mut listed: Vec<&str> = FIXTURES.iter().map(|(f, _)| *f).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every fixture needs an expected outcome here"
    );
    // The cluster's webhook talks plain http to etcd in the end-to-end setup.
    let cfg = common::config();
    for (file, pod) in &fixtures {
        let expected = FIXTURES.iter().find(|(f, _)| f == file).unwrap().1;
        let types = kube::core::TypeMeta::deserialize(pod).unwrap();
        assert_eq!(types.api_version, "v1", "{file}");
        assert_eq!(types.kind, "Pod", "{file}");
        assert!(typed_pod(pod).metadata.namespace.is_none(), "{file}");
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{file}`")))
            .unwrap_or_else(|| panic!("{file} is not listed in README.md"));
        match expected {
            Some(substring) => {
                let msg = denial(pod, &cfg);
                assert!(
                    msg.contains(substring),
                    "{file}: {substring:?} not in {msg:?}"
                );
                assert!(
                    row.contains("denied") && row.contains(substring),
                    "{file}: README row {row:?}"
                );
            }
            None => {
                rewritten(pod, &cfg);
                assert!(row.contains("admitted"), "{file}: README row {row:?}");
            }
        }
    }
}
