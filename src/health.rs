//! What operators and orchestrators ask a running instance: is it alive, is
//! it ready to take work, and what has it done (`/healthz`, `/readyz`,
//! `/metrics` in Prometheus text format).
//!
//! Readiness is the conjunction of facts the loop and the Kafka client
//! report as they happen; nothing here probes dependencies on its own, so an
//! answer never waits on a slow database.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Shared by the decision loop, the Kafka client context, the reloader and
/// the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
    stopping: AtomicBool,
    /// Set while no broker connection is up (librdkafka's statistics and
    /// all-brokers-down errors), with what was last reported.
    kafka_down: Mutex<Option<String>>,
    /// Set while processing waits for a dependency (the database); intake
    /// is paused meanwhile.
    blocked: Mutex<Option<String>>,
    pub counters: Counters,
    pub timings: Timings,
}

/// Where a batch's time goes, as Prometheus histograms: what an operator
/// looks at when latency or throughput is not what was expected.
#[derive(Debug)]
pub struct Timings {
    /// Inputs per batch.
    pub batch_inputs: Histogram,
    /// Decoding and token checks of a batch (done while the batch before
    /// it is decided).
    pub prepare: Histogram,
    /// From a batch taken off the consumer until its decision starts: the
    /// queue behind the batch being decided.
    pub wait: Histogram,
    /// Quota, policy and grants (phases 1 and 2 of a batch).
    pub decide: Histogram,
    /// Sealing audit events and the batch's database transaction.
    pub store: Histogram,
    /// One input's outputs handed to the producer until all acknowledged.
    pub deliver: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            batch_inputs: Histogram::new(&[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0], 1.0),
            prepare: Histogram::seconds(),
            wait: Histogram::seconds(),
            decide: Histogram::seconds(),
            store: Histogram::seconds(),
            deliver: Histogram::seconds(),
        }
    }
}

