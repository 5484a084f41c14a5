//! Where outputs go: the topic of each stored stream, the trace header, and
//! dead letters (an input that is no request, or an output the broker
//! refused), each bounded in size.

use base64::Engine;
use chrono::{DateTime, Utc};

use super::prepare::{Origin, position};
use super::{DecisionService, rfc3339};
use crate::audit;
use crate::config::Topics;
use crate::contract::{AuditEvent, DEAD_LETTER_SCHEMA, DeadLetter, DeadLetterError, EventType, RefusedOutput};
use crate::decide::Rejection;
use crate::kafka::{ConsumedMessage, OutgoingMessage};
use crate::policy::Policy;
use crate::store::{Commit, Output, Stream};

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
    msg: &ConsumedMessage,
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

/// The topic a stored stream is published to.
pub(super) fn topic_of(topics: &Topics, stream: Stream) -> &str {
    match stream {
        Stream::Decisions => &topics.decisions,
        Stream::Audit => &topics.audit,
        Stream::Usage => &topics.usage,
        Stream::DeadLetters => &topics.dlq,
        Stream::Grants => &topics.grants,
        Stream::Replies => &topics.replies,
    }
}

impl DecisionService {
    fn topic(&self, stream: Stream) -> &str {
        topic_of(&self.topics, stream)
    }

    pub(super) fn to_messages(&self, outputs: Vec<Output>, traceparent: &str) -> Vec<OutgoingMessage> {
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

    pub(super) fn dead_letter(&self, policy: &Policy, origin: &Origin<'_>, rejection: Rejection) -> Commit {
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
                actor: self.actor.clone(),
                subject: String::new(),
                resource: key,
                action: "decode".into(),
                outcome: "rejected".into(),
                reasons: vec![crate::contract::Reason::new(rejection.code, rejection.message)],
                policy_version: policy.version().to_owned(),
                request_digest: letter.payload_sha256.clone(),
                ..AuditEvent::draft(origin.chain.clone(), EventType::InputRejected, now, trace_id.to_owned())
            },
            usage: None,
            grant: None,
            review: None,
            supersedes: None,
            created_at: rfc3339(now),
        }
    }

    /// See [`Processor::refused`].
    pub(super) fn refused_letter(
        &self,
        input: &ConsumedMessage,
        output: &OutgoingMessage,
        error: &str,
        minimal: bool,
    ) -> OutgoingMessage {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &[u8], key: &[u8], headers: &[(&str, &[u8])]) -> ConsumedMessage {
        ConsumedMessage {
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
