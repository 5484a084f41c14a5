//! Client configuration: which `kafka.properties` go to which client, the
//! loop's defaults and the settings correctness rests on; topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use super::KafkaError;
use crate::config::KafkaSettings;

/// Which client a librdkafka property applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Consumer,
    Producer,
    Both,
}

/// The side of a property, as librdkafka's CONFIGURATION.md marks it (C or
/// P; everything else is `*`, both). `kafka.properties` go to the client
/// they apply to, so a consumer setting (`fetch.wait.max.ms`, which the
/// README recommends on tansu) does not make the producer warn at every
/// start, and the reverse.
fn side_of(property: &str) -> Side {
    #[rustfmt::skip]
    const CONSUMER: &[&str] = &[
        "group.id", "group.instance.id", "partition.assignment.strategy", "session.timeout.ms",
        "heartbeat.interval.ms", "group.protocol.type", "group.protocol", "group.remote.assignor",
        "coordinator.query.interval.ms", "max.poll.interval.ms", "enable.auto.commit", "auto.commit.enable",
        "auto.commit.interval.ms", "enable.auto.offset.store", "queued.min.messages", "queued.max.messages.kbytes",
        "fetch.wait.max.ms", "fetch.queue.backoff.ms", "fetch.message.max.bytes", "max.partition.fetch.bytes",
        "fetch.max.bytes", "fetch.min.bytes", "fetch.error.backoff.ms", "offset.store.method", "offset.store.path",
        "offset.store.sync.interval.ms", "isolation.level", "enable.partition.eof", "check.crcs", "auto.offset.reset",
        "consume.callback.max.messages",
    ];
    #[rustfmt::skip]
    const PRODUCER: &[&str] = &[
        "transactional.id", "transaction.timeout.ms", "enable.idempotence", "enable.gapless.guarantee",
        "queue.buffering.max.messages", "queue.buffering.max.kbytes", "queue.buffering.max.ms", "linger.ms",
        "message.send.max.retries", "retries", "queue.buffering.backpressure.threshold", "compression.codec",
        "compression.type", "compression.level", "batch.num.messages", "batch.size", "delivery.report.only.error",
        "sticky.partitioning.linger.ms", "request.required.acks", "acks", "request.timeout.ms", "message.timeout.ms",
        "delivery.timeout.ms", "queuing.strategy", "produce.offset.report", "partitioner",
    ];
    if CONSUMER.contains(&property) {
        Side::Consumer
    } else if PRODUCER.contains(&property) {
        Side::Producer
    } else {
        Side::Both
    }
}

/// The bootstrap servers and the `kafka.properties` that apply to `side`.
pub(super) fn base_config(settings: &KafkaSettings, bootstrap: &str, side: Side) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    set_properties(&mut cfg, settings, side);
    cfg
}

/// The shared `kafka.properties` that apply to `side`.
fn set_properties(cfg: &mut ClientConfig, settings: &KafkaSettings, side: Side) {
    for (k, v) in &settings.properties {
        let applies = side_of(k);
        if applies == Side::Both || applies == side {
            cfg.set(k, v);
        }
    }
}

/// The shared properties for `side`, then that side's own (`kafka.consumer`
/// or `kafka.producer`): for the decision loop's clients only.
fn set_loop_properties(cfg: &mut ClientConfig, settings: &KafkaSettings, side: Side) {
    set_properties(cfg, settings, side);
    let own = if side == Side::Consumer { &settings.consumer } else { &settings.producer };
    for (k, v) in own {
        cfg.set(k, v);
    }
}

/// Order: tollgate's tunable defaults, then the operator's properties
/// (shared, then this side's), then what correctness rests on, which no
/// setting may change.
pub(super) fn producer_config(settings: &KafkaSettings, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap).set("linger.ms", "5").set("message.timeout.ms", "300000");
    set_loop_properties(&mut cfg, settings, Side::Producer);
    // No output lost or duplicated by the producer's own retries.
    cfg.set("enable.idempotence", "true").set("acks", "all");
    cfg
}

pub(super) fn consumer_config(settings: &KafkaSettings, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Broker reachability for readiness (see LoopContext::stats).
        .set("statistics.interval.ms", "5000");
    set_loop_properties(&mut cfg, settings, Side::Consumer);
    cfg.set("group.id", &settings.group_id)
        // Offsets are stored by the loop after delivery, never on receipt.
        .set("enable.auto.offset.store", "false")
        // Outputs of aborted transactions are never inputs.
        .set("isolation.level", "read_committed");
    cfg
}

/// Creates each missing topic. An existing topic is left as it is.
pub async fn ensure_topics(settings: &KafkaSettings, bootstrap: &str, topics: &[&str]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings, bootstrap, Side::Producer).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, settings.partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(topic) => info!(message = "created topic", %topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic { topic, message: code.to_string() });
            }
        }
    }
    Ok(())
}

/// The topics of `topics` the cluster does not have.
pub async fn missing_topics(
    settings: &KafkaSettings,
    bootstrap: &str,
    topics: &[&str],
) -> Result<Vec<String>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = base_config(settings, bootstrap, Side::Consumer).create()?;
    let wanted: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
        let present: std::collections::HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        Ok(wanted.into_iter().filter(|t| !present.contains(t.as_str())).collect())
    })
    .await
    .unwrap_or_else(|e| Ok(vec![format!("(metadata check failed: {e})")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_properties_go_only_to_the_clients_they_apply_to() {
        let mut settings = KafkaSettings::default();
        for (k, v) in [("fetch.wait.max.ms", "50"), ("linger.ms", "20"), ("security.protocol", "plaintext")] {
            settings.properties.insert(k.into(), v.into());
        }
        let (consumer, producer) = (consumer_config(&settings, "b:1"), producer_config(&settings, "b:1"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(
            (consumer.get("security.protocol"), producer.get("security.protocol")),
            (Some("plaintext"), Some("plaintext"))
        );
    }
}
