//! The spans of a run of a batch, when OTLP export is on (`ops/otlp.rs`):
//! one per input, a child of the `traceparent` it came with and under the
//! id its outputs carry, linked to the batch's stage spans (prepare,
//! decide, store), with what was decided as attributes.
//!
//! What must stay true: nothing here runs when export is off
//! ([`RunSpans::new`] returns `None`), and nothing here changes an outcome.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;

use super::draft::Step;
use super::prepare::Ready;
use crate::kafka::ConsumedMessage;
use crate::ops::{InputSpan, Tracing};

/// An input's span, gathered while its run is decided and stored.
struct Pending {
    start: SystemTime,
    parent: Option<String>,
    own: String,
    prepared_in: Option<SpanContext>,
    attributes: Vec<KeyValue>,
}

pub(super) struct RunSpans<'t> {
    tracing: &'t Tracing,
    inputs: Vec<Pending>,
    stages: Vec<SpanContext>,
}

impl<'t> RunSpans<'t> {
    pub(super) fn new(tracing: &'t Tracing, msgs: &[ConsumedMessage], ready: &[Ready]) -> Option<Self> {
        if !tracing.enabled() {
            return None;
        }
        let inputs = msgs.iter().zip(ready).map(|(m, r)| Pending {
            start: r.taken_at,
            parent: m.header("traceparent").and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned),
            own: r.traceparent.clone(),
            prepared_in: r.prepared_in.clone(),
            attributes: vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", m.topic.clone()),
                KeyValue::new("messaging.destination.partition.id", m.partition.to_string()),
                KeyValue::new("messaging.kafka.offset", m.offset),
            ],
        });
        Some(RunSpans { tracing, inputs: inputs.collect(), stages: Vec::new() })
    }

    /// A stage of the run that just ended.
    pub(super) fn stage(&mut self, name: &str, start: SystemTime) {
        self.stages.extend(self.tracing.stage(name, start, self.inputs.len()));
    }

    /// What input `i` came to, read off its step before it is stored.
    pub(super) fn facts(&mut self, i: usize, step: &Step<'_>) {
        let Some(input) = self.inputs.get_mut(i) else { return };
        let a = &mut input.attributes;
        match step {
            Step::Commit(commit, ..) => {
                a.push(KeyValue::new("tollgate.kind", commit.kind));
                if let Some(d) = &commit.decision {
                    a.push(KeyValue::new("tollgate.request_id", d.request_id.clone()));
                    a.push(KeyValue::new("tollgate.enterprise", d.subject.clone()));
                    a.push(KeyValue::new("tollgate.dataset", d.dataset.clone()));
                    a.push(KeyValue::new("tollgate.scenario", d.scenario.clone()));
                    a.push(KeyValue::new("tollgate.outcome", d.outcome.clone()));
                    a.extend(d.reason_code.clone().map(|r| KeyValue::new("tollgate.reason_code", r)));
                } else {
                    a.push(KeyValue::new("tollgate.outcome", commit.audit.outcome.clone()));
                    a.extend(
                        commit.audit.reasons.first().map(|r| KeyValue::new("tollgate.reason_code", r.code.clone())),
                    );
                }
            }
            Step::Done(..) | Step::Repeat(..) => a.push(KeyValue::new("tollgate.republished", true)),
            Step::Draft(_) => {}
        }
    }

    /// Every input's span, ending now (its outputs are stored; their
    /// delivery is a child span of its own, `tollgate.deliver`).
    pub(super) fn end(self) {
        let end = SystemTime::now();
        for p in self.inputs {
            let mut stages: Vec<SpanContext> = p.prepared_in.into_iter().collect();
            stages.extend(self.stages.iter().cloned());
            self.tracing.input(InputSpan {
                parent: p.parent.as_deref(),
                own: &p.own,
                start: p.start,
                end,
                attributes: p.attributes,
                stages: &stages,
            });
        }
    }
}
