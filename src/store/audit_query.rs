//! Audit events by what auditors ask (see the migration `audit_query`):
//! enterprise, dataset, scenario, event type, outcome, reason, time.

use sqlx::Row;

use super::{Store, StoreError, decode_audit};
use crate::contract::AuditEvent;

/// What to look for; every field set must hold. Times are RFC 3339.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// The subject: a requester's USCC (or `unauthenticated`).
    pub enterprise: Option<String>,
    /// The resource: a dataset's code.
    pub dataset: Option<String>,
    pub scenario: Option<String>,
    pub event_type: Option<String>,
    pub outcome: Option<String>,
    /// The first reason's code.
    pub reason: Option<String>,
    /// At or after.
    pub from: Option<String>,
    /// Before.
    pub to: Option<String>,
}

/// Appends ` AND column = $n` for each value that is set, binding it as `$n`.
pub(super) fn equal_to(sql: &mut String, binds: &mut Vec<String>, columns: &[(&str, &Option<String>)]) {
    for (column, value) in columns {
        if let Some(v) = value {
            binds.push(v.clone());
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
}

/// Where a page of results ended: the next page starts after it.
pub type AuditPosition = (String, String, i64);

impl Store {
    /// The newest `limit` events of any of `types` matching `filter`
    /// (its `event_type` aside), newest first: what the console lists.
    pub async fn latest_audit(
        &self,
        filter: &AuditFilter,
        types: &[&str],
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from("SELECT body FROM audit_events WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let columns = [
            ("subject", &filter.enterprise),
            ("resource", &filter.dataset),
            ("scenario", &filter.scenario),
            ("outcome", &filter.outcome),
            ("reason_code", &filter.reason),
        ];
        equal_to(&mut sql, &mut binds, &columns);
        let first = binds.len() + 1;
        let placeholders: Vec<String> = (first..first + types.len()).map(|i| format!("${i}")).collect();
        binds.extend(types.iter().map(|t| (*t).to_owned()));
        sql.push_str(&format!(
            " AND event_type IN ({}) ORDER BY occurred_at DESC, chain DESC, seq DESC LIMIT {}",
            placeholders.join(", "),
            limit.max(0)
        ));
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        query.fetch_all(&self.pool).await?.iter().map(|b| decode_audit(b)).collect()
    }

    /// Up to `limit` events matching `filter`, in time order (then chain
    /// and seq), after `after`.
    pub async fn query_audit(
        &self,
        filter: &AuditFilter,
        after: Option<&AuditPosition>,
        limit: i64,
    ) -> Result<Vec<(AuditEvent, AuditPosition)>, StoreError> {
        let mut sql = String::from("SELECT body, occurred_at, chain, seq FROM audit_events WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let columns = [
            ("subject", &filter.enterprise),
            ("resource", &filter.dataset),
            ("scenario", &filter.scenario),
            ("event_type", &filter.event_type),
            ("outcome", &filter.outcome),
            ("reason_code", &filter.reason),
        ];
        equal_to(&mut sql, &mut binds, &columns);
        for (op, value) in [(">=", &filter.from), ("<", &filter.to)] {
            if let Some(v) = value {
                binds.push(v.clone());
                sql.push_str(&format!(" AND occurred_at {op} ${}", binds.len()));
            }
        }
        if let Some((at, chain, seq)) = after {
            let n = binds.len();
            sql.push_str(&format!(
                " AND (occurred_at > ${a} OR (occurred_at = ${a} AND (chain > ${c} OR (chain = ${c} AND seq > {seq}))))",
                a = n + 1,
                c = n + 2
            ));
            binds.push(at.clone());
            binds.push(chain.clone());
        }
        sql.push_str(&format!(" ORDER BY occurred_at, chain, seq LIMIT {}", limit.max(0)));
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let event = decode_audit(&r.try_get::<String, _>(0)?)?;
                Ok((event, (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            })
            .collect()
    }
}

/// Fills the query columns of events stored before they existed, a page at
/// a time (run at connect; a no-op once done).
pub(super) async fn backfill(pool: &sqlx::AnyPool) -> Result<u64, StoreError> {
    let mut filled = 0;
    loop {
        let rows = sqlx::query("SELECT chain, seq, body FROM audit_events WHERE subject IS NULL LIMIT 1000")
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let mut tx = pool.begin().await?;
        for r in &rows {
            let (chain, seq): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            let e = decode_audit(&r.try_get::<String, _>(2)?)?;
            sqlx::query(
                "UPDATE audit_events SET subject = $1, resource = $2, outcome = $3, reason_code = $4 \
                 WHERE chain = $5 AND seq = $6",
            )
            .bind(&e.subject)
            .bind(&e.resource)
            .bind(&e.outcome)
            .bind(e.reasons.first().map(|r| r.code.clone()))
            .bind(chain)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        filled += rows.len() as u64;
    }
}

impl Store {
    /// `(chain, first seq, last seq)` of the events that occurred in
    /// [`from`, `to`) (stored-time format, see [`AuditFilter`]).
    pub async fn audit_ranges(&self, from: &str, to: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT chain, MIN(seq), MAX(seq) FROM audit_events WHERE occurred_at >= $1 AND occurred_at < $2 \
             GROUP BY chain ORDER BY chain",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let seq = |n: i64| u64::try_from(n).map_err(|_| StoreError::Fatal(format!("negative seq {n}")));
        rows.iter().map(|r| Ok((r.try_get(0)?, seq(r.try_get(1)?)?, seq(r.try_get(2)?)?))).collect()
    }

    /// Up to `limit` stored bodies of `chain` from seq `first` to `last`,
    /// in order.
    pub async fn audit_bodies(
        &self,
        chain: &str,
        first: u64,
        last: u64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT body FROM audit_events WHERE chain = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        )
        .bind(chain)
        .bind(first as i64)
        .bind(last as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
