//! Kafka I/O (rdkafka only lives here): client configuration, topic
//! creation, and the consume → process → publish → store-offset loop.
//!
//! What must stay true: an input's offset is stored only after every output
//! it produced was acknowledged by the broker, and offsets are stored in
//! input order. A crash therefore re-delivers inputs whose outputs may be
//! missing, and the processor's idempotency turns that into an identical
//! re-publication, never a second decision.

pub mod embedded;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::KafkaSettings;
use crate::health::Health;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("output for {topic}/{partition}@{offset} was not delivered: {message}")]
    Delivery { topic: String, partition: i32, offset: i64, message: String },
    #[error("processing {topic}/{partition}@{offset} failed for good: {message}")]
    Processing { topic: String, partition: i32, offset: i64, message: String },
    /// Transactional mode: the consumer is not (yet, or any more) in its
    /// group, so a batch's offsets cannot be committed with its outputs.
    #[error("not a member of the consumer group: the batch's offsets cannot go in its transaction")]
    NotInGroup,
}

/// A consumed message, detached from the client.
#[derive(Debug, Clone)]
pub struct InputMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InputMessage {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A dependency (the database) is unavailable: retry the same input.
    #[error("{0}")]
    Retryable(String),
    /// Another instance stored something this batch claims (a token id
    /// raced on two partitions): decide the batch again at once; not an
    /// outage, so nothing pauses.
    #[error("{0}")]
    Conflict(String),
    /// Retrying cannot help; the loop stops without storing the offset.
    #[error("{0}")]
    Fatal(String),
}

/// Turns inputs into the messages to publish, one list per input, in order.
/// Must be idempotent per input: called again for a re-delivered input, it
/// returns the same bytes. A batch succeeds or fails as a whole.
pub trait Processor: Send + Sync + 'static {
    /// What [`Processor::prepare`] makes of a batch.
    type Prepared: Send + 'static;

    /// The part of the work that depends on the inputs alone (decoding,
    /// signature checks): no database, nothing that processing an earlier
    /// batch changes. The loop runs it on a blocking thread for the next
    /// batch while the current one is processed; the result is handed to
    /// `process_batch` with the same inputs, or dropped if the batch is
    /// prepared again (after a failed attempt) or never processed.
    fn prepare(&self, msgs: &[InputMessage]) -> Self::Prepared;

    fn process_batch(
        &self,
        msgs: &[InputMessage],
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Vec<OutgoingMessage>>, ProcessError>> + Send;

    /// The dead letter that stands for `output` of `input` when the broker
    /// refused it for good (too large, invalid, not authorized), so the
    /// input still ends in an outcome. `minimal`: without any of the input's
    /// bytes, for when the fuller letter was refused too.
    fn refused(&self, input: &InputMessage, output: &OutgoingMessage, error: &str, minimal: bool) -> OutgoingMessage;
}

/// Which client a librdkafka property applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
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
fn base_config(settings: &KafkaSettings, bootstrap: &str, side: Side) -> ClientConfig {
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
pub fn producer_config(settings: &KafkaSettings, bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap).set("linger.ms", "5").set("message.timeout.ms", "300000");
    set_loop_properties(&mut cfg, settings, Side::Producer);
    // No output lost or duplicated by the producer's own retries.
    cfg.set("enable.idempotence", "true").set("acks", "all");
    cfg
}

pub fn consumer_config(settings: &KafkaSettings, bootstrap: &str) -> ClientConfig {
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

pub struct Pipeline {
    pub consumer: StreamConsumer<LoopContext>,
    pub producer: FutureProducer,
    /// Outputs and offsets go in Kafka transactions (see [`crate::config::DeliveryMode`]).
    pub transactional: bool,
}

/// How long a transaction step may take before it counts as failed.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl Pipeline {
    /// The consumer and producer of the loop. With a `transactional_id`,
    /// the producer is transactional (initialised here, which blocks until
    /// the broker answers and fences any older producer with the same id)
    /// and the consumer commits nothing itself.
    pub fn new(
        settings: &KafkaSettings,
        bootstrap: &str,
        input_topic: &str,
        health: Arc<Health>,
        transactional_id: Option<&str>,
        instance_id: &str,
    ) -> Result<Self, KafkaError> {
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
        let consumer: StreamConsumer<LoopContext> = consumer_cfg.create_with_context(LoopContext { health })?;
        consumer.subscribe(&[input_topic])?;
        let producer: FutureProducer = producer_cfg.create()?;
        if transactional_id.is_some() {
            producer.init_transactions(TXN_TIMEOUT)?;
        }
        Ok(Pipeline { consumer, producer, transactional: transactional_id.is_some() })
    }
}

