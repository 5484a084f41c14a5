//! The wire types of the event contract (v1), one file per message. Field
//! names here are the contract: the README documents them, and consumers
//! outside this repository parse them. Add fields only as optional; a
//! breaking change needs a new `schema` version.

mod audit_event;
mod checkpoint;
mod dead_letter;
mod decision;
mod grant;
mod request;
mod review;
mod revocation;
mod usage;
mod usage_report;

pub use audit_event::*;
pub use checkpoint::*;
pub use dead_letter::*;
pub use decision::*;
pub use grant::*;
pub use request::*;
pub use review::*;
pub use revocation::*;
pub use usage::*;
pub use usage_report::*;

pub const REQUEST_SCHEMA: &str = "tollgate.access_request/v1";
pub const DECISION_SCHEMA: &str = "tollgate.decision/v1";
pub const AUDIT_SCHEMA: &str = "tollgate.audit/v1";
pub const CHECKPOINT_SCHEMA: &str = "tollgate.audit_checkpoint/v1";
pub const USAGE_SCHEMA: &str = "tollgate.usage/v1";
pub const DEAD_LETTER_SCHEMA: &str = "tollgate.dead_letter/v1";