/// A Prometheus histogram: counts per bucket (upper bound inclusive), sum
/// and count, updated lock-free from any thread.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then +Inf; not cumulative (summed when rendered).
    counts: Vec<AtomicU64>,
    /// The sum in units of 1/`scale`, so it can be an integer.
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Durations from 0.5 ms to 10 s, summed in microseconds.
    pub fn seconds() -> Self {
        Self::new(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0], 1e6)
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add((value * self.scale).round() as u64, Ordering::Relaxed);
    }

    pub fn observe_since(&self, start: std::time::Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` without braces
    /// (`stage="store"`), or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "tollgate_{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "tollgate_{name}_sum{braces} {sum}\ntollgate_{name}_count{braces} {cumulative}");
    }
}

/// Monotonic counters, exported as `tollgate_*_total`.
#[derive(Debug, Default)]
pub struct Counters {
    pub approved: AtomicU64,
    pub denied: AtomicU64,
    pub pending_review: AtomicU64,
    pub dead_letters: AtomicU64,
    pub republished: AtomicU64,
    pub processing_retries: AtomicU64,
    pub replays_refused: AtomicU64,
    pub policy_reloads: AtomicU64,
    pub policy_rejections: AtomicU64,
    /// Reloads triggered with the files in force unchanged (SIGHUP, a touch).
    pub policy_unchanged: AtomicU64,
    /// Outputs the broker refused for good, replaced by dead letters.
    pub outputs_refused: AtomicU64,
    /// Outputs sent again after a transient delivery failure.
    pub delivery_retries: AtomicU64,
    /// Batches decided again because another instance stored part of
    /// what they claim first.
    pub conflicts: AtomicU64,
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

    pub fn set_kafka_down(&self, why: Option<String>) {
        *self.kafka_down.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn set_blocked(&self, why: Option<String>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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

    /// Prometheus text exposition format, version 0.0.4.
    pub fn metrics(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP tollgate_{name} {help}\n# TYPE tollgate_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "tollgate_{name}{labels} {value}");
            }
        };
        let r = self.readiness();
        family("ready", "gauge", "1 when the instance takes new work.", &[("", u64::from(r.ready))]);
        family(
            "decisions_total",
            "counter",
            "Decisions made (not counting re-publications).",
            &[
                ("{outcome=\"approved\"}", get(&c.approved)),
                ("{outcome=\"denied\"}", get(&c.denied)),
                ("{outcome=\"pending_review\"}", get(&c.pending_review)),
            ],
        );
        family("dead_letters_total", "counter", "Inputs sent to the dead-letter topic.", &[("", get(&c.dead_letters))]);
        family(
            "republished_total",
            "counter",
            "Redelivered inputs answered with their stored outcome.",
            &[("", get(&c.republished))],
        );
        family(
            "processing_retries_total",
            "counter",
            "Batches retried because a dependency was unavailable.",
            &[("", get(&c.processing_retries))],
        );
        family(
            "outputs_refused_total",
            "counter",
            "Outputs the broker refused for good; a dead letter (output.refused) stands for each.",
            &[("", get(&c.outputs_refused))],
        );
        family(
            "delivery_retries_total",
            "counter",
            "Outputs sent again after a transient delivery failure.",
            &[("", get(&c.delivery_retries))],
        );
        family(
            "conflicts_total",
            "counter",
            "Batches decided again because another instance stored a token id or chain position first.",
            &[("", get(&c.conflicts))],
        );
        family(
            "token_replays_total",
            "counter",
            "Requests denied because their token id was already used.",
            &[("", get(&c.replays_refused))],
        );
        family(
            "policy_reloads_total",
            "counter",
            "Policy reload attempts by result.",
            &[
                ("{result=\"loaded\"}", get(&c.policy_reloads)),
                ("{result=\"rejected\"}", get(&c.policy_rejections)),
                ("{result=\"unchanged\"}", get(&c.policy_unchanged)),
            ],
        );
        let t = &self.timings;
        let _ = writeln!(out, "# HELP tollgate_batch_inputs Inputs per batch.\n# TYPE tollgate_batch_inputs histogram");
        t.batch_inputs.render(&mut out, "batch_inputs", "");
        let _ = writeln!(
            out,
            "# HELP tollgate_stage_seconds Time per batch in each stage (deliver: per input).\n# TYPE tollgate_stage_seconds histogram"
        );
        for (stage, h) in [
            ("prepare", &t.prepare),
            ("wait", &t.wait),
            ("decide", &t.decide),
            ("store", &t.store),
            ("deliver", &t.deliver),
        ] {
            h.render(&mut out, "stage_seconds", &format!("stage=\"{stage}\""));
        }
        out
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let r = health.readiness();
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(r))
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], health.metrics())
}

/// The bound listener, so a port conflict fails start-up rather than the
/// first probe.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
}

impl HttpServer {
    pub async fn bind(addr: &str) -> std::io::Result<HttpServer> {
        Ok(HttpServer { listener: tokio::net::TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self, health: Arc<Health>, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(health);
        axum::serve(self.listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
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

    #[test]
    fn metrics_are_prometheus_text() {
        let h = Health::default();
        Health::count(&h.counters.approved);
        Health::count(&h.counters.approved);
        Health::count(&h.counters.dead_letters);
        let text = h.metrics();
        assert!(text.contains("# TYPE tollgate_decisions_total counter\n"));
        assert!(text.contains("tollgate_decisions_total{outcome=\"approved\"} 2\n"));
        assert!(text.contains("tollgate_dead_letters_total 1\n"));
        assert!(text.contains("tollgate_ready 0\n"));
    }

    #[test]
    fn histograms_render_cumulative_buckets_with_sum_and_count() {
        let h = Health::default();
        for s in [0.0004, 0.003, 0.003, 0.2, 30.0] {
            h.timings.store.observe(s);
        }
        h.timings.batch_inputs.observe(250.0);
        let text = h.metrics();
        assert!(text.contains("# TYPE tollgate_stage_seconds histogram\n"), "{text}");
        for line in [
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"0.0005\"} 1\n",
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"0.0025\"} 1\n",
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"0.005\"} 3\n",
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"0.25\"} 4\n",
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"10\"} 4\n",
            "tollgate_stage_seconds_bucket{stage=\"store\",le=\"+Inf\"} 5\n",
            "tollgate_stage_seconds_sum{stage=\"store\"} 30.2064\n",
            "tollgate_stage_seconds_count{stage=\"store\"} 5\n",
            "tollgate_stage_seconds_count{stage=\"decide\"} 0\n",
            "tollgate_batch_inputs_bucket{le=\"100\"} 0\n",
            "tollgate_batch_inputs_bucket{le=\"250\"} 1\n",
            "tollgate_batch_inputs_sum 250\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
