//! Usage reports from data hosts: the grant a report is checked against,
//! what was reported under it before, and the accepted reports' rows.
//!
//! What must stay true: a report's units are counted once (its outcome is
//! stored under `report:<report_id>` in the same transaction), and the
//! units reported per subject, dataset and period are a counter written
//! like the quota's (conditional on what was read), so two instances
//! pricing reports at once cannot both price at the same tier position.

use sqlx::Row;

use super::{Batch, Output, StoreError, Stream};
use crate::contract::{Basis, UsageRecord};
use crate::decide::report::GrantFacts;
use crate::metering::GrantUsage;

/// The period key of the reported-units counter: kept beside the quota's
/// counter (`YYYY-MM`) in `usage_counters`, apart from it.
pub fn reported_period(period: &str) -> String {
    format!("{period}/reported")
}

/// A grant as a report needs it: the facts it is checked against and what
/// its usage record repeats from the approval.
#[derive(Debug, Clone)]
pub struct ReportedGrant {
    pub facts: GrantFacts,
    pub request_id: String,
    pub subject: String,
    /// The approval's usage record: scenario, purpose, price item.
    pub approval: UsageRecord,
}

/// An accepted report's usage record with its stored JSON.
pub(super) type ReportedRecord = (UsageRecord, String);

/// Splits a commit's usage record into an approval's (stored by
/// reference) and a report's, whose JSON joins the outputs inline.
pub(super) fn split(
    usage: Option<UsageRecord>,
    outputs: &mut Vec<Output>,
) -> Result<(Option<UsageRecord>, Option<ReportedRecord>), StoreError> {
    match usage {
        Some(u) if u.basis == Basis::Report => {
            let body = serde_json::to_string(&u).map_err(|e| StoreError::Fatal(e.to_string()))?;
            outputs.push(Output { stream: Stream::Usage, key: u.subject.clone(), payload: body.clone() });
            Ok((None, Some((u, body))))
        }
        other => Ok((other, None)),
    }
}

impl Batch {
    /// The grant `decision_id` with its approval's usage record; None when
    /// no such grant was issued (or it was priced by no catalogue item).
    pub async fn reported_grant(&mut self, decision_id: &str) -> Result<Option<ReportedGrant>, StoreError> {
        let row = sqlx::query(
            "SELECT g.request_id, g.subject, g.holder, g.dataset, g.operation, g.expires_at, g.revoked_at, u.body \
             FROM grants g JOIN usage_records u ON u.request_id = g.request_id WHERE g.decision_id = $1",
        )
        .bind(decision_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let approval: UsageRecord = serde_json::from_str(&row.try_get::<String, _>(7)?)
            .map_err(|e| StoreError::Fatal(format!("usage row: {e}")))?;
        let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
        let facts = GrantFacts {
            decision_id: decision_id.to_owned(),
            holder: row.try_get(2)?,
            dataset: row.try_get(3)?,
            operation: row.try_get(4)?,
            fee_waived: approval.fee_waived,
            approved: approval.quantity,
            issued_at: approval.recorded_at,
            expires_at: at(row.try_get(5)?),
            revoked_at: row.try_get::<Option<i64>, _>(6)?.map(at),
        };
        Ok(Some(ReportedGrant { facts, request_id: row.try_get(0)?, subject: row.try_get(1)?, approval }))
    }

    /// Units reported under grant `decision_id` so far, this batch's
    /// accepted reports included.
    pub async fn reported_for_grant(&mut self, decision_id: &str) -> Result<u64, StoreError> {
        let stored: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM usage_reports WHERE decision_id = $1",
        )
        .bind(decision_id)
        .fetch_one(&mut *self.tx)
        .await?;
        let pending: u64 = self
            .pending
            .reports
            .iter()
            .filter(|(u, _, _)| u.decision_id == decision_id)
            .map(|(u, _, _)| u.quantity)
            .sum();
        Ok(u64::try_from(stored).unwrap_or(0) + pending)
    }

    /// Queues an accepted report: its row and its units on the period's
    /// reported-units counter.
    pub(super) fn add_report(&mut self, (u, body): ReportedRecord, digest: &str) {
        let key = (u.subject.clone(), u.dataset.clone(), reported_period(&u.period));
        *self.counters.entry(key.clone()).or_default() += u.quantity;
        *self.pending.counter_deltas.entry(key).or_default() += u.quantity;
        self.pending.reports.push((u, body, digest.to_owned()));
    }
}

/// Accepted usage reports, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReportTotals {
    pub reports: i64,
    pub units: i64,
    pub amount_fen: i64,
    pub flagged: i64,
}

