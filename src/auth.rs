//! Token verification: the only place an identity comes from.
//!
//! A token is accepted only when its header names an algorithm that one of the
//! configured keys is for, its signature verifies with that key, and its
//! registered claims (exp, nbf, iss, aud, sub) are valid. `alg: none` cannot
//! pass: jsonwebtoken has no such algorithm, so the header fails to parse.
//! HS256 is refused unless a shared secret was configured explicitly, which
//! also closes the "HS256 signed with the RSA public key" confusion: an RSA
//! key never verifies an HMAC token.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use hashlink::LruCache;
use sha2::{Digest, Sha256};

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::domain::is_uscc;

/// Stable reason codes for authentication failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in the request body or authorization header")]
    Missing,
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("no configured key verifies tokens with kid {kid:?} and alg {alg}")]
    UnknownKey { kid: Option<String>, alg: String },
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not trusted")]
    WrongIssuer,
    #[error("token audience does not include this service")]
    WrongAudience,
    #[error("token lacks required claim {0}")]
    MissingClaim(String),
    #[error("token subject is not a unified social credit code: {0}")]
    InvalidSubject(String),
    #[error("token is too large ({0} bytes)")]
    TooLarge(usize),
    #[error("token id was already used by request {0}")]
    Replayed(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth.token_missing",
            AuthError::Malformed(_) => "auth.token_malformed",
            AuthError::AlgorithmNotAllowed(_) => "auth.algorithm_not_allowed",
            AuthError::UnknownKey { .. } => "auth.unknown_key",
            AuthError::BadSignature => "auth.bad_signature",
            AuthError::Expired => "auth.token_expired",
            AuthError::NotYetValid => "auth.token_not_yet_valid",
            AuthError::WrongIssuer => "auth.wrong_issuer",
            AuthError::WrongAudience => "auth.wrong_audience",
            AuthError::MissingClaim(_) => "auth.missing_claim",
            AuthError::InvalidSubject(_) => "auth.invalid_subject",
            AuthError::TooLarge(_) => "auth.token_too_large",
            AuthError::Replayed(_) => "auth.token_replayed",
        }
    }
}

/// Errors configuring the verifier (bad key files): fatal at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The verified identity of a requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The enterprise's unified social credit code.
    pub subject: String,
    pub issuer: String,
    pub roles: BTreeSet<String>,
    pub qualifications: BTreeSet<String>,
    pub token_id: Option<String>,
    pub expires_at: i64,
    /// The organisation the token speaks for: its `org` claim, else `sub`
    /// (a reviewer's department, which must hold the dataset).
    #[serde(default)]
    pub organisation: String,
    /// The person, when the token names one (`name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Claims tollgate reads from a requester token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    // Defaults here let a missing claim surface as `auth.missing_claim`
    // rather than as a token that does not parse.
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub aud: serde_json::Value,
    #[serde(default)]
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub qualifications: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The organisation (USCC) a person's token speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

impl Claims {
    /// Claims for `sub` from `iss` to `aud`, valid from now for `ttl_secs`
    /// (negative: already expired), with a fresh `jti` and no roles.
    pub fn new(sub: &str, iss: &str, aud: &str, ttl_secs: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: sub.to_owned(),
            iss: iss.to_owned(),
            aud: serde_json::Value::String(aud.to_owned()),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            roles: Vec::new(),
            qualifications: Vec::new(),
            name: None,
            org: None,
        }
    }

    /// A person speaking for an organisation (a reviewer for a department).
    pub fn for_organisation(mut self, name: &str, org: &str) -> Claims {
        self.name = Some(name.to_owned());
        self.org = Some(org.to_owned());
        self
    }

    pub fn with_roles<S: ToString>(mut self, roles: &[S]) -> Claims {
        self.roles = roles.iter().map(ToString::to_string).collect();
        self
    }

    pub fn with_qualifications<S: ToString>(mut self, qualifications: &[S]) -> Claims {
        self.qualifications = qualifications.iter().map(ToString::to_string).collect();
        self
    }
}

