//! The keys grants are signed with, and the JWKS data hosts verify them
//! with.
//!
//! What must stay true: every grant a key signed verifies with the JWKS
//! for as long as the grant is valid, on every instance. So before a batch
//! may sign a grant expiring after the bound recorded in the store
//! (`grant_keys.signs_until`), the bound is raised (rarely: a lease runs
//! ahead); the JWKS is every key with a bound in the future, from the store
//! (all instances' keys), plus the active key and keys announced ahead of
//! use (`grant.next_keys`). Rotation is then: announce the next key, wait
//! for hosts' JWKS caches, make it `grant.signing_key`; the old key leaves
//! the JWKS when the last grant it signed expires.

use std::sync::atomic::{AtomicI64, Ordering};

use tracing::warn;

use crate::auth::{KeyError, PublicKey, SigningKey};
use crate::config::GrantSettings;
use crate::store::{Store, StoreError};

/// How far a lease runs past the grants it must cover, at most: the store
/// is written about once per this interval while grants are signed, and a
/// key retired by a crash (no release) stays published this much longer.
const LEASE_AHEAD_SECS: i64 = 600;

pub struct GrantKeys {
    active: SigningKey,
    /// Published before they sign anything (`grant.next_keys`).
    next: Vec<PublicKey>,
    ttl_secs: i64,
    instance: String,
    store: Store,
    /// The bound recorded in the store for the active key (Unix seconds).
    leased_until: AtomicI64,
    /// The latest `exp` signed so far (Unix seconds).
    last_signed: AtomicI64,
}

