//! The processor: one input message in, its outputs (decision, audit event,
//! usage record, or a dead letter) out, stored before they are published.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::audit;
use crate::auth::{AuthError, Principal, SigningKey, Verifier};
use crate::config::{GrantSettings, Topics};
use crate::events::{
    AccessRequest, AuditEvent, DEAD_LETTER_SCHEMA, DECISION_SCHEMA, DeadLetter, DeadLetterError, Decision, Grant,
    Outcome, RefusedOutput, USAGE_SCHEMA, UsageRecord,
};
use crate::health::Health;
use crate::kafka::{InputMessage, OutgoingMessage, ProcessError, Processor};
use crate::metering::period_of;
use crate::pipeline::{self, DecisionInput, Evaluation, Rejection};
use crate::policy::Policy;
use crate::store::{Batch, Commit, Committed, DecisionRow, Output, Prefetch, Store, StoreError, Stream, TokenUse};

/// Claims of a grant: what the data host checks before serving data.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GrantClaims {
    pub iss: String,
    pub sub: String,
    /// The dataset holder that serves the data.
    pub aud: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub request_id: String,
    pub dataset: String,
    pub scenario: String,
    pub operation: String,
    pub obligations: Vec<String>,
    pub policy_version: String,
}

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
    pub source: Box<dyn Source>,
    /// The policy in force; swapped whole by the reloader, read once per
    /// input so one decision never mixes two versions.
    pub policy: Arc<ArcSwap<Policy>>,
    pub verifier: Verifier,
    pub store: Store,
    pub grant_key: SigningKey,
    pub grant: GrantSettings,
    pub topics: Topics,
    pub max_message_bytes: usize,
    /// See `service.dead_letter_max_bytes`.
    pub dead_letter_max_bytes: usize,
    pub health: Arc<Health>,
    /// See `auth.single_use_jti`.
    pub single_use_jti: bool,
    pub token_leeway_secs: i64,
    /// Epoch second of the last purge of expired token uses.
    pub last_purge: std::sync::atomic::AtomicI64,
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

