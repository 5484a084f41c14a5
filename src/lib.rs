//! tollgate: an event-driven authorization broker for the authorized
//! operation of public data. See README.md.

pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod contract;
pub mod decide;
pub mod domain;
pub mod kafka;
pub mod metering;
pub mod ops;
pub mod policy;
pub mod store;
