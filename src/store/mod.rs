//! Persistence (sqlx only lives here). One portable schema for SQLite and
//! PostgreSQL through sqlx's `Any` driver; migrations run at start-up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use crate::contract::{AuditEvent, UsageRecord};

mod audit_query;
mod checkpoints;
mod decisions;
mod grant_keys;
mod grants;
mod prune;
mod reports;
mod reviews;
mod trail;
pub use audit_query::{AuditFilter, AuditPosition};
pub use checkpoints::{ChainHead, LatestCheckpoint};
pub use decisions::{DecisionLine, StoredDecision};
pub use grant_keys::PublishedKey;
pub use grants::{GrantRow, GrantState, Revocation, RevokedGrant};
pub use prune::Pruned;
pub use reports::{ReportTotals, ReportedGrant, reported_period};
pub use reviews::{Closing, ReviewRow};
pub use trail::TrailSnapshot;

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
    /// Grant events (revocations) for data hosts.
    Grants,
    /// Answers to commands.
    Replies,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub stream: Stream,
    pub key: String,
    pub payload: String,
}

/// An output as kept in `outcomes.outputs`: inline, or — an audit event or
/// usage record, stored whole in its own table — by reference, so the
/// bytes are written once (the second copy was nearly a third of what a
/// decision wrote).
/// Re-publication resolves references to the same bytes. Rows written
/// before references existed hold every payload inline and still decode.
#[derive(Debug, Serialize, Deserialize)]
struct StoredOutput<'a> {
    stream: Stream,
    key: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<Cow<'a, str>>,
    /// Audit: the event's position in chain `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// Usage: the record's `usage_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage_id: Option<Cow<'a, str>>,
}

impl<'a> StoredOutput<'a> {
    fn inline(o: &'a Output) -> Self {
        StoredOutput {
            stream: o.stream,
            key: Cow::Borrowed(&o.key),
            payload: Some(Cow::Borrowed(&o.payload)),
            seq: None,
            usage_id: None,
        }
    }

    /// An approval's usage record, by reference to its row.
    fn usage(u: &'a UsageRecord) -> Self {
        StoredOutput {
            stream: Stream::Usage,
            key: Cow::Borrowed(&u.subject),
            payload: None,
            seq: None,
            usage_id: Some(Cow::Borrowed(&u.usage_id)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, busy or timed out: try again later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbError),
    /// Another writer stored a row this transaction also claims (a token
    /// id, a chain position, an outcome): not an outage. Deciding again
    /// sees what the other one stored.
    #[error("conflict with another writer: {0}")]
    Conflict(#[source] DbError),
    /// A bug or a corrupted row: retrying will not help.
    #[error("database error: {0}")]
    Fatal(String),
}

/// The database driver's error, kept as the cause without making the
/// driver's type part of tollgate's API; or a row another writer changed
/// since this transaction read it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Driver(sqlx::Error),
    /// A usage counter moved between this batch's read and its write:
    /// another instance counted usage against the same quota.
    #[error("{0} usage counter(s) changed since this batch read them")]
    CounterMoved(u64),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unique_violation(&e) {
            return StoreError::Conflict(DbError::Driver(e));
        }
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Database(_) => StoreError::Unavailable(DbError::Driver(e)),
            other => StoreError::Fatal(other.to_string()),
        }
    }
}

fn decode_audit(body: &str) -> Result<AuditEvent, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Fatal(format!("audit row: {e}")))
}

/// An audit event as stored: its body and the columns beside it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    pub prev_hash: String,
    pub event: AuditEvent,
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
    /// What the decision was decided from, for replay (JSON; None when
    /// the token did not verify).
    pub inputs: Option<String>,
    /// Its obligations and price (JSON).
    pub effects: Option<String>,
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
    /// The grant an approval issued, recorded so it can be revoked.
    pub grant: Option<GrantRow>,
    /// A request sent to review, recorded until a verdict or the timeout.
    pub review: Option<ReviewRow>,
    /// A final decision after review: the request it decides. Its decision
    /// row replaces the pending one, and the request's stored outcome
    /// becomes this commit's outputs (the same request again gets the
    /// final decision).
    pub supersedes: Option<String>,
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

    pub fn into_outputs(self) -> Vec<Output> {
        match self {
            Committed::New(o) | Committed::Existing(o) => o,
        }
    }
}

/// Per-connection SQLite settings (they are not kept in the file).
/// `wal_autocheckpoint`: a checkpoint copies each page changed since the
/// last one once, however often it changed, so a longer interval writes the
/// pages every batch touches (the last page of each table, index pages of
/// request ids and token ids) once instead of once per checkpoint; at the
/// default of 1 000 pages a checkpoint ran after every batch of 256
/// decisions. `cache_size`: index pages stay in the process instead of
/// being read again from the OS on every batch.
const SQLITE_TUNING: [&str; 2] = ["PRAGMA wal_autocheckpoint = 16000", "PRAGMA cache_size = -16384"];

fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6")))
}