/// Continues the requester's trace when the input carries a W3C
/// `traceparent`, else starts one; returns the trace id and the header for
/// the outputs.
fn trace_context(msg: &InputMessage) -> (String, String) {
    let propagator = TraceContextPropagator::new();
    let mut carrier = std::collections::HashMap::new();
    if let Some(tp) = msg.header("traceparent").and_then(|v| std::str::from_utf8(v).ok()) {
        carrier.insert("traceparent".to_owned(), tp.to_owned());
    }
    let parent = propagator.extract(&carrier);
    let parent_span = parent.span().span_context().clone();
    let trace_id = if parent_span.is_valid() { parent_span.trace_id() } else { TraceId::from_bytes(rand::random()) };
    let span = SpanContext::new(
        trace_id,
        SpanId::from_bytes(rand::random()),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let mut out = std::collections::HashMap::new();
    propagator.inject_context(&opentelemetry::Context::new().with_remote_span_context(span), &mut out);
    (trace_id.to_string(), out.remove("traceparent").unwrap_or_default())
}

impl DecisionService {
    fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Decisions => &self.topics.decisions,
            Stream::Audit => &self.topics.audit,
            Stream::Usage => &self.topics.usage,
            Stream::DeadLetters => &self.topics.dlq,
        }
    }

    fn to_messages(&self, outputs: Vec<Output>, traceparent: &str) -> Vec<OutgoingMessage> {
        outputs
            .into_iter()
            .map(|o| OutgoingMessage {
                topic: self.topic(o.stream).to_owned(),
                key: o.key,
                payload: o.payload,
                headers: vec![("traceparent".into(), traceparent.to_owned())],
            })
            .collect()
    }

    fn dead_letter(&self, policy: &Policy, origin: &Origin<'_>, rejection: Rejection) -> Commit {
        let (msg, now, trace_id) = (origin.msg, origin.now, origin.trace_id.as_str());
        let error = DeadLetterError { code: rejection.code.into(), message: rejection.message.clone() };
        let letter = dead_letter_for(msg, error, self.dead_letter_max_bytes, None, now);
        let key = position(msg);
        Commit {
            idem_key: origin.idem_key.clone(),
            kind: "dead_letter",
            decision: None,
            messages: vec![Output {
                stream: Stream::DeadLetters,
                key: key.clone(),
                payload: serde_json::to_string(&letter).expect("dead letters serialise"),
            }],
            audit: AuditEvent {
                event_type: "input_rejected".into(),
                actor: "unauthenticated".into(),
                subject: String::new(),
                resource: key,
                action: "decode".into(),
                outcome: "rejected".into(),
                reasons: vec![crate::events::Reason::new(rejection.code, rejection.message)],
                policy_version: policy.version().to_owned(),
                request_digest: letter.payload_sha256.clone(),
                ..AuditEvent::draft(origin.chain.clone(), now, trace_id.to_owned())
            },
            usage: None,
            created_at: rfc3339(now),
        }
    }

    /// The order-dependent part of a decision (phase 1): claims the token
    /// id, reads the quota counter (with what earlier inputs of the batch
    /// reserved) and evaluates.
    async fn draft<'m>(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        reserved: &mut HashMap<(String, String, String), u64>,
        origin: Origin<'m>,
        request: AccessRequest,
        identity: Result<Principal, AuthError>,
    ) -> Result<Draft<'m>, StoreError> {
        // A token id authorizes one request; the same request again (a
        // client retry) was answered from its stored outcome before this.
        let identity = match identity {
            Ok(p) if self.single_use_jti && p.token_id.is_some() => {
                let jti = p.token_id.as_deref().unwrap_or_default();
                match batch.use_token(&p.issuer, jti, &request.request_id, p.expires_at).await? {
                    TokenUse::Fresh => Ok(p),
                    TokenUse::UsedBy(other) => {
                        warn!(message = "replayed token refused", request_id = %request.request_id, first_request = %other,
                              subject = %p.subject, token_digest = %audit::digest(jti.as_bytes()));
                        Err(AuthError::Replayed(other))
                    }
                }
            }
            other => other,
        };
        let replayed = matches!(identity, Err(AuthError::Replayed(_)));
        let period = period_of(origin.now);
        let counter = match &identity {
            Ok(p) if policy.catalogue().datasets.contains_key(&request.dataset) => {
                let key = (p.subject.clone(), request.dataset.clone(), period.clone());
                let stored = batch.usage_in_period(&key.0, &key.1, &key.2).await?;
                Some((stored + reserved.get(&key).copied().unwrap_or(0), key))
            }
            _ => None,
        };
        let eval = pipeline::evaluate(&DecisionInput {
            request: &request,
            identity: identity.as_ref(),
            policy,
            used: counter.as_ref().map_or(0, |(used, _)| *used),
            now: origin.now,
            grant_ttl_secs: self.grant.ttl_secs,
        });
        if let (Some(charge), Some((_, key))) = (&eval.charge, counter) {
            *reserved.entry(key).or_default() += charge.quantity;
        }
        let subject = identity.as_ref().map(|p| p.subject.clone()).unwrap_or_default();
        Ok(Draft { origin, request, subject, eval, period, replayed })
    }

    /// The rest of a decision (phase 2), the same whatever else the batch
    /// holds, so drafts are finished on two threads: signs the grant and
    /// builds the decision, usage record and audit event.
    fn finish_draft(&self, policy: &Policy, d: Draft<'_>) -> (Commit, Tally) {
        let Draft { origin, request, subject, eval, period, replayed } = d;
        let (msg, now, trace_id) = (origin.msg, origin.now, origin.trace_id.as_str());
        let request = &request;
        let decision_id = self.source.id().to_string();
        let grant = self.grant_for(policy, &eval, request, &subject, &decision_id, now);
        let decision = Decision {
            schema: DECISION_SCHEMA.into(),
            decision_id: decision_id.clone(),
            request_id: request.request_id.clone(),
            subject: subject.clone(),
            dataset: request.dataset.clone(),
            operation: request.operation,
            scenario: request.scenario.clone(),
            outcome: eval.outcome,
            reasons: eval.reasons.clone(),
            matched_rules: eval.matched_rules.clone(),
            obligations: eval.obligations.clone(),
            grant,
            policy_version: policy.version().to_owned(),
            decided_at: now,
            trace_id: trace_id.to_owned(),
        };
        let request_digest = audit::digest(&msg.payload);
        let reason_code = eval.reasons.first().map(|r| r.code.clone());
        let usage = eval.charge.as_ref().map(|c| UsageRecord {
            schema: USAGE_SCHEMA.into(),
            usage_id: self.source.id().to_string(),
            request_id: request.request_id.clone(),
            decision_id: decision_id.clone(),
            subject: subject.clone(),
            dataset: request.dataset.clone(),
            scenario: request.scenario.clone(),
            operation: request.operation,
            purpose_class: request.purpose.class,
            unit: c.unit,
            quantity: c.quantity,
            price_item: c.price_item.clone(),
            unit_price_fen: c.unit_price_fen,
            amount_fen: c.amount_fen,
            fee_waived: c.fee_waived,
            waiver_reason: c.waiver_reason.clone(),
            period: period.clone(),
            quota: c.quota,
            recorded_at: now,
        });
        let event_type = if reason_code.as_deref() == Some("quota.exceeded") { "quota_exceeded" } else { "decision" };
        let commit = Commit {
            idem_key: origin.idem_key.clone(),
            kind: "decision",
            decision: Some(DecisionRow {
                request_id: request.request_id.clone(),
                decision_id,
                subject: subject.clone(),
                dataset: request.dataset.clone(),
                scenario: request.scenario.clone(),
                operation: request.operation.as_str().into(),
                outcome: eval.outcome.as_str().into(),
                reason_code,
                policy_version: policy.version().to_owned(),
                request_digest: request_digest.clone(),
                decided_at: rfc3339(now),
            }),
            messages: vec![Output {
                stream: Stream::Decisions,
                key: if subject.is_empty() { "unauthenticated".into() } else { subject.clone() },
                payload: serde_json::to_string(&decision).expect("decisions serialise"),
            }],
            audit: AuditEvent {
                event_type: event_type.into(),
                actor: if subject.is_empty() { "unauthenticated".into() } else { subject.clone() },
                subject,
                resource: request.dataset.clone(),
                action: request.operation.as_str().into(),
                outcome: eval.outcome.as_str().into(),
                reasons: eval.reasons.clone(),
                policy_version: policy.version().to_owned(),
                request_digest,
                ..AuditEvent::draft(origin.chain.clone(), now, trace_id.to_owned())
            },
            usage,
            created_at: rfc3339(now),
        };
        // Only drafted when this transaction found no outcome for the request.
        (commit, if replayed { Tally::Replayed } else { Tally::Decided(eval.outcome) })
    }

    fn grant_for(
        &self,
        policy: &Policy,
        eval: &Evaluation,
        r: &AccessRequest,
        subject: &str,
        decision_id: &str,
        now: DateTime<Utc>,
    ) -> Option<Grant> {
        if eval.outcome != Outcome::Approved {
            return None;
        }
        let expires_at = eval.grant_expires_at?;
        let holder = policy.catalogue().datasets.get(&r.dataset).map(|d| d.holder.clone()).unwrap_or_default();
        let nbf = r.window.as_ref().map_or(now, |w| w.not_before.max(now));
        let claims = GrantClaims {
            iss: self.grant.issuer.clone(),
            sub: subject.to_owned(),
            aud: holder,
            jti: decision_id.to_owned(),
            iat: now.timestamp(),
            nbf: nbf.timestamp(),
            exp: expires_at.timestamp(),
            request_id: r.request_id.clone(),
            dataset: r.dataset.clone(),
            scenario: r.scenario.clone(),
            operation: r.operation.as_str().into(),
            obligations: eval.obligations.clone(),
            policy_version: policy.version().to_owned(),
        };
        Some(Grant { token: self.grant_key.sign(&claims), expires_at, quota: eval.charge.as_ref().map(|c| c.quota) })
    }
}