type Position = (String, i32, i64);

fn to_record<'a>(m: &'a OutgoingMessage) -> FutureRecord<'a, String, String> {
    let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
    for (k, v) in &m.headers {
        headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    FutureRecord::to(&m.topic).key(&m.key).payload(&m.payload).headers(headers)
}

/// How a delivery failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The broker (or librdkafka, checking the same limits) will never take
    /// this message: it stands for its input as a dead letter instead.
    Permanent,
    /// Unreachable broker, timeout, missing topic: sending again can work.
    Transient,
}

fn classify(error: &rdkafka::error::KafkaError) -> Failure {
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
async fn deliver<P: Processor>(
    producer: FutureProducer,
    processor: Arc<P>,
    input: InputMessage,
    outputs: Vec<OutgoingMessage>,
    health: &Health,
) -> Result<Position, KafkaError> {
    let start = Instant::now();
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
    Ok((input.topic, input.partition, input.offset))
}

/// An output the broker did not take. A transient failure is retried with
/// backoff (the same bytes: consumers see at most a repeat) until it goes
/// through or the loop stops; a permanent refusal is replaced by an
/// `output.refused` dead letter, then by one without the input's bytes.
/// Only when even that is refused does delivery fail: the input's offset is
/// then never stored and the instance stops (see [`run`]).
async fn resend<P: Processor>(
    producer: &FutureProducer,
    processor: &P,
    input: &InputMessage,
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

fn detach(m: &rdkafka::message::BorrowedMessage<'_>) -> InputMessage {
    let headers = m
        .headers()
        .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        .unwrap_or_default();
    InputMessage {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

/// How much work the loop takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Inputs whose outputs await acknowledgement before intake pauses.
    pub max_in_flight: usize,
    /// Inputs already received that are processed together.
    pub max_batch: usize,
}

impl From<&crate::config::ServiceSettings> for Limits {
    fn from(s: &crate::config::ServiceSettings) -> Self {
        Limits { max_in_flight: s.max_in_flight, max_batch: s.max_batch }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A batch that conflicts this often in a row is not racing another
/// instance; it waits with backoff like any other retryable failure.
const MAX_CONFLICTS: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A batch taken from the consumer and being prepared on a blocking thread.
type Ahead<P> = tokio::task::JoinHandle<(Vec<InputMessage>, <P as Processor>::Prepared)>;

fn prepare_ahead<P: Processor>(processor: &Arc<P>, batch: Vec<InputMessage>) -> Ahead<P> {
    let processor = processor.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = processor.prepare(&batch);
        (batch, prepared)
    })
}

async fn prepared<P: Processor>(ahead: &mut Ahead<P>) -> (Vec<InputMessage>, P::Prepared) {
    match ahead.await {
        Ok(done) => done,
        // A panic in `prepare` is a bug; it is not turned into a decision.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `first` and whatever else has already arrived, up to `max` inputs: one
/// database transaction and one round of produce for all of it.
fn gather(consumer: &StreamConsumer<LoopContext>, first: InputMessage, max: usize) -> Vec<InputMessage> {
    let mut batch = vec![first];
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(detach(&m)),
            _ => break,
        }
    }
    batch
}

/// Drops inputs of partitions no longer assigned: they belong to another
/// instance now, which re-processes them. Returns whether any were dropped.
fn retain_assigned(consumer: &StreamConsumer<LoopContext>, batch: &mut Vec<InputMessage>) -> bool {
    let before = batch.len();
    if let Ok(assigned) = consumer.assignment() {
        batch.retain(|m| assigned.find_partition(&m.topic, m.partition).is_some());
    }
    batch.len() != before
}

/// Runs until `shutdown` is cancelled (then drains within `grace`) or a fatal
/// error.
///
/// Batches are processed one at a time, in order; while one is processed
/// the loop keeps storing offsets of delivered outputs and takes the next
/// batch, whose [`Processor::prepare`] runs meanwhile on another thread.
///
/// When processing fails retryably (the database is down), the batch is held
/// and retried with backoff while every assigned partition is paused: the
/// consumer keeps polling, so the instance stays in its group however long
/// the outage lasts, but takes no new work, stores no offsets and reports
/// not-ready. Inputs that still arrive (from partitions assigned during the
/// outage) queue behind the held batch, so nothing overtakes anything.
pub async fn run<P: Processor>(
    pipeline: Pipeline,
    processor: Arc<P>,
    shutdown: CancellationToken,
    grace: Duration,
    limits: Limits,
    health: &Health,
) -> Result<(), KafkaError> {
    let Pipeline { consumer, producer, transactional } = pipeline;
    let mut pending = FuturesOrdered::new();
    let mut offsets = Offsets::default();
    // Conflicts in a row: past MAX_CONFLICTS, handled as an outage.
    let mut conflicts = 0;
    let mut result = Ok(());
    // A batch waiting for its dependency, and when to try it again.
    let mut held: Option<Vec<InputMessage>> = None;
    // The batch after the current one; never set while a batch is held.
    let mut ahead: Option<Ahead<P>> = None;
    // When the batch in `ahead` (or held) was taken off the consumer.
    let mut taken_at = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut paused = false;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    health.set_consuming(true);
    loop {
        let (batch, ready) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = offsets.on_delivered(&consumer, done) {
                    result = Err(e);
                    break;
                }
                continue;
            }
            _ = &mut retry, if held.is_some() => {
                let mut batch = held.take().unwrap_or_default();
                // Partitions revoked during the outage belong to another
                // instance now; it re-processes their inputs.
                retain_assigned(&consumer, &mut batch);
                if batch.is_empty() {
                    paused = false;
                    backoff = FIRST_BACKOFF;
                    resume_all(&consumer);
                    health.set_blocked(None);
                    continue;
                }
                prepared::<P>(&mut prepare_ahead(&processor, batch)).await
            }
            taken = async { prepared::<P>(ahead.as_mut().expect("checked")).await }, if ahead.is_some() => {
                ahead = None;
                let (mut batch, ready) = taken;
                // Taken before a rebalance that moved some of its partitions.
                if retain_assigned(&consumer, &mut batch) {
                    if batch.is_empty() {
                        continue;
                    }
                    prepared::<P>(&mut prepare_ahead(&processor, batch)).await
                } else {
                    (batch, ready)
                }
            }
            received = consumer.recv(), if ahead.is_none() && (held.is_some() || pending.len() < limits.max_in_flight) => {
                let first = match received {
                    Ok(m) => detach(&m),
                    Err(error) => {
                        warn!(message = "consumer error", %error);
                        continue;
                    }
                };
                if let Some(waiting) = held.as_mut() {
                    waiting.push(first);
                    pause_all(&consumer);
                    continue;
                }
                ahead = Some(prepare_ahead(&processor, gather(&consumer, first, limits.max_batch)));
                taken_at = Instant::now();
                continue;
            }
        };
        // Process, meanwhile storing offsets as outputs are acknowledged and
        // taking the next batch (its preparation overlaps this one).
        health.timings.wait.observe_since(taken_at);
        health.timings.batch_inputs.observe(batch.len() as f64);
        let attempted = {
            let work = attempt(&*processor, &batch, ready);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    done = &mut work => break done,
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        if let Err(e) = offsets.on_delivered(&consumer, done) {
                            break Err(Attempt::Fatal(e));
                        }
                    }
                    received = consumer.recv(), if ahead.is_none() && !shutdown.is_cancelled() && pending.len() < limits.max_in_flight => {
                        match received {
                            Ok(m) => {
                                let first = detach(&m);
                                ahead = Some(prepare_ahead(&processor, gather(&consumer, first, limits.max_batch)));
                                taken_at = Instant::now();
                            }
                            Err(error) => warn!(message = "consumer error", %error),
                        }
                    }
                }
            }
        };
        match attempted {
            Ok(outputs) => {
                conflicts = 0;
                if std::mem::take(&mut paused) {
                    backoff = FIRST_BACKOFF;
                    info!(message = "processing resumed");
                    resume_all(&consumer);
                    health.set_blocked(None);
                }
                if !transactional {
                    for (msg, out) in batch.into_iter().zip(outputs) {
                        pending.push_back(deliver(producer.clone(), processor.clone(), msg, out, health));
                    }
                    continue;
                }
                match publish_in_transaction(&producer, &consumer, &*processor, &batch, outputs).await {
                    Ok(()) => health.set_blocked(None),
                    Err(TxnFailure::Fatal(e)) => {
                        error!(message = "transactional producer failed for good (fenced by a newer instance with the same transactional.id?)", error = %e);
                        result = Err(e);
                        break;
                    }
                    Err(TxnFailure::Aborted(error)) => {
                        // The batch comes round again and finds its stored
                        // outcome: the same bytes, in a new transaction. The
                        // batch taken after it is read again too.
                        warn!(message = "transaction aborted; the batch will be re-read", %error);
                        health.set_blocked(Some(format!("kafka transaction aborted: {error}")));
                        Health::count(&health.counters.processing_retries);
                        let mut read = batch;
                        if let Some(mut next) = ahead.take() {
                            read.extend(prepared::<P>(&mut next).await.0);
                        }
                        rewind(&consumer, &read);
                        tokio::time::sleep(FIRST_BACKOFF).await;
                    }
                }
            }
            Err(Attempt::Conflict(error)) if conflicts < MAX_CONFLICTS => {
                conflicts += 1;
                info!(message = "another instance stored part of this batch first; deciding it again", %error);
                Health::count(&health.counters.conflicts);
                // Retried at once, ahead of anything taken meanwhile; no
                // pause, readiness unchanged.
                let mut again = batch;
                if let Some(mut next) = ahead.take() {
                    again.extend(prepared::<P>(&mut next).await.0);
                }
                held = Some(again);
                retry.as_mut().reset(tokio::time::Instant::now());
            }
            Err(Attempt::Retry(error) | Attempt::Conflict(error)) => {
                let first = &batch[0];
                warn!(message = "processing paused; will retry", topic = %first.topic, partition = first.partition, offset = first.offset,
                      %error, backoff_ms = backoff.as_millis() as u64);
                health.set_blocked(Some(error));
                Health::count(&health.counters.processing_retries);
                pause_all(&consumer);
                paused = true;
                retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // The batch taken meanwhile waits behind this one, in order.
                let mut waiting = batch;
                if let Some(mut next) = ahead.take() {
                    waiting.extend(prepared::<P>(&mut next).await.0);
                }
                held = Some(waiting);
            }
            Err(Attempt::Fatal(e)) => {
                result = Err(e);
                break;
            }
        }
    }
    health.set_stopping();
    // Drain: what was decided gets delivered and its offset stored, within
    // the grace period; anything left is re-delivered to the next owner.
    // A partition whose delivery failed stores nothing more.
    let drain = async {
        let mut failed = Ok(());
        while let Some(done) = pending.next().await {
            if let Err(e) = offsets.on_delivered(&consumer, done) {
                failed = failed.and(Err(e));
            }
        }
        failed
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(Err(e)) if result.is_ok() => result = Err(e),
        Ok(_) => {}
        Err(_) => warn!(message = "grace period ended with outputs unacknowledged; they will be re-delivered"),
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
        && error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset)
    {
        warn!(message = "final offset commit failed", %error);
    }
    let _ = producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(5)));
    consumer.unsubscribe();
    result
}

