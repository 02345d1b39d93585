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
//!
//! Request and response are read through typed views. The request body is
//! parsed into a `Value` first, as the webhook parses it, and the view is read
//! from that: what a duplicate key means is then decided by the same parse
//! (a typed read of the bytes refuses duplicate keys the webhook accepts).
#![no_main]

use base64::Engine as _;
use dorado_fuzz::{check_patch, webhook_config};
use dorado_webhook::{Outcome, review};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// The parts of the request the properties need; the pod stays raw JSON.
#[derive(Deserialize)]
struct Request {
    request: RequestBody,
}

#[derive(Deserialize)]
struct RequestBody {
    /// Any JSON: the webhook echoes a string and answers `""` for the rest.
    #[serde(default)]
    uid: Value,
    #[serde(default)]
    object: Value,
}

/// An AdmissionReview response, as the API server reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    kind: String,
    api_version: String,
    response: Response,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    patch: Option<String>,
    patch_type: Option<String>,
    #[serde(default)]
    status: Status,
}

#[derive(Default, Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
}

fuzz_target!(|data: &[u8]| {
    let Ok(reviewed) = review(data, webhook_config()) else {
        return;
    };
    let request: Value = serde_json::from_slice(data).expect("review accepted non-JSON");
    let request = Request::deserialize(&request)
        .unwrap_or_else(|e| panic!("review accepted a body without a request object: {e}"))
        .request;
    let out: Value = serde_json::from_slice(&reviewed.body).expect("response is not JSON");
    let answer = Answer::deserialize(&out)
        .unwrap_or_else(|e| panic!("response is not an AdmissionReview ({e}): {out}"));
    assert_eq!(answer.kind, "AdmissionReview");
    assert_eq!(answer.api_version, "admission.k8s.io/v1");
    let response = answer.response;
    let uid = request.uid.as_str().unwrap_or("");
    assert_eq!(response.uid, uid, "uid not echoed");
    assert_eq!(reviewed.uid, uid);
    let allowed = response.allowed;
    match reviewed.outcome {
        Outcome::Mutated => {
            assert!(allowed);
            let b64 = response.patch.as_deref().expect("mutated without a patch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is not base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&bytes).expect("patch is not a JSON patch");
            assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
            check_patch(&request.object, &patch);
        }
        Outcome::Skipped => assert!(allowed && response.patch.is_none()),
        Outcome::Denied | Outcome::Invalid => {
            assert!(!allowed && response.patch.is_none());
            let message = response.status.message;
            assert!(!message.is_empty(), "refusal without a message: {out}");
        }
    }
});