struct TrustedKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Verifies requester tokens against the configured key set.
pub struct Verifier {
    keys: Vec<TrustedKey>,
    issuers: Vec<String>,
    audience: Vec<String>,
    leeway_secs: u64,
    max_token_bytes: usize,
    /// Tokens that verified, by SHA-256 of the token text, until they
    /// expire: a signature check costs ~50 µs, a lookup well under one.
    /// Only complete successes are cached, so every failure is re-checked.
    cache: Option<Mutex<LruCache<[u8; 32], Packed>>>,
    /// Whether a token with a `jti` is cached: not while a `jti` authorizes
    /// one request (`auth.single_use_jti`), since its only later uses are
    /// the same request again (answered from its stored outcome) or a
    /// replay (refused): an entry per request would be memory for nothing
    /// (~7 MB of `serve`'s peak under a flood of fresh tokens).
    cache_single_use: bool,
}

/// A verified token's principal as the cache holds it: its JSON in one
/// allocation (~200 bytes) rather than the struct's dozen, two B-tree nodes
/// of ~280 bytes among them. 10 000 unique tokens held ~20 MB before.
/// Unpacking on a hit costs about what cloning the struct did.
struct Packed(Box<[u8]>);

impl Packed {
    fn pack(principal: &Principal) -> Option<Packed> {
        serde_json::to_vec(principal).ok().map(|v| Packed(v.into_boxed_slice()))
    }

    fn unpack(&self) -> Option<Principal> {
        serde_json::from_slice(&self.0).ok()
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .finish()
    }
}

fn algorithms_for_pem(pem: &str) -> Vec<Algorithm> {
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        return vec![Algorithm::RS256];
    }
    vec![]
}

