//! The decision loop's consumer and producer, and the consumer's context:
//! rebalance logging, commit on revoke, broker reachability for readiness.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use super::KafkaError;
use super::config::{consumer_config, producer_config};
use crate::config::KafkaSettings;
use crate::ops::Health;

/// Logs assignments and commits stored offsets before partitions are taken
/// away, so the next owner starts where this instance really finished; and
/// reports broker reachability to [`Health`].
pub struct LoopContext {
    health: Arc<Health>,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // Internal and logical brokers are librdkafka's own bookkeeping.
        let up = statistics.brokers.values().any(|b| b.state == "UP" && b.source != "internal");
        self.health.set_kafka_down((!up).then(|| "no broker connection is up".to_owned()));
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_down(Some(format!("all brokers down: {reason}")));
        }
        warn!(message = "kafka client error", %error, %reason);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                info!(message = "partitions revoked", partitions = %describe(tpl));
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                    // NoOffset: nothing stored since the last commit.
                    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                        warn!(message = "commit on revoke failed", %error);
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                info!(message = "partitions assigned", partitions = %describe(tpl))
            }
            Rebalance::Error(error) => warn!(message = "rebalance error", %error),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

pub struct LoopClients {
    pub(super) consumer: StreamConsumer<LoopContext>,
    pub(super) producer: FutureProducer,
    /// Outputs and offsets go in Kafka transactions (see [`crate::config::DeliveryMode`]).
    pub(super) transactional: bool,
}

/// How long a transaction step may take before it counts as failed.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl LoopClients {
    /// The consumer and producer of the loop. With a `transactional_id`,
    /// the producer is transactional (initialised here, which blocks until
    /// the broker answers and fences any older producer with the same id)
    /// and the consumer commits nothing itself.
    pub fn new(
        settings: &KafkaSettings,
        bootstrap: &str,
        input_topics: &[&str],
        health: Arc<Health>,
        transactional_id: Option<&str>,
        instance_id: &str,
    ) -> Result<Self, KafkaError> {
        let (consumer_cfg, producer_cfg) = loop_configs(settings, bootstrap, transactional_id, instance_id);
        let consumer: StreamConsumer<LoopContext> = consumer_cfg.create_with_context(LoopContext { health })?;
        consumer.subscribe(input_topics)?;
        let producer: FutureProducer = producer_cfg.create()?;
        if transactional_id.is_some() {
            producer.init_transactions(TXN_TIMEOUT)?;
        }
        Ok(LoopClients { consumer, producer, transactional: transactional_id.is_some() })
    }
}

/// The loop's consumer and producer configuration: static membership when
/// asked for; in transactional mode, offsets committed only inside the
/// transaction and a message timeout the transaction allows.
fn loop_configs(
    settings: &KafkaSettings,
    bootstrap: &str,
    transactional_id: Option<&str>,
    instance_id: &str,
) -> (ClientConfig, ClientConfig) {
    let mut consumer_cfg = consumer_config(settings, bootstrap);
    let mut producer_cfg = producer_config(settings, bootstrap);
    if settings.static_membership && consumer_cfg.get("group.instance.id").is_none() {
        consumer_cfg.set("group.instance.id", instance_id);
    }
    if let Some(id) = transactional_id {
        consumer_cfg.set("enable.auto.commit", "false");
        producer_cfg.set("transactional.id", id);
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms
        // (60 s by default); the at-least-once default of 300 s is not.
        let user_set = |k: &str| settings.producer.contains_key(k) || settings.properties.contains_key(k);
        if !user_set("message.timeout.ms") {
            let txn = producer_cfg.get("transaction.timeout.ms").unwrap_or("60000").to_owned();
            producer_cfg.set("message.timeout.ms", txn);
        }
    }
    (consumer_cfg, producer_cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_membership_names_the_member_after_the_instance() {
        let mut settings = KafkaSettings::default();
        let (consumer, _) = loop_configs(&settings, "b:1", None, "node-7");
        assert_eq!(consumer.get("group.instance.id"), None, "dynamic membership by default");
        settings.static_membership = true;
        let (consumer, _) = loop_configs(&settings, "b:1", None, "node-7");
        assert_eq!(consumer.get("group.instance.id"), Some("node-7"));
        // An explicit setting wins.
        settings.consumer.insert("group.instance.id".into(), "chosen".into());
        assert_eq!(loop_configs(&settings, "b:1", None, "node-7").0.get("group.instance.id"), Some("chosen"));
    }

    #[test]
    fn transactional_mode_commits_offsets_only_in_the_transaction() {
        let settings = KafkaSettings::default();
        let (consumer, producer) = loop_configs(&settings, "b:1", Some("tollgate-a"), "a");
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(producer.get("transactional.id"), Some("tollgate-a"));
        assert_eq!(producer.get("message.timeout.ms"), Some("60000"));
    }
}
