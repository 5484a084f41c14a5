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
        .set("statistics.interval.ms", "5000")
        // Inputs fetched ahead of the loop: 16 MB holds seconds of work at
        // full speed. librdkafka's 64 MB was a third of `serve`'s resident
        // memory under a flood, for no throughput (docs/performance.md).
        .set("queued.max.messages.kbytes", "16384");
    set_loop_properties(&mut cfg, settings, Side::Consumer);
    cfg.set("group.id", &settings.group_id)
        // Offsets are stored by the loop after delivery, never on receipt.
        .set("enable.auto.offset.store", "false")
        // Outputs of aborted transactions are never inputs.
        .set("isolation.level", "read_committed");
    cfg
}

/// Creates each missing topic with its `retention.ms` (-1: forever). An
/// existing topic is left as it is (see [`retention_shortfalls`]).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    bootstrap: &str,
    topics: &[(&str, i64)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings, bootstrap, Side::Producer).create()?;
    let retention: Vec<String> = topics.iter().map(|(_, ms)| ms.to_string()).collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retention)
        .map(|((t, _), ms)| {
            NewTopic::new(t, settings.partitions, TopicReplication::Fixed(settings.replication_factor))
                .set("retention.ms", ms)
        })
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

/// A topic that keeps its messages for less than required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub topic: String,
    /// `retention.ms` on the cluster (-1: forever; None: not reported).
    pub actual_ms: Option<i64>,
    pub required_ms: i64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = |ms: i64| if ms < 0 { "forever".to_owned() } else { format!("{} days", ms / 86_400_000) };
        match self.actual_ms {
            Some(ms) => {
                write!(f, "{} keeps messages {} but must keep them {}", self.topic, days(ms), days(self.required_ms))
            }
            None => write!(f, "{} reports no retention.ms (must keep messages {})", self.topic, days(self.required_ms)),
        }
    }
}

/// Whether `actual` keeps messages at least as long as `required` (-1: forever).
fn long_enough(actual: i64, required: i64) -> bool {
    actual < 0 || (required >= 0 && actual >= required)
}

/// The topics of `wanted` whose `retention.ms` on the cluster is shorter
/// than required.
pub async fn retention_shortfalls(
    settings: &KafkaSettings,
    bootstrap: &str,
    wanted: &[(&str, i64)],
) -> Result<Vec<Shortfall>, KafkaError> {
    use rdkafka::admin::{OwnedResourceSpecifier, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = base_config(settings, bootstrap, Side::Producer).create()?;
    let specs: Vec<ResourceSpecifier<'_>> = wanted.iter().map(|(t, _)| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let mut out = Vec::new();
    for (result, (topic, required)) in admin.describe_configs(specs.iter(), &opts).await?.into_iter().zip(wanted) {
        let resource = result
            .map_err(|code| KafkaError::DescribeTopic { topic: (*topic).to_owned(), message: code.to_string() })?;
        debug_assert!(matches!(&resource.specifier, OwnedResourceSpecifier::Topic(t) if t == topic));
        let actual = resource.get("retention.ms").and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<i64>().ok());
        if !actual.is_some_and(|a| long_enough(a, *required)) {
            out.push(Shortfall { topic: (*topic).to_owned(), actual_ms: actual, required_ms: *required });
        }
    }
    Ok(out)
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
    fn forever_is_long_enough_for_anything_and_nothing_finite_is_forever() {
        assert!(long_enough(-1, -1) && long_enough(-1, 1000) && long_enough(1000, 1000));
        assert!(!long_enough(999, 1000) && !long_enough(i64::MAX, -1));
    }

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
        // tollgate's own default, which kafka.properties can override.
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("16384"));
        settings.properties.insert("queued.max.messages.kbytes".into(), "4096".into());
        assert_eq!(consumer_config(&settings, "b:1").get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(
            (consumer.get("security.protocol"), producer.get("security.protocol")),
            (Some("plaintext"), Some("plaintext"))
        );
    }
}