/// What became of one input, counted once its batch is committed.
#[derive(Debug, Clone, Copy)]
enum Tally {
    Decided(Outcome),
    /// Denied because its token was used by another request.
    Replayed,
    DeadLetter,
    Republished,
}

/// An input decoded and its token verified: everything about it that needs
/// no database, done before the batch's transaction starts.
pub struct Ready {
    now: DateTime<Utc>,
    trace_id: String,
    traceparent: String,
    input: Result<(AccessRequest, Result<Principal, AuthError>), Rejection>,
}

/// A decision drafted in phase 1 (see `process_batch`).
struct Draft<'m> {
    origin: Origin<'m>,
    request: AccessRequest,
    subject: String,
    eval: Evaluation,
    period: String,
    replayed: bool,
}

/// What becomes of one input of a batch, phase by phase.
enum Step<'m> {
    /// Phase 1 made a decision's order-dependent part; phase 2 finishes it.
    Draft(Box<Draft<'m>>),
    /// To be stored in phase 3 (a finished draft or a dead letter), with
    /// its `traceparent`.
    Commit(Box<Commit>, Tally, String),
    /// Decided before this batch: published again.
    Done(Committed, String),
    /// The same request as an earlier input of this batch (by its key).
    Repeat(String, String),
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

/// An input with what was prepared of it.
struct Prepared<'m> {
    origin: Origin<'m>,
    input: Result<(AccessRequest, Result<Principal, AuthError>), Rejection>,
}