enum TxnFailure {
    /// Aborted; the batch can be tried again.
    Aborted(KafkaError),
    /// The producer is unusable (fenced, or a fatal librdkafka error).
    Fatal(KafkaError),
}

/// Publishes a batch's outputs and commits its input offsets to the group
/// in one transaction. On any failure that leaves the producer usable the
/// transaction is aborted, so none of it becomes visible.
async fn publish_in_transaction<P: Processor>(
    producer: &FutureProducer,
    consumer: &StreamConsumer<LoopContext>,
    processor: &P,
    batch: &[InputMessage],
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
    input: &InputMessage,
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
fn next_offsets(batch: &[InputMessage]) -> Vec<(String, i32, i64)> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        next.insert((&m.topic, m.partition), m.offset + 1);
    }
    next.into_iter().map(|((t, p), o)| (t.to_owned(), p, o)).collect()
}

/// Seeks each partition of `batch` back to its first input there, so an
/// aborted batch is consumed again.
fn rewind(consumer: &StreamConsumer<LoopContext>, batch: &[InputMessage]) {
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

fn pause_all(consumer: &StreamConsumer<LoopContext>) {
    if let Err(error) = consumer.assignment().and_then(|a| consumer.pause(&a)) {
        warn!(message = "pausing partitions failed", %error);
    }
}

fn resume_all(consumer: &StreamConsumer<LoopContext>) {
    if let Err(error) = consumer.assignment().and_then(|a| consumer.resume(&a)) {
        warn!(message = "resuming partitions failed", %error);
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
struct Offsets {
    failed: std::collections::HashSet<(String, i32)>,
}

impl Offsets {
    fn on_delivered(
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
        if self.failed.contains(&(topic.clone(), partition)) {
            debug!(message = "offset not stored: an earlier input of the partition was not delivered", %topic, partition, offset);
            return Ok(());
        }
        // Fails only when the partition was revoked meanwhile; its next owner
        // re-processes the input idempotently.
        if let Err(error) = consumer.store_offset(&topic, partition, offset) {
            debug!(message = "offset not stored", %topic, partition, offset, %error);
        }
        Ok(())
    }
}

enum Attempt {
    Retry(String),
    Conflict(String),
    Fatal(KafkaError),
}

async fn attempt<P: Processor>(
    processor: &P,
    batch: &[InputMessage],
    prepared: P::Prepared,
) -> Result<Vec<Vec<OutgoingMessage>>, Attempt> {
    let msg = &batch[0];
    let fatal = |message: String| {
        Attempt::Fatal(KafkaError::Processing {
            topic: msg.topic.clone(),
            partition: msg.partition,
            offset: msg.offset,
            message,
        })
    };
    match processor.process_batch(batch, prepared).await {
        Ok(out) if out.len() == batch.len() => Ok(out),
        Ok(out) => Err(fatal(format!("{} outputs for a batch of {}", out.len(), batch.len()))),
        Err(ProcessError::Retryable(error)) => Err(Attempt::Retry(error)),
        Err(ProcessError::Conflict(error)) => Err(Attempt::Conflict(error)),
        Err(ProcessError::Fatal(message)) => {
            error!(message = "processing failed", topic = %msg.topic, partition = msg.partition, offset = msg.offset, error = %message);
            Err(fatal(message))
        }
    }
}

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
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            hs = hs.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(hs);
        self.producer
            .send(record, rdkafka::util::Timeout::After(Duration::from_secs(30)))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| KafkaError::Client(e))
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
            producer
                .send(record, rdkafka::util::Timeout::Never)
                .await
                .map(|_| ())
                .map_err(|(e, _)| KafkaError::Client(e))
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
    pub async fn read_to_end(&self, topic: &str) -> Result<Vec<InputMessage>, KafkaError> {
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
        let mut by_partition: BTreeMap<i32, Vec<InputMessage>> = BTreeMap::new();
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
    pub async fn next(&self, wait: Duration) -> Result<Option<InputMessage>, KafkaError> {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => Ok(None),
            Ok(Ok(m)) => Ok(Some(detach(&m))),
            Ok(Err(e)) => Err(e.into()),
        }
    }
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