/// `pragma`, tried again for five seconds while the database is busy:
/// SQLite answers some statements (a change of journal mode, a read of the
/// schema another instance is migrating on a new file) with "database is
/// locked" at once, without waiting for the busy timeout.
async fn pragma_when_free(conn: &mut sqlx::AnyConnection, pragma: &str) -> Result<(), sqlx::Error> {
    let mut attempts = 50;
    loop {
        match sqlx::query(pragma).execute(&mut *conn).await {
            Err(e) if is_busy(&e) && attempts > 1 => {
                attempts -= 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            done => return done.map(drop),
        }
    }
}

/// Every new SQLite connection: WAL (kept in the file; required), then
/// [`SQLITE_TUNING`] — speed, not correctness, so a setting the database
/// stays too busy to take is logged and skipped and the instance starts.
async fn on_new_sqlite_connection(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    pragma_when_free(conn, "PRAGMA journal_mode = WAL").await?;
    for pragma in SQLITE_TUNING {
        match pragma_when_free(conn, pragma).await {
            Err(e) if is_busy(&e) => {
                tracing::warn!(message = "SQLite setting not applied: database busy", pragma, error = %e)
            }
            other => other?,
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    sqlite: bool,
}

/// Applies the migrations not applied yet. PostgreSQL serialises
/// concurrent migrators with a lock; SQLite has none, so two instances
/// starting at once on a new file race, and the loser sees a migration it
/// read as pending fail ("table … already exists"). Each migration commits
/// on its own, so running again skips what the winner applied.
async fn migrate(pool: &sqlx::AnyPool, sqlite: bool) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateError;
    // The winner may take seconds to apply everything on a busy machine.
    let mut attempts = if sqlite { 300 } else { 1 };
    loop {
        attempts -= 1;
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)) if attempts > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)) => return Err(StoreError::from(e)),
            Err(other) => return Err(StoreError::Fatal(other.to_string())),
        }
    }
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
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        on_new_sqlite_connection(conn).await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        migrate(&pool, sqlite).await?;
        audit_query::backfill(&pool).await?;
        Ok(Store { pool, sqlite })
    }

    /// Opens a transaction for a batch of inputs: one commit (one fsync)
    /// for all of them. See [`Batch`].
    pub async fn begin(&self) -> Result<Batch, StoreError> {
        Ok(Batch {
            tx: self.pool.begin().await?,
            outcomes: HashMap::new(),
            tokens: HashMap::new(),
            counters: HashMap::new(),
            counters_read: HashMap::new(),
            heads: HashMap::new(),
            pending: Pending::default(),
            sqlite: self.sqlite,
        })
    }

    /// Stores one outcome on its own (policy audit events), sealing its
    /// audit event onto the chain. Idempotent by `idem_key`: when the input
    /// was already stored, by this or another instance, the stored outputs
    /// come back instead.
    ///
    /// Its audit event also goes into the outbox in the same transaction
    /// ([`Store::outbox`]): no input's redelivery would publish it again.
    pub async fn commit(&self, c: Commit) -> Result<Committed, StoreError> {
        let idem_key = c.idem_key.clone();
        let attempt = async {
            let mut batch = self.begin().await?;
            let committed = batch.add(c).await?;
            batch.queue_in_outbox();
            batch.finish().await?;
            Ok::<_, StoreError>(committed)
        };
        match attempt.await {
            Err(StoreError::Conflict(e)) => {
                // Lost a race: either another instance stored this input
                // (return its outputs) or took our chain position (retry).
                let mut batch = self.begin().await?;
                match batch.find_outcome(&idem_key).await? {
                    Some(outputs) => Ok(Committed::Existing(outputs)),
                    None => Err(StoreError::Conflict(e)),
                }
            }
            other => other,
        }
    }

    /// Deletes token uses whose token has expired `grace_secs` ago: past
    /// that, the token is refused as expired anyway.
    pub async fn purge_token_uses(&self, now: i64, grace_secs: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM token_uses WHERE expires_at < $1")
            .bind(now - grace_secs)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Audit events stored but not yet acknowledged by the broker (see
    /// [`Store::commit`]), chain by chain in sequence order.
    /// Each comes with its seq and as the message to publish: the stored
    /// bytes, keyed by chain.
    pub async fn outbox(&self) -> Result<Vec<(u64, Output)>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.chain, o.seq, e.body FROM audit_outbox o JOIN audit_events e ON e.chain = o.chain AND e.seq = o.seq \
             ORDER BY o.chain, o.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let seq = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
                Ok((seq, Output { stream: Stream::Audit, key: r.try_get(0)?, payload: r.try_get(2)? }))
            })
            .collect()
    }

    /// Outcomes whose messages (other than audit events, which are in the
    /// audit outbox) are stored but not yet acknowledged by the broker.
    pub async fn queued_messages(&self) -> Result<Vec<(String, Vec<Output>)>, StoreError> {
        let keys: Vec<String> = sqlx::query("SELECT idem_key FROM message_outbox ORDER BY idem_key")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut batch = self.begin().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let outputs = batch.find_outcome(&key).await?.unwrap_or_default();
            out.push((key, outputs.into_iter().filter(|o| o.stream != Stream::Audit).collect()));
        }
        Ok(out)
    }

    /// Takes an outcome's messages out of the outbox once all were acknowledged.
    pub async fn messages_published(&self, idem_key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM message_outbox WHERE idem_key = $1").bind(idem_key).execute(&self.pool).await?;
        Ok(())
    }

    /// Takes an event out of the outbox once the broker acknowledged it.
    pub async fn published(&self, chain: &str, seq: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM audit_outbox WHERE chain = $1 AND seq = $2")
            .bind(chain)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every audit event, chain by chain in sequence order.
    pub async fn audit_events(&self) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT body FROM audit_events ORDER BY chain, seq").fetch_all(&self.pool).await?;
        rows.iter().map(|r| decode_audit(&r.try_get::<String, _>(0)?)).collect()
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
///
/// Reads go to the database once per batch: the caller names every key it
/// will ask about ([`Batch::prefetch`]) and later lookups are answered from
/// memory, which also holds the batch's own writes, so a request repeated
/// within a batch or a quota used up by an earlier request of the batch is
/// handled as if they came one by one. Writes are buffered and go out as
/// multi-row statements in [`Batch::finish`], inside the same transaction.
/// A racing instance is still stopped by the primary keys: the commit fails
/// with a unique violation, and the retry sees what the other one stored.
pub struct Batch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Known outcomes (None: known to be absent).
    outcomes: HashMap<String, Option<Vec<Output>>>,
    /// Known token uses: (issuer, jti) → the request that used it.
    tokens: HashMap<(String, String), Option<String>>,
    /// Known usage counters (stored value plus this batch's additions).
    counters: HashMap<(String, String, String), u64>,
    /// What the database held for each counter when this batch read it
    /// (None: no row). The batch's write is conditional on it, so two
    /// instances can never both spend the same quota (see `add_to_counters`).
    counters_read: HashMap<(String, String, String), Option<u64>>,
    /// Chain heads: last (seq, hash) per chain, None for an empty chain.
    heads: HashMap<String, Option<(u64, String)>>,
    pending: Pending,
    sqlite: bool,
}

