//! Spec conformance for connector tests: every request a connector test sent
//! must be an operation the vendor documents.
//!
//! The oracle is a trimmed extract of the vendor spec,
//! `tests/fixtures/specs/<provider>.json`, written by
//! `tests/fixtures/specs/extract.py` (which names the source spec and how to
//! regenerate). Each entry: `method`, `path` (the spec's template, e.g.
//! `/api/v1/groups/{groupId}/users/{userId}`), `query` (the query parameters the
//! operation documents), `required_query`, `required_headers`, `body_required`.
//!
//! A request conforms when some entry has its method, its path matches the
//! template segment by segment (`{x}` matches any one non-empty segment, other
//! segments must be equal after percent-decoding), every query parameter it
//! sends is documented, and the required query parameters, headers and body are
//! present.
//!
//! RPC-style protocols that send every operation to one path (AWS awsJson1.1:
//! `POST /` with `X-Amz-Target: AWSIdentityStore.GetUserId`) are told apart by
//! `amz_target`: an entry with it matches only requests whose `X-Amz-Target`
//! header equals it. Such entries also name the protocol's `content_type` (the
//! request's `Content-Type` must equal it) and the top-level JSON body members
//! the operation requires (`required_body_members`).
//!
//! Usage in a provider's tests:
//! ```ignore
//! let requests = server.received_requests().await.unwrap();
//! spec_check::assert_conforms("okta", "", &requests);
//! ```

use serde::Deserialize;
use wiremock::Request;

#[derive(Debug, Deserialize)]
pub struct Operation {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Vec<String>,
    #[serde(default)]
    pub required_query: Vec<String>,
    #[serde(default)]
    pub required_headers: Vec<String>,
    #[serde(default)]
    pub body_required: bool,
    /// The `X-Amz-Target` header that names the operation (AWS JSON protocols).
    #[serde(default)]
    pub amz_target: Option<String>,
    /// The `Content-Type` the protocol requires, compared exactly.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Top-level members of the JSON body the operation requires.
    #[serde(default)]
    pub required_body_members: Vec<String>,
}

/// The extract for `provider`, read from `tests/fixtures/specs/<provider>.json`.
pub fn load(provider: &str) -> Vec<Operation> {
    let path = format!("{}/tests/fixtures/specs/{provider}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not a valid spec extract: {e}"))
}

/// Why each non-conforming request does not conform (empty when all do).
/// `prefix` is stripped from request paths first (e.g. `/v1.0` for Graph).
pub fn violations(ops: &[Operation], prefix: &str, requests: &[Request]) -> Vec<String> {
    requests.iter().filter_map(|r| check_one(ops, prefix, r).err()).collect()
}

/// Panics, listing every request the vendor spec does not document.
pub fn assert_conforms(provider: &str, prefix: &str, requests: &[Request]) {
    assert!(!requests.is_empty(), "no requests were received, so nothing was checked against the {provider} spec");
    let bad = violations(&load(provider), prefix, requests);
    assert!(bad.is_empty(), "requests not documented by the {provider} spec:\n  {}", bad.join("\n  "));
}

