//! The cluster tollgate talks to: the configured one, or an embedded one
//! when none is configured. Creating topics goes through the admin API on a
//! real cluster and through the mock's own call on the embedded one (it has
//! no admin API): one place for both.

use super::KafkaError;
use super::config::ensure_topics;
use super::embedded::EmbeddedKafka;
use crate::config::KafkaSettings;

pub enum Cluster {
    /// `kafka.bootstrap_servers`.
    External(String),
    /// Lives as long as this value.
    Embedded(EmbeddedKafka),
}

impl Cluster {
    /// The configured cluster, else a new embedded one.
    pub fn from_settings(settings: &KafkaSettings) -> Result<Cluster, KafkaError> {
        Ok(match &settings.bootstrap_servers {
            Some(b) => Cluster::External(b.clone()),
            None => Cluster::Embedded(EmbeddedKafka::start(1)?),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        match self {
            Cluster::External(b) => b,
            Cluster::Embedded(k) => k.bootstrap_servers(),
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, Cluster::Embedded(_))
    }

    /// Creates each of `topics` that is missing, with `settings.partitions`
    /// and its `retention.ms` (the embedded cluster keeps nothing past its
    /// run, so it takes none).
    pub async fn create_topics(&self, settings: &KafkaSettings, topics: &[(&str, i64)]) -> Result<(), KafkaError> {
        match self {
            Cluster::External(bootstrap) if !topics.is_empty() => ensure_topics(settings, bootstrap, topics).await,
            Cluster::External(_) => Ok(()),
            Cluster::Embedded(k) => {
                topics.iter().try_for_each(|(t, _)| k.create_topic(t, settings.partitions)).map_err(KafkaError::from)
            }
        }
    }
}
