//! AdmissionReview in, AdmissionReview out: a pure function over the request body.
//!
//! The body is parsed once into a [`serde_json::Value`]; everything after reads typed
//! views of that value, never a key of it. First `kind` and `apiVersion`, then the request,
//! which must be an object: these decide the HTTP 400 answers. The request is then split
//! by a typed view: its uid (echoed, also by an `invalid` answer), `request.object` kept as
//! raw JSON (the base the patch is computed against, see [`crate::mutate::mutate_pod`]),
//! and the rest (operation, kind, dryRun, ...), which is read with `kube::core::admission`
//! types. kube never sees the pod: its typed `ObjectMeta` would refuse pods the webhook
//! reads fine (see [`crate::view`]). The response is built with
//! [`AdmissionResponse::from`], which echoes the uid.
//!
//! `dryRun` needs no special handling because the webhook has no side effects
//! (`sideEffects: None`): a dry-run request gets exactly the response a real one would.

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::config::MutationConfig;
use crate::mutate::{self, Verdict};
use crate::view::{Obj, ObjectMeta, Text, present};

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

/// What decides whether a body is an AdmissionReview v1 at all; read first, borrowed (the
/// rest of the body is skipped, not copied). Every field accepts any JSON, so reading it
/// cannot fail: the checks below say what was wrong.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    api_version: Option<Text>,
}

/// The body of a review whose kind and apiVersion are right, taken apart by value.
#[derive(Deserialize)]
struct Body {
    /// Only an object is a request (reading anything else fails).
    #[serde(default)]
    request: Option<Obj<SplitRequest>>,
    /// Handed on to kube, which refuses a malformed one.
    #[serde(default)]
    response: Option<Value>,
}

/// A request split into its uid, the object (kept raw: the base the patch is computed
/// against), and the rest, for kube.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitRequest {
    /// Any JSON (even `null`, handed on to kube as sent); not a string reads as no uid.
    #[serde(default, deserialize_with = "present")]
    uid: Option<Text>,
    #[serde(default)]
    object: Value,
    /// Dropped unread: the webhook only admits CREATEs, which have none.
    #[serde(default, rename = "oldObject")]
    _old_object: IgnoredAny,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// The string, or `""` when absent or not a string.
fn text_or_empty(text: Option<&Text>) -> String {
    text.and_then(Text::as_str).unwrap_or("").to_owned()
}

/// Answers one AdmissionReview request body.
pub fn review(body: &[u8], cfg: &MutationConfig) -> Result<Reviewed, ReviewError> {
    let doc: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    if !doc.is_object() {
        return Err(ReviewError::NotAnObject);
    }
    let head = Head::deserialize(&doc).map_err(|_| ReviewError::NotAnObject)?;
    let kind = text_or_empty(head.kind.as_ref());
    if kind != META_KIND {
        return Err(ReviewError::WrongKind(kind));
    }
    let api_version = text_or_empty(head.api_version.as_ref());
    if api_version != META_API_VERSION_V1 {
        return Err(ReviewError::WrongApiVersion(api_version));
    }
    let body = Body::deserialize(doc).map_err(|_| ReviewError::NoRequest)?;
    let Some(Obj(request)) = body.request else {
        return Err(ReviewError::NoRequest);
    };
    let uid = text_or_empty(request.uid.as_ref());

    // kube reads the review without the pod, which stays raw.
    let mut rest = request.rest;
    if let Some(uid) = request.uid {
        rest.insert("uid".into(), uid.into());
    }
    let mut without_object = Map::new();
    without_object.insert("kind".into(), kind.into());
    without_object.insert("apiVersion".into(), api_version.into());
    without_object.insert("request".into(), Value::Object(rest));
    if let Some(response) = body.response {
        without_object.insert("response".into(), response);
    }
    let parsed =
        serde_json::from_value::<AdmissionReview<DynamicObject>>(Value::Object(without_object))
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
    Ok(admit(&req, &request.object, cfg))
}

fn subject(req: &AdmissionRequest<DynamicObject>, object: &Value) -> String {
    let ns = req.namespace.as_deref().unwrap_or("");
    // Only for logs: metadata that cannot be read names nothing.
    let meta = ObjectMeta::of(object).unwrap_or_default();
    let name = [&meta.name, &meta.generate_name]
        .into_iter()
        .filter_map(|t| t.as_ref().and_then(Text::as_str))
        .find(|s| !s.is_empty())
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
