//! Values the modules agree on, with their rules: the codes organisations
//! are named by, and the audit chains events join. Pricing lives in
//! `metering`.

mod chain;
mod uscc;

pub use chain::ChainId;
pub use uscc::{is_uscc, uscc_with_check};
