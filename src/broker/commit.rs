//! Phase 3, in batch order: each input's audit event sealed onto its chain
//! and its rows buffered for the batch's one transaction; an input decided
//! before (or earlier in the batch) gets its stored outputs.

use tracing::debug;

use super::draft::Step;
use super::{DecisionService, Tally};
use crate::kafka::OutgoingMessage;
use crate::store::{Batch, Committed, StoreError};

impl DecisionService {
    /// Phase 3 for one input, in batch order: seals the audit event into
    /// its chain and buffers the rows.
    pub(super) async fn commit_step(
        &self,
        batch: &mut Batch,
        step: Step<'_>,
    ) -> Result<(Vec<OutgoingMessage>, Tally), StoreError> {
        let (committed, tally, traceparent) = match step {
            Step::Commit(commit, tally, traceparent) => (batch.add(*commit).await?, tally, traceparent),
            Step::Done(committed, traceparent) => (committed, Tally::Republished, traceparent),
            Step::Repeat(key, traceparent) => {
                let outputs = batch.find_outcome(&key).await?.ok_or_else(|| {
                    StoreError::Fatal(format!("{key} was decided earlier in the batch but has no outcome"))
                })?;
                (Committed::Existing(outputs), Tally::Republished, traceparent)
            }
            Step::Draft(_) => return Err(StoreError::Fatal("a draft reached phase 3 unfinished".into())),
        };
        // A commit can find its input already stored: a dead letter for an
        // offset read again (dead letters skip the lookup of phase 1), or a
        // request another instance stored between this batch's read and its
        // write. Either way the stored outcome is what gets published.
        let tally = match (&committed, tally) {
            (Committed::New(_), tally) => tally,
            (Committed::Existing(_), Tally::Republished) => Tally::Republished,
            (Committed::Existing(_), _) => {
                debug!(message = "input already stored; re-publishing its stored outcome");
                Tally::Republished
            }
        };
        Ok((self.to_messages(committed.into_outputs(), &traceparent), tally))
    }
}
