//! Audit checkpoints and the keys that sign them (see the migration
//! `audit_checkpoints`).

use sqlx::Row;

use super::{Store, StoreError};
use crate::contract::Checkpoint;

/// A chain's head: its last event's position and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
}

/// A chain's latest checkpoint: its seq and when it was made (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestCheckpoint {
    pub seq: u64,
    pub created_at: String,
}

fn decode(body: &str) -> Result<Checkpoint, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Fatal(format!("a stored checkpoint does not decode: {e}")))
}

fn seq_of(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Fatal(format!("negative seq {n}")))
}

impl Store {
    /// Every chain's head. The chains are listed by a loose index scan
    /// (one index probe per chain, not a pass over every event) and each
    /// head read from the primary key, so a round costs the same after a
    /// year of events as after a day.
    pub async fn chain_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        let chains: Vec<Option<String>> = sqlx::query_scalar(
            "WITH RECURSIVE chains(chain) AS ( \
               SELECT MIN(chain) FROM audit_events \
               UNION ALL \
               SELECT (SELECT MIN(a.chain) FROM audit_events a WHERE a.chain > chains.chain) FROM chains \
               WHERE chains.chain IS NOT NULL) \
             SELECT chain FROM chains WHERE chain IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut heads = Vec::with_capacity(chains.len());
        for chain in chains.into_iter().flatten() {
            let row = sqlx::query("SELECT seq, hash FROM audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1")
                .bind(&chain)
                .fetch_one(&self.pool)
                .await?;
            heads.push(ChainHead { seq: seq_of(row.try_get(0)?)?, hash: row.try_get(1)?, chain });
        }
        Ok(heads)
    }

