//! A plain Kafka client for tollgate's own tools and tests: produce, read
//! a topic from its beginning or its end, read committed offsets.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::config::{Side, base_config, producer_config};
use super::consume::detach;
use super::{ConsumedMessage, KafkaError, owned_headers};
use crate::config::KafkaSettings;

/// A plain Kafka client for tollgate's own tools (demo, load generator,
/// tests): produce requests, read outputs.
pub struct Client {
    producer: FutureProducer,
    settings: KafkaSettings,
    bootstrap: String,
}

impl Client {
    pub fn new(settings: &KafkaSettings, bootstrap: &str) -> Result<Self, KafkaError> {
        let producer = producer_config(settings, bootstrap).create()?;
        Ok(Client { producer, settings: settings.clone(), bootstrap: bootstrap.to_owned() })
    }

    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(i32, i64), KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(owned_headers(headers.iter().copied()));
        self.producer
            .send(record, rdkafka::util::Timeout::After(Duration::from_secs(30)))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| KafkaError::from(e))
    }

    /// Sends without waiting: the future resolves on acknowledgement. For
    /// producing at a rate, many sends in flight at once.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        payload: String,
    ) -> impl Future<Output = Result<(), KafkaError>> + Send + 'static {
        let producer = self.producer.clone();
        let (topic, key) = (topic.to_owned(), key.to_owned());
        async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send(record, rdkafka::util::Timeout::Never).await.map(|_| ()).map_err(|(e, _)| KafkaError::from(e))
        }
    }

    /// A reader of every partition of `topics` from the beginning. It assigns
    /// partitions itself instead of joining a group: no rebalance wait, and
    /// it commits nothing. `group` only names the client.
    pub fn reader(&self, topics: &[&str], group: &str) -> Result<Reader, KafkaError> {
        self.reader_from(topics, group, false)
    }

    /// A reader of what is appended to `topics` from now on: each partition
    /// from its end as of this call (resolved here, so nothing written after
    /// the call returns is missed).
    pub fn reader_from_end(&self, topics: &[&str], group: &str) -> Result<Reader, KafkaError> {
        self.reader_from(topics, group, true)
    }

    fn reader_from(&self, topics: &[&str], group: &str, at_end: bool) -> Result<Reader, KafkaError> {
        let mut cfg = base_config(&self.settings, &self.bootstrap, Side::Consumer);
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        let consumer: StreamConsumer = cfg.create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in metadata.topics() {
                if t.partitions().is_empty() {
                    return Err(KafkaError::CreateTopic {
                        topic: t.name().to_owned(),
                        message: "topic has no partitions".into(),
                    });
                }
                for p in t.partitions() {
                    let offset = if at_end {
                        let (_, high) = consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
                        rdkafka::Offset::Offset(high)
                    } else {
                        rdkafka::Offset::Beginning
                    };
                    tpl.add_partition_offset(t.name(), p.id(), offset)?;
                }
            }
        }
        consumer.assign(&tpl)?;
        Ok(Reader { consumer })
    }
}

impl Client {
    /// The offsets `group` has committed for each partition of `topic`
    /// (None: nothing committed), without joining the group: for operators
    /// and tests checking what an instance has acknowledged.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
        let mut cfg = base_config(&self.settings, &self.bootstrap, Side::Consumer);
        cfg.set("group.id", group).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cfg.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| (e.partition(), if let rdkafka::Offset::Offset(o) = e.offset() { Some(o) } else { None }))
            .collect())
    }

    /// Everything in `topic` now: each partition read from the beginning up
    /// to the high watermark seen at the start, in partition order.
    pub async fn read_to_end(&self, topic: &str) -> Result<Vec<ConsumedMessage>, KafkaError> {
        let reader = self.reader(&[topic], "tollgate-read-to-end")?;
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        let metadata = reader.consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, high) = reader.consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                if high > low {
                    remaining.insert(p.id(), high);
                }
            }
        }
        let mut by_partition: BTreeMap<i32, Vec<ConsumedMessage>> = BTreeMap::new();
        while !remaining.is_empty() {
            let Some(m) = reader.next(Duration::from_secs(30)).await? else {
                return Err(KafkaError::Delivery {
                    topic: topic.to_owned(),
                    partition: *remaining.keys().next().unwrap_or(&0),
                    offset: -1,
                    message: "no progress reading to the high watermark for 30 s".into(),
                });
            };
            if remaining.get(&m.partition).is_some_and(|high| m.offset + 1 >= *high) {
                remaining.remove(&m.partition);
            }
            by_partition.entry(m.partition).or_default().push(m);
        }
        // Some brokers (tansu 0.6) report a high watermark inside the last
        // record batch; what follows it arrives without delay, so read on
        // until the partitions fall quiet.
        while let Some(m) = reader.next(Duration::from_millis(500)).await? {
            by_partition.entry(m.partition).or_default().push(m);
        }
        Ok(by_partition.into_values().flatten().collect())
    }
}

pub struct Reader {
    consumer: StreamConsumer,
}

impl Reader {
    /// The next message, or None when none arrives within `wait`.
    pub async fn next(&self, wait: Duration) -> Result<Option<ConsumedMessage>, KafkaError> {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => Ok(None),
            Ok(Ok(m)) => Ok(Some(detach(&m))),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}