impl Verifier {
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for path in &settings.public_keys {
            keys.push(load_pem_key(path)?);
        }
        if let Some(path) = &settings.jwks {
            keys.extend(load_jwks(path)?);
        }
        if let Some(secret) = settings.hs256_secret.as_ref().map(|s| s.expose()).filter(|_| settings.allow_hs256) {
            keys.push(TrustedKey {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        Ok(Verifier {
            keys,
            issuers: settings.issuers.clone(),
            audience: settings.audience.clone(),
            leeway_secs: settings.leeway_secs,
            max_token_bytes: settings.max_token_bytes,
            cache: (settings.token_cache_size > 0).then(|| Mutex::new(LruCache::new(settings.token_cache_size))),
            cache_single_use: !settings.single_use_jti,
        })
    }

    /// A verifier trusting exactly one EdDSA key; for the demo and tests.
    pub fn for_ed25519(public: &PublicKey, issuer: &str, audience: &str) -> Self {
        Verifier {
            keys: vec![TrustedKey {
                kid: Some(public.kid.clone()),
                algorithms: vec![Algorithm::EdDSA],
                key: public.decoding_key(),
            }],
            issuers: vec![issuer.to_owned()],
            audience: vec![audience.to_owned()],
            leeway_secs: 30,
            max_token_bytes: 8192,
            cache: Some(Mutex::new(LruCache::new(10_000))),
            // As configured by default (`auth.single_use_jti = true`).
            cache_single_use: false,
        }
    }

    /// The same checks with no cache of verified tokens: every token is
    /// verified in full (loadgen's crypto ceiling).
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` as of now.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge(token.len()));
        }
        self.verify_cached(token, chrono::Utc::now().timestamp())
    }

    /// [`Verifier::verify`] with the cache's clock reading `now` (the
    /// signature and claims checks of an uncached token read the real clock).
    fn verify_cached(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let Some(cache) = &self.cache else { return self.verify_uncached(token) };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        let hit = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).and_then(Packed::unpack);
        if let Some(principal) = hit {
            // What verification checked once stays true but for expiry.
            if now <= principal.expires_at.saturating_add(leeway) {
                return Ok(principal);
            }
            cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest);
            return Err(AuthError::Expired);
        }
        let principal = self.verify_uncached(token)?;
        let reusable = principal.token_id.is_none() || self.cache_single_use;
        if let Some(packed) = reusable.then(|| Packed::pack(&principal)).flatten() {
            cache.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, packed);
        }
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        // A JWS in compact form has exactly three parts; five is an
        // (unsupported) encrypted JWE, anything else no JWT at all.
        let parts = token.split('.').count();
        if parts != 3 {
            return Err(AuthError::Malformed(format!("{parts} dot-separated parts, not 3")));
        }
        // A header naming an algorithm jsonwebtoken does not know (such as
        // "none") fails to parse; report it as the algorithm it is.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match header_alg(token) {
            Some(alg) => AuthError::AlgorithmNotAllowed(alg),
            None => AuthError::Malformed(e.to_string()),
        })?;
        let alg = header.alg;
        if !self.keys.iter().any(|k| k.algorithms.contains(&alg)) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        // A kid, when given, must name a configured key: an unknown or
        // injected kid never falls back to "try every key".
        let candidates: Vec<&TrustedKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            // The kid names a key, but one of another algorithm: the key is
            // known, the algorithm is what is refused.
            if let Some(kid) = &header.kid
                && self.keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?} is not the algorithm of key {kid:?}")));
            }
            return Err(AuthError::UnknownKey { kid: header.kid.clone(), alg: format!("{alg:?}") });
        }

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&self.issuers);
        validation.set_audience(&self.audience);

        let mut last = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.principal_from(data.claims),
                Err(e) => {
                    last = map_jwt_error(e.kind());
                    // Only a signature mismatch is worth trying the next key
                    // for; any claim error means the signature was good.
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let first = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(|a| a.chars().take(16).collect()))
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAllowed("mismatch".into())
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

impl Verifier {
    fn principal_from(&self, claims: Claims) -> Result<Principal, AuthError> {
        // jsonwebtoken checks exp and nbf, not iat: a token "issued" in the
        // future beyond the leeway is no more valid yet than one whose nbf is.
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        if claims.iat.is_some_and(|iat| iat > chrono::Utc::now().timestamp().saturating_add(leeway)) {
            return Err(AuthError::NotYetValid);
        }
        principal_from(claims)
    }
}

fn principal_from(claims: Claims) -> Result<Principal, AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::MissingClaim("sub".into()));
    }
    if !is_uscc(&claims.sub) {
        return Err(AuthError::InvalidSubject(claims.sub.chars().take(32).collect()));
    }
    Ok(Principal {
        organisation: claims.org.unwrap_or_else(|| claims.sub.clone()),
        subject: claims.sub,
        issuer: claims.iss,
        roles: claims.roles.into_iter().collect(),
        qualifications: claims.qualifications.into_iter().collect(),
        token_id: claims.jti,
        expires_at: claims.exp,
        name: claims.name,
    })
}

/// A key file's kid is its name up to the first dot: `idp-1.pub.pem` is "idp-1".
fn kid_from_path(path: &Path) -> String {
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_owned()
}

fn load_pem_key(path: &Path) -> Result<TrustedKey, KeyError> {
    let p = path.display().to_string();
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
    let invalid = |e: jsonwebtoken::errors::Error| KeyError::Invalid { path: p.clone(), message: e.to_string() };
    // One PEM "PUBLIC KEY" block can hold RSA, EC or Ed25519 keys; try each
    // family and keep the one that parses. The kid is the file stem so a
    // token can name its key.
    let kid = Some(kid_from_path(path));
    let mut algs = algorithms_for_pem(&pem);
    let key = if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
        algs = vec![Algorithm::EdDSA];
        k
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        algs = vec![Algorithm::ES256];
        k
    } else {
        let k = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(invalid)?;
        if algs.is_empty() {
            algs = vec![Algorithm::RS256];
        }
        k
    };
    Ok(TrustedKey { kid, algorithms: algs, key })
}

fn load_jwks(path: &Path) -> Result<Vec<TrustedKey>, KeyError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&text).map_err(|e| KeyError::Invalid { path: p.clone(), message: e.to_string() })?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let algorithms = match &jwk.algorithm {
            P::RSA(_) => vec![Algorithm::RS256],
            P::EllipticCurve(_) => vec![Algorithm::ES256],
            P::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // Symmetric keys in a JWKS would make HS256 possible without the
            // explicit opt-in; refuse them.
            P::OctetKey(_) => {
                return Err(KeyError::Invalid {
                    path: p,
                    message: "symmetric (oct) keys are not accepted in a JWKS; use auth.hs256_secret".into(),
                });
            }
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Invalid { path: p.clone(), message: e.to_string() })?;
        keys.push(TrustedKey { kid: jwk.common.key_id.clone(), algorithms, key });
    }
    Ok(keys)
}

/// An Ed25519 signing key: used for grants, and by the demo and tests to act
/// as an identity provider.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    inner: ed25519_dalek::SigningKey,
    /// The token header for this key, base64url: the same for every token.
    header_b64: String,
}

/// The public half of a [`SigningKey`].
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub kid: String,
    inner: ed25519_dalek::VerifyingKey,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        let mut rng = rand::rngs::OsRng;
        Self::new(kid.to_owned(), ed25519_dalek::SigningKey::generate(&mut rng))
    }

    fn new(kid: String, inner: ed25519_dalek::SigningKey) -> Self {
        use base64::Engine;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let json = serde_json::to_vec(&header).expect("a JWT header serialises");
        let header_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        SigningKey { kid, inner, header_b64 }
    }

    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let p = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| KeyError::Invalid { path: p, message: format!("not an Ed25519 PKCS#8 key: {e}") })?;
        Ok(Self::new(kid_from_path(path), inner))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { kid: self.kid.clone(), inner: self.inner.verifying_key() }
    }

    pub fn to_pkcs8_pem(&self) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.inner
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 key always encodes")
            .to_string()
    }

    #[cfg(test)]
    fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let der = self.inner.to_pkcs8_der().expect("an Ed25519 key always encodes");
        jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes())
    }

    /// Signs `claims` as an EdDSA JWT with this key's kid: the same bytes
    /// as `jsonwebtoken::encode` (Ed25519 is deterministic; a test holds
    /// them equal), without its per-call cost of re-encoding the key and
    /// deriving its public half (which doubled the cost of a grant).
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut jwt = String::with_capacity(512);
        jwt.push_str(&self.header_b64);
        jwt.push('.');
        b64.encode_string(serde_json::to_vec(claims).expect("claims serialise"), &mut jwt);
        let signature = self.inner.sign(jwt.as_bytes());
        jwt.push('.');
        b64.encode_string(signature.to_bytes(), &mut jwt);
        jwt
    }
}

impl SigningKey {
    /// Ed25519 over `bytes`, base64url without padding (audit checkpoints).
    pub fn sign_raw(&self, bytes: &[u8]) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.inner.sign(bytes).to_bytes())
    }
}

impl PublicKey {
    /// An Ed25519 key from its JWK (`kty` OKP, `crv` Ed25519, `x`, `kid`).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<PublicKey, String> {
        use base64::Engine;
        let field = |name: &str| jwk.get(name).and_then(serde_json::Value::as_str);
        if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
            return Err("not an Ed25519 JWK (kty OKP, crv Ed25519)".into());
        }
        let x = field("x").ok_or("the JWK has no x")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x).map_err(|e| format!("x: {e}"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "x is not 32 bytes".to_owned())?;
        let inner = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
        Ok(PublicKey { kid: field("kid").unwrap_or_default().to_owned(), inner })
    }

    /// Whether `signature` (base64url, as [`SigningKey::sign_raw`]) is this
    /// key's over `bytes`.
    pub fn verify_raw(&self, bytes: &[u8], signature: &str) -> bool {
        use base64::Engine;
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else { return false };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else { return false };
        self.inner.verify_strict(bytes, &sig).is_ok()
    }

    /// An Ed25519 public key (SPKI PEM, as `keygen` writes NAME.pub.pem) or
    /// the public half of a private one (PKCS#8 PEM); the kid is the file
    /// name up to its first dot.
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        let p = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        if pem.contains("PRIVATE KEY") {
            return Ok(SigningKey::from_pem_file(path)?.public());
        }
        let inner = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
            .map_err(|e| KeyError::Invalid { path: p, message: format!("not an Ed25519 public key: {e}") })?;
        Ok(PublicKey { kid: kid_from_path(path), inner })
    }

    pub fn to_pem(&self) -> String {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        self.inner
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 key always encodes")
    }

    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(self.inner.as_bytes())
    }

    /// The key as a JWK, for data hosts that verify grants.
    pub fn to_jwk(&self) -> serde_json::Value {
        use base64::Engine;
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.inner.as_bytes()),
        })
    }
}

pub mod grant;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::uscc_with_check;
    use jsonwebtoken::EncodingKey;

    const ISS: &str = "https://idp.example.gov.cn";
    const AUD: &str = "tollgate";

    fn claims(sub: &str, exp_offset: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: sub.into(),
            iss: ISS.into(),
            aud: serde_json::json!(AUD),
            exp: now + exp_offset,
            nbf: None,
            iat: Some(now),
            jti: Some("t-1".into()),
            roles: vec!["data_user".into()],
            qualifications: vec!["medical_research".into()],
            name: None,
            org: None,
        }
    }

    fn sample_uscc() -> String {
        uscc_with_check("91610131MA6TG1L5X")
    }

    fn setup() -> (SigningKey, Verifier) {
        let key = SigningKey::generate("idp-1");
        let verifier = Verifier::for_ed25519(&key.public(), ISS, AUD);
        (key, verifier)
    }

    #[test]
    fn a_signed_token_is_byte_for_byte_what_jsonwebtoken_encodes() {
        let (key, verifier) = setup();
        let c = claims(&sample_uscc(), 300);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let reference = jsonwebtoken::encode(&header, &c, &key.encoding_key()).unwrap();
        assert_eq!(key.sign(&c), reference);
        assert!(verifier.verify(&key.sign(&c)).is_ok());
    }

    #[test]
    fn uscc_check_character_is_validated() {
        let good = sample_uscc();
        assert!(is_uscc(&good));
        let mut bad = good.clone();
        bad.replace_range(17..18, if &good[17..] == "0" { "1" } else { "0" });
        assert!(!is_uscc(&bad));
        assert!(!is_uscc("91610131MA6TG1L5"));
        assert!(!is_uscc("91610131MA6TG1L5IO"));
    }

    #[test]
    fn valid_token_yields_principal_from_claims() {
        let (key, verifier) = setup();
        let p = verifier.verify(&key.sign(&claims(&sample_uscc(), 300))).unwrap();
        assert_eq!(p.subject, sample_uscc());
        assert!(p.roles.contains("data_user"));
        assert!(p.qualifications.contains("medical_research"));
    }

    fn cached(verifier: &Verifier) -> usize {
        verifier.cache.as_ref().map_or(0, |c| c.lock().unwrap().len())
    }

    #[test]
    fn a_cached_token_is_refused_once_it_expires() {
        let (key, verifier) = setup();
        let token = key.sign(&Claims { jti: None, ..claims(&sample_uscc(), 300) });
        let now = chrono::Utc::now().timestamp();
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify_cached(&token, now + 300).is_ok(), "within the leeway");
        // Only the cache can say so: by the real clock the token is valid.
        assert_eq!(verifier.verify_cached(&token, now + 400).unwrap_err().code(), "auth.token_expired");
    }

    #[test]
    fn a_cached_token_names_exactly_the_principal_its_first_verification_did() {
        let (key, verifier) = setup();
        let mut c = claims(&sample_uscc(), 300);
        c.roles = vec!["tourism-developer".into(), "data-user".into()];
        c.qualifications = vec!["class-a".into()];
        c.name = Some("王小明 \"quoted\"".into());
        c.org = Some(sample_uscc());
        c.jti = None;
        let token = key.sign(&c);
        let first = verifier.verify(&token).unwrap();
        assert_eq!(first.roles.len(), 2);
        assert_eq!(cached(&verifier), 1);
        assert_eq!(verifier.verify(&token).unwrap(), first, "from the cache");
        assert_eq!(verifier.without_cache().verify(&token).unwrap(), first, "verified again in full");
    }

    #[test]
    fn a_single_use_token_is_not_cached_unless_token_ids_are_reusable() {
        let (key, verifier) = setup();
        let token = key.sign(&claims(&sample_uscc(), 300));
        assert_eq!(verifier.verify(&token).unwrap().token_id.as_deref(), Some("t-1"));
        assert_eq!(cached(&verifier), 0, "a jti authorizes one request: nothing to reuse");
        let reusable = Verifier { cache_single_use: true, ..Verifier::for_ed25519(&key.public(), ISS, AUD) };
        reusable.verify(&token).unwrap();
        assert_eq!(cached(&reusable), 1, "with auth.single_use_jti = false a jti token is reusable");
        let settings = AuthSettings { single_use_jti: false, ..AuthSettings::default() };
        assert!(Verifier::from_settings(&settings).unwrap().cache_single_use);
        assert!(!Verifier::from_settings(&AuthSettings::default()).unwrap().cache_single_use);
    }

    #[test]
    fn expired_token_is_rejected_beyond_leeway() {
        let (key, verifier) = setup();
        let err = verifier.verify(&key.sign(&claims(&sample_uscc(), -120))).unwrap_err();
        assert_eq!(err.code(), "auth.token_expired");
        // Within the 30 s leeway it still passes.
        assert!(verifier.verify(&key.sign(&claims(&sample_uscc(), -10))).is_ok());
    }

    #[test]
    fn token_not_yet_valid_is_rejected() {
        let (key, verifier) = setup();
        let mut c = claims(&sample_uscc(), 600);
        c.nbf = Some(chrono::Utc::now().timestamp() + 300);
        assert_eq!(verifier.verify(&key.sign(&c)).unwrap_err().code(), "auth.token_not_yet_valid");
    }

    #[test]
    fn wrong_issuer_and_audience_are_rejected() {
        let (key, verifier) = setup();
        let mut c = claims(&sample_uscc(), 300);
        c.iss = "https://evil.example".into();
        assert_eq!(verifier.verify(&key.sign(&c)).unwrap_err().code(), "auth.wrong_issuer");
        let mut c = claims(&sample_uscc(), 300);
        c.aud = serde_json::json!("someone-else");
        assert_eq!(verifier.verify(&key.sign(&c)).unwrap_err().code(), "auth.wrong_audience");
    }

    #[test]
    fn token_signed_by_another_key_with_same_kid_is_rejected() {
        let (_, verifier) = setup();
        let other = SigningKey::generate("idp-1");
        let err = verifier.verify(&other.sign(&claims(&sample_uscc(), 300))).unwrap_err();
        assert_eq!(err.code(), "auth.bad_signature");
    }

    #[test]
    fn unknown_kid_is_rejected_without_trying_other_keys() {
        let (_, verifier) = setup();
        let other = SigningKey::generate("injected");
        let err = verifier.verify(&other.sign(&claims(&sample_uscc(), 300))).unwrap_err();
        assert_eq!(err.code(), "auth.unknown_key");
    }

    #[test]
    fn alg_none_and_hs256_are_rejected() {
        use base64::Engine;
        let (_, verifier) = setup();
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let body = b64(serde_json::to_value(claims(&sample_uscc(), 300)).unwrap());
        let none = format!("{}.{}.", b64(serde_json::json!({"alg": "none", "typ": "JWT"})), body);
        assert_eq!(verifier.verify(&none).unwrap_err().code(), "auth.algorithm_not_allowed");
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(&sample_uscc(), 300),
            &EncodingKey::from_secret(b"guessable"),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs).unwrap_err().code(), "auth.algorithm_not_allowed");
    }

    #[test]
    fn subject_must_be_a_uscc() {
        let (key, verifier) = setup();
        let err = verifier.verify(&key.sign(&claims("alice", 300))).unwrap_err();
        assert_eq!(err.code(), "auth.invalid_subject");
    }

    #[test]
    fn garbage_and_huge_tokens_are_rejected() {
        let (_, verifier) = setup();
        assert_eq!(verifier.verify("not-a-jwt").unwrap_err().code(), "auth.token_malformed");
        assert_eq!(verifier.verify("a.b.c").unwrap_err().code(), "auth.token_malformed");
        let huge = "x".repeat(100_000);
        assert_eq!(verifier.verify(&huge).unwrap_err().code(), "auth.token_too_large");
    }

    #[test]
    fn pem_files_round_trip_through_settings() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("idp-file");
        let path = dir.path().join("idp-file.pub.pem");
        std::fs::write(&path, key.public().to_pem()).unwrap();
        let settings = AuthSettings {
            public_keys: vec![path],
            issuers: vec![ISS.into()],
            audience: vec![AUD.into()],
            ..AuthSettings::default()
        };
        let verifier = Verifier::from_settings(&settings).unwrap();
        // A token without a kid is tried against every key of its algorithm.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = None;
        let token = jsonwebtoken::encode(&header, &claims(&sample_uscc(), 300), &key.encoding_key()).unwrap();
        assert!(verifier.verify(&token).is_ok());
    }

    fn settings_with_key(dir: &Path, file: &str, pem: &str) -> AuthSettings {
        let path = dir.join(file);
        std::fs::write(&path, pem).unwrap();
        AuthSettings {
            public_keys: vec![path],
            issuers: vec![ISS.into()],
            audience: vec![AUD.into()],
            ..AuthSettings::default()
        }
    }

    #[test]
    fn rs256_tokens_verify_and_hs256_signed_with_the_rsa_public_key_does_not() {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let dir = tempfile::tempdir().unwrap();
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let public_pem = private.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let private_pem = private.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let verifier = Verifier::from_settings(&settings_with_key(dir.path(), "rsa-1.pub.pem", &public_pem)).unwrap();

        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims(&sample_uscc(), 300), &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().subject, sample_uscc());

        // The classic confusion attack: HMAC keyed with the public key.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(&sample_uscc(), 300),
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&forged).unwrap_err().code(), "auth.algorithm_not_allowed");
    }

    #[test]
    fn es256_tokens_verify_from_a_pem_key() {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let dir = tempfile::tempdir().unwrap();
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let public_pem = secret.public_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let private_pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let verifier = Verifier::from_settings(&settings_with_key(dir.path(), "ec-1.pub.pem", &public_pem)).unwrap();
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(&sample_uscc(), 300), &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().subject, sample_uscc());
        // An EdDSA token is not accepted by an ES256-only key set.
        let ed = SigningKey::generate("ec-1");
        assert_eq!(
            verifier.verify(&ed.sign(&claims(&sample_uscc(), 300))).unwrap_err().code(),
            "auth.algorithm_not_allowed"
        );
    }

    #[test]
    fn a_kid_naming_a_key_of_another_algorithm_refuses_the_algorithm_not_the_key() {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let dir = tempfile::tempdir().unwrap();
        let ec = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let ec_pub = ec.public_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let rsa_pub = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .unwrap()
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let mut settings = settings_with_key(dir.path(), "ec-1.pub.pem", &ec_pub);
        settings.public_keys.push(settings_with_key(dir.path(), "rsa-1.pub.pem", &rsa_pub).public_keys.remove(0));
        let verifier = Verifier::from_settings(&settings).unwrap();
        let key = EncodingKey::from_ec_pem(ec.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".into());
        let token = jsonwebtoken::encode(&header, &claims(&sample_uscc(), 300), &key).unwrap();
        assert!(verifier.verify(&token).is_ok());
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &claims(&sample_uscc(), 300), &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap_err().code(), "auth.algorithm_not_allowed");
        header.kid = Some("nobody".into());
        let token = jsonwebtoken::encode(&header, &claims(&sample_uscc(), 300), &key).unwrap();
        assert_eq!(verifier.verify(&token).unwrap_err().code(), "auth.unknown_key");
    }

    #[test]
    fn a_token_without_exp_lacks_a_claim_and_one_issued_in_the_future_is_not_yet_valid() {
        let (key, verifier) = setup();
        let now = chrono::Utc::now().timestamp();
        let no_exp = serde_json::json!({"sub": sample_uscc(), "iss": ISS, "aud": AUD, "iat": now});
        assert_eq!(verifier.verify(&key.sign(&no_exp)).unwrap_err().code(), "auth.missing_claim");
        let mut future = claims(&sample_uscc(), 300);
        future.iat = Some(now + 10 * 365 * 86_400);
        assert_eq!(verifier.verify(&key.sign(&future)).unwrap_err().code(), "auth.token_not_yet_valid");
        // Within the leeway, a clock a little ahead is fine.
        future.iat = Some(now + 30);
        assert!(verifier.verify(&key.sign(&future)).is_ok());
    }

    #[test]
    fn tokens_of_two_or_five_parts_are_malformed_whatever_their_header_says() {
        let (key, verifier) = setup();
        let token = key.sign(&claims(&sample_uscc(), 300));
        let (head, _) = token.rsplit_once('.').unwrap();
        assert_eq!(verifier.verify(head).unwrap_err().code(), "auth.token_malformed");
        let five = format!("{token}.e30.e30");
        assert_eq!(verifier.verify(&five).unwrap_err().code(), "auth.token_malformed");
    }

    #[test]
    fn jwks_keys_are_selected_by_kid_and_symmetric_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::generate("key-a");
        let b = SigningKey::generate("key-b");
        let jwks = serde_json::json!({"keys": [a.public().to_jwk(), b.public().to_jwk()]});
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let settings = AuthSettings {
            jwks: Some(path.clone()),
            issuers: vec![ISS.into()],
            audience: vec![AUD.into()],
            ..AuthSettings::default()
        };
        let verifier = Verifier::from_settings(&settings).unwrap();
        assert!(verifier.verify(&a.sign(&claims(&sample_uscc(), 300))).is_ok());
        assert!(verifier.verify(&b.sign(&claims(&sample_uscc(), 300))).is_ok());
        assert_eq!(
            verifier.verify(&SigningKey::generate("key-c").sign(&claims(&sample_uscc(), 300))).unwrap_err().code(),
            "auth.unknown_key"
        );

        std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#).unwrap();
        assert!(matches!(Verifier::from_settings(&settings), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn hs256_works_only_when_explicitly_enabled() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(&sample_uscc(), 300),
            &EncodingKey::from_secret(b"a long shared secret"),
        )
        .unwrap();
        let mut settings = AuthSettings {
            issuers: vec![ISS.into()],
            audience: vec![AUD.into()],
            hs256_secret: Some(crate::config::Secret::new("a long shared secret")),
            ..AuthSettings::default()
        };
        assert_eq!(
            Verifier::from_settings(&settings).unwrap().verify(&token).unwrap_err().code(),
            "auth.algorithm_not_allowed"
        );
        settings.allow_hs256 = true;
        assert!(Verifier::from_settings(&settings).unwrap().verify(&token).is_ok());
    }
}
