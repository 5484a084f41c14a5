//! The broker: what happens to an input between the consumer and the
//! producer. A batch goes through its phases in order, one file each:
//! `prepare` (decode, verify the token; no database), `draft` (phase 1, in
//! batch order: token ids, quota, the pure decision), `finish` (phase 2, on
//! two threads: grants signed, records built), `commit` (phase 3, in order:
//! audit events sealed, rows buffered, one transaction), then `outputs`
//! (which topic each output goes to, dead letters). `purge` forgets expired
//! token ids; `reload` swaps policies in; `outbox` publishes audit events
//! that belong to no input.

pub mod ceiling;
pub mod checkpoint;
pub mod grant_keys;
pub mod outbox;
pub mod recheck;
pub mod reload;

mod commit;
mod console;
mod draft;
mod finish;
mod outputs;
mod prepare;
mod purge;
mod report;
mod review;
mod revoke;
mod spans;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::auth::Verifier;
use crate::config::{GrantSettings, Settings, Topics};
use crate::contract::Outcome;
use crate::kafka::{ConsumedMessage, OutgoingMessage, ProcessError, Processor};
use crate::ops::Health;
use crate::policy::Policy;
use crate::store::{Store, StoreError};

use grant_keys::GrantKeys;
use prepare::Prepared;
pub use prepare::Ready;

/// Where decisions get their time and ids: the system clock and UUIDv7 in
/// service; fixed ones in the test that holds every published message to
/// the bytes it had (`tests/golden/`).
pub trait Source: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn id(&self) -> uuid::Uuid;
}

/// The system clock and time-ordered UUIDs.
pub struct SystemSource;

impl Source for SystemSource {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn id(&self) -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }
}

pub struct DecisionService {
    /// Time and ids of decisions (see [`Source`]).
    source: Box<dyn Source>,
    /// The policy in force; swapped whole by the reloader, read once per
    /// input so one decision never mixes two versions.
    policy: Arc<ArcSwap<Policy>>,
    verifier: Verifier,
    store: Store,
    grant_keys: Arc<GrantKeys>,
    grant: GrantSettings,
    topics: Topics,
    max_message_bytes: usize,
    /// See `service.dead_letter_max_bytes`.
    dead_letter_max_bytes: usize,
    health: Arc<Health>,
    /// See `auth.single_use_jti`.
    single_use_jti: bool,
    token_leeway_secs: i64,
    /// See `review.timeout_secs`.
    review_timeout_secs: i64,
    /// Epoch second of the last purge of expired token uses.
    last_purge: std::sync::atomic::AtomicI64,
    /// Who acted in an automated decision's audit event:
    /// `tollgate/<service.instance_id>` (the requester is its subject).
    actor: String,
}

impl DecisionService {
    /// The decision service of `settings`, deciding with the policy in
    /// `policy` (swapped by the reloader) on the system clock.
    pub fn new(
        settings: &Settings,
        policy: Arc<ArcSwap<Policy>>,
        verifier: Verifier,
        store: Store,
        grant_keys: Arc<GrantKeys>,
        health: Arc<Health>,
    ) -> Self {
        DecisionService {
            source: Box::new(SystemSource),
            policy,
            verifier,
            store,
            grant_keys,
            grant: settings.grant.clone(),
            topics: settings.topics.clone(),
            max_message_bytes: settings.service.max_message_bytes,
            dead_letter_max_bytes: settings.service.dead_letter_max_bytes,
            health,
            single_use_jti: settings.auth.single_use_jti,
            token_leeway_secs: i64::try_from(settings.auth.leeway_secs).unwrap_or(i64::MAX),
            review_timeout_secs: i64::try_from(settings.review.timeout_secs).unwrap_or(i64::MAX),
            last_purge: Default::default(),
            actor: format!("tollgate/{}", settings.service.instance_id),
        }
    }