/// Where an input came from, when it was taken up, the key its outcome
/// is stored under (the request id; for an input that is not a request,
/// its position) and the audit chain its event joins (its partition's).
struct Origin<'m> {
    msg: &'m InputMessage,
    idem_key: String,
    chain: String,
    now: DateTime<Utc>,
    trace_id: String,
    traceparent: String,
}

/// What is left of a dead letter's size budget as parts of the input are
/// put in, and whether anything had to be cut.
struct Budget {
    left: usize,
    truncated: bool,
}

impl Budget {
    fn take<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let n = bytes.len().min(self.left);
        self.left -= n;
        self.truncated |= n < bytes.len();
        &bytes[..n]
    }
}

/// A dead letter for `msg`, carrying as much of the input as `budget` bytes
/// allow: the payload first (what an operator needs most), then the key,
/// then headers in order. Its size is bounded whatever the input's, so the
/// broker never refuses it for its size.
fn dead_letter_for(
    msg: &InputMessage,
    error: DeadLetterError,
    budget: usize,
    refused_output: Option<RefusedOutput>,
    now: DateTime<Utc>,
) -> DeadLetter {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut budget = Budget { left: budget, truncated: false };
    let payload_base64 = b64.encode(budget.take(&msg.payload));
    let key_base64 = msg.key.as_ref().map(|k| b64.encode(budget.take(k)));
    let mut headers = Vec::with_capacity(msg.headers.len());
    for (name, value) in &msg.headers {
        if name.len() > budget.left {
            budget.truncated = true;
            break;
        }
        budget.left -= name.len();
        headers.push((name.clone(), b64.encode(budget.take(value))));
    }
    DeadLetter {
        schema: DEAD_LETTER_SCHEMA.into(),
        payload_base64,
        payload_bytes: msg.payload.len() as u64,
        payload_sha256: audit::digest(&msg.payload),
        key_base64,
        headers,
        truncated: budget.truncated,
        error,
        source_topic: msg.topic.clone(),
        partition: msg.partition,
        offset: msg.offset,
        refused_output,
        rejected_at: now,
    }
}

/// `topic/partition/offset`: the input's place in the log.
fn position(msg: &InputMessage) -> String {
    format!("{}/{}/{}", msg.topic, msg.partition, msg.offset)
}

impl<'m> Prepared<'m> {
    fn new(msg: &'m InputMessage, ready: Ready) -> Self {
        let Ready { now, trace_id, traceparent, input } = ready;
        let idem_key = match &input {
            Ok((request, _)) => format!("request:{}", request.request_id),
            Err(_) => format!("input:{}", position(msg)),
        };
        let chain = format!("{}/{}", msg.topic, msg.partition);
        Prepared { origin: Origin { msg, idem_key, chain, now, trace_id, traceparent }, input }
    }
}

impl DecisionService {
    fn ready(&self, msg: &InputMessage) -> Ready {
        let now = self.source.now();
        let (trace_id, traceparent) = trace_context(msg);
        let input = pipeline::decode(&msg.payload, msg.header("authorization"), self.max_message_bytes).map(|d| {
            let identity = match d.token.as_deref() {
                Some(t) => self.verifier.verify(t),
                None => Err(AuthError::Missing),
            };
            (d.request, identity)
        });
        Ready { now, trace_id, traceparent, input }
    }

    /// Decodes and verifies a batch; a large one on two threads, since
    /// signature checks are most of the CPU a decision costs (a full batch
    /// is milliseconds of it). Runs on a blocking thread (see
    /// [`Processor::prepare`]), usually while the batch before is decided.
    fn prepare_all(&self, msgs: &[InputMessage]) -> Vec<Ready> {
        let start = std::time::Instant::now();
        let ready = on_two_threads(msgs.iter().collect(), |m| self.ready(m));
        self.health.timings.prepare.observe_since(start);
        ready
    }

