//! Whole AdmissionReview request bodies through `dorado_webhook::review`,
//! the function the HTTPS handler calls on every POST /mutate.
//!
//! Properties:
//! * never panics; a body that is not an AdmissionReview v1 is a
//!   `ReviewError` (HTTP 400), anything else gets a well-formed
//!   AdmissionReview response;
//! * the response echoes the request's uid;
//! * allowed exactly for `mutated` and `skipped`; a denial has a message;
//! * a patch is base64 JSON that applies to `request.object` and obeys
//!   `dorado_fuzz::check_patch`; only `mutated` responses carry one.
#![no_main]

use base64::Engine as _;
use dorado_fuzz::{check_patch, webhook_config};
use dorado_webhook::{Outcome, review};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(reviewed) = review(data, webhook_config()) else {
        return;
    };
    let request: Value = serde_json::from_slice(data).expect("review accepted non-JSON");
    let out: Value = serde_json::from_slice(&reviewed.body).expect("response is not JSON");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    let response = &out["response"];
    let uid = request["request"]["uid"].as_str().unwrap_or("");
    assert_eq!(response["uid"].as_str(), Some(uid), "uid not echoed");
    assert_eq!(reviewed.uid, uid);
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    let patch = response.get("patch");
    match reviewed.outcome {
        Outcome::Mutated => {
            assert!(allowed);
            let b64 = patch
                .and_then(Value::as_str)
                .expect("mutated without a patch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is not base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&bytes).expect("patch is not a JSON patch");
            assert_eq!(response["patchType"], "JSONPatch");
            check_patch(&request["request"]["object"], &patch);
        }
        Outcome::Skipped => assert!(allowed && patch.is_none()),
        Outcome::Denied | Outcome::Invalid => {
            assert!(!allowed && patch.is_none());
            let message = response["status"]["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "refusal without a message: {out}");
        }
    }
});
