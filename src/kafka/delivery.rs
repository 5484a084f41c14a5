//! Publishing one input's outputs, what a failed delivery means (retried,
//! or replaced by a dead letter when the broker refuses it for good), and
//! storing input offsets once their outputs are taken.
//!
//! What must stay true: no offset is stored at or past an input whose
//! outputs were not all taken by the broker.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, warn};

use super::clients::LoopContext;
use super::{ConsumedMessage, FIRST_BACKOFF, KafkaError, MAX_BACKOFF, OutgoingMessage, Processor, owned_headers};
use crate::ops::Health;

/// An input's place: topic, partition, offset.
pub(super) type Position = (String, i32, i64);

pub(super) fn to_record<'a>(m: &'a OutgoingMessage) -> FutureRecord<'a, String, String> {
    let headers = owned_headers(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    FutureRecord::to(&m.topic).key(&m.key).payload(&m.payload).headers(headers)
}

/// How a delivery failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The broker (or librdkafka, checking the same limits) will never take
    /// this message: it stands for its input as a dead letter instead.
    Permanent,
    /// Unreachable broker, timeout, missing topic: sending again can work.
    Transient,
}

pub(super) fn classify(error: &rdkafka::error::KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::InvalidTimestamp
            | C::InvalidArgument
            | C::BadMessage,
        ) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// Publishes one input's outputs and resolves when the broker has taken
/// each of them, or a dead letter standing for it (see [`resend`]).
pub(super) async fn deliver<P: Processor>(
    producer: FutureProducer,
    processor: Arc<P>,
    input: ConsumedMessage,
    outputs: Vec<OutgoingMessage>,
    health: &Health,
) -> Result<Position, KafkaError> {
    let (start, started) = (Instant::now(), std::time::SystemTime::now());
    let mut acks = Vec::with_capacity(outputs.len());
    for m in &outputs {
        // `send` waits for queue space, then for the acknowledgement; with
        // the idempotent producer librdkafka retries until message.timeout.ms.
        acks.push(producer.send(to_record(m), rdkafka::util::Timeout::Never));
    }
    let results = futures_util::future::join_all(acks).await;
    for (output, result) in outputs.iter().zip(results) {
        if let Err((error, _)) = result {
            resend(&producer, &*processor, &input, output, error, health).await?;
        }
    }
    health.timings.deliver.observe_since(start);
    trace_delivery(health, &outputs, started);
    Ok((input.topic, input.partition, input.offset))
}

/// A span for the delivery of one input's outputs, a child of the input's
/// span (the `traceparent` its outputs carry), when export is on.
pub(super) fn trace_delivery(health: &Health, outputs: &[OutgoingMessage], started: std::time::SystemTime) {
    if !health.tracing.enabled() {
        return;
    }
    let traceparent = outputs.first().and_then(|m| m.headers.iter().find(|(k, _)| k == "traceparent"));
    if let Some((_, tp)) = traceparent {
        health.tracing.deliver(tp, started, outputs.len());
    }
}

/// An output the broker did not take. A transient failure is retried with
/// backoff (the same bytes: consumers see at most a repeat) until it goes
/// through or the loop stops; a permanent refusal is replaced by an
/// `output.refused` dead letter, then by one without the input's bytes.
/// Only when even that is refused does delivery fail: the input's offset is
/// then never stored and the instance stops (see [`super::run`]).
async fn resend<P: Processor>(
    producer: &FutureProducer,
    processor: &P,
    input: &ConsumedMessage,
    output: &OutgoingMessage,
    mut error: rdkafka::error::KafkaError,
    health: &Health,
) -> Result<(), KafkaError> {
    let (mut current, mut substitutes, mut backoff) = (None::<OutgoingMessage>, 0, FIRST_BACKOFF);
    loop {
        let sending = current.as_ref().unwrap_or(output);
        match classify(&error) {
            Failure::Permanent if substitutes == 2 => {
                return Err(KafkaError::Delivery {
                    topic: input.topic.clone(),
                    partition: input.partition,
                    offset: input.offset,
                    message: format!("refused for good, and so were both dead letters standing for it: {error}"),
                });
            }
            Failure::Permanent => {
                error!(message = "output refused for good; a dead letter stands for it", topic = %sending.topic,
                       bytes = sending.payload.len(), input = %format_args!("{}/{}@{}", input.topic, input.partition, input.offset), %error);
                Health::count(&health.counters.outputs_refused);
                substitutes += 1;
                current = Some(processor.refused(input, output, &error.to_string(), substitutes == 2));
            }
            Failure::Transient => {
                warn!(message = "output not delivered; sending it again", topic = %sending.topic, %error,
                      backoff_ms = backoff.as_millis() as u64);
                Health::count(&health.counters.delivery_retries);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let sending = current.as_ref().unwrap_or(output);
        match producer.send(to_record(sending), rdkafka::util::Timeout::Never).await {
            Ok(_) => return Ok(()),
            Err((e, _)) => error = e,
        }
    }
}

/// Stores input offsets as their outputs are acknowledged, in input order
/// (deliveries resolve in the order they were started).
///
/// What must stay true: no offset is ever stored at or past an input whose
/// outputs were not all taken by the broker. Once an input's delivery has
/// failed for good, its partition stores nothing more, even as later inputs
/// there are delivered: after a restart the failed input is read again.
#[derive(Default)]
pub(super) struct Offsets {
    failed: std::collections::HashSet<(String, i32)>,
}

impl Offsets {
    pub(super) fn on_delivered(
        &mut self,
        consumer: &StreamConsumer<LoopContext>,
        done: Result<Position, KafkaError>,
    ) -> Result<(), KafkaError> {
        let (topic, partition, offset) = match done {
            Ok(position) => position,
            Err(e) => {
                if let KafkaError::Delivery { topic, partition, .. } = &e {
                    self.failed.insert((topic.clone(), *partition));
                }
                return Err(e);
            }
        };
        // Keyed without a copy of the topic: this runs for every input.
        let key = (topic, partition);
        if self.failed.contains(&key) {
            debug!(message = "offset not stored: an earlier input of the partition was not delivered", topic = %key.0, partition, offset);
            return Ok(());
        }
        let (topic, partition) = key;
        // Fails only when the partition was revoked meanwhile; its next owner
        // re-processes the input idempotently.
        if let Err(error) = consumer.store_offset(&topic, partition, offset) {
            debug!(message = "offset not stored", %topic, partition, offset, %error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_for_good_are_told_from_failures_that_can_pass() {
        use rdkafka::error::KafkaError::MessageProduction;
        assert_eq!(classify(&MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)), Failure::Permanent);
        assert_eq!(classify(&MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)), Failure::Permanent);
        assert_eq!(classify(&MessageProduction(RDKafkaErrorCode::MessageTimedOut)), Failure::Transient);
        assert_eq!(classify(&MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition)), Failure::Transient);
        assert_eq!(classify(&MessageProduction(RDKafkaErrorCode::AllBrokersDown)), Failure::Transient);
    }
}
