//! Requests pending review and how each was closed (see the migration
//! `reviews`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Batch, Store, StoreError};

/// A request sent to review, as stored with its pending decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReviewRow {
    pub request_id: String,
    pub pending_decision_id: String,
    pub subject: String,
    /// The dataset's holder department: who may review it.
    pub holder: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    /// `{"principal": …, "request": …}` (the request without its token).
    pub probe: String,
    /// Unix seconds.
    pub created_at: i64,
    pub deadline: i64,
    /// `pending`, `approved`, `rejected`, `denied` (approved by the
    /// reviewer, denied by the policy at verdict time) or `timed_out`.
    pub state: String,
    pub final_decision_id: Option<String>,
    pub reviewer: Option<String>,
    pub closed_at: Option<i64>,
}

/// How a review was closed.
#[derive(Debug, Clone)]
pub struct Closing<'a> {
    pub request_id: &'a str,
    pub state: &'a str,
    pub final_decision_id: &'a str,
    pub reviewer: Option<&'a str>,
    pub at: i64,
}

const COLUMNS: &str = "request_id, pending_decision_id, subject, holder, dataset, scenario, operation, probe, \
                       created_at, deadline, state, final_decision_id, reviewer, closed_at";

fn review_row(r: &AnyRow) -> Result<ReviewRow, sqlx::Error> {
    Ok(ReviewRow {
        request_id: r.try_get(0)?,
        pending_decision_id: r.try_get(1)?,
        subject: r.try_get(2)?,
        holder: r.try_get(3)?,
        dataset: r.try_get(4)?,
        scenario: r.try_get(5)?,
        operation: r.try_get(6)?,
        probe: r.try_get(7)?,
        created_at: r.try_get(8)?,
        deadline: r.try_get(9)?,
        state: r.try_get(10)?,
        final_decision_id: r.try_get(11)?,
        reviewer: r.try_get(12)?,
        closed_at: r.try_get(13)?,
    })
}

impl Batch {
    /// The review of `request_id`, if the request was sent to review.
    pub async fn review(&mut self, request_id: &str) -> Result<Option<ReviewRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM reviews WHERE request_id = $1");
        let row = sqlx::query(&sql).bind(request_id).fetch_optional(&mut *self.tx).await?;
        Ok(row.as_ref().map(review_row).transpose()?)
    }

    /// Closes a pending review; false when it was closed already (by
    /// another verdict, another instance or the timeout).
    pub async fn close_review(&mut self, c: &Closing<'_>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviews SET state = $1, final_decision_id = $2, reviewer = $3, closed_at = $4 \
             WHERE request_id = $5 AND state = 'pending'",
        )
        .bind(c.state)
        .bind(c.final_decision_id)
        .bind(c.reviewer)
        .bind(c.at)
        .bind(c.request_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// Reviews still pending, oldest first; only `holder`'s when given.
    pub async fn pending_reviews(&self, holder: Option<&str>) -> Result<Vec<ReviewRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM reviews WHERE state = 'pending' AND ($1 = '' OR holder = $1) \
             ORDER BY created_at, request_id"
        );
        let rows = sqlx::query(&sql).bind(holder.unwrap_or("")).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(review_row).collect::<Result<_, _>>()?)
    }

    /// One review, whatever its state.
    pub async fn review(&self, request_id: &str) -> Result<Option<ReviewRow>, StoreError> {
        self.begin().await?.review(request_id).await
    }

    /// Pending reviews past their deadline at `now`.
    pub async fn overdue_reviews(&self, now: i64) -> Result<Vec<ReviewRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM reviews WHERE state = 'pending' AND deadline <= $1 ORDER BY deadline, request_id"
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(review_row).collect::<Result<_, _>>()?)
    }
}

pub(super) async fn insert_reviews(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    reviews: &[ReviewRow],
) -> Result<(), StoreError> {
    let head = "reviews (request_id, pending_decision_id, subject, holder, dataset, scenario, operation, \
                probe, created_at, deadline, state)";
    super::insert_rows(tx, sqlite, head, 11, reviews, |q, r| {
        q.bind(r.request_id.as_str())
            .bind(r.pending_decision_id.as_str())
            .bind(r.subject.as_str())
            .bind(r.holder.as_str())
            .bind(r.dataset.as_str())
            .bind(r.scenario.as_str())
            .bind(r.operation.as_str())
            .bind(r.probe.as_str())
            .bind(r.created_at)
            .bind(r.deadline)
            .bind("pending")
    })
    .await
}
