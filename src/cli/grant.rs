//! `tollgate grant jwks|verify`: what a data host needs to check grants.

use std::path::{Path, PathBuf};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use tollgate::auth::PublicKey;
use tollgate::auth::grant::{GrantCheck, verify_grant};
use tollgate::config::Settings;
use tollgate::store::Store;

/// The JWKS as the HTTP listener serves it: keys in use in the database
/// plus the configured signing and next keys.
async fn configured_jwks(settings: &Settings) -> anyhow::Result<serde_json::Value> {
    let mut configured = Vec::new();
    if let Some(path) = &settings.grant.signing_key {
        configured.push(PublicKey::from_pem_file(path)?);
    }
    for path in &settings.grant.next_keys {
        configured.push(PublicKey::from_pem_file(path)?);
    }
    let store = Store::connect(&settings.database.url, 1).await?;
    let now = chrono::Utc::now().timestamp();
    Ok(tollgate::broker::grant_keys::jwks(&store, &configured, now).await?)
}

/// Writes the JWKS to `out` (standard output when None).
pub async fn jwks(settings: &Settings, out: Option<&Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&configured_jwks(settings).await?)?;
    match out {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// Writes the revocation list to `out` (standard output when None).
pub async fn revocations(settings: &Settings, out: Option<&Path>) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database.url, 1).await?;
    let list = tollgate::broker::grant_keys::revocation_list(&store, chrono::Utc::now().timestamp()).await?;
    let text = serde_json::to_string_pretty(&list)?;
    match out {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// Where `grant verify` gets its keys or revocation list.
pub enum KeySource {
    /// tollgate's own configuration and database.
    Configured,
    File(PathBuf),
    Url(String),
}

impl KeySource {
    pub fn parse(arg: Option<String>) -> KeySource {
        match arg {
            None => KeySource::Configured,
            Some(a) if a.starts_with("http://") || a.starts_with("https://") => KeySource::Url(a),
            Some(a) => KeySource::File(a.into()),
        }
    }

    /// The revocation list from here (the database for `Configured`).
    async fn revocations(&self, settings: &Settings) -> anyhow::Result<serde_json::Value> {
        Ok(match self {
            KeySource::Configured => {
                let store = Store::connect(&settings.database.url, 1).await?;
                tollgate::broker::grant_keys::revocation_list(&store, chrono::Utc::now().timestamp()).await?
            }
            KeySource::File(path) => serde_json::from_str(
                &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )?,
            KeySource::Url(url) => fetch(url)?,
        })
    }

    async fn load(&self, settings: &Settings) -> anyhow::Result<JwkSet> {
        let value = match self {
            KeySource::Configured => configured_jwks(settings).await?,
            KeySource::File(path) => serde_json::from_str(
                &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )?,
            KeySource::Url(url) => fetch(url)?,
        };
        serde_json::from_value(value).context("not a JWKS")
    }
}

fn fetch(url: &str) -> anyhow::Result<serde_json::Value> {
    use ureq::tls::{TlsConfig, TlsProvider};
    let tls = TlsConfig::builder().provider(TlsProvider::NativeTls).build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    let body = agent
        .get(url)
        .call()
        .with_context(|| format!("fetching {url}"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    serde_json::from_str(&body).with_context(|| format!("{url} is not JSON"))
}

/// What `grant verify` was asked.
pub struct VerifyOptions {
    pub token: String,
    pub keys: KeySource,
    /// Where the revocation list comes from; None: the database when the
    /// keys come from the configuration, else no revocation check.
    pub revocations: Option<KeySource>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub json: bool,
}

/// Checks one grant; prints its claims or why it is not good. Ok(false)
/// for a grant that is not good (the command then exits non-zero).
pub async fn verify(settings: &Settings, opts: VerifyOptions) -> anyhow::Result<bool> {
    let jwks = opts.keys.load(settings).await?;
    let issuer =
        opts.issuer.or_else(|| matches!(opts.keys, KeySource::Configured).then(|| settings.grant.issuer.clone()));
    let mut check = GrantCheck { issuer, audience: opts.audience, ..GrantCheck::default() };
    let revocations = match (&opts.revocations, &opts.keys) {
        (Some(source), _) => Some(source),
        (None, KeySource::Configured) => Some(&KeySource::Configured),
        (None, _) => None,
    };
    if let Some(source) = revocations {
        check = check.with_revocation_list(&source.revocations(settings).await?).map_err(anyhow::Error::msg)?;
    }
    let result = verify_grant(&opts.token, &jwks, &check, chrono::Utc::now().timestamp());
    let report = match &result {
        Ok(claims) => json!({ "valid": true, "claims": claims }),
        Err(e) => json!({ "valid": false, "code": e.code(), "message": e.to_string() }),
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &result {
            Ok(c) => {
                println!("VALID grant {} to {}: {} on {} in {}", c.jti, c.sub, c.operation, c.dataset, c.scenario);
                println!("{}", serde_json::to_string_pretty(&report["claims"])?);
            }
            Err(e) => println!("INVALID {}: {e}", e.code()),
        }
    }
    Ok(result.is_ok())
}
