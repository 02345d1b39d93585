//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use dorado_webhook::{MutationConfig, Outcome};
use serde_json::Value;

/// The configuration every golden case is evaluated with.
pub fn config() -> MutationConfig {
    MutationConfig::new(
        "dorado/dorado:0.1.0",
        vec![
            "http://etcd-0.etcd.dorado-system.svc:2379".into(),
            "http://etcd-1.etcd.dorado-system.svc:2379".into(),
            "http://etcd-2.etcd.dorado-system.svc:2379".into(),
        ],
    )
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Names of all golden cases (files `<name>.request.json`), sorted.
pub fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".request.json").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub fn request(case: &str) -> Value {
    read_json(&golden_dir().join(format!("{case}.request.json")))
}

/// Outcome of one case.
#[derive(Debug)]
pub struct CaseOutput {
    pub outcome: Outcome,
    /// The AdmissionReview response, with `response.patch` decoded into JSON.
    pub response: Value,
    /// The JSON patch, if any.
    pub patch: Option<json_patch::Patch>,
    /// `request.object` with the patch applied, if there was a patch.
    pub mutated: Option<Value>,
}

/// Decodes a serialized review; `patch` must be a base64 string when present.
pub fn decode_response(body: &[u8]) -> (Value, Option<json_patch::Patch>) {
    let mut response: Value = serde_json::from_slice(body).expect("response is JSON");
    let mut patch = None;
    if let Some(p) = response.pointer_mut("/response/patch") {
        let b64 = p.as_str().expect("patch must be a base64 string");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("patch is valid base64");
        let decoded: Value = serde_json::from_slice(&raw).expect("patch is JSON");
        patch = Some(serde_json::from_value(decoded.clone()).expect("patch is a JSON patch"));
        *p = decoded;
    }
    (response, patch)
}

pub fn run_body(body: &[u8], object: Option<&Value>) -> CaseOutput {
    let reviewed = dorado_webhook::review(body, &config()).expect("review answers");
    let (response, patch) = decode_response(&reviewed.body);
    let mutated = match (&patch, object) {
        (Some(patch), Some(object)) => {
            let mut pod = object.clone();
            json_patch::patch(&mut pod, patch).expect("patch applies to the request object");
            Some(pod)
        }
        _ => None,
    };
    CaseOutput {
        outcome: reviewed.outcome,
        response,
        patch,
        mutated,
    }
}

pub fn run(case: &str) -> CaseOutput {
    let req = request(case);
    let body = serde_json::to_vec(&req).unwrap();
    run_body(&body, req.pointer("/request/object"))
}

/// Wraps `pod` into a CREATE AdmissionReview with `uid`.
pub fn review_for(pod: &Value, uid: &str) -> Vec<u8> {
    let mut req = request("opt-in-statefulset");
    req["request"]["uid"] = Value::String(uid.into());
    req["request"]["object"] = pod.clone();
    serde_json::to_vec(&req).unwrap()
}

/// Mutated pods of every golden case that produces a patch, by case name.
pub fn mutated_pods() -> Vec<(String, Value)> {
    cases()
        .into_iter()
        .filter_map(|c| run(&c).mutated.map(|m| (c, m)))
        .collect()
}
