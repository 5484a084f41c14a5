//! Before a batch's transaction: each input decoded and its token
//! verified (no database), its origin (idempotency key, audit chain, trace)
//! worked out, and every key the batch will read named for one prefetch.

use chrono::{DateTime, Utc};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::finish::Presigned;
use super::{DecisionService, on_two_threads};
use crate::auth::{AuthError, Principal};
use crate::contract::{AccessRequest, ReviewVerdict, RevokeCommand, UsageReport};
use crate::decide::{self, Rejection};
use crate::domain::ChainId;
use crate::kafka::ConsumedMessage;
use crate::metering::period_of;
use crate::policy::Policy;
use crate::store::Prefetch;

/// Continues the requester's trace when the input carries a W3C
/// `traceparent`, else starts one; returns the trace id and the header for
/// the outputs.
pub(super) fn trace_context(msg: &ConsumedMessage) -> (String, String) {
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

/// What an input is, once read, with whoever its token says sent it.
pub(super) enum Input {
    /// An access request (`tollgate.requests`).
    Access(AccessRequest, Result<Principal, AuthError>),
    /// An operator's revoke command (`tollgate.revocations`).
    Revoke(RevokeCommand, Result<Principal, AuthError>),
    /// A reviewer's verdict (`tollgate.reviews`).
    Verdict(ReviewVerdict, Result<Principal, AuthError>),
    /// A data host's usage report (`tollgate.usage_reports`).
    Report(UsageReport, Result<Principal, AuthError>),
}

/// An input decoded and its token verified: everything about it that needs
/// no database, done before the batch's transaction starts.
pub struct Ready {
    pub(super) now: DateTime<Utc>,
    pub(super) trace_id: String,
    pub(super) traceparent: String,
    pub(super) input: Result<Input, Rejection>,
    /// When it was taken up (wall clock, for its span) and the span of the
    /// batch stage that prepared it (when export is on).
    pub(super) taken_at: std::time::SystemTime,
    pub(super) prepared_in: Option<SpanContext>,
    /// An access request's decision id, drawn here so that its grant can
    /// be signed here too, ahead of the decision (see [`Presigned`]).
    pub(super) decision_id: Option<String>,
    pub(super) presigned: Option<Presigned>,
}

/// An input with what was prepared of it.
pub(super) struct Prepared<'m> {
    pub(super) origin: Origin<'m>,
    pub(super) input: Result<Input, Rejection>,
}

/// Where an input came from, when it was taken up, the key its outcome
/// is stored under (the request id; for an input that is not a request,
/// its position) and the audit chain its event joins (its partition's).
pub(super) struct Origin<'m> {
    pub(super) msg: &'m ConsumedMessage,
    pub(super) idem_key: String,
    pub(super) chain: String,
    pub(super) now: DateTime<Utc>,
    pub(super) trace_id: String,
    pub(super) traceparent: String,
    /// See [`Ready`].
    pub(super) decision_id: Option<String>,
    pub(super) presigned: Option<Presigned>,
}

/// `topic/partition/offset`: the input's place in the log.
pub(super) fn position(msg: &ConsumedMessage) -> String {
    format!("{}/{}/{}", msg.topic, msg.partition, msg.offset)
}

impl<'m> Prepared<'m> {
    pub(super) fn new(msg: &'m ConsumedMessage, ready: Ready) -> Self {
        let Ready { now, trace_id, traceparent, input, decision_id, presigned, .. } = ready;
        let idem_key = match &input {
            Ok(Input::Access(request, _)) => format!("request:{}", request.request_id),
            Ok(Input::Revoke(command, _)) => format!("command:{}", command.command_id),
            Ok(Input::Report(report, _)) => format!("report:{}", report.report_id),
            // A verdict is answered once per message: the same verdict sent
            // again finds the request decided (`review.already_decided`).
            Ok(Input::Verdict(..)) => format!("verdict:{}", position(msg)),
            Err(_) => format!("input:{}", position(msg)),
        };
        let chain = ChainId::Partition { topic: msg.topic.clone(), partition: msg.partition }.to_string();
        let origin = Origin { msg, idem_key, chain, now, trace_id, traceparent, decision_id, presigned };
        Prepared { origin, input }
    }
}

impl DecisionService {
    pub(super) fn ready(&self, msg: &ConsumedMessage) -> Ready {
        let now = self.source.now();
        let (trace_id, traceparent) = trace_context(msg);
        let verify = |token: Option<&str>| match token {
            Some(t) => self.verifier.verify(t),
            None => Err(AuthError::Missing),
        };
        let (payload, authorization, max) = (&msg.payload, msg.header("authorization"), self.max_message_bytes);
        let input = if msg.topic == self.topics.revocations {
            decide::decode_revoke(payload, authorization, max).map(|(c, t)| Input::Revoke(c, verify(t.as_deref())))
        } else if msg.topic == self.topics.usage_reports {
            decide::decode_report(payload, authorization, max).map(|(r, t)| Input::Report(r, verify(t.as_deref())))
        } else if msg.topic == self.topics.reviews {
            decide::decode_verdict(payload, authorization, max).map(|(v, t)| Input::Verdict(v, verify(t.as_deref())))
        } else {
            decide::decode(payload, authorization, max).map(|d| Input::Access(d.request, verify(d.token.as_deref())))
        };
        let decision_id = matches!(input, Ok(Input::Access(..))).then(|| self.source.id().to_string());
        let presigned = match (&input, &decision_id) {
            (Ok(Input::Access(request, Ok(principal))), Some(id)) => self.presign(request, principal, id, now),
            _ => None,
        };
        let taken_at = std::time::SystemTime::now();
        Ready { now, trace_id, traceparent, input, taken_at, prepared_in: None, decision_id, presigned }
    }

    /// Decodes and verifies a batch; a large one on two threads, since
    /// signature checks are most of the CPU a decision costs (a full batch
    /// is milliseconds of it). Runs on a blocking thread (see
    /// [`Processor::prepare`]), usually while the batch before is decided.
    pub(super) fn prepare_all(&self, msgs: &[ConsumedMessage]) -> Vec<Ready> {
        let (start, started) = (std::time::Instant::now(), std::time::SystemTime::now());
        let mut ready = on_two_threads(msgs.iter().collect(), |m| self.ready(m));
        self.health.timings.prepare.observe_since(start);
        if let Some(span) = self.health.tracing.stage("prepare", started, msgs.len()) {
            ready.iter_mut().for_each(|r| r.prepared_in = Some(span.clone()));
        }
        ready
    }

    /// Every key the batch will look up, so the store reads them at once.
    pub(super) fn prefetch(&self, policy: &Policy, prepared: &[Prepared<'_>]) -> Prefetch {
        let mut keys = Prefetch::default();
        for p in prepared {
            keys.outcomes.push(p.origin.idem_key.clone());
            if !keys.chains.contains(&p.origin.chain) {
                keys.chains.push(p.origin.chain.clone());
            }
            if let Ok(Input::Access(request, Ok(principal))) = &p.input {
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
}
