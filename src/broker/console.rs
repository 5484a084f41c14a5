//! What the console shows, read from the store for `ops/console.rs`: the
//! newest decisions under the viewer's filter, the review queue, every
//! audit chain's head and latest checkpoint, the last `audit verify`,
//! dead letters, the policy's reload history and this month's usage.

use std::collections::HashMap;

use super::grant_keys::{ForDataHosts, review_queue};
use crate::contract::EventType;
use crate::metering::DailyUsage;
use crate::ops::console::{ChainStatus, ConsoleData, ConsoleFilter};
use crate::store::{AuditFilter, StoreError};

/// Rows per list: the console is a window on the newest, not a report.
const NEWEST: i64 = 100;

impl ForDataHosts {
    pub(super) async fn console_data(&self, f: ConsoleFilter) -> Result<ConsoleData, StoreError> {
        let now = chrono::Utc::now();
        let filter = AuditFilter {
            enterprise: f.enterprise,
            dataset: f.dataset,
            outcome: f.outcome,
            reason: f.reason,
            ..AuditFilter::default()
        };
        let decisions = self.store.latest_decisions(&filter, NEWEST).await?;
        let reviews = review_queue(&self.store, None, now.timestamp()).await?;
        let everything = AuditFilter::default();
        let dead_letters = self.store.latest_audit(&everything, &[EventType::InputRejected.as_str()], NEWEST).await?;
        let policy_types = [EventType::PolicyLoaded, EventType::PolicyRejected, EventType::PolicyRestored];
        let policy_history = self.store.latest_audit(&everything, &policy_types.map(EventType::as_str), NEWEST).await?;
        let usage_period = crate::metering::period_of(now);
        let mut usage = DailyUsage::new(&usage_period);
        self.store.each_usage(&usage_period, None, |u| usage.add(&u)).await?;
        Ok(ConsoleData {
            policy_version: self.policy.load().version().to_owned(),
            decisions,
            reviews,
            chains: self.chains().await?,
            last_verification: self.store.last_verification().await?,
            dead_letters,
            policy_history,
            usage_period,
            usage,
        })
    }

    async fn chains(&self) -> Result<Vec<ChainStatus>, StoreError> {
        let mut checkpoints: HashMap<_, _> = self.store.latest_checkpoints().await?;
        Ok(self
            .store
            .chain_heads()
            .await?
            .into_iter()
            .map(|h| ChainStatus {
                checkpoint: checkpoints.remove(&h.chain).map(|c| (c.seq, c.created_at)),
                head_seq: h.seq,
                chain: h.chain,
            })
            .collect())
    }
}
