//! OpenTelemetry export over OTLP/HTTP: a span per input (a child of the
//! `traceparent` it came with), a span per batch stage that the inputs'
//! spans link to, a span per delivery, and the `/metrics` counters and
//! gauges as OTLP metrics.
//!
//! What must stay true: with no endpoint configured nothing is built, so
//! the hot path pays one `OnceLock` read per batch ([`Tracing::tracer`]);
//! an input's span id is the one its outputs' `traceparent` names, so a
//! consumer of the outputs continues this span.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

use super::Health;
use crate::config::TelemetrySettings;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP protocol {0:?} is not supported: use http/protobuf or http/json (an OTLP/HTTP receiver, port 4318)")]
    Protocol(String),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The exporters of a running instance, shut down (and so flushed) at a
/// clean stop.
pub struct Telemetry {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

/// The endpoint, when export is on: tollgate's setting, else the standard
/// variables (`OTEL_SDK_DISABLED=true` turns it off whatever is set).
fn endpoint(settings: &TelemetrySettings) -> Option<String> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    settings.otlp_endpoint.clone().filter(|e| !e.is_empty()).or_else(|| {
        var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).map(|_| String::new())
    })
}

fn protocol(settings: &TelemetrySettings) -> Result<Protocol, TelemetryError> {
    let chosen = settings.otlp_protocol.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok());
    match chosen.as_deref().unwrap_or("http/protobuf") {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// `service.name` is tollgate's setting, else `OTEL_SERVICE_NAME`, else
/// `tollgate`; `OTEL_RESOURCE_ATTRIBUTES` adds the rest (the SDK reads it).
fn resource(settings: &TelemetrySettings, instance: &str) -> Resource {
    let mut builder = Resource::builder().with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    match (&settings.service_name, std::env::var("OTEL_SERVICE_NAME")) {
        (Some(name), _) => builder = builder.with_service_name(name.clone()),
        (None, Ok(name)) if !name.is_empty() => {}
        (None, _) => builder = builder.with_service_name("tollgate"),
    }
    builder.build()
}

impl Telemetry {
    /// The exporters, or `None` when no endpoint is configured.
    pub fn start(
        settings: &TelemetrySettings,
        instance: &str,
        health: &Arc<Health>,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(base) = endpoint(settings) else { return Ok(None) };
        let protocol = protocol(settings)?;
        // An empty base: the exporter reads the standard variables itself
        // (with the per-signal ones, `/v1/traces` appended as the spec says).
        let url = |path: &str| (!base.is_empty()).then(|| format!("{}{path}", base.trim_end_matches('/')));
        let mut spans = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(protocol);
        spans = spans.with_http_client(Ureq::new());
        if let Some(u) = url("/v1/traces") {
            spans = spans.with_endpoint(u);
        }
        let mut metrics = opentelemetry_otlp::MetricExporter::builder().with_http().with_protocol(protocol);
        metrics = metrics.with_http_client(Ureq::new());
        if let Some(u) = url("/v1/metrics") {
            metrics = metrics.with_endpoint(u);
        }
        let resource = resource(settings, instance);
        let traces =
            SdkTracerProvider::builder().with_batch_exporter(spans.build()?).with_resource(resource.clone()).build();
        let reader = PeriodicReader::builder(metrics.build()?).build();
        let metrics = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
        health.observe_with(&opentelemetry::metrics::MeterProvider::meter(&metrics, "tollgate"));
        let tracer = opentelemetry::trace::TracerProvider::tracer(&traces, "tollgate");
        let _ = health.tracing.tracer.set(tracer);
        Ok(Some(Telemetry { traces, metrics }))
    }

    /// Exports what is buffered and stops the exporters.
    pub fn shutdown(self) {
        if let Err(error) = self.traces.shutdown() {
            tracing::warn!(message = "exporting the last spans failed", %error);
        }
        if let Err(error) = self.metrics.shutdown() {
            tracing::warn!(message = "exporting the last metrics failed", %error);
        }
    }
}

impl Health {
    /// Every `/metrics` counter and gauge as an observable instrument read
    /// at each export, and the stage timings as histograms.
    fn observe_with(self: &Arc<Self>, meter: &opentelemetry::metrics::Meter) {
        for family in self.families() {
            let (health, name) = (Arc::downgrade(self), family.name);
            let observe = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
                let Some(health) = health.upgrade() else { return };
                let Some(now) = health.families().into_iter().find(|f| f.name == name) else { return };
                for (label, value) in now.samples {
                    let attributes: Vec<KeyValue> = label.map(|(k, v)| KeyValue::new(k, v)).into_iter().collect();
                    observer.observe(value, &attributes);
                }
            };
            let full = format!("tollgate.{}", name.trim_end_matches("_total"));
            if family.gauge {
                meter
                    .u64_observable_gauge(full)
                    .with_description(family.help)
                    .with_callback(move |o| observe(o))
                    .build();
            } else {
                meter
                    .u64_observable_counter(full)
                    .with_description(family.help)
                    .with_callback(move |o| observe(o))
                    .build();
            }
        }
        let histogram = meter.f64_histogram("tollgate.stage.duration").with_unit("s").build();
        for (stage, h) in self.stages() {
            h.export_to(histogram.clone(), vec![KeyValue::new("stage", stage)]);
        }
    }
}

