//! Signed checkpoints of the audit chains: every `audit.checkpoint_every`
//! events or `audit.checkpoint_secs`, each chain's head (read from the
//! store, so only committed events) is signed with the audit key, stored
//! and published to the checkpoint topic; once more at a clean stop.
//!
//! What must stay true: a checkpoint certifies only what the store holds;
//! a chain's checkpoints form one line (each names its predecessor, and
//! the store refuses two after the same one, whichever instance makes
//! them); every stored checkpoint reaches the topic (unpublished ones are
//! published again each round); the signing key is recorded before it
//! signs, so `audit verify` can find it years later.
//!
//! With `audit.retention_days` set, the same task prunes the store's trail
//! (see `Store::prune_audit`) at start and every [`PRUNE_EVERY`]: it is the
//! component that knows where the checkpoints are, and a prune may only cut
//! at one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::audit::sign_checkpoint;
use crate::auth::{KeyError, SigningKey};
use crate::config::AuditSettings;
use crate::kafka::{Client, KafkaError};
use crate::store::{ChainHead, LatestCheckpoint, Pruned, Store, StoreError};

/// How often the chains are looked at (a checkpoint is due at most this
/// much later than its count or age says).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// How often the trail is pruned when `audit.retention_days` is set. Every
/// instance prunes; a prune is idempotent, concurrent ones delete the same
/// rows once.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("audit checkpoints: {0}")]
    Store(#[from] StoreError),
    #[error("publishing an audit checkpoint: {0}")]
    Kafka(#[from] KafkaError),
}

pub struct Checkpointer {
    key: SigningKey,
    instance: String,
    store: Store,
    client: Client,
    topic: String,
    every: u64,
    max_age: chrono::Duration,
    /// `audit.retention_days`, when set.
    retention: Option<chrono::Duration>,
}

impl Checkpointer {
    /// The configured audit key, or one generated for this run.
    pub fn new(
        settings: &AuditSettings,
        instance: &str,
        store: Store,
        client: Client,
        topic: &str,
    ) -> Result<Checkpointer, KeyError> {
        let key = match &settings.signing_key {
            Some(path) => SigningKey::from_pem_file(path)?,
            None => {
                let kid = format!("audit-ephemeral-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                warn!(message = "no audit.signing_key configured: audit checkpoints are signed with a key generated for this run (recorded in the database)", kid = %kid);
                SigningKey::generate(&kid)
            }
        };
        Ok(Checkpointer {
            key,
            instance: instance.to_owned(),
            store,
            client,
            topic: topic.to_owned(),
            every: settings.checkpoint_every.max(1),
            max_age: chrono::Duration::seconds(settings.checkpoint_secs.min(i64::MAX as u64) as i64),
            retention: (settings.retention_days > 0).then(|| chrono::Duration::days(settings.retention_days.into())),
        })
    }

    /// Records the key so verifiers find it; before anything is signed.
    pub async fn record_key(&self) -> Result<(), StoreError> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.store.record_audit_key(&self.key.kid, &self.key.public().to_jwk().to_string(), &now).await
    }

    /// Whether `head` needs a checkpoint after `latest` at `now`; `force`:
    /// any new event does (a clean stop).
    fn due(&self, head: &ChainHead, latest: Option<&LatestCheckpoint>, now: DateTime<Utc>, force: bool) -> bool {
        let Some(latest) = latest else { return true };
        if head.seq <= latest.seq {
            return false;
        }
        let old =
            DateTime::parse_from_rfc3339(&latest.created_at).is_ok_and(|t| now - t.with_timezone(&Utc) >= self.max_age);
        force || old || head.seq - latest.seq >= self.every
    }

    /// One round: checkpoints every due chain, then publishes every stored
    /// checkpoint the topic has not acknowledged. Returns how many were made.
    pub async fn round(&self, now: DateTime<Utc>, force: bool) -> Result<usize, CheckpointError> {
        let heads = self.store.chain_heads().await?;
        let latest = self.store.latest_checkpoints().await?;
        let mut made = 0;
        for head in heads.iter().filter(|h| self.due(h, latest.get(&h.chain), now, force)) {
            let previous = latest.get(&head.chain).map_or(0, |l| l.seq);
            let c = sign_checkpoint(&self.key, &self.instance, (&head.chain, head.seq, &head.hash), previous, now);
            if self.store.store_checkpoint(&c).await? {
                made += 1;
            }
        }
        for c in self.store.checkpoints(true).await? {
            let body = serde_json::to_string(&c).expect("checkpoints serialise");
            self.client.produce(&self.topic, &c.chain, body.as_bytes(), &[]).await?;
            self.store.checkpoint_published(&c.chain, c.seq).await?;
            debug!(message = "audit checkpoint published", chain = %c.chain, seq = c.seq);
        }
        Ok(made)
    }

    /// Prunes what is older than `audit.retention_days` (nothing when
    /// unset). Checkpoints are made first, so the cut can be close to it.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<Option<Pruned>, StoreError> {
        let Some(retention) = self.retention else { return Ok(None) };
        let before = (now - retention).to_rfc3339(); // the stored format
        let pruned = self.store.prune_audit(&before).await?;
        if pruned.events > 0 {
            info!(message = "audit trail pruned", before = %before, events = pruned.events, chains = pruned.chains, decisions = pruned.decisions);
        }
        Ok(Some(pruned))
    }

    /// Rounds until `stop`, then a last one that checkpoints every chain
    /// with new events; a prune after the first round and every
    /// [`PRUNE_EVERY`].
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(
            LOOK_EVERY.min(self.max_age.to_std().unwrap_or(LOOK_EVERY).max(Duration::from_millis(100))),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned_at: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.round(Utc::now(), false).await {
                warn!(message = "audit checkpoint round failed; the next round tries again", %error);
            }
            if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(std::time::Instant::now());
                if let Err(error) = self.prune(Utc::now()).await {
                    warn!(message = "pruning the audit trail failed; tried again in an hour", %error);
                }
            }
        }
        if let Err(error) = self.round(Utc::now(), true).await {
            warn!(message = "final audit checkpoint failed; the chains' tails since the last checkpoint are unsigned", %error);
        }
    }
}
