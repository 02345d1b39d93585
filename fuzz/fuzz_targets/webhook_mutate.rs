//! The pure pod mutation (`dorado_webhook::mutate_pod`) on arbitrary JSON:
//! the `request.object` of an AdmissionReview is whatever the API server was
//! sent, including annotations with any value and pods of any shape.
//!
//! Properties: never panics; every patch applies to the pod, keeps unknown
//! fields and other containers, and is idempotent (see
//! `dorado_fuzz::check_patch`); every denial carries a message.
#![no_main]

use dorado_fuzz::{check_patch, webhook_config};
use dorado_webhook::{Verdict, mutate_pod};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pod) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let decision = mutate_pod(&pod, webhook_config());
    match &decision.verdict {
        Verdict::Mutate(patch) => {
            check_patch(&pod, patch);
        }
        Verdict::Deny(message) => assert!(!message.is_empty(), "denial without a message"),
        Verdict::Skip(_) => {}
    }
    // Pure: the same pod gets the same decision.
    assert_eq!(mutate_pod(&pod, webhook_config()), decision);
});
