//! Stored decisions read back for replay (`tollgate policy impact`) and
//! for the console (the newest first).

use sqlx::Row;

use super::{Store, StoreError};

/// One stored decision with what it was decided from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub request_id: String,
    pub subject: String,
    pub outcome: String,
    pub reason_code: Option<String>,
    pub policy_version: String,
    /// RFC 3339, UTC.
    pub decided_at: String,
    /// JSON; None when no policy was consulted or stored before inputs were.
    pub inputs: Option<String>,
    /// JSON obligations and price.
    pub effects: Option<String>,
}

/// A decision as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionLine {
    pub request_id: String,
    pub subject: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub outcome: String,
    pub reason_code: Option<String>,
    /// RFC 3339, UTC.
    pub decided_at: String,
}

impl Store {
    /// The newest `limit` decisions matching `filter` (enterprise, dataset,
    /// scenario, outcome, reason; the rest of it aside), newest first.
    pub async fn latest_decisions(
        &self,
        filter: &super::AuditFilter,
        limit: i64,
    ) -> Result<Vec<DecisionLine>, StoreError> {
        let mut sql = String::from(
            "SELECT request_id, subject, dataset, scenario, operation, outcome, reason_code, decided_at \
             FROM decisions WHERE 1 = 1",
        );
        let mut binds = Vec::new();
        let columns = [
            ("subject", &filter.enterprise),
            ("dataset", &filter.dataset),
            ("scenario", &filter.scenario),
            ("outcome", &filter.outcome),
            ("reason_code", &filter.reason),
        ];
        super::audit_query::equal_to(&mut sql, &mut binds, &columns);
        sql.push_str(&format!(" ORDER BY decided_at DESC, request_id DESC LIMIT {}", limit.max(0)));
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DecisionLine {
                    request_id: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    dataset: r.try_get(2)?,
                    scenario: r.try_get(3)?,
                    operation: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    reason_code: r.try_get(6)?,
                    decided_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Up to `limit` decisions made at or after `since` (RFC 3339), in
    /// decision order, after the position `after` (`decided_at`,
    /// `request_id`) of the previous page.
    pub async fn decisions_since(
        &self,
        since: &str,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<StoredDecision>, StoreError> {
        let (at, id) = after.unwrap_or((since, ""));
        // Keyset paging: a year of decisions is read a page at a time.
        let rows = sqlx::query(
            "SELECT request_id, subject, outcome, reason_code, policy_version, decided_at, inputs, effects \
             FROM decisions WHERE decided_at >= $1 AND (decided_at > $2 OR (decided_at = $2 AND request_id > $3)) \
             ORDER BY decided_at, request_id LIMIT $4",
        )
        .bind(since)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredDecision {
                    request_id: r.try_get(0)?,
                    subject: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    reason_code: r.try_get(3)?,
                    policy_version: r.try_get(4)?,
                    decided_at: r.try_get(5)?,
                    inputs: r.try_get(6)?,
                    effects: r.try_get(7)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