#[derive(Default)]
struct Pending {
    outcomes: Vec<(String, &'static str, String, String)>,
    /// Sealed events with their stored JSON.
    /// With the decision's scenario, for queries.
    audit: Vec<(AuditEvent, String, Option<String>)>,
    decisions: Vec<DecisionRow>,
    usage: Vec<(UsageRecord, String)>,
    /// Accepted usage reports: record, stored JSON, the report's digest.
    reports: Vec<(UsageRecord, String, String)>,
    counter_deltas: HashMap<(String, String, String), u64>,
    tokens: Vec<(String, String, String, i64)>,
    /// Chain positions to publish from the outbox.
    outbox: Vec<(String, u64)>,
    grants: Vec<grants::GrantRow>,
    /// Outcomes of this batch with messages besides their audit event.
    with_messages: Vec<String>,
    reviews: Vec<reviews::ReviewRow>,
    /// Final decisions after review, replacing the pending rows.
    final_decisions: Vec<DecisionRow>,
    /// `(request key, outputs)`: stored outcomes replaced by a final decision's.
    replaced_outcomes: Vec<(String, String)>,
    /// Of those, the ones to publish from the outbox.
    message_outbox: Vec<String>,
}

/// A token's use by a request (single-use token ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// First use, or the same request again: recorded for this request.
    Fresh,
    /// Already used by this other request.
    UsedBy(String),
}

/// Keys a batch will look up, fetched in one query per kind.
#[derive(Debug, Default)]
pub struct Prefetch {
    pub outcomes: Vec<String>,
    pub tokens: Vec<(String, String)>,
    pub counters: Vec<(String, String, String)>,
    pub chains: Vec<String>,
}

/// Rows per multi-row statement: stays under SQLite's 32 766 and
/// PostgreSQL's 65 535 bind parameters with 13 columns.
const ROWS_PER_STATEMENT: usize = 500;

