//! Kafka I/O (rdkafka only lives here): client configuration, topic
//! creation, and the consume → process → publish → store-offset loop.
//!
//! What must stay true: an input's offset is stored only after every output
//! it produced was acknowledged by the broker, and offsets are stored in
//! input order. A crash therefore re-delivers inputs whose outputs may be
//! missing, and the processor's idempotency turns that into an identical
//! re-publication, never a second decision.
//!
//! One file per stage: `config` (which property goes to which client, topic
//! creation), `clients` (the loop's consumer and producer), `consume` (the
//! loop and its state), `delivery` (publishing an input's outputs, refusals,
//! storing offsets), `transaction` (transactional mode), `client` (a plain
//! client for tools and tests), `cluster` and `embedded` (the configured or
//! in-process cluster).

mod client;
mod clients;
mod cluster;
mod config;
mod consume;
mod delivery;
pub mod embedded;
mod transaction;

use std::future::Future;
use std::time::Duration;

pub use client::{Client, Reader};
pub use clients::{LoopClients, LoopContext};
pub use cluster::Cluster;
pub use config::{Shortfall, ensure_topics, missing_topics, retention_shortfalls};
pub use consume::run;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[source] ClientError),
    #[error("embedded kafka: {0}")]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("creating topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("reading the configuration of topic {topic}: {message}")]
    DescribeTopic { topic: String, message: String },
    #[error("output for {topic}/{partition}@{offset} was not delivered: {message}")]
    Delivery { topic: String, partition: i32, offset: i64, message: String },
    #[error("processing {topic}/{partition}@{offset} failed for good: {message}")]
    Processing { topic: String, partition: i32, offset: i64, message: String },
    /// Transactional mode: the consumer is not (yet, or any more) in its
    /// group, so a batch's offsets cannot be committed with its outputs.
    #[error("not a member of the consumer group: the batch's offsets cannot go in its transaction")]
    NotInGroup,
    /// `kafka.enforce_retention` and topics keep messages for less than required.
    #[error("topics keep messages for less than the law requires: {}; raise their retention.ms, or unset kafka.enforce_retention to start with a warning", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    ShortRetention(Vec<Shortfall>),
    /// `kafka.create_topics = false` and the cluster lacks topics tollgate uses.
    #[error("topics missing on the cluster: {}; create them, or set kafka.create_topics = true", .0.join(", "))]
    MissingTopics(Vec<String>),
}

/// librdkafka's error, kept as the cause without making rdkafka's type part
/// of tollgate's API.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ClientError(rdkafka::error::KafkaError);

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client(ClientError(e))
    }
}

/// A message read from a topic (an input of the loop, or an output read
/// back by a tool or test), detached from the client.
#[derive(Debug, Clone)]
pub struct ConsumedMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedMessage {
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
    fn prepare(&self, msgs: &[ConsumedMessage]) -> Self::Prepared;

    fn process_batch(
        &self,
        msgs: &[ConsumedMessage],
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Vec<OutgoingMessage>>, ProcessError>> + Send;

    /// The dead letter that stands for `output` of `input` when the broker
    /// refused it for good (too large, invalid, not authorized), so the
    /// input still ends in an outcome. `minimal`: without any of the input's
    /// bytes, for when the fuller letter was refused too.
    fn refused(&self, input: &ConsumedMessage, output: &OutgoingMessage, error: &str, minimal: bool)
    -> OutgoingMessage;
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

/// Kafka headers from (name, text value) pairs, for every record tollgate
/// produces.
fn owned_headers<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> rdkafka::message::OwnedHeaders {
    let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in pairs {
        headers = headers.insert(rdkafka::message::Header { key, value: Some(value.as_bytes()) });
    }
    headers
}
