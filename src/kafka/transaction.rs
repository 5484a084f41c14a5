//! Transactional mode: a batch's outputs and its input offsets in one Kafka
//! transaction, aborted (and the batch read again) on any failure that
//! leaves the producer usable.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use tracing::{debug, error};

use super::clients::{LoopContext, TXN_TIMEOUT};
use super::delivery::{Failure, classify, to_record};
use super::{ConsumedMessage, KafkaError, OutgoingMessage, Processor};

pub(super) enum TxnFailure {
    /// Aborted; the batch can be tried again.
    Aborted(KafkaError),
    /// The producer is unusable (fenced, or a fatal librdkafka error).
    Fatal(KafkaError),
}

/// Publishes a batch's outputs and commits its input offsets to the group
/// in one transaction. On any failure that leaves the producer usable the
/// transaction is aborted, so none of it becomes visible.
pub(super) async fn publish_in_transaction<P: Processor>(
    producer: &FutureProducer,
    consumer: &StreamConsumer<LoopContext>,
    processor: &P,
    batch: &[ConsumedMessage],
    outputs: Vec<Vec<OutgoingMessage>>,
) -> Result<(), TxnFailure> {
    let classify = |e: rdkafka::error::KafkaError| match &e {
        rdkafka::error::KafkaError::Transaction(t) if t.is_fatal() => TxnFailure::Fatal(e.into()),
        _ => TxnFailure::Aborted(e.into()),
    };
    // Built before the transaction begins: nothing after `begin` may
    // return without committing or aborting it.
    let mut offsets = TopicPartitionList::new();
    for (topic, partition, next) in next_offsets(batch) {
        offsets.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(next)).map_err(classify)?;
    }
    producer.begin_transaction().map_err(classify)?;
    let mut acks = Vec::with_capacity(outputs.len() * 3);
    let mut failed = None;
    'inputs: for (input, out) in batch.iter().zip(&outputs) {
        for m in out {
            match enqueue_or_substitute(producer, processor, input, m) {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    failed = Some(e);
                    break 'inputs;
                }
            }
        }
    }
    let committed = match (failed, consumer.group_metadata()) {
        (Some(e), _) => Err(classify(e)),
        // Not in a group (yet, or any more): nothing to commit offsets to.
        (None, None) => Err(TxnFailure::Aborted(KafkaError::NotInGroup)),
        (None, Some(group)) => {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || {
                p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
                // Flushes every output of the transaction first.
                p.commit_transaction(TXN_TIMEOUT)
            })
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
            .map_err(classify)
        }
    };
    if let Err(failure) = committed {
        if let TxnFailure::Aborted(_) = failure {
            let p = producer.clone();
            let aborted = tokio::task::spawn_blocking(move || p.abort_transaction(TXN_TIMEOUT)).await;
            if let Ok(Err(e)) = aborted {
                return Err(classify(e));
            }
        }
        return Err(failure);
    }
    // Committed, so every output was delivered; a failed acknowledgement
    // here would be a librdkafka bug, and the batch is decided again anyway.
    for ack in acks {
        match ack.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(TxnFailure::Aborted(e.into())),
            Err(_) => return Err(TxnFailure::Aborted(rdkafka::error::KafkaError::Canceled.into())),
        }
    }
    Ok(())
}

/// Enqueues `output` in the open transaction. A message librdkafka refuses
/// at once for good (larger than `message.max.bytes`, say) is replaced by
/// the dead letter standing for it, as outside transactions; refusals the
/// broker reports later abort the transaction, which is then tried again.
fn enqueue_or_substitute<P: Processor>(
    producer: &FutureProducer,
    processor: &P,
    input: &ConsumedMessage,
    output: &OutgoingMessage,
) -> Result<rdkafka::producer::DeliveryFuture, rdkafka::error::KafkaError> {
    let mut error = match producer.send_result(to_record(output)) {
        Ok(ack) => return Ok(ack),
        Err((e, _)) => e,
    };
    for minimal in [false, true] {
        if classify(&error) == Failure::Transient {
            break;
        }
        error!(message = "output refused for good; a dead letter stands for it", topic = %output.topic, %error);
        let letter = processor.refused(input, output, &error.to_string(), minimal);
        match producer.send_result(to_record(&letter)) {
            Ok(ack) => return Ok(ack),
            Err((e, _)) => error = e,
        }
    }
    Err(error)
}

/// For each input partition in `batch`, the offset after its last input.
fn next_offsets(batch: &[ConsumedMessage]) -> Vec<(String, i32, i64)> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        next.insert((&m.topic, m.partition), m.offset + 1);
    }
    next.into_iter().map(|((t, p), o)| (t.to_owned(), p, o)).collect()
}

/// Seeks each partition of `batch` back to its first input there, so an
/// aborted batch is consumed again.
pub(super) fn rewind(consumer: &StreamConsumer<LoopContext>, batch: &[ConsumedMessage]) {
    let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        first.entry((&m.topic, m.partition)).or_insert(m.offset);
    }
    for ((topic, partition), offset) in first {
        if let Err(error) = consumer.seek(topic, partition, rdkafka::Offset::Offset(offset), Duration::from_secs(10)) {
            // Revoked meanwhile: its next owner starts from the committed offset.
            debug!(message = "rewind failed", %topic, partition, offset, %error);
        }
    }
}
