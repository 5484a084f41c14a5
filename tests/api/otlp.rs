//! OpenTelemetry export, checked by a small OTLP/HTTP receiver inside the
//! test that decodes the protobuf tollgate sends (opentelemetry-proto), not
//! by reading tollgate's own structures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::binary::{Running, serve, stop_with_sigterm};
use crate::helpers::*;

/// What the receiver was sent: spans with their resource's attributes,
/// and metric export requests.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// An OTLP/HTTP receiver on a free port: `/v1/traces` and `/v1/metrics`.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    use axum::routing::post;
    let got = Arc::new(Mutex::new(Received::default()));
    let (t, m) = (got.clone(), got.clone());
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP traces in protobuf");
                for rs in req.resource_spans {
                    let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    let spans = rs.scope_spans.into_iter().flat_map(|s| s.spans);
                    t.lock().unwrap().spans.extend(spans.map(|s| (resource.clone(), s)));
                }
                ""
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: axum::body::Bytes| async move {
                let req = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics in protobuf");
                m.lock().unwrap().metrics.push(req);
                ""
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v: &AnyValue| v.value.as_ref())
}

fn text<'a>(attrs: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// Sends one request under a known parent span and returns the
/// `traceparent` its decision carries.
async fn request_under_parent(app: &TestApp, id: &str) -> String {
    let body = request(
        id,
        Some(&app.infra.token(TRAVEL, &[], 600)),
        "smart-tourism",
        "GX-610100-TOUR-0001",
        "query",
        "industry",
    );
    let tp = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let reader = app.reader(&app.infra.topics.decisions);
    app.client
        .produce(&app.infra.topics.requests, id, body.to_string().as_bytes(), &[("traceparent", &tp)])
        .await
        .unwrap();
    let m = read_n(&reader, 1).await.remove(0);
    String::from_utf8(m.header("traceparent").expect("decisions carry the trace").to_vec()).unwrap()
}

#[tokio::test]
async fn a_request_with_a_traceparent_is_exported_as_a_child_span_with_its_decision_and_linked_batch_stages() {
    let (endpoint, got) = receiver().await;
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.telemetry.otlp_endpoint = Some(endpoint);
    let mut app = start(infra, settings).await;
    let out = request_under_parent(&app, "otlp-1").await;
    app.stop().await; // a clean stop exports what is buffered

    let (trace, own) = (out.split('-').nth(1).unwrap().to_owned(), out.split('-').nth(2).unwrap().to_owned());
    assert_eq!(trace, PARENT_TRACE, "the outputs continue the requester's trace");
    let got = got.lock().unwrap();
    let find = |id: &[u8]| got.spans.iter().map(|(_, s)| s).find(|s| s.span_id == id);
    let span = find(&hex::decode(&own).unwrap()).expect("the input's span, under the id its outputs carry");
    assert_eq!(span.name, "tollgate.requests process");
    assert_eq!(hex::encode(&span.trace_id), PARENT_TRACE);
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_SPAN, "a child of the traceparent it came with");
    for (key, want) in [
        ("tollgate.request_id", "otlp-1"),
        ("tollgate.enterprise", TRAVEL),
        ("tollgate.dataset", "GX-610100-TOUR-0001"),
        ("tollgate.outcome", "approved"),
        ("messaging.destination.name", app.infra.topics.requests.as_str()),
    ] {
        assert_eq!(text(&span.attributes, key), want, "{key}");
    }
    let mut stages: Vec<&str> =
        span.links.iter().map(|l| find(&l.span_id).expect("a linked stage span").name.as_str()).collect();
    stages.sort();
    assert_eq!(stages, ["tollgate.decide", "tollgate.prepare", "tollgate.store"]);
    let deliver = got.spans.iter().map(|(_, s)| s).find(|s| s.name == "tollgate.deliver").expect("a delivery span");
    assert_eq!((hex::encode(&deliver.trace_id), hex::encode(&deliver.parent_span_id)), (trace, own));
    let (resource, _) = &got.spans[0];
    assert_eq!(text(resource, "service.name"), "tollgate");

    let approved = got.metrics.iter().flat_map(|r| &r.resource_metrics).flat_map(|r| &r.scope_metrics);
    let decisions =
        approved.flat_map(|s| &s.metrics).find(|m| m.name == "tollgate.decisions").expect("decisions metric");
    let Some(metric::Data::Sum(sum)) = &decisions.data else { panic!("a counter is a sum: {decisions:?}") };
    assert!(sum.is_monotonic);
    let approved = sum.data_points.iter().find(|p| text(&p.attributes, "outcome") == "approved").unwrap();
    assert_eq!(approved.value, Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1)));
}

#[tokio::test]
async fn the_binary_exports_where_the_standard_otel_variables_say_and_names_itself_as_they_say() {
    let (endpoint, got) = receiver().await;
    let infra = infra().await;
    let client = tollgate::kafka::Client::new(&infra.settings().kafka, &infra.bootstrap).unwrap();
    let mut child = serve(&infra)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "tollgate-ci")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,service.namespace=public-data")
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .spawn()
        .map(Running)
        .unwrap();
    let reader = client.reader(&[&infra.topics.decisions], "otlp-reader").unwrap();
    let tp = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let token = infra.token(TRAVEL, &[], 600);
    let body = request("otlp-bin", Some(&token), "smart-tourism", "GX-610100-TOUR-0001", "query", "industry");
    client.produce(&infra.topics.requests, "k", body.to_string().as_bytes(), &[("traceparent", &tp)]).await.unwrap();
    read_n(&reader, 1).await;
    let deadline = std::time::Instant::now() + WAIT;
    while got.lock().unwrap().metrics.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await; // metrics every 500 ms, by the variable
    }
    // The receiver runs on this test's runtime: wait for the exit elsewhere.
    tokio::task::spawn_blocking(move || stop_with_sigterm(&mut child)).await.unwrap();

    let got = got.lock().unwrap();
    assert!(!got.metrics.is_empty(), "metrics exported on OTEL_METRIC_EXPORT_INTERVAL");
    let (resource, span) = got
        .spans
        .iter()
        .find(|(_, s)| s.name == "tollgate.requests process")
        .expect("the request's span, exported at a clean stop");
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_SPAN);
    assert_eq!(text(resource, "service.name"), "tollgate-ci");
    assert_eq!(text(resource, "deployment.environment.name"), "ci");
    assert_eq!(text(resource, "service.namespace"), "public-data");
}
