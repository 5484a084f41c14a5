//! Persistence (sqlx only lives here). One portable schema for SQLite and
//! PostgreSQL through sqlx's `Any` driver; migrations run at start-up.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use crate::events::{AuditEvent, UsageRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// Which output topic a stored message goes to. Topic *names* are resolved
/// at publish time, so a stored outcome survives a rename in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Decisions,
    Audit,
    Usage,
    DeadLetters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub stream: Stream,
    pub key: String,
    pub payload: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, busy or timed out: try again later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A bug or a corrupted row: retrying will not help.
    #[error("database error: {0}")]
    Fatal(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Database(_) => StoreError::Unavailable(e),
            other => StoreError::Fatal(other.to_string()),
        }
    }
}

/// A decision row for querying history (the published bytes live in
/// `outcomes`).
#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub request_id: String,
    pub decision_id: String,
    pub subject: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub outcome: String,
    pub reason_code: Option<String>,
    pub policy_version: String,
    pub request_digest: String,
    pub decided_at: String,
}

/// Everything one input produces, committed in one transaction.
pub struct Commit {
    pub idem_key: String,
    pub kind: &'static str,
    pub decision: Option<DecisionRow>,
    /// Decision or dead-letter messages, published before the audit event.
    pub messages: Vec<Output>,
    /// Unsealed: chain position and hash are assigned inside the transaction.
    pub audit: AuditEvent,
    pub usage: Option<UsageRecord>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Stored now; publish these.
    New(Vec<Output>),
    /// The input was decided before; publish the stored outputs again.
    Existing(Vec<Output>),
}

impl Committed {
    pub fn outputs(&self) -> &[Output] {
        match self {
            Committed::New(o) | Committed::Existing(o) => o,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects and migrates. A `sqlite://` file is created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let mut url = url.to_owned();
        let sqlite = url.starts_with("sqlite:");
        if sqlite && !url.contains('?') && !url.contains(":memory:") {
            url.push_str("?mode=rwc");
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer; more connections only add lock waits.
            .max_connections(if sqlite { 1 } else { max_connections })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            other => StoreError::Fatal(other.to_string()),
        })?;
        Ok(Store { pool })
    }

    pub async fn find_outcome(&self, idem_key: &str) -> Result<Option<Vec<Output>>, StoreError> {
        find_outcome(&mut *self.pool.acquire().await?, idem_key).await
    }

    /// Units of `dataset` that `subject` consumed in `period`.
    pub async fn usage_in_period(&self, subject: &str, dataset: &str, period: &str) -> Result<u64, StoreError> {
        usage_in_period(&mut *self.pool.acquire().await?, subject, dataset, period).await
    }

    /// Opens a transaction for a batch of inputs: one commit (one fsync)
    /// for all of them. Reads inside it see the batch's own writes, so a
    /// request repeated within a batch, or a quota used up by an earlier
    /// request of the batch, is handled as if they came one by one.
    pub async fn begin(&self) -> Result<Batch, StoreError> {
        Ok(Batch { tx: self.pool.begin().await? })
    }

    /// Stores an input's outcome, sealing its audit event onto the chain.
    /// Idempotent by `idem_key`: when the input was already decided, by this
    /// or another instance, the stored outputs come back instead.
    pub async fn commit(&self, c: &Commit) -> Result<Committed, StoreError> {
        match self.try_commit(c).await {
            Err(StoreError::Unavailable(e)) if is_unique_violation(&e) => {
                // Lost a race: either another instance stored this input
                // (return its outputs) or took our chain position (retry).
                match self.find_outcome(&c.idem_key).await? {
                    Some(outputs) => Ok(Committed::Existing(outputs)),
                    None => Err(StoreError::Unavailable(e)),
                }
            }
            other => other,
        }
    }

    async fn try_commit(&self, c: &Commit) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let committed = write(&mut tx, c, true).await?;
        tx.commit().await?;
        Ok(committed)
    }

    /// Every audit event, chain by chain in sequence order.
    pub async fn audit_events(&self) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT body FROM audit_events ORDER BY chain, seq").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get(0)?;
                serde_json::from_str(&body).map_err(|e| StoreError::Fatal(format!("audit row: {e}")))
            })
            .collect()
    }

    /// (records, total quantity, total amount in fen) of all usage.
    pub async fn usage_totals(&self) -> Result<(i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(quantity), 0) AS BIGINT), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT) \
             FROM usage_records",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}

/// A transaction holding a batch of inputs' outcomes.
pub struct Batch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Batch {
    pub async fn find_outcome(&mut self, idem_key: &str) -> Result<Option<Vec<Output>>, StoreError> {
        find_outcome(&mut self.tx, idem_key).await
    }

    pub async fn usage_in_period(&mut self, subject: &str, dataset: &str, period: &str) -> Result<u64, StoreError> {
        usage_in_period(&mut self.tx, subject, dataset, period).await
    }

