//! The one integration-test binary: tollgate running against Kafka and a
//! database (embedded Kafka + SQLite by default; see helpers.rs for real
//! services).

mod binary;
mod console;
mod decisions;
mod delivery;
mod docs;
mod faults;
mod fuzz;
mod golden;
mod grants;
mod helpers;
mod hostile;
mod impact;
mod metering;
mod otlp;
mod poison;
mod reload;
mod review;
mod revocation;