    /// Every key the batch will look up, so the store reads them at once.
    fn prefetch(&self, policy: &Policy, prepared: &[Prepared<'_>]) -> Prefetch {
        let mut keys = Prefetch::default();
        for p in prepared {
            keys.outcomes.push(p.origin.idem_key.clone());
            if !keys.chains.contains(&p.origin.chain) {
                keys.chains.push(p.origin.chain.clone());
            }
            if let Ok((request, Ok(principal))) = &p.input {
                if self.single_use_jti
                    && let Some(jti) = &principal.token_id
                {
                    keys.tokens.push((principal.issuer.clone(), jti.clone()));
                }
                if policy.catalogue().datasets.contains_key(&request.dataset) {
                    keys.counters.push((principal.subject.clone(), request.dataset.clone(), period_of(p.origin.now)));
                }
            }
        }
        keys
    }

    /// Phase 1 for one input: in batch order, since it reads and claims
    /// what earlier inputs of the batch may have claimed.
    async fn step<'m>(
        &self,
        batch: &mut Batch,
        policy: &Policy,
        reserved: &mut HashMap<(String, String, String), u64>,
        drafted: &mut HashSet<String>,
        p: Prepared<'m>,
    ) -> Result<Step<'m>, StoreError> {
        let Prepared { origin, input } = p;
        let msg = origin.msg;
        match input {
            Err(rejection) => {
                info!(message = "input rejected", code = rejection.code, topic = %msg.topic, partition = msg.partition, offset = msg.offset);
                let commit = self.dead_letter(policy, &origin, rejection);
                Ok(Step::Commit(Box::new(commit), Tally::DeadLetter, origin.traceparent))
            }
            Ok((request, identity)) => {
                let key = &origin.idem_key;
                if let Some(outputs) = batch.find_outcome(key).await? {
                    debug!(message = "re-publishing stored outcome", idem_key = %key, position = %position(msg));
                    return Ok(Step::Done(Committed::Existing(outputs), origin.traceparent));
                }
                // Decided earlier in this batch: its outcome is stored by
                // the time this input's turn comes in phase 3.
                if !drafted.insert(key.clone()) {
                    debug!(message = "repeated within the batch; publishing the first's outcome", idem_key = %key, position = %position(msg));
                    return Ok(Step::Repeat(origin.idem_key, origin.traceparent));
                }
                Ok(Step::Draft(Box::new(self.draft(batch, policy, reserved, origin, request, identity).await?)))
            }
        }
    }

    /// Phase 3 for one input, in batch order: seals the audit event into
    /// its chain and buffers the rows.
    async fn commit_step(
        &self,
        batch: &mut Batch,
        step: Step<'_>,
    ) -> Result<(Vec<OutgoingMessage>, Tally), StoreError> {
        let (committed, tally, traceparent) = match step {
            Step::Commit(commit, tally, traceparent) => (batch.add(*commit).await?, tally, traceparent),
            Step::Done(committed, traceparent) => (committed, Tally::Republished, traceparent),
            Step::Repeat(key, traceparent) => {
                let outputs = batch.find_outcome(&key).await?.ok_or_else(|| {
                    StoreError::Fatal(format!("{key} was decided earlier in the batch but has no outcome"))
                })?;
                (Committed::Existing(outputs), Tally::Republished, traceparent)
            }
            Step::Draft(_) => return Err(StoreError::Fatal("a draft reached phase 3 unfinished".into())),
        };
        // A commit can find its input already stored: a dead letter for an
        // offset read again (dead letters skip the lookup of phase 1), or a
        // request another instance stored between this batch's read and its
        // write. Either way the stored outcome is what gets published.
        let tally = match (&committed, tally) {
            (Committed::New(_), tally) => tally,
            (Committed::Existing(_), Tally::Republished) => Tally::Republished,
            (Committed::Existing(_), _) => {
                debug!(message = "input already stored; re-publishing its stored outcome");
                Tally::Republished
            }
        };
        Ok((self.to_messages(committed.into_outputs(), &traceparent), tally))
    }

    /// Phase 2: finishes every draft, on two threads for a large batch
    /// (signing a grant is the largest cost of a decision after the token
    /// check).
    fn finish_drafts<'m>(&self, policy: &Policy, steps: Vec<Step<'m>>) -> Vec<Step<'m>> {
        let finish = |step: Step<'m>| match step {
            Step::Draft(d) => {
                let traceparent = d.origin.traceparent.clone();
                let (commit, tally) = self.finish_draft(policy, *d);
                Step::Commit(Box::new(commit), tally, traceparent)
            }
            other => other,
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            // The worker hands its other tasks over first, so acknowledgements
            // and the HTTP endpoint are not held up meanwhile.
            tokio::task::block_in_place(|| on_two_threads(steps, finish))
        } else {
            on_two_threads(steps, finish)
        }
    }

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
        });
    }
}

impl Processor for DecisionService {
    type Prepared = Vec<Ready>;