/// `($1, $2, …), (…)` for `rows` rows of `cols` placeholders; plain `?`
/// for SQLite, where looking up a numbered parameter's name is a linear
/// scan per parameter (quadratic in a multi-row statement: it was the top
/// symbol in a profile).
fn placeholders(rows: usize, cols: usize, sqlite: bool) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            if sqlite {
                s.push('?');
            } else {
                s.push('$');
                s.push_str(&(r * cols + c + 1).to_string());
            }
        }
        s.push(')');
    }
    s
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl Batch {
    /// Loads what the batch will look up: one query per kind of key (and
    /// one per audit chain), instead of one per input.
    pub async fn prefetch(&mut self, keys: &Prefetch) -> Result<(), StoreError> {
        let outcome_keys: Vec<&String> = keys.outcomes.iter().filter(|k| !self.outcomes.contains_key(*k)).collect();
        if !outcome_keys.is_empty() {
            let select = "SELECT idem_key, outputs FROM outcomes WHERE idem_key";
            let rows = self.select_keys(select, 1, &outcome_keys, |q, k| q.bind(k.as_str())).await?;
            for k in outcome_keys {
                self.outcomes.insert(k.clone(), None);
            }
            let mut found = Vec::with_capacity(rows.len());
            for r in rows {
                found.push((r.try_get::<String, _>(0)?, decode_outputs(&r.try_get::<String, _>(1)?)?));
            }
            for (key, outputs) in self.resolve(found).await? {
                self.outcomes.insert(key, Some(outputs));
            }
        }
        let token_keys: Vec<&(String, String)> = keys.tokens.iter().filter(|k| !self.tokens.contains_key(*k)).collect();
        if !token_keys.is_empty() {
            let select = "SELECT issuer, jti, request_id FROM token_uses WHERE (issuer, jti)";
            let rows = self
                .select_keys(select, 2, &token_keys, |q, (iss, jti)| q.bind(iss.as_str()).bind(jti.as_str()))
                .await?;
            for k in token_keys {
                self.tokens.insert(k.clone(), None);
            }
            for r in rows {
                self.tokens.insert((r.try_get(0)?, r.try_get(1)?), Some(r.try_get(2)?));
            }
        }
        let counter_keys: Vec<&(String, String, String)> =
            keys.counters.iter().filter(|k| !self.counters.contains_key(*k)).collect();
        if !counter_keys.is_empty() {
            let select =
                "SELECT subject, dataset, period, quantity FROM usage_counters WHERE (subject, dataset, period)";
            let rows = self
                .select_keys(select, 3, &counter_keys, |q, (s, d, p)| {
                    q.bind(s.as_str()).bind(d.as_str()).bind(p.as_str())
                })
                .await?;
            for k in counter_keys {
                self.counters.insert(k.clone(), 0);
                self.counters_read.insert(k.clone(), None);
            }
            for r in rows {
                let quantity = u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0);
                let key = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                self.counters.insert(key.clone(), quantity);
                self.counters_read.insert(key, Some(quantity));
            }
        }
        for chain in &keys.chains {
            self.head(chain).await?;
        }
        Ok(())
    }

    /// The rows of `select … WHERE <columns>` `IN` the `keys`, each bound
    /// as `cols` parameters by `bind`, in as few statements as the
    /// parameter limits allow.
    async fn select_keys<T>(
        &mut self,
        select: &str,
        cols: usize,
        keys: &[T],
        bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let list = if cols == 1 {
                placeholders(1, chunk.len(), self.sqlite)
            } else {
                format!("(VALUES {})", placeholders(chunk.len(), cols, self.sqlite))
            };
            let sql = format!("{select} IN {list}");
            let mut q = sqlx::query(&sql);
            for key in chunk {
                q = bind(q, key);
            }
            rows.extend(q.fetch_all(&mut *self.tx).await?);
        }
        Ok(rows)
    }

    /// Stored outcomes with their referenced audit events and usage records
    /// read back (one query per kind), as the outputs first published.
    async fn resolve(
        &mut self,
        found: Vec<(String, Vec<StoredOutput<'static>>)>,
    ) -> Result<Vec<(String, Vec<Output>)>, StoreError> {
        let mut events: HashMap<(String, u64), Option<String>> = HashMap::new();
        let mut usage: HashMap<String, Option<String>> = HashMap::new();
        for o in found.iter().flat_map(|(_, outputs)| outputs).filter(|o| o.payload.is_none()) {
            match (o.seq, &o.usage_id) {
                (Some(seq), _) => events.insert((o.key.to_string(), seq), None),
                (None, Some(id)) => usage.insert(id.to_string(), None),
                (None, None) => {
                    return Err(StoreError::Fatal("a stored output has neither payload nor reference".into()));
                }
            };
        }
        let wanted: Vec<(String, u64)> = events.keys().cloned().collect();
        let select = "SELECT chain, seq, body FROM audit_events WHERE (chain, seq)";
        let rows = self
            .select_keys(select, 2, &wanted, |q, (chain, seq)| {
                q.bind(chain.as_str()).bind(i64::try_from(*seq).unwrap_or(i64::MAX))
            })
            .await?;
        for r in rows {
            let seq = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
            events.insert((r.try_get(0)?, seq), Some(r.try_get(2)?));
        }
        let wanted: Vec<String> = usage.keys().cloned().collect();
        let select = "SELECT usage_id, body FROM usage_records WHERE usage_id";
        for r in self.select_keys(select, 1, &wanted, |q, id| q.bind(id.as_str())).await? {
            usage.insert(r.try_get(0)?, Some(r.try_get(1)?));
        }
        let missing =
            |key: &str, what: String| StoreError::Fatal(format!("outcome {key} refers to {what}, which is not stored"));
        found
            .into_iter()
            .map(|(key, stored)| {
                let outputs = stored
                    .into_iter()
                    .map(|o| {
                        let payload = match (o.payload, o.seq, &o.usage_id) {
                            (Some(p), _, _) => p.into_owned(),
                            (None, Some(seq), _) => events
                                .get(&(o.key.to_string(), seq))
                                .cloned()
                                .flatten()
                                .ok_or_else(|| missing(&key, format!("audit event {}#{seq}", o.key)))?,
                            (None, None, Some(id)) => usage
                                .get(id.as_ref())
                                .cloned()
                                .flatten()
                                .ok_or_else(|| missing(&key, format!("usage record {id}")))?,
                            (None, None, None) => unreachable!("rejected above"),
                        };
                        Ok(Output { stream: o.stream, key: o.key.into_owned(), payload })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((key, outputs))
            })
            .collect()
    }

    pub async fn find_outcome(&mut self, idem_key: &str) -> Result<Option<Vec<Output>>, StoreError> {
        if !self.outcomes.contains_key(idem_key) {
            self.prefetch(&Prefetch { outcomes: vec![idem_key.to_owned()], ..Prefetch::default() }).await?;
        }
        Ok(self.outcomes.get(idem_key).cloned().flatten())
    }

    /// Units of `dataset` that `subject` consumed in `period`, this batch
    /// included.
    pub async fn usage_in_period(&mut self, subject: &str, dataset: &str, period: &str) -> Result<u64, StoreError> {
        let key = (subject.to_owned(), dataset.to_owned(), period.to_owned());
        if !self.counters.contains_key(&key) {
            self.prefetch(&Prefetch { counters: vec![key.clone()], ..Prefetch::default() }).await?;
        }
        Ok(self.counters.get(&key).copied().unwrap_or(0))
    }

    /// Records that `request_id` uses the token (`issuer`, `jti`), valid
    /// until `expires_at` (epoch seconds), unless another request used it.
    pub async fn use_token(
        &mut self,
        issuer: &str,
        jti: &str,
        request_id: &str,
        expires_at: i64,
    ) -> Result<TokenUse, StoreError> {
        let key = (issuer.to_owned(), jti.to_owned());
        if !self.tokens.contains_key(&key) {
            self.prefetch(&Prefetch { tokens: vec![key.clone()], ..Prefetch::default() }).await?;
        }
        match self.tokens.get(&key).cloned().flatten() {
            Some(other) if other != request_id => Ok(TokenUse::UsedBy(other)),
            Some(_) => Ok(TokenUse::Fresh),
            None => {
                self.tokens.insert(key, Some(request_id.to_owned()));
                self.pending.tokens.push((issuer.to_owned(), jti.to_owned(), request_id.to_owned(), expires_at));
                Ok(TokenUse::Fresh)
            }
        }
    }

    async fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, StoreError> {
        if let Some(h) = self.heads.get(chain) {
            return Ok(h.clone());
        }
        let row = sqlx::query("SELECT seq, hash FROM audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1")
            .bind(chain)
            .fetch_optional(&mut *self.tx)
            .await?;
        let head = row
            .map(|r| Ok::<_, sqlx::Error>((u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0), r.try_get(1)?)))
            .transpose()?;
        self.heads.insert(chain.to_owned(), head.clone());
        Ok(head)
    }

    /// Adds one input's outcome to the batch, or returns the stored outputs
    /// when the input was decided before.
    pub async fn add(&mut self, c: Commit) -> Result<Committed, StoreError> {
        if let Some(outputs) = self.find_outcome(&c.idem_key).await? {
            return Ok(Committed::Existing(outputs));
        }
        let scenario = c.decision.as_ref().map(|d| d.scenario.clone());
        let prev = self.head(&c.audit.chain).await?;
        let audit = crate::audit::seal(c.audit, prev.as_ref().map(|(s, h)| (*s, h.as_str())));
        let audit_json = serde_json::to_string(&audit).map_err(|e| StoreError::Fatal(e.to_string()))?;
        self.heads.insert(audit.chain.clone(), Some((audit.seq, audit.hash.clone())));

        if !c.messages.is_empty() {
            self.pending.with_messages.push(c.idem_key.clone());
        }
        let mut outputs = c.messages;
        // A reported usage record is stored inline with the outcome (an
        // approval's, by reference to its row).
        let (usage, reported) = reports::split(c.usage, &mut outputs)?;
        let mut stored: Vec<StoredOutput<'_>> = outputs.iter().map(StoredOutput::inline).collect();
        stored.push(StoredOutput {
            stream: Stream::Audit,
            key: Cow::Borrowed(&audit.chain),
            payload: None,
            seq: Some(audit.seq),
            usage_id: None,
        });
        stored.extend(usage.as_ref().map(StoredOutput::usage));
        let usage_body =
            usage.as_ref().map(serde_json::to_string).transpose().map_err(|e| StoreError::Fatal(e.to_string()))?;
        let encoded = serde_json::to_string(&stored).map_err(|e| StoreError::Fatal(e.to_string()))?;
        // What the request itself publishes again after a final decision:
        // not the reply to the reviewer.
        let for_request = |stream: &Stream| *stream != Stream::Replies;
        let request_encoded = match &c.supersedes {
            Some(_) => {
                let kept: Vec<&StoredOutput<'_>> = stored.iter().filter(|o| for_request(&o.stream)).collect();
                Some(serde_json::to_string(&kept).map_err(|e| StoreError::Fatal(e.to_string()))?)
            }
            None => None,
        };
        drop(stored);
        outputs.push(Output { stream: Stream::Audit, key: audit.chain.clone(), payload: audit_json.clone() });
        match (c.decision, &c.supersedes) {
            (Some(d), Some(_)) => self.pending.final_decisions.push(d),
            (Some(d), None) => self.pending.decisions.push(d),
            (None, _) => {}
        }
        if let Some(r) = c.review {
            self.pending.reviews.push(r);
        }
        let replaced = c.supersedes.map(|request_id| format!("request:{request_id}"));
        if let (Some(key), Some(request_encoded)) = (&replaced, request_encoded) {
            self.pending.replaced_outcomes.push((key.clone(), request_encoded));
        }
        if let Some(r) = reported {
            self.add_report(r, &audit.request_digest);
        }
        if let (Some(u), Some(body)) = (usage, usage_body) {
            let key = (u.subject.clone(), u.dataset.clone(), u.period.clone());
            *self.counters.entry(key.clone()).or_default() += u.quantity;
            *self.pending.counter_deltas.entry(key).or_default() += u.quantity;
            outputs.push(Output { stream: Stream::Usage, key: u.subject.clone(), payload: body.clone() });
            self.pending.usage.push((u, body));
        }
        if let Some(g) = c.grant {
            self.pending.grants.push(g);
        }

        self.pending.outcomes.push((c.idem_key.clone(), c.kind, encoded, c.created_at));
        self.pending.audit.push((audit, audit_json, scenario));
        // Kept for an input repeated later in this batch.
        self.outcomes.insert(c.idem_key, Some(outputs.clone()));
        if let Some(key) = replaced {
            self.outcomes.insert(key, Some(outputs.iter().filter(|o| for_request(&o.stream)).cloned().collect()));
        }
        Ok(Committed::New(outputs))
    }

    /// Queues what this batch stores for the outbox (outcomes that belong
    /// to no input, whose redelivery would publish them): its audit events
    /// and its other messages.
    pub fn queue_in_outbox(&mut self) {
        self.pending.outbox = self.pending.audit.iter().map(|(a, _, _)| (a.chain.clone(), a.seq)).collect();
        self.pending.message_outbox = self.pending.with_messages.clone();
    }

    /// Writes everything buffered and commits. On any error nothing of the
    /// batch is stored.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        // A counter this batch adds to without having read it (none today)
        // is read now: the write below is conditional on the read.
        let unread: Vec<_> =
            self.pending.counter_deltas.keys().filter(|k| !self.counters_read.contains_key(*k)).cloned().collect();
        if !unread.is_empty() {
            self.prefetch(&Prefetch { counters: unread, ..Prefetch::default() }).await?;
        }
        let p = std::mem::take(&mut self.pending);
        let sqlite = self.sqlite;
        let tx = &mut self.tx;
        insert_audit(tx, sqlite, &p.audit).await?;
        insert_decisions(tx, sqlite, &p.decisions).await?;
        insert_usage(tx, sqlite, &p.usage).await?;
        reports::insert_reports(tx, sqlite, &p.reports).await?;
        grants::insert_grants(tx, sqlite, &p.grants).await?;
        reviews::insert_reviews(tx, sqlite, &p.reviews).await?;
        replace_decisions(tx, &p.final_decisions, &p.replaced_outcomes).await?;
        add_to_counters(tx, sqlite, &p.counter_deltas, &self.counters_read).await?;
        insert_rows(
            tx,
            sqlite,
            "token_uses (issuer, jti, request_id, expires_at)",
            4,
            &p.tokens,
            |q, (iss, jti, req, exp)| q.bind(iss.as_str()).bind(jti.as_str()).bind(req.as_str()).bind(*exp),
        )
        .await?;
        insert_rows(tx, sqlite, "audit_outbox (chain, seq)", 2, &p.outbox, |q, (chain, seq)| {
            q.bind(chain).bind(i64::try_from(*seq).unwrap_or(i64::MAX))
        })
        .await?;
        insert_rows(tx, sqlite, "message_outbox (idem_key)", 1, &p.message_outbox, |q, key| q.bind(key.as_str()))
            .await?;
        insert_rows(
            tx,
            sqlite,
            "outcomes (idem_key, kind, outputs, created_at)",
            4,
            &p.outcomes,
            |q, (key, kind, outputs, at)| q.bind(key.as_str()).bind(*kind).bind(outputs.as_str()).bind(at.as_str()),
        )
        .await?;
        Ok(self.tx.commit().await?)
    }
}

