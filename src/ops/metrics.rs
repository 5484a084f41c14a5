//! What the instance has done: counters and histograms, exported in the
//! Prometheus text format (`/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Health;

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
    /// The same observations recorded as an OTLP histogram, once export is on.
    export: std::sync::OnceLock<(opentelemetry::metrics::Histogram<f64>, Vec<opentelemetry::KeyValue>)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
            export: std::sync::OnceLock::new(),
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
        if let Some((histogram, attributes)) = self.export.get() {
            histogram.record(value, attributes);
        }
    }

    /// Records every later observation into `histogram` too.
    pub(super) fn export_to(
        &self,
        histogram: opentelemetry::metrics::Histogram<f64>,
        attributes: Vec<opentelemetry::KeyValue>,
    ) {
        let _ = self.export.set((histogram, attributes));
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
    /// Operators' commands answered (accepted or refused).
    pub commands: AtomicU64,
    /// Grants withdrawn by an operator's command / because the policy no
    /// longer allows them.
    pub revoked_by_command: AtomicU64,
    pub revoked_by_policy: AtomicU64,
    /// Data hosts' usage reports accepted / refused, and accepted ones
    /// beyond their grant's volume or the quota (`usage.exceeds_grant`).
    pub reports_accepted: AtomicU64,
    pub reports_refused: AtomicU64,
    pub reports_exceeding: AtomicU64,
    /// Gauges, refreshed with each grant re-check: the operator's revenue
    /// this year and its permitted cap (fen; 0 when the catalogue names none).
    pub revenue_year_fen: AtomicU64,
    pub revenue_cap_fen: AtomicU64,
    /// Gauges, refreshed every 10 s: requests pending review and the age
    /// of the oldest (seconds).
    pub reviews_pending: AtomicU64,
    pub oldest_review_age_secs: AtomicU64,
}

/// One metric family: what `/metrics` prints and what OTLP exports
/// (`ops/otlp.rs`), from the same list so the two never disagree.
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) gauge: bool,
    pub(super) help: &'static str,
    /// Each sample with its one label (name, value), if any.
    pub(super) samples: Vec<(Option<(&'static str, &'static str)>, u64)>,
}

fn counter(
    name: &'static str,
    help: &'static str,
    samples: Vec<(Option<(&'static str, &'static str)>, u64)>,
) -> Family {
    Family { name, gauge: false, help, samples }
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Family {
    Family { name, gauge: true, help, samples: vec![(None, value)] }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Health {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        for f in self.families() {
            let kind = if f.gauge { "gauge" } else { "counter" };
            let _ = writeln!(out, "# HELP tollgate_{} {}\n# TYPE tollgate_{} {kind}", f.name, f.help, f.name);
            for (label, value) in f.samples {
                match label {
                    Some((k, v)) => writeln!(out, "tollgate_{}{{{k}=\"{v}\"}} {value}", f.name),
                    None => writeln!(out, "tollgate_{} {value}", f.name),
                }
                .expect("writing to a String");
            }
        }
        self.histogram_metrics(&mut out);
        out
    }

    /// Every counter and gauge, decisions first, then the lifecycle around them.
    pub(super) fn families(&self) -> Vec<Family> {
        let mut out = self.decision_families();
        out.extend(self.lifecycle_families());
        out
    }

    fn decision_families(&self) -> Vec<Family> {
        let c = &self.counters;
        let one = |v: &AtomicU64| vec![(None, get(v))];
        vec![
            gauge("ready", "1 when the instance takes new work.", u64::from(self.readiness().ready)),
            counter(
                "decisions_total",
                "Decisions made (not counting re-publications).",
                vec![
                    (Some(("outcome", "approved")), get(&c.approved)),
                    (Some(("outcome", "denied")), get(&c.denied)),
                    (Some(("outcome", "pending_review")), get(&c.pending_review)),
                ],
            ),
            counter("dead_letters_total", "Inputs sent to the dead-letter topic.", one(&c.dead_letters)),
            counter("republished_total", "Redelivered inputs answered with their stored outcome.", one(&c.republished)),
            counter(
                "processing_retries_total",
                "Batches retried because a dependency was unavailable.",
                one(&c.processing_retries),
            ),
            counter(
                "outputs_refused_total",
                "Outputs the broker refused for good; a dead letter (output.refused) stands for each.",
                one(&c.outputs_refused),
            ),
            counter(
                "delivery_retries_total",
                "Outputs sent again after a transient delivery failure.",
                one(&c.delivery_retries),
            ),
            counter(
                "conflicts_total",
                "Batches decided again because another instance stored a token id or chain position first.",
                one(&c.conflicts),
            ),
            counter(
                "token_replays_total",
                "Requests denied because their token id was already used.",
                one(&c.replays_refused),
            ),
            counter(
                "policy_reloads_total",
                "Policy reload attempts by result.",
                vec![
                    (Some(("result", "loaded")), get(&c.policy_reloads)),
                    (Some(("result", "rejected")), get(&c.policy_rejections)),
                    (Some(("result", "unchanged")), get(&c.policy_unchanged)),
                ],
            ),
        ]
    }

    /// The lifecycle around decisions: reviews, commands, revocations, reports.
    fn lifecycle_families(&self) -> Vec<Family> {
        let c = &self.counters;
        vec![
            gauge("reviews_pending", "Requests pending review.", get(&c.reviews_pending)),
            gauge(
                "review_oldest_pending_seconds",
                "Age of the oldest request pending review.",
                get(&c.oldest_review_age_secs),
            ),
            counter("commands_total", "Operators' commands answered.", vec![(None, get(&c.commands))]),
            counter(
                "grants_revoked_total",
                "Grants withdrawn before they expired.",
                vec![
                    (Some(("by", "command")), get(&c.revoked_by_command)),
                    (Some(("by", "policy")), get(&c.revoked_by_policy)),
                ],
            ),
            counter(
                "usage_reports_total",
                "Data hosts' usage reports answered.",
                vec![
                    (Some(("outcome", "accepted")), get(&c.reports_accepted)),
                    (Some(("outcome", "refused")), get(&c.reports_refused)),
                ],
            ),
            gauge(
                "revenue_year_fen",
                "The operator's revenue this calendar year (fen), against tollgate_revenue_cap_fen.",
                get(&c.revenue_year_fen),
            ),
            gauge("revenue_cap_fen", "The operator's permitted yearly revenue (fen).", get(&c.revenue_cap_fen)),
            counter(
                "usage_exceeds_grant_total",
                "Usage reports beyond their grant's volume or the monthly quota (alert on it).",
                vec![(None, get(&c.reports_exceeding))],
            ),
        ]
    }

    /// Batch stages by name, as `/metrics` labels them.
    pub(super) fn stages(&self) -> [(&'static str, &Histogram); 5] {
        let t = &self.timings;
        [
            ("prepare", &t.prepare),
            ("wait", &t.wait),
            ("decide", &t.decide),
            ("store", &t.store),
            ("deliver", &t.deliver),
        ]
    }

    /// Batch sizes and the time per stage.
    fn histogram_metrics(&self, out: &mut String) {
        let t = &self.timings;
        let _ = writeln!(out, "# HELP tollgate_batch_inputs Inputs per batch.\n# TYPE tollgate_batch_inputs histogram");
        t.batch_inputs.render(out, "batch_inputs", "");
        let _ = writeln!(
            out,
            "# HELP tollgate_stage_seconds Time per batch in each stage (deliver: per input).\n# TYPE tollgate_stage_seconds histogram"
        );
        for (stage, h) in self.stages() {
            h.render(out, "stage_seconds", &format!("stage=\"{stage}\""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
