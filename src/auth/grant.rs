//! Checking a grant the way a data host does: the EdDSA signature against
//! the published JWKS (key chosen by `kid`), then time, issuer and audience.
//! `tollgate grant verify` is this function; the README shows the same
//! checks with PyJWT, and a test holds the two to the same answers.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::contract::{GrantClaims, Reason};

/// What a grant must also satisfy besides its signature and time.
#[derive(Debug, Clone, Default)]
pub struct GrantCheck {
    /// The issuer tollgate signs as (`grant.issuer`); None: any.
    pub issuer: Option<String>,
    /// The data host's own organisation code; None: any holder.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: i64,
    /// Revoked grants by decision id (`jti`), with the revocation's reason.
    pub revoked: std::collections::HashMap<String, Reason>,
}

impl GrantCheck {
    /// Takes in a revocation list as `/revocations` and `grant revocations` write it.
    pub fn with_revocation_list(mut self, list: &serde_json::Value) -> Result<Self, String> {
        let entries =
            list.get("revoked").and_then(|r| r.as_array()).ok_or("not a revocation list: no \"revoked\" array")?;
        for e in entries {
            let id = e.get("decision_id").and_then(|d| d.as_str()).ok_or("a revoked entry without decision_id")?;
            let reason: Reason = serde_json::from_value(e.get("reason").cloned().unwrap_or_default())
                .map_err(|err| format!("revoked entry {id}: {err}"))?;
            self.revoked.insert(id.to_owned(), reason);
        }
        Ok(self)
    }
}

/// Why a grant is not good, with a stable code (`grant.*`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("not a grant token: {0}")]
    Malformed(String),
    #[error("signed with {0}; grants are signed with EdDSA")]
    Algorithm(String),
    #[error(
        "no key {0:?} in the JWKS (a key retired longer ago than any grant it signed can be valid, or not tollgate's)"
    )]
    UnknownKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("expired at {0}")]
    Expired(i64),
    #[error("not valid before {0}")]
    NotYetValid(i64),
    #[error("issued by {0}")]
    WrongIssuer(String),
    #[error("granted to data holder {0}")]
    WrongAudience(String),
    #[error("revoked ({}): {}", .0.code, .0.message)]
    Revoked(Reason),
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Malformed(_) => "grant.malformed",
            GrantError::Algorithm(_) => "grant.algorithm_not_allowed",
            GrantError::UnknownKey(_) => "grant.unknown_key",
            GrantError::BadSignature => "grant.bad_signature",
            GrantError::Expired(_) => "grant.expired",
            GrantError::NotYetValid(_) => "grant.not_yet_valid",
            GrantError::WrongIssuer(_) => "grant.wrong_issuer",
            GrantError::WrongAudience(_) => "grant.wrong_audience",
            GrantError::Revoked(_) => "grant.revoked",
        }
    }
}

/// The grant's claims if `token` is a grant signed by a key in `jwks`,
/// valid at `now` (Unix seconds) and meeting `check`.
pub fn verify_grant(token: &str, jwks: &JwkSet, check: &GrantCheck, now: i64) -> Result<GrantClaims, GrantError> {
    let header = jsonwebtoken::decode_header(token.trim()).map_err(|e| GrantError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(GrantError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.unwrap_or_default();
    let jwk = jwks.find(&kid).ok_or_else(|| GrantError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| GrantError::UnknownKey(kid))?;
    // Time and audience are checked below against `now` and `check`, so the
    // answer does not depend on when jsonwebtoken reads the clock.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<GrantClaims>(token.trim(), &key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => GrantError::BadSignature,
        _ => GrantError::Malformed(e.to_string()),
    })?;
    let c = claims.claims;
    if now > c.exp + check.leeway_secs {
        return Err(GrantError::Expired(c.exp));
    }
    if now + check.leeway_secs < c.nbf {
        return Err(GrantError::NotYetValid(c.nbf));
    }
    if check.issuer.as_ref().is_some_and(|iss| *iss != c.iss) {
        return Err(GrantError::WrongIssuer(c.iss));
    }
    if check.audience.as_ref().is_some_and(|aud| *aud != c.aud) {
        return Err(GrantError::WrongAudience(c.aud));
    }
    if let Some(reason) = check.revoked.get(&c.jti) {
        return Err(GrantError::Revoked(reason.clone()));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SigningKey;

    fn claims(exp: i64) -> GrantClaims {
        GrantClaims {
            iss: "tollgate".into(),
            sub: "91350100MA2XXXXXX1".into(),
            aud: "11610100MB00014076".into(),
            jti: "d-1".into(),
            iat: 1000,
            nbf: 1000,
            exp,
            request_id: "r-1".into(),
            dataset: "GX-610100-TOUR-0001".into(),
            scenario: "smart-tourism".into(),
            operation: "query".into(),
            obligations: vec![],
            policy_version: "sha256:00".into(),
        }
    }

    fn jwks(keys: &[&SigningKey]) -> JwkSet {
        serde_json::from_value(
            serde_json::json!({"keys": keys.iter().map(|k| k.public().to_jwk()).collect::<Vec<_>>()}),
        )
        .unwrap()
    }

    #[test]
    fn a_grant_verifies_with_the_jwks_and_fails_with_a_stable_code_otherwise() {
        let (key, other) = (SigningKey::generate("g1"), SigningKey::generate("g2"));
        let token = key.sign(&claims(2000));
        let set = jwks(&[&key, &other]);
        let check = GrantCheck {
            issuer: Some("tollgate".into()),
            audience: Some("11610100MB00014076".into()),
            ..GrantCheck::default()
        };
        assert_eq!(verify_grant(&token, &set, &check, 1500).unwrap().jti, "d-1");

        let code =
            |t: &str, set: &JwkSet, check: &GrantCheck, now| verify_grant(t, set, check, now).unwrap_err().code();
        assert_eq!(code(&token, &set, &check, 2001), "grant.expired");
        assert_eq!(code(&token, &set, &check, 999), "grant.not_yet_valid");
        assert_eq!(code(&token, &jwks(&[&other]), &check, 1500), "grant.unknown_key");
        let forged = SigningKey::generate("g1").sign(&claims(2000));
        assert_eq!(code(&forged, &set, &check, 1500), "grant.bad_signature");
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut c = claims(9999);
            c.operation = "download".into();
            b64.encode(serde_json::to_vec(&c).unwrap())
        };
        assert_eq!(code(&parts.join("."), &set, &check, 1500), "grant.bad_signature");
        let elsewhere = GrantCheck { audience: Some("11610000MB00011852".into()), ..check.clone() };
        assert_eq!(code(&token, &set, &elsewhere, 1500), "grant.wrong_audience");
        let issuer = GrantCheck { issuer: Some("someone".into()), ..check.clone() };
        assert_eq!(code(&token, &set, &issuer, 1500), "grant.wrong_issuer");
        assert_eq!(code("not.a.jwt", &set, &check, 1500), "grant.malformed");
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(2000),
            &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
        )
        .unwrap();
        assert_eq!(code(&hs256, &set, &check, 1500), "grant.algorithm_not_allowed");
        let list = serde_json::json!({"revoked": [{"decision_id": "d-1", "reason": {"code": "revoke.command", "message": "contract ended"}}]});
        let revoked = check.clone().with_revocation_list(&list).unwrap();
        assert_eq!(code(&token, &set, &revoked, 1500), "grant.revoked");
    }
}