/// Sealed audit events with their stored JSON.
async fn insert_audit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    audit: &[(AuditEvent, String, Option<String>)],
) -> Result<(), StoreError> {
    insert_rows(
        tx,
        sqlite,
        "audit_events (chain, seq, hash, prev_hash, event_type, body, occurred_at, subject, resource, \
         scenario, outcome, reason_code)",
        12,
        audit,
        |q, (a, body, scenario)| {
            q.bind(a.chain.as_str())
                .bind(i64::try_from(a.seq).unwrap_or(i64::MAX))
                .bind(a.hash.as_str())
                .bind(a.prev_hash.as_str())
                .bind(a.event_type.as_str())
                .bind(body.as_str())
                .bind(a.occurred_at.to_rfc3339())
                .bind(a.subject.as_str())
                .bind(a.resource.as_str())
                .bind(scenario.as_deref())
                .bind(a.outcome.as_str())
                .bind(a.reasons.first().map(|r| r.code.as_str()))
        },
    )
    .await?;
    Ok(())
}

/// Decision rows, for history queries.
/// Final decisions after review: each replaces its request's pending
/// decision row and stored outcome.
async fn replace_decisions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    decisions: &[DecisionRow],
    outcomes: &[(String, String)],
) -> Result<(), StoreError> {
    for d in decisions {
        sqlx::query(
            "UPDATE decisions SET decision_id = $1, outcome = $2, reason_code = $3, policy_version = $4, \
             decided_at = $5, inputs = $6, effects = $7 WHERE request_id = $8",
        )
        .bind(&d.decision_id)
        .bind(&d.outcome)
        .bind(&d.reason_code)
        .bind(&d.policy_version)
        .bind(&d.decided_at)
        .bind(&d.inputs)
        .bind(&d.effects)
        .bind(&d.request_id)
        .execute(&mut **tx)
        .await?;
    }
    for (key, outputs) in outcomes {
        sqlx::query("UPDATE outcomes SET outputs = $1 WHERE idem_key = $2")
            .bind(outputs)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn insert_decisions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    decisions: &[DecisionRow],
) -> Result<(), StoreError> {
    insert_rows(
        tx,
        sqlite,
        "decisions (request_id, decision_id, subject, dataset, scenario, operation, outcome, \
         reason_code, policy_version, request_digest, decided_at, inputs, effects)",
        13,
        decisions,
        |q, d| {
            q.bind(d.request_id.as_str())
                .bind(d.decision_id.as_str())
                .bind(d.subject.as_str())
                .bind(d.dataset.as_str())
                .bind(d.scenario.as_str())
                .bind(d.operation.as_str())
                .bind(d.outcome.as_str())
                .bind(d.reason_code.as_deref())
                .bind(d.policy_version.as_str())
                .bind(d.request_digest.as_str())
                .bind(d.decided_at.as_str())
                .bind(d.inputs.as_deref())
                .bind(d.effects.as_deref())
        },
    )
    .await?;
    Ok(())
}

/// Usage records with their stored JSON.
async fn insert_usage(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    usage: &[(UsageRecord, String)],
) -> Result<(), StoreError> {
    insert_rows(
        tx,
        sqlite,
        "usage_records (usage_id, request_id, subject, dataset, period, quantity, amount_fen, body, \
         recorded_at)",
        9,
        usage,
        |q, (u, body)| {
            q.bind(u.usage_id.as_str())
                .bind(u.request_id.as_str())
                .bind(u.subject.as_str())
                .bind(u.dataset.as_str())
                .bind(u.period.as_str())
                .bind(i64::try_from(u.quantity).unwrap_or(i64::MAX))
                .bind(u.amount_fen)
                .bind(body.as_str())
                .bind(u.recorded_at.to_rfc3339())
        },
    )
    .await?;
    Ok(())
}

/// The batch's usage added to the running totals, on condition that no
/// other writer moved them since the batch read them: a counter read as
/// absent is inserted (a row another writer inserted meanwhile is a unique
/// violation), one read as `v` is updated only where it still holds `v`.
/// Either way a lost race is a [`StoreError::Conflict`], and the batch is
/// decided again from the counter as it now stands. So a quota holds
/// exactly with any number of instances, without holding a lock.
async fn add_to_counters(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    counter_deltas: &HashMap<(String, String, String), u64>,
    read: &HashMap<(String, String, String), Option<u64>>,
) -> Result<(), StoreError> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (mut new, mut moved) = (Vec::new(), Vec::new());
    for (key, delta) in counter_deltas {
        match read.get(key).copied().flatten() {
            None => new.push((key, *delta)),
            Some(was) => moved.push((key, was, *delta)),
        }
    }
    for chunk in new.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "{} INTO usage_counters (subject, dataset, period, quantity) VALUES {}",
            write_verb(sqlite, "INSERT"),
            placeholders(chunk.len(), 4, sqlite)
        );
        let mut q = sqlx::query(&sql);
        for ((s, d, per), delta) in chunk {
            q = q.bind(s.as_str()).bind(d.as_str()).bind(per.as_str()).bind(n(*delta));
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in moved.chunks(ROWS_PER_STATEMENT) {
        // A CTE names the VALUES columns on both databases (SQLite has no
        // column list on a FROM subquery).
        let sql = format!(
            "WITH v (subject, dataset, period, was, delta) AS (VALUES {}) \
             {} usage_counters SET quantity = v.was + v.delta FROM v \
             WHERE usage_counters.subject = v.subject AND usage_counters.dataset = v.dataset \
             AND usage_counters.period = v.period AND usage_counters.quantity = v.was",
            placeholders(chunk.len(), 5, sqlite),
            write_verb(sqlite, "UPDATE")
        );
        let mut q = sqlx::query(&sql);
        for ((s, d, per), was, delta) in chunk {
            q = q.bind(s.as_str()).bind(d.as_str()).bind(per.as_str()).bind(n(*was)).bind(n(*delta));
        }
        let updated = q.execute(&mut **tx).await?.rows_affected();
        if updated != chunk.len() as u64 {
            return Err(StoreError::Conflict(DbError::CounterMoved(chunk.len() as u64 - updated)));
        }
    }
    Ok(())
}

