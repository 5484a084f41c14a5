//! One consistent read of the whole audit trail and of the records held to
//! it, for `audit verify`: one transaction (so a decision committed while
//! it runs is seen with its audit event or not at all), and every table
//! read row by row as a stream (so memory does not grow with years of
//! events). On SQLite the WAL cannot be checkpointed past this snapshot
//! until it ends; on PostgreSQL it is a REPEATABLE READ, READ ONLY
//! transaction.

use futures_util::{Stream, StreamExt};
use sqlx::Row;

use super::{AuditRow, Store, StoreError, decode_audit};

pub struct TrailSnapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Store {
    /// Opens the snapshot. It holds a connection until dropped (SQLite's
    /// pool has one): read anything else first.
    pub async fn trail_snapshot(&self) -> Result<TrailSnapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !self.sqlite {
            // Else every statement would see the database as of its own start.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        Ok(TrailSnapshot { tx })
    }
}

impl TrailSnapshot {
    /// Every audit event with the columns it is stored under, chain by
    /// chain in sequence order: `audit verify` holds the columns (new
    /// events are chained onto `hash`) to the event's own fields.
    pub fn audit_rows(&mut self) -> impl Stream<Item = Result<AuditRow, StoreError>> + '_ {
        sqlx::query("SELECT chain, seq, hash, prev_hash, body FROM audit_events ORDER BY chain, seq")
            .fetch(&mut *self.tx)
            .map(|row| {
                let r = row?;
                Ok(AuditRow {
                    chain: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    hash: r.try_get(2)?,
                    prev_hash: r.try_get(3)?,
                    event: decode_audit(&r.try_get::<String, _>(4)?)?,
                })
            })
    }

    /// `(request_id, request_digest)` of every decision: each must have
    /// its audit event.
    pub fn decision_digests(&mut self) -> impl Stream<Item = Result<(String, String), StoreError>> + '_ {
        pairs(&mut self.tx, "SELECT request_id, request_digest FROM decisions ORDER BY request_id")
    }

    /// `(report_id, request_digest)` of every accepted usage report: each
    /// must have its audit event.
    pub fn report_digests(&mut self) -> impl Stream<Item = Result<(String, String), StoreError>> + '_ {
        pairs(&mut self.tx, "SELECT report_id, request_digest FROM usage_reports ORDER BY report_id")
    }

    /// The first request (by id) with a usage record but no decision.
    pub async fn usage_without_decision(&mut self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT u.request_id FROM usage_records u \
             WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.request_id = u.request_id) \
             ORDER BY u.request_id LIMIT 1",
        )
        .fetch_optional(&mut *self.tx)
        .await?)
    }
}

fn pairs<'t>(
    tx: &'t mut sqlx::Transaction<'static, sqlx::Any>,
    sql: &'static str,
) -> impl Stream<Item = Result<(String, String), StoreError>> + 't {
    sqlx::query(sql).fetch(&mut **tx).map(|row| {
        let r = row?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    })
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;
    use crate::contract::{AuditEvent, EventType};
    use crate::store::Commit;

    fn policy_event(key: &str) -> Commit {
        let now = chrono::Utc::now();
        Commit {
            idem_key: key.into(),
            kind: "policy",
            decision: None,
            messages: vec![],
            audit: AuditEvent::draft("policy/i".into(), EventType::PolicyLoaded, now, "t".into()),
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: now.to_rfc3339(),
        }
    }

    #[tokio::test]
    async fn the_trail_is_read_as_of_one_moment_while_another_instance_writes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let (reader, writer) = (Store::connect(&url, 1).await.unwrap(), Store::connect(&url, 1).await.unwrap());
        let usage = |id: &str| {
            format!("INSERT INTO usage_records VALUES ('u-{id}', '{id}', 's', 'd', '2026-12', 1, 0, '{{}}', 't')")
        };
        writer.commit(policy_event("p1")).await.unwrap();
        sqlx::query(&usage("r-1")).execute(&writer.pool).await.unwrap();

        let mut trail = reader.trail_snapshot().await.unwrap();
        let rows: Vec<AuditRow> = trail.audit_rows().try_collect().await.unwrap();
        assert_eq!(rows.iter().map(|r| (r.chain.as_str(), r.seq)).collect::<Vec<_>>(), [("policy/i", 1)]);
        // Written once the snapshot has begun: a second event, and a usage
        // record that sorts first.
        writer.commit(policy_event("p2")).await.unwrap();
        sqlx::query(&usage("r-0")).execute(&writer.pool).await.unwrap();
        assert_eq!(trail.audit_rows().try_collect::<Vec<_>>().await.unwrap().len(), 1, "as of the snapshot");
        assert_eq!(trail.usage_without_decision().await.unwrap().as_deref(), Some("r-1"), "as of the snapshot");
        let decisions: Vec<(String, String)> = trail.decision_digests().try_collect().await.unwrap();
        assert!(decisions.is_empty());
        drop(trail);

        let mut trail = reader.trail_snapshot().await.unwrap();
        assert_eq!(trail.audit_rows().try_collect::<Vec<_>>().await.unwrap().len(), 2);
        assert_eq!(trail.usage_without_decision().await.unwrap().as_deref(), Some("r-0"));
    }
}
