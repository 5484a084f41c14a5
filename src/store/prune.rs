//! `audit prune`: the trail's oldest part removed so that what remains
//! still verifies — each chain cut just below a signed checkpoint, whose
//! event stays as the chain's first — with the records that point at the
//! removed events (decisions, their outcomes, usage, accepted usage
//! reports, grants, reviews) in the same transaction, never after them.

use sqlx::Row;

use super::{Store, StoreError, decode_audit};

/// What one prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub chains: u64,
    pub events: u64,
    pub decisions: u64,
}

impl Store {
    /// Cuts every chain below its latest checkpoint whose event occurred
    /// before `before` (stored-time format). Checkpoints are all kept:
    /// each names its predecessor, so their line stays whole.
    pub async fn prune_audit(&self, before: &str) -> Result<Pruned, StoreError> {
        let anchors = sqlx::query(
            "SELECT c.chain, MAX(c.seq) FROM audit_checkpoints c \
             JOIN audit_events e ON e.chain = c.chain AND e.seq = c.seq \
             WHERE e.occurred_at < $1 GROUP BY c.chain ORDER BY c.chain",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Pruned::default();
        for row in &anchors {
            let (chain, anchor): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            let (events, decisions) = self.prune_chain(&chain, anchor).await?;
            if events > 0 {
                out.chains += 1;
            }
            out.events += events;
            out.decisions += decisions;
        }
        Ok(out)
    }

    /// Removes `chain`'s events below `anchor` and the records decided by
    /// them, in one transaction.
    async fn prune_chain(&self, chain: &str, anchor: i64) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM audit_events WHERE chain = $1 AND seq < $2")
            .bind(chain)
            .bind(anchor)
            .fetch_all(&mut *tx)
            .await?;
        let mut decisions = 0;
        for body in &bodies {
            let digest = decode_audit(body)?.request_digest;
            // An accepted usage report goes with its own event.
            for sql in [
                "DELETE FROM outcomes WHERE idem_key IN \
                 (SELECT 'report:' || report_id FROM usage_reports WHERE request_digest = $1)",
                "DELETE FROM usage_reports WHERE request_digest = $1",
            ] {
                sqlx::query(sql).bind(&digest).execute(&mut *tx).await?;
            }
            let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM decisions WHERE request_digest = $1")
                .bind(&digest)
                .fetch_all(&mut *tx)
                .await?;
            for id in &ids {
                for sql in [
                    "DELETE FROM usage_records WHERE request_id = $1",
                    "DELETE FROM grants WHERE request_id = $1",
                    "DELETE FROM reviews WHERE request_id = $1",
                    "DELETE FROM decisions WHERE request_id = $1",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *tx).await?;
                }
                sqlx::query("DELETE FROM outcomes WHERE idem_key = $1")
                    .bind(format!("request:{id}"))
                    .execute(&mut *tx)
                    .await?;
                decisions += 1;
            }
        }
        let events = sqlx::query("DELETE FROM audit_events WHERE chain = $1 AND seq < $2")
            .bind(chain)
            .bind(anchor)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((events, decisions))
    }
}