    /// Adds one input's outcome to the batch (see [`Store::commit`]).
    pub async fn add(&mut self, c: &Commit) -> Result<Committed, StoreError> {
        write(&mut self.tx, c, true).await
    }

    /// As [`Batch::add`], for an input whose key the caller has just looked
    /// up in this same transaction and not found: saves the second lookup
    /// on the hot path. (A racing instance is still stopped by the key.)
    pub async fn add_new(&mut self, c: &Commit) -> Result<Committed, StoreError> {
        write(&mut self.tx, c, false).await
    }

    /// Commits the batch. On any error nothing of it is stored.
    pub async fn finish(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

async fn find_outcome(conn: &mut sqlx::AnyConnection, idem_key: &str) -> Result<Option<Vec<Output>>, StoreError> {
    let row = sqlx::query("SELECT outputs FROM outcomes WHERE idem_key = $1")
        .bind(idem_key)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| decode_outputs(&r.try_get::<String, _>(0)?)).transpose()
}

async fn usage_in_period(
    conn: &mut sqlx::AnyConnection,
    subject: &str,
    dataset: &str,
    period: &str,
) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT quantity FROM usage_counters WHERE subject = $1 AND dataset = $2 AND period = $3")
        .bind(subject)
        .bind(dataset)
        .bind(period)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.map_or(0, |q| u64::try_from(q).unwrap_or(0)))
}

/// Writes one outcome: seals its audit event onto the chain and stores every
/// output. Returns the stored outputs when the input was decided before.
async fn write(tx: &mut sqlx::AnyConnection, c: &Commit, check_existing: bool) -> Result<Committed, StoreError> {
    if check_existing && let Some(outputs) = find_outcome(&mut *tx, &c.idem_key).await? {
        return Ok(Committed::Existing(outputs));
    }
    let head = sqlx::query("SELECT seq, hash FROM audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1")
        .bind(&c.audit.chain)
        .fetch_optional(&mut *tx)
        .await?;
    let prev =
        head.map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)? as u64, r.try_get::<String, _>(1)?))).transpose()?;
    let audit = crate::audit::seal(c.audit.clone(), prev.as_ref().map(|(s, h)| (*s, h.as_str())));
    let audit_json = serde_json::to_string(&audit).map_err(|e| StoreError::Fatal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audit_events (chain, seq, hash, prev_hash, event_type, body, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&audit.chain)
    .bind(audit.seq as i64)
    .bind(&audit.hash)
    .bind(&audit.prev_hash)
    .bind(&audit.event_type)
    .bind(&audit_json)
    .bind(audit.occurred_at.to_rfc3339())
    .execute(&mut *tx)
    .await?;

    let mut outputs = c.messages.clone();
    outputs.push(Output { stream: Stream::Audit, key: audit.chain.clone(), payload: audit_json });

    if let Some(d) = &c.decision {
        sqlx::query(
            "INSERT INTO decisions (request_id, decision_id, subject, dataset, scenario, operation, outcome, \
                 reason_code, policy_version, request_digest, decided_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&d.request_id)
        .bind(&d.decision_id)
        .bind(&d.subject)
        .bind(&d.dataset)
        .bind(&d.scenario)
        .bind(&d.operation)
        .bind(&d.outcome)
        .bind(&d.reason_code)
        .bind(&d.policy_version)
        .bind(&d.request_digest)
        .bind(&d.decided_at)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(u) = &c.usage {
        let body = serde_json::to_string(u).map_err(|e| StoreError::Fatal(e.to_string()))?;
        sqlx::query(
                "INSERT INTO usage_records (usage_id, request_id, subject, dataset, period, quantity, amount_fen, body, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&u.usage_id)
            .bind(&u.request_id)
            .bind(&u.subject)
            .bind(&u.dataset)
            .bind(&u.period)
            .bind(i64::try_from(u.quantity).unwrap_or(i64::MAX))
            .bind(u.amount_fen)
            .bind(&body)
            .bind(u.recorded_at.to_rfc3339())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO usage_counters (subject, dataset, period, quantity) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject, dataset, period) DO UPDATE SET quantity = usage_counters.quantity + excluded.quantity",
        )
        .bind(&u.subject)
        .bind(&u.dataset)
        .bind(&u.period)
        .bind(i64::try_from(u.quantity).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        outputs.push(Output { stream: Stream::Usage, key: u.subject.clone(), payload: body });
    }
    let encoded = serde_json::to_string(&outputs).map_err(|e| StoreError::Fatal(e.to_string()))?;
    sqlx::query("INSERT INTO outcomes (idem_key, kind, outputs, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&c.idem_key)
        .bind(c.kind)
        .bind(&encoded)
        .bind(&c.created_at)
        .execute(&mut *tx)
        .await?;
    Ok(Committed::New(outputs))
}

fn decode_outputs(text: &str) -> Result<Vec<Output>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Fatal(format!("stored outputs do not decode: {e}")))
}
