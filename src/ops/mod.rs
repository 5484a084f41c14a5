//! What operators and orchestrators ask a running instance: is it alive,
//! is it ready to take work (`readiness`), what has it done (`metrics`),
//! served over HTTP (`http`); and its logs (`telemetry`).

mod http;
mod metrics;
mod readiness;
pub mod telemetry;

pub use http::{HttpServer, Published, RemoteAccess};
pub use metrics::{Counters, Histogram, Timings};
pub use readiness::{Health, Readiness};