impl super::Store {
    /// Fen charged in the periods `from..=to` (`YYYY-MM`): approvals' and
    /// reports' records alike (each carries its whole charge).
    pub async fn revenue(&self, from: &str, to: &str) -> Result<i64, StoreError> {
        let mut total = 0i64;
        for table in ["usage_records", "usage_reports"] {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) FROM {table} WHERE period >= $1 AND period <= $2"
            );
            let part: i64 = sqlx::query_scalar(&sql).bind(from).bind(to).fetch_one(&self.pool).await?;
            total = total.saturating_add(part);
        }
        Ok(total)
    }

    /// Every usage record of `period` (approvals' and reports'), one subject's
    /// with `subject`, handed to `each` as it is read (a month of records
    /// is never held at once).
    pub async fn each_usage(
        &self,
        period: &str,
        subject: Option<&str>,
        mut each: impl FnMut(UsageRecord),
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        for table in ["usage_records", "usage_reports"] {
            let sql = format!("SELECT body FROM {table} WHERE period = $1 AND ($2 = '' OR subject = $2)");
            let mut rows =
                sqlx::query_scalar::<_, String>(&sql).bind(period).bind(subject.unwrap_or("")).fetch(&self.pool);
            while let Some(body) = rows.try_next().await? {
                each(serde_json::from_str(&body).map_err(|e| StoreError::Fatal(format!("usage row: {e}")))?);
            }
        }
        Ok(())
    }

    /// Every grant approved in `period` (`YYYY-MM`) with the reports
    /// accepted under it, by decision id.
    pub async fn reconcile(&self, period: &str) -> Result<Vec<GrantUsage>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.decision_id, g.subject, g.dataset, u.body, u.quantity, u.amount_fen, \
             COALESCE(r.n, 0), COALESCE(r.units, 0), COALESCE(r.amount, 0), COALESCE(r.flagged, 0) \
             FROM usage_records u JOIN grants g ON g.request_id = u.request_id \
             LEFT JOIN (SELECT decision_id, CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(quantity) AS BIGINT) AS units, \
               CAST(SUM(amount_fen) AS BIGINT) AS amount, CAST(SUM(flagged) AS BIGINT) AS flagged \
               FROM usage_reports GROUP BY decision_id) r ON r.decision_id = g.decision_id \
             WHERE u.period = $1 ORDER BY g.decision_id",
        )
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let line = |r: &sqlx::any::AnyRow| -> Result<GrantUsage, StoreError> {
            let approval: UsageRecord = serde_json::from_str(&r.try_get::<String, _>(3)?)
                .map_err(|e| StoreError::Fatal(format!("usage row: {e}")))?;
            Ok(GrantUsage {
                decision_id: r.try_get(0)?,
                subject: r.try_get(1)?,
                dataset: r.try_get(2)?,
                unit: approval.unit,
                approved: n(r.try_get(4)?),
                approved_fen: r.try_get(5)?,
                reports: n(r.try_get(6)?),
                reported: n(r.try_get(7)?),
                reported_fen: r.try_get(8)?,
                flagged: n(r.try_get(9)?),
            })
        };
        rows.iter().map(line).collect()
    }

    /// Every accepted usage report, summed.
    pub async fn report_totals(&self) -> Result<ReportTotals, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(quantity), 0) AS BIGINT), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT), \
             CAST(COALESCE(SUM(flagged), 0) AS BIGINT) FROM usage_reports",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ReportTotals {
            reports: r.try_get(0)?,
            units: r.try_get(1)?,
            amount_fen: r.try_get(2)?,
            flagged: r.try_get(3)?,
        })
    }

    /// Units accepted from reports under grant `decision_id`.
    pub async fn reported_units(&self, decision_id: &str) -> Result<u64, StoreError> {
        let units: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM usage_reports WHERE decision_id = $1",
        )
        .bind(decision_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(units).unwrap_or(0))
    }
}

pub(super) async fn insert_reports(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    reports: &[(UsageRecord, String, String)],
) -> Result<(), StoreError> {
    let head = "usage_reports (report_id, usage_id, decision_id, request_id, subject, dataset, host, period, \
                quantity, amount_fen, flagged, request_digest, body, recorded_at)";
    super::insert_rows(tx, sqlite, head, 14, reports, |q, (u, body, digest)| {
        let report = u.report.as_ref();
        q.bind(report.map_or("", |r| r.report_id.as_str()))
            .bind(u.usage_id.as_str())
            .bind(u.decision_id.as_str())
            .bind(u.request_id.as_str())
            .bind(u.subject.as_str())
            .bind(u.dataset.as_str())
            .bind(report.map_or("", |r| r.host.as_str()))
            .bind(u.period.as_str())
            .bind(i64::try_from(u.quantity).unwrap_or(i64::MAX))
            .bind(u.amount_fen)
            .bind(i64::from(!u.flags.is_empty()))
            .bind(digest.as_str())
            .bind(body.as_str())
            .bind(u.recorded_at.to_rfc3339())
    })
    .await
}
