//! AdmissionReview in, AdmissionReview out: a pure function over the request body.
//!
//! The envelope (uid, kind, operation, dryRun, ...) is read with
//! `kube::core::admission` types; `request.object` is taken out first and handed to
//! [`crate::mutate::mutate_pod`] as raw JSON, so the pod never passes through typed
//! structs. The response is built with [`AdmissionResponse::from`], which echoes the uid.
//!
//! `dryRun` needs no special handling because the webhook has no side effects
//! (`sideEffects: None`): a dry-run request gets exactly the response a real one would.

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde_json::Value;

use crate::config::MutationConfig;
use crate::mutate::{self, Verdict};

/// How a well-formed review was answered (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed with a patch.
    Mutated,
    /// Allowed unchanged.
    Skipped,
    /// Denied: the pod opted in with a bad value.
    Denied,
    /// Answered `allowed: false` because the request itself could not be read.
    Invalid,
}

impl Outcome {
    /// Lowercase name used as metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The serialized AdmissionReview response and what it decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// JSON body to send back with HTTP 200.
    pub body: Vec<u8>,
    /// What was decided.
    pub outcome: Outcome,
    /// The request uid (empty when it could not be read).
    pub uid: String,
    /// Why, in a few words (skip reason or denial message).
    pub detail: String,
    /// `namespace/name` of the object (the `generateName` prefix when it has no name yet).
    pub subject: String,
}

/// A body that cannot be answered with an AdmissionReview at all (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON (or is truncated).
    #[error("request body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("request body is not a JSON object")]
    NotAnObject,
    /// `kind` is not `AdmissionReview`.
    #[error("expected kind {META_KIND:?}, got {0:?}")]
    WrongKind(String),
    /// `apiVersion` is not `admission.k8s.io/v1`.
    #[error(
        "expected apiVersion {META_API_VERSION_V1:?}, got {0:?} (configure admissionReviewVersions: [\"v1\"])"
    )]
    WrongApiVersion(String),
    /// There is no `request` object.
    #[error("no request in the AdmissionReview")]
    NoRequest,
}

/// Answers one AdmissionReview request body.
pub fn review(body: &[u8], cfg: &MutationConfig) -> Result<Reviewed, ReviewError> {
    let mut doc: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let top = doc.as_object_mut().ok_or(ReviewError::NotAnObject)?;
    let field = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = field(top.get("kind"));
    if kind != META_KIND {
        return Err(ReviewError::WrongKind(kind));
    }
    let api_version = field(top.get("apiVersion"));
    if api_version != META_API_VERSION_V1 {
        return Err(ReviewError::WrongApiVersion(api_version));
    }
    let request = match top.get_mut("request") {
        Some(r @ Value::Object(_)) => r,
        _ => return Err(ReviewError::NoRequest),
    };
    let uid = field(request.get("uid"));
    // Keep the pod raw; the typed envelope sees `null` in its place.
    let object = request
        .get_mut("object")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if let Some(old) = request.get_mut("oldObject") {
        *old = Value::Null;
    }

    let parsed = serde_json::from_value::<AdmissionReview<DynamicObject>>(doc)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let req: Result<AdmissionRequest<DynamicObject>, _> = r.try_into();
            req.map_err(|e| e.to_string())
        });
    let req = match parsed {
        Ok(req) => req,
        Err(e) => {
            let mut resp = AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"));
            resp.uid = uid.clone();
            return Ok(finish(resp, Outcome::Invalid, uid, e).about(String::new()));
        }
    };
    Ok(admit(&req, &object, cfg))
}

fn subject(req: &AdmissionRequest<DynamicObject>, object: &Value) -> String {
    let ns = req.namespace.as_deref().unwrap_or("");
    let meta = |k: &str| {
        object
            .pointer(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = meta("/metadata/name")
        .or_else(|| meta("/metadata/generateName"))
        .unwrap_or(req.name.as_str());
    format!("{ns}/{name}")
}

impl Reviewed {
    fn about(mut self, subject: String) -> Self {
        self.subject = subject;
        self
    }
}

/// Decides on a parsed request whose object (the pod) is given raw.
pub fn admit(
    req: &AdmissionRequest<DynamicObject>,
    object: &Value,
    cfg: &MutationConfig,
) -> Reviewed {
    decide(req, object, cfg).about(subject(req, object))
}

fn decide(req: &AdmissionRequest<DynamicObject>, object: &Value, cfg: &MutationConfig) -> Reviewed {
    let uid = req.uid.clone();
    let resp = AdmissionResponse::from(req);
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    if !is_pod || req.sub_resource.is_some() {
        let what = format!(
            "{}/{} {}{}",
            req.kind.group,
            req.kind.version,
            req.kind.kind,
            req.sub_resource
                .as_deref()
                .map(|s| format!(" subresource {s}"))
                .unwrap_or_default()
        );
        let mut resp = resp;
        resp.warnings = Some(vec![format!(
            "dorado-webhook only mutates v1 Pods; {what} allowed unchanged (check the webhook's rules)"
        )]);
        return finish(resp, Outcome::Skipped, uid, format!("not a pod: {what}"));
    }
    if req.operation != Operation::Create {
        return finish(
            resp,
            Outcome::Skipped,
            uid,
            format!("operation {:?} is not CREATE", req.operation),
        );
    }
    let decision = mutate::mutate_pod(object, cfg);
    let mut resp = resp;
    if !decision.warnings.is_empty() {
        resp.warnings = Some(decision.warnings);
    }
    match decision.verdict {
        Verdict::Skip(reason) => finish(resp, Outcome::Skipped, uid, reason.as_str().to_owned()),
        Verdict::Deny(message) => finish(resp.deny(&message), Outcome::Denied, uid, message),
        Verdict::Mutate(patch) => match resp.with_patch(patch) {
            Ok(resp) => finish(resp, Outcome::Mutated, uid, String::new()),
            Err(e) => {
                // Serializing a patch of plain JSON values cannot fail; answer anyway.
                let mut resp = AdmissionResponse::invalid(e.to_string());
                resp.uid = uid.clone();
                finish(resp, Outcome::Invalid, uid, e.to_string())
            }
        },
    }
}

/// The AdmissionReview envelope as sent back: kube's response with `patch` replaced by
/// its base64 text, which is how the API server's JSON decoding of `[]byte` reads it.
#[derive(serde::Serialize)]
struct ReviewOut<'a> {
    #[serde(flatten)]
    types: &'a kube::core::TypeMeta,
    response: ResponseOut<'a>,
}

#[derive(serde::Serialize)]
struct ResponseOut<'a> {
    /// Serialized without its own `patch` (taken out before).
    #[serde(flatten)]
    inner: &'a AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

/// Serializes the response as an AdmissionReview.
fn finish(mut resp: AdmissionResponse, outcome: Outcome, uid: String, detail: String) -> Reviewed {
    let patch = resp
        .patch
        .take()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let out = ReviewOut {
        types: &resp.types,
        response: ResponseOut {
            inner: &resp,
            patch,
        },
    };
    // Serializing plain strings, numbers and maps into a Vec cannot fail.
    let body = serde_json::to_vec(&out).unwrap_or_default();
    Reviewed {
        body,
        outcome,
        uid,
        detail,
        subject: String::new(),
    }
}