impl GrantKeys {
    /// The configured keys; a key generated for this run when none is
    /// configured (its grants then fail to verify once it leaves the JWKS).
    pub fn from_settings(settings: &GrantSettings, instance: &str, store: Store) -> Result<GrantKeys, KeyError> {
        let active = match &settings.signing_key {
            Some(path) => SigningKey::from_pem_file(path)?,
            None => {
                // A kid of its own: instances without a configured key must
                // not publish different keys under one kid.
                let kid = format!("ephemeral-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                let key = SigningKey::generate(&kid);
                warn!(message = "no grant.signing_key configured: grants are signed with a key generated for this run", kid = %kid);
                key
            }
        };
        let next = settings.next_keys.iter().map(|p| PublicKey::from_pem_file(p)).collect::<Result<_, _>>()?;
        Ok(GrantKeys {
            active,
            next,
            ttl_secs: settings.ttl_secs,
            instance: instance.to_owned(),
            store,
            leased_until: AtomicI64::new(i64::MIN),
            last_signed: AtomicI64::new(i64::MIN),
        })
    }

    /// The key new grants are signed with.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// Records in the store that the active key may sign grants expiring
    /// up to `now + ttl` (and a lease beyond), unless it already is.
    /// Called before a batch whose inputs were read at or before `now`.
    pub async fn cover(&self, now: i64) -> Result<(), StoreError> {
        let needed = now.saturating_add(self.ttl_secs);
        if needed <= self.leased_until.load(Ordering::Acquire) {
            return Ok(());
        }
        let until = needed.saturating_add(self.ttl_secs.clamp(0, LEASE_AHEAD_SECS));
        self.record(until).await?;
        self.leased_until.fetch_max(until, Ordering::AcqRel);
        Ok(())
    }

    /// Notes that a grant expiring at `exp` was signed.
    pub fn signed(&self, exp: i64) {
        self.last_signed.fetch_max(exp, Ordering::AcqRel);
    }

    /// At a clean stop: the bound comes down to the last grant actually
    /// signed, so a key retired now leaves the JWKS as soon as it can.
    pub async fn release(&self, now: i64) {
        let last = self.last_signed.load(Ordering::Acquire).max(now);
        if self.leased_until.load(Ordering::Acquire) == i64::MIN {
            return;
        }
        if let Err(error) = self.record(last).await {
            warn!(message = "could not shorten the grant key's lease; it stays published until the lease ends", %error);
        }
    }

    async fn record(&self, until: i64) -> Result<(), StoreError> {
        let jwk = self.active.public().to_jwk().to_string();
        self.store.lease_grant_key(&self.active.kid, &jwk, &self.instance, until).await
    }

    /// The JWKS at `now`: the keys in the store some grant may still be
    /// valid under, the active key and the announced next keys.
    pub async fn jwks(&self, now: i64) -> Result<serde_json::Value, StoreError> {
        let mut configured = vec![self.active.public()];
        configured.extend(self.next.iter().cloned());
        jwks(&self.store, &configured, now).await
    }
}

/// The JWKS of `configured` keys and those in `store` still in use at
/// `now`, one entry per kid, sorted by kid.
pub async fn jwks(store: &Store, configured: &[PublicKey], now: i64) -> Result<serde_json::Value, StoreError> {
    let mut keys = std::collections::BTreeMap::new();
    for k in store.published_grant_keys(now).await? {
        let jwk = serde_json::from_str(&k.jwk).map_err(|e| StoreError::Fatal(format!("grant key {}: {e}", k.kid)))?;
        keys.insert(k.kid, jwk);
    }
    for k in configured {
        keys.entry(k.kid.clone()).or_insert_with(|| k.to_jwk());
    }
    Ok(serde_json::json!({ "keys": keys.into_values().collect::<Vec<serde_json::Value>>() }))
}

/// The revocation list at `now`: every grant revoked before it expired and
/// not expired yet (a grant past `exp` fails verification anyway), oldest
/// revocation first.
pub async fn revocation_list(store: &Store, now: i64) -> Result<serde_json::Value, StoreError> {
    let rfc3339 = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().to_rfc3339();
    let revoked: Vec<serde_json::Value> = store
        .revoked_grants(now)
        .await?
        .into_iter()
        .map(|g| {
            serde_json::json!({
                "decision_id": g.decision_id, "subject": g.subject, "holder": g.holder, "dataset": g.dataset,
                "expires_at": rfc3339(g.expires_at), "revoked_at": rfc3339(g.revoked_at),
                "reason": {"code": g.code, "message": g.reason},
            })
        })
        .collect();
    Ok(serde_json::json!({ "as_of": rfc3339(now), "revoked": revoked }))
}

/// The review queue at `now`: requests pending review, oldest first, each
/// with what a reviewer needs to decide (the request as asked, without its
/// token, and who asked).
pub async fn review_queue(store: &Store, holder: Option<&str>, now: i64) -> Result<serde_json::Value, StoreError> {
    let rfc3339 = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().to_rfc3339();
    let pending: Vec<serde_json::Value> = store
        .pending_reviews(holder)
        .await?
        .into_iter()
        .map(|r| {
            let probe: serde_json::Value = serde_json::from_str(&r.probe).unwrap_or_default();
            serde_json::json!({
                "request_id": r.request_id, "pending_decision_id": r.pending_decision_id, "subject": r.subject,
                "holder": r.holder, "dataset": r.dataset, "scenario": r.scenario, "operation": r.operation,
                "purpose": probe["request"]["purpose"], "volume": probe["request"]["volume"],
                "qualifications": probe["principal"]["qualifications"],
                "pending_since": rfc3339(r.created_at), "deadline": rfc3339(r.deadline),
                "age_secs": (now - r.created_at).max(0),
            })
        })
        .collect();
    Ok(serde_json::json!({ "as_of": rfc3339(now), "pending": pending }))
}

/// What data hosts read from the HTTP listener: the JWKS and the
/// revocation list.
pub struct ForDataHosts {
    pub keys: std::sync::Arc<GrantKeys>,
    pub store: Store,
    /// The policy in force, for the console.
    pub policy: std::sync::Arc<arc_swap::ArcSwap<crate::policy::Policy>>,
}

impl crate::ops::Published for ForDataHosts {
    fn jwks(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move { self.keys.jwks(chrono::Utc::now().timestamp()).await.map_err(|e| e.to_string()) })
    }

    fn audit_keys(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let keys = self.store.audit_keys().await.map_err(|e| e.to_string())?;
            let keys: Vec<serde_json::Value> =
                keys.iter().filter_map(|(_, jwk)| serde_json::from_str(jwk).ok()).collect();
            Ok(serde_json::json!({ "keys": keys }))
        })
    }

    fn revocations(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            revocation_list(&self.store, chrono::Utc::now().timestamp()).await.map_err(|e| e.to_string())
        })
    }

    fn reviews(
        &self,
        holder: Option<String>,
    ) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            review_queue(&self.store, holder.as_deref(), chrono::Utc::now().timestamp())
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn console(
        &self,
        filter: crate::ops::console::ConsoleFilter,
    ) -> futures_util::future::BoxFuture<'_, Result<crate::ops::console::ConsoleData, String>> {
        Box::pin(async move { self.console_data(filter).await.map_err(|e| e.to_string()) })
    }
}
