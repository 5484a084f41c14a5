//! tollgate: an event-driven authorization broker for the authorized
//! operation of public data. See README.md.

pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod events;
pub mod health;
pub mod kafka;
pub mod loadgen;
pub mod metering;
pub mod pipeline;
pub mod policy;
pub mod store;
pub mod telemetry;
