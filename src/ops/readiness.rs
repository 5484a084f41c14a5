//! Is the instance alive, and ready to take work: the conjunction of facts
//! the loop and the Kafka client report as they happen. Nothing here probes
//! dependencies on its own, so an answer never waits on a slow database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Counters, Timings};

/// Shared by the decision loop, the Kafka client context, the reloader and
/// the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
    stopping: AtomicBool,
    /// What the instance is doing on its way in or out (start-up and
    /// shutdown steps), named when a shutdown overruns its limit.
    step: Mutex<&'static str>,
    /// Set while no broker connection is up (librdkafka's statistics and
    /// all-brokers-down errors), with what was last reported.
    kafka_down: Mutex<Option<String>>,
    /// Set while processing waits for a dependency (the database); intake
    /// is paused meanwhile.
    blocked: Mutex<Option<String>>,
    pub counters: Counters,
    pub timings: Timings,
    /// Spans, once OTLP export is on (`ops/otlp.rs`).
    pub tracing: super::otlp::Tracing,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, one line per unmet condition; empty when ready.
    pub reasons: Vec<String>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    pub fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The start-up or shutdown step now under way.
    pub fn set_step(&self, step: &'static str) {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }

    pub fn step(&self) -> &'static str {
        *self.step.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_kafka_down(&self, why: Option<String>) {
        *self.kafka_down.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn set_blocked(&self, why: Option<String>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests pending review, and the age in seconds of the oldest.
    pub fn set_reviews(&self, pending: u64, oldest_age_secs: u64) {
        self.counters.reviews_pending.store(pending, Ordering::Relaxed);
        self.counters.oldest_review_age_secs.store(oldest_age_secs, Ordering::Relaxed);
    }

    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            reasons.push("stopping".to_owned());
        } else if !self.consuming.load(Ordering::Relaxed) {
            reasons.push("not consuming yet".to_owned());
        }
        if let Some(why) = self.kafka_down.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            reasons.push(format!("kafka: {why}"));
        }
        if let Some(why) = self.blocked.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            reasons.push(format!("processing paused: {why}"));
        }
        Readiness { ready: reasons.is_empty(), reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_unmet_condition() {
        let h = Health::default();
        assert_eq!(h.readiness().reasons, vec!["not consuming yet"]);
        h.set_consuming(true);
        assert!(h.readiness().ready);
        h.set_blocked(Some("database unavailable: connection refused".into()));
        h.set_kafka_down(Some("no broker connection is up".into()));
        let r = h.readiness();
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            vec!["kafka: no broker connection is up", "processing paused: database unavailable: connection refused"]
        );
        h.set_blocked(None);
        h.set_kafka_down(None);
        assert!(h.readiness().ready);
        h.set_stopping();
        assert_eq!(h.readiness().reasons, vec!["stopping"]);
    }
}