    /// Time and ids from `source` instead of the system clock (tests that
    /// hold outputs byte for byte).
    pub fn with_source(self, source: Box<dyn Source>) -> Self {
        DecisionService { source, ..self }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The version of the policy in force.
    pub fn policy_version(&self) -> String {
        self.policy.load().version().to_owned()
    }

    /// The policy in force, as it is swapped on reload.
    pub fn policy_handle(&self) -> Arc<ArcSwap<Policy>> {
        self.policy.clone()
    }

    /// The keys grants are signed with.
    pub fn grant_keys(&self) -> &Arc<GrantKeys> {
        &self.grant_keys
    }
}

impl From<StoreError> for ProcessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ProcessError::Conflict(e.to_string()),
            StoreError::Unavailable(_) => ProcessError::Retryable(e.to_string()),
            StoreError::Fatal(_) => ProcessError::Fatal(e.to_string()),
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What became of one input, counted once its batch is committed.
#[derive(Debug, Clone, Copy)]
enum Tally {
    Decided(Outcome),
    /// Denied because its token was used by another request.
    Replayed,
    DeadLetter,
    Republished,
    /// An operator's command answered.
    Command,
}

/// `f` over `items`, in order; from [`PARALLEL_FROM`] items on, half of them
/// on a second thread.
fn on_two_threads<T: Send, R: Send>(mut items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if items.len() < PARALLEL_FROM {
        return items.into_iter().map(f).collect();
    }
    let back = items.split_off(items.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| back.into_iter().map(&f).collect::<Vec<R>>());
        let mut out: Vec<R> = items.into_iter().map(&f).collect();
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

/// Below this many inputs a second thread costs more than it saves.
const PARALLEL_FROM: usize = 16;

impl DecisionService {
    fn count(&self, tally: Tally) {
        let c = &self.health.counters;
        if let Tally::Replayed = tally {
            Health::count(&c.replays_refused);
        }
        Health::count(match tally {
            Tally::Decided(Outcome::Denied) | Tally::Replayed => &c.denied,
            Tally::Decided(Outcome::Approved) => &c.approved,
            Tally::Decided(Outcome::PendingReview) => &c.pending_review,
            Tally::DeadLetter => &c.dead_letters,
            Tally::Republished => &c.republished,
            Tally::Command => &c.commands,
        });
    }
}

impl Processor for DecisionService {
    type Prepared = Vec<Ready>;

    fn prepare(&self, msgs: &[ConsumedMessage]) -> Vec<Ready> {
        self.prepare_all(msgs)
    }

    fn refused(
        &self,
        input: &ConsumedMessage,
        output: &OutgoingMessage,
        error: &str,
        minimal: bool,
    ) -> OutgoingMessage {
        self.refused_letter(input, output, error, minimal)
    }

    /// One policy version and one database transaction per run of the
    /// batch (see [`runs`]); decoding and signature checks were done before
    /// (see `prepare`).
    async fn process_batch(
        &self,
        msgs: &[ConsumedMessage],
        ready: Vec<Ready>,
    ) -> Result<Vec<Vec<OutgoingMessage>>, ProcessError> {
        if ready.len() != msgs.len() {
            return Err(ProcessError::Fatal(format!("{} prepared for a batch of {}", ready.len(), msgs.len())));
        }
        let mut out = Vec::with_capacity(msgs.len());
        let mut ready = ready.into_iter();
        for run in runs(msgs, |m| self.topics.is_command(&m.topic)) {
            out.extend(self.process_run(run, ready.by_ref().take(run.len()).collect()).await?);
        }
        Ok(out)
    }
}

/// The batch cut before each command, so a command sees every grant the
/// inputs before it issued (those are stored when their run commits). A
/// failure in a later run leaves the earlier ones stored; the retried batch
/// finds their outcomes and publishes them again.
fn runs(msgs: &[ConsumedMessage], is_command: impl Fn(&ConsumedMessage) -> bool) -> Vec<&[ConsumedMessage]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, m) in msgs.iter().enumerate() {
        if i > start && is_command(m) {
            out.push(&msgs[start..i]);
            start = i;
        }
    }
    if start < msgs.len() {
        out.push(&msgs[start..]);
    }
    out
}

impl DecisionService {
    async fn process_run(
        &self,
        msgs: &[ConsumedMessage],
        ready: Vec<Ready>,
    ) -> Result<Vec<Vec<OutgoingMessage>>, ProcessError> {
        let (start, started) = (std::time::Instant::now(), std::time::SystemTime::now());
        let mut spans = spans::RunSpans::new(&self.health.tracing, msgs, &ready);
        // Before the batch's transaction (SQLite has one connection): every
        // input was read before this `now`, so its grant expires by now + ttl.
        self.grant_keys.cover(self.source.now().timestamp()).await?;
        let prepared: Vec<Prepared<'_>> = msgs.iter().zip(ready).map(|(m, r)| Prepared::new(m, r)).collect();
        let policy = self.policy.load_full();
        let keys = self.prefetch(&policy, &prepared);
        let mut batch = self.store.begin().await?;
        batch.prefetch(&keys).await?;
        let (mut reserved, mut drafted) = (HashMap::new(), HashSet::new());
        let mut steps = Vec::with_capacity(msgs.len());
        for p in prepared {
            steps.push(self.step(&mut batch, &policy, &mut reserved, &mut drafted, p).await?);
        }
        let steps = self.finish_drafts(&policy, steps);
        let timings = &self.health.timings;
        timings.decide.observe_since(start);
        if let Some(s) = spans.as_mut() {
            s.stage("decide", started);
        }
        let (start, started) = (std::time::Instant::now(), std::time::SystemTime::now());
        let mut out = Vec::with_capacity(msgs.len());
        let mut tallies = Vec::with_capacity(msgs.len());
        for (i, step) in steps.into_iter().enumerate() {
            if let Some(s) = spans.as_mut() {
                s.facts(i, &step);
            }
            let (messages, tally) = self.commit_step(&mut batch, step).await?;
            out.push(messages);
            tallies.push(tally);
        }
        batch.finish().await?;
        timings.store.observe_since(start);
        if let Some(mut spans) = spans {
            spans.stage("store", started);
            spans.end();
        }
        tallies.into_iter().for_each(|t| self.count(t));
        self.purge_expired_token_uses().await;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(topic: &str, offset: i64) -> ConsumedMessage {
        ConsumedMessage { topic: topic.into(), partition: 0, offset, key: None, payload: vec![], headers: vec![] }
    }

    #[test]
    fn a_batch_is_cut_before_each_command_so_it_sees_the_grants_before_it() {
        let msgs =
            ["r", "r", "c", "r", "c", "c"].iter().enumerate().map(|(i, t)| input(t, i as i64)).collect::<Vec<_>>();
        let cuts: Vec<Vec<i64>> =
            runs(&msgs, |m| m.topic == "c").iter().map(|run| run.iter().map(|m| m.offset).collect()).collect();
        assert_eq!(cuts, [vec![0, 1], vec![2, 3], vec![4], vec![5]]);
        assert!(runs(&[], |_| true).is_empty());
    }
}
