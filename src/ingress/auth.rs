//! Who may post to `/webhooks/jsm`, decided on the raw bytes before any parsing.
//!
//! - Jira admin webhooks sign the body: `X-Hub-Signature: sha256=<hex>` is
//!   HMAC-SHA256 of the exact body bytes with the webhook secret. Only the
//!   `sha256` method is accepted (Atlassian may add others), compared in
//!   constant time by `Mac::verify_slice`.
//! - Automation "Send web request" cannot sign: it sends
//!   `Authorization: Bearer <token>`, compared in constant time by
//!   [`token_matches`] (which the admin API uses too).

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The credentials ingress accepts (at least one is set; startup refuses otherwise).
#[derive(Clone)]
pub struct Verifier {
    pub hmac_secret: Option<SecretString>,
    pub bearer_token: Option<SecretString>,
}

/// Why a request was refused. The reason is for metrics and logs; the client
/// only learns that it is unauthorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Neither a signature nor a bearer token was sent.
    Missing,
    /// A signature with a method other than sha256, or not hex.
    MalformedSignature,
    /// The signature does not match the body.
    BadSignature,
    /// The bearer token does not match.
    BadToken,
    /// The credential kind sent is not configured (e.g. a signature without a secret).
    MethodNotConfigured,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::BadToken => "bad_token",
            Self::MethodNotConfigured => "method_not_configured",
        }
    }
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Signature,
    Bearer,
}

impl From<AuthMethod> for crate::event::Authenticity {
    fn from(m: AuthMethod) -> Self {
        match m {
            AuthMethod::Signature => Self::Signature,
            AuthMethod::Bearer => Self::Bearer,
        }
    }
}

impl Verifier {
    /// Checks the request. `signature` is the `X-Hub-Signature` value, `authorization`
    /// the `Authorization` value (header lookups are case-insensitive in `http`).
    pub fn verify(
        &self,
        signature: Option<&str>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<AuthMethod, AuthFailure> {
        if let Some(sig) = signature {
            let secret = self.hmac_secret.as_ref().ok_or(AuthFailure::MethodNotConfigured)?;
            return verify_signature(secret, sig, body).map(|()| AuthMethod::Signature);
        }
        if let Some(auth) = authorization {
            let token = self.bearer_token.as_ref().ok_or(AuthFailure::MethodNotConfigured)?;
            let presented = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .ok_or(AuthFailure::BadToken)?
                .trim();
            return if token_matches(presented, token) { Ok(AuthMethod::Bearer) } else { Err(AuthFailure::BadToken) };
        }
        Err(AuthFailure::Missing)
    }
}

/// Whether a presented bearer token is the expected one, in constant time and
/// without leaking the expected token's length: `ct_eq` on slices of different
/// lengths returns at once, so both sides are hashed to 32 bytes first and the
/// digests compared. Shared by the ingress (Automation token) and the admin API.
pub fn token_matches(presented: &str, expected: &SecretString) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.expose_secret().as_bytes());
    presented.ct_eq(&expected).into()
}

/// Verifies `sha256=<hex>` against the body.
pub fn verify_signature(secret: &SecretString, header: &str, body: &[u8]) -> Result<(), AuthFailure> {
    let (method, hex_sig) = header.trim().split_once('=').ok_or(AuthFailure::MalformedSignature)?;
    if !method.eq_ignore_ascii_case("sha256") {
        return Err(AuthFailure::MalformedSignature);
    }
    let expected = hex::decode(hex_sig).map_err(|_| AuthFailure::MalformedSignature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).map_err(|_| AuthFailure::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| AuthFailure::BadSignature)
}

/// Computes the `X-Hub-Signature` header value for a body (used by `simulate`, tests and docs).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier {
            hmac_secret: Some(SecretString::from("It's a Secret to Everybody")),
            bearer_token: Some(SecretString::from("automation-token")),
        }
    }

    #[test]
    fn atlassians_published_test_vector_verifies() {
        let header = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
        assert_eq!(sign("It's a Secret to Everybody", b"Hello World!"), header);
        assert_eq!(verifier().verify(Some(header), None, b"Hello World!"), Ok(AuthMethod::Signature));
    }

    #[test]
    fn a_changed_body_or_method_fails() {
        let header = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
        assert_eq!(verifier().verify(Some(header), None, b"Hello World?"), Err(AuthFailure::BadSignature));
        let sha1 = header.replacen("sha256", "sha1", 1);
        assert_eq!(verifier().verify(Some(&sha1), None, b"Hello World!"), Err(AuthFailure::MalformedSignature));
        assert_eq!(verifier().verify(Some("sha256=zz"), None, b"x"), Err(AuthFailure::MalformedSignature));
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let v = verifier();
        assert_eq!(v.verify(None, Some("Bearer automation-token"), b"{}"), Ok(AuthMethod::Bearer));
        assert_eq!(v.verify(None, Some("Bearer automation-token2"), b"{}"), Err(AuthFailure::BadToken));
        assert_eq!(v.verify(None, Some("Basic automation-token"), b"{}"), Err(AuthFailure::BadToken));
        assert_eq!(v.verify(None, None, b"{}"), Err(AuthFailure::Missing));
    }

    #[test]
    fn token_matches_only_the_whole_token() {
        let expected = SecretString::from("automation-token");
        assert!(token_matches("automation-token", &expected));
        assert!(!token_matches("automation-tokem", &expected), "a different token of the same length");
        assert!(!token_matches("automation-", &expected), "a prefix");
        assert!(!token_matches("", &expected), "empty");
        assert!(!token_matches("automation-token-and-more", &expected), "a longer token");
        assert!(!token_matches("Automation-Token", &expected), "case matters");
    }

    #[test]
    fn a_credential_kind_that_is_not_configured_is_refused() {
        let v = Verifier { hmac_secret: None, bearer_token: Some(SecretString::from("t")) };
        assert_eq!(v.verify(Some(&sign("x", b"{}")), None, b"{}"), Err(AuthFailure::MethodNotConfigured));
    }
}
