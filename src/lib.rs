//! tollgate: an event-driven authorization broker for the authorized
//! operation of public data. Enterprises put access requests on a Kafka
//! topic; tollgate verifies their token, checks the request against the
//! Casbin policy and the catalogue, and publishes a decision (an approval
//! carries a signed grant), a hash-chained audit event and a priced usage
//! record — stored first, so a redelivered request gets its original
//! decision back, byte for byte. See README.md and docs/ for what it promises and
//! ARCHITECTURE.md for how the modules below keep those promises.
//!
//! Modules, bottom up (each depends only on those above it):
//!
//! * [`contract`] — the v1 wire types, one file per message; [`domain`] —
//!   USCC codes and audit chain ids; [`config`] — typed settings.
//! * [`metering`] — prices and quotas in integer fen; [`policy`] — the
//!   Casbin model, rules and catalogue; [`auth`] — token verification and
//!   grant signing.
//! * [`decide`] — the decision as pure functions (no I/O); [`audit`] — the
//!   hash chain; [`disclosure`] — the yearly disclosure from usage records.
//! * [`store`] — all SQL (sqlx); [`kafka`] — all Kafka I/O (rdkafka), the
//!   consume loop and delivery; [`ops`] — readiness, metrics, HTTP, logs.
//! * [`broker`] — what happens to a batch of inputs, phase by phase; policy
//!   reload and the audit outbox.
//! * [`app`] — assembly ([`app::App::build`]) and `run_until_stopped`.
//!
//! The command line (serve, demo, loadgen, policy, audit, grant, review,
//! usage and disclosure commands) is the binary's, in `src/cli/`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod contract;
pub mod decide;
pub mod disclosure;
pub mod domain;
pub mod kafka;
pub mod metering;
pub mod ops;
pub mod policy;
pub mod store;