    fn prepare(&self, msgs: &[InputMessage]) -> Vec<Ready> {
        self.prepare_all(msgs)
    }

    fn refused(&self, input: &InputMessage, output: &OutgoingMessage, error: &str, minimal: bool) -> OutgoingMessage {
        let refused = RefusedOutput {
            topic: output.topic.clone(),
            key: output.key.chars().take(256).collect(),
            bytes: output.payload.len() as u64,
            sha256: audit::digest(output.payload.as_bytes()),
        };
        let error = DeadLetterError {
            code: "output.refused".into(),
            message: format!("the broker refused this input's {} output for good: {error}", output.topic),
        };
        let budget = if minimal { 0 } else { self.dead_letter_max_bytes };
        let letter = dead_letter_for(input, error, budget, Some(refused), self.source.now());
        OutgoingMessage {
            topic: self.topics.dlq.clone(),
            key: position(input),
            payload: serde_json::to_string(&letter).expect("dead letters serialise"),
            headers: output.headers.clone(),
        }
    }

    /// One policy version and one database transaction for the whole batch;
    /// decoding and signature checks were done before (see `prepare`).
    async fn process_batch(
        &self,
        msgs: &[InputMessage],
        ready: Vec<Ready>,
    ) -> Result<Vec<Vec<OutgoingMessage>>, ProcessError> {
        if ready.len() != msgs.len() {
            return Err(ProcessError::Fatal(format!("{} prepared for a batch of {}", ready.len(), msgs.len())));
        }
        let start = std::time::Instant::now();
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
        let start = std::time::Instant::now();
        let mut out = Vec::with_capacity(msgs.len());
        let mut tallies = Vec::with_capacity(msgs.len());
        for step in steps {
            let (messages, tally) = self.commit_step(&mut batch, step).await?;
            out.push(messages);
            tallies.push(tally);
        }
        batch.finish().await?;
        timings.store.observe_since(start);
        tallies.into_iter().for_each(|t| self.count(t));
        self.purge_expired_token_uses().await;
        Ok(out)
    }
}

/// How often expired token uses are deleted.
const PURGE_EVERY_SECS: i64 = 600;

impl DecisionService {
    /// Every [`PURGE_EVERY_SECS`], on whichever batch comes first: a row can
    /// go once its token is refused as expired anyway (exp + leeway).
    async fn purge_expired_token_uses(&self) {
        use std::sync::atomic::Ordering;
        let now = Utc::now().timestamp();
        let last = self.last_purge.load(Ordering::Relaxed);
        if now - last < PURGE_EVERY_SECS
            || self.last_purge.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        match self.store.purge_token_uses(now, self.token_leeway_secs + 60).await {
            Ok(0) => {}
            Ok(n) => debug!(message = "purged expired token uses", rows = n),
            Err(error) => warn!(message = "purging expired token uses failed; will try again", %error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &[u8], key: &[u8], headers: &[(&str, &[u8])]) -> InputMessage {
        InputMessage {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            key: Some(key.to_vec()),
            payload: payload.to_vec(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect(),
        }
    }

    fn error() -> DeadLetterError {
        DeadLetterError { code: "input.too_large".into(), message: "m".into() }
    }

    #[test]
    fn a_dead_letter_carries_payload_key_and_headers_within_its_budget_and_says_what_was_cut() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let msg = input(&[b'p'; 100], b"kkkk", &[("authorization", &[b'h'; 50]), ("traceparent", b"tp")]);
        let whole = dead_letter_for(&msg, error(), 1_000, None, Utc::now());
        assert!(!whole.truncated);
        assert_eq!((whole.payload_bytes, whole.headers.len()), (100, 2));

        // 100 payload + 4 key + 13 name + 3 of the first header's value.
        let cut = dead_letter_for(&msg, error(), 120, None, Utc::now());
        assert!(cut.truncated);
        assert_eq!(cut.payload_base64, b64(&[b'p'; 100]));
        assert_eq!(cut.key_base64.as_deref(), Some(b64(b"kkkk").as_str()));
        assert_eq!(cut.headers, vec![("authorization".to_owned(), b64(b"hhh"))]);
        assert_eq!(cut.payload_sha256, audit::digest(&msg.payload), "describes the whole original");

        let bare = dead_letter_for(&msg, error(), 0, None, Utc::now());
        assert!(bare.truncated && bare.payload_base64.is_empty() && bare.headers.is_empty());
        assert_eq!(bare.payload_bytes, 100);
    }
}