    /// Every chain's latest checkpoint, by chain.
    pub async fn latest_checkpoints(&self) -> Result<std::collections::HashMap<String, LatestCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.chain, c.seq, c.created_at FROM audit_checkpoints c \
             JOIN (SELECT chain, MAX(seq) AS seq FROM audit_checkpoints GROUP BY chain) l \
             ON c.chain = l.chain AND c.seq = l.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, LatestCheckpoint { seq: seq_of(r.try_get(1)?)?, created_at: r.try_get(2)? })))
            .collect()
    }

    /// Stores `c`; false when the chain already has a checkpoint at that
    /// position or after the same predecessor (another instance made one
    /// first).
    pub async fn store_checkpoint(&self, c: &Checkpoint) -> Result<bool, StoreError> {
        let body = serde_json::to_string(c).map_err(|e| StoreError::Fatal(e.to_string()))?;
        let done = sqlx::query(
            "INSERT INTO audit_checkpoints (chain, seq, previous_seq, body, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&c.chain)
        .bind(c.seq as i64)
        .bind(c.previous_seq as i64)
        .bind(body)
        .bind(c.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every stored checkpoint, chain by chain in order; with
    /// `unpublished_only`, those the topic has not acknowledged yet.
    pub async fn checkpoints(&self, unpublished_only: bool) -> Result<Vec<Checkpoint>, StoreError> {
        let sql = if unpublished_only {
            "SELECT body FROM audit_checkpoints WHERE published = 0 ORDER BY chain, seq"
        } else {
            "SELECT body FROM audit_checkpoints ORDER BY chain, seq"
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(|r| decode(&r.try_get::<String, _>(0)?)).collect()
    }

    pub async fn checkpoint_published(&self, chain: &str, seq: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_checkpoints SET published = 1 WHERE chain = $1 AND seq = $2")
            .bind(chain)
            .bind(seq as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an audit key before it signs anything. Refuses a kid already
    /// recorded with another key: checkpoints name their key by kid.
    pub async fn record_audit_key(&self, kid: &str, jwk: &str, now: &str) -> Result<(), StoreError> {
        let known: Option<String> = sqlx::query_scalar("SELECT jwk FROM audit_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        match known {
            Some(known) if known == jwk => Ok(()),
            Some(_) => Err(StoreError::Fatal(format!(
                "audit key id {kid} is already recorded for another key: give the new key a file name of its own"
            ))),
            None => {
                sqlx::query(
                    "INSERT INTO audit_keys (kid, jwk, first_used) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING",
                )
                .bind(kid)
                .bind(jwk)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    }

    /// Every audit key ever recorded: `(kid, JWK as JSON text)`.
    pub async fn audit_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT kid, jwk FROM audit_keys ORDER BY kid").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

impl Store {
    /// Records an `audit verify` run: when (RFC 3339), what it read
    /// (`database` or `kafka`), whether the trail held, and its summary.
    pub async fn record_verification(&self, at: &str, source: &str, ok: bool, summary: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_verifications (verified_at, source, ok, summary) VALUES ($1, $2, $3, $4)")
            .bind(at)
            .bind(source)
            .bind(i64::from(ok))
            .bind(summary)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The latest `audit verify` run: (when, what it found).
    pub async fn last_verification(&self) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT verified_at, source, ok, summary FROM audit_verifications ORDER BY verified_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let (at, source, ok, summary): (String, String, i64, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        let verdict = if ok == 1 { "ok" } else { "FAILED" };
        Ok(Some((at, format!("{verdict} ({source}): {summary}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sign_checkpoint;
    use crate::auth::SigningKey;

    #[tokio::test]
    async fn chain_heads_are_each_chains_last_event() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        assert!(store.chain_heads().await.unwrap().is_empty());
        for (chain, seq) in [("b/1", 1), ("a/0", 1), ("b/1", 2), ("a/0", 2), ("a/0", 3), ("c/2", 1)] {
            sqlx::query(
                "INSERT INTO audit_events (chain, seq, hash, prev_hash, event_type, body, occurred_at) \
                 VALUES ($1, $2, $3, '', 'decision', '{}', '2026-12-01T00:00:00+00:00')",
            )
            .bind(chain)
            .bind(seq)
            .bind(format!("{chain}#{seq}"))
            .execute(&store.pool)
            .await
            .unwrap();
        }
        let heads: Vec<(String, u64, String)> =
            store.chain_heads().await.unwrap().into_iter().map(|h| (h.chain, h.seq, h.hash)).collect();
        assert_eq!(
            heads,
            [("a/0".into(), 3, "a/0#3".into()), ("b/1".into(), 2, "b/1#2".into()), ("c/2".into(), 1, "c/2#1".into())]
        );
    }

    #[tokio::test]
    async fn a_chain_has_one_checkpoint_per_predecessor_and_a_kid_names_one_key() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let key = SigningKey::generate("audit-1");
        let now = chrono::Utc::now();
        let at = |seq: u64, previous: u64| sign_checkpoint(&key, "i1", ("c/0", seq, "h"), previous, now);
        assert!(store.store_checkpoint(&at(10, 0)).await.unwrap());
        // Another instance, having read no checkpoint either, is refused.
        assert!(!store.store_checkpoint(&at(12, 0)).await.unwrap());
        assert!(store.store_checkpoint(&at(12, 10)).await.unwrap());
        assert!(!store.store_checkpoint(&at(12, 10)).await.unwrap());
        assert_eq!(store.latest_checkpoints().await.unwrap()["c/0"].seq, 12);
        assert_eq!(store.checkpoints(true).await.unwrap().len(), 2);
        store.checkpoint_published("c/0", 10).await.unwrap();
        assert_eq!(store.checkpoints(true).await.unwrap().iter().map(|c| c.seq).collect::<Vec<_>>(), [12]);

        let jwk = key.public().to_jwk().to_string();
        store.record_audit_key("audit-1", &jwk, "2026-12-01T00:00:00Z").await.unwrap();
        store.record_audit_key("audit-1", &jwk, "2026-12-02T00:00:00Z").await.unwrap();
        let other = SigningKey::generate("audit-1").public().to_jwk().to_string();
        assert!(store.record_audit_key("audit-1", &other, "2026-12-02T00:00:00Z").await.is_err());
        assert_eq!(store.audit_keys().await.unwrap(), [("audit-1".to_owned(), jwk)]);
    }
}
