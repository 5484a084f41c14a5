//! Issued grants and their revocation (see the migration `grants`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Batch, Store, StoreError};
use crate::contract::RevokeTarget;

/// A grant as stored when it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub decision_id: String,
    pub request_id: String,
    pub subject: String,
    pub holder: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub policy_version: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// `{"principal": …, "request": …}` (the request without its token).
    pub probe: String,
}

/// A grant withdrawn before it expired: what the revocation list holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RevokedGrant {
    pub decision_id: String,
    pub subject: String,
    pub holder: String,
    pub dataset: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub revoked_at: i64,
    pub code: String,
    pub reason: String,
}

/// How a revocation is recorded on each grant it withdraws.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub revocation_id: String,
    /// Unix seconds.
    pub at: i64,
    pub code: String,
    pub reason: String,
}

const GRANT_COLUMNS: &str =
    "decision_id, request_id, subject, holder, dataset, scenario, operation, policy_version, expires_at, probe";

fn grant_row(r: &AnyRow) -> Result<GrantRow, sqlx::Error> {
    Ok(GrantRow {
        decision_id: r.try_get(0)?,
        request_id: r.try_get(1)?,
        subject: r.try_get(2)?,
        holder: r.try_get(3)?,
        dataset: r.try_get(4)?,
        scenario: r.try_get(5)?,
        operation: r.try_get(6)?,
        policy_version: r.try_get(7)?,
        expires_at: r.try_get(8)?,
        probe: r.try_get(9)?,
    })
}

/// What became of one grant a command names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantState {
    Unknown,
    Live(Box<GrantRow>),
    Expired,
    Revoked,
}

impl Batch {
    /// Live grants (not revoked, not expired at `now`) `target` names,
    /// stored before this batch.
    pub async fn live_grants(&mut self, target: &RevokeTarget, now: i64) -> Result<Vec<GrantRow>, StoreError> {
        let (column, value) = match target {
            RevokeTarget::Grant(v) => ("decision_id", v),
            RevokeTarget::Enterprise(v) => ("subject", v),
            RevokeTarget::Dataset(v) => ("dataset", v),
            RevokeTarget::Scenario(v) => ("scenario", v),
        };
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE {column} = $1 AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY decision_id"
        );
        let rows = sqlx::query(&sql).bind(value).bind(now).fetch_all(&mut *self.tx).await?;
        Ok(rows.iter().map(grant_row).collect::<Result<_, _>>()?)
    }

    /// The state of one grant at `now`.
    pub async fn grant_state(&mut self, decision_id: &str, now: i64) -> Result<GrantState, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS}, revoked_at FROM grants WHERE decision_id = $1");
        let Some(row) = sqlx::query(&sql).bind(decision_id).fetch_optional(&mut *self.tx).await? else {
            return Ok(GrantState::Unknown);
        };
        let grant = grant_row(&row)?;
        Ok(match row.try_get::<Option<i64>, _>(10)? {
            Some(_) => GrantState::Revoked,
            None if grant.expires_at <= now => GrantState::Expired,
            None => GrantState::Live(Box::new(grant)),
        })
    }

    /// Marks `grant` revoked unless it already is; true when this call
    /// revoked it.
    pub async fn revoke_grant(&mut self, decision_id: &str, r: &Revocation) -> Result<bool, StoreError> {
        revoke(&mut *self.tx, decision_id, r).await
    }
}

async fn revoke<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    decision_id: &str,
    r: &Revocation,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE grants SET revoked_at = $1, revocation_id = $2, revoke_code = $3, revoke_reason = $4 \
         WHERE decision_id = $5 AND revoked_at IS NULL",
    )
    .bind(r.at)
    .bind(&r.revocation_id)
    .bind(&r.code)
    .bind(&r.reason)
    .bind(decision_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    /// Grants revoked before they expired, still unexpired at `now`: the
    /// revocation list (a revoked grant past its expiry fails anyway).
    pub async fn revoked_grants(&self, now: i64) -> Result<Vec<RevokedGrant>, StoreError> {
        let rows = sqlx::query(
            "SELECT decision_id, subject, holder, dataset, expires_at, revoked_at, revoke_code, revoke_reason \
             FROM grants WHERE revoked_at IS NOT NULL AND expires_at > $1 ORDER BY revoked_at, decision_id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let row = |r: &AnyRow| -> Result<RevokedGrant, sqlx::Error> {
            Ok(RevokedGrant {
                decision_id: r.try_get(0)?,
                subject: r.try_get(1)?,
                holder: r.try_get(2)?,
                dataset: r.try_get(3)?,
                expires_at: r.try_get(4)?,
                revoked_at: r.try_get(5)?,
                code: r.try_get(6)?,
                reason: r.try_get(7)?,
            })
        };
        Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
    }

    /// Every live grant at `now`, for deciding them again under a new policy.
    pub async fn live_grants(&self, now: i64) -> Result<Vec<GrantRow>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > $1 ORDER BY decision_id"
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(grant_row).collect::<Result<_, _>>()?)
    }
}

pub(super) async fn insert_grants(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    grants: &[GrantRow],
) -> Result<(), StoreError> {
    super::insert_rows(tx, sqlite, &format!("grants ({GRANT_COLUMNS})"), 10, grants, |q, g| {
        q.bind(g.decision_id.as_str())
            .bind(g.request_id.as_str())
            .bind(g.subject.as_str())
            .bind(g.holder.as_str())
            .bind(g.dataset.as_str())
            .bind(g.scenario.as_str())
            .bind(g.operation.as_str())
            .bind(g.policy_version.as_str())
            .bind(g.expires_at)
            .bind(g.probe.as_str())
    })
    .await
}
