//! Publishes what belongs to no input: the policy chain's audit events
//! (`policy_loaded`, `policy_rejected`, `policy_restored`,
//! `policy_revocation`) and the `grant_revoked` events of grants the
//! policy no longer allows. A decision's
//! audit event reaches the topic through its input (a crash before the
//! broker acknowledged it re-delivers the input, which re-publishes it); a
//! policy event has no input, so it is queued in the outbox in the
//! transaction that stores it and taken out once acknowledged.
//!
//! What must stay true: every stored audit event reaches the topic, also
//! across crashes. The outbox is drained at start-up (before any input is
//! taken), after each policy event is stored, and every
//! [`RETRY_EVERY`] while anything is left, so an event a broker outage held
//! back goes out once the broker is back.

use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::config::Topics;
use crate::kafka::{Client, KafkaError};
use crate::store::{Store, StoreError};

/// How often a drain that left events queued is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("reading or updating the audit outbox: {0}")]
    Store(#[from] StoreError),
    #[error("publishing a queued audit event: {0}")]
    Kafka(#[from] KafkaError),
}

pub struct Outbox {
    store: Store,
    client: Client,
    topics: Topics,
    /// One drain at a time per instance, so a chain's events go out in
    /// order. (Two instances draining at once publish identical copies,
    /// which verifiers accept as re-publications.)
    draining: Mutex<()>,
}

impl Outbox {
    pub fn new(store: Store, client: Client, topics: Topics) -> Self {
        Outbox { store, client, topics, draining: Mutex::new(()) }
    }

    /// Publishes every queued event, chain by chain in order, each taken
    /// out once acknowledged. Stops at the first failure: what is left waits
    /// for the next drain, so no event overtakes an earlier one of its
    /// chain. Returns how many were published.
    pub async fn drain(&self) -> Result<usize, OutboxError> {
        let _one = self.draining.lock().await;
        let queued = self.store.outbox().await?;
        for (seq, event) in &queued {
            self.client.produce(&self.topics.audit, &event.key, event.payload.as_bytes(), &[]).await?;
            self.store.published(&event.key, *seq).await?;
            debug!(message = "queued audit event published", chain = %event.key, seq);
        }
        let messages = self.store.queued_messages().await?;
        for (idem_key, outputs) in &messages {
            for o in outputs {
                let topic = super::outputs::topic_of(&self.topics, o.stream);
                self.client.produce(topic, &o.key, o.payload.as_bytes(), &[]).await?;
            }
            self.store.messages_published(idem_key).await?;
            debug!(message = "queued messages published", %idem_key, count = outputs.len());
        }
        Ok(queued.len() + messages.len())
    }

    /// [`Outbox::drain`], logging a failure instead of returning it: the
    /// events stay queued and the next drain publishes them. Returns
    /// whether the outbox is empty now.
    pub async fn drain_logged(&self) -> bool {
        match self.drain().await {
            Ok(_) => true,
            Err(error) => {
                warn!(message = "audit events stored but not yet published; will retry", %error);
                false
            }
        }
    }
}