/// The verb of every multi-row write of a batch. On SQLite `OR FAIL`: a
/// statement that may stop half-way on a constraint otherwise keeps a copy
/// of every page it changes (a statement journal, 23 % of what `serve`
/// wrote) so that it alone can be undone; with `FAIL` its earlier rows stay
/// until the transaction ends. That is safe only because a batch's
/// transaction is never committed after a failed statement: any error ends
/// [`Batch::finish`], and the dropped transaction rolls back. PostgreSQL
/// keeps no such copy and has no `OR FAIL`.
fn write_verb(sqlite: bool, verb: &str) -> String {
    if sqlite { format!("{verb} OR FAIL") } else { verb.to_owned() }
}

/// Inserts `rows` into `into` (`table (columns)`) with as few statements as
/// the parameter limits allow; see [`write_verb`].
///
/// Text is bound as `&str`, never as `String` or `&String`: sqlx's `Any`
/// driver copies a bound `String` into an owned value before the backend
/// copies it again (a copy and an allocation per column of every row; the
/// copy alone was 1.5 % of `serve`'s CPU samples), and borrows a `&str`.
async fn insert_rows<'a, T>(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sqlite: bool,
    into: &str,
    cols: usize,
    rows: &'a [T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), StoreError> {
    let insert = write_verb(sqlite, "INSERT");
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!("{insert} INTO {into} VALUES {}", placeholders(chunk.len(), cols, sqlite));
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = bind(q, row);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn decode_outputs(text: &str) -> Result<Vec<StoredOutput<'static>>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Fatal(format!("stored outputs do not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_stored_with_every_payload_inline_still_decode() {
        // As rows were written before audit events and usage records were
        // stored by reference.
        let legacy = r#"[{"stream":"decisions","key":"s","payload":"{\"d\":1}"},{"stream":"audit","key":"c/0","payload":"{\"a\":1}"}]"#;
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let mut batch = store.begin().await.unwrap();
        let resolved = batch.resolve(vec![("k".into(), decode_outputs(legacy).unwrap())]).await.unwrap();
        assert_eq!(
            resolved[0].1,
            vec![
                Output { stream: Stream::Decisions, key: "s".into(), payload: "{\"d\":1}".into() },
                Output { stream: Stream::Audit, key: "c/0".into(), payload: "{\"a\":1}".into() },
            ]
        );
        // A reference to a row that is not there is a fatal inconsistency,
        // not an empty output.
        let dangling = decode_outputs(r#"[{"stream":"audit","key":"c/0","seq":7}]"#).unwrap();
        let err = batch.resolve(vec![("k".into(), dangling)]).await.unwrap_err();
        assert!(!err.is_retryable() && err.to_string().contains("audit event c/0#7"), "{err}");
    }

    #[tokio::test]
    async fn a_sqlite_connection_is_in_wal_mode_checkpoints_rarely_and_keeps_a_batch_in_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 1).await.unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap();
        let every: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *conn).await.unwrap();
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&mut *conn).await.unwrap();
        assert_eq!((mode.as_str(), every, cache), ("wal", 16_000, -16_384));
    }

    #[tokio::test]
    async fn a_token_id_another_writer_stored_first_is_a_conflict_not_an_outage_and_stores_none_of_the_batch() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let mut first = store.begin().await.unwrap();
        assert_eq!(first.use_token("iss", "jti-1", "req-a", 0).await.unwrap(), TokenUse::Fresh);
        first.finish().await.unwrap();
        // The second batch read before the first committed (on PostgreSQL,
        // another instance's transaction): it believes the id unused.
        let mut second = store.begin().await.unwrap();
        second.tokens.insert(("iss".into(), "jti-1".into()), None);
        // A fresh id first: the same statement stores it before it fails
        // (SQLite's `OR FAIL`), and the rollback must take it away again.
        assert_eq!(second.use_token("iss", "jti-0", "req-c", 0).await.unwrap(), TokenUse::Fresh);
        assert_eq!(second.use_token("iss", "jti-1", "req-b", 0).await.unwrap(), TokenUse::Fresh);
        let err = second.finish().await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT jti FROM token_uses ORDER BY jti").fetch_all(&store.pool).await.unwrap();
        assert_eq!(stored, ["jti-1"]);
        // Deciding again sees the first writer's row.
        let mut again = store.begin().await.unwrap();
        assert_eq!(again.use_token("iss", "jti-1", "req-b", 0).await.unwrap(), TokenUse::UsedBy("req-a".into()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_starting_at_once_on_a_new_sqlite_file_all_migrate_it() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/race.db", dir.path().display());
            let start = |url: String| async move { Store::connect(&url, 1).await };
            let starts: Vec<_> = (0..4).map(|_| tokio::spawn(start(url.clone()))).collect();
            for s in starts {
                s.await.unwrap().expect("every instance starts");
            }
        }
    }

    #[tokio::test]
    async fn a_usage_counter_another_writer_moved_since_it_was_read_is_a_conflict_not_a_lost_update() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let key = ("sub".to_owned(), "ds".to_owned(), "2026-12".to_owned());
        let spend = |read: Option<Option<u64>>, n: u64| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let mut batch = store.begin().await.unwrap();
                match read {
                    // What another instance's batch read before this one committed.
                    Some(stale) => drop(batch.counters_read.insert(key.clone(), stale)),
                    None => drop(batch.usage_in_period(&key.0, &key.1, &key.2).await.unwrap()),
                }
                batch.pending.counter_deltas.insert(key, n);
                batch.finish().await
            }
        };
        spend(None, 5).await.unwrap();
        let absent = spend(Some(None), 3).await.unwrap_err();
        assert!(matches!(absent, StoreError::Conflict(_)), "{absent:?}");
        let moved = spend(Some(Some(2)), 3).await.unwrap_err();
        assert!(matches!(moved, StoreError::Conflict(DbError::CounterMoved(1))), "{moved:?}");
        // Deciding again reads the counter as it stands.
        spend(None, 3).await.unwrap();
        let mut batch = store.begin().await.unwrap();
        assert_eq!(batch.usage_in_period(&key.0, &key.1, &key.2).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn an_event_stored_on_its_own_waits_in_the_outbox_until_published() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let now = chrono::Utc::now();
        let commit = |key: &str| Commit {
            idem_key: key.into(),
            kind: "policy",
            decision: None,
            messages: vec![],
            audit: AuditEvent::draft("policy/i".into(), crate::contract::EventType::PolicyLoaded, now, "t".into()),
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: now.to_rfc3339(),
        };
        store.commit(commit("p1")).await.unwrap();
        store.commit(commit("p2")).await.unwrap();
        let queued = store.outbox().await.unwrap();
        assert_eq!(
            queued.iter().map(|(seq, o)| (*seq, o.key.as_str())).collect::<Vec<_>>(),
            [(1, "policy/i"), (2, "policy/i")]
        );
        let stored = store.audit_events().await.unwrap();
        assert_eq!(queued[0].1.payload, serde_json::to_string(&stored[0]).unwrap(), "the stored bytes");
        store.published("policy/i", 1).await.unwrap();
        assert_eq!(store.outbox().await.unwrap().len(), 1);
    }
}
