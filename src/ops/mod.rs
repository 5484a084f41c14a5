//! What operators and orchestrators ask a running instance: is it alive,
//! is it ready to take work (`readiness`), what has it done (`metrics`),
//! served over HTTP (`http`); its logs (`telemetry`) and OpenTelemetry
//! export (`otlp`: spans and the same metrics over OTLP/HTTP).

pub mod chart;
pub mod console;
mod http;
mod metrics;
mod otlp;
mod readiness;
pub mod telemetry;

pub use http::{HttpServer, Published, RemoteAccess};
pub use metrics::{Counters, Histogram, Timings};
pub use otlp::{InputSpan, Telemetry, TelemetryError, Tracing};
pub use readiness::{Health, Readiness};
