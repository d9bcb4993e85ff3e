//! Review resources: create-only kinds answered from the request itself and never stored, as
//! upstream's `authentication.k8s.io/v1` SelfSubjectReview (what `kubectl auth whoami` posts).
//! They are listed in discovery next to the registry's resources but have no storage, watch
//! cache or table, so they are not [`crate::registry::Descriptor`]s.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::UserInfo;
use crate::body::decode_object;
use crate::handler::{Params, json_value};
use crate::status::{ApiError, ApiResult};

pub struct Review {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
}

pub const REVIEWS: &[Review] = &[Review {
    group: "authentication.k8s.io",
    version: "v1",
    plural: "selfsubjectreviews",
    singular: "selfsubjectreview",
    kind: "SelfSubjectReview",
}];

impl Review {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
    /// As a resource in discovery: cluster-scoped, `create` only.
    pub const VERBS: &'static [&'static str] = &["create"];
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Review> {
    REVIEWS.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// `groups` (the registry's, core first) followed by the group-versions only reviews live in.
pub fn with_review_groups(mut groups: Vec<(&'static str, Vec<&'static str>)>) -> Vec<(&'static str, Vec<&'static str>)> {
    for r in REVIEWS {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    groups
}

pub fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static Review> + 'a {
    REVIEWS.iter().filter(move |r| r.group == group && r.version == version)
}

/// POST of a review. Only SelfSubjectReview exists: the answer is the caller's identity, with
/// `system:authenticated` added as upstream's authenticators do for every authenticated user.
pub fn create(review: &Review, user: Option<&UserInfo>, headers: &HeaderMap, params: &Params, body: &[u8]) -> ApiResult<Response> {
    let obj = if body.is_empty() { json!({}) } else { decode_object(headers, body)? };
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if (!av.is_empty() && av != review.api_version()) || (!kind.is_empty() && kind != review.kind) {
        return Err(ApiError::bad_request(format!("the body is a {kind} of {av}, not a {} of {}", review.kind, review.api_version())));
    }
    params.dry_run()?;
    let Some(user) = user else { return Err(ApiError::new(401, "Unauthorized", "Unauthorized")) };
    let mut groups = user.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let out = json!({
        "kind": review.kind,
        "apiVersion": review.api_version(),
        "metadata": {"creationTimestamp": now},
        "status": {"userInfo": {"username": user.name, "groups": groups}},
    });
    Ok(json_value(StatusCode::CREATED, &out))
}