/// Where spans are made; empty (and free) until [`Telemetry::start`] sets
/// the tracer.
#[derive(Debug, Default)]
pub struct Tracing {
    tracer: OnceLock<Tracer>,
}

/// One input's span: what it continues, when it started and ended, and
/// what the decision was.
pub struct InputSpan<'a> {
    /// The `traceparent` the input came with, if any.
    pub parent: Option<&'a str>,
    /// The `traceparent` its outputs carry: this span's trace and id.
    pub own: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The batch stages it went through.
    pub stages: &'a [SpanContext],
}

impl Tracing {
    pub fn enabled(&self) -> bool {
        self.tracer.get().is_some()
    }

    /// A batch stage (`prepare`, `decide`, `store`) as its own span, for
    /// the inputs' spans to link to; `None` when export is off.
    pub fn stage(&self, name: &str, start: SystemTime, inputs: usize) -> Option<SpanContext> {
        let tracer = self.tracer.get()?;
        let mut span = tracer
            .span_builder(format!("tollgate.{name}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes([KeyValue::new("tollgate.batch.inputs", inputs as i64)])
            .start_with_context(tracer, &Context::new());
        let context = span.span_context().clone();
        span.end();
        Some(context)
    }

    /// An input's span, under the id its outputs already carry.
    pub fn input(&self, s: InputSpan<'_>) {
        let Some(tracer) = self.tracer.get() else { return };
        let Some(own) = parse_traceparent(s.own) else { return };
        let parent = s.parent.and_then(parse_traceparent).filter(|p| p.trace_id() == own.trace_id());
        let cx = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
        let mut builder = tracer
            .span_builder("tollgate.requests process")
            .with_kind(SpanKind::Consumer)
            .with_start_time(s.start)
            .with_attributes(s.attributes)
            .with_links(s.stages.iter().map(|c| Link::with_context(c.clone())).collect());
        builder.trace_id = Some(own.trace_id());
        builder.span_id = Some(own.span_id());
        tracer.build_with_context(builder, &cx).end_with_timestamp(s.end);
    }

    /// Publishing an input's outputs, a child of its span (the
    /// `traceparent` its outputs carry).
    pub fn deliver(&self, traceparent: &str, start: SystemTime, outputs: usize) {
        let Some(tracer) = self.tracer.get() else { return };
        let Some(parent) = parse_traceparent(traceparent) else { return };
        let cx = Context::new().with_remote_span_context(parent);
        tracer
            .span_builder("tollgate.deliver")
            .with_kind(SpanKind::Producer)
            .with_start_time(start)
            .with_attributes([KeyValue::new("messaging.batch.message_count", outputs as i64)])
            .start_with_context(tracer, &cx)
            .end();
    }
}

/// A W3C `traceparent` (`00-<trace>-<span>-<flags>`), or `None`.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(trace, span, opentelemetry::trace::TraceFlags::new(flags), true, Default::default()))
}

/// opentelemetry-http's client trait over ureq (already in the tree for
/// `grant verify --jwks`). The exporters call it from their own threads,
/// so a blocking call is what they expect.
#[derive(Debug)]
struct Ureq(ureq::Agent);

impl Ureq {
    fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Ureq(config.into())
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Ureq {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let mut response = self.0.run(request.map(|b| b.to_vec()))?;
        let body = response.body_mut().read_to_vec()?;
        let (parts, _) = response.into_parts();
        Ok(opentelemetry_http::Response::from_parts(parts, body.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_exported_when_no_endpoint_is_set() {
        // The test process sets no OTEL_* variable (cargo does not either).
        if std::env::vars().any(|(k, _)| k.starts_with("OTEL_EXPORTER_OTLP")) {
            return;
        }
        let health = Health::new();
        let started = Telemetry::start(&TelemetrySettings::default(), "t", &health).unwrap();
        assert!(started.is_none());
        assert!(!health.tracing.enabled());
        assert!(health.tracing.stage("decide", SystemTime::now(), 1).is_none());
    }

    #[test]
    fn grpc_is_refused_with_what_to_use_instead() {
        let settings = TelemetrySettings {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            otlp_protocol: Some("grpc".into()),
            ..Default::default()
        };
        let error = Telemetry::start(&settings, "t", &Health::new()).unwrap_err().to_string();
        assert!(error.contains("http/protobuf"), "{error}");
    }

    #[test]
    fn traceparents_parse_as_w3c_reads_them() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        for bad in ["", "00-0000-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