fn check_one(ops: &[Operation], prefix: &str, r: &Request) -> Result<(), String> {
    let method = r.method.as_str();
    let raw_path = r.url.path();
    let path = raw_path.strip_prefix(prefix).unwrap_or(raw_path);
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
    let target = header("x-amz-target");
    let mut shown = match r.url.query() {
        Some(q) => format!("{method} {path}?{q}"),
        None => format!("{method} {path}"),
    };
    if let Some(t) = target {
        shown.push_str(&format!(" (X-Amz-Target: {t})"));
    }
    let candidates: Vec<&Operation> = ops
        .iter()
        .filter(|op| {
            op.method.eq_ignore_ascii_case(method)
                && path_matches(&op.path, path)
                && op.amz_target.as_deref().is_none_or(|t| target == Some(t))
        })
        .collect();
    if candidates.is_empty() {
        let what = if target.is_some() { "method, path and X-Amz-Target" } else { "method and path" };
        return Err(format!("{shown}: no operation with this {what}"));
    }
    let sent: Vec<String> = r.url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    let mut reasons = Vec::new();
    for op in candidates {
        let mut problems = Vec::new();
        for k in &sent {
            if !op.query.iter().any(|q| q == k) {
                problems.push(format!("query parameter {k:?} is not documented"));
            }
        }
        for k in &op.required_query {
            if !sent.iter().any(|s| s == k) {
                problems.push(format!("required query parameter {k:?} is missing"));
            }
        }
        for h in &op.required_headers {
            if !r.headers.contains_key(h.as_str()) {
                problems.push(format!("required header {h:?} is missing"));
            }
        }
        if op.body_required && r.body.is_empty() {
            problems.push("the request body is required".into());
        }
        if let Some(ct) = &op.content_type
            && header("content-type") != Some(ct.as_str())
        {
            problems.push(format!("Content-Type must be {ct:?}, not {:?}", header("content-type").unwrap_or("")));
        }
        if !op.required_body_members.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(&r.body) {
                Ok(serde_json::Value::Object(body)) => {
                    for m in &op.required_body_members {
                        if !body.contains_key(m) {
                            problems.push(format!("required body member {m:?} is missing"));
                        }
                    }
                }
                _ => problems.push("the body is not a JSON object".into()),
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        reasons.push(format!("{} {}: {}", op.method, op.path, problems.join("; ")));
    }
    Err(format!("{shown}: {}", reasons.join(" | ")))
}

/// Segment-wise match of a request path against a spec template.
pub fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| if t.starts_with('{') && t.ends_with('}') { !p.is_empty() } else { *t == percent_decode(p) })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.insert(reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Request { url: url.parse().unwrap(), method: method.parse().unwrap(), headers: h, body: body.to_vec() }
    }

    fn ops() -> Vec<Operation> {
        serde_json::from_value(serde_json::json!([
            {"method": "PUT", "path": "/api/v1/groups/{groupId}/users/{userId}"},
            {"method": "GET", "path": "/api/v1/groups", "query": ["search", "limit"]},
            {"method": "POST", "path": "/groups/{group-id}/members/$ref", "body_required": true},
            {"method": "GET", "path": "/x", "query": ["a", "b"], "required_query": ["a"], "required_headers": ["x-api-version"]}
        ]))
        .unwrap()
    }

    #[test]
    fn documented_requests_conform() {
        let rs = [
            request("PUT", "http://h/api/v1/groups/00g1/users/00u2", &[], b""),
            request("GET", "http://h/api/v1/groups?search=profile.name%20eq%20%22Eng%22&limit=1", &[], b""),
            request("POST", "http://h/v1.0/groups/g1/members/%24ref", &[], b"{}"),
            request("GET", "http://h/x?a=1", &[("x-api-version", "1")], b""),
        ];
        assert_eq!(violations(&ops(), "/v1.0", &rs), Vec::<String>::new());
    }

    #[test]
    fn undocumented_requests_fail() {
        let rs = [
            request("DELETE", "http://h/api/v1/groups/00g1", &[], b""),
            request("PUT", "http://h/api/v1/groups/00g1/users", &[], b""),
            request("GET", "http://h/api/v1/groups?expand=stats", &[], b""),
            request("POST", "http://h/groups/g1/members/$ref", &[], b""),
            request("GET", "http://h/x?b=1", &[], b""),
        ];
        let v = violations(&ops(), "", &rs);
        assert_eq!(v.len(), 5, "{v:#?}");
        assert!(v[0].contains("no operation"), "{}", v[0]);
        assert!(v[2].contains("\"expand\" is not documented"), "{}", v[2]);
        assert!(v[3].contains("body is required"), "{}", v[3]);
        assert!(v[4].contains("\"a\" is missing") && v[4].contains("\"x-api-version\" is missing"), "{}", v[4]);
    }

    #[test]
    fn json_rpc_operations_match_on_the_target_header() {
        let ops: Vec<Operation> = serde_json::from_value(serde_json::json!([{
            "method": "POST", "path": "/", "amz_target": "Svc.GetThing", "body_required": true,
            "content_type": "application/x-amz-json-1.1", "required_body_members": ["StoreId", "ThingId"]
        }]))
        .unwrap();
        let json = ("content-type", "application/x-amz-json-1.1");
        let ok = request(
            "POST",
            "http://h/",
            &[("x-amz-target", "Svc.GetThing"), json],
            br#"{"StoreId":"s","ThingId":"t"}"#,
        );
        assert_eq!(violations(&ops, "", &[ok]), Vec::<String>::new());
        let rs = [
            request("POST", "http://h/", &[("x-amz-target", "Svc.DeleteThing"), json], b"{}"),
            request("POST", "http://h/", &[], b"{}"),
            request("POST", "http://h/", &[("x-amz-target", "Svc.GetThing"), json], br#"{"StoreId":"s"}"#),
            request(
                "POST",
                "http://h/",
                &[("x-amz-target", "Svc.GetThing"), ("content-type", "application/json")],
                br#"{"StoreId":"s","ThingId":"t"}"#,
            ),
        ];
        let v = violations(&ops, "", &rs);
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(v[0].contains("no operation") && v[0].contains("Svc.DeleteThing"), "{}", v[0]);
        assert!(v[1].contains("no operation"), "{}", v[1]);
        assert!(v[2].contains("\"ThingId\" is missing"), "{}", v[2]);
        assert!(v[3].contains("Content-Type must be"), "{}", v[3]);
    }

    #[test]
    fn templates_match_whole_segments() {
        assert!(path_matches("/users/{user-id}", "/users/a%40b.com"));
        assert!(!path_matches("/users/{user-id}", "/users/a/b"));
        assert!(!path_matches("/users/{user-id}", "/users/"));
        assert!(path_matches("/groups/{g}/members/{m}/$ref", "/groups/1/members/2/%24ref"));
    }
}
