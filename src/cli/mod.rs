//! The command line: everything the binary prints or reads from a person,
//! and the tools built on the library (demo, load generator, policy
//! commands). The library never formats for a terminal.

pub mod audit;
pub mod demo;
pub mod export;
pub mod grant;
pub mod impact;
pub mod loadgen;
pub mod policy;
pub mod review;
pub mod usage;
